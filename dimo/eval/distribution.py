"""FID, FVD and FID-VID: :class:`~dimo.eval.frechet.FrechetMetric` subclasses with their extractors.

All take videos ``(B, T, 3, H, W)`` (or images ``(B, 3, H, W)`` for FID) in [-1, 1], the dimo sample
convention, via ``update(generated, reference)``. The extractor is held outside the module tree: it
follows the metric across ``.to(device)`` but is never written into a LightningModule checkpoint
(it is reloaded from its weight file).

* :class:`FID` — per-frame FID: every frame is an image; Inception pool3, torch-fidelity convention.
* :class:`FVD` — the first ``num_frames`` frames (every ``frame_stride``-th) of each video, I3D
  logits; the name states the clip (``fvd_16f``, ``fvd_16f_s2``).
* :class:`FIDVID` — DisCo's FID-VID (3D ResNet-50 Kinetics, 112x112, clip features averaged).
* ``FID(resize="clean")`` — clean-fid's FID (PIL bicubic float resize to 299, clipped); ``resize="disco"``
  DisCo's copy of it (not clipped).
* :class:`FVDDisCo` — DisCo's "FVD-3DInception": the whole video as one clip, PIL bicubic to 224x224,
  the I3D variant with BatchNorm eps 1e-3.
* :class:`FVDVideoMAE` — content-debiased FVD (Ge et al. 2024) on self-supervised VideoMAE-v2 features.

Every metric also answers :meth:`samples_per_video` (how many feature vectors a video of ``T`` frames
gives, 0 when it is too short), so the harness checks sample counts before featurising anything.
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

    @property
    def weight_path(self):  # noqa: ANN201
        """The extractor's weight file (None for an injected extractor)."""

        return getattr(self.extractor, "weight_path", None)

    sample_unit = "clips"  # what one feature vector describes (reports)

    def samples_per_video(self, num_frames: int) -> int:
        """Feature vectors produced by one video of ``num_frames`` frames (0: too short)."""

        return 1 if num_frames >= 1 else 0

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
        resize: ``"tf1_bilinear"`` (torch-fidelity: the extractor resizes the 8-bit frames itself),
            ``"clean"`` (clean-fid 0.1.35: PIL bicubic float resize to 299, clipped to 0..255) or
            ``"disco"`` (DisCo's copy of that resizer: not clipped).
    """

    NAMES = {"tf1_bilinear": "fid", "clean": "fid_clean", "disco": "fid_disco"}
    sample_unit = "frames"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        extractor: nn.Module | None = None,
        feature_dim: int = 2048,
        batch_size: int = 32,
        resize: Literal["tf1_bilinear", "clean", "disco"] = "tf1_bilinear",
        **kwargs: Any,
    ) -> None:
        if resize not in self.NAMES:
            raise ValueError(f"unknown FID resize {resize!r}; expected one of {sorted(self.NAMES)}")
        if extractor is None:
            from dimo.eval.inception import FIDInceptionV3

            extractor = FIDInceptionV3.from_file(weights)
        super().__init__(extractor, feature_dim, batch_size, **kwargs)
        self.resize = resize
        self.name = self.NAMES[resize]

    def samples_per_video(self, num_frames: int) -> int:
        return num_frames

    def features(self, samples: Tensor) -> Tensor:
        frames = to_uint8_range(samples.reshape(-1, *samples.shape[-3:]))  # (B*T, 3, H, W) 0..255
        if self.resize != "tf1_bilinear":
            from dimo.eval.resize import pil_bicubic_resize

            # (B*T, 3, 299, 299) floats; the extractor's TF1 resize at the same size is the identity
            frames = pil_bicubic_resize(frames, (299, 299), clip=self.resize == "clean")
        return self._run(frames)


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

    def samples_per_video(self, num_frames: int) -> int:
        return 1 if num_frames >= (self.num_frames - 1) * self.frame_stride + 1 else 0

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
    sample_unit = "videos (clip features averaged)"

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
        self.sample_duration = int(getattr(extractor, "sample_duration", sample_duration))

    def features(self, samples: Tensor) -> Tensor:
        if samples.ndim != 5:
            raise ValueError(f"fid_vid needs videos (B, T, 3, H, W), got {tuple(samples.shape)}")
        return self._run(samples)


class DisCoI3DFeatures(nn.Module):
    """DisCo's FVD input path: ``(B, T, 3, H, W)`` [-1, 1] -> 8-bit values -> PIL bicubic (float mode, not
    clipped) to 224x224 -> ``/127.5 - 1`` -> the whole video as one clip into the ``disco`` I3D variant."""

    def __init__(self, weights: str | os.PathLike | None = None, module: nn.Module | None = None) -> None:
        super().__init__()
        if module is None:
            from dimo.eval.i3d import InceptionI3d

            module = InceptionI3d.from_file(weights, variant="disco")
        self.net = module
        self.weight_path = getattr(module, "weight_path", None)

    def forward(self, videos: Tensor) -> Tensor:
        from dimo.eval.resize import pil_bicubic_resize

        b, t, c, h, w = videos.shape
        frames = pil_bicubic_resize(to_uint8_range(videos.reshape(b * t, c, h, w)), (224, 224), clip=False)
        x = (frames / 127.5 - 1).reshape(b, t, c, 224, 224).permute(0, 2, 1, 3, 4)  # (B, 3, T, 224, 224)
        return self.net(x).float()


class FVDDisCo(_ExtractorMetric):
    """DisCo's FVD ("FVD-3DInception", ``tool/metrics/metric_center.py``): one 400-d logit vector per
    whole video (every frame, however many), ``i3d_pretrained_400.pt`` in DisCo's I3D variant."""

    name = "fvd_disco"
    sample_unit = "videos (one whole-video clip)"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        extractor: nn.Module | None = None,
        feature_dim: int = 400,
        batch_size: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(extractor or DisCoI3DFeatures(weights), feature_dim, batch_size, **kwargs)

    def features(self, samples: Tensor) -> Tensor:
        if samples.ndim != 5:
            raise ValueError(f"fvd_disco needs videos (B, T, 3, H, W), got {tuple(samples.shape)}")
        return self._run(samples)


class FVDVideoMAE(_ExtractorMetric):
    """Content-debiased FVD (Ge et al., CVPR 2024): Fréchet distance of VideoMAE-v2 features of the
    first ``config.num_frames`` frames (16 for the released model; see :mod:`dimo.eval.videomae`).
    Named ``fvd_videomae_{frames}f``."""

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        extractor: nn.Module | None = None,
        feature_dim: int | None = None,
        batch_size: int = 4,
        **kwargs: Any,
    ) -> None:
        if extractor is None:
            from dimo.eval.videomae import VideoMAEFeatures

            extractor = VideoMAEFeatures.from_folder(weights)
        self.num_frames = int(getattr(extractor, "num_frames", 16))
        dim = feature_dim or int(extractor.config.hidden_size)
        super().__init__(extractor, dim, batch_size, **kwargs)

    @property
    def name(self) -> str:
        return f"fvd_videomae_{self.num_frames}f"

    def samples_per_video(self, num_frames: int) -> int:
        return 1 if num_frames >= self.num_frames else 0

    def features(self, samples: Tensor) -> Tensor:
        if samples.ndim != 5 or samples.shape[1] < self.num_frames:
            raise ValueError(
                f"{self.name} needs videos (B, T, 3, H, W) with T >= {self.num_frames}, got {tuple(samples.shape)}"
            )
        return self._run(samples)
