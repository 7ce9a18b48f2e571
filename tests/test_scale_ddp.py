"""Multi-process runs on CPU (gloo): what a cluster launch does, at toy scale.

HVG under plain ``ddp`` with ``cfg_drop_prob 1.0`` (every reference of every rank dropped, the case
that left the ReferenceNet's parameters without gradient) and gradient checkpointing on; 3DiMo with
``experiments/3dimo_paper.yaml`` itself (``train_parts: full``, checkpointing, bf16 modulation,
``bf16-mixed``, fused Adam, gradient accumulation) at the tiny preset's widths. Lightning's ``ddp``
does not look for unused parameters: one trainable tensor without a gradient fails the next step.
And a ``torchrun`` launch of ``dimo.cli fit`` as docs/scale.md writes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _hvg_fit(toy_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "dimo.cli", "fit", "--config", str(REPO / "experiments/hvg.yaml"),
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'ckpt'}", "--checkpoint.every_n_train_steps=0",
        f"--model.init_args.pretrained={REPO / 'pretrained' / 'toy-svd-xt'}",
        f"--model.init_args.consistency_detector={REPO / 'pretrained' / 'toy-detector'}",
        f"--pose_eval.detector={REPO / 'pretrained' / 'toy-detector'}",
        f"--data.init_args.root={toy_root}", "--data.init_args.height=32", "--data.init_args.width=32",
        "--data.init_args.num_views=2", "--data.init_args.num_frames=2", "--data.init_args.batch_size=1",
        "--data.init_args.val_batches=0", "--trainer.max_steps=2", *extra,
    ]  # fmt: skip


def test_hvg_ddp_with_every_reference_dropped(toy_root, tmp_path):
    args = _hvg_fit(
        toy_root, tmp_path,
        "--trainer.strategy=ddp", "--trainer.devices=2",
        "--model.init_args.cfg_drop_prob=1.0", "--model.init_args.gradient_checkpointing=true",
    )  # fmt: skip
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 2


def test_threedimo_paper_config_full_training_under_ddp(toy_root, tmp_path):
    """The paper config with only the sizes swapped for the tiny preset (network widths, toy folders,
    32x32 x 9 frames, CPU): 2 processes x 2 accumulated micro-batches x 2 steps, every Wan weight trained."""

    from safetensors.torch import load_file

    wan = REPO / "pretrained" / "toy-wan2.1"
    net = "--model.init_args.net.init_args."
    args = [
        sys.executable, "-m", "dimo.cli", "fit",
        "--config", str(REPO / "experiments/3dimo.yaml"),
        "--config", str(REPO / "experiments/3dimo_paper.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.accumulate_grad_batches=2",
        "--trainer.max_steps=2", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
        "--checkpoint.every_n_train_steps=0", "--samples.every_n_steps=0",
        f"--data.init_args.root={toy_root}", "--data.init_args.frame_stride=1", "--data.init_args.num_frames=9", "--data.init_args.height=32",
        "--data.init_args.width=32", "--data.init_args.num_workers=0", "--data.init_args.val_batches=0",
        "--data.init_args.log_preview=false",
        f"--model.init_args.pretrained={wan}", f"{net}backbone=tiny", f"{net}image_size=[32,32]",
        f"{net}patch_size=8", f"{net}hand_crop=16", f"{net}motion_dim=64", f"{net}motion_depth=2",
        f"{net}motion_heads=4", f"{net}geo_hidden=64",
        "--model.init_args.text_encoder.init_args.max_length=48",
    ]  # fmt: skip
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 2
    hp = ckpt["hyper_parameters"]
    assert (hp["train_parts"], hp["gradient_checkpointing"], hp["bf16_modulation"]) == ("full", True, True)
    pretrained = load_file(wan / "transformer" / "diffusion_pytorch_model.safetensors")
    state = ckpt["state_dict"]
    unchanged = [
        k for k, v in pretrained.items() if torch.equal(state[f"net.transformer.transformer.{k}"], v)
    ]
    assert not unchanged, unchanged[:5]  # full training: every backbone tensor moved


def test_torchrun_launches_a_two_process_fit(toy_root, tmp_path):
    """``torchrun ... -m dimo.cli fit`` as docs/scale.md writes it (c10d rendezvous): Lightning takes
    the ranks from torchrun's environment and starts no processes of its own (2 ranks, not 4)."""

    from test_reliability import _toy_wan_args

    args = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", "--rdzv-id=dimo-test",
        "-m", "dimo.cli", "fit", "--config", str(REPO / "experiments/3dimo.yaml"),
        "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=2",
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'ckpt'}", f"--data.init_args.root={toy_root}", "--data.init_args.frame_stride=1",
        "--data.init_args.height=32", "--data.init_args.width=32", "--data.init_args.batch_size=1",
        "--data.init_args.val_batches=0", "--data.init_args.log_preview=false",
        "--model.init_args.net.init_args.image_size=[32,32]", "--model.init_args.net.init_args.hand_crop=16",
        "--samples.every_n_steps=0", *_toy_wan_args(),
    ]  # fmt: skip
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = sorted(line for line in (proc.stdout + proc.stderr).splitlines() if "GLOBAL_RANK" in line)
    assert [r.split("distributed: ")[-1] for r in ranks] == [
        "GLOBAL_RANK: 0, MEMBER: 1/2",
        "GLOBAL_RANK: 1, MEMBER: 2/2",
    ], ranks
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 2
