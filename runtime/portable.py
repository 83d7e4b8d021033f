"""Resume on another number of processes or another ZeRO stage: the optimizer state, consolidated.

DeepSpeed's own checkpoint files only load into the layout that wrote them: the same world size, the
same ZeRO stage (its flat optimizer partitions are cut per rank), the same precision. So every
checkpoint also holds the whole training state in a layout-free form, written by rank 0:

- ``model.safetensors``: every parameter in fp32 from the optimizer's master copy, and the buffers
  (``runtime.checkpoint``, also what inference loads);
- ``optimizer.safetensors``: AdamW's two moments per parameter, ``exp_avg/NAME`` and
  ``exp_avg_sq/NAME`` (fp32, the parameter's full shape), with metadata ``{"format": 1, "step": the
  optimizer's own step count (skipped non-finite steps do not count), "lr_schedule": the LR
  scheduler's state as JSON, "engine": DeepSpeed's step counters as JSON}``. Absent when the
  optimizer had not stepped yet (then there is nothing to carry) or
  ``trainer.portable_checkpoints`` is false.

``load`` puts both into an engine built for any layout: parameters and their fp32 masters, AdamW's
moments and step count, the LR schedule and the engine's counters. Everything else a resume needs
(the step, loader position, RNG) is in the per-rank runtime state (``runtime.checkpoint``).

DeepSpeed keeps the master weights and moments in four shapes; ``State`` reads and writes each per
parameter: ``client`` (ZeRO-0 in fp32: our ``FiniteAdamW`` holds per-parameter state, the parameters
are the masters), ``flat`` (ZeRO-0 in bf16: DeepSpeed's fp16 wrappers keep replicated fp32
masters, one vector per group or one tensor per parameter),
``fragments`` (ZeRO-1/2: each rank's slice of the flat fp32 vectors, through DeepSpeed's
tensor-fragment API ``deepspeed.utils.safe_get_full_*`` / ``safe_set_full_*``) and ``zero3``
(partitioned parameters, the same API). Under ZeRO reading is collective: every rank calls
``gather`` (and ``State.master``) for the same parameters in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from runtime.files import atomic_open

OPTIMIZER = "optimizer.safetensors"
FORMAT = 1
MOMENTS = ("exp_avg", "exp_avg_sq")
ENGINE_COUNTERS = ("global_steps", "global_samples", "skipped_steps")


def optimizer_path(ckpt_dir: str | Path) -> Path:
    return Path(ckpt_dir) / OPTIMIZER


def engine_kind(engine: Any) -> str:
    """``"zero3"``, ``"fragments"``, ``"flat"`` or ``"client"`` (see the module docstring)."""
    params = [p for p in engine.module.parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for p in params):
        return "zero3"
    if any(hasattr(p, "_hp_mapping") for p in params):
        return "fragments"
    opt = engine.optimizer
    if hasattr(opt, "fp16_groups") and (hasattr(opt, "fp32_groups_flat") or hasattr(opt, "fp32_groups")):
        return "flat"
    return "client"


class State:
    """Per-parameter access to one engine's fp32 master weights and AdamW moments, whatever its kind."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.kind = engine, engine_kind(engine)
        opt = engine.optimizer
        # The torch optimizer that holds the state: DeepSpeed's wrappers keep it as ``.optimizer``.
        self.base = opt if self.kind == "client" else opt.optimizer
        self.slices: dict[int, tuple[torch.Tensor, int]] = {}  # flat: id(param) -> (master vector, offset)
        if self.kind == "flat" and hasattr(opt, "fp32_groups_flat"):  # one vector per group
            for params, flat in zip(opt.fp16_groups, opt.fp32_groups_flat, strict=True):
                offset = 0
                for p in params:
                    self.slices[id(p)] = (flat, offset)
                    offset += p.numel()
        elif self.kind == "flat":  # DeepSpeed's unfused wrapper: one fp32 master per parameter
            for params, masters in zip(opt.fp16_groups, opt.fp32_groups, strict=True):
                for p, master in zip(params, masters, strict=True):
                    self.slices[id(p)] = (master, 0)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """Named trainable parameters, a tied parameter once (under its first name), in module order."""
        return [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]

    def flats(self) -> list[torch.Tensor]:
        """The tensors the base optimizer keeps state for (ZeRO-3 lends its partitions to the
        optimizer's groups only during a step, so they are taken from the engine there)."""
        if self.kind == "zero3":
            return list(self.engine.optimizer.fp32_partitioned_groups_flat)
        return [p for group in self.base.param_groups for p in group["params"]]

    def adam_step(self) -> int | None:
        """The optimizer's own step count (equal over its groups), or None before its first step."""
        for state in self.base.state.values():
            if "step" in state:
                return int(state["step"])
        return None

    def link(self) -> None:
        """ZeRO-1/2: map the moments to parameters (DeepSpeed does it after the first step)."""
        if self.kind == "fragments":
            self.engine.optimizer._lazy_init_hp_params_optimizer_state()

    def _shape(self, param: nn.Parameter) -> torch.Size:
        return param.ds_shape if self.kind == "zero3" else param.shape

    def get(self, param: nn.Parameter, key: str | None = None) -> torch.Tensor | None:
        """The full fp32 master (``key`` None) or moment ``key`` of ``param``; a master is None where
        the parameter is its own master (fp32 ZeRO-0). Collective under ZeRO."""
        if self.kind in ("zero3", "fragments"):
            from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

            full = (
                safe_get_full_fp32_param(param) if key is None else safe_get_full_optimizer_state(param, key)
            )
            return None if full is None else full.reshape(self._shape(param))
        if self.kind == "flat":
            flat, offset = self.slices[id(param)]
            source = flat if key is None else self.base.state[flat][key]
            return source.view(-1)[offset : offset + param.numel()].view(param.shape)
        return None if key is None else self.base.state[param][key]

    @torch.no_grad()
    def set(self, param: nn.Parameter, value: torch.Tensor, key: str | None = None) -> None:
        """Set ``param``'s fp32 master (``key`` None) or moment ``key`` from its full fp32 ``value``."""
        value = value.to(torch.float32)
        if self.kind in ("zero3", "fragments"):
            from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

            if self.kind == "zero3":  # DeepSpeed cuts the flat value into equal, zero-padded partitions
                padded = torch.zeros(param.partition_numel() * dist.get_world_size(), dtype=torch.float32)
                padded[: value.numel()] = value.reshape(-1)
                value = padded
            if key is None:
                safe_set_full_fp32_param(param, value)
            else:
                safe_set_full_optimizer_state(param, value, key)
        elif self.kind == "flat":
            flat, offset = self.slices[id(param)]
            target = flat if key is None else self.base.state[flat][key]
            target.view(-1)[offset : offset + param.numel()].copy_(value.reshape(-1))
        elif key is not None:
            self.base.state[param][key] = value.to(param.device, param.dtype).reshape(param.shape).clone()

    def ensure_state(self, steps: int) -> None:
        """Give each tensor the base optimizer steps an AdamW state (zeros where it had none: before its
        first step a torch optimizer has none to write into) with its step count set to ``steps``.
        DeepSpeed's CPU Adam counts steps in an int, torch's AdamW in a tensor."""
        on_device = self.base.defaults.get("fused") or self.base.defaults.get("capturable")
        for flat in self.flats():
            state = self.base.state[flat]
            for key in MOMENTS:
                if key not in state:
                    state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)
            old = state.get("step")
            if isinstance(old, torch.Tensor):
                state["step"] = torch.full_like(old, float(steps))
            elif old is not None or type(self.base).__name__ == "DeepSpeedCPUAdam":
                state["step"] = steps
            else:
                device = flat.device if on_device else "cpu"
                state["step"] = torch.tensor(float(steps), dtype=torch.float32, device=device)


