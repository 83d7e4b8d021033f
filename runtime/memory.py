"""A memory plan before launch: ``vidworld plan-memory CONFIG gpus=N gpu_memory=80GiB``.

Per rank: what DeepSpeed keeps for the parameters, gradients and optimizer state at the run's ZeRO
stage, precision and offload setting; what the task's model keeps for backward at the run's
micro-batch (measured, not guessed); the attention scores of its attention backend; the transient
workspace; the sum against the device, and the largest micro-batch that fits. ``runtime.train``
prints the plan and refuses a run that does not fit (``trainer.memory_check``); ``trainer.dry_run``
prints it and stops.

Activations are measured. The task's model is built on the meta device (shapes, no storage:
``runtime.parallelize.build_on_meta``) with the run's activation checkpointing and precision, and
one training forward and backward (``task.loss`` on ``task.example_batch(B)``) runs under
``AllocationTracker``, a dispatch mode that plays the device's allocator: every tensor storage an
operator creates is counted (rounded up to the CUDA allocator's 512-byte blocks for a GPU) until it
is freed. What is alive when the forward ends is what autograd keeps for backward; the highest count
during forward and backward is the peak. Nothing is allocated, so a model of any size is planned on
a laptop in seconds. Micro-batches 1 and 2 give the slope of a search for the largest micro-batch
that fits; each candidate is then probed itself.

Attention. On the meta device ``scaled_dot_product_attention`` falls back to its math form; on a GPU
``sdpa`` runs flash, memory-efficient or cuDNN kernels, and ``flash-attn`` and compiled ``flex`` are
fused too: none of them stores the ``[B, H, Lq, Lk]`` scores. The probe therefore runs every
attention call as a fused kernel (``AttentionStandIn``: output and log-sum-exp kept) and records its
shape; the ``math`` backend adds its scores analytically (the fp32 softmax it keeps for backward, not
in checkpointed blocks, and one score-sized temporary).

Not seen: kernel workspaces outside the tensors the model makes (cuDNN/cuBLAS, NCCL buffers, a CPU
convolution's im2col columns), ``torch.compile`` (planned eager), a frozen model a task loads from
disk (``model.lam``). The reserve stands for the first: ``RESERVE_FIXED`` (CUDA context, library
workspaces) plus ``RESERVE_FRACTION`` of the device (the caching allocator's fragmentation).

DeepSpeed's share (DeepSpeed 0.19 as ``runtime.train.build_engine`` configures it; ``P`` parameters,
``w`` bytes per working value, 2 in bf16 and 4 in fp32, ``N`` ranks; checked against measured CPU
runs by ``bench/memory.py``, figures in BENCHMARKS.md):

- parameters: ``w P``; stage 3 ``w P/N``, tensors of at most ``stage3_param_persistence_threshold``
  values whole.
- gradients in backward: ``w P`` at stages 0 and 1, ``w P/N`` at stage 2; stage 3 keeps an fp32
  partition, ``4 P/N``, between steps.
- optimizer state: stage 0 Adam m and v, ``8 P``, and in bf16 an fp32 master copy, ``4 P``; stages
  1-3 ``12 P/N``: fp32 master, m and v, partitioned (the master copy exists in fp32 too).
- reduce bucket: stages 1-2 allocate ``reduce_bucket_size`` values (twice with ``overlap_comm``)
  in every backward, whole whatever the model's size (training sets it to the trainable parameter
  count when below DeepSpeed's 5e8, ``runtime.train.bucket_values``); stage 3 keeps one, and gathers up to
  ``min(P, stage3_max_live_parameters)`` parameters (counted twice: they and the all-gather buffer).
- optimizer step: stage 0 the gradients and one fp32 temporary (in bf16: their fp32 copy) ``4 P``;
  stages 1-3 ``12 P/N`` (the fp32 gradient partition and two temporaries).
- ``trainer.offload_optimizer``: the optimizer state, the fp32 gradients and the step are in host
  memory instead, ``16 P/N`` per rank, listed apart.

The peak is the state kept all through the step plus the larger of two phases that do not overlap:
forward/backward (gradients, bucket, activations, attention scores, workspace; the gradients taken
as all present, which errs on the safe side) and the optimizer step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._profiler import _EventType
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from runtime.config import ConfigError
from runtime.distributed import DistInfo
from runtime.parallelize import apply_activation_checkpointing, build_on_meta, is_checkpointed, task_blocks
from runtime.train import TrainConfig, TrainerConfig, deepspeed_config, load_train_config, resolve_task_class

GiB, MiB = 2**30, 2**20
RESERVE_FIXED = 1 * GiB  # CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers: none of the plan's tensors
RESERVE_FRACTION = 0.05  # of the device: the caching allocator's fragmentation
CUDA_BLOCK = 512  # the CUDA caching allocator rounds every block up to a multiple of this
MAX_MICRO_BATCH = 1 << 20  # the search for the largest micro-batch stops here


class MemoryPlanExceeded(ConfigError):
    """The plan of a run is larger than its device; the message names the figures and the way out."""


# ---------------------------------------------------------------------------------------------------
# Sizes

_UNITS = {"": 1, "b": 1}
for _i, _prefix in enumerate("kmgt", start=1):
    _UNITS |= {_prefix: 1000**_i, f"{_prefix}b": 1000**_i, f"{_prefix}ib": 1024**_i}


def parse_size(text: str | int | float, name: str = "gpu_memory") -> int:
    """``"80GiB"``, ``"80GB"``, ``"81920MiB"``, ``"1.5TiB"`` or a number of bytes -> bytes; a
    ``ConfigError`` naming ``name`` and showing how to write a size when ``text`` is not one."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _UNITS or isinstance(text, bool):
        raise ConfigError(
            f"{name}={text!r} is not a memory size; write it like {name}=80GiB, {name}=40GB or "
            f"{name}=81920MiB (KiB/MiB/GiB/TiB are powers of 2, KB/MB/GB/TB powers of 10)"
        )
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"{name}={text!r} must be a positive memory size, e.g. {name}=80GiB")
    return size


