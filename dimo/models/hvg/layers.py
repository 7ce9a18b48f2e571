"""HVG's additions to the SVD UNet: pose modulator, view attention, camera embedding, reference attention.

All of them enter the pretrained UNet through narrow doors and start as no-ops where the paper's
"training starts from SVD" requires it:

* :class:`PoseModulator` - normal- and depth-map guiders (four convs each, ControlNet condition
  encoder style, strided to the latent grid) fused by cross-attention; its output projection is
  zero-initialised and added to the output of the UNet's ``conv_in``.
* :class:`ViewAttention` - per pixel and frame, attention across the V views; placed after the
  spatial transformer block and before the temporal one; zero-initialised output projection; one
  batched SDPA call on views of the UNet's own layout (:class:`ViewAttnProcessor`).
* :class:`CameraEmbedding` - flattened relative rotation -> sinusoids -> MLP (last layer zero-init),
  added to the timestep embedding.
* :class:`ReferenceAttnProcessor` - diffusers attention processor for the spatial self-attention of
  the down/mid blocks: keys/values are the block's own tokens joined with the ReferenceNet's tokens
  (AnimateAnyone), projected once per sample, with a per-sample mask used for classifier-free-guidance
  dropout.

Per-call tensors (number of views, camera embedding, pose residual, reference features) travel
through a shared :class:`ForwardState` that :class:`~dimo.models.hvg.network.HVGUNet` fills before
calling diffusers' forward and clears afterwards (diffusers' SVD forward carries no extra kwargs).
Gradient checkpointing snapshots the state with every checkpointed call and restores it while the
call is recomputed in backward (:meth:`HVGUNet.enable_gradient_checkpointing`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


@dataclass
class ForwardState:
    """Per-call tensors shared between :class:`HVGUNet` and the hooks/processors it installs."""

    num_views: int = 1
    num_frames: int = 1
    camera_emb: torch.Tensor | None = None  # (B*V, time_embed_dim)
    pose_residual: torch.Tensor | None = None  # (B*V*T, C0, h, w)
    reference_features: dict[str, torch.Tensor] | None = None  # name -> (B, L, C)
    reference_keep: torch.Tensor | None = None  # (B,) bool

    def clear(self) -> None:
        self.camera_emb = self.pose_residual = self.reference_features = self.reference_keep = None
        self.num_views = self.num_frames = 1

    def snapshot(self) -> ForwardState:
        return ForwardState(**{f.name: getattr(self, f.name) for f in fields(self)})

    @contextmanager
    def restored(self, snap: ForwardState) -> Iterator[None]:
        """Temporarily hold ``snap``'s values (activation recomputation runs after the call cleared them)."""

        before = self.snapshot()
        for f in fields(self):
            setattr(self, f.name, getattr(snap, f.name))
        try:
            yield
        finally:
            for f in fields(self):
                setattr(self, f.name, getattr(before, f.name))


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class PoseGuider(nn.Module):
    """Four convs, the last ``log2(downsample)`` of them stride 2 (ControlNet's condition encoder:
    the last three for SVD's 8x VAE): (N, C_in, H, W) -> (N, C_out, H/downsample, W/downsample)."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int], downsample: int = 8):
        super().__init__()
        n_down = int(downsample).bit_length() - 1
        if downsample < 1 or 2**n_down != downsample or n_down >= len(channels):
            raise ValueError(
                f"guider downsample must be a power of 2 below 2**{len(channels)}, got {downsample}"
            )
        layers: list[nn.Module] = []
        prev = in_channels
        for i, ch in enumerate(channels):
            stride = 2 if i >= len(channels) - n_down else 1
            layers += [nn.Conv2d(prev, ch, 3, stride=stride, padding=1), nn.SiLU()]
            prev = ch
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class PoseModulator(nn.Module):
    """Dual bone-map pose modulator.

    ``maps`` holds one (N, C_k, H, W) tensor per guider (``normal`` 3, ``depth`` 1 or ``skeleton`` 3);
    the output (N, out_channels, H/d, W/d) (d = ``downsample``, the VAE's factor) is added to the
    UNet's first conv output. With two guiders the normal features query the depth features
    (cross-attention over the h*w tokens).
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        out_channels: int,
        channels: tuple[int, int, int, int] = (16, 32, 96, 256),
        fusion_heads: int = 4,
        downsample: int = 8,
    ):
        super().__init__()
        self.names = tuple(in_channels)
        self.guiders = nn.ModuleDict({k: PoseGuider(c, channels, downsample) for k, c in in_channels.items()})
        dim = channels[-1]
        if len(self.names) == 2:
            self.norm_q = nn.LayerNorm(dim)
            self.norm_kv = nn.LayerNorm(dim)
            self.fusion = Attention(
                query_dim=dim, heads=fusion_heads, dim_head=dim // fusion_heads, out_bias=True
            )
        elif len(self.names) != 1:
            raise ValueError(f"pose modulator takes one or two guiders, got {self.names}")
        self.proj_out = zero_module(nn.Conv2d(dim, out_channels, 1))

    def forward(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self.names if k not in maps]
        if missing:
            raise KeyError(f"pose modulator needs maps {self.names}, missing {missing}")
        feats = [self.guiders[k](maps[k]) for k in self.names]  # each (N, D, h, w)
        if len(feats) == 1:
            return self.proj_out(feats[0])
        a, b = feats
        n, d, h, w = a.shape
        qa = a.flatten(2).transpose(1, 2)  # (N, h*w, D)
        kb = b.flatten(2).transpose(1, 2)
        fused = qa + self.fusion(self.norm_q(qa), encoder_hidden_states=self.norm_kv(kb)) + kb
        fused = fused.transpose(1, 2).reshape(n, d, h, w)
        return self.proj_out(fused)


