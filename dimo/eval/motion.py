"""Pose metrics on generated videos: detect 2D, lift to 3D, compare with the driving clip's motion.

For every generated item the harness (``mpjpe`` / ``pa_mpjpe`` / ``t_root`` in :mod:`dimo.eval.harness`)

1. detects 2D keypoints on its frames with a detector folder (:func:`dimo.pose.detect.load_detector`:
   the toy detector or ViTPose);
2. lifts them to camera-space 3D joints with a named lifting method
   (:func:`dimo.pose.lifting.get_lifter`: ``smplify``, ``free3d``, ``fixed_depth``, ...), using the driving
   view's intrinsics carried to the generated frame size (generation resizes to cover and centre-crops);
3. scores them with :class:`dimo.eval.pose.PoseMetrics` against the **reference motion**: the driving
   clip's 3D joints in the driving view's camera (mid-hip root, the 14 joints of
   :data:`dimo.pose.lifting.EVAL_JOINTS`; MPJPE after root alignment, PA-MPJPE per frame, T_root after
   removing the first-frame offset; mm). Generated frame ``i`` is compared with driving frame ``i``.

MPJPE and T_root assume the generated video is seen from the driving camera (self-reconstruction, a
static-camera prompt); PA-MPJPE does not depend on the viewpoint. The same detector and lifter are also
run on the driving video itself when it can be read (``*_driving`` in the details): the estimator's own
error, the floor a perfect generation would reach.

Where the reference comes from (named in the output, with its label kind ``gt`` / ``pseudo``):

* ``reference_motion`` = a dataset folder (``manifest.jsonl``): the item's clip is the one whose view video
  is the ``driving`` path of the item's ``generate`` sidecar (``<item>.json``), or the clip whose id is
  the item name (its view 0);
* ``reference_motion`` unset: the sidecar's ``driving`` path, inside a dataset folder (the nearest
  parent with a ``manifest.jsonl``);
* ``reference_motion`` = a folder of ``<item>.npz`` files (the user's labels): ``joints`` ``(T, 55, 3)`` in
  the generated video's camera frame (OpenCV, metres) and ``K`` ``(3, 3)`` or ``(T, 3, 3)`` in pixels of the
  generated frames.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "POSE_METRICS",
    "MotionReference",
    "find_reference",
    "run_pose_evaluation",
    "score_item",
    "summarise",
]

POSE_METRICS = ("mpjpe", "pa_mpjpe", "t_root")


@dataclass
class MotionReference:
    """The driving motion of one generated item, in the driving view's camera frame."""

    joints: torch.Tensor  # (T, 55, 3) metres
    K: torch.Tensor  # (T, 3, 3) pixels of a (height, width) frame
    height: int
    width: int
    label: str  # "gt" | "pseudo" | "user"
    name: str  # human-readable source, e.g. "data/toy clip internet_0000 view 0"
    driving: Path | None = None  # the driving video, when known


def _dataset_root(path: Path) -> Path | None:
    for parent in path.resolve().parents:
        if (parent / "manifest.jsonl").is_file():
            return parent
    return None


def _sidecar(item: Path) -> dict | None:
    side = item.with_suffix(".json") if item.is_file() else item / "generate.json"
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{side}: unreadable generate sidecar ({err})") from None


def _from_clip(root: Path, clip_id: str | None, driving: Path | None) -> MotionReference:
    from dimo.data.manifest import load_manifest, load_motion

    records, _ = load_manifest(root)
    for rec in records:
        for v, view in enumerate(rec.views):
            hit = (driving is not None and rec.path(view.video).resolve() == driving.resolve()) or (
                driving is None and rec.id == clip_id and v == 0
            )
            if not hit:
                continue
            name = f"{root} clip {rec.id} view {v}"
            if rec.motion is None or rec.motion.joints3d == "missing":
                raise ValueError(
                    f"{name}: the clip has no 3D joints (label it: python -m dimo.cli data label)"
                )
            if not view.calibrated:
                raise ValueError(f"{name}: the driving view has no camera, so its motion has no camera frame")
            T = rec.num_frames
            K, R, t = (torch.from_numpy(np.ascontiguousarray(a)).double() for a in view.cameras(T))
            world = torch.from_numpy(load_motion(rec)["joints"]).double()  # (T, 55, 3)
            cam = world @ R.transpose(-1, -2) + t[:, None]
            return MotionReference(
                cam, K, int(rec.height), int(rec.width), rec.motion.joints3d, name, rec.path(view.video)
            )
    what = f"a view with video {driving}" if driving is not None else f"a clip with id {clip_id!r}"
    raise ValueError(f"{root}: no {what} in the manifest")


