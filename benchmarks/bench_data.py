"""Data pipeline throughput at 256x256 x 16 frames: the DataModule (plain files and litdata shards)
vs a plain PyAV decode loop over the very same frames.

The DataModule's stream is deterministic, so the frames it decodes are known: one pass records every
``read_frames`` call it makes in each timed epoch (path, frame indices, size); the baseline replays
exactly that epoch's reads with a plain PyAV loop (open, seek to the keyframe, decode, convert to RGB
at the sample size; not dimo's reader), in one process, with nothing else (no sample assembly,
motion loading, collation or workers). FFmpeg threading, like for like: the baseline sets
``thread_type = "AUTO"`` and leaves the count to FFmpeg (cores + 1 threads); dimo's reader does
exactly the same in the main process (``num_workers=0``), and in a worker takes its share of the
cores (``dimo.data.video.decode_threads``: 2 workers on 2 cores decode with one thread each). The
DataModule is timed over the same batches at ``num_workers`` 0, 1 and 2 (persistent workers, warm:
the first epoch is not timed), reading the videos and reading ``data optimize`` shards of the same
clips (decoded windows: no decoding at train time; same number of samples and
frames). The DataModule is timed up to model-ready batches: the loader's uint8 batches, its
``on_before_batch_transfer``, the copy to the device (``--profile gpu`` with CUDA: the GPU; else the
CPU, a no-op) and its ``on_after_batch_transfer`` (uint8 -> float32 in [-1, 1], on that device).
``ratio`` = DataModule seconds / raw seconds; the goal is <= 1.15 at ``num_workers=2``. ``ratios``
gives each repeat's ratio (the DataModule epoch over the raw epoch timed just before it), and
``cpu_ratio`` the CPU seconds spent (main process and workers, all threads, from ``/proc``) over the
raw loop's: the work done, which shows where time goes when the machine is shared.
An epoch is 24 batches in the CPU profile (48 on a GPU): the first batches of an epoch wait for the
workers to fill the pipeline (each worker builds its first batch alone), a fixed cost that a short
epoch would charge to the worker rows far beyond its share in training (at 6 batches, about one
batch in six); ``--batches`` sets another length.
Augmentation is off in the timed rows (model-side work the raw decode does not do); one extra row
shows its cost, and one the ordinary DataLoader transfer instead of dimo's reusable shared-memory
slots (``shared_slots=False``, ``dimo/data/transfer.py``). The data are toy humans rendered at
256x256, 24 frames, 2 clips per source.

``python benchmarks/bench_data.py [--profile cpu|gpu] [--batches N]`` prints the rows as JSON; the raw
row notes the 1-minute load average before and after the timed epochs (ratios are measured side by
side, interleaved, but on a loaded machine they still move).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _dataset_root(tmp: Path) -> Path:
    from dimo.data.synth import SynthConfig, synthesize

    root = tmp / "toy256"
    cfg = SynthConfig(num_internet=2, num_ue5=2, num_multiview=2, num_frames=24, height=256, width=256,
                      multiview_cameras=(3, 3), ue5_trajectories=(2, 2))  # fmt: skip
    synthesize(root, cfg)
    return root


def _make_dm(
    root: Path,
    workers: int,
    batches: int,
    augment: bool,
    cfg: dict,
    shards: str | None = None,
    slots: bool = True,
):
    from dimo.data.augment import AugmentConfig
    from dimo.data.datamodule import ViewRichDataModule

    dm = ViewRichDataModule(
        root=root,
        shards=shards,
        num_workers=workers,
        persistent_workers=True,
        batches_per_epoch=batches,
        augment=AugmentConfig(enabled=augment),
        synthesize_if_missing=False,
        log_preview=False,
        seed=0,
        shared_slots=slots,
        **cfg,
    )
    dm.setup("fit")
    return dm


def _record_reads(root: Path, batches: int, cfg: dict, epochs: int) -> list[list[tuple]]:
    """The read_frames calls the DataModule makes in each of its first ``epochs`` epochs of ``batches``
    batches. The stream is endless and deterministic (sample keys drawn in the main process, each
    sample's randomness seeded by its key), so epoch e of any DataModule with the same settings makes
    exactly these reads, whatever its worker count."""

    import dimo.data.dataset as ds

    calls: list[tuple] = []
    original = ds.read_frames

    def spy(path, indices, size=None, mode="center"):
        calls.append((path, list(indices), size, mode))
        return original(path, indices, size, mode)

    ds.read_frames = spy
    per_epoch = []
    try:
        loader = _make_dm(root, 0, batches, False, cfg).train_dataloader()
        for _ in range(epochs):
            calls.clear()
            for _ in loader:
                pass
            per_epoch.append(list(calls))
    finally:
        ds.read_frames = original
    return per_epoch


@contextlib.contextmanager
def _stdout_to_stderr():
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _plain_pyav(path, indices: list[int], size: tuple[int, int]) -> list:
    """The baseline: a plain PyAV loop (seek to the keyframe, decode, RGB at the sample size)."""

    import av

    want, last = set(indices), indices[-1]
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps, tb, start = float(stream.average_rate), float(stream.time_base), stream.start_time or 0
        if indices[0]:
            container.seek(start + int(indices[0] / fps / tb), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            i = round((frame.pts - start) * tb * fps)
            if i in want:
                out.append(frame.reformat(width=size[1], height=size[0], format="rgb24").to_ndarray())
            if i >= last:
                break
    return out


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of these processes (all their threads) so far; None off Linux."""

    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def _time_raw(calls: list[tuple]) -> tuple[float, float | None]:
    """(wall seconds, CPU seconds) of the plain PyAV loop over ``calls``."""

    cpu = _cpu_seconds([os.getpid()])
    start = time.perf_counter()
    for path, indices, size, _mode in calls:
        got = _plain_pyav(path, indices, size)
        assert len(got) == len(indices), (path, indices)
    wall = time.perf_counter() - start
    return wall, None if cpu is None else _cpu_seconds([os.getpid()]) - cpu


def _processes(loader) -> list[int]:
    """This process and the loader's (persistent) worker processes."""

    workers = getattr(getattr(loader, "_iterator", None), "_workers", None) or []  # torch's iterator
    return [os.getpid(), *(w.pid for w in workers)]


def _time_dm(dm, warm_epochs: int = 1, device=None) -> tuple[float, float | None]:
    """(wall seconds, CPU seconds of the main process and the workers) for one epoch of model-ready
    batches: loader, bookkeeping, transfer, uint8 -> float."""

    import torch

    device = device or torch.device("cpu")
    # one DataLoader per DataModule, reused: its persistent workers stay up between epochs as in training
    loader = getattr(dm, "_bench_loader", None) or dm.train_dataloader()
    dm._bench_loader = loader
    for _ in range(warm_epochs):  # start the (persistent) workers, fill caches
        for _ in loader:
            pass
    pids = _processes(loader)
    cpu = _cpu_seconds(pids)
    start = time.perf_counter()
    for batch in loader:
        batch = dm.on_before_batch_transfer(batch, 0)
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        dm.on_after_batch_transfer(batch, 0)  # the pixels' uint8 -> float [-1, 1], on the device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    return wall, None if cpu is None else _cpu_seconds(pids) - cpu


def run(profile: str = "cpu", batches: int | None = None) -> list[dict]:
    """Benchmark rows (name, setting, value, unit, median_s, repeats, ratio, baseline, goal)."""

    import torch

    from dimo.data.dataset import SampleSpec
    from dimo.data.shards import optimize_root

    if profile not in ("cpu", "gpu"):
        raise ValueError(f"profile must be 'cpu' or 'gpu', got {profile!r}")
    repeats = 3
    batches = batches or (24 if profile == "cpu" else 48)
    cfg = {"task": "3dimo", "num_frames": 16, "frame_stride": 1, "height": 256, "width": 256, "batch_size": 2,
           "cross_view": 0.5}  # fmt: skip
    rows: list[dict] = []
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = _dataset_root(Path(tmp))
        shards = str(Path(tmp) / "shards")
        t0 = time.perf_counter()
        with _stdout_to_stderr():  # litdata's progress lines would mix with the JSON rows
            optimize_root([root], shards, SampleSpec("3dimo", 16, 1, 256, 256), num_workers=1)
        optimize_s = time.perf_counter() - t0
        # epoch 0 warms every DataModule up; repeat r times epoch r + 1 of each DataModule, and the raw
        # loop replays exactly that epoch's reads (an earlier version replayed epoch 0's reads against
        # later epochs: other windows, other seeks, and a ratio off by the difference)
        epoch_calls = _record_reads(root, batches, cfg, epochs=1 + repeats)[1:]
        frames = statistics.mean(sum(len(c[1]) for c in calls) for calls in epoch_calls)
        samples = batches * cfg["batch_size"]
        setting = f"3dimo T={cfg['num_frames']} {cfg['height']}x{cfg['width']} B={cfg['batch_size']} x {batches} batches"
        # (num_workers, augmentation, shards, transfer slots); the slot-less row is the ordinary DataLoader
        # transfer (a new shared-memory segment per tensor per batch), measured beside the slots
        configs = [(0, False, None, True), (1, False, None, True), (2, False, None, True), (2, False, None, False),
                   (2, True, None, True), (0, False, shards, True), (2, False, shards, True)]  # fmt: skip
        dms = [_make_dm(root, w, batches, aug, cfg, sh, sl) for w, aug, sh, sl in configs]
        device = torch.device("cuda" if profile == "gpu" and torch.cuda.is_available() else "cpu")
        for dm in dms:  # start persistent workers, fill caches
            _time_dm(dm, warm_epochs=1, device=device)
        # interleave the measurements so load changes on a shared machine hit every row alike
        raw_s, dm_s, raw_cpu, dm_cpu = [], [[] for _ in configs], [], [[] for _ in configs]
        load_before = os.getloadavg()[0]
        for calls in epoch_calls:
            wall, cpu = _time_raw(calls)
            raw_s.append(wall)
            raw_cpu.append(cpu)
            for times, cpus, dm in zip(dm_s, dm_cpu, dms):
                wall, cpu = _time_dm(dm, warm_epochs=0, device=device)
                times.append(wall)
                cpus.append(cpu)
        raw = statistics.median(raw_s)
        raw_c = None if None in raw_cpu else statistics.median(raw_cpu)
        load = f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus"
        rows.append(
            dict(name="data/raw_pyav_decode", setting=f"{setting}, plain PyAV loop, 1 process", value=frames / raw,
                 unit="frames/s", median_s=raw, repeats=repeats, ratio=None, baseline=None, goal=None, note=load)
        )  # fmt: skip
        rows.append(
            dict(name="data/optimize_shards", setting=f"{setting}, data optimize of 6 clips (48 windows of 16 frames)",
                 value=optimize_s, unit="s", median_s=optimize_s, repeats=1, ratio=None, baseline=None, goal=None)
        )  # fmt: skip
        for (workers, augment, sh, slots), times, cpus in zip(configs, dm_s, dm_cpu):
            secs = statistics.median(times)
            tag = f"{'shards' if sh else 'files'}, num_workers={workers}" + (
                ", augment on" if augment else ""
            )
            if workers and not slots:
                tag += ", ordinary transfer (shared_slots=False)"
            goal = "<= 1.15" if workers == 2 and not augment and slots else None
            common = dict(
                median_s=secs,
                repeats=repeats,
                ratio=secs / raw,
                baseline="data/raw_pyav_decode",
                goal=goal,
                # each repeat's DataModule epoch / the raw epoch timed just before it (the spread)
                ratios=[round(t / r, 3) for t, r in zip(times, raw_s)],
                # CPU seconds (main process + workers, all threads) / the raw loop's: the work done
                # (clock ticks of 10 ms; it moves too when other jobs compete for memory and caches)
                cpu_ratio=None
                if raw_c is None or None in cpus
                else round(statistics.median(cpus) / raw_c, 3),
            )
            for name, unit, count in (
                ("data/datamodule_frames", "frames/s", frames),
                ("data/datamodule_clips", "clips/s", samples),
            ):
                rows.append(
                    dict(name=name, setting=f"{setting}, {tag}", value=count / secs, unit=unit, **common)
                )
        # num_workers scaling (files, augmentation off): frames/s per worker count, drawn in the scaling plot
        scaling = [
            (w, frames / statistics.median(t))
            for (w, aug, sh, slots), t in zip(configs, dm_s)
            if not aug and not sh and slots
        ]
        rows.append(
            dict(
                name="data/datamodule_frames vs num_workers",
                setting=f"{setting}, files, num_workers {[w for w, _ in scaling]}, {os.cpu_count()} cpus",
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
    p.add_argument(
        "--batches", type=int, default=None, help="batches per timed epoch (default 24 cpu, 48 gpu)"
    )
    args = p.parse_args()
    print(json.dumps(run(args.profile, args.batches), indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's dimo (see run.py)
    main()
