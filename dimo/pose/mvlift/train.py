"""``python -m dimo.pose.mvlift.train`` (``make train-mvlift``): MVLift's four stages at toy scale.

1. ``fit`` of ``experiments/mvlift_stage1.yaml`` (line-conditioned 2D diffusion) -> ``OUT/line_diffusion``;
2. ``fit`` of ``experiments/mvlift_stage2.yaml`` (multi-view optimisation, prior = step 1's folder)
   -> ``RUN/views6.safetensors``;
3. :func:`dimo.pose.mvlift.fit.make_synthetic` (triangulate, fit the skeleton, reproject to 4 views)
   -> ``RUN/synthetic.safetensors``;
4. ``fit`` of ``experiments/mvlift_stage4.yaml`` (multi-view 2D diffusion) -> ``OUT/multiview_diffusion``.

Each ``fit`` goes through the real CLI (:func:`dimo.cli.run_lightning`) with the stage's YAML plus the
paths above and any ``--stageN KEY=VALUE`` overrides (e.g. ``--stage1 trainer.max_steps=10``). The wall
time of every stage, the machine's load average and the final metrics go to ``OUT/report.json``.
Only 2D enters training: the stage-1/2 data are 2D sequences, stage 3 reads stage 2's 2D views.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["main", "train_pipeline"]

EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"


def _metrics(trainer) -> dict[str, float]:
    return {
        k: round(float(v), 5)
        for k, v in trainer.callback_metrics.items()
        if torch.is_tensor(v) and v.numel() == 1
    }


def _fit(config: Path, run: Path, name: str, extra: Sequence[str]):
    from dimo.cli import run_lightning

    args = [
        "fit",
        "--config",
        str(config),
        f"--trainer.default_root_dir={run / name}",
        f"--trainer.logger.init_args.save_dir={run}",
        "--trainer.enable_progress_bar=false",
        *[f"--{kv}" for kv in extra],
    ]
    # the stage's arguments are all in `args`: hide this command's own argv from LightningCLI (it warns)
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return run_lightning(args)
    finally:
        sys.argv = argv


def train_pipeline(
    out: str | os.PathLike,
    run: str | os.PathLike,
    overrides: dict[str, Sequence[str]] | None = None,
    experiments: str | os.PathLike = EXPERIMENTS,
    fit_iters: int = 150,
    log=print,
) -> dict:
    """Run the four stages (module docstring); returns the report (also written to ``out/report.json``)."""

    from safetensors.torch import load_file, save_file

    from dimo.pose.mvlift.fit import make_synthetic

    out, run, exp = Path(out).resolve(), Path(run).resolve(), Path(experiments)
    over = {k: list(v) for k, v in (overrides or {}).items()}
    out.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    report: dict = {"threads": torch.get_num_threads(), "load_average_start": os.getloadavg(), "stages": {}}
    start = time.perf_counter()

    t0 = time.perf_counter()
    cli = _fit(exp / "mvlift_stage1.yaml", run, "stage1", over.get("stage1", []))
    cli.model.net.save_pretrained(out / "line_diffusion")
    report["stages"]["1_line_diffusion"] = {"seconds": round(time.perf_counter() - t0, 1),
                                           "steps": cli.trainer.global_step, **_metrics(cli.trainer)}  # fmt: skip
    log(f"stage 1: {report['stages']['1_line_diffusion']}")

    t0 = time.perf_counter()
    views_file = run / "views6.safetensors"
    cli = _fit(
        exp / "mvlift_stage2.yaml", run, "stage2",
        [f"model.init_args.prior={out / 'line_diffusion'}", f"model.init_args.out={views_file}", *over.get("stage2", [])],
    )  # fmt: skip
    report["stages"]["2_view_optimisation"] = {"seconds": round(time.perf_counter() - t0, 1),
                                              "steps": cli.trainer.global_step, "sequences": int(cli.model.views.shape[0]),
                                              **_metrics(cli.trainer)}  # fmt: skip
    log(f"stage 2: {report['stages']['2_view_optimisation']}")

    t0 = time.perf_counter()
    v = load_file(views_file)
    synth = make_synthetic(v["views6"], v["conf"], v["R"], v["t"], fit_iters=fit_iters)
    synth_file = run / "synthetic.safetensors"
    save_file({k: synth[k].contiguous() for k in ("views2d", "R", "t")}, synth_file)
    report["stages"]["3_synthetic_data"] = {
        "seconds": round(time.perf_counter() - t0, 1),
        "sequences": int(synth["views2d"].shape[0]),
        "fit_residual_mean": round(float(synth["residual"].mean()), 5),
    }
    log(f"stage 3: {report['stages']['3_synthetic_data']}")

    t0 = time.perf_counter()
    cli = _fit(
        exp / "mvlift_stage4.yaml",
        run,
        "stage4",
        [f"data.init_args.path={synth_file}", *over.get("stage4", [])],
    )
    cli.model.net.save_pretrained(out / "multiview_diffusion")
    report["stages"]["4_multiview_diffusion"] = {"seconds": round(time.perf_counter() - t0, 1),
                                                "steps": cli.trainer.global_step, **_metrics(cli.trainer)}  # fmt: skip
    log(f"stage 4: {report['stages']['4_multiview_diffusion']}")

    report["seconds_total"] = round(time.perf_counter() - start, 1)
    report["load_average_end"] = os.getloadavg()
    report["date"] = time.strftime("%Y-%m-%d")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dimo.pose.mvlift.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("pretrained/toy-mvlift"))
    p.add_argument("--run", type=Path, default=Path("runs/mvlift"), help="logs, checkpoints, stage 2/3 data")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: small ops, shared machine)")
    for s in ("stage1", "stage2", "stage4"):
        p.add_argument(
            f"--{s}", action="append", default=[], metavar="KEY=VALUE", help=f"override for the {s} fit"
        )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rep = train_pipeline(args.out, args.run, {s: getattr(args, s) for s in ("stage1", "stage2", "stage4")})
    print(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
