"""Training survives kills: atomic checkpoints, SIGTERM saves + non-zero exit, stage chaining,
progress lines in redirected logs, --trainer.enable_progress_bar=false."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from dimo.callbacks import Stage, StageChainError, StageScheduler, StopAfterStage
from dimo.callbacks.reliability import AtomicCheckpointIO, LogProgressBar, default_progress_bar
from dimo.testing import tiny_trainer

REPO = Path(__file__).resolve().parents[1]


def _fit_cmd(toy_root, tmp_path, *extra):
    return [
        sys.executable, "-m", "dimo.cli", "fit", "--config", str(REPO / "experiments/3dimo.yaml"),
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
        f"--data.init_args.root={toy_root}", "--data.init_args.frame_stride=1", "--data.init_args.height=32", "--data.init_args.width=32",
        "--data.init_args.batch_size=1", "--data.init_args.val_batches=0", "--data.init_args.log_preview=false",
        "--model.init_args.net.init_args.image_size=[32,32]", "--model.init_args.net.init_args.hand_crop=16",
        "--samples.every_n_steps=0", "--checkpoint.every_n_train_steps=0", *_toy_wan_args(), *extra,
    ]  # fmt: skip


def _toy_wan_args():
    """The config's relative pretrained paths, made absolute (these runs start in a temporary folder)."""

    return [
        f"--model.init_args.pretrained={REPO / 'pretrained' / 'toy-wan2.1'}",
        f"--model.init_args.pose_detector={REPO / 'pretrained' / 'toy-detector'}",
        f"--pose_eval.detector={REPO / 'pretrained' / 'toy-detector'}",
    ]


def test_atomic_checkpoint_io_crash_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    last = tmp_path / "last.ckpt"
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, last)
    before = last.read_bytes()

    def dies_midway(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # what a kill between write and rename looks like to this process

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io_.save_checkpoint({"global_step": 2}, last)
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(last, weights_only=True)["global_step"] == 1


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_and_exits_nonzero(toy_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = _fit_cmd(toy_root, tmp_path, "--trainer.max_steps=100000", "--trainer.log_every_n_steps=1")
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 240
        for line in proc.stdout:  # not a TTY: plain progress lines
            if line.startswith("[train] epoch") or time.time() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] >= 10  # the first progress line is at step 10
    assert "stopped by signal 15" in err
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".")]
    # the signal checkpoint resumes: two more steps from where it stopped
    step = ckpt["global_step"]
    last = tmp_path / "ckpt" / "last.ckpt"
    cmd = _fit_cmd(toy_root, tmp_path, f"--trainer.max_steps={step + 2}", f"--ckpt_path={last}")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        f"[train] start at step {step}" in done.stdout and f"[train] done at step {step + 2}" in done.stdout
    )


def _stage_trainer(tmp_path, stage: str, max_steps: int = -1):
    sched = StageScheduler([Stage("stage1", 2), Stage("stage2", 3), Stage("stage3", 2)], 0.1, 0.0, 2)
    return tiny_trainer(
        tmp_path, max_steps=max_steps, enable_checkpointing=False, limit_val_batches=0,
        callbacks=[sched, StopAfterStage(stage)],
    )  # fmt: skip


def test_stage_chaining_refuses_an_unfinished_previous_stage(toy_root, tmp_path):
    from test_data_datamodule import _dm, _Recorder

    def data():
        return _dm(toy_root, batch_size=1, batches_per_epoch=20)

    t1 = _stage_trainer(tmp_path, "stage1")
    t1.fit(_Recorder(), datamodule=data())
    t1.save_checkpoint(tmp_path / "s1.ckpt")
    state = torch.load(tmp_path / "s1.ckpt", weights_only=True)["callbacks"]["StopAfterStage"]
    assert state == {"stage": "stage1", "stage_end": 2, "global_step": 2, "completed": True}

    t2 = _stage_trainer(tmp_path, "stage2", max_steps=3)  # shortened stage 2: ends at step 3 of 5
    t2.fit(_Recorder(), datamodule=data(), ckpt_path=tmp_path / "s1.ckpt")
    t2.save_checkpoint(tmp_path / "s2.ckpt")
    assert (
        torch.load(tmp_path / "s2.ckpt", weights_only=True)["callbacks"]["StopAfterStage"]["completed"]
        is False
    )

    with pytest.raises(StageChainError, match="finish 'stage2' first"):
        _stage_trainer(tmp_path, "stage3").fit(_Recorder(), datamodule=data(), ckpt_path=tmp_path / "s2.ckpt")
    # resuming stage 2 itself is fine, and then stage 3 starts
    t2b = _stage_trainer(tmp_path, "stage2")
    t2b.fit(_Recorder(), datamodule=data(), ckpt_path=tmp_path / "s2.ckpt")
    assert t2b.global_step == 5
    t2b.save_checkpoint(tmp_path / "s2b.ckpt")
    t3 = _stage_trainer(tmp_path, "stage3")
    t3.fit(_Recorder(), datamodule=data(), ckpt_path=tmp_path / "s2b.ckpt")
    assert t3.global_step == 7


def test_progress_bar_choice_and_plain_lines(toy_root, tmp_path):
    from lightning.pytorch.callbacks import RichProgressBar
    from test_data_datamodule import _dm, _Recorder

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(default_progress_bar(Tty()), RichProgressBar)
    assert isinstance(default_progress_bar(io.StringIO()), LogProgressBar)
    out = io.StringIO()
    trainer = Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[LogProgressBar(every_n_steps=2, stream=out)],
    )  # fmt: skip
    trainer.fit(_Recorder(), datamodule=_dm(toy_root, batch_size=1, batches_per_epoch=10))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[train] start at step 0")
    assert [ln.split()[4] for ln in lines if ln.startswith("[train] epoch")] == ["2/4", "4/4"]
    assert "\r" not in out.getvalue() and "\x1b[" not in out.getvalue()


def test_enable_progress_bar_false_and_atomic_io_are_wired(toy_root, tmp_path):
    from lightning.pytorch.callbacks import ProgressBar

    from dimo.callbacks.reliability import CheckpointOnSignal
    from dimo.cli import run_lightning

    args = _fit_cmd(toy_root, tmp_path, "--trainer.enable_progress_bar=false")[4:]
    cli = run_lightning(args, run=False)
    assert not [c for c in cli.trainer.callbacks if isinstance(c, ProgressBar)]
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert [c for c in cli.trainer.callbacks if isinstance(c, CheckpointOnSignal)]
