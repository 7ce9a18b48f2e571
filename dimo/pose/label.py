"""Pseudo 3D motion for clips that have none: detected 2D keypoints lifted by the SMPLify-like fit.

For every clip without a motion file whose first view names a ``keypoints2d`` file, the view's
SMPL-X 2D joints (score >= 0.3) are lifted with :func:`dimo.pose.lifting.smplify_lift` using the view's
intrinsics, or, for an uncalibrated view, a pinhole camera with ``fov_deg`` vertical field of view
centred on the frame (an assumption, recorded in the motion file). The fit lives in that camera's frame
(OpenCV, y down) and is moved to the world with the view's extrinsics; for an uncalibrated view it is
turned by 180 degrees about x into dimo's y-up convention (``docs/contracts.md``), so the body stands
upright, with the camera at the origin looking along -z. The motion file holds the
SMPL-X parameters (hands at rest, flagged missing), ``rest_joints``, the posed ``joints`` (exactly FK of
the parameters) and ``body_valid`` (frames with at least 3 of the 4 hips/shoulders detected); the
manifest marks ``body`` and ``joints3d`` as ``pseudo``.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

__all__ = ["label_dataset", "to_world"]

_FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # rotation by pi about x: camera (y down) -> y up


def to_world(params: dict[str, torch.Tensor], Q: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
    """Camera-frame fit -> world ``X_w = Q X_c + c`` (``Q (T, 3, 3)``, ``c (T, 3)``), parameters kept FK-consistent."""

    from dimo.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    rest0 = params["rest_joints"][0]
    orient = matrix_to_axis_angle(Q @ axis_angle_to_matrix(params["global_orient"]))
    # FK rotates about the rest pelvis p0: Q (FK(R) + t) + c = FK(Q R) + Q t + Q p0 - p0 + c
    transl = ((params["transl"] + rest0)[..., None, :] @ Q.transpose(-1, -2))[..., 0, :] - rest0 + c
    return {**params, "global_orient": orient, "transl": transl}


def label_dataset(root: str | os.PathLike, fov_deg: float = 40.0, iters: int = 300, log=print) -> int:
    """Write pseudo motion for every clip of ``root`` without motion; returns the number labelled."""

    from dimo.data.estimators import save_motion
    from dimo.data.keypoints import load_keypoints2d
    from dimo.data.manifest import MotionRecord, load_manifest, write_manifest
    from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats
    from dimo.pose.joints import wholebody_to_smplx
    from dimo.pose.lifting import smplify_lift

    if not 0 < fov_deg < 180:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    root = Path(root)
    records, problems = load_manifest(root)
    if problems:
        raise ValueError(
            f"{root}: the manifest has {len(problems)} problem record(s) (first: {problems[0]}); fix them first"
        )
    out, done = [], 0
    for rec in records:
        view = rec.views[0]
        if rec.motion is not None or view.keypoints2d is None:
            out.append(rec)
            continue
        T = rec.num_frames
        kp, sc = load_keypoints2d(rec.path(view.keypoints2d), T)
        uv, score, valid = wholebody_to_smplx(kp, sc)
        if view.calibrated:
            K, R, t = (torch.from_numpy(np.ascontiguousarray(a)).float() for a in view.cameras(T))
            Q, c = R.transpose(-1, -2), -(R.transpose(-1, -2) @ t[..., None])[..., 0]  # camera -> world
            camera = "calibrated"
        else:
            if rec.height is None or rec.width is None:
                raise ValueError(
                    f"{rec.id}: an uncalibrated clip needs its height and width to assume a camera"
                )
            f = 0.5 * rec.height / math.tan(math.radians(fov_deg) / 2)
            K = torch.tensor([[f, 0, rec.width / 2], [0, f, rec.height / 2], [0, 0, 1.0]]).expand(T, 3, 3)
            Q, c = _FLIP.expand(T, 3, 3), torch.zeros(T, 3)
            camera = f"assumed fov_deg={fov_deg}"
        _, params = smplify_lift(uv, score * valid, K, iters=iters, return_params=True)
        world = to_world(params, Q, c)
        joints = forward_kinematics(
            pose_to_rotmats(world["global_orient"], world["body_pose"]), world["rest_joints"], world["transl"]
        )
        rel = f"clips/{rec.id}/motion_pseudo.npz"
        save_motion(
            root / rel,
            {
                "global_orient": world["global_orient"].numpy(),
                "body_pose": world["body_pose"].numpy(),
                "hand_pose": np.zeros((T, 30, 3), np.float32),
                "transl": world["transl"].numpy(),
                "rest_joints": world["rest_joints"].numpy(),
                "joints": joints.numpy(),
                "body_valid": (valid[:, [1, 2, 16, 17]].sum(-1) >= 3).numpy(),
            },
        )
        out.append(
            replace(rec, motion=MotionRecord(file=rel, body="pseudo", hands="missing", joints3d="pseudo"))
        )
        done += 1
        log(f"{rec.id}: pseudo motion from {view.keypoints2d} (smplify_lift, camera {camera})")
    write_manifest(root, out)
    return done
