"""Training step of both models: samples/s, tokens/s, peak memory; on CUDA the paper shapes and MFU.

CPU rows (always): the LightningModules of ``experiments/3dimo.yaml`` and ``experiments/hvg.yaml``
(built through the real CLI parser, so the YAML is the one source of sizes), one batch of the YAML's
shape (3DiMo: B=2, 9 frames 64x64; HVG: B=1, 3 views x 4 frames 64x64) filled per
``docs/contracts.md`` (timing does not depend on the pixel values). A step is what the Trainer runs:
frozen encoders (VAE, text / CLIP), forward, backward, optimiser step.

* ``samples/s`` = batch size / median step time; ``tokens/s`` counts the denoised latent tokens per
  second (3DiMo: Wan patch tokens F' x h' x w' per clip; HVG: latent positions V x T x h x w).
* Peak memory on CPU comes from the allocation trace of ``torch.profiler`` (``profile_memory=True``:
  every tensor allocation and free of the step, time-ordered): peak live bytes during the step above
  what was live before it, plus the resident training state (parameters, buffers, optimiser state,
  counted exactly). Process RSS (``resource.getrusage``) is not used: it is a process-wide high-water
  mark that includes the allocator's caches and every earlier benchmark in the same process.

GPU rows (``torch.cuda.is_available()``; otherwise present and "not measured"): 3DiMo with the
``wan2.1-t2v-1.3b`` backbone at 480x832, 81 frames, and HVG ``svd-xt`` at 576x576, 3 views x 24
frames (paper phase 2: 72 images per sample), bf16 autocast over fp32 weights (Lightning's
``bf16-mixed``), Adam. Variants: eager, gradient checkpointing, checkpointing + ``torch.compile``,
and each SDPA backend (set on the DiT/UNet and motion layers only, ``attention_backend``; never on
the frozen VAE). MFU follows ``benchmarks/flops.py``: model FLOPs = 3 x the trainable network's
forward (analytic for 3DiMo, meta-device count for HVG; no recomputation, no frozen encoders, attention
4 N^2 d per layer forward) / step time / the GPU's **spec** dense bf16 peak (H200: 989 TFLOP/s); the
bf16 GEMM ceiling measured in the same run is reported beside it (``mfu_vs_measured_gemm``).

``python benchmarks/bench_train.py [cpu|gpu]`` prints the rows as JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import median_time, not_measured, sync  # noqa: E402
from dimo.testing import hvg_batch, threedimo_batch  # noqa: E402

EXPERIMENTS = ROOT / "experiments"


# -- building the modules and batches -------------------------------------------------------------
def build_module(config: str, *overrides: str) -> torch.nn.Module:
    """The LightningModule of an experiment YAML (+ CLI ``overrides``), built by the real CLI (no trainer
    run, no logger)."""

    import tempfile

    from dimo.cli import run_lightning

    with tempfile.TemporaryDirectory() as tmp:
        args = ["--config", str(EXPERIMENTS / config), f"--trainer.default_root_dir={tmp}", *overrides]
        cli = run_lightning([*args, "--trainer.logger=false"], run=False)
    return cli.model


def threedimo_tokens(module, batch: dict) -> int:
    """Wan patch tokens of the denoised video, whole batch: B x F' x h' x w'."""

    b, t, _, h, w = batch["target"].shape
    vae = module.vae
    shape = (
        b,
        16,
        (t - 1) // vae.temporal_compression + 1,
        h // vae.spatial_compression,
        w // vae.spatial_compression,
    )
    f, hh, ww = module.net.transformer.patch_grid(shape)
    return b * f * hh * ww


