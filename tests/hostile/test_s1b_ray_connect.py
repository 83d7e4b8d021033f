"""``runtime.cluster.init_ray`` against dead clusters: a leftover head and an unreachable RAY_ADDRESS.

Each driver runs in a fresh subprocess with ``RAY_TMPDIR`` pointing at a private folder, so the
leftover ``ray_current_cluster`` file made here is never the machine's shared one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.cluster_services import LAUNCHER_VARIABLES, REPO, _stop_session, free_port, start_ray_head

pytestmark = pytest.mark.integration

LOCAL_START_BOUND_S = 60  # a fresh local instance on a busy 2-core machine, with room to spare


@pytest.fixture
def ray_tmp(monkeypatch):
    # Short path: Ray's unix sockets live under it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="vw-s1b-"))
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _driver(code: str, env: dict[str, str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``code`` in a new Python process (own session, stopped whole afterwards); its result and
    wall time."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_session(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"driver still running after {timeout} s\nstdout:\n{out}\nstderr:\n{err[-3000:]}")
    finally:
        _stop_session(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - t0


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def test_without_ray_address_a_dead_leftover_cluster_is_not_joined(ray_tmp):
    with start_ray_head(ray_tmp, num_cpus=1) as head:
        port = head.address.rsplit(":", 1)[1]
    # The head and everything it spawned are gone, but Ray's pointer to it is left behind.
    leftover = ray_tmp / "ray" / "ray_current_cluster"
    assert leftover.is_file(), "ray start should have left its ray_current_cluster file"
    dead_address = leftover.read_text().strip()  # Ray writes the machine's address, not loopback
    assert dead_address.endswith(f":{port}")

    result, seconds = _driver(
        """
        import time, ray
        from runtime.cluster import init_ray
        t0 = time.monotonic()
        init_ray(num_cpus=1)
        print("GCS", ray.get_runtime_context().gcs_address)
        print("CPUS", ray.cluster_resources().get("CPU"))
        print("INIT_S", time.monotonic() - t0)
        ray.shutdown()
        """,
        _clean_env(RAY_TMPDIR=str(ray_tmp)),
        timeout=LOCAL_START_BOUND_S + 60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["GCS"] != dead_address, "init_ray joined the dead leftover cluster"
    assert float(lines["CPUS"]) == 1.0  # our own instance, sized by num_cpus
    assert float(lines["INIT_S"]) < LOCAL_START_BOUND_S, f"init {lines['INIT_S']} s, {seconds:.0f} s in all"


def test_unreachable_ray_address_fails_within_the_bound_naming_the_address(ray_tmp):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    bound = 5.0
    result, seconds = _driver(
        f"""
        import time
        from runtime.cluster import RayConnectError, init_ray
        t0 = time.monotonic()
        try:
            init_ray(connect_timeout_s={bound})
        except RayConnectError as e:
            print("ERROR", e)
            print("FAIL_S", time.monotonic() - t0)
        else:
            print("CONNECTED")
        """,
        _clean_env(RAY_TMPDIR=str(ray_tmp), RAY_ADDRESS=address),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CONNECTED" not in result.stdout
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert address in lines["ERROR"]
    assert "RAY_ADDRESS" in lines["ERROR"]
    assert bound - 1 <= float(lines["FAIL_S"]) < bound + 5, lines["FAIL_S"]


def test_wait_for_head_reads_every_address_form_ray_accepts():
    from runtime.cluster import _host_port

    assert _host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert _host_port("ray://head.example:10001") == ("head.example", 10001)
    assert _host_port("http://127.0.0.1:8265/") == ("127.0.0.1", 8265)
    assert _host_port("[::1]:6379") == ("::1", 6379)
    assert _host_port("auto") is None and _host_port("local") is None