def gather(engine: Any, keep: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """Every rank: the full moments of every trainable parameter (kept on CPU where ``keep``, else
    ``{}``) and the metadata to save with them; None before the optimizer's first step."""
    state = State(engine)
    steps = state.adam_step()
    if steps is None:
        return None
    state.link()
    tensors: dict[str, torch.Tensor] = {}
    for name, param in state.trainable():
        for key in MOMENTS:
            full = state.get(param, key)  # collective under ZeRO
            if keep:
                tensors[f"{key}/{name}"] = full.detach().float().cpu()
    meta = {
        "format": str(FORMAT),
        "step": str(steps),
        "lr_schedule": json.dumps(_schedule_state(engine)),
        "engine": json.dumps({k: int(getattr(engine, k, 0)) for k in ENGINE_COUNTERS}),
    }
    return tensors, meta


def _schedule_state(engine: Any) -> dict[str, Any]:
    sched = engine.lr_scheduler
    return {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"} if sched is not None else {}


def save(ckpt_dir: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Rank 0: write ``optimizer.safetensors`` into ``ckpt_dir``, atomically."""
    from safetensors.torch import save as to_bytes

    out = optimizer_path(ckpt_dir)
    with atomic_open(out, "wb") as f:
        f.write(to_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))
    return out


def load(engine: Any, weights: dict[str, torch.Tensor], ckpt_dir: str | Path, rank: int) -> None:
    """Every rank: set ``engine``'s parameters, fp32 masters and buffers from ``weights`` (a
    checkpoint's ``model.safetensors``), then, when ``ckpt_dir`` holds ``optimizer.safetensors``,
    AdamW's moments and step count, the LR schedule and DeepSpeed's step counters.

    Raises ``ValueError`` naming the tensors when the files do not fit the model (another config)."""
    from safetensors import safe_open

    state = State(engine)
    _check_fit(engine, weights, "model.safetensors")
    with torch.no_grad():
        for name, buffer in engine.module.named_buffers():
            buffer.copy_(weights[name].to(buffer.device, buffer.dtype))
        for name, param in engine.module.named_parameters():
            value = weights[name]
            if state.kind == "zero3":
                _set_zero3_partition(param, value, rank)
            else:
                param.data.copy_(value.to(param.device, param.dtype))
            if state.kind != "client" and param.requires_grad:
                state.set(param, value)
    path = optimizer_path(ckpt_dir)
    if not path.is_file():
        return
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        moments = {k: f.get_tensor(k) for k in f.keys()}
    if int(meta.get("format", 0)) != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, this vidworld reads format {FORMAT}")
    missing = [f"{k}/{n}" for n, _ in state.trainable() for k in MOMENTS if f"{k}/{n}" not in moments]
    if missing:
        raise ValueError(f"{path} lacks {missing[:5]} (saved by another model config?)")
    steps = int(meta["step"])
    if state.kind == "client":
        for _, param in state.trainable():
            state.base.state[param]["step"] = torch.tensor(float(steps), dtype=torch.float32)
    else:
        state.ensure_state(steps)
    state.link()
    for name, param in state.trainable():
        for key in MOMENTS:
            state.set(param, moments[f"{key}/{name}"], key)
    schedule = json.loads(meta["lr_schedule"])
    if engine.lr_scheduler is not None and schedule:
        engine.lr_scheduler.load_state_dict({**engine.lr_scheduler.state_dict(), **schedule})
        for group, lr in zip(engine.optimizer.param_groups, schedule.get("_last_lr", []), strict=False):
            group["lr"] = lr  # the LR the next step uses: what the schedule had set when saved
    for key, value in json.loads(meta["engine"]).items():
        setattr(engine, key, value)


def _check_fit(engine: Any, weights: dict[str, torch.Tensor], what: str) -> None:
    want = dict(engine.module.state_dict(keep_vars=True))
    missing = sorted(set(want) - set(weights))
    unexpected = sorted(set(weights) - set(want))
    wrong = sorted(
        n
        for n, v in want.items()
        if n in weights and tuple(weights[n].shape) != tuple(getattr(v, "ds_shape", v.shape))
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{what} does not fit this model (was the model config changed?): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {wrong[:5]}"
        )


def _set_zero3_partition(param: nn.Parameter, value: torch.Tensor, rank: int) -> None:
    """This rank's slice of a ZeRO-3 partitioned parameter (the last one padded), from the full value."""
    part = param.ds_tensor
    n = param.partition_numel()
    flat = value.reshape(-1)
    start = rank * n
    take = max(0, min(n, flat.numel() - start))
    if take:
        part.data.view(-1)[:take].copy_(flat[start : start + take].to(part.device, part.dtype))
