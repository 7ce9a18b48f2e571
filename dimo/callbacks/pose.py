"""``PoseEvaluation``: MPJPE / PA-MPJPE / T_root of the validation samples, by the harness's own code.

When a detector folder is configured (``pose_eval:`` in the CLI, off by default), the generated clips
of the first ``batches`` validation batches go through exactly what ``python -m dimo.cli evaluate
--metrics mpjpe pa_mpjpe t_root`` runs on generated videos (:func:`dimo.eval.motion.score_item`, then
:func:`dimo.eval.motion.summarise`): the detector finds 2D keypoints on every frame, the named lifting
method (:func:`dimo.pose.lifting.get_lifter`) lifts them to camera-space 3D joints, and
:class:`~dimo.eval.pose.PoseMetrics` compares them with the batch's reference motion. Logged at the end
of the validation epoch as ``val/mpjpe``, ``val/pa_mpjpe``, ``val/t_root`` (mm, summed errors over every
scored clip and every rank, then divided: the same numbers as one ``evaluate`` run over those clips),
and the same on the batch's real target frames as ``val/mpjpe_real``, ... (the estimator's own error,
as ``evaluate`` scores the driving video);
the detector and the lifter are written to the logger's hyperparameters (``pose_eval/detector``,
``pose_eval/lifter``). A clip the lifter refuses (``ValueError``, e.g. no valid keypoint) is left out,
counted as ``val/pose_unscored`` and warned about once, rather than ending a training run.

The LightningModule says what its clips and references are, through one method::

    pose_clips(batch, generated) -> [(video (T, 3, H, W) in [-1, 1], dimo.eval.motion.MotionReference)]

3DiMo: every sample whose target view has ground-truth 3D joints (``target_joints3d``), against them in
the target camera; HVG: every view of every grid, against the sample's ``joints3d`` in that view's
camera. ``generated`` is the validation step's own sample of the batch when it made one (``outputs
["generated"]``, as the :class:`~dimo.callbacks.SampleLogger` reuses it), otherwise the callback asks
``pl_module.generate(batch)``.

Without a detector the callback is inactive and the CLI leaves it out of the trainer's callbacks: the
paper-faithful default run is unchanged and pays nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["PoseEvaluation"]

_STATE_KEYS = ("mpjpe_sum", "pa_sum", "joints_valid", "traj_sum", "sequences")


class PoseEvaluation(Callback):
    """Pose metrics of the generated validation clips (module docstring).

    Args:
        detector: 2D keypoint detector folder (``pretrained/toy-detector`` or a ViTPose folder,
            :func:`dimo.pose.detect.load_detector`); None: off.
        lifter: lifting method by name (:data:`dimo.pose.lifting.LIFTERS`: ``free3d``, ``smplify``,
            ``fixed_depth``, ``mvlift``, ...).
        lifter_options: keyword arguments of the lifter's factory (e.g. ``folder``).
        batches: how many validation batches (the first ones, of the first dataloader) are scored.
        real: also score the batch's real target frames the same way (``val/mpjpe_real``, ...): the
            detector + lifter's own error, the floor a perfect generator would reach.
    """

    def __init__(
        self,
        detector: Path | None = None,
        lifter: str = "free3d",
        lifter_options: dict[str, Any] | None = None,
        batches: int = 1,
        real: bool = True,
    ) -> None:
        from dimo.pose.lifting import LIFTERS

        self.active = detector is not None
        if batches < 1:
            raise ValueError(f"pose_eval.batches must be >= 1, got {batches}")
        if lifter not in LIFTERS:
            raise ValueError(
                f"pose_eval.lifter: unknown lifting method {lifter!r}; available: {', '.join(LIFTERS)}"
            )
        if self.active and not (Path(detector) / "config.json").is_file():
            raise FileNotFoundError(
                f"pose_eval.detector: {Path(detector) / 'config.json'} is missing (a detector folder: "
                "`make toy-detector`, or a ViTPose save_pretrained folder)"
            )
        self.detector_dir = None if detector is None else Path(detector)
        self.lifter_name, self.lifter_options, self.batches = lifter, dict(lifter_options or {}), batches
        self.detector = self.lifter = None
        self.real = real
        self._suffixes = ("", "_real") if real else ("",)
        self._states: dict[str, list[dict[str, torch.Tensor]]] = {k: [] for k in self._suffixes}
        self._unscored, self._warned = dict.fromkeys(self._suffixes, 0), False

    # -- setup: build the detector and the lifter once ---------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.active or self.detector is not None:
            return
        if not callable(getattr(pl_module, "pose_clips", None)):
            raise TypeError(
                f"pose_eval: {type(pl_module).__name__} has no pose_clips(batch, generated) method"
            )
        if getattr(pl_module, "from_cache", False):
            raise ValueError("pose_eval: from_cache: true samples nothing to detect keypoints on")
        from dimo.pose.detect import load_detector
        from dimo.pose.lifting import get_lifter

        self.detector = load_detector(self.detector_dir)
        self.lifter = get_lifter(self.lifter_name, **self.lifter_options)
        logger = trainer.logger
        if logger is not None and trainer.is_global_zero:
            logger.log_hyperparams(
                {"pose_eval/detector": str(self.detector_dir), "pose_eval/lifter": self.lifter_name}
            )

    # -- validation ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._states = {suffix: [] for suffix in self._suffixes}
        self._unscored = dict.fromkeys(self._suffixes, 0)

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.active or trainer.sanity_checking or dataloader_idx != 0 or batch_idx >= self.batches:
            return
        generated = outputs.get("generated") if isinstance(outputs, dict) else None
        if generated is None:
            generated = pl_module.generate(batch)
        self._score(pl_module.pose_clips(batch, generated), "")
        if self.real:  # the same on the real target frames: the detector + lifter's own floor
            self._score(pl_module.pose_clips(batch, batch["target"]), "_real")

    def _score(self, clips: list, suffix: str) -> None:
        from dimo.eval.motion import score_item

        for video, ref in clips:
            try:
                out = score_item(video.detach().float().cpu(), ref, self.detector, self.lifter, driving=False)
            except ValueError as err:  # e.g. no valid keypoint to lift: counted, not a crash mid-training
                self._unscored[suffix] += 1
                if not self._warned:
                    self._warned = True
                    rank_zero_warn(
                        f"pose_eval: clip {ref.name} not scored ({err}); counted in val/pose_unscored{suffix}"
                    )
                continue
            self._states[suffix].append(out["generated"])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active or trainer.sanity_checking:
            return
        from dimo.eval.motion import POSE_METRICS, summarise

        for suffix in self._suffixes:
            # the summed states, then the unscored clips: exact aggregation over clips and ranks
            total = torch.zeros(len(_STATE_KEYS) + 1, dtype=torch.float64)
            for s in self._states[suffix]:
                total[:-1] += torch.stack([s[k].double().cpu() for k in _STATE_KEYS])
            total[-1] = self._unscored[suffix]
            if trainer.world_size > 1:  # every rank takes part, also one that scored nothing
                total = trainer.strategy.reduce(total.to(pl_module.device), reduce_op="sum").cpu()
            state = dict(zip(_STATE_KEYS, total[:-1]))
            if float(total[-1]) > 0:
                pl_module.log(f"val/pose_unscored{suffix}", float(total[-1]), sync_dist=False)
            if float(state["joints_valid"]) == 0 or float(state["sequences"]) == 0:
                continue  # no clip with a reference motion in the scored batches
            values = summarise([state])
            for name in POSE_METRICS:
                pl_module.log(f"val/{name}{suffix}", values[name], sync_dist=False)  # equal on every rank
        self.on_validation_epoch_start(trainer, pl_module)
