import os
import signal
import subprocess
import sys
import time

import pytest

from runtime.files import FolderBusy, atomic_open, atomic_write_text, folder_lock


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["x.txt"]


def test_written_files_honour_the_umask(tmp_path):
    before = os.umask(0o022)
    try:
        assert (atomic_write_text(tmp_path / "a.txt", "x").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (atomic_write_text(tmp_path / "b.txt", "x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(before)


def _hold_lock(folder) -> subprocess.Popen:
    code = (
        "import sys, time; from runtime.files import folder_lock\n"
        "with folder_lock(sys.argv[1], 'holder-test'):\n    print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path):
    proc = _hold_lock(tmp_path / "out")
    try:
        t0 = time.monotonic()
        with pytest.raises(FolderBusy, match=rf"pid {proc.pid} \(holder-test"):
            with folder_lock(tmp_path / "out"):
                pass
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    proc = _hold_lock(tmp_path / "out")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with folder_lock(tmp_path / "out", "second") as lock:
        assert '"command": "second"' in lock.read_text()
    with folder_lock(tmp_path / "out"):  # released again at the end of the block
        pass
