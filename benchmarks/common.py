"""Small timing helpers shared by the benchmarks (median of N repeats after warm-up)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device="cpu") -> float:
    """Median wall time of ``fn`` in seconds, synchronising CUDA around each call."""

    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R^2 of y against x."""

    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_res = sum((b - (slope * a + intercept)) ** 2 for a, b in zip(x, y))
    ss_tot = sum((b - my) ** 2 for b in y)
    return slope, intercept, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def not_measured(name: str, setting: str, unit: str, why: str) -> dict:
    return {"name": name, "setting": setting, "value": None, "unit": unit, "note": f"not measured: {why}"}
