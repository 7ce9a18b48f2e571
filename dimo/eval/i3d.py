"""I3D (Inception-v1 inflated) Kinetics-400 logits for FVD.

Two accepted weight formats, both loaded only from local files:

* ``i3d_torchscript.pt`` (StyleGAN-V, the default FVD convention): a TorchScript module loaded with
  :func:`torch.jit.load` and called as ``detector(x, rescale=..., resize=..., return_features=True)``,
  returning the 400 pre-softmax logits.
* ``i3d_pretrained_400.pt`` (VideoGPT / DisCo / content-debiased FVD): a state dict of the pytorch-i3d
  ``InceptionI3d``; :class:`InceptionI3d` below is written to match its parameter names
  (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1a.bn.running_mean``, ``logits.conv3d.bias`` ...).
  As in VideoGPT's copy, BatchNorm eps is 1e-5, convolutions and max pools use TF "SAME" padding
  (zeros) computed from the input size, and the logits are averaged over the remaining time steps.

DisCo's copy (``tool/metrics/inception3d.py``, loaded by its ``FVD-3DInception`` mode, the same
``i3d_pretrained_400.pt`` file) differs in two places, reproduced by ``InceptionI3d(variant="disco")``:
BatchNorm eps 1e-3 (momentum 0.01) and a final average pool of ``(1, 7, 7)`` instead of ``(2, 7, 7)``
before the time average of the logits (so any clip length >= 1 works).

Input to both: videos ``(B, 3, T, 224, 224)`` in [-1, 1].
"""

from __future__ import annotations

import math
import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dimo.eval.weights import load_state_dict_file, load_strict, resolve_weights

I3D_TORCHSCRIPT_WEIGHTS = "i3d_torchscript.pt"
I3D_STATE_DICT_WEIGHTS = "i3d_pretrained_400.pt"


