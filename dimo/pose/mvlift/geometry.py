"""MVLift geometry: normalised 2D coordinates, the virtual camera ring, epipolar lines, triangulation.

Conventions (OpenCV, as :mod:`dimo.geometry.cameras`): ``X_cam = R X + t``, x right, y down, z forward.

* **Network coordinates.** Every 2D sequence the MVLift networks see is in *normalised* image
  coordinates times a constant ``S`` (:data:`COORD_SCALE`): ``x = S * (K^-1 [u, v, 1])_xy``. Pixels of
  any image size and focal length map to one scale, and the virtual cameras all have the intrinsics
  ``K_net = diag(S, S, 1)`` (:func:`net_intrinsics`).
* **The virtual ring.** The world is the input camera's frame (view 0 = the input view). The ring's
  centre ``c`` is the back-projection of the clip's mean mid-hip at depth ``d`` (the depth at which the
  neutral skeleton's limbs have the clip's median 2D length, :func:`ring_depth`); view ``k`` is the
  input camera rotated by ``theta_k`` about the vertical axis (the input camera's y axis) through ``c``:
  ``R_k = Ry(theta_k)^T``, ``t_k = c - R_k c``. The 2D input fixes the scene only up to scale; the
  skeleton fit (:mod:`dimo.pose.mvlift.fit`) sets the metric scale afterwards.
* **Epipolar lines.** ``F_ij = K_j^-T [t_ij]_x R_ij K_i^-1`` (``R_ij = R_j R_i^T``,
  ``t_ij = t_j - R_ij t_i``) maps a point of view i to its line ``l = F_ij x~`` in view j. Lines are
  normalised to ``a^2 + b^2 = 1`` so ``|a x + b y + c|`` is the point-line distance.
* **Line features.** A line and its negative are the same line; the networks see the sign-free
  ``(a^2, b^2, c^2, ab, ac, bc)`` (the upper triangle of ``l l^T``).

Hand-written (small, closed-form, tested against independent formulas in ``tests/test_mvlift.py``):
kornia has a fundamental-matrix helper but no weighted multi-view DLT, and these few lines are clearer
than adapting its conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "COORD_SCALE",
    "J16",
    "epipolar_distance",
    "epipolar_lines",
    "fundamental",
    "line_features",
    "lines_from_epipole",
    "net_intrinsics",
    "normalise_lines",
    "pixels_to_net",
    "point_line_distance",
    "project_points",
    "ring_cameras",
    "ring_depth",
    "skew",
    "triangulate",
]

# the 16 SMPL-X body joints that have a 2D keypoint (dimo.pose.joints.TOY_BODY_SMPLX order):
# eyes, shoulders, elbows, wrists, hips, knees, ankles, feet
J16: tuple[int, ...] = (23, 24, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8, 10, 11)
COORD_SCALE = 3.0  # toy people span about +-0.35 normalised units at 2.2-2.5 m: about +-1 after scaling
_LOCAL = {j: i for i, j in enumerate(J16)}
# limb segments (local J16 indices) for the 2D-size depth heuristic: thighs, shins, upper arms, forearms,
# shoulder-to-hip sides (the same chain as dimo.pose.lifting's fixed-depth baseline)
LIMBS: tuple[tuple[int, int], ...] = tuple(
    (_LOCAL[a], _LOCAL[b])
    for a, b in ((1, 4), (4, 7), (2, 5), (5, 8), (16, 18), (18, 20), (17, 19), (19, 21), (16, 1), (17, 2))
)
HIPS: tuple[int, int] = (_LOCAL[1], _LOCAL[2])


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix ``[v]_x (..., 3, 3)`` of ``v (..., 3)``: ``[v]_x w = v x w``."""

    z = torch.zeros_like(v[..., 0])
    x, y, w = v.unbind(-1)
    return torch.stack(
        [torch.stack([z, -w, y], -1), torch.stack([w, z, -x], -1), torch.stack([-y, x, z], -1)], -2
    )


