"""LPIPS (Zhang et al. 2018) with AlexNet or VGG16 backbones, without torchvision.

torchmetrics' LPIPS builds its backbone through torchvision, which does not import on this CPU torch.
This module keeps everything else from torchmetrics (the scaling layer, the linear heads and their
shipped weights ``torchmetrics/functional/image/lpips_models/{alex,vgg}.pth``, the feature
normalisation and spatial average) and supplies the backbone: the ``features`` part of torchvision's
AlexNet / VGG16, written with torchvision's parameter names so the torchvision checkpoints load
strictly from a local file:

* ``alexnet-owt-7be5be79.pth`` (``features.{0,3,6,8,10}.*``; ``classifier.*`` ignored),
* ``vgg16-397923af.pth`` (``features.{0,2,5,...,28}.*``; ``classifier.*`` ignored).

Given the same weights, :class:`LPIPSNet` returns torchmetrics' ``_LPIPS`` numbers.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import lpips as tm_lpips

from dimo.eval.pixel import PairedFrameMetric
from dimo.eval.weights import load_state_dict_file, load_strict, resolve_weights

BACKBONE_WEIGHTS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# Indices into ``features`` after which LPIPS taps a ReLU output (exclusive slice ends).
_TAPS = {"alex": (2, 5, 8, 10, 12), "vgg": (4, 9, 16, 23, 30)}
_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def alexnet_features() -> nn.Sequential:
    """torchvision ``alexnet().features`` layout (13 modules)."""

    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )  # fmt: skip


def vgg16_features() -> nn.Sequential:
    """torchvision ``vgg16().features`` layout (31 modules, configuration "D", no batch norm)."""

    layers: list[nn.Module] = []
    cin = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
            cin = int(v)
    return nn.Sequential(*layers)


class Backbone(nn.Module):
    """``features`` of AlexNet/VGG16 with torchvision names; ``forward`` returns the 5 LPIPS taps."""

    def __init__(self, net: Literal["alex", "vgg"]) -> None:
        super().__init__()
        self.net = net
        self.features = alexnet_features() if net == "alex" else vgg16_features()

    @classmethod
    def from_file(cls, net: Literal["alex", "vgg"], path: str | os.PathLike | None = None) -> Backbone:
        file = resolve_weights(path, BACKBONE_WEIGHTS[net], f"LPIPS backbone ({net}, torchvision format)")
        model = cls(net)
        load_strict(model, load_state_dict_file(file), str(file), ignore_prefixes=("classifier.",))
        model.weight_path = Path(file)
        return model.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps, start = [], 0
        for end in _TAPS[self.net]:
            for i in range(start, end):
                x = self.features[i](x)
            taps.append(x)
            start = end
        return taps


def torchmetrics_lin_weights(net: Literal["alex", "vgg"]) -> Path:
    """The LPIPS v0.1 linear-head weights shipped inside torchmetrics."""

    root = Path(inspect.getfile(tm_lpips)).parent / "lpips_models"
    return root / f"{net}.pth"


class LPIPSNet(nn.Module):
    """LPIPS distance per image pair: ``(N, 3, H, W)`` x2 in [-1, 1] -> ``(N,)``.

    Args:
        net: ``"alex"`` or ``"vgg"``.
        backbone_weights: torchvision checkpoint (file or directory); default
            ``$DIMO_WEIGHTS_DIR/{alexnet-owt-7be5be79.pth|vgg16-397923af.pth}``.
        lin_weights: LPIPS linear heads; default the file shipped in torchmetrics.
        backbone: a prebuilt :class:`Backbone` (tests).
    """

    def __init__(
        self,
        net: Literal["alex", "vgg"] = "alex",
        backbone_weights: str | os.PathLike | None = None,
        lin_weights: str | os.PathLike | None = None,
        backbone: Backbone | None = None,
    ) -> None:
        super().__init__()
        if net not in _TAPS:
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.scaling_layer = tm_lpips.ScalingLayer()
        self.net = backbone if backbone is not None else Backbone.from_file(net, backbone_weights)
        self.lins = nn.ModuleList([tm_lpips.NetLinLayer(c, use_dropout=True) for c in _CHANNELS[net]])
        lin_file = Path(lin_weights) if lin_weights is not None else torchmetrics_lin_weights(net)
        if not lin_file.is_file():
            raise FileNotFoundError(f"LPIPS linear-head weights not found: {lin_file}")
        lin_sd = torch.load(lin_file, map_location="cpu", weights_only=True)
        # The shipped file names the heads lin0..lin4 (torchmetrics/lpips attribute names).
        renamed = {k.replace("lin", "", 1): v for k, v in lin_sd.items()}
        load_strict(self.lins, renamed, str(lin_file))
        self.weight_files = [lin_file]  # reported with the backbone's file (harness.weight_hashes)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPSNet:  # always eval: dropout in the heads stays off
        return super().train(False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        fa, fb = self.net(self.scaling_layer(a)), self.net(self.scaling_layer(b))
        total = 0
        for lin, xa, xb in zip(self.lins, fa, fb):
            diff = (tm_lpips._normalize_tensor(xa) - tm_lpips._normalize_tensor(xb)) ** 2
            total = total + tm_lpips._spatial_average(lin(diff), keep_dim=True)
        return total.flatten()  # (N,)


class LPIPS(PairedFrameMetric):
    """Per-frame LPIPS averaged over frames. ``disco=True``: DisCo's convention (VGG, frames in [0, 1]
    fed as they are, i.e. without the [-1, 1] mapping the network expects)."""

    higher_is_better = False

    def __init__(
        self,
        net: Literal["alex", "vgg"] = "alex",
        backbone_weights: str | os.PathLike | None = None,
        disco: bool = False,
        model: LPIPSNet | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.disco = disco
        self.name = "lpips_disco" if disco else f"lpips_{net}"
        # Held outside the module tree (moved by _apply) so checkpoints of a LightningModule that owns
        # this metric do not carry the backbone.
        object.__setattr__(self, "lpips", model if model is not None else LPIPSNet(net, backbone_weights))

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001
        out = super()._apply(fn, *args, **kwargs)
        self.lpips._apply(fn)
        return out

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        g, r = generated.float(), reference.float()
        if self.disco:
            from dimo.eval.pixel import quantize_uint8

            g, r = quantize_uint8(g).float() / 255, quantize_uint8(r).float() / 255
        return self.lpips(g, r)
