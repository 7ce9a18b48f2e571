"""Pixel metrics, the DisCo-compatible mode against hand-computed values, and LPIPS against the
torchmetrics reference architecture on the same (random) torchvision-format backbone weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchmetrics.functional.image import lpips as tm_lpips

from dimo.eval.lpips import LPIPS, Backbone, LPIPSNet
from dimo.eval.pixel import (
    L1,
    PSNR,
    SSIM,
    L1DisCo,
    PSNRDisCo,
    SSIMDisCo,
    rgb_to_gray_opencv,
    ssim_skimage_default,
)


def _frame(values_rgb: tuple[int, int, int], h: int = 12, w: int = 10) -> torch.Tensor:
    """A constant uint8-valued frame in the [-1, 1] sample convention, (1, 3, H, W)."""

    x = torch.tensor(values_rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, h, w)
    return x / 127.5 - 1


def test_corrected_metrics_known_values(rng):
    a = torch.rand(2, 3, 3, 16, 16, generator=rng) * 2 - 1
    b = (a + 0.2).clamp(-1, 1)
    l1 = L1()
    l1.update(a, b)
    assert l1.compute().item() == pytest.approx(((a - b).abs() / 2).mean().item(), rel=1e-6)
    psnr = PSNR()
    psnr.update(a[:, :1], b[:, :1])
    mse = (((a[:, 0] - b[:, 0]) / 2) ** 2).mean(dim=(1, 2, 3))
    assert psnr.compute().item() == pytest.approx((10 * torch.log10(1 / mse)).mean().item(), rel=1e-5)
    ssim = SSIM()
    ssim.update(a, a)
    assert ssim.compute().item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="matching"):
        ssim.update(a, b[:, :2])


def test_disco_psnr_wraps_like_uint8_and_l1_divides_by_pixels():
    h, w = 12, 10
    # 0 vs 20: the uint8 difference wraps to 236, squared wraps to 144 -> PSNR 20 log10(255 / 12)
    m = PSNRDisCo()
    m.update(_frame((0, 0, 0)), _frame((20, 20, 20)))
    assert m.compute().item() == pytest.approx(20 * math.log10(255 / 12), rel=1e-9)
    # 110 vs 100: 10 -> 100; identical frames -> 100 by convention
    m = PSNRDisCo()
    m.update(
        torch.cat([_frame((110, 110, 110)), _frame((7, 8, 9))]),
        torch.cat([_frame((100, 100, 100)), _frame((7, 8, 9))]),
    )
    assert m.compute().item() == pytest.approx((20 * math.log10(255 / 10) + 100) / 2, rel=1e-9)
    # L1: mean |a - b| in 0..255 divided by H * W
    m = L1DisCo()
    m.update(_frame((10, 20, 30), h, w), _frame((13, 20, 24), h, w))
    assert m.compute().item() == pytest.approx((3 + 0 + 6) / 3 / (h * w), rel=1e-9)


def test_disco_ssim_gray_and_skimage_defaults():
    # OpenCV fixed-point gray of (R, G, B) = (200, 100, 50): (4899*200 + 9617*100 + 1868*50 + 8192) >> 14
    gray = rgb_to_gray_opencv(torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1))
    assert gray.item() == (4899 * 200 + 9617 * 100 + 1868 * 50 + 8192) >> 14 == 124
    # constant frames: SSIM = (2ab + C1) / (a^2 + b^2 + C1), variances vanish
    a, b = 120, 100
    m = SSIMDisCo()
    m.update(_frame((a, a, a)), _frame((b, b, b)))
    c1 = (0.01 * 255) ** 2
    assert m.compute().item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    # a textured pair against a direct numpy transcription of skimage's formula (scipy uniform filter)
    import numpy as np
    from scipy.ndimage import uniform_filter

    g = np.random.default_rng(0)
    x = g.integers(0, 256, size=(20, 24)).astype(np.float64)
    y = np.clip(x + g.normal(scale=20, size=x.shape), 0, 255).round()
    ux, uy = uniform_filter(x, 7), uniform_filter(y, 7)
    cov = 49 / 48
    vx, vy = cov * (uniform_filter(x * x, 7) - ux * ux), cov * (uniform_filter(y * y, 7) - uy * uy)
    vxy = cov * (uniform_filter(x * y, 7) - ux * uy)
    c2 = (0.03 * 255) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    expected = s[3:-3, 3:-3].mean()
    got = ssim_skimage_default(torch.from_numpy(x)[None], torch.from_numpy(y)[None]).item()
    assert got == pytest.approx(expected, rel=1e-12)


def _torchvision_features(net: str) -> nn.Sequential:
    """The torchvision ``features`` layouts, spelt out independently of dimo.eval.lpips."""

    if net == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )  # fmt: skip
    layers, cin = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_torchmetrics_reference(net, tmp_path, monkeypatch, rng):
    torch.manual_seed(0)
    reference_features = _torchvision_features(net)
    checkpoint = {f"features.{k}": v for k, v in reference_features.state_dict().items()}
    checkpoint["classifier.1.weight"] = torch.zeros(4, 4)  # a torchvision file also holds the classifier
    name = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}[net]
    torch.save(checkpoint, tmp_path / name)

    ours = LPIPSNet(net, backbone_weights=tmp_path)
    # torchmetrics' own LPIPS module, its torchvision hook answered with the same weights
    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", lambda *a, **k: reference_features)
    reference = tm_lpips._LPIPS(pretrained=True, net=net, pnet_rand=True).eval()

    size = 64 if net == "alex" else 32  # small frames keep VGG quick; all five taps stay non-empty
    a = torch.rand(3, 3, size, size, generator=rng) * 2 - 1
    b = torch.rand(3, 3, size, size, generator=rng) * 2 - 1
    with torch.no_grad():
        expected = reference(a, b).flatten()
        got = ours(a, b)
    assert got.shape == (3,) and expected.abs().min() > 0
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # the metric object averages the per-frame distances; DisCo mode feeds [0, 1] frames as they are
    metric = LPIPS(net, model=ours)
    metric.update(a[None], b[None])
    assert metric.compute().item() == pytest.approx(expected.mean().item(), abs=1e-5)
    disco = LPIPS(net, model=ours, disco=True)
    a8, b8 = ((a + 1) * 127.5).round() / 255, ((b + 1) * 127.5).round() / 255
    disco.update(a, b)
    with torch.no_grad():
        assert disco.compute().item() == pytest.approx(reference(a8, b8).mean().item(), abs=1e-5)
    assert disco.name == "lpips_disco"
    assert not any("lpips" in k for k in metric.state_dict())


def test_lpips_backbone_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        Backbone.from_file("alex", tmp_path)
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(ValueError, match="features.3.weight"):
        Backbone.from_file("alex", tmp_path)
