"""HVG generation inputs: camera rings, motion files, the module batch, the tiled overview, bad input.

The HVG network itself is exercised by tests/test_hvg_*.py; building it is too slow for these tests,
so the pipeline's own code (everything around ``HVGModule.generate``) is tested here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dimo.pipelines.cameras import parse_cameras
from dimo.pipelines.errors import GenerateError
from dimo.pipelines.hvg import HVGPipeline, load_motion_joints, tile_views


def _motion(tmp_path, n: int = 6) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats, rest_joints

    g = np.random.default_rng(0)
    data = {
        "global_orient": g.normal(0, 0.2, (n, 3)).astype(np.float32),
        "body_pose": g.normal(0, 0.2, (n, 21, 3)).astype(np.float32),
        "hand_pose": g.normal(0, 0.2, (n, 30, 3)).astype(np.float32),
        "transl": g.normal(0, 0.1, (n, 3)).astype(np.float32),
    }
    rot = pose_to_rotmats(*(torch.from_numpy(data[k]) for k in ("global_orient", "body_pose", "hand_pose")))
    joints = forward_kinematics(rot, rest_joints(), torch.from_numpy(data["transl"]))
    return data, joints


def test_ring_cameras_centre_the_pelvis_and_go_round() -> None:
    from dimo.geometry.cameras import camera_centers, project

    target = torch.tensor([0.1, 0.9, -0.2])
    cams = parse_cameras("ring8", target, 64, 48)
    assert cams.K.shape == (8, 3, 3) and cams.R.shape == (8, 3, 3) and cams.t.shape == (8, 3)
    uv, depth = project(target[None, None].expand(8, 1, 3), cams.K, cams.R, cams.t)
    torch.testing.assert_close(uv[:, 0], torch.tensor([24.0, 32.0]).expand(8, 2), atol=1e-4, rtol=0)
    assert bool((depth > 0).all())
    centres = camera_centers(cams.R, cams.t) - target
    assert centres[0, 2] > 0 and abs(float(centres[0, 0])) < 1e-5  # view 0 in front (+z)
    yaw = torch.atan2(centres[:, 0], centres[:, 2])
    steps = torch.remainder(yaw.diff(), 2 * torch.pi)
    torch.testing.assert_close(steps, torch.full((7,), 2 * torch.pi / 8), atol=1e-4, rtol=0)


@pytest.mark.parametrize("spec", ["ring0", "circle8", "ring", "ring65"])
def test_unknown_camera_sets_are_clear_errors(spec: str) -> None:
    with pytest.raises(GenerateError, match="expected ringN"):
        parse_cameras(spec, torch.zeros(3), 32, 32)


def test_motion_from_parameters_matches_joints(tmp_path) -> None:
    data, joints = _motion(tmp_path)
    np.savez(tmp_path / "params.npz", **data)
    np.savez(tmp_path / "joints.npz", joints=joints.numpy())
    torch.testing.assert_close(load_motion_joints(tmp_path / "params.npz"), joints)
    assert load_motion_joints(tmp_path / "joints.npz", max_frames=4).shape == (4, 55, 3)


def test_bad_motion_files(tmp_path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"junk")
    np.savez(tmp_path / "wrong.npz", joints=np.zeros((4, 24, 3), np.float32))
    np.savez(tmp_path / "none.npz", betas=np.zeros(10, np.float32))
    with pytest.raises(GenerateError, match="motion file not found"):
        load_motion_joints(tmp_path / "missing.npz")
    with pytest.raises(GenerateError, match="cannot read motion file"):
        load_motion_joints(tmp_path / "junk.npz")
    with pytest.raises(GenerateError, match=r"expected \(T, 55, 3\)"):
        load_motion_joints(tmp_path / "wrong.npz")
    with pytest.raises(GenerateError, match="neither 'joints' nor 'body_pose'"):
        load_motion_joints(tmp_path / "none.npz")


def test_batch_matches_the_hvg_contract(tmp_path) -> None:
    _, joints = _motion(tmp_path)
    cams = parse_cameras("ring4", joints[0, 0], 32, 32)
    batch = HVGPipeline.batch(torch.zeros(3, 32, 32), joints, cams)
    assert batch["target"].shape == (1, 4, 6, 3, 32, 32) and batch["reference"].shape == (1, 3, 32, 32)
    assert batch["joints3d"].shape == (1, 6, 55, 3) and batch["pelvis2d"].shape == (1, 4, 6, 2)
    torch.testing.assert_close(batch["rel_rot"][0, 0], torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(batch["pelvis2d"][0, :, 0], torch.full((4, 2), 16.0), atol=1e-4, rtol=0)


def test_tile_views_layout() -> None:
    video = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1, 1).expand(5, 2, 3, 4, 6)  # (V, T, 3, H, W)
    grid = tile_views(video)  # 3 columns, 2 rows
    assert grid.shape == (2, 3, 8, 18)
    assert grid[0, 0, 0, 0] == 0 and grid[0, 0, 0, 6] == 1 and grid[0, 0, 0, 12] == 2
    assert grid[1, 0, 4, 0] == 3 and grid[1, 0, 4, 6] == 4 and grid[1, 0, 4, 12] == -1


def test_cli_hvg_rejects_a_3dimo_checkpoint(tmp_path, capsys) -> None:
    from dimo.commands.generate import main

    data, _ = _motion(tmp_path)
    np.savez(tmp_path / "m.npz", **data)
    ckpt = tmp_path / "3dimo.ckpt"
    state = {"net.encoders.body.latents": torch.zeros(1)}
    torch.save(
        {"state_dict": state, "hyper_parameters": {"_class_path": "dimo.models.threedimo.ThreeDiMoModule"}},
        ckpt,
    )
    out = tmp_path / "out" / "x.mp4"
    argv = ["--model", "hvg", "--checkpoint", str(ckpt), "--reference", str(tmp_path / "r.png")]
    assert main([*argv, "--motion", str(tmp_path / "m.npz"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "expected a hvg checkpoint" in err and len(err.splitlines()) == 1
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.fixture(scope="module")
def hvg_ckpt(tmp_path_factory):
    from dimo.models.hvg import HVGModule
    from dimo.testing import save_module_checkpoint

    torch.manual_seed(0)
    return save_module_checkpoint(HVGModule(), tmp_path_factory.mktemp("hvg") / "hvg.ckpt")


def test_hvg_cli_views_overview_and_export_round_trip(hvg_ckpt, tmp_path) -> None:
    import json

    from PIL import Image

    from dimo.commands.export import main as export_main
    from dimo.commands.generate import main
    from dimo.data.video import read_frames

    data, _ = _motion(tmp_path, n=3)
    np.savez(tmp_path / "m.npz", **data)
    Image.fromarray(np.full((40, 48, 3), 128, np.uint8)).save(tmp_path / "ref.png")
    common = ["--model", "hvg", "--reference", str(tmp_path / "ref.png"), "--motion", str(tmp_path / "m.npz")]
    common += ["--cameras", "ring3", "--num-frames", "2", "--steps", "1", "--height", "32", "--width", "32"]
    out = tmp_path / "a" / "grid.mp4"
    assert main([*common, "--checkpoint", str(hvg_ckpt), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["grid.json", "grid.mp4", "grid_view0.mp4", "grid_view1.mp4", "grid_view2.mp4"]
    assert read_frames(out, range(2)).shape == (2, 64, 64, 3)  # 3 views tiled 2 x 2
    assert read_frames(out.parent / "grid_view1.mp4", range(2)).shape == (2, 32, 32, 3)
    side = json.loads((out.parent / "grid.json").read_text())
    assert side["cameras"] == "ring3" and side["frames"] == 2 and len(side["views"]) == 3

    assert export_main([str(hvg_ckpt), str(tmp_path / "exp")]) == 0
    out_b = tmp_path / "b" / "grid.mp4"
    assert main([*common, "--pretrained", str(tmp_path / "exp"), "--out", str(out_b)]) == 0
    for name in ("grid.mp4", "grid_view2.mp4"):
        np.testing.assert_array_equal(
            read_frames(out_b.parent / name, range(2)), read_frames(out.parent / name, range(2))
        )


# --- explicit camera files and trajectories (issue 7) ------------------------------------------


def _explicit_views(target: torch.Tensor) -> list[dict]:
    from dimo.geometry.cameras import intrinsics, look_at

    eyes = torch.tensor([[0.0, 1.2, 3.0], [2.5, 1.0, 1.0], [-2.0, 0.5, -2.0]])
    aim = target + torch.tensor([0.05, -0.1, 0.0])  # slightly off the pelvis: alignment shifts K
    R, t = look_at(eyes, aim.expand(3, 3))
    K = intrinsics(48, 32, torch.tensor([40.0, 50.0, 30.0]))
    return [{"K": K[i].tolist(), "R": R[i].tolist(), "t": t[i].tolist()} for i in range(3)]


def test_camera_file_explicit_views_match_the_file_after_alignment(tmp_path) -> None:
    import json

    from dimo.geometry.alignment import pelvis_alignment

    _, joints = _motion(tmp_path)
    pelvis = joints[0, 0]
    views = _explicit_views(pelvis)
    (tmp_path / "cams.json").write_text(json.dumps(views))
    cams = parse_cameras(str(tmp_path / "cams.json"), pelvis, 32, 48)
    K, R, t = (torch.tensor([v[k] for v in views]) for k in ("K", "R", "t"))
    torch.testing.assert_close(cams.R, R)
    torch.testing.assert_close(cams.t, t)
    al = pelvis_alignment(pelvis, K, R, t, (32, 48))  # the training samples' alignment (pure shift)
    torch.testing.assert_close(cams.K, al.K, atol=1e-4, rtol=0)
    torch.testing.assert_close(cams.K[:, :2, :2], K[:, :2, :2])  # focal lengths kept
    assert not torch.allclose(cams.K, K, atol=1e-2)  # the pelvis was off-centre before
    batch = HVGPipeline.batch(torch.zeros(3, 32, 48), joints, cams)
    torch.testing.assert_close(batch["R"][0], R)
    torch.testing.assert_close(batch["K"][0], al.K, atol=1e-4, rtol=0)
    torch.testing.assert_close(batch["rel_rot"][0, 0], torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch["rel_rot"][0], R @ R[:1].transpose(-1, -2))
    torch.testing.assert_close(
        batch["pelvis2d"][0, :, 0], torch.tensor([24.0, 16.0]).expand(3, 2), atol=1e-3, rtol=0
    )


def test_ring_cameras_are_already_aligned() -> None:
    from dimo.geometry.alignment import pelvis_alignment

    target = torch.tensor([0.1, 0.9, -0.2])
    cams = parse_cameras("ring5", target, 32, 48)
    al = pelvis_alignment(target, cams.K, cams.R, cams.t, (32, 48))
    torch.testing.assert_close(al.K, cams.K, atol=1e-4, rtol=0)


def test_camera_file_eye_target_form_equals_look_at(tmp_path) -> None:
    import json

    from dimo.geometry.cameras import intrinsics, look_at

    target = torch.tensor([0.0, 0.9, 0.0])
    views = [
        {"eye": [0.0, 1.0, 3.0], "target": target.tolist(), "fov_deg": 40},
        {"eye": [3.0, 1.5, 0.0], "target": target.tolist(), "fov_deg": 35.5},
    ]
    (tmp_path / "c.json").write_text(json.dumps(views))
    cams = parse_cameras(str(tmp_path / "c.json"), target, 32, 32)
    R, t = look_at(torch.tensor([v["eye"] for v in views]), target.expand(2, 3))
    torch.testing.assert_close(cams.R, R)
    torch.testing.assert_close(cams.t, t)
    K = intrinsics(32, 32, torch.tensor([40.0, 35.5]))
    torch.testing.assert_close(cams.K, K, atol=1e-4, rtol=0)  # aimed at the pelvis: alignment is a no-op


_BAD_CAMERA_FILES = {
    "not_json": ("{oops", "cannot read camera file"),
    "not_list": ('{"K": 1}', "expected a JSON list of 1..64 views"),
    "empty": ("[]", "expected a JSON list of 1..64 views"),
    "not_object": ("[[1, 2, 3]]", "view 0 is a JSON list"),
    "missing_t": ('[{"K": EYE, "R": EYE}]', r"view 0: missing key\(s\) 't'"),
    "missing_all": ('[{"foo": 1}]', r"missing key\(s\) 'eye', 'target', 'fov_deg'"),
    "unknown_key": (
        '[{"eye": [0,1,3], "target": [0,1,0], "fov": 40}]',
        r"missing key\(s\) 'fov_deg'; unknown key\(s\) 'fov'",
    ),
    "mixed_forms": ('[{"K": EYE, "R": EYE, "t": [0,0,3], "eye": [0,0,0]}]', r"unknown key\(s\) 'eye'"),
    "bad_R_shape": (
        '[{"K": EYE, "R": [[1,0],[0,1]], "t": [0,0,3]}]',
        r"R has shape \(2, 2\), expected \(3, 3\)",
    ),
    "bad_t_shape": ('[{"K": EYE, "R": EYE, "t": [0,0,3,1]}]', r"t has shape \(4,\), expected \(3,\)"),
    "ragged_K": (
        '[{"K": [[1,0,0],[0,1],[0,0,1]], "R": EYE, "t": [0,0,3]}]',
        "K must be a 3x3 array of numbers",
    ),
    "bad_K": ('[{"K": [[1,0,0],[0,1,0],[0,1,1]], "R": EYE, "t": [0,0,3]}]', r"K must be \[\[fx"),
    "scaled_R": ('[{"K": EYE, "R": [[2,0,0],[0,1,0],[0,0,1]], "t": [0,0,3]}]', "R is not a rotation"),
    "reflection_R": ('[{"K": EYE, "R": [[-1,0,0],[0,1,0],[0,0,1]], "t": [0,0,3]}]', "R is not a rotation"),
    "bad_fov": (
        '[{"eye": [0,1,3], "target": [0,1,0], "fov_deg": 180}]',
        r"fov_deg must be a number in \(0, 180\)",
    ),
    "string_eye": (
        '[{"eye": "front", "target": [0,1,0], "fov_deg": 40}]',
        "eye must be a 3 array of numbers",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_CAMERA_FILES))
def test_bad_camera_files_one_clear_error_and_no_output(case, tmp_path, capsys) -> None:
    from dimo.commands.generate import main

    text, expected = _BAD_CAMERA_FILES[case]
    cam_file = tmp_path / "cams.json"
    cam_file.write_text(text.replace("EYE", "[[1,0,0],[0,1,0],[0,0,1]]"))
    with pytest.raises(GenerateError, match=expected):
        parse_cameras(str(cam_file), torch.zeros(3), 32, 32)
    data, _ = _motion(tmp_path, n=3)
    np.savez(tmp_path / "m.npz", **data)
    out = tmp_path / "out" / "x.mp4"
    argv = [
        "--model",
        "hvg",
        "--checkpoint",
        str(tmp_path / "missing.ckpt"),
        "--reference",
        str(tmp_path / "r.png"),
    ]
    argv += ["--motion", str(tmp_path / "m.npz"), "--cameras", str(cam_file), "--out", str(out)]
    assert main(argv) == 2  # the camera file is checked before the checkpoint is read
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and str(cam_file) in err
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_camera_file_geometry_errors(tmp_path) -> None:
    import json

    bad = {
        "same.json": [{"eye": [0, 1, 0], "target": [0, 1, 0], "fov_deg": 40}],
        "behind.json": [
            {"K": [[30, 0, 16], [0, 30, 16], [0, 0, 1]], "R": torch.eye(3).tolist(), "t": [0, 0, -3]}
        ],
    }
    for name, views in bad.items():
        (tmp_path / name).write_text(json.dumps(views))
    with pytest.raises(GenerateError, match="eye and target coincide"):
        parse_cameras(str(tmp_path / "same.json"), torch.zeros(3), 32, 32)
    with pytest.raises(GenerateError, match="behind the camera in views \\[0\\]"):
        parse_cameras(str(tmp_path / "behind.json"), torch.zeros(3), 32, 32)
    with pytest.raises(GenerateError, match="camera file not found"):
        parse_cameras(str(tmp_path / "missing.json"), torch.zeros(3), 32, 32)


def test_trajectory_orbit_gives_evenly_spaced_views() -> None:
    from dimo.geometry.cameras import camera_centers, project

    target = torch.tensor([0.1, 0.9, -0.2])
    cams = parse_cameras("trajectory:orbit:4", target, 32, 32)
    assert cams.name == "trajectory:orbit:4" and cams.R.shape == (4, 3, 3) and cams.K.shape == (4, 3, 3)
    centres = camera_centers(cams.R, cams.t) - target
    yaw = torch.atan2(centres[:, 0], centres[:, 2])
    steps = torch.remainder(torch.cat([yaw.diff(), yaw[:1] - yaw[-1:]]), 2 * torch.pi)
    torch.testing.assert_close(steps, torch.full((4,), torch.pi / 2), atol=1e-4, rtol=0)  # closes the ring
    uv, depth = project(target[None, None].expand(4, 1, 3), cams.K, cams.R, cams.t)
    torch.testing.assert_close(uv[:, 0], torch.full((4, 2), 16.0), atol=1e-3, rtol=0)
    assert bool((depth > 0).all())
    assert len(parse_cameras("trajectory:dolly_in", target, 32, 32).K) == 8  # default N


@pytest.mark.parametrize(
    "spec", ["trajectory:spin:4", "trajectory:orbit:0", "trajectory:orbit:65", "trajectory:"]
)
def test_bad_trajectories_are_clear_errors(spec: str) -> None:
    with pytest.raises(GenerateError, match=r"expected trajectory:KIND\[:N\]"):
        parse_cameras(spec, torch.zeros(3), 32, 32)


def test_hvg_cli_with_a_camera_file(hvg_ckpt, tmp_path) -> None:
    import json

    from PIL import Image

    from dimo.commands.generate import main

    data, joints = _motion(tmp_path, n=3)
    np.savez(tmp_path / "m.npz", **data)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "ref.png")
    views = [
        {"eye": [0.0, 1.0, 3.0], "target": joints[0, 0].tolist(), "fov_deg": 40},
        _explicit_views(joints[0, 0])[1],
    ]
    (tmp_path / "cams.json").write_text(json.dumps(views))
    out = tmp_path / "c" / "grid.mp4"
    argv = ["--model", "hvg", "--checkpoint", str(hvg_ckpt), "--reference", str(tmp_path / "ref.png")]
    argv += ["--motion", str(tmp_path / "m.npz"), "--cameras", str(tmp_path / "cams.json"), "--out", str(out)]
    assert main([*argv, "--num-frames", "2", "--steps", "1", "--height", "32", "--width", "32"]) == 0
    side = json.loads((out.parent / "grid.json").read_text())
    assert side["cameras"] == str(tmp_path / "cams.json") and len(side["views"]) == 2
    torch.testing.assert_close(torch.tensor(side["camera_matrices"]["R"][1]), torch.tensor(views[1]["R"]))
