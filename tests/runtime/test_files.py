import pytest

from runtime.files import atomic_open, atomic_write_text


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["x.txt"]
