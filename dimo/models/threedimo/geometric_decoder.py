"""3DiMo geometric decoder D_g: per-frame motion tokens -> SMPL body pose + MANO hand poses.

A small MLP reads one frame's tokens ``[z_b; z_h]`` (K_b + K_h tokens of width D, flattened) and
predicts local joint rotations in the **6D representation** (Zhou et al. 2019; layout in
``docs/contracts.md``): 21 body joints (SMPL-X joints 1..21) and 2x15 hand joints (left then right),
no global orientation (the tokens are meant to be view-agnostic). 6D is continuous, so regression
is well posed; :func:`dimo.geometry.rotations.rot6d_to_matrix` turns it into rotation matrices.
The output is biased to the identity rotation at initialisation (the rest pose).
"""

from __future__ import annotations

import torch
from torch import nn

from dimo.geometry.skeleton import NUM_BODY_JOINTS, NUM_HAND_JOINTS

__all__ = ["GeometricDecoder"]

_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class GeometricDecoder(nn.Module):
    """(B, T, K, D) per-frame tokens -> body (B, T, 21, 6), hands (B, T, 30, 6) in 6D.

    Args:
        tokens_per_frame: K = K_b + K_h.
        dim: token width D.
        hidden: MLP width.
        layers: hidden layers (>= 1).
    """

    def __init__(self, tokens_per_frame: int = 10, dim: int = 64, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.num_body, self.num_hand = NUM_BODY_JOINTS, 2 * NUM_HAND_JOINTS
        mods: list[nn.Module] = [nn.LayerNorm(tokens_per_frame * dim)]
        width = tokens_per_frame * dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        self.mlp = nn.Sequential(*mods)
        self.head = nn.Linear(width, (self.num_body + self.num_hand) * 6)
        nn.init.normal_(self.head.weight, std=1e-3)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor(_IDENTITY_6D).repeat(self.num_body + self.num_hand))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.mlp(tokens.flatten(-2)))  # (B, T, 51*6)
        out = out.unflatten(-1, (self.num_body + self.num_hand, 6))  # (B, T, 51, 6)
        return out[..., : self.num_body, :], out[..., self.num_body :, :]
