"""Multi-view consistency: FVD across views (FVD-V) and along time (FVD-F), and keypoint triangulation.

Grids are ``(B, V, T, 3, H, W)`` in [-1, 1] (the HVG sample layout).

* FVD-V: for every frame t, the V views form one "video" (the camera sweeps around the subject at a
  frozen instant); FVD between generated and reference sets of such sequences. Needs V >= the clip
  length of the FVD (16 by default; I3D needs at least 9 frames in the pytorch-i3d form).
* FVD-F: for every view v, the T frames form a video; the usual FVD restricted to fixed cameras.
* Keypoint consistency: 2-D joints seen in all views are triangulated with the known cameras
  (linear DLT, own implementation, cameras as in docs/contracts.md: ``X_cam = R X + t``, OpenCV
  pinhole ``u = fx x/z + cx``) and reprojected; the score is the mean reprojection error in pixels.
  Views that agree on one 3-D skeleton give ~0; inconsistent views cannot all be explained by one
  point and give a large error.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from dimo.eval.distribution import FVD


def grid_to_sequences(grid: Tensor, axis: Literal["view", "time"]) -> Tensor:
    """``(B, V, T, 3, H, W)`` -> sequences ``(B*T, V, 3, H, W)`` (``"view"``) or ``(B*V, T, 3, H, W)``."""

    if grid.ndim != 6:
        raise ValueError(f"expected a (B, V, T, 3, H, W) grid, got {tuple(grid.shape)}")
    b, v, t = grid.shape[:3]
    if axis == "view":
        return grid.transpose(1, 2).reshape(b * t, v, *grid.shape[3:])
    return grid.reshape(b * v, t, *grid.shape[3:])


class MultiViewFVD(FVD):
    """FVD-V (``axis="view"``) or FVD-F (``axis="time"``) on ``(B, V, T, 3, H, W)`` grids."""

    def __init__(self, axis: Literal["view", "time"] = "view", **kwargs: Any) -> None:
        if axis not in ("view", "time"):
            raise ValueError(f"axis must be 'view' or 'time', got {axis!r}")
        super().__init__(**kwargs)
        self.axis = axis

    @property
    def name(self) -> str:  # fvd_v_16f / fvd_f_16f
        return f"fvd_{'v' if self.axis == 'view' else 'f'}_{self.num_frames}f" + (
            f"_s{self.frame_stride}" if self.frame_stride > 1 else ""
        )

    @property
    def sample_unit(self) -> str:
        return "view sequences" if self.axis == "view" else "time sequences"

    def samples_per_grid(self, views: int, frames: int) -> int:
        """Feature vectors from one ``(V, T)`` grid: one per frame (FVD-V, needs V >= the clip length)
        or one per view (FVD-F, needs T >= the clip length); 0 when the sequences are too short."""

        length, count = (views, frames) if self.axis == "view" else (frames, views)
        return count * self.samples_per_video(length)

    def features(self, samples: Tensor) -> Tensor:
        return super().features(grid_to_sequences(samples, self.axis))


def triangulate_dlt(uv: Tensor, K: Tensor, R: Tensor, t: Tensor, weights: Tensor | None = None) -> Tensor:
    """Linear (DLT) triangulation of points seen in several calibrated views.

    Args:
        uv: ``(..., V, N, 2)`` pixel coordinates.
        K, R, t: ``(..., V, 3, 3)``, ``(..., V, 3, 3)``, ``(..., V, 3)`` intrinsics and world-to-camera.
        weights: ``(..., V, N)`` per-observation weights (0 drops a view for that point, e.g. an
            undetected joint); default all ones. Each point needs >= 2 views with weight > 0.
    Returns:
        ``(..., N, 3)`` world points (float64): the right singular vector of the stacked
        ``u P_3 - P_1``, ``v P_3 - P_2`` rows with the smallest singular value, dehomogenised.
    """

    uv, K, R, t = uv.double(), K.double(), R.double(), t.double()
    P = K @ torch.cat([R, t[..., None]], dim=-1)  # (..., V, 3, 4)
    P = P[..., None, :, :]  # (..., V, 1, 3, 4)
    u, v = uv[..., 0:1], uv[..., 1:2]  # (..., V, N, 1)
    rows_u = u * P[..., 2, :] - P[..., 0, :]  # (..., V, N, 4)
    rows_v = v * P[..., 2, :] - P[..., 1, :]
    if weights is not None:
        w = weights.double()[..., None]
        rows_u, rows_v = rows_u * w, rows_v * w
    A = torch.stack([rows_u, rows_v], dim=-2)  # (..., V, N, 2, 4)
    A = A.movedim(-4, -3).flatten(-3, -2)  # (..., N, 2V, 4)
    # Scale-normalise rows so the smallest singular vector is not dominated by pixel magnitudes.
    A = A / A.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    _, _, vh = torch.linalg.svd(A)
    X = vh[..., -1, :]  # (..., N, 4)
    return X[..., :3] / X[..., 3:4]


def reproject(points: Tensor, K: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """World points ``(..., N, 3)`` into every view: ``(..., V, N, 2)`` pixels (float64)."""

    cam = (
        points.double()[..., None, :, :] @ R.double().transpose(-1, -2) + t.double()[..., None, :]
    )  # (..., V, N, 3)
    pix = cam @ K.double().transpose(-1, -2)
    return pix[..., :2] / pix[..., 2:3]


def reprojection_error(uv: Tensor, K: Tensor, R: Tensor, t: Tensor, valid: Tensor | None = None) -> Tensor:
    """Triangulate ``uv (..., V, N, 2)`` and return the per-observation reprojection error ``(..., V, N)``
    in pixels (NaN where ``valid`` is False)."""

    X = triangulate_dlt(uv, K, R, t, None if valid is None else valid.double())
    err = (reproject(X, K, R, t) - uv.double()).norm(dim=-1)
    return err if valid is None else torch.where(valid, err, torch.full_like(err, float("nan")))


class KeypointConsistency(Metric):
    """Mean triangulation reprojection error (pixels) of 2-D joints over views.

    ``update(joints2d (B, V, T, J, 2), K (B, V, 3, 3), R (B, V, 3, 3), t (B, V, 3), valid (B, V, T, J) | None)``:
    joints detected on generated views (or known, on toy data) are triangulated per (sample, frame,
    joint) with the cameras of the grid. Points with fewer than 2 valid views are skipped.
    """

    full_state_update = False
    higher_is_better = False
    name = "kp_reproj_px"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, joints2d: Tensor, K: Tensor, R: Tensor, t: Tensor, valid: Tensor | None = None) -> None:
        if joints2d.ndim != 5 or joints2d.shape[-1] != 2:
            raise ValueError(f"expected joints2d (B, V, T, J, 2), got {tuple(joints2d.shape)}")
        b, v, tt, j, _ = joints2d.shape
        if valid is None:
            valid = torch.ones(b, v, tt, j, dtype=torch.bool, device=joints2d.device)
        uv = joints2d.transpose(1, 2)  # (B, T, V, J, 2)
        ok = valid.transpose(1, 2)  # (B, T, V, J)
        cams = [x[:, None].expand(b, tt, *x.shape[1:]) for x in (K, R, t)]  # (B, T, V, ...)
        enough = ok.sum(dim=2, keepdim=True) >= 2  # (B, T, 1, J)
        use = ok & enough
        err = reprojection_error(uv, *cams, valid=use)  # (B, T, V, J)
        err = err[use]
        self.total += err.sum()
        self.count += err.numel()

    def compute(self) -> Tensor:
        return self.total / self.count
