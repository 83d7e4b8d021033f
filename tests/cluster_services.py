"""Real cluster services for integration tests: a single-node SLURM cluster and a local Ray cluster.

Nothing here mocks a scheduler. ``slurm_cluster`` starts ``munged``, ``slurmctld`` and ``slurmd``
from the Debian packages (CI's ``.ci/run`` installs them) with every config, socket, spool, state
and log file inside one temporary folder, on free ports, so it does not touch ``/etc/slurm`` or
``/run/munge`` and cannot collide with a cluster already running on the machine. ``ray_cluster``
starts a Ray head on loopback. Both are session-scoped, skip with the reason when the binaries
(or root, which ``slurmd`` needs) are missing, and stop exactly the processes they started, by id.

``tests/conftest.py`` re-exports both fixtures; ``start_slurm`` and ``start_ray_head`` are the same
services as context managers, for scripts and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["SlurmCluster", "RayCluster", "slurm_cluster", "ray_cluster", "start_slurm", "start_ray_head"]

REPO = Path(__file__).resolve().parents[1]
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo", "squeue")
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "RAY_ADDRESS")
# Terminal job states in `scontrol show job` (a requeued job passes through REQUEUED to PENDING).
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED"}


def free_port() -> int:
    """A TCP port that nothing listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, name: str, grace_s: float = 10.0) -> None:
    """SIGTERM one process we started, then SIGKILL it if it is still there after ``grace_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        print(f"cluster_services: {name} (pid {proc.pid}) ignored SIGTERM; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def _wait_until(predicate, timeout_s: float, what: str, log: Path | None = None, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    tail = ""
    if log is not None and log.exists():
        tail = "\n--- " + str(log) + " ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s{tail}")


# --------------------------------------------------------------------------------------------- SLURM


@dataclass
class SlurmCluster:
    """A running single-node SLURM cluster; its client commands need ``env`` (it carries ``SLURM_CONF``)."""

    root: Path
    conf: Path
    node: str
    partition: str
    cpus: int
    env: dict[str, str]
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def command(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command (``scontrol``, ``sbatch``...) against this cluster; text output."""
        res = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            output = res.stderr.strip() or res.stdout.strip()
            raise RuntimeError(f"{' '.join(args)} exited {res.returncode}: {output}")
        return res

    def sbatch(self, script: str | os.PathLike, args: list[str] = (), options: list[str] = (),
               cwd: str | os.PathLike = REPO, env: dict[str, str] | None = None) -> int:
        """Submit ``script args...`` with ``sbatch options...`` from ``cwd``; returns the job id."""
        res = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], cwd=cwd,
                             env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed ({res.returncode}): {res.stderr.strip()}")
        return int(res.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, StdOut...)."""
        out = self.command("scontrol", "show", "job", "--oneliner", str(job_id)).stdout
        return dict(re.findall(r"(\w+(?::\w+)?)=(\S*)", out))

    def wait_for_state(self, job_id: int, states: set[str], timeout_s: float = 120) -> dict[str, str]:
        """Poll until the job's JobState is one of ``states``; returns its last ``job()`` record."""
        info: dict[str, str] = {}

        def reached() -> bool:
            nonlocal info
            info = self.job(job_id)
            return info.get("JobState") in states

        try:
            _wait_until(reached, timeout_s, f"SLURM job {job_id} reaching {sorted(states)}", poll_s=0.5)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last record: {info}") from None
        return info

    def wait_for_finish(self, job_id: int, timeout_s: float = 180) -> dict[str, str]:
        return self.wait_for_state(job_id, FINISHED_STATES, timeout_s)


def _slurm_conf(root: Path, node: str, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int,
                munge_socket: Path) -> str:
    # Why each non-default line: linuxproc/task-none need no cgroups (containers often lack them);
    # cons_tres + OverSubscribe=FORCE let a 2-task job share 2 cores with the tests' own processes;
    # config_overrides trusts CPUs= here even on a 1-core CI box; jobcomp/filetxt keeps a record
    # of finished jobs without slurmdbd; short timers keep requeue and shutdown fast in tests.
    return f"""\
ClusterName=vidworld-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
"""


