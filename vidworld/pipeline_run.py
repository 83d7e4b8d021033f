"""``vidworld run CONFIG input=PATH output=DIR``: the whole chain, one stage after another.

    curate -> tokenizer (train + reconstruction eval) -> tokenize -> dynamics (train) -> evaluate -> report

Each stage's settings live in a section of the pipeline YAML (``curate:``, ``tokenizer:``,
``tokenize:``, ``dynamics:``, ``evaluate:``), in that stage's own schema, and can be overridden
from the command line (``tokenizer.trainer.max_steps=50``). The chain fills in what links the
stages (paths under ``output``, the dynamics model's latent geometry from the tokenizer, the W&B
group) and writes each stage's resolved config to ``output/configs/STAGE.yaml`` before running it.

Output folder (``vidworld.report`` documents every file)::

    DIR/configs/STAGE.yaml   DIR/curated/   DIR/tokenizer/   DIR/latents/   DIR/dynamics/
    DIR/eval/                DIR/report.html

A stage whose outputs are complete is skipped (checked, not assumed: the curation stats against
the inputs, the exported weights' step against ``max_steps``, the latent stats' tokenizer
fingerprint, the evaluation's checkpoint step), so a chain that failed or was killed resumes where
it stopped. Training stages run as child processes: ``vidworld train`` in-process on one device,
``torchrun`` for ``train_processes > 1``, or Ray Train (``launcher.kind=ray``) when the chain runs
under a Ray cluster (``RAY_ADDRESS`` set, as ``ray job submit`` does) and ``train_launcher=auto``.
A training stage preempted with exit code 75 stops the chain with 75, so SLURM requeues it.
"""

from __future__ import annotations

import dataclasses
import json
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

STAGES = ("curate", "tokenizer", "tokenize", "dynamics", "evaluate", "report")
TRAINING_STAGES = ("tokenizer", "dynamics")


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
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)  # group defaults to output's name
    curate: Any = dataclasses.field(default_factory=dict)
    tokenizer: Any = dataclasses.field(default_factory=dict)
    tokenize: Any = dataclasses.field(default_factory=dict)
    dynamics: Any = dataclasses.field(default_factory=dict)
    evaluate: Any = dataclasses.field(default_factory=dict)


class StageFailed(RuntimeError):
    def __init__(self, stage: str, code: int, message: str) -> None:
        super().__init__(message)
        self.stage, self.code = stage, code


# ---------------------------------------------------------------------------------------------------
# Composing each stage's config


def _paths(cfg: PipelineConfig) -> dict[str, Path]:
    out = Path(cfg.output).absolute()
    return {
        "out": out,
        "configs": out / "configs",
        "curated": out / "curated",
        "tokenizer": out / "tokenizer",
        "latents": out / "latents",
        "dynamics": out / "dynamics",
        "eval": out / "eval",
    }


