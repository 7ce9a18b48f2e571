"""Rotations and skeleton / forward kinematics."""

from __future__ import annotations

import math

import pytest
import torch

from dimo.geometry import rotations as rot
from dimo.geometry import skeleton as sk


def _random_rotmats(gen: torch.Generator, *shape: int) -> torch.Tensor:
    aa = torch.randn(*shape, 3, generator=gen, dtype=torch.float64)
    aa = aa / aa.norm(dim=-1, keepdim=True) * torch.rand(*shape, 1, generator=gen, dtype=torch.float64) * 3.1
    return rot.axis_angle_to_matrix(aa)


def test_axis_angle_round_trip(rng):
    aa = torch.randn(4, 7, 3, generator=rng, dtype=torch.float64)
    aa = aa / aa.norm(dim=-1, keepdim=True) * torch.rand(4, 7, 1, generator=rng, dtype=torch.float64) * 3.1
    back = rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(aa))
    torch.testing.assert_close(back, aa, atol=1e-6, rtol=0)
    # known value: +90 degrees about z maps x to y
    m = rot.axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    torch.testing.assert_close(
        m @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0
    )


def test_matrix_to_axis_angle_angle_at_most_pi(rng):
    mats = _random_rotmats(rng, 200)
    aa = rot.matrix_to_axis_angle(mats)
    assert (aa.norm(dim=-1) <= math.pi + 1e-6).all()
    torch.testing.assert_close(rot.axis_angle_to_matrix(aa), mats, atol=1e-6, rtol=0)


def test_rot6d_round_trip_and_layout(rng):
    mats = _random_rotmats(rng, 5, 3)
    six = rot.matrix_to_rot6d(mats)
    assert six.shape == (5, 3, 6)
    # contract layout: [r00, r10, r20, r01, r11, r21]
    torch.testing.assert_close(
        six[0, 0],
        torch.stack(
            [
                mats[0, 0, 0, 0],
                mats[0, 0, 1, 0],
                mats[0, 0, 2, 0],
                mats[0, 0, 0, 1],
                mats[0, 0, 1, 1],
                mats[0, 0, 2, 1],
            ]
        ),
    )
    torch.testing.assert_close(rot.rot6d_to_matrix(six), mats, atol=1e-9, rtol=0)


def test_rot6d_to_matrix_orthonormal(rng):
    m = rot.rot6d_to_matrix(torch.randn(64, 6, generator=rng, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(m.transpose(-1, -2) @ m, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(64, dtype=torch.float64), atol=1e-10, rtol=0)


def test_tree_structure():
    assert len(sk.JOINT_NAMES) == len(sk.PARENTS) == sk.NUM_JOINTS == 55
    assert sk.JOINT_NAMES[0] == "pelvis" and sk.JOINT_NAMES[15] == "head" and sk.JOINT_NAMES[22] == "jaw"
    assert sk.JOINT_NAMES[25] == "left_index1" and sk.JOINT_NAMES[54] == "right_thumb3"
    assert all(sk.PARENTS[j] < j for j in range(1, 55))
    assert sk.PARENTS[20] == 18 and sk.PARENTS[21] == 19
    assert all(sk.PARENTS[j] in (20, j - 1) for j in sk.LEFT_HAND_IDS)
    assert len(sk.BONES) == len(sk.BONE_PARTS) == 54
    assert set(sk.descendants(20)) == set(sk.LEFT_HAND_IDS)


def test_rest_skeleton_plausible():
    rest = sk.rest_joints()
    assert rest.shape == (55, 3)
    name = {n: i for i, n in enumerate(sk.JOINT_NAMES)}
    assert rest[name["left_hip"], 0] > 0 > rest[name["right_hip"], 0]  # subject's left is +x
    assert rest[name["left_foot"], 2] > rest[name["left_ankle"], 2]  # toes point +z
    assert 1.5 < rest[name["left_eye"], 1] < 1.8 and rest[:, 1].min() >= 0.0
    torch.testing.assert_close(rest[sk.LEFT_HAND_IDS, 0], -rest[sk.RIGHT_HAND_IDS, 0])
    assert sk.JOINT_RADII[name["left_wrist"]] == pytest.approx(0.025)
    tall = sk.rest_joints(torch.tensor([1.0, 1.1]), proportions={"leg": 1.2})
    assert tall.shape == (2, 55, 3)
    assert tall[1, 15, 1] > tall[0, 15, 1] > rest[15, 1]
    with pytest.raises(KeyError, match="unknown proportion"):
        sk.rest_joints(proportions={"tail": 2.0})


def test_fk_rest_pose_gives_rest_skeleton():
    rest = sk.rest_joints()
    rotmats = torch.eye(3).expand(2, 3, 55, 3, 3)
    out = sk.forward_kinematics(rotmats, rest)
    assert out.shape == (2, 3, 55, 3)
    torch.testing.assert_close(out, rest.expand(2, 3, 55, 3))
    transl = torch.tensor([0.5, 0.0, -1.0])
    torch.testing.assert_close(sk.forward_kinematics(rotmats[0, 0], rest, transl), rest + transl)


@pytest.mark.parametrize("joint", [0, 1, 9, 16, 20, 37])
def test_rotating_parent_moves_exactly_descendants(joint):
    rest = sk.rest_joints()
    rotmats = torch.eye(3).repeat(55, 1, 1)
    rotmats[joint] = rot.axis_angle_to_matrix(torch.tensor([0.3, -0.7, 0.5]))
    posed = sk.forward_kinematics(rotmats, rest)
    moved = ((posed - rest).norm(dim=-1) > 1e-5).nonzero().flatten().tolist()
    assert moved == list(sk.descendants(joint))


def test_bone_lengths_preserved_under_any_pose(rng):
    rest = sk.rest_joints()
    rotmats = _random_rotmats(rng, 4, 55).float()
    posed = sk.forward_kinematics(rotmats, rest, torch.randn(4, 3, generator=rng))
    par = torch.tensor(sk.PARENTS[1:])
    ref = (rest[1:] - rest[par]).norm(dim=-1)
    got = (posed[:, 1:] - posed[:, par]).norm(dim=-1)
    torch.testing.assert_close(got, ref.expand(4, 54), atol=1e-5, rtol=0)


def test_pose_to_rotmats_layout_and_fk_gradients():
    go = torch.zeros(2, 3, requires_grad=True)
    body = torch.zeros(2, 21, 3)
    body[:, 17, 2] = 1.0  # joint 18 = left elbow (body pose starts at joint 1)
    hands = torch.zeros(2, 90)
    rm = sk.pose_to_rotmats(go, body, hands)
    assert rm.shape == (2, 55, 3, 3)
    torch.testing.assert_close(
        rm[:, 18], rot.axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0])).expand(2, 3, 3)
    )
    torch.testing.assert_close(rm[:, [0, 17, 19, 22, 30]], torch.eye(3).expand(2, 5, 3, 3))
    joints = sk.forward_kinematics(rm)
    joints[:, 20].sum().backward()
    assert go.grad is not None and torch.isfinite(go.grad).all() and go.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="body_pose"):
        sk.pose_to_rotmats(torch.zeros(3), torch.zeros(20, 3))
