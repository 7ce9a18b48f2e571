"""Progressive spatio-temporal sampler: windows, fusion weights, exactness with one window, long grids."""

from __future__ import annotations

import pytest
import torch

from dimo.diffusion.edm import EDM
from dimo.models.hvg.sampling import ProgressiveSampler, centre_profile, window_starts


def _mixing_denoiser(calls: list | None = None):
    """A denoiser whose output depends on the whole window (so tiling matters)."""

    def denoise(x, sigma, views, frames):
        if calls is not None:
            calls.append((len(views), len(frames)))
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        mean = x.mean(dim=(1, 2), keepdim=True)
        pos = views[:, None].float() * 0.1 + frames[None, :].float() * 0.01
        pos = pos.reshape(1, *pos.shape, *([1] * (x.ndim - 3)))
        return (x / (1 + s**2) + 0.3 * mean + pos).to(x.dtype)

    return denoise


@pytest.mark.parametrize("n,window,overlap", [(10, 4, 1), (7, 3, 2), (24, 24, 8), (5, 8, 2), (25, 6, 2)])
def test_window_starts_cover_everything(n, window, overlap):
    starts = window_starts(n, window, overlap)
    covered = torch.zeros(n, dtype=torch.bool)
    for s in starts:
        assert 0 <= s and s + min(window, n) <= n
        covered[s : s + min(window, n)] = True
    assert bool(covered.all())
    assert starts == sorted(set(starts))


def test_fusion_weights_sum_to_one_and_favour_nearer_centre():
    sampler = ProgressiveSampler(view_window=3, frame_window=4, view_overlap=1, frame_overlap=2)
    V, T = 8, 11
    for mode in ("temporal", "view"):
        total = torch.zeros(V, T, dtype=torch.float64)
        for (v0, v1, t0, t1), w in sampler.weights(V, T, mode):
            assert w.shape == (v1 - v0, t1 - t0) and bool((w > 0).all())
            total[v0:v1, t0:t1] += w
        torch.testing.assert_close(total, torch.ones(V, T, dtype=torch.float64))
    # temporal pass: frame 3 is covered by windows [0, 4) (centre 2) and [2, 6) (centre 4)
    tiles = dict(sampler.weights(3, 11, "temporal"))
    w_a, w_b = tiles[(0, 3, 0, 4)], tiles[(0, 3, 2, 6)]
    assert w_b[0, 1] > w_a[0, 3]  # frame 3 is nearer the centre of [2, 6)
    assert w_a[0, 2] > w_b[0, 0]  # frame 2 is nearer the centre of [0, 4)
    prof = centre_profile(4)
    assert prof[1] == prof[2] > prof[0] == prof[3] > 0


def test_one_window_equals_plain_sampling():
    edm = EDM()
    denoise = _mixing_denoiser()
    noise = torch.randn(1, 3, 5, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    sampler = ProgressiveSampler(view_window=3, frame_window=5, view_overlap=1, frame_overlap=2)
    views, frames = torch.arange(3), torch.arange(5)
    plain = edm.sample(lambda x, s: denoise(x, s, views, frames), noise, steps=4)
    ours = sampler.sample(edm, denoise, noise, steps=4)
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)
    # smaller windows give a different (fused) result, with the expected number of calls per step
    calls: list = []
    small = ProgressiveSampler(view_window=2, frame_window=3, view_overlap=1, frame_overlap=1)
    other = small.sample(edm, _mixing_denoiser(calls), noise, steps=4)
    assert (other - plain).abs().max() > 1e-3
    assert len(calls) == 4 * small.num_evaluations(3, 5)
    assert all(c == (2, 3) for c in calls)


def test_cost_is_linear_in_views_times_frames():
    sampler = ProgressiveSampler(view_window=6, frame_window=24, view_overlap=2, frame_overlap=8)
    base = sampler.num_evaluations(6, 24)
    counts = {k: sampler.num_evaluations(6 * k, 16 * k + 8) for k in (1, 2, 4, 8)}
    cells = {k: 6 * k * (16 * k + 8) for k in counts}
    ratios = [counts[k] / cells[k] for k in counts]
    assert base == 1
    assert max(ratios[1:]) / min(ratios[1:]) < 1.6  # evaluations per cell bounded: linear cost


def test_long_grid_three_windows_each_axis_runs():
    sampler = ProgressiveSampler(view_window=2, frame_window=2, view_overlap=1, frame_overlap=1)
    calls: list = []
    noise = torch.randn(1, 6, 6, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sampler.sample(EDM(), _mixing_denoiser(calls), noise, steps=2)
    assert out.shape == noise.shape and bool(torch.isfinite(out).all())
    assert all(c == (2, 2) for c in calls) and len(calls) == 2 * sampler.num_evaluations(6, 6)
    # behaviour: a denoiser that knows the clean grid (each window gets its own views' and frames' cells)
    # lands on it exactly: every cell covered in both passes, the fusion weights sum to one, the window
    # indices are the cells' own
    x0 = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))

    def exact(x, sigma, views, frames):
        return x0[:, views][:, :, frames]

    torch.testing.assert_close(sampler.sample(EDM(), exact, noise, steps=3), x0, rtol=1e-5, atol=1e-5)
