"""3DiMo networks on the tiny preset: zero-init injection, ablation path, encoders, presets, loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from dimo.models.threedimo import (
    WAN_PRESETS,
    GeometricDecoder,
    MissingWeightsError,
    ThreeDiMoNet,
    ThreeDiMoTransformer,
    hand_crops,
)
from dimo.models.threedimo.injection import group_by_latent_frame

T = 9  # driving frames -> 3 latent frames


def _inputs(motion_dim=24, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, 3, 8, 8, generator=g)
    t = torch.tensor([700.0, 30.0])[:b]
    text = torch.randn(b, 7, 32, generator=g)
    motion = torch.randn(b, T * 10, motion_dim, generator=g)
    return x, t, text, motion


def _plain_wan(model: ThreeDiMoTransformer) -> WanTransformer3DModel:
    ref = WanTransformer3DModel(**WAN_PRESETS["tiny"])
    prefix = "transformer."
    ref.load_state_dict({k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)})
    return ref


@pytest.mark.parametrize(
    "injection,attention,placement",
    [
        ("cross_attention", "frame_aligned", "sequential"),
        ("cross_attention", "global", "sequential"),
        ("cross_attention", "frame_aligned", "parallel"),
        ("channel_concat", "frame_aligned", "sequential"),
    ],
)
def test_zero_init_output_equals_pretrained_backbone(injection, attention, placement):
    torch.manual_seed(0)
    model = ThreeDiMoTransformer.from_preset(
        "tiny", motion_dim=24, injection=injection, motion_attention=attention, motion_placement=placement
    )
    x, t, text, motion = _inputs()
    out = model(x, t, text, motion, T)
    ref = _plain_wan(model)(x, t, text, return_dict=False)[0]
    assert out.shape == x.shape
    assert torch.equal(out, ref)  # exact, not approximately
    # once the new output layer is non-zero the motion tokens do change the output
    with torch.no_grad():
        layer = (
            model.motion_layers[0].to_out[0]
            if injection == "cross_attention"
            else model.motion_patch_embedding
        )
        layer.weight.normal_(std=0.1)
    assert not torch.allclose(model(x, t, text, motion, T), ref, atol=1e-4)


@pytest.mark.parametrize("placement", ["sequential", "parallel"])
def test_motion_step_placement_relative_to_text_cross_attention(placement):
    """Sequential (paper): the text cross-attention reads the stream *after* the motion step.

    Parallel: it reads the same post-self-attention stream as without motion. Captured at the input
    of block 0's ``attn2`` with the motion layer made non-zero.
    """

    torch.manual_seed(0)
    cfg = dict(WAN_PRESETS["tiny"], num_layers=1)
    model = ThreeDiMoTransformer(wan_config=cfg, motion_dim=24, motion_placement=placement)
    with torch.no_grad():
        model.motion_layers[0].to_out[0].weight.normal_(std=0.2)
    seen: list[torch.Tensor] = []
    model.transformer.blocks[0].attn2.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x, t, text, motion = _inputs()
    with_motion = model(x, t, text, motion, T)
    model(x, t, text, None, T)  # no motion tokens: the plain Wan block
    text_input_with, text_input_without = seen
    if placement == "sequential":
        assert not torch.allclose(text_input_with, text_input_without, atol=1e-4)
    else:
        assert torch.equal(text_input_with, text_input_without)
    assert not torch.allclose(with_motion, model(x, t, text, None, T), atol=1e-4)


def test_frame_aligned_tokens_only_reach_their_latent_frame():
    """One block, injection made non-zero: changing driving frame 5 (latent frame 2) leaves latent frames 0-1."""

    torch.manual_seed(0)
    cfg = dict(WAN_PRESETS["tiny"], num_layers=1)
    model = ThreeDiMoTransformer(wan_config=cfg, motion_dim=24)
    with torch.no_grad():
        model.motion_layers[0].to_out[0].weight.normal_(std=0.2)
    x, t, text, motion = _inputs()
    out = model(x, t, text, motion, T)
    motion2 = motion.clone()
    motion2[:, 5 * 10 : 6 * 10] += 1.0  # tokens of driving frame 5 -> latent frame 2 = frames 5..8
    out2 = model(x, t, text, motion2, T)
    assert torch.equal(out[:, :, :2], out2[:, :, :2])
    assert not torch.allclose(out[:, :, 2], out2[:, :, 2])


def test_group_by_latent_frame_layout():
    tokens = torch.arange(9.0).view(1, 9, 1, 1).expand(1, 9, 2, 1)  # frame index as value
    grouped = group_by_latent_frame(tokens, 4)  # (1, 3, 8, 1)
    assert grouped.shape == (1, 3, 8, 1)
    assert grouped[0, 0].flatten().tolist() == [0.0] * 8
    assert grouped[0, 2].flatten().tolist() == [5, 5, 6, 6, 7, 7, 8, 8]
    with pytest.raises(ValueError, match="1 \\+ 4"):
        group_by_latent_frame(torch.zeros(1, 8, 2, 1), 4)


def test_gradient_checkpointing_keeps_values_and_motion_gradients():
    torch.manual_seed(0)
    model = ThreeDiMoTransformer.from_preset("tiny", motion_dim=24)
    with torch.no_grad():
        for layer in model.motion_layers:
            layer.to_out[0].weight.normal_(std=0.1)
    x, t, text, motion = _inputs()
    motion.requires_grad_(True)
    out = model(x, t, text, motion, T)
    (g_plain,) = torch.autograd.grad(out.square().mean(), motion)
    model.enable_gradient_checkpointing()
    out_ckpt = model(x, t, text, motion, T)
    (g_ckpt,) = torch.autograd.grad(out_ckpt.square().mean(), motion)
    assert torch.allclose(out, out_ckpt) and g_plain.abs().sum() > 0
    assert torch.allclose(g_plain, g_ckpt, atol=1e-6)


def test_hand_crops_follow_the_wrists_and_fall_back_to_the_whole_frame():
    frames = -torch.ones(1, 1, 3, 64, 64)
    frames[..., 40:48, 8:16] = 1.0  # a bright patch around pixel centre (12, 44)
    j2d = torch.zeros(1, 1, 55, 2)
    j2d[..., 20, :] = torch.tensor([12.0, 44.0])  # left wrist (x, y)
    valid = torch.zeros(1, 1, 55, dtype=torch.bool)
    valid[..., 20] = True
    crops = hand_crops(frames, j2d, valid, crop=16)  # (1, 1, 3, 16, 32)
    assert crops.shape == (1, 1, 3, 16, 32)
    left, right = crops[..., :16], crops[..., 16:]
    assert left[..., 6:10, 6:10].min() > 0.9  # the wrist is in the middle of the left crop
    whole = torch.nn.functional.interpolate(frames[0], size=(16, 16), mode="bilinear", antialias=True)
    assert torch.allclose(right[0], whole)  # right hand invalid -> the whole frame
    assert torch.allclose(hand_crops(frames, None, None, crop=16)[..., :16][0], whole)


def test_geometric_decoder_starts_at_the_rest_pose():
    dec = GeometricDecoder(tokens_per_frame=10, dim=24)
    body, hands = dec(torch.randn(2, T, 10, 24))
    assert body.shape == (2, T, 21, 6) and hands.shape == (2, T, 30, 6)
    from dimo.geometry.rotations import rot6d_to_matrix

    eye = torch.eye(3).expand(2, T, 21, 3, 3)
    assert torch.allclose(rot6d_to_matrix(body), eye, atol=0.05)


def test_paper_scale_config_on_meta_device():
    """The network of experiments/3dimo_paper.yaml, built on `meta` (no weights, no memory)."""

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments/3dimo_paper.yaml").read_text())
    net_args = dict(cfg["model"]["init_args"]["net"]["init_args"])
    # the Wan folder is model.init_args.pretrained (its transformer/ is linked to backbone_path by the
    # CLI); random init on meta here
    assert cfg["model"]["init_args"]["pretrained"] and "backbone_path" not in net_args
    net_args["image_size"] = tuple(net_args["image_size"])
    with torch.device("meta"):
        wan = WanTransformer3DModel(**WAN_PRESETS["wan2.1-t2v-1.3b"])
        assert sum(p.numel() for p in wan.parameters()) == 1_418_996_800
        net = ThreeDiMoNet(**net_args)
    backbone = sum(p.numel() for p in net.transformer.transformer.parameters())
    assert backbone == 1_418_996_800
    new = sum(p.numel() for p in net.motion_parameters())
    # 30 motion cross-attention layers of width 1536: q, k, v, out (+ biases) and two RMS norms each
    per_layer = 4 * (1536 * 1536 + 1536) + 2 * 1536
    assert new > 30 * per_layer
    assert all(p.is_meta for p in net.parameters())


def test_from_pretrained_round_trip_and_strict_keys(tmp_path):
    torch.manual_seed(0)
    net = ThreeDiMoNet(motion_dim=24)
    with torch.no_grad():  # make the zero-initialised layers non-trivial so the round trip is tested
        for p in net.transformer.motion_layers.parameters():
            p.normal_()
    net.save_pretrained(tmp_path / "net")
    loaded = ThreeDiMoNet.from_pretrained(tmp_path / "net")
    a, b = net.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x, t, text, motion = _inputs()
    assert torch.equal(net(x, t, text, motion, T), loaded(x, t, text, motion, T))

    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "net" / "model.safetensors")
    state.pop("transformer.motion_layers.1.to_q.weight")
    save_file(state, tmp_path / "net" / "model.safetensors")
    with pytest.raises(MissingWeightsError, match="motion_layers.1.to_q.weight"):
        ThreeDiMoNet.from_pretrained(tmp_path / "net")
    with pytest.raises(MissingWeightsError, match="nowhere"):
        ThreeDiMoNet.from_pretrained(tmp_path / "nowhere")


def test_backbone_from_a_local_wan_folder(tmp_path):
    torch.manual_seed(1)
    wan = WanTransformer3DModel(**WAN_PRESETS["tiny"])
    wan.save_pretrained(tmp_path / "transformer")
    net = ThreeDiMoNet(backbone_path=tmp_path / "transformer", motion_dim=24)
    own = net.transformer.transformer.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in wan.state_dict().items())
    # the new layers are not in a Wan folder: allowed, and still zero at the output
    assert torch.count_nonzero(net.transformer.motion_layers[0].to_out[0].weight) == 0

    from safetensors.torch import load_file, save_file

    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("blocks.0.attn1.to_q.weight")
    save_file(state, weights)
    with pytest.raises(MissingWeightsError, match="blocks.0.attn1.to_q.weight"):
        ThreeDiMoNet(backbone_path=tmp_path / "transformer", motion_dim=24)
    with pytest.raises(MissingWeightsError, match="config.json"):
        ThreeDiMoNet(backbone_path=tmp_path / "missing", motion_dim=24)


def test_export_of_a_folder_backbone_of_another_shape_rebuilds_without_the_folder(tmp_path):
    """A 3-layer, 2x32-head Wan folder under the ``tiny`` preset name: the export reloads on its own."""

    torch.manual_seed(2)
    cfg = dict(WAN_PRESETS["tiny"], num_layers=3, attention_head_dim=32)
    WanTransformer3DModel(**cfg).save_pretrained(tmp_path / "transformer")
    net = ThreeDiMoNet(backbone="tiny", backbone_path=tmp_path / "transformer", motion_dim=24)
    net.save_pretrained(tmp_path / "net")
    import shutil

    shutil.rmtree(tmp_path / "transformer")
    loaded = ThreeDiMoNet.from_pretrained(tmp_path / "net")
    assert len(loaded.transformer.transformer.blocks) == 3
    a, b = net.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _net_with_live_injection(injection: str, attention: str = "frame_aligned") -> ThreeDiMoNet:
    """A tiny ThreeDiMoNet whose zero-initialised injection output is made non-zero (a trained net)."""

    torch.manual_seed(0)
    net = ThreeDiMoNet(backbone="tiny", injection=injection, motion_attention=attention, motion_dim=32)
    with torch.no_grad():
        if injection == "cross_attention":
            for layer in net.transformer.motion_layers:
                layer.to_out[0].weight.normal_(std=0.2)
        else:
            net.transformer.motion_patch_embedding.weight.normal_(std=0.2)
    return net.eval()


def _driving(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, T, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("frame", [1, 4, 5, 8])
def test_encoder_layout_sends_each_driving_frame_to_its_own_latent_frame(frame):
    """Real path (encode_motion -> backbone): perturbing driving frame f changes only the motion keys of
    the latent frame that folds f (frame-aligned), only frame f's token slots (global), and only that
    latent frame's column of the concatenated motion map (channel_concat)."""

    latent_of = 0 if frame == 0 else 1 + (frame - 1) // 4
    x = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([500.0])
    driving = _driving()
    changed = driving.clone()
    changed[:, frame] = -changed[:, frame]
    for injection, attention in (
        ("cross_attention", "frame_aligned"),
        ("cross_attention", "global"),
        ("channel_concat", "frame_aligned"),
    ):
        net = _net_with_live_injection(injection, attention)
        ctx = net.transformer.context
        keys = []
        with torch.no_grad():
            for d in (driving, changed):
                net(x, t, text, net.encode_motion(d), T)
                keys.append((ctx.tokens if injection == "cross_attention" else ctx.concat_map).clone())
        a, b = keys
        if injection == "channel_concat":  # (B, C_m, F, 1, 1)
            diff = (a - b).abs().amax(dim=(0, 1, 3, 4))
        elif attention == "frame_aligned":  # (B, F, c*K, C)
            diff = (a - b).abs().amax(dim=(0, 2, 3))
        else:  # global (B, T*K, C): one diff per driving frame
            diff = (a - b).abs().amax(dim=(0, 2)).view(T, -1).amax(1)
        hit = latent_of if attention == "frame_aligned" else frame
        assert diff[hit] > 1e-3, (injection, attention)
        others = torch.cat([diff[:hit], diff[hit + 1 :]])
        assert torch.all(others == 0), (injection, attention, diff)


