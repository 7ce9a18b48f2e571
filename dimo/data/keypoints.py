"""2D keypoints per view: dimo's one format, and readers for what detectors write.

**The format** (``docs/data.md``): one ``.npz`` per view, named by the view's ``keypoints2d`` field,
holding ``keypoints (T, 133, 2)`` float32 pixel coordinates ``(x, y)`` in the stored (upright) video
and ``scores (T, 133)`` float32 in [0, 1] (0 = not detected), in the **COCO-WholeBody** joint order
(:data:`COCO_WHOLEBODY`: 17 body, 6 feet, 68 face, 21 left hand, 21 right hand) and a scalar string
``joint_set = "coco_wholebody_133"``. ``T`` is the clip's ``num_frames``.

**Readers** (:func:`read_keypoints`, ``fmt`` or guessed from the content):

* ``coco_wholebody``: a COCO-WholeBody annotation JSON (``images`` + ``annotations`` with
  ``keypoints`` 17x3, ``foot_kpts`` 6x3, ``face_kpts`` 68x3, ``lefthand_kpts``/``righthand_kpts``
  21x3); frame ``i`` is the ``i``-th image by ``id`` (or the image's ``frame_id``).
* ``dwpose``: DWPose / MMPose whole-body results: a JSON list with one entry per frame, each
  ``{"frame_id": i, "instances": [{"keypoints": [[x, y]] x 133, "keypoint_scores": [133]}]}``
  (the MMPose ``pred_instances`` dump; a bare per-frame list of instances also works).
* ``openpose``: OpenPose ``--write_json`` output: a folder of per-frame ``*_keypoints.json``
  (sorted by name) or one JSON list of them; ``pose_keypoints_2d`` BODY_25 or COCO-18, hands 21,
  face 70, mapped to COCO-WholeBody (neck/mid-hip and the two pupils have no COCO slot and are dropped).

Several people in a frame: the one with the highest mean body score is kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dimo.safe_io import atomic_path

__all__ = [
    "COCO_WHOLEBODY",
    "JOINT_SET",
    "KeypointError",
    "load_keypoints2d",
    "read_keypoints",
    "save_keypoints2d",
]

JOINT_SET = "coco_wholebody_133"
NUM_KP = 133
BODY, FEET, FACE, LHAND, RHAND = slice(0, 17), slice(17, 23), slice(23, 91), slice(91, 112), slice(112, 133)
COCO_WHOLEBODY = {"body": BODY, "feet": FEET, "face": FACE, "left_hand": LHAND, "right_hand": RHAND}
# bones drawn by the preview (COCO body + feet; hands as 5 finger chains from the wrist)
SKELETON = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
            (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (15, 17), (15, 18), (15, 19),
            (16, 20), (16, 21), (16, 22)]  # fmt: skip
for _base in (91, 112):
    for _f in range(5):
        SKELETON += [(_base, _base + 1 + 4 * _f)] + [(_base + 1 + 4 * _f + k, _base + 2 + 4 * _f + k) for k in range(3)]

_BODY25_TO_COCO = [0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11]
_BODY25_FEET = [19, 20, 21, 22, 23, 24]
_BODY18_TO_COCO = [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]


class KeypointError(ValueError):
    """A keypoint file is missing, unreadable or not in the layout it claims."""


def _triples(values: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values if values is not None else [], dtype=np.float64).reshape(-1)
    if arr.size == 0:
        return np.zeros((n, 3))
    if arr.size != 3 * n:
        raise KeypointError(f"{what}: expected {n} x (x, y, score) = {3 * n} numbers, got {arr.size}")
    return arr.reshape(n, 3)


def _empty(T: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((T, NUM_KP, 2), np.float32), np.zeros((T, NUM_KP), np.float32)


def _put(kp: np.ndarray, sc: np.ndarray, t: int, people: list[np.ndarray]) -> None:
    """Keep the person (133, 3) with the highest mean body score in frame ``t``."""

    if not people or not 0 <= t < len(kp):
        return
    best = max(people, key=lambda p: float(np.mean(p[BODY, 2])))
    kp[t] = best[:, :2]
    sc[t] = np.clip(best[:, 2], 0.0, 1.0)


def _coco_wholebody(data: dict, T: int) -> tuple[np.ndarray, np.ndarray]:
    images = sorted(data.get("images", []), key=lambda im: im.get("id", 0))
    frame_of = {im["id"]: int(im.get("frame_id", i)) for i, im in enumerate(images) if "id" in im}
    per_frame: dict[int, list[np.ndarray]] = {}
    for i, ann in enumerate(data["annotations"]):
        what = f"annotations[{i}]"
        person = np.zeros((NUM_KP, 3))
        person[BODY] = _triples(ann.get("keypoints"), 17, f"{what}.keypoints")
        person[FEET] = _triples(ann.get("foot_kpts"), 6, f"{what}.foot_kpts")
        person[FACE] = _triples(ann.get("face_kpts"), 68, f"{what}.face_kpts")
        person[LHAND] = _triples(ann.get("lefthand_kpts"), 21, f"{what}.lefthand_kpts")
        person[RHAND] = _triples(ann.get("righthand_kpts"), 21, f"{what}.righthand_kpts")
        # COCO visibility flags (0 = not labelled, 1/2 = labelled) or detector scores in [0, 1]
        person[:, 2] = np.where(person[:, 2] > 1.0, 1.0, person[:, 2])
        frame = frame_of.get(ann.get("image_id"), ann.get("image_id", 0))
        per_frame.setdefault(int(frame), []).append(person)
    kp, sc = _empty(T)
    for t, people in per_frame.items():
        _put(kp, sc, t, people)
    return kp, sc


def _dwpose(data: list, T: int) -> tuple[np.ndarray, np.ndarray]:
    kp, sc = _empty(T)
    for i, entry in enumerate(data):
        instances = entry.get("instances", []) if isinstance(entry, dict) else entry
        t = int(entry.get("frame_id", i)) if isinstance(entry, dict) else i
        people = []
        for j, inst in enumerate(instances):
            xy = np.asarray(inst["keypoints"], dtype=np.float64).reshape(-1, 2)
            s = np.asarray(inst.get("keypoint_scores", np.ones(len(xy))), dtype=np.float64).reshape(-1)
            if xy.shape != (NUM_KP, 2) or s.shape != (NUM_KP,):
                raise KeypointError(
                    f"frame {t} instance {j}: expected 133 COCO-WholeBody keypoints and scores, "
                    f"got {xy.shape} and {s.shape}"
                )
            people.append(np.concatenate([xy, s[:, None]], axis=1))
        _put(kp, sc, t, people)
    return kp, sc


def _openpose_people(frame: dict, where: str) -> list[np.ndarray]:
    people = []
    for j, p in enumerate(frame.get("people", [])):
        pose = np.asarray(p.get("pose_keypoints_2d", []), dtype=np.float64).reshape(-1)
        person = np.zeros((NUM_KP, 3))
        if pose.size == 75:
            body = pose.reshape(25, 3)
            person[BODY] = body[_BODY25_TO_COCO]
            person[FEET] = body[_BODY25_FEET]
        elif pose.size == 54:
            person[BODY] = pose.reshape(18, 3)[_BODY18_TO_COCO]
        elif pose.size:
            raise KeypointError(f"{where} person {j}: pose_keypoints_2d has {pose.size} numbers (BODY_25: 75, COCO-18: 54)")
        face = np.asarray(p.get("face_keypoints_2d", []), dtype=np.float64).reshape(-1)
        if face.size:
            if face.size != 210:
                raise KeypointError(f"{where} person {j}: face_keypoints_2d must have 70 x 3 numbers")
            person[FACE] = face.reshape(70, 3)[:68]
        person[LHAND] = _triples(p.get("hand_left_keypoints_2d"), 21, f"{where} person {j} hand_left")
        person[RHAND] = _triples(p.get("hand_right_keypoints_2d"), 21, f"{where} person {j} hand_right")
        people.append(person)
    return people


def _load_json(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise KeypointError(f"{path}: unreadable JSON ({err})") from None


def read_keypoints(path: str | os.PathLike, num_frames: int, fmt: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Detector output at ``path`` -> ``keypoints (T, 133, 2)``, ``scores (T, 133)`` (module docstring).

    Frames the file does not cover get score 0. Raises :class:`KeypointError` naming the file.
    """

    path = Path(path)
    if not path.exists():
        raise KeypointError(f"{path}: keypoint file not found")
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise KeypointError(f"{path}: no OpenPose *_keypoints.json files")
        data: Any = [_load_json(f) for f in files]
        fmt = "openpose" if fmt == "auto" else fmt
    else:
        data = _load_json(path)
    if fmt == "auto":
        if isinstance(data, dict) and "annotations" in data:
            fmt = "coco_wholebody"
        elif isinstance(data, list) and data and isinstance(data[0], dict) and "people" in data[0]:
            fmt = "openpose"
        elif isinstance(data, dict) and "people" in data:
            fmt, data = "openpose", [data]
        elif isinstance(data, list):
            fmt = "dwpose"
        else:
            raise KeypointError(f"{path}: not a COCO-WholeBody, DWPose/MMPose or OpenPose keypoint file")
    try:
        if fmt == "coco_wholebody":
            kp, sc = _coco_wholebody(data, num_frames)
        elif fmt == "dwpose":
            kp, sc = _dwpose(data, num_frames)
        elif fmt == "openpose":
            kp, sc = _empty(num_frames)
            for t, frame in enumerate(data if isinstance(data, list) else [data]):
                _put(kp, sc, t, _openpose_people(frame, f"frame {t}"))
        else:
            raise KeypointError(f"unknown keypoint format {fmt!r} (coco_wholebody, dwpose, openpose)")
    except KeypointError as err:
        raise KeypointError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise KeypointError(f"{path}: not valid {fmt} keypoints ({type(err).__name__}: {err})") from None
    bad = ~np.isfinite(kp).all(-1) | ~np.isfinite(sc)
    kp[bad], sc[bad] = 0.0, 0.0
    return kp, sc


