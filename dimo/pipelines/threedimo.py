"""3DiMo inference: reference image + driving video (+ camera prompt, + caption) -> video.

:class:`ThreeDiMoPipeline` is a ``diffusers.DiffusionPipeline`` holding the trained network
(:class:`~dimo.models.threedimo.ThreeDiMoNet`), the frozen Wan VAE and UMT5 text encoder and a
``FlowMatchEulerDiscreteScheduler`` (its ``shift`` is the sampling shift). Per call:

1. the driving frames (T, 3, H, W) are encoded to motion tokens **once**;
2. the reference latent is imposed on latent frame 0 (as in training: timestep 0 on its tokens);
3. flow-matching Euler sampling (:meth:`dimo.diffusion.flow_matching.FlowMatching.sample`) with
   optional classifier-free guidance on the text (negative prompt) and on the motion (the network
   without motion tokens is the plain Wan model);
4. driving videos longer than one window are covered by overlapping latent windows fused at every
   step (:mod:`dimo.pipelines.windows`);
5. VAE decode -> (T, 3, H, W) in [-1, 1]; T is the driving length rounded down to 1 + 4k.

Folder layout (``save_pretrained`` / ``from_pretrained``), Wan-diffusers style::

    README.md          model card: what the folder holds, its settings, how to load and run it
    model_index.json   diffusers index + the dimo settings (size, window, text max_length)
    net/               ThreeDiMoNet.save_pretrained (config.json, model.safetensors)
    vae/               AutoencoderKLWan
    tokenizer/, text_encoder/   UMT5 tokenizer + encoder
    scheduler/         FlowMatchEulerDiscreteScheduler
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from dimo.diffusion.flow_matching import FlowMatching, reference_timesteps
from dimo.models.common import DTYPES
from dimo.models.threedimo import MissingWeightsError, ThreeDiMoNet, WanTextEncoder, WanVAE
from dimo.pipelines.errors import GenerateError
from dimo.pipelines.io import atomic_folder
from dimo.pipelines.windows import fuse_windows, motion_frames

__all__ = ["ThreeDiMoPipeline"]

INDEX_NAME = "model_index.json"


class ThreeDiMoPipeline(DiffusionPipeline):
    """3DiMo generation pipeline.

    Args:
        net: trained 3DiMo network (motion encoders + Wan with motion injection).
        vae: frozen Wan VAE wrapper.
        text_encoder: frozen UMT5 wrapper (tokenizer inside).
        scheduler: flow-matching Euler scheduler; its ``shift`` is used for sampling.
        settings: defaults stored with the pipeline: ``height``, ``width`` (training size),
            ``window`` (training clip length in frames, 1 + 4k), ``fps``.
    """

    model_cpu_offload_seq = "text_encoder->net->vae"

    def __init__(
        self,
        net: ThreeDiMoNet,
        vae: WanVAE,
        text_encoder: WanTextEncoder,
        scheduler: FlowMatchEulerDiscreteScheduler,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(net=net, vae=vae, text_encoder=text_encoder, scheduler=scheduler)
        self.settings: dict[str, Any] = dict(settings or {})
        self._offload_frozen = False
        self._autocast_dtype: torch.dtype | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_module(
        cls, module: torch.nn.Module, settings: dict[str, Any] | None = None
    ) -> ThreeDiMoPipeline:
        """Wrap a (trained) :class:`~dimo.models.threedimo.ThreeDiMoModule`'s parts."""

        scheduler = module.flow.make_scheduler()
        return cls(module.net.eval(), module.vae, module.text_encoder, scheduler, settings)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, config: str | os.PathLike | None = None
    ) -> ThreeDiMoPipeline:
        """Build from a Lightning checkpoint of ``ThreeDiMoModule`` (+ the run's ``config.yaml``)."""

        from dimo.pipelines.checkpoint import load_module

        module, data_hp = load_module(path, "3dimo", config)
        settings = {k: data_hp[k] for k in ("height", "width") if data_hp.get(k)}
        if data_hp.get("num_frames"):
            settings["window"] = int(data_hp["num_frames"])
        return cls.from_module(module, settings)

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> Path:  # type: ignore[override]
        """Write the folder described in the module docstring, atomically (temp folder + rename)."""

        out = Path(save_directory)
        with atomic_folder(out) as tmp:
            self.net.save_pretrained(tmp / "net")
            self.vae.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            self.text_encoder.tokenizer.save_pretrained(tmp / "tokenizer")
            self.text_encoder.encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
            self.scheduler.save_pretrained(tmp / "scheduler")
            import diffusers

            index = {
                "_class_name": type(self).__name__,
                "_diffusers_version": diffusers.__version__,
                "net": ["dimo.models.threedimo", "ThreeDiMoNet"],
                "vae": ["diffusers", "AutoencoderKLWan"],
                "text_encoder": ["transformers", "UMT5EncoderModel"],
                "tokenizer": ["transformers", type(self.text_encoder.tokenizer).__name__],
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "dimo": {"settings": self.settings, "text_max_length": self.text_encoder.max_length},
            }
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
            (tmp / "README.md").write_text(self.model_card())
        return out

    def model_card(self) -> str:
        """The export's README: the network's shape, the defaults stored with it, how to load it."""

        cfg = self.net.export_config()
        wan = cfg["backbone_config"]
        return f"""# 3DiMo export ({type(self).__name__})

View-adaptive human video generation (3DiMo, Fang et al., CVPR 2026): a reference image, a driving
video and a camera prompt ("<view>. The camera <motion>.") -> a video. Written by
`python -m dimo.cli export` from a `ThreeDiMoModule` checkpoint.

| part | what |
|---|---|
| `net/` | `ThreeDiMoNet`: motion encoders ({cfg["motion_dim"]}-wide, {cfg["body_tokens"]}+{cfg["hand_tokens"]} tokens per frame), geometric decoder, Wan transformer ({wan.get("num_layers")} layers, {wan.get("num_attention_heads")}x{wan.get("attention_head_dim")} heads) with `{cfg["injection"]}` motion injection |
| `vae/` | `AutoencoderKLWan` (frozen) |
| `tokenizer/`, `text_encoder/` | UMT5 (frozen), prompts of up to {self.text_encoder.max_length} tokens |
| `scheduler/` | `FlowMatchEulerDiscreteScheduler`, shift {float(self.scheduler.config.shift)} |

Stored defaults: {json.dumps(self.settings) if self.settings else "none"} (frame size, temporal window).

```python
from dimo.pipelines.threedimo import ThreeDiMoPipeline
from dimo.pipelines.io import load_image, load_video

pipe = ThreeDiMoPipeline.from_pretrained("<this folder>")
video = pipe(load_image("ref.png"), load_video("driving.mp4"), "Front view. The camera stays static.")
```

or `python -m dimo.cli generate --model 3dimo --pretrained <this folder> ...` (`docs/generate.md`).
"""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **_: Any) -> ThreeDiMoPipeline:  # type: ignore[override]
        """Load a folder written by :meth:`save_pretrained` (local only; no hub)."""

        folder = Path(pretrained_model_name_or_path)
        index_file = folder / INDEX_NAME
        if not index_file.is_file():
            raise GenerateError(
                f"pretrained folder not found or incomplete: {index_file} missing "
                "(expected a folder written by `python -m dimo.cli export`)"
            )
        index = json.loads(index_file.read_text())
        if index.get("_class_name") != cls.__name__:
            raise GenerateError(
                f"{folder} holds a {index.get('_class_name')}; expected a {cls.__name__} folder"
            )
        extra = index.get("dimo", {})
        try:
            net = ThreeDiMoNet.from_pretrained(folder / "net")
            vae = WanVAE(path=folder / "vae")
            text = WanTextEncoder(path=folder, max_length=int(extra.get("text_max_length", 512)))
        except (MissingWeightsError, OSError) as err:
            raise GenerateError(f"cannot load pretrained folder {folder}: {err}") from err
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        return cls(net.eval(), vae, text, scheduler, extra.get("settings"))

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ThreeDiMoPipeline:  # type: ignore[override]
        """Move the network (and the frozen parts, unless offloaded) to ``device``; ``dtype`` casts
        only the frozen parts (the network runs in float32, under autocast with :meth:`set_precision`)."""

        if device is not None:
            self.net.to(device)
            if not self._offload_frozen:
                self.vae.to(device)
                self.text_encoder.to(device)
        if dtype is not None:
            self.vae.to(dtype=dtype)
            self.text_encoder.to(dtype=dtype)
        return self

    # -- memory options -------------------------------------------------------------------------
    def enable_frozen_cpu_offload(self) -> None:
        """Keep the VAE and text encoder on the CPU; each moves to the net's device only while used."""

        self._offload_frozen = True
        self.vae.to("cpu")
        self.text_encoder.to("cpu")

    def enable_vae_tiling(self) -> None:
        self.vae.vae.enable_tiling()

    def enable_vae_slicing(self) -> None:
        self.vae.vae.enable_slicing()

    def set_precision(self, dtype: str) -> None:
        """``float32`` | ``bfloat16`` | ``float16``: frozen parts cast, the network under autocast."""

        if dtype not in DTYPES:
            raise GenerateError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
        self.vae.to(dtype=DTYPES[dtype])
        self.text_encoder.to(dtype=DTYPES[dtype])
        self._autocast_dtype = None if dtype == "float32" else DTYPES[dtype]

    @property
    def exec_device(self) -> torch.device:
        return next(self.net.parameters()).device

    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        if not self._offload_frozen:
            yield module
            return
        module.to(self.exec_device)
        try:
            yield module
        finally:
            module.to("cpu")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.exec_device.type, dtype=self._autocast_dtype)

    # -- helpers --------------------------------------------------------------------------------
    @property
    def temporal_compression(self) -> int:
        return self.vae.temporal_compression

    def usable_frames(self, num_frames: int) -> int:
        """Largest 1 + 4k <= num_frames (the causal VAE's frame counts)."""

        c = self.temporal_compression
        return 1 + (num_frames - 1) // c * c

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        with self._on_device(self.text_encoder) as enc:
            return enc(prompts, device=self.exec_device)  # (B, L, D_t)

    def _slice_motion(self, z: torch.Tensor, num_frames: int, frames: list[int]) -> torch.Tensor:
        """Motion tokens of ``frames`` in the network's frame-major layout (B, t*(K_b+K_h), D)."""

        return self.net.encoders.per_frame(z, num_frames)[:, frames].flatten(1, 2)

    def _timesteps(self, sigma: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """Per-token timesteps (B, F'*h'*w'): 0 on the reference frame, 1000 sigma elsewhere."""

        return reference_timesteps(sigma, self.net.transformer.patch_grid(latent_shape))

    # -- generation -----------------------------------------------------------------------------
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
                the whole video); ``overlap``: shared latent frames between windows.
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
        window = window or int(self.settings.get("window") or t)
        if window < 1 + c or (window - 1) % c:
            raise GenerateError(f"window must be 1 + {c}k frames with k >= 1, got {window}")
        device = self.exec_device
        driving = driving[:t].to(device)[None]  # (1, T, 3, H, W)
        reference = reference.to(device)[None]  # (1, 3, H, W)

        text_full = f"{prompt.strip()} {caption.strip()}".strip() if caption else prompt.strip()
        prompts = [text_full] + ([negative_prompt] if guidance_scale != 1.0 else [])
        text = self._encode_text(prompts)  # (1 or 2, L, D_t)
        with self._on_device(self.vae) as vae:
            ref = vae.encode(reference[:, :, None].to(device))  # (1, 16, 1, h, w)
        with self._autocast():
            if joints2d is not None:
                if joints2d.shape[0] < t or joints2d.shape[1:] != (55, 2):
                    raise GenerateError(f"joints2d must be (T >= {t}, 55, 2), got {tuple(joints2d.shape)}")
                joints2d = joints2d[:t].to(device)[None]  # (1, T, 55, 2)
                if joints2d_valid is not None:
                    joints2d_valid = joints2d_valid[:t].to(device)[None]  # (1, T, 55)
            z = self.net.encode_motion(driving, joints2d, joints2d_valid)  # (1, T*(K_b+K_h), D), once

        num_latent = 1 + (t - 1) // c
        shape = (1, ref.shape[1], num_latent, *ref.shape[-2:])
        noise = torch.randn(shape, generator=generator, device=generator.device if generator else device)
        noise = noise.to(device=device, dtype=ref.dtype)

        def window_velocity(x: torch.Tensor, start: int, sigma: torch.Tensor) -> torch.Tensor:
            frames = motion_frames(start, start + x.shape[2] - 1, c)
            zw = self._slice_motion(z, t, frames)
            ts = self._timesteps(sigma, x.shape)
            with self._autocast():
                v = self.net(x, ts, text[:1], zw, len(frames))
                if guidance_scale != 1.0:
                    v_u = self.net(x, ts, text[1:], zw, len(frames))
                    v = v_u + guidance_scale * (v - v_u)
                if motion_guidance_scale != 1.0:
                    v_m = self.net(x, ts, text[:1], None)
                    v = v + (motion_guidance_scale - 1.0) * (v - v_m)
            return v.to(x.dtype)

        bar = self.progress_bar(total=num_inference_steps) if progress else contextlib.nullcontext()
        with bar:

            def velocity(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
                sigma = timestep / 1000.0
                v = fuse_windows(x, lambda xw, s: window_velocity(xw, s, sigma), (window - 1) // c, overlap)
                if progress:
                    bar.update()
                return v

            def clamp(x: torch.Tensor) -> torch.Tensor:
                return torch.cat([ref, x[:, :, 1:]], dim=2)

            flow = FlowMatching(shift=float(self.scheduler.config.shift))
            latents = flow.sample(velocity, noise, num_inference_steps, clamp=clamp)  # (1, 16, F, h, w)
        with self._on_device(self.vae) as vae:
            video = vae.decode(latents)  # (1, 3, T', H, W)
        return video[0].transpose(0, 1).float().cpu()  # (T', 3, H, W)
