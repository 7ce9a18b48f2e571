"""FSDP overlay for the 14B preset: parsed config, wrap policy on `meta`, strategy checkpointing exact.

Lightning refuses FSDP on CPU (``FSDPStrategy`` "requires a GPU accelerator", checked in its
accelerator connector), so no multi-process FSDP run is possible here: the config is parsed by the
real CLI, the strategy is built from it, its wrap policy is applied to the real 14B network on the
meta device, and the strategy's activation checkpointing is run on the tiny network (same gradients).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from test_experiments import _parse_args, _ParseOnlyCLI

from dimo.strategies import ClassWrapPolicy

REPO = Path(__file__).resolve().parents[1]

CONFIG = REPO / "experiments" / "3dimo_paper_14b_fsdp.yaml"


def _strategy_config(tmp_path: Path, *extra: str):
    args = _parse_args(CONFIG, tmp_path)
    return _ParseOnlyCLI(args=[*args, *extra], run=False).config["trainer"]["strategy"]


def _policy(ns) -> ClassWrapPolicy:
    assert ns.class_path == "dimo.strategies.ClassWrapPolicy"
    return ClassWrapPolicy(**vars(ns.init_args))


def test_14b_fsdp_config_builds_the_strategy(tmp_path):
    ns = _strategy_config(tmp_path)
    assert ns.class_path == "lightning.pytorch.strategies.FSDPStrategy"
    init = vars(ns.init_args)
    wrap, ac = _policy(init.pop("auto_wrap_policy")), _policy(init.pop("activation_checkpointing_policy"))
    strategy = FSDPStrategy(**init, auto_wrap_policy=wrap, activation_checkpointing_policy=ac)
    assert strategy.kwargs["auto_wrap_policy"] is wrap and strategy.kwargs["use_orig_params"]
    assert strategy._state_dict_type == "sharded"
    assert wrap.layers == ["WanTransformerBlock"]
    assert ac.layers == ["WanTransformerBlock", "TransformerEncoderLayer"]


def test_bad_wrap_layer_fails_at_parse_time(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "trainer:\n  strategy:\n    init_args:\n      auto_wrap_policy:\n"
        "        class_path: dimo.strategies.ClassWrapPolicy\n        init_args: {layers: [WanBlok]}\n"
    )
    with pytest.raises(SystemExit):
        _strategy_config(tmp_path, "--config", str(bad))


def test_wrap_policy_on_the_14b_network_on_meta():
    """40 FSDP units, one per Wan block (16.2 B params); the root unit keeps the rest, chiefly the 40
    motion cross-attention layers (4.2 B), which the blocks' processors call by reference and so cannot
    be units of their own under FSDP1 (docs/scale.md counts the root as gathered for the whole step)."""

    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    from benchmarks.memory_model import PAPER_3DIMO_NET
    from dimo.models.threedimo import ThreeDiMoNet

    with torch.device("meta"):
        net = ThreeDiMoNet(**dict(PAPER_3DIMO_NET, backbone="wan2.1-i2v-14b"))
    units = ClassWrapPolicy(["WanTransformerBlock"])._run_policy(net, set(), {})
    units.pop(net, None)  # the root (everything else) is always a unit
    assert len(units) == 40 and all(isinstance(m, WanTransformerBlock) for m in units)
    total = sum(p.numel() for p in net.parameters())
    in_units = sum(p.numel() for m in units for p in m.parameters())
    motion = sum(p.numel() for p in net.transformer.motion_layers.parameters())
    assert 20e9 < total < 21e9 and 16e9 < in_units < 16.5e9
    assert 4e9 < motion and total - in_units - motion < 0.4e9  # root: motion layers + embeddings + encoders
    assert max(sum(p.numel() for p in m.parameters()) for m in units) < 0.45e9  # one block gathered at a time


def test_strategy_activation_checkpointing_gives_the_same_gradients():
    """What FSDPStrategy does with ``activation_checkpointing_policy`` (torch's
    ``apply_activation_checkpointing``) on the tiny 3DiMo network: Wan blocks and motion-encoder layers
    recomputed, outputs and gradients unchanged."""

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
        apply_activation_checkpointing,
    )

    from dimo.models.threedimo import ThreeDiMoNet

    torch.manual_seed(0)
    net = ThreeDiMoNet()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised motion layers get weight: every path has a gradient
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    b, t = 1, 5
    frames = torch.rand(b, t, 3, 64, 64) * 2 - 1
    wan = net.transformer.transformer.config
    latents, text = torch.randn(b, wan.in_channels, 2, 8, 8), torch.randn(b, 8, wan.text_dim)

    def grads():
        net.zero_grad(set_to_none=True)
        z = net.encoders(frames)
        out = net.transformer(latents, torch.tensor([0.5]), text, motion=z, num_motion_frames=t)
        out = out[0] if isinstance(out, tuple) else out
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        named = net.named_parameters()
        return out.detach(), {k.replace("_checkpoint_wrapped_module.", ""): p.grad for k, p in named}

    out0, g0 = grads()
    policy = ClassWrapPolicy(["WanTransformerBlock", "TransformerEncoderLayer"])
    apply_activation_checkpointing(net, auto_wrap_policy=policy)
    wrapped = [m for m in net.modules() if isinstance(m, CheckpointWrapper)]
    assert len(wrapped) == 2 + 2 * 2  # 2 Wan blocks, 2 encoders x 2 layers
    out1, g1 = grads()
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    assert g1.keys() == g0.keys()
    missing = [k for k, v in g0.items() if v is None and not k.startswith("geo_decoder.")]  # not run here
    assert not missing, missing[:5]
    for k in [k for k, v in g0.items() if v is not None]:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7, msg=k)


def test_norm_clipping_under_fsdp_goes_through_the_root_module(monkeypatch):
    """Lightning's FSDP precision plugin raises on norm clipping; the module clips through FSDP's root."""

    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from dimo.models.threedimo import ThreeDiMoModule

    module = ThreeDiMoModule(val_metrics=())
    calls = []
    strategy = FSDPStrategy()
    strategy.model = SimpleNamespace(clip_grad_norm_=calls.append)  # the FSDP-wrapped root
    strategy.precision_plugin = FSDPPrecision("bf16-mixed")
    monkeypatch.setattr(
        type(module),
        "trainer",
        property(
            lambda self: SimpleNamespace(
                strategy=strategy, gradient_clip_val=None, gradient_clip_algorithm=None
            )
        ),
    )
    with pytest.raises(MisconfigurationException, match="not supported"):  # what Lightning alone does
        strategy.precision_plugin.clip_grad_by_norm(None, 1.0)
    module.configure_gradient_clipping(None, 0.5, "norm")
    module.configure_gradient_clipping(None, 0.25, None)  # Lightning's default algorithm is norm
    assert calls == [0.5, 0.25]
