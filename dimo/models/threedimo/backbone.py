"""Wan backbone adapter: a diffusers ``WanTransformer3DModel`` plus 3DiMo's motion injection.

:class:`ThreeDiMoTransformer` owns an unmodified ``WanTransformer3DModel`` (``transformer.*`` keys
are exactly diffusers' keys, so a local Wan diffusers folder loads into it) and the new layers
(``motion_*`` keys). Presets live in :data:`WAN_PRESETS`:

* ``tiny``: 2 layers, 2x16 heads, CPU seconds per step (tests, toy runs);
* ``wan2.1-t2v-1.3b``: diffusers' ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` transformer config
  (1,418,996,800 parameters);
* ``wan2.1-i2v-14b``: ``Wan-AI/Wan2.1-I2V-14B-480P-Diffusers`` (36 input channels, CLIP image branch);
* ``tiny-i2v``: ``tiny`` with the I2V input (36 channels) and a 32-wide image branch (CPU tests).

Reference conditioning (paper: the reference latent shares the video tokens' self-attention):

* T2V presets (``image_dim`` None): as in Wan2.2 TI2V, the clean reference latent replaces the first
  latent frame and those tokens get timestep 0 (per-token timesteps); the loss skips them (done by
  the LightningModule).
* I2V presets (``image_dim`` set): as diffusers' ``WanImageToVideoPipeline``, the input is
  ``[noisy latents (16); mask (4); VAE latent of [reference, zeros...] (16)]`` on channels and the
  CLIP image tokens of the reference go through Wan's image branch (``encoder_hidden_states_image``);
  one timestep per sample, loss on every latent frame. Text embeddings are zero-padded to the 512
  tokens diffusers' I2V attention processor assumes (Wan pads prompts to 512 with zeros too).

Loading is strict: :func:`load_strict` raises :class:`MissingWeightsError` naming the folder, the
file and the keys unless a key is on the explicit allow-list of new layers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
from diffusers import ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from dimo.models.common import MissingWeightsError, load_strict
from dimo.models.threedimo.injection import (
    MotionContext,
    MotionInjectionProcessor,
    group_by_latent_frame,
    make_motion_attention,
)

__all__ = [
    "BACKBONES",
    "MotionBackbone",
    "WAN_PRESETS",
    "MissingWeightsError",
    "i2v_condition",
    "ThreeDiMoTransformer",
    "load_strict",
    "read_weights",
]

_WAN_BASE = dict(
    patch_size=(1, 2, 2),
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)
WAN_PRESETS: dict[str, dict] = {
    "tiny": {
        **_WAN_BASE,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "text_dim": 32,
        "freq_dim": 32,
        "ffn_dim": 64,
        "num_layers": 2,
        "rope_max_seq_len": 64,
    },
    "wan2.1-t2v-1.3b": {
        **_WAN_BASE,
        "num_attention_heads": 12,
        "attention_head_dim": 128,
        "ffn_dim": 8960,
        "num_layers": 30,
    },
    "wan2.1-i2v-14b": {
        **_WAN_BASE,
        "num_attention_heads": 40,
        "attention_head_dim": 128,
        "in_channels": 36,
        "ffn_dim": 13824,
        "num_layers": 40,
        "image_dim": 1280,
        "added_kv_proj_dim": 5120,
    },
}

WAN_PRESETS["tiny-i2v"] = {**WAN_PRESETS["tiny"], "in_channels": 36, "image_dim": 32, "added_kv_proj_dim": 32}

WAN_TEXT_LENGTH = 512  # diffusers' WanAttnProcessor splits image/text context at (length - 512)
I2V_MASK_CHANNELS = 4  # = VAE temporal stride: one mask channel per folded frame

NEW_LAYER_PREFIXES = ("motion_",)  # keys that a plain Wan checkpoint cannot hold


def read_weights(folder: Path | str) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a diffusers/transformers weight folder (single or sharded safetensors)."""

    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingWeightsError(f"pretrained folder not found: {folder}")
    for index_name in ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise MissingWeightsError(f"shard {folder / shard} named by {index} is missing")
                state.update(load_file(folder / shard))
            return state, index
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return load_file(folder / name), folder / name
    raise MissingWeightsError(
        f"no weights in {folder}: expected diffusion_pytorch_model.safetensors, model.safetensors "
        "or a sharded *.safetensors.index.json"
    )


