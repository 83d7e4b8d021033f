"""How the runtime turns a task's plain model into the one it trains, applied from outside the model.

``runtime.train`` calls ``parallelize`` once per rank; the steps run in this order:

1. ``build_on_meta``: ``task.build_model()`` under ``torch.device("meta")``: shapes only, no memory,
   so the layout of a model of any size can be planned (and dry-run) on one CPU.
2. ``apply_activation_checkpointing``: the task's blocks recompute their activations in backward
   (PyTorch's composable ``checkpoint``: module hooks, so the model's code and parameter names stay
   as they are and checkpoints load with it on or off).
3. ``apply_compile``: ``torch.compile`` of each block in place (``trainer.compile``).
4. ``apply_attention_backend``: every module with an ``attention_backend`` attribute gets the
   concrete backend its requested one means on the device (``auto`` resolved here, not in the model).
5. ``materialize``: ``to_empty`` on the device, then the model's ``init_weights()``.

DeepSpeed (ZeRO 0-3) then takes the model (``runtime.train.build_engine``). Models know nothing of
devices or DeepSpeed; all of that is here and in ``runtime.train``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed._composable import checkpoint as composable_checkpoint

from runtime.config import ConfigError

log = logging.getLogger(__name__)


def build_on_meta(task: Any) -> nn.Module:
    """``task.build_model()`` on the meta device: parameters and buffers have shapes, no storage."""
    with torch.device("meta"):
        return task.build_model()


def task_blocks(task: Any, model: nn.Module) -> list[nn.Module]:
    """The blocks the task exposes for activation checkpointing and compile (``task.blocks`` or
    ``model.blocks``)."""
    if hasattr(task, "blocks"):
        return list(task.blocks(model))
    if isinstance(getattr(model, "blocks", None), nn.ModuleList):
        return list(model.blocks)
    raise ConfigError(
        f"trainer.activation_checkpointing / trainer.compile is on but task {type(task).__name__} exposes "
        "no blocks; give the task a blocks(model) method or the model an nn.ModuleList named blocks"
    )


def apply_activation_checkpointing(
    blocks: list[nn.Module], indices: list[int], context_fn: Callable[[], tuple[Any, Any]] | None = None
) -> int:
    """Recompute the chosen blocks' activations in backward instead of storing them (all when
    ``indices`` is empty); returns how many blocks were wrapped.

    Non-reentrant checkpointing attached by forward hooks (``torch.distributed._composable``): the
    block's ``forward`` and parameter names are untouched, so a checkpoint written with it loads
    without it, and ZeRO-3's own hooks still gather parameters for the recomputation.
    ``context_fn`` (``torch.utils.checkpoint``'s: the forward's and the recomputation's context
    managers) lets ``runtime.memory`` run the recomputation under its attention stand-in.
    """
    chosen = range(len(blocks)) if not indices else indices
    for i in chosen:
        if not 0 <= i < len(blocks):
            raise ConfigError(f"trainer.checkpoint_blocks has {i} but the model has {len(blocks)} blocks")
    extra = {} if context_fn is None else {"context_fn": context_fn}
    for i in chosen:
        if not is_checkpointed(blocks[i]):
            composable_checkpoint(blocks[i], **extra)
    return len(chosen)


def is_checkpointed(module: nn.Module) -> bool:
    """Whether ``apply_activation_checkpointing`` has wrapped ``module``."""
    return bool(getattr(composable_checkpoint.state(module), "enable_hook", False))


def apply_compile(blocks: list[nn.Module]) -> int:
    """``torch.compile`` each block in place (``nn.Module.compile``: names and types unchanged);
    returns how many. One block at a time keeps graphs small and lets repeated blocks share code."""
    for block in blocks:
        block.compile()
    return len(blocks)


# ---------------------------------------------------------------------------------------------------
# Attention backends


def available_attention_backends(device: torch.device | str) -> list[str]:
    """Attention backends that can run on ``device`` in this environment (``auto`` excluded)."""
    dev = torch.device(device)
    names = ["math", "sdpa"]
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None:
        names.append("flex")
    if dev.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        names.append("flash-attn")
    return names


def resolve_attention_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend ``name`` means on ``device``; an error says what to install or choose."""
    if name == "auto":
        return "sdpa"  # runs everywhere, every dtype; on a GPU it picks flash/cuDNN kernels itself
    avail = available_attention_backends(device)
    if name not in avail:
        hint = "pip install 'vidworld[gpu]' on a CUDA machine" if name == "flash-attn" else "a newer torch"
        raise ValueError(
            f"attention backend {name!r} is not available on {device} (available: {avail}); "
            f"choose one of those or use {hint}"
        )
    return name


def apply_attention_backend(model: nn.Module, device: torch.device | str) -> dict[str, str]:
    """Resolve the ``attention_backend`` of every module that has one for ``device`` and set it;
    returns ``{requested: resolved}`` (empty for a model without such modules) and logs it once."""
    chosen: dict[str, str] = {}
    for module in model.modules():
        requested = getattr(module, "attention_backend", None)
        if isinstance(requested, str):
            chosen[requested] = resolve_attention_backend(requested, device)
            module.attention_backend = chosen[requested]
    for requested, resolved in chosen.items():
        log.info("attention backend: %s (requested %s, device %s)", resolved, requested, device)
    return chosen


# ---------------------------------------------------------------------------------------------------
# Placement


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Give a meta-built ``model`` storage on ``device`` (``to_empty``) and initialise it with its
    ``init_weights()``; returns it. Also what loading trained weights needs before
    ``load_state_dict`` (``init_weights`` sets the buffers a state dict does not hold)."""
    init = getattr(model, "init_weights", None)
    if not callable(init):
        raise TypeError(
            f"{type(model).__name__} has no init_weights(): a model built on the meta device needs one "
            "that sets every parameter and buffer in place"
        )
    model.to_empty(device=device)
    init()
    return model


def parallelize(
    task: Any, trainer: Any, device: torch.device | str, init_device: torch.device | str | None = None
) -> nn.Module:
    """The model of ``task`` ready for DeepSpeed: built on meta, blocks checkpointed
    (``trainer.activation_checkpointing``, ``trainer.checkpoint_blocks``) and compiled
    (``trainer.compile``), attention backends resolved for ``device`` (where it will run),
    materialised on ``init_device`` (default ``device``) and initialised. Call under the run's
    seed: ``init_weights`` draws from the global RNG."""
    model = build_on_meta(task)
    if trainer.activation_checkpointing:
        apply_activation_checkpointing(task_blocks(task, model), list(trainer.checkpoint_blocks))
    if trainer.compile:
        apply_compile(task_blocks(task, model))
    apply_attention_backend(model, device)
    return materialize(model, device if init_device is None else init_device)


__all__ = [
    "apply_activation_checkpointing",
    "apply_attention_backend",
    "apply_compile",
    "available_attention_backends",
    "build_on_meta",
    "is_checkpointed",
    "materialize",
    "parallelize",
    "resolve_attention_backend",
    "task_blocks",
]
