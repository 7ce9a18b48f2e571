"""Multi-process runs on CPU (gloo): what a cluster launch does, at toy scale.

HVG under plain ``ddp`` with ``cfg_drop_prob 1.0`` (every reference of every rank dropped, the case
that left the ReferenceNet's parameters without gradient) and gradient checkpointing on.
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
