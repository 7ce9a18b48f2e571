"""Human-centric view alignment (HVG): put the projected pelvis at the same pixel in every view.

For each view the pelvis is projected, then a crop of ``crop_size`` (input pixels) is placed so the
pelvis falls at ``anchor`` (fractions of the output width/height; (0.5, 0.5) = centre) and resized
to ``out_size``. That crop-and-resize is an axis-aligned affine map of continuous image coordinates
(pixel (i, j) centred at (j + 0.5, i + 0.5), as in :mod:`dimo.geometry.cameras`):

    u' = sx * u + tx,   v' = sy * v + ty,   K' = [[sx, 0, tx], [0, sy, ty], [0, 0, 1]] @ K

so the aligned cameras are exact: projecting the pelvis with ``K'`` gives the anchor. The same
transform aligns the reference image (view 0, frame 0) for temporal alignment: call
:func:`pelvis_alignment` with that frame's pelvis. Images are warped with
:func:`kornia.geometry.transform.warp_affine` (bilinear; regions outside the source are padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from kornia.geometry.transform import warp_affine

from dimo.geometry.cameras import project

__all__ = ["ViewAlignment", "align_intrinsics", "anchor_affine", "apply_alignment", "pelvis_alignment"]


@dataclass
class ViewAlignment:
    """Per-view crop/shift that puts the pelvis at ``anchor`` of an ``out_size`` image."""

    affine: torch.Tensor  # (V, 2, 3) source -> aligned continuous pixel coordinates
    K: torch.Tensor  # (V, 3, 3) intrinsics of the aligned images
    pelvis2d: torch.Tensor  # (V, 2) projected pelvis in the aligned images (the anchor)
    out_size: tuple[int, int]  # (h, w)


def anchor_affine(
    points2d: torch.Tensor,
    crop_size: tuple[int, int],
    out_size: tuple[int, int],
    anchor: tuple[float, float] = (0.5, 0.5),
) -> torch.Tensor:
    """Affine (..., 2, 3) mapping each point (..., 2) to ``anchor * (w, h)`` of an ``out_size`` image.

    A ``crop_size`` (h, w) window of the source becomes the whole ``out_size`` (h, w) output.
    """

    (ch, cw), (oh, ow) = crop_size, out_size
    if min(ch, cw, oh, ow) <= 0:
        raise ValueError(f"crop_size and out_size must be positive, got {crop_size}, {out_size}")
    sx, sy = ow / cw, oh / ch
    tx = anchor[0] * ow - sx * points2d[..., 0]
    ty = anchor[1] * oh - sy * points2d[..., 1]
    zero = torch.zeros_like(tx)
    row0 = torch.stack([zero + sx, zero, tx], -1)
    row1 = torch.stack([zero, zero + sy, ty], -1)
    return torch.stack([row0, row1], -2)  # (..., 2, 3)


def align_intrinsics(K: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Intrinsics (..., 3, 3) of images transformed by ``affine`` (..., 2, 3): ``[A; 0 0 1] @ K``."""

    bottom = torch.zeros_like(affine[..., :1, :])
    bottom[..., 0, 2] = 1.0
    return torch.cat([affine, bottom], dim=-2).to(K) @ K


def pelvis_alignment(
    pelvis: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    image_size: tuple[int, int],
    *,
    crop_size: tuple[int, int] | None = None,
    out_size: tuple[int, int] | None = None,
    anchor: tuple[float, float] = (0.5, 0.5),
) -> ViewAlignment:
    """Align V views on the pelvis: pelvis (3,) or (V, 3) world; K, R (V, 3, 3); t (V, 3).

    ``image_size`` (H, W) of the source views; ``crop_size`` defaults to it (a pure shift);
    ``out_size`` defaults to ``crop_size``.
    """

    crop_size = tuple(image_size) if crop_size is None else tuple(crop_size)
    out_size = crop_size if out_size is None else tuple(out_size)
    V = K.shape[0]
    pel = pelvis.to(K).expand(V, 3)[:, None, :]  # (V, 1, 3)
    uv, z = project(pel, K, R, t)  # (V, 1, 2), (V, 1)
    if (z <= 0).any():
        bad = (z[:, 0] <= 0).nonzero().flatten().tolist()
        raise ValueError(f"the pelvis is behind the camera in views {bad}; cannot align")
    affine = anchor_affine(uv[:, 0], crop_size, out_size, anchor)  # (V, 2, 3)
    K_new = align_intrinsics(K, affine)
    target = torch.tensor([anchor[0] * out_size[1], anchor[1] * out_size[0]], dtype=K.dtype, device=K.device)
    return ViewAlignment(affine=affine, K=K_new, pelvis2d=target.expand(V, 2).clone(), out_size=out_size)


def apply_alignment(
    images: torch.Tensor,
    affine: torch.Tensor,
    out_size: tuple[int, int],
    *,
    mode: Literal["bilinear", "nearest"] = "bilinear",
    padding_mode: Literal["zeros", "border", "reflection", "fill"] = "zeros",
    fill_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warp images (V, C, H, W) or (V, T, C, H, W) with each view's affine (V, 2, 3) -> out_size."""

    if images.dim() not in (4, 5) or images.shape[0] != affine.shape[0]:
        raise ValueError(
            f"images must be (V, C, H, W) or (V, T, C, H, W) with V={affine.shape[0]}, got {tuple(images.shape)}"
        )
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])  # (V*T, C, H, W)
    aff = affine.to(images.dtype)
    if images.dim() == 5:
        aff = aff[:, None].expand(lead[0], lead[1], 2, 3).reshape(-1, 2, 3)
    # kornia works in pixel-index coordinates (pixel centre at integer i): shift by half a pixel
    # in and out: u_idx' = sx * u_idx + (tx + 0.5 * sx - 0.5).
    aff = aff.clone()
    aff[..., 2] = aff[..., 2] + 0.5 * aff[..., :2].sum(-1) - 0.5
    kwargs = {} if fill_value is None else {"fill_value": fill_value.to(images)}
    out = warp_affine(
        flat, aff, tuple(out_size), mode=mode, padding_mode=padding_mode, align_corners=True, **kwargs
    )
    return out.reshape(*lead, images.shape[-3], *out_size)
