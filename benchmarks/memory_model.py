"""Memory model: will a config fit a GPU? Computed before launch, no GPU needed.

Per GPU, for one training step under DDP with ``bf16-mixed`` (fp32 master weights) and Adam/AdamW:

* trainable weights 4 B/param, gradients 4 B/param, Adam moments 8 B/param (16 B/param in all,
  replicated on every GPU under DDP; divided by the GPU count under FSDP full sharding);
* frozen encoders (VAE, text / CLIP encoder) at their stored dtype;
* activations: the bytes autograd *saves* for backward during the trainable network's forward at the
  config's real shape, counted on the ``meta`` device with ``saved_tensors_hooks`` (with gradient
  checkpointing on, only what the checkpointed regions keep: their inputs), in the compute dtype,
  plus the largest checkpointed block's own saved bytes (it is recomputed, alone, during backward);
* a fixed 10% allowance for the allocator's fragmentation, CUDA context and workspace.

Element-wise temporaries that are freed inside a block (e.g. Wan's fp32 per-token modulation) are
not in the saved bytes; the 10% allowance is meant for them and is not a measured figure.
``python benchmarks/memory_model.py`` prints the verdict of every paper config on 80 and 141 GB GPUs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.utils.checkpoint
from torch import nn

GIB = 2**30
OVERHEAD = 0.10


@dataclass
class MemoryEstimate:
    config: str
    trainable_params: int
    frozen_params: int
    states_gib: float  # weights + grads + Adam of the trainable part (per GPU)
    frozen_gib: float
    activations_gib: float
    total_gib: float

    def fits(self, gpu_gb: float) -> bool:
        return self.total_gib * GIB <= gpu_gb * 1e9


class _FlashLikeAttention(torch.autograd.Function):
    """What a fused (flash / memory-efficient / cuDNN) SDPA kernel keeps for backward: q, k, v, the
    output and the fp32 log-sum-exp, never the N x M probabilities (meta/CPU SDPA would save those)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - never run (meta counting only)
        raise NotImplementedError


