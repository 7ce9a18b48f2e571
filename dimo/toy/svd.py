"""Toy SVD-xt folder: a tiny Stable-Video-Diffusion-img2vid-xt, trained here on toy-human videos.

``python -m dimo.toy.svd --out pretrained/toy-svd-xt`` (``make toy-pretrained-svd``) builds, from a seed:

1. toy clips (:func:`dimo.data.synth.synthesize`, all three sources, a data seed the HVG toy data
   does not use), decoded from their MP4s exactly as the data pipeline decodes them;
2. ``vae/``: an :class:`~diffusers.AutoencoderKLTemporalDecoder` of the ``tiny`` preset (4x, 16 latent
   channels) trained on
   ``clip_frames``-frame windows (its temporal decoder sees real clips) with MSE + L1 + a small KL, decoding the latent mode, until
   it reconstructs held-out toy clips at >= ``target_psnr`` dB (64x64, checked by a test); its
   ``scaling_factor`` is set to 1 / std of its latents, so scaled latents have unit variance
   (``sigma_data = 1`` of the EDM schedule); then its decoder alone (the encoder, hence the latents and
   everything trained on them, frozen) is fine-tuned on clips of another data seed
   (``decoder_data_seed``): the 100 training videos leave a ~0.8 dB gap between the clips the VAE was
   checked on and unseen ones, which more data for the decoder closes;
3. ``image_encoder/``: a *random* tiny :class:`~transformers.CLIPVisionModelWithProjection` (fixed seed;
   a random ViT's embedding still separates the toy identities' colours, and SVD-style training needs no
   more from it at toy scale);
4. ``unet/``: the plain SVD :class:`~diffusers.UNetSpatioTemporalConditionModel` (``tiny`` preset),
   pretrained as SVD is: image-to-video with EDM (SVD's v-scaling), the CLIP embedding of the first frame
   as cross-attention context and its (noise-augmented, unscaled) VAE latent concatenated to every
   frame, 10% of samples without the reference; no pose input. HVG starts from it (its new layers
   zero-initialised, the ReferenceNet copied from it), as the paper starts from SVD-xt;
5. ``feature_extractor/``, ``scheduler/`` and ``model_index.json`` as in the real folder.

Everything runs on one CPU thread (results depend on the thread count through reduction order), so the
same seed gives the same weights. ``toy_report.json`` records sizes, losses, PSNR and timings.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ToySVDConfig", "build", "load_clips", "random_crop", "reconstruction_psnr"]

VAE_FACTOR = 4  # spatial downsampling of the tiny VAE preset (dimo.models.hvg.config.VAE_PRESETS)


@dataclass
class ToySVDConfig:
    """Data, sizes and schedules of the toy SVD-xt build (defaults: ``make toy-pretrained-svd``)."""

    seed: int = 0
    data_seed: int = 101  # toy clips the components learn from (HVG's toy data uses seed 0)
    heldout_seed: int = 202  # held-out clips the VAE's PSNR is measured on
    clips_per_source: int = 12  # 100 training videos: 6 per source overfitted (21 dB train, 16 held out)
    heldout_per_source: int = 1
    num_frames: int = 20
    size: int = 64
    clip_frames: int = 4  # frames per VAE / UNet training window (the tiny UNet's num_frames)
    # The VAE is convolutional: it trains on random vae_crop x vae_crop crops of the windows (one crop
    # per window, on the VAE's 4x grid), 4x cheaper per step at 32 than whole 64x64 frames, so the
    # same CPU time buys 4x the steps (measured, single thread: 0.2 s / step against 0.8)
    vae_crop: int = 32
    vae_max_steps: int = 6000
    vae_check_every: int = 500
    psnr_margin: float = 0.5  # train until target_psnr + margin on the held-out clips
    vae_clips_per_step: int = 2
    vae_lr: float = 3e-3
    kl_weight: float = 1e-6
    target_psnr: float = 28.0
    unet_steps: int = 1000
    unet_batch: int = 4
    unet_lr: float = 3e-4
    cfg_drop_prob: float = 0.1
    noise_aug_strength: float = 0.02
    fps: int = 7
    motion_bucket_id: int = 127
    # decoder phase: the decoder alone, on crops of clips of another data seed (cosine schedule). Measured
    # from the 5000-step VAE: held-out (seed 202) 28.65 -> 28.30 dB at step 1000, unseen (seed 303)
    # 27.85 -> 29.03 dB (docs/hvg.md)
    decoder_data_seed: int = 404
    decoder_clips_per_source: int = 24
    vae_decoder_steps: int = 2000
    vae_decoder_lr: float = 5e-4

    def __post_init__(self) -> None:
        if min(self.clips_per_source, self.heldout_per_source, self.vae_max_steps, self.unet_steps) < 1:
            raise ValueError("clip counts and step counts must be >= 1")
        if self.num_frames < self.clip_frames or self.clip_frames < 1:
            raise ValueError("need num_frames >= clip_frames >= 1")
        if not (0 < self.vae_crop <= self.size and self.vae_crop % VAE_FACTOR == 0):
            raise ValueError(f"vae_crop must be a multiple of {VAE_FACTOR} in (0, size], got {self.vae_crop}")


# ---- data --------------------------------------------------------------------------------------------
def load_clips(seed: int, per_source: int, num_frames: int, size: int) -> list[torch.Tensor]:
    """Synthesize toy clips (every view of every source) and decode them: list of (T, 3, H, W) in [-1, 1]."""

    from dimo.data.synth import synthesize
    from dimo.toy.data import load_toy_clips, synth_config

    with tempfile.TemporaryDirectory(prefix="dimo-toy-svd-") as tmp:
        synthesize(tmp, synth_config(seed, per_source, num_frames, size))
        return load_toy_clips(tmp)[0]


def _windows(videos: list[torch.Tensor], n: int, frames: int, gen: torch.Generator) -> torch.Tensor:
    """n random windows of ``frames`` consecutive frames: (n, frames, 3, H, W)."""

    out = []
    for i in torch.randint(len(videos), (n,), generator=gen).tolist():
        v = videos[i]
        s = int(torch.randint(v.shape[0] - frames + 1, (1,), generator=gen))
        out.append(v[s : s + frames])
    return torch.stack(out)


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator, grid: int = VAE_FACTOR) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per window of ``x`` (N, T, C, H, W), the same for every frame
    of a window, its corner on a ``grid``-pixel lattice (the VAE's latent cells): (N, T, C, size, size)."""

    n, _, _, h, w = x.shape
    if size == h == w:
        return x
    out = []
    for i in range(n):
        top = int(torch.randint((h - size) // grid + 1, (1,), generator=gen)) * grid
        left = int(torch.randint((w - size) // grid + 1, (1,), generator=gen)) * grid
        out.append(x[i, :, :, top : top + size, left : left + size])
    return torch.stack(out)


# ---- VAE ---------------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction_psnr(vae, videos: list[torch.Tensor], clip_frames: int) -> float:
    """Mean PSNR (dB, peak-to-peak 2 for [-1, 1] images, i.e. the usual 8-bit PSNR) of decode(encode(x))
    over every non-overlapping ``clip_frames`` window of ``videos``, decoded as clips of that length."""

    vae.eval()
    scores = []
    for v in videos:
        for s in range(0, v.shape[0] - clip_frames + 1, clip_frames):
            x = v[s : s + clip_frames]
            z = vae.encode(x).latent_dist.mode()
            y = vae.decode(z, num_frames=clip_frames).sample.clamp(-1, 1)
            mse = F.mse_loss(y, x).item()
            scores.append(10 * math.log10(4.0 / max(mse, 1e-12)))
    return float(np.mean(scores))


def make_vae():
    """A fresh tiny :class:`~diffusers.AutoencoderKLTemporalDecoder` (from the global RNG) whose last
    temporal conv (``decoder.time_conv_out``, a 3-tap conv over frames) starts as the identity over
    time, so the untrained decoder is a per-frame decoder (diffusers' random init mixes each frame's
    colours with its neighbours')."""

    from diffusers import AutoencoderKLTemporalDecoder

    from dimo.models.hvg.config import VAE_PRESETS

    vae = AutoencoderKLTemporalDecoder(**VAE_PRESETS["tiny"])
    with torch.no_grad():
        w = vae.decoder.time_conv_out.weight  # (3, 3, k, 1, 1): out, in, time
        w.zero_()
        w[:, :, w.shape[2] // 2, 0, 0] = torch.eye(w.shape[0])
        vae.decoder.time_conv_out.bias.zero_()
    return vae


def train_vae(cfg: ToySVDConfig, train: list[torch.Tensor], heldout: list[torch.Tensor], log=print):
    """Train the tiny VAE (one-cycle schedule over ``vae_max_steps``), stopping early once its held-out
    PSNR reaches ``target_psnr + psnr_margin`` (checked every ``vae_check_every`` steps). Returns
    (vae, history)."""

    torch.manual_seed(cfg.seed)
    vae = make_vae()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.vae_lr, total_steps=cfg.vae_max_steps, pct_start=0.05
    )
    history = []
    for step in range(1, cfg.vae_max_steps + 1):
        vae.train()
        x = _windows(train, cfg.vae_clips_per_step, cfg.clip_frames, gen)
        x = random_crop(x, cfg.vae_crop, gen).flatten(0, 1)  # (N*T, 3, crop, crop)
        post = vae.encode(x).latent_dist
        # decode the mode, as HVG does (a sampled latent starts as unit noise and stalls learning)
        y = vae.decode(post.mode(), num_frames=cfg.clip_frames).sample
        rec = F.mse_loss(y, x) + 0.1 * F.l1_loss(y, x)
        loss = rec + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 10.0)
        opt.step()
        sched.step()
        if step % cfg.vae_check_every == 0:
            psnr = reconstruction_psnr(vae, heldout, cfg.clip_frames)
            history.append({"step": step, "loss": round(loss.item(), 5), "heldout_psnr": round(psnr, 2)})
            log(f"vae step {step}: loss {loss.item():.4f}, held-out PSNR {psnr:.2f} dB")
            if psnr >= cfg.target_psnr + cfg.psnr_margin:
                break
    vae.eval().requires_grad_(False)
    return vae, history


def train_decoder(cfg: ToySVDConfig, vae, clips: list[torch.Tensor], heldout: list[torch.Tensor], log=print):
    """Fine-tune ``vae.decoder`` alone on crops of ``clips`` (the encoder frozen: its latents, their
    scale and the UNet trained on them stay valid). Returns the history."""

    if cfg.vae_decoder_steps <= 0:
        return []
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.vae_decoder_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.vae_decoder_steps)
    gen = torch.Generator().manual_seed(cfg.seed + 7)  # its own stream: the UNet's draws are unchanged
    history = []
    for step in range(1, cfg.vae_decoder_steps + 1):
        vae.train()
        x = _windows(clips, cfg.vae_clips_per_step, cfg.clip_frames, gen)
        x = random_crop(x, cfg.vae_crop, gen).flatten(0, 1)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        y = vae.decode(z, num_frames=cfg.clip_frames).sample
        loss = F.mse_loss(y, x) + 0.1 * F.l1_loss(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        sched.step()
        if step % cfg.vae_check_every == 0 or step == cfg.vae_decoder_steps:
            psnr = reconstruction_psnr(vae, heldout, cfg.clip_frames)
            history.append({"step": step, "loss": round(loss.item(), 5), "heldout_psnr": round(psnr, 2)})
            log(f"decoder step {step}: loss {loss.item():.4f}, held-out PSNR {psnr:.2f} dB")
    vae.eval().requires_grad_(False)
    return history


@torch.no_grad()
def latent_std(vae, videos: list[torch.Tensor], chunk: int = 20) -> float:
    """Std of the (unscaled) latent modes over every frame of ``videos``."""

    z = torch.cat(
        [vae.encode(v[i : i + chunk]).latent_dist.mode() for v in videos for i in range(0, len(v), chunk)]
    )
    return float(z.std())


# ---- CLIP ----------------------------------------------------------------------------------------------
def build_image_encoder(cfg: ToySVDConfig):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from dimo.models.hvg.config import CLIP_PRESETS

    torch.manual_seed(cfg.seed + 2)
    return (
        CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_PRESETS["tiny"])).eval().requires_grad_(False)
    )


@torch.no_grad()
def clip_embed(image_encoder, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 1, D), the preprocessing of :meth:`HVGModule.clip_embed`."""

    from dimo.models.common import CLIP_MEAN, CLIP_STD

    size = image_encoder.config.image_size
    x = F.interpolate(
        (images + 1) / 2, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    x = (x - x.new_tensor(CLIP_MEAN)[:, None, None]) / x.new_tensor(CLIP_STD)[:, None, None]
    return image_encoder(pixel_values=x).image_embeds[:, None]


# ---- UNet ----------------------------------------------------------------------------------------------
def train_unet(cfg: ToySVDConfig, vae, image_encoder, videos: list[torch.Tensor], log=print):
    """SVD-style image-to-video pretraining of the tiny SVD UNet (no pose input)."""

    from diffusers import UNetSpatioTemporalConditionModel

    from dimo.diffusion.edm import EDM
    from dimo.models.hvg.config import UNET_PRESETS

    edm = EDM()
    sf = vae.config.scaling_factor
    with torch.no_grad():  # every frame's scaled latent and CLIP embedding, once
        lat = [
            torch.cat([vae.encode(v[i : i + 20]).latent_dist.mode() for i in range(0, len(v), 20)]) * sf
            for v in videos
        ]
        emb = [clip_embed(image_encoder, v) for v in videos]
    torch.manual_seed(cfg.seed + 3)
    unet = UNetSpatioTemporalConditionModel(**UNET_PRESETS["tiny"])
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.unet_lr, total_steps=cfg.unet_steps, pct_start=0.05
    )
    b, t, aug = cfg.unet_batch, cfg.clip_frames, cfg.noise_aug_strength
    ids = torch.tensor([cfg.fps - 1, cfg.motion_bucket_id, aug], dtype=torch.float32).expand(b, 3)
    history, running = [], []
    unet.train()
    for step in range(1, cfg.unet_steps + 1):
        x0, ref, ctx = [], [], []
        for i in torch.randint(len(videos), (b,), generator=gen).tolist():
            s = int(torch.randint(videos[i].shape[0] - t + 1, (1,), generator=gen))
            x0.append(lat[i][s : s + t])
            ref.append(videos[i][s])
            ctx.append(emb[i][s])
        x0, ref, ctx = (
            torch.stack(x0),
            torch.stack(ref),
            torch.stack(ctx),
        )  # (B, T, C, h, w) (B, 3, H, W) (B, 1, D)
        with torch.no_grad():
            noisy_ref = ref + aug * torch.randn(ref.shape, generator=gen)
            cond = vae.encode(noisy_ref).latent_dist.mode()  # unscaled, as SVD
        keep = (torch.rand(b, generator=gen) >= cfg.cfg_drop_prob).float()
        cond, ctx = cond * keep[:, None, None, None], ctx * keep[:, None, None]
        sigma = edm.sample_sigma(b, gen)
        noisy = x0 + sigma[:, None, None, None, None] * torch.randn(x0.shape, generator=gen)
        _, _, c_in, c_noise = edm.precondition(sigma)
        inp = torch.cat([noisy * c_in[:, None, None, None, None], cond[:, None].expand_as(x0)], dim=2)
        out = unet(inp, c_noise, ctx, ids, return_dict=False)[0]
        loss = F.mse_loss(out, edm.v_target(x0, noisy, sigma))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % 250 == 0 or step == cfg.unet_steps:
            history.append({"step": step, "loss": round(float(np.mean(running)), 5)})
            log(f"unet step {step}: mean loss {np.mean(running):.4f}")
            running = []
    return unet.eval(), history


# ---- folder --------------------------------------------------------------------------------------------
def _write_layout(out: Path, cfg: ToySVDConfig) -> None:
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPImageProcessor

    from dimo.models.hvg.config import CLIP_PRESETS

    size = CLIP_PRESETS["tiny"]["image_size"]
    CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(out / "feature_extractor")
    EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        use_karras_sigmas=True,
        sigma_min=0.002,
        sigma_max=700.0,
        timestep_spacing="leading",
        steps_offset=1,
    ).save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableVideoDiffusionPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def build(out: str | Path, cfg: ToySVDConfig | None = None, log=print) -> dict:
    """Train every component and write the folder at ``out`` (replaced atomically); returns the report."""

    from dimo.pipelines.io import atomic_folder

    cfg = cfg or ToySVDConfig()
    out = Path(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        train = load_clips(cfg.data_seed, cfg.clips_per_source, cfg.num_frames, cfg.size)
        heldout = load_clips(cfg.heldout_seed, cfg.heldout_per_source, cfg.num_frames, cfg.size)
        t_data = time.perf_counter() - t0
        log(f"{len(train)} training and {len(heldout)} held-out toy videos in {t_data:.0f} s")

        t0, c0 = time.perf_counter(), time.process_time()
        vae, vae_hist = train_vae(cfg, train, heldout, log)
        std = latent_std(vae, train)
        vae.register_to_config(scaling_factor=1.0 / std)
        t_vae, cpu_vae = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        decoder_clips = load_clips(
            cfg.decoder_data_seed, cfg.decoder_clips_per_source, cfg.num_frames, cfg.size
        )
        dec_hist = train_decoder(cfg, vae, decoder_clips, heldout, log)
        t_dec = time.perf_counter() - t0
        psnr = reconstruction_psnr(vae, heldout, cfg.clip_frames)
        log(f"VAE: held-out PSNR {psnr:.2f} dB, latent std {std:.4f}, {t_vae:.0f} s")
        if psnr < cfg.target_psnr:  # recorded in the report and said loudly, not hidden
            log(f"WARNING: toy VAE reaches {psnr:.2f} dB < the {cfg.target_psnr} dB target (see docs/hvg.md)")

        image_encoder = build_image_encoder(cfg)
        t0, c0 = time.perf_counter(), time.process_time()
        unet, unet_hist = train_unet(cfg, vae, image_encoder, train, log)
        t_unet, cpu_unet = time.perf_counter() - t0, time.process_time() - c0
        log(f"UNet: {t_unet:.0f} s")
    finally:
        torch.set_num_threads(threads)

    report = {
        "config": asdict(cfg),
        "train_videos": len(train),
        "heldout_videos": len(heldout),
        "vae": {
            "parameters": sum(p.numel() for p in vae.parameters()),
            "heldout_psnr_db": round(psnr, 2),
            "target_psnr_db": cfg.target_psnr,
            "target_met": psnr >= cfg.target_psnr,
            "latent_std": round(std, 5),
            "scaling_factor": 1.0 / std,
            "history": vae_hist,
            "seconds": round(t_vae, 1),
            "cpu_seconds": round(cpu_vae, 1),
            "decoder": {"history": dec_hist, "seconds": round(t_dec, 1), "refined_from_fp16": False},
        },
        "unet": {
            "parameters": sum(p.numel() for p in unet.parameters()),
            "history": unet_hist,
            "seconds": round(t_unet, 1),
            "cpu_seconds": round(cpu_unet, 1),
        },
        "image_encoder": {"parameters": sum(p.numel() for p in image_encoder.parameters()), "trained": False},
        "data_seconds": round(t_data, 1),
        "threads": 1,
    }
    report["weights_variant"] = "fp16"
    with atomic_folder(out) as tmp:
        # the trained VAE and UNet are written as SVD-xt's own fp16 variant files (half the size, so the
        # committed toy folders stay small); the HVG loaders read that variant into float32 parameters
        vae.to(torch.float16).save_pretrained(tmp / "vae", variant="fp16")
        unet.to(torch.float16).save_pretrained(tmp / "unet", variant="fp16")
        image_encoder.save_pretrained(tmp / "image_encoder")
        _write_layout(tmp, cfg)
        (tmp / "toy_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def refine_decoder(folder: str | Path, cfg: ToySVDConfig | None = None, log=print) -> dict:
    """Run the decoder phase alone on the VAE of an existing toy SVD folder (its fp16 weights read into
    float32) and rewrite the folder atomically; the encoder, UNet and image encoder are unchanged.
    Returns the updated report."""

    import shutil

    from dimo.models.hvg.config import HVGConfig
    from dimo.models.hvg.network import build_vae
    from dimo.pipelines.io import atomic_folder

    cfg = cfg or ToySVDConfig()
    folder = Path(folder)
    report_path = folder / "toy_report.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"not a toy SVD folder (no toy_report.json): {folder}")
    report = json.loads(report_path.read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vae = build_vae(HVGConfig(), folder)
        heldout = load_clips(cfg.heldout_seed, cfg.heldout_per_source, cfg.num_frames, cfg.size)
        before = reconstruction_psnr(vae, heldout, cfg.clip_frames)
        t0 = time.perf_counter()
        clips = load_clips(cfg.decoder_data_seed, cfg.decoder_clips_per_source, cfg.num_frames, cfg.size)
        hist = train_decoder(cfg, vae, clips, heldout, log)
        seconds = time.perf_counter() - t0
        psnr = reconstruction_psnr(vae, heldout, cfg.clip_frames)
    finally:
        torch.set_num_threads(threads)
    log(f"decoder phase: held-out PSNR {before:.2f} -> {psnr:.2f} dB in {seconds:.0f} s")
    report["config"].update({k: v for k, v in asdict(cfg).items() if "decoder" in k})
    report["vae"].update(
        heldout_psnr_db=round(psnr, 2),
        target_met=psnr >= report["vae"]["target_psnr_db"],
        decoder={"history": hist, "seconds": round(seconds, 1), "refined_from_fp16": True,
                 "heldout_psnr_db_before": round(before, 2)},
    )  # fmt: skip
    with atomic_folder(folder) as tmp:
        for part in folder.iterdir():
            if part.name not in ("vae", "toy_report.json"):
                (shutil.copytree if part.is_dir() else shutil.copy2)(part, tmp / part.name)
        # SVDVAE.save_pretrained writes a plain SVD vae/ folder (_class_name AutoencoderKLTemporalDecoder,
        # the folder's latent scale kept)
        vae.to(torch.float16).save_pretrained(tmp / "vae", variant="fp16")
        (tmp / "toy_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dimo.toy.svd", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("pretrained/toy-svd-xt"))
    parser.add_argument("--seed", type=int, default=ToySVDConfig.seed)
    parser.add_argument("--vae-max-steps", type=int, default=ToySVDConfig.vae_max_steps)
    parser.add_argument("--unet-steps", type=int, default=ToySVDConfig.unet_steps)
    parser.add_argument("--decoder-steps", type=int, default=ToySVDConfig.vae_decoder_steps)
    parser.add_argument(
        "--refine-decoder",
        action="store_true",
        help="run only the decoder phase on the existing folder at --out (its encoder and UNet are kept)",
    )
    args = parser.parse_args(argv)
    if args.refine_decoder:
        report = refine_decoder(args.out, ToySVDConfig(seed=args.seed, vae_decoder_steps=args.decoder_steps))
        print(f"refined the decoder of {args.out}: VAE {report['vae']['heldout_psnr_db']} dB")
        return 0
    report = build(
        args.out,
        ToySVDConfig(
            seed=args.seed,
            vae_max_steps=args.vae_max_steps,
            unet_steps=args.unet_steps,
            vae_decoder_steps=args.decoder_steps,
        ),
    )
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(
        f"wrote {args.out} ({size / 1e6:.1f} MB): VAE {report['vae']['heldout_psnr_db']} dB in "
        f"{report['vae']['seconds']} s, UNet {report['unet']['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