def save_keypoints2d(path: str | os.PathLike, keypoints: np.ndarray, scores: np.ndarray) -> Path:
    """Write dimo's keypoint file atomically."""

    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            keypoints=np.asarray(keypoints, np.float32),
            scores=np.asarray(scores, np.float32),
            joint_set=np.array(JOINT_SET),
        )
    return path


def load_keypoints2d(path: str | os.PathLike, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and check dimo's keypoint file -> ``keypoints (T, 133, 2)``, ``scores (T, 133)``."""

    path = Path(path)
    if not path.is_file():
        raise KeypointError(f"{path}: keypoint file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as err:  # noqa: BLE001 - zipfile/numpy raise many types for corrupt files
        raise KeypointError(f"{path}: unreadable keypoint file ({err})") from None
    if str(data.get("joint_set", "")) != JOINT_SET:
        raise KeypointError(f"{path}: joint_set must be {JOINT_SET!r}, got {str(data.get('joint_set'))!r}")
    kp, sc = data.get("keypoints"), data.get("scores")
    if kp is None or sc is None or kp.shape != (num_frames, NUM_KP, 2) or sc.shape != (num_frames, NUM_KP):
        raise KeypointError(
            f"{path}: expected keypoints ({num_frames}, 133, 2) and scores ({num_frames}, 133), got "
            f"{None if kp is None else kp.shape} and {None if sc is None else sc.shape}"
        )
    if not (np.isfinite(kp).all() and np.isfinite(sc).all()) or sc.min() < 0 or sc.max() > 1:
        raise KeypointError(f"{path}: non-finite keypoints or scores outside [0, 1]")
    return kp.astype(np.float32), sc.astype(np.float32)
