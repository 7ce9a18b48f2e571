"""Toy frames with exact 2D keypoints: every view of a toy dataset, with its 3D joints projected."""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["load_keypoint_frames"]


def load_keypoint_frames(root: str | os.PathLike, size: int | None = None) -> dict[str, torch.Tensor]:
    """All calibrated views of a dataset with ground-truth 3D joints, read by the real readers.

    Returns ``frames`` uint8 (N, H, W, 3), ``uv`` (N, 55, 2) exact projections of the motion's joints in
    pixels of the decoded frames, ``valid`` (N, 55) (in front of the camera and inside the frame),
    ``joints3d`` (N, 55, 3) world joints and ``clip`` (N,) clip index.
    """

    from dimo.data.manifest import load_manifest, load_motion
    from dimo.data.video import adjust_intrinsics, read_frames, resize_crop_plan
    from dimo.geometry.cameras import project

    records, problems = load_manifest(root)
    if problems:
        raise RuntimeError(f"{root}: dataset has problems, first: {problems[0]}")
    frames, uvs, valids, j3d, clip = [], [], [], [], []
    for ci, rec in enumerate(records):
        if rec.motion is None or rec.motion.joints3d == "missing":
            continue
        joints = torch.from_numpy(load_motion(rec)["joints"]).double()  # (T, 55, 3)
        T = rec.num_frames
        for view in rec.views:
            if not view.calibrated:
                continue
            h, w = (rec.height, rec.width) if size is None else (size, size)
            fr = read_frames(rec.path(view.video), list(range(T)), None if size is None else (size, size))
            K, R, t = view.cameras(T)
            if size is not None:
                K = adjust_intrinsics(
                    K, rec.height, rec.width, resize_crop_plan(rec.height, rec.width, h, w, "center")
                )
            uv, z = project(
                joints,
                torch.from_numpy(np.ascontiguousarray(K)),
                torch.from_numpy(np.ascontiguousarray(R)),
                torch.from_numpy(np.ascontiguousarray(t)),
            )
            inside = (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
            frames.append(torch.from_numpy(fr))
            uvs.append(uv.float())
            valids.append((z > 1e-6) & inside)
            j3d.append(joints.float())
            clip.append(torch.full((T,), ci))
    if not frames:
        raise RuntimeError(f"{root}: no calibrated view with 3D joints")
    return {
        "frames": torch.cat(frames),
        "uv": torch.cat(uvs),
        "valid": torch.cat(valids),
        "joints3d": torch.cat(j3d),
        "clip": torch.cat(clip),
    }
