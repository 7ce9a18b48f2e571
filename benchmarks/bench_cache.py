"""3DiMo training step from the frozen-encoder cache vs online encoding, side by side (toy scale).

Both runs are built by the real CLI from ``experiments/3dimo.yaml`` (toy pretrained Wan folder: its
VAE, text encoder and 4-block transformer) on toy humans rendered at 64x64 (20 frames, 1 clip per
source, all three sources, cross-view 0.5): **online** encodes every batch's target and reference with
the frozen VAE (``latent_cache_size: 0``; the in-memory text cache stays on, as in the toy config),
**cached** adds ``experiments/3dimo_from_cache.yaml`` and reads ``data cache`` output built from the
same configs (the VAE and text encoder are not built). A timed step = next batch from the DataLoader
(``num_workers=0``, so data time counts) + forward + backward + AdamW step; the two runs alternate
step by step, medians over the timed steps after warm-up. ``ratio`` = cached / online step time.
The cache build time (Lightning predict over every 9-frame window, ``window_step`` 11) is its own row.

``python benchmarks/bench_cache.py [--profile cpu|gpu]`` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(profile: str = "cpu") -> list[dict]:
    import torch

    from dimo.cli import run_lightning
    from dimo.data.latent_cache import build_latent_cache
    from dimo.data.synth import SynthConfig, synthesize

    if profile not in ("cpu", "gpu"):
        raise ValueError(f"profile must be 'cpu' or 'gpu', got {profile!r}")
    steps, warmup = (6, 1) if profile == "cpu" else (30, 5)
    accelerator = "gpu" if profile == "gpu" and torch.cuda.is_available() else "cpu"
    base, over = ROOT / "experiments" / "3dimo.yaml", ROOT / "experiments" / "3dimo_from_cache.yaml"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "toy"
        synthesize(root, SynthConfig(num_internet=1, num_ue5=1, num_multiview=1, num_frames=20))
        ov = tmp / "data.yaml"
        ov.write_text(
            f"data:\n  init_args:\n    root: {root}\n    weights: {{internet: 1.0, ue5: 1.0, multiview: 1.0}}\n"
            "    cross_view: 0.5\n    batches_per_epoch: 1000\n    augment: {enabled: false}\n"
        )
        t0 = time.perf_counter()
        index = build_latent_cache(
            [base, ov], tmp / "cache", window_step=11, accelerator=accelerator, devices=1
        )
        build_s = time.perf_counter() - t0
        common = ["--config", str(base), "--config", str(ov), "--trainer.logger=false",
                  f"--trainer.default_root_dir={tmp}"]  # fmt: skip
        online = run_lightning([*common, "--model.init_args.latent_cache_size=0"], run=False)
        cached = run_lightning(
            [*common, "--config", str(over), f"--data.init_args.latent_cache={tmp / 'cache'}"], run=False
        )
        device = torch.device("cuda" if accelerator == "gpu" else "cpu")
        runs = []
        for cli in (online, cached):
            model, dm = cli.model.to(device), cli.datamodule
            model.train()
            dm.setup("fit")
            opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
            runs.append((model, dm, iter(dm.train_dataloader()), opt, []))

        def step(model, dm, it, opt, times, record):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            batch = dm.on_before_batch_transfer(next(it), 0)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            batch = dm.on_after_batch_transfer(batch, 0)  # uint8 pixels -> float in [-1, 1], on the device
            loss = model._losses(batch, torch.Generator(device=device).manual_seed(0))["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if record:
                times.append(time.perf_counter() - t)

        for i in range(warmup + steps):
            for r in runs:
                step(*r, record=i >= warmup)
        t_online, t_cached = (statistics.median(r[4]) for r in runs)
    setting = f"toy Wan (4 blocks x 256), 9 frames 64x64, B=2, {steps} steps, {accelerator}"
    rows.append({"name": "train step, online frozen VAE", "setting": setting, "value": t_online * 1e3,
                 "unit": "ms/step", "median_s": t_online, "repeats": steps})  # fmt: skip
    rows.append({"name": "train step, from latent cache", "setting": setting, "value": t_cached * 1e3,
                 "unit": "ms/step", "median_s": t_cached, "repeats": steps, "ratio": t_cached / t_online,
                 "baseline": "train step, online frozen VAE", "goal": "< 1.0"})  # fmt: skip
    rows.append({"name": "cache build (Lightning predict)", "setting": f"{len(index['latents'])} windows, "
                 f"{len(index['texts'])} prompts, window_step 11", "value": build_s, "unit": "s"})  # fmt: skip
    if accelerator == "cpu":
        from benchmarks.common import not_measured

        rows.append(not_measured("train step ratio, Wan2.1-1.3B 121x480x848", "GPU", "ratio", "no GPU here"))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    args = p.parse_args(argv)
    rows = run(args.profile)
    json.dump(rows, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
