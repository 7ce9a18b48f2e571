"""The trainable 3DiMo network: motion encoders + geometric decoder + Wan transformer with injection.

:class:`ThreeDiMoNet` is a plain ``nn.Module`` whose typed constructor is its config (it is what
YAML ``model.init_args.net`` describes); the arguments are checked and kept as a
:class:`~dimo.models.threedimo.config.ThreeDiMoNetConfig` (``net.net_config``; named presets:
``ThreeDiMoNet.from_name("tiny")``). ``save_pretrained(folder)`` writes ``config.json`` (the
exported config, :meth:`ThreeDiMoNet.export_config`) and ``model.safetensors``;
``from_pretrained(folder)`` rebuilds and loads strictly (any missing or unexpected key raises
:class:`MissingWeightsError` naming the file). ``backbone_path`` initialises the transformer from a local Wan diffusers folder instead (new
layers keep their zero/random init; every Wan key must be present).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin
from torch import nn

from dimo.models.common import check_loading_options
from dimo.models.lora import (
    LoRASettings,
    add_lora,
    is_lora_parameter,
    load_adapters,
    read_adapter_config,
    save_adapters,
)
from dimo.models.threedimo.backbone import (
    MissingWeightsError,
    MotionBackbone,
    load_strict,
    read_weights,
    resolve_backbone,
)
from dimo.models.threedimo.config import (
    CONFIG_NAME,
    Injection,
    MotionAttention,
    MotionPlacement,
    ThreeDiMoNetConfig,
)
from dimo.models.threedimo.geometric_decoder import GeometricDecoder
from dimo.models.threedimo.motion_encoder import MotionEncoders

__all__ = ["ThreeDiMoNet", "ThreeDiMoNetConfig"]

WEIGHTS_NAME = "model.safetensors"
_DEFAULT = ThreeDiMoNetConfig  # the constructor's defaults are the config's (the ``tiny`` preset)


class ThreeDiMoNet(ModelMixin):
    """3DiMo's trainable parts (a diffusers ``ModelMixin``, so ``DiffusionPipeline.from_pretrained`` can load
    it as a pipeline component; its own ``save_pretrained`` / ``from_pretrained`` read and write the folder).

    Args:
        backbone: preset name of the backbone (Wan: ``tiny``, ``wan2.1-t2v-1.3b``; I2V: ``tiny-i2v``,
            ``wan2.1-i2v-14b``).
        backbone_type: the DiT class (:class:`~dimo.models.threedimo.backbone.MotionBackbone`): ``wan``
            (:class:`~dimo.models.threedimo.ThreeDiMoTransformer`), another name of
            :data:`~dimo.models.threedimo.backbone.BACKBONES`, or a ``package.module.Class`` path.
        backbone_path: local diffusers folder of the Wan transformer (``<wan>/transformer``), or None
            for random init (tests; paper-scale counts on ``meta``).
        backbone_config: the Wan transformer's own config (random init of exactly that shape); set by
            :meth:`save_pretrained`, so an export rebuilds whatever backbone it was trained on, not
            the preset's shape. Takes precedence over ``backbone``; ignored with ``backbone_path``.
        injection: ``cross_attention`` (paper) or ``channel_concat`` (ablation).
        motion_attention: ``frame_aligned`` or ``global`` motion cross-attention.
        motion_placement: ``sequential`` (paper: its own residual step right after self-attention,
            before the text cross-attention) or ``parallel`` (summed with the text cross-attention).
        image_size: driving frames are resized to this (H, W) for E_b.
        patch_size: E_b patch side.
        hand_crop: hand crop side for E_h.
        motion_dim, motion_depth, motion_heads: motion encoder width, layers, heads.
        body_tokens, hand_tokens: K_b, K_h latent tokens per frame (paper: 5).
        geo_hidden, geo_layers: geometric decoder MLP width and hidden layers.
        temporal_compression: VAE temporal stride (Wan: 4).
        lora: LoRA adapters on the Wan transformer (:class:`~dimo.models.lora.LoRASettings`: rank,
            alpha, targets, dropout), injected after the pretrained weights are loaded; None: none.
            Part of the architecture (checkpoints and exports rebuild them); what trains is the
            module's ``train_parts`` (``lora``: adapters + the new 3DiMo layers only).
    """

    def __init__(
        self,
        backbone: str = _DEFAULT.backbone,
        backbone_type: str = _DEFAULT.backbone_type,
        backbone_path: Path | None = _DEFAULT.backbone_path,
        backbone_config: dict | None = _DEFAULT.backbone_config,
        injection: Injection = _DEFAULT.injection,
        motion_attention: MotionAttention = _DEFAULT.motion_attention,
        motion_placement: MotionPlacement = _DEFAULT.motion_placement,
        image_size: tuple[int, int] = _DEFAULT.image_size,
        patch_size: int = _DEFAULT.patch_size,
        hand_crop: int = _DEFAULT.hand_crop,
        motion_dim: int = _DEFAULT.motion_dim,
        motion_depth: int = _DEFAULT.motion_depth,
        motion_heads: int = _DEFAULT.motion_heads,
        body_tokens: int = _DEFAULT.body_tokens,
        hand_tokens: int = _DEFAULT.hand_tokens,
        geo_hidden: int = _DEFAULT.geo_hidden,
        geo_layers: int = _DEFAULT.geo_layers,
        temporal_compression: int = _DEFAULT.temporal_compression,
        lora: LoRASettings | None = _DEFAULT.lora,
    ) -> None:
        super().__init__()
        backbone_cls = resolve_backbone(backbone_type)
        # the arguments, checked once (one line per bad value): the network is built from this alone
        cfg = ThreeDiMoNetConfig(
            backbone=backbone,
            backbone_type=backbone_type,
            backbone_path=backbone_path,
            backbone_config=backbone_config,
            injection=injection,
            motion_attention=motion_attention,
            motion_placement=motion_placement,
            image_size=image_size,
            patch_size=patch_size,
            hand_crop=hand_crop,
            motion_dim=motion_dim,
            motion_depth=motion_depth,
            motion_heads=motion_heads,
            body_tokens=body_tokens,
            hand_tokens=hand_tokens,
            geo_hidden=geo_hidden,
            geo_layers=geo_layers,
            temporal_compression=temporal_compression,
            lora=lora,
        )
        self.net_config = cfg
        self.lora = cfg.lora
        kwargs = dict(
            motion_dim=cfg.motion_dim,
            injection=cfg.injection,
            motion_attention=cfg.motion_attention,
            motion_placement=cfg.motion_placement,
            temporal_compression=cfg.temporal_compression,
        )
        # ``transformer``: the backbone (MotionBackbone); the attribute name keeps the checkpoint keys
        if cfg.backbone_path is not None:
            self.transformer = backbone_cls.from_pretrained_dit(cfg.backbone_path, **kwargs)
        elif cfg.backbone_config is not None:
            wan = dict(cfg.backbone_config)
            if "patch_size" in wan:
                wan["patch_size"] = tuple(wan["patch_size"])
            self.transformer = backbone_cls(wan, **kwargs)
        else:
            self.transformer = backbone_cls.from_preset(cfg.backbone, **kwargs)
        if not isinstance(self.transformer, MotionBackbone):
            raise TypeError(f"backbone_type {cfg.backbone_type!r} does not implement MotionBackbone")
        self.encoders = MotionEncoders(
            cfg.image_size,
            cfg.patch_size,
            cfg.hand_crop,
            8,
            cfg.motion_dim,
            cfg.motion_depth,
            cfg.motion_heads,
            cfg.body_tokens,
            cfg.hand_tokens,
        )
        self.geo_decoder = GeometricDecoder(
            cfg.body_tokens + cfg.hand_tokens, cfg.motion_dim, cfg.geo_hidden, cfg.geo_layers
        )
        if cfg.lora is not None:  # after the pretrained weights: B = 0, so the backbone starts unchanged
            add_lora(self.backbone.dit, cfg.lora)

    @classmethod
    def from_config(cls, config: ThreeDiMoNetConfig | Mapping[str, Any]) -> ThreeDiMoNet:
        """The network of ``config`` (a :class:`ThreeDiMoNetConfig` or its :meth:`~ThreeDiMoNetConfig.as_dict`
        form, e.g. a checkpoint's ``dimo_parts["net"]``); random init unless it names a ``backbone_path``."""

        return cls(**ThreeDiMoNetConfig.from_dict(config).kwargs())

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ThreeDiMoNet:
        """The network of preset ``name`` (:data:`~dimo.models.threedimo.config.NET_PRESETS`) with
        ``overrides``; e.g. ``from_name("wan2.1-t2v-1.3b", backbone_path=wan / "transformer")``."""

        return cls.from_config(ThreeDiMoNetConfig.from_name(name, **overrides))

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments as JSON values (:meth:`ThreeDiMoNetConfig.as_dict`)."""

        return self.net_config.as_dict()

    @property
    def backbone(self) -> MotionBackbone:
        """The DiT with motion injection, through its :class:`MotionBackbone` interface."""

        return self.transformer

    @property
    def text_dim(self) -> int:
        return self.backbone.text_dim

    @property
    def is_i2v(self) -> bool:
        """I2V backbone: reference via mask + condition latent channels and the CLIP image branch."""

        return self.backbone.is_i2v

    @property
    def image_dim(self) -> int | None:
        return self.backbone.image_dim

    def patch_grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (F', h', w') of latents (B, C, F, h, w) in the backbone."""

        return self.backbone.patch_grid(latent_shape)

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:
        """Recompute every backbone block and every motion-encoder layer in backward."""

        self.backbone.enable_gradient_checkpointing()
        for encoder in (self.encoders.body, self.encoders.hands):
            encoder.gradient_checkpointing = True

    def motion_parameters(self) -> list[nn.Parameter]:
        """Everything new in 3DiMo: encoders, decoder and the injection layers (not the Wan weights)."""

        prefix = self.backbone.pretrained_prefix
        new = [p for n, p in self.transformer.named_parameters() if not n.startswith(prefix)]
        return [*self.encoders.parameters(), *self.geo_decoder.parameters(), *new]

    def lora_parameters(self) -> list[nn.Parameter]:
        """The LoRA adapter weights on the Wan transformer (empty without ``lora``)."""

        return [p for n, p in self.named_parameters() if is_lora_parameter(n)]

    def adapter_keys(self) -> list[str]:
        """State-dict keys of everything that is not the pretrained Wan backbone: the new 3DiMo layers
        and the LoRA adapters (what :meth:`save_adapters` writes)."""

        pretrained = f"transformer.{self.backbone.pretrained_prefix}"  # the DiT's own weights
        return [k for k in self.state_dict() if not k.startswith(pretrained) or is_lora_parameter(k)]

    def save_adapters(self, folder: Path | str) -> Path:
        """Write the trained weights alone (:meth:`adapter_keys`; the Wan backbone stays in its own
        pretrained folder) with the config that rebuilds this network around them."""

        if self.lora is None:
            raise ValueError("this network has no LoRA adapters (net.lora is null); export the whole network")
        config = dict(self.export_config(), backbone_config=self.backbone.backbone_config())
        return save_adapters(self, self.adapter_keys(), folder, config, {"class": "ThreeDiMoNet"})

    @classmethod
    def from_adapters(cls, folder: Path | str, backbone_path: Path | str) -> ThreeDiMoNet:
        """The pretrained Wan transformer at ``backbone_path`` plus an adapter folder, loaded strictly;
        the backbone must have the config the adapters were trained on."""

        config = read_adapter_config(folder)
        trained_on = config.pop("backbone_config")
        config.update(backbone_path=Path(backbone_path), backbone_config=None)
        net = cls.from_config(config)
        have = json.loads(json.dumps(net.backbone.backbone_config()))
        if have != json.loads(json.dumps(trained_on)):
            diff = sorted(k for k in set(have) | set(trained_on) if have.get(k) != trained_on.get(k))
            raise MissingWeightsError(
                f"the backbone at {backbone_path} is not the one the adapters in {folder} were "
                f"trained on (config differs in {diff[:5]})"
            )
        load_adapters(net, net.adapter_keys(), folder)
        return net

    def encode_motion(
        self,
        driving: torch.Tensor,
        joints2d: torch.Tensor | None = None,
        joints2d_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, 3, H, W) driving frames -> z (B, T*(K_b+K_h), D)."""

        return self.encoders(driving, joints2d, joints2d_valid)

    def decode_geometry(self, z: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """z -> body (B, T, 21, 6), hands (B, T, 30, 6) 6D rotations."""

        return self.geo_decoder(self.encoders.per_frame(z, num_frames))

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        motion: torch.Tensor | None,
        num_motion_frames: int | None = None,
        condition: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.transformer(
            latents, timestep, text_embeds, motion, num_motion_frames, condition, image_embeds
        )

    # -- persistence ---------------------------------------------------------------------------
    def export_net_config(self) -> ThreeDiMoNetConfig:
        """The config that rebuilds this network's exact shape with no file beside it: the backbone's
        own config (not a preset name, not a folder); the weights come separately."""

        return self.net_config.replace(backbone_path=None, backbone_config=self.backbone.backbone_config())

    def export_config(self) -> dict:
        """:meth:`export_net_config` as JSON values (what checkpoints and exports store)."""

        return self.export_net_config().as_dict()

    def save_pretrained(self, folder: Path | str) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.export_config(), indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, folder / WEIGHTS_NAME, metadata={"format": "pt", "class": "ThreeDiMoNet"})
        return folder

    @classmethod
    def from_pretrained(cls, folder: Path | str, **loading: object) -> ThreeDiMoNet:
        """Rebuild from ``config.json`` and load ``model.safetensors`` strictly, in eval mode. ``loading``: the options
        ``DiffusionPipeline.from_pretrained`` passes to its components; ``torch_dtype`` is applied, the
        placement options (``device_map``, offloading, quantization, variants) are refused in one line."""

        dtype = check_loading_options(cls.__name__, loading)
        folder = Path(folder)
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise MissingWeightsError(f"3DiMo network config not found: {config_file}")
        config = json.loads(config_file.read_text())
        weights_file = folder / WEIGHTS_NAME
        if not weights_file.is_file():
            raise MissingWeightsError(f"3DiMo network weights not found: {weights_file}")
        net = cls.from_config(config)
        state, source = read_weights(folder)
        load_strict(net, state, source)
        if dtype is not None and dtype != torch.float32:
            nn.Module.to(net, dtype=dtype)  # (ModelMixin.to warns about fp32 modules this network lacks)
        return net.eval()  # as diffusers' from_pretrained: inference mode (dropout off)
