"""2D keypoint accuracy: PCK@alpha (bounding-box normalised) and mean pixel error."""

from __future__ import annotations

import torch

__all__ = ["keypoint_errors", "pck"]


def keypoint_errors(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel distances ``(N, J)`` between ``pred`` and ``target`` ``(N, J, 2)`` and each frame's person size ``(N,)``.

    The size is the longer side of the box around the frame's valid target keypoints (the usual
    normalisation of PCK for whole-body keypoints when no annotated box exists).
    """

    if pred.shape != target.shape or pred.shape[-1] != 2 or valid.shape != pred.shape[:-1]:
        raise ValueError(
            f"expected pred/target (N, J, 2) and valid (N, J), got {tuple(pred.shape)}, {tuple(target.shape)}, {tuple(valid.shape)}"
        )
    dist = (pred.double() - target.double()).norm(dim=-1)
    big = torch.finfo(torch.float64).max
    t = target.double()
    lo = torch.where(valid[..., None], t, torch.full_like(t, big)).amin(-2)
    hi = torch.where(valid[..., None], t, torch.full_like(t, -big)).amax(-2)
    size = (hi - lo).amax(-1).clamp_min(0)
    size = torch.where(valid.any(-1), size, torch.zeros_like(size))
    return dist, size


def pck(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, alpha: float = 0.05
) -> dict[str, float]:
    """``{"pck": fraction of valid joints within alpha * person size, "px": mean pixel error, "n": count}``."""

    dist, size = keypoint_errors(pred, target, valid)
    v = valid.bool()
    n = int(v.sum())
    if n == 0:
        raise ValueError("no valid keypoint to score")
    hit = (dist <= alpha * size[:, None]) & v
    return {"pck": float(hit.sum()) / n, "px": float(dist[v].mean()), "n": n}
