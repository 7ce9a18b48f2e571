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
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

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


class SavedCounter:
    """Counts the bytes autograd saves for backward (each storage once, parameters excluded), with
    attention saving what a fused GPU kernel saves (:class:`_FlashLikeAttention`), plus any tensor
    :meth:`add`-ed (the inputs a checkpointed region keeps alive by reference, which autograd's hooks
    never see)."""

    def __init__(self, exclude: nn.Module | None = None):
        self.params: set[int] = set()
        if exclude is not None:
            self.params = {p.untyped_storage()._cdata for p in exclude.parameters()}
        self.seen: dict[int, int] = {}

    def add(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in self.params:
            self.seen[storage._cdata] = storage.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def run(self, fn: Callable[[], object]):
        import torch.nn.functional as F

        real = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = _fused_sdpa
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.add, lambda t: t):
                return fn()
        finally:
            F.scaled_dot_product_attention = real


def saved_bytes(fn: Callable[[], object], exclude: nn.Module | None = None) -> int:
    """Bytes autograd saves for backward while ``fn`` runs (see :class:`SavedCounter`)."""

    counter = SavedCounter(exclude)
    counter.run(fn)
    return counter.total


def _tensors(obj) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def checkpointed_bytes(fn: Callable[[], object], exclude: nn.Module, install: Callable) -> int:
    """Saved bytes of ``fn`` with gradient checkpointing: what the un-checkpointed code saves, the
    inputs every checkpointed region keeps (by reference, for recomputation), and the largest region's
    own saved bytes once (it is recomputed, alone, during backward).

    ``install(measure)`` must route every checkpointed call through ``measure(region_fn, *args,
    **kwargs)``, which runs the region with its saved bytes counted apart (not kept).
    """

    outer = SavedCounter(exclude)
    regions: list[int] = []

    def measure(region_fn, *args, **kwargs):
        for t in _tensors((args, kwargs)):
            outer.add(t)
        inner = SavedCounter(exclude)
        out = inner.run(lambda: region_fn(*args, **kwargs))
        regions.append(inner.total)
        return out

    install(measure)
    outer.run(fn)
    return outer.total + max(regions, default=0)


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


def fsdp_estimate(
    name: str,
    trainable: int,
    root_params: int,
    unit_params: int,
    frozen_params: int,
    activation_bytes: int,
    shards: int,
) -> MemoryEstimate:
    """Per GPU under FSDP full sharding (``bf16-mixed``: parameters gathered in bf16):

    * weights + grads + Adam of every trainable parameter, 16 B / ``shards``;
    * the root unit (every parameter outside the wrapped blocks) gathered for the whole step, bf16
      params + bf16 unsharded grads before their reduce-scatter: 4 B x ``root_params``;
    * two block units gathered at a time (the running one + the prefetched next), params + grads:
      2 x 4 B x ``unit_params``;
    * frozen encoders in the root unit: gathered (bf16) for the whole step, 2 B x ``frozen_params``;
    * activations as under DDP; the same 10% allowance.
    """

    states = _states(trainable, shards)
    gathered = 4 * root_params + 8 * unit_params
    frozen = 2 * frozen_params
    total = (states + gathered + frozen + activation_bytes) * (1 + OVERHEAD)
    return MemoryEstimate(
        name,
        trainable,
        frozen_params,
        (states + gathered) / GIB,
        frozen / GIB,
        activation_bytes / GIB,
        total / GIB,
    )


