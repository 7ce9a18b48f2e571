"""Sliding temporal windows of the 3DiMo pipeline: coverage, partition of unity, exact single window."""

from __future__ import annotations

import pytest
import torch

from dimo.pipelines.windows import fuse_windows, latent_windows, motion_frames, window_weights


@pytest.mark.parametrize(
    "n,window,overlap", [(1, 2, 1), (2, 2, 1), (7, 2, 1), (10, 4, 2), (9, 3, 0), (5, 9, 1)]
)
def test_weights_cover_every_frame_exactly_once(n: int, window: int, overlap: int) -> None:
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.int64)
    for (s, e), w in window_weights(n, window, overlap):
        assert 0 <= s < e <= n and w.shape == (e - s,)
        assert bool((w > 0).all())
        total[s:e] += w
        count[s:e] += 1
    assert bool((count >= 1).all())
    torch.testing.assert_close(total, torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)


def test_windows_overlap_and_end_at_the_last_frame() -> None:
    assert latent_windows(7, 3, 1) == [(0, 3), (2, 5), (4, 7)]
    assert latent_windows(6, 3, 1) == [(0, 3), (2, 5), (3, 6)]
    assert latent_windows(3, 8, 1) == [(0, 3)]


def test_motion_frames_follow_the_causal_vae_grouping() -> None:
    # latent frame f >= 1 holds pixel frames 4f-3..4f; the reference slot uses driving frame 0
    assert motion_frames(0, 2) == [0, *range(1, 9)]
    assert motion_frames(2, 4) == [0, *range(9, 17)]
    assert len(motion_frames(3, 5)) == 1 + 4 * 2


def _window_net(x: torch.Tensor, start: int) -> torch.Tensor:
    """A window 'network' that mixes frames inside the window and depends on the window start."""

    mixed = x + 0.3 * x.mean(dim=2, keepdim=True) + 0.01 * start
    return torch.tanh(mixed)


def test_one_window_covering_the_video_equals_the_single_window_result() -> None:
    x = torch.randn(2, 4, 6, 3, 5, generator=torch.Generator().manual_seed(0))  # (B, C, F, h, w)
    fused = fuse_windows(x, _window_net, window=5, overlap=1)
    direct = _window_net(x, 0)
    torch.testing.assert_close(fused[:, :, 1:], direct[:, :, 1:], rtol=0, atol=0)
    assert bool((fused[:, :, 0] == 0).all())


def test_fusion_is_a_partition_of_unity() -> None:
    # a pointwise window function: every overlapping window predicts the same value, so correctly
    # normalised weights must reproduce it exactly; wrong weights (not summing to 1) would scale it.
    x = torch.randn(1, 2, 12, 2, 2, generator=torch.Generator().manual_seed(1))
    fused = fuse_windows(x, lambda xw, s: 2.0 * xw, window=4, overlap=2)
    torch.testing.assert_close(fused[:, :, 1:], 2.0 * x[:, :, 1:])
    # a start-dependent function: frames shared by two windows get a convex blend of both
    fused = fuse_windows(x, lambda xw, s: torch.full_like(xw, float(s)), window=4, overlap=2)
    starts = [s for s, _ in latent_windows(11, 4, 2)]
    assert fused[0, 0, 1:, 0, 0].min() >= min(starts) and fused[0, 0, 1:, 0, 0].max() <= max(starts)
    assert fused[0, 0, 1, 0, 0] == 0.0 and fused[0, 0, -1, 0, 0] == float(starts[-1])
