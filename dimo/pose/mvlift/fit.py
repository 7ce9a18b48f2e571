"""Stage 3 and the last step of lifting: triangulate views, fit the toy skeleton, reproject.

:func:`fit_skeleton` fits dimo's skeleton (the neutral rest joints of :mod:`dimo.geometry.skeleton`,
its forward kinematics) to triangulated 3D joints: per frame a global orientation, 21 body rotations
and a translation, and one scale per clip (the 2D input fixes the scene only up to scale), by Adam on a
confidence-weighted Geman-McClure 3D error, the same Gaussian pose prior and hinge limits as the
SMPLify-like baseline (:func:`dimo.pose.lifting.toy_pose_prior`, fitted to toy motions of another
seed: a mocap-style prior, no label of any clip here), and a small joint-velocity penalty. Each frame
starts from a similarity Procrustes fit of the rest torso (hips, shoulders) to the triangulated one.
The result is returned at the neutral skeleton's size (divided by the fitted scale about the input
camera's centre, which leaves the input view's projections unchanged): that sets the metric depth, as
the baselines' neutral-skeleton assumption does.

:func:`make_synthetic` is stage 3: triangulate the optimised 6-view sequences of stage 2, fit, and
project the fitted joints into 4 views 90 degrees apart on the same ring.
"""

from __future__ import annotations

import torch

from dimo.geometry.rotations import matrix_to_axis_angle
from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats, rest_joints
from dimo.pose.lifting import _hinge_penalty, toy_pose_prior
from dimo.pose.mvlift.geometry import J16, net_intrinsics, project_points, ring_cameras, triangulate

__all__ = ["RING4", "fit_skeleton", "make_synthetic", "triangulate_views"]

RING4: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
_TORSO = [J16.index(j) for j in (1, 2, 16, 17)]  # hips, shoulders (local J16 indices)


