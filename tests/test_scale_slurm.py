"""SLURM auto-requeue, as the sbatch template uses it, in one CPU process with a fake SLURM job.

The environment says "SLURM job 4242, one task"; a stub ``scontrol`` on PATH records its arguments.
SIGUSR1 arrives during step 2 (what ``#SBATCH --signal=SIGUSR1@90`` sends): Lightning must save
``hpc_ckpt_1.ckpt`` in the run folder and call ``scontrol requeue 4242``. The "requeued" job (same
command, same folder) must resume from that checkpoint by itself, with no ckpt_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "dimo",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_NUM_NODES": "1",
    "SLURM_NODEID": "0",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODELIST": "localhost",
}


def test_sigusr1_saves_requeues_and_the_requeued_job_resumes(toy_root, tmp_path):
    from test_reliability import _toy_wan_args

    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (stub / "scontrol").chmod(0o755)
    run = tmp_path / "run"

    def fit(max_steps: int, signal_at: int | None) -> subprocess.CompletedProcess:
        args = [
            sys.executable, "-m", "dimo.cli", "fit", "--config", str(REPO / "experiments/3dimo.yaml"),
            f"--trainer.max_steps={max_steps}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.num_nodes=1",
            "--trainer.devices=1", f"--trainer.default_root_dir={run}",
            f"--checkpoint.dirpath={run / 'checkpoints'}", "--checkpoint.every_n_train_steps=1",
            f"--data.init_args.root={toy_root}", "--data.init_args.frame_stride=1", "--data.init_args.height=32", "--data.init_args.width=32",
            "--data.init_args.batch_size=1", "--data.init_args.val_batches=0",
            "--data.init_args.log_preview=false", "--model.init_args.net.init_args.image_size=[32,32]",
            "--model.init_args.net.init_args.hand_crop=16", "--samples.every_n_steps=0",
            *_toy_wan_args(),
        ]  # fmt: skip
        if signal_at is not None:
            args.append(
                '--trainer.callbacks+={"class_path": "slurm_signal.SignalAtStep",'
                f' "init_args": {{"step": {signal_at}}}}}'
            )
        env = dict(
            os.environ,
            **SLURM_ENV,
            OMP_NUM_THREADS="1",
            PATH=f"{stub}:{os.environ['PATH']}",
            PYTHONPATH=f"{REPO}:{REPO / 'tests'}",
        )
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

    first = fit(max_steps=3, signal_at=2)
    assert first.returncode == 0, first.stderr[-3000:]
    hpc = run / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), sorted(p.name for p in run.rglob("*.ckpt"))
    assert torch.load(hpc, weights_only=False, map_location="cpu")["global_step"] == 2
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]

    second = fit(max_steps=4, signal_at=None)  # the requeued job: same command, no ckpt_path
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restored all states from the checkpoint" in second.stderr + second.stdout
    assert str(hpc) in second.stderr + second.stdout
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == 4