def hvg_tokens(batch: dict, latent_downsample: int = 8) -> int:
    """UNet latent positions of the denoised views x frames, whole batch (the VAE's grid)."""

    b, v, t, _, h, w = batch["target"].shape
    return b * v * t * (h // latent_downsample) * (w // latent_downsample)


def make_step(module, batch: dict, kind: str, autocast: torch.dtype | None = None):
    """(step function, optimizer): zero_grad, loss of the real training path, backward, optimiser step."""

    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    device = next(module.parameters()).device
    module.train()

    def loss(i: int) -> torch.Tensor:
        g = torch.Generator(device=device).manual_seed(i)
        if kind == "3dimo":
            return module._losses(batch, g)["loss"]
        return module._loss(batch, g)

    counter = [0]

    def step() -> None:
        counter[0] += 1
        opt.zero_grad(set_to_none=True)
        ctx = (
            torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        )
        with ctx:
            value = loss(counter[0])
        value.backward()
        opt.step()

    return step, opt


# -- memory ---------------------------------------------------------------------------------------
def resident_bytes(module: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> int:
    """Bytes of parameters, buffers and optimiser state (each storage once)."""

    seen, total = set(), 0
    tensors = [*module.parameters(), *module.buffers()]
    if opt is not None:
        tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def cpu_step_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak live tensor bytes allocated by ``fn`` above what was live before it (torch.profiler trace)."""

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        if e.device_type() == DeviceType.CPU:
            live += e.nbytes()
            peak = max(peak, live)
    return peak


def cpu_peak_bytes(module, step: Callable[[], None], opt) -> int:
    """Peak tensor memory of a warm training step: resident state + the step's own peak."""

    step()  # warm: optimiser state exists, as in every step after the first
    opt.zero_grad(set_to_none=True)
    resident = resident_bytes(module, opt)
    return resident + cpu_step_peak_bytes(step)


# -- CPU rows -------------------------------------------------------------------------------------
def _cpu_rows(profile: str) -> list[dict]:
    repeats = 3 if profile == "cpu" else 5
    threads = torch.get_num_threads()
    rows = []
    specs = [
        ("3dimo", "3dimo.yaml", lambda m: threedimo_batch(2, 9, 64, 64)),
        ("hvg", "hvg.yaml", lambda m: hvg_batch(1, 3, 4, 64, 64)),
    ]
    for kind, config, make_batch in specs:
        torch.manual_seed(0)
        module = build_module(config)
        batch = make_batch(module)
        step, opt = make_step(module, batch, kind)
        sec = median_time(step, repeats=repeats, warmup=1)
        b = batch["target"].shape[0]
        tokens = (
            threedimo_tokens(module, batch)
            if kind == "3dimo"
            else hvg_tokens(batch, module.net_config.latent_downsample)
        )
        peak = cpu_peak_bytes(module, step, opt)
        shape = "B=2, 9 frames, 64x64" if kind == "3dimo" else "B=1, 3 views x 4 frames, 64x64"
        setting = f"tiny ({config}), {shape}, fp32, cpu {threads} threads"
        common = {"setting": setting, "median_s": sec, "repeats": repeats}
        rows += [
            {"name": f"{kind} tiny train step", "value": b / sec, "unit": "samples/s", **common},
            {
                "name": f"{kind} tiny train tokens",
                "value": tokens / sec,
                "unit": "tokens/s",
                "note": f"{tokens} denoised latent tokens per step",
                **common,
            },
            {
                "name": f"{kind} tiny train peak memory",
                "setting": setting,
                "value": peak / 2**20,
                "unit": "MiB",
                "note": "torch.profiler allocation trace: resident params/buffers/optimiser state + step peak",
            },
        ]
        del module, step, opt
    return rows


# -- GPU rows -------------------------------------------------------------------------------------
THREEDIMO_PAPER = dict(frames=81, height=480, width=832, batch=1)
HVG_PAPER = dict(views=3, frames=24, height=576, width=576, batch=1)
VARIANTS = [  # (label, gradient checkpointing, torch.compile, attention_backend of the trainable net)
    ("eager", False, False, "auto"),
    ("grad ckpt", True, False, "auto"),
    ("grad ckpt + compile", True, True, "auto"),
    ("grad ckpt, sdpa flash", True, False, "flash"),
    ("grad ckpt, sdpa mem-efficient", True, False, "efficient"),
    ("grad ckpt, sdpa cudnn", True, False, "cudnn"),
]


def peak_bf16_matmul_flops(n: int = 8192, repeats: int = 10) -> float:
    """Measured dense bf16 matmul throughput (FLOP/s) of this GPU: reported beside MFU (the ceiling
    a real kernel reaches here), never its denominator (that is the spec peak)."""

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    sec = median_time(lambda: a @ b, repeats=repeats, warmup=3, device="cuda")
    return 2 * n**3 / sec


def _paper_module(kind: str, ckpt: bool, compile_: bool, backend: str = "auto"):
    """A paper-scale LightningModule on the GPU (parameters created there: fast random init)."""

    with torch.device("cuda"):
        module = _build_paper_module(kind, ckpt, compile_, backend)
    return module.cuda()


def paper_forward_flops(kind: str) -> int:
    """Forward FLOPs of the trainable network at the GPU rows' shape (``benchmarks/flops.py``)."""

    from benchmarks.flops import hvg_forward_flops, threedimo_forward_flops

    if kind == "3dimo":
        p = THREEDIMO_PAPER
        net = dict(PAPER_NET, backbone="wan2.1-t2v-1.3b", body_tokens=5, hand_tokens=5, geo_layers=2)
        return sum(threedimo_forward_flops(net, p["frames"], p["height"], p["width"], p["batch"]).values())
    p = HVG_PAPER
    return hvg_forward_flops("svd-xt", p["views"], p["frames"], p["height"], p["width"], p["batch"])


#: experiments/3dimo_paper.yaml's motion network
PAPER_NET = dict(image_size=(256, 448), patch_size=16, hand_crop=64, motion_dim=512, motion_depth=6,
                 motion_heads=8, geo_hidden=1024)  # fmt: skip


def _build_paper_module(kind: str, ckpt: bool, compile_: bool, backend: str = "auto"):
    import functools

    if kind == "3dimo":
        from dimo.models.common import freeze
        from dimo.models.threedimo import ThreeDiMoModule, ThreeDiMoNet, WanTextEncoder, WanVAE
        from dimo.models.threedimo.frozen import TEXT_PRESETS

        # experiments/3dimo_paper.yaml's network; VAE / text encoder are the Wan2.1 architectures,
        # random-initialised (no weights needed to time a step; the text encoder is cached anyway).
        net = ThreeDiMoNet(backbone="wan2.1-t2v-1.3b", **PAPER_NET)
        # Wan's UMT5 is only run once per prompt (cache=True), so a 1-layer stand-in of the same
        # output width (4096) leaves the timed steps unchanged.
        from transformers import UMT5Config, UMT5EncoderModel

        text = WanTextEncoder(preset="tiny", max_length=512)
        text.encoder = UMT5EncoderModel(UMT5Config(**dict(TEXT_PRESETS["tiny"], d_model=net.text_dim)))
        freeze(text)
        module = ThreeDiMoModule(
            net=net,
            vae=WanVAE(preset="wan2.1"),
            text_encoder=text,
            frozen_dtype="bfloat16",
            gradient_checkpointing=ckpt,
            compile=compile_,
            attention_backend=backend,
            optimizer=functools.partial(torch.optim.Adam, lr=1e-5),
        )
    else:
        from dimo.models.hvg import HVGConfig, HVGModule, HVGUNet

        module = HVGModule(
            net=HVGUNet(HVGConfig(preset="svd-xt")),
            optimizer=functools.partial(torch.optim.AdamW, lr=1e-5),
            gradient_checkpointing=ckpt,
            attention_backend=backend,
        )
        if compile_:
            module.unet.compile()
    return module


def _gpu_variant_rows(kind: str, gemm_flops: float) -> list[dict]:
    from benchmarks.flops import spec_peak, train_step_model_flops

    if kind == "3dimo":
        p = THREEDIMO_PAPER
        shape = f"wan2.1-t2v-1.3b, B={p['batch']}, {p['frames']} frames, {p['height']}x{p['width']}"
        batch = threedimo_batch(p["batch"], p["frames"], p["height"], p["width"], device="cuda")
    else:
        p = HVG_PAPER
        shape = (
            f"svd-xt, B={p['batch']}, {p['views']} views x {p['frames']} frames, {p['height']}x{p['width']}"
        )
        batch = hvg_batch(p["batch"], p["views"], p["frames"], p["height"], p["width"], device="cuda")
    device_name = torch.cuda.get_device_name(0)
    peak = spec_peak(device_name)
    model_flops = train_step_model_flops(paper_forward_flops(kind))
    rows = []
    name = f"{kind} paper train step"
    for label, ckpt, compile_, backend in VARIANTS:
        setting = f"{shape}, bf16-mixed, Adam, {label}"
        module = step = opt = None
        try:
            module = _paper_module(kind, ckpt, compile_, backend)
            tokens = (
                threedimo_tokens(module, batch)
                if kind == "3dimo"
                else hvg_tokens(batch, module.net_config.latent_downsample)
            )
            step, opt = make_step(module, batch, kind, autocast=torch.bfloat16)
            step()  # warm-up (and compilation); fills the text-embedding cache
            torch.cuda.reset_peak_memory_stats()
            sec = median_time(step, repeats=5, warmup=1, device="cuda")
            peak_mem = torch.cuda.max_memory_allocated() / 2**30
            achieved = model_flops / sec
            rows.append(
                {
                    "name": f"{name} MFU",
                    "setting": setting,
                    "value": None if peak is None else achieved / peak,
                    "unit": f"fraction of spec dense bf16 peak ({device_name})",
                    "median_s": sec,
                    "repeats": 5,
                    "goal": ">= 0.5" if kind == "3dimo" else ">= 0.4",
                    "samples_per_s": p["batch"] / sec,
                    "tokens_per_s": tokens / sec,
                    "model_tflop_per_step": model_flops / 1e12,
                    "spec_peak_tflops": None if peak is None else peak / 1e12,
                    "measured_gemm_tflops": gemm_flops / 1e12,
                    "mfu_vs_measured_gemm": achieved / gemm_flops,
                    "note": f"{model_flops / 1e12:.1f} model TFLOP/step (3 x forward, no recomputation, "
                    f"no frozen encoders), {p['batch'] / sec:.3g} samples/s, {tokens / sec:.0f} tokens/s, "
                    f"peak {peak_mem:.1f} GiB"
                    + ("" if peak is not None else "; spec peak unknown for this GPU: MFU not given"),
                }
            )
            rows.append(
                {
                    "name": f"{name} peak memory",
                    "setting": setting,
                    "value": peak_mem,
                    "unit": "GiB",
                    "goal": "<= 80" if kind == "3dimo" else None,
                }
            )
        except torch.cuda.OutOfMemoryError:
            total = torch.cuda.get_device_properties(0).total_memory / 2**30
            rows.append(not_measured(f"{name} MFU", setting, "fraction", "out of GPU memory"))
            rows.append(
                {
                    **not_measured(
                        f"{name} peak memory", setting, "GiB", f"out of memory (> {total:.0f} GiB)"
                    ),
                    "meets_goal": False if kind == "3dimo" else None,
                }
            )
        except Exception as err:  # one failing variant (e.g. an SDPA backend unsupported here) is a row
            rows.append(
                not_measured(f"{name} MFU", setting, "fraction", f"failed: {type(err).__name__}: {err}")
            )
        finally:
            del module, step, opt
            torch.cuda.empty_cache()
    return rows


def _gpu_rows() -> list[dict]:
    if not torch.cuda.is_available():
        rows = []
        for kind, p in (("3dimo", THREEDIMO_PAPER), ("hvg", HVG_PAPER)):
            for label, *_ in VARIANTS:
                setting = f"{kind} paper shape {p}, bf16-mixed, {label}"
                rows.append(
                    not_measured(f"{kind} paper train step MFU", setting, "fraction", "no CUDA device")
                )
                rows[-1]["goal"] = ">= 0.5" if kind == "3dimo" else ">= 0.4"
                if label in ("eager", "grad ckpt"):
                    rows.append(
                        not_measured(f"{kind} paper train step peak memory", setting, "GiB", "no CUDA device")
                    )
        rows.append(not_measured("peak bf16 matmul", "8192^3, bf16", "TFLOP/s", "no CUDA device"))
        return rows
    gemm = peak_bf16_matmul_flops()
    sync("cuda")
    rows = [
        {
            "name": "peak bf16 matmul",
            "setting": f"8192^3, bf16, {torch.cuda.get_device_name(0)}",
            "value": gemm / 1e12,
            "unit": "TFLOP/s",
            "note": "measured GEMM ceiling, reported beside MFU (MFU divides by the spec peak)",
        }
    ]
    return rows + _gpu_variant_rows("3dimo", gemm) + _gpu_variant_rows("hvg", gemm)


def run(profile: str = "cpu") -> list[dict]:
    if profile not in ("cpu", "gpu"):
        raise ValueError(f"profile must be 'cpu' or 'gpu', got {profile!r}")
    return [*_cpu_rows(profile), *_gpu_rows()]


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2, default=str))
