"""A callback for tests/test_scale_slurm.py: the process sends itself SIGUSR1 at a given step (what
SLURM's ``--signal=SIGUSR1@<seconds>`` does before the time limit)."""

from __future__ import annotations

import os
import signal

from lightning.pytorch import Callback


class SignalAtStep(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)