def deepspeed_estimate(
    name: str,
    stage: int,
    trainable: int,
    unit_params: int,
    frozen_params: int,
    activation_bytes: int,
    gpus: int,
) -> MemoryEstimate:
    """Per GPU under DeepSpeed ZeRO with ``bf16-mixed`` (the ZeRO paper's accounting, K = 12 B of
    fp32 master weights + Adam moments per trainable parameter):

    * stage 2: bf16 parameters replicated (2 B x trainable), bf16 gradients and the 12 B of optimiser
      state partitioned: (2 + 12) B x trainable / ``gpus``; the frozen encoders replicated (2 B each);
    * stage 3: parameters partitioned too, (2 + 2 + 12) B x trainable / ``gpus``, the frozen encoders
      partitioned as well (ZeRO-3 partitions every parameter of the module, 2 B / ``gpus``), plus the
      gathered working set: the running and the prefetched block, params + grads, 2 x 4 B x
      ``unit_params`` (as for FSDP; the motion layers are gathered per module by ZeRO-3's hooks, so no
      root unit stays gathered);
    * activations as under DDP; the same 10% allowance. Communication buckets (200 M elements each
      by default, bf16: 0.4 GB for allgather and for reduce) are inside the allowance.
    """

    if stage == 2:
        states = 2 * trainable + 14 * trainable // gpus
        frozen = 2 * frozen_params
    elif stage == 3:
        states = 16 * trainable // gpus + 8 * unit_params
        frozen = 2 * frozen_params // gpus
    else:
        raise ValueError(f"ZeRO stage must be 2 or 3, got {stage}")
    total = (states + frozen + activation_bytes) * (1 + OVERHEAD)
    return MemoryEstimate(
        name, trainable, frozen_params, states / GIB, frozen / GIB, activation_bytes / GIB, total / GIB
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
    spatial_compression: int = 8,
    text_length: int = 512,
    bf16_modulation: bool = False,
) -> int:
    """Saved bytes of ThreeDiMoNet's training forward on meta (+ one recomputed block if checkpointing).

    ``spatial_compression``: the VAE's (Wan2.1: 8; the toy Wan VAE: 4), which sets the latent grid;
    ``text_length``: text tokens per prompt (Wan: 512; the toy configs: 48); ``bf16_modulation``: the
    module option of that name (Wan blocks' (B, N, 6, D) modulation in ``dtype``, not fp32).
    """

    import dimo.models.threedimo.motion_encoder as motion_encoder
    from dimo.models.threedimo import ThreeDiMoNet
    from dimo.models.threedimo.modulation import set_compact_modulation

    with torch.device("meta"):
        net = ThreeDiMoNet(**net_kwargs).to("meta", dtype)
        set_compact_modulation(net, bf16_modulation)
        tr = net.transformer
        wan = tr.transformer.config
        f = 1 + (frames - 1) // 4
        lh, lw = height // spatial_compression, width // spatial_compression
        n = f * (lh // 2) * (lw // 2)
        driving = torch.empty(batch, frames, 3, height, width, dtype=dtype)
        extra = {}
        channels = wan.in_channels
        if tr.is_i2v:  # 16 noisy + 4 mask + 16 reference-condition channels; 257 CLIP ViT-H tokens
            channels = wan.in_channels - 20
            extra["condition"] = torch.empty(batch, 20, f, lh, lw, dtype=dtype)
            extra["image_embeds"] = torch.empty(batch, 257, wan.image_dim, dtype=dtype)
        latents = torch.empty(batch, channels, f, lh, lw, dtype=dtype)
        # T2V: per-token timesteps (the reference frame's tokens at 0); I2V: one per sample (module.py)
        timestep = torch.empty(batch, dtype=dtype) if tr.is_i2v else torch.empty(batch, n, dtype=dtype)
        text = torch.empty(batch, text_length, wan.text_dim, dtype=dtype)

        def forward():
            z = net.encoders(driving)
            net.geo_decoder(net.encoders.per_frame(z, frames))
            tr(latents, timestep, text, motion=z, num_motion_frames=frames, **extra)

        if not checkpointing:
            return saved_bytes(forward, exclude=net)

        real = motion_encoder.checkpoint

        def install(measure):
            tr.enable_gradient_checkpointing(lambda module, *a: measure(module.__call__, *a))
            for enc in (net.encoders.body, net.encoders.hands):
                enc.gradient_checkpointing = True
            motion_encoder.checkpoint = lambda fn, *a, use_reentrant=False, **k: measure(fn, *a, **k)

        try:
            return checkpointed_bytes(forward, net, install)
        finally:
            motion_encoder.checkpoint = real


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
        h = size // cfg.latent_downsample  # the preset's VAE grid (SVD-xt 8x, the toy VAE 4x)
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
        return checkpointed_bytes(
            lambda: net(**inputs), net, lambda measure: net.enable_gradient_checkpointing(measure)
        )


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
CLIP_VIT_H_PARAMS = 632_076_800  # Wan I2V's frozen CLIP image encoder (ViT-H/14)


def config_chain(path: Path) -> list[Path]:
    """``path`` preceded by the overlays its first line names (``# base: a.yaml b.yaml``), recursively."""

    first = path.read_text().splitlines()[:1]
    match = re.match(r"#\s*base:\s*(.+)", first[0]) if first else None
    chain = [
        q for name in (match.group(1).split() if match else []) for q in config_chain(path.parent / name)
    ]
    return [*chain, path]


def parse_config(path: Path, *overrides: str) -> dict:
    """The composed, type-checked config of an experiment file (parsed by the real CLI, nothing built);
    ``overrides`` are CLI arguments (``--data.init_args.batch_size=8``) applied after the files."""

    from dimo.cli import DimoCLI

    class _ParseOnly(DimoCLI):
        def instantiate_classes(self) -> None:
            return None

    args = [a for p in config_chain(Path(path)) for a in ("--config", str(p))]
    return _ParseOnly(args=[*args, *overrides, "--trainer.logger=false"], run=False).config


def config_estimate(path: Path, *overrides: str, checkpointing: bool | None = None) -> MemoryEstimate:
    """Memory estimate per GPU of an experiment file as the CLI composes it (its ``# base:`` chain, then
    ``overrides``): HVG or 3DiMo, under the trainer's strategy (DDP, FSDP full shard or DeepSpeed
    ZeRO-2/3 over ``devices x num_nodes`` GPUs). ``checkpointing`` overrides the config's switch."""

    cfg = parse_config(path, *overrides)
    kind = cfg["model"]["class_path"].rsplit(".", 1)[-1]
    if kind == "HVGModule":
        return _hvg_config_estimate(cfg, Path(path), checkpointing)
    if kind == "ThreeDiMoModule":
        return _threedimo_config_estimate(cfg, Path(path), checkpointing)
    raise ValueError(f"config_estimate supports HVG and 3DiMo configs, {path} is {kind}")


def _strategy(cfg: dict) -> tuple[str, dict]:
    """('ddp' | 'fsdp' | 'deepspeed', init_args) of the trainer's strategy."""

    strategy = cfg["trainer"]["strategy"]
    if hasattr(strategy, "as_dict"):  # jsonargparse Namespace
        strategy = strategy.as_dict()
    if isinstance(strategy, str):
        name, init = strategy, {}
    else:
        name, init = strategy["class_path"].rsplit(".", 1)[-1], dict(strategy.get("init_args") or {})
    name = name.lower()
    for kind in ("deepspeed", "fsdp", "ddp"):
        if name.startswith(kind):
            return kind, init
    if name in ("auto", "singledevicestrategy"):
        return "ddp", init  # one process per GPU: what DDP keeps, without the all-reduce
    raise ValueError(f"the memory model knows DDP, FSDP and DeepSpeed strategies, not {name!r}")


def _gpus(cfg: dict) -> int:
    devices, nodes = cfg["trainer"]["devices"], cfg["trainer"]["num_nodes"]
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ValueError(f"trainer.devices must be a GPU count for the memory model, got {devices!r}")
    return devices * int(nodes)


def _hvg_config_estimate(cfg: dict, path: Path, checkpointing: bool | None) -> MemoryEstimate:
    from dimo.models.hvg import HVGConfig
    from dimo.models.hvg.network import HVGUNet, build_image_encoder, build_vae

    model, data = cfg["model"], cfg["data"]["init_args"]
    if _strategy(cfg)[0] != "ddp":
        raise ValueError("the memory model describes HVG under DDP only (docs/scale.md: no HVG FSDP)")
    init = model["init_args"]
    preset = init["net"]["init_args"]["hvg"]["preset"]
    if data["height"] != data["width"]:
        raise ValueError("config_estimate assumes square frames")
    ckpt = init["gradient_checkpointing"] if checkpointing is None else checkpointing
    net = HVGConfig(preset=preset)
    frozen = _count(lambda: build_vae(net)) + _count(lambda: build_image_encoder(net))
    frozen_bytes = frozen * (4 if init["frozen_dtype"] == "float32" else 2)
    act = hvg_activation_bytes(
        preset, data["batch_size"], data["num_views"], data["num_frames"], data["height"], ckpt
    )
    name = f"{path.name}: {data['batch_size']} x {data['num_views']} views x {data['num_frames']} frames"
    return estimate(name, _count(lambda: HVGUNet(net)), frozen_bytes, frozen, act)


WAN_VAE_SPATIAL = {"wan2.1": 8}
_ACTIVATIONS: dict[str, int] = {}  # spatial compression of the Wan VAE presets the paper configs use


def _threedimo_config_estimate(cfg: dict, path: Path, checkpointing: bool | None) -> MemoryEstimate:
    """3DiMo, full fine-tuning (the paper's), frozen UMT5-XXL + Wan VAE (+ CLIP ViT-H for I2V)."""

    from dimo.models.threedimo import ThreeDiMoNet

    init, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    if init["train_parts"] != "full":
        raise ValueError(
            f"the memory model describes full fine-tuning, {path.name} has {init['train_parts']}"
        )
    if init.get("from_cache"):
        raise ValueError("the memory model counts the frozen encoders on the GPU; from_cache builds none")
    net_kwargs = {k: v for k, v in init["net"]["init_args"].items() if k not in ("backbone_path", "lora")}
    if init["net"]["init_args"].get("lora"):
        raise ValueError("LoRA configs are not described by the memory model")
    vae = (init.get("vae") or {}).get("init_args") or {}
    if vae.get("preset") not in WAN_VAE_SPATIAL:
        raise ValueError(
            f"the memory model knows the {sorted(WAN_VAE_SPATIAL)} VAE, not {vae.get('preset')!r}"
        )
    text = (init.get("text_encoder") or {}).get("init_args") or {}
    kind, strategy = _strategy(cfg)
    gpus = _gpus(cfg)
    own_ckpt = init["gradient_checkpointing"]
    strategy_ckpt = kind == "fsdp" and bool(strategy.get("activation_checkpointing_policy"))
    ckpt = (own_ckpt or strategy_ckpt) if checkpointing is None else checkpointing
    b, frames, h, w = data["batch_size"], data["num_frames"], data["height"], data["width"]
    act_args = (net_kwargs, b, frames, h, w, ckpt)
    act_kwargs = dict(
        spatial_compression=WAN_VAE_SPATIAL[vae["preset"]],
        text_length=int(text.get("max_length", 512)),
        bf16_modulation=bool(init.get("bf16_modulation", False)),
    )
    key = json.dumps([act_args, act_kwargs], sort_keys=True, default=str)
    if key not in _ACTIVATIONS:  # one meta count per shape (the 14B rows share theirs)
        _ACTIVATIONS[key] = threedimo_activation_bytes(*act_args, **act_kwargs)
    act = _ACTIVATIONS[key]
    with torch.device("meta"):
        net = ThreeDiMoNet(**net_kwargs)
    trainable = sum(p.numel() for p in net.parameters())
    blocks = list(net.transformer.transformer.blocks)
    in_units = sum(p.numel() for blk in blocks for p in blk.parameters())
    unit = max(sum(p.numel() for p in blk.parameters()) for blk in blocks)
    frozen = UMT5_XXL_PARAMS + WAN_VAE_PARAMS + (CLIP_VIT_H_PARAMS if init.get("image_encoder") else 0)
    frozen_bytes = frozen * (4 if init["frozen_dtype"] == "float32" else 2)
    accumulate = cfg["trainer"]["accumulate_grad_batches"]
    name = (
        f"{path.name}: {b} x {frames} x {h}x{w}/GPU x accumulate {accumulate} "
        f"({b * accumulate * gpus} per step), {'ckpt' if ckpt else 'no ckpt'}, "
        f"{'bf16' if init.get('bf16_modulation') else 'fp32'} modulation"
    )
    if kind == "ddp":
        return estimate(f"{name}, DDP", trainable, frozen_bytes, frozen, act)
    if kind == "fsdp":
        sharding = strategy.get("sharding_strategy") or "FULL_SHARD"
        if getattr(sharding, "name", sharding) != "FULL_SHARD":
            raise ValueError("the memory model describes FSDP FULL_SHARD only")
        name = f"{name}, FSDP full shard over {gpus} GPUs"
        return fsdp_estimate(name, trainable, trainable - in_units, unit, frozen, act, gpus)
    stage = int(strategy.get("stage", 2))
    if strategy.get("offload_optimizer") or strategy.get("offload_parameters"):
        raise ValueError("the memory model does not describe DeepSpeed offloading")
    name = f"{name}, ZeRO-{stage} over {gpus} GPUs"
    return deepspeed_estimate(name, stage, trainable, unit, frozen, act, gpus)


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
PAPER_CONFIGS = (  # every committed paper-scale config (verdicts in docs/scale.md)
    "3dimo_paper.yaml",
    "3dimo_paper_14b_fsdp.yaml",
    "3dimo_paper_14b_deepspeed.yaml",
    "hvg_paper_phase1.yaml",
    "hvg_paper_phase2.yaml",
)


def wan14b_estimates() -> list[MemoryEstimate]:
    """3DiMo on Wan2.1-I2V-14B (``experiments/3dimo_paper_14b_fsdp.yaml`` and ``_deepspeed.yaml``): DDP,
    FSDP and DeepSpeed ZeRO-2/3 on 8 / 32 GPUs (the files' 4 nodes x 8, or one node)."""

    fsdp, ds = EXPERIMENTS / "3dimo_paper_14b_fsdp.yaml", EXPERIMENTS / "3dimo_paper_14b_deepspeed.yaml"
    out = [config_estimate(ds, "--trainer.strategy=ddp", checkpointing=True)]
    for nodes in (1, 4):
        out.append(config_estimate(fsdp, f"--trainer.num_nodes={nodes}"))
    for stage in (2, 3):
        for nodes in (1, 4):
            args = (f"--trainer.strategy.init_args.stage={stage}", f"--trainer.num_nodes={nodes}")
            out.append(config_estimate(ds, *args))
    return out


def paper_estimates() -> list[MemoryEstimate]:
    """Every paper config as committed (``PAPER_CONFIGS``), then the variants docs/scale.md compares."""

    out = [config_estimate(EXPERIMENTS / name) for name in PAPER_CONFIGS]
    paper = EXPERIMENTS / "3dimo_paper.yaml"
    out.append(config_estimate(paper, "--model.init_args.bf16_modulation=false"))
    out.append(config_estimate(paper, checkpointing=False))
    out.append(config_estimate(paper, "--data.init_args.batch_size=8", "--trainer.accumulate_grad_batches=1"))
    out += wan14b_estimates()
    for name in ("hvg_paper_phase1.yaml", "hvg_paper_phase2.yaml"):
        est = config_estimate(EXPERIMENTS / name, checkpointing=False)
        est.config += ", no ckpt"
        out.append(est)
    return out


def verdict_table(rows: list[MemoryEstimate]) -> str:
    """Markdown: states / frozen / activations / total (GiB) and the 80 GB / 141 GB verdicts."""

    lines = [
        "| config | states | frozen | activations | total | 80 GB | 141 GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        yes = {True: "yes", False: "no"}
        lines.append(
            f"| {e.config} | {e.states_gib:.1f} | {e.frozen_gib:.1f} | {e.activations_gib:.1f} | "
            f"{e.total_gib:.1f} | {yes[e.fits(80)]} | {yes[e.fits(141)]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    rows = paper_estimates()
    if "--markdown" in sys.argv[1:]:
        print(verdict_table(rows))
    else:
        print(
            json.dumps(
                [{**asdict(e), "fits_80GB": e.fits(80), "fits_141GB": e.fits(141)} for e in rows], indent=2
            )
        )
