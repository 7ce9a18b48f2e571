"""``SampleLogger``: labelled sample grids and videos of both methods, through the logger's API.

The callback owns *when* samples are logged and *where* they go; the LightningModule owns *what* they
look like, through one method::

    sample_media(batch, split, num_samples, generated=None) -> {tag: image (3, H, W) | video (T, 3, H, W)}

(values in [0, 1]; ``generated`` is the validation step's own sample of the batch when it made one,
so it is not sampled twice). Images go through :func:`dimo.viz.log_image`, videos through
:func:`dimo.viz.log_video`: ``logger.log_image`` / ``logger.log_video`` where the logger has them
(W&B, Neptune, ...), TensorBoard image summaries (videos as animated GIFs) otherwise. With
``write_mp4`` rank 0 also writes every video as ``<log_dir>/samples/<split>_step_<step>.mp4``.

Every rank runs ``sample_media`` (sharded models, FSDP, need every rank in the forward pass); the
logger calls are rank-zero only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["SampleLogger"]


class SampleLogger(Callback):
    """Log samples of the first validation batch (and, optionally, of training batches).

    Args:
        every_n_steps: log the first validation batch's samples when the global step is a multiple
            (or the last step, ``max_steps``); 0: never. Not during the sanity check.
        num_samples: clips (3DiMo) or grids (HVG) of that batch to show.
        train_every_n_steps: also log a sample of the training batch every this many steps (tags
            ``train/...``); 0: never.
        fps: frame rate of the logged videos.
        write_mp4: also write the videos as MP4 files under ``<log_dir>/samples/`` (rank 0).
    """

    def __init__(
        self,
        every_n_steps: int = 1,
        num_samples: int = 2,
        train_every_n_steps: int = 0,
        fps: int = 4,
        write_mp4: bool = True,
    ) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("train_every_n_steps", train_every_n_steps)):
            if value < 0:
                raise ValueError(f"SampleLogger.{name} must be >= 0, got {value}")
        if num_samples < 1 or fps < 1:
            raise ValueError(f"SampleLogger.num_samples and fps must be >= 1, got {num_samples}, {fps}")
        self.every_n_steps, self.num_samples = every_n_steps, num_samples
        self.train_every_n_steps, self.fps, self.write_mp4 = train_every_n_steps, fps, write_mp4

    @staticmethod
    def _due(trainer: Trainer, every: int) -> bool:
        if every <= 0 or trainer.sanity_checking:
            return False
        return trainer.global_step % every == 0 or trainer.global_step == trainer.max_steps

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not self._due(trainer, self.every_n_steps):
            return
        generated = outputs.get("generated") if isinstance(outputs, dict) else None
        self._log(trainer, pl_module, batch, "val", self.num_samples, generated)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = self.train_every_n_steps
        if n > 0 and trainer.global_step % n == 0:
            self._log(trainer, pl_module, batch, "train", 1, None)

    @torch.no_grad()
    def _log(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: dict[str, Any],
        split: str,
        num_samples: int,
        generated: torch.Tensor | None,
    ) -> None:
        from dimo.viz import log_image, log_video

        media = pl_module.sample_media(batch, split, num_samples, generated=generated)
        step = trainer.global_step
        for tag, x in media.items():
            if x.dim() == 3:
                log_image(trainer.logger, tag, x, step)
                continue
            log_video(trainer.logger, tag, x, step, fps=self.fps)
            log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
            if self.write_mp4 and log_dir is not None and trainer.is_global_zero:
                from dimo.data.video import write_video

                frames = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
                name = f"{tag.replace('/', '_')}_step_{step:07d}.mp4"
                write_video(Path(log_dir) / "samples" / name, frames, fps=self.fps)
