"""Sliding temporal windows with overlap fusion for long 3DiMo driving videos.

3DiMo is trained on short clips whose latent frame 0 is the clean reference. A long video has latent
frames ``0 .. F-1`` (frame 0 = reference, ``1 .. F-1`` generated). The generated frames are cut into
overlapping windows of ``window`` latent frames (``overlap`` shared); at every denoising step each
window is run through the network as ``[reference, window frames]`` with the motion tokens of the
driving frames it covers, and the per-window velocities are fused with triangular weights that
favour the nearer window centre, normalised so the weights of every latent frame sum to one
(MultiDiffusion-style). One window covering the video reduces exactly to plain sampling.

The window starts and the triangular profile are HVG's progressive sampler's
(:func:`dimo.models.hvg.sampling.window_starts`, :func:`~dimo.models.hvg.sampling.centre_profile`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dimo.models.hvg.sampling import centre_profile, window_starts

__all__ = ["latent_windows", "window_weights", "motion_frames", "fuse_windows"]

#: ``window_fn(x (B, C, 1 + w, h, w_), start) -> velocity (B, C, 1 + w, h, w_)`` for generated latent
#: frames ``start .. start + w - 1`` (0-based over the generated frames) behind the reference frame.
WindowFn = Callable[[torch.Tensor, int], torch.Tensor]


def latent_windows(num_generated: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """(start, stop) windows over ``range(num_generated)`` generated latent frames."""

    if num_generated < 1:
        raise ValueError(f"need at least one generated latent frame, got {num_generated}")
    window = min(window, num_generated)
    overlap = min(overlap, window - 1)
    return [(s, s + window) for s in window_starts(num_generated, window, overlap)]


def window_weights(
    num_generated: int, window: int, overlap: int
) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """Per window its fusion weights (stop - start,), float64; every frame's weights sum to one."""

    spans = latent_windows(num_generated, window, overlap)
    total = torch.zeros(num_generated, dtype=torch.float64)
    raw = []
    for s, e in spans:
        w = centre_profile(e - s)
        raw.append(w)
        total[s:e] += w
    if bool((total == 0).any()):
        raise RuntimeError("windows leave latent frames uncovered")
    return [((s, e), w / total[s:e]) for (s, e), w in zip(spans, raw)]


def motion_frames(start: int, stop: int, temporal_compression: int = 4) -> list[int]:
    """Driving frame indices a window of generated latent frames ``start..stop-1`` needs.

    Frame 0 (the reference position) followed by the pixel frames the causal VAE folds into latent
    frames ``1+start .. stop`` (latent frame ``f >= 1`` holds pixel frames ``c(f-1)+1 .. c f``).
    """

    c = temporal_compression
    return [0, *range(c * start + 1, c * stop + 1)]


def fuse_windows(x: torch.Tensor, window_fn: WindowFn, window: int, overlap: int) -> torch.Tensor:
    """Fused velocity of the whole latent video.

    x: (B, C, F, h, w) with the reference in latent frame 0. Returns (B, C, F, h, w); frame 0's
    velocity is 0 (the caller re-imposes the clean reference anyway).
    """

    num_generated = x.shape[2] - 1
    out = torch.zeros_like(x)
    for (s, e), w in window_weights(num_generated, window, overlap):
        sub = torch.cat([x[:, :, :1], x[:, :, 1 + s : 1 + e]], dim=2)  # (B, C, 1 + w, h, w_)
        v = window_fn(sub, s)
        out[:, :, 1 + s : 1 + e] += w.to(device=x.device, dtype=x.dtype).view(1, 1, -1, 1, 1) * v[:, :, 1:]
    return out
