"""Rectified-flow / flow-matching training and sampling, as Wan (and 3DiMo's generator) use it.

Conventions (Wan, SD3, diffusers ``FlowMatchEulerDiscreteScheduler``):

* ``sigma`` in [0, 1] is the noise level; ``x_sigma = (1 - sigma) * x0 + sigma * noise``;
* the network predicts the **velocity** ``v = noise - x0`` (so ``x0 = x_sigma - sigma * v``);
* the network's timestep input is ``1000 * sigma``;
* training sigmas are drawn as ``u ~ U(0, 1)`` (or logit-normal) and then **shifted**
  ``sigma = s * u / (1 + (s - 1) * u)``, which moves mass to high noise for large videos
  (Wan uses ``s = 5`` at 480p and 720p; ``s = 1`` is no shift);
* sampling integrates ``dx/dsigma = v`` from sigma = 1 to 0 with diffusers'
  ``FlowMatchEulerDiscreteScheduler`` (same shift), a few steps for validation previews.

Everything here is pure tensor maths: no module state, no training logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["FlowMatching", "reference_timesteps", "shift_sigma"]

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 timestep shift ``s*u / (1 + (s-1)*u)``; identity for ``shift == 1``."""

    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass
class FlowMatching:
    """Noise/timestep sampling, the velocity target and a few-step Euler sampler.

    Args:
        shift: timestep shift applied to training and sampling sigmas (Wan: 5.0 at 480p; toy: 1-3).
        sampling: ``uniform`` (Wan) or ``logit_normal`` (SD3) draw of the unshifted sigma.
        logit_mean, logit_std: parameters of the logit-normal draw.
    """

    shift: float = 5.0
    sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def sample_sigmas(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training noise levels, shape (B,), float32 in (0, 1)."""

        if self.sampling == "uniform":
            u = torch.rand(batch, generator=generator, device=device)
        else:
            u = torch.sigmoid(
                self.logit_mean + self.logit_std * torch.randn(batch, generator=generator, device=device)
            )
        return shift_sigma(u, self.shift)

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``(1 - sigma) x0 + sigma noise``; sigma (B,) broadcast over the remaining dims."""

        s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return (1 - s) * x0 + s * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    @staticmethod
    def timestep(sigma: torch.Tensor) -> torch.Tensor:
        """Network timestep input in [0, 1000]."""

        return sigma * NUM_TRAIN_TIMESTEPS

    def make_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=self.shift)

    @torch.no_grad()
    def sample(
        self,
        velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        noise: torch.Tensor,
        num_steps: int,
        clamp: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Euler integration from pure noise (sigma = 1) to data (sigma = 0).

        ``velocity_fn(x, timestep (B,))`` returns the predicted velocity; ``clamp(x)`` (optional) is
        applied to the state before every network call, e.g. to re-impose clean conditioning frames.
        """

        scheduler = self.make_scheduler()
        scheduler.set_timesteps(num_steps, device=noise.device)
        x = noise
        for t in scheduler.timesteps:
            if clamp is not None:
                x = clamp(x)
            v = velocity_fn(x, t.expand(x.shape[0]).to(noise.dtype))
            x = scheduler.step(v, t, x, return_dict=False)[0]
        return clamp(x) if clamp is not None else x


def reference_timesteps(sigma: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Per-token timesteps (B, F*h*w) of a patch grid (F, h, w): 0 on latent frame 0 (the clean
    reference latent, in-context conditioning), ``1000 * sigma`` elsewhere. Training, validation
    sampling, the inference pipeline and the toy pretraining all use this one function."""

    f, h, w = grid
    t = (sigma * NUM_TRAIN_TIMESTEPS)[:, None, None].expand(-1, f, h * w).clone()  # (B, F, h*w)
    t[:, 0] = 0.0
    return t.flatten(1)