def test_frame_aligned_output_changes_only_at_the_latent_frame_of_the_changed_driving_frame():
    """End to end through a one-block backbone: changing driving frame 1 changes latent frame 1 only."""

    torch.manual_seed(0)
    net = ThreeDiMoNet(backbone="tiny", motion_dim=32)
    net.transformer = ThreeDiMoTransformer(wan_config=dict(WAN_PRESETS["tiny"], num_layers=1), motion_dim=32)
    with torch.no_grad():
        net.transformer.motion_layers[0].to_out[0].weight.normal_(std=0.2)
    x = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([500.0])
    driving = _driving()
    changed = driving.clone()
    changed[:, 1] = -changed[:, 1]
    with torch.no_grad():
        out = net(x, t, text, net.encode_motion(driving), T)
        out2 = net(x, t, text, net.encode_motion(changed), T)
    diff = (out - out2).abs().amax(dim=(0, 1, 3, 4))
    assert diff[1] > 1e-4 and diff[0] == 0 and diff[2] == 0, diff


def test_per_frame_view_matches_the_encoders_layout():
    enc = ThreeDiMoNet(backbone="tiny", motion_dim=32).encoders.eval()
    driving = _driving()
    with torch.no_grad():
        z = enc(driving)
        per = enc.per_frame(z, T)  # (1, T, K_b + K_h, D)
        body_only = enc.body(driving[:, 3:4])  # frame 3 alone
    assert per.shape == (1, T, 10, 32)
    torch.testing.assert_close(per[:, 3, :5], body_only[:, :5])


