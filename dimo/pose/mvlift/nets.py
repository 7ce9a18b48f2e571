"""MVLift networks: the line-conditioned 2D motion denoiser (stage 1) and the multi-view one (stage 4).

Both predict the clean sequence ``x0`` from a noisy one (diffusers' DDPM/DDIM schedulers with
``prediction_type="sample"`` run the noise), with one token per frame (per view and frame for the
multi-view model) and DiT-style blocks: LayerNorms modulated by the diffusion timestep (adaLN-Zero, so
every block starts as the identity). Hand-written because no library ships a motion transformer with
cross-view attention; the timestep embedding is diffusers' (``Timesteps`` + ``TimestepEmbedding``) and
attention is :class:`torch.nn.MultiheadAttention`.

* :class:`LineDiffusionNet` ``(x_t (B, T, J, 2), t (B,), lines (B, T, J, 6), line_mask (B, T, J)) -> x0``:
  each joint's epipolar line (sign-free features, :func:`~dimo.pose.mvlift.geometry.line_features`)
  is part of its frame token; blocks are temporal self-attention + MLP.
* :class:`MultiViewDiffusionNet` ``(x (B, V, T, J, 2), t (B,), cond (B, V, T, J, C)) -> x0 (B, V, T, J, 2)``:
  view 0 carries the clean input sequence (and its confidences), views 1.. the noisy ones plus the
  epipolar lines of the input's joints; every block is temporal self-attention within a view, then
  **cross-view attention** among the V tokens of each frame, then an MLP (MVLift's multi-view model).

Networks know nothing of training (losses, noise and schedules live in
:mod:`dimo.pose.mvlift.modules`); ``save_pretrained`` / ``from_pretrained`` write and read a folder
(``config.json`` + ``model.safetensors``), loading strictly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from dimo.pose.mvlift.geometry import J16

__all__ = [
    "PRESETS",
    "LineDiffusionNet",
    "MotionNetConfig",
    "MultiViewDiffusionNet",
    "load_net",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LINE_FEATURES = 6


@dataclass(frozen=True)
class MotionNetConfig:
    """Size of either network. ``frames`` is the window length the positional embedding covers."""

    num_joints: int = len(J16)
    frames: int = 20
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    num_views: int = 4  # multi-view network only

    def __post_init__(self) -> None:
        if min(self.num_joints, self.frames, self.dim, self.depth, self.heads, self.num_views) < 1:
            raise ValueError("num_joints, frames, dim, depth, heads and num_views must be >= 1")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")


PRESETS: dict[str, MotionNetConfig] = {
    "tiny": MotionNetConfig(dim=32, depth=1, heads=2),
    "toy": MotionNetConfig(),
}


def _coerce(cfg: MotionNetConfig | str | dict | None) -> MotionNetConfig:
    if cfg is None:
        return PRESETS["toy"]
    if isinstance(cfg, str):
        if cfg not in PRESETS:
            raise ValueError(f"unknown preset {cfg!r}; expected one of {sorted(PRESETS)}")
        return PRESETS[cfg]
    if isinstance(cfg, dict):
        return MotionNetConfig(**cfg)
    return cfg


class _Modulated(nn.Module):
    """``x + gate * f(LN(x) * (1 + scale) + shift)`` with (shift, scale, gate) from the timestep embedding."""

    def __init__(self, dim: int, inner: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mod = nn.Linear(dim, 3 * dim)
        nn.init.zeros_(self.mod.weight)  # adaLN-Zero: the block starts as the identity
        nn.init.zeros_(self.mod.bias)
        self.inner = inner

    def forward(self, x: torch.Tensor, temb: torch.Tensor, **kw) -> torch.Tensor:
        # x (N, L, D), temb (N, D)
        shift, scale, gate = self.mod(nn.functional.silu(temb))[:, None].chunk(3, dim=-1)
        return x + gate * self.inner(self.norm(x) * (1 + scale) + shift, **kw)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def _mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class _TimeEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.embed = TimestepEmbedding(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.embed(self.proj(t).to(self.embed.linear_1.weight.dtype))  # (B, D)


class _Pretrained(nn.Module):
    kind = ""

    def __init__(self, cfg: MotionNetConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def save_pretrained(self, folder: str | os.PathLike, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # fp16 storage halves the folder (upcast on load), as the toy detector's
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        save_file(state, folder / WEIGHTS_NAME)
        cfg = {"model_type": self.kind, **asdict(self.cfg), **(extra or {})}
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=1) + "\n")
        return folder


class LineDiffusionNet(_Pretrained):
    """Stage 1: line-conditioned 2D motion denoiser (module docstring)."""

    kind = "mvlift_line_diffusion"

    def __init__(self, cfg: MotionNetConfig | str | dict | None = None) -> None:
        cfg = _coerce(cfg)
        super().__init__(cfg)
        J, D = cfg.num_joints, cfg.dim
        self.embed = nn.Sequential(
            nn.Linear(J * (2 + LINE_FEATURES + 1), D), nn.GELU(approximate="tanh"), nn.Linear(D, D)
        )
        self.pos = nn.Parameter(torch.zeros(cfg.frames, D))
        nn.init.normal_(self.pos, std=0.02)
        self.time = _TimeEmbedding(D)
        self.blocks = nn.ModuleList()
        for _ in range(cfg.depth):
            self.blocks.append(
                nn.ModuleList(
                    [_Modulated(D, _Attention(D, cfg.heads)), _Modulated(D, _mlp(D, cfg.mlp_ratio))]
                )
            )
        self.out_norm = nn.LayerNorm(D)
        self.out = nn.Linear(D, J * 2)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, lines: torch.Tensor, line_mask: torch.Tensor
    ) -> torch.Tensor:
        B, T, J, _ = x_t.shape
        if T > self.cfg.frames or J != self.cfg.num_joints:
            raise ValueError(
                f"expected (B, T <= {self.cfg.frames}, {self.cfg.num_joints}, 2), got {tuple(x_t.shape)}"
            )
        m = line_mask[..., None].to(x_t.dtype)
        tok = torch.cat([x_t, lines * m, m], -1).flatten(-2)  # (B, T, J * 9)
        h = self.embed(tok) + self.pos[:T]  # (B, T, D)
        temb = self.time(t.expand(B) if t.ndim == 0 else t)  # (B, D)
        for attn, mlp in self.blocks:
            h = mlp(attn(h, temb), temb)
        return self.out(self.out_norm(h)).view(B, T, J, 2)


class MultiViewDiffusionNet(_Pretrained):
    """Stage 4: multi-view 2D motion denoiser with cross-view attention (module docstring).

    ``cond (B, V, T, J, 9)`` per joint: input confidence (view 0; 0 elsewhere), the 6 line features of
    the input joint's epipolar line in that view and its validity (views 1..; 0 for view 0), and a
    flag that the view is the given input.
    """

    kind = "mvlift_multiview_diffusion"
    COND = 1 + LINE_FEATURES + 1 + 1

    def __init__(self, cfg: MotionNetConfig | str | dict | None = None) -> None:
        cfg = _coerce(cfg)
        super().__init__(cfg)
        J, D = cfg.num_joints, cfg.dim
        self.embed = nn.Sequential(
            nn.Linear(J * (2 + self.COND), D), nn.GELU(approximate="tanh"), nn.Linear(D, D)
        )
        self.pos = nn.Parameter(torch.zeros(cfg.frames, D))
        self.view = nn.Parameter(torch.zeros(cfg.num_views, D))
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.view, std=0.02)
        self.time = _TimeEmbedding(D)
        self.blocks = nn.ModuleList()
        for _ in range(cfg.depth):
            self.blocks.append(
                nn.ModuleList(
                    [
                        _Modulated(D, _Attention(D, cfg.heads)),  # temporal self-attention, per view
                        _Modulated(D, _Attention(D, cfg.heads)),  # cross-view attention, per frame
                        _Modulated(D, _mlp(D, cfg.mlp_ratio)),
                    ]
                )
            )
        self.out_norm = nn.LayerNorm(D)
        self.out = nn.Linear(D, J * 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        B, V, T, J, _ = x.shape
        if T > self.cfg.frames or J != self.cfg.num_joints or V != self.cfg.num_views:
            raise ValueError(
                f"expected (B, {self.cfg.num_views}, T <= {self.cfg.frames}, {self.cfg.num_joints}, 2), got {tuple(x.shape)}"
            )
        if cond.shape != (B, V, T, J, self.COND):
            raise ValueError(f"cond must be {(B, V, T, J, self.COND)}, got {tuple(cond.shape)}")
        tok = torch.cat([x, cond], -1).flatten(-2)  # (B, V, T, J * 11)
        h = self.embed(tok) + self.pos[:T] + self.view[:, None]  # (B, V, T, D)
        D = h.shape[-1]
        temb = self.time(t.expand(B) if t.ndim == 0 else t)  # (B, D)
        t_views = temb.repeat_interleave(V, 0)  # (B * V, D)
        t_frames = temb.repeat_interleave(T, 0)  # (B * T, D)
        for temporal, cross, mlp in self.blocks:
            h = temporal(h.reshape(B * V, T, D), t_views).view(B, V, T, D)
            h = cross(h.transpose(1, 2).reshape(B * T, V, D), t_frames).view(B, T, V, D).transpose(1, 2)
            h = mlp(h.reshape(B * V, T, D), t_views).view(B, V, T, D)
        return self.out(self.out_norm(h)).view(B, V, T, J, 2)


_KINDS = {c.kind: c for c in (LineDiffusionNet, MultiViewDiffusionNet)}


def load_net(folder: str | os.PathLike, kind: str) -> LineDiffusionNet | MultiViewDiffusionNet:
    """A network folder written by ``save_pretrained``; strict load, one clear error if anything is missing."""

    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name}: missing (an MVLift network folder; build it with `make train-mvlift`)"
            )
    raw = json.loads((folder / CONFIG_NAME).read_text())
    if raw.get("model_type") != kind or kind not in _KINDS:
        raise ValueError(
            f"{folder / CONFIG_NAME}: model_type must be {kind!r}, got {raw.get('model_type')!r}"
        )
    fields = {k: v for k, v in raw.items() if k in MotionNetConfig.__dataclass_fields__}
    net = _KINDS[kind](MotionNetConfig(**fields))
    net.load_state_dict({k: v.float() for k, v in load_file(folder / WEIGHTS_NAME).items()}, strict=True)
    return net.eval()
