"""``JEPATask``: the JEPA's side of the training runtime (``task: jepa``, ``jobs/jepa.yaml``).

It trains on the tokenizer's latent shards like ``LAMTask`` (``KEY.latents.npy`` ``[T', C, h, w]``, a
random window of ``max_frames`` latent frames per clip, times ``latent_scale``). With
``model.num_actions > 0`` and ``KEY.actions.npy`` in the batch (``data.fields`` with ``actions``)
the predictor is conditioned on the actions, grouped per latent frame as the dynamics model groups
them (``dynamics.task.group_actions``); a batch without actions trains the predictor under "no
action". ``data.optional: [actions]`` mixes clips with and without them (a missing clip's
actions become "no action").

The EMA target is updated inside the model's forward, on whole parameters: ZeRO-3, which
partitions them, is refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from dynamics.jepa import JEPA, JEPAConfig, build_jepa
from dynamics.task import LatentShardTask, group_actions


class JEPATask(LatentShardTask):
    """The ``Task`` of the JEPA (see ``runtime.task.Task``)."""

    config_class: ClassVar[type] = JEPAConfig

    def __init__(self, model_cfg: JEPAConfig, train_cfg: Any) -> None:
        super().__init__(model_cfg, train_cfg)
        trainer = getattr(train_cfg, "trainer", None)
        if model_cfg.target == "ema" and getattr(trainer, "zero_stage", 0) == 3:
            raise ValueError(
                "trainer.zero_stage=3 partitions parameters, and the JEPA's EMA target (model.target: ema) "
                "averages whole ones inside forward: use trainer.zero_stage 0, 1 or 2 (the model is small)"
            )
        self._meta = build_jepa(model_cfg, device=None)  # for counting FLOPs only
        self._flops_cache: dict[int, float] = {}

    def build_model(self) -> nn.Module:
        return JEPA(self.cfg)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.encoder.blocks)

    # -- data --------------------------------------------------------------------------------
    def _actions(self, batch: dict[str, Any], frames: int) -> Tensor | None:
        """Actions grouped per latent frame ``[B, T', tau]`` long, "no action" for clips without
        them (``actions_present`` false), or None when the model or the batch has none."""
        cfg = self.cfg
        actions = batch.get("actions")
        if cfg.num_actions == 0 or not isinstance(actions, Tensor):
            return None
        if actions.is_floating_point():
            raise ValueError(
                f"model.num_actions={cfg.num_actions} but clips {list(batch.get('key') or [])[:4]} carry "
                "continuous actions; the JEPA takes discrete ones: set model.num_actions=0 to train "
                "without actions"
            )
        grouped = group_actions(actions.long(), frames, cfg.temporal_compression, cfg.num_actions)
        present = batch.get("actions_present")
        if isinstance(present, Tensor) and not bool(present.all()):
            keep = present.bool().view(-1, 1, 1)
            grouped = torch.where(keep, grouped, torch.full_like(grouped, cfg.num_actions))
        return grouped

    def prepare(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """A loader batch -> ``{"x": latents [B, C, T, h, w] float (times latent_scale), "actions":
        [B, T, tau] long or None, "keys", "short_clips"}``."""
        x, keys = self.transitions(batch, "JEPA", "predicts the next frame")
        actions = self._actions(batch, x.shape[1])
        x, start, end, short = self.window_latents(x, generator)
        return {
            "x": x,
            "actions": None if actions is None else actions[:, start:end],
            "keys": keys,
            "short_clips": short,
        }

    def example_batch(self, batch_size: int) -> dict[str, Any]:
        """A random micro-batch of ``max_frames`` latent frames as ``prepare`` returns it
        (``runtime.task.Task``; for the memory plan)."""
        cfg = self.cfg
        x = torch.randn(batch_size, cfg.latent_channels, cfg.max_frames, cfg.latent_height, cfg.latent_width)
        actions = None
        if cfg.num_actions > 0:
            actions = torch.randint(
                0, cfg.num_actions + 1, (batch_size, cfg.max_frames, cfg.temporal_compression)
            )
        return {"x": x, "actions": actions, "keys": [], "short_clips": 0}

    # -- training ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Any) -> dict[str, Tensor | float]:
        """The model's loss dict (``loss``, ``pred_loss``, ``copy_last_loss``, ``var_loss``,
        ``cov_loss``, ``embed_std``, ``embed_std_min``) plus ``short_clips``, ``latent_frames`` and
        the loader's skip counts."""
        p = next(iter(model.parameters()))
        x = batch["x"].to(device=p.device, dtype=p.dtype)
        actions = batch.get("actions")
        inputs = (x,) if actions is None else (x, actions.to(p.device))
        out = self.run_model(model, batch, *inputs)
        self.account(out, batch, x.shape[0], x.shape[2])
        return out

    def clip_flops(self, frames: int) -> float:
        """Training FLOPs of one clip of ``frames`` latent frames: one forward pass counted by
        ``FlopCounterMode`` on the meta model, times 3 (backward ~ 2x forward), less the backward
        that the EMA target encoder's forward does not have."""
        if frames not in self._flops_cache:
            cfg = self.cfg
            x = torch.zeros(
                1, cfg.latent_channels, frames, cfg.latent_height, cfg.latent_width, device="meta"
            )
            model = self._meta.eval()
            with FlopCounterMode(display=False) as counter:
                model(x)
            total = 3.0 * counter.get_total_flops()
            if model.target_encoder is not None:
                with FlopCounterMode(display=False) as counter:
                    model.target_encoder(x[:, :, 0].expand(frames, -1, -1, -1))
                total -= 2.0 * counter.get_total_flops()
            self._flops_cache[frames] = total
        return self._flops_cache[frames]

    def tokens_per_frame(self) -> int:
        """Latent positions per frame (h x w)."""
        return self.cfg.latent_height * self.cfg.latent_width

    def eval_media(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        """The batch's figures in eval mode (no target update, no videos): ``eval/pred_loss`` beside
        ``eval/copy_last_loss`` (predicting no change), ``eval/embed_std`` and ``eval/embed_std_min``
        (the per-dimension std of the embeddings over the batch's frames: near 0 is a collapse)."""
        p = next(iter(model.parameters()))
        x = batch["x"].to(device=p.device, dtype=p.dtype)
        if x.shape[2] < 2:
            return {}
        actions = batch.get("actions")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                stats = model(x, None if actions is None else actions.to(p.device))
        finally:
            model.train(was_training)
        keys = ("pred_loss", "copy_last_loss", "embed_std", "embed_std_min")
        return {f"eval/{k}": float(stats[k]) for k in keys}
