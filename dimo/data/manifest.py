"""The on-disk clip format: a ``manifest.jsonl`` (one JSON record per clip) plus the files it names.

One format for real and synthetic data. A dataset root looks like::

    ROOT/manifest.jsonl
    ROOT/clips/ue5_0003/view_00.mp4   (H.264, uint8 RGB)
    ROOT/clips/ue5_0003/view_01.mp4
    ROOT/clips/ue5_0003/motion.npz

A record (one line of ``manifest.jsonl``, shown indented; full example in ``docs/data.md``)::

    {"id": "ue5_0003", "source": "ue5", "fps": 24.0, "num_frames": 20, "height": 64, "width": 64,
     "caption": "a person in a red top",                       # optional
     "views": [{"name": "orbit", "video": "clips/ue5_0003/view_00.mp4",
                "camera_prompt": "Front view. The camera orbits to the left.",
                "K": [[3x3]] or [T x [3x3]] or null,           # pixels of the stored video
                "R": [[3x3]] or [T x [3x3]] or null,           # world-to-camera (OpenCV)
                "t": [3] or [T x [3]] or null,
                "keypoints2d": "clips/ue5_0003/keypoints2d_00.npz"}, ...],   # optional
     "motion": {"file": "clips/ue5_0003/motion.npz",
                "body": "gt", "hands": "gt", "joints3d": "gt"}}  # each "gt" | "pseudo" | "missing"

The motion file (``.npz``) holds per-frame SMPL-X style parameters in axis-angle, any subset of:
``global_orient (T, 3)``, ``body_pose (T, 21, 3)``, ``hand_pose (T, 30, 3)`` (left 15 then right 15),
``jaw_pose (T, 3)``, ``eye_pose (T, 2, 3)``, ``transl (T, 3)``, ``betas (B,)``, ``rest_joints (55, 3)`` (the subject's rest skeleton, for FK),
``joints (T, 55, 3)`` (world joints, metres), and optional per-frame masks ``body_valid (T,)``,
``hand_valid (T, 2)``. A part whose label is ``"missing"`` need not be in the file.

Parsing is strict and cheap (no file is opened): :func:`parse_record` raises :class:`RecordError` with
the reason, :func:`load_manifest` collects good records and ``(id, reason)`` problems side by side.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dimo.safe_io import atomic_write_text

__all__ = [
    "LABEL_KINDS",
    "MANIFEST_NAME",
    "SOURCES",
    "ClipRecord",
    "MotionError",
    "MotionRecord",
    "Problem",
    "RecordError",
    "ViewRecord",
    "check_intrinsics",
    "check_rotation",
    "load_manifest",
    "load_motion",
    "parse_record",
    "write_manifest",
]

MANIFEST_NAME = "manifest.jsonl"
SOURCES = ("internet", "ue5", "multiview")
LABEL_KINDS = ("gt", "pseudo", "missing")

MOTION_SHAPES: dict[str, tuple[int, ...]] = {
    # key -> per-frame shape (the leading T is implied)
    "global_orient": (3,),
    "body_pose": (21, 3),
    "hand_pose": (30, 3),
    "jaw_pose": (3,),
    "eye_pose": (2, 3),
    "transl": (3,),
    "joints": (55, 3),
    "body_valid": (),
    "hand_valid": (2,),
}


class RecordError(ValueError):
    """A manifest record is malformed (missing key, wrong type or shape, unknown source...)."""


class MotionError(ValueError):
    """A motion file is missing, unreadable or has arrays of the wrong shape."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the clip (or ``line N``), what part, and why."""

    clip_id: str
    part: str
    reason: str


