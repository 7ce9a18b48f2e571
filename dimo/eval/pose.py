"""Pose metrics on torch tensors: MPJPE, PA-MPJPE, root trajectory error.

Inputs are joint positions ``(..., J, 3)`` in metres (the world unit of dimo, see docs/contracts.md);
leading axes are free (batch, frames, ...). Results are in millimetres (``unit_scale=1000``).

* MPJPE: mean Euclidean joint error after subtracting the root (one joint index, or the mean of several
  such as both hips) from both skeletons.
* PA-MPJPE: MPJPE after the similarity transform (scale, rotation, translation) that best aligns the
  prediction to the target in the least-squares sense (Umeyama 1991). Reflections are excluded
  (det R = +1). Per frame (the usual convention) or one transform for a whole sequence.
* Root trajectory error: mean distance between predicted and target root positions over frames, after
  removing the first-frame (or mean) offset.

All arithmetic is done in float64 and returned in the input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

Reduction = Literal["mean", "none"]
RootSpec = int | Sequence[int] | None


def _root(x: Tensor, root: RootSpec) -> Tensor:
    """Root position ``(..., 1, 3)`` of ``x (..., J, 3)``: one joint or the mean of several."""

    if root is None:
        return torch.zeros_like(x[..., :1, :])
    idx = [root] if isinstance(root, int) else list(root)
    return x[..., idx, :].mean(dim=-2, keepdim=True)


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.shape[-1] != 3 or pred.ndim < 2:
        raise ValueError(
            f"expected pred and target of equal shape (..., J, 3), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def _reduce(err: Tensor, mask: Tensor | None, reduction: Reduction) -> Tensor:
    """``err (..., J)`` -> per-sample mean over valid joints ``(...)`` or the mean over all valid joints.

    ``"mean"`` averages per joint (every valid joint weighs the same, however many its frame has); a
    sample with no valid joint is NaN under ``"none"`` and contributes nothing under ``"mean"``; no
    valid joint at all gives NaN (never a silent 0 mm).
    """

    m = torch.ones_like(err) if mask is None else mask.to(err.dtype).expand_as(err)
    if reduction == "mean":
        return (err * m).sum() / m.sum()
    return (err * m).sum(dim=-1) / m.sum(dim=-1)


def _mpjpe_errors(
    pred: Tensor,
    target: Tensor,
    root: RootSpec,
    joints: Sequence[int] | None,
    mask: Tensor | None,
    unit_scale: float,
) -> tuple[Tensor, Tensor | None]:
    """Per-joint root-aligned errors ``(..., J')`` (float64) and the matching mask."""

    _check(pred, target)
    p, t = pred.double(), target.double()
    p, t = p - _root(p, root), t - _root(t, root)
    err = (p - t).norm(dim=-1) * unit_scale  # (..., J)
    if joints is not None:
        err = err[..., list(joints)]
        mask = mask[..., list(joints)] if mask is not None else None
    return err, mask


def _pa_errors(
    pred: Tensor,
    target: Tensor,
    joints: Sequence[int] | None,
    mask: Tensor | None,
    per_frame: bool,
    unit_scale: float,
) -> tuple[Tensor, Tensor | None]:
    """Per-joint errors after similarity Procrustes ``(..., J')`` (float64) and the matching mask."""

    _check(pred, target)
    if joints is not None:
        pred, target = pred[..., list(joints), :], target[..., list(joints), :]
        mask = mask[..., list(joints)] if mask is not None else None
    if per_frame:
        aligned = procrustes_align(pred, target)
    else:
        if pred.ndim < 3:
            raise ValueError("per_frame=False needs a frames axis: (..., T, J, 3)")
        shape = pred.shape
        flat_p = pred.reshape(*shape[:-3], shape[-3] * shape[-2], 3)
        flat_t = target.reshape(*shape[:-3], shape[-3] * shape[-2], 3)
        aligned = procrustes_align(flat_p, flat_t).reshape(shape)
    return (aligned - target.double()).norm(dim=-1) * unit_scale, mask


def mpjpe(
    pred: Tensor,
    target: Tensor,
    root: RootSpec = 0,
    joints: Sequence[int] | None = None,
    mask: Tensor | None = None,
    unit_scale: float = 1000.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Mean per-joint position error (mm by default) after root alignment.

    Args:
        pred, target: ``(..., J, 3)`` joint positions in metres.
        root: root joint index, several indices (their mean is the root), or None for no alignment.
        joints: joint subset scored (after alignment, so the root may be outside the subset).
        mask: optional ``(..., J)`` bool validity of each target joint.
        unit_scale: multiply the error by this (1000: metres -> mm).
        reduction: ``"mean"`` (scalar) or ``"none"`` (``(...)``, mean over joints per sample).
    """

    err, mask = _mpjpe_errors(pred, target, root, joints, mask, unit_scale)
    return _reduce(err, mask, reduction).to(pred.dtype)


def similarity_procrustes(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity transform with ``target ~ s * source @ R^T + t`` (reflection-free).

    Args:
        source, target: ``(..., N, 3)`` point sets.
    Returns:
        scale ``(...)``, rotation ``(..., 3, 3)`` with det +1, translation ``(..., 3)`` (float64).
    """

    x, y = source.double(), target.double()
    mu_x, mu_y = x.mean(dim=-2, keepdim=True), y.mean(dim=-2, keepdim=True)
    xc, yc = x - mu_x, y - mu_y
    cov = yc.transpose(-1, -2) @ xc / x.shape[-2]  # (..., 3, 3)
    u, s, vh = torch.linalg.svd(cov)
    d = torch.ones_like(s)
    d[..., -1] = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    d[..., -1] = torch.where(d[..., -1] == 0, torch.ones_like(d[..., -1]), d[..., -1])
    rot = u @ torch.diag_embed(d) @ vh
    var_x = xc.pow(2).sum(dim=(-1, -2)) / x.shape[-2]
    scale = (s * d).sum(dim=-1) / var_x.clamp_min(torch.finfo(torch.float64).tiny)
    trans = mu_y.squeeze(-2) - scale[..., None] * (rot @ mu_x.squeeze(-2)[..., None]).squeeze(-1)
    return scale, rot, trans


def procrustes_align(source: Tensor, target: Tensor) -> Tensor:
    """``source (..., N, 3)`` mapped by its best similarity transform onto ``target`` (float64)."""

    scale, rot, trans = similarity_procrustes(source, target)
    return scale[..., None, None] * source.double() @ rot.transpose(-1, -2) + trans[..., None, :]


def pa_mpjpe(
    pred: Tensor,
    target: Tensor,
    joints: Sequence[int] | None = None,
    mask: Tensor | None = None,
    per_frame: bool = True,
    unit_scale: float = 1000.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """MPJPE after similarity Procrustes alignment of ``pred`` onto ``target`` (mm by default).

    Args:
        pred, target: ``(..., J, 3)``; with ``per_frame=False`` the frames axis is ``-3``, i.e.
            ``(..., T, J, 3)``, and one transform aligns the whole sequence.
        joints: joint subset used for both the alignment and the error.
        mask: optional ``(..., J)`` validity (only used in the error, pass ``joints`` to drop joints
            from the alignment).
        reduction: ``"mean"`` or ``"none"`` (``(...)`` per frame).
    """

    err, mask = _pa_errors(pred, target, joints, mask, per_frame, unit_scale)
    return _reduce(err, mask, reduction).to(pred.dtype)


def root_trajectory_error(
    pred: Tensor,
    target: Tensor,
    root: RootSpec = 0,
    align: Literal["first", "mean", "none"] = "first",
    unit_scale: float = 1000.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Mean root-position error over frames (mm by default).

    Args:
        pred, target: ``(..., T, J, 3)`` joints (the root is taken with ``root``), or ``(..., T, 3)``
            root positions with ``root=None``.
        align: remove the first-frame offset (``"first"``, default), the mean offset over frames
            (``"mean"``), or nothing.
        reduction: ``"mean"`` or ``"none"`` (``(...)`` per sequence).
    """

    if pred.shape != target.shape or pred.shape[-1] != 3 or pred.ndim < 2:
        raise ValueError(
            f"expected equal shapes (..., T, [J,] 3), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    p, t = pred.double(), target.double()
    if root is not None:
        if p.ndim < 3:
            raise ValueError(
                "with a root index, pred/target are joints (..., T, J, 3); pass root=None for (..., T, 3)"
            )
        p, t = _root(p, root).squeeze(-2), _root(t, root).squeeze(-2)  # (..., T, 3)
    offset = p - t  # (..., T, 3)
    if align == "first":
        offset = offset - offset[..., :1, :]
    elif align == "mean":
        offset = offset - offset.mean(dim=-2, keepdim=True)
    err = offset.norm(dim=-1) * unit_scale  # (..., T)
    per = err.mean(dim=-1)
    return (per.mean() if reduction == "mean" else per).to(pred.dtype)


class PoseMetrics(Metric):
    """MPJPE, PA-MPJPE and root trajectory error accumulated over batches (sum-reduced across ranks).

    ``update(pred (B, T, J, 3), target (B, T, J, 3), mask (B, T, J) | None)``; ``compute()`` returns
    ``{"mpjpe": mm, "pa_mpjpe": mm, "root_traj": mm}``. MPJPE and PA-MPJPE are means over valid joints
    (the same per-joint averaging as ``mpjpe(..., reduction="mean")`` on all the data at once, so a frame
    with fewer valid joints weighs less and a fully masked frame weighs nothing); the root trajectory
    error is a mean over sequences.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, root: RootSpec = 0, joints: Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.joints = list(joints) if joints is not None else None
        for name in ("mpjpe_sum", "pa_sum", "joints_valid", "traj_sum", "sequences"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if pred.ndim != 4:
            raise ValueError(f"expected (B, T, J, 3), got {tuple(pred.shape)}")
        err, m = _mpjpe_errors(pred, target, self.root, self.joints, mask, 1000.0)  # (B, T, J')
        pa, _ = _pa_errors(pred, target, self.joints, mask, True, 1000.0)  # (B, T, J')
        valid = torch.ones_like(err) if m is None else m.to(err.dtype).expand_as(err)
        tr = root_trajectory_error(pred, target, self.root, reduction="none").double()  # (B,)
        self.mpjpe_sum += (err * valid).sum()
        self.pa_sum += (pa * valid).sum()
        self.joints_valid += valid.sum()
        self.traj_sum += tr.sum()
        self.sequences += tr.numel()

    def compute(self) -> dict[str, Tensor]:
        return {
            "mpjpe": self.mpjpe_sum / self.joints_valid,
            "pa_mpjpe": self.pa_sum / self.joints_valid,
            "root_traj": self.traj_sum / self.sequences,
        }


class KeypointError(Metric):
    """Mean 2-D keypoint error in pixels over valid joints (sum-reduced across ranks).

    ``update(pred (..., J, 2), target (..., J, 2), valid (..., J) | None)``: e.g. joints a detector finds
    on generated frames against the joints the driving motion projects to (how well a sample follows
    its motion). NaN until a valid joint was seen.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        if pred.shape != target.shape or pred.shape[-1] != 2:
            raise ValueError(
                f"expected matching (..., J, 2) keypoints, got {tuple(pred.shape)} {tuple(target.shape)}"
            )
        err = (pred.double() - target.double()).norm(dim=-1)  # (..., J)
        if valid is not None:
            err = err[valid.expand_as(err)]
        self.total += err.sum()
        self.count += err.numel()

    def compute(self) -> Tensor:
        return self.total / self.count if self.count > 0 else self.total.new_tensor(float("nan"))