def net_intrinsics(scale: float = COORD_SCALE, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``diag(S, S, 1)``: the intrinsics of every virtual camera in network coordinates."""

    return torch.diag(torch.tensor([scale, scale, 1.0], dtype=dtype))


def pixels_to_net(uv: torch.Tensor, K: torch.Tensor, scale: float = COORD_SCALE) -> torch.Tensor:
    """Pixels ``uv (..., T, J, 2)`` with per-frame ``K (..., T, 3, 3)`` -> network coordinates."""

    ones = torch.ones_like(uv[..., :1])
    rays = torch.cat([uv, ones], -1) @ torch.linalg.inv(K).transpose(-1, -2)  # (..., T, J, 3)
    return scale * rays[..., :2] / rays[..., 2:3]


def project_points(X: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """World points ``X (..., N, 3)`` -> image points ``(..., N, 2)`` through ``K, R (..., 3, 3)``, ``t (..., 3)``."""

    cam = X @ R.transpose(-1, -2) + t[..., None, :]
    pix = cam @ K.transpose(-1, -2)
    return pix[..., :2] / pix[..., 2:3].clamp_min(1e-6)


def _chain_length(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    a = torch.tensor([p for p, _ in LIMBS])
    b = torch.tensor([q for _, q in LIMBS])
    seg = (x[..., a, :] - x[..., b, :]).norm(dim=-1)  # (..., L)
    ok = ((w[..., a] > 0) & (w[..., b] > 0)).to(x.dtype)
    return (seg * ok).sum(-1) / ok.sum(-1)


def ring_depth(x: torch.Tensor, conf: torch.Tensor, scale: float = COORD_SCALE) -> torch.Tensor:
    """Depth ``(...)`` of the ring centre for clips ``x (..., T, 16, 2)`` in network coordinates.

    The depth at which the neutral skeleton's mean limb length (:data:`LIMBS`) projects to the clip's
    median 2D limb length (focal ``S`` in network coordinates). Frames with no valid limb are ignored;
    a clip with none gets 2.4 (the toy camera distance). Clamped to [0.3, 30].
    """

    from dimo.geometry.skeleton import rest_joints

    rest = rest_joints()[list(J16)].to(x)  # (16, 3)
    len3d = _chain_length(rest, torch.ones(16))
    len2d = _chain_length(x, conf)  # (..., T)
    len2d = torch.where(torch.isfinite(len2d) & (len2d > 1e-6), len2d, torch.full_like(len2d, float("nan")))
    med = len2d.nanmedian(dim=-1).values
    d = scale * len3d / med
    return torch.where(torch.isfinite(d), d, torch.full_like(d, 2.4)).clamp(0.3, 30.0)


def _rot_y(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack(
        [torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2
    )


def ring_cameras(
    x: torch.Tensor, conf: torch.Tensor, angles_deg: Sequence[float], scale: float = COORD_SCALE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The virtual ring (module docstring) of clips ``x (B, T, 16, 2)``: ``R (B, V, 3, 3)``, ``t (B, V, 3)``
    and the centre ``c (B, 3)``; view 0 (angle 0) is the input camera (identity, zero)."""

    d = ring_depth(x, conf, scale)  # (B,)
    w = conf[..., list(HIPS)].clamp_min(0)  # (B, T, 2)
    hip = (x[..., list(HIPS), :] * w[..., None]).sum((-2, -3)) / w.sum((-1, -2)).clamp_min(1e-6)[..., None]
    c = torch.cat([hip / scale, torch.ones_like(hip[..., :1])], -1) * d[..., None]  # (B, 3)
    theta = torch.tensor([math.radians(a) for a in angles_deg], dtype=x.dtype)
    R = _rot_y(theta).transpose(-1, -2).expand(x.shape[0], -1, 3, 3)  # (B, V, 3, 3)
    t = c[:, None] - (R @ c[:, None, :, None])[..., 0]  # (B, V, 3)
    return R.contiguous(), t, c


def fundamental(
    Ki: torch.Tensor, Ri: torch.Tensor, ti: torch.Tensor, Kj: torch.Tensor, Rj: torch.Tensor, tj: torch.Tensor
) -> torch.Tensor:
    """``F (..., 3, 3)`` with ``l_j = F x~_i`` (module docstring); every argument broadcasts."""

    Rij = Rj @ Ri.transpose(-1, -2)
    tij = tj - (Rij @ ti[..., None])[..., 0]
    E = skew(tij) @ Rij
    return torch.linalg.inv(Kj).transpose(-1, -2) @ E @ torch.linalg.inv(Ki)


def normalise_lines(lines: torch.Tensor) -> torch.Tensor:
    """Scale lines ``(..., 3)`` to ``a^2 + b^2 = 1``."""

    return lines / lines[..., :2].norm(dim=-1, keepdim=True).clamp_min(1e-9)


def epipolar_lines(F: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Normalised lines ``(..., N, 3)`` in view j of points ``x (..., N, 2)`` of view i, ``F (..., 3, 3)``."""

    xh = torch.cat([x, torch.ones_like(x[..., :1])], -1)
    return normalise_lines(xh @ F.transpose(-1, -2))


def lines_from_epipole(x: torch.Tensor, epipole: torch.Tensor) -> torch.Tensor:
    """Normalised lines through each point ``x (..., N, 2)`` and the epipole ``(..., 2)`` (one per
    leading index of ``x``, broadcastable; stage 1's simulated epipolar lines): ``l = x~ cross e~``."""

    xh = torch.cat([x, torch.ones_like(x[..., :1])], -1)
    eh = torch.cat([epipole, torch.ones_like(epipole[..., :1])], -1)[..., None, :].expand_as(xh)
    return normalise_lines(torch.linalg.cross(xh, eh, dim=-1))


def line_features(lines: torch.Tensor) -> torch.Tensor:
    """Sign-free features ``(..., 6)`` of normalised lines ``(..., 3)``: ``(a^2, b^2, c^2, ab, ac, bc)``."""

    a, b, c = lines.unbind(-1)
    return torch.stack([a * a, b * b, c * c, a * b, a * c, b * c], -1)


def point_line_distance(x: torch.Tensor, lines: torch.Tensor) -> torch.Tensor:
    """``|a x + b y + c|`` ``(..., N)`` for points ``(..., N, 2)`` and normalised lines ``(..., N, 3)``."""

    return (lines[..., :2] * x).sum(-1).add(lines[..., 2]).abs()


def epipolar_distance(xi: torch.Tensor, xj: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """Symmetric point-to-epipolar-line distance ``(..., N)`` between matches ``xi``, ``xj (..., N, 2)``
    of views i and j, ``F = F_ij (..., 3, 3)``: ``d(xj, F xi) + d(xi, F^T xj)``."""

    return point_line_distance(xj, epipolar_lines(F, xi)) + point_line_distance(
        xi, epipolar_lines(F.transpose(-1, -2), xj)
    )


def triangulate(
    x: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted linear (DLT) triangulation: ``x (..., V, N, 2)`` seen by ``V`` cameras ``K, R (..., V, 3, 3)``,
    ``t (..., V, 3)`` -> points ``(..., N, 3)``.

    Each view adds the rows ``w (u P_3 - P_1)`` and ``w (v P_3 - P_2)`` (``P = K [R | t]``); the point is
    the least-squares solution of the inhomogeneous system (a tiny ridge keeps it finite where fewer
    than two views carry weight). ``weights (..., V, N)`` in [0, 1] (default 1).
    """

    P = K @ torch.cat([R, t[..., None]], -1)  # (..., V, 3, 4)
    P = P[..., None, :, :]  # (..., V, 1, 3, 4)
    rows = torch.stack(
        [x[..., 0:1] * P[..., 2, :] - P[..., 0, :], x[..., 1:2] * P[..., 2, :] - P[..., 1, :]], -2
    )
    # rows (..., V, N, 2, 4)
    if weights is not None:
        rows = rows * weights[..., None, None]
    rows = rows.movedim(-4, -3).flatten(-3, -2)  # (..., N, 2V, 4)
    A, b = rows[..., :3], -rows[..., 3]
    AtA = A.transpose(-1, -2) @ A + 1e-9 * torch.eye(3, dtype=A.dtype)
    return torch.linalg.solve(AtA, (A.transpose(-1, -2) @ b[..., None]))[..., 0]