def gib(n: float) -> str:
    """Bytes as GiB with three decimals (``"1.500"``)."""
    return f"{n / GiB:.3f}"


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


# ---------------------------------------------------------------------------------------------------
# The simulated allocator


class AllocationTracker(TorchDispatchMode):
    """A dispatch mode that counts the bytes of the meta-device tensor storages alive, and their peak.

    Every storage an operator returns is counted once, rounded up to ``block`` bytes, until its last
    reference goes (a weak reference's callback). ``register`` counts tensors made before the mode
    (parameters, the batch), so that views of them are not counted again. Values a meta tensor does
    not have read as zeros: ``.item()`` and the like give 0 (``False``), a copy to another device
    gives zeros there. A model's input checks so pass, and a branch on data takes its "no" side
    (a model whose memory depends on its data is planned for the zero case).
    """

    def __init__(self, block: int = 1) -> None:
        super().__init__()
        self.block = block
        self.live = 0
        self.peak = 0
        self._alive: dict[int, weakref.ref] = {}

    def register(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage (once) if it is on the meta device."""
        if tensor.device.type != "meta":
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._alive:
            return
        size = _round_up(storage.nbytes(), self.block)
        self.live += size
        self.peak = max(self.peak, self.live)
        self._alive[key] = weakref.ref(storage, lambda _, key=key, size=size: self._free(key, size))

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._alive.pop(key, None)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            dtype = args[0].dtype
            return False if dtype == torch.bool else (0.0 if dtype.is_floating_point else 0)
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "meta":
            target = kwargs.get("device")
            if target is not None and torch.device(target).type != "meta":
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device=target)
        if func is torch.ops.aten.copy_.default and args[0].device.type != args[1].device.type == "meta":
            return args[0].zero_()
        out = func(*args, **kwargs)
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.register(value)
        return out


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """One attention call the probe saw: ``q`` ``[B, H, Lq, d]`` against ``Lk`` keys, ``itemsize``
    bytes per value; ``grad`` when backward will go through it (not in a ``no_grad`` pass, such as
    self-forcing's), ``recomputed`` when made inside a checkpointed block."""

    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    itemsize: int
    grad: bool = True
    recomputed: bool = False

    @property
    def scores(self) -> int:
        """Bytes of its ``[B, H, Lq, Lk]`` scores in fp32 (the ``math`` backend's softmax)."""
        return self.batch * self.heads * self.q_len * self.kv_len * 4

    @property
    def fp32_inputs(self) -> int:
        """Bytes of the fp32 copies of q, k and v the ``math`` backend keeps when they are not fp32."""
        return (
            0
            if self.itemsize == 4
            else self.batch * self.heads * (self.q_len + 2 * self.kv_len) * self.head_dim * 4
        )


class AttentionStandIn(TorchFunctionMode):
    """Runs ``F.scaled_dot_product_attention`` as a fused kernel (output and log-sum-exp kept, no
    scores) and records each call's shape: what flash, memory-efficient, cuDNN, flex and flash-attn
    kernels keep on a GPU, where the meta device would run the math form."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[AttentionCall] = []
        self.checkpointed = 0  # > 0 inside a block that activation checkpointing recomputes

    def watch(self, block: nn.Module) -> None:
        """Mark the calls made inside ``block`` (a checkpointed one) as recomputed."""

        def enter(*_: Any) -> None:
            self.checkpointed += 1

        def leave(*_: Any) -> None:
            self.checkpointed -= 1

        block.register_forward_pre_hook(enter)
        block.register_forward_hook(leave)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        bound = dict(zip(names, args, strict=False)) | kwargs
        q, k, v = bound["query"], bound["key"], bound["value"]
        *lead, q_len, head_dim = q.shape
        self.calls.append(
            AttentionCall(
                batch=math.prod(lead[:-1]),
                heads=lead[-1] if lead else 1,
                q_len=q_len,
                kv_len=k.shape[-2],
                head_dim=head_dim,
                itemsize=q.element_size(),
                grad=torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)),
                recomputed=self.checkpointed > 0,
            )
        )
        out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q,
            k,
            v,
            float(bound.get("dropout_p", 0.0)),
            bool(bound.get("is_causal", False)),
            attn_mask=bound.get("attn_mask"),
            scale=bound.get("scale"),
        )
        return out


# ---------------------------------------------------------------------------------------------------
# Probing the model


@dataclasses.dataclass(frozen=True)
class ActivationProbe:
    """One forward and backward of the task's model on the meta device at ``batch_size``.

    Bytes beyond the parameters and buffers: ``batch`` (the micro-batch's tensors), ``saved`` (alive
    when the forward has ended: what autograd keeps for backward, and the loss), ``peak`` (the most
    alive at any moment of forward and backward, gradients included), ``grads`` (the gradients
    backward made). ``attention``: the calls seen, in order.
    """

    batch_size: int
    batch: int
    saved: int
    peak: int
    grads: int
    attention: tuple[AttentionCall, ...]

    @property
    def workspace(self) -> int:
        """The transient part: the peak above the saved activations and all the gradients."""
        return max(0, self.peak - self.saved - self.grads)


def plan_model(task: Any, trainer: TrainerConfig, attention: AttentionStandIn) -> nn.Module:
    """The task's model laid out as the run lays it out, on the meta device: activation
    checkpointing as ``runtime.parallelize`` applies it, every attention backend run as
    ``attention``, in the run's precision (DeepSpeed casts the module to bf16), in training mode."""
    model = build_on_meta(task)
    if trainer.activation_checkpointing:
        # Backward recomputes the blocks outside the forward's modes: a stand-in goes with it (a
        # second one: the recomputed calls are the forward's again, not to be counted twice).
        recompute = lambda: (contextlib.nullcontext(), AttentionStandIn())  # noqa: E731
        blocks = task_blocks(task, model)
        apply_activation_checkpointing(blocks, list(trainer.checkpoint_blocks), context_fn=recompute)
        for block in blocks:
            if is_checkpointed(block):
                attention.watch(block)
    for module in model.modules():
        if isinstance(getattr(module, "attention_backend", None), str):
            module.attention_backend = "sdpa"  # which the stand-in runs fused
    dtype = torch.bfloat16 if trainer.precision == "bf16" else torch.float32
    return model.to(dtype).train()


def probe_activations(task: Any, trainer: TrainerConfig, batch_size: int, block: int = 1) -> ActivationProbe:
    """Run ``task.loss`` forward and backward on ``task.example_batch(batch_size)`` on the meta
    device under ``AllocationTracker`` (allocations rounded up to ``block`` bytes)."""
    example = getattr(task, "example_batch", None)
    if not callable(example):
        raise ConfigError(
            f"task {type(task).__name__} has no example_batch(batch_size) method: the memory plan needs "
            "one to measure activations (see runtime.task.Task); add it to the task"
        )
    tracker, attention = AllocationTracker(block), AttentionStandIn()
    model = plan_model(task, trainer, attention)
    with torch.device("meta"):
        batch = example(batch_size)
    try:
        with tracker, attention:
            for tensor in [*model.parameters(), *model.buffers()]:
                tracker.register(tensor)
            base = tracker.live
            for value in tree_leaves(batch):
                if isinstance(value, torch.Tensor):
                    tracker.register(value)
            batch_bytes, base = tracker.live - base, tracker.live
            tracker.reset_peak()
            out = task.loss(model, batch)
            saved = tracker.live - base
            out["loss"].backward()
            peak = tracker.peak - base
            del out
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ConfigError(
            f"measuring the activations of task {type(task).__name__} at micro-batch {batch_size} on the "
            f"meta device failed ({type(e).__name__}: {first}); a loss that reads tensor values, loads "
            "files or uses an operator without a meta kernel cannot be planned"
        ) from e
    grads = sum(
        _round_up(p.grad.untyped_storage().nbytes(), block) for p in model.parameters() if p.grad is not None
    )
    return ActivationProbe(batch_size, batch_bytes, saved, peak, grads, tuple(attention.calls))


# ---------------------------------------------------------------------------------------------------
# The plan


@dataclasses.dataclass(frozen=True)
class ModelCounts:
    """What the plan needs of the task's model (built on meta): parameter counts, buffers, blocks."""

    params: int
    trainable: int
    small: int  # in tensors of at most stage3_param_persistence_threshold values (ZeRO-3 keeps them whole)
    float_buffers: int  # floating-point buffer values (cast to bf16 with the model)
    other_buffer_bytes: int
    blocks: int  # the task's blocks (activation checkpointing)

    @classmethod
    def of(cls, task: Any, model: nn.Module, threshold: int) -> ModelCounts:
        params, buffers = list(model.parameters()), list(model.buffers())
        try:
            blocks = len(task_blocks(task, model))
        except ConfigError:
            blocks = 0
        return cls(
            params=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in params if p.requires_grad),
            small=sum(p.numel() for p in params if p.numel() <= threshold),
            float_buffers=sum(b.numel() for b in buffers if b.is_floating_point()),
            other_buffer_bytes=sum(
                b.numel() * b.element_size() for b in buffers if not b.is_floating_point()
            ),
            blocks=blocks,
        )


@dataclasses.dataclass(frozen=True)
class Row:
    """One component of the plan, ``bytes`` per rank. ``phase``: "kept" (all through the step),
    "backward" (forward and backward), "step" (the optimizer step) or "host" (host memory)."""

    name: str
    bytes: int
    phase: str
    note: str


@dataclasses.dataclass
class MemoryPlan:
    """The per-rank plan of one run on ``gpus`` devices of ``device_bytes`` each."""

    task: str
    gpus: int
    device_type: str
    device_bytes: int
    micro_batch_size: int
    trainer: TrainerConfig
    counts: ModelCounts
    rows: list[Row]
    attention_backends: list[str]
    largest_micro_batch: (
        int | None
    )  # 0: not even 1 fits; None: not searched, or no limit below MAX_MICRO_BATCH

    def phase(self, name: str) -> int:
        return sum(r.bytes for r in self.rows if r.phase == name)

    def component(self, name: str) -> int:
        return sum(r.bytes for r in self.rows if r.name == name and r.phase != "host")

    @property
    def peak(self) -> int:
        """Device bytes at the highest moment: the kept state plus the larger phase."""
        return self.phase("kept") + max(self.phase("backward"), self.phase("step"))

    @property
    def reserve(self) -> int:
        return reserve_bytes(self.device_bytes)

    @property
    def total(self) -> int:
        return self.peak + self.reserve

    @property
    def fits(self) -> bool:
        return self.total <= self.device_bytes

    @property
    def host(self) -> int:
        return self.phase("host")

    def table(self) -> str:
        """The plan as ``vidworld plan-memory`` and a dry run print it."""
        t = self.trainer
        if not t.activation_checkpointing:
            ckpt = "off"
        else:
            ckpt = f"on (blocks {list(t.checkpoint_blocks) or f'all {self.counts.blocks}'})"
        out = [
            f"memory plan: task {self.task}, {self.counts.params / 1e6:.2f}M parameters, {t.precision}, ZeRO "
            f"stage {t.zero_stage} over {self.gpus} rank(s)"
            + (", optimizer offloaded" if t.offload_optimizer else ""),
            f"  micro-batch {self.micro_batch_size} (grad_accum {t.grad_accum}), activation checkpointing "
            f"{ckpt}, attention {', '.join(self.attention_backends) or 'none'}"
            + (", compile on (planned eager)" if t.compile else ""),
            "",
            f"  {'per rank':<28} {'GiB':>9} {'MiB':>10}  {'phase':<8}  note",
        ]

        def line(name: str, n: int, phase: str = "", note: str = "") -> str:
            return f"  {name:<28} {gib(n):>9} {n / MiB:>10.1f}  {phase:<8}  {note}".rstrip()

        out += [line(r.name, r.bytes, r.phase, r.note) for r in self.rows if r.phase != "host"]
        backward, step = self.phase("backward"), self.phase("step")
        context = "CUDA context, library workspaces" if self.device_type == "cuda" else "the process"
        out += [
            line(
                "peak",
                self.peak,
                "",
                f"kept + the larger of backward ({gib(backward)}) and step ({gib(step)})",
            ),
            line(
                "reserve",
                self.reserve,
                "",
                f"{RESERVE_FIXED / GiB:g} GiB ({context}) + {RESERVE_FRACTION:.0%} of the device "
                "(fragmentation)",
            ),
            line("total", self.total),
            line(
                "device", self.device_bytes, "", f"{self.device_type}: fits " + ("yes" if self.fits else "NO")
            ),
        ]
        host = [r for r in self.rows if r.phase == "host"]
        if host:
            out.append(
                line(
                    "host memory (offload)",
                    self.host,
                    "",
                    "; ".join(f"{r.name} {gib(r.bytes)} GiB" for r in host),
                )
            )
        if self.largest_micro_batch == 0:
            largest = "none: micro-batch 1 does not fit"
        elif self.largest_micro_batch is None:
            largest = f"not limited up to {MAX_MICRO_BATCH}"
        else:
            largest = str(self.largest_micro_batch)
        out.append(f"  largest micro-batch that fits: {largest}")
        return "\n".join(out)


def reserve_bytes(device_bytes: int) -> int:
    """What the plan leaves free on a device of ``device_bytes``."""
    return RESERVE_FIXED + int(RESERVE_FRACTION * device_bytes)


def zero_config(trainer: TrainerConfig, gpus: int, trainable: int | None = None) -> Any:
    """DeepSpeed's own reading of the run's ``zero_optimization`` section (buckets sized for
    ``trainable`` parameters, as training sizes them), its defaults filled in; ``None`` at stage 0,
    which has no ZeRO settings (and so plans without importing DeepSpeed)."""
    if trainer.zero_stage == 0:
        return None
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # heavy: imported only to plan

    return DeepSpeedZeroConfig(**deepspeed_config(trainer, gpus, trainable)["zero_optimization"])


def state_rows(trainer: TrainerConfig, counts: ModelCounts, gpus: int, zero: Any) -> list[Row]:
    """DeepSpeed's parameters, gradients, optimizer state, buckets and optimizer step per rank (the
    list in this module's docstring)."""
    s, n, dtype, offload = trainer.zero_stage, gpus, trainer.precision, trainer.offload_optimizer
    w = 2 if dtype == "bf16" else 4
    p, pt = counts.params, counts.trainable
    part = -(-pt // n) if s >= 1 else pt  # this rank's share of the optimizer's values
    buffers = w * counts.float_buffers + counts.other_buffer_bytes
    bucket = zero.reduce_bucket_size * w if zero is not None else 0
    rows: list[Row] = []
    if s < 3:
        rows.append(Row("parameters", w * p + buffers, "kept", f"{dtype}, whole, and the buffers"))
    else:
        whole = counts.small
        threshold = zero.param_persistence_threshold
        note = f"{dtype}, partitioned; {whole / 1e6:.2f}M in tensors of <= {threshold:.0e} whole"
        rows.append(Row("parameters", w * (whole + -(-(p - whole) // n)) + buffers, "kept", note))
    if s == 0:
        master = 4 * pt if dtype == "bf16" else 0
        rows.append(
            Row("optimizer state", 8 * pt + master, "kept", "Adam m, v" + (", fp32 master" if master else ""))
        )
    elif offload:
        rows.append(Row("optimizer state", 0, "kept", "offloaded to host memory (below)"))
    else:
        rows.append(Row("optimizer state", 12 * part, "kept", f"fp32 master, Adam m, v; 1/{n} each"))
    if s == 3:
        rows.append(Row("gradients", 4 * part, "kept", f"fp32 partition, 1/{n}, kept between steps"))
        rows.append(Row("reduce bucket", bucket, "kept", f"{zero.reduce_bucket_size:.0e} values, kept"))
        gathered = min(p, zero.max_live_parameters)
        rows.append(Row("gathered parameters", 2 * w * gathered, "backward", "and their all-gather buffer"))
    else:
        rows.append(
            Row(
                "gradients",
                w * (part if s == 2 else pt),
                "backward",
                dtype + (f", 1/{n}" if s == 2 else ", whole"),
            )
        )
    if s in (1, 2) and zero.contiguous_gradients:
        copies = 2 if zero.overlap_comm else 1
        note = f"{copies} x {zero.reduce_bucket_size:.0e} values (the trainable count, at most 5e8)"
        rows.append(Row("reduce bucket", copies * bucket, "backward", note))
    if s == 0:
        copy = "their fp32 copy" if dtype == "bf16" else "an fp32 temporary"
        rows.append(
            Row("optimizer step", w * pt + 4 * pt, "step", f"the gradients and {copy}; not during backward")
        )
    elif offload:
        rows.append(Row("optimizer step", 0, "step", "on the host"))
        rows.append(Row("optimizer state", 12 * part, "host", "fp32 master, Adam m, v"))
        rows.append(Row("fp32 gradients", 4 * part, "host", "the step's"))
    else:
        rows.append(
            Row(
                "optimizer step", 12 * part, "step", "fp32 gradient partition, 2 temporaries; not in backward"
            )
        )
    return rows


def activation_rows(probe: ActivationProbe, backends: list[str]) -> list[Row]:
    """The activations, attention scores and workspace of one probe, for the attention ``backends``
    the model asks for (``math`` stores its scores; the fused ones do not)."""
    kept = [c for c in probe.attention if c.grad and not c.recomputed]
    scores = 0
    if not probe.attention:
        note = "the model has no attention"
    elif "math" in backends:
        # Beside the kept softmax, one score-sized temporary at a time (the raw scores, then the masked
        # copy; in backward the gradient) at the largest call, and a recomputed call's own scores while
        # backward goes through its block.
        again = max((c.scores + c.fp32_inputs for c in probe.attention if c.grad and c.recomputed), default=0)
        largest = max(c.scores for c in probe.attention)
        scores = sum(c.scores + c.fp32_inputs for c in kept) + largest + again
        note = f"math: fp32 [B, H, Lq, Lk] of {len(kept)} of {len(probe.attention)} calls kept, 1 temporary"
    else:
        note = (
            f"{'/'.join(backends) or 'sdpa'}: fused, no [B, H, Lq, Lk] scores ({len(probe.attention)} calls)"
        )
    return [
        Row(
            "activations", probe.saved + probe.batch, "backward", "kept for backward and the batch, measured"
        ),
        Row("attention scores", scores, "backward", note),
        Row(
            "forward/backward workspace", probe.workspace, "backward", "transient peak above those, measured"
        ),
    ]


class Planner:
    """The plans of one config on ``gpus`` devices at any micro-batch; probes once per micro-batch."""

    def __init__(self, cfg: TrainConfig, gpus: int, device_type: str = "cuda") -> None:
        if gpus < 1:
            raise ConfigError(
                f"gpus={gpus}: the number of devices (ranks) must be a whole number >= 1, e.g. gpus=8"
            )
        self.cfg, self.gpus, self.device_type = cfg, gpus, device_type
        self.block = CUDA_BLOCK if device_type == "cuda" else 1
        self.task = resolve_task_class(cfg.task)(cfg.model, cfg)
        model = build_on_meta(self.task)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.zero = zero_config(cfg.trainer, gpus, trainable)
        threshold = self.zero.param_persistence_threshold if self.zero is not None else 0
        self.counts = ModelCounts.of(self.task, model, threshold)
        # The backends the model asks for; "auto" is sdpa wherever it runs (runtime.parallelize).
        self.backends = sorted(
            {
                "sdpa" if m.attention_backend == "auto" else m.attention_backend
                for m in model.modules()
                if isinstance(getattr(m, "attention_backend", None), str)
            }
        )
        self.state = state_rows(cfg.trainer, self.counts, gpus, self.zero)
        self._probes: dict[int, ActivationProbe] = {}
        self.probe(1)  # a warm-up: first calls (lazy caches, autograd's set-up) allocate once
        self._probes.clear()

    def probe(self, batch_size: int) -> ActivationProbe:
        """The probe at ``batch_size`` (run once)."""
        if batch_size not in self._probes:
            self._probes[batch_size] = probe_activations(self.task, self.cfg.trainer, batch_size, self.block)
        return self._probes[batch_size]

    def plan(self, batch_size: int, device_bytes: int, largest: int | None = None) -> MemoryPlan:
        probe = self.probe(batch_size)
        # A model that calls F.scaled_dot_product_attention itself (no attention_backend) runs sdpa.
        backends = self.backends or (["sdpa"] if probe.attention else [])
        return MemoryPlan(
            task=self.cfg.task,
            gpus=self.gpus,
            device_type=self.device_type,
            device_bytes=device_bytes,
            micro_batch_size=batch_size,
            trainer=self.cfg.trainer,
            counts=self.counts,
            rows=[*self.state, *activation_rows(probe, backends)],
            attention_backends=backends,
            largest_micro_batch=largest,
        )

    def largest(self, device_bytes: int) -> int | None:
        """The largest micro-batch whose plan fits (0: not even 1; None: all up to ``MAX_MICRO_BATCH``
        fit): secant estimates from micro-batches 1 and 2 on (a transient share can grow faster than
        the slope of small batches shows), then probes galloping away from the estimate (1, 2, 4...
        steps) until one side fits and the other does not, and bisecting between them."""
        total = lambda b: self.plan(b, device_bytes).total  # noqa: E731
        fits = lambda b: total(b) <= device_bytes  # noqa: E731
        if not fits(1):
            return 0
        if total(2) <= total(1):
            return None
        a, guess = 1, 2
        for _ in range(4):
            slope = (total(guess) - total(a)) / (guess - a)
            if slope <= 0:
                break
            estimate = guess + math.floor((device_bytes - total(guess)) / slope)
            a, guess = guess, max(1, min(MAX_MICRO_BATCH, estimate))
            if guess == a:
                break
        step = 1
        if fits(guess):
            lo = hi = guess
            while fits(hi):
                if hi == MAX_MICRO_BATCH:
                    return None
                lo, hi, step = hi, min(MAX_MICRO_BATCH, hi + step), 2 * step
        else:
            lo = hi = guess
            while not fits(lo):
                hi, lo, step = lo, max(1, lo - step), 2 * step
        while hi - lo > 1:  # lo fits, hi does not
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


def plan_memory(
    cfg: TrainConfig, gpus: int, device_bytes: int, device_type: str = "cuda", search: bool = True
) -> MemoryPlan:
    """The per-rank memory plan of ``cfg`` trained on ``gpus`` devices of ``device_bytes`` each, at its
    ``trainer.micro_batch_size``; with ``search``, also the largest micro-batch that fits.
    ``device_type`` "cuda" rounds allocations as its caching allocator does, "cpu" does not."""
    planner = Planner(cfg, gpus, device_type)
    largest = planner.largest(device_bytes) if search else None
    return planner.plan(cfg.trainer.micro_batch_size, device_bytes, largest)


def cpu_peak_bytes(fn: Callable[[], Any], within: str | None = None) -> int:
    """The CPU allocator's peak of live tensor bytes while ``fn()`` runs: what the plan is checked
    against on CPU (``bench/memory.py``, the tests), as ``torch.cuda.max_memory_allocated`` is on a GPU.

    Read from the profiler's memory events: with ``profile_memory`` every CPU allocation and free is
    recorded with the running total of bytes allocated since the profiler started (tensors made
    before ``fn`` are not in it). With ``within``, only allocations inside
    ``torch.profiler.record_function(within)`` ranges count (say the training steps, not the set-up).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations, ranges = [], []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append((event.start_time_ns, event.extra_fields.total_allocated))
        elif within is not None and event.name == within:
            ranges.append((event.start_time_ns, event.end_time_ns))
    inside = [total for t, total in allocations if within is None or any(a <= t <= b for a, b in ranges)]
    return max(inside, default=0)


# ---------------------------------------------------------------------------------------------------
# Before training


def device_memory(info: DistInfo) -> int:
    """What one rank may use: its GPU's memory, or on CPU the host's RAM over the ranks on this host."""
    if info.device.type == "cuda":
        return int(torch.cuda.get_device_properties(info.device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, info.local_world_size)


def check_before_launch(cfg: TrainConfig, info: DistInfo, device_bytes: int | None = None) -> int | None:
    """The run's memory plan before anything is built (rank 0 prints it). Returns 0 for
    ``trainer.dry_run`` (the caller stops: nothing trained, nothing written), else ``None``.
    Raises ``MemoryPlanExceeded`` when the plan does not fit and ``trainer.memory_check`` is
    ``error`` (``auto`` on a GPU); ``warn`` prints a warning and goes on; ``off`` (``auto`` on CPU)
    plans nothing unless it is a dry run. A config the planner cannot plan stops a dry run and
    ``error``; under ``auto`` and ``warn`` it is a warning. ``device_bytes``: the device's size,
    read from it when ``None``.

    Every rank plans the same config on the same devices, so all stop together without a collective."""
    t = cfg.trainer
    mode = ("error" if info.device.type == "cuda" else "off") if t.memory_check == "auto" else t.memory_check
    if mode == "off" and not t.dry_run:
        return None
    device_bytes = device_memory(info) if device_bytes is None else device_bytes
    try:
        plan = plan_memory(cfg, info.world_size, device_bytes, info.device.type)
    except ConfigError as e:
        if t.dry_run or t.memory_check == "error":
            raise
        # A model the planner cannot run (say one that loads a frozen model from disk) still trains.
        if info.is_main:
            print(f"train: WARNING: no memory plan, started unchecked: {e}", flush=True)
        return None
    if info.is_main:
        print(plan.table(), flush=True)
    if t.dry_run:
        if info.is_main:
            verdict = "fits" if plan.fits else "does NOT fit"
            print(f"train: dry run: the plan {verdict}; nothing trained, nothing written", flush=True)
        return 0
    if plan.fits:
        return None
    largest = plan.largest_micro_batch
    message = (
        f"the memory plan needs {gib(plan.total)} GiB per rank ({gib(plan.peak)} GiB peak + "
        f"{gib(plan.reserve)} GiB reserve) but the {info.device.type} device has {gib(device_bytes)} GiB; "
        + (
            f"the largest micro-batch that fits is {largest}. "
            if largest
            else "micro-batch 1 does not fit either. "
        )
        + "Lower trainer.micro_batch_size, set trainer.activation_checkpointing=true, raise "
        "trainer.zero_stage or set trainer.offload_optimizer=true; or start anyway with "
        "trainer.memory_check=warn (or off)"
    )
    if mode == "warn":
        if info.is_main:
            print(f"train: WARNING: {message}", flush=True)
        return None
    raise MemoryPlanExceeded(message)


# ---------------------------------------------------------------------------------------------------
# The command


def parse_gpus(text: str) -> int:
    """``gpus=N`` -> N; a ``ConfigError`` naming it unless N is a whole number >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(
            f"gpus={text!r}: the number of GPUs (ranks) must be a whole number >= 1, e.g. gpus=8"
        )
    return int(text)


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld plan-memory CONFIG [key=value ...] gpus=N gpu_memory=SIZE`` (defaults: 1 GPU of
    80 GiB): print the per-rank plan of the training config. ``gpus`` and ``gpu_memory`` are the
    command's own; every other ``key=value`` overrides the config as for ``vidworld train``."""
    options = {"gpus": "1", "gpu_memory": "80GiB"}
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key in options:
            options[key] = value
        else:
            rest.append(item)
    gpus = parse_gpus(options["gpus"])
    device_bytes = parse_size(options["gpu_memory"], "gpu_memory")
    plan = plan_memory(load_train_config(config_path, rest), gpus, device_bytes, "cuda")
    print(plan.table())
    return 0


__all__ = [
    "AllocationTracker",
    "AttentionStandIn",
    "MemoryPlan",
    "MemoryPlanExceeded",
    "Planner",
    "check_before_launch",
    "cpu_peak_bytes",
    "parse_size",
    "plan_memory",
    "probe_activations",
]
