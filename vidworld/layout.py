"""The pipeline output folder, described once for the chain, the report and the dashboard.

``vidworld run CONFIG output=DIR`` writes (each stage owns the format inside its folder)::

    DIR/configs/          pipeline.yaml and each stage's resolved config (STAGE.yaml)
    DIR/curated/          clip shards, manifest.jsonl, stats.json      (pipeline.curate)
    DIR/tokenizer/        the tokenizer's training run folder           (runtime.train)
    DIR/tokenizer/eval/   held-out reconstruction: metrics.json, recon.mp4 (tokenizer.evaluate)
    DIR/latents/          latent shards and stats.json                  (tokenizer.tokenize)
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
    """Every folder of one pipeline output folder ``root`` (absolute)."""

    root: Path

    @classmethod
    def of(cls, output: str | Path) -> OutputLayout:
        return cls(Path(output).absolute())

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def curated(self) -> Path:
        return self.root / "curated"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_eval(self) -> Path:
        return self.root / "tokenizer" / "eval"

    @property
    def latents(self) -> Path:
        return self.root / "latents"

    @property
    def dynamics(self) -> Path:
        return self.root / "dynamics"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def stage_config(self, stage: str) -> Path:
        """``configs/STAGE.yaml``: the resolved config the chain ran the stage with."""
        return self.configs / f"{stage}.yaml"
