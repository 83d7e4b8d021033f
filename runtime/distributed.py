"""One distributed entry for every launcher: torchrun, the deepspeed launcher, SLURM's srun, Ray Train.

``init_distributed()`` reads rank, local rank and world size from whichever launcher started the
process and initialises ``torch.distributed`` (NCCL on GPU, gloo on CPU). A plain single process
needs no environment at all. Where the process group already exists (inside a Ray Train worker),
it is accepted as is.

Launcher variables, in the order they are looked for:

- torchrun / deepspeed launcher (``deepspeed --no_local_rank``) / Ray Train: ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``.
- SLURM ``srun``: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``),
  ``SLURM_LOCALID``, ``SLURM_NTASKS_PER_NODE`` and ``SLURM_STEP_NODELIST`` (else
  ``SLURM_JOB_NODELIST``); the master is the first host of the node list, the port
  ``MASTER_PORT`` when set, else one derived from ``SLURM_JOB_ID`` (the same on every task).
  Run one task per training process with ``srun``; a bare command in the batch script is one
  process of ``SLURM_NTASKS`` and would wait for the others.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import shutil
import subprocess

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits. ``launcher`` is "torchrun", "slurm", "existing" or "single"."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    backend: str
    device: torch.device
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_hostlist(nodelist: str) -> list[str]:
    """SLURM's compressed host list to host names: ``"gpu[01-03,07],login1"`` ->
    ``["gpu01", "gpu02", "gpu03", "gpu07", "login1"]`` (zero padding kept)."""
    hosts: list[str] = []
    # Split at commas outside brackets.
    parts, depth, cur = [], 0, ""
    for ch in nodelist.strip():
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in filter(None, (p.strip() for p in parts)):
        m = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for rng in ranges.split(","):
            if "-" in rng:
                lo, hi = rng.split("-", 1)
                width = len(lo)
                for i in range(int(lo), int(hi) + 1):
                    hosts.extend(f"{prefix}{i:0{width}d}{h}" for h in expand_hostlist(suffix) or [""])
            else:
                hosts.extend(f"{prefix}{rng}{h}" for h in expand_hostlist(suffix) or [""])
    return hosts


def _first_slurm_host(nodelist: str) -> str:
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass  # fall back to our own expansion below
    hosts = expand_hostlist(nodelist)
    if not hosts:
        raise RuntimeError(f"SLURM_JOB_NODELIST={nodelist!r} names no host; run the job with srun")
    return hosts[0]


def _slurm_tasks_per_node(env: dict[str, str], world_size: int) -> int:
    # SLURM_NTASKS_PER_NODE is only set with --ntasks-per-node; SLURM_TASKS_PER_NODE looks like "4(x2)".
    raw = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "")
    m = re.match(r"(\d+)", raw)
    return int(m.group(1)) if m else world_size


def launcher_env(env: dict[str, str] | None = None) -> dict[str, str | int]:
    """Rank layout and rendezvous address from the launcher's variables (``os.environ`` by default).

    Returns ``{"launcher", "rank", "local_rank", "world_size", "local_world_size", "master_addr",
    "master_port"}``; a process with no launcher variables is rank 0 of 1.
    """
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return {
            "launcher": "torchrun",
            "rank": int(env["RANK"]),
            "local_rank": int(env.get("LOCAL_RANK", 0)),
            "world_size": world,
            "local_world_size": int(env.get("LOCAL_WORLD_SIZE", world)),
            "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
            "master_port": int(env.get("MASTER_PORT", 29500)),
        }
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        # The step's own figures (set by srun) first: a step may use part of the allocation.
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"])
        nodelist = (
            env.get("SLURM_STEP_NODELIST")
            or env.get("SLURM_JOB_NODELIST")
            or env.get("SLURM_NODELIST")
            or "127.0.0.1"
        )
        job_id = int(re.sub(r"\D", "", env.get("SLURM_JOB_ID", "0")) or 0)
        return {
            "launcher": "slurm",
            "rank": int(env["SLURM_PROCID"]),
            "local_rank": int(env.get("SLURM_LOCALID", 0)),
            "world_size": world,
            "local_world_size": _slurm_tasks_per_node(env, world),
            "master_addr": env.get("MASTER_ADDR") or _first_slurm_host(nodelist),
            # Same on every task of the job, and spread so two jobs on one node rarely collide.
            "master_port": int(env.get("MASTER_PORT") or 15000 + job_id % 20000),
        }
    return {
        "launcher": "single",
        "rank": 0,
        "local_rank": 0,
        "world_size": 1,
        "local_world_size": 1,
        "master_addr": "127.0.0.1",
        "master_port": 0,
    }


def _device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(timeout_s: float = 600.0) -> DistInfo:
    """Initialise ``torch.distributed`` from the launcher's variables and pick this rank's device.

    NCCL when CUDA is present, gloo otherwise. Idempotent: an existing process group (Ray Train,
    or a second call) is accepted. Also sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` where the
    launcher (SLURM) did not, since DeepSpeed reads them.
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    _timeout_for_new_groups(timeout)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        device = _device_for(local_rank)
        return DistInfo(rank, local_rank, world, local_world, dist.get_backend(), device, "existing")

    info = launcher_env()
    rank, world = int(info["rank"]), int(info["world_size"])
    if not 0 <= rank < world:
        raise RuntimeError(f"launcher gave rank {rank} outside 0..{world - 1}; check RANK/SLURM_PROCID")
    local_rank = int(info["local_rank"])
    for key, value in (("RANK", rank), ("LOCAL_RANK", local_rank), ("WORLD_SIZE", world)):
        os.environ.setdefault(key, str(value))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(info["local_world_size"]))
    device = _device_for(local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world == 1 and info["launcher"] == "single":
        # No rendezvous needed: an in-process store, so a plain run opens no port.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        # torchrun's agent already serves the store on MASTER_PORT: join it through env://.
        init = (
            "env://"
            if info["launcher"] == "torchrun"
            else f"tcp://{info['master_addr']}:{info['master_port']}"
        )
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world, timeout=timeout)
    return DistInfo(
        rank, local_rank, world, int(info["local_world_size"]), backend, device, str(info["launcher"])
    )


def _timeout_for_new_groups(timeout: datetime.timedelta) -> None:
    """Make ``timeout`` the one of every group created from here on, not only the default group's.

    ``dist.new_group`` without a timeout (how DeepSpeed makes its data-parallel groups, which carry
    the gradient all-reduce) takes torch's module default, 30 minutes for gloo, whatever the default
    group was given: a hung rank would hold the others for half an hour."""
    from torch.distributed import distributed_c10d

    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        if isinstance(getattr(distributed_c10d, name, None), datetime.timedelta):
            setattr(distributed_c10d, name, timeout)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (float64, so step counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """The maximum of each of a few floats over all ranks (float64); the minimum is ``-max(-x)``."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown_distributed(info: DistInfo) -> None:
    """Destroy the process group we created; one that existed before (Ray Train) is left to its owner."""
    if info.launcher != "existing" and dist.is_initialized():
        dist.destroy_process_group()
