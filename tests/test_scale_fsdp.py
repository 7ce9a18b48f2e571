"""FSDP overlay for the 14B preset: parsed config, wrap policy on `meta`, strategy checkpointing exact,
and a 2-process CPU run of the overlay's strategy with a sharded checkpoint resumed exactly.

Lightning refuses ``FSDPStrategy`` on CPU (its accelerator connector: "requires a GPU accelerator"),
and its wrapping passes ``device_id=None`` there, which torch's FSDP1 rejects. Neither is a limit of
FSDP1 on CPU: ``tests/sharded_cpu.py``'s ``CPUFSDPStrategy`` lifts exactly those two and runs the rest
of Lightning's strategy, with the overlay's own strategy settings, over gloo
(``test_two_process_fsdp_sharded_checkpoint_resumes_exactly``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
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


def _fsdp_fit(toy_root: Path, out: Path, strategy_yaml: Path, *extra: str) -> subprocess.CompletedProcess:
    from test_reliability import _toy_wan_args

    args = [
        sys.executable, "-m", "dimo.cli", "fit",
        "--config", str(REPO / "experiments/3dimo.yaml"), "--config", str(strategy_yaml),
        "--trainer.devices=2", f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.default_root_dir={out}",
        f"--checkpoint.dirpath={out / 'ckpt'}", "--checkpoint.every_n_train_steps=0",
        f"--data.init_args.root={toy_root}", "--data.init_args.frame_stride=1", "--data.init_args.height=32", "--data.init_args.width=32",
        "--data.init_args.batch_size=1", "--data.init_args.val_batches=0",
        "--data.init_args.log_preview=false",
        "--model.init_args.net.init_args.image_size=[32,32]", "--model.init_args.net.init_args.hand_crop=16",
        "--samples.every_n_steps=0", "--model.init_args.train_parts=full",
        '--trainer.callbacks+={"class_path": "sharded_cpu.DumpLocalState", "init_args": {"out": "%s"}}'
        % (out / "dump"),
        *_toy_wan_args(), *extra,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(args, cwd=out, env=env, capture_output=True, text=True, timeout=900)


def _unwrapped(name: str) -> str:
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


@pytest.mark.slow
def test_two_process_fsdp_sharded_checkpoint_resumes_exactly(toy_root, tmp_path):
    """The 14B overlay's strategy settings (full shard, units = Wan blocks, strategy checkpointing of
    Wan blocks and motion-encoder layers, sharded checkpoints) on the tiny 3DiMo with ``train_parts:
    full``, 2 processes: 2 steps with norm clipping, a sharded (DCP) checkpoint, a resume that
    restores every rank's shard of every weight and of the Adam state exactly, one more step, and
    Lightning's consolidation of the checkpoint. Before the fix the module stripped the frozen VAE /
    text-encoder keys from the checkpoint and the resume failed in DCP's load planner ("Missing key in
    checkpoint state_dict: model.vae...")."""

    from torch.distributed.checkpoint import FileSystemReader

    overlay = yaml.safe_load(CONFIG.read_text())["trainer"]["strategy"]
    assert overlay["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    strategy_yaml = tmp_path / "strategy.yaml"
    strategy_yaml.write_text(yaml.safe_dump({"trainer": {"strategy": {
        "class_path": "sharded_cpu.CPUFSDPStrategy", "init_args": overlay["init_args"]}}}))  # fmt: skip

    # norm clipping through the FSDP root (Lightning's FSDP precision plugin alone raises on it)
    clip = "--trainer.gradient_clip_val=0.01"
    first = _fsdp_fit(toy_root, tmp_path / "a", strategy_yaml, "--trainer.max_steps=2", clip)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = tmp_path / "a" / "ckpt" / "last.ckpt"
    assert ckpt.is_dir() and sorted(p.name for p in ckpt.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]
    sizes = {k: v.size for k, v in FileSystemReader(ckpt).read_metadata().state_dict_metadata.items()
             if hasattr(v, "size")}  # fmt: skip
    assert any(k.startswith("model.vae.") for k in sizes)  # frozen keys kept: DCP's load plans from them
    assert any(k.startswith("optimizer_0.") for k in sizes)

    second = _fsdp_fit(
        toy_root, tmp_path / "b", strategy_yaml, "--trainer.max_steps=3", f"--ckpt_path={ckpt}"
    )
    assert second.returncode == 0, second.stderr[-3000:]

    dumps = {(run, name): torch.load(tmp_path / run / "dump" / f"{name}.pt", weights_only=True)
             for run, names in (("a", ["rank0_start_step0", "rank1_start_step0", "rank0_end_step2",
                                       "rank1_end_step2"]),
                                ("b", ["rank0_start_step2", "rank1_start_step2", "rank0_end_step3"]))
             for name in names}  # fmt: skip
    saved = [dumps["a", f"rank{r}_end_step2"] for r in (0, 1)]
    # sharded: each parameter's two local pieces add up to the size the checkpoint records for it
    for name, p0 in saved[0]["params"].items():
        full = sizes[f"model.{_unwrapped(name)}"]
        assert p0.numel() + saved[1]["params"][name].numel() == full.numel(), name
    wan = [n for n in saved[0]["params"] if ".transformer.blocks." in n and n.endswith("attn1.to_q.weight")]
    blocks = {n.split(".transformer.blocks.")[1].split(".")[0] for n in wan}
    for b in blocks:  # every Wan block is a unit split over both ranks
        names = [n for n in saved[0]["params"] if f".transformer.blocks.{b}." in n]
        local = [sum(saved[r]["params"][n].numel() for n in names) for r in (0, 1)]
        assert 0 < local[0] < sum(local) and 0 < local[1], (b, local)
    for r in (0, 1):
        start, end = dumps["a", f"rank{r}_start_step0"], saved[r]
        resumed = dumps["b", f"rank{r}_start_step2"]
        assert resumed["global_step"] == 2
        # full training: the Wan blocks trained too
        in_blocks = [n for n in end["params"] if ".transformer.blocks." in n]
        assert not all(torch.equal(start["params"][n], end["params"][n]) for n in in_blocks)
        assert resumed["params"].keys() == end["params"].keys()
        for name, value in end["params"].items():
            assert torch.equal(resumed["params"][name], value), (r, name)
        assert resumed["optim"].keys() == end["optim"].keys() and len(end["optim"]) > 0
        for name, state in end["optim"].items():
            assert state.keys() == resumed["optim"][name].keys() == {"step", "exp_avg", "exp_avg_sq"}
            for key, value in state.items():
                assert torch.equal(resumed["optim"][name][key], value), (r, name, key)
    after = dumps["b", "rank0_end_step3"]
    assert after["global_step"] == 3
    in_blocks = [n for n in after["params"] if ".transformer.blocks." in n]
    assert not all(torch.equal(after["params"][n], saved[0]["params"][n]) for n in in_blocks)

    # the sharded checkpoint consolidates with Lightning's tool into one file that rebuilds the model
    # strictly (dimo.pipelines.checkpoint.load_module: what export / generate read)
    from safetensors.torch import load_file

    from dimo.pipelines.checkpoint import load_module

    env = dict(os.environ, OMP_NUM_THREADS="1")
    tool = [sys.executable, "-m", "lightning.pytorch.utilities.consolidate_checkpoint", str(ckpt)]
    proc = subprocess.run(tool, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, _ = load_module(ckpt.parent / "last.ckpt.consolidated", "3dimo")
    pretrained = load_file(REPO / "pretrained/toy-wan2.1/transformer/diffusion_pytorch_model.safetensors")
    trained = module.net.transformer.transformer.state_dict()
    assert not any(torch.equal(trained[k], v) for k, v in pretrained.items() if ".blocks." in k)


def test_frozen_keys_are_stripped_only_where_the_module_puts_them_back(monkeypatch):
    """DDP / single device: the frozen, folder-loaded VAE and text encoder stay out of checkpoints and
    come back in on_load_checkpoint. FSDP / ModelParallel load weights before that hook (and DeepSpeed's
    engine loads them itself): their checkpoints keep every key, and a checkpoint without a
    ``state_dict`` (sharded metadata, DeepSpeed client state) is accepted."""

    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

    from benchmarks.bench_train import build_module

    module = build_module("3dimo.yaml")
    assert module.vae.from_folder and module.text_encoder.from_folder
    strategies = {DDPStrategy(): False, SingleDeviceStrategy("cpu"): False, FSDPStrategy(): True,
                  ModelParallelStrategy(): True}  # fmt: skip
    for strategy, keeps in strategies.items():
        monkeypatch.setattr(
            type(module), "trainer", property(lambda self, s=strategy: SimpleNamespace(strategy=s))
        )
        monkeypatch.setattr(module, "_trainer", object())
        checkpoint = {"state_dict": module.state_dict()}
        module.on_save_checkpoint(checkpoint)
        frozen = [k for k in checkpoint["state_dict"] if k.startswith(("vae.", "text_encoder."))]
        assert bool(frozen) == keeps, type(strategy).__name__
        module.on_load_checkpoint(checkpoint)  # DDP: the frozen keys come back from the live module
        assert checkpoint["state_dict"].keys() == module.state_dict().keys()
    module.on_load_checkpoint({"global_step": 2})  # weights loaded by the strategy: nothing to do
