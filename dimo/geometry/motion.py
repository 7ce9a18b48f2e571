"""Reading a motion file (``.npz``) as world joints: the one reader behind ``geometry preview`` and
``generate hvg`` (the training data path reads clips through :func:`dimo.data.manifest.load_motion`).

Accepted contents (``allow_pickle=False``; ``*_valid`` arrays are ignored):

* posed ``joints`` (T, 55, 3) (or one frame (55, 3)), used as they are unless a body model is asked for;
* SMPL-X parameters: ``body_pose`` (T, 21, 3) or (T, 63) and optionally ``global_orient`` (T, 3),
  ``hand_pose`` (T, 30, 3) / (T, 90) or ``left_hand_pose`` + ``right_hand_pose`` (T, 15, 3) / (T, 45),
  ``jaw_pose`` (T, 3), ``transl`` (T, 3); the rest skeleton is the clip's ``rest_joints`` (55, 3),
  the user's body model (``model_dir``, with ``betas``), or the default skeleton.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dimo.geometry import skeleton as sk

__all__ = ["MotionFileError", "read_motion_joints"]


class MotionFileError(ValueError):
    """A motion file is missing, unreadable, or holds no usable motion; the message names the file."""


def _param(data: dict[str, np.ndarray], key: str, num_frames: int, n: int, path: Path) -> torch.Tensor | None:
    """``data[key]`` as (T, n, 3) (or (T, 3) when n == 1); one frame is broadcast over T."""

    if key not in data:
        return None
    x = torch.from_numpy(data[key])
    if x.dim() == 1:
        x = x.expand(num_frames, -1)
    if x.shape[0] != num_frames or x[0].numel() != 3 * n:
        want = f"({num_frames}, {n}, 3) or ({num_frames}, {3 * n})" if n > 1 else f"({num_frames}, 3)"
        raise MotionFileError(f"{path}: {key} has shape {tuple(x.shape)}, expected {want}")
    return x.reshape(num_frames, n, 3) if n > 1 else x.reshape(num_frames, 3)


def read_motion_joints(
    path: str | os.PathLike,
    max_frames: int | None = None,
    model_dir: Path | None = None,
    gender: str = "neutral",
) -> torch.Tensor:
    """World joints (T, 55, 3) of a motion ``.npz`` (first ``max_frames`` frames when given).

    ``model_dir``: an SMPL-X model folder whose rest skeleton (shaped by the file's ``betas``) poses
    the parameters (then parameters are preferred over stored ``joints``).
    """

    path = Path(path)
    if not path.is_file():
        raise MotionFileError(f"motion file not found: {path} (expected a motion .npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files if not k.endswith("_valid")}
    except Exception as err:  # noqa: BLE001 - zip/pickle errors of a corrupt archive
        raise MotionFileError(f"cannot read motion file {path}: {err} (expected a motion .npz)") from err
    if "joints" in data and (model_dir is None or "body_pose" not in data):
        joints = data["joints"]
        joints = joints[None] if joints.ndim == 2 else joints
        if joints.ndim != 3 or joints.shape[1:] != (sk.NUM_JOINTS, 3):
            raise MotionFileError(
                f"{path}: joints has shape {joints.shape}, expected (T, {sk.NUM_JOINTS}, 3)"
            )
        out = torch.from_numpy(joints)
    elif "body_pose" in data:
        body = data["body_pose"]
        num_frames = 1 if body.ndim == 1 else body.shape[0]
        hand = _param(data, "hand_pose", num_frames, 30, path)
        if hand is None and ("left_hand_pose" in data or "right_hand_pose" in data):
            zeros = torch.zeros(num_frames, 15, 3)
            left = _param(data, "left_hand_pose", num_frames, 15, path)
            right = _param(data, "right_hand_pose", num_frames, 15, path)
            hand = torch.cat([zeros if left is None else left, zeros if right is None else right], dim=1)
        orient = _param(data, "global_orient", num_frames, 1, path)
        rotmats = sk.pose_to_rotmats(
            torch.zeros(num_frames, 3) if orient is None else orient,
            _param(data, "body_pose", num_frames, 21, path),
            hand,
            _param(data, "jaw_pose", num_frames, 1, path),
        )
        if model_dir is not None:
            from dimo.geometry.body_models import load_body_model, model_rest_joints

            model = load_body_model(model_dir, "smplx", gender=gender)
            betas = torch.from_numpy(data["betas"]) if "betas" in data else None
            if betas is not None:
                betas = betas[..., : model.shapedirs.shape[-1]]
            rest = model_rest_joints(model, betas)
        elif "rest_joints" in data:
            rest = torch.from_numpy(data["rest_joints"])
        else:
            rest = sk.rest_joints()
        out = sk.forward_kinematics(rotmats, rest, _param(data, "transl", num_frames, 1, path))
    else:
        raise MotionFileError(
            f"{path} has neither 'joints' nor 'body_pose' (arrays {sorted(data)}); expected SMPL-X "
            "parameters 'global_orient' (T, 3) and 'body_pose' (T, 63) [+ 'left_hand_pose', "
            "'right_hand_pose' or 'hand_pose', 'jaw_pose', 'transl', 'betas'] or posed 'joints' (T, 55, 3)"
        )
    if not bool(torch.isfinite(out).all()):
        raise MotionFileError(f"{path}: motion has non-finite values")
    return out[:max_frames] if max_frames else out  # (T, 55, 3)