def _fused_sdpa(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    return _FlashLikeAttention.apply(query, key, value)


def saved_bytes(fn: Callable[[], object], exclude: nn.Module | None = None) -> int:
    """Bytes autograd saves for backward while ``fn`` runs (each storage once; parameters excluded),
    with attention saving what a fused GPU kernel saves (:class:`_FlashLikeAttention`)."""

    params = set()
    if exclude is not None:
        params = {id(p.untyped_storage()) for p in exclude.parameters()}
        params |= {p.untyped_storage()._cdata for p in exclude.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = storage.nbytes()
        return t

    import torch.nn.functional as F

    real = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        F.scaled_dot_product_attention = real
    return sum(seen.values())


def _states(trainable: int, shards: int = 1) -> int:
    return 16 * trainable // shards


def estimate(
    name: str,
    trainable: int,
    frozen_bytes: int,
    frozen_params: int,
    activation_bytes: int,
    shards: int = 1,
) -> MemoryEstimate:
    states = _states(trainable, shards)
    total = (states + frozen_bytes + activation_bytes) * (1 + OVERHEAD)
    return MemoryEstimate(
        name, trainable, frozen_params, states / GIB, frozen_bytes / GIB, activation_bytes / GIB, total / GIB
    )


# ---- 3DiMo --------------------------------------------------------------------------------------
def threedimo_activation_bytes(
    net_kwargs: dict,
    batch: int,
    frames: int,
    height: int,
    width: int,
    checkpointing: bool,
    dtype=torch.bfloat16,
) -> int:
    """Saved bytes of ThreeDiMoNet's training forward on meta (+ one recomputed block if checkpointing)."""

    from dimo.models.threedimo import ThreeDiMoNet

    with torch.device("meta"):
        net = ThreeDiMoNet(**net_kwargs).to("meta", dtype)
        tr = net.transformer
        regions: list[int] = []  # saved bytes of each checkpointed region (recomputed one at a time)
        if checkpointing:

            def measure(module, *args):
                regions.append(saved_bytes(lambda: module(*args), exclude=net))
                return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

            tr.enable_gradient_checkpointing(measure)
            for enc in (net.encoders.body, net.encoders.hands):
                enc.gradient_checkpointing = True
        wan = tr.transformer.config
        f = 1 + (frames - 1) // 4
        n = f * (height // 16) * (width // 16)
        driving = torch.empty(batch, frames, 3, height, width, dtype=dtype)
        latents = torch.empty(batch, wan.in_channels, f, height // 8, width // 8, dtype=dtype)
        timestep = torch.empty(batch, n, dtype=dtype)
        text = torch.empty(batch, 512, wan.text_dim, dtype=dtype)

        def forward():
            z = net.encoders(driving)
            net.geo_decoder(net.encoders.per_frame(z, frames))
            tr(latents, timestep, text, motion=z, num_motion_frames=frames)

        total = saved_bytes(forward, exclude=net)
    return total + max(regions, default=0)


# ---- HVG ------------------------------------------------------------------------------------------
def hvg_activation_bytes(
    preset: str, batch: int, views: int, frames: int, size: int, checkpointing: bool, dtype=torch.bfloat16
) -> int:
    from dimo.models.hvg import HVGConfig
    from dimo.models.hvg.network import HVGUNet

    cfg = HVGConfig(preset=preset)
    with torch.device("meta"):
        net = HVGUNet(cfg).to("meta", dtype)
        c, cross = cfg.unet_kwargs()["out_channels"], cfg.unet_kwargs()["cross_attention_dim"]
        h = size // 8
        inputs = dict(
            sample=torch.empty(batch, views, frames, c, h, h, dtype=dtype),
            timestep=torch.empty(batch),
            encoder_hidden_states=torch.empty(batch, 1, cross, dtype=dtype),
            added_time_ids=torch.empty(batch, 3, dtype=dtype),
            cond_latent=torch.empty(batch, c, h, h, dtype=dtype),
            reference_latent=torch.empty(batch, c, h, h, dtype=dtype),
            pose_maps={
                k: torch.empty(batch, views, frames, ch, size, size, dtype=dtype)
                for k, ch in cfg.pose_channels.items()
            },
            rel_rot=torch.empty(batch, views, 3, 3, dtype=dtype),
        )
        if not checkpointing:
            return saved_bytes(lambda: net(**inputs), exclude=net)
        net.enable_gradient_checkpointing()
        total = saved_bytes(lambda: net(**inputs), exclude=net)
        # the largest recomputed region: the first (highest-resolution) resnet or spatial block
        sizes = []
        orig = net._checkpoint

        def measure(module, *args):
            sizes.append(saved_bytes(lambda: module(*args), exclude=net))
            return orig(module, *args)

        net.enable_gradient_checkpointing(measure)
        net(**inputs)
        return total + max(sizes)


def _count(module_fn: Callable[[], nn.Module]) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in module_fn().parameters())


# ---- the paper configs -----------------------------------------------------------------------------
PAPER_3DIMO_NET = dict(
    backbone="wan2.1-t2v-1.3b", image_size=(256, 448), patch_size=16, hand_crop=64,
    motion_dim=512, motion_depth=6, motion_heads=8, geo_hidden=1024,
)  # fmt: skip
UMT5_XXL_PARAMS = 5_680_910_336  # google/umt5-xxl encoder (Wan's text encoder), bf16 on the GPU
WAN_VAE_PARAMS = 126_892_531  # Wan2.1 VAE


def paper_estimates() -> list[MemoryEstimate]:
    from dimo.models.hvg import HVGConfig
    from dimo.models.hvg.network import HVGUNet, build_image_encoder, build_vae
    from dimo.models.threedimo import ThreeDiMoNet

    out = []
    trainable = _count(lambda: ThreeDiMoNet(**PAPER_3DIMO_NET))
    frozen = UMT5_XXL_PARAMS + WAN_VAE_PARAMS
    for b, ckpt in ((8, True), (1, True), (1, False)):
        act = threedimo_activation_bytes(PAPER_3DIMO_NET, b, 121, 480, 848, ckpt)
        name = f"3dimo_paper (1.3B), {b} clip/GPU x 121 x 480x848, {'ckpt' if ckpt else 'no ckpt'}"
        out.append(estimate(name, trainable, 2 * frozen, frozen, act))
    cfg = HVGConfig(preset="svd-xt")
    trainable = _count(lambda: HVGUNet(cfg))
    frozen = _count(lambda: build_vae(cfg)) + _count(lambda: build_image_encoder(cfg))
    for label, b, v, t in (("phase1", 2, 48, 1), ("phase1", 1, 48, 1), ("phase2", 1, 3, 24)):
        for ckpt in (True, False):
            act = hvg_activation_bytes("svd-xt", b, v, t, 576, ckpt)
            name = (
                f"hvg_paper_{label}, {b} x {v} views x {t} frames at 576^2, {'ckpt' if ckpt else 'no ckpt'}"
            )
            out.append(estimate(name, trainable, 4 * frozen, frozen, act))
    return out


if __name__ == "__main__":
    rows = []
    for e in paper_estimates():
        rows.append({**asdict(e), "fits_80GB": e.fits(80), "fits_141GB": e.fits(141)})
    print(json.dumps(rows, indent=2))
