"""The pipeline output folder, described once for the chain, the report and the dashboard.

``vidworld run CONFIG output=DIR`` writes (each stage owns the format inside its folder)::

    DIR/configs/          pipeline.yaml and each stage's resolved config (STAGE.yaml)
    DIR/curated/          clip shards, manifest.jsonl, stats.json      (pipeline.curate)
    DIR/tokenizer/        the tokenizer's training run folder           (runtime.train)
    DIR/tokenizer/eval/   held-out reconstruction: metrics.json, recon.mp4 (tokenizer.evaluate)
    DIR/latents/          latent shards and stats.json                  (tokenizer.tokenize)
    DIR/lam/              the latent action model's training run folder (runtime.train)
    DIR/lam/eval/         held-out probe of its codes: metrics.json     (dynamics.lam_eval)
    DIR/dynamics/         the dynamics model's training run folder      (runtime.train)
    DIR/eval/             compounding error, action sensitivity, counterfactuals, rollout.mp4
                          and eval.json                                 (dynamics.evaluate)
    DIR/report.html       the self-contained report                     (vidworld.report)
    DIR/wandb/            the report's offline W&B run, when logging offline
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    """Every folder of one pipeline output folder ``root`` (absolute): ``OutputLayout.of(output)``."""

    root: Path
    configs: Path
    curated: Path
    tokenizer: Path
    tokenizer_eval: Path
    latents: Path
    lam: Path
    lam_eval: Path
    dynamics: Path
    eval: Path
    report: Path

    @classmethod
    def of(cls, output: str | Path) -> OutputLayout:
        r = Path(output).absolute()
        return cls(
            root=r,
            configs=r / "configs",
            curated=r / "curated",
            tokenizer=r / "tokenizer",
            tokenizer_eval=r / "tokenizer" / "eval",
            latents=r / "latents",
            lam=r / "lam",
            lam_eval=r / "lam" / "eval",
            dynamics=r / "dynamics",
            eval=r / "eval",
            report=r / "report.html",
        )

    def stage_config(self, stage: str) -> Path:
        """``configs/STAGE.yaml``: the resolved config the chain ran the stage with."""
        return self.configs / f"{stage}.yaml"
