"""Multi-view consistency: DLT triangulation / reprojection in the dimo camera convention, and the
FVD-V / FVD-F sequence layouts."""

from __future__ import annotations

import math

import pytest
import torch

from dimo.eval.multiview import (
    KeypointConsistency,
    MultiViewFVD,
    grid_to_sequences,
    reproject,
    triangulate_dlt,
)


def _ring_cameras(
    v: int, radius: float = 3.0, size: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V cameras on a ring around the origin at pelvis height, looking at it (OpenCV axes, y down)."""

    Rs, ts = [], []
    for i in range(v):
        a = 2 * math.pi * i / v
        eye = torch.tensor([radius * math.sin(a), 1.0, radius * math.cos(a)], dtype=torch.float64)
        z = torch.nn.functional.normalize(torch.tensor([0.0, 0.9, 0.0], dtype=torch.float64) - eye, dim=0)
        x = torch.nn.functional.normalize(
            torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64), z), dim=0
        )
        y = torch.linalg.cross(z, x)
        R = torch.stack([x, y, z])  # rows: camera axes in world coordinates
        Rs.append(R)
        ts.append(-R @ eye)
    K = torch.tensor([[60.0, 0, size / 2], [0, 60.0, size / 2], [0, 0, 1]], dtype=torch.float64).expand(
        v, 3, 3
    )
    return K, torch.stack(Rs), torch.stack(ts)


def test_triangulation_recovers_points_and_matches_contract_projection(rng):
    K, R, t = _ring_cameras(4)
    points = torch.randn(2, 15, 3, generator=rng, dtype=torch.float64) * 0.3 + torch.tensor(
        [0.0, 0.9, 0.0], dtype=torch.float64
    )
    uv = reproject(points, K, R, t)  # (2, 4, 15, 2)
    # the projection follows docs/contracts.md: u = fx x / z + cx with X_cam = R X + t
    cam = points[0, 3] @ R[1].T + t[1]
    assert uv[0, 1, 3, 0].item() == pytest.approx(60 * cam[0].item() / cam[2].item() + 32, rel=1e-12)
    try:
        from dimo.geometry.cameras import project
    except ImportError:  # the geometry module is another part of dimo; the formula check above suffices
        project = None
    if project is not None:
        uv_contract, _ = project(points[0, None].expand(4, 15, 3), K, R, t)
        assert torch.allclose(uv_contract.double(), uv[0], atol=1e-5)
    X = triangulate_dlt(uv, K[None].expand(2, 4, 3, 3), R[None].expand(2, 4, 3, 3), t[None].expand(2, 4, 3))
    assert torch.allclose(X, points, atol=1e-8)
    # a dropped view (weight 0) with garbage coordinates does not change the result
    uv_bad = uv.clone()
    uv_bad[:, 2] = 1e3
    w = torch.ones(2, 4, 15, dtype=torch.float64)
    w[:, 2] = 0
    X2 = triangulate_dlt(
        uv_bad, K[None].expand(2, 4, 3, 3), R[None].expand(2, 4, 3, 3), t[None].expand(2, 4, 3), w
    )
    assert torch.allclose(X2, points, atol=1e-8)


def test_keypoint_consistency_zero_for_consistent_views_and_grows_with_noise(rng):
    K, R, t = _ring_cameras(3)
    joints3d = torch.randn(1, 5, 22, 3, generator=rng, dtype=torch.float64) * 0.3  # (B, T, J, 3)
    uv = torch.stack([reproject(joints3d[0, i], K, R, t) for i in range(5)], dim=1)[None]  # (1, V, T, J, 2)
    metric = KeypointConsistency()
    metric.update(uv, K[None], R[None], t[None])
    assert metric.compute().item() < 1e-6
    noisy = KeypointConsistency()
    noisy.update(
        uv + 2.0 * torch.randn(uv.shape, generator=rng, dtype=torch.float64), K[None], R[None], t[None]
    )
    assert 0.3 < noisy.compute().item() < 4.0
    # an inconsistent view (another pose) cannot be explained by one skeleton
    wrong = uv.clone()
    wrong[:, 0] = uv[:, 0].flip(-2)
    bad = KeypointConsistency()
    bad.update(wrong, K[None], R[None], t[None])
    assert bad.compute().item() > 2.0  # joints spread ~6 px in these views: a swapped pose is far off
    # invalid joints are skipped (points left with < 2 valid views are not scored)
    valid = torch.ones(1, 3, 5, 22, dtype=torch.bool)
    valid[:, 0] = False
    masked = KeypointConsistency()
    masked.update(wrong, K[None], R[None], t[None], valid)
    assert masked.compute().item() < 1e-6


def test_fvd_view_and_time_sequences(tmp_path, rng):
    grid = torch.rand(2, 3, 4, 3, 8, 8, generator=rng)  # (B, V, T, 3, H, W)
    by_view = grid_to_sequences(grid, "view")  # (B*T, V, ...)
    by_time = grid_to_sequences(grid, "time")  # (B*V, T, ...)
    assert by_view.shape == (8, 3, 3, 8, 8) and by_time.shape == (6, 4, 3, 8, 8)
    assert torch.equal(by_view[1 * 4 + 2, 1], grid[1, 1, 2])  # sample 1, frame 2, view 1
    assert torch.equal(by_time[1 * 3 + 2, 3], grid[1, 2, 3])  # sample 1, view 2, frame 3

    class MeanFeature(torch.nn.Module):
        def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (N, L, 3, H, W) -> (N, 2)
            return torch.stack([clips.mean(dim=(1, 2, 3, 4)), clips[:, 0].mean(dim=(1, 2, 3))], dim=1)

    fvd_v = MultiViewFVD("view", num_frames=3, extractor=MeanFeature(), feature_dim=2)
    fvd_f = MultiViewFVD("time", num_frames=4, extractor=MeanFeature(), feature_dim=2)
    assert fvd_v.name == "fvd_v_3f" and fvd_f.name == "fvd_f_4f"
    fvd_v.update(grid, grid)
    fvd_f.update(grid, grid)
    assert int(fvd_v.fake_n) == 8 and int(fvd_f.fake_n) == 6
    assert abs(fvd_v.compute().item()) < 1e-9
    shuffled = grid.clone()
    shuffled[:, :, :, :, :4] = 0  # a change: the distributions differ
    fvd_f.reset()
    fvd_f.update(shuffled, grid)
    assert fvd_f.compute().item() > 1e-4
