"""A picture of a batch, for TensorBoard and for people: one image grid, values in [0, 1].

3DiMo batches: one row per item, ``driving frames | target frames | reference``.
HVG batches: per item, one row per view, ``target frames | bone depth | bone normal`` where the bone
maps are rendered from ``joints3d`` with the sample's aligned cameras by
:func:`dimo.geometry.renderer.render_bones` (depth: nearer is brighter; normal: ``(n + 1) / 2``),
so misaligned cameras or joints show up as bone maps that do not sit on the person.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["batch_grid", "bone_maps", "save_png"]

_PAD = 2


def _row(images: list[torch.Tensor]) -> torch.Tensor:
    """(3, H, W) images -> one (3, H, sum W + pads) row with white separators."""

    h = images[0].shape[-2]
    sep = torch.ones(3, h, _PAD)
    parts = []
    for img in images:
        parts += [img, sep]
    return torch.cat(parts[:-1], dim=-1)


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    sep = torch.ones(3, _PAD, width)
    parts = []
    for r in rows:
        parts += [r, sep]
    return torch.cat(parts[:-1], dim=-2)


def _img(x: torch.Tensor) -> torch.Tensor:
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)  # [-1, 1] -> [0, 1]


def bone_maps(joints: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, h: int, w: int):
    """Depth and normal previews (B, 3, H, W) in [0, 1] of joints (B, 55, 3) seen by B cameras."""

    from dimo.geometry.renderer import render_bones

    out = render_bones(joints.float(), K.float(), R.float(), t.float(), h, w)
    depth = out.depth  # (B, H, W), 0 = background
    vis = torch.zeros_like(depth)
    for b in range(depth.shape[0]):
        m = out.mask[b]
        if m.any():
            lo, hi = depth[b][m].min(), depth[b][m].max()
            vis[b][m] = 1.0 - 0.8 * (depth[b][m] - lo) / (hi - lo).clamp_min(1e-6)
    normal = ((out.normal + 1) / 2) * out.mask[:, None]
    return vis[:, None].expand(-1, 3, -1, -1), normal


def batch_grid(
    batch: dict[str, Any], max_items: int = 4, max_frames: int = 4, max_views: int = 4
) -> torch.Tensor:
    """A collated batch (3DiMo or HVG) -> (3, H', W') float image in [0, 1]."""

    rows = []
    n = min(max_items, batch["target"].shape[0])
    if "driving" in batch:  # 3DiMo: target (B, T, 3, H, W)
        for i in range(n):
            T = batch["target"].shape[1]
            idx = np.linspace(0, T - 1, min(T, max_frames)).round().astype(int).tolist()
            drive = [_img(batch["driving"][i, j]) for j in idx]
            target = [_img(batch["target"][i, j]) for j in idx]
            rows.append(_row([*drive, *target, _img(batch["reference"][i])]))
        return _stack(rows)
    # HVG: target (B, V, T, 3, H, W)
    for i in range(n):
        V, T, _, H, W = batch["target"].shape[1:]
        idx = np.linspace(0, T - 1, min(T, max_frames)).round().astype(int).tolist()
        for v in range(min(V, max_views)):
            joints = batch["joints3d"][i, idx].detach().cpu()  # (t, 55, 3)
            k = len(idx)
            K = batch["K"][i, v].detach().cpu().expand(k, 3, 3)
            R = batch["R"][i, v].detach().cpu().expand(k, 3, 3)
            tt = batch["t"][i, v].detach().cpu().expand(k, 3)
            depth, normal = bone_maps(joints, K, R, tt, H, W)
            frames = [_img(batch["target"][i, v, j]) for j in idx]
            rows.append(_row([*frames, *depth.unbind(0), *normal.unbind(0)]))
    return _stack(rows)


def save_png(image: torch.Tensor, path: str | Path, scale: int = 2) -> Path:
    """Write a (3, H, W) [0, 1] image as PNG (nearest-neighbour upscaled by ``scale``)."""

    from PIL import Image

    arr = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
