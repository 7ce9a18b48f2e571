"""Lightning callbacks shared by the methods: the 3DiMo stage scheduler (and sample logging)."""

from dimo.callbacks.ema import EMA
from dimo.callbacks.stage_scheduler import Stage, StageChainError, StageScheduler, StopAfterStage

__all__ = ["EMA", "Stage", "StageChainError", "StageScheduler", "StopAfterStage"]
