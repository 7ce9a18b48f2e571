"""HVG benchmarks: progressive sampler scaling, naive all-at-once comparison, tiny training step.

Rows (see ``benchmarks/run.py``):

* ``hvg sampler step vs views x frames``: one denoising step of the progressive sampler with the
  ``tiny`` network (windows 2 views x 4 frames, overlaps 1 / 2) on grids of growing V x T; least
  squares of time against V*T gives the slope and R^2 (goal R^2 >= 0.99: linear cost);
* ``hvg naive all-at-once step``: the same grids as one window (full view and temporal attention),
  ``ratio`` = progressive / naive time on the largest grid where naive runs;
* ``hvg tiny train step``: forward + backward + AdamW step of :class:`HVGModule` (3 views x 4 frames,
  64x64, the ``experiments/hvg.yaml`` setting) time and process peak RSS;
* ``hvg svd-xt 576 step``: a training step of the ``svd-xt`` preset at 576x576 with MFU, on CUDA only
  ("not measured" elsewhere).

Runnable alone: ``python benchmarks/bench_hvg.py [profile]`` prints the rows as JSON.
"""

from __future__ import annotations

import functools
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import linear_fit, median_time, not_measured  # noqa: E402
from dimo.diffusion.edm import EDM  # noqa: E402
from dimo.models.hvg import HVGConfig, HVGModule, HVGUNet, ProgressiveSampler  # noqa: E402
from dimo.testing import synthetic_hvg_sample  # noqa: E402

SIZES_CPU = [(2, 4), (2, 8), (2, 12), (4, 12), (4, 16), (6, 16), (8, 16)]
NAIVE_MAX_CELLS = 64
H = 32  # image side; latents H / (the tiny VAE's factor)


def _window_denoiser(net: HVGUNet, b: int, v_all: int, t_all: int, cond: dict):
    edm = EDM()

    def denoise(x, sigma, views, frames):
        _, _, c_in, c_noise = edm.precondition(sigma)
        pose = {k: m[:, views][:, :, frames] for k, m in cond["pose_maps"].items()}
        out = net(
            x * c_in.reshape(-1, 1, 1, 1, 1, 1),
            c_noise,
            cond["clip"],
            cond["ids"],
            cond_latent=cond["latent"],
            reference_latent=cond["latent"],
            pose_maps=pose,
            rel_rot=cond["rel_rot"][:, views],
        )
        return edm.denoised(out, x, sigma)

    return denoise


def _cond(v: int, t: int) -> dict:
    g = torch.Generator().manual_seed(0)
    h, c = H // HVGConfig().latent_downsample, HVGConfig().unet_kwargs()["out_channels"]
    return {
        "clip": torch.randn(1, 1, 32, generator=g),
        "ids": torch.tensor([[6.0, 127.0, 0.02]]),
        "latent": torch.randn(1, c, h, h, generator=g),
        "pose_maps": {
            "normal": torch.randn(1, v, t, 3, H, H, generator=g),
            "depth": torch.randn(1, v, t, 1, H, H),
        },
        "rel_rot": torch.eye(3).expand(1, v, 3, 3),
    }


def _sampler_rows(profile: str) -> list[dict]:
    torch.manual_seed(0)
    net = HVGUNet(HVGConfig()).eval()
    edm = EDM()
    progressive = ProgressiveSampler(view_window=2, frame_window=4, view_overlap=1, frame_overlap=2)
    repeats = 3 if profile == "cpu" else 5
    rows, cells, times, naive = [], [], [], {}
    with torch.no_grad():
        for v, t in SIZES_CPU:
            cond = _cond(v, t)
            h, c = H // HVGConfig().latent_downsample, HVGConfig().unet_kwargs()["out_channels"]
            noise = torch.randn(1, v, t, c, h, h, generator=torch.Generator().manual_seed(1))
            den = _window_denoiser(net, 1, v, t, cond)
            sec = median_time(lambda: progressive.sample(edm, den, noise, steps=1), repeats=repeats)  # noqa: B023
            cells.append(v * t)
            times.append(sec)
            rows.append(
                {
                    "name": "hvg sampler step",
                    "setting": f"{v} views x {t} frames, windows 2x4, {progressive.num_evaluations(v, t)} tiles",
                    "value": round(sec, 4),
                    "unit": "s/step",
                    "median_s": sec,
                    "repeats": repeats,
                }
            )
            if v * t <= NAIVE_MAX_CELLS:
                whole = ProgressiveSampler(view_window=v, frame_window=t)
                naive[(v, t)] = median_time(lambda: whole.sample(edm, den, noise, steps=1), repeats=repeats)  # noqa: B023
    slope, intercept, r2 = linear_fit(cells, times)
    rows.append(
        {
            "name": "hvg sampler step vs views x frames",
            "setting": f"{len(cells)} grids, {cells[0]}-{cells[-1]} cells, tiny, {H}x{H}",
            "value": round(r2, 5),
            "unit": "r2",
            "slope_s_per_cell": slope,
            "intercept_s": intercept,
            "goal": ">= 0.99 r2",
            "meets_goal": r2 >= 0.99,
            "curve": {"x": cells, "y": times, "xlabel": "views x frames", "ylabel": "s per denoising step"},
        }
    )
    (v, t), base = max(naive.items(), key=lambda kv: kv[0][0] * kv[0][1])
    prog = times[cells.index(v * t)]
    rows.append(
        {
            "name": "hvg naive all-at-once step",
            "setting": f"{v} views x {t} frames in one window (largest that fits the profile)",
            "value": round(base, 4),
            "unit": "s/step",
            "median_s": base,
            "repeats": repeats,
            "ratio": round(prog / base, 3),
            "baseline": "naive all-at-once",
            "note": "ratio = progressive / naive; naive attention cost grows quadratically in views and frames",
        }
    )
    return rows


