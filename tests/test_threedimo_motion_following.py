"""3DiMo ``pose_detector``: do the generated frames follow the motion? (``val/kp_err_*``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader

from dimo.eval.pose import KeypointError
from dimo.pose.joints import TOY_BODY, TOY_JOINTS
from dimo.pose.toy_detector import DetectorError
from dimo.testing import tiny_threedimo_module

DETECTOR = Path(__file__).resolve().parents[1] / "pretrained" / "toy-detector"


def test_keypoint_error_is_the_mean_over_valid_joints():
    m = KeypointError()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(m.compute()))
    pred = torch.zeros(2, 3, 2)
    target = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [9.0, 9.0]], [[0.0, 2.0], [6.0, 8.0], [1.0, 0.0]]])
    valid = torch.tensor([[True, True, False], [True, False, True]])
    m.update(pred, target, valid)
    assert float(m.compute()) == pytest.approx((5 + 1 + 2 + 1) / 4)
    m.update(pred[:1], target[:1])  # no mask: all three joints count, per joint (not per frame)
    assert float(m.compute()) == pytest.approx((5 + 1 + 2 + 1 + 5 + 1 + 9 * math.sqrt(2)) / 7)


def _toy_batch(toy_root, size):
    from dimo.data.datamodule import ViewRichDataModule

    dm = ViewRichDataModule(root=toy_root, task="3dimo", num_frames=5, height=size, width=size, batch_size=2,
                            val_batches=1, weights={"internet": 1.0}, log_preview=False, seed=0)  # fmt: skip
    from dimo.data import to_model_batch

    return to_model_batch(next(iter(dm.val_dataloader())))  # what the DataModule hands the model


def _by_hand(det, frames, batch):
    """Independent loops: detector on each frame 1.., each body channel against its SMPL-X joint."""

    total, count = 0.0, 0
    for i in range(frames.shape[0]):
        for f in range(1, frames.shape[1]):
            uv, _ = det.detect(frames[i, f][None])
            for c in TOY_BODY:
                j = TOY_JOINTS[c]
                if batch["joints2d_valid"][i, f, j]:
                    total += float((uv[0, c] - batch["joints2d"][i, f, j]).norm())
                    count += 1
    return total / count


def test_validation_logs_how_well_the_frames_follow_the_motion(toy_root, tmp_path):
    from dimo.testing import tiny_trainer

    seed_everything(0)
    module = tiny_threedimo_module(val_metric_batches=1, sample_steps=1, pose_detector=str(DETECTOR))
    size = 32  # tiny_threedimo_module frames
    batch = _toy_batch(toy_root, size)
    assert batch["joints2d_valid"].any()
    det = module.kp_detector
    # a perfect generator (the target itself): generated == real; then the static one: == static
    for fake, same_as in ((lambda b: b["target"], "real"), (lambda b: b["reference"][:, None].expand_as(b["target"]), "static")):  # fmt: skip
        module.generate = fake
        for m in module.kp_metrics.values():
            m.reset()
        trainer = tiny_trainer(tmp_path)
        logged = trainer.validate(module, DataLoader([batch], batch_size=None), verbose=False)[0]
        assert logged["val/kp_err_gen"] == pytest.approx(float(logged[f"val/kp_err_{same_as}"]), rel=1e-6)
    static = batch["reference"][:, None].expand_as(batch["target"])
    assert float(logged["val/kp_err_real"]) == pytest.approx(_by_hand(det, batch["target"], batch), rel=1e-4)
    assert float(logged["val/kp_err_static"]) == pytest.approx(_by_hand(det, static, batch), rel=1e-4)
    # the joint mapping is right: the real frames match their own joints better than another sample's
    swapped = dict(batch, joints2d=batch["joints2d"].flip(0), joints2d_valid=batch["joints2d_valid"].flip(0))
    assert _by_hand(det, batch["target"], batch) < _by_hand(det, batch["target"], swapped)


def test_cross_view_samples_are_left_out_and_a_missing_detector_is_named(toy_root):
    module = tiny_threedimo_module(pose_detector=str(DETECTOR))
    batch = _toy_batch(toy_root, 32)
    batch["task"] = ["cross_view"] * len(batch["task"])  # its 2-D joints are another view's
    module.update_motion_following(batch, batch["target"])
    assert all(int(m.count) == 0 for m in module.kp_metrics.values())
    with pytest.raises(DetectorError, match="config.json"):
        tiny_threedimo_module(pose_detector="/nonexistent/detector")
    with pytest.raises(ValueError, match="pose_detector"):
        tiny_threedimo_module(
            pose_detector=str(DETECTOR), from_cache=True, vae=None, text_encoder=None, val_metrics=[]
        )
