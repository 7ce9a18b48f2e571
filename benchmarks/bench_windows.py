"""3DiMo long-video sampling: cost of a denoising step vs video length with overlapping windows.

:class:`dimo.pipelines.threedimo.ThreeDiMoPipeline` covers a driving video longer than the training
clip by overlapping latent windows whose velocities are fused at every denoising step
(:func:`dimo.pipelines.windows.fuse_windows`). This file times exactly that step — the fused
velocity of the whole latent video, every window run through the ``tiny`` network of
``experiments/3dimo.yaml`` with the motion tokens of the driving frames it covers
(:func:`~dimo.pipelines.windows.motion_frames`) — so the curve shows the sampler, not the VAE (the
tiny Wan VAE's CPU decode time is erratic and would hide it; the pipeline decodes once per video,
the step runs ``num_inference_steps`` times).

* ``3dimo windowed step``: per length, window = the training clip (9 frames), overlap 1 latent
  frame, 64x64; each sample times 8 steps, lengths are timed in 7 interleaved rounds (load
  changes hit every point alike), median per length;
* ``3dimo windowed step vs length``: least squares of time against frames, slope and R^2
  (goal R^2 >= 0.99: linear cost);
* ``3dimo one-window step``: the longest video as a single window (attention over all frames);
  ``ratio`` = windowed / one-window time, measured side by side in the same rounds.

``python benchmarks/bench_windows.py [cpu|gpu]`` prints the rows as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import build_module  # noqa: E402
from benchmarks.common import linear_fit, sync  # noqa: E402

LENGTHS = {"cpu": [9, 17, 25, 33, 41, 49, 57], "gpu": [9, 17, 33, 49, 65, 81, 121, 161]}
WINDOW, OVERLAP, SIZE = 9, 1, 64
CALLS = 8  # steps per timed sample: a tiny step is milliseconds, shorter than the load's swings
PROMPT = "front view. The camera is static."


def run(profile: str = "cpu") -> list[dict]:
    if profile not in ("cpu", "gpu"):
        raise ValueError(f"profile must be 'cpu' or 'gpu', got {profile!r}")
    from dimo.pipelines.windows import fuse_windows, latent_windows, motion_frames

    device = torch.device("cuda" if profile == "gpu" and torch.cuda.is_available() else "cpu")
    repeats = 7
    torch.manual_seed(0)
    module = build_module("3dimo.yaml").to(device).eval()
    net, c = module.net, module.vae.temporal_compression
    lengths = LENGTHS[profile]
    g = torch.Generator().manual_seed(0)
    driving = (torch.rand(1, lengths[-1], 3, SIZE, SIZE, generator=g) * 2 - 1).to(device)
    text = module.text_encoder([PROMPT], device=device)  # (1, L, D_t)
    sigma = torch.full((1,), 0.5, device=device)

    def step_fn(frames: int, window: int):
        with torch.no_grad():
            z = net.encode_motion(driving[:, :frames])  # (1, T*K, D), once per video as in the pipeline
        per_frame = z.unflatten(1, (frames, -1))  # (1, T, K, D)
        latent = 1 + (frames - 1) // c
        x = torch.randn(1, 16, latent, SIZE // 8, SIZE // 8, generator=g).to(device)

        def window_velocity(xw: torch.Tensor, start: int) -> torch.Tensor:
            idx = motion_frames(start, start + xw.shape[2] - 1, c)
            zw = per_frame[:, idx].flatten(1, 2)
            return net(xw, module._timesteps(sigma, xw.shape), text, zw, len(idx))

        @torch.no_grad()
        def step():
            return fuse_windows(x, window_velocity, (window - 1) // c, OVERLAP)

        return step, len(latent_windows(latent - 1, (window - 1) // c, OVERLAP))

    steps = {t: step_fn(t, WINDOW) for t in lengths}
    steps["one"] = step_fn(lengths[-1], lengths[-1])
    for fn, _ in steps.values():  # warm-up
        fn()
    samples: dict[object, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for key, (fn, _) in steps.items():
            start = time.perf_counter()
            for _ in range(CALLS):
                fn()
            sync(device)
            samples[key].append((time.perf_counter() - start) / CALLS)
    times = [statistics.median(samples[t]) for t in lengths]
    one = statistics.median(samples["one"])
    slope, intercept, r2 = linear_fit(lengths, times)
    setting = (
        f"tiny 3dimo.yaml, {SIZE}x{SIZE}, window {WINDOW} frames, overlap {OVERLAP} latent, {device.type}"
    )
    rows = [
        {
            "name": "3dimo windowed step",
            "setting": f"{setting}, {t} frames, {steps[t][1]} windows",
            "value": sec,
            "unit": "s/step",
            "median_s": sec,
            "repeats": repeats,
        }
        for t, sec in zip(lengths, times)
    ]
    rows.append(
        {
            "name": "3dimo windowed step vs length",
            "setting": f"{setting}, {len(lengths)} lengths {lengths[0]}-{lengths[-1]} frames",
            "value": r2,
            "unit": "r2",
            "slope_s_per_frame": slope,
            "intercept_s": intercept,
            "goal": ">= 0.99 r2",
            "meets_goal": r2 >= 0.99,
            "curve": {"x": lengths, "y": times, "xlabel": "frames", "ylabel": "s per denoising step",
                      "fit_y": [slope * t + intercept for t in lengths]},
        }
    )  # fmt: skip
    rows.append(
        {
            "name": "3dimo one-window step",
            "setting": f"tiny 3dimo.yaml, {SIZE}x{SIZE}, {lengths[-1]} frames in one window, {device.type}",
            "value": one,
            "unit": "s/step",
            "median_s": one,
            "repeats": repeats,
            "ratio": times[-1] / one,
            "baseline": "one window over the whole video",
            "note": "ratio = windowed / one-window step time at the longest length",
        }
    )
    return rows


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2))