def _same_pad(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    """Zero-pad ``x (B, C, T, H, W)`` as TF "SAME" for this kernel/stride (extra pad at the end)."""

    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (+ BatchNorm3d) (+ ReLU) with SAME padding; names ``conv3d``/``bn`` as pytorch-i3d."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        bias: bool = False,
        relu: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=eps, momentum=0.001) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool -> 1x1 (names b0, b1a/b, b2a/b, b3b)."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int], eps: float = 1e-5) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0], eps=eps)
        self.b1a = Unit3D(cin, c[1], eps=eps)
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3), eps=eps)
        self.b2a = Unit3D(cin, c[3], eps=eps)
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3), eps=eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c[5], eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, input channels, branch widths) of the inception blocks, in order.
_MIXED: tuple[tuple[str, int, tuple[int, int, int, int, int, int]], ...] = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """I3D with pytorch-i3d parameter names; ``forward`` returns time-averaged logits ``(B, num_classes)``.

    ``variant="videogpt"`` (default): BatchNorm eps 1e-5, final pool (2, 7, 7); needs at least 9 input
    frames (the pool spans 2 of the T/8 remaining steps). ``variant="disco"``: eps 1e-3, pool (1, 7, 7),
    any length. Both need 224x224 frames (the final 7x7 spatial pool), exactly like the reference code.
    """

    VARIANTS = {"videogpt": (1e-5, 2), "disco": (1e-3, 1)}  # (BatchNorm eps, final pool time kernel)

    def __init__(self, num_classes: int = 400, variant: Literal["videogpt", "disco"] = "videogpt") -> None:
        super().__init__()
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown I3D variant {variant!r}; expected one of {sorted(self.VARIANTS)}")
        self.num_classes, self.variant = num_classes, variant
        eps, self.pool_frames = self.VARIANTS[variant]
        self.min_frames = 9 if variant == "videogpt" else 1
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), eps=eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, eps=eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), eps=eps)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name, cin, widths in _MIXED[:2]:
            self.add_module(name, InceptionModule(cin, widths, eps))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name, cin, widths in _MIXED[2:7]:
            self.add_module(name, InceptionModule(cin, widths, eps))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name, cin, widths in _MIXED[7:]:
            self.add_module(name, InceptionModule(cin, widths, eps))
        self.logits = Unit3D(1024, num_classes, batch_norm=False, bias=True, relu=False)

    _ORDER = (
        "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
        "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
        "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
    )  # fmt: skip

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike | None = None,
        num_classes: int = 400,
        variant: Literal["videogpt", "disco"] = "videogpt",
    ) -> InceptionI3d:
        file = resolve_weights(path, I3D_STATE_DICT_WEIGHTS, "FVD I3D (pytorch-i3d state dict)")
        model = cls(num_classes, variant)
        load_strict(model, load_state_dict_file(file), str(file))
        model.weight_path = file
        return model.eval().requires_grad_(False)

    def trunk(self, x: Tensor) -> Tensor:
        """Everything before the final pool: ``(B, 3, T, H, W)`` -> ``(B, 1024, T', H', W')`` (Mixed_5c)."""

        for name in self._ORDER:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, 3, T, H, W)`` in [-1, 1] -> ``(B, num_classes)`` logits averaged over time."""

        if x.shape[2] < self.min_frames:
            raise ValueError(f"I3D needs at least {self.min_frames} frames, got {x.shape[2]}")
        x = self.trunk(x)
        x = F.avg_pool3d(x, (self.pool_frames, 7, 7), stride=1)  # (B, 1024, T', 1, 1); no dropout in eval
        x = self.logits(x)  # (B, classes, T', 1, 1)
        return x.squeeze(4).squeeze(3).mean(dim=2)


class I3DFeatures(nn.Module):
    """FVD feature extractor over either weight format: ``(B, T, 3, H, W)`` in [-1, 1] -> ``(B, 400)``.

    Args:
        fmt: ``"torchscript"`` (StyleGAN-V ``i3d_torchscript.pt``) or ``"state_dict"``
            (``i3d_pretrained_400.pt``).
        path: weight file (or a directory holding it); default ``$DIMO_WEIGHTS_DIR/<file name>``.
        preprocess: for TorchScript only. ``"internal"`` (StyleGAN-V's own metric code): frames are
            passed as 0..255 values at their own size with ``rescale=True, resize=True`` and the
            detector rescales/resizes itself. ``"external"`` (fvd-comparison / common_metrics): frames
            are resized here to 224x224 (bilinear) in [-1, 1] and passed with ``rescale=False,
            resize=False``. The state-dict model always gets the external form.
        resolution: spatial size of the external resize (224 in every reference).
        module: an already built extractor (tests, benchmarks); skips file loading.
    """

    def __init__(
        self,
        fmt: Literal["torchscript", "state_dict"] = "torchscript",
        path: str | os.PathLike | None = None,
        preprocess: Literal["internal", "external"] = "internal",
        resolution: int = 224,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if preprocess not in ("internal", "external"):
            raise ValueError(f"unknown I3D preprocessing {preprocess!r}; expected 'internal' or 'external'")
        self.fmt, self.preprocess, self.resolution = fmt, preprocess, resolution
        if module is not None:
            self.net = module
        elif fmt == "torchscript":
            file = resolve_weights(path, I3D_TORCHSCRIPT_WEIGHTS, "FVD I3D (StyleGAN-V TorchScript)")
            self.net = torch.jit.load(str(file), map_location="cpu").eval()
            self.weight_path = file
        elif fmt == "state_dict":
            self.net = InceptionI3d.from_file(path)
            self.weight_path = self.net.weight_path
        else:
            raise ValueError(f"unknown I3D weight format {fmt!r}; expected 'torchscript' or 'state_dict'")
        for param in self.net.parameters():  # ScriptModules have no requires_grad_()
            param.requires_grad_(False)

    def forward(self, videos: Tensor) -> Tensor:
        """``videos (B, T, 3, H, W)`` in [-1, 1] -> logits ``(B, D)`` float32."""

        b, t, c, h, w = videos.shape
        if self.fmt == "torchscript" and self.preprocess == "internal":
            x = ((videos.float() + 1) * 127.5).permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W), 0..255
            return self.net(x, rescale=True, resize=True, return_features=True).float()
        frames = videos.float().reshape(b * t, c, h, w)
        if (h, w) != (self.resolution, self.resolution):
            frames = resize_short_side_center_crop(frames, self.resolution)
        x = frames.reshape(b, t, c, self.resolution, self.resolution).permute(
            0, 2, 1, 3, 4
        )  # (B, 3, T, R, R)
        if self.fmt == "torchscript":
            return self.net(x, rescale=False, resize=False, return_features=True).float()
        return self.net(x).float()


def resize_short_side_center_crop(frames: Tensor, size: int) -> Tensor:
    """Scale the short side to ``size`` (bilinear, ceil on the long side) and centre-crop, as the
    VideoGPT / fvd-comparison preprocessing. ``frames (N, C, H, W)`` -> ``(N, C, size, size)``."""

    h, w = frames.shape[-2:]
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    frames = F.interpolate(frames, size=target, mode="bilinear", align_corners=False)
    top, left = (frames.shape[-2] - size) // 2, (frames.shape[-1] - size) // 2
    return frames[..., top : top + size, left : left + size]