def find_reference(item_name: str, item: Path, reference_motion: str | os.PathLike | None) -> MotionReference:
    """The reference motion of a generated item (module docstring); a clear error when there is none."""

    side = _sidecar(item)
    driving = Path(side["driving"]) if side and side.get("driving") else None
    if reference_motion is not None:
        ref = Path(reference_motion)
        if (ref / "manifest.jsonl").is_file():
            return _from_clip(ref, item_name, driving)
        f = ref / f"{item_name}.npz"
        if not f.is_file():
            raise ValueError(f"no reference motion for {item_name!r}: expected {f} (or a dataset folder)")
        with np.load(f) as data:
            if "joints" not in data or "K" not in data:
                raise ValueError(
                    f"{f}: a reference motion file needs 'joints' (T, 55, 3) and 'K' (3, 3) or (T, 3, 3)"
                )
            joints = torch.from_numpy(np.asarray(data["joints"], np.float64))
            K = torch.from_numpy(np.asarray(data["K"], np.float64))
        if joints.ndim != 3 or joints.shape[1:] != (55, 3):
            raise ValueError(f"{f}: joints must be (T, 55, 3), got {tuple(joints.shape)}")
        K = K.expand(joints.shape[0], 3, 3) if K.shape == (3, 3) else K
        return MotionReference(joints, K, 0, 0, "user", str(f), driving)
    if driving is None:
        raise ValueError(
            f"no reference motion for {item_name!r}: pass reference_motion (a dataset folder or a folder of "
            "<item>.npz), or keep the generate sidecar (<item>.json) naming a driving clip of a dataset"
        )
    root = _dataset_root(driving)
    if root is None:
        raise ValueError(
            f"{item_name}: the driving video {driving} is in no dataset folder (no manifest.jsonl above it)"
        )
    return _from_clip(root, None, driving)


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in [-1, 1] -> uint8 ``(T, H, W, 3)``."""

    return (
        ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )


def _lift(frames: np.ndarray, K: torch.Tensor, detector, lifter) -> torch.Tensor:
    from dimo.pose.joints import wholebody_to_smplx

    kp, sc = detector(frames)
    uv, score, valid = wholebody_to_smplx(kp, sc)
    return lifter(uv, score * valid, K.float()).double()


def _frame_K(ref: MotionReference, T: int, h: int, w: int) -> torch.Tensor:
    """The reference intrinsics carried to ``(h, w)`` frames (cover + centre crop, as generation does)."""

    from dimo.data.video import adjust_intrinsics, resize_crop_plan

    K = ref.K[:T]
    if ref.label == "user" or (ref.height, ref.width) == (h, w):
        return K
    plan = resize_crop_plan(ref.height, ref.width, h, w, "center")
    return torch.from_numpy(adjust_intrinsics(K.numpy(), ref.height, ref.width, plan))


def score_item(
    video: torch.Tensor, ref: MotionReference, detector, lifter, driving: bool = True
) -> dict[str, torch.Tensor | int | None]:
    """One generated ``video (T, 3, H, W)`` in [-1, 1]: per-frame-summed errors for exact aggregation.

    Returns ``{"generated": PoseMetrics state tensors, "driving": the same on the driving video or None,
    "frames": T}`` (states: ``mpjpe_sum``, ``pa_sum``, ``joints_valid``, ``traj_sum``, ``sequences``).
    """

    from dimo.eval.pose import PoseMetrics
    from dimo.pose.lifting import EVAL_JOINTS, ROOT

    T = min(video.shape[0], ref.joints.shape[0])
    h, w = video.shape[-2:]
    K = _frame_K(ref, T, h, w)
    target = ref.joints[:T].double()

    def states(frames: np.ndarray) -> dict[str, torch.Tensor]:
        m = PoseMetrics(root=list(ROOT), joints=EVAL_JOINTS)
        m.update(_lift(frames, K, detector, lifter)[None], target[None])
        return {
            k: getattr(m, k).clone() for k in ("mpjpe_sum", "pa_sum", "joints_valid", "traj_sum", "sequences")
        }

    out = {"generated": states(_to_uint8(video[:T])), "driving": None, "frames": T}
    if driving and ref.driving is not None and ref.driving.is_file():
        from dimo.data.video import read_frames

        frames = read_frames(ref.driving, list(range(T)), (h, w))  # (T, h, w, 3) uint8, resized like generate
        out["driving"] = states(frames)
    return out


def summarise(states: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Summed states of several items -> ``{"mpjpe", "pa_mpjpe", "t_root"}`` (mm), as one PoseMetrics."""

    total = {k: sum(s[k] for s in states) for k in states[0]}
    return {
        "mpjpe": float(total["mpjpe_sum"] / total["joints_valid"]),
        "pa_mpjpe": float(total["pa_sum"] / total["joints_valid"]),
        "t_root": float(total["traj_sum"] / total["sequences"]),
    }