def _binary(name: str) -> str | None:
    """Full path of a command; the daemons live in sbin, which a non-login PATH may lack."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def _missing_slurm() -> str | None:
    missing = [b for b in SLURM_BINARIES if _binary(b) is None]
    if missing:
        return (f"SLURM/munge binaries not found: {', '.join(missing)} "
                "(apt-get install slurmctld slurmd slurm-client munge, as .ci/run does)")
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts jobs as their user); run these tests as root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "the 'munge' user does not exist (it comes with the munge package)"
    return None


@contextlib.contextmanager
def start_slurm(root: Path, cpus: int | None = None, start_timeout_s: float = 60) -> Iterator[SlurmCluster]:
    """Start munged + slurmctld + slurmd with all their files under ``root``; stop them on exit."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    cpus = max(cpus or os.cpu_count() or 1, 2)
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)

    # munged refuses world-writable or foreign-owned folders and keys: give it its own, owned by munge.
    munge_dir = root / "munge"
    munge_dir.mkdir(mode=0o755, exist_ok=True)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    user = pwd.getpwnam("munge")
    for p in (munge_dir, key):
        os.chown(p, user.pw_uid, user.pw_gid)
    os.chmod(root, 0o755)
    munge_socket = munge_dir / "munge.socket"

    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, node, cpus, memory_mb, free_port(), free_port(), munge_socket))
    (root / "plugstack.conf").write_text("")
    # The jobs inherit this environment (sbatch --export=ALL): no launcher variables from the
    # process running the tests (a CI job inside SLURM or torchrun) may leak into them.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in LAUNCHER_VARIABLES}
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root=root, conf=conf, node=node, partition="debug", cpus=cpus, env=env)
    logs = open(root / "daemons.out", "ab")  # noqa: SIM115 - closed in finally
    try:
        munged = subprocess.Popen(
            [_binary("munged"), "--foreground", f"--socket={munge_socket}", f"--key-file={key}",
             f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
             f"--seed-file={munge_dir}/munged.seed"],
            user="munge", group="munge", stdout=logs, stderr=subprocess.STDOUT)
        cluster.processes.append(("munged", munged))
        _wait_until(lambda: munge_socket.exists() or munged.poll() is not None, 15, "munged socket",
                    munge_dir / "munged.log")
        if munged.poll() is not None:
            raise RuntimeError(f"munged exited {munged.returncode}; see {munge_dir}/munged.log")

        ctld = subprocess.Popen([_binary("slurmctld"), "-D", "-i", "-f", str(conf)], env=env, stdout=logs,
                                stderr=subprocess.STDOUT)
        cluster.processes.append(("slurmctld", ctld))

        def ctld_answers() -> bool:
            if ctld.poll() is not None:
                raise RuntimeError(f"slurmctld exited {ctld.returncode}; see {root}/slurmctld.log")
            return cluster.command("scontrol", "ping", check=False).returncode == 0

        _wait_until(ctld_answers, start_timeout_s, "slurmctld answering ping", root / "slurmctld.log")
        slurmd = subprocess.Popen([_binary("slurmd"), "-D", "-f", str(conf), "-N", node], env=env,
                                  stdout=logs, stderr=subprocess.STDOUT)
        cluster.processes.append(("slurmd", slurmd))

        def node_idle() -> bool:
            for name, p in cluster.processes:
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited {p.returncode} while starting; see {root}/{name}.log")
            out = cluster.command("sinfo", "--noheader", "--format=%t", check=False).stdout.strip()
            return out.startswith("idle")

        _wait_until(node_idle, start_timeout_s, f"SLURM node {node} becoming idle", root / "slurmd.log")
        yield cluster
    finally:
        # Jobs first (their steps are slurmstepd processes the daemons own), then the daemons by pid.
        if any(p.poll() is None for n, p in cluster.processes if n == "slurmctld"):
            with contextlib.suppress(Exception):
                cluster.command("scancel", "--full", f"--partition={cluster.partition}", check=False)
                _wait_until(lambda: not cluster.command("squeue", "--noheader", check=False).stdout.strip(),
                            20, "jobs ending")
        for name, proc in reversed(cluster.processes):
            _stop(proc, name)
        logs.close()


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real single-node SLURM cluster for the session (about 10 s to start); skips when unavailable."""
    reason = _missing_slurm()
    if reason:
        pytest.skip(reason)
    # Not under pytest's tmp root: slurmd runs jobs as root from here and munged checks every parent
    # folder's permissions, which a short path in the system temp folder keeps simple.
    root = Path(tempfile.mkdtemp(prefix="vidworld-slurm-"))
    try:
        with start_slurm(root) as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- Ray


@dataclass
class RayCluster:
    """A running Ray head on loopback; ``env`` (``RAY_ADDRESS`` and the auth token) is what a driver needs."""

    address: str
    dashboard_url: str
    num_cpus: int
    process: subprocess.Popen
    auth_env: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.auth_env, "RAY_ADDRESS": self.address}


def _session_processes(sid: int) -> list[int]:
    """Ids of the live processes whose session id is ``sid`` (from /proc; Linux only)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that closes the command name: state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _stop_session(sid: int, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process of one session we created (a Ray head and all it spawned)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_processes(sid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while _session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


@contextlib.contextmanager
def start_ray_head(root: Path, num_cpus: int = 2, start_timeout_s: float = 90) -> Iterator[RayCluster]:
    """``ray start --head --block`` on 127.0.0.1 with its temp folder under ``root``; stopped on exit.

    Token authentication is on with a token of our own (Ray 2.60 turns it on for a head whenever
    ``~/.ray/auth_token`` exists, and a driver joining through ``RAY_ADDRESS`` then needs the token).
    The head runs in a new session; on exit every process of that session is stopped by id: Ray's
    workers sit in their own process groups and a ``--block`` head ignores SIGTERM for a while.
    """
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip(f"the ray CLI is not installed beside {sys.executable}")
    port, dash = free_port(), free_port()
    temp = root / "ray"
    temp.mkdir(parents=True, exist_ok=True)
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    log = open(root / "ray-head.out", "ab")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--temp-dir={temp}", "--disable-usage-stats",
         # Ports of our own for the head's agents: the defaults clash with a local Ray that a test
         # process started with ray.init() (its job agent then never comes up).
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
         f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
         f"--object-manager-port={free_port()}"],
        stdout=log, stderr=subprocess.STDOUT, env={**env, **auth_env}, start_new_session=True)
    cluster = RayCluster(address=f"127.0.0.1:{port}", dashboard_url=f"http://127.0.0.1:{dash}",
                         num_cpus=num_cpus, process=proc, auth_env=auth_env)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}; see {root}/ray-head.out")
            # `ray start --block` prints this once the head's processes are all up.
            return "Ray runtime started" in (root / "ray-head.out").read_text(errors="replace")

        _wait_until(up, start_timeout_s, "Ray head start", root / "ray-head.out")
        yield cluster
    finally:
        _stop_session(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A local Ray head (2 CPUs, no GPUs) on loopback for the session."""
    root = Path(tempfile.mkdtemp(prefix="vidworld-ray-"))
    try:
        with start_ray_head(root) as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray in this test process for the in-process curate and tokenize tests (shut down at
    the end of the session, unless something else had started Ray first)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    if started:
        ray.shutdown()
