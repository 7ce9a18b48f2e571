"""``ThreeDiMoModule``: 3DiMo training (flow matching + annealed geometric supervision) in Lightning.

Per batch (3DiMo sample dict, ``docs/contracts.md``):

1. frozen VAE: target frames (B, T, 3, H, W) -> latents x0 (B, 16, F, h, w), F = 1 + (T-1)/4;
   reference (B, 3, H, W) -> its latent (B, 16, 1, h, w); frozen text encoder: prompts -> (B, L, D_t);
2. motion encoders: driving frames -> z (B, T*(K_b+K_h), D), frame-major ([z_b(t); z_h(t)] per frame);
3. flow matching: shifted sigma ~ p(sigma), ``x_t = (1-sigma) x0 + sigma eps``; the clean reference
   latent replaces latent frame 0 with timestep 0 (per-token timesteps); velocity target ``eps - x0``;
   MSE on latent frames 1..F-1 only (no loss on the conditioning positions). I2V backbones
   (``net.is_i2v``, e.g. ``tiny-i2v``, ``wan2.1-i2v-14b``) instead condition as Wan I2V does: the
   frozen CLIP ``image_encoder`` embeds the reference for the image branch, the VAE latent of
   [reference, zeros...] plus a 4-channel first-frame mask join the noisy latents on channels, one
   timestep per sample, and the MSE covers every latent frame (no latent position is conditioning);
4. geometric decoder: z -> 6D body/hand rotations; loss = squared Frobenius distance of rotation
   matrices, averaged over valid labels only (``body_valid`` per frame, ``hand_valid`` per hand);
5. total = diffusion + ``geo_weight`` * geo. ``geo_weight`` is a plain float attribute that the
   :class:`~dimo.callbacks.StageScheduler` sets every step (contract in ``docs/contracts.md``).

Noise and sigmas come from a generator seeded by (seed, global step, rank), so a run resumed from a
checkpoint draws exactly what the uninterrupted run would have drawn.

Logs: ``train/loss``, ``train/loss_diffusion``, ``train/loss_geo``, ``train/geo_weight``,
``train/mpjpe_geo`` (mm, D_g's pose through the skeleton FK vs the label's, root-aligned, over valid
joints); ``val/*`` the same (the learning rate is logged once, by the CLI's LR monitor). Samples
(:meth:`ThreeDiMoModule.sample_media`: a labelled grid ``val/samples``, rows driving | generated |
target, columns frames, and a video ``val/samples_video``) are logged by
:class:`~dimo.callbacks.SampleLogger` (``--samples.every_n_steps``).

Conditioning-use evidence (:meth:`ThreeDiMoModule.conditioning_losses`, at every validation): the
loss on a fixed sigma grid with fixed noise, with each sample's own driving frames, with another
clip's, and with no motion; ``val/motion_gap = (other - own) / own`` is the relative increase. With
the DataModule's ``val_cross_view_batches`` the same protocol runs on cross-view samples (driving
frames from one view, target from another): ``val/cross_view_motion_gap`` (and
``val/cross_view_loss_own_motion`` ...), the ablation of the view-rich stages (docs/ablations.md (c)).

Video metrics (``val_metrics``, harness names from :mod:`dimo.eval.harness`, default PSNR/SSIM/L1):
on the first ``val_metric_batches`` validation batches a few-step sample of the whole batch is scored
against the target frames and logged as ``val/<label>`` (``val/psnr``, ``val/fvd_16f``); beside them
``val/psnr_gen`` (generated frames 1..), ``val/psnr_static`` (the static baseline, the reference frame
repeated, on the same frames) and ``val/psnr_frame0`` (generated frame 0 vs the reference); ``test_step``
scores every test batch under ``test/``. Lightning computes, syncs (DDP) and resets them per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from dimo.data.pixels import check_model_batch
from dimo.diffusion.flow_matching import FlowMatching, reference_timesteps
from dimo.geometry.rotations import axis_angle_to_matrix, rot6d_to_matrix
from dimo.geometry.skeleton import LEFT_HAND_IDS, NUM_JOINTS, RIGHT_HAND_IDS, forward_kinematics, rest_joints
from dimo.models.attention import AttentionBackend, scope_attention_backend
from dimo.models.common import DTYPES, FrozenDType, restore_prefixes, step_generator, strip_prefixes
from dimo.models.threedimo.frozen import WanImageEncoder, WanTextEncoder, WanVAE, encode_i2v
from dimo.models.threedimo.modulation import set_compact_modulation
from dimo.models.threedimo.network import ThreeDiMoNet

__all__ = [
    "PARTS_KEY",
    "ThreeDiMoModule",
    "geometric_loss",
    "geometric_mpjpe",
    "label_masks",
    "other_clip_index",
    "relative_gap",
]

#: batch-index offset of the cross-view validation batches in the motion-gap protocol's noise seed
CROSS_VIEW_BATCH_OFFSET = 10_000

#: generator offset of the validation samples' noise (:meth:`ThreeDiMoModule.sample_generator`)
SAMPLE_NOISE_OFFSET = 997

#: checkpoint key of :meth:`ThreeDiMoModule.parts_config` (beside Lightning's ``hyper_parameters``,
#: which LightningCLI merges into the run config on ``--ckpt_path``: the YAML keeps owning the parts)
PARTS_KEY = "dimo_parts"


def _masked_mean(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def label_masks(
    batch: dict[str, Any], geo_labels: str = "gt_and_pseudo"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``body_valid (B, T)`` and ``hand_valid (B, T, 2)`` of the labels the geometric loss may use: with
    ``geo_labels="gt"`` the samples whose labels are pseudo (``body_pseudo`` / ``hand_pseudo`` (B,); absent:
    none) are masked out."""

    body, hand = batch["body_valid"], batch["hand_valid"]
    if geo_labels == "gt_and_pseudo":
        return body, hand
    if geo_labels != "gt":
        raise ValueError(f"geo_labels must be 'gt_and_pseudo' or 'gt', got {geo_labels!r}")
    bp = batch.get("body_pseudo")
    hp = batch.get("hand_pseudo")
    if bp is not None:
        body = body & ~bp.to(body.device).bool()[:, None]
    if hp is not None:
        hand = hand & ~hp.to(hand.device).bool()[:, None, None]
    return body, hand


