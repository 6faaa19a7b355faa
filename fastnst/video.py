"""Stylising videos: decode with PyAV, stylise in batches, re-encode at the source frame rate with the audio.

``python -m fastnst.apply -m starry clip.mp4 -o out.mp4`` lands here (``pip install av``).

* Frames are decoded and stylised in batches of ``batch_size``; a progress bar shows frames/s.
* The video is re-encoded with H.264 (``yuv420p``, or ``yuv444p`` for odd sizes) at the source's
  frame rate; audio packets are copied unchanged (no re-encoding).
* The file is written under a temporary name and renamed at the end: an interrupted run leaves no
  half video, and an existing file is only replaced with ``overwrite``.
* ``smoothing`` (0 = off, up to 0.95) reduces flicker, the frame-to-frame shimmer a per-frame
  network shows on static scenes: each output pixel is blended with the previous output pixel by
  ``smoothing * exp(-|input change| / 0.05)``, so static pixels are averaged over time while
  pixels that change in the input (motion, cuts) follow the new frame without ghosting.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from fastnst._io import first_line
from fastnst._progress import Progress
from fastnst.images import to_uint8

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
_MOTION_SCALE = 0.05  # input change (mean abs, 0..1) at which smoothing falls to 1/e


class VideoError(ValueError):
    """A video that cannot be read or written; the message names the file."""


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise VideoError('video needs PyAV: pip install av (or pip install "fastnst[video]")') from None
    return av


class TemporalSmoother:
    """Motion-gated exponential smoothing of consecutive output frames (see the module docstring)."""

    def __init__(self, smoothing: float) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing
        self.prev_in: torch.Tensor | None = None
        self.prev_out: torch.Tensor | None = None

    def __call__(self, frame_in: torch.Tensor, frame_out: torch.Tensor) -> torch.Tensor:
        if self.smoothing > 0 and self.prev_in is not None and self.prev_out is not None:
            change = (frame_in - self.prev_in).abs().mean(dim=0, keepdim=True)
            weight = self.smoothing * torch.exp(-change / _MOTION_SCALE)
            frame_out = torch.lerp(frame_out, self.prev_out, weight)
        self.prev_in, self.prev_out = frame_in, frame_out
        return frame_out


def flicker(frames: list[torch.Tensor]) -> float:
    """Mean absolute difference between consecutive frames (0..1): the flicker measure on static clips."""
    if len(frames) < 2:
        return 0.0
    return float(torch.stack([(b - a).abs().mean() for a, b in zip(frames, frames[1:])]).mean())


def stylize_video(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    runner: Any,
    batch_size: int = 4,
    smoothing: float = 0.0,
    overwrite: bool = False,
    progress: bool | None = None,
    keep_frames: bool = False,
) -> dict[str, Any]:
    """Stylise ``src`` into ``dst`` with ``runner`` (a :class:`fastnst.Stylizer`). Returns frame count, fps,
    and (with ``keep_frames``) the output frames as tensors, for measuring flicker."""
    av = _import_av()
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise VideoError(f"{dst}: exists; not overwriting it (pass --overwrite to replace it)")
    try:
        inp = av.open(str(src))
    except Exception as e:  # noqa: BLE001
        raise VideoError(f"{src}: not a readable video ({first_line(e)})") from None
    smoother = TemporalSmoother(smoothing)
    kept: list[torch.Tensor] = []
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=dst.suffix, dir=dst.parent if str(dst.parent) else ".")
    os.close(fd)
    count = 0
    try:
        with inp:
            if not inp.streams.video:
                raise VideoError(f"{src}: has no video stream")
            vin = inp.streams.video[0]
            ain = inp.streams.audio[0] if inp.streams.audio else None
            rate = vin.average_rate or vin.guessed_rate or Fraction(25)
            total = vin.frames or 0
            with av.open(tmp, "w") as out:
                vout = out.add_stream("libx264", rate=rate)
                vout.width, vout.height = vin.codec_context.width, vin.codec_context.height
                vout.pix_fmt = "yuv420p" if vout.width % 2 == 0 and vout.height % 2 == 0 else "yuv444p"
                vout.options = {"crf": "18", "preset": "medium"}
                aout = out.add_stream_from_template(ain) if ain is not None else None
                bar = Progress(total, desc="stylising video", unit="frame", enabled=progress)
                pending: list[torch.Tensor] = []

                def flush() -> None:
                    nonlocal count
                    if not pending:
                        return
                    batch = torch.stack(pending)
                    styled = runner(batch)
                    for frame_in, frame_out in zip(batch, styled):
                        frame_out = smoother(frame_in, frame_out)
                        if keep_frames:
                            kept.append(frame_out.clone())
                        arr = to_uint8(frame_out).permute(1, 2, 0).contiguous().numpy()
                        vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
                        vf.pts = count
                        vf.time_base = Fraction(1) / rate
                        for packet in vout.encode(vf):
                            out.mux(packet)
                        count += 1
                        bar.update()
                    pending.clear()

                streams = [s for s in (vin, ain) if s is not None]
                for packet in inp.demux(*streams):
                    if packet.stream.type == "audio":
                        if packet.dts is not None and aout is not None:
                            packet.stream = aout
                            out.mux(packet)
                        continue
                    for frame in packet.decode():
                        rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float().div_(255)
                        pending.append(rgb)
                        if len(pending) >= batch_size:
                            flush()
                flush()
                for packet in vout.encode():
                    out.mux(packet)
                bar.close()
        if count == 0:
            raise VideoError(f"{src}: no frames could be decoded")
        os.replace(tmp, dst)
    except VideoError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt streams, codec errors
        raise VideoError(f"{src}: video processing failed ({first_line(e)})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"frames": count, "fps": float(rate), "audio": ain is not None, "frames_out": kept}
