import subprocess

import numpy as np
import pytest

from pipeline.probe import BadInput, decode_frames, probe
from pipeline.samples import write_video


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    frames = np.random.default_rng(0).integers(0, 255, (30, 48, 64, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("probe") / "good.mp4", frames, 30)


def test_probe_reports_container_codec_size_rate_duration_and_rotation(good):
    info = probe(good)
    assert (info.codec, info.width, info.height, info.fps, info.rotation, info.num_frames) == (
        "h264",
        64,
        48,
        30.0,
        0,
        30,
    )
    assert "mp4" in info.container
    assert info.duration == pytest.approx(1.0, abs=0.05)


def test_decode_frames_returns_resized_frames_and_their_times(good):
    frames, times, note = decode_frames(good, 32, 24)
    assert frames.shape == (30, 24, 32, 3) and frames.dtype == np.uint8
    assert np.allclose(times, np.arange(30) / 30.0, atol=1e-3)
    assert note is None


def test_an_empty_file_is_skipped_with_a_reason(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(BadInput, match="empty file") as e:
        probe(tmp_path / "empty.mp4")
    assert e.value.status == "skipped"


def test_a_truncated_mp4_fails_saying_it_is_truncated(good, tmp_path):
    data = good.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="truncated") as e:
        probe(tmp_path / "cut.mp4")
    assert e.value.status == "failed"


def test_a_text_file_fails_as_not_a_video(tmp_path):
    (tmp_path / "notes.txt").write_text("these are not frames\n" * 20)
    with pytest.raises(BadInput, match="not a video") as e:
        probe(tmp_path / "notes.txt")
    assert e.value.status == "failed"


def test_an_audio_only_file_is_skipped_as_having_no_video_stream(tmp_path):
    path = tmp_path / "tone.m4a"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(path)], check=True
    )
    with pytest.raises(BadInput, match=r"no video stream \(audio only\)") as e:
        probe(path)
    assert e.value.status == "skipped"


def test_garbage_after_a_valid_header_fails_or_keeps_the_frames_before_it(good, tmp_path):
    data = bytearray(good.read_bytes())
    # Overwrite the middle of the file (inside mdat: the coded frames) with noise.
    mid = len(data) // 2
    data[mid : mid + 2000] = np.random.default_rng(1).integers(0, 255, 2000, dtype=np.uint8).tobytes()
    (tmp_path / "noisy.mp4").write_bytes(bytes(data))
    try:
        frames, _, note = decode_frames(tmp_path / "noisy.mp4", 32, 24)
    except BadInput as e:
        assert e.status == "failed" and e.reason
    else:
        assert 1 <= len(frames) <= 30
