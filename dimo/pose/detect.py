"""Run a 2D keypoint detector over a dataset's views and record the keypoint files in the manifest.

``load_detector(folder)`` picks the detector from the folder's ``config.json``: the toy heatmap
network (``model_type: dimo_toy_detector``, :mod:`dimo.pose.toy_detector`) or ViTPose
(``model_type: vitpose``, :mod:`dimo.pose.vitpose`). ``detect_dataset`` writes one
``clips/<id>/keypoints2d_<view>.npz`` per view in dimo's format (:mod:`dimo.data.keypoints`) and
sets the view's ``keypoints2d`` field; views that already name a keypoint file are kept unless
``overwrite``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from dimo.pose.toy_detector import DetectorError

__all__ = ["Detector", "detect_dataset", "detect_video", "load_detector"]

Detector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def load_detector(folder: str | os.PathLike) -> Detector:
    """A detector folder -> callable ``uint8 (T, H, W, 3) -> (keypoints (T, 133, 2), scores (T, 133))``."""

    folder = Path(folder)
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise DetectorError(
            f"{cfg}: missing (a detector folder: `make toy-detector` or a ViTPose save_pretrained folder)"
        )
    try:
        kind = json.loads(cfg.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise DetectorError(f"{cfg}: unreadable ({err})") from None
    if kind == "dimo_toy_detector":
        from dimo.pose.toy_detector import ToyKeypointDetector

        return ToyKeypointDetector.from_pretrained(folder)
    if kind == "vitpose":
        from dimo.pose.vitpose import ViTPoseDetector

        return ViTPoseDetector.from_pretrained(folder)
    raise DetectorError(f"{cfg}: model_type {kind!r} is not a detector (dimo_toy_detector or vitpose)")


def detect_video(
    detector: Detector, path: str | os.PathLike, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """All ``num_frames`` frames of a video -> keypoints ``(T, 133, 2)``, scores ``(T, 133)``."""

    from dimo.data.video import read_frames

    frames = read_frames(path, list(range(num_frames)))  # (T, H, W, 3) uint8, stored size
    return detector(frames)


def detect_dataset(root: str | os.PathLike, detector: Detector, overwrite: bool = False, log=print) -> int:
    """Detect keypoints for every view of ``root``'s manifest; returns the number of files written."""

    from dimo.data.keypoints import save_keypoints2d
    from dimo.data.manifest import load_manifest, write_manifest

    root = Path(root)
    records, problems = load_manifest(root)
    if problems:
        raise DetectorError(
            f"{root}: the manifest has {len(problems)} problem record(s) (first: {problems[0]}); fix them first"
        )
    written, out = 0, []
    for rec in records:
        views = []
        for v, view in enumerate(rec.views):
            if view.keypoints2d is not None and not overwrite:
                views.append(view)
                continue
            rel = f"clips/{rec.id}/keypoints2d_{v:02d}.npz"
            kp, sc = detect_video(detector, rec.path(view.video), rec.num_frames)
            save_keypoints2d(root / rel, kp, sc)
            views.append(replace(view, keypoints2d=rel))
            written += 1
        out.append(replace(rec, views=tuple(views)))
        log(f"{rec.id}: {len(rec.views)} view(s)")
    write_manifest(root, out)
    return written
