"""3DiMo network configuration and named presets (``tiny`` first, then the paper's Wan backbones).

:class:`ThreeDiMoNetConfig` holds exactly :class:`~dimo.models.threedimo.ThreeDiMoNet`'s constructor
arguments, checked once in ``__post_init__`` (one line per bad value). ``as_dict()`` is what
``net.config`` gives and what checkpoints (``dimo_parts["net"]``) and exports (``net/config.json``)
store; ``from_dict`` reads it back, so a checkpoint rebuilds its network with no YAML beside it.
``from_name(preset, **overrides)`` gives the shapes the committed experiments use, in the manner of
litgpt's ``Config.from_name``:

* ``tiny``: the toy Wan backbone and small motion encoders (``experiments/3dimo.yaml``; the
  constructor's defaults);
* ``tiny-i2v``: the same on the toy I2V backbone (the tests' and exports' toy I2V network);
* ``wan2.1-t2v-1.3b``: the paper's encoders on Wan2.1-T2V-1.3B (``experiments/3dimo_paper.yaml``);
* ``wan2.1-i2v-14b``: the same encoders on Wan2.1-I2V-14B (``experiments/3dimo_paper_14b_fsdp.yaml``).

A preset names the backbone preset (the transformer's shape) plus the motion-encoder / decoder sizes
those experiments pair with it; ``backbone_path`` (the pretrained folder) is never part of a preset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from dimo.models.lora import LoRASettings

__all__ = ["NET_PRESETS", "ThreeDiMoNetConfig"]

Injection = Literal["cross_attention", "channel_concat"]
MotionAttention = Literal["frame_aligned", "global"]
MotionPlacement = Literal["sequential", "parallel"]

#: The paper-scale encoder sizes of ``experiments/3dimo_paper.yaml`` (``net.init_args``; what that
#: file leaves out comes from ``3dimo.yaml`` or the defaults: cross-attention injection, 2 decoder
#: layers, temporal stride 4).
_PAPER_ENCODERS: dict[str, Any] = {
    "image_size": (256, 448),
    "patch_size": 16,
    "hand_crop": 64,
    "motion_dim": 512,
    "motion_depth": 6,
    "motion_heads": 8,
    "body_tokens": 5,
    "hand_tokens": 5,
    "geo_hidden": 1024,
}

#: Preset name -> the fields that differ from :class:`ThreeDiMoNetConfig`'s defaults.
NET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},  # the defaults are experiments/3dimo.yaml's network
    "tiny-i2v": {"backbone": "tiny-i2v"},
    "wan2.1-t2v-1.3b": {"backbone": "wan2.1-t2v-1.3b", **_PAPER_ENCODERS},
    "wan2.1-i2v-14b": {"backbone": "wan2.1-i2v-14b", **_PAPER_ENCODERS},
}

#: where a Lightning checkpoint keeps its parts' configs (``dimo.models.threedimo.module.PARTS_KEY``)
#: and the file name of a saved network's config (``ThreeDiMoNet.save_pretrained``)
CHECKPOINT_KEY = "dimo_parts"
CONFIG_NAME = "config.json"

_POSITIVE = (
    "patch_size", "motion_dim", "motion_depth", "motion_heads", "body_tokens", "hand_tokens",
    "geo_hidden", "geo_layers", "temporal_compression",
)  # fmt: skip


@dataclass(frozen=True)
class ThreeDiMoNetConfig:
    """The shape of a :class:`~dimo.models.threedimo.ThreeDiMoNet` (its constructor arguments; see
    the network's docstring for each field). Frozen: derive variants with :meth:`replace`."""

    backbone: str = "tiny"
    backbone_type: str = "wan"
    backbone_path: Path | None = None
    backbone_config: dict | None = None
    injection: Injection = "cross_attention"
    motion_attention: MotionAttention = "frame_aligned"
    motion_placement: MotionPlacement = "sequential"
    image_size: tuple[int, int] = (64, 64)
    patch_size: int = 8
    hand_crop: int = 32
    motion_dim: int = 64
    motion_depth: int = 2
    motion_heads: int = 4
    body_tokens: int = 5
    hand_tokens: int = 5
    geo_hidden: int = 256
    geo_layers: int = 2
    temporal_compression: int = 4
    lora: LoRASettings | None = None

    def __post_init__(self) -> None:
        # normalise what JSON / YAML give (lists, strings, mappings) to the typed values
        set_ = object.__setattr__  # frozen: assignment only here
        if self.backbone_path is not None:
            set_(self, "backbone_path", Path(self.backbone_path))
        if self.backbone_config is not None:
            if not isinstance(self.backbone_config, Mapping):
                raise ValueError(f"net.backbone_config must be a mapping, got {self.backbone_config!r}")
            set_(self, "backbone_config", dict(self.backbone_config))
        set_(self, "lora", LoRASettings.coerce(self.lora))
        if self.backbone_type == "wan":
            from dimo.models.threedimo.backbone import WAN_PRESETS

            if self.backbone not in WAN_PRESETS:
                raise ValueError(
                    f"unknown backbone preset {self.backbone!r}; expected one of {sorted(WAN_PRESETS)}"
                )
        for name, kind in (
            ("injection", Injection),
            ("motion_attention", MotionAttention),
            ("motion_placement", MotionPlacement),
        ):
            if getattr(self, name) not in get_args(kind):
                raise ValueError(
                    f"net.{name} must be one of {list(get_args(kind))}, got {getattr(self, name)!r}"
                )
        for name in _POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"net.{name} must be a positive integer, got {value!r}")
        size = self.image_size
        if isinstance(size, (str, bytes)) or not isinstance(size, (tuple, list)) or len(size) != 2:
            raise ValueError(f"net.image_size must be [height, width], got {size!r}")
        h, w = (int(v) for v in size)
        set_(self, "image_size", (h, w))
        p = self.patch_size
        if h < p or w < p or h % p or w % p:
            raise ValueError(f"net.image_size {h}x{w} must be positive multiples of patch_size={p}")
        if self.motion_dim % self.motion_heads:
            raise ValueError(
                f"net.motion_dim={self.motion_dim} must be divisible by motion_heads={self.motion_heads}"
            )
        crop = self.hand_crop
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 8 or crop % 8 or crop > max(h, w):
            raise ValueError(
                f"net.hand_crop must be a multiple of 8 between 8 and the frame size {max(h, w)}, got {crop!r}"
            )

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ThreeDiMoNetConfig:
        """The preset ``name`` (:data:`NET_PRESETS`) with ``overrides`` (field names) applied."""

        if name not in NET_PRESETS:
            raise ValueError(f"unknown 3DiMo net preset {name!r}; expected one of {list(NET_PRESETS)}")
        return cls.from_dict({**NET_PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ThreeDiMoNetConfig:
        """From :meth:`as_dict`'s form (a checkpoint's ``dimo_parts["net"]``, an export's
        ``config.json``); absent fields take their defaults (older files), unknown ones are refused."""

        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise ValueError(
                f"a 3DiMo net config must be a mapping of its fields, got {type(values).__name__}"
            )
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown 3DiMo net config keys {unknown}; expected some of {names}")
        return cls(**dict(values))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> ThreeDiMoNetConfig:
        """The config a trained network describes (litgpt's ``Config.from_checkpoint``): a Lightning
        ``.ckpt`` from ``dimo.cli fit`` (its ``dimo_parts["net"]``), a ``ThreeDiMoNet.save_pretrained``
        folder or its ``config.json``, or an export folder (its ``net/config.json``). The checkpoint is
        read with ``weights_only=True`` and an allow-list (:func:`dimo.safe_io.load_torch`)."""

        path = Path(path)
        if path.is_dir():
            for candidate in (path / CONFIG_NAME, path / "net" / CONFIG_NAME):
                if candidate.is_file():
                    return cls._from_json(candidate)
            raise FileNotFoundError(f"no 3DiMo net {CONFIG_NAME} in {path} (nor in {path / 'net'})")
        if not path.is_file():
            raise FileNotFoundError(f"3DiMo checkpoint not found: {path}")
        if path.suffix == ".json":
            return cls._from_json(path)
        from dimo.safe_io import load_torch

        ckpt = load_torch(path, what="checkpoint", mmap=True)
        parts = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
        if not isinstance(parts, Mapping) or not isinstance(parts.get("net"), Mapping):
            raise ValueError(
                f"{path} holds no 3DiMo net config (no {CHECKPOINT_KEY}['net']): not a 3DiMo checkpoint, or "
                "one written before checkpoints described their network (rebuild it with its run config.yaml)"
            )
        return cls.from_dict(parts["net"])

    @classmethod
    def _from_json(cls, file: Path) -> ThreeDiMoNetConfig:
        try:
            return cls.from_dict(json.loads(file.read_text()))
        except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{file}: {err}") from err

    def replace(self, **changes: Any) -> ThreeDiMoNetConfig:
        """A copy with ``changes`` (checked again)."""

        return self.from_dict({**self.kwargs(), **changes})

    # -- views -------------------------------------------------------------------------------------
    def kwargs(self) -> dict[str, Any]:
        """The typed constructor arguments of :class:`~dimo.models.threedimo.ThreeDiMoNet`."""

        return {f.name: getattr(self, f.name) for f in fields(self)}

    def as_dict(self) -> dict[str, Any]:
        """JSON values (``backbone_path`` a string, ``image_size`` a list, ``lora`` a mapping): what
        ``net.config`` gives and checkpoints / exports store; :meth:`from_dict` reads it back."""

        out = self.kwargs()
        out["backbone_path"] = None if self.backbone_path is None else str(self.backbone_path)
        out["backbone_config"] = None if self.backbone_config is None else dict(self.backbone_config)
        out["image_size"] = list(self.image_size)
        out["lora"] = None if self.lora is None else self.lora.as_dict()
        return out
