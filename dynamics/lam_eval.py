"""The latent action model's held-out figures, a step of the chain's ``lam`` stage.

``evaluate_lam(LAM_RUN, LATENTS, OUT)`` labels the transitions of the held-out clips that carry
real actions (Atari) with the model's codes and writes ``OUT/metrics.json``: per game and over all,
the normalized mutual information between codes and the true movement class (none / right / left)
and a linear probe's accuracy from codes to that class, each beside its shuffled baseline
(``dynamics.action_probe``), with the code x class table; plus what it was computed from (the run's
step and identity, ``runtime.trained.run_identity``; the latents' content fingerprint; machine and
date). ``is_complete`` says whether OUT holds
this evaluation of the run and latents as they are now.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runtime.files import atomic_write_text

METRICS = "metrics.json"


def _inputs(lam_run: str | os.PathLike, latents: str | os.PathLike) -> dict[str, Any]:
    from runtime.fingerprint import shards_fingerprint
    from runtime.trained import run_identity

    identity = run_identity(lam_run)
    return {"lam": str(lam_run), "lam_step": identity and identity["step"], "lam_run": identity,
            "latents": str(latents), "latents_fingerprint": shards_fingerprint(str(latents))}  # fmt: skip


def is_complete(lam_run: str | os.PathLike, latents: str | os.PathLike, out: str | os.PathLike) -> bool:
    """Whether ``out/metrics.json`` is the evaluation of this run's weights on these latents."""
    try:
        info = json.loads((Path(out) / METRICS).read_text())
    except (OSError, ValueError):
        return False
    inputs = _inputs(lam_run, latents)
    return (
        isinstance(info, dict)
        and inputs["lam_step"] is not None
        and all(info.get(k) == inputs[k] for k in ("lam_run", "latents_fingerprint"))
    )


def evaluate_lam(
    lam_run: str | os.PathLike, latents: str | os.PathLike, out: str | os.PathLike, split: str = "heldout"
) -> dict[str, Any]:
    """Score the codes on ``split`` clips of ``latents`` and write ``out/metrics.json``; returns it."""
    from dynamics.action_probe import evaluate_latent_actions
    from tokenizer.evaluate import machine_name, utc_now

    figures = evaluate_latent_actions(str(lam_run), str(latents), split=split)
    info = {**_inputs(lam_run, latents), "split": split, "machine": machine_name(), "date": utc_now(),
            **figures}  # fmt: skip
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / METRICS, json.dumps(info, indent=2, default=float))
    return info
