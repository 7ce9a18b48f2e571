"""``HVGModule``: EDM training of the HVG network on V x T grids, sampling, video logging.

Training step (one HVG batch, ``docs/contracts.md``):

1. frozen VAE: target (B, V, T, 3, H, W) -> scaled latents x0 (B, V, T, 4, h, w); reference ->
   clean scaled latent (ReferenceNet input) and SVD's conditioning latent (unscaled mode of the
   noise-augmented reference); frozen CLIP: reference -> image embedding (B, 1, D);
2. bone maps rendered on the training device from ``joints3d`` and the aligned cameras;
3. EDM: ``log sigma ~ N(P_mean, P_std)`` per sample, ``x = x0 + sigma n``, network on ``c_in x`` at
   ``c_noise``, MSE to the v-style target (== EDM-weighted denoising loss, see
   :mod:`dimo.diffusion.edm`);
4. classifier-free-guidance dropout: with probability ``cfg_drop_prob`` a sample loses every
   reference pathway (CLIP, concatenated latent, ReferenceNet) at once.

All randomness of a step (sigma, noise, dropout, noise augmentation) comes from a generator seeded
by ``(seed, global_step, rank)``, so a resumed run repeats the uninterrupted one exactly.
Samples (:meth:`HVGModule.sample_media`: labelled validation grids and videos, and training videos
``generated | target | normal | depth`` with rows views) are logged by
:class:`~dimo.callbacks.SampleLogger` (``--samples.every_n_steps``, ``--samples.train_every_n_steps``).

Video metrics (``val_metrics``, harness names from :mod:`dimo.eval.harness`, default PSNR/SSIM/L1):
on the first ``val_metric_batches`` validation batches the grid is sampled and scored against the
target, every view a video (the multi-view ``fvd_v``/``fvd_f`` get the (V, T) grid), logged as
``val/<label>``; ``test_step`` scores every test batch under ``test/``. Lightning computes, syncs
(DDP) and resets them per epoch.

Multi-view keypoint consistency (``consistency_detector``, a toy keypoint detector folder): on the same
batches the detector finds 2-D body joints in every generated view and frame, they are triangulated
with the batch's aligned cameras and reprojected (:class:`~dimo.eval.multiview.KeypointConsistency`):
``val/kp_reproj_px``; the same on the target frames, ``val/kp_reproj_px_real``, is the floor that the
detector and triangulation alone give. ``val/kp_valid_frac`` (``_real``) is the fraction of joint
observations confident enough to count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.aggregation import MeanMetric, SumMetric

from dimo.data.pixels import check_model_batch
from dimo.diffusion.edm import EDM
from dimo.models.attention import AttentionBackend, scope_attention_backend
from dimo.models.common import (
    DTYPES,
    FrozenDType,
    freeze,
    load_strict,
    restore_prefixes,
    step_generator,
    strip_prefixes,
)
from dimo.models.hvg import conditioning as hvg_cond
from dimo.models.hvg.conditioning import render_pose_maps
from dimo.models.hvg.config import HVGConfig
from dimo.models.hvg.network import SVDVAE, HVGUNet, SVDImageEncoder, is_hvg_key, strip_checkpoint_prefix
from dimo.models.hvg.sampling import ProgressiveSampler
from dimo.models.lora import (
    LoRASettings,
    add_lora,
    is_lora_parameter,
    load_adapters,
    read_adapter_config,
    save_adapters,
    unwrapped_name,
)
from dimo.pose.joints import TOY_BODY

#: Detector channels scored by the keypoint consistency: the 16 body joints (dimo.pose.joints.TOY_BODY).
#: Fingers are left out: on the real 64x64 validation targets of experiments/hvg.yaml (3 batches, 144
#: frames) the toy detector's finger joints are off their true projection by 5.8 px (median; mean
#: 12.6) against 3.5 px (6.3) for the body, and their score does not rank them (mean error 11-15 px at
#: every threshold), so with them the real-frame floor at score >= 0.3 is 5.0 px instead of 1.9 px.
KP_CHANNELS = TOY_BODY
#: Seed of the gap protocol's generator for validation batch k: ``noise_seed * 31 + GAP_SEED_OFFSET + k``.
GAP_SEED_OFFSET = 15_485_863
_FROZEN = ("vae.", "image_encoder.")
#: checkpoint key of :meth:`HVGModule.parts_config` (the parts' constructor arguments)
PARTS_KEY = "dimo_parts"


class HVGModule(LightningModule):
    """HVG training/sampling.

    Args:
        net: the HVG network (:class:`~dimo.models.hvg.HVGUNet`: SVD UNet preset + ablation switches);
            default the ``tiny`` one.
        vae, image_encoder: the frozen SVD VAE and CLIP image encoder (:class:`~dimo.models.hvg.SVDVAE`,
            :class:`~dimo.models.hvg.SVDImageEncoder`); default: those of ``net``'s preset.
        pretrained: local SVD-xt diffusers folder (``unet/``, ``vae/``, ``image_encoder/``) whose weights
            are loaded into the three parts (strictly; HVG's new layers keep their init); ``None``:
            random weights (the ``tiny`` toy runs and tests). The method's one pretrained setting.
        init_from: Lightning checkpoint whose weights initialise this run (phase 2 from phase 1).
        optimizer, lr_scheduler: injected by LightningCLI; only the UNet (+ HVG layers) is optimised.
        edm: noise distribution / preconditioning / sampling schedule.
        cfg_drop_prob: probability of dropping the reference (all pathways) per training sample.
        noise_aug_strength, fps, motion_bucket_id: SVD's conditioning (``added_time_ids``).
        sampler: progressive spatio-temporal sampler windows for logging / predict.
        sample_steps, guidance_scale: sampling steps and CFG scale for logging / predict.
        vae_chunk: images per VAE encode call (and videos per decode call, see ``vae_decode_chunk``).
        vae_decode_chunk: frames per VAE decode call within one video (diffusers' SVD pipeline's
            ``decode_chunk_size``: the temporal decoder sees each chunk as its own video, bounding
            decode memory on long videos); ``None`` decodes every video whole.
        frozen_dtype: dtype of the frozen VAE and CLIP image encoder weights (``bfloat16`` halves their
            memory; their outputs are returned in the input's dtype).
        noise_seed: base seed of the per-step generators (sigma, noise, dropout).
        val_metrics: video metrics (harness names: ``psnr``, ``ssim``, ``l1``, ``lpips_alex``, ``fid``,
            ``fvd``, ``fvd_v``, ...) logged as ``val/<label>`` and ``test/<label>``.
        metrics_weights_dir: weight files of LPIPS/FID/FVD/FID-VID (default ``$DIMO_WEIGHTS_DIR``).
        val_metric_batches: validation batches per epoch that are sampled and scored (0: none).
        val_swap_samples: on those batches, sample every grid that has a donor from another clip a second
            time with the donor's motion and cameras for its bone maps (same noise, reference and
            target) and log the PSNR of the novel cells with its own bone maps (``val/psnr_novel_own``)
            and with the donor's (``val/psnr_novel_other_pose``). Doubles the validation sampling cost.
        gap_sigmas: the fixed noise levels of the conditioning-use gaps (``val/pose_gap``,
            ``val/reference_gap``, see :meth:`conditioning_losses`); empty: no gaps.
        pose_lr_mult: learning-rate multiplier of the pose modulator (its own parameter group).
        backbone_lr_mult: learning-rate multiplier of the weights SVD-xt provides (the base UNet and the
            ReferenceNet copied from it; their own parameter group); ``0`` freezes them, so only HVG's
            new layers (pose modulator, view attention, camera embedding) train. 1 = the paper's full
            fine-tuning.
        gradient_checkpointing: recompute the UNet's and ReferenceNet's res blocks, whole
            spatio-temporal transformers (spatial, view, temporal attention), samplers and the pose
            modulator in backward (:meth:`~dimo.models.hvg.network.HVGUNet.enable_gradient_checkpointing`;
            same gradients).
        attention_backend: SDPA backend of the UNet's attention (incl. view attention, ReferenceNet)
            only; ``auto`` = PyTorch's choice (:mod:`dimo.models.attention`).
        train_parts: ``full`` (the paper: every UNet weight trains, scaled by ``backbone_lr_mult``) or
            ``lora``: the weights SVD-xt provides (base UNet and ReferenceNet) are frozen and carry
            LoRA adapters (``lora``), which train with HVG's new layers.
        lora: the adapters (:class:`~dimo.models.lora.LoRASettings`: rank, alpha, targets, dropout)
            on the SVD-provided layers; required by ``train_parts: lora``, ignored otherwise.
        consistency_detector: toy keypoint detector folder (``config.json`` + ``model.safetensors``,
            e.g. ``pretrained/toy-detector``); when set, the sampled validation batches also log the
            multi-view keypoint consistency ``val/kp_reproj_px`` (generated) and
            ``val/kp_reproj_px_real`` (targets), in pixels of the sample. A missing file fails here.
        consistency_min_score: detector score from which a body joint counts. 0.3 on the real
            validation targets of ``experiments/hvg.yaml``: keeps 64% of the body observations, median
            error to the true projection 2.2 px (3.5 px with all), real-frame floor 1.9 px (2.8 px
            with all); 0.5 keeps only 23%, too few on blurry samples.
    """

    def __init__(
        self,
        net: HVGUNet | None = None,
        vae: SVDVAE | None = None,
        image_encoder: SVDImageEncoder | None = None,
        pretrained: Path | None = None,
        init_from: Path | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        edm: EDM | None = None,
        cfg_drop_prob: float = 0.1,
        noise_aug_strength: float = 0.02,
        fps: int = 7,
        motion_bucket_id: int = 127,
        sampler: ProgressiveSampler | None = None,
        sample_steps: int = 10,
        guidance_scale: float = 1.0,
        vae_chunk: int = 16,
        vae_decode_chunk: int | None = None,
        frozen_dtype: FrozenDType = "float32",
        noise_seed: int = 0,
        val_metrics: Sequence[str] = ("psnr", "ssim", "l1"),
        metrics_weights_dir: str | None = None,
        val_metric_batches: int = 1,
        gap_sigmas: Sequence[float] = (0.4, 2.0, 10.0),
        pose_lr_mult: float = 1.0,
        backbone_lr_mult: float = 1.0,
        gradient_checkpointing: bool = False,
        attention_backend: AttentionBackend = "auto",
        train_parts: Literal["full", "lora"] = "full",
        lora: LoRASettings | None = None,
        consistency_detector: Path | None = None,
        consistency_min_score: float = 0.3,
        val_swap_samples: bool = True,
    ) -> None:
        super().__init__()
        lora = LoRASettings.coerce(lora)
        if train_parts == "lora" and lora is None:
            raise ValueError("train_parts: lora needs model.init_args.lora (rank, alpha, targets)")
        if isinstance(net, (HVGConfig, dict)):
            raise TypeError(
                "HVGModule(net=...) takes the network (dimo.models.hvg.HVGUNet), not its config: in YAML "
                "net: {class_path: dimo.models.hvg.HVGUNet, init_args: {hvg: {preset: tiny, ...}}}"
            )
        # Plain values in hparams (dicts, str) so checkpoints load with torch's weights_only=True;
        # load_from_checkpoint passes the dicts back, which are accepted here.
        self.edm = EDM(**edm) if isinstance(edm, dict) else (edm or EDM())
        self.sampler = (
            ProgressiveSampler(**sampler) if isinstance(sampler, dict) else (sampler or ProgressiveSampler())
        )
        self.save_hyperparameters(ignore=["net", "vae", "image_encoder", "optimizer", "lr_scheduler"])
        self.hparams.update(
            edm=asdict(self.edm),
            sampler=asdict(self.sampler),
            pretrained=None if pretrained is None else str(pretrained),
            init_from=None if init_from is None else str(init_from),
            val_metrics=list(val_metrics),
            lora=None if lora is None else lora.as_dict(),
            consistency_detector=None if consistency_detector is None else str(consistency_detector),
        )
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.pretrained = pretrained
        self.unet = net if net is not None else HVGUNet()
        preset = self.net_config.preset
        vae = vae if vae is not None else SVDVAE(preset)
        image_encoder = image_encoder if image_encoder is not None else SVDImageEncoder(preset)
        _check_parts(self.unet, vae, image_encoder)
        if pretrained is not None:  # the one folder: SVD UNet, VAE and CLIP weights, each strictly
            for part in (self.unet, vae, image_encoder):
                part.load_folder(pretrained)
        self.train_parts = train_parts
        if train_parts == "lora":  # after the pretrained weights; lora_B = 0: the UNet starts unchanged
            provided = {n for n, _ in backbone_parameters(self.unet)}
            add_lora(self.unet, lora, only=lambda name: f"{name}.weight" in provided)
            lora_ids = {id(p) for n, p in self.unet.named_parameters() if is_lora_parameter(n)}
            for n, p in self.unet.named_parameters():  # adapters and HVG's new layers train
                p.requires_grad_(id(p) in lora_ids or unwrapped_name(n) not in provided)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        scope_attention_backend([self.unet], attention_backend)  # not the frozen VAE / CLIP
        if frozen_dtype not in DTYPES:
            raise ValueError(f"frozen_dtype must be one of {list(DTYPES)}, got {frozen_dtype!r}")
        self.vae, self.image_encoder = freeze(vae), freeze(image_encoder)
        if frozen_dtype != "float32":
            self.vae.to(DTYPES[frozen_dtype])
            self.image_encoder.to(DTYPES[frozen_dtype])
        if vae_chunk < 1 or (vae_decode_chunk is not None and vae_decode_chunk < 1):
            raise ValueError(
                f"vae_chunk and vae_decode_chunk must be >= 1, got {vae_chunk}, {vae_decode_chunk}"
            )
        self.vae_decode_chunk = vae_decode_chunk
        if not 0.0 <= cfg_drop_prob <= 1.0:
            raise ValueError(f"cfg_drop_prob must be in [0, 1], got {cfg_drop_prob}")
        self.cfg_drop_prob, self.noise_aug_strength = cfg_drop_prob, noise_aug_strength
        self.fps, self.motion_bucket_id = fps, motion_bucket_id
        self.sample_steps, self.guidance_scale = sample_steps, guidance_scale
        self.vae_chunk, self.noise_seed = vae_chunk, noise_seed
        # one collection per split (submodules: moved to the device, synced under DDP; no checkpoint keys)
        from dimo.eval.harness import build_metrics

        self.val_metric_batches = val_metric_batches
        self.metrics_val = build_metrics(val_metrics, metrics_weights_dir)
        self.metrics_test = build_metrics(val_metrics, metrics_weights_dir)
        # PSNR of the samples and of a static baseline (the reference repeated) on the same cells
        self.metrics_val_pair = torch.nn.ModuleDict(
            {k: build_metrics(["psnr"], metrics_weights_dir)["psnr"] for k in ("psnr_novel", "psnr_static")}
        )
        # do the samples follow their bone maps? the same grids drawn with a donor's bone maps
        self.val_swap_samples = bool(val_swap_samples)
        self.metrics_val_swap = torch.nn.ModuleDict(
            {
                k: build_metrics(["psnr"], metrics_weights_dir)["psnr"]
                for k in ("psnr_novel_own", "psnr_novel_other_pose")
            }
        )
        if any(not (s > 0 and math.isfinite(s)) for s in gap_sigmas):
            raise ValueError(f"gap_sigmas must be finite and > 0, got {list(gap_sigmas)}")
        self.gap_sigmas = tuple(float(s) for s in gap_sigmas)
        if not (pose_lr_mult > 0 and math.isfinite(pose_lr_mult)):
            raise ValueError(f"pose_lr_mult must be finite and > 0, got {pose_lr_mult}")
        self.pose_lr_mult = pose_lr_mult
        if not (backbone_lr_mult >= 0 and math.isfinite(backbone_lr_mult)):
            raise ValueError(f"backbone_lr_mult must be finite and >= 0, got {backbone_lr_mult}")
        self.backbone_lr_mult = backbone_lr_mult
        if backbone_lr_mult == 0:
            for _, p in backbone_parameters(self.unet):
                p.requires_grad_(False)
        # summed per-(sample, sigma) losses of the gap protocol over a validation epoch (DDP-synced)
        # (per gap sigma i: key f"{condition}_s{i}")
        self.gap_sums = torch.nn.ModuleDict(
            {
                f"{k}_s{i}": SumMetric()
                for k in ("own", "pose_swapped", "reference_swapped")
                for i in range(len(self.gap_sigmas))
            }
        )
        if not 0.0 <= consistency_min_score <= 1.0:
            raise ValueError(f"consistency_min_score must be in [0, 1], got {consistency_min_score}")
        self.consistency_min_score = consistency_min_score
        self.kp_detector = None  # a plain attribute: no submodule, no checkpoint keys, not optimised
        if consistency_detector is not None:
            from dimo.eval.multiview import KeypointConsistency
            from dimo.pose.toy_detector import ToyKeypointDetector

            # a missing config.json / model.safetensors raises DetectorError naming the file
            self.kp_detector = ToyKeypointDetector.frozen(consistency_detector)
            self.kp_metrics = torch.nn.ModuleDict(
                {k: KeypointConsistency() for k in ("kp_reproj_px", "kp_reproj_px_real")}
            )
            self.kp_valid = torch.nn.ModuleDict(
                {k: MeanMetric() for k in ("kp_valid_frac", "kp_valid_frac_real")}
            )
        if init_from is not None:
            self._init_from(Path(init_from))

    @property
    def net_config(self) -> HVGConfig:
        """The network's preset and ablation switches."""

        return self.unet.hvg

    # ---- frozen parts ---------------------------------------------------------------------------
    def parts_config(self) -> dict[str, dict]:
        """Constructor arguments of the three parts: with the checkpoint's weights (and ``pretrained``
        for the stripped frozen parts) they rebuild the module with no run config beside it."""

        return {
            "net": {"hvg": asdict(self.net_config)},
            "vae": {"preset": self.vae.preset},
            "image_encoder": {"preset": self.image_encoder.preset},
        }

    @staticmethod
    def build_parts(parts: dict[str, dict]) -> dict[str, torch.nn.Module]:
        """``net``, ``vae``, ``image_encoder`` from :meth:`parts_config`'s plain values."""

        return {
            "net": HVGUNet(HVGConfig(**parts["net"]["hvg"])),
            "vae": SVDVAE(**parts["vae"]),
            "image_encoder": SVDImageEncoder(**parts["image_encoder"]),
        }

    def _init_from(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"init_from checkpoint not found: {path}")
        from dimo.safe_io import load_torch

        state = load_torch(path, what="init_from checkpoint")["state_dict"]  # weights_only=True
        restore_prefixes(state, self, _FROZEN)
        load_strict(self, state, path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[PARTS_KEY] = self.parts_config()
        # Pretrained frozen parts are re-read from `pretrained`, not copied into every checkpoint.
        if self.pretrained is not None:
            checkpoint["state_dict"] = strip_prefixes(checkpoint["state_dict"], _FROZEN)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint["state_dict"]
        if not any(k.startswith(_FROZEN) for k in sd):
            restore_prefixes(sd, self, _FROZEN)

    # ---- adapters alone (train_parts: lora) -------------------------------------------------------
    def adapter_keys(self) -> list[str]:
        """UNet state-dict keys that are not SVD-provided weights: LoRA adapters and HVG's new layers."""

        provided = {unwrapped_name(n) for n, _ in backbone_parameters(self.unet)}
        return [
            k for k in self.unet.state_dict() if is_lora_parameter(k) or unwrapped_name(k) not in provided
        ]

    def save_adapters(self, folder: str | Path) -> Path:
        """Write the adapters and HVG's new layers alone (the SVD weights stay in ``pretrained``)."""

        if self.train_parts != "lora":
            raise ValueError("this module has no LoRA adapters (train_parts is not lora); export it whole")
        config = {k: v for k, v in self.hparams.items() if k not in ("pretrained", "init_from")}
        config[PARTS_KEY] = self.parts_config()
        return save_adapters(self.unet, self.adapter_keys(), folder, config, {"class": "HVGModule"})

    @classmethod
    def from_adapters(cls, folder: str | Path, pretrained: str | Path) -> HVGModule:
        """The SVD-xt folder ``pretrained`` plus an adapter folder, loaded strictly."""

        config = read_adapter_config(folder)
        parts = config.pop(PARTS_KEY, None)
        if parts is None:  # written before the parts were the module's arguments: the net config in hparams
            preset = config["net"].get("preset", "tiny")
            parts = {
                "net": {"hvg": config.pop("net")},
                "vae": {"preset": preset},
                "image_encoder": {"preset": preset},
            }
        module = cls(**config, **cls.build_parts(parts), pretrained=Path(pretrained))
        load_adapters(module.unet, module.adapter_keys(), folder)
        return module

    def configure_optimizers(self):
        pose = [p for p in self.unet.pose_modulator.parameters() if p.requires_grad]
        backbone = []  # its own group only when its LR differs (the default keeps two groups)
        if self.backbone_lr_mult != 1.0:
            backbone = [p for _, p in backbone_parameters(self.unet) if p.requires_grad]
        ids = {id(p) for p in pose + backbone}
        rest = [p for p in self.unet.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest}, {"params": pose}] + ([{"params": backbone}] if backbone else [])
        opt = self.optimizer_factory(groups)
        opt.param_groups[1]["lr"] *= self.pose_lr_mult  # before any scheduler reads initial_lr
        if backbone:
            opt.param_groups[2]["lr"] *= self.backbone_lr_mult
        if self.lr_scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.lr_scheduler_factory(opt), "interval": "step"},
        }

    # ---- encoders (the functions HVGPipeline samples with) ----------------------------------------
    def encode_images(self, images: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> latent mode (N, C, h, w), times the VAE scale if ``scaled``."""

        return hvg_cond.encode_images(self.vae, images, self.vae_chunk, scaled)

    def decode_latents(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(N, C, h, w) scaled latents, N a multiple of ``num_frames`` -> images (N, 3, H, W) in [-1, 1]."""

        return hvg_cond.decode_latents(self.vae, latents, num_frames, self.vae_chunk, self.vae_decode_chunk)

    def clip_embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> CLIP image embedding (B, 1, D)."""

        return hvg_cond.clip_embed(self.image_encoder, images)

    # ---- conditioning -------------------------------------------------------------------------
    def _generator(self, salt: int = 0) -> torch.Generator:
        seed = self.noise_seed * 1_000_003 + self.global_step * 7_919 + self.global_rank * 104_729 + salt
        return step_generator(seed % 2**63, self.device)

    def conditioning(self, batch: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
        """Everything the network needs besides the noisy latents, for one batch."""

        check_model_batch(batch)  # float pixels in [-1, 1], never the loaders' uint8
        return hvg_cond.svd_conditioning(
            self.vae, self.image_encoder, batch, gen, self.net_config.pose_condition,
            self.noise_aug_strength, self.fps, self.motion_bucket_id, self.vae_chunk,
        )  # fmt: skip

    def forward(
        self, noisy: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any], **kwargs
    ) -> torch.Tensor:
        """Denoised estimate D (B, V, T, C, h, w) of ``noisy`` at noise level ``sigma`` (B,)."""

        return hvg_cond.edm_denoise(self.unet, self.edm, noisy, sigma, cond, **kwargs)

    # ---- training -----------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
        target = batch["target"]
        b, v, t = target.shape[:3]
        cond = self.conditioning(batch, gen)
        x0 = self.encode_images(target.flatten(0, 2)).reshape(b, v, t, *cond["reference_latent"].shape[1:])
        sigma = self.edm.sample_sigma(b, gen, device=x0.device).to(x0.dtype)
        noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        noisy = x0 + sigma.reshape(b, 1, 1, 1, 1, 1) * noise
        keep = torch.rand(b, generator=gen, device=x0.device) >= self.cfg_drop_prob
        _, _, c_in, c_noise = self.edm.precondition(sigma)
        out = self.unet(noisy * c_in.reshape(b, 1, 1, 1, 1, 1), c_noise, **cond, reference_keep=keep)
        return F.mse_loss(out.float(), self.edm.v_target(x0, noisy, sigma).float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, self._generator())
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["target"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        gen = step_generator(self.noise_seed * 31 + batch_idx, self.device)
        loss = self._loss(batch, gen)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["target"].shape[0], sync_dist=True)
        if self.gap_sigmas:
            losses = self.conditioning_losses(batch, batch_idx)
            if losses is not None:
                for k, x in losses.items():
                    for i in range(x.shape[1]):
                        self.gap_sums[f"{k}_s{i}"].update(x[:, i].sum())
        out = {"loss": loss}
        if batch_idx < self.val_metric_batches and (len(self.metrics_val) or self.kp_detector is not None):
            out["generated"] = self._update_metrics(self.metrics_val, "val", batch, batch_idx)
            if self.kp_detector is not None:
                self.update_keypoint_consistency(batch, out["generated"])
                b = batch["target"].shape[0]
                self.log_dict({f"val/{k}": m for k, m in self.kp_metrics.items()}, batch_size=b)
                self.log_dict({f"val/{k}": m for k, m in self.kp_valid.items()}, batch_size=b)
        return out  # the generated grids are reused by the SampleLogger

    def on_validation_epoch_end(self) -> None:
        if not self.gap_sigmas:
            return
        per = {k: m.compute() for k, m in self.gap_sums.items()}  # summed over ranks
        for m in self.gap_sums.values():
            m.reset()
        n = len(self.gap_sigmas)
        sums = {
            k: torch.stack([per[f"{k}_s{i}"] for i in range(n)])
            for k in ("own", "pose_swapped", "reference_swapped")
        }  # (S,)
        if not float(sums["own"].sum()) > 0:
            return  # no validation sample had a donor from another clip
        for name in ("pose", "reference"):
            gap = relative_gap(sums[f"{name}_swapped"].sum(), sums["own"].sum())
            self.log(f"val/{name}_gap", gap, sync_dist=False, rank_zero_only=False)
            for i, s in enumerate(self.gap_sigmas):  # the same gap at each noise level alone
                if float(sums["own"][i]) > 0:
                    gap_s = relative_gap(sums[f"{name}_swapped"][i], sums["own"][i])
                    self.log(f"val/{name}_gap_sigma{s:g}", gap_s, sync_dist=False, rank_zero_only=False)

    @torch.no_grad()
    def conditioning_losses(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        """Per-(sample, sigma) denoising losses of the conditioning-use protocol (``docs/hvg.md``).

        Fixed per validation batch ``batch_idx``: one generator seeded ``(noise_seed, batch_idx)`` draws
        the reference noise augmentation and one unit noise tensor, shared by every sigma of
        :attr:`gap_sigmas` and by the three conditions; no CFG dropout. Sample ``i``'s donor is the next
        sample in the batch (cyclically) from another clip (``clip_id``); samples without one are left
        out. Conditions: ``own`` (the batch as it is), ``pose_swapped`` (the donor's bone maps),
        ``reference_swapped`` (the donor's reference: CLIP embedding, conditioning latent, ReferenceNet
        latent). Returns name -> (N_kept, S) EDM-weighted MSEs, or None when no sample has a donor.
        """

        donor, kept = donor_indices(batch.get("clip_id"), batch["target"].shape[0])
        if not kept.any():
            return None
        was_training = self.training
        self.eval()
        try:
            gen = step_generator(self.noise_seed * 31 + GAP_SEED_OFFSET + batch_idx, self.device)
            target = batch["target"]
            b, v, t = target.shape[:3]
            cond = self.conditioning(batch, gen)
            x0 = self.encode_images(target.flatten(0, 2)).reshape(
                b, v, t, *cond["reference_latent"].shape[1:]
            )
            noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            pose = dict(cond, pose_maps={k: m[donor] for k, m in cond["pose_maps"].items()})
            ref = dict(cond)
            for k in ("encoder_hidden_states", "cond_latent", "reference_latent"):
                ref[k] = cond[k][donor]
            out: dict[str, list[torch.Tensor]] = {"own": [], "pose_swapped": [], "reference_swapped": []}
            for s in self.gap_sigmas:
                sigma = torch.full((b,), s, device=x0.device, dtype=x0.dtype)
                noisy = x0 + s * noise
                _, _, c_in, c_noise = self.edm.precondition(sigma)
                v_target = self.edm.v_target(x0, noisy, sigma).float()
                for name, c in (("own", cond), ("pose_swapped", pose), ("reference_swapped", ref)):
                    pred = self.unet(noisy * c_in[0], c_noise, **c).float()
                    out[name].append((pred - v_target).pow(2).flatten(1).mean(1))  # (B,)
            return {k: torch.stack(x, dim=1)[kept] for k, x in out.items()}  # (N_kept, S)
        finally:
            self.train(was_training)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        gen = step_generator(self.noise_seed * 31 + batch_idx, self.device)
        loss = self._loss(batch, gen)
        self.log("test/loss", loss, batch_size=batch["target"].shape[0], sync_dist=True)
        if len(self.metrics_test):
            self._update_metrics(self.metrics_test, "test", batch, batch_idx)
        return loss

    def _update_metrics(
        self, metrics: torch.nn.ModuleDict, split: str, batch: dict[str, Any], batch_idx: int
    ) -> torch.Tensor:
        """Sample the batch's grids and score them against the target (Lightning computes at epoch end);
        returns the samples (B, V, T, 3, H, W) in [-1, 1]."""

        from dimo.eval.multiview import MultiViewFVD

        gen = step_generator(self.noise_seed * 31 + 7_919 + batch_idx, self.device)
        g, r = (
            self.generate(batch, gen=gen).float().clamp(-1, 1),
            batch["target"].float(),
        )  # (B, V, T, 3, H, W)
        if split == "val" and self.val_swap_samples:
            self._update_swapped_samples(batch, g, batch_idx)
        if split == "val":
            # generated vs static baseline (the reference frame repeated) on the same cells: every
            # view x frame except the reference's own cell (view 0, frame 0), each cell one frame
            cells = r.flatten(1, 2)[:, 1:].flatten(0, 1)[:, None]  # (B*(V*T-1), 1, 3, H, W)
            gen_cells = g.flatten(1, 2)[:, 1:].flatten(0, 1)[:, None]
            static = batch["reference"].float()[:, None].expand(-1, r.shape[1] * r.shape[2] - 1, -1, -1, -1)
            self.metrics_val_pair["psnr_novel"].update(gen_cells, cells)
            self.metrics_val_pair["psnr_static"].update(static.flatten(0, 1)[:, None], cells)
            self.log_dict({f"val/{k}": m for k, m in self.metrics_val_pair.items()}, batch_size=g.shape[0])
        for metric in metrics.values():
            if isinstance(metric, MultiViewFVD):
                metric.update(g, r)
            else:
                metric.update(g.flatten(0, 1), r.flatten(0, 1))  # every view a video
        self.log_dict({f"{split}/{k}": m for k, m in metrics.items()}, batch_size=g.shape[0])
        return g

    @torch.no_grad()
    def _update_swapped_samples(self, batch: dict[str, Any], generated: torch.Tensor, batch_idx: int) -> None:
        """The batch sampled again with each grid's bone maps rendered from its donor's motion and
        cameras (``joints3d``, ``K``, ``R``, ``t``; the ``val/pose_gap`` donor), the same noise; PSNR of
        the novel cells (all but the reference's own) against the target, own vs donor's, on the grids
        that have a donor."""

        donor, kept = donor_indices(batch.get("clip_id"), batch["target"].shape[0])
        if not kept.any():
            return
        swapped = dict(batch)
        for key in ("joints3d", "K", "R", "t"):
            swapped[key] = batch[key][donor]
        gen = step_generator(self.noise_seed * 31 + 7_919 + batch_idx, self.device)  # as _update_metrics
        other = self.generate(swapped, gen=gen).float().clamp(-1, 1)
        idx = torch.nonzero(kept).flatten()

        def cells(x: torch.Tensor) -> torch.Tensor:  # (N*(V*T-1), 1, 3, H, W)
            return x[idx].flatten(1, 2)[:, 1:].flatten(0, 1)[:, None]

        target = cells(batch["target"].float())
        self.metrics_val_swap["psnr_novel_own"].update(cells(generated), target)
        self.metrics_val_swap["psnr_novel_other_pose"].update(cells(other), target)
        self.log_dict({f"val/{k}": m for k, m in self.metrics_val_swap.items()}, batch_size=len(idx))

    @torch.no_grad()
    def detect_keypoints(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Body joints of every view and frame: ``(B, V, T, 3, H, W)`` in [-1, 1] -> ``uv (B, V, T, J, 2)``
        pixels of the frames and ``valid (B, V, T, J)`` (score >= ``consistency_min_score``)."""

        b, v, t = frames.shape[:3]
        uv, score = self.kp_detector.detect_body(frames.flatten(0, 2))  # (B*V*T, 16, 2), (B*V*T, 16)
        uv, score = uv.reshape(b, v, t, -1, 2), score.reshape(b, v, t, -1)
        return uv, score >= self.consistency_min_score

    def update_keypoint_consistency(self, batch: dict[str, Any], generated: torch.Tensor) -> None:
        """Detected joints of the generated grid (B, V, T, 3, H, W) and of the target, triangulated with
        the batch's aligned cameras (``K`` in pixels of the (H, W) sample, world-to-camera ``R``, ``t``,
        one per view; docs/contracts.md) into ``kp_metrics`` and ``kp_valid``."""

        for suffix, frames in (("", generated), ("_real", batch["target"].float())):
            uv, valid = self.detect_keypoints(frames)
            self.kp_metrics[f"kp_reproj_px{suffix}"].update(uv, batch["K"], batch["R"], batch["t"], valid)
            self.kp_valid[f"kp_valid_frac{suffix}"].update(valid.float())

    # ---- sampling: the pipeline's sampler (dimo.pipelines.hvg), over this module's parts ----------
    def pipeline(self) -> Any:
        """An :class:`~dimo.pipelines.hvg.HVGPipeline` over this module's parts and settings (shared)."""

        from dimo.pipelines.hvg import HVGPipeline

        return HVGPipeline.from_module(self)

    @torch.no_grad()
    def generate(
        self, batch: dict[str, Any], gen: torch.Generator | None = None, steps: int | None = None
    ) -> torch.Tensor:
        """Sample the batch's V x T grid with the pipeline's sampler: (B, V, T, 3, H, W) in [-1, 1]."""

        check_model_batch(batch)
        was_training = self.training
        self.eval()
        try:
            return self.pipeline().sample(batch, gen or self._generator(salt=1), steps or self.sample_steps)
        finally:
            self.train(was_training)

    def pose_clips(self, batch: dict[str, Any], generated: torch.Tensor) -> list[tuple[torch.Tensor, Any]]:
        """What :class:`~dimo.callbacks.PoseEvaluation` scores: every view of every generated grid
        ``(B, V, T, 3, H, W)`` as a clip ``(T, 3, H, W)``, with its reference motion: the sample's
        ``joints3d`` in that view's aligned camera (``R``, ``t``) and its intrinsics ``K`` (pixels of the
        sample), per ``docs/contracts.md``."""

        from dimo.eval.motion import MotionReference

        b, v, t = generated.shape[:3]
        h, w = generated.shape[-2:]
        world = batch["joints3d"].detach().double().cpu()  # (B, T, 55, 3)
        R, tr, K = (batch[k].detach().double().cpu() for k in ("R", "t", "K"))  # (B, V, ...)
        ids = batch.get("clip_id") or [f"sample {i}" for i in range(b)]
        out = []
        for i in range(b):
            for j in range(v):
                cam = world[i, :t] @ R[i, j].T + tr[i, j]  # (T, 55, 3)
                ref = MotionReference(
                    cam, K[i, j].expand(t, 3, 3), int(h), int(w), "sample", f"{ids[i]} view {j}"
                )
                out.append((generated[i, j], ref))
        return out

    @torch.no_grad()
    def sample_media(
        self, batch: dict[str, Any], split: str, num_samples: int = 1, generated: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """What :class:`~dimo.callbacks.SampleLogger` logs, for the first grid of the batch.

        ``val``: ``val/samples``, a labelled grid (rows reference | normal | depth | generated | target,
        columns views x frames), and ``val/samples_video`` (rows the same, columns views); ``train``:
        ``train/samples``, a video with rows views and columns generated | target | bone maps.
        ``generated``: the validation step's samples of the batch, if it made them.
        """

        from dimo.viz import depth_to_image, labelled_grid, labelled_video, to_unit

        one = {k: (v[:1] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items()}
        if split == "train":
            video = self.generate(one, gen=step_generator(self.noise_seed, self.device))
            return {"train/samples": self.grid_video(one, video)}
        if generated is None:
            generated = self.generate(one, gen=step_generator(self.noise_seed * 31 + 7_919, self.device))
        target = one["target"]
        _, v, t, _, h, w = target.shape
        maps = render_pose_maps(
            one["joints3d"], one["K"], one["R"], one["t"], h, w, self.net_config.pose_condition
        )
        rows = {"reference": to_unit(one["reference"][0]).expand(v, t, 3, h, w)}
        for name, m in maps.items():  # (1, V, T, C, H, W)
            m = m[0].float().cpu()
            rows[name] = (
                depth_to_image(1 - m[:, :, 0], m[:, :, 0] > -1) if m.shape[2] == 1 else to_unit(m[:, :, :3])
            )
        rows["generated"] = to_unit(generated[0])
        rows["target"] = to_unit(target[0])  # every row (V, T, 3, H, W) in [0, 1]
        cols = [f"v{i} t{j}" for i in range(v) for j in range(t)]
        grid = labelled_grid([(k, r.flatten(0, 1)) for k, r in rows.items()], cols)
        frames = labelled_video(
            [(k, r.transpose(0, 1)) for k, r in rows.items()], [f"view {i}" for i in range(v)]
        )
        return {f"{split}/samples": grid, f"{split}/samples_video": frames}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.generate(batch)

    @torch.no_grad()
    def grid_video(self, batch: dict[str, Any], video: torch.Tensor) -> torch.Tensor:
        """First sample: rows = views, columns = generated | target | bone maps -> (T, 3, V*H, C*W) in [0, 1]."""

        target = batch["target"][0]  # (V, T, 3, H, W)
        v, t, _, h, w = target.shape
        maps = render_pose_maps(
            batch["joints3d"][:1],
            batch["K"][:1],
            batch["R"][:1],
            batch["t"][:1],
            h,
            w,
            self.net_config.pose_condition,
        )
        cols = [video[0], target]
        for m in maps.values():
            m = m[0]
            cols.append(m.expand(v, t, 3, h, w) if m.shape[2] == 1 else m[:, :, :3])
        grid = torch.cat(cols, dim=-1)  # (V, T, 3, H, C*W)
        grid = grid.permute(1, 2, 0, 3, 4).reshape(t, 3, v * h, grid.shape[-1])
        return ((grid.float().cpu() + 1) / 2).clamp(0, 1)


def backbone_parameters(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The UNet's parameters that SVD-xt provides: base UNet keys and the ReferenceNet (a copy of them);
    never LoRA adapter weights (peft's ``...base_layer.weight`` names count as the layer's own)."""

    return [
        (n, p)
        for n, p in unet.named_parameters()
        if not is_lora_parameter(n)
        and (not is_hvg_key(unwrapped_name(strip_checkpoint_prefix(n))) or n.startswith("reference_net."))
    ]


def donor_indices(clip_ids: Sequence[str] | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Donor of every sample for the conditioning-use gaps: the next sample (cyclically) of another clip.

    Returns ``(donor (B,), kept (B,) bool)``; a sample with no other clip in the batch keeps itself as
    donor and ``kept=False``. Without clip ids every sample counts as its own clip (roll by one).
    """

    ids = list(clip_ids) if clip_ids is not None else [str(i) for i in range(batch_size)]
    donor, kept = list(range(batch_size)), [False] * batch_size
    for i in range(batch_size):
        for k in range(1, batch_size):
            j = (i + k) % batch_size
            if ids[j] != ids[i]:
                donor[i], kept[i] = j, True
                break
    return torch.tensor(donor), torch.tensor(kept)


def relative_gap(swapped: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Relative loss increase ``(sum swapped - sum own) / sum own`` (sums over samples and sigmas)."""

    return (swapped - own) / own


def _check_parts(unet: HVGUNet, vae: SVDVAE, image_encoder: SVDImageEncoder) -> None:
    """Parts of one shape, or one line naming what disagrees."""

    latent, cross = vae.config.latent_channels, image_encoder.config.projection_dim
    if 2 * latent != unet.config.in_channels:
        raise ValueError(
            f"the VAE's {latent} latent channels do not fit the UNet's {unet.config.in_channels} input channels "
            f"(noisy + reference latent = 2 x latent): use parts of one preset (net {unet.hvg.preset!r}, "
            f"vae {vae.preset!r})"
        )
    if cross != unet.config.cross_attention_dim:
        raise ValueError(
            f"the CLIP embedding width {cross} != the UNet's cross_attention_dim {unet.config.cross_attention_dim}: "
            f"use parts of one preset (net {unet.hvg.preset!r}, image_encoder {image_encoder.preset!r})"
        )
