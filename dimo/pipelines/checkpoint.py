"""Reading trained Lightning checkpoints for inference: which model wrote it, and rebuilding it.

A checkpoint written by ``python -m dimo.cli fit`` holds the LightningModule's plain hyperparameters
(``_class_path`` + scalars) and the datamodule's (frame count, size). Both methods' checkpoints carry the
constructor arguments of their network and frozen parts under ``dimo_parts`` (3DiMo: the backbone's
exact config; HVG: the UNet preset and switches, the VAE / CLIP presets, beside the ``pretrained``
folder in the hyperparameters; HVG checkpoints older than that are read from their ``net`` hyperparameter)
(:meth:`~dimo.models.threedimo.ThreeDiMoModule.parts_config`), so either rebuilds with nothing beside
it. A run ``config.yaml`` given explicitly, or the one LightningCLI wrote next to the checkpoint
(``<run>/config.yaml`` for ``<run>/checkpoints/x.ckpt``), takes precedence; a 3DiMo checkpoint with
neither and older than ``dimo_parts`` is built from the module's defaults (the tiny presets).
Loading is strict either way, so a mismatch is a clear error, never a silent partial load.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import torch

from dimo.pipelines.errors import GenerateError
from dimo.safe_io import UnsafeFileError, load_torch

__all__ = [
    "ModelKind",
    "read_checkpoint",
    "checkpoint_kind",
    "find_run_config",
    "load_module",
    "training_record",
]

ModelKind = Literal["3dimo", "hvg"]
_CLASSES = {"3dimo": "dimo.models.threedimo.ThreeDiMoModule", "hvg": "dimo.models.hvg.HVGModule"}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a Lightning checkpoint on CPU (memory-mapped); unreadable -> :class:`GenerateError`."""

    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"checkpoint not found: {path} (expected a Lightning .ckpt from `dimo.cli fit`)")
    try:
        # weights_only=True + an explicit allow-list: a checkpoint cannot run code (dimo.safe_io)
        ckpt = load_torch(path, what="checkpoint", mmap=True)
    except UnsafeFileError as err:
        raise GenerateError(str(err)) from err
    except ValueError as err:  # not a torch file (zip/pickle error, truncated)
        raise GenerateError(f"{err} (expected a Lightning .ckpt from `dimo.cli fit`)") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise GenerateError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'); expected a .ckpt from `dimo.cli fit`"
        )
    return ckpt


def checkpoint_kind(ckpt: dict[str, Any]) -> ModelKind | None:
    """``3dimo`` / ``hvg`` from the stored class path, else from the state-dict key layout."""

    class_path = str(ckpt.get("hyper_parameters", {}).get("_class_path", ""))
    if "threedimo" in class_path.lower():
        return "3dimo"
    if "hvg" in class_path.lower():
        return "hvg"
    keys = ckpt["state_dict"].keys()
    if any(k.startswith("net.encoders.") for k in keys):
        return "3dimo"
    if any(k.startswith("unet.") for k in keys):
        return "hvg"
    return None


def expect_kind(ckpt: dict[str, Any], path: str | os.PathLike, kind: ModelKind) -> None:
    found = checkpoint_kind(ckpt)
    if found != kind:
        what = "an unknown model" if found is None else f"a {found} model"
        raise GenerateError(
            f"checkpoint {path} holds {what}; expected a {kind} checkpoint ({_CLASSES[kind]})"
        )


def find_run_config(ckpt_path: str | os.PathLike) -> Path | None:
    """LightningCLI's ``config.yaml`` of the run that wrote ``ckpt_path`` (same or parent folder)."""

    p = Path(ckpt_path).resolve()
    for folder in (p.parent, p.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


# module settings that moved to the SampleLogger callback: older checkpoints still carry them
_RETIRED = ("sample_every_n_steps", "num_samples", "log_video_every_n_steps")


def _plain_hparams(ckpt: dict[str, Any]) -> dict[str, Any]:
    hp = dict(ckpt.get("hyper_parameters", {}))
    hp = {k: v for k, v in hp.items() if not k.startswith("_") and k not in _RETIRED}
    for k, v in list(hp.items()):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            hp[k] = dataclasses.asdict(v)
    return hp


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))  # Paths, tuples, dtypes -> JSON values


def training_record(path: str | os.PathLike) -> dict[str, Any]:
    """What an export records of the checkpoint it was written from (its README and
    ``model_index.json``): the file name, global step, epoch, the module's class path,
    hyperparameters and parts, and the data hyperparameters, as JSON values."""

    ckpt = read_checkpoint(path)
    parts = ckpt.get("dimo_parts")
    return {
        "checkpoint": Path(path).name,
        "model": ckpt.get("hyper_parameters", {}).get("_class_path"),
        "global_step": ckpt.get("global_step"),
        "epoch": ckpt.get("epoch"),
        "hyperparameters": _jsonable(_plain_hparams(ckpt)),
        "parts": _jsonable(parts) if isinstance(parts, dict) else None,
        "data": _jsonable(dict(ckpt.get("datamodule_hyper_parameters") or {})),
    }


