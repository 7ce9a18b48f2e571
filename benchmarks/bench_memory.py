"""Memory model: peak memory of a training step vs frames and vs resolution, both models.

The curve a user reads to pick a GPU. Each point is one warm training step (frozen encoders,
forward, backward, optimiser step; Adam state already allocated) of the module built from the
experiment YAML (see ``bench_train.py``), with batch 1 and one size changed at a time.

* CPU (always): the ``tiny`` presets. Peak = resident state (parameters, buffers, optimiser state)
  + the step's peak of live tensor bytes from the ``torch.profiler`` allocation trace (see
  ``bench_train.cpu_step_peak_bytes``). A row per curve: ``value`` is the least-squares slope (MiB
  per frame, MiB per 1k pixels), ``r2`` its linearity, ``curve`` the points (drawn in the plot).
* GPU (``torch.cuda.is_available()``; otherwise "not measured"): paper presets with gradient
  checkpointing, bf16 autocast, ``torch.cuda.max_memory_allocated`` per point; an out-of-memory point
  is recorded as such (it says where the GPU's limit lies).

``python benchmarks/bench_memory.py [cpu|gpu]`` prints the rows as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import (  # noqa: E402
    _paper_module,
    build_module,
    cpu_step_peak_bytes,
    make_step,
    resident_bytes,
)
from benchmarks.common import linear_fit, not_measured  # noqa: E402
from dimo.testing import hvg_batch, threedimo_batch  # noqa: E402

# (frames at base resolution, resolutions (H, W) at base frames, base frames, views)
CPU_GRID = {
    "3dimo": dict(
        frames=[5, 9, 13, 17], sizes=[(32, 32), (64, 64), (96, 96), (128, 128)], base=9, views=None
    ),
    "hvg": dict(frames=[2, 4, 6, 8], sizes=[(32, 32), (48, 48), (64, 64), (96, 96)], base=4, views=3),
}
GPU_GRID = {
    "3dimo": dict(frames=[17, 41, 81, 121], sizes=[(240, 416), (480, 832), (720, 1280)], base=81, views=None),
    "hvg": dict(frames=[8, 16, 24], sizes=[(384, 384), (576, 576), (768, 768)], base=24, views=3),
}
CONFIGS = {"3dimo": "3dimo.yaml", "hvg": "hvg.yaml"}


def _batch(kind: str, frames: int, size: tuple[int, int], views: int | None, device="cpu") -> dict:
    if kind == "3dimo":
        return threedimo_batch(1, frames, *size, device=device)
    return hvg_batch(1, views, frames, *size, device=device)


def _warm_optimizer(module, opt) -> None:
    """Allocate the optimiser state without a real step (zero gradients leave Adam's update at 0)."""

    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _cpu_point(module, kind: str, batch: dict) -> float:
    step, opt = make_step(module, batch, kind)
    _warm_optimizer(module, opt)
    resident = resident_bytes(module, opt)
    return (resident + cpu_step_peak_bytes(step)) / 2**20


def _curve_row(kind: str, axis: str, xs: list, ys: list, setting: str, unit_x: str, scale: float) -> dict:
    slope, intercept, r2 = linear_fit([x / scale for x in xs], ys)
    return {
        "name": f"{kind} peak memory vs {axis}",
        "setting": setting,
        "value": slope,
        "unit": f"MiB per {unit_x}",
        "r2": r2,
        "intercept_mib": intercept,
        "points": dict(zip([str(x) for x in xs], ys)),
        "curve": {"x": xs, "y": ys, "xlabel": axis, "ylabel": "peak MiB (train step)"},
        "note": f"{ys[0]:.1f} -> {ys[-1]:.1f} MiB; fit r2 {r2:.4f}",
    }


def _cpu_rows() -> list[dict]:
    rows = []
    threads = torch.get_num_threads()
    for kind, grid in CPU_GRID.items():
        torch.manual_seed(0)
        module = build_module(CONFIGS[kind])
        views = grid["views"]
        v = f"{views} views x " if views else ""
        base_size = grid["sizes"][1] if kind == "3dimo" else grid["sizes"][2]
        by_frames = [_cpu_point(module, kind, _batch(kind, t, base_size, views)) for t in grid["frames"]]
        setting = f"tiny ({CONFIGS[kind]}), B=1, {v}T frames at {base_size[0]}x{base_size[1]}, fp32, cpu {threads} thr"
        rows.append(_curve_row(kind, "frames", grid["frames"], by_frames, setting, "frame", 1))
        by_size = [_cpu_point(module, kind, _batch(kind, grid["base"], s, views)) for s in grid["sizes"]]
        pixels = [h * w for h, w in grid["sizes"]]
        setting = (
            f"tiny ({CONFIGS[kind]}), B=1, {v}{grid['base']} frames, H=W in {[s[0] for s in grid['sizes']]}"
        )
        rows.append(_curve_row(kind, "pixels", pixels, by_size, setting, "1k pixels", 1000))
        del module
    return rows


def _gpu_point(kind: str, batch: dict) -> float | None:
    module = _paper_module(kind, ckpt=True, compile_=False)
    try:
        step, opt = make_step(module, batch, kind, autocast=torch.bfloat16)
        _warm_optimizer(module, opt)
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        del module
        torch.cuda.empty_cache()


def _gpu_rows() -> list[dict]:
    if not torch.cuda.is_available():
        return [
            not_measured(
                f"{kind} paper peak memory vs {axis}",
                f"{kind} paper preset, grad ckpt, bf16",
                "GiB",
                "no CUDA device",
            )
            for kind in GPU_GRID
            for axis in ("frames", "pixels")
        ]
    rows = []
    for kind, grid in GPU_GRID.items():
        views, base_size = grid["views"], grid["sizes"][1]
        for axis, points in (("frames", grid["frames"]), ("pixels", grid["sizes"])):
            xs, ys, oom = [], [], []
            for pt in points:
                frames, size = (pt, base_size) if axis == "frames" else (grid["base"], pt)
                gib = _gpu_point(kind, _batch(kind, frames, size, views, device="cuda"))
                x = frames if axis == "frames" else size[0] * size[1]
                if gib is None:
                    oom.append(x)
                else:
                    xs.append(x)
                    ys.append(gib)
            setting = f"{kind} paper preset, B=1, grad ckpt, bf16-mixed, {torch.cuda.get_device_name(0)}"
            rows.append(
                {
                    "name": f"{kind} paper peak memory vs {axis}",
                    "setting": setting,
                    "value": ys[-1] if ys else None,
                    "unit": "GiB (largest point that fits)",
                    "points": dict(zip([str(x) for x in xs], ys)),
                    "curve": {"x": xs, "y": ys, "xlabel": axis, "ylabel": "peak GiB (train step)"}
                    if len(xs) > 1
                    else None,
                    "note": f"out of memory at {oom}" if oom else "all points fit",
                }
            )
    return rows


def run(profile: str = "cpu") -> list[dict]:
    if profile not in ("cpu", "gpu"):
        raise ValueError(f"profile must be 'cpu' or 'gpu', got {profile!r}")
    return [*_cpu_rows(), *_gpu_rows()]


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2))
