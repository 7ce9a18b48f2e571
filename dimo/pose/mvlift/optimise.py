"""Stage 2: multi-view optimisation of 2D sequences on a virtual 60-degree ring.

For each input sequence (view 0) the other ``V - 1`` views of a ring (:func:`ring_cameras`, 6 views 60
degrees apart by default) are free 2D sequences, initialised by sampling the line-conditioned model
given the epipolar lines of the input's joints, then optimised with

* **SDS** from the line-conditioned model (stage 1): noise a view at a random timestep, denoise it
  given the input's epipolar lines in that view, and pull the view toward the denoised sequence
  (with an x0-predicting model the SDS gradient is ``w(t) (x - x0_hat)``; here ``w = 1``); the
  timestep range shrinks linearly from ``t_max`` to ``t_min_end`` over the optimisation
  (coarse-to-fine, as in DreamFusion-style SDS);
* **epipolar consistency** over all ``V (V - 1) / 2`` view pairs (15 for 6 views): the symmetric
  point-to-epipolar-line distance of every joint, weighted by the input's confidence for pairs
  with view 0.

:func:`view_losses` is the objective (shared by the stage-2 LightningModule and inference);
:func:`optimise_views` is the plain loop used at inference (the stage-1 / stage-2 ablation rows).

Ablation arm "SDS in 3D" (the paper reports that it collapses): :func:`optimise_points` optimises the
3D joints themselves, projected into the ring's views, with the same SDS (:func:`sds_loss`) on every
projection and the input view's reprojection error, and no epipolar loss (:func:`points_losses`).
"""

from __future__ import annotations

from itertools import combinations

import torch

from dimo.pose.mvlift.diffusion import input_lines, make_scheduler, sample_line
from dimo.pose.mvlift.geometry import (
    epipolar_distance,
    fundamental,
    line_features,
    net_intrinsics,
    project_points,
)

__all__ = [
    "RING6",
    "init_views",
    "optimise_points",
    "optimise_views",
    "points_losses",
    "sds_loss",
    "view_losses",
]

RING6: tuple[float, ...] = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)


