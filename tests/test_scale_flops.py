"""Model FLOPs (benchmarks/flops.py) against PyTorch's FLOP counter, on the meta device, at real width."""

from __future__ import annotations

import pytest
import torch

from benchmarks.flops import (
    SPEC_BF16_PEAK,
    attention,
    counted_forward_flops,
    hvg_forward_flops,
    mfu,
    spec_peak,
    threedimo_forward_flops,
    train_step_model_flops,
)
from dimo.models.threedimo import ThreeDiMoNet
from dimo.models.threedimo.backbone import WAN_PRESETS

FRAMES, H, W = 17, 480, 832  # 5 latent frames x 30 x 52 patches = 7800 video tokens


def _one_layer_paper_net(**overrides) -> ThreeDiMoNet:
    """3dimo_paper.yaml's network with the real Wan2.1-1.3B width (1536, 12 x 128 heads, FFN 8960)
    but one transformer layer, built on meta."""

    cfg = dict(WAN_PRESETS["wan2.1-t2v-1.3b"], num_layers=1)
    kwargs = dict(
        backbone="wan2.1-t2v-1.3b", backbone_config=cfg, image_size=(256, 448), patch_size=16,
        hand_crop=64, motion_dim=512, motion_depth=6, motion_heads=8, geo_hidden=1024,
    )  # fmt: skip
    kwargs.update(overrides)
    with torch.device("meta"):
        return ThreeDiMoNet(**kwargs)


def _counted(net: ThreeDiMoNet, batch: int) -> dict[str, int]:
    """FLOP counter over the three forward parts of a training step (what ``_losses`` runs)."""

    tr = net.transformer
    wan = tr.transformer.config
    f = 1 + (FRAMES - 1) // 4
    with torch.device("meta"):
        driving = torch.empty(batch, FRAMES, 3, H, W)
        j2d = torch.empty(batch, FRAMES, 55, 2)
        valid = torch.ones(batch, FRAMES, 55, dtype=torch.bool)
        latents = torch.empty(batch, wan.in_channels, f, H // 8, W // 8)
        n = f * (H // 16) * (W // 16)
        timestep = torch.empty(batch, n)  # per-token (T2V with the reference frame at t = 0)
        text = torch.empty(batch, 512, wan.text_dim)
        z = net.encoders(driving, j2d, valid)
        enc = counted_forward_flops(lambda: net.encoders(driving, j2d, valid))
        geo = counted_forward_flops(lambda: net.geo_decoder(net.encoders.per_frame(z, FRAMES)))
        dit = counted_forward_flops(lambda: tr(latents, timestep, text, motion=z, num_motion_frames=FRAMES))
    return {"encoders": enc, "geo": geo, "dit": dit}


@pytest.mark.parametrize("batch", [1, 2])
def test_threedimo_formula_matches_the_flop_counter_at_real_width(batch):
    net = _one_layer_paper_net()
    counted = _counted(net, batch)
    terms = threedimo_forward_flops(net.config, FRAMES, H, W, batch)
    enc = terms["body_encoder"] + terms["hand_encoder"]
    dit = sum(v for k, v in terms.items() if k not in ("body_encoder", "hand_encoder", "geo_decoder"))
    assert enc == pytest.approx(counted["encoders"], rel=1e-3)
    assert terms["geo_decoder"] == pytest.approx(counted["geo"], rel=1e-3)
    assert dit == pytest.approx(counted["dit"], rel=1e-3)
    # self-attention is 4 N^2 d per layer forward (the counter's SDPA/bmm formula says the same)
    n = 5 * 30 * 52
    assert terms["self_attn"] == batch * attention(n, n, 1536) == batch * 4 * n * n * 1536


def test_formula_scales_with_layers_like_the_counter():
    """Two layers add exactly one layer's per-layer terms (the formula's layer count is the config's)."""

    one = threedimo_forward_flops(_one_layer_paper_net().config, FRAMES, H, W)
    two_net = _one_layer_paper_net(backbone_config=dict(WAN_PRESETS["wan2.1-t2v-1.3b"], num_layers=2))
    two = threedimo_forward_flops(two_net.config, FRAMES, H, W)
    assert sum(two.values()) == pytest.approx(
        _counted(two_net, 1)["encoders"] + _counted(two_net, 1)["geo"] + _counted(two_net, 1)["dit"], rel=1e-3
    )
    per_layer = (
        "self_attn_proj",
        "self_attn",
        "text_attn_proj",
        "text_attn",
        "ffn",
        "motion_attn_proj",
        "motion_attn",
    )
    for k in per_layer:
        assert two[k] == 2 * one[k]


def test_hvg_counted_forward_excludes_nothing_trainable_and_counts_no_backward():
    tiny = hvg_forward_flops("tiny", views=2, frames=2, height=32, width=32)
    assert tiny > 0
    # views x frames double -> UNet work roughly doubles (the ReferenceNet runs once per sample)
    more = hvg_forward_flops("tiny", views=4, frames=2, height=32, width=32)
    assert 1.7 * tiny < more < 2.1 * tiny


def test_mfu_uses_the_spec_peak():
    assert spec_peak("NVIDIA H200") == 989e12 == SPEC_BF16_PEAK["H200"]
    assert spec_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert spec_peak("Some Future GPU") is None
    step = train_step_model_flops(100e12)  # forward 100 TFLOP -> 300 TFLOP per step
    assert step == 300e12
    assert mfu(step, 0.6, 989e12) == pytest.approx(300e12 / 0.6 / 989e12)


def test_bench_train_gpu_rows_use_the_model_flops():
    """The GPU rows' numerator at the paper shapes (computable without a GPU)."""

    from benchmarks.bench_train import paper_forward_flops

    dit = paper_forward_flops("3dimo")
    unet = paper_forward_flops("hvg")
    assert 250e12 < dit < 350e12  # 1.3B, 81 x 480 x 832: ~296 TFLOP forward, 2/3 of it self-attention
    assert 100e12 < unet < 170e12  # SVD-xt, 3 x 24 images at 576^2 + ReferenceNet: ~133 TFLOP forward
