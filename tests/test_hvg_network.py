"""HVG network: zero-init, view attention, camera embedding, reference pathways, strict SVD loading."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from dimo.geometry.cameras import look_at, relative_rotation
from dimo.models.hvg.conditioning import render_pose_maps
from dimo.models.hvg.config import HVGConfig
from dimo.models.hvg.network import HVGUNet, count_parameters, is_hvg_key, load_svd_unet_weights
from dimo.testing import synthetic_hvg_sample

B, V, T, H = 1, 3, 2, 32
C = HVGConfig().unet_kwargs()["out_channels"]  # latent channels of the tiny preset
D = HVGConfig().latent_downsample  # its VAE's spatial factor


def _inputs(seed: int = 0, pose_condition: str = "dual") -> dict:
    g = torch.Generator().manual_seed(seed)
    s = synthetic_hvg_sample(V, T, H, H, seed=seed)
    h = H // D
    return {
        "sample": torch.randn(B, V, T, C, h, h, generator=g),
        "timestep": torch.tensor([0.3]),
        "encoder_hidden_states": torch.randn(B, 1, 32, generator=g),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]]),
        "cond_latent": torch.randn(B, C, h, h, generator=g),
        "reference_latent": torch.randn(B, C, h, h, generator=g),
        "pose_maps": render_pose_maps(
            s["joints3d"][None], s["K"][None], s["R"][None], s["t"][None], H, H, pose_condition
        ),
        "rel_rot": s["rel_rot"][None],
    }


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@torch.no_grad()
def test_zero_init_leaves_base_unet_output_unchanged():
    torch.manual_seed(0)
    base = UNetSpatioTemporalConditionModel(**HVGConfig().unet_kwargs()).eval()
    net = HVGUNet(HVGConfig(reference_net=False)).eval()
    load_svd_unet_weights(net, base.state_dict())
    x = _inputs()
    out = net(**x)
    cond = x["cond_latent"][:, None, None].expand(B, V, T, C, H // D, H // D)
    plain = torch.cat([x["sample"], cond], dim=3).reshape(B * V, T, 2 * C, H // D, H // D)
    ref = base(
        plain,
        x["timestep"].expand(B * V),
        x["encoder_hidden_states"].repeat_interleave(V, 0),
        x["added_time_ids"].repeat_interleave(V, 0),
    ).sample.reshape(out.shape)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # Each zero-initialised door is live: opening it changes the output.
    for part in (net.pose_modulator.proj_out, net.camera_embedding.linear_2):
        _randomise(part)
        assert (net(**x) - ref).abs().max() > 1e-3
        torch.nn.init.zeros_(part.weight)
        torch.nn.init.zeros_(part.bias)
    first_view_attn = next(m for n, m in net.named_modules() if n.endswith("view_attn"))
    _randomise(first_view_attn.attn.to_out[0])
    assert (net(**x) - ref).abs().max() > 1e-3


@pytest.mark.parametrize("view_attention", [True, False])
@torch.no_grad()
def test_view_attention_mixes_views_only_when_on(view_attention: bool):
    torch.manual_seed(0)
    net = HVGUNet(HVGConfig(view_attention=view_attention)).eval()
    for name, module in net.named_modules():
        if name.endswith("view_attn"):
            _randomise(module.attn.to_out[0])
    x = _inputs()
    out = net(**x)
    x2 = dict(x, sample=x["sample"].clone())
    x2["sample"][:, 0] += torch.randn_like(x2["sample"][:, 0])
    out2 = net(**x2)
    assert (out2[:, 0] - out[:, 0]).abs().max() > 1e-3  # the perturbed view changes
    others = (out2[:, 1:] - out[:, 1:]).abs().max()
    if view_attention:
        assert others > 1e-4
    else:
        assert others == 0


def test_camera_embedding_identities():
    torch.manual_seed(0)
    eye = torch.tensor([[0.0, 1.0, 3.0], [3.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    R, _ = look_at(eye, torch.zeros(3, 3))
    rel = relative_rotation(R)
    torch.testing.assert_close(rel[0], torch.eye(3), atol=1e-6, rtol=0)
    net = HVGUNet(HVGConfig(reference_net=False))
    cam = net.camera_embedding
    assert cam(rel).abs().max() == 0  # zero at init
    _randomise(cam.linear_2)
    emb = cam(rel)
    torch.testing.assert_close(emb[0], emb[2])  # identical cameras, identical embeddings
    torch.testing.assert_close(emb[0], cam(torch.eye(3)[None])[0])  # view 0 is the identity
    assert (emb[0] - emb[1]).abs().max() > 1e-3  # different cameras differ


@torch.no_grad()
def test_reference_dropout_equals_no_reference():
    torch.manual_seed(0)
    net = HVGUNet(HVGConfig()).eval()
    x = _inputs()
    with_ref = net(**x)
    dropped = net(**x, reference_keep=torch.tensor([False]))
    none = net(**dict(x, cond_latent=None, reference_latent=None, encoder_hidden_states=None))
    torch.testing.assert_close(dropped, none, rtol=0, atol=1e-5)
    assert (with_ref - none).abs().max() > 1e-3
    # ReferenceNet features really enter: changing only the ReferenceNet input changes the output.
    other = net(**dict(x, reference_latent=x["reference_latent"] + 1.0))
    assert (other - with_ref).abs().max() > 1e-4


@pytest.mark.parametrize("pose_condition", ["depth", "normal", "skeleton"])
@torch.no_grad()
def test_pose_ablations_run_and_condition(pose_condition: str):
    torch.manual_seed(0)
    net = HVGUNet(HVGConfig(pose_condition=pose_condition, reference_net=False)).eval()
    assert set(net.pose_modulator.guiders) == {pose_condition}
    _randomise(net.pose_modulator.proj_out)
    x = _inputs(pose_condition=pose_condition)
    assert set(x["pose_maps"]) == {pose_condition}
    out = net(**x)
    moved = net(**dict(x, pose_maps={k: torch.flip(m, dims=[-1]) for k, m in x["pose_maps"].items()}))
    assert out.shape == (B, V, T, C, H // D, H // D) and (moved - out).abs().max() > 1e-4


def test_svd_weights_load_strictly_with_hvg_allow_list():
    base = UNetSpatioTemporalConditionModel(**HVGConfig().unet_kwargs())
    sd = base.state_dict()
    net = HVGUNet(HVGConfig())
    load_svd_unet_weights(net, sd)
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    # the ReferenceNet starts as a copy of the UNet's down/mid blocks
    torch.testing.assert_close(
        net.reference_net.down_blocks[0].resnets[0].spatial_res_block.conv1.weight,
        sd["down_blocks.0.resnets.0.spatial_res_block.conv1.weight"],
    )
    with pytest.raises(RuntimeError, match="unexpected"):
        load_svd_unet_weights(net, {**sd, "down_blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="conv_out.weight"):
        load_svd_unet_weights(net, {k: v for k, v in sd.items() if k != "conv_out.weight"})
    new = [k for k in net.state_dict() if k not in sd]
    assert new and all(is_hvg_key(k) for k in new)
    assert {k.split(".")[0] for k in new} >= {"pose_modulator", "camera_embedding", "reference_net"}
    assert any(".view_attn." in k for k in new)


def test_svd_xt_preset_counts_on_meta():
    with torch.device("meta"):
        net = HVGUNet(HVGConfig(preset="svd-xt"))
    assert count_parameters(net, exclude_hvg=True) == 1_524_623_082
    assert count_parameters(net) == 2_246_368_219


def _batch2(seed: int = 0) -> dict:
    """Two samples (the inputs of :func:`_inputs` and of another seed) stacked on the batch axis."""

    a, b = _inputs(seed), _inputs(seed + 1)
    out = {}
    for k, va in a.items():
        if isinstance(va, dict):
            out[k] = {n: torch.cat([m, b[k][n]]) for n, m in va.items()}
        elif k == "timestep":
            out[k] = torch.tensor([0.3, 0.8])
        else:
            out[k] = torch.cat([va, b[k]])
    return out


def test_all_dropped_references_still_reach_every_reference_parameter():
    """CFG dropout of every sample in a training call: the ReferenceNet still runs (so DDP sees no
    unused parameter), its tokens are masked out (output == no reference), its gradient is zero."""

    torch.manual_seed(0)
    net = HVGUNet(HVGConfig())
    _randomise(net, seed=3)
    x = _batch2()
    dropped = net(**x, reference_keep=torch.tensor([False, False]))
    with torch.no_grad():
        none = net(**dict(x, reference_latent=None, cond_latent=None, encoder_hidden_states=None))
    torch.testing.assert_close(dropped, none, rtol=0, atol=1e-5)
    dropped.square().mean().backward()
    ref_params = {k: p for k, p in net.reference_net.named_parameters() if p.requires_grad}
    assert len(ref_params) > 20
    no_grad = [k for k, p in ref_params.items() if p.grad is None]
    assert not no_grad, no_grad[:5]
    assert all(float(p.grad.abs().max()) == 0.0 for p in ref_params.values())
    # every trainable parameter of the whole network is reached (what DDP requires)
    assert not [k for k, p in net.named_parameters() if p.requires_grad and p.grad is None]


def test_gradient_checkpointing_gives_the_same_gradients():
    """Checkpointed layers are recomputed in backward after the call cleared its per-call state
    (views, frames, reference features): the state is restored there, so gradients are unchanged.
    Whole spatio-temporal layers are checkpointed (temporal attention and res blocks included), in the
    ReferenceNet's down blocks too; state-dict keys do not change."""

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from dimo.models.hvg.network import CHECKPOINTED_LAYERS, strip_checkpoint_prefix

    torch.manual_seed(0)
    net = HVGUNet(HVGConfig())
    _randomise(net, seed=3)  # every zero-initialised HVG layer gets weight, so every path has a gradient
    x = _batch2()
    keep = torch.tensor([True, False])
    keys = set(net.state_dict())

    def grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        out = net(**x, reference_keep=keep)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        named = net.named_parameters()
        return out.detach(), {
            strip_checkpoint_prefix(k): p.grad.clone() for k, p in named if p.grad is not None
        }

    out_plain, g_plain = grads()
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    net.enable_gradient_checkpointing()
    wrapped = {n for n, m in net.named_modules() if isinstance(m, CheckpointWrapper)}
    torch.utils.checkpoint.checkpoint = counting
    try:
        out_ckpt, g_ckpt = grads()
    finally:
        torch.utils.checkpoint.checkpoint = real
    # every checkpointable layer of the UNet (res blocks, whole spatio-temporal transformers incl.
    # temporal attention, samplers, pose modulator) and of the ReferenceNet's down blocks, nothing nested
    expected = {
        n
        for n, m in HVGUNet(HVGConfig()).named_modules()
        if isinstance(m, CHECKPOINTED_LAYERS) and not n.startswith("reference_net.mid_block")
    }
    assert wrapped == expected and any(n.startswith("reference_net.down") for n in wrapped)
    assert "down_blocks.0.attentions.0" in wrapped and "pose_modulator" in wrapped
    assert len(calls) == len(wrapped)
    assert set(net.state_dict()) == keys
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    assert g_ckpt.keys() == g_plain.keys()
    assert len(g_plain) > 100
    for k in g_plain:
        torch.testing.assert_close(g_ckpt[k], g_plain[k], rtol=1e-5, atol=1e-6, msg=k)
    net.disable_gradient_checkpointing()
    assert not net.is_gradient_checkpointing and set(net.state_dict()) == keys


def test_pose_guider_reaches_the_latent_grid_of_either_vae():
    from dimo.models.hvg.layers import PoseGuider

    x = torch.zeros(1, 3, 64, 64)
    assert PoseGuider(3, (16, 16, 32, 32), downsample=8)(x).shape == (1, 32, 8, 8)  # SVD-xt's VAE
    assert PoseGuider(3, (16, 16, 32, 32), downsample=4)(x).shape == (1, 32, 16, 16)  # the toy VAE
    assert HVGConfig(preset="svd-xt").latent_downsample == 8 and D == 4
    with pytest.raises(ValueError, match="power of 2"):
        PoseGuider(3, (16, 16, 32, 32), downsample=3)
