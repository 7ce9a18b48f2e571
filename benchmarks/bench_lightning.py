"""Lightning overhead: the tiny 3DiMo module stepped by ``Trainer.fit`` vs a bare PyTorch loop.

Both sides run the same module (``experiments/3dimo.yaml``, built by the real CLI), the same
pre-collated batch (served by a DataLoader that yields it as is), the same optimiser and LR
scheduler from ``configure_optimizers``, and call the module's own ``training_step`` (which logs
through ``self.log`` under the Trainer; in the bare loop there is no trainer to log to). The
Trainer has no logger, checkpointing, progress bar or model summary: what is measured is the
loop, hooks, optimizer closure and logging machinery Lightning adds to every step.

Per-step time is steady state: the Trainer side is timed by a callback from the start of step
``WARMUP`` to the end of the last step (so ``fit``'s one-off setup is excluded); the bare loop is
timed over the same steps. Repeats are interleaved (Trainer, bare, bare, Trainer, ...) so load
changes on a shared machine hit both sides alike; ``ratio`` = median Trainer / median bare per-step
time, goal <= 1.05. On CPU both sides run with one intra-op thread (restored afterwards): with more,
threads spin against other processes on a shared machine and the step time swings several-fold.

``python benchmarks/bench_lightning.py [cpu|gpu]`` prints the rows as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import build_module  # noqa: E402
from dimo.testing import threedimo_batch, tiny_trainer  # noqa: E402

WARMUP = 1


class _Timer:
    """Lightning callback: wall time from the start of step ``WARMUP`` to the end of the last step."""

    def __init__(self) -> None:
        from lightning.pytorch import Callback

        timer = self

        class Hook(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx == WARMUP:
                    timer.start = (time.perf_counter(), time.process_time())

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                timer.end = (time.perf_counter(), time.process_time())

        self.callback = Hook()
        self.start = self.end = (0.0, 0.0)


class _Repeat(torch.utils.data.Dataset):
    """``n`` times the same (already collated) batch."""

    def __init__(self, batch: dict, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.batch


def _trainer_step_s(module, batch: dict, steps: int) -> tuple[float, float]:

    timer = _Timer()
    loader = torch.utils.data.DataLoader(_Repeat(batch, WARMUP + steps), batch_size=None)
    trainer = tiny_trainer(
        devices=1, max_steps=WARMUP + steps, enable_checkpointing=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=[timer.callback],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    module._trainer = None  # detach, so the bare loop's training_step sees no trainer
    return ((timer.end[0] - timer.start[0]) / steps, (timer.end[1] - timer.start[1]) / steps)


def _bare_step_s(module, batch: dict, steps: int) -> tuple[float, float]:
    config = module.configure_optimizers()
    opt = config["optimizer"] if isinstance(config, dict) else config
    sched = config["lr_scheduler"]["scheduler"] if isinstance(config, dict) else None
    module.train()
    loader = torch.utils.data.DataLoader(_Repeat(batch, WARMUP + steps), batch_size=None)
    start = (0.0, 0.0)
    for i, b in enumerate(loader):
        if i == WARMUP:
            start = (time.perf_counter(), time.process_time())
        opt.zero_grad(set_to_none=True)
        loss = module.training_step(b, i)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return ((time.perf_counter() - start[0]) / steps, (time.process_time() - start[1]) / steps)


def run(profile: str = "cpu") -> list[dict]:
    if profile not in ("cpu", "gpu"):
        raise ValueError(f"profile must be 'cpu' or 'gpu', got {profile!r}")
    repeats, steps = (9, 4) if profile == "cpu" else (9, 10)
    torch.manual_seed(0)
    module = build_module("3dimo.yaml")
    batch = threedimo_batch(2, 9, 64, 64)
    lit, bare = [], []  # (wall s/step, process CPU s/step) per repeat
    threads = torch.get_num_threads()
    # one intra-op thread on CPU: on a shared 2-core machine more threads spin against other
    # processes and the step time swings several-fold, hiding a few-percent difference
    torch.set_num_threads(1 if profile == "cpu" else threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's dataloader / self.log-without-trainer advice
            for r in range(repeats):
                order = (lit, bare) if r % 2 == 0 else (bare, lit)
                for side in order:
                    fn = _trainer_step_s if side is lit else _bare_step_s
                    side.append(fn(module, batch, steps))
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    # paired ratios: each Trainer repeat against the bare repeat run next to it
    pairs = sorted(a[0] / b[0] for a, b in zip(lit, bare))
    ratio = statistics.median(pairs)
    cpu_ratio = statistics.median(a[1] / b[1] for a, b in zip(lit, bare))
    best_ratio = min(a[0] for a in lit) / min(b[0] for b in bare)  # fastest vs fastest: least load
    lit_s, bare_s = statistics.median(a[0] for a in lit), statistics.median(b[0] for b in bare)
    setting = (
        f"tiny 3dimo.yaml, B=2, 9 frames 64x64, cpu {used} thread(s), "
        f"{steps} timed steps after {WARMUP}, {repeats} interleaved repeats"
    )
    return [
        {
            "name": "bare pytorch loop step",
            "setting": setting,
            "value": bare_s,
            "unit": "s/step",
            "median_s": bare_s,
            "repeats": repeats,
            "samples_wall_cpu": bare,
        },
        {
            "name": "lightning trainer step",
            "setting": setting,
            "value": lit_s,
            "unit": "s/step",
            "median_s": lit_s,
            "repeats": repeats,
            "ratio": ratio,
            "cpu_time_ratio": cpu_ratio,
            "paired_ratios": pairs,
            "best_of_ratio": best_ratio,
            "baseline": "bare pytorch loop step",
            "goal": "<= 1.05",
            "samples_wall_cpu": lit,
            "note": f"ratio = median of paired wall-time ratios Trainer / bare loop (process CPU-time ratio "
            f"{cpu_ratio:.3f}, fastest/fastest {best_ratio:.3f}, paired ratios {pairs[0]:.2f}-{pairs[-1]:.2f}); "
            "same module, batch, optimiser, training_step",
        },
    ]


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2))
