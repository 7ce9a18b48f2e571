"""``bf16_modulation``: Wan's block modulation kept in the compute dtype (dimo.models.threedimo.modulation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dimo.models.threedimo import ThreeDiMoNet
from dimo.models.threedimo.modulation import CompactModulationWanBlock, set_compact_modulation

EXP = Path(__file__).resolve().parents[1] / "experiments"
B, T, F, H, W = 2, 5, 2, 8, 8  # 5 driving frames -> 2 latent frames of 8x8 -> N = 2 * 4 * 4 tokens


def _inputs(per_token: bool):
    g = torch.Generator().manual_seed(1)
    net = ThreeDiMoNet()
    wan = net.transformer.transformer.config
    n = F * (H // 2) * (W // 2)
    if per_token:  # 3DiMo's T2V timesteps: 0 on the reference frame's tokens, t elsewhere
        timestep = torch.full((B, n), 700.0)
        timestep[:, : n // F] = 0.0
    else:
        timestep = torch.tensor([300.0, 800.0])
    return dict(
        latents=torch.randn(B, wan.in_channels, F, H, W, generator=g),
        timestep=timestep,
        text=torch.randn(B, 8, wan.text_dim, generator=g),
        driving=torch.rand(B, T, 3, 64, 64, generator=g) * 2 - 1,
    )


def _run(net: ThreeDiMoNet, x: dict, autocast: bool):
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        z = net.encoders(x["driving"])
        out = net.transformer(x["latents"], x["timestep"], x["text"], motion=z, num_motion_frames=T)
    out.float().square().mean().backward()
    grads = {k: p.grad.float().clone() for k, p in net.named_parameters() if p.grad is not None}
    return out.detach().float(), grads


def _nets():
    torch.manual_seed(0)
    plain = ThreeDiMoNet()
    compact = ThreeDiMoNet()
    compact.load_state_dict(plain.state_dict())
    assert set_compact_modulation(compact) == len(compact.transformer.transformer.blocks) == 2
    return plain, compact


@pytest.mark.parametrize("per_token", [True, False])
def test_fp32_is_exactly_diffusers_block(per_token):
    plain, compact = _nets()
    x = _inputs(per_token)
    out_a, g_a = _run(plain, x, autocast=False)
    out_b, g_b = _run(compact, x, autocast=False)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    assert g_a.keys() == g_b.keys() and any("scale_shift_table" in k for k in g_a)
    for k in g_a:
        torch.testing.assert_close(g_b[k], g_a[k], rtol=0, atol=0, msg=k)


def test_bf16_is_close_to_diffusers_bf16_and_to_fp32():
    plain, compact = _nets()
    x = _inputs(per_token=True)
    ref, g_ref = _run(plain, x, autocast=False)  # fp32 reference
    out_a, g_a = _run(plain, x, autocast=True)  # diffusers' block under bf16 autocast
    out_b, g_b = _run(compact, x, autocast=True)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    err_upstream, err_compact = rel(out_a, ref), rel(out_b, ref)
    assert err_compact < 2e-2, err_compact
    assert err_compact < 3 * err_upstream + 1e-3, (err_compact, err_upstream)
    assert rel(out_b, out_a) < 2e-2
    for k in g_ref:
        if g_ref[k].norm() == 0:  # zero-initialised layers' inputs (e.g. before a zero projection)
            assert g_b[k].norm() <= 1e-6, k
            continue
        assert rel(g_b[k], g_ref[k]) < 3 * rel(g_a[k], g_ref[k]) + 5e-2, k


def _saved_storages(net: ThreeDiMoNet, x: dict) -> list[tuple[torch.dtype, int]]:
    seen = []

    def pack(t):
        seen.append((t.dtype, t.untyped_storage().nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = net.encoders(x["driving"])
            net.transformer(x["latents"], x["timestep"], x["text"], motion=z, num_motion_frames=T)
    return seen


def test_the_per_token_modulation_is_kept_in_bf16():
    plain, compact = _nets()
    x = _inputs(per_token=True)
    wan = plain.transformer.transformer.config
    mod = B * x["timestep"].shape[1] * 6 * wan.num_attention_heads * wan.attention_head_dim  # (B, N, 6, D)
    before = _saved_storages(plain, x)
    after = _saved_storages(compact, x)
    assert before.count((torch.float32, 4 * mod)) >= 2  # diffusers' fp32 sum, kept by its gate chunks
    assert (torch.float32, 4 * mod) not in after
    assert (torch.bfloat16, 2 * mod) in after


def test_switch_keeps_keys_policies_and_compilation_names():
    from dimo.strategies import ClassWrapPolicy

    plain, compact = _nets()
    assert list(compact.state_dict()) == list(plain.state_dict())
    blocks = list(compact.transformer.transformer.blocks)
    assert all(type(b) is CompactModulationWanBlock for b in blocks)
    policy = ClassWrapPolicy(["WanTransformerBlock"])  # the FSDP overlay's units / checkpoint regions
    assert all(policy._module_classes and isinstance(b, tuple(policy._module_classes)) for b in blocks)
    names = {type(m).__name__ for m in compact.modules()}
    assert names & set(compact.transformer._repeated_blocks)  # compile_repeated_blocks still finds them
    set_compact_modulation(compact, enabled=False)
    assert all(type(b).__name__ == "WanTransformerBlock" for b in blocks)


def test_module_option_and_the_paper_config():
    from dimo.cli import DimoCLI
    from dimo.models.threedimo import ThreeDiMoModule

    module = ThreeDiMoModule(bf16_modulation=True, val_metrics=())
    assert all(type(b) is CompactModulationWanBlock for b in module.net.transformer.transformer.blocks)
    assert not any(
        type(b) is CompactModulationWanBlock for b in ThreeDiMoModule(val_metrics=()).net.modules()
    )

    class _ParseOnly(DimoCLI):
        def instantiate_classes(self) -> None:
            return None

    for chain in (
        ["3dimo.yaml", "3dimo_paper.yaml"],
        ["3dimo.yaml", "3dimo_paper.yaml", "3dimo_paper_14b_fsdp.yaml"],
    ):
        args = [a for name in chain for a in ("--config", str(EXP / name))]
        cfg = _ParseOnly(args=[*args, "--trainer.logger=false"], run=False).config
        assert cfg["model"]["init_args"]["bf16_modulation"] is True, chain
    cfg = _ParseOnly(args=["--config", str(EXP / "3dimo.yaml"), "--trainer.logger=false"], run=False).config
    assert cfg["model"]["init_args"]["bf16_modulation"] is False
