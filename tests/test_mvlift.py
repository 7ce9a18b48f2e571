"""MVLift (dimo.pose.mvlift): epipolar geometry and triangulation against independent formulas, the
no-3D-label guarantee of the training data, network shapes, few-step fits of every stage, the pipeline."""

from __future__ import annotations

import math

import pytest
import torch

from dimo.geometry.rotations import axis_angle_to_matrix
from dimo.pose.mvlift.geometry import (
    COORD_SCALE,
    J16,
    epipolar_distance,
    epipolar_lines,
    fundamental,
    line_features,
    lines_from_epipole,
    net_intrinsics,
    point_line_distance,
    project_points,
    ring_cameras,
    ring_depth,
    skew,
    triangulate,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _cameras(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random cameras looking roughly at the origin from 3-5 m: K, R (n, 3, 3), t (n, 3), float64."""

    K = torch.zeros(n, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = 300 + 200 * torch.rand(n, generator=g, dtype=torch.float64)
    K[:, 1, 1] = K[:, 0, 0] * (0.9 + 0.2 * torch.rand(n, generator=g, dtype=torch.float64))
    K[:, :2, 2] = 200 + 50 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    K[:, 2, 2] = 1
    aa = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3
    aa[:, 1] += torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]  # spread around the subject
    R = axis_angle_to_matrix(aa)
    dist = 3 + 2 * torch.rand(n, generator=g, dtype=torch.float64)
    t = torch.stack([torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), dist], -1)
    t = t + 0.2 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    return K, R, t


def _points(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.5


def test_fundamental_matches_the_projection_matrix_formula():
    # Hartley & Zisserman (9.1): F = [e']_x P' P^+ with e' = P' C, C the first camera's centre
    g = torch.Generator().manual_seed(0)
    K, R, t = _cameras(2, g)
    F = fundamental(K[0], R[0], t[0], K[1], R[1], t[1])
    P = K @ torch.cat([R, t[..., None]], -1)  # (2, 3, 4)
    C = torch.cat([-(R[0].T @ t[0]), torch.ones(1, dtype=torch.float64)])
    e2 = P[1] @ C
    F_hz = skew(e2) @ P[1] @ torch.linalg.pinv(P[0])
    a, b = F / F.norm(), F_hz / F_hz.norm()
    assert torch.allclose(a, b * torch.sign((a * b).sum()), atol=1e-9)
    # every pair of projections satisfies x'^T F x = 0, a wrong F does not
    X = _points(20, g)
    x1, x2 = project_points(X, K[0], R[0], t[0]), project_points(X, K[1], R[1], t[1])
    h1, h2 = (torch.cat([x, torch.ones(20, 1, dtype=torch.float64)], -1) for x in (x1, x2))
    assert (h2 @ F * h1).sum(-1).abs().max() < 1e-9 * F.abs().max() * 1e6
    F_wrong = fundamental(K[0], R[0], t[0], K[1], R[1].T, t[1])
    assert (h2 @ F_wrong * h1).sum(-1).abs().max() > 1e-3 * F_wrong.abs().max()


def test_epipolar_lines_against_two_point_line_distance():
    g = torch.Generator().manual_seed(1)
    K, R, t = _cameras(2, g)
    X = _points(10, g)
    x1, x2 = project_points(X, K[0], R[0], t[0]), project_points(X, K[1], R[1], t[1])
    F = fundamental(K[0], R[0], t[0], K[1], R[1], t[1])
    lines = epipolar_lines(F, x1)  # (10, 3)
    assert torch.allclose(lines[:, :2].norm(dim=-1), torch.ones(10, dtype=torch.float64))
    assert point_line_distance(x2, lines).max() < 1e-8  # the match lies on its line
    # the epipole (the first camera's centre seen by the second) lies on every line
    C = -(R[0].T @ t[0])
    e = project_points(C[None], K[1], R[1], t[1])
    assert point_line_distance(e.expand(10, 2), lines).max() < 1e-6
    # any other point: its distance equals the distance to the line through the epipole and the match
    q = x2 + torch.randn(10, 2, generator=g, dtype=torch.float64) * 20
    d_ref = ((x2 - e)[:, 0] * (q - e)[:, 1] - (x2 - e)[:, 1] * (q - e)[:, 0]).abs() / (x2 - e).norm(dim=-1)
    assert torch.allclose(point_line_distance(q, lines), d_ref, atol=1e-8)
    assert d_ref.min() > 1e-3  # the check is not vacuous
    # symmetric distance: zero for matches, the two one-sided distances otherwise
    assert epipolar_distance(x1, x2, F).max() < 1e-6
    d = epipolar_distance(x1, q, F)
    assert torch.allclose(d, d_ref + point_line_distance(x1, epipolar_lines(F.T, q)), atol=1e-8)


def test_lines_from_epipole_and_sign_free_features():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 7, 2, generator=g, dtype=torch.float64)
    e = torch.randn(4, 2, generator=g, dtype=torch.float64) * 3
    lines = lines_from_epipole(x, e)
    assert torch.allclose(lines[..., :2].norm(dim=-1), torch.ones(4, 7, dtype=torch.float64))
    assert point_line_distance(x, lines).max() < 1e-12
    assert point_line_distance(e[:, None].expand(4, 7, 2), lines).max() < 1e-12
    assert torch.equal(line_features(lines), line_features(-lines))
    a, b, c = lines.unbind(-1)
    assert torch.allclose(line_features(lines)[..., 4], a * c)


def test_triangulation_recovers_points_and_ignores_zero_weight_views():
    g = torch.Generator().manual_seed(3)
    K, R, t = _cameras(4, g)
    X = _points(30, g)
    x = torch.stack([project_points(X, K[v], R[v], t[v]) for v in range(4)])  # (4, 30, 2)
    assert (triangulate(x, K, R, t) - X).norm(dim=-1).max() < 1e-8
    # two views are enough; a corrupted view with weight 0 changes nothing, with weight 1 it does
    bad = x.clone()
    bad[3] += 25.0
    w = torch.ones(4, 30, dtype=torch.float64)
    w[3] = 0
    assert (triangulate(bad, K, R, t, w) - X).norm(dim=-1).max() < 1e-8
    assert (triangulate(bad, K, R, t) - X).norm(dim=-1).max() > 1e-2
    # batched leading dims
    xb = x[None].expand(2, 4, 30, 2)
    assert (triangulate(xb, K[None], R[None], t[None]) - X).norm(dim=-1).max() < 1e-8


def test_ring_cameras_rotate_about_the_subject():
    from dimo.geometry.cameras import camera_centers

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 16, 2, generator=g) * 0.5
    conf = torch.ones(2, 5, 16)
    R, t, c = ring_cameras(x, conf, (0.0, 60.0, 120.0, 180.0, 240.0, 300.0))
    assert torch.allclose(R[:, 0], torch.eye(3).expand(2, 3, 3)) and t[:, 0].abs().max() < 1e-6
    centers = camera_centers(R, t)  # (2, 6, 3)
    # every camera centre is on the circle about the vertical axis through c, in the input camera's y = 0 plane
    assert centers[..., 1].abs().max() < 1e-5
    flat = (centers - c[:, None]) * torch.tensor([1.0, 0.0, 1.0])
    rad = flat.norm(dim=-1)
    assert torch.allclose(rad, c[:, [0, 2]].norm(dim=-1)[:, None].expand_as(rad), atol=1e-5)
    # 60 degrees between neighbours about that axis
    u = torch.nn.functional.normalize(flat, dim=-1)
    cos = (u[:, 1:] * u[:, :-1]).sum(-1)
    assert torch.allclose(cos, torch.full_like(cos, 0.5), atol=1e-5)
    # the centre is a fixed point: it projects to the same image point in every view
    proj = project_points(c[:, None, None].expand(2, 6, 1, 3), net_intrinsics(), R, t)
    assert (proj - proj[:, :1]).abs().max() < 1e-5


def test_ring_depth_of_the_neutral_skeleton():
    from dimo.geometry.skeleton import rest_joints

    rest = rest_joints()[list(J16)]
    cam = rest - rest.mean(0) + torch.tensor([0.0, 0.0, 3.0])  # T-pose facing the camera, 3 m away
    x = COORD_SCALE * cam[:, :2] / cam[:, 2:]
    d = ring_depth(x[None, None], torch.ones(1, 1, 16))
    assert abs(float(d) - 3.0) < 0.1  # near-fronto-parallel limbs: the heuristic is nearly exact


# ---- data: only 2D ---------------------------------------------------------------------------
def test_toy_internet_sequences_are_the_written_clips_projection(toy_root):
    from dimo.data.manifest import load_manifest, load_motion
    from dimo.geometry.cameras import project
    from dimo.pose.mvlift.data import toy_internet_sequences
    from dimo.pose.mvlift.geometry import pixels_to_net

    seqs = toy_internet_sequences(seed=0, num=2, frames=12, size=32)
    records, _ = load_manifest(toy_root)
    internet = [r for r in records if r.source == "internet"]
    assert len(internet) == 2
    for i, rec in enumerate(internet):
        joints = torch.from_numpy(load_motion(rec)["joints"]).double()
        K, R, t = (torch.from_numpy(a.copy()) for a in rec.views[0].cameras(rec.num_frames))
        uv, _ = project(joints, K, R, t)
        ref = pixels_to_net(uv[:, list(J16)], K).float()
        assert (seqs["x2d"][i] - ref).abs().max() < 1e-4


def _toy_dm(**kw):
    from dimo.pose.mvlift.data import Motion2DDataModule

    dm = Motion2DDataModule(seed=5, num_train=8, num_val=4, frames=12, batch_size=4, **kw)
    dm.setup("fit")
    return dm


def test_training_batches_carry_no_3d_label(tmp_path):
    from safetensors.torch import save_file

    from dimo.pose.mvlift.data import ALLOWED_KEYS, MultiView2DDataModule, assert_no_3d

    dm = _toy_dm()
    for batch in dm.train_dataloader():
        assert_no_3d(batch)
        assert set(batch) == {"x2d", "conf", "index"}
        assert batch["x2d"].shape == (4, 12, 16, 2) and batch["conf"].shape == (4, 12, 16)
    n = 10
    save_file(
        {"views2d": torch.randn(n, 4, 12, 16, 2), "R": torch.eye(3).expand(n, 4, 3, 3).contiguous(),
         "t": torch.zeros(n, 4, 3)}, tmp_path / "syn.safetensors",
    )  # fmt: skip
    mv = MultiView2DDataModule(tmp_path / "syn.safetensors", num_val=2, batch_size=4)
    mv.setup("fit")
    for batch in mv.train_dataloader():
        assert_no_3d(batch)
        assert set(batch) <= ALLOWED_KEYS and batch["views2d"].shape[-1] == 2


@pytest.mark.parametrize(
    "extra",
    [
        {"joints3d": torch.zeros(2, 12, 55, 3)},
        {"x2d": torch.zeros(2, 12, 16, 3)},  # 3D under a 2D name
        {"depth": torch.zeros(2, 12, 16)},
        {"body_pose": torch.zeros(2, 12, 21, 3)},
    ],
)
def test_no_3d_guard_rejects_3d(extra):
    from dimo.pose.mvlift.data import assert_no_3d
    from dimo.pose.mvlift.modules import LineDiffusionModule
    from dimo.pose.mvlift.nets import PRESETS

    batch = {
        "x2d": torch.zeros(2, 12, 16, 2),
        "conf": torch.ones(2, 12, 16),
        "index": torch.arange(2),
        **extra,
    }
    with pytest.raises(ValueError, match="2D|not"):
        assert_no_3d(batch)
    with pytest.raises(ValueError):  # the module refuses it before any computation
        LineDiffusionModule(net=PRESETS["tiny"]).training_step(batch, 0)


def test_training_data_does_not_change_when_the_3d_does(monkeypatch):
    """Scale the toy world (people and cameras) by 1.7 about the origin: every 3D point and camera
    centre moves, every projection stays. The training batches must not change."""

    import dimo.data.synth as synth

    base = _toy_dm()
    pose_joints, cameras_for = synth.pose_joints, synth._cameras_for
    calls = []

    def big_joints(motion, rest):
        calls.append(1)
        return pose_joints(motion, rest) * 1.7

    def big_cameras(*a, **k):
        trajs = cameras_for(*a, **k)
        for tr in trajs:
            tr.t = tr.t * 1.7
        return trajs

    monkeypatch.setattr(synth, "pose_joints", big_joints)
    monkeypatch.setattr(synth, "_cameras_for", big_cameras)
    moved = _toy_dm()
    assert len(calls) == 8 + 4  # the 3D really was changed, for every training and validation clip
    for a, b in ((base.train_set, moved.train_set), (base.val_set, moved.val_set)):
        assert (a.x2d - b.x2d).abs().max() < 1e-5
        assert torch.equal(a.conf, b.conf)
    ref, new = next(iter(base.train_dataloader())), next(iter(moved.train_dataloader()))
    assert set(ref) == set(new) == {"x2d", "conf", "index"}


# ---- networks ----------------------------------------------------------------------------------
def test_networks_shapes_and_attention_paths():
    from dimo.pose.mvlift.nets import PRESETS, LineDiffusionNet, MultiViewDiffusionNet

    torch.manual_seed(0)
    net = LineDiffusionNet(PRESETS["tiny"])
    for p in net.parameters():  # leave adaLN-Zero's identity start so inputs reach the output
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 12, 16, 2)
    lines = line_features(lines_from_epipole(x, torch.randn(3, 1, 2)))
    out = net(x, torch.tensor([5, 500, 900]), lines, torch.ones(3, 12, 16))
    assert out.shape == (3, 12, 16, 2)
    x2 = x.clone()
    x2[:, 7] += 1  # temporal attention: frame 7 reaches frame 0
    assert not torch.allclose(
        net(x2, torch.tensor([5, 500, 900]), lines, torch.ones(3, 12, 16))[:, 0], out[:, 0]
    )

    mv = MultiViewDiffusionNet(PRESETS["tiny"])
    for p in mv.parameters():
        torch.nn.init.normal_(p, std=0.2)
    xv = torch.randn(2, 4, 12, 16, 2)
    cond = torch.randn(2, 4, 12, 16, MultiViewDiffusionNet.COND)
    o = mv(xv, torch.tensor([10, 700]), cond)
    assert o.shape == (2, 4, 12, 16, 2)
    xv2 = xv.clone()
    xv2[:, 2, 3] += 1  # cross-view attention: view 2 frame 3 reaches view 1 frame 3
    assert not torch.allclose(mv(xv2, torch.tensor([10, 700]), cond)[:, 1, 3], o[:, 1, 3])
    with pytest.raises(ValueError, match="cond"):
        mv(xv, torch.tensor([10, 700]), cond[..., :5])


def test_network_folder_round_trip_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    from dimo.pose.mvlift.nets import PRESETS, LineDiffusionNet, MultiViewDiffusionNet, load_net

    net = LineDiffusionNet(PRESETS["tiny"])
    net.save_pretrained(tmp_path / "a")
    back = load_net(tmp_path / "a", LineDiffusionNet.kind)
    # stored in fp16, loaded in fp32: equal to the fp16-rounded weights
    for a, b in zip(net.state_dict().values(), back.state_dict().values()):
        assert b.dtype == torch.float32 and torch.equal(a.half().float(), b)
    with pytest.raises(ValueError, match="model_type"):
        load_net(tmp_path / "a", MultiViewDiffusionNet.kind)
    state = load_file(tmp_path / "a" / "model.safetensors")
    state.pop(next(iter(state)))
    save_file(state, tmp_path / "a" / "model.safetensors")
    with pytest.raises(RuntimeError, match="Missing"):
        load_net(tmp_path / "a", LineDiffusionNet.kind)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_net(tmp_path / "nothing", LineDiffusionNet.kind)


# ---- few-step fits ---------------------------------------------------------------------------------
def test_line_diffusion_loss_falls_in_a_few_steps():
    from dimo.pose.mvlift.modules import LineDiffusionModule
    from dimo.pose.mvlift.nets import MotionNetConfig

    torch.manual_seed(0)
    dm = _toy_dm()
    batch = next(iter(dm.train_dataloader()))
    m = LineDiffusionModule(net=MotionNetConfig(dim=32, depth=1, heads=2, frames=12))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return m.losses(batch, torch.Generator().manual_seed(0))["loss"]

    start = float(loss())
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss()) < 0.5 * start


def test_multiview_diffusion_loss_falls_in_a_few_steps():
    from dimo.pose.mvlift.modules import MultiViewDiffusionModule
    from dimo.pose.mvlift.nets import MotionNetConfig

    torch.manual_seed(0)
    dm = _toy_dm()
    x = dm.train_set.x2d[:4]
    R, t, _ = ring_cameras(x, dm.train_set.conf[:4], (0.0, 90.0, 180.0, 270.0))
    batch = {
        "views2d": x[:, None].expand(4, 4, 12, 16, 2).contiguous(),
        "R": R,
        "t": t,
        "index": torch.arange(4),
    }
    m = MultiViewDiffusionModule(net=MotionNetConfig(dim=32, depth=1, heads=2, frames=12))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return m.losses(batch, torch.Generator().manual_seed(0))["loss"]

    start = float(loss())
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss()) < 0.5 * start


class _TargetNet(torch.nn.Module):
    """A stand-in denoiser that always predicts one fixed sequence (tests the SDS gradient's direction)."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target

    def forward(self, x_t, t, lines, mask):
        return self.target.expand_as(x_t)


def _ring_views(angles, T: int = 6):
    """A posed neutral skeleton 3 m in front of the input camera and its exact views on a ring."""

    from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats, rest_joints

    body = torch.zeros(T, 21, 3)
    body[:, 15, 2] = -1.0
    body[:, 16, 2] = 1.0
    body[:, 3, 0] = torch.linspace(0.1, 0.6, T)
    orient = torch.tensor([math.pi, 0.4, 0.0]).expand(T, 3)
    j = forward_kinematics(pose_to_rotmats(orient, body), rest_joints())
    j = j - j[:, :1].mean(0) + torch.tensor([0.1, 0.1, 3.0])
    x0 = COORD_SCALE * j[:, list(J16), :2] / j[:, list(J16), 2:]
    conf = torch.ones(1, T, 16)
    R, t, _ = ring_cameras(x0[None], conf, angles)
    views = project_points(j[None, None, :, list(J16)].flatten(2, 3), net_intrinsics(), R, t).view(
        1, len(angles), T, 16, 2
    )
    return j, views, conf, R, t


def test_stage2_epipolar_loss_restores_consistency_and_sds_pulls_to_the_denoiser():
    from dimo.pose.mvlift.optimise import RING6, optimise_views, view_losses

    _, views, conf, R, t = _ring_views(RING6)
    x0 = views[:, 0]
    noisy = views[:, 1:] + 0.05 * torch.randn(views[:, 1:].shape, generator=torch.Generator().manual_seed(0))
    dummy = _TargetNet(torch.zeros(1))
    before = float(view_losses(dummy, x0, conf, noisy, R, t, 0.0)["epipolar"])
    assert float(view_losses(dummy, x0, conf, views[:, 1:], R, t, 0.0)["epipolar"]) < 1e-4  # exact views
    out = optimise_views(dummy, x0, conf, R, t, iters=150, lr=3e-3, sds_weight=0.0, init=noisy)
    after = float(view_losses(dummy, x0, conf, out[:, 1:], R, t, 0.0)["epipolar"])
    assert after < 0.2 * before, (before, after)
    assert torch.equal(out[:, 0], x0)  # the input view is never changed
    # SDS alone moves every free view to what the denoiser predicts
    target = torch.full((1, 6, 16, 2), 0.3)
    out = optimise_views(
        _TargetNet(target), x0, conf, R, t, iters=300, lr=0.02, epipolar_weight=0.0, init=noisy
    )
    assert (out[:, 1:] - 0.3).abs().max() < 0.02


def test_sds_in_3d_has_no_epipolar_term_and_moves_the_3d_joints(monkeypatch):
    """The "SDS in 3D" ablation arm: its objective is SDS on the projections + the input view's
    reprojection, nothing epipolar; SDS moves the 3D joints so their projections meet the denoiser's
    prediction, and the reprojection term holds the input view."""

    import dimo.pose.mvlift.optimise as opt_mod
    from dimo.pose.mvlift.optimise import RING6, optimise_points, optimise_views, points_losses

    j, views, conf, R, t = _ring_views(RING6)
    x0 = views[:, 0]
    truth = j[None, :, list(J16)]  # (1, T, 16, 3) in the ring's frame (= the input camera's)
    dummy = _TargetNet(torch.zeros(1))
    losses = points_losses(dummy, x0, conf, truth, R, t, 0.0)
    assert set(losses) == {"sds", "reprojection"}
    assert float(losses["reprojection"]) < 1e-8  # the true joints reproject onto the input exactly

    # no epipolar distance is ever computed: with it made to fail, the 3D arm still runs (stage 2 fails)
    def no_epipolar(*args, **kwargs):
        raise AssertionError("epipolar distance used")

    monkeypatch.setattr(opt_mod, "epipolar_distance", no_epipolar)
    with pytest.raises(AssertionError, match="epipolar distance used"):
        optimise_views(dummy, x0, conf, R, t, iters=1, init=views[:, 1:])
    start = truth + 0.05 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    # the reprojection term alone brings the input view back
    out = optimise_points(dummy, x0, conf, R, t, iters=200, lr=3e-3, sds_weight=0.0, init_points=start)
    before = float(points_losses(dummy, x0, conf, start, R, t, 0.0)["reprojection"])
    after = float(points_losses(dummy, x0, conf, out, R, t, 0.0)["reprojection"])
    assert after < 0.05 * before, (before, after)
    # SDS alone pulls the projections to what the denoiser predicts (here: the true views 1..5, i.e. the
    # truth's projections), so the 3D joints move back to the truth from the perturbed start
    exact = _PerViewNet(views[0, 1:])
    out = optimise_points(
        exact, x0, conf, R, t, iters=300, lr=3e-3, reprojection_weight=0.0, init_points=start
    )
    assert float((out - truth).norm(dim=-1).mean()) < 0.3 * float((start - truth).norm(dim=-1).mean())


class _PerViewNet(torch.nn.Module):
    """A stand-in denoiser predicting a fixed sequence per view (``(V-1, T, J, 2)``, batch of one clip)."""

    def __init__(self, views: torch.Tensor) -> None:
        super().__init__()
        self.views = views

    def forward(self, x_t, t, lines, mask):
        return self.views.reshape(x_t.shape)


def test_sds3d_lifting_sees_only_the_2d(tmp_path):
    """The registered arm lifts from 2D, confidences and intrinsics alone: a world scaled by 1.7 about the
    camera (every 3D point moves, the 2D does not) lifts to the same joints."""

    from pathlib import Path

    from dimo.geometry.cameras import intrinsics, project
    from dimo.pose.lifting import get_lifter

    folder = Path(__file__).resolve().parents[1] / "pretrained" / "toy-mvlift"
    j, *_ = _ring_views((0.0,), T=8)
    K = intrinsics(64, 64, 40.0).expand(8, 3, 3)
    lift = get_lifter("mvlift_sds3d", folder=folder, steps=2, stage2_iters=3, fit_iters=3)
    outs = []
    for scale in (1.0, 1.7):
        uv, _ = project(j * scale, K, torch.eye(3).expand(8, 3, 3), torch.zeros(8, 3))
        outs.append(lift(uv, torch.ones(8, 55), K))
    assert outs[0].shape == (8, 55, 3) and torch.isfinite(outs[0]).all()
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_skeleton_fit_and_stage3_reprojection():
    from dimo.pose.mvlift.fit import RING4, fit_skeleton, make_synthetic
    from dimo.pose.mvlift.optimise import RING6

    j, views6, conf, R6, t6 = _ring_views(RING6)
    # the fit recovers the pose at neutral size, up to the toy pose prior's pull
    pts = j[None, :, list(J16)] * 1.2  # a 20% larger world: the fit must find the scale
    fit = fit_skeleton(pts, iters=200)
    assert abs(float(fit["scale"][0]) - 1.2) < 0.03
    err = (fit["joints"][0] - j).norm(dim=-1)[:, list(J16)].mean()
    assert float(err) < 0.03, float(err)
    # stage 3: exact 6 views -> the same skeleton's views on the 90-degree ring
    synth = make_synthetic(views6, conf, R6, t6, fit_iters=200)
    _, views4, _, R4, t4 = _ring_views(RING4)
    assert torch.allclose(synth["R"], R4, atol=1e-5) and torch.allclose(synth["t"], t4, atol=1e-4)
    px = (synth["views2d"] - views4).norm(dim=-1).mean() * 32 / COORD_SCALE  # ~ pixels of a 64 px frame
    assert float(px) < 0.6, float(px)


def test_pipeline_and_lifting_end_to_end(tmp_path):
    """All four stages through the real CLI at a few steps each, then the lifting entry point."""

    from dimo.geometry.cameras import intrinsics
    from dimo.pose.mvlift.lift import VARIANTS, mvlift_lift
    from dimo.pose.mvlift.train import train_pipeline

    net = ["model.init_args.net.dim=32", "model.init_args.net.depth=1", "model.init_args.net.heads=2"]
    rep = train_pipeline(
        tmp_path / "out",
        tmp_path / "run",
        {
            "stage1": [
                *net,
                "trainer.max_steps=4",
                "trainer.val_check_interval=2",
                "data.init_args.num_train=16",
                "data.init_args.num_val=4",
                "data.init_args.batch_size=8",
                "model.init_args.lr_scheduler.init_args.T_max=4",
                "model.init_args.val_sample_steps=2",
            ],
            "stage2": ["trainer.max_steps=3", "data.init_args.num_train=10", "model.init_args.init_steps=2"],
            "stage4": [
                *net,
                "trainer.max_steps=4",
                "trainer.val_check_interval=2",
                "data.init_args.num_val=2",
                "data.init_args.batch_size=4",
                "model.init_args.lr_scheduler.init_args.T_max=4",
                "model.init_args.val_sample_steps=2",
            ],
        },  # fmt: skip
        fit_iters=5,
        log=lambda _: None,
    )
    assert set(rep["stages"]) == {
        "1_line_diffusion",
        "2_view_optimisation",
        "3_synthetic_data",
        "4_multiview_diffusion",
    }
    assert rep["stages"]["2_view_optimisation"]["sequences"] == 10
    assert rep["stages"]["3_synthetic_data"]["sequences"] == 10
    assert (tmp_path / "out" / "report.json").is_file()
    T = 27  # longer than the window: two blended windows
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(T, 55, 2, generator=g) * 20 + 22
    conf = torch.ones(T, 55)
    K = intrinsics(64, 64, 40.0)
    for variant in VARIANTS:
        out = mvlift_lift(uv, conf, K, tmp_path / "out", variant, steps=2, fit_iters=3, stage2_iters=2)
        assert out.shape == (T, 55, 3) and torch.isfinite(out).all() and (out[..., 2] > 0).all()
    # fit=False: the triangulated 16 joints, the others at their mid-hip (diagnostics of the raw optimisation)
    raw = mvlift_lift(uv, conf, K, tmp_path / "out", "sds3d", steps=2, stage2_iters=2, fit=False)
    assert raw.shape == (T, 55, 3) and torch.isfinite(raw).all()
    assert torch.allclose(raw[:, 0], raw[:, [1, 2]].mean(1)) and torch.equal(raw[:, 22], raw[:, 0])
    with pytest.raises(ValueError, match="variant"):
        mvlift_lift(uv, conf, K, tmp_path / "out", "nope")
    with pytest.raises(FileNotFoundError, match="train-mvlift"):
        mvlift_lift(uv, conf, K, tmp_path / "missing")


def test_lifting_registry_names_mvlift():
    from dimo.pose.lifting import LIFTERS, get_lifter
    from dimo.pose.mvlift.lift import mvlift_lift

    assert {
        "fixed_depth",
        "smplify",
        "mvlift",
        "mvlift_stage1",
        "mvlift_stage2",
        "mvlift_stage2_noepi",
        "mvlift_sds3d",
        "mvlift_sds3d_flat",
    } <= set(LIFTERS)
    # the registered names reach mvlift_lift with their variant and folder
    seen = []
    import dimo.pose.mvlift.lift as lift_mod

    original = lift_mod.mvlift_lift
    lift_mod.mvlift_lift = lambda uv, conf, K, model_dir, variant, **kw: seen.append(
        (str(model_dir), variant)
    )
    try:
        get_lifter("mvlift", folder="x")(None, None, None)
        get_lifter("mvlift_stage2_noepi")(None, None, None)
        get_lifter("mvlift_sds3d")(None, None, None)
        get_lifter("mvlift_sds3d_flat")(None, None, None)
    finally:
        lift_mod.mvlift_lift = original
    assert seen == [
        ("x", "final"),
        (str(lift_mod.DEFAULT_DIR), "stage2_noepi"),
        (str(lift_mod.DEFAULT_DIR), "sds3d"),
        (str(lift_mod.DEFAULT_DIR), "sds3d_flat"),
    ]
    assert callable(get_lifter("smplify")) and mvlift_lift is original
    with pytest.raises(ValueError, match="unknown lifting method"):
        get_lifter("nope")


def test_committed_mvlift_beats_the_flat_baseline(toy_root):
    """The committed pretrained/toy-mvlift folder on freshly synthesised clips (never trained on: the
    training data is synth seed 2000, 2D only): far better body shape than the fixed-depth plane."""

    from pathlib import Path

    from dimo.eval.pose import PoseMetrics
    from dimo.pose.eval_lifting import iter_sequences
    from dimo.pose.lifting import EVAL_JOINTS, ROOT, fixed_depth_lift
    from dimo.pose.mvlift.lift import mvlift_lift

    folder = Path(__file__).resolve().parents[1] / "pretrained" / "toy-mvlift"
    seqs = [s for s in iter_sequences(toy_root) if s["id"].startswith(("internet", "multiview_0000"))][:4]
    ours, flat = (PoseMetrics(root=list(ROOT), joints=EVAL_JOINTS) for _ in range(2))
    for s in seqs:
        conf = s["valid"].float()
        ours.update(
            mvlift_lift(s["uv"], conf, s["K"], folder, fit_iters=100)[None].double(),
            s["joints_cam"][None].double(),
        )
        flat.update(
            fixed_depth_lift(s["uv"], s["valid"], s["K"])[None].double(), s["joints_cam"][None].double()
        )
    a, b = ours.compute(), flat.compute()
    # measured: PA-MPJPE 64.8 vs 201.1 mm, MPJPE 87.8 vs 216.6 mm
    assert float(a["pa_mpjpe"]) < 0.5 * float(b["pa_mpjpe"]), (a, b)
    assert float(a["mpjpe"]) < 0.7 * float(b["mpjpe"]), (a, b)
