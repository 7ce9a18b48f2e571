"""The papers' ablation directions at toy scale (issue #13, docs/ablations.md): ``make ablations``.

Each ablation is a set of arms; every arm is an experiment overlay in ``experiments/`` composed on
its method's toy config (3DiMo: ``3dimo.yaml`` + ``3dimo_stage1.yaml``, or ``3dimo.yaml`` alone when
the arms set the stages; HVG: ``hvg.yaml``) and run through the real CLI (``python -m dimo.cli fit``)
with the same seeds and data for every arm, ``--jobs`` single-threaded runs side by side. The metrics
are the ones the module logs at every validation (fixed protocol: same batches, same noise, same sigma
grid), read back from each run's TensorBoard events. Results (JSON with the git revision, markdown
table, one plot per ablation) go to ``benchmarks/results/ablations/``.

    python benchmarks/ablations.py                 # every ablation that has arms
    python benchmarks/ablations.py --only a        # one (``make ablations ONLY=a``)

A direction counts as reproduced when the paper's better arm has the better mean of the final
validation and the gap between the means exceeds the sum of the two arms' standard deviations over
seeds; "within noise" when the better arm is right but the gap does not clear the spread; "not
reproduced" when the other arm is better. Nothing is tuned per arm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_3DIMO = ("experiments/3dimo.yaml", "experiments/3dimo_stage1.yaml")
BASE_HVG = ("experiments/hvg.yaml",)


@dataclass
class Ablation:
    key: str
    title: str
    claim: str
    arms: dict[str, str]  # arm name -> overlay under experiments/
    metric: str = "val/motion_gap"
    higher_is_better: bool = True
    expect_best: str | None = None  # the paper's better arm; None: no claim (a sweep)
    extra_metrics: tuple[str, ...] = ("val/loss_own_motion", "val/no_motion_gap")
    base: tuple[str, ...] = BASE_3DIMO
    not_run: str | None = None  # why this ablation has no arms here yet
    steps: int = 600  # training steps per run (``--steps`` overrides for every ablation)
    val_every: int = 200
    # sampled validation metrics (few-step generations): off unless the metric needs them
    sampled: bool = False
    flags: tuple[str, ...] = field(default_factory=tuple)  # more CLI flags, the same for every arm


ABLATIONS: dict[str, Ablation] = {
    "a": Ablation(
        "a",
        "3DiMo motion injection",
        "cross-attention injection beats channel concatenation (paper: FVD 297.4 vs 395.6)",
        {
            "cross_attention": "experiments/ablation_3dimo_cross_attention.yaml",
            "channel_concat": "experiments/ablation_3dimo_channel_concat.yaml",
        },
        expect_best="cross_attention",
    ),
    "b": Ablation(
        "b",
        "3DiMo geometric supervision",
        "the SMPL/MANO geometric loss speeds early convergence and improves motion (paper: FVD 383.1 "
        "without it)",
        {
            "geo": "experiments/ablation_3dimo_geo.yaml",
            "no_geo": "experiments/ablation_3dimo_no_geo.yaml",
        },
        expect_best="geo",
    ),
    "k": Ablation(
        "k",
        "3DiMo motion-token count (K_b = K_h = K)",
        "not in the paper (suggested as future work): how the number of motion tokens per frame "
        "changes how much motion the model uses",
        {
            "K1": "experiments/ablation_3dimo_tokens1.yaml",
            "K5": "experiments/ablation_3dimo_tokens5.yaml",
            "K16": "experiments/ablation_3dimo_tokens16.yaml",
        },
    ),
    "c": Ablation(
        "c",
        "3DiMo view-rich stages",
        "the view-rich stages make motion view-agnostic (paper: stage 1 only FVD 305.4)",
        {
            "stages123": "experiments/ablation_3dimo_stages123.yaml",
            "stage1_only": "experiments/ablation_3dimo_stage1_only.yaml",
        },
        metric="val/cross_view_motion_gap",
        expect_best="stages123",
        extra_metrics=("val/motion_gap", "val/cross_view_loss_own_motion", "val/loss_own_motion"),
        base=("experiments/3dimo.yaml",),  # the overlays carry their own stage lists
    ),
    "d": Ablation(
        "d",
        "HVG bone maps vs skeleton maps",
        "bone maps beat skeleton maps (paper: PSNR 22.13 vs 18.52, FVD 152.1 vs 277.5)",
        {
            "bone": "experiments/ablation_hvg_bone.yaml",
            "skeleton": "experiments/ablation_hvg_skeleton.yaml",
        },
        metric="val/psnr_novel",
        expect_best="bone",
        extra_metrics=("val/pose_gap", "val/loss", "val/kp_reproj_px"),
        base=BASE_HVG,
        steps=200,  # 2 arms x 3 seeds of HVG (~1.5 CPU-s per step) in the 30-minute budget
        val_every=100,
        sampled=True,  # PSNR of generated novel views needs the validation samples
    ),
    "e": Ablation(
        "e",
        "HVG view attention",
        "view attention improves multi-view consistency",
        {
            "view_attention": "experiments/ablation_hvg_view_attention.yaml",
            "no_view_attention": "experiments/ablation_hvg_no_view_attention.yaml",
        },
        metric="val/kp_reproj_px",
        higher_is_better=False,
        expect_best="view_attention",
        extra_metrics=("val/kp_reproj_px_real", "val/psnr_novel", "val/pose_gap", "val/loss"),
        base=BASE_HVG,
        steps=200,  # 2 arms x 3 seeds of HVG (~1.5 CPU-s per step) in the 30-minute budget
        val_every=100,
        sampled=True,  # the consistency metric scores the validation samples
    ),
}


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard events: tag -> [(step, value)]."""

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, float(e.value)) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def run_length(ab: Ablation, args) -> tuple[int, int]:
    """Steps and validation interval of every run of ``ab`` (the command line overrides both)."""

    return args.steps or ab.steps, args.val_every or ab.val_every


