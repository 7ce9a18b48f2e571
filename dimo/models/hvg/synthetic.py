"""In-memory HVG samples (``docs/contracts.md``) for unit tests and benchmarks.

The toy dataset (:mod:`dimo.data`) is the real data path; this module builds the same sample dict
directly from the geometry package, in milliseconds and without disk, so network/sampler tests and
benchmarks do not depend on building a dataset: a rest skeleton swinging its arms, V cameras on a
ring looking at the pelvis, and targets rendered as shaded coloured ellipsoids (so the target is a
function of the bone maps the network sees).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from dimo.geometry.cameras import intrinsics, look_at, project, relative_rotation
from dimo.geometry.renderer import DEFAULT_PART_COLORS, render_bones
from dimo.geometry.skeleton import rest_joints


def synthetic_hvg_sample(
    num_views: int = 3, num_frames: int = 2, height: int = 64, width: int = 64, seed: int = 0
) -> dict:
    """One HVG sample: target (V, T, 3, H, W) in [-1, 1], reference, cameras, joints3d (T, 55, 3) ..."""

    g = torch.Generator().manual_seed(seed)
    rest = rest_joints(scale=float(0.9 + 0.2 * torch.rand((), generator=g)))  # (55, 3)
    phase = float(torch.rand((), generator=g)) * 2 * math.pi
    joints = []
    for f in range(num_frames):
        j = rest.clone()
        swing = 0.15 * math.sin(phase + 0.8 * f)
        j[16:22:2, 1] += swing  # left arm chain moves up/down
        j[17:22:2, 1] -= swing
        j[:, 0] += 0.05 * math.sin(phase + 0.5 * f)
        joints.append(j)
    joints3d = torch.stack(joints)  # (T, 55, 3)
    pelvis = joints3d[0, 0]
    yaw0 = float(torch.rand((), generator=g)) * 2 * math.pi
    yaws = torch.tensor([yaw0 + 2 * math.pi * v / num_views for v in range(num_views)])
    eye = torch.stack([2.2 * yaws.sin(), torch.full_like(yaws, float(pelvis[1])), 2.2 * yaws.cos()], dim=-1)
    R, t = look_at(eye, pelvis.expand(num_views, 3))  # (V, 3, 3), (V, 3)
    K = intrinsics(width, height, fov_deg=50.0).expand(num_views, 3, 3).clone()
    n = num_views * num_frames
    jt = joints3d[None].expand(num_views, -1, -1, -1).reshape(n, 55, 3)

    def per_frame(x):
        return x[:, None].expand(num_views, num_frames, *x.shape[1:]).reshape(n, *x.shape[1:])

    r = render_bones(
        jt, per_frame(K), per_frame(R), per_frame(t), height, width, part_colors=DEFAULT_PART_COLORS
    )
    target = (r.rgb * 2 - 1).reshape(num_views, num_frames, 3, height, width)
    uv, _ = project(joints3d[None, :, :1].expand(num_views, -1, -1, -1), K[:, None], R[:, None], t[:, None])
    return {
        "target": target,
        "reference": target[0, 0].clone(),
        "K": K,
        "R": R,
        "t": t,
        "rel_rot": relative_rotation(R),
        "joints3d": joints3d,
        "pelvis2d": uv[..., 0, :],  # (V, T, 2)
        "source": "multiview",
        "task": "hvg",
        "clip_id": f"synthetic_{seed:04d}",
    }


class SyntheticHVGDataset(Dataset):
    """``length`` deterministic samples (index = seed)."""

    def __init__(
        self, length: int = 4, num_views: int = 3, num_frames: int = 2, height: int = 64, width: int = 64
    ):
        self.length, self.kwargs = (
            length,
            {"num_views": num_views, "num_frames": num_frames, "height": height},
        )
        self.kwargs["width"] = width
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if i not in self._cache:
            self._cache[i] = synthetic_hvg_sample(seed=i, **self.kwargs)
        return self._cache[i]
