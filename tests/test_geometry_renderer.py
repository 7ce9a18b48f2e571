"""Ellipsoid bone-map renderer and skeleton map."""

from __future__ import annotations

import pytest
import torch

from dimo.geometry import cameras as cam
from dimo.geometry import renderer as rd
from dimo.geometry import skeleton as sk
from dimo.geometry.rotations import axis_angle_to_matrix

EYE = torch.eye(3)[None]
ZERO_T = torch.zeros(1, 3)


def _spheres(centers, radii, parts, dtype=torch.float32) -> rd.Ellipsoids:
    c = torch.tensor(centers, dtype=dtype)[None]  # (1, E, 3)
    r = torch.tensor(radii, dtype=dtype)[None, :, None].expand(1, len(radii), 3)
    return rd.Ellipsoids(
        c, torch.eye(3, dtype=dtype).expand(1, len(radii), 3, 3), r.contiguous(), torch.tensor(parts)
    )


def test_sphere_depth_head_on_matches_analytic():
    # 65x65 image, principal point 32.5: the centre pixel's ray is exactly the optical axis.
    K = cam.intrinsics(65, 65, focal=60.0)[None]
    out = rd.render_ellipsoids(_spheres([[0.0, 0.0, 3.0]], [0.5], [0]), K, EYE, ZERO_T, 65, 65)
    # tolerance 1e-5 m (float32 round-off); the analytic value is 3.0 - 0.5
    assert out.depth[0, 32, 32].item() == pytest.approx(2.5, abs=1e-5)
    torch.testing.assert_close(out.normal[0, :, 32, 32], torch.tensor([0.0, 0.0, -1.0]), atol=1e-5, rtol=0)
    # off-centre pixels: distance along the ray to the sphere, closed form, in float64
    d = torch.tensor([25.5 - 32.5, 27.5 - 32.5, 60.0], dtype=torch.float64)
    d = d / d.norm()
    b = d @ torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    s = b - torch.sqrt(b * b - (9.0 - 0.25))
    assert out.depth[0, 27, 25].item() == pytest.approx(s.item(), abs=1e-5)
    assert out.depth[0, 0, 0] == 0 and out.part[0, 0, 0] == -1 and not out.mask[0, 0, 0]
    # silhouette radius in pixels: f * r / sqrt(D^2 - r^2)
    expected_area = torch.pi * (60.0 * 0.5 / (9.0 - 0.25) ** 0.5) ** 2
    assert out.mask.sum().item() == pytest.approx(expected_area, rel=0.03)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearer_of_two_overlapping_ellipsoids_wins(order):
    centers = [[0.1, 0.0, 2.0], [-0.1, 0.0, 3.0]]
    ell = _spheres([centers[i] for i in order], [[0.3, 0.5][i] for i in order], [3 + i for i in order])
    K = cam.intrinsics(64, 64, focal=50.0)[None]
    out = rd.render_ellipsoids(ell, K, EYE, ZERO_T, 64, 64)
    uv, _ = cam.project(torch.tensor([[0.1, 0.0, 2.0]]), K[0], EYE[0], ZERO_T[0])
    u, v = int(uv[0, 0]), int(uv[0, 1])
    # the near sphere (part 3) covers the far one where they overlap, with its own depth
    assert out.part[0, v, u] == 3
    assert out.depth[0, v, u].item() < 2.0
    far_only = (out.part == 4).nonzero()
    assert len(far_only) > 0 and (out.depth[out.part == 4] > 2.4).all()
    assert (out.depth[out.part == 3] < 2.0).all()


def test_hidden_point_is_not_visible():
    # a small part 7 sphere right behind a big part 0 sphere: no pixel shows it
    ell = _spheres([[0.0, 0.0, 2.0], [0.05, 0.0, 3.0]], [0.4, 0.1], [0, 7])
    K = cam.intrinsics(48, 48, focal=40.0)[None]
    out = rd.render_ellipsoids(ell, K, EYE, ZERO_T, 48, 48)
    assert not (out.part == 7).any()
    # swapped camera (looking from behind) sees it
    R, t = cam.look_at(torch.tensor([0.0, 0.0, 5.0]), torch.tensor([0.0, 0.0, 2.0]), up=(0.0, -1.0, 0.0))
    back = rd.render_ellipsoids(ell, K, R[None], t[None], 48, 48)
    assert (back.part == 7).any()


