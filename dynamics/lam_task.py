"""``LAMTask``: the latent action model's side of the training runtime (``task: lam``, ``jobs/lam.yaml``).

It trains on the tokenizer's latent shards like ``DynamicsTask`` (``KEY.latents.npy`` ``[T', C, h, w]``,
a random window of ``max_frames`` latent frames per clip, times ``latent_scale``) and uses no action
labels: the LAM is unsupervised. When a batch does carry ``KEY.actions.npy`` (``data.fields`` with
``actions``, and ``data.require: [actions]`` so batches do not mix clips with and without them),
``eval_media`` also scores the codes against the true movement class (``dynamics.action_probe``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from dynamics.action_probe import (
    game_of,
    linear_probe,
    movement_classes,
    nmi,
    nmi_shuffled,
    one_hot,
    transition_labels,
)
from dynamics.lam import LAMConfig, LatentActionModel, build_lam
from dynamics.task import LatentShardTask


class LAMTask(LatentShardTask):
    """The ``Task`` of the latent action model (see ``runtime.task.Task``)."""

    config_class: ClassVar[type] = LAMConfig

    def __init__(self, model_cfg: LAMConfig, train_cfg: Any) -> None:
        super().__init__(model_cfg, train_cfg)
        self._meta = build_lam(model_cfg, device=None)  # for counting FLOPs only
        self._flops_cache: dict[int, float] = {}

    def build_model(self) -> nn.Module:
        return LatentActionModel(self.cfg)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [*model.encoder.blocks, *model.decoder.blocks]

    # -- data --------------------------------------------------------------------------------
    def _labels(self, batch: dict[str, Any], frames: int) -> Tensor | None:
        """Movement class per latent frame ``[B, T']`` (-1: frame 0 or a clip whose game is unknown),
        or None when the batch has no actions."""
        actions = batch.get("actions")
        if not isinstance(actions, Tensor):
            return None
        metas = batch.get("meta") or [{}] * actions.shape[0]
        rows = []
        for meta, acts in zip(metas, actions, strict=True):
            game = game_of(meta)
            try:
                classes = movement_classes(game) if game else None
            except ValueError:
                classes = None
            if classes is None:
                rows.append(np.full(frames, -1, np.int64))
            else:
                rows.append(transition_labels(acts.numpy(), frames, self.cfg.temporal_compression, classes))
        return torch.from_numpy(np.stack(rows))

    def prepare(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """A loader batch -> ``{"x": latents [B, C, T, h, w] float (times latent_scale), "labels":
        movement classes [B, T] long or None, "keys", "short_clips"}``."""
        x, keys = self.transitions(batch, "latent action model", "learns from transitions")
        labels = self._labels(batch, x.shape[1])
        x, start, end, short = self.window_latents(x, generator)
        return {
            "x": x,
            "labels": None if labels is None else labels[:, start:end],
            "keys": keys,
            "short_clips": short,
        }

    def example_batch(self, batch_size: int) -> dict[str, Any]:
        """A random micro-batch of ``max_frames`` latent frames as ``prepare`` returns it, without
        labels (``runtime.task.Task``; for the memory plan)."""
        cfg = self.cfg
        x = torch.randn(batch_size, cfg.latent_channels, cfg.max_frames, cfg.latent_height, cfg.latent_width)
        return {"x": x, "labels": None, "keys": [], "short_clips": 0}

    # -- training ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Any) -> dict[str, Tensor | float]:
        """The model's loss dict (``loss``, ``recon_mse``, ``copy_last_mse``, ``code_perplexity``,
        ``codes_used``) plus ``short_clips``, ``latent_frames`` and the loader's skip counts."""
        p = next(iter(model.parameters()))
        x = batch["x"].to(device=p.device, dtype=p.dtype)
        out = self.run_model(model, batch, x)
        self.account(out, batch, x.shape[0], x.shape[2])
        return out

    def clip_flops(self, frames: int) -> float:
        """Training FLOPs of one clip of ``frames`` latent frames: the convolutions and matmuls of one
        forward pass, counted by ``FlopCounterMode`` on the meta model, times 3 (backward ~ 2x forward)."""
        if frames not in self._flops_cache:
            cfg = self.cfg
            x = torch.zeros(
                1, cfg.latent_channels, frames, cfg.latent_height, cfg.latent_width, device="meta"
            )
            with FlopCounterMode(display=False) as counter:
                self._meta(x)
            self._flops_cache[frames] = 3.0 * counter.get_total_flops()
        return self._flops_cache[frames]

    def tokens_per_frame(self) -> int:
        """Latent positions per frame (h x w)."""
        return self.cfg.latent_height * self.cfg.latent_width

    def eval_media(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        """Code and reconstruction metrics of one batch (no videos: they need the tokenizer's decoder).

        ``eval/recon_mse`` (decoder under the inferred codes), ``eval/copy_last_mse`` (repeat the last
        frame) and, with more than one clip, ``eval/shuffled_code_mse`` (under another clip's codes:
        the gap to ``recon_mse`` is what the codes carry); ``eval/code_perplexity`` and
        ``eval/codes_used``; with movement labels, ``eval/nmi`` (and ``eval/nmi_shuffled``) and the
        probe's ``eval/probe_balanced_accuracy`` against ``eval/shuffled_probe_balanced_accuracy``
        (the batch's games pooled, split by clip: a rough signal; ``action_probe.evaluate_latent_actions``
        gives the per-game figures).
        """
        p = next(iter(model.parameters()))
        x = batch["x"].to(device=p.device, dtype=p.dtype)
        if x.shape[2] < 2:
            return {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                stats = model(x)
                codes = model.infer(x)[:, 1:]
                truth = x[:, :, 1:].float()
                out: dict[str, Any] = {
                    "eval/recon_mse": float(stats["recon_mse"]),
                    "eval/copy_last_mse": float(stats["copy_last_mse"]),
                    "eval/code_perplexity": float(stats["code_perplexity"]),
                    "eval/codes_used": float(stats["codes_used"]),
                }
                if x.shape[0] > 1:
                    shuffled = model.predict(x, torch.roll(codes, 1, dims=0))
                    out["eval/shuffled_code_mse"] = float(((shuffled.float() - truth) ** 2).mean())
        finally:
            model.train(was_training)
        labels = batch.get("labels")
        if isinstance(labels, Tensor):
            out.update(self._label_scores(codes.cpu().numpy(), labels[:, 1:].numpy()))
        return out

    def _label_scores(self, codes: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        groups = np.broadcast_to(np.arange(codes.shape[0])[:, None], codes.shape)
        keep = labels >= 0
        c, y, g = codes[keep], labels[keep], groups[keep]
        if c.size < 4 or len(np.unique(y)) < 2:
            return {}
        probe = linear_probe(
            one_hot(c, self.cfg.num_codes), y, seed=0, groups=g if len(np.unique(g)) > 1 else None
        )
        return {
            "eval/nmi": nmi(c, y),
            "eval/nmi_shuffled": nmi_shuffled(c, y),
            "eval/probe_balanced_accuracy": probe["balanced_accuracy"],
            "eval/shuffled_probe_balanced_accuracy": probe["shuffled_balanced_accuracy"],
        }
