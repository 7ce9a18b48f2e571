"""``python -m dimo.cli export CKPT OUT_DIR``: a trained Lightning checkpoint -> diffusers-style folder.

The folder loads back with ``ThreeDiMoPipeline.from_pretrained(OUT_DIR)`` (or
``python -m dimo.cli generate --pretrained OUT_DIR``) and generates the same frames as the checkpoint.
The run's ``config.yaml`` next to the checkpoint is used to rebuild the networks (``--config`` to
give it explicitly). The folder is written to a temporary sibling and renamed when complete.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimo export", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="Lightning .ckpt written by `dimo.cli fit`")
    p.add_argument(
        "out_dir",
        type=Path,
        help="output folder (must be new or empty, or an earlier export with --overwrite)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at OUT_DIR")
    p.add_argument(
        "--config", type=Path, help="the run's config.yaml (default: found next to the checkpoint)"
    )
    return p


def main(argv: Sequence[str]) -> int:
    from dimo.commands import fail
    from dimo.pipelines.checkpoint import checkpoint_kind, read_checkpoint
    from dimo.pipelines.errors import GenerateError
    from dimo.safe_io import check_new_output

    args = build_parser().parse_args(list(argv))
    try:
        if args.out_dir.exists() and not (args.out_dir / "model_index.json").is_file():
            if not args.out_dir.is_dir() or any(args.out_dir.iterdir()):
                raise GenerateError(
                    f"{args.out_dir} exists and is not an earlier export; expected a new or empty folder"
                )
        elif args.out_dir.exists() and not args.overwrite:
            raise GenerateError(f"{args.out_dir} holds an earlier export; pass --overwrite to replace it")
        empty_dir = args.out_dir.is_dir() and not any(args.out_dir.iterdir())
        check_new_output(args.out_dir, overwrite=args.overwrite or empty_dir, what="export folder")
        kind = checkpoint_kind(read_checkpoint(args.checkpoint))
        if kind == "3dimo":
            from dimo.pipelines.threedimo import ThreeDiMoPipeline

            pipe = ThreeDiMoPipeline.from_checkpoint(args.checkpoint, args.config)
        elif kind == "hvg":
            from dimo.pipelines.hvg import HVGPipeline

            pipe = HVGPipeline.from_checkpoint(args.checkpoint)
        else:
            raise GenerateError(
                f"checkpoint {args.checkpoint} holds an unknown model; expected a 3dimo (ThreeDiMoModule) "
                "or hvg (HVGModule) checkpoint"
            )
        pipe.save_pretrained(args.out_dir)
    except (GenerateError, OSError) as err:
        return fail(err)
    print(f"exported {args.checkpoint} -> {args.out_dir}")
    return 0