def test_skeleton_hand_behind_body_is_occluded():
    # seen from behind, with the left arm folded in front of the belly, the left hand is hidden
    rest = sk.rest_joints()
    rotmats = torch.eye(3).repeat(55, 1, 1)
    rotmats[16] = axis_angle_to_matrix(torch.tensor([0.0, -1.2, 0.0]))  # shoulder: arm forward
    rotmats[18] = axis_angle_to_matrix(torch.tensor([0.0, -1.5, 0.0]))  # elbow: forearm across the belly
    joints = sk.forward_kinematics(rotmats, rest)
    hand = joints[20]
    assert hand[2] > 0.05  # in front of the body
    front = cam.look_at(torch.tensor([0.0, 1.1, 3.0]), torch.tensor([0.0, 1.1, 0.0]))
    back = cam.look_at(torch.tensor([0.0, 1.1, -3.0]), torch.tensor([0.0, 1.1, 0.0]))
    K = cam.intrinsics(96, 96, fov_deg=40.0)
    R = torch.stack([front[0], back[0]])
    t = torch.stack([front[1], back[1]])
    extra = rd.toy_body_ellipsoids(joints[None].expand(2, 55, 3))
    out = rd.render_bones(joints[None].expand(2, 55, 3), K.expand(2, 3, 3), R, t, 96, 96, extra=extra)
    left_hand = sk.PART_NAMES.index("left_hand")
    assert (out.part[0] == left_hand).sum() > 3
    assert (out.part[1] == left_hand).sum() == 0


def test_normals_unit_and_facing_camera():
    joints = sk.rest_joints()[None].expand(3, 55, 3)
    traj = cam.make_trajectory("orbit", 3, degrees=240.0, width=48, height=48, elevation=20.0)
    out = rd.render_bones(joints, traj.K, traj.R, traj.t, 48, 48)
    assert out.mask.sum() > 100
    n = out.normal.permute(0, 2, 3, 1)[out.mask]  # (N, 3)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(len(n)), atol=1e-4, rtol=0)
    rays = rd._pixel_rays(traj.K, 48, 48).reshape(3, 48, 48, 3)[out.mask]
    assert ((n * rays).sum(-1) < 1e-6).all()  # a normal faces back along its viewing ray
    assert (out.normal.permute(0, 2, 3, 1)[~out.mask] == 0).all()
    assert (out.depth[~out.mask] == 0).all() and (out.depth[out.mask] > 0).all()


def test_identical_output_on_repeated_runs_and_chunking():
    joints = sk.rest_joints()[None].expand(2, 55, 3)
    traj = cam.make_trajectory("arc", 2, width=40, height=32)
    kw = dict(part_colors=rd.DEFAULT_PART_COLORS, stripes=torch.full((14,), 3))
    a = rd.render_bones(joints, traj.K, traj.R, traj.t, 32, 40, **kw)
    b = rd.render_bones(joints, traj.K, traj.R, traj.t, 32, 40, **kw)
    c = rd.render_bones(joints, traj.K, traj.R, traj.t, 32, 40, chunk_pairs=5000, **kw)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y)
        assert torch.equal(x, z)
    assert a.rgb.shape == (2, 3, 32, 40) and a.depth.shape == (2, 32, 40) and a.part.dtype == torch.int64


def test_rgb_colours_stripes_and_background():
    ell = rd.Ellipsoids(
        torch.tensor([[[0.0, 0.0, 3.0]]]),
        torch.eye(3)[None, None],
        torch.tensor([[[0.8, 0.3, 0.3]]]),  # long axis along camera x
        torch.tensor([1]),
    )
    K = cam.intrinsics(64, 32, focal=40.0)[None]
    colors = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    bg = torch.tensor([0.0, 1.0, 0.0])
    solid = rd.render_ellipsoids(ell, K, EYE, ZERO_T, 32, 64, part_colors=colors, background=bg, ambient=1.0)
    assert torch.equal(solid.rgb[0, :, 0, 0], bg)
    torch.testing.assert_close(solid.rgb[0, :, 16, 32], colors[1])
    striped = rd.render_ellipsoids(
        ell, K, EYE, ZERO_T, 32, 64, part_colors=colors, stripes=torch.tensor([0, 4]), ambient=1.0
    )
    row = striped.rgb[0, 0, 16][striped.mask[0, 16]]  # red channel along the long axis
    levels = torch.unique(row)
    assert set(levels.tolist()) == {0.5, 1.0}
    assert (row.diff() != 0).sum() == 3  # four bands -> three changes
    lit = rd.render_ellipsoids(ell, K, EYE, ZERO_T, 32, 64, part_colors=colors, light_dir=(0.0, 0.0, -1.0))
    assert lit.rgb[0, 0, 16, 32] > lit.rgb[0, 0, 16, 12]  # Lambert: facing the light is brighter


