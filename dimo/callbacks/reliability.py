"""Training that survives kills and reads well in cluster logs.

* :class:`AtomicCheckpointIO` — Lightning ``CheckpointIO`` writing every checkpoint to a temporary
  file *in the target folder*, fsyncing it and ``os.replace``-ing it onto the target. A kill at any
  moment leaves the previous ``last.ckpt`` intact and no temporary file behind on the next save
  (Lightning's default writes through fsspec, whose local "transaction" goes through ``$TMPDIR``
  and degrades to an in-place copy when that is another filesystem).
* :class:`CheckpointOnSignal` — on SIGTERM (or SIGUSR1, the usual "time is nearly up" signal of
  schedulers) the run stops after the current step, writes ``last.ckpt`` in the checkpoint folder
  and exits with status ``128 + signal`` so the scheduler sees a failure, not a success. Under SLURM
  with Lightning's auto-requeue (``SLURMEnvironment(auto_requeue=True)``, Lightning's default when
  running inside an ``sbatch`` job) SIGUSR1 stays Lightning's: it saves an HPC checkpoint and
  requeues the job.
* :class:`LogProgressBar` — plain, periodic one-line progress reports (step, epoch, rate, metrics)
  for when stdout is not a terminal (redirected logs); :func:`default_progress_bar` picks it or the
  rich bar.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "CheckpointOnSignal", "LogProgressBar", "default_progress_bar"]

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file next to the target, fsync, ``os.replace`` (local paths)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):  # remote storage: fsspec's own semantics
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options, got {storage_options!r}")
        from dimo.safe_io import save_torch_atomic

        save_torch_atomic(checkpoint, Path(path))


class CheckpointOnSignal(Callback):
    """Save ``last.ckpt`` and exit ``128 + signum`` on SIGTERM / SIGUSR1 (see the module docstring)."""

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, trainer: Trainer, chained: Any):
        def handle(signum, frame):
            self.received = self.received or signum
            log.warning("received signal %d: saving a checkpoint after this step, then exiting", signum)
            # Lightning's flag: the fit loop stops at the next step boundary (all ranks, via broadcast)
            trainer._signal_connector.received_sigterm = True
            if callable(chained) and chained not in (signal.SIG_DFL, signal.SIG_IGN):
                chained(signum, frame)

        return handle

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after Lightning's SignalConnector registered its handlers (they are chained, not replaced)
        import threading

        if threading.current_thread() is not threading.main_thread() or sys.platform == "win32":
            return
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(env, SLURMEnvironment) and env.auto_requeue
        for name in self.signals:
            signum = getattr(signal, name)
            if slurm_requeue and signum == (env.requeue_signal or signal.SIGUSR1):
                continue  # Lightning saves an HPC checkpoint and requeues
            previous = signal.getsignal(signum)
            self._previous[signum] = previous
            signal.signal(signum, self._handler(trainer, previous))

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.received or signal.SIGTERM
        path = self._last_path(trainer)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            print(
                f"stopped by signal {signum} at step {trainer.global_step}: saved {path}; resume with "
                f"--ckpt_path {path}",
                file=sys.stderr,
                flush=True,
            )
        exception.code = 128 + int(signum)  # a scheduler must not see success

    @staticmethod
    def _last_path(trainer: Trainer) -> Path:
        cb = trainer.checkpoint_callback
        folder = getattr(cb, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
        name = getattr(cb, "CHECKPOINT_NAME_LAST", "last") + getattr(cb, "FILE_EXTENSION", ".ckpt")
        return Path(folder) / name


class LogProgressBar(ProgressBar):
    """One plain line per ``every_n_steps`` steps (or ``every_s`` seconds) for non-TTY logs.

    Line format: ``[train] epoch 0 step 20/200 (10.0%) 1.84 it/s train/loss=0.53 ...``.
    """

    def __init__(self, every_n_steps: int = 10, every_s: float = 60.0, stream=None) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.every_s = int(every_n_steps), float(every_s)
        self._enabled = True
        self._stream = stream
        self._t0 = self._last_t = 0.0
        self._last_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=self._stream or sys.stdout, flush=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t0 = self._last_t = time.monotonic()
        self._last_step = trainer.global_step
        self._print(f"[train] start at step {trainer.global_step} (max_steps {trainer.max_steps})")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, now = trainer.global_step, time.monotonic()
        if step % self.every_n_steps and now - self._last_t < self.every_s:
            return
        rate = (step - self._last_step) / max(now - self._last_t, 1e-9)
        self._last_t, self._last_step = now, step
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        frac = f"/{total} ({100 * step / total:.1f}%)" if total else ""
        metrics = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in self.get_metrics(trainer, pl_module).items()
            if k != "v_num"
        )
        self._print(
            f"[train] epoch {trainer.current_epoch} step {step}{frac} {rate:.2f} it/s {metrics}".rstrip()
        )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        vals = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if vals:
            self._print(
                f"[val] step {trainer.global_step} " + " ".join(f"{k}={v:.4g}" for k, v in vals.items())
            )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._print(f"[train] done at step {trainer.global_step} in {time.monotonic() - self._t0:.1f} s")


def default_progress_bar(stream=None) -> ProgressBar:
    """The rich bar on a terminal, :class:`LogProgressBar` when stdout is redirected."""

    stream = stream or sys.stdout
    if getattr(stream, "isatty", lambda: False)():
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar(leave=True)
    return LogProgressBar()
