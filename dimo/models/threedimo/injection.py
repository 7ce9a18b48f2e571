"""Motion-token injection into a diffusers Wan transformer, without touching its files.

Two ways, chosen by ``injection`` (the paper's ablation):

``cross_attention`` (default, the paper's design)
    One new cross-attention layer per transformer block (a diffusers :class:`WanAttention`, so it
    uses the same attention backends), in which the video tokens query the motion tokens; only video
    tokens attend to motion tokens and the text path is untouched. ``to_out`` is zero-initialised: at
    step 0 the output equals the pretrained model's exactly. ``motion_placement``:

    * ``"sequential"`` (default, the paper's placement): a residual step of its own right after the
      self-attention, before the text cross-attention: ``h' = h + M(LN(h))``, then the block's text
      cross-attention reads ``norm2(h')``. Wired without copying diffusers' block ``forward``: a
      forward pre-hook on the block's ``norm2`` (whose input is exactly the post-self-attention
      residual ``h``) computes ``m = M(LN(h))`` and feeds ``h + m`` to ``norm2``; the ``attn2``
      processor (:class:`MotionInjectionProcessor`) adds the same ``m`` to its output, so the block's
      residual becomes ``h + m + text(norm2(h + m))``.
    * ``"parallel"``: decoupled cross-attention (IP-Adapter style): text and motion cross-attention
      both read ``norm2(h)`` and their outputs are summed.

    ``motion_attention = "frame_aligned"`` (default): the video tokens of latent frame f attend only
    to the motion tokens of the driving frames that the causal VAE folds into f (frame 0 alone, then
    groups of ``temporal_compression``); ``"global"``: every video token sees every motion token (a
    sinusoidal frame-index embedding on the motion tokens carries time in both modes).

``channel_concat`` (ablation)
    Motion tokens are pooled per latent frame, projected to ``concat_channels`` and broadcast over
    the latent grid as extra input channels. Concatenating channels before the linear patch
    embedding equals adding a second, zero-initialised patch embedding of the motion map to its
    output, which a forward hook on ``patch_embedding`` does; pretrained keys and shapes are kept.

Per-call tensors reach the blocks through a small shared :class:`MotionContext` (diffusers' Wan
forward does not carry extra kwargs to blocks), set by the owner before every forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn

__all__ = [
    "MotionContext",
    "MotionInjectionProcessor",
    "group_by_latent_frame",
    "make_motion_attention",
]


@dataclass
class MotionContext:
    """Per-forward state shared with the processors: motion keys and the latent frame count."""

    tokens: torch.Tensor | None = None  # (B, M, C) global, or (B, F, M_f, C) frame-aligned
    num_latent_frames: int = 0
    frame_aligned: bool = True
    concat_map: torch.Tensor | None = None  # (B, C_m, F, 1, 1) for channel_concat


def latent_groups(num_frames: int, temporal_compression: int) -> list[list[int]]:
    """Driving frame indices folded into each latent frame by Wan's causal VAE (1 + c*k frames)."""

    c = temporal_compression
    if (num_frames - 1) % c:
        raise ValueError(f"frame count {num_frames} must be 1 + {c}*k for a causal VAE with stride {c}")
    return [[0]] + [list(range(1 + c * k, 1 + c * (k + 1))) for k in range((num_frames - 1) // c)]


def group_by_latent_frame(tokens: torch.Tensor, temporal_compression: int) -> torch.Tensor:
    """(B, T, K, C) per-frame tokens -> (B, F, c*K, C): each latent frame's driving-frame tokens.

    The first latent frame holds one driving frame; its tokens are repeated ``c`` times so all groups
    have equal size. Repeating every key of a softmax attention the same number of times leaves its
    output unchanged, so this is exact attention over the frame's own tokens.
    """

    b, t, k, c_dim = tokens.shape
    c = temporal_compression
    groups = latent_groups(t, c)
    first = tokens[:, :1].expand(b, c, k, c_dim)  # (B, c, K, C)
    rest = tokens[:, 1:].reshape(b, len(groups) - 1, c, k, c_dim)  # (B, F-1, c, K, C)
    grouped = torch.cat([first.unsqueeze(1), rest], dim=1)  # (B, F, c, K, C)
    return grouped.flatten(2, 3)  # (B, F, c*K, C)


def make_motion_attention(dim: int, heads: int, eps: float = 1e-6) -> WanAttention:
    """A Wan cross-attention layer (query: video tokens, key/value: projected motion tokens), zero out."""

    attn = WanAttention(
        dim=dim,
        heads=heads,
        dim_head=dim // heads,
        eps=eps,
        cross_attention_dim_head=dim // heads,
        processor=WanAttnProcessor(),
    )
    nn.init.zeros_(attn.to_out[0].weight)
    nn.init.zeros_(attn.to_out[0].bias)
    return attn


class MotionInjectionProcessor:
    """``attn2`` processor: stock text cross-attention + motion cross-attention (``motion_attn``).

    ``motion_attn`` (and the sequential placement's query norm) are owned (registered) by the wrapper
    model, not by the block, so the pretrained key names of the Wan transformer are unchanged; the
    processor only holds references. In the sequential placement :meth:`norm2_pre_hook` must be
    registered as a forward pre-hook on the same block's ``norm2``.
    """

    def __init__(
        self, motion_attn: WanAttention, context: MotionContext, query_norm: nn.Module | None = None
    ) -> None:
        self.base = WanAttnProcessor()
        self.motion_attn = motion_attn
        self.context = context
        self.query_norm = query_norm  # set: sequential placement
        self._pending: torch.Tensor | None = None

    def _motion(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Motion cross-attention output for video tokens ``hidden_states`` (B, L, C)."""

        ctx = self.context
        tokens = ctx.tokens.to(hidden_states.dtype)
        if ctx.frame_aligned:
            b, length, c = hidden_states.shape
            f = ctx.num_latent_frames
            q = hidden_states.reshape(b * f, length // f, c)  # (B*F, h*w, C): one latent frame each
            return self.motion_attn(q, tokens.flatten(0, 1)).reshape(b, length, c)
        return self.motion_attn(hidden_states, tokens)

    def norm2_pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        """Sequential placement: ``norm2``'s input ``h`` -> ``h + M(LN(h))``; ``m`` kept for ``attn2``."""

        self._pending = None
        if self.context.tokens is None:
            return None
        h = args[0]  # (B, L, C) post-self-attention residual (float32 in Wan's block)
        dtype = self.motion_attn.to_q.weight.dtype
        m = self._motion(self.query_norm(h.to(dtype)))
        self._pending = m
        return (h + m.to(h.dtype), *args[1:])

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)  # (B, L, C)
        if self.context.tokens is None:
            return out
        if self.query_norm is not None:  # sequential: m was computed from h by the norm2 pre-hook
            m, self._pending = self._pending, None
            if m is None:
                raise RuntimeError("sequential motion injection: norm2 pre-hook did not run before attn2")
            return out + m.to(out.dtype)
        return out + self._motion(hidden_states)
