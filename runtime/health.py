"""Loud checks on a training run: warnings for what is wrong but does not stop it.

Each watcher is fed one number per step and returns a warning message (or ``None``) the step its
condition starts; it stays quiet while the condition lasts and speaks again once it has cleared
and returns. The training loop prints the message and logs ``warn/<name>`` = 1 to the tracker
(metrics.jsonl and W&B), so a dashboard shows when a run went wrong, not only the console.

- ``FlatLoss``: the loss stopped moving (max - min over a window of steps within a relative tolerance):
  a learning rate of 0, frozen parameters, a loader repeating one batch.
- ``ThroughputDrop``: a step rate below a fraction of its running median: a slow node, a filling
  disk, swapping, thermal throttling.
- ``replica_spread`` (in ``runtime.train``): the weights that every rank holds a copy of differ
  between ranks: a rank's gradients were not the others' (hardware fault, nondeterministic op).
"""

from __future__ import annotations

import collections
import statistics


class FlatLoss:
    """Warns when the last ``window`` finite losses all lie within ``rel_tol`` of their mean."""

    def __init__(self, window: int, rel_tol: float) -> None:
        self.window, self.rel_tol = window, rel_tol
        self.losses: collections.deque[float] = collections.deque(maxlen=max(1, window))
        self.flat = False

    def update(self, step: int, loss: float) -> str | None:
        if self.window <= 0 or loss != loss or loss in (float("inf"), float("-inf")):
            return None
        self.losses.append(loss)
        if len(self.losses) < self.window:
            return None
        lo, hi = min(self.losses), max(self.losses)
        mean = sum(self.losses) / len(self.losses)
        flat = hi - lo <= self.rel_tol * max(abs(mean), 1e-12)
        warn = flat and not self.flat
        self.flat = flat
        if not warn:
            return None
        return (
            f"step {step}: the loss has not moved over the last {self.window} steps (between {lo:.6g} and "
            f"{hi:.6g}); check trainer.lr, that parameters require grad, and that the loader does not repeat "
            "one batch (trainer.flat_loss_window=0 turns this check off)"
        )


class ThroughputDrop:
    """Warns when a step's rate falls below ``fraction`` of the median rate of the last ``window``
    steps (the first ``skip`` steps, compile and warm-up, are ignored)."""

    def __init__(self, fraction: float, window: int = 100, skip: int = 3, min_history: int = 10) -> None:
        self.fraction, self.skip, self.min_history = fraction, skip, min_history
        self.rates: collections.deque[float] = collections.deque(maxlen=max(1, window))
        self.seen = 0
        self.slow = False

    def update(self, step: int, seconds: float) -> str | None:
        self.seen += 1
        if self.fraction <= 0 or seconds <= 0 or self.seen <= self.skip:
            return None
        rate = 1.0 / seconds
        if len(self.rates) < self.min_history:
            self.rates.append(rate)
            return None
        median = statistics.median(self.rates)
        slow = rate < self.fraction * median
        self.rates.append(rate)
        warn = slow and not self.slow
        self.slow = slow
        if not warn:
            return None
        return (
            f"step {step}: throughput fell to {rate:.3g} steps/s, below {self.fraction:g} of the running "
            f"median {median:.3g} steps/s; look for a slow node, swapping, a full disk or a throttled device "
            "(trainer.throughput_drop=0 turns this check off)"
        )
