"""Model FLOPs of a training step and MFU, the way the scaling literature counts them.

``model FLOPs / step = 3 x forward FLOPs of the trainable network`` (forward once, backward twice):

* no activation recomputation (gradient checkpointing is an implementation choice, not model work);
* no frozen encoders (VAE, text encoder, CLIP image encoder: their outputs could be cached);
* a matmul of (m, k) x (k, n) is ``2 m k n``; attention over N queries and M keys of width d (all
  heads together) is ``4 N M d`` forward (QK^T and PV), so self-attention is ``4 N^2 d`` per layer;
* element-wise work (norms, activations, softmax, RoPE, modulation) is not counted.

``MFU = model FLOPs per step / step time / spec dense bf16 peak of the GPU`` (:data:`SPEC_BF16_PEAK`,
datasheet numbers, dense, no sparsity). A measured GEMM ceiling (``bench_train.peak_bf16_matmul_flops``)
is reported beside it, never used as the denominator.

3DiMo (Wan DiT + motion injection + motion encoders + geometric decoder): :func:`threedimo_forward_flops`
is analytic, term by term (tested against :class:`torch.utils.flop_counter.FlopCounterMode` on the meta
device at real width). HVG (SVD UNet: convolutions at four resolutions): :func:`counted_forward_flops`
counts the forward of the trainable network (UNet + HVG layers + ReferenceNet) on the meta device,
which has no recomputation and no frozen encoder by construction; both follow the same conventions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets (SXM parts, no sparsity).
SPEC_BF16_PEAK: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
}


def spec_peak(device_name: str) -> float | None:
    """Spec dense bf16 peak of a GPU by its name (``torch.cuda.get_device_name``); None if unknown."""

    for key, value in SPEC_BF16_PEAK.items():
        if key in device_name.upper():
            return value
    return None


def mfu(model_flops_per_step: float, step_seconds: float, peak_flops: float) -> float:
    return model_flops_per_step / step_seconds / peak_flops


def attention(queries: int, keys: int, width: int) -> int:
    """Forward FLOPs of softmax attention (all heads; ``width`` = heads x head_dim): QK^T + PV."""

    return 4 * queries * keys * width


def linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


@dataclass(frozen=True)
class WanShape:
    """One 3DiMo training sample's sizes, as the network sees them."""

    latent_frames: int  # F (Wan VAE: 1 + (frames - 1) / 4)
    latent_height: int  # h = H / 8
    latent_width: int  # w = W / 8
    text_tokens: int = 512  # Wan pads prompts to 512
    per_token_timestep: bool = True  # T2V with the reference as the first latent frame (timestep 0)


