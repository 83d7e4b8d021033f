"""Encode and decode clips with PyAV: the one place vidworld turns frames into mp4 bytes and back.

Frames are ``uint8 [T, H, W, 3]`` RGB arrays. Clips are H.264 in mp4, ``yuv420p`` (so H and W
must be even), with a keyframe on the first frame so every clip decodes on its own.
"""

from __future__ import annotations

import dataclasses
import io
import os
from fractions import Fraction

import av
import numpy as np


def _as_fraction(fps: float | Fraction) -> Fraction:
    return fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)


def encode_mp4(
    frames: np.ndarray,
    fps: float | Fraction,
    crf: int = 23,
    preset: str = "veryfast",
    threads: int = 1,
) -> bytes:
    """Encode ``uint8 [T, H, W, 3]`` RGB frames to H.264 mp4 bytes at ``fps`` frames per second.

    ``crf`` is x264's constant rate factor (0 lossless .. 51 worst; 18-28 usual). The first frame
    is a keyframe and the whole clip is one GOP: clips are short and always read from the start.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"encode_mp4 needs uint8 frames of shape [T, H, W, 3]; got {frames.dtype} {frames.shape}"
        )
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("encode_mp4 got no frames")
    if h % 2 or w % 2:
        raise ValueError(
            f"H.264 yuv420p needs even frame sizes; got {w}x{h}. Resize or crop to even sizes first."
        )
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_as_fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.thread_count = threads
        stream.options = {"crf": str(crf), "preset": preset, "g": str(max(t, 1)), "bf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    """``uint8 [H, W, 3]``, scaled on this thread alone. PyAV >= 18.1.1 keeps one scaler per thread
    for the process's life, and FFmpeg 8 gives it a pool of slice threads unless told one: a process
    forked after that (a DataLoader worker) inherits a scaler whose threads are gone and hangs in
    its first conversion. Older PyAV has no ``threads`` and scales on one thread anyway."""
    try:
        return frame.to_ndarray(format="rgb24", threads=1)
    except TypeError:
        return frame.to_ndarray(format="rgb24")


def decode_mp4(data: bytes | str | os.PathLike, threads: int = 0) -> np.ndarray:
    """Decode every frame of a video (bytes or a path) to ``uint8 [T, H, W, 3]`` RGB.

    Raises ``av.error.FFmpegError`` (or ``ValueError`` for a file with no video stream) on
    input that is not a decodable video; callers that must not stop catch and count it.
    """
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else os.fspath(data)
    with av.open(src) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        if threads:
            stream.thread_type = "AUTO"
            stream.thread_count = threads
        frames = [_rgb(f) for f in container.decode(stream)]
    if not frames:
        raise ValueError("video stream has no decodable frames")
    return np.stack(frames)


@dataclasses.dataclass(frozen=True)
class VideoClip:
    """Frames with the rate they were recorded at: what a task hands the W&B writer as a video, so it
    plays at the clip's true speed. ``frames`` is ``uint8 [T, H, W, 3]``."""

    frames: np.ndarray
    fps: float
