"""No silent hangs: name the rank that stopped answering, and honour a preemption while a collective waits.

A rank that hangs (a stopped process, a stuck driver) or dies leaves the others blocked inside a
collective until ``trainer.collective_timeout_s`` runs out; the error they then get from gloo or
NCCL ("Timed out waiting ...", "Connection closed by peer") names no rank. ``RankWatch`` gives
every rank a daemon thread that bumps its own counter in the process group's rendezvous store every
``interval`` seconds. When a collective fails, ``diagnose()`` reads the counters twice, a few
intervals apart: a rank whose counter did not move is hung or dead, and the message says which.
Counters, not timestamps, so the nodes' clocks need not agree. When the store's host (rank 0, or
torchrun's agent) is the one gone, the store itself does not answer, and that is the diagnosis.

While the main thread is blocked inside a collective, Python cannot run the SIGTERM/SIGUSR1
handler (``runtime.train.PreemptionSignal``), so a preemption warning would wait for the collective
timeout, longer than the scheduler's warning. ``RankWatch`` also registers a wakeup fd (written by
the C-level handler the moment the signal arrives): when the loop has not reached a step boundary
``preempt_grace_s`` seconds after the signal, the watch thread prints why and ends the process with
exit code 75 without saving, so the scheduler still requeues the job and the rerun resumes from the
last complete checkpoint, instead of the job dying at its time limit.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

KEY = "vidworld/alive/{rank}"


def default_store() -> Any | None:
    """The default process group's rendezvous store, or ``None`` where torch does not expose it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # a private API: without it the run still trains, only undiagnosed
        return None


class RankWatch:
    """One per training process; ``close()`` stops it. A no-op (but harmless) on a single process."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        store: Any | None,
        interval: float = 2.0,
        preempt_grace_s: float = 60.0,
        exit_code: int = 75,
        exit_fn: Callable[[int], None] = os._exit,
    ) -> None:
        self.rank, self.world_size, self.store = rank, world_size, store
        self.interval, self.preempt_grace_s, self.exit_code = interval, preempt_grace_s, exit_code
        self._exit_fn = exit_fn
        self._stop = threading.Event()
        self._at_boundary = threading.Event()  # the loop took the preemption at a step boundary
        self._signal_at: float | None = None
        self._old_wakeup: int | None = None
        self._pipe: tuple[int, int] | None = None
        if preempt_grace_s > 0 and threading.current_thread() is threading.main_thread():
            r, w = os.pipe()
            os.set_blocking(w, False)
            os.set_blocking(r, False)
            self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self._pipe = (r, w)
        # Two threads: a heartbeat that may block on a store whose host (rank 0) is stopped must not
        # keep the signal watch from acting.
        self._threads = [
            threading.Thread(target=target, name=f"vidworld-{name}", daemon=True)
            for target, name, wanted in ((self._beat, "heartbeat", store is not None),
                                         (self._watch, "preempt-watch", self._pipe is not None))
            if wanted
        ]
        for thread in self._threads:
            thread.start()

    # -- the loop's side -------------------------------------------------------------------------

    def stand_down(self) -> None:
        """The loop took the preemption request at a step boundary (it saves now) or has ended: from
        here on a signal is the loop's business, not the watch's."""
        self._at_boundary.set()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.interval + 1)
        if self._pipe is not None:
            with contextlib.suppress(ValueError):  # not the main thread any more: leave it
                signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    # -- the threads -----------------------------------------------------------------------------

    def _beat(self) -> None:
        key = KEY.format(rank=self.rank)
        while not self._stop.is_set():
            store = self.store
            if store is None:
                return
            try:
                store.add(key, 1)
            except Exception:  # the store (rank 0) is gone: nothing left to report to
                self.store = None
                return
            self._stop.wait(self.interval)

    def _watch(self) -> None:
        assert self._pipe is not None
        read_fd = self._pipe[0]
        while not self._stop.is_set():
            ready, _, _ = select.select([read_fd], [], [], min(self.interval, 0.5))
            if ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    data = os.read(read_fd, 64)
                    if self._signal_at is None and any(b in (signal.SIGTERM, signal.SIGUSR1) for b in data):
                        self._signal_at = time.monotonic()
            if (
                self._signal_at is not None
                and not self._at_boundary.is_set()
                and time.monotonic() - self._signal_at > self.preempt_grace_s
            ):
                self._give_up_waiting()
                return

    def _give_up_waiting(self) -> None:
        print(
            f"train: rank {self.rank}: a preemption signal arrived {self.preempt_grace_s:g} s ago and this "
            f"rank has not reached a step boundary since (trainer.preempt_grace_s); "
            f"{self.diagnose()}. Exiting {self.exit_code} without saving: the requeued or rerun job resumes "
            "from the last complete checkpoint.",
            file=sys.stderr,
            flush=True,
        )
        self._exit_fn(self.exit_code)

    # -- diagnosis -------------------------------------------------------------------------------

    def _counters(self, timeout: float) -> list[int] | None:
        """Every rank's counter, or ``None`` when the store does not answer within ``timeout``."""
        store = self.store
        if store is None:
            return None
        out: list[int] = []

        def read() -> None:
            with contextlib.suppress(Exception):
                out.extend(int(store.add(KEY.format(rank=r), 0)) for r in range(self.world_size))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        return out if len(out) == self.world_size else None

    def silent_ranks(self) -> list[int] | None:
        """Ranks whose counter did not move over ~3 intervals; ``None`` when the store does not answer."""
        wait = 3 * self.interval + 0.5
        before = self._counters(wait)
        if before is None:
            return None
        time.sleep(wait)
        after = self._counters(wait)
        if after is None:
            return None
        return [r for r, (a, b) in enumerate(zip(before, after, strict=True)) if a == b and r != self.rank]

    def diagnose(self) -> str:
        """One clause naming the ranks that stopped answering (or saying it could not tell)."""
        if self.world_size < 2:
            return "a single process: no other rank to wait for"
        gone = (
            "the rendezvous store does not answer: its host (rank 0, or torchrun's agent) is hung or dead"
        )
        if self.store is None and self.rank != 0:
            return gone
        silent = self.silent_ranks()
        if silent is None:
            if self.rank == 0:
                return "the rendezvous store does not answer, so the hung or dead rank cannot be named"
            return gone
        if not silent:
            return "every rank still answers (a slow collective, not a hung rank)"
        names = ", ".join(str(r) for r in silent)
        return f"rank(s) {names} stopped answering: hung or dead (look at that rank's log and node)"
