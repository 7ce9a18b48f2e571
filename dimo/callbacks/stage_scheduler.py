"""Training stages and the geometric-loss schedule of 3DiMo, as a Lightning callback.

A run is a list of :class:`Stage` s (name, steps, source weights, cross-view fraction); the stage in
force is a pure function of the **global step**, so one run through all stages and separate per-stage
runs resumed from the previous stage's checkpoint (the global step continues) behave identically.
Paper (DESIGN §5): stage 1 = 10K steps single-view self-reconstruction, stage 2 = 15K balanced
reconstruction + cross-view, stage 3 = 5K multi-view / moving camera only; the geometric weight
goes linearly 0.1 -> 0 over the first 12K steps (deliberately crossing the stage-1/2 boundary).

Every step :class:`StageScheduler`

* sets ``pl_module.geo_weight`` for the step about to run (contract: a float attribute);
* calls ``datamodule.set_mixture(weights, cross_view)`` for the next batch drawn (contract in
  ``docs/contracts.md``; the DataModule checkpoints its own stream);
* logs ``train/stage`` (stage index) and, once at fit start, the planned schedule
  (``schedule/geo_weight``, ``schedule/stage`` against the step) so TensorBoard plots it.

Its state (the stage list and schedule) is saved in the checkpoint; a resumed run with a different
stage list warns. :class:`StopAfterStage` ends a run at the end of a named stage (per-stage runs).

It owns the mixture and the geometric weight: in the CLI it is the ``schedule:`` section (not a
``trainer.callbacks`` entry), and the DataModule's initial ``weights`` / ``cross_view`` (its first
stage's) and the module's ``geo_weight`` (``geo_weight_start``) are linked from it
(:mod:`dimo.lightning_cli`), so each is typed once. With no ``stages`` it is off (HVG).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["Stage", "StageChainError", "StageScheduler", "StopAfterStage", "initial_mixture"]

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One training stage: ``steps`` optimiser steps drawing sources by ``weights``.

    ``cross_view``: probability that a multi-view sample is a cross-view one (0 = reconstruction).
    """

    name: str
    steps: int
    weights: dict[str, float] = field(default_factory=lambda: {"internet": 1.0})
    cross_view: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"stage {self.name!r}: steps must be >= 1, got {self.steps}")
        if not self.weights or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"stage {self.name!r}: weights must be non-negative with a positive sum")
        if not 0.0 <= self.cross_view <= 1.0:
            raise ValueError(f"stage {self.name!r}: cross_view must be in [0, 1], got {self.cross_view}")


