"""Data pipeline throughput: ViewRichDataModule vs raw PyAV decoding of the very same frames.

The DataModule's stream is deterministic, so the frames it decodes are known: one pass records every
``read_frames`` call it makes (path, frame indices, size); the baseline replays exactly those calls
in one process with nothing else (no sample assembly, motion loading, collation or workers). The
DataModule is then timed over the same batches at ``num_workers`` 0, 1 and 2 (persistent workers,
warm: the first epoch is not timed). ``ratio`` = DataModule seconds / raw seconds for the same
frames; the goal is <= 1.15 (under 15% overhead) at ``num_workers=2``. Augmentation is off in the
timed rows (it is model-side work the raw decode does not do); one extra row shows its cost.

``python benchmarks/bench_data.py [--profile cpu|gpu]`` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT_DEFAULT = Path("data/toy")


def _dataset_root(tmp: Path) -> Path:
    if (ROOT_DEFAULT / "manifest.jsonl").is_file():
        return ROOT_DEFAULT
    from dimo.data.synth import SynthConfig, synthesize

    root = tmp / "toy"
    synthesize(root, SynthConfig())
    return root


def _make_dm(root: Path, workers: int, batches: int, augment: bool, cfg: dict):
    from dimo.data.augment import AugmentConfig
    from dimo.data.datamodule import ViewRichDataModule

    dm = ViewRichDataModule(
        root=root,
        num_workers=workers,
        persistent_workers=True,
        batches_per_epoch=batches,
        augment=AugmentConfig(enabled=augment),
        synthesize_if_missing=False,
        log_preview=False,
        seed=0,
        **cfg,
    )
    dm.setup("fit")
    return dm


def _record_reads(root: Path, batches: int, cfg: dict) -> list[tuple]:
    """The read_frames calls the DataModule makes for its first ``batches`` batches."""

    import dimo.data.dataset as ds

    calls: list[tuple] = []
    original = ds.read_frames

    def spy(path, indices, size=None, mode="center"):
        calls.append((path, list(indices), size, mode))
        return original(path, indices, size, mode)

    ds.read_frames = spy
    try:
        dm = _make_dm(root, 0, batches, False, cfg)
        for _ in dm.train_dataloader():
            pass
    finally:
        ds.read_frames = original
    return calls


def _time_raw(calls: list[tuple]) -> float:
    from dimo.data.video import read_frames

    start = time.perf_counter()
    for path, indices, size, mode in calls:
        read_frames(path, indices, size, mode)
    return time.perf_counter() - start


def _time_dm(dm, warm_epochs: int = 1) -> float:
    loader = dm.train_dataloader()
    for _ in range(warm_epochs):  # start the (persistent) workers, fill caches
        for _ in loader:
            pass
    start = time.perf_counter()
    for batch in loader:
        dm.on_before_batch_transfer(batch, 0)
    return time.perf_counter() - start


def run(profile: str = "cpu") -> list[dict]:
    """Benchmark rows (name, setting, value, unit, median_s, repeats, ratio, baseline, goal)."""

    import torch

    if profile not in ("cpu", "gpu"):
        raise ValueError(f"profile must be 'cpu' or 'gpu', got {profile!r}")
    repeats = 3
    batches = 12 if profile == "cpu" else 48
    cfg = {
        "task": "3dimo",
        "num_frames": 8,
        "frame_stride": 2,
        "height": 64,
        "width": 64,
        "batch_size": 4,
        "cross_view": 0.5,
    }
    rows: list[dict] = []
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = _dataset_root(Path(tmp))
        calls = _record_reads(root, batches, cfg)
        frames = sum(len(c[1]) for c in calls)
        samples = batches * cfg["batch_size"]
        setting = f"3dimo T={cfg['num_frames']} {cfg['height']}x{cfg['width']} B={cfg['batch_size']} x {batches} batches"
        configs = ((0, False), (1, False), (2, False), (2, True))
        dms = [_make_dm(root, w, batches, aug, cfg) for w, aug in configs]
        for dm in dms:  # start persistent workers, fill caches
            _time_dm(dm, warm_epochs=1)
        # interleave the measurements so load changes on a shared machine hit every row alike
        raw_s, dm_s = [], [[] for _ in configs]
        for _ in range(repeats):
            raw_s.append(_time_raw(calls))
            for times, dm in zip(dm_s, dms):
                times.append(_time_dm(dm, warm_epochs=0))
        raw = statistics.median(raw_s)
        rows.append(
            dict(name="data/raw_pyav_decode", setting=f"{setting}, 1 process", value=frames / raw, unit="frames/s",
                 median_s=raw, repeats=repeats, ratio=None, baseline=None, goal=None)
        )  # fmt: skip
        for (workers, augment), times in zip(configs, dm_s):
            secs = statistics.median(times)
            tag = f"num_workers={workers}" + (", augment on" if augment else "")
            goal = "<= 1.15" if workers == 2 and not augment else None
            common = dict(
                median_s=secs, repeats=repeats, ratio=secs / raw, baseline="data/raw_pyav_decode", goal=goal
            )
            for name, unit, count in (
                ("data/datamodule_frames", "frames/s", frames),
                ("data/datamodule_clips", "clips/s", samples),
            ):
                rows.append(
                    dict(name=name, setting=f"{setting}, {tag}", value=count / secs, unit=unit, **common)
                )
        # num_workers scaling (augmentation off): frames/s per worker count, drawn in the scaling plot
        scaling = [(w, frames / statistics.median(t)) for (w, aug), t in zip(configs, dm_s) if not aug]
        rows.append(
            dict(
                name="data/datamodule_frames vs num_workers",
                setting=f"{setting}, num_workers {[w for w, _ in scaling]}, {os.cpu_count()} cpus",
                value=scaling[-1][1] / scaling[0][1],
                unit="x speed-up at max workers",
                curve={"x": [w for w, _ in scaling], "y": [f for _, f in scaling], "xlabel": "num_workers",
                       "ylabel": "DataModule frames/s"},
            )
        )  # fmt: skip
        del dms
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu", choices=("cpu", "gpu"))
    args = p.parse_args()
    print(json.dumps(run(args.profile), indent=1))


if __name__ == "__main__":
    main()
