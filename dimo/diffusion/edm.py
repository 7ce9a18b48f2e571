"""EDM preconditioning, training targets and samplers as Stable Video Diffusion uses them.

Karras et al. (EDM, 2022) with SVD's "V-scaling" (``sgm`` ``VScalingWithEDMcNoise``; diffusers'
``EulerDiscreteScheduler`` with ``v_prediction``): for noise level sigma and data std ``sigma_data``

    x = x0 + sigma * n                               (noisy sample)
    c_in   = 1 / sqrt(sigma^2 + sd^2)
    c_skip = sd^2 / (sigma^2 + sd^2)
    c_out  = -sigma * sd / sqrt(sigma^2 + sd^2)      (negative: SVD's v-parameterisation)
    c_noise = 0.25 * log(sigma)
    D(x) = c_skip * x + c_out * F(c_in * x, c_noise)  (denoised estimate)

Training draws ``log sigma ~ N(P_mean, P_std^2)`` and minimises ``lambda(sigma) ||D - x0||^2`` with
``lambda = (sigma^2 + sd^2) / (sigma * sd)^2``; this equals the unweighted ``||F - v||^2`` with the
v-style target ``v = (x0 - c_skip x) / c_out`` (:func:`EDM.v_target`; the identity is tested).
Sampling: Karras sigma schedule (rho = 7) and the Euler / Heun ODE steps on any ``denoiser(x, sigma)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``."""

    return v.reshape(v.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


@dataclass
class EDM:
    """EDM noise distribution, preconditioning and schedule (defaults: SVD fine-tuning)."""

    sigma_data: float = 1.0
    p_mean: float = 0.7
    p_std: float = 1.6
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0

    # ---- training ----------------------------------------------------------------------------
    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Log-normal noise levels (n,)."""

        z = torch.randn(n, generator=generator, device=device)
        return (self.p_mean + self.p_std * z).exp()

    def precondition(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise), each shaped like ``sigma``."""

        sd2 = self.sigma_data**2
        denom = sigma**2 + sd2
        c_skip = sd2 / denom
        c_out = -sigma * self.sigma_data / denom.sqrt()
        c_in = 1.0 / denom.sqrt()
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def v_target(self, x0: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Network target F* with D(F*) = x0 (sigma (B,), tensors (B, ...))."""

        c_skip, c_out, _, _ = self.precondition(sigma)
        return (x0 - _expand(c_skip, x0) * noisy) / _expand(c_out, x0)

    def denoised(self, net_out: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_skip, c_out, _, _ = self.precondition(sigma)
        return _expand(c_skip, noisy) * noisy + _expand(c_out, noisy) * net_out

    # ---- sampling ----------------------------------------------------------------------------
    def sigmas(self, steps: int, device=None) -> torch.Tensor:
        """Karras schedule sigma_max -> sigma_min in ``steps`` levels, then a final 0: (steps + 1,)."""

        if steps < 1:
            raise ValueError("need at least one sampling step")
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        s = (hi + ramp * (lo - hi)) ** self.rho
        return torch.cat([s, s.new_zeros(1)]).to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        noise: torch.Tensor,
        steps: int,
        heun: bool = False,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Deterministic EDM ODE sampler; ``noise`` is unit Gaussian, ``denoiser(x, sigma (B,)) -> x0``."""

        sigmas = self.sigmas(steps, noise.device)
        x = noise * sigmas[0]
        b = noise.shape[0]
        for i in range(steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            d = (x - denoiser(x, s.expand(b))) / s
            x_next = x + (s_next - s) * d
            if heun and s_next > 0:
                d2 = (x_next - denoiser(x_next, s_next.expand(b))) / s_next
                x_next = x + (s_next - s) * 0.5 * (d + d2)
            x = x_next
            if callback is not None:
                callback(i, x)
        return x
