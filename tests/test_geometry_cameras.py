"""Cameras: projection, look-at, trajectories and their prompts."""

from __future__ import annotations

import math

import pytest
import torch

from dimo.geometry import cameras as cam


def test_point_on_optical_axis_projects_to_principal_point():
    K = cam.intrinsics(64, 48, focal=50.0, cx=30.0, cy=20.0)
    R, t = cam.look_at(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.5, -1.0]))
    centre = cam.camera_centers(R, t)
    axis = R[2]  # viewing direction in world coordinates
    pts = centre + torch.tensor([0.5, 2.0, 7.0])[:, None] * axis  # (3, 3) points along the axis
    uv, z = cam.project(pts, K, R, t)
    torch.testing.assert_close(uv, torch.tensor([[30.0, 20.0]]).expand(3, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(z, torch.tensor([0.5, 2.0, 7.0]), atol=1e-5, rtol=0)
    # default principal point is the image centre (pixel centres at +0.5)
    K2 = cam.intrinsics(64, 48, fov_deg=60.0)
    assert (K2[0, 2], K2[1, 2]) == (32.0, 24.0)
    assert K2[1, 1].item() == pytest.approx(24.0 / math.tan(math.radians(30.0)))


def test_look_at_right_handed_and_looks_at_target(rng):
    eyes = torch.randn(16, 3, generator=rng) * 3
    targets = torch.randn(16, 3, generator=rng)
    R, t = cam.look_at(eyes, targets)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(cam.camera_centers(R, t), eyes, atol=1e-5, rtol=0)
    tc = (R @ targets[..., None])[..., 0] + t  # target in camera space: on +z, x = y = 0
    torch.testing.assert_close(tc[:, :2], torch.zeros(16, 2), atol=1e-5, rtol=0)
    assert (tc[:, 2] > 0).all()
    # OpenCV axes: y points down, so world up is camera -y; x is the camera's right
    R1, _ = cam.look_at(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(R1[1], torch.tensor([0.0, -1.0, 0.0]))
    torch.testing.assert_close(R1[0], torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="parallel"):
        cam.look_at(torch.tensor([0.0, 5.0, 0.0]), torch.zeros(3))


def test_relative_rotation():
    R, _ = cam.look_at(torch.tensor([[0.0, 1, 3], [3.0, 1, 0], [0.0, 1, -3]]), torch.tensor([0.0, 1, 0]))
    rel = cam.relative_rotation(R)
    torch.testing.assert_close(rel[0], torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(rel @ R[0], R, atol=1e-6, rtol=0)
    assert rel[2, 1, 1].item() == pytest.approx(1.0, abs=1e-6) and rel[2, 0, 0].item() == pytest.approx(
        -1.0, abs=1e-6
    )


@pytest.mark.parametrize(
    ("eye", "name"),
    [
        ((0.0, 0.9, 3.0), "Front view"),
        ((3.0, 0.9, 0.0), "Left side view"),
        ((-3.0, 0.9, 0.0), "Right side view"),
        ((0.0, 0.9, -3.0), "Back view"),
        ((2.0, 0.9, 2.0), "Front-left view"),
        ((-2.0, 0.9, -2.0), "Back-right view"),
        ((0.0, 4.0, 2.0), "High-angle front view"),
    ],
)
def test_view_names(eye, name):
    assert cam.view_name(eye) == name


def test_view_name_follows_subject_facing():
    # a subject facing +x sees a camera on +x as its front, a camera on +z on its right
    assert cam.view_name((3.0, 0.9, 0.0), facing=(1.0, 0.0, 0.0)) == "Front view"
    assert cam.view_name((0.0, 0.9, 3.0), facing=(1.0, 0.0, 0.0)) == "Right side view"


EXPECTED = {
    "static": "remains static",
    "orbit": "orbits 360 degrees to the left around the subject",
    "arc": "arcs 30 degrees to the left",
    "dolly_in": "dollies in",
    "dolly_out": "dollies out",
    "pan": "pans 20 degrees to the left",
    "zoom_in": "zooms in",
    "zoom_out": "zooms out",
    "handheld": "handheld",
}


@pytest.mark.parametrize("kind", cam.TRAJECTORY_KINDS)
def test_trajectory_prompt_names_its_motion(kind):
    traj = cam.make_trajectory(kind, 9, azimuth=90.0, direction="left", width=32, height=32)
    assert len(traj) == 9 and traj.K.shape == (9, 3, 3) and traj.kind == kind
    assert traj.prompt.startswith("Left side view. The camera ")
    assert EXPECTED[kind] in traj.prompt and traj.prompt.endswith(".")
    others = [v for k, v in EXPECTED.items() if k != kind and v not in EXPECTED[kind]]
    assert not any(o in traj.prompt for o in others)
    torch.testing.assert_close(torch.linalg.det(traj.R), torch.ones(9), atol=1e-5, rtol=0)


def test_trajectories_move_as_named():
    tgt = torch.tensor([0.0, 0.9, 0.0])
    arc = cam.make_trajectory("arc", 5, degrees=90.0, direction="right")
    # arcing right from the front ends on the subject's left (+x), at constant distance
    assert arc.centers[-1, 0] > 2.9 and abs(arc.centers[-1, 2]) < 1e-4
    torch.testing.assert_close((arc.centers - tgt).norm(dim=-1), torch.full((5,), 3.0), atol=1e-4, rtol=0)
    assert arc.prompt == "Front view. The camera arcs 90 degrees to the right."
    d_in = (cam.make_trajectory("dolly_in", 5).centers - tgt).norm(dim=-1)
    d_out = (cam.make_trajectory("dolly_out", 5).centers - tgt).norm(dim=-1)
    assert (d_in.diff() < 0).all() and (d_out.diff() > 0).all()
    z_in, z_out = cam.make_trajectory("zoom_in", 5).K[:, 0, 0], cam.make_trajectory("zoom_out", 5).K[:, 0, 0]
    assert (z_in.diff() > 0).all() and (z_out.diff() < 0).all()
    pan = cam.make_trajectory("pan", 5, direction="right")
    torch.testing.assert_close(pan.centers, pan.centers[:1].expand(5, 3), atol=1e-5, rtol=0)
    # panning right turns the viewing direction towards the first camera's +x (its right)
    assert pan.R[-1, 2] @ pan.R[0, 0] > 0.3
    # the target projects to the image centre on every frame of an orbit
    orbit = cam.make_trajectory("orbit", 7, width=40, height=30)
    uv, _ = cam.project(tgt.expand(7, 1, 3), orbit.K, orbit.R, orbit.t)
    torch.testing.assert_close(uv[:, 0], torch.tensor([20.0, 15.0]).expand(7, 2), atol=1e-3, rtol=0)


def test_handheld_deterministic_and_small():
    a = cam.make_trajectory("handheld", 24, seed=3)
    b = cam.make_trajectory("handheld", 24, seed=3)
    c = cam.make_trajectory("handheld", 24, seed=4)
    assert torch.equal(a.R, b.R) and torch.equal(a.t, b.t)
    assert not torch.equal(a.t, c.t)
    move = (a.centers - a.centers[0]).norm(dim=-1)
    assert 0 < move.max() < 0.05


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown trajectory kind"):
        cam.make_trajectory("spin", 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_frames"):
        cam.make_trajectory("static", 0)


def test_trajectory_prompt_inverts_make_trajectory():
    """The importer's prompt from a per-frame camera path equals the generator's prompt for that path."""

    import numpy as np

    rng = np.random.default_rng(0)
    for kind in cam.TRAJECTORY_KINDS:
        for i in range(12):
            degrees = {
                "orbit": rng.uniform(60, 360),
                "arc": rng.uniform(5, 45),
                "pan": rng.uniform(4, 60),
            }.get(kind)
            traj = cam.make_trajectory(
                kind, int(rng.integers(2, 30)), radius=float(rng.uniform(1.5, 5)),
                azimuth=float(rng.uniform(-180, 180)), elevation=float(rng.uniform(-10, 40)), degrees=degrees,
                direction=str(rng.choice(["left", "right"])), seed=i,
            )  # fmt: skip
            assert cam.trajectory_prompt(traj.K, traj.R, traj.t) == traj.prompt, (kind, i)
    # a truck (sideways slide, no turn) is none of the kinds: no prompt is made up
    eyes = torch.stack([torch.tensor([x, 0.9, 3.0]) for x in torch.linspace(0, 1, 8).tolist()])
    R, t = cam.look_at(eyes, eyes - torch.tensor([0.0, 0.0, 1.0]))
    assert cam.describe_trajectory(cam.intrinsics(64, 64).expand(8, 3, 3), R, t) is None
    with pytest.raises(ValueError, match="none of static"):
        cam.trajectory_prompt(cam.intrinsics(64, 64), R, t)
