"""LoRA adapters on the pretrained backbones, through ``peft`` (issue #15).

``train_parts: lora`` trains low-rank adapters on the pretrained generator (Wan transformer for 3DiMo,
SVD UNet for HVG) beside the method's own new layers, with the pretrained weights frozen: the
memory-saving fine-tuning researchers reach for when full fine-tuning does not fit.

* :class:`LoRASettings`: rank, alpha, target module names, dropout (YAML ``lora:``), checked when
  the config is parsed.
* :func:`add_lora`: ``peft.inject_adapter_in_model`` on a backbone; ``lora_B`` starts at zero
  (peft's default), so the adapted model computes exactly what the pretrained one did at step 0.
* :func:`is_lora_parameter`: which parameters are adapter weights.
* :func:`save_adapters` / :func:`load_adapters`: the trained weights *alone* (adapters and the
  method's new layers, never the pretrained backbone) in one safetensors file plus a JSON config,
  loaded back strictly: a missing, extra or misshapen key is an error naming the file.

The injection, naming and merge logic are peft's; only the strict save/load of "everything that is
not the pretrained backbone" is written here, because peft's own ``get_peft_model_state_dict`` /
``set_peft_model_state_dict`` cover the adapter matrices only and report unknown keys as warnings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dimo.models.common import MissingWeightsError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LoRASettings",
    "add_lora",
    "is_lora_parameter",
    "load_adapters",
    "read_adapter_config",
    "save_adapters",
    "unwrapped_name",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"
#: peft's adapter name; one adapter per backbone
ADAPTER_NAME = "default"


@dataclass
class LoRASettings:
    """Low-rank adapters on a pretrained backbone.

    Args:
        rank: r, the adapters' inner width.
        alpha: scale numerator (the update is ``alpha / rank * B A x``).
        targets: module names (suffixes, peft's ``target_modules``) that get an adapter. Default: the
            attention projections of every transformer block (Wan's self- and text cross-attention;
            in SVD's UNet the spatial and temporal transformer blocks' attentions).
        dropout: dropout on the adapter input.
    """

    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not float(self.alpha) > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if isinstance(self.targets, str):
            raise ValueError(f"lora.targets must be a list of module names, got the string {self.targets!r}")
        self.targets = tuple(str(t) for t in self.targets)
        if not self.targets or any(not t.strip() for t in self.targets):
            raise ValueError(f"lora.targets must name at least one module, got {list(self.targets)}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"lora.dropout must lie in [0, 1), got {self.dropout!r}")
        self.alpha, self.dropout = float(self.alpha), float(self.dropout)

    @classmethod
    def coerce(cls, value: LoRASettings | Mapping | None) -> LoRASettings | None:
        """A settings object from itself, a mapping (JSON/YAML) or None."""

        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise ValueError(f"lora must be a mapping of rank/alpha/targets/dropout, got {value!r}")

    def as_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


def _require_peft():
    try:
        import peft
    except ImportError as err:  # pragma: no cover - peft is a default dependency
        raise ImportError("LoRA needs peft: pip install 'peft>=0.13' (it is in dimo's dependencies)") from err
    return peft


def add_lora(
    backbone: nn.Module, settings: LoRASettings, only: Callable[[str], bool] | None = None
) -> list[str]:
    """Inject LoRA adapters into ``backbone`` in place; returns the adapted module names.

    A module gets an adapter when its name is a target or ends with ``.<target>`` (peft's rule) and
    ``only(name)`` holds (e.g. HVG: the layers SVD-xt provides, not HVG's new ones, which train in
    full). peft marks the rest of ``backbone`` frozen; the caller's freezing policy decides anyway.
    """

    peft = _require_peft()
    names = [
        n
        for n, _ in backbone.named_modules()
        if any(n == t or n.endswith(f".{t}") for t in settings.targets) and (only is None or only(n))
    ]
    if not names:
        raise ValueError(f"lora.targets {list(settings.targets)} match no layer of {type(backbone).__name__}")
    config = peft.LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, target_modules=names, lora_dropout=settings.dropout
    )
    peft.inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    return names


def is_lora_parameter(name: str) -> bool:
    """True for peft adapter weights (``...lora_A.default.weight`` / ``lora_B`` / embeddings)."""

    return any(
        f".{part}." in f".{name}." for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")
    )


def unwrapped_name(name: str) -> str:
    """A parameter name as it was before injection (without peft's ``base_layer.`` wrapper level)."""

    return name.replace(".base_layer.", ".")


def save_adapters(
    model: nn.Module, names: list[str], folder: Path | str, config: Mapping, metadata: Mapping | None = None
) -> Path:
    """Write the state-dict entries ``names`` of ``model`` (the adapters and new layers) alone.

    ``config`` (JSON) describes how to rebuild ``model`` around them (the network's constructor
    arguments and the LoRA settings). The folder is written to a temporary sibling and renamed, so a
    crash never leaves a half-written adapter folder.
    """

    from safetensors.torch import save_file

    from dimo.pipelines.io import atomic_folder

    state = model.state_dict()
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"not in the model's state dict: {missing[:3]}")
    tensors = {n: state[n].detach().contiguous().cpu() for n in names}
    with atomic_folder(Path(folder)) as tmp:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n")
        save_file(tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt", **dict(metadata or {})})
    return Path(folder)


def read_adapter_config(folder: Path | str) -> dict:
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise MissingWeightsError(f"adapter config not found: {path}")
    return json.loads(path.read_text())


def load_adapters(model: nn.Module, names: list[str], folder: Path | str) -> None:
    """Load an adapter folder into ``model`` strictly: its keys must be exactly ``names``."""

    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise MissingWeightsError(f"adapter weights not found: {path}")
    tensors = load_file(path)  # safetensors: no code runs while reading
    expected, found = set(names), set(tensors)
    if expected != found:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise MissingWeightsError(
            f"{path} does not match the model: missing {len(missing)} {missing[:3]}, "
            f"unexpected {len(extra)} {extra[:3]}"
        )
    state = model.state_dict()
    for n in names:
        if tuple(state[n].shape) != tuple(tensors[n].shape):
            raise MissingWeightsError(
                f"{path}: {n} has shape {tuple(tensors[n].shape)}, the model expects {tuple(state[n].shape)}"
            )
    with torch.no_grad():
        for n in names:
            state[n].copy_(tensors[n])