def run_pose_evaluation(generated_dir: str | os.PathLike, cfg, names: list[str], progress: bool = True):
    """The harness's pose metrics ``names`` (subset of :data:`POSE_METRICS`) over every generated item.

    Sharded over ranks like the other metrics (every rank gathers all items' summed errors, so the
    numbers equal the single-process run). Returns a :class:`dimo.eval.harness.EvalReport`.
    """

    from dimo.eval.harness import EvalReport, _dist, _progress, _shard, list_items, read_item
    from dimo.pose.detect import load_detector
    from dimo.pose.lifting import get_lifter

    if cfg.pose_detector is None:
        raise ValueError(
            f"metrics {', '.join(names)} detect 2D keypoints on the generated frames: set pose_detector "
            "(--pose-detector DIR: pretrained/toy-detector or a ViTPose folder)"
        )
    detector = load_detector(cfg.pose_detector)
    lifter = get_lifter(cfg.lifter, **dict(cfg.lifter_options or {}))
    items = list_items(generated_dir)
    if not items:
        raise ValueError(f"{generated_dir}: no generated items found")
    order = sorted(items)
    rows: dict[str, dict] = {}
    mine = _shard(order)
    with _progress(progress, len(mine)) as advance:
        for item in mine:
            ref = find_reference(item, items[item], cfg.reference_motion)
            try:
                video = read_item(items[item], False, cfg.max_frames)
            except Exception as err:  # noqa: BLE001 - corrupt/empty files: name the item
                raise ValueError(
                    f"item {item!r}: cannot read it ({' '.join(str(err).split())[:300]})"
                ) from err
            out = score_item(video, ref, detector, lifter, driving=cfg.pose_on_driving)
            rows[item] = {**out, "reference": ref.name, "label": ref.label}
            advance()
    _, world = _dist()
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, rows)
        rows = {k: v for part in gathered for k, v in part.items()}
    ordered = [rows[i] for i in order]
    gen = summarise([r["generated"] for r in ordered])
    drv = [r["driving"] for r in ordered if r["driving"] is not None]
    floor = summarise(drv) if len(drv) == len(ordered) else None
    refs = sorted({r["reference"] for r in ordered})
    labels = sorted({r["label"] for r in ordered})
    text = (
        f"2D keypoints by {cfg.pose_detector}, lifted by '{cfg.lifter}' (dimo.pose.lifting), compared with the "
        f"driving clip's 3D joints ({'/'.join(labels)} labels) in the driving camera; PoseMetrics, mid-hip root, "
        "14 joints, mm; MPJPE and T_root assume the generated camera is the driving one"
    )
    shown = ", ".join(refs[:3]) + (f" and {len(refs) - 3} more" if len(refs) > 3 else "")
    values, details = {}, {}
    for n in names:
        values[n] = gen[n]
        extra = f"; reference motion: {shown}"
        if floor is not None:
            extra += f"; the same detector + lifter on the driving videos: {floor[n]:.1f} mm"
        details[n] = {
            "value": gen[n],
            "convention": text + extra,
            "lifter": cfg.lifter,
            "detector": str(cfg.pose_detector),
            "reference_motion": refs,
            "reference_labels": labels,
            "n_videos": len(ordered),
            "n_frames": int(sum(r["frames"] for r in ordered)),
        }
        if floor is not None:
            details[n]["driving_video"] = floor[n]  # the same detector + lifter on the driving frames
    per_video = []
    for item, r in zip(order, ordered):
        row = {"item": item, "frames": r["frames"], **{n: summarise([r["generated"]])[n] for n in names}}
        if r["driving"] is not None:
            row.update({f"{n}_driving": summarise([r["driving"]])[n] for n in names})
        per_video.append(row)
    return EvalReport(values, details, per_video, {})