def geometric_loss(
    body6d: torch.Tensor,
    hand6d: torch.Tensor,
    body_pose: torch.Tensor,
    hand_pose: torch.Tensor,
    body_valid: torch.Tensor,
    hand_valid: torch.Tensor,
) -> torch.Tensor:
    """Rotation-matrix L2 between D_g's 6D output and axis-angle labels, invalid labels masked.

    body6d (B, T, 21, 6), hand6d (B, T, 30, 6); body_pose (B, T, 21, 3), hand_pose (B, T, 30, 3);
    body_valid (B, T), hand_valid (B, T, 2). No valid label -> 0 (still in the graph).
    """

    body_err = (rot6d_to_matrix(body6d) - axis_angle_to_matrix(body_pose)).square().sum((-1, -2))  # (B,T,21)
    hand_err = (rot6d_to_matrix(hand6d) - axis_angle_to_matrix(hand_pose)).square().sum((-1, -2))  # (B,T,30)
    body = _masked_mean(body_err.mean(-1), body_valid)
    hands = _masked_mean(hand_err.unflatten(-1, (2, 15)).mean(-1), hand_valid)  # (B, T, 2)
    return body + hands


@torch.no_grad()
def geometric_mpjpe(
    body6d: torch.Tensor,
    hand6d: torch.Tensor,
    body_pose: torch.Tensor,
    hand_pose: torch.Tensor,
    body_valid: torch.Tensor,
    hand_valid: torch.Tensor,
) -> torch.Tensor | None:
    """MPJPE (mm) of D_g's pose vs the label's, both posed on the rest skeleton, pelvis-aligned.

    Body joints 0..21 count where ``body_valid``; a hand's 15 joints where its ``hand_valid`` too.
    Jaw and eyes are not scored (not predicted). Returns None when nothing is valid.
    """

    from dimo.eval.pose import mpjpe

    lead = body_pose.shape[:-2]
    orient = body_pose.new_zeros((*lead, 3))
    rot_gt = _pose_rotmats(
        axis_angle_to_matrix(orient), axis_angle_to_matrix(body_pose), axis_angle_to_matrix(hand_pose)
    )
    rot_pr = _pose_rotmats(
        axis_angle_to_matrix(orient), rot6d_to_matrix(body6d.float()), rot6d_to_matrix(hand6d.float())
    )
    rest = rest_joints().to(body_pose)
    j_gt, j_pr = forward_kinematics(rot_gt, rest), forward_kinematics(rot_pr, rest)  # (B, T, 55, 3)
    mask = torch.zeros((*lead, NUM_JOINTS), dtype=torch.bool, device=body_pose.device)
    mask[..., :22] = body_valid[..., None]
    mask[..., list(LEFT_HAND_IDS)] = (body_valid & hand_valid[..., 0])[..., None]
    mask[..., list(RIGHT_HAND_IDS)] = (body_valid & hand_valid[..., 1])[..., None]
    if not mask.any():
        return None
    return mpjpe(j_pr, j_gt, root=0, mask=mask)


def other_clip_index(clip_ids: Sequence[str] | None, batch: int) -> torch.Tensor:
    """For every sample, the next sample (cyclically) of the batch from another clip; itself when none.

    Without clip ids the samples are taken to be distinct clips (a plain roll by one).
    """

    ids = list(clip_ids) if clip_ids is not None else list(range(batch))
    out = []
    for i in range(batch):
        j = next((k % batch for k in range(i + 1, i + batch) if ids[k % batch] != ids[i]), i)
        out.append(j)
    return torch.tensor(out, dtype=torch.long)


def relative_gap(own: torch.Tensor | float, other: torch.Tensor | float) -> torch.Tensor:
    """Relative loss increase ``(other - own) / own`` (the conditioning-use gap)."""

    own, other = torch.as_tensor(own, dtype=torch.float64), torch.as_tensor(other, dtype=torch.float64)
    return (other - own) / own.clamp_min(1e-12)


def _pose_rotmats(orient: torch.Tensor, body: torch.Tensor, hands: torch.Tensor) -> torch.Tensor:
    """Local rotation matrices in SMPL-X joint order (..., 55, 3, 3); jaw and eyes identity."""

    eye = torch.eye(3, dtype=body.dtype, device=body.device).expand(*body.shape[:-3], 3, 3, 3)
    return torch.cat([orient[..., None, :, :], body, eye, hands], dim=-3)


def _check_from_cache(net, vae, text_encoder, val_metrics) -> None:
    """What ``from_cache: true`` rules out, each named in one line."""

    if vae is not None or text_encoder is not None:
        raise ValueError(
            "from_cache: true trains without the frozen encoders: set model vae and text_encoder to null"
        )
    if net.is_i2v:
        raise ValueError("from_cache: true serves T2V backbones; the I2V conditioning is not cached")
    if list(val_metrics):
        raise ValueError(
            "from_cache: true has no VAE to decode samples: set val_metrics: [] (the SampleLogger logs none)"
        )


def _check_pretrained(pretrained: Path | None, net, vae, text_encoder, image_encoder) -> None:
    """Every part that reads a folder reads it from ``pretrained`` (when set)."""

    if pretrained is None:
        return
    root = Path(pretrained).expanduser().resolve()
    parts = {
        "net.backbone_path": (net, "backbone_path", root / "transformer"),
        "vae.path": (vae, "path", root / "vae"),
        "text_encoder.path": (text_encoder, "path", root),
        "image_encoder.path": (image_encoder, "path", root),
    }
    for name, (part, key, want) in parts.items():
        got = None if part is None else (getattr(part, "config", None) or {}).get(key)
        if got is not None and Path(got).expanduser().resolve() != want:
            raise ValueError(f"model {name}={got} is not read from pretrained={pretrained} (expected {want})")