def _train_rows(profile: str) -> list[dict]:
    torch.manual_seed(0)
    module = HVGModule(net=HVGUNet(HVGConfig()), optimizer=functools.partial(torch.optim.AdamW, lr=1e-4))
    opt = module.configure_optimizers()
    s = synthetic_hvg_sample(3, 4, 64, 64)
    batch = {k: (v[None] if torch.is_tensor(v) else [v]) for k, v in s.items()}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = module._loss(batch, torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()

    repeats = 3 if profile == "cpu" else 10
    sec = median_time(step, repeats=repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    setting = "tiny, 3 views x 4 frames, 64x64, batch 1, cpu"
    return [
        {
            "name": "hvg tiny train step",
            "setting": setting,
            "value": round(sec, 4),
            "unit": "s/step",
            "median_s": sec,
            "repeats": repeats,
        },
        {"name": "hvg tiny train peak rss", "setting": setting, "value": round(peak, 1), "unit": "MiB"},
    ]


def _gpu_rows() -> list[dict]:
    if not torch.cuda.is_available():
        return [
            not_measured(
                "hvg svd-xt 576 train step", "svd-xt, 1 x 2 views x 4 frames, 576x576", "s/step", "no CUDA"
            )
        ]
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device("cuda")
    net = HVGUNet(HVGConfig(preset="svd-xt")).to(dev, torch.bfloat16).train()
    b, v, t, h = 1, 2, 4, 72
    x = torch.randn(b, v, t, 4, h, h, device=dev, dtype=torch.bfloat16)
    kw = {
        "encoder_hidden_states": torch.randn(b, 1, 1024, device=dev, dtype=torch.bfloat16),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]], device=dev, dtype=torch.bfloat16),
        "cond_latent": torch.randn(b, 4, h, h, device=dev, dtype=torch.bfloat16),
        "reference_latent": torch.randn(b, 4, h, h, device=dev, dtype=torch.bfloat16),
        "pose_maps": {
            "normal": torch.randn(b, v, t, 3, 8 * h, 8 * h, device=dev, dtype=torch.bfloat16),
            "depth": torch.randn(b, v, t, 1, 8 * h, 8 * h, device=dev, dtype=torch.bfloat16),
        },
        "rel_rot": torch.eye(3, device=dev).expand(b, v, 3, 3),
    }
    sigma = torch.ones(b, device=dev)

    def step():
        net.zero_grad(set_to_none=True)
        net(x, sigma, **kw).float().square().mean().backward()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    torch.cuda.reset_peak_memory_stats()
    sec = median_time(step, repeats=5, device=dev)
    peak_tflops = {"h100": 989.0, "h200": 989.0, "a100": 312.0}
    name = torch.cuda.get_device_name(0).lower()
    peak = next((p for k, p in peak_tflops.items() if k in name), None)
    setting = f"svd-xt, {b} x {v} views x {t} frames, 576x576, bf16, fwd+bwd"
    return [
        {
            "name": "hvg svd-xt 576 train step",
            "setting": setting,
            "value": round(sec, 4),
            "unit": "s/step",
            "median_s": sec,
            "repeats": 5,
        },
        {
            "name": "hvg svd-xt 576 peak memory",
            "setting": setting,
            "value": torch.cuda.max_memory_allocated() / 2**30,
            "unit": "GiB",
        },
        {
            "name": "hvg svd-xt 576 MFU",
            "setting": setting,
            "value": None if peak is None else round(flops / sec / 1e12 / peak, 4),
            "unit": "fraction of bf16 peak",
            "note": f"{flops / 1e12:.1f} TFLOP per step" + ("" if peak else "; unknown GPU peak"),
        },
    ]


def run(profile: str = "cpu") -> list[dict]:
    return [*_sampler_rows(profile), *_train_rows(profile), *_gpu_rows()]


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2))
