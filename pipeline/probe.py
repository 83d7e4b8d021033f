"""Probe and decode source videos with PyAV, turning every way a file can be bad into a plain reason.

``probe(src)`` reads the container header and the first frame; ``decode_frames(src, w, h)``
decodes all frames resized to ``w x h`` (stored orientation) with their timestamps. Both raise
``BadInput`` whose ``status`` is ``"skipped"`` (nothing wrong, nothing to use: empty file, audio
only) or ``"failed"`` (corrupt, truncated, not a video) and whose message a person understands. A failure
to *read* the file (permission denied, I/O error, file vanished, disk full) says nothing about its
content: its ``BadInput`` has ``retry`` set, and curation tries the input again on the next run.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# FFmpeg "decodes" any text file as ANSI art through its tty demuxer; that is not a video.
TEXT_FORMATS = frozenset({"tty"})
TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})


# errno values of a failure to read or write, not of what the file holds: a rerun may succeed.
IO_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.ENXIO,
     errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EISDIR}
)  # fmt: skip


def is_io_fault(e: BaseException) -> bool:
    """Whether ``e`` is a failure to read or write (see ``IO_ERRNOS``), not a sign of bad content."""
    return isinstance(e, (MemoryError, FileNotFoundError, PermissionError)) or (
        isinstance(e, OSError) and abs(getattr(e, "errno", 0) or 0) in IO_ERRNOS
    )


class BadInput(Exception):
    """An input that yields no clips, with the manifest ``status`` and a readable reason; ``retry``
    when the cause is a failure to read it (not its content), so a rerun should try it again."""

    def __init__(self, status: str, reason: str, retry: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.retry = status, reason, retry


@dataclass
class VideoInfo:
    """What ``probe`` learns. Sizes in pixels as stored (before rotation), fps in frames/s,
    duration in seconds, rotation in degrees counter-clockwise (0, 90, 180 or 270)."""

    container: str
    codec: str
    width: int
    height: int
    fps: float
    duration: float
    rotation: int
    num_frames: int  # from the header; 0 when the container does not say

    @property
    def display_size(self) -> tuple[int, int]:
        """``(width, height)`` as shown, after rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Source = bytes | str | os.PathLike


def _open(src: Source) -> av.container.InputContainer:
    if isinstance(src, (bytes, bytearray)):
        if len(src) == 0:
            raise BadInput("skipped", "empty file (0 bytes)")
        return av.open(io.BytesIO(src))
    if os.path.getsize(src) == 0:
        raise BadInput("skipped", "empty file (0 bytes)")
    return av.open(os.fspath(src))


def _explain(e: Exception) -> str:
    msg = str(e).split(":", 1)[-1].strip() if isinstance(e, av.error.FFmpegError) else str(e)
    if "moov atom not found" in str(e):
        return (
            "cannot open: the mp4 index (moov atom) is missing: the file is truncated or was never finished"
        )
    if isinstance(e, av.error.InvalidDataError):
        return f"not a video file that FFmpeg can read ({msg})"
    return f"cannot read the video: {msg}"


def _normalise_rotation(deg: float) -> int:
    r = int(round(deg)) % 360
    return min((0, 90, 180, 270), key=lambda a: min(abs(a - r), 360 - abs(a - r)))


def probe(src: Source) -> VideoInfo:
    """Container, codec, size, fps, duration and rotation of a video; decodes its first frame to make
    sure it really decodes. Raises ``BadInput`` otherwise."""
    try:
        with _open(src) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams})
                what = "audio only" if kinds == ["audio"] else f"streams: {', '.join(kinds) or 'none'}"
                raise BadInput("skipped", f"no video stream ({what})")
            stream = container.streams.video[0]
            if container.format.name in TEXT_FORMATS or stream.codec_context.name in TEXT_CODECS:
                raise BadInput(
                    "failed",
                    f"not a video file: FFmpeg reads it as text ({container.format.name} "
                    f"demuxer, {stream.codec_context.name} codec)",
                )
            first = next(container.decode(stream), None)
            if first is None:
                raise BadInput("failed", "the video stream has no decodable frames (corrupt or truncated)")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1e6
            else:
                duration = stream.frames / fps if fps and stream.frames else 0.0
            return VideoInfo(
                container=container.format.name,
                codec=stream.codec_context.name,
                width=first.width,
                height=first.height,
                fps=fps,
                duration=duration,
                rotation=_normalise_rotation(first.rotation or 0),
                num_frames=int(stream.frames or 0),
            )
    except BadInput:
        raise
    except (av.error.FFmpegError, OSError, ValueError, StopIteration) as e:
        raise BadInput("failed", _explain(e), retry=is_io_fault(e)) from e


class FrameReader:
    """Iterate over a video's frames resized to ``width x height`` (stored orientation, before
    rotation), one at a time, so memory does not grow with the video's length.

    Yields ``(frame uint8 [height, width, 3] RGB, time in seconds from the first frame)``. Raises
    ``BadInput`` when the file cannot be opened or no frame decodes. When decoding stops early on a
    corrupt packet, the frames before it are kept and ``note`` says so; ``count`` is the number of
    frames yielded.
    """

    def __init__(self, src: Source, width: int, height: int, interpolation: str = "AREA") -> None:
        self.src, self.width, self.height, self.interpolation = src, width, height, interpolation
        self.note: str | None = None
        self.count = 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        try:
            with _open(self.src) as container:
                stream = container.streams.video[0]
                # One thread: a Ray task holds one CPU; parallelism comes from tasks running side by side.
                stream.codec_context.thread_count = 1
                # One reformatter for all frames keeps its scaler between frames; frame.to_ndarray(width=)
                # makes a new one per frame, which doubled the decode time.
                reformatter = VideoReformatter()
                rate = stream.average_rate or stream.guessed_rate
                step = 1.0 / float(rate) if rate else 1.0 / 30
                t0 = last = None
                try:
                    for frame in container.decode(stream):
                        t = (
                            float(frame.time)
                            if frame.time is not None
                            else (last + step if last is not None else 0.0)
                        )
                        t0 = t if t0 is None else t0
                        last = t
                        rgb = reformatter.reformat(
                            frame, self.width, self.height, "rgb24", interpolation=self.interpolation
                        )
                        self.count += 1
                        yield rgb.to_ndarray(), t - t0
                except av.error.FFmpegError as e:
                    if not self.count:
                        raise
                    self.note = f"decoding stopped after {self.count} frames ({_explain(e)}); kept those"
        except BadInput:
            raise
        except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
            raise BadInput("failed", _explain(e), retry=is_io_fault(e)) from e
        if not self.count:
            raise BadInput("failed", "the video stream has no decodable frames (corrupt or truncated)")


def decode_frames(
    src: Source, width: int, height: int, interpolation: str = "AREA"
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """All frames at once (``FrameReader`` collected): frames ``uint8 [T, height, width, 3]``, times
    ``float64 [T]`` in seconds from the first frame, and the reader's note."""
    reader = FrameReader(src, width, height, interpolation)
    frames, times = zip(*reader, strict=True)
    return np.stack(frames), np.asarray(times, np.float64), reader.note
