"""Single-view 2D -> 3D lifting baselines on dimo's skeleton, in the camera frame of the input view.

Both take SMPL-X 2D joints ``uv (T, 55, 2)`` (pixels), their validity/confidence and the view's
intrinsics ``K (T, 3, 3)``, and return camera-space joints ``(T, 55, 3)`` in metres (OpenCV camera:
x right, y down, z forward). No 3D label is used.

* :func:`fixed_depth_lift` puts every joint on one fronto-parallel plane: back-projection of the 2D
  joints at a single depth per clip, chosen so that the clip's median 2D torso-plus-leg length
  matches the neutral skeleton's (the usual "constant depth" baseline; the body is flat).
* :func:`smplify_lift` is SMPLify-like per-frame optimisation of the neutral toy skeleton (global
  orientation, 21 body joint rotations, translation; FK of :mod:`dimo.geometry.skeleton`) to the 2D
  joints: confidence-weighted Geman-McClure reprojection error + a Gaussian pose prior (fitted to toy
  motions of another seed, :func:`toy_pose_prior`, standing in for SMPLify's mocap GMM) + joint limits on the hinges (knees and elbows bend about one axis, one way),
  which resolves most of the forearm/shin depth flips that fit the 2D equally well. Each frame starts from two
  global orientations (facing the camera / facing away) and keeps the better fit, as SMPLify tries
  two orientations. Frames are optimised independently (no temporal term), batched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch

from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats, rest_joints

__all__ = [
    "EVAL_JOINTS",
    "LIFTERS",
    "ROOT",
    "Lifter",
    "fixed_depth_lift",
    "get_lifter",
    "lifter_names",
    "register_lifter",
    "smplify_lift",
    "toy_pose_prior",
]

# joints scored by the lifting evaluation (all have a COCO-WholeBody 2D keypoint): hips, knees, ankles,
# feet, shoulders, elbows, wrists; the root is the mid-hip (the pelvis has no 2D keypoint)
EVAL_JOINTS: tuple[int, ...] = (1, 2, 4, 5, 7, 8, 10, 11, 16, 17, 18, 19, 20, 21)
ROOT: tuple[int, int] = (1, 2)
_CHAIN = ((1, 4), (4, 7), (2, 5), (5, 8), (16, 18), (18, 20), (17, 19), (19, 21), (16, 1), (17, 2))


def _backproject(uv: torch.Tensor, K: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """``uv (..., J, 2)``, ``K (..., 3, 3)``, ``depth (..., J)`` -> camera points ``(..., J, 3)``."""

    ones = torch.ones_like(uv[..., :1])
    rays = torch.cat([uv, ones], -1) @ torch.linalg.inv(K).transpose(-1, -2)  # (..., J, 3), z = 1
    return rays * depth[..., None]


def _chain_length(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean length of the valid limb segments of :data:`_CHAIN` per frame ``(T,)`` (NaN where none)."""

    a, b = torch.tensor([c[0] for c in _CHAIN]), torch.tensor([c[1] for c in _CHAIN])
    seg = (x[..., a, :] - x[..., b, :]).norm(dim=-1)  # (T, S)
    ok = (valid[..., a] & valid[..., b]).to(x.dtype)
    return (seg * ok).sum(-1) / ok.sum(-1)


# hinge joints of the toy skeleton (body_pose index, axis, sign of the allowed bend): knees bend about
# +x, the left elbow about -y, the right elbow about +y (the toy motion generator's conventions)
_HINGES = ((3, 0, 1.0), (4, 0, 1.0), (17, 1, -1.0), (18, 1, 1.0))


def _hinge_penalty(body: torch.Tensor) -> torch.Tensor:
    """Joint-limit prior ``(...)`` for ``body (..., 21, 3)``: off-axis rotation and bending backwards."""

    out = body.new_zeros(body.shape[:-2])
    for j, axis, sign in _HINGES:
        off = [a for a in range(3) if a != axis]
        out = out + body[..., j, off].pow(2).sum(-1) + (sign * body[..., j, axis]).neg().clamp_min(0).pow(2)
    return out


