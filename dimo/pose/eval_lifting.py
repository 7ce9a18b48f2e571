"""``python -m dimo.pose.eval_lifting``: 3D lifting accuracy on held-out toy clips with exact 3D ground truth.

Held-out clips (synth seed 0 at 64x64, the ``data/toy`` seed; no lifting method here is trained on
them) are read by the real readers. For every view of every clip the 2D input is either the exact
projection of the clip's joints (``projected``) or the committed toy detector's output
(``detected``); each lifting method maps it to camera-space 3D joints, which are scored against the
clip's joints in that camera (``R X + t``) with :class:`dimo.eval.pose.PoseMetrics`: MPJPE after
mid-hip alignment, PA-MPJPE (per-frame similarity Procrustes) and root trajectory error (mid-hip,
first-frame offset removed), all in mm, over :data:`dimo.pose.lifting.EVAL_JOINTS`.

Collapse indicator (:func:`depth_spread`): the joints' spread in depth, predicted over true, from the
per-frame standard deviation of the 14 joints' camera z (summed over frames): 1 = the true depth
spread, 0 = every joint on one fronto-parallel plane (the ``fixed_depth`` baseline, exactly), the
signature of a lifting that collapses its depth. ``--raw`` also scores the MVLift variants' triangulated
joints before the skeleton fit (rows ``<method>/no-fit``), where a collapse of the optimisation shows
before the fit's skeleton and pose prior can hide it.
Results: ``benchmarks/results/lifting-toy.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from dimo.eval.pose import PoseMetrics
from dimo.pose.lifting import EVAL_JOINTS, ROOT, get_lifter

__all__ = ["PAPER_AIST", "depth_spread", "evaluate", "iter_sequences", "main"]

# AIST++ numbers from the MVLift paper (arXiv 2411.18808), T_root / MPJPE / PA-MPJPE in mm: a
# different dataset, skeleton and camera set, printed beside ours for orientation only.
PAPER_AIST = {
    "MVLift (paper, AIST++)": (67.6, 110.7, 79.2),
    "WHAM (paper, AIST++)": (164.3, 104.8, 75.1),
    "SMPLify (paper, AIST++)": (77.4, 171.6, 146.7),
}


def iter_sequences(root: str | Path) -> Iterator[dict]:
    """Every calibrated view with 3D joints: frames, exact 2D joints, cameras, camera-space 3D joints."""

    from dimo.data.manifest import load_manifest, load_motion
    from dimo.data.video import read_frames
    from dimo.geometry.cameras import project

    records, problems = load_manifest(root)
    if problems:
        raise RuntimeError(f"{root}: dataset has problems, first: {problems[0]}")
    for rec in records:
        if rec.motion is None or rec.motion.joints3d == "missing":
            continue
        joints = torch.from_numpy(load_motion(rec)["joints"]).double()  # (T, 55, 3) world
        for v, view in enumerate(rec.views):
            if not view.calibrated:
                continue
            K, R, t = (torch.from_numpy(np.ascontiguousarray(a)) for a in view.cameras(rec.num_frames))
            uv, z = project(joints, K, R, t)
            inside = (
                (uv[..., 0] >= 0) & (uv[..., 0] < rec.width) & (uv[..., 1] >= 0) & (uv[..., 1] < rec.height)
            )
            yield {
                "id": f"{rec.id}/v{v}",
                "frames": read_frames(rec.path(view.video), list(range(rec.num_frames))),
                "uv": uv.float(),
                "valid": (z > 1e-6) & inside,
                "K": K.float(),
                "joints_cam": (joints @ R.transpose(-1, -2) + t[:, None]).float(),  # (T, 55, 3)
            }


def depth_spread(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Summed per-frame depth spreads ``(predicted, true)`` of :data:`EVAL_JOINTS` for camera-space joints
    ``(T, 55, 3)``: the standard deviation (population) of the joints' z in each frame, summed over
    frames. Their ratio over all sequences is the collapse indicator (module docstring)."""

    j = list(EVAL_JOINTS)
    zp, zt = pred[:, j, 2].double(), target[:, j, 2].double()
    return float(zp.std(-1, unbiased=False).sum()), float(zt.std(-1, unbiased=False).sum())


