"""Pose metrics: MPJPE offsets, PA-MPJPE invariance to similarity transforms, root trajectory error."""

from __future__ import annotations

import math

import pytest
import torch

from dimo.eval.pose import PoseMetrics, mpjpe, pa_mpjpe, root_trajectory_error, similarity_procrustes


def _rotation(g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))  # det +1


def test_mpjpe_of_a_jointwise_offset_is_the_offset(rng):
    target = torch.randn(2, 4, 22, 3, generator=rng)
    d_mm = 37.5
    direction = torch.nn.functional.normalize(torch.randn(22, 3, generator=rng), dim=-1)
    pred = target + direction * d_mm / 1000
    # no root alignment: every joint is exactly d mm away
    assert mpjpe(pred, target, root=None).item() == pytest.approx(d_mm, rel=1e-5)
    # root alignment removes a global translation entirely
    assert mpjpe(target + torch.tensor([0.3, -1.0, 2.0]), target).item() == pytest.approx(0.0, abs=1e-4)
    # a joint-subset offset (root untouched) is d on the moved joints, 0 elsewhere
    moved = target.clone()
    moved[..., 1:, :] += torch.tensor([d_mm / 1000, 0.0, 0.0])
    assert mpjpe(moved, target, root=0, joints=range(1, 22)).item() == pytest.approx(d_mm, rel=1e-5)
    assert mpjpe(moved, target, root=0).item() == pytest.approx(d_mm * 21 / 22, rel=1e-5)
    per = mpjpe(moved, target, reduction="none")
    assert per.shape == (2, 4)


def test_mpjpe_root_as_mean_of_joints_and_mask(rng):
    target = torch.randn(3, 10, 3, generator=rng)
    pred = target.clone()
    pred[:, 5] += torch.tensor([0.0, 0.1, 0.0])  # one joint off by 100 mm
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[:, 5] = False
    assert mpjpe(pred, target, root=[1, 2], mask=mask).item() == pytest.approx(0.0, abs=1e-4)
    assert mpjpe(pred, target, root=[1, 2]).item() == pytest.approx(10.0, rel=1e-5)


def test_pa_mpjpe_invariant_to_similarity_transform(rng):
    target = torch.randn(2, 3, 17, 3, generator=rng, dtype=torch.float64)
    noisy = target + 0.01 * torch.randn(target.shape, generator=rng, dtype=torch.float64)
    base = pa_mpjpe(noisy, target)
    R = _rotation(rng)
    moved = 2.7 * noisy @ R.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert pa_mpjpe(moved, target).item() == pytest.approx(base.item(), rel=1e-9)
    assert pa_mpjpe(2.7 * target @ R.T + 3.0, target).item() == pytest.approx(0.0, abs=1e-8)
    # whole-sequence mode: one transform for all frames still undoes a global similarity
    assert pa_mpjpe(2.7 * target @ R.T, target, per_frame=False).item() == pytest.approx(0.0, abs=1e-8)
    # ... but not a different rotation per frame, which per-frame mode does undo
    per_frame_rot = torch.stack([noisy[:, i] @ _rotation(rng).T for i in range(3)], dim=1)
    assert pa_mpjpe(per_frame_rot, target).item() == pytest.approx(base.item(), rel=1e-9)
    assert pa_mpjpe(per_frame_rot, target, per_frame=False).item() > 10 * base.item()
    # and PA-MPJPE never exceeds MPJPE without alignment
    assert base.item() <= mpjpe(noisy, target, root=None).item() + 1e-9


def test_procrustes_excludes_reflections(rng):
    src = torch.randn(30, 3, generator=rng, dtype=torch.float64)
    mirrored = src * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    _, rot, _ = similarity_procrustes(src, mirrored)
    assert torch.linalg.det(rot).item() == pytest.approx(1.0, abs=1e-9)
    # a mirror image cannot be matched by a proper rotation
    assert pa_mpjpe(src, mirrored).item() > 1.0


def test_root_trajectory_error(rng):
    joints = torch.randn(2, 8, 22, 3, generator=rng)
    shifted = joints + torch.tensor([5.0, 0.0, 0.0])  # constant offset: removed by first-frame alignment
    assert root_trajectory_error(shifted, joints).item() == pytest.approx(0.0, abs=1e-3)
    assert root_trajectory_error(shifted, joints, align="none").item() == pytest.approx(5000.0, rel=1e-6)
    drift = joints.clone()
    drift[..., :, :] += torch.linspace(0, 0.07, 8)[:, None, None] * torch.tensor([0.0, 0.0, 1.0])
    expected = torch.linspace(0, 70, 8).mean().item()
    assert root_trajectory_error(drift, joints).item() == pytest.approx(expected, rel=1e-5)
    traj = joints[..., 0, :]
    assert root_trajectory_error(traj + 1, traj, root=None, align="mean").item() == pytest.approx(0, abs=1e-3)


def test_pose_metric_object_accumulates(rng):
    metric = PoseMetrics()
    target = torch.randn(4, 5, 22, 3, generator=rng)
    pred = target + 0.02 * torch.randn(target.shape, generator=rng)
    metric.update(pred[:1], target[:1])
    metric.update(pred[1:], target[1:])
    out = metric.compute()
    assert out["mpjpe"].item() == pytest.approx(mpjpe(pred, target).item(), rel=1e-6)
    assert out["pa_mpjpe"].item() == pytest.approx(pa_mpjpe(pred, target).item(), rel=1e-6)
    assert math.isfinite(out["root_traj"].item())


def _loop_mpjpe(pred, target, mask, root=0):
    """Independent reference: plain Python loops over every valid joint, no tensor reductions."""

    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for t in range(pred.shape[1]):
            p_root, t_root = pred[b, t, root].tolist(), target[b, t, root].tolist()
            for j in range(pred.shape[2]):
                if not bool(mask[b, t, j]):
                    continue
                d = [
                    (pred[b, t, j, k].item() - p_root[k]) - (target[b, t, j, k].item() - t_root[k])
                    for k in range(3)
                ]
                total += math.sqrt(sum(x * x for x in d)) * 1000.0
                count += 1
    return total / count


def test_pose_metric_averages_per_valid_joint_like_the_functional(rng):
    """A fully masked frame weighs nothing and a half-masked one weighs half (issue 14: 77.10 vs 95.52 mm)."""

    target = torch.randn(3, 4, 22, 3, generator=rng, dtype=torch.float64)
    pred = target + 0.05 * torch.randn(target.shape, generator=rng, dtype=torch.float64)
    mask = torch.rand(3, 4, 22, generator=rng) > 0.3
    mask[0, 1] = False  # a frame with no valid joint
    mask[2, 3, 11:] = False
    metric = PoseMetrics()
    metric.update(pred[:2], target[:2], mask[:2])
    metric.update(pred[2:], target[2:], mask[2:])
    out = metric.compute()
    expected = _loop_mpjpe(pred, target, mask)
    assert out["mpjpe"].item() == pytest.approx(expected, rel=1e-9)
    assert mpjpe(pred, target, mask=mask).item() == pytest.approx(expected, rel=1e-9)
    assert out["pa_mpjpe"].item() == pytest.approx(pa_mpjpe(pred, target, mask=mask).item(), rel=1e-9)
    # the old per-frame average (a masked frame counted as 0 mm) is measurably different here
    per_frame = mpjpe(pred, target, mask=mask, reduction="none")
    assert torch.isnan(per_frame[0, 1])
    assert abs(per_frame.nan_to_num(0.0).mean().item() - expected) > 1.0
