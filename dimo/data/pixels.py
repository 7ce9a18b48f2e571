"""Sample pixels: uint8 from the data pipeline, float32 in [-1, 1] for the models.

Datasets (:class:`~dimo.data.dataset.ClipDataset`, :class:`~dimo.data.shards.ShardDataset`) put the
pixel fields of a sample (:data:`PIXEL_KEYS`) in uint8, channels-first, in the float layout
(``(T, 3, H, W)``, ``(V, T, 3, H, W)``, ``(3, H, W)``): a quarter of float32's bytes between worker
processes and from host to device. :func:`to_model_batch` maps them to float32 with
``x / 127.5 - 1`` (:func:`pixels_to_float`, the mapping dimo has always used); the DataModule calls it
in ``on_after_batch_transfer``, on the device. The LightningModules call :func:`check_model_batch`,
so a batch that skipped the conversion fails loudly instead of training on 0..255.

Only torch here: the models import it without the data pipeline's dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["PIXEL_KEYS", "check_model_batch", "pixels_to_float", "quantize", "to_model_batch"]

# the pixel fields of a sample: uint8 from the datasets, float32 in [-1, 1] for the models
PIXEL_KEYS = ("driving", "target", "reference")


def pixels_to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1], any shape and device: ``x / 127.5 - 1``."""

    return pixels.float().div_(127.5).sub_(1.0)


def quantize(images01: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] -> uint8, rounded to the nearest of the 256 levels.

    The error is at most 0.5/255 in [0, 1], i.e. 1/255 once mapped to [-1, 1] by :func:`pixels_to_float`.
    """

    return images01.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def to_model_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A sample or collated batch with uint8 pixels -> the same dict with float32 pixels in [-1, 1].

    Converts the :data:`PIXEL_KEYS` that are uint8 (on whatever device they are) with
    :func:`pixels_to_float`; everything else, and pixels already floating, passes through, so calling
    it twice is harmless. Returns a new dict (the input is not modified). The DataModule's
    ``on_after_batch_transfer`` calls it; call it yourself when reading a DataModule's loaders, a
    :class:`~dimo.data.dataset.ClipDataset` or a ``ShardDataset`` without a Trainer.
    """

    out = dict(batch)
    for key in PIXEL_KEYS:
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.dtype == torch.uint8:
            out[key] = pixels_to_float(value)
    return out


def check_model_batch(batch: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` if the batch still holds uint8 pixels (a model would use 0..255 as is)."""

    raw = [k for k in PIXEL_KEYS if isinstance(batch.get(k), torch.Tensor) and batch[k].dtype == torch.uint8]
    if raw:
        raise TypeError(
            f"batch pixels {raw} are uint8: convert them with dimo.data.to_model_batch(batch) (under a "
            "Trainer the DataModule's on_after_batch_transfer does it; a LightningModule that overrides "
            "on_after_batch_transfer must call to_model_batch itself)"
        )
