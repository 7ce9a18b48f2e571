"""FID, FVD and FID-VID: :class:`~dimo.eval.frechet.FrechetMetric` subclasses with their extractors.

All take videos ``(B, T, 3, H, W)`` (or images ``(B, 3, H, W)`` for FID) in [-1, 1], the dimo sample
convention, via ``update(generated, reference)``. The extractor is held outside the module tree: it
follows the metric across ``.to(device)`` but is never written into a LightningModule checkpoint
(it is reloaded from its weight file).

* :class:`FID` — per-frame FID: every frame is an image; Inception pool3, torch-fidelity convention.
* :class:`FVD` — the first ``num_frames`` frames (every ``frame_stride``-th) of each video, I3D
  logits; the name states the clip (``fvd_16f``, ``fvd_16f_s2``).
* :class:`FIDVID` — DisCo's FID-VID (3D ResNet-50 Kinetics, 112x112, clip features averaged).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dimo.eval.frechet import FrechetMetric


def to_uint8_range(x: Tensor) -> Tensor:
    """[-1, 1] float -> 0..255 values quantised as an 8-bit file would hold them (float32)."""

    return ((x.float() + 1) * 127.5).round().clamp(0, 255)


class _ExtractorMetric(FrechetMetric):
    """Keeps ``extractor`` out of ``state_dict`` while moving it with the metric."""

    def __init__(self, extractor: nn.Module, feature_dim: int, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(feature_dim, **kwargs)
        object.__setattr__(self, "extractor", extractor.eval())
        self.batch_size = batch_size

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001
        out = super()._apply(fn, *args, **kwargs)
        self.extractor._apply(fn)
        return out

    @torch.no_grad()
    def _run(self, x: Tensor) -> Tensor:
        """Run the extractor in chunks of ``batch_size`` along the first axis."""

        device = next(iter(self.extractor.parameters()), torch.empty(0)).device
        outs = [self.extractor(chunk.to(device)) for chunk in x.split(self.batch_size)]
        return torch.cat(outs)


class FID(_ExtractorMetric):
    """Fréchet Inception Distance over frames (per-frame FID pools all frames of all videos).

    Args:
        weights: path to the FID Inception weights (file or directory); default
            ``$DIMO_WEIGHTS_DIR/pt_inception-2015-12-05-6726825d.pth``.
        extractor: a prebuilt ``(N, 3, H, W) 0..255 -> (N, 2048)`` module (tests/benchmarks).
    """

    name = "fid"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        extractor: nn.Module | None = None,
        feature_dim: int = 2048,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        if extractor is None:
            from dimo.eval.inception import FIDInceptionV3

            extractor = FIDInceptionV3.from_file(weights)
        super().__init__(extractor, feature_dim, batch_size, **kwargs)

    def features(self, samples: Tensor) -> Tensor:
        frames = samples.reshape(-1, *samples.shape[-3:])  # (B*T, 3, H, W)
        return self._run(to_uint8_range(frames))


class FVD(_ExtractorMetric):
    """Fréchet Video Distance on I3D Kinetics-400 logits.

    Args:
        num_frames: clip length fed to I3D (16 is the common published setting).
        frame_stride: take every ``frame_stride``-th frame (StyleGAN-V ``subsample_factor``).
        weights_format: ``"torchscript"`` (StyleGAN-V, default) or ``"state_dict"`` (pytorch-i3d).
        weights: weight file or directory; default ``$DIMO_WEIGHTS_DIR/{i3d_torchscript.pt|i3d_pretrained_400.pt}``.
        preprocess: TorchScript only, see :class:`dimo.eval.i3d.I3DFeatures`.
        extractor: prebuilt ``(B, T, 3, H, W) [-1, 1] -> (B, D)`` module.
    """

    def __init__(
        self,
        num_frames: int = 16,
        frame_stride: int = 1,
        weights_format: Literal["torchscript", "state_dict"] = "torchscript",
        weights: str | os.PathLike | None = None,
        preprocess: Literal["internal", "external"] = "internal",
        extractor: nn.Module | None = None,
        feature_dim: int = 400,
        batch_size: int = 8,
        **kwargs: Any,
    ) -> None:
        if extractor is None:
            from dimo.eval.i3d import I3DFeatures

            extractor = I3DFeatures(weights_format, weights, preprocess)
        super().__init__(extractor, feature_dim, batch_size, **kwargs)
        if num_frames < 1 or frame_stride < 1:
            raise ValueError("num_frames and frame_stride must be positive")
        self.num_frames, self.frame_stride = num_frames, frame_stride

    @property
    def name(self) -> str:
        return f"fvd_{self.num_frames}f" + (f"_s{self.frame_stride}" if self.frame_stride > 1 else "")

    def clip(self, videos: Tensor) -> Tensor:
        """The scored clip of each video: ``(B, T, 3, H, W)`` -> ``(B, num_frames, 3, H, W)``."""

        need = (self.num_frames - 1) * self.frame_stride + 1
        if videos.ndim != 5 or videos.shape[1] < need:
            raise ValueError(
                f"{self.name} needs videos (B, T, 3, H, W) with T >= {need}, got {tuple(videos.shape)}"
            )
        return videos[:, : need : self.frame_stride]

    def features(self, samples: Tensor) -> Tensor:
        return self._run(self.clip(samples))


class FIDVID(_ExtractorMetric):
    """FID-VID (DisCo): Fréchet distance of per-video mean 3D ResNet-50 clip features (2048-d)."""

    name = "fid_vid"

    def __init__(
        self,
        sample_duration: int = 16,
        sample_size: int = 112,
        weights: str | os.PathLike | None = None,
        extractor: nn.Module | None = None,
        feature_dim: int = 2048,
        batch_size: int = 4,
        **kwargs: Any,
    ) -> None:
        if extractor is None:
            from dimo.eval.resnet3d import ResNet3DFeatures

            extractor = ResNet3DFeatures(weights, sample_size, sample_duration)
        super().__init__(extractor, feature_dim, batch_size, **kwargs)

    def features(self, samples: Tensor) -> Tensor:
        if samples.ndim != 5:
            raise ValueError(f"fid_vid needs videos (B, T, 3, H, W), got {tuple(samples.shape)}")
        return self._run(samples)
