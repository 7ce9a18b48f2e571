"""3DiMo on Wan I2V backbones: tiny-i2v forward, zero-init injection, a training step, 14B count."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import WanTransformer3DModel
from test_threedimo_training import H, W, _batch

from dimo.models.threedimo import ThreeDiMoModule, ThreeDiMoNet, ThreeDiMoTransformer, WanTextEncoder
from dimo.models.threedimo.backbone import WAN_PRESETS, i2v_condition
from dimo.models.threedimo.frozen import WanImageEncoder

# Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, transformer/config.json (diffusers' own config of the release)
WAN21_I2V_14B_DIFFUSERS_CONFIG = {
    "added_kv_proj_dim": 5120,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "ffn_dim": 13824,
    "freq_dim": 256,
    "image_dim": 1280,
    "in_channels": 36,
    "num_attention_heads": 40,
    "num_layers": 40,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}


def _i2v_inputs(b: int = 2, f: int = 3, motion_dim: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t_frames = 1 + 4 * (f - 1)
    latents = torch.randn(b, 16, f, 8, 8, generator=g)
    condition = i2v_condition(torch.randn(b, 16, f, 8, 8, generator=g))
    image = WanImageEncoder()(torch.rand(b, 3, 32, 32, generator=g) * 2 - 1)  # (B, 17, 32)
    text = torch.randn(b, 16, 32, generator=g)
    motion = torch.randn(b, t_frames * 10, motion_dim, generator=g)
    return latents, torch.tensor([500.0, 900.0][:b]), text, motion, t_frames, condition, image


def test_tiny_i2v_forward_and_condition_layout():
    model = ThreeDiMoTransformer.from_preset("tiny-i2v", motion_dim=24)
    assert model.is_i2v and model.transformer.config.in_channels == 36
    latents, t, text, motion, n, condition, image = _i2v_inputs()
    assert condition.shape == (2, 20, 3, 8, 8)
    assert condition[:, :4, 0].eq(1).all() and condition[:, :4, 1:].eq(0).all()
    with torch.no_grad():
        out = model(latents, t, text, motion, n, condition, image)
    assert out.shape == latents.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="condition"):
        model(latents, t, text, motion, n)
    with pytest.raises(ValueError, match="I2V"):
        ThreeDiMoTransformer.from_preset("tiny", motion_dim=24)(latents, t, text, motion, n, condition, image)


@pytest.mark.parametrize("injection", ["cross_attention", "channel_concat"])
def test_zero_init_injection_leaves_i2v_output_unchanged(injection):
    model = ThreeDiMoTransformer.from_preset("tiny-i2v", motion_dim=24, injection=injection).eval()
    latents, t, text, motion, n, condition, image = _i2v_inputs()
    plain = WanTransformer3DModel(**WAN_PRESETS["tiny-i2v"]).eval()
    plain.load_state_dict(
        {k[len("transformer.") :]: v for k, v in model.state_dict().items() if k.startswith("transformer.")}
    )
    with torch.no_grad():
        with_motion = model(latents, t, text, motion, n, condition, image)
        text512 = torch.nn.functional.pad(text, (0, 0, 0, 512 - text.shape[1]))  # Wan's zero-padded prompt
        reference = plain(
            torch.cat([latents, condition], 1),
            t,
            text512,
            encoder_hidden_states_image=image,
            return_dict=False,
        )[0]
    assert torch.allclose(with_motion, reference, atol=1e-6, rtol=0)


def test_one_training_step_with_tiny_i2v_reaches_the_motion_encoders():
    torch.manual_seed(0)
    net = ThreeDiMoNet(backbone="tiny-i2v", image_size=(H, W), hand_crop=16, motion_dim=32, geo_hidden=64)
    module = ThreeDiMoModule(net=net, text_encoder=WanTextEncoder(max_length=16), geo_weight=0.0)
    assert module.image_encoder is not None and not module.image_encoder.training
    assert all(not p.requires_grad for p in module.image_encoder.parameters())
    trainable = {id(p) for p in module.trainable_parameters()}
    assert not trainable & {id(p) for p in module.image_encoder.parameters()}
    opt = torch.optim.Adam(module.trainable_parameters(), lr=1e-3)
    batch = _batch()
    enc = [p for p in module.net.encoders.parameters() if p.requires_grad]
    for step in range(2):  # step 0: zero-init out-projections; after one update motion reaches the video
        opt.zero_grad()
        out = module._losses(batch, torch.Generator().manual_seed(step))
        assert torch.isfinite(out["loss"]) and torch.isfinite(out["loss_diffusion"])
        out["loss"].backward()  # geo_weight 0: diffusion loss alone, gradients come through the injection
        grads = [p.grad for p in enc if p.grad is not None]
        if step == 1:
            assert grads and sum(g.abs().sum() for g in grads) > 0
        opt.step()
    assert module.image_encoder.training is False
    with torch.no_grad():
        video = module.generate(batch, num_steps=1)
    assert video.shape == batch["target"].shape and torch.isfinite(video).all()


def test_i2v_module_rejects_mismatched_image_encoders():
    net = ThreeDiMoNet(backbone="tiny", image_size=(H, W), hand_crop=16, motion_dim=32, geo_hidden=64)
    with pytest.raises(ValueError, match="I2V"):
        ThreeDiMoModule(net=net, text_encoder=WanTextEncoder(max_length=16), image_encoder=WanImageEncoder())


def test_image_encoder_folder_missing_is_named(tmp_path):
    from dimo.models.threedimo import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="image_encoder"):
        WanImageEncoder(path=tmp_path / "wan-i2v")


def test_wan_i2v_14b_preset_matches_diffusers_count_on_meta():
    cfg = dict(WAN21_I2V_14B_DIFFUSERS_CONFIG, patch_size=tuple(WAN21_I2V_14B_DIFFUSERS_CONFIG["patch_size"]))
    with torch.device("meta"):
        reference = WanTransformer3DModel(**cfg)
        net = ThreeDiMoNet(backbone="wan2.1-i2v-14b")
    expected = sum(p.numel() for p in reference.parameters())
    wan = net.transformer.transformer
    assert sum(p.numel() for p in wan.parameters()) == expected
    got = {k: (tuple(v) if isinstance(v, list) else v) for k, v in wan.config.items() if k in cfg}
    assert got == cfg
    assert 14e9 < expected < 17e9 and math.isfinite(expected)
