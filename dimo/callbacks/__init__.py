"""Lightning callbacks shared by the methods: the 3DiMo stage scheduler, sample logging, pose metrics of
the validation samples and EMA."""

from dimo.callbacks.ema import EMA
from dimo.callbacks.pose import PoseEvaluation
from dimo.callbacks.samples import SampleLogger
from dimo.callbacks.stage_scheduler import Stage, StageChainError, StageScheduler, StopAfterStage

__all__ = [
    "EMA",
    "PoseEvaluation",
    "SampleLogger",
    "Stage",
    "StageChainError",
    "StageScheduler",
    "StopAfterStage",
]