def evaluate(
    root: str | Path,
    detector=None,
    methods: Sequence[str] = ("fixed_depth", "smplify", "free3d"),
    log=print,
    options: dict[str, dict] | None = None,
    raw: Sequence[str] = (),
) -> list[dict]:
    """Rows ``{method, input, mpjpe, pa_mpjpe, t_root, depth_spread, sequences, frames, seconds}`` (mm;
    ``depth_spread`` a ratio, :func:`depth_spread`); methods by their :func:`dimo.pose.lifting.get_lifter`
    name, built with ``options[name]``. Methods in ``raw`` (MVLift variants) are also scored with
    ``fit=False`` (their triangulated joints before the skeleton fit), as rows ``<method>/no-fit``."""

    from dimo.pose.joints import wholebody_to_smplx

    seqs = list(iter_sequences(root))
    inputs = {"projected": [(s["uv"], s["valid"].float()) for s in seqs]}
    if detector is not None:
        det = []
        for s in seqs:
            kp, sc = detector(s["frames"])
            uv, score, valid = wholebody_to_smplx(kp, sc)
            det.append((uv, score * valid))
        inputs["detected"] = det
    rows = []
    runs = [(name, name, {}) for name in methods] + [(name, f"{name}/no-fit", {"fit": False}) for name in raw]
    for name, label, extra in runs:
        lifter = get_lifter(name, **(options or {}).get(name, {}), **extra)
        for inp, pairs in inputs.items():
            metric = PoseMetrics(root=list(ROOT), joints=EVAL_JOINTS)
            spread = [0.0, 0.0]
            start = time.perf_counter()
            for s, (uv, conf) in zip(seqs, pairs):
                pred = lifter(uv, conf, s["K"])
                metric.update(pred[None].double(), s["joints_cam"][None].double())
                sp, st = depth_spread(pred, s["joints_cam"])
                spread[0] += sp
                spread[1] += st
            out = {k: round(float(v), 1) for k, v in metric.compute().items()}
            row = {
                "method": label,
                "input": inp,
                "mpjpe": out["mpjpe"],
                "pa_mpjpe": out["pa_mpjpe"],
                "t_root": out["root_traj"],
                "depth_spread": round(spread[0] / spread[1], 3),
                "sequences": len(seqs),
                "frames": int(sum(len(s["uv"]) for s in seqs)),
                "seconds": round(time.perf_counter() - start, 1),
            }
            log(json.dumps(row))
            rows.append(row)
    return rows


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# 3D lifting on held-out toy clips",
        "",
        f"{meta['sequences']} views of {meta['clips']} held-out toy clips (synth seed {meta['seed']}, "
        f"{meta['frames_per_clip']} frames at {meta['size']}x{meta['size']}), {meta['frames']} frames; "
        "camera-space joints, mm. MPJPE after mid-hip alignment, PA-MPJPE per-frame Procrustes, "
        "T_root = mid-hip trajectory error after removing the first-frame offset; "
        "14 joints with a 2D keypoint; depth spread = the joints' per-frame depth standard deviation, "
        "predicted over true (1 = right, 0 = flat: the collapse indicator; `-` = row kept from a run "
        "before it existed); `/no-fit` rows: MVLift's triangulated joints before the skeleton fit. "
        f"Produced by `{meta['command']}` on {meta['date']}"
        + (
            f" (rows of {', '.join(sorted({r['method'] for r in rows if r.get('date')}))} kept from the run of "
            f"{', '.join(sorted({r['date'] for r in rows if r.get('date')}))} on the same clips, `--keep`)."
            if any(r.get("date") for r in rows)
            else "."
        ),
        "",
        "| method | 2D input | T_root | MPJPE | PA-MPJPE | depth spread | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['input']} | {r['t_root']} | {r['mpjpe']} | {r['pa_mpjpe']} | "
            f"{r.get('depth_spread', '-')} | {r['seconds']} |"
        )
    lines += [
        "",
        "Published AIST++ numbers (different data and skeleton; orientation only, not comparable):",
        "",
    ]
    lines += ["| method | T_root | MPJPE | PA-MPJPE |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {a} | {b} | {c} |" for k, (a, b, c) in PAPER_AIST.items()]
    return "\n".join(lines) + "\n"