def wan_forward_flops(cfg: dict, shape: WanShape, batch: int = 1) -> dict[str, int]:
    """Forward FLOPs of a diffusers ``WanTransformer3DModel`` (T2V: no image branch), by term."""

    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    d, ffn, layers = heads * head_dim, cfg["ffn_dim"], cfg["num_layers"]
    pt, ph, pw = cfg["patch_size"]
    if cfg.get("image_dim") is not None:
        raise NotImplementedError("I2V image branch not counted; use counted_forward_flops")
    n = (shape.latent_frames // pt) * (shape.latent_height // ph) * (shape.latent_width // pw)
    text = shape.text_tokens
    patch_vol = pt * ph * pw
    time_rows = n if shape.per_token_timestep else 1
    out = {
        "patch_embedding": linear(n, cfg["in_channels"] * patch_vol, d),
        "time_embedding": linear(time_rows, cfg["freq_dim"], d)
        + linear(time_rows, d, d)
        + linear(time_rows, d, 6 * d),
        "text_embedding": linear(text, cfg["text_dim"], d) + linear(text, d, d),
        "self_attn_proj": layers * 4 * linear(n, d, d),
        "self_attn": layers * attention(n, n, d),
        "text_attn_proj": layers * (2 * linear(n, d, d) + 2 * linear(text, d, d)),
        "text_attn": layers * attention(n, text, d),
        "ffn": layers * 2 * linear(n, d, ffn),
        "proj_out": linear(n, d, cfg["out_channels"] * patch_vol),
    }
    return {k: batch * v for k, v in out.items()}


def motion_injection_flops(
    cfg: dict, shape: WanShape, motion_dim: int, tokens_per_frame: int, frames: int, batch: int = 1
) -> dict[str, int]:
    """3DiMo's cross-attention injection (frame-aligned): one WanAttention per block + the projection of
    the motion tokens. Each latent frame's h'*w' video tokens attend to the tokens of the ``c = 4``
    driving frames folded into it (the first frame's tokens repeated, see ``group_by_latent_frame``)."""

    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    d, layers = heads * head_dim, cfg["num_layers"]
    pt, ph, pw = cfg["patch_size"]
    f = shape.latent_frames // pt
    n = f * (shape.latent_height // ph) * (shape.latent_width // pw)
    keys_per_frame = 4 * tokens_per_frame  # c * K
    kv_rows = f * keys_per_frame
    out = {
        "motion_proj": linear(frames * tokens_per_frame, motion_dim, d),
        "motion_attn_proj": layers * (2 * linear(n, d, d) + 2 * linear(kv_rows, d, d)),
        "motion_attn": layers * attention(n, keys_per_frame, d),
    }
    return {k: batch * v for k, v in out.items()}


def titok_forward_flops(
    images: int, image_size: tuple[int, int], patch: int, dim: int, depth: int, tokens: int
) -> int:
    """One TiTok encoder (pre-norm ``nn.TransformerEncoderLayer``, FFN 4x) over ``images`` frames."""

    patches = (image_size[0] // patch) * (image_size[1] // patch)
    seq = patches + tokens
    per_layer = 4 * linear(seq, dim, dim) + 2 * linear(seq, dim, 4 * dim) + attention(seq, seq, dim)
    return images * (linear(patches, 3 * patch * patch, dim) + depth * per_layer)


def threedimo_forward_flops(
    net_config: dict, frames: int, height: int, width: int, batch: int = 1
) -> dict[str, int]:
    """Forward FLOPs of :class:`~dimo.models.threedimo.ThreeDiMoNet` (``net_config``: its ``config``
    dict) on ``batch`` clips of ``frames`` frames at ``height x width``, by term."""

    from dimo.models.threedimo.backbone import WAN_PRESETS

    wan = dict(net_config.get("backbone_config") or WAN_PRESETS[net_config["backbone"]])
    wan["patch_size"] = tuple(wan["patch_size"])
    shape = WanShape(1 + (frames - 1) // 4, height // 8, width // 8)
    out = wan_forward_flops(wan, shape, batch)
    k = net_config["body_tokens"] + net_config["hand_tokens"]
    dim, depth = net_config["motion_dim"], net_config["motion_depth"]
    if net_config.get("injection", "cross_attention") == "cross_attention":
        out.update(motion_injection_flops(wan, shape, dim, k, frames, batch))
    crop = net_config["hand_crop"]
    images = batch * frames
    size = tuple(net_config["image_size"])
    out["body_encoder"] = titok_forward_flops(
        images, size, net_config["patch_size"], dim, depth, net_config["body_tokens"]
    )
    out["hand_encoder"] = titok_forward_flops(
        images, (crop, 2 * crop), 8, dim, depth, net_config["hand_tokens"]
    )
    hidden, hl = net_config["geo_hidden"], net_config["geo_layers"]
    out["geo_decoder"] = images * (
        linear(1, k * dim, hidden) + (hl - 1) * linear(1, hidden, hidden) + linear(1, hidden, 51 * 6)
    )
    return out


def counted_forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn`` (a forward on meta tensors) by :class:`~torch.utils.flop_counter.FlopCounterMode`."""

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def hvg_forward_flops(preset: str, views: int, frames: int, height: int, width: int, batch: int = 1) -> int:
    """Forward FLOPs of the trainable HVG network (UNet + HVG layers + ReferenceNet), counted on meta."""

    from dimo.models.hvg import HVGConfig
    from dimo.models.hvg.network import HVGUNet

    cfg = HVGConfig(preset=preset)
    with torch.device("meta"):
        net = HVGUNet(cfg).to("meta")  # diffusers' AlphaBlender makes its mix factor on the CPU
        c = cfg.unet_kwargs()["out_channels"]
        cross = cfg.unet_kwargs()["cross_attention_dim"]
        h, w = height // cfg.latent_downsample, width // cfg.latent_downsample  # the preset's VAE grid
        pose = {
            k: torch.empty(batch, views, frames, ch, height, width) for k, ch in cfg.pose_channels.items()
        }
        inputs = dict(
            sample=torch.empty(batch, views, frames, c, h, w),
            timestep=torch.empty(batch),
            encoder_hidden_states=torch.empty(batch, 1, cross),
            added_time_ids=torch.empty(batch, 3),
            cond_latent=torch.empty(batch, c, h, w),
            reference_latent=torch.empty(batch, c, h, w),
            pose_maps=pose,
            rel_rot=torch.empty(batch, views, 3, 3),
        )
        return counted_forward_flops(lambda: net(**inputs))


def train_step_model_flops(forward_flops: int) -> int:
    """Model FLOPs of one training step: forward + backward (2x forward), no recomputation."""

    return 3 * forward_flops
