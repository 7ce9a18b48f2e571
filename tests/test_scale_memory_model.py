"""benchmarks/memory_model.py against the measured peaks of the tiny presets (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.bench_train import build_module, cpu_peak_bytes, hvg_batch, make_step, threedimo_batch
from benchmarks.memory_model import estimate, hvg_activation_bytes, threedimo_activation_bytes


@pytest.mark.parametrize("kind", ["3dimo", "hvg", "hvg-ckpt"])
def test_prediction_bounds_the_measured_tiny_peak(kind):
    torch.manual_seed(0)
    ckpt = kind.endswith("-ckpt")
    kind = kind.removesuffix("-ckpt")
    # HVG: the paper's full fine-tuning (the model's subject; hvg.yaml's toy recipe freezes the backbone)
    module = build_module(
        f"{kind}.yaml", *(["--model.init_args.backbone_lr_mult=1.0"] if kind == "hvg" else [])
    )
    if kind == "3dimo":
        # the memory model describes the paper's full fine-tuning; the toy recipe freezes the backbone
        for p in module.net.parameters():
            p.requires_grad_(True)
        batch = threedimo_batch(2, 9, 64, 64)
        # the loaded backbone's own shape (the toy folder, not the preset), the toy VAE's 4x grid, 48 tokens
        net = {k: v for k, v in module.net.config.items() if k != "backbone_path"}
        net["backbone_config"] = module.net.transformer.wan_config()
        act = threedimo_activation_bytes(
            net,
            2,
            9,
            64,
            64,
            False,
            torch.float32,
            spatial_compression=module.vae.spatial_compression,
            text_length=module.text_encoder.max_length,
        )
    else:
        if ckpt:  # whole-layer checkpointing: inputs kept, one layer recomputed at a time
            module.unet.enable_gradient_checkpointing()
        batch = hvg_batch(1, 3, 4, 64, 64)
        act = hvg_activation_bytes("tiny", 1, 3, 4, 64, ckpt, torch.float32)
    step, opt = make_step(module, batch, kind)
    measured = cpu_peak_bytes(module, step, opt)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    predicted = estimate(kind, trainable, 4 * frozen, frozen, act).total_gib * 2**30
    # a close upper bound: the model adds every gradient to every saved activation, while backward frees
    # activations as the gradients arrive, so it over-counts by up to the gradients (+ the 10% allowance).
    # Seen: 3DiMo with the width-256 toy backbone 219.5 vs 173.2 MiB; HVG 252.7 vs 218.0; HVG checkpointed
    # 84.9 vs 79.7 MiB. The tiny preset's shape in place of the loaded backbone predicted 134.9 (fails).
    assert 0.9 * measured <= predicted <= 1.35 * measured, (measured / 2**20, predicted / 2**20)
    # the 10% allowance (OVERHEAD) covers every transient a CPU step shows beyond the counted states,
    # frozen weights and saved activations: measured / (total before the allowance) was 0.87 (3DiMo),
    # 0.95 (HVG), 1.03 (HVG checkpointed: the layer being recomputed). CUDA context and allocator
    # fragmentation are not seen on CPU (docs/scale.md).
    assert measured <= predicted, (measured / 2**20, predicted / 2**20)


def test_checkpointing_keeps_less():
    full = threedimo_activation_bytes({}, 1, 9, 64, 64, False, torch.float32)
    ckpt = threedimo_activation_bytes({}, 1, 9, 64, 64, True, torch.float32)
    assert ckpt < 0.5 * full


# ---- verdicts of the committed paper configs, computed from the YAML files as the CLI composes them ----
PAPER_VERDICTS = {  # config: (fits 80 GB, fits 141 GB); docs/scale.md prints the same table
    "3dimo_paper.yaml": (True, True),
    "3dimo_paper_14b_fsdp.yaml": (False, True),
    "3dimo_paper_14b_deepspeed.yaml": (True, True),
    "hvg_paper_phase1.yaml": (True, True),
    "hvg_paper_phase2.yaml": (True, True),
}


def test_every_paper_config_has_its_verdict():
    from benchmarks.memory_model import EXPERIMENTS, PAPER_CONFIGS, config_estimate

    assert set(PAPER_CONFIGS) == set(PAPER_VERDICTS) == {p.name for p in EXPERIMENTS.glob("*paper*.yaml")}
    for name, (fits80, fits141) in PAPER_VERDICTS.items():
        est = config_estimate(EXPERIMENTS / name)
        assert (est.fits(80), est.fits(141)) == (fits80, fits141), est


def test_3dimo_estimate_follows_the_yaml():
    from benchmarks.memory_model import EXPERIMENTS, config_estimate

    paper = EXPERIMENTS / "3dimo_paper.yaml"
    base = config_estimate(paper)
    assert "1 x 121 x 480x848" in base.config and "64 per step" in base.config and "DDP" in base.config
    # the switches and shapes are read from the file / the overrides, not assumed
    fp32_mod = config_estimate(paper, "--model.init_args.bf16_modulation=false")
    assert fp32_mod.activations_gib > base.activations_gib + 0.5  # the (N, 6, D) fp32 sum of a block
    assert config_estimate(paper, checkpointing=False).activations_gib > 10 * base.activations_gib
    fewer = config_estimate(paper, "--data.init_args.num_frames=61")
    assert fewer.activations_gib < 0.6 * base.activations_gib
    assert fewer.states_gib == base.states_gib and fewer.frozen_gib == base.frozen_gib
    fp32_frozen = config_estimate(paper, "--model.init_args.frozen_dtype=float32")
    assert fp32_frozen.frozen_gib == pytest.approx(2 * base.frozen_gib)


def test_sharded_estimates_follow_the_gpu_count_and_stage():
    from benchmarks.memory_model import EXPERIMENTS, config_estimate

    fsdp = EXPERIMENTS / "3dimo_paper_14b_fsdp.yaml"
    ds = EXPERIMENTS / "3dimo_paper_14b_deepspeed.yaml"
    f32, f8 = config_estimate(fsdp), config_estimate(fsdp, "--trainer.num_nodes=1")
    assert "FSDP full shard over 32 GPUs" in f32.config and "over 8 GPUs" in f8.config
    assert f8.states_gib > f32.states_gib and f8.activations_gib == f32.activations_gib
    z3, z2 = config_estimate(ds), config_estimate(ds, "--trainer.strategy.init_args.stage=2")
    assert "ZeRO-3 over 32" in z3.config and "ZeRO-2 over 32" in z2.config
    assert z3.total_gib < f32.total_gib < z2.total_gib
    ddp = config_estimate(ds, "--trainer.strategy=ddp", checkpointing=True)
    assert ddp.states_gib > 300  # 16 B x 20.6 B parameters on every GPU


def test_configs_the_model_does_not_describe_are_refused():
    from benchmarks.memory_model import EXPERIMENTS, config_estimate

    paper = EXPERIMENTS / "3dimo_paper.yaml"
    with pytest.raises(ValueError, match="full fine-tuning"):
        config_estimate(paper, "--model.init_args.train_parts=motion")
    with pytest.raises(ValueError, match="offloading"):
        config_estimate(
            EXPERIMENTS / "3dimo_paper_14b_deepspeed.yaml",
            "--trainer.strategy.init_args.offload_optimizer=true",
        )


# ---- the papers' batch per optimiser step, from the files as the CLI composes them ----------------
PAPER_BATCH = {  # config: (samples per step over all GPUs, views x frames per sample, GPUs)
    "3dimo_paper.yaml": (64, 1 * 121, 8),  # DESIGN §5: batch 64, 121 frames
    "3dimo_paper_14b_fsdp.yaml": (64, 1 * 121, 32),
    "3dimo_paper_14b_deepspeed.yaml": (64, 1 * 121, 32),
    "hvg_paper_phase1.yaml": (2 * 32, 48 * 1, 32),  # DESIGN §6: 2 x 48 views per GPU, 32 GPUs
    "hvg_paper_phase2.yaml": (1 * 32, 3 * 24, 32),  # 1 x 72 images (3 views x 24 frames) per GPU
}


def test_paper_configs_train_on_the_papers_batch():
    """devices x num_nodes x batch_size x accumulate_grad_batches (and views x frames for HVG) of
    every paper config equal the papers' batch, whatever micro-batching makes it fit."""

    from benchmarks.memory_model import EXPERIMENTS, PAPER_CONFIGS, _gpus, parse_config

    assert set(PAPER_BATCH) == set(PAPER_CONFIGS)
    for name, (samples, images, gpus) in PAPER_BATCH.items():
        cfg = parse_config(EXPERIMENTS / name)
        data, trainer = cfg["data"]["init_args"], cfg["trainer"]
        assert _gpus(cfg) == gpus, name
        assert gpus * data["batch_size"] * trainer["accumulate_grad_batches"] == samples, name
        per_sample = data["num_frames"] * (data["num_views"] if "hvg" in name else 1)
        assert per_sample == images, name
