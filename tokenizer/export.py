"""The exported tokenizer format, and the one way to load a trained tokenizer.

An exported tokenizer is a folder holding exactly:

- ``model.safetensors``: the ``CausalVideoTokenizer`` state dict (float tensors, names as in
  ``model.state_dict()``; FSQ grid buffers are not stored, they follow from the levels);
- ``config.json``: ``{"format": "vidworld-tokenizer", "version": 1, "model": {...}}`` where
  ``model`` is ``TokenizerConfig.to_dict()`` (architecture, bottleneck, loss weights).

``save_tokenizer`` writes both files into a temporary sibling folder and renames it into place,
so a reader sees no folder or the complete one.

``load_tokenizer(path)`` accepts that folder; a training run folder of ``vidworld train`` with
``task: tokenizer``, loaded through ``runtime.trained.load_trained`` (the one loader of a run's
model: its ``model.safetensors``, or its newest checkpoint while it has none) and unwrapped from the
``TokenizerObjective``; or a folder holding an export as ``export/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from runtime.checkpoint import WEIGHTS
from tokenizer.config import TokenizerConfig
from tokenizer.model import CausalVideoTokenizer, build_tokenizer

FORMAT = "vidworld-tokenizer"
VERSION = 1
CONFIG = "config.json"
RUN_CONFIG = "config.yaml"  # a training run folder's resolved config (runtime.train)


def _model_fields(d: dict[str, Any]) -> dict[str, Any]:
    """Keep the ``TokenizerConfig`` keys of a (task) config dict: training-only keys are dropped."""
    names = {f.name for f in dataclasses.fields(TokenizerConfig)}
    return {k: v for k, v in d.items() if k in names}


def save_tokenizer(
    model: CausalVideoTokenizer, cfg: TokenizerConfig | None, folder: str | os.PathLike
) -> Path:
    """Export ``model`` (config ``cfg``, default ``model.cfg``) to ``folder`` atomically; returns the folder.

    An existing export at ``folder`` is replaced as a whole.
    """
    cfg = cfg if cfg is not None else model.cfg
    final = Path(folder)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "version": str(VERSION)})
        with open(tmp / CONFIG, "w") as f:
            meta = {"format": FORMAT, "version": VERSION, "model": _model_fields(cfg.to_dict())}
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / WEIGHTS, "rb+") as f:
            os.fsync(f.fileno())
        if final.exists():
            # Swap: move the old export aside first so the final rename lands on a free name.
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _is_export(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file()


def _is_run(folder: Path) -> bool:
    return (folder / RUN_CONFIG).is_file() and not (folder / CONFIG).is_file()


def weights_file(path: str | os.PathLike) -> Path:
    """The weights file ``load_tokenizer(path)`` reads: an export's, a finished run's, or ``export/``'s.

    ``FileNotFoundError`` (saying what is expected) when there is none, e.g. a run still training.
    """
    path = Path(path)
    if _is_export(path) or (_is_run(path) and (path / WEIGHTS).is_file()):
        return path / WEIGHTS
    if _is_export(path / "export"):
        return path / "export" / WEIGHTS
    if _is_run(path):
        raise FileNotFoundError(
            f"run folder {str(path)!r} has no {WEIGHTS} yet: the runtime writes it when training ends "
            "(trainer.export_weights=true); or export a checkpoint with runtime.checkpoint.export_weights"
        )
    raise FileNotFoundError(
        f"no tokenizer at {str(path)!r}: expected {WEIGHTS} and {CONFIG} there (an export from "
        f"tokenizer.save_tokenizer), a training run folder ({RUN_CONFIG} + {WEIGHTS}), "
        "or an export/ subfolder"
    )


def _read_config(folder: Path) -> TokenizerConfig:
    """The tokenizer config of an export folder."""
    meta = json.loads((folder / CONFIG).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("version", 0)) > VERSION:
        raise ValueError(
            f"{folder / CONFIG}: format version {meta['version']} is newer than this vidworld reads "
            f"({VERSION}); upgrade vidworld"
        )
    return TokenizerConfig.from_dict(_model_fields(meta["model"]))


def _load_run(folder: Path, device: torch.device | str) -> CausalVideoTokenizer:
    """The tokenizer of a training run folder, out of the run's ``TokenizerObjective``."""
    from runtime.trained import load_trained  # here: it imports the training runtime

    cfg, _, model = load_trained(folder, device)
    tok = getattr(model, "tokenizer", None)
    if not isinstance(tok, CausalVideoTokenizer):
        raise ValueError(
            f"{folder / RUN_CONFIG}: a run of task {cfg.task!r}, not a tokenizer run (task: tokenizer)"
        )
    return tok.eval()


def load_tokenizer(path: str | os.PathLike, device: torch.device | str = "cpu") -> CausalVideoTokenizer:
    """Load an exported tokenizer (or a tokenizer run folder's model) in eval mode on ``device``."""
    path = Path(path)
    # A run without model.safetensors yet (and no export/) loads from its newest checkpoint.
    if _is_run(path) and ((path / WEIGHTS).is_file() or not _is_export(path / "export")):
        return _load_run(path, device)
    folder = weights_file(path).parent
    model = build_tokenizer(_read_config(folder), device=device, meta=True)
    state = load_file(str(folder / WEIGHTS), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder / WEIGHTS} does not match its config: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()