def fit_command(ab: Ablation, overlay: str, seed: int, args, run_root: Path, name: str) -> list[str]:
    steps, val_every = run_length(ab, args)
    cmd = [sys.executable, "-m", "dimo.cli", "fit"]
    for cfg in (*ab.base, overlay):
        cmd += ["--config", str(REPO / cfg)]
    cmd += [
        f"--seed_everything={seed}",
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={val_every}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={run_root}",
        f"--trainer.logger.init_args.name={name}",
        f"--trainer.logger.init_args.version=seed{seed}",
        # nothing but the logged curves is needed: no checkpoints, no sample media
        "--checkpoint.save_top_k=0",
        "--checkpoint.save_last=false",
        f"--samples.every_n_steps={10 * steps + 1}",
        f"--data.init_args.root={args.data}",
        *([f"--data.init_args.frame_stride={args.frame_stride}"] if args.frame_stride else []),
        *ab.flags,
    ]
    if not ab.sampled:
        cmd.append("--model.init_args.val_metric_batches=0")
    return cmd


def summarise(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": values,
    }


def verdict(ab: Ablation, final: dict[str, dict]) -> str:
    if ab.expect_best is None:
        return "no claim (sweep)"
    other = [a for a in final if a != ab.expect_best]
    best = final[ab.expect_best]
    sign = 1.0 if ab.higher_is_better else -1.0
    verdicts = []
    for o in other:
        gap = sign * (best["mean"] - final[o]["mean"])
        if gap <= 0:
            verdicts.append("not reproduced")
        elif gap > best["std"] + final[o]["std"]:
            verdicts.append("reproduced")
        else:
            verdicts.append("within noise")
    return min(verdicts, key=["not reproduced", "within noise", "reproduced"].index)