@dataclass(frozen=True)
class ViewRecord:
    video: str  # path relative to the dataset root (or absolute)
    camera_prompt: str
    name: str = ""
    K: list | None = None  # (3, 3) static or (T, 3, 3)
    R: list | None = None  # (3, 3) static or (T, 3, 3), world-to-camera
    t: list | None = None  # (3,) static or (T, 3)
    keypoints2d: str | None = None  # optional 2D keypoint file (dimo.data.keypoints format)

    @property
    def calibrated(self) -> bool:
        return self.K is not None and self.R is not None and self.t is not None

    def cameras(self, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-frame ``K (T, 3, 3)``, ``R (T, 3, 3)``, ``t (T, 3)`` as float64 (static ones broadcast)."""

        if not self.calibrated:
            raise RecordError(f"view {self.name or self.video!r} has no camera calibration")
        K = np.asarray(self.K, dtype=np.float64)
        R = np.asarray(self.R, dtype=np.float64)
        t = np.asarray(self.t, dtype=np.float64)
        K = np.broadcast_to(K, (num_frames, 3, 3)) if K.ndim == 2 else K
        R = np.broadcast_to(R, (num_frames, 3, 3)) if R.ndim == 2 else R
        t = np.broadcast_to(t, (num_frames, 3)) if t.ndim == 1 else t
        return K, R, t


@dataclass(frozen=True)
class MotionRecord:
    file: str
    body: str = "gt"
    hands: str = "gt"
    joints3d: str = "gt"


@dataclass(frozen=True)
class ClipRecord:
    id: str
    source: str
    fps: float
    num_frames: int
    views: tuple[ViewRecord, ...]
    height: int | None = None
    width: int | None = None
    motion: MotionRecord | None = None
    caption: str | None = None
    root: Path = field(default=Path("."), compare=False)  # where relative paths resolve

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("root")
        d["views"] = [{k: v for k, v in view.items() if v is not None} for view in d["views"]]
        return {k: v for k, v in d.items() if v is not None}


MAX_FRAMES = 10_000_000  # per clip; anything larger is a corrupt record, not a video
MAX_FPS = 10_000.0


def _check_matrix(value: Any, shape: tuple[int, ...], num_frames: int, what: str) -> list:
    if not isinstance(value, list):
        raise RecordError(f"{what} must be a (nested) list of numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as err:  # ragged, strings, dicts, booleans mixed in
        raise RecordError(f"{what} must be a regular array of numbers ({err})") from None
    if arr.shape != shape and arr.shape != (num_frames, *shape):
        raise RecordError(f"{what} must have shape {shape} or {(num_frames, *shape)}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise RecordError(f"{what} has non-finite values")
    return arr.tolist()


def check_intrinsics(K: list, what: str) -> None:
    k = np.asarray(K, dtype=np.float64).reshape(-1, 3, 3)
    if not ((k[:, 0, 0] > 0).all() and (k[:, 1, 1] > 0).all()):
        raise RecordError(f"{what}: focal lengths K[0][0] and K[1][1] must be > 0")
    if not np.allclose(k[:, 2], [0.0, 0.0, 1.0], atol=1e-6):
        raise RecordError(f"{what}: last row must be [0, 0, 1], got {k[0, 2].tolist()}")


def check_rotation(R: list, what: str) -> None:
    r = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    err = np.abs(r @ np.swapaxes(r, -1, -2) - np.eye(3)).max()
    if err > 1e-3 or (np.linalg.det(r) < 0.999).any():
        raise RecordError(f"{what} is not a rotation matrix (R R^T != I by {err:.3g}, or det(R) != 1)")


def _check_rel_path(path: str, what: str) -> None:
    if not path.strip():
        raise RecordError(f"{what} is an empty path")
    if "\x00" in path:
        raise RecordError(f"{what} contains a NUL byte")
    if not os.path.isabs(path) and os.path.normpath(path).split(os.sep)[0] == "..":
        raise RecordError(f"{what} {path!r} points outside the dataset root")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_record(raw: dict[str, Any], root: Path = Path(".")) -> ClipRecord:
    """Validate one decoded JSON record -> :class:`ClipRecord` (raises :class:`RecordError`)."""

    if not isinstance(raw, dict):
        raise RecordError(f"record must be a JSON object, got {type(raw).__name__}")
    for key in ("id", "source", "fps", "num_frames", "views"):
        if key not in raw:
            raise RecordError(f"missing key {key!r}")
    clip_id = raw["id"]
    if not isinstance(clip_id, str) or not clip_id:
        raise RecordError("'id' must be a non-empty string")
    if raw["source"] not in SOURCES:
        raise RecordError(f"source must be one of {SOURCES}, got {raw['source']!r}")
    fps, num_frames = raw["fps"], raw["num_frames"]
    if not _is_number(fps) or not math.isfinite(fps) or not 0 < fps <= MAX_FPS:
        raise RecordError(f"fps must be a number in (0, {MAX_FPS:g}], got {fps!r}")
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or not 0 < num_frames <= MAX_FRAMES:
        raise RecordError(f"num_frames must be an integer in [1, {MAX_FRAMES}], got {num_frames!r}")
    for key in ("height", "width"):
        value = raw.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 1 << 16
        ):
            raise RecordError(f"{key} must be an integer in [1, 65536], got {value!r}")
    views_raw = raw["views"]
    if not isinstance(views_raw, list) or not views_raw:
        raise RecordError("'views' must be a non-empty list")
    views = []
    for i, v in enumerate(views_raw):
        if not isinstance(v, dict) or not isinstance(v.get("video"), str):
            raise RecordError(f"views[{i}] must be an object with a 'video' path")
        _check_rel_path(v["video"], f"views[{i}].video")
        prompt = v.get("camera_prompt", "")
        if not isinstance(prompt, str):
            raise RecordError(f"views[{i}].camera_prompt must be a string")
        cams = {}
        for key, shape in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,))):
            if v.get(key) is not None:
                cams[key] = _check_matrix(v[key], shape, num_frames, f"views[{i}].{key}")
        if "K" in cams:
            check_intrinsics(cams["K"], f"views[{i}].K")
        if "R" in cams:
            check_rotation(cams["R"], f"views[{i}].R")
        kp = v.get("keypoints2d")
        if kp is not None:
            if not isinstance(kp, str):
                raise RecordError(f"views[{i}].keypoints2d must be a path")
            _check_rel_path(kp, f"views[{i}].keypoints2d")
        views.append(
            ViewRecord(
                video=v["video"], camera_prompt=prompt, name=str(v.get("name", "")), keypoints2d=kp, **cams
            )
        )
    motion = None
    if raw.get("motion") is not None:
        m = raw["motion"]
        if not isinstance(m, dict) or not isinstance(m.get("file"), str):
            raise RecordError("'motion' must be an object with a 'file' path")
        _check_rel_path(m["file"], "motion.file")
        flags = {}
        for key in ("body", "hands", "joints3d"):
            flags[key] = m.get(key, "gt")
            if flags[key] not in LABEL_KINDS:
                raise RecordError(f"motion.{key} must be one of {LABEL_KINDS}, got {flags[key]!r}")
        motion = MotionRecord(file=m["file"], **flags)
    caption = raw.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise RecordError("'caption' must be a string")
    return ClipRecord(
        id=clip_id,
        source=raw["source"],
        fps=float(fps),
        num_frames=num_frames,
        views=tuple(views),
        height=raw.get("height"),
        width=raw.get("width"),
        motion=motion,
        caption=caption,
        root=Path(root),
    )


def load_manifest(root: str | os.PathLike) -> tuple[list[ClipRecord], list[Problem]]:
    """Parse ``ROOT/manifest.jsonl`` -> (good records, problems). Duplicate ids are problems."""

    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {root} (build a toy dataset with `dimo data synth`)")
    records: list[ClipRecord] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    with path.open("rb") as fh:
        for lineno, raw_line in enumerate(fh, start=1):
            label = f"line {lineno}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append(
                    Problem(label, "record", f"not UTF-8 text ({err.reason} at byte {err.start})")
                )
                continue
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                label = str(raw.get("id", label))[:200] if isinstance(raw, dict) else label
                rec = parse_record(raw, root)
            except (json.JSONDecodeError, RecordError) as err:
                problems.append(Problem(label, "record", str(err)))
                continue
            except RecursionError:
                problems.append(Problem(label, "record", "JSON nested too deeply"))
                continue
            except (ValueError, TypeError, OverflowError) as err:  # anything else a hostile line triggers
                problems.append(Problem(label, "record", f"malformed record ({type(err).__name__}: {err})"))
                continue
            if rec.id in seen:
                problems.append(Problem(rec.id, "record", "duplicate id"))
                continue
            seen.add(rec.id)
            records.append(rec)
    return records, problems


def write_manifest(root: str | os.PathLike, records: Iterable[ClipRecord | dict[str, Any]]) -> Path:
    """Write records as JSON lines atomically (temp file + rename)."""

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST_NAME
    lines = [json.dumps(rec.to_json() if isinstance(rec, ClipRecord) else rec) + "\n" for rec in records]
    return atomic_write_text(path, "".join(lines))


def load_motion(record: ClipRecord) -> dict[str, np.ndarray]:
    """Load and shape-check a clip's motion file -> float32 arrays (bool for ``*_valid``).

    Raises :class:`MotionError` naming the file and the reason when it is missing, unreadable, has a
    wrong shape, too few frames, non-finite values, or lacks a part its flags call present.
    """

    if record.motion is None:
        raise MotionError(f"{record.id}: record has no motion")
    path = record.path(record.motion.file)
    if not path.is_file():
        raise MotionError(f"{path}: motion file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except Exception as err:  # zipfile/np raise many types for corrupt archives
        raise MotionError(f"{path}: unreadable motion file ({err})") from err
    T = record.num_frames
    out: dict[str, np.ndarray] = {}
    for key, arr in data.items():
        if key in MOTION_SHAPES:
            want = (T, *MOTION_SHAPES[key])
            if arr.ndim == len(want) and arr.shape[1:] == want[1:] and arr.shape[0] != T:
                raise MotionError(f"{path}: {key} has {arr.shape[0]} frames, the clip has {T} (num_frames)")
            if arr.shape != want:
                raise MotionError(f"{path}: {key} has shape {arr.shape}, expected {want}")
        elif key == "rest_joints" and arr.shape != (55, 3):
            raise MotionError(f"{path}: rest_joints has shape {arr.shape}, expected (55, 3)")
        elif key == "betas" and arr.ndim != 1:
            raise MotionError(f"{path}: betas must be 1-D, got {arr.shape}")
        if key.endswith("_valid"):
            out[key] = arr.astype(bool)
        else:
            if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
                raise MotionError(f"{path}: {key} is not a finite numeric array")
            with np.errstate(over="ignore"):
                out[key] = arr.astype(np.float32)
            if not np.isfinite(out[key]).all():  # e.g. 1e39 is finite in float64, inf in float32
                raise MotionError(f"{path}: {key} has values beyond the float32 range")
    flags = record.motion
    need = []
    if flags.body != "missing":
        need += ["body_pose"]
    if flags.hands != "missing":
        need += ["hand_pose"]
    if flags.joints3d != "missing":
        need += ["joints"]
    missing = [k for k in need if k not in out]
    if missing:
        raise MotionError(f"{path}: arrays {missing} absent but the record's flags say they are present")
    return out