def _key_value(text: str) -> tuple[str, int | float | str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"error: --mvlift-option expects KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dimo.pose.eval_lifting", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lifting-toy"))
    p.add_argument("--detector", type=Path, default=Path("pretrained/toy-detector"))
    p.add_argument("--clips-per-source", type=int, default=2)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument(
        "--methods", nargs="+", default=["fixed_depth", "smplify", "free3d"],
        help="lifting methods by name (dimo.pose.lifting.LIFTERS)",
    )  # fmt: skip
    p.add_argument(
        "--inputs", nargs="+", choices=["projected", "detected"], default=["projected", "detected"],
        help="2D inputs to score (detected: the --detector's keypoints on the rendered frames)",
    )  # fmt: skip
    p.add_argument("--free3d", type=Path, help="Free3D folder (default pretrained/toy-free3d)")
    p.add_argument("--mvlift", type=Path, help="MVLift folder (default pretrained/toy-mvlift)")
    p.add_argument(
        "--mvlift-option", action="append", default=[], metavar="KEY=VALUE",
        help="an option of every MVLift variant (dimo.pose.mvlift.lift.mvlift_lift), e.g. stage2_iters=1000",
    )  # fmt: skip
    p.add_argument(
        "--raw", nargs="*", default=[], metavar="METHOD",
        help="MVLift variants also scored before the skeleton fit (rows METHOD/no-fit)",
    )  # fmt: skip
    p.add_argument(
        "--keep", "--merge", dest="keep", action="store_true",
        help="keep the rows of methods not re-run from the existing --out JSON (same clips, seed and frames)",
    )  # fmt: skip
    args = p.parse_args(argv)
    from dimo.data.synth import synthesize
    from dimo.pose.detect import load_detector
    from dimo.toy.data import synth_config

    torch.set_num_threads(1)  # small batched ops: a second thread only spin-waits on a shared machine
    detector = load_detector(args.detector)
    with tempfile.TemporaryDirectory(prefix="dimo-lifting-") as tmp:
        records = synthesize(tmp, synth_config(0, args.clips_per_source, args.frames, 64))
        options = {"free3d": {"folder": args.free3d}} if args.free3d else {}
        mv_options = dict(_key_value(o) for o in args.mvlift_option)
        if args.mvlift:
            mv_options["folder"] = args.mvlift
        options.update({m: dict(mv_options) for m in [*args.methods, *args.raw] if m.startswith("mvlift")})
        det = detector if "detected" in args.inputs else None
        rows = evaluate(tmp, det, methods=args.methods, options=options, raw=args.raw)
        rows = [r for r in rows if r["input"] in args.inputs]
    old = args.out.with_suffix(".json")
    if args.keep and old.is_file():
        prev = json.loads(old.read_text())
        same = {k: prev["meta"].get(k) for k in ("seed", "clips", "frames_per_clip", "size")}
        want = {"seed": 0, "clips": len(records), "frames_per_clip": args.frames, "size": 64}
        if same != want:
            raise SystemExit(f"error: --keep: {old} was made on other clips ({same} vs {want})")
        redone = {*args.methods, *(f"{m}/no-fit" for m in args.raw)}
        kept = [r for r in prev["rows"] if r["method"] not in redone]
        for r in kept:
            r.setdefault("date", prev["meta"].get("date"))
        rows = kept + rows
    meta = {
        "seed": 0,
        "clips": len(records),
        "sequences": rows[0]["sequences"],
        "frames": rows[0]["frames"],
        "frames_per_clip": args.frames,
        "size": 64,
        "detector": str(args.detector),
        "mvlift_options": dict(_key_value(o) for o in args.mvlift_option),
        "command": " ".join(["python -m dimo.pose.eval_lifting", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "rows": rows, "paper_aist": PAPER_AIST}, indent=1) + "\n"
    )
    args.out.with_suffix(".md").write_text(to_markdown(rows, meta))
    print(to_markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