def triangulate_views(
    views: torch.Tensor, conf: torch.Tensor, R: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``views (B, V, T, J, 2)`` on the ring ``R (B, V, 3, 3)``, ``t (B, V, 3)`` -> ``(B, T, J, 3)``.

    View 0 (the input) is weighted by ``conf (B, T, J)``, the virtual views by 1.
    """

    B, V, T, J, _ = views.shape
    Kn = net_intrinsics(dtype=views.dtype).expand(B, V, 3, 3)
    w = torch.ones(B, V, T, J, dtype=views.dtype)
    w[:, 0] = conf.clamp(0, 1)
    x = views.permute(0, 2, 1, 3, 4)  # (B, T, V, J, 2)
    return triangulate(x, Kn[:, None], R[:, None], t[:, None], w.permute(0, 2, 1, 3))  # (B, T, J, 3)


def fit_skeleton(
    points: torch.Tensor,
    weights: torch.Tensor | None = None,
    iters: int = 150,
    lr: float = 0.05,
    sigma: float = 0.05,
    prior_weight: float = 2e-3,
    smooth_weight: float = 1.0,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Fit (module docstring) to ``points (B, T, 16, 3)`` (:data:`J16` order) with ``weights (B, T, 16)``.

    Returns ``joints (B, T, 55, 3)`` at neutral size, ``fitted (B, T, 55, 3)`` in the points' frame,
    ``scale (B,)``, ``global_orient (B, T, 3)``, ``body_pose (B, T, 21, 3)``, ``transl (B, T, 3)``.
    ``sigma`` (metres at neutral size) is the Geman-McClure scale.
    """

    from dimo.eval.pose import similarity_procrustes

    B, T, J, _ = points.shape
    pts = points.float()
    w = torch.ones(B, T, J) if weights is None else weights.float().clamp(0, 1)
    rest = rest_joints()
    rest16 = rest[list(J16)]
    # per-frame similarity fit of the rest torso: target ~ s Q rest + c
    s_f, Q, c = similarity_procrustes(rest16[_TORSO].expand(B, T, 4, 3), pts[:, :, _TORSO])
    scale0 = s_f.float().median(dim=1).values.clamp(0.05, 50.0)  # (B,)
    orient0 = matrix_to_axis_angle(Q.float())  # (B, T, 3)
    # FK rotates about the rest pelvis: s (Q (x - p) + p) + transl = s Q x + c  ->  transl = c + s Q p - s p
    p = rest[0]
    transl0 = c.float() + scale0[:, None, None] * ((Q.float() @ p) - p)
    mean, std = toy_pose_prior() if prior is None else prior
    orient = orient0.clone().requires_grad_(True)
    body = mean.expand(B, T, 21, 3).clone().requires_grad_(True)
    transl = transl0.clone().requires_grad_(True)
    log_s = scale0.log().clone().requires_grad_(True)
    opt = torch.optim.Adam([orient, body, transl, log_s], lr=lr)

    def posed() -> torch.Tensor:
        s = log_s.exp()[:, None, None, None]
        return (
            s * forward_kinematics(pose_to_rotmats(orient, body), rest) + transl[..., None, :]
        )  # (B, T, 55, 3)

    for _ in range(iters):
        j = posed()
        s = log_s.exp()[:, None, None]
        d2 = ((j[..., list(J16), :] - pts) / s[..., None]).pow(2).sum(-1)  # (B, T, J), neutral metres^2
        gm = sigma**2 * d2 / (d2 + sigma**2)
        data = (w * gm).sum((-1, -2)) / w.sum((-1, -2)).clamp_min(1e-6)  # (B,)
        nll = ((body - mean) / std).pow(2).sum((-1, -2)).mean(-1)  # (B,)
        hinge = _hinge_penalty(body).mean(-1)
        vel = ((j[:, 1:] - j[:, :-1]) / s[..., None]).pow(2).sum(-1).mean((-1, -2)) if T > 1 else 0.0
        loss = data + sigma**2 * (prior_weight * (nll + 10 * hinge) + smooth_weight * vel)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        fitted = posed()
        scale = log_s.exp()
        return {
            "joints": fitted / scale[:, None, None, None],
            "fitted": fitted,
            "scale": scale,
            "global_orient": orient.detach(),
            "body_pose": body.detach(),
            "transl": transl.detach(),
        }


def make_synthetic(
    views6: torch.Tensor,
    conf: torch.Tensor,
    R6: torch.Tensor,
    t6: torch.Tensor,
    fit_iters: int = 150,
    chunk: int = 64,
) -> dict[str, torch.Tensor]:
    """Stage 3: ``views6 (N, 6, T, J, 2)`` on the 60-degree ring -> ``views2d (N, 4, T, J, 2)`` on the
    90-degree ring of the same input (:data:`RING4`), with its cameras ``R (N, 4, 3, 3)``, ``t (N, 4, 3)``
    and the fit's mean 3D residual ``residual (N,)`` (fitted units, after scaling to neutral size).

    The ring centre is the same as stage 2's (both rings are built from the input view by
    :func:`ring_cameras`), so the 4 new views are the fitted skeleton seen from 0/90/180/270 degrees.
    """

    out_v, out_R, out_t, res = [], [], [], []
    for s in range(0, views6.shape[0], chunk):
        v6, c = views6[s : s + chunk], conf[s : s + chunk]
        pts = triangulate_views(v6, c, R6[s : s + chunk], t6[s : s + chunk])
        fit = fit_skeleton(pts, None, iters=fit_iters)
        R4, t4, _ = ring_cameras(v6[:, 0], c, RING4)
        j16 = fit["fitted"][..., list(J16), :]  # (B, T, J, 3) in the ring's frame
        Kn = net_intrinsics(dtype=j16.dtype)
        proj = project_points(j16[:, None].flatten(2, 3), Kn, R4, t4)  # (B, 4, T*J, 2)
        out_v.append(proj.view(*proj.shape[:2], *j16.shape[1:3], 2))
        out_R.append(R4)
        out_t.append(t4)
        res.append((j16 - pts).norm(dim=-1).mean((-1, -2)) / fit["scale"])
    return {
        "views2d": torch.cat(out_v),
        "R": torch.cat(out_R),
        "t": torch.cat(out_t),
        "residual": torch.cat(res),
    }
