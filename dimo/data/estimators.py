"""SMPL-X parameters as off-the-shelf estimators write them -> the clip format's ``motion.npz``.

Accepted input (``.npz`` read with ``allow_pickle=False``, or ``.json`` holding a dict of arrays or a
list of per-frame dicts; pickles are refused: they can run code). Keys, any of their usual names:

=================  ===============================================  ====================================
clip format        accepted names                                   accepted shapes (T frames)
=================  ===============================================  ====================================
``global_orient``  global_orient, root_orient, global_rot, Rh        (T,3) (T,1,3) (T,3,3) (T,1,3,3)
``body_pose``      body_pose, pose_body                              (T,63) (T,21,3) (T,21,3,3)
left/right hand    left_hand_pose/lhand_pose, right_hand_pose/...    (T,45) (T,15,3) (T,15,3,3) each
``hand_pose``      hand_pose (left 15 then right 15)                 (T,90) (T,30,3)
full pose          poses, fullpose, full_pose (SMPL-X order)         (T,165) (T,55,3)
``jaw_pose``       jaw_pose                                          (T,3) (T,1,3) (T,3,3)
``eye_pose``       leye_pose + reye_pose, or eye_pose                (T,3) each / (T,2,3)
``transl``         transl, trans, Th, cam_t, pred_cam_t              (T,3)
``betas``          betas, shape, shapes                              (10,) (1,10) (T,10): per-frame
                                                                     betas are averaged
frame index        frame_ids, frame_index, frame_idx                 (N,) with (N, ...) arrays: rows
                                                                     are placed at these frames
camera             focal_length/focal (+ princpt/principal_point)    scalar, (2,), (T,), (T,2)
=================  ===============================================  ====================================

Rotation matrices are converted to axis-angle. A frame whose values are not finite (a missed
detection) becomes invalid (``body_valid``/``hand_valid`` false, parameters zero); so do frames not
listed in ``frame_ids``. Hand poses with 6 or 12 numbers per hand are PCA coefficients, which need the
licensed SMPL-X hand basis: they are reported and the hands marked missing.

**Camera-frame fits** (a focal length present; CameraHMR, HMR2/4DHumans, SMPLer-X, ...): the
parameters are in the camera's frame (OpenCV: x right, y down, z forward). The clip's world is then
that camera frame: the view gets ``R = I``, ``t = 0`` and ``K`` from the focal length (principal point:
given, else the image centre), in pixels of the full stored frame. The parameters are kept as they
are, so ``joints`` computed from them are in front of the camera (z > 0).

``joints (T, 55, 3)`` and ``rest_joints`` need the subject's rest skeleton: with ``model_dir`` (a
user-supplied SMPL-X model) they are computed by forward kinematics from ``betas`` and flagged like
the parameters; without it the clip's ``joints3d`` is ``missing``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dimo.safe_io import atomic_path

__all__ = ["ConvertedMotion", "EstimatorError", "convert_estimator_motion", "read_array_file", "save_motion"]


class EstimatorError(ValueError):
    """An estimator file cannot be read or converted (the reason names the file and the key)."""


ALIASES: dict[str, tuple[str, ...]] = {
    "global_orient": ("global_orient", "root_orient", "global_rot", "Rh"),
    "body_pose": ("body_pose", "pose_body"),
    "left_hand_pose": ("left_hand_pose", "lhand_pose", "pose_lhand"),
    "right_hand_pose": ("right_hand_pose", "rhand_pose", "pose_rhand"),
    "hand_pose": ("hand_pose",),
    "full_pose": ("poses", "fullpose", "full_pose"),
    "jaw_pose": ("jaw_pose",),
    "leye_pose": ("leye_pose",),
    "reye_pose": ("reye_pose",),
    "eye_pose": ("eye_pose",),
    "transl": ("transl", "trans", "Th", "cam_t", "pred_cam_t"),
    "betas": ("betas", "shape", "shapes"),
    "frame_ids": ("frame_ids", "frame_index", "frame_idx"),
    "focal": ("focal_length", "focal"),
    "principal": ("princpt", "principal_point", "camera_center"),
}


@dataclass
class ConvertedMotion:
    """The clip-format arrays plus what the importer needs to know."""

    arrays: dict[str, np.ndarray]
    body: str  # label flags for the record
    hands: str
    joints3d: str
    K: np.ndarray | None = None  # (T, 3, 3) or (3, 3) for camera-frame fits
    notes: list[str] = field(default_factory=list)


def read_array_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``.npz`` (no pickles) or ``.json`` (dict of arrays / list of per-frame dicts) -> arrays."""

    path = Path(path)
    if not path.is_file():
        raise EstimatorError(f"{path}: motion file not found")
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle", ".pt", ".pth", ".joblib"):
        raise EstimatorError(
            f"{path}: pickle-based files are not read (loading them can run code); save the arrays "
            "with numpy.savez (.npz) or as JSON"
        )
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if suffix == ".json":
            with path.open("rb") as fh:
                data = json.loads(fh.read().decode("utf-8"))
            if isinstance(data, list) and data and isinstance(data[0], list) and isinstance(data[0][0], dict):
                data = [d[0] for d in data]  # EasyMocap: one list of people per frame
            if isinstance(data, list):  # per-frame dicts -> stacked arrays
                keys = set().union(*(d.keys() for d in data if isinstance(d, dict)))
                return {
                    k: np.stack([np.asarray(d[k], dtype=np.float64).reshape(-1) for d in data])
                    for k in keys
                    if all(isinstance(d, dict) and k in d for d in data) and not isinstance(data[0][k], str)
                }
            if isinstance(data, dict):
                return {k: np.asarray(v, dtype=np.float64) for k, v in data.items() if not isinstance(v, str)}
            raise EstimatorError(f"{path}: JSON must be an object of arrays or a list of per-frame objects")
    except EstimatorError:
        raise
    except Exception as err:  # noqa: BLE001 - zip/json/numpy raise many types for corrupt files
        raise EstimatorError(f"{path}: unreadable motion file ({type(err).__name__}: {err})") from None
    raise EstimatorError(f"{path}: motion files must be .npz or .json, got {suffix or 'no extension'}")


