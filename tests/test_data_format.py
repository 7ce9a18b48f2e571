"""Clip format, PyAV IO, the toy-human generator and the validator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dimo.data.manifest import MANIFEST_NAME, RecordError, load_manifest, load_motion, parse_record
from dimo.data.validate import validate_root
from dimo.data.video import VideoError, adjust_intrinsics, probe, read_frames, resize_crop_plan, write_video


def _ramp_video(path, T=30, h=48, w=64, fps=24.0):
    frames = np.zeros((T, h, w, 3), np.uint8)
    frames[:] = (np.arange(T) * 8)[:, None, None, None]  # frame i has value 8 i everywhere
    write_video(path, frames, fps, crf=0)
    return frames


def test_video_roundtrip_seek_and_errors(tmp_path):
    path = tmp_path / "ramp.mp4"
    _ramp_video(path)
    info = probe(path, count=True)
    assert (info.num_frames, info.height, info.width, info.fps) == (30, 48, 64, 24.0)
    # a window far from the start (needs a seek) comes back as exactly those frames
    got = read_frames(path, [17, 19, 21, 29])
    assert got.shape == (4, 48, 64, 3) and got.dtype == np.uint8
    np.testing.assert_allclose(got.reshape(4, -1).mean(1), [136, 152, 168, 232], atol=2)
    small = read_frames(path, [0, 5], size=(32, 32))  # resize 48x64 -> cover 32x43 -> centre crop
    assert small.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(small.reshape(2, -1).mean(1), [0, 40], atol=2)
    with pytest.raises(VideoError, match="not found"):
        read_frames(path, [30])  # past the end
    with pytest.raises(VideoError, match="not found"):
        read_frames(tmp_path / "nope.mp4", [0])
    with pytest.raises(ValueError, match="sorted"):
        read_frames(path, [3, 2])
    data = path.read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError):
        read_frames(tmp_path / "trunc.mp4", [0, 29])
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 5, 4, 3), np.uint8), 10)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_resize_crop_plan_keeps_projection_exact():
    plan = resize_crop_plan(48, 64, 32, 32, "center")
    assert (plan.scaled_h, plan.scaled_w, plan.out_h, plan.out_w) == (32, 43, 32, 32) and plan.left == 5
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    K2 = adjust_intrinsics(K, 48, 64, plan)
    point = np.array([0.3, -0.2, 2.0])
    uv = (K @ point)[:2] / point[2]
    uv2 = (K2 @ point)[:2] / point[2]
    # the same pixel after scaling by (43/64, 32/48) and shifting by the crop offset
    np.testing.assert_allclose(uv2, [uv[0] * 43 / 64 - 5, uv[1] * 32 / 48], rtol=1e-9)
    assert resize_crop_plan(48, 64, 32, 32, "resize").scaled_w == 32


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"source": "tv"}, "source must be one of"),
        ({"num_frames": 0}, "num_frames"),
        ({"fps": -1}, "fps"),
        ({"views": []}, "views"),
        ({"views": [{"video": "a.mp4", "K": [[1, 0], [0, 1]]}]}, r"views\[0\].K"),
        ({"motion": {"file": "m.npz", "hands": "maybe"}}, "motion.hands"),
    ],
)
def test_parse_record_rejects_bad_records(patch, message):
    good = {"id": "c", "source": "internet", "fps": 24, "num_frames": 10, "views": [{"video": "a.mp4"}]}
    parse_record(good)
    with pytest.raises(RecordError, match=message):
        parse_record({**good, **patch})


def test_synth_validate_and_read_back(toy_root):
    from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats

    report = validate_root(toy_root)
    assert report.ok, report.problems
    table = report.table()
    assert {s: table[s]["clips"] for s in table} == {"internet": 2, "ue5": 2, "multiview": 2}
    records, problems = load_manifest(toy_root)
    assert not problems
    by_source = {r.source: r for r in records}
    assert len(by_source["internet"].views) == 1
    assert len(by_source["ue5"].views) == 2
    assert len(by_source["multiview"].views) == 4
    for rec in records:
        frames = read_frames(rec.path(rec.views[-1].video), [0, rec.num_frames - 1])
        assert frames.shape == (2, rec.height, rec.width, 3)
        assert frames.std() > 5  # a rendered person over a background, not a blank frame
        motion = load_motion(rec)
        assert motion["joints"].shape == (rec.num_frames, 55, 3)
        rot = pose_to_rotmats(
            torch.from_numpy(motion["global_orient"]),
            torch.from_numpy(motion["body_pose"]),
            torch.from_numpy(motion["hand_pose"]),
        )
        fk = forward_kinematics(
            rot, torch.from_numpy(motion["rest_joints"]), torch.from_numpy(motion["transl"])
        )
        torch.testing.assert_close(fk, torch.from_numpy(motion["joints"]), atol=1e-5, rtol=0)
        assert motion["joints"][:, :, 1].min() > -0.05  # nobody sinks through the floor
        # the person is visible: the projected pelvis is inside the first frame of every view
        for view in rec.views:
            K, R, t = view.cameras(rec.num_frames)
            p = R[0] @ motion["joints"][0, 0] + t[0]
            u, v = (K[0] @ p)[:2] / p[2]
            assert p[2] > 0 and 0 <= u < rec.width and 0 <= v < rec.height


def test_camera_prompts_match_trajectories(toy_root):
    from dimo.geometry.cameras import camera_centers, view_name

    records, _ = load_manifest(toy_root)
    seen = 0
    for rec in records:
        for view in rec.views:
            K, R, t = (
                torch.from_numpy(np.ascontiguousarray(a)).float() for a in view.cameras(rec.num_frames)
            )
            centers = camera_centers(R, t)  # (T, 3)
            head, motion = view.camera_prompt.split(". The camera ")
            assert head == view_name(centers[0])  # the named view is where the first camera stands
            kind = view.name
            if kind == "static":
                assert motion == "remains static." and torch.allclose(centers, centers[:1], atol=1e-5)
            elif kind in ("orbit", "arc"):
                deg = float(motion.split()[1])
                az = torch.atan2(centers[:, 0], centers[:, 2])
                turned = math.degrees(abs(float(az[-1] - az[0])))
                assert abs(turned - deg) < 1.0
            elif kind == "dolly_in":
                assert "dollies in" in motion and centers[-1].norm() < centers[0].norm()
            elif kind == "zoom_in":
                assert motion == "zooms in." and K[-1, 0, 0] > K[0, 0, 0]
            elif kind == "zoom_out":
                assert motion == "zooms out." and K[-1, 0, 0] < K[0, 0, 0]
            seen += 1
    assert seen == 2 + 4 + 8


def _broken_copy(toy_root, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(toy_root, root)
    records, _ = load_manifest(root)
    internet = [r for r in records if r.source == "internet"]
    video = root / internet[0].views[0].video
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 3])  # truncated MP4
    (root / internet[1].motion.file).unlink()  # missing motion file
    with (root / MANIFEST_NAME).open("a") as fh:
        fh.write(json.dumps({"id": "broken_json", "source": "internet"}) + "\n")
    return root, internet[0].id, internet[1].id


def test_validator_reports_truncated_and_missing(toy_root, tmp_path):
    root, truncated, no_motion = _broken_copy(toy_root, tmp_path)
    report = validate_root(root)
    assert not report.ok
    reasons = {(p.clip_id, p.part): p.reason for p in report.problems}
    assert (truncated, "views[0]") in reasons
    assert "motion file not found" in reasons[(no_motion, "motion")]
    assert "missing key" in reasons[("broken_json", "record")]
    assert report.bad_ids() == {truncated, no_motion, "broken_json"}
    from dimo.commands.data import main

    assert main(["validate", str(root)]) == 1
    assert main(["validate", str(toy_root)]) == 0
