"""Local-only loading of pretrained feature-extractor weights.

Every extractor in :mod:`dimo.eval` reads its weights from a local file: an explicit path given in
config, or a file name looked up in the directory named by the ``DIMO_WEIGHTS_DIR`` environment
variable (default ``~/.cache/dimo/weights``). Nothing is ever downloaded. A missing file raises
:class:`MissingWeightsError` naming the file and every place it was expected.

State-dict loads are strict: any missing key, and any unexpected key not matched by an explicit
allow-list of prefixes (e.g. a classifier head the metric does not use), is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

WEIGHTS_ENV = "DIMO_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/dimo/weights")


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file is not where it is expected (downloads are never attempted)."""


def weights_dir() -> Path:
    """The directory searched for weight files named without a path."""

    return Path(os.environ.get(WEIGHTS_ENV, str(DEFAULT_WEIGHTS_DIR))).expanduser()


def resolve_weights(path: str | os.PathLike | None, default_name: str, what: str) -> Path:
    """Find a weight file: ``path`` if given (a file, or a directory holding ``default_name``),
    else ``$DIMO_WEIGHTS_DIR/default_name``. Raises :class:`MissingWeightsError` otherwise."""

    candidates: list[Path] = []
    if path is not None:
        p = Path(path).expanduser()
        candidates.append(p / default_name if p.is_dir() else p)
    else:
        candidates.append(weights_dir() / default_name)
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c) for c in candidates)
    raise MissingWeightsError(
        f"{what}: weight file {default_name!r} not found (looked at: {where}). dimo never downloads "
        f"weights: place the file there, pass its path explicitly, or set ${WEIGHTS_ENV} to the "
        "directory that holds it (see docs/metrics.md)."
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save``; unwraps ``{"state_dict": ...}`` checkpoints and
    a DataParallel ``module.`` prefix."""

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    ignore_prefixes: Iterable[str] = (),
) -> None:
    """Load ``state_dict`` into ``module``; fail on any missing or unexpected key unless it starts with
    one of ``ignore_prefixes`` (the explicit allow-list of parts the metric never uses)."""

    ignore = tuple(ignore_prefixes)
    kept = {k: v for k, v in state_dict.items() if not (ignore and k.startswith(ignore))}
    result = module.load_state_dict(kept, strict=False)
    # BatchNorm's num_batches_tracked is absent from some older files; it has no effect in eval mode.
    missing = [
        k
        for k in result.missing_keys
        if not k.endswith("num_batches_tracked") and not (ignore and k.startswith(ignore))
    ]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: weights do not match {type(module).__name__}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {result.unexpected_keys[:8]}{'...' if len(result.unexpected_keys) > 8 else ''}"
        )
