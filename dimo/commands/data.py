"""``python -m dimo.cli data {synth,import,validate,preview,optimize,cache,keypoints,label} ...``: build, import, check and look at datasets.

* ``synth --out DIR [--seed N --clips-per-source N --frames N --size H W --force]`` builds the
  toy-human dataset (skips when ``DIR`` already has a manifest, unless ``--force``);
* ``validate ROOT [--no-decode]`` checks every record and file, prints a summary table and the
  problems; exit status 1 when there are problems;
* ``import videos|multiview|renders|mvhumannet SRC --out ROOT`` converts your own data (layouts in
  ``docs/data.md``), validates every clip it writes and reports what it could not use;
* ``optimize ROOT --out DIR_OR_URL [--task --num-frames --size ...]`` writes litdata streaming shards
  of decoded sample windows (``dimo.data.shards``) that the DataModule reads with ``shards:``;
* ``cache --config <training configs> --out DIR`` pre-encodes the frozen VAE latents of fixed windows
  and the prompts' text embeddings (Lightning predict, sharded over devices) for 3DiMo training from
  the cache (``dimo.data.latent_cache``);
* ``keypoints ROOT [--detector DIR --overwrite]`` runs a 2D keypoint detector (``dimo.pose``) over every view
  and records the ``keypoints2d`` files in the manifest;
* ``label ROOT [--fov-deg F]`` lifts the keypoints of clips without motion to pseudo 3D motion
  (``dimo.pose.label``; manifest flags ``pseudo``);
* ``preview ROOT --out grid.png [--task 3dimo|hvg]`` writes the grid the DataModule logs to TensorBoard;
  ``--clips N`` / ``--clip ID`` instead draw 2D keypoints and bone maps over the frames of clips.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimo data", description="Build, validate and preview datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="build the toy-human dataset")
    s.add_argument("--out", type=Path, default=Path("data/toy"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--clips-per-source", type=int, default=None, help="internet, ue5 and multiview clips each"
    )
    s.add_argument("--frames", type=int, default=None, help="frames per clip")
    s.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None, help="stored video size")
    s.add_argument("--fps", type=float, default=None)
    s.add_argument("--force", action="store_true", help="rebuild when the dataset exists")
    v = sub.add_parser("validate", help="check every record and file of a dataset")
    v.add_argument("root", type=Path)
    v.add_argument("--no-decode", action="store_true", help="open videos without decoding every frame")
    im = sub.add_parser("import", help="import your own videos or calibrated captures (docs/data.md)")
    isub = im.add_subparsers(dest="kind", required=True)
    iv = isub.add_parser("videos", help="a folder of single-view videos (+ sidecars) -> internet clips")
    iv.add_argument("src", type=Path)
    iv.add_argument(
        "--prompt",
        default=None,
        help="camera prompt for videos without a .prompt.txt sidecar (with --captioner: for clips whose "
        "answer is not a camera prompt)",
    )
    iv.add_argument(
        "--captioner",
        type=Path,
        default=None,
        help="local Qwen2-VL / Qwen2.5-VL folder: camera prompts for videos without a .prompt.txt sidecar",
    )
    iv.add_argument("--model-dir", type=Path, default=None, help="SMPL-X model folder: also write 3D joints")
    imv = isub.add_parser("multiview", help="calibrated captures in the generic layout -> multiview clips")
    imv.add_argument("src", type=Path)
    imv.add_argument("--convention", choices=("world_to_camera", "camera_to_world"), default=None,
                     help="extrinsics convention (overrides cameras.json)")  # fmt: skip
    imv.add_argument("--source", choices=("multiview", "ue5"), default="multiview")
    imv.add_argument("--fps", type=float, default=None, help="frame rate of image folders")
    imv.add_argument("--model-dir", type=Path, default=None, help="SMPL-X model folder: also write 3D joints")
    ir = isub.add_parser(
        "renders", help="rendered trajectories with known per-frame cameras (UE5/Blender) -> ue5 clips"
    )
    ir.add_argument("src", type=Path)
    ir.add_argument("--convention", choices=("world_to_camera", "camera_to_world"), default=None,
                    help="extrinsics convention (overrides metadata.json)")  # fmt: skip
    ir.add_argument("--fps", type=float, default=None, help="frame rate of image folders")
    ir.add_argument("--model-dir", type=Path, default=None, help="SMPL-X model folder: also write 3D joints")
    imh = isub.add_parser("mvhumannet", help="MVHumanNet outfit folders (native layout) -> multiview clips")
    imh.add_argument("src", type=Path)
    imh.add_argument("--image-dir", default="images_lr")
    imh.add_argument("--image-scale", type=float, default=0.5, help="image size / calibration size")
    imh.add_argument("--fps", type=float, default=5.0)
    imh.add_argument("--camera-scale", type=float, default=None, help="instead of camera_scale.pkl")
    imh.add_argument("--max-frames", type=int, default=None)
    for q in (iv, imv, ir, imh):
        q.add_argument("--out", type=Path, required=True, help="dataset root to write")
        q.add_argument("--overwrite", action="store_true", help="replace an existing manifest in --out")
    for q in (iv, imv, ir):
        q.add_argument("--labels", choices=("pseudo", "gt"), default="pseudo" if q is iv else "gt",
                       help="label flag of imported motion")  # fmt: skip
        q.add_argument("--fix", choices=("auto", "never"), default="auto",
                       help="re-encode VFR/rotated/odd-size videos (auto) or report them (never)")  # fmt: skip
    op = sub.add_parser("optimize", help="write litdata streaming shards of decoded sample windows")
    op.add_argument("root", type=Path, nargs="+", help="dataset root(s) with manifest.jsonl")
    op.add_argument("--out", required=True, help="output folder or object-store URL (s3://...)")
    op.add_argument("--task", choices=("3dimo", "hvg"), default="3dimo")
    op.add_argument("--num-frames", type=int, default=16)
    op.add_argument("--frame-stride", type=int, default=1)
    op.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(256, 256))
    op.add_argument("--crop", choices=("center", "resize"), default="center")
    op.add_argument("--num-views", type=int, default=4, help="HVG views per sample")
    op.add_argument(
        "--window-step", type=int, default=None, help="frames between window starts (default: span)"
    )
    op.add_argument("--workers", type=int, default=1)
    op.add_argument("--chunk-bytes", default="64MB")
    op.add_argument("--overwrite", action="store_true")
    ca = sub.add_parser(
        "cache", help="pre-encode VAE latents and text embeddings for 3DiMo (Lightning predict)"
    )
    ca.add_argument(
        "--config", action="append", required=True, help="the training run's config files, in order"
    )
    ca.add_argument("--out", type=Path, required=True, help="cache folder (safetensors shards + index.json)")
    ca.add_argument("--window-step", type=int, default=None,
                    help="frames between cached window starts (default: the window span; 1 = every start)")  # fmt: skip
    ca.add_argument("--batch-size", type=int, default=4)
    ca.add_argument("--num-workers", type=int, default=0)
    ca.add_argument("--accelerator", default=None, help="default: the config's trainer.accelerator")
    ca.add_argument("--devices", default=None, help="default: the config's trainer.devices")
    ca.add_argument("--num-nodes", type=int, default=None)
    ca.add_argument("--overwrite", action="store_true")
    kp = sub.add_parser(
        "keypoints", help="detect 2D keypoints for every view and record them in the manifest"
    )
    kp.add_argument("root", type=Path)
    kp.add_argument("--detector", type=Path, default=Path("pretrained/toy-detector"),
                    help="detector folder: the toy detector (make toy-detector) or a ViTPose save_pretrained folder")  # fmt: skip
    kp.add_argument("--overwrite", action="store_true", help="redo views that already name a keypoint file")
    lb = sub.add_parser(
        "label", help="pseudo 3D motion (flag pseudo) for clips without motion, lifted from keypoints2d"
    )
    lb.add_argument("root", type=Path)
    lb.add_argument(
        "--fov-deg", type=float, default=40.0, help="vertical field of view assumed for uncalibrated views"
    )
    lb.add_argument("--iters", type=int, default=300, help="optimisation steps of the per-frame fit")
    pr = sub.add_parser("preview", help="write a PNG grid of one batch")
    pr.add_argument("root", type=Path)
    pr.add_argument("--out", type=Path, default=Path("runs/data_preview.png"))
    pr.add_argument("--task", choices=("3dimo", "hvg"), default="3dimo")
    pr.add_argument("--batch-size", type=int, default=4)
    pr.add_argument("--cross-view", type=float, default=0.5)
    pr.add_argument(
        "--clip", action="append", default=None, help="draw labels over this clip's frames (repeatable)"
    )
    pr.add_argument(
        "--clips", type=int, default=None, help="draw labels over the frames of the first N clips"
    )
    pr.add_argument("--frames", type=int, default=4, help="frames per view in clip overlays")
    return p


def _synth(args: argparse.Namespace) -> int:
    from dimo.commands import fail
    from dimo.data.manifest import MANIFEST_NAME
    from dimo.data.synth import SynthConfig, synthesize
    from dimo.safe_io import check_new_output

    if (args.out / MANIFEST_NAME).is_file() and not args.force:
        print(f"{args.out} already has {MANIFEST_NAME}; nothing to do (--force rebuilds)")
        return 0
    for name in ("clips_per_source", "frames", "fps"):
        value = getattr(args, name)
        if value is not None and not (value > 0 and value < float("inf")):
            return fail(ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}"))
    if args.size is not None and (min(args.size) < 2 or any(s % 2 for s in args.size)):
        return fail(
            ValueError(f"--size must be even and >= 2 (H.264 video), got {args.size[0]} {args.size[1]}")
        )
    try:
        check_new_output(args.out, overwrite=True, what="dataset folder")
    except OSError as err:
        return fail(err)
    kw = {"seed": args.seed}
    if args.clips_per_source is not None:
        kw.update(
            num_internet=args.clips_per_source,
            num_ue5=args.clips_per_source,
            num_multiview=args.clips_per_source,
        )
    if args.frames is not None:
        kw["num_frames"] = args.frames
    if args.size is not None:
        kw["height"], kw["width"] = args.size
    if args.fps is not None:
        kw["fps"] = args.fps
    start = time.perf_counter()
    records = synthesize(args.out, SynthConfig(**kw), overwrite=args.force)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(
        f"wrote {len(records)} clips to {args.out} ({size / 1e6:.2f} MB) in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dimo.commands import fail
    from dimo.data.validate import print_report, validate_root

    try:
        report = validate_root(args.root, decode=not args.no_decode)
    except OSError as err:  # no manifest, unreadable root
        return fail(err)
    print_report(report)
    return 0 if report.ok else 1


def _import(args: argparse.Namespace) -> int:
    from dimo.commands import fail
    from dimo.data import importers as imp
    from dimo.geometry.body_models import BodyModelFileError
    from dimo.safe_io import OutputError

    start = time.perf_counter()
    try:
        if args.kind == "videos":
            captioner = imp.VLMCaptioner(args.captioner) if args.captioner is not None else None
            report = imp.import_videos(
                args.src, args.out, prompt_default=args.prompt, captioner=captioner, labels=args.labels,
                model_dir=args.model_dir, fix=args.fix, overwrite=args.overwrite, log=print,
            )  # fmt: skip
        elif args.kind == "multiview":
            report = imp.import_multiview(
                args.src, args.out, convention=args.convention, source=args.source, fps=args.fps,
                labels=args.labels, model_dir=args.model_dir, fix=args.fix, overwrite=args.overwrite, log=print,
            )  # fmt: skip
        elif args.kind == "renders":
            report = imp.import_renders(
                args.src, args.out, convention=args.convention, fps=args.fps, labels=args.labels,
                model_dir=args.model_dir, fix=args.fix, overwrite=args.overwrite, log=print,
            )  # fmt: skip
        else:
            report = imp.import_mvhumannet(
                args.src, args.out, image_dir=args.image_dir, image_scale=args.image_scale, fps=args.fps,
                camera_scale=args.camera_scale, max_frames=args.max_frames, overwrite=args.overwrite, log=print,
            )  # fmt: skip
    except (imp.ImportError_, OutputError, BodyModelFileError, OSError) as err:
        return fail(err)
    print(
        f"{len(report.records)} clip(s) written to {report.out / 'manifest.jsonl'}, {len(report.skipped)} "
        f"input(s) not used (reasons in {report.out / 'import_report.json'}) in {time.perf_counter() - start:.1f} s"
    )
    return 0 if report.records else 1


def _optimize(args: argparse.Namespace) -> int:
    from dimo.commands import fail
    from dimo.data.dataset import SampleSpec
    from dimo.data.shards import ShardError, optimize_root

    if min(args.num_frames, args.frame_stride, *args.size, args.num_views, args.workers) < 1:
        return fail(
            ValueError("--num-frames, --frame-stride, --size, --num-views and --workers must be >= 1")
        )
    spec = SampleSpec(args.task, args.num_frames, args.frame_stride, args.size[0], args.size[1],
                      args.num_views, args.crop)  # fmt: skip
    start = time.perf_counter()
    try:
        summary = optimize_root(args.root, args.out, spec, args.window_step, args.workers, args.chunk_bytes,
                                args.overwrite)  # fmt: skip
    except (ShardError, OSError, ValueError) as err:
        return fail(err)
    for clip, reason in summary["skipped"]:
        print(f"not used: {clip}: {reason}")
    for source, row in summary["sources"].items():
        print(f"{source}: {row['clips']} clips, {row['items']} windows")
    print(
        f"wrote shards to {args.out} in {time.perf_counter() - start:.1f} s; train with --data.init_args.shards={args.out}"
    )
    return 0


def _cache(args: argparse.Namespace) -> int:
    from dimo.commands import fail
    from dimo.data.latent_cache import LatentCacheError, build_latent_cache

    if args.batch_size < 1 or args.num_workers < 0 or (args.window_step is not None and args.window_step < 1):
        return fail(ValueError("--batch-size and --window-step must be >= 1, --num-workers >= 0"))
    devices = args.devices
    if devices is not None and devices.isdigit():
        devices = int(devices)
    start = time.perf_counter()
    try:
        index = build_latent_cache(
            args.config, args.out, args.window_step, args.batch_size, args.num_workers, args.accelerator,
            devices, args.num_nodes, args.overwrite,
        )  # fmt: skip
    except (LatentCacheError, OSError, ValueError) as err:
        return fail(err)
    if index is not None:
        for key, reason in sorted(index["failed"].items()):
            print(f"not encoded: {key}: {reason}")
        print(
            f"wrote {len(index['latents'])} windows and {len(index['texts'])} prompts to {args.out} in "
            f"{time.perf_counter() - start:.1f} s; train with --data.init_args.latent_cache={args.out} "
            "--model.init_args.from_cache=true (experiments/3dimo_from_cache.yaml)"
        )
    return 0


def _preview_clips(args: argparse.Namespace) -> int:
    from dimo.commands import fail
    from dimo.data.manifest import load_manifest
    from dimo.data.preview import _stack, clip_overlay, save_png

    try:
        records, _ = load_manifest(args.root)
    except OSError as err:
        return fail(err)
    by_id = {r.id: r for r in records}
    if args.clip:
        unknown = [c for c in args.clip if c not in by_id]
        if unknown:
            return fail(ValueError(f"no clip {unknown[0]!r} in {args.root / 'manifest.jsonl'}"))
        chosen = [by_id[c] for c in args.clip]
    else:
        chosen = records[: args.clips]
    images, failed = [], []
    for rec in chosen:
        try:
            images.append(clip_overlay(rec, max_frames=args.frames))
        except Exception as err:  # noqa: BLE001 - a broken clip is reported, the others drawn
            failed.append(f"{rec.id}: {err}")
    for line in failed:
        print(f"could not draw {line}")
    if not images:
        return fail(ValueError(f"no clip could be drawn ({failed[0] if failed else 'none chosen'})"))
    path = save_png(_stack(images), args.out, scale=1)
    print(
        f"wrote {path}: {len(images)} clip(s); green = 2D keypoints, red = projected 3D joints, tint = bone normals"
    )
    return 0 if not failed else 1


def _preview(args: argparse.Namespace) -> int:
    if args.clip or args.clips:
        return _preview_clips(args)
    from dimo.data.augment import AugmentConfig
    from dimo.data.datamodule import ViewRichDataModule, to_model_batch
    from dimo.data.preview import batch_grid, save_png

    dm = ViewRichDataModule(
        root=args.root,
        task=args.task,
        batch_size=args.batch_size,
        cross_view=args.cross_view,
        augment=AugmentConfig(),
        synthesize_if_missing=False,
        num_views=3,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = to_model_batch(dm.on_before_batch_transfer(batch, 0))  # the loader's pixels are uint8
    path = save_png(batch_grid(batch), args.out)
    print(f"wrote {path}: {[f'{s}/{t}' for s, t in zip(batch['source'], batch['task'])]}")
    return 0


def _keypoints(args: argparse.Namespace) -> int:
    from dimo.commands import fail
    from dimo.data.keypoints import KeypointError
    from dimo.data.video import VideoError
    from dimo.pose.detect import detect_dataset, load_detector
    from dimo.pose.toy_detector import DetectorError

    try:
        start = time.perf_counter()
        n = detect_dataset(
            args.root, load_detector(args.detector), overwrite=args.overwrite, log=lambda _: None
        )
    except (DetectorError, KeypointError, VideoError, FileNotFoundError) as err:
        return fail(err)
    print(f"wrote {n} keypoint file(s) under {args.root} in {time.perf_counter() - start:.1f} s")
    return 0


def _label(args: argparse.Namespace) -> int:
    from dimo.commands import fail
    from dimo.data.keypoints import KeypointError
    from dimo.pose.label import label_dataset

    if not 0 < args.fov_deg < 180 or args.iters < 1:
        return fail(
            ValueError(f"--fov-deg must be in (0, 180) and --iters >= 1, got {args.fov_deg} and {args.iters}")
        )
    try:
        start = time.perf_counter()
        n = label_dataset(args.root, fov_deg=args.fov_deg, iters=args.iters, log=lambda _: None)
    except (KeypointError, ValueError, FileNotFoundError) as err:
        return fail(err)
    print(f"labelled {n} clip(s) under {args.root} with pseudo motion in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    commands = {
        "synth": _synth,
        "import": _import,
        "validate": _validate,
        "preview": _preview,
        "optimize": _optimize,
        "cache": _cache,
        "keypoints": _keypoints,
        "label": _label,
    }
    return commands[args.cmd](args)
