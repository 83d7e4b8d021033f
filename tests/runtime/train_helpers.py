"""Run the real training entry as a subprocess (one process, or several under torchrun) for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE_YAML = REPO / "jobs" / "reference.yaml"
VIDWORLD = str(Path(sys.executable).parent / "vidworld")
TORCHRUN = str(Path(sys.executable).parent / "torchrun")

# A model small enough that a run is dominated by start-up (a few seconds) on 2 cores.
TINY = ["model.width=32", "model.depth=2", "model.heads=2", "model.seq_len=16", "trainer.log_every=1"]


def train_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RANK", "LOCAL_RANK", "SLURM_"))
    }
    env.update(
        {
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": "1",  # two ranks on two cores: no oversubscription, same math per rank
            "WANDB_SILENT": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("WORLD_SIZE", None)
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    return env


def train_cmd(run_dir: Path, overrides: list[str], nproc: int = 1) -> list[str]:
    args = ["train", str(REFERENCE_YAML), f"run_dir={run_dir}", *TINY, *overrides]
    if nproc == 1:
        return [VIDWORLD, *args]
    # --standalone: a rendezvous on loopback with a free port chosen by torchrun.
    return [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", VIDWORLD, *args]


def run_train(
    run_dir: Path, overrides: list[str], nproc: int = 1, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(run_dir, overrides, nproc),
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_training(run_dir: Path, overrides: list[str], nproc: int = 2) -> subprocess.Popen:
    """``vidworld train`` under torchrun in a session of its own, stdout and stderr in one text pipe."""
    return subprocess.Popen(
        train_cmd(run_dir, overrides, nproc),
        cwd=REPO,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_ranks(proc: subprocess.Popen, run_dir: Path, nproc: int = 2, timeout: float = 180) -> dict:
    """Once the run has logged a step (every rank is inside the loop, its signal handlers installed):
    its rank processes, ``{rank: psutil.Process}``."""
    import psutil

    from runtime.tracking import read_metrics

    deadline = time.monotonic() + timeout
    while not read_metrics(run_dir) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    ranks = {
        int(c.environ().get("RANK", -1)): c
        for c in psutil.Process(proc.pid).children(recursive=True)
        if "vidworld" in " ".join(c.cmdline())
    }
    assert sorted(ranks) == list(range(nproc)), {r: c.cmdline() for r, c in ranks.items()}
    return ranks


def stop_training(proc: subprocess.Popen, ranks: dict | None = None) -> None:
    """Leave nothing behind: the ranks (torchrun puts them in process groups of their own, and a stopped
    one ignores all but SIGKILL) and torchrun's session."""
    import psutil

    for rank in (ranks or {}).values():
        with contextlib.suppress(psutil.Error):
            rank.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def read_wandb_history(wandb_file: Path) -> list[dict]:
    """History rows of an offline ``run-ID.wandb`` file, decoded with W&B's own protobuf ``Record``.

    The file is a LevelDB-style log (W&B's transaction log): a 7-byte header (``:W&B``, magic, version)
    then 32 KiB blocks of records, each ``crc32(4) length(2, little-endian) type(1) data``; types 1 full,
    2 first, 3 middle, 4 last piece of one protobuf message.
    """
    import json

    from wandb.proto import wandb_internal_pb2

    data = wandb_file.read_bytes()
    assert data[:4] == b":W&B", f"{wandb_file} is not a W&B transaction log"
    block, pos, pending, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            if rec.WhichOneof("record_type") == "history":
                row = {}
                for item in rec.history.item:
                    key = item.key or "/".join(item.nested_key)
                    row[key] = json.loads(item.value_json)
                rows.append(row)
            pending = b""
    return rows