def _get(data: dict[str, np.ndarray], name: str) -> tuple[str, np.ndarray] | None:
    for key in ALIASES[name]:
        if key in data:
            arr = np.asarray(data[key])
            if not np.issubdtype(arr.dtype, np.number):
                raise EstimatorError(f"{key} is not numeric ({arr.dtype})")
            return key, arr.astype(np.float64)
    return None


def _rotmat_to_aa(R: np.ndarray) -> np.ndarray:
    import torch

    from dimo.geometry.rotations import matrix_to_axis_angle

    return matrix_to_axis_angle(torch.from_numpy(R)).numpy()


def _joints_aa(key: str, arr: np.ndarray, n: int, N: int) -> np.ndarray:
    """Rows (N, ...) of ``n`` joint rotations -> axis-angle (N, n, 3)."""

    if arr.shape[0] != N:
        raise EstimatorError(f"{key} has {arr.shape[0]} frames, other arrays {N}")
    tail = arr.shape[1:]
    if tail in ((3 * n,), (n, 3)) or (n == 1 and tail == (3,)):
        return arr.reshape(N, n, 3)
    if tail in ((n, 3, 3), (9 * n,)) or (n == 1 and tail == (3, 3)):
        return _rotmat_to_aa(arr.reshape(N, n, 3, 3))
    if n == 15 and tail in ((6,), (12,), (1, 6), (1, 12)):
        raise _PCAHands(f"{key} has {int(np.prod(tail))} numbers per frame: PCA hand coefficients")
    want = f"({N}, {3 * n}), ({N}, {n}, 3) or ({N}, {n}, 3, 3)"
    raise EstimatorError(f"{key} has shape {arr.shape}; expected {want}")


class _PCAHands(EstimatorError):
    pass


