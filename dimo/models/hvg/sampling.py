"""Progressive spatio-temporal sampling (HVG): V x T grids larger than one network window.

At every denoising step the full grid's denoised estimate is assembled from two tilings:

* the **temporal pass** slides overlapping windows of ``frame_window`` frames (overlap
  ``frame_overlap``) over time, with views cut into consecutive groups of ``view_window``;
* the **view pass** slides overlapping windows of ``view_window`` views (overlap ``view_overlap``)
  over the views, with frames cut into consecutive groups of ``frame_window``.

Within a pass, tiles that cover the same (view, frame) are fused with weights that favour the tile
whose centre is nearer (a triangular profile per axis, normalised so the weights of every grid
cell sum to one). The two passes are then blended, ``blend * temporal + (1 - blend) * view``, and
the EDM ODE step continues on the blended estimate. Tiles shared by both passes are evaluated once
per step. The number of tiles per pass is ``ceil(V / view stride) * ceil(T / frame stride)`` at most,
so the cost grows linearly with frames x views at fixed window sizes. With windows covering the
whole grid, both passes are one identical tile and the sampler is exactly plain sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dimo.diffusion.edm import EDM

#: ``denoiser(x (B, v, t, ...), sigma (B,), views (v,), frames (t,)) -> x0 estimate (B, v, t, ...)``
WindowDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Tile = tuple[int, int, int, int]  # (view start, view stop, frame start, frame stop)


def window_starts(n: int, window: int, overlap: int) -> list[int]:
    """Starts of windows of ``window`` covering ``range(n)`` with at least ``overlap`` shared items;
    the last window is shifted back to end at ``n``."""

    if window < 1 or overlap < 0 or overlap >= window:
        raise ValueError(
            f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}"
        )
    if window >= n:
        return [0]
    stride = window - overlap
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


def centre_profile(length: int) -> torch.Tensor:
    """Triangular weights (length,), largest at the window centre, positive at the edges."""

    half = length / 2
    pos = torch.arange(length, dtype=torch.float64) + 0.5
    return (half - (pos - half).abs() + 0.5) / (half + 0.5)


@dataclass
class ProgressiveSampler:
    """Window sizes and blending of the progressive spatio-temporal sampler (paper: 6 views, 24 frames)."""

    view_window: int = 6
    frame_window: int = 24
    view_overlap: int = 2
    frame_overlap: int = 8
    blend: float = 0.5

    def tiles(self, num_views: int, num_frames: int, mode: str) -> list[Tile]:
        """Tiles of one pass: ``mode`` is ``"temporal"`` or ``"view"``."""

        vw, tw = min(self.view_window, num_views), min(self.frame_window, num_frames)
        if mode == "temporal":
            vs, ts = (
                window_starts(num_views, vw, 0),
                window_starts(num_frames, tw, min(self.frame_overlap, tw - 1)),
            )
        elif mode == "view":
            vs, ts = (
                window_starts(num_views, vw, min(self.view_overlap, vw - 1)),
                window_starts(num_frames, tw, 0),
            )
        else:
            raise ValueError(f"mode must be 'temporal' or 'view', got {mode!r}")
        return [(v, v + vw, t, t + tw) for v in vs for t in ts]

    def weights(self, num_views: int, num_frames: int, mode: str) -> list[tuple[Tile, torch.Tensor]]:
        """Per tile, its fusion weights (v, t), normalised so every grid cell's weights sum to one."""

        tiles = self.tiles(num_views, num_frames, mode)
        raw = []
        total = torch.zeros(num_views, num_frames, dtype=torch.float64)
        for v0, v1, t0, t1 in tiles:
            w = centre_profile(v1 - v0)[:, None] * centre_profile(t1 - t0)[None, :]  # (v, t)
            raw.append(w)
            total[v0:v1, t0:t1] += w
        if bool((total == 0).any()):
            raise RuntimeError("tiling leaves grid cells uncovered")
        return [(tile, w / total[tile[0] : tile[1], tile[2] : tile[3]]) for tile, w in zip(tiles, raw)]

    def num_evaluations(self, num_views: int, num_frames: int) -> int:
        """Network calls per denoising step (tiles shared by both passes count once)."""

        return len(
            set(self.tiles(num_views, num_frames, "temporal"))
            | set(self.tiles(num_views, num_frames, "view"))
        )

    def fused_denoiser(
        self, denoiser: WindowDenoiser
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Turn a window denoiser into a full-grid ``denoiser(x (B, V, T, ...), sigma (B,))``."""

        def fused(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            num_views, num_frames = x.shape[1], x.shape[2]
            cache: dict[Tile, torch.Tensor] = {}
            modes = ("temporal", "view")
            if self.tiles(num_views, num_frames, "temporal") == self.tiles(num_views, num_frames, "view"):
                modes = ("temporal",)  # identical tilings (e.g. one window): one pass, no blend
            passes = []
            for mode in modes:
                out = torch.zeros_like(x)
                for tile, w in self.weights(num_views, num_frames, mode):
                    v0, v1, t0, t1 = tile
                    if tile not in cache:
                        views = torch.arange(v0, v1, device=x.device)
                        frames = torch.arange(t0, t1, device=x.device)
                        cache[tile] = denoiser(x[:, v0:v1, t0:t1], sigma, views, frames)
                    wt = w.to(device=x.device, dtype=x.dtype).reshape(
                        1, v1 - v0, t1 - t0, *([1] * (x.ndim - 3))
                    )
                    out[:, v0:v1, t0:t1] += wt * cache[tile]
                passes.append(out)
            if len(passes) == 1:
                return passes[0]
            return self.blend * passes[0] + (1.0 - self.blend) * passes[1]

        return fused

    @torch.no_grad()
    def sample(self, edm: EDM, denoiser: WindowDenoiser, noise: torch.Tensor, steps: int, heun: bool = False):
        """EDM ODE sampling of a (B, V, T, C, h, w) grid from unit ``noise``."""

        return edm.sample(self.fused_denoiser(denoiser), noise, steps, heun=heun)