@torch.no_grad()
def init_views(
    net, x0: torch.Tensor, conf: torch.Tensor, R: torch.Tensor, t: torch.Tensor, steps: int = 20,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # fmt: skip
    """Views 1.. ``(B, V-1, T, J, 2)`` sampled by the line-conditioned model from the input's epipolar lines."""

    lines, valid = input_lines(x0, conf, R, t)  # (B, V-1, T, J, 3)
    B, V1 = lines.shape[:2]
    out = sample_line(net, lines.flatten(0, 1), valid.flatten(0, 1), steps, generator)
    return out.view(B, V1, *out.shape[1:])


def sds_loss(
    net,
    x0: torch.Tensor,
    conf: torch.Tensor,
    views: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    progress: float,
    generator: torch.Generator | None = None,
    t_min: float = 0.02,
    t_max: float = 0.6,
    t_max_end: float = 0.2,
) -> torch.Tensor:
    """SDS of the free views ``(B, V-1, T, J, 2)`` of inputs ``x0 (B, T, J, 2)`` (module docstring).

    Each view is noised at a random timestep and denoised by the line-conditioned model given the
    input's epipolar lines in that view (the conditioning, not a loss); the loss
    ``0.5 |x - x0_hat|^2`` (mean) has the gradient ``(x - x0_hat)``. ``progress`` in [0, 1] anneals the
    timestep range; ``t_*`` are fractions of the schedule.
    """

    lines, valid = input_lines(x0, conf, R, t)
    feats = line_features(lines).flatten(0, 1)  # (B * (V-1), T, J, 6)
    sched = make_scheduler()
    n = sched.config.num_train_timesteps
    hi = t_max + (t_max_end - t_max) * min(max(progress, 0.0), 1.0)
    lo_i, hi_i = int(t_min * n), max(int(hi * n), int(t_min * n) + 1)
    flat = views.flatten(0, 1)  # (B * (V-1), T, J, 2)
    ts = torch.randint(lo_i, hi_i, (flat.shape[0],), generator=generator).to(views.device)
    noise = torch.randn(flat.shape, generator=generator, dtype=flat.dtype).to(flat.device)
    with torch.no_grad():
        x_t = sched.add_noise(flat.detach(), noise, ts)
        target = net(x_t, ts, feats, valid.flatten(0, 1))
    return 0.5 * (flat - target).pow(2).sum(-1).mean()  # gradient (x - x0_hat) / (B V T J)


def view_losses(
    net,
    x0: torch.Tensor,
    conf: torch.Tensor,
    views: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    progress: float,
    generator: torch.Generator | None = None,
    t_min: float = 0.02,
    t_max: float = 0.6,
    t_max_end: float = 0.2,
) -> dict[str, torch.Tensor]:
    """``{"sds", "epipolar"}`` for the free views ``(B, V-1, T, J, 2)`` of inputs ``x0 (B, T, J, 2)``.

    ``sds`` is :func:`sds_loss`; the epipolar term is the mean symmetric distance (network units) over
    all view pairs and joints.
    """

    sds = sds_loss(net, x0, conf, views, R, t, progress, generator, t_min, t_max, t_max_end)
    allv = torch.cat([x0[:, None], views], 1)  # (B, V, T, J, 2)
    V = allv.shape[1]
    Kn = net_intrinsics(dtype=x0.dtype)
    pairs = list(combinations(range(V), 2))
    i_idx = torch.tensor([i for i, _ in pairs])
    j_idx = torch.tensor([j for _, j in pairs])
    F = fundamental(Kn, R[:, i_idx], t[:, i_idx], Kn, R[:, j_idx], t[:, j_idx])  # (B, P, 3, 3)
    d = epipolar_distance(allv[:, i_idx], allv[:, j_idx], F[:, :, None])  # (B, P, T, J)
    w = torch.where((i_idx == 0)[None, :, None, None], conf[:, None], torch.ones_like(conf[:, None]))
    w = w.expand_as(d)
    epi = (d * w).sum() / w.sum().clamp_min(1e-6)
    return {"sds": sds, "epipolar": epi}


def optimise_views(
    net,
    x0: torch.Tensor,
    conf: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    iters: int = 200,
    lr: float = 0.01,
    sds_weight: float = 1.0,
    epipolar_weight: float = 1.0,
    init: torch.Tensor | None = None,
    init_steps: int = 20,
    seed: int = 0,
) -> torch.Tensor:
    """Stage 2 for inputs ``x0 (B, T, J, 2)`` on the ring ``R, t``: all views ``(B, V, T, J, 2)`` (view 0 = input)."""

    g = torch.Generator().manual_seed(seed)
    views = init_views(net, x0, conf, R, t, init_steps, g) if init is None else init.clone()
    views.requires_grad_(True)
    opt = torch.optim.Adam([views], lr=lr)
    for it in range(iters):
        losses = view_losses(net, x0, conf, views, R, t, it / max(iters - 1, 1), g)
        loss = sds_weight * losses["sds"] + epipolar_weight * losses["epipolar"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.cat([x0[:, None], views.detach()], 1)


# ---- ablation: SDS in 3D, without the epipolar loss ------------------------------------------------


def points_losses(
    net,
    x0: torch.Tensor,
    conf: torch.Tensor,
    points: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    progress: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """``{"sds", "reprojection"}`` of 3D joints ``points (B, T, J, 3)`` (the ring's frame) for inputs
    ``x0 (B, T, J, 2)`` on the ring ``R (B, V, 3, 3)``, ``t (B, V, 3)``.

    The points are projected into every view of the ring; ``sds`` is :func:`sds_loss` of views 1..
    (the same line-conditioned model and timestep schedule as stage 2), ``reprojection`` the
    confidence-weighted ``0.5 |x - x0|^2`` of view 0 against the input (the 2D the method is given).
    There is no epipolar term: projections of one set of 3D points are consistent by construction.
    """

    B, T, J, _ = points.shape
    V = R.shape[1]
    Kn = net_intrinsics(dtype=points.dtype)
    proj = project_points(points[:, None].flatten(2, 3), Kn, R, t).view(B, V, T, J, 2)
    sds = sds_loss(net, x0, conf, proj[:, 1:], R, t, progress, generator)
    d2 = (proj[:, 0] - x0).pow(2).sum(-1)  # (B, T, J)
    reproj = 0.5 * (conf * d2).sum() / conf.sum().clamp_min(1e-6)
    return {"sds": sds, "reprojection": reproj}


def optimise_points(
    net,
    x0: torch.Tensor,
    conf: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    iters: int = 200,
    lr: float = 0.01,
    sds_weight: float = 1.0,
    reprojection_weight: float = 1.0,
    init: torch.Tensor | None = None,
    init_steps: int = 20,
    seed: int = 0,
    init_points: torch.Tensor | None = None,
) -> torch.Tensor:
    """The "SDS in 3D" ablation arm: 3D joints ``(B, T, J, 3)`` (the ring's frame) optimised directly.

    Start: ``init_points (B, T, J, 3)`` when given, else the triangulation of the input and its stage-1
    views (``init (B, V-1, T, J, 2)``, sampled when None), i.e. where stage 2 starts. Then Adam on :func:`points_losses` (SDS on the projections +
    the input view's reprojection), with stage 2's step count, learning rate and timestep schedule.
    No epipolar loss and no 3D label: the objective sees the 2D input, its confidence and the ring.
    """

    from dimo.pose.mvlift.fit import triangulate_views

    g = torch.Generator().manual_seed(seed)
    if init_points is not None:
        start = init_points
    else:
        views = init_views(net, x0, conf, R, t, init_steps, g) if init is None else init
        with torch.no_grad():
            start = triangulate_views(torch.cat([x0[:, None], views], 1), conf, R, t)  # (B, T, J, 3)
    points = start.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([points], lr=lr)
    for it in range(iters):
        losses = points_losses(net, x0, conf, points, R, t, it / max(iters - 1, 1), g)
        loss = sds_weight * losses["sds"] + reprojection_weight * losses["reprojection"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return points.detach()
