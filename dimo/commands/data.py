"""``python -m dimo.cli data {synth,validate,preview} ...``: build, check and look at datasets.

* ``synth --out DIR [--seed N --clips-per-source N --frames N --size H W --force]`` builds the
  toy-human dataset (skips when ``DIR`` already has a manifest, unless ``--force``);
* ``validate ROOT [--no-decode]`` checks every record and file, prints a summary table and the
  problems; exit status 1 when there are problems;
* ``preview ROOT --out grid.png [--task 3dimo|hvg]`` writes the grid the DataModule logs to TensorBoard.
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
    pr = sub.add_parser("preview", help="write a PNG grid of one batch")
    pr.add_argument("root", type=Path)
    pr.add_argument("--out", type=Path, default=Path("runs/data_preview.png"))
    pr.add_argument("--task", choices=("3dimo", "hvg"), default="3dimo")
    pr.add_argument("--batch-size", type=int, default=4)
    pr.add_argument("--cross-view", type=float, default=0.5)
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


def _preview(args: argparse.Namespace) -> int:
    from dimo.data.augment import AugmentConfig
    from dimo.data.datamodule import ViewRichDataModule
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
    batch = dm.on_before_batch_transfer(batch, 0)
    path = save_png(batch_grid(batch), args.out)
    print(f"wrote {path}: {[f'{s}/{t}' for s, t in zip(batch['source'], batch['task'])]}")
    return 0


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    return {"synth": _synth, "validate": _validate, "preview": _preview}[args.cmd](args)
