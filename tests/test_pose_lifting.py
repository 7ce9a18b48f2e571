"""Lifting baselines (fixed depth, SMPLify-like fit) and the held-out lifting evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from dimo.eval.pose import mpjpe
from dimo.geometry.cameras import intrinsics, project
from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats, rest_joints
from dimo.pose.lifting import EVAL_JOINTS, ROOT, fixed_depth_lift, smplify_lift, toy_pose_prior


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _posed_in_camera(T: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Neutral skeleton, elbows and a knee bent, facing an OpenCV camera 3 m away: (T, 55, 3), K (T, 3, 3)."""

    body = torch.zeros(T, 21, 3)
    body[:, 15, 2] = -1.1  # left shoulder down
    body[:, 16, 2] = 1.1
    body[:, 17, 1] = -0.8  # left elbow
    body[:, 18, 1] = 0.6
    body[:, 3, 0] = torch.linspace(0.2, 0.6, T)  # left knee bends over time
    orient = torch.tensor([math.pi, 0.3, 0.0]).expand(T, 3)  # facing the camera, turned a little
    joints = forward_kinematics(pose_to_rotmats(orient, body), rest_joints())
    joints = joints - joints[:, :1] + torch.tensor([0.1, 0.2, 3.0])
    K = intrinsics(256, 256, fov_deg=40.0).expand(T, 3, 3)
    return joints, K


def test_fixed_depth_is_one_plane_that_reprojects_exactly():
    joints, K = _posed_in_camera()
    uv, _ = project(joints, K, torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3))
    valid = torch.zeros(2, 55, dtype=torch.bool)
    valid[:, list(EVAL_JOINTS)] = True
    out = fixed_depth_lift(uv, valid, K)
    ids = list(EVAL_JOINTS)
    z = out[:, ids, 2]
    assert torch.allclose(z, z[0, 0].expand_as(z))  # one depth for the clip
    assert abs(z[0, 0].item() - 3.0) < 0.4  # the neutral skeleton's limb lengths put it near 3 m
    back, _ = project(out, K, torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3))
    assert (back[:, ids] - uv[:, ids]).abs().max() < 1e-3


def test_smplify_fits_the_2d_and_beats_fixed_depth():
    joints, K = _posed_in_camera()
    uv, _ = project(joints, K, torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3))
    conf = torch.zeros(2, 55)
    conf[:, list(EVAL_JOINTS)] = 1.0
    out = smplify_lift(uv, conf, K, iters=200, prior=toy_pose_prior(clips=50))
    back, _ = project(out, K, torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3))
    ids = list(EVAL_JOINTS)
    assert (back[:, ids] - uv[:, ids]).norm(dim=-1).mean() < 1.5  # pixels
    flat = fixed_depth_lift(uv, conf > 0, K)
    e_fit = mpjpe(out, joints, root=list(ROOT), joints=ids).item()
    e_flat = mpjpe(flat, joints, root=list(ROOT), joints=ids).item()
    assert e_fit < 0.9 * e_flat, (e_fit, e_flat)  # measured 54.8 vs 64.6 mm


def test_lifting_evaluation_rows(toy_root):
    from dimo.pose.eval_lifting import evaluate, to_markdown

    rows = evaluate(toy_root, detector=None, methods=("fixed_depth",), log=lambda _: None)
    assert [(r["method"], r["input"]) for r in rows] == [("fixed_depth", "projected")]
    r = rows[0]
    assert r["sequences"] == 14 and r["frames"] == 14 * 12
    assert 0 < r["pa_mpjpe"] < r["mpjpe"] < 1000 and math.isfinite(r["t_root"])
    md = to_markdown(rows, {"sequences": 14, "clips": 6, "seed": 0, "frames_per_clip": 12, "size": 32,
                            "frames": 168, "command": "test", "date": "today"})  # fmt: skip
    assert "| fixed_depth | projected |" in md and "MVLift (paper, AIST++) | 67.6 | 110.7 | 79.2" in md
