"""Video IO with PyAV: probe, read a frame range with seeking, resize/crop, write H.264 MP4 atomically.

Frame ``i`` of a video is the frame whose presentation time is ``i / fps`` after the stream start.
:func:`read_frames` seeks to the keyframe at or before the first wanted frame and decodes forward
only as far as the last wanted frame, so reading a short window of a long video costs one GOP plus
the window, not the whole file.

Resizing goes through libswscale (``VideoFrame.reformat``) while decoding; cropping is a numpy slice.
:func:`resize_crop_plan` says how a ``(src_h, src_w)`` frame becomes ``(dst_h, dst_w)`` and
:func:`adjust_intrinsics` applies the same plan to a pinhole ``K`` so projections stay exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch

from dimo.safe_io import atomic_path

__all__ = [
    "CropMode",
    "ResizeCropPlan",
    "VideoError",
    "VideoInfo",
    "VideoFacts",
    "adjust_intrinsics",
    "decode_threads",
    "inspect_video",
    "probe",
    "read_frames",
    "resize_crop_plan",
    "transcode_upright",
    "to_uint8",
    "write_video",
]

CropMode = Literal["center", "resize"]


class VideoError(RuntimeError):
    """A video file is missing, unreadable, truncated or has unexpected content."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # from the container header when present, else counted by decoding
    fps: float
    height: int
    width: int
    codec: str


@dataclass(frozen=True)
class ResizeCropPlan:
    """Scale the source to ``(scaled_h, scaled_w)``, then keep rows ``top:top+out_h``, cols ``left:left+out_w``."""

    scaled_h: int
    scaled_w: int
    top: int
    left: int
    out_h: int
    out_w: int