def check_plain_attention(attn: Attention) -> None:
    """The processors below compute ``to_out(softmax(q k^T / sqrt(d)) v)`` only: fail on a diffusers
    ``Attention`` configured with anything more (norms, residual, rescaling, added K/V)."""

    extras = {
        "group_norm": attn.group_norm is not None,
        "spatial_norm": attn.spatial_norm is not None,
        "norm_q": getattr(attn, "norm_q", None) is not None,
        "norm_cross": attn.norm_cross is not None,
        "residual_connection": attn.residual_connection,
        "rescale_output_factor": attn.rescale_output_factor != 1.0,
        "added_kv": getattr(attn, "add_k_proj", None) is not None,
        "scale": attn.scale != (attn.inner_dim // attn.heads) ** -0.5,
    }
    bad = [k for k, v in extras.items() if v]
    if bad:
        raise ValueError(f"HVG attention processors support plain attention only, this layer has {bad}")


def _project_out(attn: Attention, out: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](out))  # linear, dropout


class ViewAttnProcessor:
    """Attention across views, computed in the UNet's own layout with no relayout copy of the input.

    ``hidden_states`` (B*V*T, L, C) are projected where they lie; q/k/v are then *views*
    (B, T*L*heads, V, d) of the projections (the (T, L, heads) axes merge without a copy, views become
    the sequence axis), so one SDPA call attends across views for every frame, pixel and head. The
    output goes back to (B*V*T, L, C) by one reshape (a copy only if the kernel's output layout needs
    it; flash attention's (B, S, H, D) output already is that layout).
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        num_views: int = 1,
        num_frames: int = 1,
    ) -> torch.Tensor:
        n, seq, c = hidden_states.shape
        b, heads = n // (num_views * num_frames), attn.heads

        def by_view(x: torch.Tensor) -> torch.Tensor:  # (B*V*T, L, C) -> (B, T*L*heads, V, d), a view
            x = x.view(b, num_views, num_frames, seq, heads, x.shape[-1] // heads)
            return x.permute(0, 2, 3, 4, 1, 5).flatten(1, 3)

        q, k, v = (by_view(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, T*L*heads, V, d)
        out = out.unflatten(1, (num_frames, seq, heads)).permute(0, 4, 1, 2, 3, 5)  # (B, V, T, L, heads, d)
        return _project_out(attn, out.reshape(n, seq, -1))


class ViewAttention(nn.Module):
    """Residual attention across views for every (frame, pixel); identity at init (zero out-proj).

    Input/output (B*V*T, L, C) as inside diffusers' spatial transformer blocks (batch outermost,
    then views, then frames); the attention runs through :class:`ViewAttnProcessor` (no copies).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, out_bias=True)
        zero_module(self.attn.to_out[0])
        check_plain_attention(self.attn)
        self.attn.set_processor(ViewAttnProcessor())

    def forward(self, x: torch.Tensor, num_views: int, num_frames: int) -> torch.Tensor:
        return x + self.attn(self.norm(x), num_views=num_views, num_frames=num_frames)