def test_compile_is_regional_over_the_declared_repeated_blocks():
    from dimo.models.threedimo.backbone import ThreeDiMoTransformer
    from dimo.testing import tiny_threedimo_module

    assert (
        ThreeDiMoTransformer._repeated_blocks
        == ThreeDiMoTransformer._no_split_modules
        == ["WanTransformerBlock", "CompactModulationWanBlock"]  # the latter: bf16_modulation's blocks
    )
    for bf16_modulation in (False, True):
        # torch.compile is lazy: nothing is traced here
        module = tiny_threedimo_module(compile=True, bf16_modulation=bf16_modulation)
        blocks = list(module.net.transformer.transformer.blocks)
        assert blocks and all(b._compiled_call_impl is not None for b in blocks)
        names = ThreeDiMoTransformer._repeated_blocks
        others = [m for m in module.modules() if type(m).__name__ not in names]
        assert not any(getattr(m, "_compiled_call_impl", None) is not None for m in others)


def test_backbone_interface_and_backbone_type_by_import_path():
    from dimo.models.threedimo.backbone import MotionBackbone

    torch.manual_seed(0)
    net = ThreeDiMoNet()
    assert isinstance(net.backbone, MotionBackbone) and len(net.backbone.blocks) == 2
    assert net.backbone.hidden_size == 32 and net.text_dim == net.backbone.text_dim == 32
    # a backbone class outside BACKBONES is named by its import path; the same class gives the same net
    torch.manual_seed(0)
    same = ThreeDiMoNet(backbone_type="dimo.models.threedimo.backbone.ThreeDiMoTransformer")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), same.state_dict().values()))
    assert same.export_config()["backbone_type"].endswith("ThreeDiMoTransformer")
    with pytest.raises(ValueError, match="unknown backbone_type"):
        ThreeDiMoNet(backbone_type="dit")
    with pytest.raises(ValueError, match="not a MotionBackbone"):
        ThreeDiMoNet(backbone_type="torch.nn.Linear")
