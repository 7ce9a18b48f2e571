"""Pictures a researcher reads at a glance: labelled sample grids and videos, logged through the logger.

* :func:`labelled_grid` lays out rows of frames (driving | generated | target, views, bone maps ...)
  with a text label at the left of every row and one above every column, as one (3, H, W) image.
* :func:`labelled_video` does the same per time step: (T, 3, H, W) frames of a labelled grid.
* :func:`log_image` / :func:`log_video` send them through the Lightning logger's own API: loggers that
  have ``log_image`` / ``log_video`` (W&B, ...) get them directly; TensorBoard gets ``add_image`` and,
  for videos, an animated GIF image summary (what ``SummaryWriter.add_video`` writes, except that
  torch's version needs ``moviepy``, which is not a dependency here; PIL encodes the GIF instead).

Images are float tensors in [0, 1]; :func:`to_unit` maps the model's [-1, 1] range.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "to_unit",
    "labelled_grid",
    "labelled_video",
    "log_image",
    "log_video",
    "depth_range",
    "depth_to_image",
]

_BG = 1.0  # white margins
_LABEL_W = 72
_HEADER_H = 12


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], float, clamped, on the CPU."""

    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).clamp(0, 1)


def depth_range(depth: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Near/far of the visible (``mask``) depths; ``(0, 1)`` when nothing is visible. Pass one range to
    :func:`depth_to_image` for several images so their brightness is comparable."""

    if not mask.any():
        return (0.0, 1.0)
    d = depth[mask.bool()]
    return (float(d.min()), float(d.max()))


def depth_to_image(
    depth: torch.Tensor, mask: torch.Tensor, near_far: tuple[float, float] | None = None
) -> torch.Tensor:
    """Depth (..., H, W) -> grey image (..., 3, H, W) in [0, 1]: the nearest visible depth 1, the
    farthest 0.2, background (``~mask``) black. ``near_far`` defaults to :func:`depth_range` of all."""

    d, m = depth.detach().float().cpu(), mask.detach().cpu().bool()
    lo, hi = near_far if near_far is not None else depth_range(d, m)
    grey = (1.0 - 0.8 * (d - lo) / max(hi - lo, 1e-6)).clamp(0, 1) * m
    return grey[..., None, :, :].expand(*grey.shape[:-2], 3, *grey.shape[-2:]).clone()


def _text_strip(texts: Sequence[str], width: int, height: int, vertical: bool) -> np.ndarray:
    from PIL import Image, ImageDraw

    n = len(texts)
    if vertical:  # one label per row, left margin
        img = Image.new("RGB", (width, height * n), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        for i, t in enumerate(texts):
            draw.text((2, i * height + max(0, height // 2 - 5)), t[:12], fill=(0, 0, 0))
    else:  # one label per column, header
        img = Image.new("RGB", (width * n, height), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        for i, t in enumerate(texts):
            draw.text((i * width + 2, 0), t[: max(1, width // 6)], fill=(0, 0, 0))
    return np.asarray(img).astype(np.float32) / 255.0


def labelled_grid(
    rows: Sequence[tuple[str, torch.Tensor]], col_labels: Sequence[str] | None = None
) -> torch.Tensor:
    """Rows of images -> one labelled (3, H, W) image in [0, 1].

    ``rows``: (label, images (N, 3, h, w) in [0, 1]); every row has the same N, h, w. ``col_labels``:
    N column labels (e.g. ``t=0``, ``v1 t=2``), drawn above the columns.
    """

    if not rows:
        raise ValueError("labelled_grid needs at least one row")
    n, _, h, w = rows[0][1].shape
    for label, imgs in rows:
        if tuple(imgs.shape[:1]) + tuple(imgs.shape[2:]) != (n, h, w) or imgs.shape[1] != 3:
            raise ValueError(f"row {label!r} has shape {tuple(imgs.shape)}, expected ({n}, 3, {h}, {w})")
    body = torch.cat(
        [imgs.float().cpu().clamp(0, 1).permute(1, 2, 0, 3).flatten(2, 3) for _, imgs in rows], 1
    )
    # body (3, R*h, N*w); margins with text
    left = torch.from_numpy(_text_strip([label for label, _ in rows], _LABEL_W, h, vertical=True)).permute(
        2, 0, 1
    )
    grid = torch.cat([left, body], dim=2)
    if col_labels is not None:
        if len(col_labels) != n:
            raise ValueError(f"{len(col_labels)} column labels for {n} columns")
        head = torch.from_numpy(_text_strip(list(col_labels), w, _HEADER_H, vertical=False)).permute(2, 0, 1)
        corner = torch.full((3, _HEADER_H, _LABEL_W), _BG)
        grid = torch.cat([torch.cat([corner, head], dim=2), grid], dim=1)
    return grid


def labelled_video(
    rows: Sequence[tuple[str, torch.Tensor]], col_labels: Sequence[str] | None = None
) -> torch.Tensor:
    """Rows of videos (label, (T, C, 3, h, w) in [0, 1]: C side-by-side panels) -> (T, 3, H, W) frames."""

    t = rows[0][1].shape[0]
    return torch.stack([labelled_grid([(lab, v[i]) for lab, v in rows], col_labels) for i in range(t)])


def log_image(logger, tag: str, image: torch.Tensor, step: int) -> None:
    """One (3, H, W) image in [0, 1] through the logger's API (no-op without a logger)."""

    if logger is None:
        return
    if hasattr(logger, "log_image"):  # W&B, Neptune, ... (Lightning's logger API)
        logger.log_image(key=tag, images=[image.permute(1, 2, 0).numpy()], step=step)
        return
    experiment = getattr(logger, "experiment", None)
    if experiment is not None and hasattr(experiment, "add_image"):
        experiment.add_image(tag, image, step)


def _gif_summary(tag: str, frames: torch.Tensor, fps: int):
    """TensorBoard image summary holding an animated GIF of (T, 3, H, W) frames in [0, 1]."""

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    arr = (frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    images = [Image.fromarray(a) for a in arr]
    buf = io.BytesIO()
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
    )
    t, _, h, w = frames.shape
    image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=buf.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def log_video(logger, tag: str, frames: torch.Tensor, step: int, fps: int = 8) -> None:
    """(T, 3, H, W) frames in [0, 1] as a video through the logger's API (TensorBoard: animated GIF)."""

    if logger is None:
        return
    if hasattr(logger, "log_video"):  # W&B and others take (T, C, H, W) uint8
        logger.log_video(key=tag, videos=[(frames.numpy() * 255).astype(np.uint8)], step=step, fps=[fps])
        return
    experiment = getattr(logger, "experiment", None)
    writer = getattr(experiment, "_get_file_writer", None)
    if writer is not None:
        writer().add_summary(_gif_summary(tag, frames, fps), step)
