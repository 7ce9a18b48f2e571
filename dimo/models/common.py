"""Functions shared by both methods' LightningModules and pipelines (functions, not a base class).

* :data:`DTYPES` / :data:`FrozenDType`: the compute dtypes of frozen parts, by name (YAML values).
* :data:`CLIP_MEAN` / :data:`CLIP_STD`: OpenAI CLIP's normalisation (``CLIPImageProcessor`` defaults).
* :func:`step_generator`: a ``torch.Generator`` seeded from a step seed, so a resumed run draws what
  the uninterrupted run would have drawn. Each method keeps its own seed formula (changing one would
  change its noise and break bit-for-bit reproduction of measured curves).
* :func:`freeze`: a frozen part: no gradients, eval mode, and ``train()`` keeps it in eval mode.
* :func:`strip_prefixes` / :func:`restore_prefixes`: frozen parts loaded from a pretrained folder are
  left out of checkpoints and put back from the live module on load (strict loading stays on).
* :func:`load_strict`: ``load_state_dict`` that fails, naming the source, on any missing or
  unexpected key not on an explicit allow-list.
* :func:`check_loading_options`: what a dimo part's strict ``from_pretrained`` accepts of the options
  ``diffusers.DiffusionPipeline.from_pretrained`` passes to every part.
* :func:`from_pretrained_strict`: a diffusers / transformers class's ``from_pretrained`` that fails on
  missing or unexpected keys (the libraries only warn, leaving missing weights uninitialised).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, TypeVar

import torch
from torch import nn

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DTYPES",
    "FrozenDType",
    "MissingWeightsError",
    "check_loading_options",
    "freeze",
    "from_pretrained_strict",
    "load_strict",
    "restore_prefixes",
    "step_generator",
    "strip_prefixes",
]

FrozenDType = Literal["float32", "bfloat16", "float16"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

M = TypeVar("M", bound=nn.Module)


class MissingWeightsError(FileNotFoundError):
    """A pretrained folder/file is absent, or a weight file lacks (or has extra) keys."""


def step_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""

    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class _EvalOnly:
    """A frozen part's ``train``: always eval (dropout off, no statistics updates). A picklable object
    (spawned DDP workers receive the module), not a bound method."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def freeze(module: M) -> M:
    """Make ``module`` a frozen part: ``requires_grad=False``, eval mode, and ``train()`` keeps it in
    eval mode (a parent's ``train()`` reaches it through ``children()``). Returns the module."""

    module.requires_grad_(False)
    module.train = _EvalOnly(module)  # instance attribute: shadows nn.Module.train
    return module.train()


def strip_prefixes(
    state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str]
) -> dict[str, torch.Tensor]:
    """``state_dict`` without the keys under ``prefixes`` (e.g. ``("vae.", "image_encoder.")``)."""

    drop = tuple(prefixes)
    return {k: v for k, v in state_dict.items() if not (drop and k.startswith(drop))}


def restore_prefixes(state_dict: dict[str, torch.Tensor], module: nn.Module, prefixes: Iterable[str]) -> None:
    """Put ``module``'s own tensors under ``prefixes`` back into ``state_dict`` where they are absent."""

    keep = tuple(prefixes)
    if not keep:
        return
    for k, v in module.state_dict().items():
        if k.startswith(keep):
            state_dict.setdefault(k, v)


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: Path | str,
    allow_missing: Iterable[str] = (),
) -> list[str]:
    """``load_state_dict`` that fails on any missing/unexpected key not on the allow-list.

    ``allow_missing``: key prefixes that may be absent (new layers keep their initialisation).
    Raises :class:`MissingWeightsError` naming ``source``; returns the allowed missing keys.
    """

    allow = tuple(allow_missing)
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    bad_missing = [k for k in missing if not k.startswith(allow)] if allow else missing
    if bad_missing or unexpected:
        raise MissingWeightsError(
            f"{source}: weights do not match {type(module).__name__}: "
            f"missing {len(bad_missing)} {bad_missing[:8]}, unexpected {len(unexpected)} {unexpected[:8]}"
        )
    module.load_state_dict(state, strict=False, assign=False)  # every key checked above
    return missing


#: ``DiffusionPipeline.from_pretrained`` loading options that need diffusers' own weight loader
_UNSUPPORTED_LOADING = ("device_map", "max_memory", "offload_folder", "quantization_config", "variant")


def check_loading_options(name: str, loading: Mapping[str, object]) -> torch.dtype | None:
    """The dtype among the options diffusers passes to a part's ``from_pretrained`` (``torch_dtype``,
    or ``dtype`` for transformers parts); a placement option (device map, offloading, quantization,
    variants) is one clear ``ValueError`` naming ``name`` (dimo's parts load strictly, on the CPU)."""

    used = [k for k in _UNSUPPORTED_LOADING if loading.get(k) is not None]
    if used or loading.get("use_safetensors") is False:
        raise ValueError(f"{name}.from_pretrained does not support {used or ['use_safetensors=False']}")
    dtype = loading.get("torch_dtype", loading.get("dtype"))
    return dtype if isinstance(dtype, torch.dtype) else None


def from_pretrained_strict(cls: type, folder: Path | str, **kwargs: object) -> nn.Module:
    """``cls.from_pretrained(folder, **kwargs)`` for a diffusers or transformers model class, failing with
    :class:`MissingWeightsError` naming ``folder`` on any missing, unexpected or mismatched key (both
    libraries report them through ``output_loading_info`` and only warn)."""

    model, info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    bad = {k: sorted(map(str, info.get(f"{k}_keys") or ())) for k in ("missing", "unexpected", "mismatched")}
    if any(bad.values()):
        raise MissingWeightsError(
            f"{folder}: weights do not match {cls.__name__}: "
            + ", ".join(f"{k} {len(v)} {v[:8]}" for k, v in bad.items() if v)
        )
    return model