def _wandb_for(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    w = dataclasses.asdict(cfg.wandb)
    w["group"] = w["group"] or Path(cfg.output).absolute().name
    w["name"] = stage
    w["tags"] = sorted(set(w["tags"]) | {stage})
    return w


def _train_launcher(cfg: PipelineConfig) -> str:
    if cfg.train_launcher not in ("auto", "local", "ray", "external"):
        raise ConfigError(f"train_launcher must be auto, local, ray or external, got {cfg.train_launcher!r}")
    if cfg.train_launcher == "auto":
        return "ray" if os.environ.get("RAY_ADDRESS") else "local"
    return cfg.train_launcher


def _latent_geometry(latents: Path) -> dict[str, Any]:
    """The dynamics model's tokenizer seam, read from the latent shards' stats."""
    stats_path = latents / "stats.json"
    if not stats_path.is_file():
        return {}
    stats = json.loads(stats_path.read_text())
    tok, shape = stats.get("tokenizer") or {}, stats.get("latent_shape")
    geo: dict[str, Any] = {}
    if tok:
        geo["temporal_compression"] = tok["temporal_compression"]
        geo["head"] = "maskgit" if tok["is_discrete"] else "diffusion"
        if tok["is_discrete"]:
            geo["codebook_size"] = tok["codebook_size"]
        else:
            geo["latent_channels"] = tok["latent_channels"]
    if shape:  # [T', h, w] (indices) or [T', C, h, w] (latents)
        geo["latent_height"], geo["latent_width"] = shape[-2], shape[-1]
    if stats.get("latent_std"):
        geo["latent_scale"] = round(1.0 / max(float(stats["latent_std"]), 1e-6), 6)
    return geo


def compose(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """The stage's config as a plain dict: its YAML section plus the links the chain sets."""
    p = _paths(cfg)
    section = getattr(cfg, stage, None)
    base: dict[str, Any] = OmegaConf.to_container(OmegaConf.create(section or {}), resolve=True)  # type: ignore[assignment]
    if stage == "curate":
        return {**base, "input": cfg.input, "output": str(p["curated"])}
    if stage == "tokenize":
        return {
            **base,
            "input": str(p["curated"]),
            "output": str(p["latents"]),
            "tokenizer": str(p["tokenizer"]),
        }
    if stage == "evaluate":
        composed = {
            **base,
            "checkpoint": str(p["dynamics"]),
            "tokenizer": str(p["tokenizer"]),
            "shards": str(p["latents"]),
            "clips": str(p["curated"]),
            "output": str(p["eval"]),
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
        data_src = p["curated"] if stage == "tokenizer" else p["latents"]
        composed = {
            **base,
            "run_dir": str(p[stage]),
            "data": {**base.get("data", {}), "shards": str(data_src)},
            "wandb": {**base.get("wandb", {}), **_wandb_for(cfg, stage)},
            "launcher": {
                **base.get("launcher", {}),
                "kind": "ray" if _train_launcher(cfg) == "ray" else "local",
            },
        }
        if stage == "dynamics":
            composed["model"] = {**base.get("model", {}), **_latent_geometry(p["latents"])}
        return composed
    raise ValueError(f"stage {stage!r} has no config")


def write_stage_config(cfg: PipelineConfig, stage: str) -> Path:
    """Validate the composed config against the stage's schema and save it resolved; returns its path."""
    path = _paths(cfg)["configs"] / f"{stage}.yaml"
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
        schema = _schema(stage)
        merged = merge_into(schema, (source, OmegaConf.create(composed)))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"{source}: required key(s) {missing} have no value")
        resolved = OmegaConf.to_object(merged)
    return save_config(resolved, path)


def _schema(stage: str) -> type:
    if stage == "curate":
        from pipeline.curate import CurateConfig

        return CurateConfig
    if stage == "tokenize":
        from tokenizer.tokenize import TokenizeConfig

        return TokenizeConfig
    if stage == "evaluate":
        from dynamics.evaluate import EvaluateConfig

        return EvaluateConfig
    raise ValueError(stage)


# ---------------------------------------------------------------------------------------------------
# Completeness checks


def curate_complete(stage_cfg: Path) -> bool:
    """Stats say complete, every shard named is there, and the manifest covers exactly the inputs."""
    from pipeline.curate import CurateConfig, curation_inputs
    from pipeline.manifest import read_manifest
    from pipeline.shards import SHARD_PATTERN

    c = load_config(CurateConfig, stage_cfg)
    out = Path(c.output)
    try:
        stats = json.loads((out / "stats.json").read_text())
        rows = read_manifest(out / "manifest.jsonl")
    except (OSError, ValueError):
        return False
    if not stats.get("complete"):
        return False
    if not all((out / "shards" / SHARD_PATTERN.format(index=i)).is_file() for i in range(stats["shards"])):
        return False
    try:
        sources = {i.source for i in curation_inputs(c.input)}
    except ValueError:
        return False
    return sources == {r["source"] for r in rows}


def training_complete(stage_cfg: Path) -> bool:
    """The run exported weights at ``trainer.max_steps``."""
    from runtime.train import load_train_config
    from runtime.trained import trained_step

    t = load_train_config(stage_cfg)
    return trained_step(t.run_dir) == t.trainer.max_steps


def tokenizer_eval_complete(p: dict[str, Path], step: int | None) -> bool:
    try:
        metrics = json.loads((p["tokenizer"] / "eval" / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        step is not None and metrics.get("step") == step and (p["tokenizer"] / "eval" / "recon.mp4").is_file()
    )


def tokenize_complete(stage_cfg: Path) -> bool:
    """Stats say complete, made with this tokenizer and settings, and every shard is there."""
    from tokenizer.tokenize import TokenizeConfig, _fingerprint

    c = load_config(TokenizeConfig, stage_cfg)
    out = Path(c.output)
    try:
        stats = json.loads((out / "stats.json").read_text())
        fingerprint = _fingerprint(c)
    except (OSError, ValueError):
        return False
    shards = [out / "shards" / f"shard-{i:06d}.tar" for i in range(int(stats.get("shards", -1)))]
    return (
        bool(stats.get("complete"))
        and stats.get("fingerprint") == fingerprint
        and all(s.is_file() for s in shards)
    )


def evaluate_complete(p: dict[str, Path]) -> bool:
    from runtime.trained import trained_step

    try:
        meta = json.loads((p["eval"] / "eval.json").read_text())
    except (OSError, ValueError):
        return False
    names = ("compounding_error.csv", "compounding_error.png", "rollout.mp4")
    step = meta.get("checkpoint_step")
    return all((p["eval"] / n).is_file() for n in names) and step == trained_step(p["dynamics"])


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
    p = _paths(cfg)
    if stage == "report":
        from vidworld.report import write_report

        path = write_report(p["out"])
        if cfg.wandb.mode != "disabled":
            from vidworld.dashboard import publish

            publish(p["out"], dataclasses.replace(cfg.wandb, **{"group": _wandb_for(cfg, "report")["group"]}))
        print(f"run: report {path}", flush=True)
        return "done"
    stage_cfg = write_stage_config(cfg, stage)
    if stage == "curate":
        if curate_complete(stage_cfg):
            return "skipped"
        _child(stage, _vidworld_cmd(cfg, "curate", str(stage_cfg)))
        return "done"
    if stage in TRAINING_STAGES:
        trained = not training_complete(stage_cfg)
        if trained and _train_launcher(cfg) == "external":
            raise StageFailed(
                stage,
                1,
                f"stage '{stage}': training is launched outside the chain (train_launcher=external) and has "
                f"not reached trainer.max_steps; run `vidworld train {stage_cfg}` (srun, torchrun) first",
            )
        if trained:
            _child(stage, _vidworld_cmd(cfg, "train", str(stage_cfg)))
        evaluated = stage == "tokenizer" and _tokenizer_eval(p) == "done"
        return "done" if trained or evaluated else "skipped"
    if stage == "tokenize":
        if tokenize_complete(stage_cfg):
            return "skipped"
        _child(stage, _vidworld_cmd(cfg, "tokenize", str(stage_cfg)))
        return "done"
    if stage == "evaluate":
        if evaluate_complete(p):
            return "skipped"
        _child(stage, _vidworld_cmd(cfg, "evaluate", str(stage_cfg)))
        return "done"
    raise ConfigError(f"unknown stage {stage!r}; stages are {list(STAGES)}")


def _tokenizer_eval(p: dict[str, Path]) -> str:
    """Held-out reconstruction metrics and the side-by-side video of the trained tokenizer."""
    from runtime.trained import trained_step
    from tokenizer.evaluate import evaluate_tokenizer

    step = trained_step(p["tokenizer"])
    if tokenizer_eval_complete(p, step):
        return "skipped"
    evaluate_tokenizer(str(p["tokenizer"]), str(p["curated"]), p["tokenizer"] / "eval")
    return "done"


def run(cfg: PipelineConfig, stage_runner: Callable[[PipelineConfig, str], str] = run_stage) -> int:
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    out = _paths(cfg)["out"]
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "configs" / "pipeline.yaml")
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
    print(f"run: pipeline finished in {time.monotonic() - t0:.1f} s; outputs under {out}", flush=True)
    for name in ("report.html", "tokenizer/eval/recon.mp4", "eval/rollout.mp4", "eval/compounding_error.png"):
        if (out / name).is_file():
            print(f"  {name.split('/')[-1]:24s} {out / name}", flush=True)
    return 0


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld run CONFIG input=PATH output=DIR [key=value ...]``."""
    return run(load_config(PipelineConfig, config_path, overrides))