def run_one(ab: Ablation, arm: str, overlay: str, seed: int, args, run_root: Path) -> dict:
    """One training run of one arm and seed, through the CLI in a subprocess; its logged curves."""

    name = f"{ab.key}_{arm}"
    run_dir = run_root / name / f"seed{seed}"
    cmd = fit_command(ab, overlay, seed, args, run_root, name)
    t0 = time.perf_counter()
    print(f"[ablations] {ab.key}/{arm} seed {seed}: running ({run_length(ab, args)[0]} steps)", flush=True)
    # one intra-op thread per run unless asked otherwise: on a shared 2-core machine two OpenMP
    # threads per process spin against each other (measured: ~20x slower per step); --jobs runs
    # several single-threaded runs side by side instead
    threads = str(args.threads)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    log_path = run_root / f"{name}_seed{seed}.log"  # the run's own output, kept beside its folder
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        # wait4 (not wait) to get the run's own CPU time: a load-independent cost figure beside the wall time
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-3:]
        raise RunFailed(f"{ab.key}/{arm} seed {seed} failed (log: {log_path}): {' | '.join(tail)}")
    scalars = read_scalars(run_dir)
    if ab.metric not in scalars:
        raise RunFailed(f"{run_dir} logged no {ab.metric}")
    curve = {
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "scalars": {k: scalars[k] for k in (ab.metric, *ab.extra_metrics) if k in scalars},
    }
    last = scalars[ab.metric][-1]
    print(
        f"[ablations] {ab.key}/{arm} seed {seed}: {ab.metric} {last[1]:.4f} at step {last[0]} "
        f"({curve['seconds']:.0f} s wall, {curve['cpu_seconds']:.0f} CPU-s)",
        flush=True,
    )
    return curve


class RunFailed(RuntimeError):
    pass