@runtime_checkable
class MotionBackbone(Protocol):
    """What :class:`~dimo.models.threedimo.ThreeDiMoNet`, the LightningModule and the pipeline need from a
    video DiT with 3DiMo's motion injection. :class:`ThreeDiMoTransformer` (Wan) is the one here; another
    DiT is one file with a class like it (a diffusers ``ModelMixin`` declaring ``_no_split_modules`` and
    ``_repeated_blocks``), added to :data:`BACKBONES` (or named by its import path in
    ``ThreeDiMoNet(backbone_type=...)``). Constructor: ``(<its config dict>, motion_dim=, injection=,
    motion_attention=, motion_placement=, temporal_compression=)`` plus ``from_preset(name, **kw)`` and
    ``from_pretrained_dit(folder, **kw)``; the injection layers must start at zero (the pretrained output
    unchanged at step 0) and their keys must not start with :attr:`pretrained_prefix`.
    """

    #: state-dict prefix of the pretrained DiT's own weights (everything else is new: motion layers)
    pretrained_prefix: str

    @property
    def dit(self) -> nn.Module:
        """The pretrained DiT itself (LoRA adapters are added to it)."""

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks motion is injected into (one injection layer each)."""

    @property
    def hidden_size(self) -> int: ...

    @property
    def text_dim(self) -> int: ...

    @property
    def image_dim(self) -> int | None:
        """Width of the CLIP image tokens of an I2V backbone; None for T2V."""

    @property
    def is_i2v(self) -> bool: ...

    def patch_grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (F', h', w') of latents (B, C, F, h, w)."""

    def backbone_config(self) -> dict:
        """The DiT's exact constructor config (JSON-ready): an export rebuilds this shape from it."""

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        motion: torch.Tensor | None = None,
        num_motion_frames: int | None = None,
        condition: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latents (B, C, F, h, w) -> velocity (B, C_out, F, h, w); ``motion`` None: the plain DiT."""

    def enable_gradient_checkpointing(self) -> None: ...

    def compile_repeated_blocks(self, *args, **kwargs) -> None: ...


class ThreeDiMoTransformer(ModelMixin, ConfigMixin):
    """Wan DiT with motion injection: (B, C, F, h, w) latents -> (B, C_out, F, h, w) velocity.

    Args:
        wan_config: ``WanTransformer3DModel`` config (see :data:`WAN_PRESETS`).
        motion_dim: width D of the incoming motion tokens.
        injection: ``cross_attention`` (paper) or ``channel_concat`` (ablation).
        motion_attention: ``frame_aligned`` or ``global`` (cross-attention only; see injection.py).
        temporal_compression: the VAE's temporal stride (Wan: 4; frames are 1 + 4k).
        concat_channels: motion channels for ``channel_concat``.
        max_frames: length of the sinusoidal frame-index table for motion tokens.
    """

    _supports_gradient_checkpointing = True
    # diffusers' device maps keep a Wan block whole; ``compile_repeated_blocks`` compiles each one
    _no_split_modules = ["WanTransformerBlock", "CompactModulationWanBlock"]
    _repeated_blocks = ["WanTransformerBlock", "CompactModulationWanBlock"]  # the latter: bf16_modulation

    @register_to_config
    def __init__(
        self,
        wan_config: dict | None = None,
        motion_dim: int = 64,
        injection: Literal["cross_attention", "channel_concat"] = "cross_attention",
        motion_attention: Literal["frame_aligned", "global"] = "frame_aligned",
        motion_placement: Literal["sequential", "parallel"] = "sequential",
        temporal_compression: int = 4,
        concat_channels: int = 16,
        max_frames: int = 512,
    ) -> None:
        super().__init__()
        cfg = dict(WAN_PRESETS["tiny"] if wan_config is None else wan_config)
        self.transformer = WanTransformer3DModel(**cfg)
        tcfg = self.transformer.config
        dim = tcfg.num_attention_heads * tcfg.attention_head_dim
        self.injection = injection
        self.temporal_compression = temporal_compression
        self.context = MotionContext(frame_aligned=motion_attention == "frame_aligned")
        self.motion_norm = nn.LayerNorm(motion_dim)
        self.register_buffer("motion_frame_pe", _sinusoid(max_frames, motion_dim), persistent=False)
        if injection == "cross_attention":
            self.motion_proj = nn.Linear(motion_dim, dim)
            self.motion_layers = nn.ModuleList(
                make_motion_attention(dim, tcfg.num_attention_heads, tcfg.eps)
                for _ in self.transformer.blocks
            )
            sequential = motion_placement == "sequential"
            if sequential:  # the new residual step's query norm (no norm2 reuse: text keeps its own)
                self.motion_query_norms = nn.ModuleList(
                    nn.LayerNorm(dim, eps=tcfg.eps) for _ in self.transformer.blocks
                )
            for i, (block, layer) in enumerate(zip(self.transformer.blocks, self.motion_layers)):
                norm = self.motion_query_norms[i] if sequential else None
                processor = MotionInjectionProcessor(layer, self.context, norm)
                block.attn2.set_processor(processor)
                if sequential:
                    block.norm2.register_forward_pre_hook(processor.norm2_pre_hook)
        elif injection == "channel_concat":
            self.motion_proj = nn.Linear(motion_dim, concat_channels)
            self.motion_patch_embedding = nn.Conv3d(
                concat_channels, dim, kernel_size=tcfg.patch_size, stride=tcfg.patch_size
            )
            nn.init.zeros_(self.motion_patch_embedding.weight)
            nn.init.zeros_(self.motion_patch_embedding.bias)
            self.transformer.patch_embedding.register_forward_hook(self._add_motion_channels)
        else:
            raise ValueError(f"unknown injection {injection!r}")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> ThreeDiMoTransformer:
        if preset not in WAN_PRESETS:
            raise KeyError(f"unknown Wan preset {preset!r}; expected one of {sorted(WAN_PRESETS)}")
        return cls(wan_config=dict(WAN_PRESETS[preset]), **kwargs)

    @classmethod
    def from_wan_pretrained(cls, folder: Path | str, **kwargs) -> ThreeDiMoTransformer:
        """Wan transformer weights from a local diffusers folder (``.../transformer``); new layers init."""

        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise MissingWeightsError(f"Wan transformer config not found: {config_file}")
        raw = json.loads(config_file.read_text())
        keys = set(WanTransformer3DModel.extract_init_dict(raw)[0])
        wan_config = {k: v for k, v in raw.items() if k in keys}
        if "patch_size" in wan_config:
            wan_config["patch_size"] = tuple(wan_config["patch_size"])
        model = cls(wan_config=wan_config, **kwargs)
        state, source = read_weights(folder)
        state = {f"transformer.{k}": v for k, v in state.items() if not k.endswith("norm_added_q.weight")}
        load_strict(model, state, source, allow_missing=NEW_LAYER_PREFIXES)
        return model

    # -- forward -----------------------------------------------------------------------------
    def _add_motion_channels(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        motion_map = self.context.concat_map
        if motion_map is None:
            return output
        b, _, f, h, w = args[0].shape
        motion_map = motion_map.to(output.dtype).expand(b, -1, f, h, w)  # (B, C_m, F, h, w) broadcast
        return output + self.motion_patch_embedding(motion_map)

    def prepare_motion(self, motion: torch.Tensor, num_frames: int) -> None:
        """Motion tokens (B, T*K, D) of T driving frames -> per-forward context."""

        b, n, _ = motion.shape
        k = n // num_frames
        x = motion.reshape(b, num_frames, k, -1)  # (B, T, K, D)
        x = self.motion_norm(x) + self.motion_frame_pe[:num_frames, None].to(x.dtype)
        x = self.motion_proj(x)  # (B, T, K, C)
        c = self.temporal_compression
        num_latent = (num_frames - 1) // c + 1
        self.context.num_latent_frames = num_latent
        if self.injection == "cross_attention":
            self.context.concat_map = None
            if self.context.frame_aligned:
                self.context.tokens = group_by_latent_frame(x, c)  # (B, F, c*K, C)
            else:
                self.context.tokens = x.flatten(1, 2)  # (B, T*K, C)
        else:
            self.context.tokens = None
            grouped = group_by_latent_frame(x, c).mean(2)  # (B, F, C_m)
            self.context.concat_map = grouped.transpose(1, 2)[..., None, None]  # (B, C_m, F, 1, 1)

    def clear_motion(self) -> None:
        self.context.tokens = None
        self.context.concat_map = None

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        motion: torch.Tensor | None = None,
        num_motion_frames: int | None = None,
        condition: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latents (B, C, F, h, w); timestep (B,) or per-token (B, F*h'*w'); text (B, L, text_dim);
        motion (B, T*K, D) or None (then the block outputs are the plain Wan ones).

        I2V presets only: ``condition`` (B, 4 + 16, F, h, w) = mask + reference condition latent
        (see :func:`i2v_condition`), ``image_embeds`` (B, N, image_dim) CLIP tokens of the reference.
        """

        extra = {}
        if self.is_i2v:
            if condition is None or image_embeds is None:
                raise ValueError("an I2V Wan preset needs `condition` (mask + latent) and `image_embeds`")
            latents = torch.cat([latents, condition.to(latents.dtype)], dim=1)  # (B, 36, F, h, w)
            if text_embeds.shape[1] > WAN_TEXT_LENGTH:
                raise ValueError(
                    f"I2V Wan takes at most {WAN_TEXT_LENGTH} text tokens, got {text_embeds.shape[1]}"
                )
            text_embeds = nn.functional.pad(text_embeds, (0, 0, 0, WAN_TEXT_LENGTH - text_embeds.shape[1]))
            extra["encoder_hidden_states_image"] = image_embeds.to(text_embeds.dtype)
        elif condition is not None or image_embeds is not None:
            raise ValueError("`condition` / `image_embeds` are for I2V presets (with image_dim) only")
        if motion is None:
            self.clear_motion()
        else:
            if num_motion_frames is None:
                raise ValueError("num_motion_frames is required with motion tokens")
            if (num_motion_frames - 1) // self.temporal_compression + 1 != latents.shape[2]:
                raise ValueError(
                    f"{num_motion_frames} driving frames do not fold into {latents.shape[2]} latent frames "
                    f"with temporal compression {self.temporal_compression}"
                )
            self.prepare_motion(motion, num_motion_frames)
        # The context keeps its tensors until the next call: gradient checkpointing re-runs the
        # blocks during backward and must see the same motion tokens.
        return self.transformer(latents, timestep, text_embeds, return_dict=False, **extra)[0]

    # -- MotionBackbone ---------------------------------------------------------------------
    pretrained_prefix = "transformer."

    @property
    def dit(self) -> nn.Module:
        return self.transformer

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.blocks

    @property
    def hidden_size(self) -> int:
        cfg = self.transformer.config
        return cfg.num_attention_heads * cfg.attention_head_dim

    @property
    def text_dim(self) -> int:
        return self.transformer.config.text_dim

    @property
    def image_dim(self) -> int | None:
        return self.transformer.config.image_dim

    @classmethod
    def from_pretrained_dit(cls, folder: Path | str, **kwargs) -> ThreeDiMoTransformer:
        return cls.from_wan_pretrained(folder, **kwargs)

    def backbone_config(self) -> dict:
        return self.wan_config()

    def wan_config(self) -> dict:
        """The Wan transformer's constructor arguments (JSON-ready), enough to rebuild its shape."""

        keys = set(WanTransformer3DModel.extract_init_dict(dict(self.transformer.config))[0])
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in self.transformer.config.items()
            if k in keys
        }

    @property
    def is_i2v(self) -> bool:
        """Wan I2V (CLIP image branch, mask + condition latent channels) rather than T2V."""

        return self.transformer.config.image_dim is not None

    def patch_grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        p_t, p_h, p_w = self.transformer.config.patch_size
        _, _, f, h, w = latent_shape
        return f // p_t, h // p_h, w // p_w


