"""3DiMo motion encoders E_b (body) and E_h (hands): TiTok-style 1D tokenizers.

Each driving frame is patchified, K learnable latent tokens are appended, a few pre-norm transformer
layers mix them, and only the K latent tokens are kept; the frames' tokens form the motion sequence
(B, T*K, D). Body and hand tokens are joined **frame by frame**: ``z`` is (B, T*(K_b + K_h), D) laid out
frame-major, ``[z_b(0); z_h(0); z_b(1); z_h(1); ...]``, so ``z.reshape(B, T, K_b + K_h, D)`` gives each
frame's own body then hand tokens (the layout the backbone's frame-aligned injection relies on).

How the hand encoder sees the hands (our choice; the paper does not say): per frame, a square crop
around each wrist is cut from the driving frame (left hand in the left half, right hand in the right
half of one ``crop x 2*crop`` image). The crop is centred on the mean of the visible wrist and finger
joints of ``joints2d`` and sized to ``hand_crop_scale`` times their extent (at least
``min_crop_frac`` of the frame). When a hand has no valid 2D joints (or no ``joints2d`` is given,
e.g. at inference without a keypoint detector), that half shows the whole frame instead, so E_h
still gets an image. Crops use bilinear ``grid_sample`` with zero padding outside the frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dimo.geometry.skeleton import LEFT_HAND_IDS, RIGHT_HAND_IDS

__all__ = ["TiTokEncoder", "MotionEncoders", "hand_crops", "LEFT_WRIST", "RIGHT_WRIST"]

LEFT_WRIST, RIGHT_WRIST = 20, 21  # SMPL-X joint ids


class TiTokEncoder(nn.Module):
    """One TiTok-style 1D tokenizer: (B, T, 3, H, W) -> (B, T*K, D).

    Args:
        image_size: (H, W) the frames are resized to before patchifying.
        patch_size: square patch side in pixels.
        dim: token width D.
        depth: transformer layers.
        heads: attention heads.
        num_tokens: K latent tokens kept per frame.
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (64, 64),
        patch_size: int = 8,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        num_tokens: int = 5,
    ) -> None:
        super().__init__()
        h, w = image_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")
        self.image_size = (h, w)
        self.num_tokens = num_tokens
        num_patches = (h // patch_size) * (w // patch_size)
        self.patchify = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.randn(1, num_patches, dim) * 0.02)
        self.latents = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=4 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.gradient_checkpointing = False  # recompute each layer in backward (same gradients)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1)  # (B*T, 3, H, W)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        x = self.patchify(x).flatten(2).transpose(1, 2) + self.pos  # (B*T, N, D)
        x = torch.cat([x, self.latents.expand(x.shape[0], -1, -1)], dim=1)  # (B*T, N+K, D)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            for layer in self.blocks.layers:
                x = checkpoint(layer, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        x = x[:, -self.num_tokens :]  # keep the K latent tokens
        return self.norm(x).reshape(b, t * self.num_tokens, -1)  # (B, T*K, D)


def hand_crops(
    frames: torch.Tensor,
    joints2d: torch.Tensor | None,
    joints2d_valid: torch.Tensor | None,
    crop: int,
    scale: float = 1.6,
    min_crop_frac: float = 0.12,
) -> torch.Tensor:
    """(B, T, 3, H, W) frames -> (B, T, 3, crop, 2*crop): [left hand | right hand] per frame.

    ``joints2d`` (B, T, 55, 2) pixel coordinates (contract: pixel (i, j) centre at (j+.5, i+.5)),
    ``joints2d_valid`` (B, T, 55). A hand with no valid wrist/finger joint shows the whole frame.
    """

    b, t, c, h, w = frames.shape
    x = frames.flatten(0, 1)  # (N, 3, H, W)
    n = x.shape[0]
    whole = F.interpolate(x, size=(crop, crop), mode="bilinear", align_corners=False, antialias=True)
    if joints2d is None:
        return torch.cat([whole, whole], dim=-1).reshape(b, t, c, crop, 2 * crop)
    j2d = joints2d.flatten(0, 1).to(x.dtype)  # (N, 55, 2)
    valid = (
        joints2d_valid.flatten(0, 1)
        if joints2d_valid is not None
        else torch.ones(j2d.shape[:2], dtype=torch.bool, device=x.device)
    )
    halves = []
    for wrist, fingers in ((LEFT_WRIST, LEFT_HAND_IDS), (RIGHT_WRIST, RIGHT_HAND_IDS)):
        ids = torch.tensor([wrist, *fingers], device=x.device)
        pts, ok = j2d[:, ids], valid[:, ids]  # (N, 16, 2), (N, 16)
        okf = ok.unsqueeze(-1).to(x.dtype)
        count = okf.sum(1).clamp_min(1)  # (N, 1)
        centre = (pts * okf).sum(1) / count  # (N, 2) pixels
        big = torch.finfo(x.dtype).max
        lo = torch.where(ok.unsqueeze(-1), pts, torch.full_like(pts, big)).amin(1)
        hi = torch.where(ok.unsqueeze(-1), pts, torch.full_like(pts, -big)).amax(1)
        extent = (hi - lo).amax(-1).clamp_min(0)  # (N,)
        side = torch.maximum(extent * scale, extent.new_full((), min_crop_frac * max(h, w)))
        # affine grid in normalised coords (align_corners=False: -1..1 spans the pixel edges)
        theta = x.new_zeros(n, 2, 3)
        theta[:, 0, 0] = side / w
        theta[:, 1, 1] = side / h
        theta[:, 0, 2] = centre[:, 0] / w * 2 - 1
        theta[:, 1, 2] = centre[:, 1] / h * 2 - 1
        grid = F.affine_grid(theta, (n, c, crop, crop), align_corners=False)
        cropped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        has = ok.any(1).view(n, 1, 1, 1)
        halves.append(torch.where(has, cropped, whole))
    return torch.cat(halves, dim=-1).reshape(b, t, c, crop, 2 * crop)


class MotionEncoders(nn.Module):
    """E_b and E_h together: driving frames (+ 2D joints) -> z (B, T*(K_b+K_h), D), frame-major.

    Args:
        image_size: body encoder input (H, W).
        patch_size: body patch side.
        hand_crop: side of each hand crop (the hand image is ``hand_crop x 2*hand_crop``).
        hand_patch_size: hand patch side.
        dim, depth, heads: transformer width, layers and heads (shared by both encoders).
        body_tokens, hand_tokens: K_b, K_h latent tokens per frame (paper: 5).
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (64, 64),
        patch_size: int = 8,
        hand_crop: int = 32,
        hand_patch_size: int = 8,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        body_tokens: int = 5,
        hand_tokens: int = 5,
    ) -> None:
        super().__init__()
        self.hand_crop = hand_crop
        self.body_tokens, self.hand_tokens, self.dim = body_tokens, hand_tokens, dim
        self.body = TiTokEncoder(image_size, patch_size, dim, depth, heads, body_tokens)
        self.hands = TiTokEncoder((hand_crop, 2 * hand_crop), hand_patch_size, dim, depth, heads, hand_tokens)

    @property
    def tokens_per_frame(self) -> int:
        return self.body_tokens + self.hand_tokens

    def forward(
        self,
        driving: torch.Tensor,
        joints2d: torch.Tensor | None = None,
        joints2d_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t = driving.shape[:2]
        z_b = self.body(driving).reshape(b, t, self.body_tokens, -1)  # (B, T, K_b, D)
        crops = hand_crops(driving, joints2d, joints2d_valid, self.hand_crop)
        z_h = self.hands(crops).reshape(b, t, self.hand_tokens, -1)  # (B, T, K_h, D)
        return torch.cat([z_b, z_h], dim=2).flatten(1, 2)  # (B, T*(K_b+K_h), D), frame-major

    def per_frame(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """View z (B, T*(K_b+K_h), D) as (B, T, K_b+K_h, D): each frame's body then hand tokens."""

        return z.reshape(z.shape[0], num_frames, self.tokens_per_frame, -1)
