"""Lifting baselines (fixed depth, SMPLify-like fit) and the held-out lifting evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from dimo.eval.pose import mpjpe
from dimo.geometry.cameras import intrinsics, project
from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats, rest_joints
from dimo.pose.lifting import EVAL_JOINTS, ROOT, fixed_depth_lift, smplify_lift, toy_pose_prior

pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert r["depth_spread"] == 0.0  # the collapse indicator: one plane has no depth spread at all
    md = to_markdown(rows, {"sequences": 14, "clips": 6, "seed": 0, "frames_per_clip": 12, "size": 32,
                            "frames": 168, "command": "test", "date": "today"})  # fmt: skip
    assert "| fixed_depth | projected |" in md and "MVLift (paper, AIST++) | 67.6 | 110.7 | 79.2" in md
    assert "| 0.0 |" in md  # the depth spread column
    old = [{k: v for k, v in r.items() if k != "depth_spread"}]  # a row kept from before the column existed
    assert f"| {r['pa_mpjpe']} | - |" in to_markdown(old, {"sequences": 14, "clips": 6, "seed": 0,
        "frames_per_clip": 12, "size": 32, "frames": 168, "command": "test", "date": "today"})  # fmt: skip


def test_depth_spread_is_the_ratio_of_per_frame_depth_deviations():
    from dimo.pose.eval_lifting import depth_spread

    joints, _ = _posed_in_camera(T=3)
    pred, true = depth_spread(joints, joints)
    assert pred == true > 0
    ids = list(EVAL_JOINTS)
    by_hand = sum(float(joints[f, ids, 2].std(unbiased=False)) for f in range(3))
    assert true == pytest.approx(by_hand)
    # halving every joint's depth offset from the frame's mean depth halves the spread
    squeezed = joints.clone()
    z = joints[..., 2]
    m = z[:, ids].mean(-1, keepdim=True)
    squeezed[..., 2] = m + 0.5 * (z - m)
    assert depth_spread(squeezed, joints)[0] == pytest.approx(0.5 * true)


def test_data_label_writes_pseudo_motion_for_clips_without_it(toy_root, tmp_path):
    import shutil
    from dataclasses import replace

    import numpy as np

    from dimo.commands.data import main
    from dimo.data.keypoints import save_keypoints2d
    from dimo.data.manifest import load_manifest, load_motion, write_manifest
    from dimo.data.validate import validate_record
    from dimo.eval.pose import pa_mpjpe
    from dimo.pose.joints import smplx_to_wholebody

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    records = load_manifest(root)[0]
    rec = next(r for r in records if r.source == "internet")
    gt = load_motion(rec)
    K, R, t = (
        torch.from_numpy(np.ascontiguousarray(a)).float() for a in rec.views[0].cameras(rec.num_frames)
    )
    uv, _ = project(torch.from_numpy(gt["joints"]), K, R, t)
    kp, sc = smplx_to_wholebody(uv, torch.ones(rec.num_frames, 55))  # a perfect "detector"
    save_keypoints2d(root / "kp.npz", kp, sc)
    bare = replace(rec, motion=None, views=(replace(rec.views[0], keypoints2d="kp.npz"),))
    write_manifest(root, [bare if r.id == rec.id else r for r in records])
    assert main(["label", str(root), "--iters", "150"]) == 0
    new = next(r for r in load_manifest(root)[0] if r.id == rec.id)
    assert (new.motion.body, new.motion.hands, new.motion.joints3d) == ("pseudo", "missing", "pseudo")
    motion = load_motion(new)
    problems = validate_record(new, decode=False)  # incl. joints == FK(parameters) to 1 mm
    assert not problems, problems
    # the pseudo body stands upright in dimo's y-up world, and its shape matches the truth up to similarity
    assert (motion["joints"][:, 15, 1] > motion["joints"][:, 7, 1]).all()  # head above the ankle
    err = pa_mpjpe(torch.from_numpy(motion["joints"]), torch.from_numpy(gt["joints"]), joints=EVAL_JOINTS)
    assert err.item() < 120.0, err
    assert main(["label", str(root), "--fov-deg", "0"]) == 2


def test_eval_lifting_main_keeps_rows_and_scores_mvlift_before_the_fit(tmp_path, capsys):
    import json
    from pathlib import Path

    from dimo.pose.eval_lifting import main

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "lifting"
    common = ["--out", str(out), "--detector", str(repo / "pretrained" / "toy-detector"), "--clips-per-source", "1",
              "--frames", "4"]  # fmt: skip
    assert main([*common, "--methods", "fixed_depth"]) == 0
    assert main([*common, "--methods", "mvlift_stage1", "--raw", "mvlift_stage1", "--mvlift-option", "steps=2",
                 "--mvlift-option", "fit_iters=2", "--keep"]) == 0  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    got = [(r["method"], r["input"]) for r in data["rows"]]
    assert got == [(m, i) for m in ("fixed_depth", "mvlift_stage1", "mvlift_stage1/no-fit")
                   for i in ("projected", "detected")]  # fmt: skip
    assert data["rows"][0]["date"] and data["meta"]["mvlift_options"] == {"steps": 2, "fit_iters": 2}
    assert all(r["depth_spread"] >= 0 for r in data["rows"]) and data["rows"][0]["depth_spread"] == 0.0
    assert "--raw mvlift_stage1" in out.with_suffix(".md").read_text()
    only = tmp_path / "projected"
    assert main([*common[2:], "--out", str(only), "--methods", "fixed_depth", "--inputs", "projected"]) == 0
    rows = json.loads(only.with_suffix(".json").read_text())["rows"]
    assert [(r["method"], r["input"]) for r in rows] == [("fixed_depth", "projected")]
    assert rows[0]["mpjpe"] == data["rows"][0]["mpjpe"]  # the same clips and input as above
