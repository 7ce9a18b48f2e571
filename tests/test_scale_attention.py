"""Attention-backend scoping (dimo.models.attention) and motion-encoder checkpointing."""

from __future__ import annotations

import pytest
import torch

from dimo.models.attention import is_attention_layer, scope_attention_backend
from dimo.models.threedimo import ThreeDiMoNet
from dimo.models.threedimo.motion_encoder import TiTokEncoder


def _flags() -> tuple[bool, bool, bool]:
    b = torch.backends.cuda
    return b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled()


def _record(root: torch.nn.Module) -> list:
    seen = []
    for layer in root.modules():
        if is_attention_layer(layer):
            layer.register_forward_pre_hook(lambda m, a: seen.append((type(m).__name__, _flags())))
    return seen


def test_backend_reaches_every_attention_layer_of_the_net_and_nothing_else():
    torch.manual_seed(0)
    net = ThreeDiMoNet()
    outside = _flags()
    assert scope_attention_backend([net], "math") > 0
    seen = _record(net)  # registered after the scope's hooks: sees the scoped flags
    b, t = 1, 5
    z = net.encoders(torch.rand(b, t, 3, 64, 64) * 2 - 1)
    wan = net.transformer.transformer.config
    net.transformer(
        torch.randn(b, wan.in_channels, 2, 8, 8),
        torch.tensor([0.5]),
        torch.randn(b, 8, wan.text_dim),
        motion=z,
        num_motion_frames=t,
    )
    kinds = {k for k, _ in seen}
    # Wan self/text attention, the motion injection (WanAttention) and the motion encoders (MHA)
    assert {"WanAttention", "MultiheadAttention"} <= kinds
    assert len(seen) >= 2 * 3 + 2 * 2  # 2 Wan blocks x (self, text, motion); 2 encoders x 2 layers
    assert all(f == (False, False, True) for _, f in seen), seen
    assert _flags() == outside  # restored after every layer: the frozen VAE never sees it


def test_backend_holds_while_checkpointed_blocks_are_recomputed():
    from test_hvg_network import _inputs

    from dimo.models.hvg import HVGConfig
    from dimo.models.hvg.network import HVGUNet

    torch.manual_seed(0)
    net = HVGUNet(HVGConfig())
    net.enable_gradient_checkpointing()
    scope_attention_backend([net], "math")
    seen = _record(net)
    out = net(**_inputs())
    forward_calls = len(seen)
    out.square().mean().backward()
    assert len(seen) > forward_calls  # spatial blocks recomputed in backward
    assert all(f == (False, False, True) for _, f in seen)


def test_unknown_backend_fails_and_auto_adds_nothing():
    net = TiTokEncoder()
    assert scope_attention_backend([net], "auto") == 0
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        scope_attention_backend([net], "fast")  # type: ignore[arg-type]


def test_motion_encoder_checkpointing_gives_the_same_gradients(monkeypatch):
    import dimo.models.threedimo.motion_encoder as me

    calls = []
    real = me.checkpoint
    monkeypatch.setattr(me, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    enc = TiTokEncoder()
    x = torch.rand(2, 3, 3, 64, 64) * 2 - 1

    def grads():
        enc.zero_grad(set_to_none=True)
        out = enc(x)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in enc.named_parameters()}

    out_a, g_a = grads()
    enc.gradient_checkpointing = True
    out_b, g_b = grads()
    assert len(calls) == len(enc.blocks.layers)  # every layer checkpointed
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    for k in g_a:
        torch.testing.assert_close(g_b[k], g_a[k], rtol=1e-5, atol=1e-7, msg=k)