class StageScheduler(Callback):
    """Stage mixture + geometric-weight schedule on the global step.

    Args:
        stages: the stages in order (the last one continues past its end); None or empty: the
            scheduler is off (sets nothing; the CLI leaves it out of the trainer's callbacks).
        geo_weight_start, geo_weight_end: geometric-loss weight at step 0 and after the anneal.
        geo_anneal_steps: length of the linear anneal (paper: 12000).
        plot_points: points of the planned-schedule plot logged at fit start (0: none).
    """

    def __init__(
        self,
        stages: list[Stage] | None = None,
        geo_weight_start: float = 0.1,
        geo_weight_end: float = 0.0,
        geo_anneal_steps: int = 12000,
        plot_points: int = 50,
    ) -> None:
        stages = [as_stage(s) for s in stages or []]
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if geo_anneal_steps < 0:
            raise ValueError("geo_anneal_steps must be >= 0")
        self.stages = stages
        self.geo_weight_start, self.geo_weight_end = float(geo_weight_start), float(geo_weight_end)
        self.geo_anneal_steps = int(geo_anneal_steps)
        self.plot_points = plot_points
        self.restored: dict[str, Any] | None = None
        self._last_stage: int | None = None

    # -- the schedule (pure functions of the global step) ----------------------------------------
    @property
    def active(self) -> bool:
        """Whether there are stages to apply (an empty scheduler does nothing)."""

        return bool(self.stages)

    def initial_mixture(self) -> tuple[dict[str, float] | None, float]:
        """``(weights, cross_view)`` of the first stage: the DataModule's mixture before training
        starts (its validation batches are drawn with it); ``(None, 0.0)`` when off."""

        return initial_mixture(self.stages)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_end(self, name: str) -> int:
        """Global step at which stage ``name`` is complete."""

        end = 0
        for s in self.stages:
            end += s.steps
            if s.name == name:
                return end
        raise KeyError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")

    def stage_index(self, step: int) -> int:
        end = 0
        for i, s in enumerate(self.stages):
            end += s.steps
            if step < end:
                return i
        return len(self.stages) - 1

    def stage_at(self, step: int) -> Stage:
        return self.stages[self.stage_index(step)]

    def geo_weight_at(self, step: int) -> float:
        if self.geo_anneal_steps == 0 or step >= self.geo_anneal_steps:
            return self.geo_weight_end
        frac = step / self.geo_anneal_steps
        return self.geo_weight_start + (self.geo_weight_end - self.geo_weight_start) * frac

    def config(self) -> dict[str, Any]:
        return {
            "stages": [asdict(s) for s in self.stages],
            "geo_weight_start": self.geo_weight_start,
            "geo_weight_end": self.geo_weight_end,
            "geo_anneal_steps": self.geo_anneal_steps,
        }

    # -- applying it -----------------------------------------------------------------------------
    def apply(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        """geo_weight for the step about to run and the mixture of the next batch drawn."""

        if not self.active:
            return
        pl_module.geo_weight = self.geo_weight_at(step)
        stage = self.stage_at(step)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_mixture"):
            datamodule.set_mixture(dict(stage.weights), stage.cross_view)
        index = self.stage_index(step)
        if index != self._last_stage:
            if self._last_stage is not None:
                log.info("step %d: entering stage %r", step, stage.name)
            self._last_stage = index

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after a checkpoint restore (the global step is known), before the first batch is drawn
        if not self.active:
            return
        if self.restored is not None and self.restored.get("config") != self.config():
            rank_zero_warn(
                "StageScheduler: the stages/schedule differ from the checkpoint's; the new ones apply "
                f"from global step {trainer.global_step}"
            )
        self.apply(trainer, pl_module, trainer.global_step)
        if self.plot_points > 0 and trainer.is_global_zero:
            self._plot(trainer)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        step = trainer.global_step
        pl_module.geo_weight = self.geo_weight_at(step)
        pl_module.log("train/stage", float(self.stage_index(step)), on_step=True, on_epoch=False)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.apply(trainer, pl_module, trainer.global_step)  # global_step already counts this step

    def _plot(self, trainer: Trainer) -> None:
        horizon = max(self.total_steps, self.geo_anneal_steps)
        points = sorted({round(i * horizon / self.plot_points) for i in range(self.plot_points + 1)})
        for logger in trainer.loggers:
            for step in points:
                logger.log_metrics(
                    {
                        "schedule/geo_weight": self.geo_weight_at(step),
                        "schedule/stage": float(self.stage_index(step)),
                    },
                    step=step,
                )

    # -- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = dict(state_dict)


def as_stage(stage) -> Stage:
    """A :class:`Stage` from itself, a dict, or the namespace jsonargparse parses one into
    (``{class_path, init_args}`` while links are applied)."""

    if isinstance(stage, Stage):
        return stage
    d = stage.as_dict() if hasattr(stage, "as_dict") else dict(stage)
    d = d.get("init_args", d)
    return Stage(**{k: v for k, v in d.items() if k in Stage.__dataclass_fields__})


def initial_mixture(stages) -> tuple[dict[str, float] | None, float]:
    """``(weights, cross_view)`` of the first of ``stages`` (:class:`Stage` s, dicts or parsed
    namespaces), ``(None, 0.0)`` for none."""

    if not stages:
        return None, 0.0
    first = as_stage(stages[0])
    return {str(k): float(v) for k, v in first.weights.items()}, float(first.cross_view)


class StageChainError(RuntimeError):
    """A per-stage run was resumed from a checkpoint of an unfinished earlier stage."""


class StopAfterStage(Callback):
    """End ``fit`` when the named stage of the run's :class:`StageScheduler` is complete.

    Per-stage runs (``make train-stage1`` ...) add this with the stage's name; resuming the next
    stage from the last checkpoint continues the global step. Sets ``max_steps`` to the stage's
    end (or keeps a smaller positive ``trainer.max_steps``).

    The checkpoint records which stage wrote it and whether that stage was complete
    (``{"stage", "stage_end", "global_step", "completed"}``). A run of stage ``k`` resumed from a
    checkpoint of another stage checks that every stage before ``k`` is complete (the global step
    has reached the end of stage ``k-1``) and stops with :class:`StageChainError` otherwise, so a
    shortened stage 2 is never silently continued inside stage 3. Resuming the *same* stage after a
    crash is always allowed.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.restored: dict[str, Any] | None = None
        self._end: int | None = None
        self._trainer: Trainer | None = None

    @property
    def state_key(self) -> str:
        return "StopAfterStage"  # one key across stages, so stage k reads what stage k-1 wrote

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        scheduler = self._scheduler(trainer)
        if not scheduler.active:
            raise RuntimeError(f"StopAfterStage({self.stage!r}) needs a StageScheduler with stages")
        end = scheduler.stage_end(self.stage)
        self._end = end
        self._trainer = trainer
        current = trainer.fit_loop.epoch_loop.max_steps
        # an explicit, smaller trainer.max_steps (a quick try-out) still wins
        trainer.fit_loop.epoch_loop.max_steps = end if current < 0 else min(current, end)

    @staticmethod
    def _scheduler(trainer: Trainer) -> StageScheduler:
        schedulers = [cb for cb in trainer.callbacks if isinstance(cb, StageScheduler)]
        if len(schedulers) != 1:
            raise RuntimeError(f"StopAfterStage needs exactly one StageScheduler, found {len(schedulers)}")
        return schedulers[0]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        scheduler = self._scheduler(trainer)
        names = [s.name for s in scheduler.stages]
        k = names.index(self.stage)
        prev = self.restored or {}
        if prev.get("stage") == self.stage or k == 0:
            return  # resuming this stage (after a crash or a signal)
        need = scheduler.stage_end(names[k - 1])
        if trainer.global_step < need:
            what = f"stage {prev['stage']!r}" if prev.get("stage") else "a run"
            raise StageChainError(
                f"{trainer.ckpt_path} is a checkpoint of {what} at step {trainer.global_step}, but "
                f"{self.stage!r} starts after {names[k - 1]!r} ends at step {need}: finish {names[k - 1]!r} "
                f"first (e.g. `make train-{names[k - 1]} RESUME=1`)"
            )

    def state_dict(self) -> dict[str, Any]:
        step = self._trainer.global_step if self._trainer is not None else 0
        return {
            "stage": self.stage,
            "stage_end": self._end,
            "global_step": step,
            "completed": self._end is not None and step >= self._end,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = dict(state_dict)