def run_ablation(ab: Ablation, args, out: Path) -> dict:
    run_root = out / "runs"
    arms_run = {a: o for a, o in ab.arms.items() if not args.arms or a in args.arms}
    jobs = [(arm, overlay, seed) for arm, overlay in arms_run.items() for seed in args.seeds]
    for arm, _, seed in jobs:  # checked before anything runs: a run folder is never overwritten
        run_dir = run_root / f"{ab.key}_{arm}" / f"seed{seed}"
        if run_dir.exists():
            raise SystemExit(f"error: {run_dir} exists; move it away or pass another --out")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(run_one, ab, arm, overlay, seed, args, run_root) for arm, overlay, seed in jobs
        ]
        try:
            done = [f.result() for f in futures]
        except RunFailed as e:
            for f in futures:
                f.cancel()
            raise SystemExit(f"error: {e}") from None
    arms: dict[str, dict] = {}
    for arm, overlay in arms_run.items():
        curves = [c for (a, _, _), c in zip(jobs, done) if a == arm]
        steps = [s for s, _ in curves[0]["scalars"][ab.metric]]
        per_step = {str(s): summarise([dict(c["scalars"][ab.metric])[s] for c in curves]) for s in steps}
        extras = {
            k: summarise([c["scalars"][k][-1][1] for c in curves])
            for k in ab.extra_metrics
            if all(k in c["scalars"] for c in curves)
        }
        arms[arm] = {
            "overlay": overlay,
            "runs": curves,
            "per_step": per_step,
            "final": per_step[str(steps[-1])],
            "final_extra": extras,
        }
    steps, val_every = run_length(ab, args)
    result = {
        "key": ab.key,
        "title": ab.title,
        "claim": ab.claim,
        "metric": ab.metric,
        "higher_is_better": ab.higher_is_better,
        "expect_best": ab.expect_best,
        "arms": arms,
        "verdict": verdict(ab, {a: v["final"] for a, v in arms.items()}) if len(arms) > 1 else "one arm run",
        "wall_seconds": round(time.perf_counter() - start, 1),
        # summed CPU time of the runs / 2: the wall time the ablation takes on an otherwise idle 2-core
        # machine with --jobs 2, whatever else shared the machine while it ran
        "cpu_seconds": round(sum(c["cpu_seconds"] for c in done), 1),
        "jobs": args.jobs,
        "steps": steps,
        "val_every": val_every,
        "seeds": list(args.seeds),
    }
    plot(result, out / f"{ab.key}.png")
    return result


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a dev extra; the JSON and the table are written anyway
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for arm, data in result["arms"].items():
        steps = [int(s) for s in data["per_step"]]
        mean = [data["per_step"][str(s)]["mean"] for s in steps]
        std = [data["per_step"][str(s)]["std"] for s in steps]
        ax.plot(steps, mean, marker="o", label=arm)
        ax.fill_between(
            steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2
        )
    ax.set_xlabel("training step")
    ax.set_ylabel(result["metric"])
    ax.set_title(f"({result['key']}) {result['title']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wall(r: dict) -> str:
    text = f"{r['wall_seconds'] / 60:.1f} min wall (--jobs {r.get('jobs', 1)})"
    if "cpu_seconds" in r:
        text += f"; {r['cpu_seconds'] / 60:.1f} CPU-min"
    return text


def markdown(results: dict, revision: str) -> str:
    lines = [
        "# Toy ablations (issue #13)",
        "",
        f"Written by `benchmarks/ablations.py` (last invocation at git revision `{revision}`; each row's own "
        "revision in its last column). Protocol: docs/ablations.md.",
        "",
        "| # | claim | metric | arm: mean ± std (n) at the last validation | verdict | also at the last validation "
        "| wall | revision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, ab in ABLATIONS.items():
        r = results.get(key)
        if ab.not_run:
            lines.append(f"| {key} | {ab.claim} | - | not run: {ab.not_run} | - | - | - | - |")
        elif r is None:
            lines.append(f"| {key} | {ab.claim} | {ab.metric} | not run yet | - | - | - | - |")
        else:
            cells = "; ".join(
                f"{arm}: {v['final']['mean']:.4f} ± {v['final']['std']:.4f} ({v['final']['n']})"
                for arm, v in r["arms"].items()
            )
            also = "; ".join(
                f"{arm} {name.removeprefix('val/')} {x['mean']:.4g} ± {x['std']:.2g}"
                for arm, v in r["arms"].items()
                for name, x in v.get("final_extra", {}).items()
            )
            lines.append(
                f"| {key} | {r['claim']} | {r['metric']} (step {r['steps']}) | {cells} | {r['verdict']} | "
                f"{also or '-'} | {wall(r)} | `{r.get('revision', '?')[:12]}` |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="ablation keys (default: all with arms)")
    p.add_argument("--arms", nargs="*", default=None, help="run only these arms (tests, quick looks)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: per ablation)")
    p.add_argument("--val-every", type=int, default=None, help="validation interval (default: per ablation)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per run (OMP_NUM_THREADS)")
    p.add_argument(
        "--jobs", type=int, default=2, help="runs side by side (default 2: one single-threaded run per core)"
    )
    p.add_argument("--data", type=Path, default=REPO / "data" / "toy")
    p.add_argument(
        "--frame-stride",
        type=int,
        default=None,
        help="source-frame step of every run (default: the configs'; 1 for data with clips under 17 frames)",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ablations")
    args = p.parse_args(argv)
    unknown = [k for k in (args.only or []) if k not in ABLATIONS]
    if unknown:
        p.error(f"unknown ablation {unknown}; expected some of {sorted(ABLATIONS)}")
    keys = args.only or [k for k, ab in ABLATIONS.items() if not ab.not_run]
    skipped = [k for k in keys if ABLATIONS[k].not_run]
    for k in skipped:
        print(f"[ablations] {k}: not run ({ABLATIONS[k].not_run})", flush=True)
    if not (args.data / "manifest.jsonl").is_file():
        raise SystemExit(f"error: no toy dataset at {args.data} (run `make data`)")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {}
    results = dict(previous.get("ablations", {}))
    revision = git_revision()
    for k in keys:
        if ABLATIONS[k].not_run:
            continue
        results[k] = {**run_ablation(ABLATIONS[k], args, args.out), "revision": revision}
    payload = {"revision": revision, "ablations": results}
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, json_path)  # never a half-written results file
    md = args.out / "results.md"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(markdown(results, revision))
    os.replace(tmp, md)
    print(f"[ablations] wrote {json_path} and {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
