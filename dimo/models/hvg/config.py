"""HVG network configuration and named presets (``tiny`` first, then the paper's ``svd-xt``).

:class:`HVGConfig` is the typed schema LightningCLI reads: the preset fixes the base SVD UNet shape
(and the shapes of the frozen VAE / CLIP image encoder), the remaining fields switch HVG's additions
on and off for ablations. ``svd-xt`` is the real SVD-xt UNet (1,524,623,082 parameters before HVG's
additions, ``stabilityai/stable-video-diffusion-img2vid-xt`` ``unet/config.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

PresetName = Literal["tiny", "svd-xt"]
PoseCondition = Literal["dual", "depth", "normal", "skeleton"]

#: Base UNet kwargs of :class:`diffusers.UNetSpatioTemporalConditionModel` per preset.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    # Channels must be multiples of 32 (GroupNorm(32)); 2 levels, one layer each. 16x16 latents (the
    # tiny VAE's 4x, see VAE_PRESETS) with 16 channels: in = noisy + reference latent.
    "tiny": {
        "sample_size": 16,
        "in_channels": 32,
        "out_channels": 16,
        "down_block_types": ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        "block_out_channels": (32, 64),
        "addition_time_embed_dim": 32,
        "projection_class_embeddings_input_dim": 96,
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "num_attention_heads": (2, 4),
        "num_frames": 4,
    },
    # diffusers' defaults with SVD-xt's num_frames (the defaults *are* the SVD UNet).
    "svd-xt": {
        "sample_size": 96,
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        "up_block_types": (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        "block_out_channels": (320, 640, 1280, 1280),
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 768,
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "num_attention_heads": (5, 10, 20, 20),
        "num_frames": 25,
    },
}

#: Frozen VAE (``AutoencoderKLTemporalDecoder``) kwargs per preset. SVD-xt downsamples by 8; the tiny
#: VAE by 4 (three levels) with 16 latent channels: the toy person is ~7% of a 64x64 frame with limbs
#: ~2 px wide, which an 8x8 latent grid cannot place (measured: 16 dB held-out at 8x, docs/hvg.md);
#: 16x16 latents keep the toy world's latent grid in proportion to paper scale (576 / 8 = 72). Its
#: top level is 64 wide: the decoder's last GroupNorm(32) then keeps 2 channels per group (with 32
#: channels it is a per-channel instance norm, which erases each channel's per-image mean).
VAE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "block_out_channels": (64, 64, 64),
        "layers_per_block": 1,
        "latent_channels": 16,
        "sample_size": 64,
    },
    "svd-xt": {
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 768,
    },
}

#: Frozen CLIP image encoder (``CLIPVisionConfig``) kwargs per preset (ViT-H/14 for SVD-xt).
CLIP_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    },
    "svd-xt": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "projection_dim": 1024,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "hidden_act": "gelu",
    },
}

#: Pose-guider channels (4 convs; the last log2(VAE factor) stride 2, down to the latent grid).
GUIDER_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (16, 16, 32, 32),
    "svd-xt": (16, 32, 96, 256),
}


@dataclass
class HVGConfig:
    """Shape (preset) and ablation switches of the HVG network.

    Args:
        preset: base UNet / VAE / CLIP shapes, see :data:`UNET_PRESETS`.
        pose_condition: ``dual`` (normal + depth guiders fused by cross-attention, the paper),
            ``depth`` or ``normal`` (one guider), ``skeleton`` (one guider on a rendered skeleton map,
            the paper's "skeleton map instead of bone map" ablation).
        view_attention: per-pixel attention across views in every spatio-temporal transformer block.
        camera_embedding: relative camera rotation added to the timestep embedding.
        reference_clip: CLIP image embedding of the reference into cross-attention.
        reference_latent: reference VAE latent concatenated to the noisy latent (SVD's 8 channels).
        reference_net: ReferenceNet features joined to the down/mid blocks' spatial self-attention.
        camera_frequencies: sinusoid frequencies per rotation entry of the camera embedding.
        fusion_heads: heads of the guiders' cross-attention fusion.
    """

    preset: PresetName = "tiny"
    pose_condition: PoseCondition = "dual"
    view_attention: bool = True
    camera_embedding: bool = True
    reference_clip: bool = True
    reference_latent: bool = True
    reference_net: bool = True
    camera_frequencies: int = 8
    fusion_heads: int = 4

    def unet_kwargs(self) -> dict[str, Any]:
        return dict(UNET_PRESETS[self.preset])

    def vae_kwargs(self) -> dict[str, Any]:
        return dict(VAE_PRESETS[self.preset])

    def clip_kwargs(self) -> dict[str, Any]:
        return dict(CLIP_PRESETS[self.preset])

    @property
    def latent_downsample(self) -> int:
        """Spatial factor of the VAE (``2 ** (levels - 1)``): 8 for SVD-xt, 4 for ``tiny``."""

        return 2 ** (len(VAE_PRESETS[self.preset]["block_out_channels"]) - 1)

    @property
    def guider_channels(self) -> tuple[int, int, int, int]:
        return GUIDER_PRESETS[self.preset]

    @property
    def pose_channels(self) -> dict[str, int]:
        """Input channels of each guider: normal (3), depth (1), skeleton map (3)."""

        return {
            "dual": {"normal": 3, "depth": 1},
            "depth": {"depth": 1},
            "normal": {"normal": 3},
            "skeleton": {"skeleton": 3},
        }[self.pose_condition]