#: backbone types by name (``ThreeDiMoNet(backbone_type=...)``; an import path names one outside)
BACKBONES: dict[str, type] = {"wan": ThreeDiMoTransformer}


def resolve_backbone(name: str) -> type:
    """The backbone class of ``name``: a key of :data:`BACKBONES` or ``package.module.Class``."""

    if name in BACKBONES:
        return BACKBONES[name]
    if "." not in name:
        raise ValueError(
            f"unknown backbone_type {name!r}; expected one of {sorted(BACKBONES)} or an import path"
        )
    import importlib

    module, _, attr = name.rpartition(".")
    cls = getattr(importlib.import_module(module), attr, None)
    missing = [
        m
        for m in ("from_preset", "from_pretrained_dit", "backbone_config", "patch_grid", "blocks")
        if cls is None or not hasattr(cls, m)
    ]
    if missing:
        raise ValueError(f"backbone_type {name!r} is not a MotionBackbone class (lacks {missing})")
    return cls


def i2v_condition(cond_latent: torch.Tensor, temporal_compression: int = 4) -> torch.Tensor:
    """Wan I2V channel condition, as diffusers' ``WanImageToVideoPipeline.prepare_latents``.

    ``cond_latent``: normalised VAE latent (B, 16, F, h, w) of the video [reference, zeros, ...].
    Returns (B, 4 + 16, F, h, w): the mask (1 on the frames given: the reference, which the causal VAE
    folds alone into latent frame 0; 0 elsewhere; one channel per folded pixel frame) then the latent.
    """

    b, _, f, h, w = cond_latent.shape
    c = temporal_compression
    mask = cond_latent.new_zeros(b, c, f, h, w)
    mask[:, :, 0] = 1.0
    return torch.cat([mask, cond_latent], dim=1)


def _sinusoid(n: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    pe = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)
    return torch.nn.functional.pad(pe, (0, dim - pe.shape[1]))  # (n, dim)
