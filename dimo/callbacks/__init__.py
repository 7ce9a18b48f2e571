"""Lightning callbacks shared by the methods: the 3DiMo stage scheduler (and sample logging)."""

from dimo.callbacks.stage_scheduler import Stage, StageScheduler, StopAfterStage

__all__ = ["Stage", "StageScheduler", "StopAfterStage"]
