"""Full dataset validation: every record, every video (decoded to the last frame), every motion file.

``python -m dimo.cli data validate ROOT`` prints a table (clips, views, frames per source, problems)
and one line per problem with the clip id and the reason; it exits non-zero when anything is wrong.
Checks beyond the manifest schema (:func:`dimo.data.manifest.parse_record`):

* each view's video opens, decodes completely, has at least ``num_frames`` frames (a truncated file
  decodes fewer) and the record's ``height`` x ``width``;
* every frame's timestamp maps to its own frame index at the stream's average rate (a variable
  frame rate that would make training miss frames is refused), and no display rotation is set (dimo
  reads stored pixels; ``data import videos`` re-encodes such files upright);
* the motion file loads, has the documented shapes for ``num_frames`` frames (a frame-count mismatch
  says so), finite values, and the parts its flags call present; when it has parameters, a rest
  skeleton and joints, the joints must equal forward kinematics of the parameters
  (:func:`dimo.geometry.skeleton.forward_kinematics`);
* calibrated views need the record's ``height``/``width``; with 3D joints, the subject (pelvis) must
  be in front of every camera in every valid frame (a subject behind a camera usually means
  camera-to-world extrinsics were given where world-to-camera is expected; the finding says whether
  inverting them would fix it) and inside the image in at least one frame (wrong units, wrong K);
* a view's ``keypoints2d`` file loads and has ``num_frames`` frames (:mod:`dimo.data.keypoints`).

Schema-level findings (non-finite numbers, zero/negative focal lengths, a non-rotation ``R``, a
relative path leaving the root) come from :func:`dimo.data.manifest.parse_record`; every finding
names the clip.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dimo.data.manifest import SOURCES, ClipRecord, MotionError, Problem, load_manifest, load_motion
from dimo.data.video import VideoError, probe

__all__ = [
    "FK_TOLERANCE_M",
    "ValidationReport",
    "print_report",
    "subject_view_problems",
    "validate_record",
    "validate_root",
]

FK_TOLERANCE_M = 1e-3


@dataclass
class ValidationReport:
    root: Path
    records: list[ClipRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_ids(self) -> set[str]:
        return {p.clip_id for p in self.problems}

    def table(self) -> dict[str, dict[str, int]]:
        """Per source: clips, good clips, views, frames (over all views), problems."""

        bad = self.bad_ids()
        rows: dict[str, dict[str, int]] = defaultdict(
            lambda: dict(clips=0, good=0, views=0, frames=0, problems=0)
        )
        for rec in self.records:
            row = rows[rec.source]
            row["clips"] += 1
            row["good"] += rec.id not in bad
            row["views"] += len(rec.views)
            row["frames"] += len(rec.views) * rec.num_frames
        by_id = {r.id: r.source for r in self.records}
        for p in self.problems:
            rows[by_id.get(p.clip_id, "(unparsed)")]["problems"] += 1
        return {s: rows[s] for s in [*SOURCES, "(unparsed)"] if s in rows}


def _check_fk(motion: dict[str, np.ndarray]) -> float | None:
    """Max |joints - FK(params)| in metres, or None when the file lacks what FK needs."""

    from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats

    need = ("global_orient", "body_pose", "rest_joints", "joints")
    if not all(k in motion for k in need):
        return None
    t = {k: torch.from_numpy(v) for k, v in motion.items() if not k.endswith("_valid")}
    rot = pose_to_rotmats(
        t["global_orient"], t["body_pose"], t.get("hand_pose"), t.get("jaw_pose"), t.get("eye_pose")
    )  # (T, 55, 3, 3)
    joints = forward_kinematics(rot, t["rest_joints"], t.get("transl"))
    return float((joints - t["joints"]).abs().max())


def _check_subject_in_view(rec: ClipRecord, motion: dict[str, np.ndarray]) -> list[Problem]:
    """The pelvis in front of every calibrated camera (valid frames) and in the image at least once."""

    if "joints" not in motion:
        return []
    valid = motion.get("body_valid", np.ones(rec.num_frames, bool))
    return subject_view_problems(rec, motion["joints"][:, 0], valid)


def subject_view_problems(
    rec: ClipRecord, pelvis: np.ndarray, valid: np.ndarray | None = None
) -> list[Problem]:
    """Findings for a subject point (pelvis, (T, 3) world metres) behind a calibrated camera of ``rec``
    in a valid frame (with whether inverting the extrinsics would fix it) or never inside its image."""

    if rec.height is None or rec.width is None:
        return []
    valid = np.ones(rec.num_frames, bool) if valid is None else np.asarray(valid, bool)
    if not valid.any():
        return []
    pelvis = np.broadcast_to(np.asarray(pelvis, dtype=np.float64), (rec.num_frames, 3))  # (T, 3)
    out = []
    for i, view in enumerate(rec.views):
        if not view.calibrated:
            continue
        K, R, t = view.cameras(rec.num_frames)
        cam = np.einsum("tij,tj->ti", R, pelvis) + t  # (T, 3) camera coordinates
        z = cam[:, 2]
        behind = np.nonzero(valid & (z <= 0))[0]
        if behind.size:
            f = int(behind[0])
            # would the inverse (camera-to-world read as world-to-camera) put the subject in front?
            Ri = np.swapaxes(R, -1, -2)
            zi = (np.einsum("tij,tj->ti", Ri, pelvis) - np.einsum("tij,tj->ti", Ri, t))[:, 2]
            hint = (
                "the extrinsics look camera-to-world: dimo expects world-to-camera R, t (inverted, the "
                "subject is in front of the camera in every frame)"
                if (zi[valid] > 0).all()
                else "check the extrinsics' convention and sign"
            )
            out.append(
                Problem(
                    rec.id,
                    f"views[{i}]",
                    f"view {view.name or i}: the subject (pelvis) is behind the camera (z = {z[f]:.3g}) "
                    f"in {behind.size} frame(s), first frame {f}; {hint}",
                )
            )
            continue
        uv = np.einsum("tij,tj->ti", K, cam)[:, :2] / z[:, None]
        inside = valid & (uv[:, 0] >= 0) & (uv[:, 0] < rec.width) & (uv[:, 1] >= 0) & (uv[:, 1] < rec.height)
        if not inside.any():
            f = int(np.nonzero(valid)[0][0])
            out.append(
                Problem(
                    rec.id,
                    f"views[{i}]",
                    f"view {view.name or i}: the subject (pelvis) never projects inside the "
                    f"{rec.width}x{rec.height} image (frame {f} at ({uv[f, 0]:.0f}, {uv[f, 1]:.0f}) px); "
                    "wrong units (mm vs m), intrinsics or extrinsics?",
                )
            )
    return out


def validate_record(rec: ClipRecord, decode: bool = True) -> list[Problem]:
    problems: list[Problem] = []
    for i, view in enumerate(rec.views):
        part = f"views[{i}]"
        path = rec.path(view.video)
        try:
            info = probe(path, count=decode)
        except VideoError as err:
            problems.append(Problem(rec.id, part, str(err)))
            continue
        except Exception as err:  # noqa: BLE001 - whatever a hostile file makes FFmpeg/PyAV raise
            problems.append(Problem(rec.id, part, f"{path}: unreadable video ({type(err).__name__}: {err})"))
            continue
        if info.num_frames < rec.num_frames:
            problems.append(
                Problem(
                    rec.id,
                    part,
                    f"{path}: {info.num_frames} frames decoded, record says {rec.num_frames} (truncated?)",
                )
            )
        if (
            rec.height is not None
            and rec.width is not None
            and (info.height, info.width) != (rec.height, rec.width)
        ):
            problems.append(
                Problem(
                    rec.id,
                    part,
                    f"{path}: video is {info.height}x{info.width}, record says {rec.height}x{rec.width}",
                )
            )
        if view.keypoints2d is not None:
            from dimo.data.keypoints import KeypointError, load_keypoints2d

            try:
                load_keypoints2d(rec.path(view.keypoints2d), rec.num_frames)
            except KeypointError as err:
                problems.append(Problem(rec.id, f"{part}.keypoints2d", str(err)))
        if view.calibrated and (rec.height is None or rec.width is None):
            problems.append(Problem(rec.id, part, "calibrated view but the record has no height/width"))
    if rec.motion is not None:
        try:
            motion = load_motion(rec)
        except MotionError as err:
            problems.append(Problem(rec.id, "motion", str(err)))
        else:
            problems += _check_subject_in_view(rec, motion)
            try:
                err_m = _check_fk(motion)
            except (ValueError, RuntimeError) as err:
                problems.append(Problem(rec.id, "motion", f"forward kinematics failed: {err}"))
                return problems
            if err_m is not None and not err_m <= FK_TOLERANCE_M:
                problems.append(
                    Problem(
                        rec.id, "motion", f"joints differ from FK of the saved parameters by {err_m:.4f} m"
                    )
                )
    return problems


def validate_root(root: str | os.PathLike, decode: bool = True) -> ValidationReport:
    """Validate a dataset root (see the module docstring); never raises for bad content."""

    root = Path(root)
    records, problems = load_manifest(root)
    report = ValidationReport(root, records, list(problems))
    for rec in records:
        report.problems += validate_record(rec, decode=decode)
    return report


def print_report(report: ValidationReport, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"dataset {report.root}")
    for col in ("source", "clips", "good", "views", "frames", "problems"):
        table.add_column(col, justify="left" if col == "source" else "right")
    total = defaultdict(int)
    for source, row in report.table().items():
        table.add_row(source, *(str(row[k]) for k in ("clips", "good", "views", "frames", "problems")))
        for k, v in row.items():
            total[k] += v
    table.add_row(
        "total", *(str(total[k]) for k in ("clips", "good", "views", "frames", "problems")), style="bold"
    )
    console.print(table)
    for p in report.problems:
        console.print(
            f"[red]PROBLEM[/red] {p.clip_id} ({p.part}): {p.reason}", highlight=False, soft_wrap=True
        )
    console.print("[green]clean[/green]" if report.ok else f"[red]{len(report.problems)} problem(s)[/red]")