def load_module(
    path: str | os.PathLike, kind: ModelKind, config: str | os.PathLike | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild and strictly load the LightningModule of ``path``; returns it (eval) and the data hparams."""

    ckpt = read_checkpoint(path)
    expect_kind(ckpt, path, kind)
    data_hp = dict(ckpt.get("datamodule_hyper_parameters") or {})
    try:
        if kind == "3dimo":
            module = _build_threedimo(ckpt, config if config is not None else find_run_config(path))
        else:
            module = _build_hvg(ckpt)
    except FileNotFoundError as err:  # incl. MissingWeightsError: a pretrained folder of the run is gone
        raise GenerateError(f"cannot rebuild the model of {path}: {err}") from err
    module.on_load_checkpoint(ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        hint = first[1].strip() if len(first) > 1 else first[0]
        hint = hint if len(hint) <= 300 else hint[:300] + " ..."  # one readable line, not every key
        raise GenerateError(
            f"checkpoint {path} does not match the model built from its config ({hint}); "
            "pass the run's config.yaml with --config"
        ) from err
    return module.eval(), data_hp


def _build_hvg(ckpt: dict[str, Any]) -> torch.nn.Module:
    from dimo.models.hvg import HVGModule
    from dimo.models.hvg.module import PARTS_KEY

    hp = _plain_hparams(ckpt)
    hp.pop("init_from", None)
    hp.pop("consistency_detector", None)  # a validation-only detector: generation needs none
    parts = ckpt.get(PARTS_KEY)
    if not isinstance(parts, dict):  # written before the parts were arguments: the net config in hparams
        net = hp.pop("net", None) or {}
        preset = net.get("preset", "tiny")
        parts = {"net": {"hvg": net}, "vae": {"preset": preset}, "image_encoder": {"preset": preset}}
    return HVGModule(**hp, **HVGModule.build_parts(parts))


def _build_threedimo(ckpt: dict[str, Any], config: str | os.PathLike | None) -> torch.nn.Module:
    from dimo.diffusion.flow_matching import FlowMatching
    from dimo.models.threedimo import ThreeDiMoModule, ThreeDiMoNet, WanImageEncoder, WanTextEncoder, WanVAE
    from dimo.models.threedimo.module import PARTS_KEY

    if config is None:
        hp = _plain_hparams(ckpt)
        if isinstance(hp.get("flow"), dict):
            hp["flow"] = FlowMatching(**hp["flow"])
        hp.update(compile=False, gradient_checkpointing=False, pose_detector=None)  # validation-only
        parts = ckpt.get(PARTS_KEY)
        if isinstance(parts, dict):  # the checkpoint describes its network and frozen parts
            net = dict(parts["net"])
            net["image_size"] = tuple(net["image_size"])
            hp["net"] = ThreeDiMoNet(**net)
            hp["vae"] = None if parts["vae"] is None else WanVAE(**parts["vae"])
            hp["text_encoder"] = (
                None if parts["text_encoder"] is None else WanTextEncoder(**parts["text_encoder"])
            )
            if parts.get("image_encoder") is not None:
                hp["image_encoder"] = WanImageEncoder(**parts["image_encoder"])
        return ThreeDiMoModule(**hp)
    import yaml
    from lightning.pytorch.cli import instantiate_module

    config = Path(config)
    if not config.is_file():
        raise GenerateError(f"run config not found: {config} (expected the config.yaml LightningCLI wrote)")
    model = (yaml.safe_load(config.read_text()) or {}).get("model")
    if not isinstance(model, dict) or "class_path" not in model:
        raise GenerateError(
            f"{config} has no 'model' section with a class_path; expected a LightningCLI config.yaml"
        )
    from dimo.lightning_cli import apply_model_links

    # the keys the CLI derived at parse time (the parts' folders under `pretrained`, presets, stride)
    init = apply_model_links({k: v for k, v in (model.get("init_args") or {}).items() if k not in _RETIRED})
    init.update(compile=False, gradient_checkpointing=False, pose_detector=None)  # validation-only detector
    module = instantiate_module(ThreeDiMoModule, {"_class_path": model["class_path"], **init})
    if not isinstance(module, ThreeDiMoModule):
        raise GenerateError(f"{config} describes {model['class_path']}; expected a 3dimo ThreeDiMoModule")
    return module