class ThreeDiMoModule(LightningModule):
    """3DiMo training.

    Args:
        net: the trainable network (motion encoders, geometric decoder, Wan + injection).
        vae: frozen Wan VAE (default: ``pretrained``'s ``vae/``, or the tiny random one).
        text_encoder: frozen UMT5 text encoder (must output ``net``'s text width; default:
            ``pretrained``'s, or the tiny random one).
        flow: flow-matching settings (shift, sigma sampling).
        train_parts: ``full`` (Wan weights train too, as in the paper), ``motion`` (only the new
            3DiMo layers: encoders, decoder, injection; the Wan weights are frozen) or ``lora`` (the
            new layers plus LoRA adapters on the frozen Wan weights; needs ``net.lora``).
        geo_weight: initial geometric-loss weight (the stage scheduler overrides it every step; in the
            CLI it is the scheduler's ``geo_weight_start``, linked, never typed here).
        frozen_dtype: compute dtype of the frozen VAE and text encoder.
        gradient_checkpointing: checkpoint every Wan block and every motion-encoder layer.
        bf16_modulation: keep every Wan block's modulation (shift/scale/gate; (B, N, 6, D) with
            per-token timesteps) in the compute dtype (bf16 under ``bf16-mixed``) instead of diffusers'
            fp32 (:mod:`dimo.models.threedimo.modulation`): half the bytes of that per-block tensor;
            exact in fp32 training, bf16 rounding otherwise.
        attention_backend: SDPA backend of the trainable network's attention (Wan blocks, motion
            injection, motion encoders) only; ``auto`` = PyTorch's choice (:mod:`dimo.models.attention`).
        compile: ``torch.compile`` each Wan block (regional compilation).
        sample_steps: Euler steps of the validation sampler (metrics and logged samples).
        sample_motion_guidance: motion guidance of the validation sampler (the pipeline's
            ``motion_guidance_scale``: the velocity is pushed away from the motion-free network's by this
            factor; 1 = off, two network calls a step otherwise).
        val_swap_samples: on the sampled validation batches, sample every clip that has a partner from
            another clip a second time with the partner's driving frames (same noise, reference, prompt
            and target) and log the PSNR of frames 1.. with its own motion (``val/psnr_gen_own``) and with
            the other clip's (``val/psnr_gen_other_motion``): a sample that follows its motion scores
            higher with its own. Doubles the validation sampling cost.
        noise_seed: base seed of the per-step noise generator.
        val_metrics: video metrics (harness names: ``psnr``, ``ssim``, ``l1``, ``lpips_alex``, ``fid``,
            ``fvd``, ...) logged as ``val/<label>`` and ``test/<label>``.
        metrics_weights_dir: weight files of LPIPS/FID/FVD/FID-VID (default ``$DIMO_WEIGHTS_DIR``).
        val_metric_batches: validation batches per epoch that are sampled and scored (0: none).
        optimizer, lr_scheduler: injected by LightningCLI (paper: Adam, lr 1e-5).
        image_encoder: frozen CLIP vision encoder for I2V backbones (default: ``pretrained``'s, or the ``tiny`` one; its
            width must equal the backbone's ``image_dim``); must be None for T2V backbones.
        gap_sigmas: the fixed noise levels of the conditioning-use protocol (``val/motion_gap``,
            :meth:`conditioning_losses`); empty to switch it off.
        latent_cache_size: keep up to this many frozen-VAE latents of (target, reference) pairs in CPU
            memory, keyed by the sample's ``target_key`` (which names the exact target pixels), so a
            window seen again is not re-encoded (the VAE is frozen and encodes the posterior mode:
            the cached latent is the one it would compute). 0: off. Toy runs revisit the same windows.
        motion_lr_mult: learning-rate multiplier of the new 3DiMo layers (motion encoders, geometric
            decoder, injection), their own parameter group; the pretrained Wan weights keep the base rate.
        from_cache: train from a frozen-encoder cache (``data.latent_cache``, ``dimo.data.latent_cache``):
            batches carry ``x0``/``ref_latent``/``text`` and the VAE and text encoder are not built
            (``vae`` and ``text_encoder`` must be null, and so must everything that decodes: no
            ``val_metrics``; :meth:`sample_media` logs nothing). T2V backbones only.
        pose_detector: toy keypoint detector folder (``config.json`` + ``model.safetensors``, e.g.
            ``pretrained/toy-detector``). When set, the sampled validation batches also log whether the
            generated frames follow the motion: the detector's 16 body joints on the generated frames
            1.. against the target view's ground-truth 2-D joints (``val/kp_err_gen``, pixels), the
            same for the static baseline (the reference frame, ``val/kp_err_static``), the target frames
            through the VAE (``val/kp_err_recon``: the best a sample decoded by this VAE can do) and the
            real target frames (``val/kp_err_real``, the detector's floor). Reconstruction samples with
            projected joints only (in a cross-view sample the 2-D joints are the driving view's).
        geo_labels: which body/hand labels the geometric loss uses: ``gt_and_pseudo`` (default, as the
            paper, whose labels are CameraHMR / WiLoR estimates: pseudo labels, e.g. from
            ``python -m dimo.cli data label``, supervise clips that have no ground truth) or ``gt`` (labels
            flagged ``pseudo`` in the manifest are ignored; the samples' ``body_pseudo`` / ``hand_pseudo``).
        pretrained: the local Wan diffusers folder the parts are read from (``transformer/``, ``vae/``,
            ``tokenizer/`` + ``text_encoder/``, I2V: ``image_encoder/``): the method's one pretrained
            setting. The CLI derives ``net.backbone_path``, ``vae.path``, ``text_encoder.path`` and
            ``image_encoder.path`` from it (:mod:`dimo.lightning_cli`); here a part read from another
            folder is refused. None: every part is random (its preset) or names its own folder.
    """

    def __init__(
        self,
        net: ThreeDiMoNet | None = None,
        vae: WanVAE | None = None,
        text_encoder: WanTextEncoder | None = None,
        flow: FlowMatching | None = None,
        train_parts: Literal["full", "motion", "lora"] = "full",
        geo_weight: float = 0.1,
        frozen_dtype: FrozenDType = "float32",
        gradient_checkpointing: bool = False,
        bf16_modulation: bool = False,
        compile: bool = False,
        attention_backend: AttentionBackend = "auto",
        sample_steps: int = 4,
        sample_motion_guidance: float = 1.0,
        val_swap_samples: bool = True,
        noise_seed: int = 0,
        val_metrics: Sequence[str] = ("psnr", "ssim", "l1"),
        metrics_weights_dir: str | None = None,
        val_metric_batches: int = 1,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        image_encoder: WanImageEncoder | None = None,
        gap_sigmas: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
        latent_cache_size: int = 0,
        motion_lr_mult: float = 1.0,
        from_cache: bool = False,
        pose_detector: str | None = None,
        geo_labels: Literal["gt_and_pseudo", "gt"] = "gt_and_pseudo",
        pretrained: Path | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["net", "vae", "text_encoder", "optimizer", "lr_scheduler", "image_encoder"]
        )
        # a plain string (checkpoints load with weights_only=True), absolute like the parts' own paths
        self.hparams["pretrained"] = (
            None if pretrained is None else str(Path(pretrained).expanduser().resolve())
        )
        self.net = net if net is not None else ThreeDiMoNet()
        self.from_cache = from_cache
        if from_cache:
            _check_from_cache(self.net, vae, text_encoder, val_metrics)
            if pose_detector is not None:
                raise ValueError(
                    "from_cache: true samples nothing to detect keypoints on: set pose_detector: null"
                )
            self.vae, self.text_encoder = None, None  # never built: the batches carry their encodings
        else:  # unset frozen parts: the pretrained folder's, or the tiny random ones
            root = None if pretrained is None else Path(pretrained)
            self.vae = vae if vae is not None else WanVAE(path=None if root is None else root / "vae")
            self.text_encoder = text_encoder if text_encoder is not None else WanTextEncoder(path=root)
        if self.text_encoder is not None and self.text_encoder.dim != self.net.text_dim:
            raise ValueError(
                f"text encoder width {self.text_encoder.dim} != backbone text_dim {self.net.text_dim}"
            )
        if self.net.is_i2v:
            image_encoder = image_encoder if image_encoder is not None else WanImageEncoder(path=pretrained)
            if image_encoder.dim != self.net.image_dim:
                raise ValueError(
                    f"image encoder width {image_encoder.dim} != backbone image_dim {self.net.image_dim}"
                )
            image_encoder.to(DTYPES[frozen_dtype])
        elif image_encoder is not None:
            raise ValueError("image_encoder is only used by I2V backbones (image_dim set); this one is T2V")
        self.image_encoder = image_encoder
        _check_pretrained(pretrained, self.net, self.vae, self.text_encoder, image_encoder)
        self.flow = flow if flow is not None else FlowMatching()
        if any(not 0.0 < float(x) <= 1.0 for x in gap_sigmas):
            raise ValueError(f"gap_sigmas must lie in (0, 1], got {list(gap_sigmas)}")
        self.gap_sigmas = tuple(float(x) for x in gap_sigmas)
        self._gap_sums: torch.Tensor | None = None
        self._cross_gap_sums: torch.Tensor | None = None
        if latent_cache_size < 0:
            raise ValueError(f"latent_cache_size must be >= 0, got {latent_cache_size}")
        from collections import OrderedDict

        self.latent_cache_size = int(latent_cache_size)
        if not (motion_lr_mult > 0 and motion_lr_mult < float("inf")):
            raise ValueError(f"motion_lr_mult must be finite and > 0, got {motion_lr_mult}")
        self.motion_lr_mult = float(motion_lr_mult)
        self._latent_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.train_parts = train_parts
        self.geo_weight = float(geo_weight)
        self.geo_labels = geo_labels
        self.noise_seed = noise_seed
        self.sample_steps = sample_steps
        if not sample_motion_guidance >= 1.0:
            raise ValueError(f"sample_motion_guidance must be >= 1 (1 = off), got {sample_motion_guidance}")
        self.sample_motion_guidance = float(sample_motion_guidance)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        # one collection per split (submodules: moved to the device, synced under DDP; no checkpoint keys)
        from dimo.eval.harness import build_metrics

        self.val_metric_batches = val_metric_batches
        self.metrics_val = build_metrics(val_metrics, metrics_weights_dir, allow_grid=False)
        self.metrics_test = build_metrics(val_metrics, metrics_weights_dir, allow_grid=False)
        # Beside the harness metrics (all frames), PSNR on the generated frames 1.. (``val/psnr_gen``),
        # the static baseline on the same frames (the reference frame repeated, ``val/psnr_static``),
        # and frame 0 against the reference it must reproduce (``val/psnr_frame0``)
        self.metrics_val_gen = build_metrics(["psnr"], metrics_weights_dir, allow_grid=False)
        self.metrics_val_static = build_metrics(["psnr"], metrics_weights_dir, allow_grid=False)
        self.metrics_val_frame0 = build_metrics(["psnr"], metrics_weights_dir, allow_grid=False)
        # do the *samples* use the motion? the same samples (same noise) driven by another clip's frames:
        # PSNR of frames 1.. with the own driving clip (``val/psnr_gen_own``) and with the other clip's
        # (``val/psnr_gen_other_motion``), on the samples that have a partner from another clip
        self.val_swap_samples = bool(val_swap_samples)
        self.metrics_val_gen_own = build_metrics(["psnr"], metrics_weights_dir, allow_grid=False)
        self.metrics_val_gen_other = build_metrics(["psnr"], metrics_weights_dir, allow_grid=False)
        self.kp_detector = None  # a plain attribute: no submodule, no checkpoint keys, not optimised
        if pose_detector is not None:
            from dimo.eval.pose import KeypointError
            from dimo.pose.toy_detector import ToyKeypointDetector

            # a missing config.json / model.safetensors raises DetectorError naming the file
            self.kp_detector = ToyKeypointDetector.frozen(pose_detector)
            self.kp_metrics = torch.nn.ModuleDict(
                {k: KeypointError() for k in ("gen", "static", "recon", "real")}
            )
        for frozen in (self.vae, self.text_encoder):
            if frozen is not None:
                frozen.to(DTYPES[frozen_dtype])
        if train_parts == "lora" and self.net.lora is None:
            raise ValueError(
                "train_parts: lora needs adapters on the backbone: set model.init_args.net.init_args.lora "
                "(rank, alpha, targets)"
            )
        trained = {id(p) for p in self.net.motion_parameters()}
        if train_parts == "lora":
            trained |= {id(p) for p in self.net.lora_parameters()}
        for p in self.net.parameters():  # explicit in every mode (peft freezes what it wraps)
            p.requires_grad_(train_parts == "full" or id(p) in trained)
        if gradient_checkpointing:
            self.net.enable_gradient_checkpointing()
        if bf16_modulation and not set_compact_modulation(self.net.backbone):
            raise ValueError("bf16_modulation applies to Wan blocks; this backbone has none")
        scope_attention_backend([self.net], attention_backend)
        if compile:  # regional compilation: each backbone block (its ``_repeated_blocks``)
            self.net.backbone.compile_repeated_blocks()

    # -- optimisation ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimiser sees: never the frozen VAE / text encoder."""

        return [p for p in self.net.parameters() if p.requires_grad]

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Norm clipping under FSDP through the root FSDP module (Lightning's FSDP precision plugin
        refuses ``gradient_clip_algorithm='norm'``: torch's ``clip_grad_norm_`` is wrong on sharded
        gradients; ``FullyShardedDataParallel.clip_grad_norm_`` reduces the norm over every shard).
        Every other case is Lightning's own."""

        from lightning.pytorch.strategies import FSDPStrategy

        fsdp = isinstance(self.trainer.strategy, FSDPStrategy)
        if fsdp and gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        params = self.trainable_parameters()
        new = {id(p) for p in self.net.motion_parameters()}
        groups = [
            {"params": [p for p in params if id(p) not in new]},
            {"params": [p for p in params if id(p) in new]},
        ]
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        if self.motion_lr_mult != 1.0 and groups[1]["params"]:
            optimizer.param_groups[-1]["lr"] *= self.motion_lr_mult  # before a scheduler reads initial_lr
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints: frozen parts loaded from a folder are not copied into every checkpoint -----
    def _frozen_from_folder(self) -> list[str]:
        names = ("vae", "text_encoder", "image_encoder")
        return [n for n in names if getattr(self, n, None) is not None and getattr(self, n).from_folder]

    def parts_config(self) -> dict[str, dict | None]:
        """Plain constructor arguments of the network and the frozen parts: with the checkpoint's
        weights they rebuild the module, no run config beside it (:func:`dimo.pipelines.checkpoint.load_module`)."""

        return {
            "net": self.net.export_config(),
            # None when training from the latent cache (``from_cache``: the frozen encoders are never built)
            "vae": None if self.vae is None else dict(self.vae.config),
            "text_encoder": None if self.text_encoder is None else dict(self.text_encoder.config),
            "image_encoder": None if self.image_encoder is None else dict(self.image_encoder.config),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from dimo.strategies import loads_weights_itself

        checkpoint[PARTS_KEY] = self.parts_config()
        drop = [f"{n}." for n in self._frozen_from_folder()]
        # FSDP / DeepSpeed load the weights before on_load_checkpoint can put the frozen ones back
        # (a sharded resume failed on the first missing key): they keep every key
        if drop and not (self._trainer is not None and loads_weights_itself(self.trainer.strategy)):
            checkpoint["state_dict"] = strip_prefixes(checkpoint["state_dict"], drop)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # put back the frozen weights that were loaded from their folder (strict loading stays on);
        # a sharded checkpoint's metadata has no state_dict (its strategy loaded the weights itself)
        if "state_dict" in checkpoint:
            restore_prefixes(checkpoint["state_dict"], self, [f"{n}." for n in self._frozen_from_folder()])

    # -- the step -------------------------------------------------------------------------------
    def _generator(self, offset: int = 0) -> torch.Generator:
        step = self.global_step if self._trainer is not None else 0
        world, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self._trainer is not None else (1, 0)
        )
        return step_generator(self.noise_seed + 1_000_003 * offset + world * step + rank, self.device)

    @torch.no_grad()
    def encode_conditions(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0, ref = self._encode_target_and_reference(batch)
        text = self.text_encoder(list(batch["prompt"]), device=self.device)  # (B, L, D_t)
        return x0, ref, text

    @torch.no_grad()
    def _encode_target_and_reference(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE latents of the target (B, C, F, h, w) and the reference (B, C, 1, h, w), through the
        latent cache when it is on and the batch names its targets (``target_key``)."""

        target, reference = batch["target"], batch["reference"]  # (B, T, 3, H, W), (B, 3, H, W)
        keys = batch.get("target_key")
        if not self.latent_cache_size or keys is None:
            return self.vae.encode(target.transpose(1, 2)), self.vae.encode(reference[:, :, None])
        cache = self._latent_cache
        miss = [i for i, k in enumerate(keys) if k not in cache]
        if miss:
            idx = torch.tensor(miss, device=target.device)
            x0_m = self.vae.encode(target[idx].transpose(1, 2)).cpu()
            ref_m = self.vae.encode(reference[idx][:, :, None]).cpu()
            for j, i in enumerate(miss):
                cache[keys[i]] = (x0_m[j], ref_m[j])
                if len(cache) > self.latent_cache_size:
                    cache.popitem(last=False)
        pairs = [cache[k] if k in cache else None for k in keys]
        if any(p is None for p in pairs):  # evicted within this batch (cache smaller than a batch)
            return self.vae.encode(target.transpose(1, 2)), self.vae.encode(reference[:, :, None])
        for k in keys:
            cache.move_to_end(k)
        x0 = torch.stack([p[0] for p in pairs]).to(self.device)
        ref = torch.stack([p[1] for p in pairs]).to(self.device)
        return x0, ref

    def _timesteps(self, sigma: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """Per-token timesteps (B, F'*h'*w'): 0 on the reference frame, 1000*sigma elsewhere."""

        return reference_timesteps(sigma, self.net.patch_grid(latent_shape))

    @torch.no_grad()
    def _conditions(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Frozen encodings of a batch: target latents ``x0``, text, and the reference conditioning
        (T2V: its latent ``ref``; I2V: the channel ``condition`` and CLIP ``image_embeds``)."""

        if self.from_cache:  # encoded once by `dimo.cli data cache` (dimo.data.latent_cache)
            if "x0" not in batch:
                raise ValueError("from_cache: true needs batches from a DataModule with latent_cache set")
            return {"x0": batch["x0"], "text": batch["text"], "ref": batch["ref_latent"]}
        if self.net.is_i2v:
            x0 = self.vae.encode(batch["target"].transpose(1, 2))  # (B, 16, F, h, w)
            text = self.text_encoder(list(batch["prompt"]), device=self.device)
            condition, image_embeds = encode_i2v(
                self.vae, self.image_encoder, batch["reference"], batch["target"].shape[1]
            )
            return {"x0": x0, "text": text, "condition": condition, "image_embeds": image_embeds}
        x0, ref, text = self.encode_conditions(batch)
        if x0.shape[2] < 2:
            raise ValueError("3DiMo needs at least 1 + 4 frames: latent frame 0 is the reference")
        return {"x0": x0, "text": text, "ref": ref}

    def _flow_loss(
        self,
        cond: dict[str, torch.Tensor],
        z: torch.Tensor | None,
        num_frames: int,
        sigma: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample velocity MSE (B,) at noise levels ``sigma`` (B,) with motion tokens ``z`` (or None).

        T2V: the clean reference latent replaces latent frame 0 (timestep 0) and the loss skips it;
        I2V: one timestep per sample and the loss covers every latent frame.
        """

        x0 = cond["x0"]
        x_t = self.flow.add_noise(x0, noise, sigma)
        target_v = self.flow.velocity_target(x0, noise)
        if self.net.is_i2v:
            timestep = self.flow.timestep(sigma)  # (B,): every latent frame is generated
            v = self.net(x_t, timestep, cond["text"], z, num_frames, cond["condition"], cond["image_embeds"])
            return (v.float() - target_v).square().flatten(1).mean(1)
        x_t = torch.cat([cond["ref"], x_t[:, :, 1:]], dim=2)  # clean reference latent in frame 0
        v = self.net(x_t, self._timesteps(sigma, x_t.shape), cond["text"], z, num_frames)
        return (v[:, :, 1:].float() - target_v[:, :, 1:]).square().flatten(1).mean(1)

    def _losses(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        check_model_batch(batch)  # float pixels in [-1, 1], never the loaders' uint8
        driving = batch["driving"]  # (B, T, 3, H, W)
        b, num_frames = driving.shape[:2]
        cond = self._conditions(batch)
        z = self.net.encode_motion(driving, batch.get("joints2d"), batch.get("joints2d_valid"))
        sigma = self.flow.sample_sigmas(b, device=self.device, generator=generator)
        x0 = cond["x0"]
        noise = torch.randn(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
        loss_diffusion = self._flow_loss(cond, z, num_frames, sigma, noise).mean()
        return self._with_geometry(batch, z, num_frames, loss_diffusion)

    # -- conditioning-use evidence (docs/3dimo.md, "Is the motion used?") ------------------------------
    @torch.no_grad()
    def conditioning_losses(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """Fixed-grid losses summed over samples, [own motion, another clip's, no motion, sample count] (4,).

        Protocol: every sample keeps its own target, reference and prompt; only the driving frames (and
        their 2D joints) are replaced by those of the next sample in the batch that comes from another
        clip. The noise is fixed per validation batch (seeded by ``noise_seed`` and the batch index,
        not the step, so every validation sees the same noise), and the loss is averaged over the fixed
        sigma grid ``gap_sigmas``. Returns None when no sample has a partner from another clip.
        """

        check_model_batch(batch)
        driving = batch["driving"]
        b, num_frames = driving.shape[:2]
        other = other_clip_index(batch.get("clip_id"), b)
        keep = other != torch.arange(b)
        if not keep.any() or not self.gap_sigmas:
            return None
        idx = torch.nonzero(keep).flatten()
        sub = {
            k: (v[idx] if torch.is_tensor(v) else [v[i] for i in idx.tolist()])
            for k, v in batch.items()
            if torch.is_tensor(v) or isinstance(v, list)
        }
        swap = other[idx].to(driving.device)
        cond = self._conditions(sub)
        j2d, jv = batch.get("joints2d"), batch.get("joints2d_valid")
        z_own = self.net.encode_motion(sub["driving"], sub.get("joints2d"), sub.get("joints2d_valid"))
        z_swap = self.net.encode_motion(
            driving[swap], None if j2d is None else j2d[swap], None if jv is None else jv[swap]
        )
        rank = self.trainer.global_rank if self._trainer is not None else 0
        g = step_generator(self.noise_seed + 7919 * (1 + batch_idx) + 104_729 * rank, self.device)
        x0 = cond["x0"]
        noise = torch.randn(x0.shape, generator=g, device=self.device, dtype=x0.dtype)
        totals = torch.zeros(3, device=self.device)
        for s in self.gap_sigmas:
            sigma = torch.full((x0.shape[0],), float(s), device=self.device)
            for k, z in enumerate((z_own, z_swap, None)):
                totals[k] += self._flow_loss(cond, z, num_frames, sigma, noise).sum()
        return torch.cat([totals / len(self.gap_sigmas), totals.new_tensor([float(len(idx))])])

    def _with_geometry(
        self, batch: dict[str, Any], z: torch.Tensor, num_frames: int, loss_diffusion: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        body6d, hand6d = self.net.decode_geometry(z, num_frames)
        body_valid, hand_valid = label_masks(batch, self.geo_labels)
        labels = (batch["body_pose"], batch["hand_pose"], body_valid, hand_valid)
        loss_geo = geometric_loss(body6d.float(), hand6d.float(), *labels)
        out = {
            "loss": loss_diffusion + self.geo_weight * loss_geo,
            "loss_diffusion": loss_diffusion.detach(),
            "loss_geo": loss_geo.detach(),
        }
        err = geometric_mpjpe(body6d.detach(), hand6d.detach(), *labels)
        if err is not None:
            out["mpjpe_geo"] = err
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self._losses(batch, self._generator())
        b = batch["driving"].shape[0]
        self.log("train/loss", out["loss"].detach(), prog_bar=True, batch_size=b, sync_dist=False)
        for key in ("loss_diffusion", "loss_geo", "mpjpe_geo"):
            if key in out:
                self.log(f"train/{key}", out[key], prog_bar=key != "loss_geo", batch_size=b)
        self.log("train/geo_weight", self.geo_weight, batch_size=b)
        return out["loss"]  # the learning rate is logged once, by the CLI's LearningRateMonitor

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, torch.Tensor] | None:
        if dataloader_idx == 1:  # the DataModule's cross-view batches: only the motion-gap protocol
            gap = self.conditioning_losses(batch, CROSS_VIEW_BATCH_OFFSET + batch_idx)
            if gap is not None:
                self._cross_gap_sums = gap if self._cross_gap_sums is None else self._cross_gap_sums + gap
            return None
        out = self._losses(batch, self._generator(offset=1 + batch_idx))
        b = batch["driving"].shape[0]
        for key in ("loss_diffusion", "loss_geo", "mpjpe_geo"):
            if key in out:
                self.log(f"val/{key}", out[key], batch_size=b, sync_dist=True, add_dataloader_idx=False)
        gap = self.conditioning_losses(batch, batch_idx)
        if gap is not None:
            self._gap_sums = gap if self._gap_sums is None else self._gap_sums + gap
        generated = None
        if batch_idx < self.val_metric_batches and len(self.metrics_val):
            generated = self.generate(batch)
            self._update_metrics(self.metrics_val, "val", generated, batch["target"])
            target, reference = batch["target"], batch["reference"]
            static = reference[:, None].expand_as(target[:, 1:])
            self._update_metrics(self.metrics_val_gen, "val", generated[:, 1:], target[:, 1:], suffix="_gen")
            self._update_metrics(self.metrics_val_static, "val", static, target[:, 1:], suffix="_static")
            self._update_metrics(
                self.metrics_val_frame0, "val", generated[:, :1], reference[:, None], suffix="_frame0"
            )
            if self.kp_detector is not None:
                self.update_motion_following(batch, generated)
            if self.val_swap_samples:
                self.update_swapped_samples(batch, generated)
        return None if generated is None else {"generated": generated}  # reused by the SampleLogger

    @torch.no_grad()
    def update_swapped_samples(self, batch: dict[str, Any], generated: torch.Tensor) -> None:
        """Sample the batch again with each clip's driving frames (and 2-D joints) replaced by the next
        clip's from another clip (:func:`other_clip_index`, the ``val/motion_gap`` partner), with the same
        noise; log PSNR of frames 1.. against the target for both drives on those samples."""

        b = generated.shape[0]
        other = other_clip_index(batch.get("clip_id"), b).to(generated.device)
        keep = torch.nonzero(other != torch.arange(b, device=generated.device)).flatten()
        if not len(keep):
            return
        swapped = dict(batch)
        for key in ("driving", "joints2d", "joints2d_valid"):
            if torch.is_tensor(batch.get(key)):
                swapped[key] = batch[key][other]
        other_motion = self.generate(swapped)  # the same step generator: the same noise as `generated`
        target = batch["target"][keep][:, 1:]
        self._update_metrics(
            self.metrics_val_gen_own, "val", generated[keep][:, 1:], target, suffix="_gen_own"
        )
        self._update_metrics(
            self.metrics_val_gen_other, "val", other_motion[keep][:, 1:], target, suffix="_gen_other_motion"
        )

    @torch.no_grad()
    def update_motion_following(self, batch: dict[str, Any], generated: torch.Tensor) -> None:
        """Detected body joints of the generated frames 1.., the static baseline and the target frames
        against the target's ground-truth 2-D joints (``joints2d``), into ``kp_metrics``; logged as
        ``val/kp_err_{gen,static,recon,real}`` (pixels; recon: the target through the VAE)."""

        from dimo.pose.joints import TOY_BODY_SMPLX

        tasks = batch.get("task") or ["reconstruction"] * generated.shape[0]
        keep = [i for i, t in enumerate(tasks) if t == "reconstruction"]
        if not keep or "joints2d" not in batch:
            return
        idx = torch.tensor(keep, device=generated.device)
        smplx = torch.tensor(TOY_BODY_SMPLX, device=generated.device)
        gt = batch["joints2d"][idx][:, 1:][:, :, smplx].float()  # (N, T-1, 16, 2)
        valid = batch["joints2d_valid"][idx][:, 1:][:, :, smplx]  # (N, T-1, 16)
        if not valid.any():
            return
        n, t = gt.shape[:2]
        target = batch["target"][idx][:, 1:].float()
        recon = self.vae.decode(self.vae.encode(batch["target"][idx].transpose(1, 2))).transpose(1, 2)
        frames = {
            "gen": generated[idx][:, 1:].float(),
            "static": batch["reference"][idx].float()[:, None].expand_as(target),
            "recon": recon[:, 1:].float().clamp(-1, 1),
            "real": target,
        }
        for name, x in frames.items():
            uv, _ = self.kp_detector.detect_body(x.flatten(0, 1))  # (N*(T-1), 16, 2)
            self.kp_metrics[name].update(uv.reshape(n, t, -1, 2), gt, valid)
        self.log_dict(
            {f"val/kp_err_{k}": m for k, m in self.kp_metrics.items()}, batch_size=n, add_dataloader_idx=False
        )

    def on_validation_epoch_start(self) -> None:
        self._gap_sums = None
        self._cross_gap_sums = None

    def on_validation_epoch_end(self) -> None:
        """``val/motion_gap`` from the epoch's summed fixed-grid losses (ratio of means, all ranks), and
        ``val/cross_view_motion_gap`` from the cross-view batches when the DataModule has them."""

        self._log_gap(self._gap_sums, "val/")
        self._log_gap(self._cross_gap_sums, "val/cross_view_")
        self._gap_sums = self._cross_gap_sums = None

    def _log_gap(self, sums: torch.Tensor | None, prefix: str) -> None:
        # every rank takes part in the reduction, also one that saw no sample with a partner
        if sums is None and prefix == "val/cross_view_" and not self._has_cross_view_loader():
            return
        sums = sums if sums is not None else torch.zeros(4, device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums.clone(), reduce_op="sum")
        if float(sums[3]) == 0:
            return
        own, swapped, none = (sums[:3] / sums[3]).tolist()
        self.log(f"{prefix}loss_own_motion", own, sync_dist=False, rank_zero_only=True)
        self.log(f"{prefix}loss_other_motion", swapped, sync_dist=False, rank_zero_only=True)
        self.log(f"{prefix}loss_no_motion", none, sync_dist=False, rank_zero_only=True)
        self.log(
            f"{prefix}motion_gap",
            float(relative_gap(own, swapped)),
            prog_bar=prefix == "val/",
            rank_zero_only=True,
        )
        self.log(f"{prefix}no_motion_gap", float(relative_gap(own, none)), rank_zero_only=True)

    def _has_cross_view_loader(self) -> bool:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return bool(getattr(dm, "val_cross_view_batches", 0))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._losses(batch, self._generator(offset=1 + batch_idx))
        b = batch["driving"].shape[0]
        for key in ("loss_diffusion", "loss_geo", "mpjpe_geo"):
            if key in out:
                self.log(f"test/{key}", out[key], batch_size=b, sync_dist=True)
        if len(self.metrics_test):
            self._update_metrics(self.metrics_test, "test", self.generate(batch), batch["target"])

    def _update_metrics(
        self,
        metrics: torch.nn.ModuleDict,
        split: str,
        generated: torch.Tensor,
        target: torch.Tensor,
        suffix: str = "",
    ) -> None:
        """Score generated vs target clips (B, T, 3, H, W) in [-1, 1]; Lightning computes at epoch end."""

        g, r = generated.float().clamp(-1, 1), target.float()
        for metric in metrics.values():
            metric.update(g, r)
        self.log_dict(
            {f"{split}/{k}{suffix}": m for k, m in metrics.items()},
            batch_size=g.shape[0],
            add_dataloader_idx=False,
        )

    # -- sampling: the pipeline's sampler (dimo.pipelines.threedimo), over this module's parts -----
    def pipeline(self) -> Any:
        """A :class:`~dimo.pipelines.threedimo.ThreeDiMoPipeline` over this module's parts (shared)."""

        from dimo.pipelines.threedimo import ThreeDiMoPipeline

        return ThreeDiMoPipeline.from_module(self)

    def sample_generator(self) -> torch.Generator:
        """The generator :meth:`generate` draws its noise from at this step (seed, step, rank)."""

        return self._generator(offset=SAMPLE_NOISE_OFFSET)

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], num_steps: int | None = None) -> torch.Tensor:
        """Few-step sample of the batch by the pipeline's sampler (the whole clip in one window, noise
        from the step generator): (B, T, 3, H, W) generated frames in [-1, 1]."""

        check_model_batch(batch)
        driving = batch["driving"]  # (B, T, 3, H, W)
        return self.pipeline().sample(
            batch["reference"],
            driving,
            list(batch["prompt"]),
            num_steps or self.sample_steps,
            generator=self.sample_generator(),
            window=driving.shape[1],
            motion_guidance_scale=self.sample_motion_guidance,
            joints2d=batch.get("joints2d"),
            joints2d_valid=batch.get("joints2d_valid"),
        )

    def pose_clips(self, batch: dict[str, Any], generated: torch.Tensor) -> list[tuple[torch.Tensor, Any]]:
        """What :class:`~dimo.callbacks.PoseEvaluation` scores: every generated clip ``(T, 3, H, W)`` of the
        batch whose target view has ground-truth 3D joints, with its reference motion (the target view's
        joints in its camera and its intrinsics in pixels of the sample; ``target_joints3d``)."""

        from dimo.eval.motion import MotionReference

        if "target_joints3d" not in batch:
            return []
        h, w = generated.shape[-2:]
        out = []
        for i in torch.nonzero(batch["target_joints3d_valid"]).flatten().tolist():
            name = batch["target_key"][i] if "target_key" in batch else f"sample {i}"
            ref = MotionReference(
                batch["target_joints3d"][i].detach().double().cpu(),
                batch["target_K"][i].detach().double().cpu(),
                int(h),
                int(w),
                "gt",
                name,
            )
            out.append((generated[i], ref))
        return out

    def sample_media(
        self, batch: dict[str, Any], split: str, num_samples: int, generated: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """What :class:`~dimo.callbacks.SampleLogger` logs: ``<split>/samples``, a labelled grid (rows
        driving | generated | target per clip, columns frames), and ``<split>/samples_video``, the same
        as a video (rows driving | generated | target, one column per clip). ``generated``: the
        validation step's sample of the batch, if it made one."""

        from dimo.viz import labelled_grid, labelled_video, to_unit

        if self.vae is None:  # from_cache: no decoder, nothing to show
            return {}
        n = min(num_samples, batch["driving"].shape[0])
        small = {k: (v[:n] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in batch.items()}
        generated = self.generate(small) if generated is None else generated[:n]
        drv, gen, tgt = to_unit(small["driving"]), to_unit(generated), to_unit(small["target"])
        t = drv.shape[1]
        rows = []
        for i in range(n):
            tag = f"#{i} " if n > 1 else ""
            rows += [(f"{tag}driving", drv[i]), (f"{tag}generated", gen[i]), (f"{tag}target", tgt[i])]
        grid = labelled_grid(rows, [f"t={j}" for j in range(t)])
        video_rows = [
            (name, x.transpose(0, 1))  # (n, T, 3, H, W) -> (T, n, 3, H, W): one panel per clip
            for name, x in (("driving", drv), ("generated", gen), ("target", tgt))
        ]
        video = labelled_video(video_rows, [f"clip {j}" for j in range(n)])
        return {f"{split}/samples": grid, f"{split}/samples_video": video}