def convert_estimator_motion(
    data: dict[str, np.ndarray],
    num_frames: int,
    size: tuple[int, int] | None = None,
    label: str = "pseudo",
    model_dir: str | os.PathLike | None = None,
    gender: str = "neutral",
) -> ConvertedMotion:
    """Estimator arrays (module docstring) -> clip-format arrays for a video of ``num_frames`` frames.

    ``size = (height, width)`` of the stored video (for the default principal point of camera-frame
    fits). Raises :class:`EstimatorError` with the key and the reason.
    """

    notes: list[str] = []
    T = num_frames
    go = _get(data, "global_orient")
    body = _get(data, "body_pose")
    full = _get(data, "full_pose")
    if body is None and full is None:
        present = ", ".join(sorted(data)) or "none"
        raise EstimatorError(f"no body pose: expected body_pose (T, 63) or poses (T, 165); arrays present: {present}")
    lead = (body or full)[1]
    N = lead.shape[0] if lead.ndim > 1 else 1
    ids_entry = _get(data, "frame_ids")
    if ids_entry is not None:
        ids = ids_entry[1].reshape(-1).astype(np.int64)
        if len(ids) != N:
            raise EstimatorError(f"{ids_entry[0]} has {len(ids)} entries, the pose arrays {N} rows")
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= T:
            raise EstimatorError(f"{ids_entry[0]} has frames outside 0..{T - 1} (the video has {T} frames)")
    else:
        if N != T:
            raise EstimatorError(
                f"the motion has {N} frames, the video {T} (give frame_ids to place a subset of frames)"
            )
        ids = np.arange(T)

    parts: dict[str, np.ndarray] = {}
    if full is not None and body is None:
        key, arr = full
        if arr.shape[1:] not in ((165,), (55, 3)):
            raise EstimatorError(f"{key} has shape {arr.shape}; expected SMPL-X full pose (T, 165) or (T, 55, 3)")
        fp = arr.reshape(N, 55, 3)
        parts = {"global_orient": fp[:, 0], "body_pose": fp[:, 1:22], "jaw_pose": fp[:, 22],
                 "eye_pose": fp[:, 23:25], "hand_pose": fp[:, 25:55]}  # fmt: skip
        if go is not None:  # EasyMocap: Rh is the root rotation, the pose's first joint is zero
            parts["global_orient"] = _joints_aa(go[0], go[1], 1, N)[:, 0]
    else:
        parts["body_pose"] = _joints_aa(body[0], body[1], 21, N)
        parts["global_orient"] = (
            _joints_aa(go[0], go[1], 1, N)[:, 0] if go is not None else np.zeros((N, 3))
        )
        if go is None:
            notes.append("no global_orient: the body is upright in its frame (zeros)")
        hands_valid = np.ones((N, 2), bool)
        try:
            both = _get(data, "hand_pose")
            if both is not None:
                parts["hand_pose"] = _joints_aa(both[0], both[1], 30, N)
            else:
                left, right = _get(data, "left_hand_pose"), _get(data, "right_hand_pose")
                if left is not None or right is not None:
                    hp = np.zeros((N, 30, 3))
                    for side, entry in enumerate((left, right)):
                        if entry is None:
                            hands_valid[:, side] = False
                            notes.append(f"no {('left', 'right')[side]} hand pose: marked invalid")
                        else:
                            hp[:, 15 * side : 15 * side + 15] = _joints_aa(entry[0], entry[1], 15, N)
                    parts["hand_pose"] = hp
        except _PCAHands as err:
            notes.append(f"{err}; hands need full axis-angle (45 per hand): marked missing")
            parts.pop("hand_pose", None)
        if "hand_pose" in parts:
            parts["_hand_valid"] = hands_valid
        jaw = _get(data, "jaw_pose")
        if jaw is not None:
            parts["jaw_pose"] = _joints_aa(jaw[0], jaw[1], 1, N)[:, 0]
        eyes = _get(data, "eye_pose")
        le, re = _get(data, "leye_pose"), _get(data, "reye_pose")
        if eyes is not None:
            parts["eye_pose"] = _joints_aa(eyes[0], eyes[1], 2, N)
        elif le is not None and re is not None:
            parts["eye_pose"] = np.stack(
                [_joints_aa(le[0], le[1], 1, N)[:, 0], _joints_aa(re[0], re[1], 1, N)[:, 0]], axis=1
            )
    tr = _get(data, "transl")
    if tr is not None:
        key, arr = tr
        if arr.shape not in ((N, 3), (N, 1, 3)):
            raise EstimatorError(f"{key} has shape {arr.shape}; expected ({N}, 3)")
        parts["transl"] = arr.reshape(N, 3)

    # place the rows at their frames; non-finite rows (missed detections) become invalid
    out: dict[str, np.ndarray] = {}
    finite = np.ones(N, bool)
    for k, v in parts.items():
        if not k.startswith("_"):
            finite &= np.isfinite(v.reshape(N, -1)).all(axis=1)
    body_valid = np.zeros(T, bool)
    body_valid[ids[finite]] = True
    if (~finite).any():
        notes.append(f"{int((~finite).sum())} frame(s) with non-finite parameters: marked invalid")
    if len(np.unique(ids)) != len(ids):
        raise EstimatorError("frame_ids has repeated frames (one person per clip is expected)")
    if N < T:
        notes.append(f"{T - N} frame(s) without a fit: marked invalid")
    for k, v in parts.items():
        if k.startswith("_"):
            continue
        full_v = np.zeros((T, *v.shape[1:]), np.float64)
        full_v[ids[finite]] = v[finite]
        out[k] = full_v
    with np.errstate(over="ignore"):
        arrays = {k: v.astype(np.float32) for k, v in out.items()}
    for k, v in arrays.items():
        if not np.isfinite(v).all():
            raise EstimatorError(f"{k} has values beyond the float32 range")
    arrays["body_valid"] = body_valid
    hands = "missing"
    if "hand_pose" in arrays:
        hv = np.zeros((T, 2), bool)
        hv[ids[finite]] = parts.get("_hand_valid", np.ones((N, 2), bool))[finite]
        arrays["hand_valid"] = hv
        hands = label
    betas_entry = _get(data, "betas")
    if betas_entry is not None:
        key, b = betas_entry
        if b.ndim == 2 and b.shape[0] > 1:
            b = np.nanmean(b, axis=0)
            notes.append(f"{key} is per frame: averaged over frames")
        b = b.reshape(-1)
        if not np.isfinite(b).all() or b.size == 0 or b.size > 400:
            raise EstimatorError(f"{key} must be 1..400 finite shape coefficients, got shape {betas_entry[1].shape}")
        arrays["betas"] = b.astype(np.float32)

    K = None
    focal = _get(data, "focal")
    if focal is not None:
        K = _intrinsics(focal, _get(data, "principal"), T, ids, finite, size)
        notes.append("camera-frame fit: the view's camera is R = I, t = 0 with K from the focal length")
    joints3d = "missing"
    if model_dir is not None:
        arrays.update(_posed_joints(arrays, model_dir, gender))
        joints3d = label
    return ConvertedMotion(arrays, label, hands, joints3d, K, notes)