def resize_crop_plan(
    src_h: int, src_w: int, dst_h: int, dst_w: int, mode: CropMode = "center"
) -> ResizeCropPlan:
    """``center``: scale so the frame covers ``(dst_h, dst_w)`` (aspect kept), then centre-crop.
    ``resize``: stretch to ``(dst_h, dst_w)`` (aspect not kept)."""

    if min(src_h, src_w, dst_h, dst_w) <= 0:
        raise ValueError(f"sizes must be positive, got src {src_h}x{src_w}, dst {dst_h}x{dst_w}")
    if mode == "resize":
        return ResizeCropPlan(dst_h, dst_w, 0, 0, dst_h, dst_w)
    if mode != "center":
        raise ValueError(f"crop mode must be 'center' or 'resize', got {mode!r}")
    scale = max(dst_h / src_h, dst_w / src_w)
    scaled_h = max(dst_h, round(src_h * scale))
    scaled_w = max(dst_w, round(src_w * scale))
    return ResizeCropPlan(scaled_h, scaled_w, (scaled_h - dst_h) // 2, (scaled_w - dst_w) // 2, dst_h, dst_w)


def adjust_intrinsics(K: np.ndarray, src_h: int, src_w: int, plan: ResizeCropPlan) -> np.ndarray:
    """Intrinsics (..., 3, 3) of the source frame -> intrinsics of the resized and cropped frame."""

    K = np.array(K, dtype=np.float64, copy=True)
    sx, sy = plan.scaled_w / src_w, plan.scaled_h / src_h
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    K[..., 0, 2] -= plan.left
    K[..., 1, 2] -= plan.top
    return K


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise VideoError(f"{path}: cannot open video ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError(f"stream has no frame rate: {stream}")
    return float(rate)


def _check_rotation(path, frame) -> None:
    """Display-rotated videos are refused: frames, keypoints and intrinsics refer to stored pixels."""

    rotation = getattr(frame, "rotation", 0) or 0
    if rotation:
        raise VideoError(
            f"{path}: video has a display rotation of {rotation:g} degrees; dimo reads the stored pixels "
            "(and calibrations refer to them): re-encode it upright (`python -m dimo.cli data import videos` does)"
        )


def probe(path: str | os.PathLike, count: bool = False) -> VideoInfo:
    """Header facts of a video; ``count=True`` decodes every frame to count them (catches truncation)
    and checks that every frame's timestamp maps to its own frame index (:func:`inspect_video`).

    Display-rotated videos raise :class:`VideoError` either way (the first frame is decoded)."""

    if count:
        facts = inspect_video(path)
        if facts.rotation:
            _check_rotation(path, facts)
        if facts.index_problem:
            raise VideoError(f"{path}: {facts.index_problem}")
        return VideoInfo(facts.num_frames, facts.fps, facts.height, facts.width, facts.codec)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        num = stream.frames
        try:
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: decoding the first frame failed ({err})") from err
        if first is not None:
            _check_rotation(path, first)
        if not num:
            return probe(path, count=True)
        return VideoInfo(int(num), fps, stream.height, stream.width, stream.codec_context.name)
    finally:
        container.close()


@dataclass(frozen=True)
class VideoFacts:
    """What decoding a whole video shows (:func:`inspect_video`)."""

    num_frames: int  # frames decoded
    fps: float  # the stream's average rate (what :func:`read_frames` indexes by)
    height: int  # stored size
    width: int
    codec: str
    rotation: float  # display rotation, degrees counter-clockwise (0: upright)
    index_problem: str | None  # why frame timestamps do not map to 0..N-1 at ``fps`` (variable frame rate)
    interval_spread: float  # max / min gap between consecutive timestamps (1.0: constant frame rate)


def inspect_video(path: str | os.PathLike) -> VideoFacts:
    """Decode every frame and check what :func:`read_frames` relies on: frame ``i`` at ``i / fps``.

    A variable-frame-rate file (a phone clip) whose timestamps round to duplicate or skipped frame
    indices at the average rate is reported in ``index_problem`` (training would miss frames).
    Raises :class:`VideoError` when the file cannot be opened or decoded.
    """

    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        tb = float(stream.time_base or Fraction(1, 1))
        start = stream.start_time or 0
        pts: list[int] = []
        rotation = 0.0
        try:
            for frame in container.decode(stream):
                if not pts:
                    rotation = float(getattr(frame, "rotation", 0) or 0)
                if frame.pts is None:
                    raise VideoError(f"{path}: frame {len(pts)} has no timestamp")
                pts.append(int(frame.pts))
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: decoding failed after {len(pts)} frames ({err})") from err
        problem = None
        spread = 1.0
        if pts:
            t = np.asarray(pts, dtype=np.float64)
            idx = np.round((t - start) * tb * fps).astype(np.int64)
            bad = np.nonzero(idx != np.arange(len(idx)))[0]
            if bad.size:
                i = int(bad[0])
                problem = (
                    f"variable frame rate: decoded frame {i} has timestamp {(t[i] - start) * tb:.4f} s, "
                    f"which is frame {int(idx[i])} at the average {fps:.3f} fps (frames would be "
                    "missing or repeated in training); re-import it with `dimo data import videos`, "
                    "which re-times every decoded frame"
                )
            gaps = np.diff(np.sort(t))
            if gaps.size and gaps.min() > 0:
                spread = float(gaps.max() / gaps.min())
        return VideoFacts(
            len(pts), fps, stream.height, stream.width, stream.codec_context.name, rotation, problem, spread
        )
    finally:
        container.close()


def transcode_upright(
    src: str | os.PathLike, dst: str | os.PathLike, fps: float | None = None, crf: int = 18
) -> VideoFacts:
    """Re-encode every decoded frame of ``src`` as a constant-frame-rate, upright H.264 MP4 at ``dst``.

    Frame ``i`` of the output is the ``i``-th decoded frame of the input (so per-frame estimator
    outputs stay aligned), at time ``i / fps`` (default: the input's average rate). A display
    rotation is applied to the pixels (counter-clockwise, as :attr:`av.VideoFrame.rotation` says) and
    dropped from the metadata; odd sizes lose their last row/column (yuv420p). Written atomically.
    Returns the facts of the written file.
    """

    facts = inspect_video(src)
    rotation = round(facts.rotation / 90.0) * 90 % 360
    if abs(facts.rotation - round(facts.rotation / 90.0) * 90) > 1e-3:
        raise VideoError(f"{src}: display rotation {facts.rotation:g} is not a multiple of 90 degrees")
    fps = fps or facts.fps

    def upright():
        container = _open(src)
        n = 0
        try:
            for frame in container.decode(container.streams.video[0]):
                img = frame.to_ndarray(format="rgb24")
                if rotation:
                    img = np.rot90(img, k=rotation // 90)
                n += 1
                yield np.ascontiguousarray(img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2])
        except av.error.FFmpegError as err:
            raise VideoError(f"{src}: decoding failed after {n} frames ({err})") from err
        finally:
            container.close()

    write_video(dst, upright(), fps, crf=crf)  # streamed: a long 4K clip never sits in memory
    return inspect_video(dst)


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, as FFmpeg counts them), else ``os.cpu_count()``."""

    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def decode_threads() -> tuple[str, int]:
    """FFmpeg threading for :func:`read_frames` in this process: ``(thread_type, thread_count)``.

    In the main process: ``("AUTO", 0)``, FFmpeg's own choice (frame and slice threads, its automatic
    count: cores + 1), what a plain PyAV loop gets with ``stream.thread_type = "AUTO"`` (the data
    benchmark's baseline uses exactly this). In a DataLoader worker the cores (those this process may
    run on) are shared among the workers: ``("AUTO", cores // workers)`` while that is 2 or more,
    else ``("SLICE", 1)``, one thread and no thread pool (PyAV's default, ``SLICE`` with the automatic
    count, starts cores + 1 slice threads at every open that a one-slice H.264 stream never uses:
    measured on 2 cores, 10% more CPU for the same reads).
    """

    from torch.utils.data import get_worker_info

    worker = get_worker_info()
    if worker is None:
        return "AUTO", 0
    threads = _usable_cores() // worker.num_workers
    return ("AUTO", threads) if threads > 1 else ("SLICE", 1)


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int],
    size: tuple[int, int] | None = None,
    mode: CropMode = "center",
) -> np.ndarray:
    """Decode the frames ``indices`` (sorted, distinct, >= 0) -> uint8 (N, H, W, 3) RGB.

    ``size=(height, width)`` resizes (and crops with ``mode="center"``) while decoding. Raises
    :class:`VideoError` when a wanted frame is not in the file (truncated or short video) or the
    stream cannot be decoded.
    """

    wanted = [int(i) for i in indices]
    if not wanted:
        raise ValueError("indices must not be empty")
    if any(b <= a for a, b in zip(wanted, wanted[1:])) or wanted[0] < 0:
        raise ValueError(f"indices must be sorted, distinct and >= 0, got {wanted[:8]}...")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        thread_type, thread_count = decode_threads()
        stream.thread_type = thread_type
        stream.codec_context.thread_count = thread_count
        fps = _stream_fps(stream)
        tb = stream.time_base or Fraction(1, 1)
        tb_s = float(tb)  # Fraction arithmetic per frame is measurably slow
        start = stream.start_time or 0
        plan = None
        if size is not None:
            plan = resize_crop_plan(stream.height, stream.width, size[0], size[1], mode)
        first_pts = start + int(Fraction(wanted[0]) / Fraction(fps).limit_denominator(1_000_000) / tb)
        if wanted[0] > 0:
            container.seek(first_pts, stream=stream, backward=True, any_frame=False)
        out: list[np.ndarray] = []
        pos, idx_checked = 0, False
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise VideoError(f"{path}: frame without timestamp")
                if not out and idx_checked is False:
                    _check_rotation(path, frame)
                    idx_checked = True
                idx = round((frame.pts - start) * tb_s * fps)
                if idx < wanted[pos]:
                    continue
                if idx > wanted[pos]:
                    raise VideoError(f"{path}: frame {wanted[pos]} missing (next decoded frame is {idx})")
                if plan is None:
                    img = frame.to_ndarray(format="rgb24")
                else:
                    img = frame.reformat(width=plan.scaled_w, height=plan.scaled_h, format="rgb24")
                    img = img.to_ndarray()[
                        plan.top : plan.top + plan.out_h, plan.left : plan.left + plan.out_w
                    ]
                out.append(img)
                pos += 1
                if pos == len(wanted):
                    break
        except av.error.FFmpegError as err:
            raise VideoError(
                f"{path}: decoding failed near frame {wanted[min(pos, len(wanted) - 1)]} ({err})"
            ) from err
        if pos != len(wanted):
            raise VideoError(
                f"{path}: got {pos} of {len(wanted)} wanted frames (frame {wanted[pos]} not found; "
                "truncated or too short video)"
            )
        return np.ascontiguousarray(np.stack(out))  # (N, H, W, 3) uint8
    finally:
        container.close()


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) float frames in [-1, 1] -> uint8 (T, H, W, 3), what :func:`write_video` takes."""

    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    crf: int = 18,
    preset: str = "veryfast",
    gop: int | None = None,
) -> Path:
    """Write uint8 (T, H, W, 3) RGB frames (an array, or an iterable of (H, W, 3) frames that is
    encoded as it is consumed) as H.264 (yuv420p) MP4, atomically (temp file in the same folder,
    fsync, rename; umask permissions): an interrupted write never replaces an existing file.

    Frame ``i`` gets pts ``i`` in time base ``1/fps`` so readers find it at ``i / fps``.
    """

    path = Path(path)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if frames.shape[0] == 0:
            raise ValueError("cannot write a video with no frames")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, suffix=".mp4") as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = None
        i = -1
        for i, img in enumerate(frames):
            if stream is None:
                if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
                    raise ValueError(f"frames must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
                h, w = img.shape[:2]
                if h % 2 or w % 2:
                    raise ValueError(f"H.264 yuv420p needs even height and width, got {h}x{w}")
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.time_base = 1 / rate
                stream.codec_context.gop_size = gop or max(1, round(fps))
                stream.options = {"crf": str(crf), "preset": preset, "bf": "0"}
            elif img.shape != (h, w, 3):
                raise ValueError(f"frame {i} is {img.shape}, the first was {(h, w, 3)}")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError("cannot write a video with no frames")
        container.mux(stream.encode())
    return path
