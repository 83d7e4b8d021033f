"""The seam between a model and the shared training runtime.

A model package (``tokenizer``, ``dynamics``) provides a ``Task``; the runtime
(``runtime.train``) owns everything else: processes, DeepSpeed, precision, LR schedule,
checkpoints, preemption, metrics and logging. A task never touches ``torch.distributed``,
DeepSpeed, files of the run folder or W&B.

A training YAML names its task (``task: tokenizer``, ``task: dynamics``, or any
``module:Class``) and gives the task's own settings under ``model:`` (validated against
``Task.config_class``) and its data under ``data:``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

# Short names for the tasks that ship with vidworld; any "module:Class" works too.
TASKS: dict[str, str] = {
    "tokenizer": "tokenizer.task:TokenizerTask",
    "dynamics": "dynamics.task:DynamicsTask",
    "lam": "dynamics.lam_task:LAMTask",
    "jepa": "dynamics.jepa_task:JEPATask",
    "reference": "runtime.reference_task:ReferenceTask",
}


@runtime_checkable
class Task(Protocol):
    """What a model brings to the runtime.

    ``config_class`` is the dataclass of the ``model:`` section. The runtime constructs the
    task as ``TaskClass(model_cfg, train_cfg)`` (``train_cfg`` is the whole resolved training
    config: data paths, seed, micro-batch size...).

    Optional: ``blocks(model) -> list[nn.Module]``, the repeated blocks that the runtime may wrap
    in activation checkpointing (``trainer.activation_checkpointing``). Without it the runtime
    uses ``model.blocks`` when that is an ``nn.ModuleList``.

    Optional: ``example_batch(batch_size) -> batch``, a micro-batch of ``batch_size`` samples of the
    training shape, as ``batches`` yields it, with random content and no files read: the memory plan
    (``runtime.memory``, ``vidworld plan-memory``) builds it under ``torch.device("meta")`` and runs
    ``loss`` on it to measure activations. Without it the plan has no activation figures.

    ``loss`` receives the wrapped model (call it like the plain module; under ZeRO-3 its
    parameters are sharded, so read ``p.device``, never ``p.shape``); ``eval_media`` receives the
    plain model (its methods as well as its forward). Neither unwraps anything. ``batches`` is
    called once per run, with ``state`` from ``loader_state()`` of the checkpoint resumed (``None``
    when fresh).
    """

    config_class: ClassVar[type]

    def build_model(self) -> nn.Module:
        """The model, a plain ``nn.Module``, constructed only: the runtime calls this under
        ``torch.device("meta")``, then checkpoints and compiles its blocks, places it with
        ``to_empty`` and calls its ``init_weights()``, which must set every parameter and buffer
        in place, deterministically from the global RNG (``runtime.parallelize``)."""
        ...

    def batches(self, rank: int, world_size: int, seed: int, state: dict | None) -> Iterator[Any]:
        """An endless iterator of micro-batches for this rank, resumable from a saved ``state``."""
        ...

    def loader_state(self) -> dict:
        """What ``batches`` needs to continue where it stopped (saved with each checkpoint)."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Scalar tensors; ``"loss"`` is optimised, every entry is logged."""
        ...

    def flops_per_sample(self) -> float:
        """Model FLOPs (forward + backward) for one sample, for MFU."""
        ...

    def tokens_per_sample(self) -> int:
        """Tokens (or latent positions) in one sample, for tokens/s."""
        ...

    def eval_media(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        """Metrics and media for W&B at eval steps: numbers, and videos as ``runtime.video.VideoClip``
        (uint8 ``[T, H, W, 3]`` frames with their true fps) or bare uint8 arrays (a default fps)."""
        ...
