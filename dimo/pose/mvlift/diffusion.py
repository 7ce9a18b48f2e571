"""Noise schedule, conditioning tensors and samplers shared by the MVLift stages.

The schedule is diffusers' (DDIM with a squared-cosine beta schedule, 1000 training steps,
``prediction_type="sample"``: the networks predict the clean sequence, which the line-matching loss and
SDS need). Sampling is DDIM (eta 0, trailing timesteps, so the first step starts from pure noise).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from dimo.pose.mvlift.geometry import epipolar_lines, fundamental, line_features, net_intrinsics

__all__ = ["input_lines", "make_scheduler", "multiview_cond", "sample_line", "sample_multiview"]

NUM_TRAIN_TIMESTEPS = 1000


def make_scheduler(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="sample",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


def input_lines(
    x0: torch.Tensor, conf: torch.Tensor, R: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Epipolar lines of the input view's joints in every other view of a ring.

    ``x0 (B, T, J, 2)`` (view 0), ``conf (B, T, J)``, ring ``R (B, V, 3, 3)``, ``t (B, V, 3)`` ->
    normalised lines ``(B, V-1, T, J, 3)`` and their validity ``(B, V-1, T, J)`` (the input joint's
    confidence is positive).
    """

    Kn = net_intrinsics(dtype=x0.dtype)
    F = fundamental(Kn, R[:, :1], t[:, :1], Kn, R[:, 1:], t[:, 1:])  # (B, V-1, 3, 3)
    lines = epipolar_lines(F[:, :, None], x0[:, None])  # (B, V-1, T, J, 3)
    valid = (conf > 0)[:, None].expand(lines.shape[:-1])
    return lines, valid


def multiview_cond(
    x0: torch.Tensor, conf: torch.Tensor, lines: torch.Tensor, line_valid: torch.Tensor
) -> torch.Tensor:
    """The multi-view network's ``cond (B, V, T, J, 9)`` (see :class:`~dimo.pose.mvlift.nets.MultiViewDiffusionNet`)
    from the input ``x0``/``conf`` and the lines ``(B, V-1, T, J, 3)`` / validity of :func:`input_lines`."""

    B, V1, T, J, _ = lines.shape
    m = line_valid[..., None].to(x0.dtype)
    others = torch.cat(
        [torch.zeros_like(m), line_features(lines) * m, m, torch.zeros_like(m)], -1
    )  # (B, V-1, T, J, 9)
    first = torch.cat([conf[..., None], x0.new_zeros(B, T, J, 7), torch.ones_like(conf[..., None])], -1)[
        :, None
    ]  # (B, 1, T, J, 9)
    return torch.cat([first, others], 1)


@torch.no_grad()
def sample_line(
    net,
    lines: torch.Tensor,
    line_valid: torch.Tensor,
    steps: int = 20,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDIM samples ``(N, T, J, 2)`` of the line-conditioned model given lines ``(N, T, J, 3)``."""

    sched = make_scheduler(net_num_timesteps(net))
    sched.set_timesteps(steps)
    feats = line_features(lines)
    x = torch.randn(lines.shape[:-1] + (2,), generator=generator, dtype=lines.dtype).to(lines.device)
    for ts in sched.timesteps:
        t = torch.full((x.shape[0],), int(ts), device=x.device)
        x0 = net(x, t, feats, line_valid)
        x = sched.step(x0, int(ts), x).prev_sample
    return x


@torch.no_grad()
def sample_multiview(
    net,
    x0: torch.Tensor,
    conf: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    steps: int = 20,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """All views ``(B, V, T, J, 2)`` of the ring ``R, t (B, V, ...)`` given the input view ``x0 (B, T, J, 2)``:
    DDIM on views 1.. with view 0 held at the input (so the returned view 0 is the input itself)."""

    lines, valid = input_lines(x0, conf, R, t)
    cond = multiview_cond(x0, conf, lines, valid)
    B, V = R.shape[:2]
    sched = make_scheduler(net_num_timesteps(net))
    sched.set_timesteps(steps)
    shape = (B, V, *x0.shape[1:])
    x = torch.randn(shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x[:, 0] = x0
    for ts in sched.timesteps:
        tt = torch.full((B,), int(ts), device=x.device)
        pred = net(x, tt, cond)
        x = sched.step(pred, int(ts), x).prev_sample
        x[:, 0] = x0
    return x


def net_num_timesteps(net) -> int:
    return int(getattr(net, "num_train_timesteps", NUM_TRAIN_TIMESTEPS))