def _intrinsics(focal, principal, T, ids, finite, size) -> np.ndarray:
    key, f = focal
    f = f.reshape(-1) if f.ndim <= 1 else f
    N = len(ids)
    if f.size == 1:
        fx = fy = np.full(N, float(f.reshape(-1)[0]))
    elif f.ndim == 1 and f.size == 2 and N != 2:
        fx, fy = np.full(N, f[0]), np.full(N, f[1])
    elif f.shape == (N,):
        fx = fy = f
    elif f.shape == (N, 2):
        fx, fy = f[:, 0], f[:, 1]
    elif f.shape == (N, 1):
        fx = fy = f[:, 0]
    else:
        raise EstimatorError(f"{key} has shape {f.shape}; expected a scalar, (2,), ({N},) or ({N}, 2)")
    if principal is not None:
        pk, p = principal
        p = p.reshape(-1, 2) if p.size % 2 == 0 else None
        if p is None or len(p) not in (1, N):
            raise EstimatorError(f"{pk} has shape {principal[1].shape}; expected (2,) or ({N}, 2)")
        cx, cy = np.broadcast_to(p[:, 0], (N,)), np.broadcast_to(p[:, 1], (N,))
    elif size is not None:
        cx, cy = np.full(N, size[1] / 2.0), np.full(N, size[0] / 2.0)
    else:
        raise EstimatorError("camera-frame fit without a principal point or a video size")
    ok = finite & np.isfinite(fx) & np.isfinite(fy)
    if not ok.any():
        raise EstimatorError(f"{key}: no finite focal length")
    if (fx[ok] <= 0).any() or (fy[ok] <= 0).any():
        raise EstimatorError(f"{key} has zero or negative focal lengths")
    Kn = np.zeros((N, 3, 3))
    Kn[:, 0, 0], Kn[:, 1, 1], Kn[:, 0, 2], Kn[:, 1, 2], Kn[:, 2, 2] = fx, fy, cx, cy, 1.0
    if np.allclose(Kn[ok], Kn[ok][0]):
        return Kn[ok][0]
    K = np.broadcast_to(Kn[ok][0], (T, 3, 3)).copy()  # frames without a fit keep a valid camera
    K[ids[ok]] = Kn[ok]
    return K


def _posed_joints(arrays: dict[str, np.ndarray], model_dir, gender: str) -> dict[str, np.ndarray]:
    import torch

    from dimo.geometry.body_models import load_body_model, model_rest_joints
    from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats

    model = load_body_model(model_dir, "smplx", gender=gender)
    betas = arrays.get("betas")
    b = None
    if betas is not None:
        S = model.shapedirs.shape[-1]
        b = torch.zeros(S)
        n = min(S, len(betas))
        b[:n] = torch.from_numpy(betas[:n])
    with torch.no_grad():
        rest = model_rest_joints(model, b).float()  # (55, 3)
        t = {k: torch.from_numpy(v) for k, v in arrays.items() if not k.endswith("_valid") and k != "betas"}
        rot = pose_to_rotmats(t["global_orient"], t["body_pose"], t.get("hand_pose"), t.get("jaw_pose"), t.get("eye_pose"))
        joints = forward_kinematics(rot, rest, t.get("transl"))
    return {"rest_joints": rest.numpy().astype(np.float32), "joints": joints.numpy().astype(np.float32)}


def save_motion(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Write a clip-format motion file atomically."""

    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    return path
