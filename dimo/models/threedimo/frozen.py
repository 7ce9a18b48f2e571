"""Frozen parts of the Wan generator: the causal 3D VAE and the UMT5 text encoder.

Both are wrappers with presets (``tiny`` random-initialised for CPU tests and toy runs; paper scale
loaded from a local diffusers folder — there is no hub access, a missing folder/file is a
:class:`~dimo.models.threedimo.backbone.MissingWeightsError` naming it). They never train:
parameters have ``requires_grad=False``, ``train()`` keeps them in eval mode, and the
LightningModule leaves them out of the optimiser.

* :class:`WanVAE` encodes (B, 3, T, H, W) in [-1, 1] to normalised latents
  ``(mu - latents_mean) / latents_std`` (B, 16, 1 + (T-1)/4, H/8, W/8), as Wan's pipelines do, and
  decodes back. The tiny preset's ``latents_std`` was measured on the toy data (about 0.16), so its
  latents have roughly unit variance like the real VAE's.
* :class:`WanTextEncoder` turns prompts into (B, L, text_dim) embeddings with padding positions set
  to zero (Wan pipeline convention). ``tiny`` uses transformers' file-free byte-level
  ``ByT5Tokenizer`` and a 1-layer random ``UMT5EncoderModel``; paper scale loads ``tokenizer/`` and
  ``text_encoder/`` of a Wan diffusers folder. With ``cache=True`` embeddings are cached per prompt
  (camera prompts repeat a lot), which removes the encoder from the step time.
* :class:`WanImageEncoder` (I2V presets only): the CLIP vision tower of Wan I2V. Like diffusers'
  ``WanImageToVideoPipeline.encode_image`` it returns the penultimate hidden states
  (B, 1 + patches, hidden) of ``CLIPVisionModel``; the image is resized (short side), centre-cropped
  to the model's ``image_size`` and normalised with the CLIP mean/std (``CLIPImageProcessor``'s
  steps, in torch). ``tiny`` is a file-free 2-layer 32-wide random CLIP; paper scale loads
  ``image_encoder/`` of a Wan I2V diffusers folder.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dimo.models.common import CLIP_MEAN, CLIP_STD, MissingWeightsError, freeze
from dimo.models.threedimo.backbone import i2v_condition

__all__ = [
    "WanVAE",
    "WanTextEncoder",
    "WanImageEncoder",
    "encode_i2v",
    "VAE_PRESETS",
    "TEXT_PRESETS",
    "IMAGE_PRESETS",
    "PART_PRESETS",
    "part_preset",
    "vae_temporal_compression",
]

VAE_PRESETS: dict[str, dict] = {
    "tiny": dict(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16,
        latents_std=[0.16] * 16,
    ),
    "wan2.1": {},  # diffusers' AutoencoderKLWan defaults are the Wan2.1 VAE
}

TEXT_PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=384, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2),
}


IMAGE_PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    ),
}


#: the frozen parts' preset of each backbone preset (``ThreeDiMoNet(backbone=...)``): the CLI sets the
#: VAE / text / image encoder presets from the net's (``dimo.lightning_cli``), so a preset is typed once.
#: ``wan2.1`` text and image encoders have no file-free config: they load from a Wan folder.
PART_PRESETS: dict[str, str] = {
    "tiny": "tiny",
    "tiny-i2v": "tiny",
    "wan2.1-t2v-1.3b": "wan2.1",
    "wan2.1-i2v-14b": "wan2.1",
}


def part_preset(backbone: str) -> str:
    """The frozen parts' preset for a backbone preset (an unknown name is passed through)."""

    return PART_PRESETS.get(backbone, backbone)


def vae_temporal_compression(config: dict) -> int:
    """Frames per latent frame of an ``AutoencoderKLWan`` config (its ``temperal_downsample``
    switches; diffusers' default, the Wan2.1 VAE, is 4): frame counts are ``1 + c * k``."""

    import inspect

    from diffusers import AutoencoderKLWan

    flags = config.get("temperal_downsample")
    if flags is None:
        flags = inspect.signature(AutoencoderKLWan.__init__).parameters["temperal_downsample"].default
    return 2 ** sum(bool(x) for x in flags)


def _no_preset(kind: str, preset: str, known: dict) -> KeyError:
    if preset in PART_PRESETS.values():
        return KeyError(
            f"the {preset} {kind} has no file-free config: load it from a Wan folder "
            "(model.init_args.pretrained, or path=)"
        )
    return KeyError(f"unknown {kind} preset {preset!r}; expected one of {sorted(known)}")