def rotation_features(rel_rot: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """Sinusoidal features of flattened rotations: (N, 3, 3) -> (N, 9 * (1 + 2F))."""

    flat = rel_rot.reshape(rel_rot.shape[0], 9)
    freqs = math.pi * 2.0 ** torch.arange(num_frequencies, device=flat.device, dtype=flat.dtype)
    ang = flat[..., None] * freqs  # (N, 9, F)
    return torch.cat([flat, ang.sin().flatten(1), ang.cos().flatten(1)], dim=-1)


class CameraEmbedding(nn.Module):
    """Relative camera rotation (N, 3, 3) -> (N, dim) added to the timestep embedding (zero at init)."""

    def __init__(self, dim: int, num_frequencies: int = 8):
        super().__init__()
        self.num_frequencies = num_frequencies
        self.linear_1 = nn.Linear(9 * (1 + 2 * num_frequencies), dim)
        self.act = nn.SiLU()
        self.linear_2 = zero_module(nn.Linear(dim, dim))

    def forward(self, rel_rot: torch.Tensor) -> torch.Tensor:
        feats = rotation_features(rel_rot, self.num_frequencies).to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(feats)))


class ReferenceAttnProcessor:
    """Spatial self-attention whose keys/values also hold the ReferenceNet tokens of the same block.

    The reference tokens (B, L_ref, C) are projected to K/V once per sample, and the projections are
    broadcast (``expand``, no copy) to the sample's V*T images before joining their own K/V; projecting
    the repeated tokens per image gives the same values at V*T times the FLOPs. Samples whose
    ``reference_keep`` is False (CFG dropout / unconditional branch) mask the reference keys out, which
    is exactly plain self-attention for them. Without reference features (or for cross-attention) the
    call is diffusers' :class:`AttnProcessor2_0`.
    """

    def __init__(self, state: ForwardState, name: str):
        self.state = state
        self.name = name
        self.base = AttnProcessor2_0()

    def __call__(
        self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None
    ):
        feats = self.state.reference_features
        ref = None if feats is None else feats.get(self.name)
        if ref is None or encoder_hidden_states is not None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        n, seq, _ = hidden_states.shape  # (B*V*T, L, C)
        b, heads = ref.shape[0], attn.heads
        per = n // b  # images per sample
        ref = ref.to(hidden_states.dtype)

        def keys(proj: nn.Linear) -> torch.Tensor:  # (B*V*T, L + L_ref, heads, d)
            own = proj(hidden_states).view(b, per, seq, -1)
            shared = proj(ref)[:, None].expand(b, per, -1, -1)  # (B, V*T, L_ref, C): one projection
            return torch.cat([own, shared], dim=2).flatten(0, 1).unflatten(-1, (heads, -1))

        q = attn.to_q(hidden_states).unflatten(-1, (heads, -1)).transpose(1, 2)  # (N, heads, L, d)
        k, v = keys(attn.to_k).transpose(1, 2), keys(attn.to_v).transpose(1, 2)
        mask = None
        keep = self.state.reference_keep
        if keep is not None and not bool(keep.all()):
            allowed = torch.ones(b, per, 1, 1, k.shape[2], dtype=torch.bool, device=k.device)
            allowed[..., seq:] = keep.to(k.device)[:, None, None, None, None]
            mask = allowed.flatten(0, 1)  # (N, 1, 1, L + L_ref)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, heads, L, d)
        return _project_out(attn, out.transpose(1, 2).flatten(2))
