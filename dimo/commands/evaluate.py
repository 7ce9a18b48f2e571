"""``python -m dimo.cli evaluate``: score generated videos against references, write metrics.json + .md.

Example::

    python -m dimo.cli evaluate --generated runs/gen --reference data/ref \\
        --metrics fid fvd lpips_alex ssim psnr --weights-dir ~/weights --out runs/gen/eval

Settings may also come from ``--config file.yaml`` (keys of :class:`dimo.eval.harness.EvalConfig`);
command-line flags override the file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from dimo.eval.harness import ALL_METRICS

    p = argparse.ArgumentParser(prog="dimo evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--generated", required=True, help="folder of generated videos / frame folders")
    p.add_argument(
        "--reference",
        help="folder of reference items, matched by name (not needed when only pose metrics are asked for)",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        help=f"metrics (default: fid fvd fid_vid lpips_alex ssim psnr l1); any of {', '.join(ALL_METRICS)}",
    )
    p.add_argument(
        "--config", action="append", default=[], help="YAML file(s) of EvalConfig keys (later files override)"
    )
    p.add_argument(
        "--out",
        help="output folder for metrics.json / metrics.md / per_video.csv (default: GENERATED-eval, beside "
        "GENERATED so that a re-run does not score its own output)",
    )
    p.add_argument(
        "--weights-dir", dest="weights_dir", help="folder of weight files (default $DIMO_WEIGHTS_DIR)"
    )
    p.add_argument("--fvd-frames", dest="fvd_frames", type=int)
    p.add_argument("--fvd-stride", dest="fvd_stride", type=int)
    p.add_argument("--fvd-format", dest="fvd_format", choices=["torchscript", "state_dict"])
    p.add_argument("--fvd-preprocess", dest="fvd_preprocess", choices=["internal", "external"])
    p.add_argument("--fid-vid-duration", dest="fid_vid_duration", type=int)
    p.add_argument(
        "--reference-stats",
        dest="reference_stats",
        help="folder of <metric>.npz reference statistics (read/written)",
    )
    p.add_argument("--allow-rank-deficient", dest="allow_rank_deficient", action="store_const", const=True)
    p.add_argument(
        "--grid", action="store_const", const=True, help="items are per-view folders (fvd_v, fvd_f)"
    )
    p.add_argument("--device")
    p.add_argument("--max-frames", dest="max_frames", type=int)
    p.add_argument("--videomae-weights", dest="videomae_weights", help="folder of the VideoMAE-v2 weights")
    p.add_argument(
        "--cache-dir", dest="cache_dir", help="per-video feature cache (default OUT/feature_cache)"
    )
    p.add_argument("--no-cache", dest="no_cache", action="store_true", help="do not cache features")
    p.add_argument(
        "--bootstrap",
        type=int,
        help="half-sample draws (videos without replacement) for the FID/FVD intervals (0: none)",
    )
    p.add_argument("--seed", type=int, help="seed of the half-sample draws")
    g = p.add_argument_group("pose metrics (mpjpe, pa_mpjpe, t_root; dimo.eval.motion)")
    g.add_argument(
        "--pose-detector", dest="pose_detector", help="2D keypoint detector folder (toy or ViTPose)"
    )
    g.add_argument("--lifter", help="lifting method by name: smplify (default), free3d, fixed_depth, ...")
    g.add_argument("--lifter-folder", help="folder of a trained lifter (e.g. a Free3D folder)")
    g.add_argument(
        "--reference-motion",
        dest="reference_motion",
        help="dataset folder or folder of <item>.npz (default: the driving clip named by each item's sidecar)",
    )
    g.add_argument(
        "--no-pose-on-driving", dest="pose_on_driving", action="store_const", const=False,
        help="do not also score detector + lifter on the driving videos",
    )  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Sequence[str]) -> int:
    import shlex

    from omegaconf import OmegaConf

    from dimo.commands import fail
    from dimo.eval.harness import (
        EvalConfig,
        _is_rank_zero,
        init_distributed_from_env,
        run_evaluation,
        to_markdown,
        write_results,
    )
    from dimo.safe_io import check_new_output

    args = build_parser().parse_args(list(argv))
    gen_dir = Path(args.generated)
    out = Path(args.out) if args.out else gen_dir.parent / f"{gen_dir.resolve().name}-eval"
    started = False
    rank0 = True
    try:
        merged = OmegaConf.structured(EvalConfig)
        for f in args.config:
            merged = OmegaConf.merge(merged, OmegaConf.load(f))
        overrides = {
            f.name: getattr(args, f.name)
            for f in fields(EvalConfig)
            if getattr(args, f.name, None) is not None
        }
        merged = OmegaConf.merge(merged, overrides)
        if args.lifter_folder is not None:
            merged = OmegaConf.merge(merged, {"lifter_options": {"folder": args.lifter_folder}})
        cfg = EvalConfig(**OmegaConf.to_container(merged, resolve=True))
        from dimo.eval.harness import POSE

        if args.reference is None and any(m not in POSE for m in cfg.metrics):
            raise ValueError("--reference is required for metrics other than mpjpe / pa_mpjpe / t_root")
        for name in ("generated", "reference"):
            if getattr(args, name) is not None and not Path(getattr(args, name)).is_dir():
                raise FileNotFoundError(f"--{name} {getattr(args, name)} is not a folder")
        if args.no_cache:
            cfg.cache_dir = None
        elif cfg.cache_dir is None:
            cfg.cache_dir = str(out / "feature_cache")
        check_new_output(out / "metrics.json", overwrite=True, what="metrics")  # before any featurising
        started = init_distributed_from_env()  # torchrun / srun: shard the items over the ranks
        report = run_evaluation(args.generated, args.reference, cfg, progress=args.progress)
        extra = {
            "generated": str(args.generated),
            "reference": None if args.reference is None else str(args.reference),
            "command": shlex.join(["python", "-m", "dimo.cli", "evaluate", *argv]),
        }
        write_results(out, report.values, cfg, extra=extra, report=report)  # rank 0 only
        rank0 = _is_rank_zero()  # before the process group is destroyed
    except Exception as err:  # noqa: BLE001 - corrupt items, missing weights, bad config: one line
        return fail(err)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank0:
        sys.stdout.write(to_markdown(report.values, details=report.details))
        sys.stdout.write(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'} and {out / 'per_video.csv'}\n")
    return 0
