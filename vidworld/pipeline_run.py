"""``vidworld run CONFIG input=PATH output=DIR``: the whole chain, one stage after another.

    curate -> tokenizer (train + reconstruction eval) -> tokenize -> lam (train + held-out probe)
        -> dynamics (train) -> evaluate -> report

Each stage's settings live in a section of the pipeline YAML (``curate:``, ``tokenizer:``,
``tokenize:``, ``lam:``, ``dynamics:``, ``evaluate:``), in that stage's own schema, and can be
overridden from the command line (``tokenizer.trainer.max_steps=50``). The chain fills in what links
the stages (paths under ``output``, the latent geometry from the tokenizer, the latent action model
for the dynamics model when a ``lam`` stage runs, the W&B group) and writes each stage's resolved
config to ``output/configs/STAGE.yaml`` before running it. The ``lam`` stage is optional: without it
(and without a trained one in ``DIR/lam``) the dynamics model trains on real actions alone.

Output folder: ``vidworld.layout.OutputLayout`` (``vidworld.report`` documents every file)::

    DIR/configs/STAGE.yaml   DIR/curated/   DIR/tokenizer/   DIR/latents/   DIR/lam/
    DIR/dynamics/            DIR/eval/      DIR/report.html

A stage whose outputs are complete is skipped. The chain asks the stage (``is_complete`` of
``pipeline.curate``, ``runtime.trained``, ``tokenizer.evaluate``, ``tokenizer.tokenize`` and
``dynamics.evaluate``); each checks its own files, not assuming them, so a chain that failed or was
killed resumes where it stopped. Training stages run as child processes: ``vidworld train``
in-process on one device, ``torchrun`` for ``train_processes > 1``, or Ray Train
(``launcher.kind=ray``) when the chain runs under a Ray cluster (``RAY_ADDRESS`` set, as
``ray job submit`` does) and ``train_launcher=auto``.
A training stage preempted with exit code 75 stops the chain with 75, so SLURM requeues it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from runtime.config import ConfigError, load_config, merge_into, save_config
from runtime.files import atomic_write_text
from runtime.tracking import WandbConfig
from vidworld.layout import OutputLayout

STAGES = ("curate", "tokenizer", "tokenize", "lam", "dynamics", "evaluate", "report")
TRAINING_STAGES = ("tokenizer", "lam", "dynamics")


@dataclasses.dataclass
class PipelineConfig:
    """The pipeline YAML. Stage sections are checked against each stage's own schema when composed."""

    input: str = "???"  # raw video: folder, glob, fsspec URL or list file (see pipeline.inputs)
    output: str = "???"  # everything the chain makes goes under this folder
    stages: list[str] = dataclasses.field(default_factory=lambda: list(STAGES))
    # auto (ray under RAY_ADDRESS, else local) | local | ray | external (started outside the chain,
    # as slurm/stage.sbatch does with srun: the chain then only checks that training finished)
    train_launcher: str = "auto"
    train_processes: int = 1  # local launcher: processes per training stage (torchrun when > 1)
    prepare_only: bool = False  # write output/configs/STAGE.yaml for the selected stages, run nothing
    # Reruns of curate when some inputs failed for a reason other than their content (unreadable,
    # vanished, disk full, a dead worker: curate exits 4 and keeps them pending); 0: stop at once.
    curate_retries: int = 1
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)  # group defaults to output's name
    curate: Any = dataclasses.field(default_factory=dict)
    tokenizer: Any = dataclasses.field(default_factory=dict)
    tokenize: Any = dataclasses.field(default_factory=dict)
    lam: Any = dataclasses.field(default_factory=dict)
    dynamics: Any = dataclasses.field(default_factory=dict)
    evaluate: Any = dataclasses.field(default_factory=dict)


class StageFailed(RuntimeError):
    def __init__(self, stage: str, code: int, message: str) -> None:
        super().__init__(message)
        self.stage, self.code = stage, code


# ---------------------------------------------------------------------------------------------------
# Composing each stage's config


