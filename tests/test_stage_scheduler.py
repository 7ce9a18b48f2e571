"""StageScheduler: stage and geo-weight schedule on the global step, mixture calls, resume, stop."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, TensorDataset

from dimo.callbacks import Stage, StageScheduler, StopAfterStage
from dimo.testing import tiny_trainer

STAGES = [
    Stage("stage1", 4, {"internet": 1.0}, 0.0),
    Stage("stage2", 3, {"internet": 1.0, "ue5": 1.0}, 0.5),
    Stage("stage3", 2, {"ue5": 1.0, "multiview": 1.0}, 1.0),
]


def test_schedule_is_a_function_of_the_global_step():
    sched = StageScheduler(STAGES, geo_weight_start=0.1, geo_weight_end=0.0, geo_anneal_steps=6)
    assert [sched.stage_at(s).name for s in (0, 3, 4, 6, 7, 8, 100)] == [
        "stage1", "stage1", "stage2", "stage2", "stage3", "stage3", "stage3",
    ]  # fmt: skip
    assert sched.stage_end("stage1") == 4 and sched.stage_end("stage3") == 9
    # linear 0.1 -> 0 over 6 steps, crossing the stage-1/2 boundary at step 4
    assert sched.geo_weight_at(0) == pytest.approx(0.1)
    assert sched.geo_weight_at(3) == pytest.approx(0.05)
    assert sched.geo_weight_at(4) == pytest.approx(0.1 / 3)
    assert sched.geo_weight_at(6) == 0.0 and sched.geo_weight_at(50) == 0.0
    with pytest.raises(KeyError, match="stage9"):
        sched.stage_end("stage9")
    with pytest.raises(ValueError):
        Stage("bad", 0)


class _Recorder(LightningModule):
    """Records the geo_weight it trains with; a one-parameter regression."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.geo_weight = -1.0
        self.seen: list[tuple[int, float]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, self.geo_weight))
        return (self.w - batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _MixData(LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict, float]] = []

    def set_mixture(self, weights, cross_view):
        self.calls.append((dict(weights), cross_view))

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(64, 1)), batch_size=1)


def _trainer(tmp_path, callbacks, **kw):
    return tiny_trainer(tmp_path, callbacks=callbacks, **kw)


def test_sets_geo_weight_and_mixture_each_step_and_resumes(tmp_path):
    def sched():
        return StageScheduler(
            STAGES, geo_weight_start=0.1, geo_weight_end=0.0, geo_anneal_steps=6, plot_points=0
        )

    # stage 1 alone, stopping at its end
    model, data = _Recorder(), _MixData()
    t1 = _trainer(tmp_path, [sched(), StopAfterStage("stage1")], max_epochs=10)
    t1.fit(model, data)
    assert t1.global_step == 4
    assert [s for s, _ in model.seen] == [0, 1, 2, 3]
    assert [w for _, w in model.seen] == pytest.approx([0.1, 0.1 * 5 / 6, 0.1 * 4 / 6, 0.05])
    # mixture for the first batch at fit start, then for each next batch: stage 2 law after step 3
    assert data.calls[0] == ({"internet": 1.0}, 0.0)
    assert data.calls[-1] == ({"internet": 1.0, "ue5": 1.0}, 0.5)
    ckpt = tmp_path / "stage1.ckpt"
    t1.save_checkpoint(ckpt)
    assert "StageScheduler" in str(torch.load(ckpt, weights_only=False)["callbacks"])

    # stage 2, resumed: the global step continues and the anneal crosses the boundary
    model2, data2 = _Recorder(), _MixData()
    t2 = _trainer(tmp_path, [sched(), StopAfterStage("stage2")], max_epochs=10)
    t2.fit(model2, data2, ckpt_path=ckpt)
    assert t2.global_step == 7
    assert [s for s, _ in model2.seen] == [4, 5, 6]
    assert [w for _, w in model2.seen] == pytest.approx([0.1 * 2 / 6, 0.1 / 6, 0.0])
    assert data2.calls[0] == ({"internet": 1.0, "ue5": 1.0}, 0.5)
    assert data2.calls[-1] == ({"ue5": 1.0, "multiview": 1.0}, 1.0)

    # one uninterrupted run sees the same schedule at the same steps
    model3 = _Recorder()
    _trainer(tmp_path, [sched(), StopAfterStage("stage2")], max_epochs=10).fit(model3, _MixData())
    assert model3.seen == model.seen + model2.seen  # exactly the same floats


def test_stop_after_stage_needs_a_scheduler(tmp_path):
    with pytest.raises(RuntimeError, match="exactly one StageScheduler"):
        _trainer(tmp_path, [StopAfterStage("stage1")], max_steps=2).fit(_Recorder(), _MixData())
