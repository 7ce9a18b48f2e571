"""HVG pose conditioning: dual bone maps (or the skeleton-map ablation) rendered on the fly.

Bone maps are rendered on the device of the joints by the geometry package's analytic ellipsoid
ray caster (:func:`dimo.geometry.renderer.render_bones`) from world joints and the (view-aligned)
cameras of an HVG batch, for every view x frame. Normalisation to the network's [-1, 1] range:

* ``normal``: camera-space unit normals as they are (background 0);
* ``depth``: per image, foreground depth mapped to [-0.8, 1] with the nearest point at 1 and the
  farthest at -0.8, background -1 (relative depth: the absolute distance is not the model's concern);
* ``skeleton``: :func:`~dimo.geometry.renderer.render_skeleton_map` colours, ``2 * rgb - 1``.
"""

from __future__ import annotations

import torch

from dimo.geometry.renderer import render_bones, render_skeleton_map
from dimo.models.hvg.config import PoseCondition


def normalise_depth(depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Depth (N, H, W) + mask -> (N, 1, H, W) in [-1, 1], near = 1, background = -1."""

    big = torch.finfo(depth.dtype).max
    dmin = torch.where(mask, depth, depth.new_full((), big)).flatten(1).amin(1)[:, None, None]
    dmax = torch.where(mask, depth, depth.new_full((), -big)).flatten(1).amax(1)[:, None, None]
    rel = (depth - dmin) / (dmax - dmin).clamp_min(1e-6)  # 0 near .. 1 far
    return torch.where(mask, 1.0 - 1.8 * rel, depth.new_full((), -1.0))[:, None]


@torch.no_grad()
def render_pose_maps(
    joints3d: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    height: int,
    width: int,
    condition: PoseCondition = "dual",
) -> dict[str, torch.Tensor]:
    """Pose maps for a V x T grid.

    Args:
        joints3d: world joints (B, T, J, 3); K, R: (B, V, 3, 3); t: (B, V, 3).
    Returns:
        name -> (B, V, T, C, H, W): ``normal`` (3) and ``depth`` (1) for ``dual``, one of them for
        ``normal`` / ``depth``, ``skeleton`` (3) for ``skeleton``.
    """

    b, nt, j, _ = joints3d.shape
    v = K.shape[1]
    joints = joints3d[:, None].expand(b, v, nt, j, 3).reshape(b * v * nt, j, 3)

    def per_frame(x: torch.Tensor) -> torch.Tensor:  # (B, V, ...) -> (B*V*T, ...)
        return x[:, :, None].expand(b, v, nt, *x.shape[2:]).reshape(b * v * nt, *x.shape[2:])

    Kf, Rf, tf = per_frame(K.float()), per_frame(R.float()), per_frame(t.float())
    joints = joints.float()
    out: dict[str, torch.Tensor] = {}
    if condition == "skeleton":
        rgb = render_skeleton_map(joints, Kf, Rf, tf, height, width)  # (N, 3, H, W) in [0, 1]
        out["skeleton"] = rgb * 2.0 - 1.0
    else:
        r = render_bones(joints, Kf, Rf, tf, height, width)
        if condition in ("dual", "normal"):
            out["normal"] = r.normal
        if condition in ("dual", "depth"):
            out["depth"] = normalise_depth(r.depth, r.mask)
    return {k: m.reshape(b, v, nt, *m.shape[1:]) for k, m in out.items()}
