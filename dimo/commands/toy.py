"""``python -m dimo.cli toy wan --out DIR``: build a toy pretrained folder (DESIGN.md 3.5, docs/toy.md).

``wan`` trains and writes the Wan2.1-Diffusers-style folder of :mod:`dimo.toy.wan` (VAE, transformer,
text encoder, tokenizer, scheduler). The result is deterministic given ``--seed`` and the software
versions; ``toy_report.json`` in the folder records what was measured (held-out VAE PSNR, times).
An existing folder is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimo toy", description="Build toy pretrained folders.")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wan", help="toy Wan2.1-T2V-Diffusers-style folder")
    w.add_argument("--out", type=Path, default=Path("pretrained/toy-wan2.1"))
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--vae-steps", type=int, default=None)
    w.add_argument("--transformer-steps", type=int, default=None)
    w.add_argument(
        "--vae-from",
        type=Path,
        default=None,
        help="reuse the vae/ of this toy Wan folder and train only the transformer",
    )
    w.add_argument(
        "--refine-decoder",
        action="store_true",
        help="only run the decoder phase on the existing folder's VAE (encoder, latent statistics and "
        "transformer are kept; see dimo.toy.wan.refine_toy_wan_decoder)",
    )
    w.add_argument("--decoder-steps", type=int, default=None)
    w.add_argument(
        "--decoder-window",
        type=int,
        default=None,
        help="frames per decoder-phase window, 1 + 4k (default 17)",
    )
    w.add_argument("--threads", type=int, default=None, help="torch threads (default: 2)")
    w.add_argument(
        "--work", type=Path, default=None, help="folder for the synthesised toy clips (kept and reused)"
    )
    w.add_argument("--force", action="store_true", help="rebuild when the folder exists")
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    if args.cmd == "wan":
        from dimo.toy.wan import ToyWanConfig, build_toy_wan, refine_toy_wan_decoder

        if args.refine_decoder:
            cfg = ToyWanConfig(seed=args.seed)
            if args.decoder_steps is not None:
                cfg.vae_decoder_steps = args.decoder_steps
            if args.decoder_window is not None:
                cfg.vae_decoder_window = args.decoder_window
            if args.threads is not None:
                cfg.threads = args.threads
            report = refine_toy_wan_decoder(args.out, cfg, work=args.work)
            print(json.dumps(report["vae"], indent=1))
            return 0
        if (args.out / "model_index.json").is_file() and not args.force:
            print(f"{args.out} exists (pass --force to rebuild)")
            return 0
        cfg = ToyWanConfig(seed=args.seed)
        if args.vae_steps is not None:
            cfg.vae_steps = args.vae_steps
        if args.transformer_steps is not None:
            cfg.transformer_steps = args.transformer_steps
        if args.decoder_steps is not None:
            cfg.vae_decoder_steps = args.decoder_steps
        if args.threads is not None:
            cfg.threads = args.threads
        report = build_toy_wan(args.out, cfg, work=args.work, vae_from=args.vae_from)
        print(json.dumps({k: report[k] for k in ("vae", "transformer", "total_seconds")}, indent=1))
    return 0