def _wandb_for(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    w = dataclasses.asdict(cfg.wandb)
    w["group"] = w["group"] or OutputLayout.of(cfg.output).root.name
    w["name"] = stage
    w["tags"] = sorted(set(w["tags"]) | {stage})
    return w


def _train_launcher(cfg: PipelineConfig) -> str:
    if cfg.train_launcher not in ("auto", "local", "ray", "external"):
        raise ConfigError(f"train_launcher must be auto, local, ray or external, got {cfg.train_launcher!r}")
    if cfg.train_launcher == "auto":
        return "ray" if os.environ.get("RAY_ADDRESS") else "local"
    return cfg.train_launcher


def compose(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """The stage's config as a plain dict: its YAML section plus the links the chain sets."""
    layout = OutputLayout.of(cfg.output)
    section = getattr(cfg, stage, None)
    base: dict[str, Any] = OmegaConf.to_container(OmegaConf.create(section or {}), resolve=True)  # type: ignore[assignment]
    if stage == "curate":
        return {**base, "input": cfg.input, "output": str(layout.curated)}
    if stage == "tokenize":
        return {
            **base,
            "input": str(layout.curated),
            "output": str(layout.latents),
            "tokenizer": str(layout.tokenizer),
        }
    if stage == "evaluate":
        composed = {
            **base,
            "checkpoint": str(layout.dynamics),
            "tokenizer": str(layout.tokenizer),
            "shards": str(layout.latents),
            "clips": str(layout.curated),
            "output": str(layout.eval),
            "wandb": {**base.get("wandb", {}), **_wandb_for(cfg, "evaluate")},
        }
        # Simulator samples carry counterfactual branch files beside the videos (pipeline/branches.py);
        # their frames must be resized as curation resized the clips the model learnt from.
        found = Path(cfg.input) / "branches"
        if not base.get("branches") and "://" not in cfg.input and found.is_dir():
            composed["branches"] = str(found.absolute())
        if composed.get("branches"):
            from pipeline.curate import CurateConfig

            curate: dict[str, Any] = OmegaConf.to_container(OmegaConf.create(cfg.curate or {}), resolve=True)  # type: ignore[assignment]
            composed["branch_size"] = curate.get("size", CurateConfig.size)
            composed["branch_resize"] = curate.get("resize", CurateConfig.resize)
        return composed
    if stage in TRAINING_STAGES:
        data_src, run_dir = {
            "tokenizer": (layout.curated, layout.tokenizer),
            "lam": (layout.latents, layout.lam),
            "dynamics": (layout.latents, layout.dynamics),
        }[stage]
        composed = {
            **base,
            "run_dir": str(run_dir),
            "data": {**base.get("data", {}), "shards": str(data_src)},
            "wandb": {**base.get("wandb", {}), **_wandb_for(cfg, stage)},
            "launcher": {
                **base.get("launcher", {}),
                "kind": "ray" if _train_launcher(cfg) == "ray" else "local",
            },
        }
        if stage in ("lam", "dynamics"):
            from tokenizer.tokenize import latent_geometry

            composed["model"] = {**base.get("model", {}), **latent_geometry(layout.latents)}
        if stage == "dynamics" and _uses_lam(cfg):
            composed["model"].setdefault("lam", str(layout.lam))
            composed["model"].setdefault("latent_actions", _latent_action_codes(cfg))
        return composed
    raise ValueError(f"stage {stage!r} has no config")


def _uses_lam(cfg: PipelineConfig) -> bool:
    """Whether the dynamics stage conditions on the chain's latent action model: when the chain runs
    the lam stage, or when it has a lam section and the model is trained (a per-stage job, as SLURM
    runs each stage with stages=[STAGE], after the lam job)."""
    if "lam" in cfg.stages:
        return True
    from runtime.trained import trained_step

    return bool(cfg.lam) and trained_step(OutputLayout.of(cfg.output).lam) is not None


def _latent_action_codes(cfg: PipelineConfig) -> int:
    """How many codes the chain's latent action model has (its ``lam.model`` section)."""
    from dynamics.lam import LAMConfig

    model: dict[str, Any] = OmegaConf.to_container(  # type: ignore[assignment]
        OmegaConf.create((cfg.lam or {}).get("model", {})), resolve=True
    )
    known = {f.name for f in dataclasses.fields(LAMConfig)}
    return LAMConfig(**{k: v for k, v in model.items() if k in known}).num_codes


def write_stage_config(cfg: PipelineConfig, stage: str) -> Path:
    """Validate the composed config against the stage's schema and save it resolved; returns its path."""
    path = OutputLayout.of(cfg.output).stage_config(stage)
    composed = compose(cfg, stage)
    source = f"pipeline section '{stage}'"
    if stage in TRAINING_STAGES:
        from runtime.train import load_train_config

        # load_train_config reads a file; validate from a draft, then keep the resolved one.
        draft = path.with_suffix(".draft.yaml")
        atomic_write_text(draft, OmegaConf.to_yaml(OmegaConf.create(composed)))
        try:
            resolved = load_train_config(draft)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from e
        finally:
            draft.unlink(missing_ok=True)
    else:
        schema, _ = _stage(stage)
        merged = merge_into(schema, (source, OmegaConf.create(composed)))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"{source}: required key(s) {missing} have no value")
        resolved = OmegaConf.to_object(merged)
    return save_config(resolved, path)


def _stage(stage: str) -> tuple[type, Callable[[Any], bool]]:
    """A non-training stage's config schema and its completeness check (which takes that config)."""
    if stage == "curate":
        from pipeline.curate import CurateConfig, is_complete

        return CurateConfig, is_complete
    if stage == "tokenize":
        from tokenizer.tokenize import TokenizeConfig, is_complete

        return TokenizeConfig, is_complete
    if stage == "evaluate":
        from dynamics.evaluate import EvaluateConfig, is_complete

        return EvaluateConfig, is_complete
    raise ValueError(stage)


def stage_complete(stage: str, stage_cfg: Path) -> bool:
    """Whether ``stage``'s outputs, as its resolved config ``stage_cfg`` names them, are complete:
    the chain asks the stage, which alone knows its files."""
    if stage in TRAINING_STAGES:
        from runtime.train import load_train_config
        from runtime.trained import is_complete

        return is_complete(load_train_config(stage_cfg))
    schema, is_complete = _stage(stage)
    return is_complete(load_config(schema, stage_cfg))


# ---------------------------------------------------------------------------------------------------
# Running the stages


def _vidworld_cmd(cfg: PipelineConfig, *args: str) -> list[str]:
    """A child ``vidworld`` command; torchrun for several local training processes."""
    if args[0] == "train" and cfg.train_processes > 1 and _train_launcher(cfg) == "local":
        return [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={cfg.train_processes}", "-m", "vidworld.cli", *args,
        ]  # fmt: skip
    return [sys.executable, "-m", "vidworld.cli", *args]


def _child(stage: str, cmd: list[str]) -> None:
    print(f"run: [{stage}] {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd)
    if code != 0:
        raise StageFailed(stage, code, f"stage '{stage}' exited with code {code}: {' '.join(cmd)}")


def run_stage(cfg: PipelineConfig, stage: str) -> str:
    """Run one stage unless its outputs are complete; returns ``"done"`` or ``"skipped"``."""
    layout = OutputLayout.of(cfg.output)
    if stage == "report":
        from vidworld.report import write_report

        path = write_report(layout.root)
        if cfg.wandb.mode != "disabled":
            from vidworld.dashboard import publish

            publish(layout.root, dataclasses.replace(cfg.wandb, group=_wandb_for(cfg, "report")["group"]))
        print(f"run: report {path}", flush=True)
        return "done"
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    stage_cfg = write_stage_config(cfg, stage)
    if stage in TRAINING_STAGES:
        trained = not stage_complete(stage, stage_cfg)
        if trained and _train_launcher(cfg) == "external":
            raise StageFailed(
                stage,
                1,
                f"stage '{stage}': training is launched outside the chain (train_launcher=external) and has "
                f"not reached trainer.max_steps; run `vidworld train {stage_cfg}` (srun, torchrun) first",
            )
        if trained:
            _child(stage, _vidworld_cmd(cfg, "train", str(stage_cfg)))
        evaluated = {"tokenizer": _tokenizer_eval, "lam": _lam_eval}.get(stage, lambda _: "skipped")(layout)
        evaluated = evaluated == "done"
        return "done" if trained or evaluated else "skipped"
    if stage_complete(stage, stage_cfg):
        return "skipped"
    from pipeline.curate import EXIT_RETRY  # curate's exit code for inputs still pending

    retries = max(0, cfg.curate_retries) if stage == "curate" else 0
    for attempt in range(retries + 1):
        try:
            _child(stage, _vidworld_cmd(cfg, stage, str(stage_cfg)))
            break
        except StageFailed as e:
            if e.code != EXIT_RETRY or attempt == retries:
                raise
            print(
                f"run: curate: some inputs failed for a reason other than their content; retrying them "
                f"(attempt {attempt + 2} of {retries + 1}; curate_retries={retries})",
                flush=True,
            )
    return "done"


def _tokenizer_eval(layout: OutputLayout) -> str:
    """Held-out reconstruction metrics and the side-by-side video of the trained tokenizer."""
    from tokenizer.evaluate import evaluate_tokenizer, is_complete

    if is_complete(layout.tokenizer, layout.tokenizer_eval):
        return "skipped"
    evaluate_tokenizer(str(layout.tokenizer), str(layout.curated), layout.tokenizer_eval)
    return "done"


def _lam_eval(layout: OutputLayout) -> str:
    """How well the latent action model's codes tell the true actions apart on held-out clips."""
    from dynamics.lam_eval import evaluate_lam, is_complete

    if is_complete(layout.lam, layout.latents, layout.lam_eval):
        return "skipped"
    evaluate_lam(layout.lam, layout.latents, layout.lam_eval)
    return "done"


def _headline_files(layout: OutputLayout) -> list[Path]:
    """What a person opens first once the chain has finished (those that exist)."""
    from dynamics.evaluate import COMPOUNDING_FIGURE, ROLLOUT_VIDEO
    from tokenizer.evaluate import RECON_VIDEO

    paths = [layout.report, layout.tokenizer_eval / RECON_VIDEO, layout.eval / ROLLOUT_VIDEO]
    return [p for p in (*paths, layout.eval / COMPOUNDING_FIGURE) if p.is_file()]


def run(cfg: PipelineConfig, stage_runner: Callable[[PipelineConfig, str], str] = run_stage) -> int:
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    layout = OutputLayout.of(cfg.output)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, layout.stage_config("pipeline"))
    if cfg.prepare_only:
        for stage in (s for s in STAGES if s in cfg.stages and s != "report"):
            print(f"stage-config {stage} {write_stage_config(cfg, stage)}", flush=True)
        return 0
    t0 = time.monotonic()
    for i, stage in enumerate(s for s in STAGES if s in cfg.stages):
        t = time.monotonic()
        print(f"run: stage {i + 1}/{len(cfg.stages)} '{stage}'", flush=True)
        try:
            status = stage_runner(cfg, stage)
        except StageFailed as e:
            print(
                f"run: {e}; fix it and rerun the same command: finished stages are skipped", file=sys.stderr
            )
            return e.code
        print(f"run: stage '{stage}' {status} in {time.monotonic() - t:.1f} s", flush=True)
    print(f"run: pipeline finished in {time.monotonic() - t0:.1f} s; outputs under {layout.root}", flush=True)
    for path in _headline_files(layout):
        print(f"  {path.name:24s} {path}", flush=True)
    return 0


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld run CONFIG input=PATH output=DIR [key=value ...]``."""
    return run(load_config(PipelineConfig, config_path, overrides))
