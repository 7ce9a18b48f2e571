"""A picture of a batch, for TensorBoard and for people: one image grid, values in [0, 1].

3DiMo batches: one row per item, ``driving frames | target frames | reference``.
HVG batches: per item, one row per view, ``target frames | bone depth | bone normal`` where the bone
maps are rendered from ``joints3d`` with the sample's aligned cameras by
:func:`dimo.geometry.renderer.render_bones` (depth: nearer is brighter; normal: ``(n + 1) / 2``),
so misaligned cameras or joints show up as bone maps that do not sit on the person.

Clip overlays (:func:`clip_overlay`, ``data preview ROOT --clip ID``): the stored frames of every
view with the labels drawn *over* them: bone normal maps blended in, 3D joints projected with the
view's camera (red) and the 2D keypoints file (green COCO-WholeBody skeleton).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["batch_grid", "bone_maps", "clip_overlay", "overlay_frame", "save_png"]

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
    from dimo.viz import depth_to_image

    out = render_bones(joints.float(), K.float(), R.float(), t.float(), h, w)
    depth = torch.stack([depth_to_image(d, m) for d, m in zip(out.depth, out.mask)])  # per view range
    normal = ((out.normal + 1) / 2) * out.mask[:, None]
    return depth, normal


def batch_grid(
    batch: dict[str, Any], max_items: int = 4, max_frames: int = 4, max_views: int = 4
) -> torch.Tensor:
    """A collated batch (3DiMo or HVG; pixels uint8 or float in [-1, 1]) -> (3, H', W') float image in [0, 1]."""

    from dimo.data.pixels import to_model_batch

    batch = to_model_batch(batch)  # the DataModule's loaders give uint8 pixels
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


KEYPOINT_COLOUR = (0, 255, 0)  # 2D keypoints (keypoints2d file): green
JOINT_COLOUR = (255, 0, 0)  # 3D joints projected with the view's camera: red


def overlay_frame(
    frame: np.ndarray,
    bone_normal: np.ndarray | None = None,
    bone_mask: np.ndarray | None = None,
    keypoints: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    joints2d: np.ndarray | None = None,
    min_score: float = 0.3,
    alpha: float = 0.5,
) -> np.ndarray:
    """One uint8 (H, W, 3) frame with its labels drawn over it, so misalignment shows by eye.

    ``bone_normal (3, H, W)`` in [0, 1] is blended where ``bone_mask (H, W)``; ``keypoints (K, 2)``
    with ``scores (K,)`` (COCO-WholeBody, :mod:`dimo.data.keypoints`) are drawn as a green skeleton;
    ``joints2d (J, 2)`` (projected 3D joints) as red dots.
    """

    from PIL import Image, ImageDraw

    from dimo.data.keypoints import SKELETON

    img = frame.astype(np.float32)
    if bone_normal is not None and bone_mask is not None:
        m = bone_mask[..., None]
        img = np.where(m, (1 - alpha) * img + alpha * 255.0 * np.moveaxis(bone_normal, 0, -1), img)
    pil = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    if keypoints is not None:
        ok = scores >= min_score if scores is not None else np.ones(len(keypoints), bool)
        for a, b in SKELETON:
            if ok[a] and ok[b]:
                draw.line([tuple(keypoints[a]), tuple(keypoints[b])], fill=KEYPOINT_COLOUR, width=1)
        for k in np.nonzero(ok)[0]:
            x, y = keypoints[k]
            draw.point((float(x), float(y)), fill=KEYPOINT_COLOUR)
    if joints2d is not None:
        for x, y in joints2d:
            if np.isfinite(x) and np.isfinite(y):
                draw.rectangle([x - 1, y - 1, x + 1, y + 1], fill=JOINT_COLOUR)
    return np.asarray(pil)


def clip_overlay(record, max_frames: int = 4, max_views: int = 4) -> torch.Tensor:
    """Frames of a clip (rows: views) with bone maps, projected joints and 2D keypoints drawn over
    them (:func:`overlay_frame`) -> (3, H', W') in [0, 1]. Raises the loaders' errors for bad files."""

    from dimo.data.keypoints import load_keypoints2d
    from dimo.data.manifest import load_motion
    from dimo.data.video import read_frames
    from dimo.geometry.cameras import project

    T = record.num_frames
    idx = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int)).tolist()
    motion = load_motion(record) if record.motion is not None else None
    joints = None
    if motion is not None and "joints" in motion:
        joints = torch.from_numpy(motion["joints"][idx]).float()  # (t, 55, 3)
    rows = []
    for v, view in enumerate(record.views[:max_views]):
        frames = read_frames(record.path(view.video), idx)  # (t, H, W, 3)
        H, W = frames.shape[1:3]
        kp = sc = None
        if view.keypoints2d is not None:
            kp, sc = load_keypoints2d(record.path(view.keypoints2d), T)
            kp, sc = kp[idx], sc[idx]
        normal = mask = uv = None
        if joints is not None and view.calibrated:
            K, R, t = (torch.from_numpy(np.ascontiguousarray(a[idx])).float() for a in view.cameras(T))
            out = bone_maps_raw(joints, K, R, t, H, W)
            normal, mask = out
            uv, z = project(joints, K, R, t)
            uv = torch.where((z > 0)[..., None], uv, torch.full_like(uv, float("nan"))).numpy()
        tiles = []
        for j in range(len(idx)):
            drawn = overlay_frame(
                frames[j],
                None if normal is None else normal[j],
                None if mask is None else mask[j],
                None if kp is None else kp[j],
                None if sc is None else sc[j],
                None if uv is None else uv[j],
            )
            tiles.append(torch.from_numpy(np.array(drawn)).permute(2, 0, 1).float() / 255.0)
        rows.append(_row(tiles))
    return _stack(rows)


def bone_maps_raw(joints, K, R, t, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space normals in [0, 1] (B, 3, H, W) and the bone mask (B, H, W) as numpy."""

    from dimo.geometry.renderer import render_bones

    out = render_bones(joints.float(), K.float(), R.float(), t.float(), h, w)
    return ((out.normal + 1) / 2).numpy(), out.mask.numpy()
