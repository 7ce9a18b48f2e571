"""Lightning callbacks shared by the methods: the 3DiMo stage scheduler and sample logging."""

from dimo.callbacks.samples import SampleLogger
from dimo.callbacks.stage_scheduler import Stage, StageChainError, StageScheduler, StopAfterStage

__all__ = ["SampleLogger", "Stage", "StageChainError", "StageScheduler", "StopAfterStage"]
