"""EDM preconditioning (SVD's v-scaling): targets, loss identity, schedule, ODE sampler."""

from __future__ import annotations

import torch

from dimo.diffusion.edm import EDM


def test_v_target_denoises_exactly_and_matches_weighted_loss():
    g = torch.Generator().manual_seed(0)
    edm = EDM(sigma_data=0.7)
    x0 = torch.randn(4, 3, 5, generator=g)
    sigma = edm.sample_sigma(4, g)
    noisy = x0 + sigma[:, None, None] * torch.randn(x0.shape, generator=g)
    v = edm.v_target(x0, noisy, sigma)
    torch.testing.assert_close(edm.denoised(v, noisy, sigma), x0, atol=1e-4, rtol=1e-4)
    out = torch.randn(x0.shape, generator=g)
    weighted = edm.loss_weight(sigma)[:, None, None] * (edm.denoised(out, noisy, sigma) - x0) ** 2
    torch.testing.assert_close(weighted, (out - v) ** 2, atol=1e-3, rtol=1e-4)


def test_preconditioning_matches_svd_v_scaling():
    edm = EDM()  # sigma_data = 1: sgm's VScalingWithEDMcNoise
    sigma = torch.tensor([0.01, 1.0, 30.0])
    c_skip, c_out, c_in, c_noise = edm.precondition(sigma)
    torch.testing.assert_close(c_skip, 1 / (sigma**2 + 1))
    torch.testing.assert_close(c_out, -sigma / (sigma**2 + 1).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + 1).sqrt())
    torch.testing.assert_close(c_noise, 0.25 * sigma.log())


def test_sigma_distribution_and_schedule():
    edm = EDM(p_mean=0.7, p_std=1.6)
    s = edm.sample_sigma(20000, torch.Generator().manual_seed(0))
    assert abs(s.log().mean().item() - 0.7) < 0.05 and abs(s.log().std().item() - 1.6) < 0.05
    sig = edm.sigmas(10)
    assert sig.shape == (11,) and sig[-1] == 0
    torch.testing.assert_close(sig[0], torch.tensor(edm.sigma_max))
    torch.testing.assert_close(sig[-2], torch.tensor(edm.sigma_min))
    assert bool((sig[1:] < sig[:-1]).all())


def test_sampler_with_oracle_denoiser_returns_the_data():
    edm = EDM()
    x0 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    for heun in (False, True):
        out = edm.sample(lambda x, s: x0, noise, steps=5, heun=heun)
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)
    # the exact denoiser of N(0, sd^2) data: the ODE carries sigma_max noise back to std sd
    sd = 0.5
    gauss = EDM(sigma_data=sd)
    big = torch.randn(20000, generator=torch.Generator().manual_seed(3))
    out = gauss.sample(lambda x, s: x * sd**2 / (sd**2 + s[:, None] ** 2), big[:, None], steps=40, heun=True)
    assert abs(out.std().item() - sd) < 0.02
