"""What a training sample looks like (:class:`SampleSpec`), shared by the dataset, the HVG view
alignment and the shard writer (its own module so they import it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dimo.data.video import CropMode

__all__ = ["SampleSpec"]


@dataclass(frozen=True)
class SampleSpec:
    """What a sample looks like (shared by every source)."""

    task: Literal["3dimo", "hvg"] = "3dimo"
    num_frames: int = 8
    frame_stride: int = 1
    height: int = 64
    width: int = 64
    num_views: int = 4  # HVG only
    crop: CropMode = "center"

    @property
    def span(self) -> int:
        """Source frames covered by one sample."""

        return (self.num_frames - 1) * self.frame_stride + 1
