"""Pelvis-centred view alignment."""

from __future__ import annotations

import pytest
import torch

from dimo.geometry import alignment as al
from dimo.geometry import cameras as cam
from dimo.geometry import renderer as rd

PELVIS = torch.tensor([0.3, 0.9, -0.2])


def _ring(V: int = 5, size: int = 64):
    angles = torch.linspace(0, 300, V)
    eyes = torch.stack(
        [
            3 * torch.sin(torch.deg2rad(angles)),
            1.2 + 0.1 * torch.arange(V),
            3 * torch.cos(torch.deg2rad(angles)),
        ],
        -1,
    )
    R, t = cam.look_at(eyes, torch.tensor([0.0, 1.0, 0.0]))  # cameras look at the origin, not the pelvis
    K = cam.intrinsics(size, size, fov_deg=torch.linspace(35, 50, V))
    return K, R, t


def _centroid(weight: torch.Tensor) -> torch.Tensor:
    """Weighted centre (V, 2) in continuous (u, v) coordinates of images (V, H, W)."""
    H, W = weight.shape[-2:]
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    total = weight.sum((-1, -2))
    return torch.stack([(weight * u).sum((-1, -2)) / total, (weight * v).sum((-1, -2)) / total], -1)


def _pelvis_sphere(V: int) -> rd.Ellipsoids:
    return rd.Ellipsoids(
        PELVIS.expand(V, 1, 3),
        torch.eye(3).expand(V, 1, 3, 3),
        torch.full((V, 1, 3), 0.06),
        torch.tensor([0]),
    )


@pytest.mark.parametrize("anchor", [(0.5, 0.5), (0.5, 0.4)])
def test_aligned_pelvis_lands_on_the_same_pixel_in_every_view(anchor):
    V = 5
    K, R, t = _ring(V)
    a = al.pelvis_alignment(PELVIS, K, R, t, (64, 64), crop_size=(48, 48), out_size=(40, 40), anchor=anchor)
    target = torch.tensor([anchor[0] * 40, anchor[1] * 40])
    # the transformed intrinsics put the pelvis exactly on the anchor
    uv, _ = cam.project(PELVIS.expand(V, 1, 3), a.K, R, t)
    torch.testing.assert_close(uv[:, 0], target.expand(V, 2), atol=1e-3, rtol=0)
    torch.testing.assert_close(a.pelvis2d, target.expand(V, 2))
    # before alignment the pelvis is spread over the images
    uv0, _ = cam.project(PELVIS.expand(V, 1, 3), K, R, t)
    assert (uv0[:, 0] - uv0[:1, 0]).norm(dim=-1).max() > 5
    # warping the rendered images moves the pelvis blob onto the anchor (within one pixel) ...
    src = rd.render_ellipsoids(_pelvis_sphere(V), K, R, t, 64, 64)
    warped = al.apply_alignment(src.mask[:, None].float(), a.affine, a.out_size)  # (V, 1, 40, 40)
    assert warped.shape == (V, 1, 40, 40)
    c = _centroid(warped[:, 0])
    assert (c - target).abs().max() < 1.0
    # ... and agrees with rendering directly through the aligned cameras
    direct = rd.render_ellipsoids(_pelvis_sphere(V), a.K, R, t, 40, 40)
    assert (_centroid(direct.mask.float()) - target).abs().max() < 1.0
    # the crop-and-resize scales the blob area by (40/48)^2
    ratio = warped.sum((1, 2, 3)) / src.mask.sum((1, 2)).float()
    torch.testing.assert_close(ratio, torch.full((V,), (40 / 48) ** 2), atol=0.1, rtol=0)


def test_apply_alignment_frames_and_pure_shift():
    V, T = 2, 3
    img = torch.zeros(V, T, 1, 16, 16)
    img[:, :, 0, 4, 6] = 1.0  # pixel centre (6.5, 4.5)
    pts = torch.tensor([[6.5, 4.5], [6.5, 4.5]])
    # an integer shift moves the dot from pixel centre (6.5, 4.5) to (10.5, 12.5), i.e. row 12, column 10
    shift = al.anchor_affine(pts, (16, 16), (16, 16), anchor=(10.5 / 16, 12.5 / 16))
    moved = al.apply_alignment(img, shift, (16, 16), mode="nearest")
    assert moved.shape == (V, T, 1, 16, 16)
    assert (moved[:, :, 0, 12, 10] == 1.0).all() and moved.sum() == V * T


def test_alignment_errors():
    K, R, t = _ring(2)
    with pytest.raises(ValueError, match="behind the camera"):
        al.pelvis_alignment(torch.tensor([0.0, 1.0, 50.0]), K, R, t, (64, 64))
    with pytest.raises(ValueError, match="images must be"):
        al.apply_alignment(torch.zeros(3, 1, 8, 8), torch.zeros(2, 2, 3), (8, 8))
