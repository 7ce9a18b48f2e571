"""3DiMo inference: reference image + driving video (+ camera prompt, + caption) -> video.

:class:`ThreeDiMoPipeline` is a ``diffusers.DiffusionPipeline`` holding the trained network
(:class:`~dimo.models.threedimo.ThreeDiMoNet`), the frozen Wan VAE and UMT5 text encoder, for I2V
backbones the CLIP image encoder, and a ``FlowMatchEulerDiscreteScheduler`` (its ``shift`` is the
sampling shift). Its :meth:`~ThreeDiMoPipeline.sample` is 3DiMo's only sampler: ``__call__`` (one
video) and :meth:`dimo.models.threedimo.ThreeDiMoModule.generate` (validation samples of a batch) both
call it. Per call:

1. the driving frames (B, T, 3, H, W) are encoded to motion tokens **once**;
2. T2V backbones: the reference latent is imposed on latent frame 0 (as in training: timestep 0 on its
   tokens); I2V backbones: the reference conditions through Wan I2V's mask + condition latent
   channels and CLIP image tokens, one timestep per sample (as in training);
3. flow-matching Euler sampling (:meth:`dimo.diffusion.flow_matching.FlowMatching.sample`) with
   optional classifier-free guidance on the text (negative prompt) and on the motion (the network
   without motion tokens is the plain Wan model);
4. T2V: driving videos longer than one window are covered by overlapping latent windows fused at
   every step (:mod:`dimo.pipelines.windows`); I2V samples the clip in one window;
5. VAE decode -> (T, 3, H, W) in [-1, 1]; T is the driving length rounded down to 1 + 4k.

Folder layout (``save_pretrained``), Wan-diffusers style::

    README.md          model card: what the folder holds, its settings, how to load and run it
    model_index.json   diffusers index + the dimo settings (size, window, text max_length, CLIP mean/std)
                       + the training record (checkpoint step, epoch, hyperparameters)
    pipeline.py        imports this class from the installed dimo (for diffusers, below)
    net/               ThreeDiMoNet.save_pretrained (config.json, model.safetensors)
    vae/               AutoencoderKLWan
    tokenizer/, text_encoder/   UMT5 tokenizer + encoder
    image_encoder/     CLIPVisionModel (I2V backbones only)
    scheduler/         FlowMatchEulerDiscreteScheduler

Loading: :meth:`ThreeDiMoPipeline.from_pretrained` (and ``dimo.cli generate --pretrained``) loads each
part with its own class and runs no file of the folder. ``diffusers.DiffusionPipeline.from_pretrained
(folder, trust_remote_code=True)`` loads the same pipeline: diffusers refuses, by default, to run a
folder's ``pipeline.py`` (``_class_name`` names it), and with the opt-in that file only imports
:class:`ThreeDiMoPipeline` from the installed ``dimo``, whose ``__init__`` wraps the raw diffusers /
transformers parts diffusers loads. ``model_index.json``, ``pipeline.py`` and the README are written by
:mod:`dimo.pipelines.exports`, which HVG's export shares.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from dimo.diffusion.flow_matching import FlowMatching, reference_timesteps
from dimo.models.common import CLIP_MEAN, CLIP_STD, DTYPES, from_pretrained_strict
from dimo.models.threedimo import MissingWeightsError, ThreeDiMoNet, WanImageEncoder, WanTextEncoder, WanVAE
from dimo.models.threedimo.frozen import encode_i2v
from dimo.pipelines.errors import GenerateError
from dimo.pipelines.io import atomic_folder
from dimo.pipelines.windows import fuse_windows, motion_frames

__all__ = ["ThreeDiMoPipeline"]


class ThreeDiMoPipeline(DiffusionPipeline):
    """3DiMo generation pipeline.

    Args:
        net: trained 3DiMo network (motion encoders + Wan with motion injection).
        vae: frozen Wan VAE wrapper, or the ``AutoencoderKLWan`` it wraps (as diffusers loads it).
        text_encoder: frozen UMT5 wrapper (tokenizer inside), or the ``UMT5EncoderModel`` with
            ``tokenizer`` beside it.
        scheduler: flow-matching Euler scheduler; its ``shift`` is used for sampling.
        tokenizer: only with a bare ``UMT5EncoderModel``.
        image_encoder: I2V backbones only: the frozen CLIP wrapper, or the ``CLIPVisionModel`` it wraps
            (normalised with ``image_mean`` / ``image_std``).
        settings: defaults stored with the pipeline: ``height``, ``width`` (training size),
            ``window`` (training clip length in frames, 1 + 4k), ``fps``, ``frame_stride`` (the training
            data's step between source frames, > 1 only; ``generate`` reads driving videos at it).
        text_max_length: tokens per prompt of a bare text encoder (a wrapper keeps its own).
        image_mean, image_std: CLIP normalisation of a bare image encoder.
        training: what the export records of its checkpoint (step, epoch, hyperparameters), if known.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->net->vae"
    _optional_components = ["tokenizer", "image_encoder"]

    def __init__(
        self,
        net: ThreeDiMoNet,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        scheduler: FlowMatchEulerDiscreteScheduler,
        tokenizer: Any = None,
        image_encoder: torch.nn.Module | None = None,
        settings: dict[str, Any] | None = None,
        text_max_length: int | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(vae, WanVAE):
            vae = WanVAE.wrap(vae)
        if not isinstance(text_encoder, WanTextEncoder):
            if tokenizer is None:
                raise ValueError("a bare text encoder needs its tokenizer")
            text_encoder = WanTextEncoder.wrap(text_encoder, tokenizer, int(text_max_length or 512))
        if image_encoder is not None and not isinstance(image_encoder, WanImageEncoder):
            image_encoder = WanImageEncoder.wrap(
                image_encoder, image_mean or CLIP_MEAN, image_std or CLIP_STD
            )
        if net.is_i2v != (image_encoder is not None):
            raise ValueError(
                "an I2V backbone needs an image_encoder"
                if net.is_i2v
                else "a T2V backbone takes no image_encoder"
            )
        self.register_modules(
            net=net,
            vae=vae,
            text_encoder=text_encoder,
            scheduler=scheduler,
            tokenizer=None,
            image_encoder=image_encoder,
        )
        self.settings: dict[str, Any] = dict(settings or {})
        self.training = training
        self._offload_frozen = False
        self._autocast_dtype: torch.dtype | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_module(
        cls, module: torch.nn.Module, settings: dict[str, Any] | None = None
    ) -> ThreeDiMoPipeline:
        """The sampler over a :class:`~dimo.models.threedimo.ThreeDiMoModule`'s parts (shared, not copied;
        the modes of the parts are left as they are)."""

        scheduler = module.flow.make_scheduler()
        return cls(
            module.net,
            module.vae,
            module.text_encoder,
            scheduler,
            image_encoder=module.image_encoder,
            settings=settings,
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, config: str | os.PathLike | None = None
    ) -> ThreeDiMoPipeline:
        """Build from a Lightning checkpoint of ``ThreeDiMoModule`` (+ the run's ``config.yaml``)."""

        from dimo.pipelines.checkpoint import load_module, training_record

        module, data_hp = load_module(path, "3dimo", config)
        settings = {k: data_hp[k] for k in ("height", "width") if data_hp.get(k)}
        if data_hp.get("num_frames"):
            settings["window"] = int(data_hp["num_frames"])
        if int(data_hp.get("frame_stride") or 1) > 1:  # generate reads driving videos at this stride
            settings["frame_stride"] = int(data_hp["frame_stride"])
        pipe = cls.from_module(module.eval(), settings)
        pipe.training = training_record(path)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> Path:  # type: ignore[override]
        """Write the folder described in the module docstring, atomically (temp folder + rename)."""

        from dimo.pipelines.exports import write_export_files

        out = Path(save_directory)
        with atomic_folder(out) as tmp:
            self.net.save_pretrained(tmp / "net")
            self.vae.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            self.text_encoder.tokenizer.save_pretrained(tmp / "tokenizer")
            self.text_encoder.encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
            self.scheduler.save_pretrained(tmp / "scheduler")
            image: list[str | None] = [None, None]
            stored: dict[str, Any] = {
                "settings": self.settings,
                "text_max_length": self.text_encoder.max_length,
            }
            if self.image_encoder is not None:
                self.image_encoder.encoder.save_pretrained(tmp / "image_encoder", safe_serialization=True)
                image = ["transformers", type(self.image_encoder.encoder).__name__]
                stored.update(self.image_encoder.normalization)
            components = {
                "net": [type(self.net).__module__, type(self.net).__name__],
                "vae": ["diffusers", type(self.vae.vae).__name__],
                "text_encoder": ["transformers", type(self.text_encoder.encoder).__name__],
                "tokenizer": ["transformers", type(self.text_encoder.tokenizer).__name__],
                "image_encoder": image,
                "scheduler": ["diffusers", type(self.scheduler).__name__],
            }
            write_export_files(tmp, type(self), components, stored, self.model_card(), self.training)
        return out

    def model_card(self) -> Any:
        """The method-specific text of the export's README (:class:`~dimo.pipelines.exports.ModelCard`)."""

        from dimo.pipelines.exports import ModelCard

        cfg = self.net.export_config()
        wan = cfg["backbone_config"]
        kind = "I2V" if self.net.is_i2v else "T2V"
        parts = [
            (
                "`net/`",
                f"`ThreeDiMoNet`: motion encoders ({cfg['motion_dim']}-wide, {cfg['body_tokens']}+{cfg['hand_tokens']} "
                f"tokens per frame), geometric decoder, Wan transformer ({wan.get('num_layers')} layers, "
                f"{wan.get('num_attention_heads')}x{wan.get('attention_head_dim')} heads, {kind}) with "
                f"`{cfg['injection']}` motion injection",
            ),
            ("`vae/`", "`AutoencoderKLWan` (frozen)"),
            (
                "`tokenizer/`, `text_encoder/`",
                f"UMT5 (frozen), prompts of up to {self.text_encoder.max_length} tokens",
            ),
        ]
        if self.image_encoder is not None:
            parts.append(
                ("`image_encoder/`", "`CLIPVisionModel` (frozen, I2V: the reference's image tokens)")
            )
        parts.append(
            ("`scheduler/`", f"`FlowMatchEulerDiscreteScheduler`, shift {float(self.scheduler.config.shift)}")
        )
        return ModelCard(
            title="3DiMo export",
            summary=(
                "View-adaptive human video generation (3DiMo, Fang et al., CVPR 2026): a reference image, a "
                'driving video and a camera prompt ("<view>. The camera <motion>.") -> a video. Written by '
                "`python -m dimo.cli export` from a `ThreeDiMoModule` checkpoint (`docs/3dimo.md`)."
            ),
            parts=parts,
            inputs=[
                ("`reference`", "(3, H, W) image in [-1, 1], H, W multiples of 16: the person (frame 0)"),
                (
                    "`driving`",
                    "(T, 3, H, W) video in [-1, 1], T >= 5 (frames past the last 1 + 4k are dropped): the "
                    "motion, encoded to implicit motion tokens",
                ),
                (
                    "`prompt`, `caption`",
                    'camera prompt "<view>. The camera <motion>." and optional appearance text',
                ),
                (
                    "`joints2d`, `joints2d_valid`",
                    "optional (T, 55, 2) SMPL-X 2D joints: place the hand encoder's crops",
                ),
                (
                    "`guidance_scale`, `motion_guidance_scale`, `window`, `generator`",
                    "text / motion CFG, temporal window (frames), noise generator (seed)",
                ),
            ],
            usage=(
                "from dimo.pipelines.threedimo import ThreeDiMoPipeline\n"
                "from dimo.pipelines.io import load_image, load_video\n\n"
                'pipe = ThreeDiMoPipeline.from_pretrained("<this folder>")\n'
                'video = pipe(load_image("ref.png"), load_video("driving.mp4")[0], "Front view. The camera stays static.")'
            ),
            cli=(
                "python -m dimo.cli generate --model 3dimo --pretrained <this folder> --reference ref.png "
                '--driving driving.mp4 --prompt "Front view. The camera stays static." --out out.mp4'
            ),
            settings=self.settings,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **_: Any) -> ThreeDiMoPipeline:  # type: ignore[override]
        """Load a folder written by :meth:`save_pretrained` (local only; no hub; no file of the folder
        is executed: each part is read by its own class)."""

        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, CLIPVisionModel, UMT5EncoderModel

        from dimo.pipelines.exports import part_error, read_index, stored_kwargs

        folder = Path(pretrained_model_name_or_path)
        index = read_index(folder, cls)
        local = {"local_files_only": True}
        try:  # every part strictly (diffusers / transformers alone would only warn about bad keys)
            net = ThreeDiMoNet.from_pretrained(folder / "net")
            vae = from_pretrained_strict(AutoencoderKLWan, folder / "vae", **local)
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", **local)
            text = from_pretrained_strict(UMT5EncoderModel, folder / "text_encoder", **local)
            image = None
            if (index.get("image_encoder") or [None])[0] is not None:
                image = from_pretrained_strict(CLIPVisionModel, folder / "image_encoder", **local)
        except (MissingWeightsError, OSError, ValueError) as err:
            raise part_error(folder, err) from err
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        return cls(
            net.eval(),
            vae,
            text,
            scheduler,
            tokenizer=tokenizer,
            image_encoder=image,
            **stored_kwargs(cls, index),
        )

    def _frozen(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae, self.text_encoder, self.image_encoder) if m is not None]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ThreeDiMoPipeline:  # type: ignore[override]
        """Move the network (and the frozen parts, unless offloaded) to ``device``; ``dtype`` casts
        only the frozen parts (the network runs in float32, under autocast with :meth:`set_precision`)."""

        if device is not None:
            self.net.to(device)
            if not self._offload_frozen:
                for part in self._frozen():
                    part.to(device)
        if dtype is not None:
            for part in self._frozen():
                part.to(dtype=dtype)
        return self

    # -- memory options -------------------------------------------------------------------------
    def enable_frozen_cpu_offload(self) -> None:
        """Keep the frozen parts on the CPU; each moves to the net's device only while used."""

        self._offload_frozen = True
        for part in self._frozen():
            part.to("cpu")

    def enable_vae_tiling(self) -> None:
        self.vae.vae.enable_tiling()

    def enable_vae_slicing(self) -> None:
        self.vae.vae.enable_slicing()

    def set_precision(self, dtype: str) -> None:
        """``float32`` | ``bfloat16`` | ``float16``: frozen parts cast, the network under autocast."""

        if dtype not in DTYPES:
            raise GenerateError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
        for part in self._frozen():
            part.to(dtype=DTYPES[dtype])
        self._autocast_dtype = None if dtype == "float32" else DTYPES[dtype]

    @property
    def exec_device(self) -> torch.device:
        return next(self.net.parameters()).device

    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
        if not self._offload_frozen:
            yield module
            return
        module.to(device)
        try:
            yield module
        finally:
            module.to("cpu")

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self._autocast_dtype)

    # -- helpers --------------------------------------------------------------------------------
    @property
    def temporal_compression(self) -> int:
        return self.vae.temporal_compression

    def usable_frames(self, num_frames: int) -> int:
        """Largest 1 + 4k <= num_frames (the causal VAE's frame counts)."""

        c = self.temporal_compression
        return 1 + (num_frames - 1) // c * c

    def _slice_motion(self, z: torch.Tensor, num_frames: int, frames: list[int]) -> torch.Tensor:
        """Motion tokens of ``frames`` in the network's frame-major layout (B, t*(K_b+K_h), D)."""

        return self.net.encoders.per_frame(z, num_frames)[:, frames].flatten(1, 2)

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        reference: torch.Tensor,
        driving: torch.Tensor,
        prompts: Sequence[str],
        num_inference_steps: int,
        generator: torch.Generator | None = None,
        negative_prompt: str = "",
        guidance_scale: float = 1.0,
        motion_guidance_scale: float = 1.0,
        window: int | None = None,
        overlap: int = 1,
        joints2d: torch.Tensor | None = None,
        joints2d_valid: torch.Tensor | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """3DiMo's sampler on a batch (no input checks: :meth:`__call__` makes them for users).

        Args:
            reference: (B, 3, H, W) in [-1, 1] on the network's device.
            driving: (B, T, 3, H, W) in [-1, 1], T = 1 + 4k.
            prompts: B camera prompts (with any caption already appended).
            generator: draws the unit noise (B, 16, F, h, w) on its own device (the call's device when
                None), so a batch drawn with the same generator state gives the same sample.
            window: frames per temporal window (T2V; default: the whole clip); ``overlap``: shared
                latent frames between windows. I2V backbones sample the clip in one window.
            joints2d, joints2d_valid: (B, T, 55, 2) / (B, T, 55) SMPL-X 2D joints for E_h's hand crops.
            Others: as :meth:`__call__`.
        Returns:
            (B, T, 3, H, W) in [-1, 1].
        """

        device = reference.device
        b, t = driving.shape[:2]
        c = self.temporal_compression
        window = window or t
        if self.net.is_i2v and window < t:
            raise GenerateError(
                f"an I2V backbone samples the clip in one window: window={window} < {t} frames (pass a larger "
                "window, or fewer --num-frames)"
            )
        prompts = list(prompts) + ([negative_prompt] * b if guidance_scale != 1.0 else [])
        with self._on_device(self.text_encoder, device) as enc:
            text = enc(prompts, device=device)  # (B or 2B, L, D_t)
        with self._on_device(self.vae, device) as vae:
            ref = vae.encode(reference[:, :, None])  # (B, 16, 1, h, w)
        extra: tuple[torch.Tensor, ...] = ()
        if self.net.is_i2v:  # (condition (B, 20, F, h, w), CLIP tokens (B, N, D))
            with self._on_device(self.vae, device) as vae, self._on_device(self.image_encoder, device) as img:
                extra = encode_i2v(vae, img, reference, t)
        with self._autocast(device):
            z = self.net.encode_motion(driving, joints2d, joints2d_valid)  # (B, T*(K_b+K_h), D), once

        shape = (b, ref.shape[1], 1 + (t - 1) // c, *ref.shape[-2:])
        noise = torch.randn(shape, generator=generator, device=generator.device if generator else device)
        noise = noise.to(device=device, dtype=ref.dtype)

        def guided(x: torch.Tensor, ts: torch.Tensor, zw: torch.Tensor, n: int) -> torch.Tensor:
            with self._autocast(device):
                v = self.net(x, ts, text[:b], zw, n, *extra)
                if guidance_scale != 1.0:
                    v_u = self.net(x, ts, text[b:], zw, n, *extra)
                    v = v_u + guidance_scale * (v - v_u)
                if motion_guidance_scale != 1.0:
                    v_m = self.net(x, ts, text[:b], None, None, *extra)
                    v = v + (motion_guidance_scale - 1.0) * (v - v_m)
            return v.to(x.dtype)

        def window_velocity(x: torch.Tensor, start: int, sigma: torch.Tensor) -> torch.Tensor:
            frames = motion_frames(start, start + x.shape[2] - 1, c)
            ts = reference_timesteps(sigma, self.net.patch_grid(x.shape))  # timestep 0 on the reference
            return guided(x, ts, self._slice_motion(z, t, frames), len(frames))

        flow = FlowMatching(shift=float(self.scheduler.config.shift))
        bar = self.progress_bar(total=num_inference_steps) if progress else contextlib.nullcontext()
        with bar:

            def velocity(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
                if self.net.is_i2v:  # one timestep per sample, every latent frame generated
                    v = guided(x, timestep, z, t)
                else:
                    sigma = timestep / 1000.0
                    v = fuse_windows(
                        x, lambda xw, s: window_velocity(xw, s, sigma), (window - 1) // c, overlap
                    )
                if progress:
                    bar.update()
                return v

            def clamp(x: torch.Tensor) -> torch.Tensor:  # T2V: the clean reference latent in frame 0
                return torch.cat([ref, x[:, :, 1:]], dim=2)

            latents = flow.sample(
                velocity, noise, num_inference_steps, clamp=None if self.net.is_i2v else clamp
            )  # (B, 16, F, h, w)
        with self._on_device(self.vae, device) as vae:
            return vae.decode(latents).transpose(1, 2)  # (B, T, 3, H, W)

    @torch.no_grad()
    def __call__(
        self,
        reference: torch.Tensor,
        driving: torch.Tensor,
        prompt: str,
        caption: str | None = None,
        negative_prompt: str = "",
        num_inference_steps: int = 8,
        guidance_scale: float = 1.0,
        motion_guidance_scale: float = 1.0,
        window: int | None = None,
        overlap: int = 1,
        generator: torch.Generator | None = None,
        progress: bool = True,
        joints2d: torch.Tensor | None = None,
        joints2d_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate a video.

        Args:
            reference: (3, H, W) in [-1, 1]; H, W multiples of 16.
            driving: (T, 3, H, W) in [-1, 1], T >= 5; frames past the last 1 + 4k are dropped.
            prompt: camera prompt ("<view>. The camera <motion>."); ``caption`` is appended.
            negative_prompt: unconditional text for ``guidance_scale != 1``.
            num_inference_steps: Euler steps.
            guidance_scale: text classifier-free guidance (1 = off).
            motion_guidance_scale: motion guidance against the motion-free network (1 = off).
            window: frames per temporal window (1 + 4k; default: the training clip length, or
                the whole video; I2V backbones: the whole video); ``overlap``: shared latent frames
                between windows.
            generator: noise generator (seed).
            joints2d, joints2d_valid: optional SMPL-X 2D joints (T, 55, 2) in driving-frame pixels and
                their validity (T, 55) (e.g. from a keypoint detector): they place E_h's hand crops;
                without them the hand encoder sees the whole frame.
        Returns:
            (T', 3, H, W) in [-1, 1], T' = 1 + 4 * ((T - 1) // 4); frame 0 reproduces the reference.
        """

        if not prompt or not prompt.strip():
            raise GenerateError(
                'empty prompt; expected a camera prompt such as "Front view. The camera stays static."'
            )
        if reference.ndim != 3 or driving.ndim != 4 or reference.shape[0] != 3 or driving.shape[1] != 3:
            raise GenerateError(
                f"expected reference (3, H, W) and driving (T, 3, H, W), got {tuple(reference.shape)} "
                f"and {tuple(driving.shape)}"
            )
        h, w = reference.shape[-2:]
        if h % 16 or w % 16 or tuple(driving.shape[-2:]) != (h, w):
            raise GenerateError(
                f"reference {h}x{w} and driving {tuple(driving.shape[-2:])} must share one size, multiple of 16"
            )
        c = self.temporal_compression
        t = self.usable_frames(driving.shape[0])
        if driving.shape[0] < 1 + c:
            raise GenerateError(f"driving video has {driving.shape[0]} frames; at least {1 + c} are needed")
        if overlap < 0:
            raise GenerateError(f"overlap must be >= 0 latent frames, got {overlap}")
        if num_inference_steps < 1:
            raise GenerateError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if window is None:
            window = t if self.net.is_i2v else int(self.settings.get("window") or t)
        if window < 1 + c or (window - 1) % c:
            raise GenerateError(f"window must be 1 + {c}k frames with k >= 1, got {window}")
        if joints2d is not None and (joints2d.shape[0] < t or joints2d.shape[1:] != (55, 2)):
            raise GenerateError(f"joints2d must be (T >= {t}, 55, 2), got {tuple(joints2d.shape)}")
        device = self.exec_device
        text = f"{prompt.strip()} {caption.strip()}".strip() if caption else prompt.strip()
        video = self.sample(
            reference.to(device)[None],  # (1, 3, H, W)
            driving[:t].to(device)[None],  # (1, T, 3, H, W)
            [text],
            num_inference_steps,
            generator=generator,
            negative_prompt=negative_prompt,
            guidance_scale=guidance_scale,
            motion_guidance_scale=motion_guidance_scale,
            window=window,
            overlap=overlap,
            joints2d=None if joints2d is None else joints2d[:t].to(device)[None],  # (1, T, 55, 2)
            joints2d_valid=None if joints2d_valid is None else joints2d_valid[:t].to(device)[None],
            progress=progress,
        )
        return video[0].float().cpu()  # (T', 3, H, W)
