"""HVG inference: reference image + 3D motion (clip format) + a camera set -> V x T videos.

The motion file is a clip-format ``.npz`` (``docs/data.md``): world ``joints`` (T, 55, 3), or
SMPL-X style parameters (``global_orient``, ``body_pose``, ``hand_pose``, ``transl``, optional
``rest_joints``) posed by the skeleton's forward kinematics. Camera sets (:class:`CameraSet`,
``ringN``, ``trajectory:KIND[:N]``, a cameras ``.json``) come from :mod:`dimo.pipelines.cameras`. Sampling: :meth:`HVGPipeline.sample`, HVG's only sampler
(EDM + the progressive spatio-temporal sampler; the module's validation samples use it too); no
Lightning is involved. ``dimo.cli generate --model hvg`` (:mod:`dimo.commands.generate`) writes one MP4
per view plus a tiled overview (:func:`tile_views`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from dimo.pipelines.cameras import CameraSet
from dimo.pipelines.errors import GenerateError
from dimo.pipelines.io import atomic_folder

__all__ = ["load_motion_joints", "HVGPipeline", "tile_views"]


def load_motion_joints(path: str | os.PathLike, max_frames: int | None = None) -> torch.Tensor:
    """World joints (T, 55, 3) from a clip-format motion ``.npz``; a bad file is a :class:`GenerateError`."""

    from dimo.geometry.motion import MotionFileError, read_motion_joints

    try:
        return read_motion_joints(path, max_frames)
    except MotionFileError as err:
        raise GenerateError(str(err)) from err


def tile_views(video: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """(V, T, 3, H, W) -> overview (T, 3, rows*H, cols*W); empty tiles are black (-1)."""

    v, t, c, h, w = video.shape
    cols = columns or math.ceil(math.sqrt(v))
    rows = math.ceil(v / cols)
    pad = video.new_full((rows * cols - v, t, c, h, w), -1.0)
    grid = torch.cat([video, pad]).reshape(rows, cols, t, c, h, w)
    return grid.permute(2, 3, 0, 4, 1, 5).reshape(t, c, rows * h, cols * w)


class HVGPipeline(DiffusionPipeline):
    """HVG generation pipeline: the HVG UNet, the frozen SVD VAE and CLIP image encoder, and the sampling
    settings; no Lightning. :meth:`sample` (EDM + the progressive spatio-temporal sampler of
    :mod:`dimo.models.hvg.sampling`) is HVG's only sampler: ``__call__`` (one reference, joints and a
    camera set) and :meth:`dimo.models.hvg.HVGModule.generate` (validation samples) both call it.

    Folder (``save_pretrained``), SVD-xt diffusers style (:mod:`dimo.pipelines.exports`)::

        README.md          model card: the model, its training, parts, conditioning inputs, loading
        model_index.json   parts + stored settings (EDM, sampler windows, steps, guidance, SVD
                           conditioning, size / frames) + the training record
        pipeline.py        imports this class from the installed dimo (for diffusers' loader)
        unet/              HVGUNet: SVD UNet config + the HVG switches (``hvg``), every weight
        vae/               AutoencoderKLTemporalDecoder (frozen)
        image_encoder/     CLIPVisionModelWithProjection (frozen)

    Loading: :meth:`from_pretrained` (and ``dimo.cli generate --pretrained``) reads each part with its
    own strict loader and runs no file of the folder; ``diffusers.DiffusionPipeline.from_pretrained
    (folder, trust_remote_code=True)`` calls the same part loaders and builds the same pipeline (without
    the opt-in diffusers refuses to run ``pipeline.py``).

    Args:
        unet: the HVG network (:class:`~dimo.models.hvg.HVGUNet`).
        vae, image_encoder: the frozen SVD VAE and CLIP image encoder.
        edm: noise schedule / preconditioning; ``sampler``: the progressive sampler's windows.
        sample_steps, guidance_scale: default steps and reference CFG scale.
        noise_aug_strength, fps, motion_bucket_id: SVD's conditioning (``added_time_ids``).
        vae_chunk, vae_decode_chunk: images per VAE call; frames per decode call within a video.
        settings: stored defaults (``height``, ``width``, ``num_frames``).
        training: what the export records of its checkpoint (step, epoch, hyperparameters), if known.
    """

    #: the part classes of an export (their strict ``from_pretrained`` reads the subfolders)
    PARTS = {
        "unet": ("dimo.models.hvg.network", "HVGUNet"),
        "vae": ("dimo.models.hvg.network", "SVDVAE"),
        "image_encoder": ("dimo.models.hvg.network", "SVDImageEncoder"),
    }

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        image_encoder: torch.nn.Module,
        edm: Any = None,
        sampler: Any = None,
        sample_steps: int = 10,
        guidance_scale: float = 1.0,
        noise_aug_strength: float = 0.02,
        fps: int = 7,
        motion_bucket_id: int = 127,
        vae_chunk: int = 16,
        vae_decode_chunk: int | None = None,
        settings: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        from dimo.diffusion.edm import EDM
        from dimo.models.hvg.sampling import ProgressiveSampler

        super().__init__()
        self.register_modules(unet=unet, vae=vae, image_encoder=image_encoder)
        self.edm = EDM(**edm) if isinstance(edm, dict) else (edm or EDM())
        self.sampler = (
            ProgressiveSampler(**sampler) if isinstance(sampler, dict) else (sampler or ProgressiveSampler())
        )
        self.sample_steps, self.guidance_scale = int(sample_steps), float(guidance_scale)
        self.noise_aug_strength, self.fps, self.motion_bucket_id = noise_aug_strength, fps, motion_bucket_id
        self.vae_chunk, self.vae_decode_chunk = vae_chunk, vae_decode_chunk
        self.settings = dict(settings or {})
        self.training = training

    #: the sampling settings, as :meth:`from_module` reads them from an ``HVGModule``
    SAMPLING = (
        "sample_steps", "guidance_scale", "noise_aug_strength", "fps", "motion_bucket_id", "vae_chunk",
        "vae_decode_chunk",
    )  # fmt: skip

    @classmethod
    def from_module(cls, module: torch.nn.Module, settings: dict[str, Any] | None = None) -> HVGPipeline:
        """The sampler over a :class:`~dimo.models.hvg.HVGModule`'s parts and settings (shared, not copied)."""

        kw = {k: getattr(module, k) for k in cls.SAMPLING}
        return cls(
            module.unet, module.vae, module.image_encoder, module.edm, module.sampler, settings=settings, **kw
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> HVGPipeline:
        from dimo.pipelines.checkpoint import load_module, training_record

        module, data_hp = load_module(path, "hvg")
        pipe = cls.from_module(
            module.eval(), {k: data_hp[k] for k in ("height", "width", "num_frames") if data_hp.get(k)}
        )
        pipe.training = training_record(path)
        return pipe

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HVGPipeline:  # type: ignore[override]
        for part in (self.unet, self.vae, self.image_encoder):
            part.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return next(self.unet.parameters()).device

    def config_dict(self) -> dict[str, Any]:
        """The parts' presets and the stored settings (what an export's ``model_index.json`` keeps)."""

        return {
            "unet": asdict(self.unet.hvg),
            "vae": {"preset": self.vae.preset},
            "image_encoder": {"preset": self.image_encoder.preset},
            **self.stored_settings(),
        }

    def stored_settings(self) -> dict[str, Any]:
        """The optional constructor arguments, as plain values (``model_index.json``)."""

        return {
            "edm": asdict(self.edm),
            "sampler": asdict(self.sampler),
            **{k: getattr(self, k) for k in self.SAMPLING},
            "settings": self.settings,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> Path:  # type: ignore[override]
        """Write the folder described in the class docstring, atomically (temp folder + rename)."""

        from dimo.models.lora import is_lora_parameter
        from dimo.pipelines.exports import write_export_files

        if any(is_lora_parameter(n) for n, _ in self.unet.named_parameters()):
            raise GenerateError(
                "the HVG network carries LoRA adapters (train_parts: lora): an export holds plain weights; "
                "save the adapters with HVGModule.save_adapters and load them with HVGModule.from_adapters"
            )
        out = Path(save_directory)
        with atomic_folder(out) as tmp:
            for name in self.PARTS:
                getattr(self, name).save_pretrained(tmp / name)
            write_export_files(
                tmp, type(self), self.PARTS, self.stored_settings(), self.model_card(), self.training
            )
        return out

    def model_card(self) -> Any:
        """The method-specific text of the export's README (:class:`~dimo.pipelines.exports.ModelCard`)."""

        from dimo.pipelines.exports import ModelCard

        hvg = self.unet.hvg
        switches = ", ".join(
            k for k in ("view_attention", "camera_embedding", "reference_clip", "reference_latent", "reference_net")
            if getattr(hvg, k)
        )  # fmt: skip
        params = sum(p.numel() for p in self.unet.parameters())
        return ModelCard(
            title="HVG export",
            summary=(
                "Multi-view, multi-frame human video generation (HVG, Wang et al., arXiv 2602.21188): SVD-xt "
                "extended with view attention, a dual bone-map pose modulator, a camera embedding and a "
                "reference module. A reference image, a 3D motion and a camera set -> V views x T frames. "
                "Written by `python -m dimo.cli export` from an `HVGModule` checkpoint (`docs/hvg.md`)."
            ),
            parts=[
                (
                    "`unet/`",
                    f"`HVGUNet`: SVD UNet preset `{hvg.preset}` + HVG layers ({params:,} parameters), pose "
                    f"condition `{hvg.pose_condition}`, on: {switches or 'none'}; `config.json` holds the "
                    "switches under `hvg`",
                ),
                ("`vae/`", f"`AutoencoderKLTemporalDecoder` (frozen, preset `{self.vae.preset}`)"),
                (
                    "`image_encoder/`",
                    f"`CLIPVisionModelWithProjection` (frozen, preset `{self.image_encoder.preset}`)",
                ),
            ],
            inputs=[
                ("`reference`", "(3, H, W) image in [-1, 1]: the person (H, W multiples of the VAE factor)"),
                (
                    "`joints`",
                    "(T, 55, 3) world SMPL-X joints in metres (`load_motion_joints` reads a clip-format "
                    "motion `.npz`); rendered per view as the dual bone maps (depth + normal)",
                ),
                (
                    "`cameras`",
                    "`CameraSet`: V static cameras (K, R, t world-to-camera, OpenCV), aligned on the frame-0 "
                    "pelvis (`parse_cameras`: `ringN`, `trajectory:KIND[:N]`, a cameras `.json`); "
                    "rotations relative to view 0 enter the camera embedding",
                ),
                ("`num_inference_steps`, `generator`", "EDM steps and the noise generator (seed)"),
            ],
            usage=(
                "import torch\n"
                "from dimo.pipelines.cameras import parse_cameras\n"
                "from dimo.pipelines.hvg import HVGPipeline, load_motion_joints\n"
                "from dimo.pipelines.io import load_image\n\n"
                'pipe = HVGPipeline.from_pretrained("<this folder>")\n'
                'joints = load_motion_joints("motion.npz")  # (T, 55, 3)\n'
                'h, w = pipe.settings.get("height", 64), pipe.settings.get("width", 64)\n'
                'cameras = parse_cameras("ring4", joints[0, 0], h, w)\n'
                'video = pipe(load_image("ref.png", (h, w)), joints, cameras, 10, torch.Generator().manual_seed(0))\n'
                "# (V, T, 3, H, W) in [-1, 1]"
            ),
            cli=(
                "python -m dimo.cli generate --model hvg --pretrained <this folder> --reference ref.png "
                "--motion motion.npz --cameras ring4 --out out.mp4"
            ),
            settings={
                **self.settings,
                "sample_steps": self.sample_steps,
                "guidance_scale": self.guidance_scale,
                "sampler": asdict(self.sampler),
            },
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **_: Any) -> HVGPipeline:  # type: ignore[override]
        """Load a folder written by :meth:`save_pretrained` (local only; no file of the folder is
        executed: each part is read by its own strict loader)."""

        from dimo.models.hvg.network import SVDVAE, HVGUNet, SVDImageEncoder
        from dimo.pipelines.exports import part_error, read_index, stored_kwargs

        folder = Path(pretrained_model_name_or_path)
        index = read_index(folder, cls)
        if (folder / "hvg").is_dir():
            raise GenerateError(
                f"{folder} was written by an older dimo export (hvg/model.safetensors); export its checkpoint "
                "again with `python -m dimo.cli export`"
            )
        try:
            unet = HVGUNet.from_pretrained(folder / "unet")
            vae = SVDVAE.from_pretrained(folder / "vae")
            image = SVDImageEncoder.from_pretrained(folder / "image_encoder")
        except (OSError, ValueError) as err:  # incl. MissingWeightsError (a FileNotFoundError)
            raise part_error(folder, err) from err
        return cls(unet, vae, image, **stored_kwargs(cls, index))

    @staticmethod
    def batch(reference: torch.Tensor, joints: torch.Tensor, cameras: CameraSet) -> dict[str, Any]:
        """The HVG batch (B = 1) for reference (3, H, W), joints (T, 55, 3), V cameras."""

        from dimo.geometry.cameras import project, relative_rotation

        h, w = reference.shape[-2:]
        v, t = cameras.K.shape[0], joints.shape[0]
        pelvis = joints[None, :, 0].expand(v, t, 3)  # (V, T, 3)
        uv, _ = project(pelvis, cameras.K, cameras.R, cameras.t)  # (V, T, 2)
        return {
            "target": torch.zeros(1, v, t, 3, h, w),  # shape only: sample() reads (V, T, H, W) here
            "reference": reference[None],
            "K": cameras.K[None],
            "R": cameras.R[None],
            "t": cameras.t[None],
            "rel_rot": relative_rotation(cameras.R)[None],
            "joints3d": joints[None],
            "pelvis2d": uv[None],
        }

    @torch.no_grad()
    def sample(
        self, batch: dict[str, Any], generator: torch.Generator, steps: int | None = None
    ) -> torch.Tensor:
        """HVG's sampler: the batch's V x T grids, (B, V, T, 3, H, W) in [-1, 1] (no input checks).

        ``generator`` draws the reference noise augmentation, then the unit noise (B, V, T, C, h, w);
        every step denoises overlapping view / frame windows (:class:`~dimo.models.hvg.ProgressiveSampler`),
        with reference CFG at ``guidance_scale``."""

        from dimo.models.hvg.conditioning import decode_latents, edm_denoise, svd_conditioning

        target = batch["target"]
        b, v, t, _, h, w = target.shape
        cond = svd_conditioning(
            self.vae, self.image_encoder, batch, generator, self.unet.hvg.pose_condition,
            self.noise_aug_strength, self.fps, self.motion_bucket_id, self.vae_chunk,
        )  # fmt: skip
        device = batch["reference"].device
        latent_shape = (b, v, t, *cond["reference_latent"].shape[1:])
        noise = torch.randn(latent_shape, generator=generator, device=device, dtype=target.dtype)
        uncond = torch.zeros(b, dtype=torch.bool, device=device)

        def window(x, sigma, views, frames):
            sub = dict(cond)
            sub["pose_maps"] = {k: m[:, views][:, :, frames] for k, m in cond["pose_maps"].items()}
            sub["rel_rot"] = cond["rel_rot"][:, views]
            d = edm_denoise(self.unet, self.edm, x, sigma, sub)
            if self.guidance_scale != 1.0:
                d_u = edm_denoise(self.unet, self.edm, x, sigma, sub, reference_keep=uncond)
                d = d_u + self.guidance_scale * (d - d_u)
            return d

        latents = self.sampler.sample(self.edm, window, noise, steps or self.sample_steps)
        flat = latents.reshape(b * v * t, *latents.shape[3:])
        frames = decode_latents(self.vae, flat, t, self.vae_chunk, self.vae_decode_chunk)
        return frames.reshape(b, v, t, 3, h, w)

    @torch.no_grad()
    def __call__(
        self,
        reference: torch.Tensor,
        joints: torch.Tensor,
        cameras: CameraSet,
        num_inference_steps: int = 10,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(V, T, 3, H, W) in [-1, 1] for reference (3, H, W) [-1, 1] and world joints (T, 55, 3)."""

        device = self.device
        batch = {k: v.to(device) for k, v in self.batch(reference, joints, cameras).items()}
        gen = generator or torch.Generator(device=device).manual_seed(0)
        return self.sample(batch, gen, num_inference_steps)[0].cpu()
