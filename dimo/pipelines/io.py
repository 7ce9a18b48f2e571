"""Input/output helpers of the pipelines: reference images, driving videos, atomic writes, sidecars."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dimo.data.video import VideoError, probe, read_frames, resize_crop_plan, to_uint8, write_video
from dimo.pipelines.errors import GenerateError
from dimo.safe_io import atomic_dir, atomic_write_text

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm"}

__all__ = [
    "VIDEO_SUFFIXES",
    "load_image",
    "load_video",
    "to_uint8",
    "write_mp4",
    "write_json",
]


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read an RGB image -> float32 (3, H, W) in [-1, 1]; ``size=(H, W)`` scales to cover, centre-crops.

    A video file (``.mp4``, ``.mov``, ...) gives its first frame (handy for self-reconstruction).
    """

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"reference image not found: {path} (expected a PNG/JPEG file)")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        try:
            frame = read_frames(path, [0], size=size)[0]  # (H, W, 3) uint8
        except Exception as err:  # noqa: BLE001 - PyAV/FFmpeg errors of a broken file
            raise GenerateError(f"cannot read the first frame of reference video {path}: {err}") from err
        return torch.from_numpy(frame.copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None:
                plan = resize_crop_plan(img.height, img.width, size[0], size[1], "center")
                img = img.resize((plan.scaled_w, plan.scaled_h), Image.BICUBIC)
                img = img.crop((plan.left, plan.top, plan.left + plan.out_w, plan.top + plan.out_h))
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise GenerateError(f"cannot read reference image {path}: {err} (expected a PNG/JPEG file)") from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)


def load_video(
    path: str | os.PathLike,
    size: tuple[int, int],
    min_frames: int,
    max_frames: int | None = None,
    stride: int = 1,
) -> tuple[torch.Tensor, float]:
    """Decode a driving video -> float32 (T, 3, H, W) in [-1, 1] and the fps of what was read.

    Every ``stride``-th frame from the first (all of them, or the first ``max_frames`` of those) is read,
    resized to cover ``size`` and centre-cropped; the fps returned is the file's divided by ``stride``.
    Fewer than ``min_frames`` such frames is a :class:`GenerateError`.
    """

    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"driving video not found: {path} (expected an MP4/video file)")
    try:
        info = probe(path, count=True)
        indices = range(0, info.num_frames, stride)
        n = len(indices) if max_frames is None else min(len(indices), max_frames)
        if n < min_frames:
            every = "" if stride == 1 else f", {len(indices)} at stride {stride}"
            limit = "" if n == len(indices) else f" (limited to {n} by the frame limit)"
            raise GenerateError(
                f"driving video {path} has {info.num_frames} frames{every}{limit}; at least {min_frames} are needed"
            )
        frames = read_frames(path, indices[:n], size=size)  # (T, H, W, 3) uint8
    except GenerateError:
        raise
    except (VideoError, OSError, ValueError) as err:
        raise GenerateError(f"cannot read driving video {path}: {err} (expected an MP4/video file)") from err
    except Exception as err:  # PyAV raises its own FFmpeg errors for non-video files
        raise GenerateError(f"cannot read driving video {path}: {err} (expected an MP4/video file)") from err
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (T, 3, H, W)
    return video, float(info.fps) / stride


def write_mp4(path: str | os.PathLike, frames: torch.Tensor, fps: float) -> Path:
    """Write (T, 3, H, W) [-1, 1] frames as MP4 atomically (temp file + rename)."""

    return write_video(path, to_uint8(frames), fps=fps)


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON atomically."""

    return atomic_write_text(path, json.dumps(data, indent=2, default=str))


@contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out``; on success it replaces ``out``, on error it is removed.

    So a reader never sees a half-written export: ``out`` is either the old folder or the new one.
    """

    with atomic_dir(out, overwrite=True) as tmp:  # the old folder is removed only once the new one is in
        yield tmp
