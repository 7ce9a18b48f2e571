"""3D ResNet-50 (Kinetics) clip features for FID-VID, DisCo convention.

Parameter names match the 3D-ResNets-PyTorch (Hara et al.) ``resnet-50-kinetics.pth`` checkpoint that
DisCo's ``tool/metrics/resnet3d.py`` loads (``conv1``, ``bn1``, ``layer1.0.conv1`` ...,
``layer1.0.downsample.0/1``, shortcut type B); a ``{"state_dict": ...}`` wrapper and a DataParallel
``module.`` prefix are accepted, and the classifier ``fc.*`` is on the ignore allow-list because
FID-VID uses the 2048-d pooled features (fc removed).

DisCo's preprocessing, reproduced by :class:`ResNet3DFeatures`: frames resized to 112x112, kept in
0..255 and mean-subtracted with ``[114.7748, 107.7354, 99.4750]`` (no std division), split into
clips of ``sample_duration`` frames (the last clip padded by repeating the last frame), and the clip
features averaged per video.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dimo.eval.resize import pil_bicubic_resize
from dimo.eval.weights import load_state_dict_file, load_strict, resolve_weights

RESNET3D_WEIGHTS = "resnet-50-kinetics.pth"
KINETICS_MEAN_255 = (114.7748, 107.7354, 99.4750)


class Bottleneck3d(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet3D50(nn.Module):
    """3D ResNet-50 up to the global average pool: ``(N, 3, T, H, W)`` -> ``(N, 2048)``.

    ``sample_size``/``sample_duration`` fix the final average-pool kernel as in the reference
    (``ceil(T/16)``, ``ceil(size/32)``, stride 1); inputs must have exactly that size.
    """

    feature_dim = 2048

    def __init__(self, sample_size: int = 112, sample_duration: int = 16, num_classes: int = 400) -> None:
        super().__init__()
        self.sample_size, self.sample_duration = sample_size, sample_duration
        self.conv1 = nn.Conv3d(3, 64, 7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        cin = 64
        for i, (planes, blocks, stride) in enumerate(
            ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1
        ):
            down = None
            if stride != 1 or cin != planes * 4:
                down = nn.Sequential(
                    nn.Conv3d(cin, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm3d(planes * 4)
                )
            layers = [Bottleneck3d(cin, planes, stride, down)]
            cin = planes * 4
            layers += [Bottleneck3d(cin, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
        self.pool_kernel = (
            math.ceil(sample_duration / 16),
            math.ceil(sample_size / 32),
            math.ceil(sample_size / 32),
        )
        self.fc = nn.Linear(2048, num_classes)  # kept so the full checkpoint also loads; unused

    @classmethod
    def from_file(
        cls, path: str | os.PathLike | None = None, sample_size: int = 112, sample_duration: int = 16
    ) -> ResNet3D50:
        file = resolve_weights(path, RESNET3D_WEIGHTS, "FID-VID 3D ResNet-50 (Kinetics)")
        model = cls(sample_size, sample_duration)
        # fc is unused by FID-VID: it may be present (full Kinetics checkpoint) or absent.
        load_strict(model, load_state_dict_file(file), str(file), ignore_prefixes=("fc.",))
        model.weight_path = file
        return model.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool3d(x, 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.avg_pool3d(x, self.pool_kernel, stride=1)  # (N, 2048, 1, 1, 1) for the reference size
        if x.shape[2:] != (1, 1, 1):
            raise ValueError(
                f"3D ResNet input must be {self.sample_duration} frames of {self.sample_size}x{self.sample_size}; "
                f"the pooled map is {tuple(x.shape[2:])}"
            )
        return x.flatten(1)


class ResNet3DFeatures(nn.Module):
    """FID-VID extractor: ``(B, T, 3, H, W)`` in [-1, 1] -> per-video mean clip feature ``(B, 2048)``."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        sample_size: int = 112,
        sample_duration: int = 16,
        module: ResNet3D50 | None = None,
    ) -> None:
        super().__init__()
        self.net = module if module is not None else ResNet3D50.from_file(path, sample_size, sample_duration)
        self.net.requires_grad_(False)
        self.weight_path = getattr(self.net, "weight_path", None)
        self.sample_size, self.sample_duration = self.net.sample_size, self.net.sample_duration
        self.register_buffer("mean", torch.tensor(KINETICS_MEAN_255).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, videos: Tensor) -> Tensor:
        b, t, c, h, w = videos.shape
        d, s = self.sample_duration, self.sample_size
        # DisCo resizes uint8 frames with PIL bicubic in float mode (its copy of the clean-fid resizer:
        # no re-quantising, no clipping), every frame even at the target size.
        frames = ((videos.float() + 1) * 127.5).round().clamp(0, 255).reshape(b * t, c, h, w)
        frames = pil_bicubic_resize(frames, (s, s), clip=False)
        x = frames.reshape(b, t, c, s, s)
        n_clips = math.ceil(t / d)
        if n_clips * d != t:  # pad with the last frame, as DisCo
            x = torch.cat([x, x[:, -1:].expand(b, n_clips * d - t, c, s, s)], dim=1)
        x = x.reshape(b * n_clips, d, c, s, s).permute(0, 2, 1, 3, 4) - self.mean  # (B*clips, 3, d, s, s)
        feats = self.net(x)  # (B*clips, 2048)
        return feats.reshape(b, n_clips, -1).mean(dim=1)
