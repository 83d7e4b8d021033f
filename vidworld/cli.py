"""The ``vidworld`` command: one subcommand per stage, each ``vidworld NAME CONFIG key=value ...``.

Subcommands are looked up by name and imported only when run, so ``vidworld --help`` stays fast
and a stage's heavy imports (torch, ray) load only for that stage.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from runtime.config import ConfigError

# name -> ("module:function", help). Each function takes (config_path_or_arg, overrides) and
# returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "samples": (
        "pipeline.samples:cli",
        "write built-in sample videos (synthetic scenes and Atari play) to a folder",
    ),
    "curate": ("pipeline.curate:cli", "raw video -> WebDataset clip shards + manifest (Ray Data)"),
    "train": ("runtime.launch:cli", "train a model (tokenizer or dynamics) with the shared runtime"),
    "plan-memory": (
        "runtime.memory:cli",
        "CONFIG gpus=N gpu_memory=80GiB: per-GPU memory of a training config (parameters, gradients, "
        "optimizer state, activations, attention) and the largest micro-batch that fits",
    ),
    "tokenize": ("tokenizer.tokenize:cli", "encode clip shards into latent shards (Ray Data)"),
    "rollout": ("dynamics.rollout:cli", "imagine future frames from real context and write a video"),
    "evaluate": ("dynamics.evaluate:cli", "compounding-error curve of a dynamics model on held-out clips"),
    "play": ("dynamics.play:cli", "roll a held-out clip forward under actions you choose (video)"),
    "plan": (
        "dynamics.plan:cli",
        "model-predictive control (CEM/MPPI) in the learned model against real ALE games: returns "
        "beside random play and the same planner in the true emulator",
    ),
    "run": (
        "vidworld.pipeline_run:cli",
        "run the whole chain (curate -> tokenizer -> tokenize -> dynamics -> eval)",
    ),
    "convert-checkpoint": (
        "runtime.convert:cli",
        "RUN_DIR trust=true: write model.safetensors for an older/foreign checkpoint; UNPICKLES its "
        "files (can run code): only on files you trust",
    ),
    "dashboard": ("vidworld.dashboard:cli", "apply the W&B dashboard for a pipeline run"),
    "report": (
        "vidworld.report:cli",
        "write DIR/report.html, a self-contained HTML report of a pipeline run's output",
    ),
}


def _resolve(target: str):
    module, func = target.split(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"vidworld: this subcommand is not available in this install ({target}: {e})") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vidworld",
        description="Train and evaluate video world models. Each subcommand takes a config file "
        "and key=value overrides, e.g. `vidworld curate jobs/curate.yaml input=DIR output=DIR`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", help="YAML config file (or, for `samples`, the output folder)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=100")
    argv = sys.argv[1:] if argv is None else argv
    # The deepspeed launcher appends --local_rank=N; the rank comes from the environment instead.
    argv = [a for a in argv if not a.startswith(("--local_rank=", "--local-rank="))]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    fn = _resolve(COMMANDS[args.command][0])
    try:
        return int(fn(args.config, list(args.overrides)) or 0)
    except ConfigError as e:
        print(f"vidworld {args.command}: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
