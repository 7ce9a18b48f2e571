"""Wan's block modulation in the compute dtype (``bf16_modulation``), a memory option for long clips.

diffusers' ``WanTransformerBlock`` adds its ``scale_shift_table`` to the timestep projection *in fp32*
(``temb.float()``). With 3DiMo's per-token timesteps (T2V presets: the reference frame's tokens at
timestep 0) that projection is (B, N, 6, D): at the paper's 121 x 480x848 clip (N = 49,290 tokens,
D = 1536) the fp32 sum is 1.8 GB per clip in every block, and its chunks (shift/scale/gate) are what the
modulation multiplies save for backward (a checkpointed block keeps them while it is recomputed).

:class:`CompactModulationWanBlock` is the same block (same parameters, same state-dict keys, a
subclass, so FSDP wrap / checkpoint policies on ``WanTransformerBlock`` still match) whose forward
keeps the modulation tensors in ``temb``'s dtype (bf16 under ``bf16-mixed``) and does the modulation
products in that dtype. The layer norms still normalise in fp32 (``FP32LayerNorm``) and the residual
sums are still taken in fp32 and rounded once, as upstream. In fp32 training it computes exactly what
diffusers' block does (same operations, same order); under bf16 its outputs differ by bf16 rounding
(tested close on the tiny preset, ``tests/test_scale_modulation.py``).
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch import nn

__all__ = ["CompactModulationWanBlock", "set_compact_modulation"]


class CompactModulationWanBlock(WanTransformerBlock):
    """``WanTransformerBlock`` with its modulation (shift/scale/gate) in ``temb``'s dtype, not fp32."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: torch.Tensor,
    ) -> torch.Tensor:
        table = self.scale_shift_table.to(temb.dtype)  # (1, 6, D); autograd reaches the fp32 master
        if temb.ndim == 4:  # per-token timesteps: temb (B, N, 6, D) -> six (B, N, D)
            mod = (table.unsqueeze(0) + temb).unbind(2)
        else:  # one timestep per sample: temb (B, 6, D) -> six (B, 1, D)
            mod = (table + temb).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mod
        dtype = hidden_states.dtype

        # 1. Self-attention (norm1 normalises in fp32 and returns the compute dtype)
        norm_hidden_states = (self.norm1(hidden_states) * (1 + scale_msa) + shift_msa).to(dtype)
        attn_output = self.attn1(norm_hidden_states, None, None, rotary_emb)
        hidden_states = (hidden_states.float() + attn_output * gate_msa).to(dtype)

        # 2. Cross-attention (text; 3DiMo's motion injection runs in attn2's processor), as upstream
        norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
        attn_output = self.attn2(norm_hidden_states, encoder_hidden_states, None, None)
        hidden_states = hidden_states + attn_output

        # 3. Feed-forward
        norm_hidden_states = (self.norm3(hidden_states) * (1 + c_scale_msa) + c_shift_msa).to(dtype)
        ff_output = self.ffn(norm_hidden_states)
        return (hidden_states.float() + ff_output * c_gate_msa).to(dtype)


def set_compact_modulation(module: nn.Module, enabled: bool = True) -> int:
    """Switch every Wan block under ``module`` to (or back from) :class:`CompactModulationWanBlock`.

    Only the class changes (parameters, buffers, hooks and processors stay); returns how many blocks.
    """

    target = CompactModulationWanBlock if enabled else WanTransformerBlock
    n = 0
    for layer in module.modules():
        if isinstance(layer, WanTransformerBlock):
            layer.__class__ = target
            n += 1
    return n
