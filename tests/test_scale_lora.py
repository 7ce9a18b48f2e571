"""LoRA through peft (issue #15): ``train_parts: lora`` trains adapters + the new layers on a frozen
pretrained backbone, the adapters start as a no-op, and they are saved and loaded alone, strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dimo.models.lora import ADAPTER_WEIGHTS, LoRASettings
from dimo.models.threedimo import MissingWeightsError, ThreeDiMoModule, ThreeDiMoNet

REPO = Path(__file__).resolve().parents[1]
TOY_WAN = REPO / "pretrained" / "toy-wan2.1"
LORA = LoRASettings(rank=4, alpha=8.0)


def _inputs(net: ThreeDiMoNet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = net.transformer.transformer.config
    latents = torch.randn(1, cfg.in_channels, 3, 8, 8, generator=g)
    text = torch.randn(1, 6, cfg.text_dim, generator=g)
    driving = torch.rand(1, 9, 3, 64, 64, generator=g) * 2 - 1
    return latents, torch.tensor([500.0]), text, driving


def _forward(net: ThreeDiMoNet, seed: int = 0) -> torch.Tensor:
    latents, t, text, driving = _inputs(net, seed)
    with torch.no_grad():
        return net(latents, t, text, net.encode_motion(driving), 9)


def _nudge(params, scale: float = 0.05) -> None:
    """Stand-in for training: the adapters and new layers move away from their init."""

    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def base_net() -> ThreeDiMoNet:
    return ThreeDiMoNet(backbone_path=TOY_WAN / "transformer", motion_dim=32)


def test_settings_are_checked_when_parsed():
    for bad in (dict(rank=0), dict(alpha=0), dict(targets=[]), dict(targets="to_q"), dict(dropout=1.0)):
        with pytest.raises(ValueError, match="lora"):
            LoRASettings(**bad)
    with pytest.raises(ValueError, match="match no layer"):
        ThreeDiMoNet(motion_dim=32, lora=LoRASettings(targets=("no_such_layer",)))


def test_adapters_start_as_a_no_op_and_wrap_every_attention_projection(base_net):
    net = ThreeDiMoNet(backbone_path=TOY_WAN / "transformer", motion_dim=32, lora=LORA)
    # same pretrained Wan weights, same injection weights: copy the new layers over, then compare
    new = {k: v for k, v in base_net.state_dict().items() if not k.startswith("transformer.transformer.")}
    missing = set(new) - set(net.state_dict())
    assert not missing
    with torch.no_grad():
        for k, v in new.items():
            net.state_dict()[k].copy_(v)
    torch.testing.assert_close(_forward(net), _forward(base_net))
    blocks = len(net.transformer.transformer.blocks)
    # 4 projections x (self + text cross-attention) x blocks, each with lora_A and lora_B
    assert len(net.lora_parameters()) == 2 * 4 * 2 * blocks
    _nudge(net.lora_parameters())
    assert not torch.allclose(_forward(net), _forward(base_net))  # the adapters are in the forward path


def test_train_parts_lora_trains_only_adapters_and_new_layers():
    net = ThreeDiMoNet(backbone_path=TOY_WAN / "transformer", motion_dim=32, lora=LORA)
    module = ThreeDiMoModule(
        net=net, vae=None, text_encoder=None, from_cache=True, val_metrics=[], train_parts="lora"
    )
    trainable = {n for n, p in module.net.named_parameters() if p.requires_grad}
    lora = {n for n, _ in module.net.named_parameters() if "lora_" in n}
    base = {
        n
        for n, _ in module.net.named_parameters()
        if n.startswith("transformer.transformer.") and "lora_" not in n
    }
    assert lora and lora <= trainable and not (base & trainable)
    assert {n for n in trainable - lora} == {
        n for n, p in module.net.named_parameters() if any(p is q for q in module.net.motion_parameters())
    }
    # a gradient step moves the adapters and leaves every pretrained weight bit-identical
    before = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    opt = torch.optim.SGD(module.trainable_parameters(), lr=1.0)
    latents, t, text, driving = _inputs(net)
    out = module.net(latents, t, text, module.net.encode_motion(driving), 9)
    (out.square().mean() + sum(p.sum() for p in module.net.lora_parameters())).backward()
    opt.step()
    after = dict(module.net.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in base)
    assert any(not torch.equal(before[n], after[n]) for n in lora)
    # full fine-tuning with adapters present trains everything (peft's freezing does not leak)
    full = ThreeDiMoModule(
        net=ThreeDiMoNet(motion_dim=32, lora=LORA),
        vae=None,
        text_encoder=None,
        from_cache=True,
        val_metrics=[],
        train_parts="full",
    )
    assert all(p.requires_grad for p in full.net.parameters())
    with pytest.raises(ValueError, match="net.init_args.lora"):
        ThreeDiMoModule(
            net=ThreeDiMoNet(motion_dim=32),
            vae=None,
            text_encoder=None,
            from_cache=True,
            val_metrics=[],
            train_parts="lora",
        )


def test_adapters_are_saved_and_loaded_alone(tmp_path, base_net):
    net = ThreeDiMoNet(backbone_path=TOY_WAN / "transformer", motion_dim=32, lora=LORA)
    _nudge([*net.lora_parameters(), *net.motion_parameters()])
    out = net.save_adapters(tmp_path / "adapters")
    from safetensors.torch import load_file

    saved = load_file(out / ADAPTER_WEIGHTS)
    assert not any(k.startswith("transformer.transformer.") and "lora_" not in k for k in saved)
    assert sum(v.numel() for v in saved.values()) < 0.5 * sum(p.numel() for p in net.parameters())
    back = ThreeDiMoNet.from_adapters(out, TOY_WAN / "transformer")
    torch.testing.assert_close(_forward(back), _forward(net), rtol=0, atol=0)
    assert not torch.allclose(_forward(back), _forward(base_net))
    # the whole network (export path) round-trips with its adapters too
    torch.testing.assert_close(
        _forward(ThreeDiMoNet.from_pretrained(net.save_pretrained(tmp_path / "net"))), _forward(net)
    )

    # strict: another backbone, a missing key, a missing file are named errors
    other = tmp_path / "other_backbone"
    ThreeDiMoNet(motion_dim=32).transformer.transformer.save_pretrained(other)
    with pytest.raises(MissingWeightsError, match="not the one the adapters"):
        ThreeDiMoNet.from_adapters(out, other)
    from safetensors.torch import save_file

    saved.pop(sorted(k for k in saved if "lora_B" in k)[0])
    save_file(saved, out / ADAPTER_WEIGHTS)
    with pytest.raises(MissingWeightsError, match="missing 1"):
        ThreeDiMoNet.from_adapters(out, TOY_WAN / "transformer")
    (out / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(MissingWeightsError, match=ADAPTER_WEIGHTS):
        ThreeDiMoNet.from_adapters(out, TOY_WAN / "transformer")
    assert json.loads((out / "adapter_config.json").read_text())["lora"]["rank"] == 4


# -- HVG: adapters on the SVD-provided layers (base UNet + ReferenceNet), HVG's new layers train in full
def _hvg_loss(module, seed: int = 0) -> torch.Tensor:
    from dimo.testing import hvg_batch

    return module._loss(hvg_batch(2, 2, 2, 32, 32), torch.Generator().manual_seed(seed))


def test_hvg_lora_trains_adapters_and_new_layers_only_and_rebuilds_from_hparams():
    from dimo.models.hvg.module import HVGModule, backbone_parameters
    from dimo.models.hvg.network import is_hvg_key
    from dimo.testing import tiny_hvg_module

    torch.manual_seed(0)
    full = tiny_hvg_module(cfg_drop_prob=0.0)
    torch.manual_seed(0)
    lora = tiny_hvg_module(cfg_drop_prob=0.0, train_parts="lora", lora=LoRASettings(rank=2))
    names = dict(lora.unet.named_parameters())
    adapters = {n for n in names if "lora_" in n}
    assert any(n.startswith("reference_net.") for n in adapters)  # the ReferenceNet's layers too
    # no adapter on HVG's own layers (view attention etc.): they train in full
    assert not any(
        is_hvg_key(n.split(".lora_")[0] + ".weight") and not n.startswith("reference_net.") for n in adapters
    )
    provided = {n for n, _ in backbone_parameters(lora.unet)}
    assert provided and not any(names[n].requires_grad for n in provided)
    trainable = {n for n, p in names.items() if p.requires_grad}
    assert adapters <= trainable and trainable - adapters == {
        n for n, p in full.unet.named_parameters() if n not in {m for m, _ in backbone_parameters(full.unet)}
    }
    # B = 0: with the plain module's weights the adapted one computes exactly what it does
    wrapped = {k.replace(".base_layer.", "."): k for k in lora.state_dict() if "lora_" not in k}
    assert wrapped.keys() == full.state_dict().keys()
    with torch.no_grad():
        for k, v in full.state_dict().items():
            lora.state_dict()[wrapped[k]].copy_(v)
    torch.testing.assert_close(_hvg_loss(lora), _hvg_loss(full))
    # a step moves the adapters, not the SVD weights
    before = {n: p.detach().clone() for n, p in lora.unet.named_parameters()}
    opt = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=1.0)
    (_hvg_loss(lora) + sum(p.sum() for n, p in lora.unet.named_parameters() if "lora_B" in n)).backward()
    opt.step()
    after = dict(lora.unet.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in provided)
    assert any(not torch.equal(before[n], after[n]) for n in adapters)
    # hparams are plain values (weights_only checkpoints) and rebuild the same adapted network
    assert lora.hparams["lora"]["rank"] == 2
    again = HVGModule(**dict(lora.hparams))
    again.load_state_dict(lora.state_dict(), strict=True)
    torch.testing.assert_close(_hvg_loss(again), _hvg_loss(lora))
    with pytest.raises(ValueError, match="init_args.lora"):
        tiny_hvg_module(train_parts="lora")


def test_a_bad_lora_value_fails_before_anything_runs(tmp_path, capsys):
    from dimo.cli import run_lightning

    base = [
        "--config",
        str(REPO / "experiments/3dimo.yaml"),
        "--config",
        str(REPO / "experiments/3dimo_lora.yaml"),
    ]
    args = [*base, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    with pytest.raises(ValueError, match="lora.rank must be a positive integer, got 0"):
        run_lightning([*args, "--model.init_args.net.init_args.lora.rank=0"], run=False)


def test_hvg_adapters_are_saved_and_loaded_alone(tmp_path):
    from diffusers import UNetSpatioTemporalConditionModel

    from dimo.models.hvg import HVGConfig, HVGModule, HVGUNet
    from dimo.models.hvg.network import build_image_encoder, build_vae

    torch.manual_seed(0)
    cfg = HVGConfig()
    UNetSpatioTemporalConditionModel(**cfg.unet_kwargs()).save_pretrained(tmp_path / "svd" / "unet")
    build_vae(cfg).save_pretrained(tmp_path / "svd" / "vae")
    build_image_encoder(cfg).save_pretrained(tmp_path / "svd" / "image_encoder")
    module = HVGModule(
        net=HVGUNet(cfg), pretrained=tmp_path / "svd", train_parts="lora", lora=LORA, cfg_drop_prob=0.0
    )
    _nudge([p for p in module.unet.parameters() if p.requires_grad])
    out = module.save_adapters(tmp_path / "adapters")
    from safetensors.torch import load_file

    saved = load_file(out / ADAPTER_WEIGHTS)
    assert any("lora_B" in k for k in saved) and not any(k.endswith("base_layer.weight") for k in saved)
    back = HVGModule.from_adapters(out, tmp_path / "svd")
    torch.testing.assert_close(_hvg_loss(back), _hvg_loss(module), rtol=0, atol=0)
    saved.pop(next(iter(saved)))
    from safetensors.torch import save_file

    save_file(saved, out / ADAPTER_WEIGHTS)
    with pytest.raises(MissingWeightsError, match="missing 1"):
        HVGModule.from_adapters(out, tmp_path / "svd")