def toy_pose_prior(seed: int = 1, clips: int = 200, frames: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian pose prior ``(mean, std)`` of the body pose ``(21, 3)`` each, fitted to toy motions.

    SMPLify's prior is a Gaussian mixture fitted to mocap; the toy world's "mocap" is its motion
    generator, sampled here with its own seed (1 by default; the held-out clips use seed 0). A single
    Gaussian with diagonal covariance; the std is floored at 0.05 rad.
    """

    import numpy as np

    from dimo.data.synth import make_motion

    rng = np.random.default_rng([seed, 7])
    poses = np.concatenate([make_motion(rng, frames, 12.0)["body_pose"] for _ in range(clips)])  # (N, 21, 3)
    mean = torch.from_numpy(poses.mean(0)).float()
    std = torch.from_numpy(poses.std(0)).float().clamp_min(0.05)
    return mean, std


def fixed_depth_lift(uv: torch.Tensor, valid: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """One depth for the whole clip (module docstring) -> ``(T, 55, 3)`` camera-space joints."""

    uv, K = uv.double(), K.double()
    rest = rest_joints().double()
    len3d = _chain_length(rest[None], torch.ones(1, 55, dtype=torch.bool))[0]
    len2d = _chain_length(uv, valid)
    focal = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
    ok = torch.isfinite(len2d) & (len2d > 0)
    if not ok.any():
        raise ValueError("no frame has a valid limb in 2D: cannot set a depth")
    depth = (focal[ok] * len3d / len2d[ok]).median()
    out = _backproject(uv, K, depth.expand(uv.shape[:-1]))
    # joints without a 2D keypoint: the pelvis (and every other one) at the mid-hip, on the plane
    mid = out[:, list(ROOT)].mean(1, keepdim=True)
    return torch.where(valid[..., None], out, mid).float()


def smplify_lift(
    uv: torch.Tensor,
    conf: torch.Tensor,
    K: torch.Tensor,
    iters: int = 300,
    lr: float = 0.03,
    prior_weight: float = 2e-3,
    sigma_px: float = 10.0,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-frame skeleton fit (module docstring): ``conf (T, 55)`` weights in [0, 1] -> ``(T, 55, 3)``.

    With ``return_params`` also the fitted ``global_orient (T, 3)``, ``body_pose (T, 21, 3)``,
    ``transl (T, 3)`` (camera frame) and the ``rest_joints (55, 3)`` they pose.
    """

    T = uv.shape[0]
    uv, conf, K = uv.float(), conf.float(), K.float()
    rest = rest_joints()
    valid = conf > 0
    # initial depth as in fixed_depth_lift, per frame; x/y from the mid-hip ray
    len3d = _chain_length(rest[None].double(), torch.ones(1, 55, dtype=torch.bool))[0].float()
    len2d = _chain_length(uv.double(), valid).float()
    focal = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
    depth = torch.where(
        torch.isfinite(len2d) & (len2d > 0),
        focal * len3d / len2d.clamp_min(1e-3),
        torch.full_like(focal, 3.0),
    )
    hip_uv = uv[:, list(ROOT)].mean(1)  # (T, 2)
    hip = _backproject(hip_uv[:, None], K, depth[:, None])[:, 0]  # (T, 3)
    # two starts per frame: facing the camera (toy subject faces +z; camera y is down: rotate pi about x)
    # and the same turned by pi about the camera's vertical
    flip = torch.tensor([torch.pi, 0.0, 0.0])
    faces = torch.stack([torch.tensor([0.0, torch.pi, 0.0]), torch.zeros(3)])  # about y, before the flip
    from dimo.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    starts = matrix_to_axis_angle(axis_angle_to_matrix(flip) @ axis_angle_to_matrix(faces))  # (2, 3)
    orient = starts[:, None].expand(2, T, 3).clone().requires_grad_(True)  # (2, T, 3)
    mean, std = toy_pose_prior() if prior is None else prior
    body = mean.expand(2, T, 21, 3).clone().requires_grad_(True)  # start from the prior's mean pose
    pelvis_rest = rest[0]
    transl = (hip[None].expand(2, T, 3) - pelvis_rest).clone().requires_grad_(True)
    opt = torch.optim.Adam([orient, body, transl], lr=lr)
    w = conf[None].expand(2, T, 55)

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        j = forward_kinematics(pose_to_rotmats(orient, body), rest, transl)  # (2, T, 55, 3)
        z = j[..., 2:3].clamp_min(0.1)
        proj = (j / z) @ K[None].transpose(-1, -2)  # (2, T, 55, 3)
        d2 = ((proj[..., :2] - uv[None]) ** 2).sum(-1)  # (2, T, 55)
        gm = sigma_px**2 * d2 / (d2 + sigma_px**2)  # Geman-McClure, px^2
        data = (w * gm).sum(-1) / w.sum(-1).clamp_min(1e-6)  # (2, T)
        nll = ((body - mean) / std).pow(2).sum((-1, -2))  # (2, T) Gaussian prior
        per = data + sigma_px**2 * prior_weight * (nll + 10 * _hinge_penalty(body))
        return per, data

    for _ in range(iters):
        per, _ = losses()
        opt.zero_grad(set_to_none=True)
        per.sum().backward()
        opt.step()
    with torch.no_grad():
        per, _ = losses()
        best = per.argmin(0)  # (T,) which start fits better
        j = forward_kinematics(pose_to_rotmats(orient, body), rest, transl)  # (2, T, 55, 3)
        pick = (best, torch.arange(T))
        if return_params:
            params = {
                "global_orient": orient[pick],
                "body_pose": body[pick],
                "transl": transl[pick],
                "rest_joints": rest,
            }
            return j[pick], params
        return j[pick]


# ---- lifting methods by name ----------------------------------------------------------------------

Lifter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(uv (T, 55, 2) pixels, conf (T, 55) in [0, 1], K (T, 3, 3)) -> camera-space joints (T, 55, 3)``, metres."""

# name -> "module:factory"; ``factory(**options)`` returns a :data:`Lifter`. Imported only when asked for,
# so a method's heavy or optional code (a trained network) costs nothing until used. Another method
# adds one line here (e.g. ``"mvlift": "dimo.pose.mvlift:load_lifter"``) or calls :func:`register_lifter`.
LIFTERS: dict[str, str | Callable[..., Lifter]] = {
    "fixed_depth": "dimo.pose.lifting:_fixed_depth_factory",
    "smplify": "dimo.pose.lifting:_smplify_factory",
    "free3d": "dimo.pose.lifting:_free3d_factory",
    # MVLift (pretrained/toy-mvlift, `make train-mvlift`) and its ablation variants (docs/pose.md "MVLift"):
    # the line-conditioned model alone, plus the stage-2 optimisation, and that without the epipolar loss;
    # the paper's "SDS in 3D" arm (3D joints optimised by SDS on their projections, no epipolar loss)
    "mvlift": "dimo.pose.lifting:_mvlift_factory",
    "mvlift_stage1": "dimo.pose.lifting:_mvlift_stage1_factory",
    "mvlift_stage2": "dimo.pose.lifting:_mvlift_stage2_factory",
    "mvlift_stage2_noepi": "dimo.pose.lifting:_mvlift_stage2_noepi_factory",
    "mvlift_sds3d": "dimo.pose.lifting:_mvlift_sds3d_factory",
    "mvlift_sds3d_flat": "dimo.pose.lifting:_mvlift_sds3d_flat_factory",
}


def register_lifter(name: str, factory: str | Callable[..., Lifter], overwrite: bool = False) -> None:
    """Add a lifting method: ``factory`` is a callable or a ``"module:function"`` path to one."""

    if name in LIFTERS and not overwrite:
        raise ValueError(f"lifting method {name!r} is already registered")
    LIFTERS[name] = factory


def lifter_names() -> tuple[str, ...]:
    return tuple(LIFTERS)


def get_lifter(name: str, **options) -> Lifter:
    """The lifting method ``name`` built with ``options`` (e.g. ``folder=`` for trained ones)."""

    if name not in LIFTERS:
        raise ValueError(f"unknown lifting method {name!r}; available: {', '.join(LIFTERS)}")
    factory = LIFTERS[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"lifting method {name!r}: cannot load {LIFTERS[name]} ({err})") from None
    return factory(**options)


def _fixed_depth_factory() -> Lifter:
    return lambda uv, conf, K: fixed_depth_lift(uv, conf > 0, K)


def _smplify_factory(iters: int = 300) -> Lifter:
    prior = toy_pose_prior()
    return lambda uv, conf, K: smplify_lift(uv, conf, K, iters=iters, prior=prior)


DEFAULT_FREE3D = Path(__file__).resolve().parents[2] / "pretrained" / "toy-free3d"


def _free3d_factory(folder: str | Path | None = None) -> Lifter:
    from dimo.pose.free3d import Free3DLifter

    return Free3DLifter.from_pretrained(DEFAULT_FREE3D if folder is None else folder)


def _mvlift_factory(folder: str | Path | None = None, variant: str = "final", **options) -> Lifter:
    from dimo.pose.mvlift.lift import DEFAULT_DIR, mvlift_lift

    model_dir = DEFAULT_DIR if folder is None else folder
    return lambda uv, conf, K: mvlift_lift(uv, conf, K, model_dir=model_dir, variant=variant, **options)


def _mvlift_stage1_factory(folder: str | Path | None = None, **options) -> Lifter:
    return _mvlift_factory(folder, "stage1", **options)


def _mvlift_stage2_factory(folder: str | Path | None = None, **options) -> Lifter:
    return _mvlift_factory(folder, "stage2", **options)


def _mvlift_stage2_noepi_factory(folder: str | Path | None = None, **options) -> Lifter:
    return _mvlift_factory(folder, "stage2_noepi", **options)


def _mvlift_sds3d_factory(folder: str | Path | None = None, **options) -> Lifter:
    return _mvlift_factory(folder, "sds3d", **options)


def _mvlift_sds3d_flat_factory(folder: str | Path | None = None, **options) -> Lifter:
    return _mvlift_factory(folder, "sds3d_flat", **options)
