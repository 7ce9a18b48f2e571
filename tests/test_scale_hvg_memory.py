"""HVG memory savers: view attention without relayout copies, reference K/V projected once per sample,
frozen encoders in bf16, VAE decode chunks; the paper configs' memory-model verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from dimo.models.hvg.layers import ForwardState, ReferenceAttnProcessor, ViewAttention

REPO = Path(__file__).resolve().parents[1]


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _grads(module: torch.nn.Module, fn, *inputs: torch.Tensor):
    module.zero_grad(set_to_none=True)
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), [t.grad for t in inputs], {k: p.grad.clone() for k, p in module.named_parameters()}


def _assert_same(a, b) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    for x, y in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    assert a[2].keys() == b[2].keys()
    for k in a[2]:  # float summation order differs: tolerance relative to the gradient's scale
        scale = float(b[2][k].abs().max())
        torch.testing.assert_close(a[2][k], b[2][k], rtol=1e-5, atol=1e-5 * scale, msg=k)


def test_view_attention_equals_attention_over_permuted_copies():
    """The no-copy processor computes exactly the textbook version: copy the tokens to (B*T*L, V, C),
    attend across V, copy back."""

    torch.manual_seed(0)
    b, v, t, seq, c = 2, 3, 2, 5, 32
    mod = ViewAttention(c, heads=4)
    _randomise(mod, 1)
    x = torch.randn(b * v * t, seq, c)

    def textbook(x):
        y = x.reshape(b, v, t, seq, c).permute(0, 2, 3, 1, 4).reshape(b * t * seq, v, c)
        y = AttnProcessor2_0()(mod.attn, mod.norm(y))
        return x + y.reshape(b, t, seq, v, c).permute(0, 3, 1, 2, 4).reshape(x.shape)

    _assert_same(_grads(mod, lambda x: mod(x, v, t), x), _grads(mod, textbook, x))


def test_view_attention_makes_no_copy_of_its_inputs():
    """q, k, v reach SDPA as views of the projections (same storage)."""

    mod = ViewAttention(32, heads=4)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append((q, k, v))
        return real(q, k, v, *a, **kw)

    projections = []
    for lin in (mod.attn.to_q, mod.attn.to_k, mod.attn.to_v):
        lin.register_forward_hook(lambda m, a, out: projections.append(out))
    F.scaled_dot_product_attention = spy
    try:
        mod(torch.randn(2 * 3 * 2, 5, 32), 3, 2)
    finally:
        F.scaled_dot_product_attention = real
    ((q, k, v),) = seen
    assert q.shape == (2, 2 * 5 * 4, 3, 8)  # (B, T*L*heads, V, d)
    for a, p in zip((q, k, v), projections, strict=True):
        assert a.untyped_storage().data_ptr() == p.untyped_storage().data_ptr()


@pytest.mark.parametrize("keep", [None, [True, False]])
def test_reference_kv_projected_once_equals_per_image_projection(keep):
    """Projecting the reference tokens once per sample and broadcasting them to its V*T images gives
    the values and gradients of projecting the repeated tokens (the previous implementation)."""

    torch.manual_seed(0)
    b, per, seq, lr, c = 2, 3, 6, 4, 32
    attn = Attention(query_dim=c, heads=4, dim_head=8)
    _randomise(attn, 2)
    state = ForwardState()
    proc = ReferenceAttnProcessor(state, "blk")
    state.reference_keep = None if keep is None else torch.tensor(keep)
    hidden, ref = torch.randn(b * per, seq, c), torch.randn(b, lr, c)

    def new(hidden, ref):
        state.reference_features = {"blk": ref}
        return proc(attn, hidden)

    def repeated(hidden, ref):
        kv = torch.cat([hidden, ref.repeat_interleave(per, dim=0)], dim=1)
        mask = None
        if keep is not None:
            allowed = torch.ones(b * per, 1, seq + lr, dtype=torch.bool)
            allowed[:, :, seq:] = torch.tensor(keep).repeat_interleave(per)[:, None, None]
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        return AttnProcessor2_0()(attn, hidden, kv, mask)

    _assert_same(_grads(attn, new, hidden, ref), _grads(attn, repeated, hidden, ref))
    if keep is not None:  # a dropped sample is plain self-attention
        torch.testing.assert_close(
            new(hidden, ref)[per:], AttnProcessor2_0()(attn, hidden)[per:], rtol=1e-5, atol=1e-6
        )


def _module(**kwargs):
    from dimo.models.hvg import HVGModule

    torch.manual_seed(0)
    return HVGModule(sample_steps=2, val_metrics=(), gap_sigmas=(), **kwargs)


def test_frozen_encoders_in_bf16_hold_bf16_weights_and_return_the_input_dtype():
    full, half = _module(), _module(frozen_dtype="bfloat16")
    half.load_state_dict(full.state_dict())  # same weights, cast to bf16
    assert {p.dtype for p in half.vae.parameters()} | {p.dtype for p in half.image_encoder.parameters()} == {
        torch.bfloat16
    }
    assert {p.dtype for p in half.unet.parameters()} == {torch.float32}
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    for fn in ("encode_images", "clip_embed"):
        a, b = getattr(full, fn)(images), getattr(half, fn)(images)
        assert b.dtype == torch.float32
        assert float((a - b).norm() / a.norm()) < 0.05, fn
    with pytest.raises(ValueError, match="frozen_dtype must be one of"):
        _module(frozen_dtype="float8")


def test_vae_decode_chunk_decodes_each_video_in_frame_chunks():
    mod = _module(vae_decode_chunk=2)
    t = 4
    latents = torch.randn(2 * t, mod.vae.config.latent_channels, 4, 4)  # two videos of 4 frames
    out = mod.decode_latents(latents, num_frames=t)
    z = latents / mod.vae.config.scaling_factor
    with torch.no_grad():
        want = torch.cat([mod.vae.decode(c, num_frames=2).sample for c in z.split(2)]).clamp(-1, 1)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    whole = _module(vae_decode_chunk=None)
    whole.load_state_dict(mod.state_dict())
    with torch.no_grad():
        want_whole = torch.cat([mod.vae.decode(c, num_frames=t).sample for c in z.split(t)]).clamp(-1, 1)
    torch.testing.assert_close(whole.decode_latents(latents, num_frames=t), want_whole, rtol=0, atol=1e-5)
    assert float((out - want_whole).abs().max()) > 1e-3  # the chunks really were decoded apart
    with pytest.raises(ValueError, match="vae_decode_chunk must be >= 1"):
        _module(vae_decode_chunk=0)


@pytest.mark.parametrize("name", ["hvg_paper_phase1.yaml", "hvg_paper_phase2.yaml"])
def test_hvg_paper_configs_fit_80gb_by_the_memory_model(name):
    from benchmarks.memory_model import config_estimate

    est = config_estimate(REPO / "experiments" / name)
    assert est.fits(80), est
    # without the layer checkpointing the same config is far over
    assert config_estimate(REPO / "experiments" / name, checkpointing=False).total_gib > 200
