"""MVLift inference: one single-view 2D sequence -> 3D joints in that camera's frame.

:func:`mvlift_lift` has the common lifting signature of :mod:`dimo.pose.lifting` (``uv (T, 55, 2)``
pixels in SMPL-X joint order, ``conf (T, 55)``, ``K (T, 3, 3)`` -> ``(T, 55, 3)`` metres, OpenCV camera
frame). It uses the 16 body joints with a 2D keypoint (:data:`~dimo.pose.mvlift.geometry.J16`).

Variants (``variant``):

* ``final`` (MVLift): the multi-view diffusion model (stage 4) produces the 90/180/270-degree views of
  the input in one DDIM sampling pass; the 4 views are triangulated and the toy skeleton is fitted.
* ``stage1``: the line-conditioned model alone: each 60-degree-ring view sampled from the input's
  epipolar lines, 6 views triangulated and fitted (the ablation's first row).
* ``stage2``: ``stage1`` followed by the stage-2 optimisation (SDS + epipolar consistency).
* ``stage2_noepi``: the same with SDS only (no epipolar consistency loss).
* ``sds3d``: the paper's "SDS in 3D" ablation arm: the 3D joints are optimised directly (starting from
  the triangulation of the stage-1 views), projected into the 6 ring views, with SDS from the
  line-conditioned model on each projection and the input view's reprojection error, no epipolar
  loss (:func:`~dimo.pose.mvlift.optimise.optimise_points`); its projections are the views.
* ``sds3d_flat``: the same from a flat start: every joint on its input ray at the ring centre's depth
  (the fixed-depth plane), so SDS alone must create the depth.

``fit=False`` returns the triangulated 16 joints before the skeleton fit (the other 39 joints at the
mid-hip), for diagnostics such as the depth spread of the raw optimisation.

Sequences longer than the networks' window (20 frames) are cut into half-overlapping windows whose
views are blended (triangular weights) before triangulation; shorter ones are padded with their last
frame.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch

from dimo.pose.mvlift.diffusion import sample_multiview
from dimo.pose.mvlift.fit import RING4, fit_skeleton, triangulate_views
from dimo.pose.mvlift.geometry import (
    COORD_SCALE,
    J16,
    net_intrinsics,
    pixels_to_net,
    project_points,
    ring_cameras,
)
from dimo.pose.mvlift.nets import LineDiffusionNet, MultiViewDiffusionNet, load_net
from dimo.pose.mvlift.optimise import RING6, init_views, optimise_points, optimise_views

__all__ = ["DEFAULT_DIR", "VARIANTS", "load_mvlift", "mvlift_lift"]

DEFAULT_DIR = Path("pretrained/toy-mvlift")
Variant = Literal["final", "stage1", "stage2", "stage2_noepi", "sds3d", "sds3d_flat"]
VARIANTS: tuple[str, ...] = Variant.__args__  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4)
def load_mvlift(folder: str) -> tuple[LineDiffusionNet, MultiViewDiffusionNet]:
    """The two networks of a folder written by ``make train-mvlift`` (cached per folder)."""

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no MVLift folder (build it with `make train-mvlift`)")
    return (
        load_net(root / "line_diffusion", LineDiffusionNet.kind),
        load_net(root / "multiview_diffusion", MultiViewDiffusionNet.kind),
    )


def _windows(T: int, W: int) -> list[int]:
    if T <= W:
        return [0]
    hop = W // 2
    starts = list(range(0, T - W + 1, hop))
    if starts[-1] != T - W:
        starts.append(T - W)
    return starts


def _blend(chunks: torch.Tensor, starts: list[int], T: int, W: int) -> torch.Tensor:
    """``chunks (n, V, W, J, 2)`` at ``starts`` -> ``(V, T, J, 2)`` with triangular weights."""

    n, V, _, J, _ = chunks.shape
    ramp = torch.minimum(torch.arange(1, W + 1), torch.arange(W, 0, -1)).to(chunks)  # (W,)
    out = chunks.new_zeros(V, max(T, W), J, 2)
    wsum = chunks.new_zeros(max(T, W))
    for c, s in zip(chunks, starts):
        out[:, s : s + W] += c * ramp[None, :, None, None]
        wsum[s : s + W] += ramp
    return (out / wsum[None, :, None, None])[:, :T]


@torch.no_grad()
def _views(
    x: torch.Tensor, c: torch.Tensor, variant: str, nets, steps: int, seed: int, stage2_iters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    line_net, mv_net = nets
    T = x.shape[0]
    W = (mv_net if variant == "final" else line_net).cfg.frames
    if T < W:  # pad with the last frame
        x = torch.cat([x, x[-1:].expand(W - T, -1, -1)])
        c = torch.cat([c, c[-1:].expand(W - T, -1)])
    starts = _windows(x.shape[0], W)
    xw = torch.stack([x[s : s + W] for s in starts])  # (n, W, J, 2)
    cw = torch.stack([c[s : s + W] for s in starts])
    g = torch.Generator().manual_seed(seed)
    angles = RING4 if variant == "final" else RING6
    R, t, c_ring = ring_cameras(x[None], c[None], angles)  # one ring for the whole clip
    Rn, tn = R.expand(len(starts), -1, -1, -1), t.expand(len(starts), -1, -1)
    if variant == "final":
        views = sample_multiview(mv_net, xw, cw, Rn, tn, steps, g)
    else:
        init = init_views(line_net, xw, cw, Rn, tn, steps, g)
        if variant == "stage1":
            views = torch.cat([xw[:, None], init], 1)
        elif variant in ("sds3d", "sds3d_flat"):
            flat = None
            if variant == "sds3d_flat":  # the joints' input rays at the ring centre's depth
                depth = c_ring[:, 2].expand(len(starts))[:, None, None, None]  # (n, 1, 1, 1)
                flat = torch.cat([xw / COORD_SCALE, torch.ones_like(xw[..., :1])], -1) * depth
            with torch.enable_grad():
                pts = optimise_points(
                    line_net, xw, cw, Rn, tn, iters=stage2_iters, init=init, seed=seed, init_points=flat
                )
            n, _, J, _ = pts.shape
            proj = project_points(pts[:, None].flatten(2, 3), net_intrinsics(dtype=pts.dtype), Rn, tn)
            views = proj.view(n, Rn.shape[1], W, J, 2)  # every view (also view 0) is a projection
        else:
            with torch.enable_grad():
                views = optimise_views(
                    line_net, xw, cw, Rn, tn, iters=stage2_iters, init=init, seed=seed,
                    epipolar_weight=0.0 if variant == "stage2_noepi" else 1.0,
                )  # fmt: skip
    return _blend(views, starts, T, W), R[0], t[0]


def mvlift_lift(
    uv: torch.Tensor,
    conf: torch.Tensor,
    K: torch.Tensor,
    model_dir: str | Path = DEFAULT_DIR,
    variant: Variant = "final",
    steps: int = 20,
    seed: int = 0,
    fit_iters: int = 150,
    stage2_iters: int = 200,
    fit: bool = True,
) -> torch.Tensor:
    """Lift (module docstring) -> camera-space joints ``(T, 55, 3)`` in metres."""

    if variant not in VARIANTS:
        raise ValueError(f"unknown MVLift variant {variant!r}; expected one of {VARIANTS}")
    if uv.ndim != 3 or uv.shape[1:] != (55, 2) or conf.shape != uv.shape[:2]:
        raise ValueError(
            f"expected uv (T, 55, 2) and conf (T, 55), got {tuple(uv.shape)} and {tuple(conf.shape)}"
        )
    T = uv.shape[0]
    K = K.expand(T, 3, 3) if K.shape == (3, 3) else K
    if K.shape != (T, 3, 3):
        raise ValueError(f"expected K (3, 3) or (T, 3, 3) with T = {T}, got {tuple(K.shape)}")
    c = conf[:, list(J16)].float().clamp(0, 1)
    if not (c > 0).any():
        raise ValueError("no valid 2D keypoint among the 16 body joints: nothing to lift")
    x = pixels_to_net(uv[:, list(J16)].double(), K.double()).float()
    x = torch.where(c[..., None] > 0, x, torch.zeros_like(x))
    nets = load_mvlift(str(Path(model_dir)))
    views, R, t = _views(x, c, variant, nets, steps, seed, stage2_iters)  # (V, T, J, 2)
    # sds3d: view 0 is the points' own projection, so triangulation gives the optimised points back
    w = torch.ones_like(c) if variant.startswith("sds3d") else c
    pts = triangulate_views(views[None], w[None], R[None], t[None])  # (1, T, J, 3)
    if not fit:
        out = pts[0, :, [J16.index(j) for j in (1, 2)]].mean(1, keepdim=True).expand(T, 55, 3).clone()
        out[:, list(J16)] = pts[0]
        return out
    return fit_skeleton(pts, iters=fit_iters)["joints"][0]
