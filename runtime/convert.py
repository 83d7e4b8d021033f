"""``vidworld convert-checkpoint RUN_DIR trust=true``: give a checkpoint without ``model.safetensors``
(an older trainer's, or one copied from elsewhere) its consolidated weights as safetensors.

This UNPICKLES DeepSpeed's files (``mp_rank_*_model_states.pt``, ZeRO optimizer shards): a crafted
file runs its code here. Use it only on files you trust; it refuses to run without ``trust=true``.
Everything else in vidworld reads weights from safetensors only (``runtime.checkpoint``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from runtime import checkpoint as ckpt
from runtime.config import ConfigError

WARNING = (
    "convert-checkpoint unpickles DeepSpeed's checkpoint files, which can run arbitrary code: "
    "use it only on files you trust"
)


def consolidated_state_dict(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """Full model weights from DeepSpeed's files in a checkpoint folder, whatever its ZeRO stage.

    Unpickles (see the module docstring). ZeRO 1-3: DeepSpeed's ``zero_to_fp32`` reader (fp32
    master weights). Stage 0: the module state DeepSpeed saved (in the training precision).
    """
    ckpt_dir = Path(ckpt_dir)
    meta = ckpt.read_meta(ckpt_dir)
    if meta.get("zero_stage", 0) >= 1:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name)
    # DeepSpeed pickles its config objects into this file: weights_only cannot read it.
    return torch.load(ckpt_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)[
        "module"
    ]


def convert_checkpoint(run_dir: str | Path) -> Path:
    """Write ``model.safetensors`` into the newest complete checkpoint of ``run_dir`` (unpickles)."""
    latest = ckpt.find_latest(run_dir)
    if latest is None:
        raise FileNotFoundError(
            f"{run_dir} has no complete checkpoint (checkpoints/step_*/COMPLETE); nothing to convert"
        )
    out = ckpt.checkpoint_weights_path(latest)
    if out.is_file():
        return out
    meta = ckpt.read_meta(latest)
    return ckpt.save_weights(
        consolidated_state_dict(latest), out, {"step": str(meta["step"]), "checkpoint": latest.name}
    )


def cli(run_dir: str, overrides: list[str]) -> int:
    """``vidworld convert-checkpoint RUN_DIR trust=true``."""
    trusted = [o for o in overrides if o.lower() in ("trust=true", "trust=yes", "trust=1")]
    unknown = [o for o in overrides if o not in trusted]
    if unknown:
        raise ConfigError(f"convert-checkpoint takes only trust=true, got {unknown}")
    if not trusted:
        print(
            f"vidworld convert-checkpoint: refusing to run without trust=true. {WARNING}. If you trust "
            f"{run_dir}, run `vidworld convert-checkpoint {run_dir} trust=true`",
            file=sys.stderr,
        )
        return 2
    print(f"vidworld convert-checkpoint: WARNING: {WARNING}", file=sys.stderr)
    try:
        out = convert_checkpoint(run_dir)
    except FileNotFoundError as e:
        print(f"vidworld convert-checkpoint: {e}", file=sys.stderr)
        return 1
    print(f"vidworld convert-checkpoint: wrote {out}")
    return 0