def _abs(path: Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


class WanVAE(nn.Module):
    """Frozen ``AutoencoderKLWan``.

    Args:
        preset: ``tiny`` (random init) or ``wan2.1`` (architecture of the released VAE).
        path: local diffusers folder of the VAE (``.../vae``); required for real weights.
    """

    def __init__(self, preset: str = "tiny", path: Path | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan

        if path is not None:
            path = Path(path)
            if not (path / "config.json").is_file():
                raise MissingWeightsError(f"Wan VAE folder not found or has no config.json: {path}")
            self.vae = AutoencoderKLWan.from_pretrained(path, local_files_only=True)
        else:
            if preset not in VAE_PRESETS:
                raise KeyError(f"unknown VAE preset {preset!r}; expected one of {sorted(VAE_PRESETS)}")
            self.vae = AutoencoderKLWan(**VAE_PRESETS[preset])
        self._setup(preset, path)

    @classmethod
    def wrap(cls, vae: nn.Module) -> WanVAE:
        """A loaded ``AutoencoderKLWan`` (e.g. by ``DiffusionPipeline.from_pretrained``) as a frozen part."""

        part = cls.__new__(cls)
        nn.Module.__init__(part)
        part.vae = vae
        part._setup(None, None)
        return part

    def _setup(self, preset: str | None, path: Path | None) -> None:
        self.from_folder = path is not None
        self.config = {"preset": preset, "path": _abs(path)}  # rebuilds this part (checkpoints)
        cfg = self.vae.config
        # strides from the config: Wan2.1 is 8x in space, 4x in time; the toy folder is 4x / 4x
        self.spatial_compression = 2 ** (len(cfg.dim_mult) - 1)
        self.temporal_compression = vae_temporal_compression(dict(cfg))
        self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1), persistent=False)
        freeze(self)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> normalised latents (B, 16, F, H/8, W/8) (posterior mode)."""

        dtype = next(self.vae.parameters()).dtype
        mu = self.vae.encode(video.to(dtype)).latent_dist.mode()
        return ((mu - self.mean.to(mu)) / self.std.to(mu)).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        z = latents.to(dtype) * self.std.to(dtype) + self.mean.to(dtype)
        return self.vae.decode(z).sample.float().clamp(-1, 1)  # (B, 3, T, H, W)


class WanTextEncoder(nn.Module):
    """Frozen UMT5 encoder + tokenizer: prompts -> (B, max_length, text_dim), zero past each prompt.

    Args:
        preset: ``tiny`` (random, byte tokenizer) when ``path`` is None.
        path: local Wan diffusers folder holding ``tokenizer/`` and ``text_encoder/``.
        max_length: tokens per prompt (Wan: 512).
        cache: cache embeddings per prompt string (CPU memory).
        cache_size: most prompts the cache holds (least recently used evicted first); one Wan prompt
            (512 x 4096 fp32) is 8 MiB, so the default 128 bounds it at 1 GiB per process.
    """

    def __init__(
        self,
        preset: str = "tiny",
        path: Path | None = None,
        max_length: int = 32,
        cache: bool = True,
        cache_size: int = 128,
    ):
        super().__init__()
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        from transformers import AutoTokenizer, ByT5Tokenizer, UMT5Config, UMT5EncoderModel

        if path is not None:
            path = Path(path)
            for sub in ("tokenizer", "text_encoder"):
                if not (path / sub).is_dir():
                    raise MissingWeightsError(f"text encoder folder incomplete: {path / sub} not found")
            self.tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
            self.encoder = UMT5EncoderModel.from_pretrained(path / "text_encoder", local_files_only=True)
        else:
            if preset not in TEXT_PRESETS:
                raise _no_preset("text encoder", preset, TEXT_PRESETS)
            self.tokenizer = ByT5Tokenizer()
            self.encoder = UMT5EncoderModel(UMT5Config(**TEXT_PRESETS[preset]))
        self._setup(preset, path, max_length, cache, cache_size)

    @classmethod
    def wrap(cls, encoder: nn.Module, tokenizer, max_length: int = 512, cache: bool = True) -> WanTextEncoder:
        """A loaded ``UMT5EncoderModel`` + tokenizer (e.g. by ``DiffusionPipeline.from_pretrained``) as a
        frozen part."""

        part = cls.__new__(cls)
        nn.Module.__init__(part)
        part.tokenizer, part.encoder = tokenizer, encoder
        part._setup(None, None, max_length, cache, 128)
        return part

    def _setup(
        self, preset: str | None, path: Path | None, max_length: int, cache: bool, cache_size: int
    ) -> None:
        self.from_folder = path is not None
        self.config = {
            "preset": preset, "path": _abs(path), "max_length": max_length, "cache": cache, "cache_size": cache_size
        }  # fmt: skip
        self.max_length, self.use_cache = max_length, cache
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # least recently used first
        freeze(self)

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    @torch.no_grad()
    def _encode(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return (hidden * mask.unsqueeze(-1)).float()

    @torch.no_grad()
    def forward(self, prompts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        device = torch.device(device)
        if not self.use_cache:
            return self._encode(list(prompts), device)
        todo = sorted({p for p in prompts if p not in self._cache})
        new = dict(zip(todo, self._encode(todo, device).cpu())) if todo else {}
        out = torch.stack([new[p] if p in new else self._cache[p] for p in prompts]).to(device)  # (B, L, D)
        for p in dict.fromkeys(prompts):  # this batch's prompts become the most recently used
            if p in new:
                self._cache[p] = new[p]
            self._cache.move_to_end(p)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out


class WanImageEncoder(nn.Module):
    """Frozen CLIP vision encoder of Wan I2V: reference (B, 3, H, W) in [-1, 1] -> (B, N, hidden).

    Args:
        preset: ``tiny`` (random, file-free) when ``path`` is None.
        path: local Wan I2V diffusers folder holding ``image_encoder/`` (``CLIPVisionModel``); the
            mean/std of ``image_processor/preprocessor_config.json`` are used when present.
    """

    def __init__(self, preset: str = "tiny", path: Path | None = None) -> None:
        super().__init__()
        import json

        from transformers import CLIPVisionConfig, CLIPVisionModel

        mean, std = CLIP_MEAN, CLIP_STD
        if path is not None:
            path = Path(path)
            if not (path / "image_encoder" / "config.json").is_file():
                raise MissingWeightsError(
                    f"CLIP image encoder folder not found or has no config.json: {path / 'image_encoder'}"
                )
            self.encoder = CLIPVisionModel.from_pretrained(path / "image_encoder", local_files_only=True)
            proc = path / "image_processor" / "preprocessor_config.json"
            if proc.is_file():
                cfg = json.loads(proc.read_text())
                mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        else:
            if preset not in IMAGE_PRESETS:
                raise _no_preset("image encoder", preset, IMAGE_PRESETS)
            self.encoder = CLIPVisionModel(CLIPVisionConfig(**IMAGE_PRESETS[preset]))
        self._setup(preset, path, mean, std)

    @classmethod
    def wrap(
        cls, encoder: nn.Module, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
    ) -> WanImageEncoder:
        """A loaded ``CLIPVisionModel`` (e.g. by ``DiffusionPipeline.from_pretrained``) and its
        normalisation as a frozen part."""

        part = cls.__new__(cls)
        nn.Module.__init__(part)
        part.encoder = encoder
        part._setup(None, None, mean, std)
        return part

    def _setup(
        self, preset: str | None, path: Path | None, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.from_folder = path is not None
        self.config = {"preset": preset, "path": _abs(path)}
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        freeze(self)

    @property
    def normalization(self) -> dict[str, list[float]]:
        """The CLIP mean/std this encoder normalises with (stored with exports)."""

        return {"image_mean": self.mean.flatten().tolist(), "image_std": self.std.flatten().tolist()}

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> penultimate CLIP hidden states (B, 1 + (S/p)^2, hidden), float32."""

        size = self.encoder.config.image_size
        x = (image.float() + 1) / 2  # [0, 1]
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size].clamp(0, 1)
        x = (x - self.mean.to(x)) / self.std.to(x)
        dtype = next(self.encoder.parameters()).dtype
        out = self.encoder(pixel_values=x.to(dtype), output_hidden_states=True)
        return out.hidden_states[-2].float()


@torch.no_grad()
def encode_i2v(
    vae: WanVAE, image_encoder: WanImageEncoder, reference: torch.Tensor, num_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan I2V conditions of a reference (B, 3, H, W) for ``num_frames`` frames: the channel condition
    (B, 4 + 16, F, h, w) (mask + VAE latent of [reference, zeros...]) and the CLIP tokens (B, N, D).
    Training and the pipeline's sampler both use this."""

    b, c, h, w = reference.shape
    video = torch.cat([reference[:, :, None], reference.new_zeros(b, c, num_frames - 1, h, w)], dim=2)
    condition = i2v_condition(vae.encode(video), vae.temporal_compression)
    return condition, image_encoder(reference)