def test_bone_ellipsoid_geometry():
    joints = sk.rest_joints()[None]
    ell = rd.bone_ellipsoids(joints)
    k = sk.BONES.index((18, 20))  # left forearm
    a, b = joints[0, 18], joints[0, 20]
    torch.testing.assert_close(ell.center[0, k], (a + b) / 2)
    assert ell.radii[0, k, 0].item() == pytest.approx(((b - a).norm() / 2).item(), rel=1e-5)
    assert ell.radii[0, k, 1].item() == pytest.approx((0.04 + 0.025) / 2)
    assert abs(torch.dot(ell.axes[0, k, :, 0], (b - a) / (b - a).norm()).item()) == pytest.approx(
        1.0, abs=1e-6
    )
    torch.testing.assert_close(
        ell.axes[0].transpose(-1, -2) @ ell.axes[0], torch.eye(3).expand(54, 3, 3), atol=1e-5, rtol=0
    )
    assert sk.PART_NAMES[int(ell.part[k])] == "left_forearm"


def test_skeleton_map_draws_bones():
    joints = torch.tensor([[[-0.5, 0.0, 3.0], [0.5, 0.0, 3.0]]])
    K = cam.intrinsics(64, 64, focal=64.0)[None]
    colors = torch.tensor([[1.0, 0.0, 0.0]])
    img = rd.render_skeleton_map(
        joints, K, EYE, ZERO_T, 64, 64, bones=[(0, 1)], part_colors=colors, line_width=3
    )
    assert img.shape == (1, 3, 64, 64)
    assert torch.equal(img[0, :, 32, 32], colors[0])  # on the line
    assert (img[0, :, 10] == 0).all()  # far rows stay background
    drawn_cols = (img[0, 0].sum(0) > 0).nonzero().flatten()
    assert drawn_cols.min() >= 20 and drawn_cols.max() <= 43  # ends at u = 32 -+ 64*0.5/3


def test_bad_camera_shapes_raise():
    with pytest.raises(ValueError, match="cameras must be"):
        rd.render_bones(sk.rest_joints()[None], torch.eye(3), EYE, ZERO_T, 8, 8)


def test_culled_render_matches_brute_force_ray_casting():
    # random ellipsoids around and behind the camera, one containing it, an image size that leaves
    # partial culling tiles: the bounding-sphere cull must not change any pixel
    g = torch.Generator().manual_seed(0)
    B, E, H, W = 2, 14, 29, 37
    dt = torch.float64
    center = torch.randn(B, E, 3, generator=g, dtype=dt) * torch.tensor([1.0, 1.0, 2.0], dtype=dt)
    center[..., 2] += 2.5
    center[:, 0] = torch.tensor([0.1, -0.1, 0.2], dtype=dt)  # camera inside this one (radius 0.5)
    center[:, 1, 2] = -2.0  # behind the camera
    axes = axis_angle_to_matrix(torch.randn(B, E, 3, generator=g, dtype=dt))
    radii = 0.1 + 0.5 * torch.rand(B, E, 3, generator=g, dtype=dt)
    radii[:, 0] = 0.5
    ell = rd.Ellipsoids(center, axes, radii, torch.arange(E) % 5)
    K = torch.tensor([[40.0, 0, 18.0], [0, 40.0, 15.0], [0, 0, 1]], dtype=dt).expand(B, 3, 3)
    R = axis_angle_to_matrix(0.1 * torch.randn(B, 3, generator=g, dtype=dt))
    t = 0.1 * torch.randn(B, 3, generator=g, dtype=dt)
    out = rd.render_ellipsoids(ell, K, R, t, H, W, chunk_pairs=3000)

    c = center @ R.transpose(-1, -2) + t[:, None]  # (B, E, 3) camera space
    M = (R[:, None] @ axes).transpose(-1, -2) / radii[..., :, None]  # (B, E, 3, 3)
    d = rd._pixel_rays(K, H, W)  # (B, P, 3)
    Md = torch.einsum("beij,bpj->bpei", M, d)  # (B, P, E, 3)
    Mc = torch.einsum("beij,bej->bei", M, c)[:, None]  # (B, 1, E, 3)
    qa, qb, qc = (Md * Md).sum(-1), -(Md * Mc).sum(-1), (Mc * Mc).sum(-1) - 1
    disc = qb * qb - qa * qc
    s = (-qb - disc.clamp_min(0).sqrt()) / qa
    s = torch.where((disc >= 0) & (s > 1e-6), s, torch.inf)
    smin, idx = s.min(-1)
    hit = torch.isfinite(smin)
    assert 0 < hit.float().mean() < 1
    assert torch.equal(out.mask.reshape(B, -1), hit)
    torch.testing.assert_close(out.depth.reshape(B, -1), smin.where(hit, 0.0), rtol=1e-9, atol=1e-9)
    assert torch.equal(out.part.reshape(B, -1), torch.where(hit, ell.part[idx], -1))
