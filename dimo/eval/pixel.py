"""Paired per-frame metrics: PSNR, SSIM, L1 (corrected) and their DisCo-compatible variants.

Every metric takes ``update(generated, reference)`` with matching videos ``(B, T, 3, H, W)`` or images
``(B, 3, H, W)`` in [-1, 1], scores each frame, and averages over all frames (sum-reduced float64
``total``/``count`` states, so sharding over ranks gives the single-process result).

Corrected metrics (report these; on [0, 1] RGB):

* ``psnr``: per-frame PSNR, data range 1, averaged over frames; a frame equal to its reference scores
  :data:`PSNR_CAP_DB` (100 dB, DisCo's convention for mse = 0) instead of +inf, and every frame is capped
  there, so one perfect frame cannot make the mean infinite.
* ``ssim``: per-frame SSIM of Wang et al. (2004) as scikit-image ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=...)``: 11x11 Gaussian window
  (sigma 1.5, truncate 3.5), population covariance, the mean over *valid* windows only (skimage filters
  then crops ``(win - 1) // 2`` border pixels), RGB channels averaged.
* ``ssim_torchmetrics``: torchmetrics' ``structural_similarity_index_measure`` (Gaussian 11/1.5), whose
  definition since torchmetrics 1.5 averages over the reflect-padded border too (no crop): lower than
  ``ssim`` by ~0.05 at 64 px, ~0.005 at 256 px. pyproject pins the torchmetrics range, and building the
  metric under a torchmetrics outside :data:`TORCHMETRICS_SSIM_RANGE` is an error (the definition has
  changed before, so the number would not be the documented one).
* ``l1``: mean absolute error on [0, 1].

DisCo-compatible metrics (``*_disco``; only to sit next to published tables, see docs/metrics.md),
reproducing DisCo's ``tool/metrics/ssim_l1_lpips_psnr.py`` on 8-bit frames:

* ``ssim_disco``: OpenCV BGR->gray (fixed-point), then skimage ``structural_similarity`` defaults
  (7x7 uniform window, sample covariance, K1=0.01, K2=0.03, data range 255, border of 3 cropped).
* ``psnr_disco``: DisCo's script up to commit f53ce62 (2023-12-08, the published tables):
  ``20 log10(255 / sqrt(mse))`` with the MSE computed in uint8 arithmetic, i.e. the difference and its
  square wrap modulo 256 (numpy uint8 overflow in the reference); 100 when mse = 0.
* ``psnr_disco_2024``: the same script as fixed in commit 6190108 (2024-04-10): the MSE in float64;
  100 when mse = 0.
* ``l1_disco``: mean over pixels and channels of ``|a - b|`` in 0..255, divided by ``H * W``.

Hand-written (not torchmetrics) for ``ssim`` and the DisCo variants: scikit-image and OpenCV are not
runtime dependencies; the tests compare against scikit-image.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure


class PairedFrameMetric(Metric):
    """Mean of a per-frame score over all frames of all videos."""

    full_state_update = False
    is_differentiable = False
    name = "paired"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        """``(N, 3, H, W)`` pairs in [-1, 1] -> ``(N,)`` scores."""

        raise NotImplementedError

    def update(self, generated: Tensor, reference: Tensor) -> None:
        if generated.shape != reference.shape or generated.ndim not in (4, 5) or generated.shape[-3] != 3:
            raise ValueError(
                f"{self.name}: expected matching (B, [T,] 3, H, W) tensors, got {tuple(generated.shape)} and {tuple(reference.shape)}"
            )
        g = generated.reshape(-1, *generated.shape[-3:])
        r = reference.reshape(-1, *reference.shape[-3:])
        with torch.no_grad():
            scores = self.per_frame(g, r).double()
        self.total += scores.sum()
        self.count += scores.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


def _unit(x: Tensor) -> Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def quantize_uint8(x: Tensor) -> Tensor:
    """[-1, 1] -> uint8 0..255 as written to an 8-bit file (round half to even, clamped)."""

    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


PSNR_CAP_DB = 100.0
"""Per-frame PSNR ceiling (dB) of ``psnr``: the value of a frame equal to its reference."""


class PSNR(PairedFrameMetric):
    name = "psnr"
    higher_is_better = True

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        mse = (_unit(generated).double() - _unit(reference).double()).pow(2).mean(dim=(1, 2, 3))
        psnr = 10 * torch.log10(1.0 / mse)  # +inf where mse == 0
        return psnr.clamp(max=PSNR_CAP_DB)


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> Tensor:
    """scipy.ndimage's 1-D Gaussian: radius ``int(truncate * sigma + 0.5)``, normalised (float64)."""

    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim_wang(a: Tensor, b: Tensor, data_range: float = 1.0, sigma: float = 1.5) -> Tensor:
    """SSIM of Wang et al. with Gaussian weights over valid windows: ``(N, C, H, W)`` -> ``(N,)`` float64
    (mean over channels and window positions), as scikit-image ``structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``."""

    w = _gaussian_window(sigma).to(a.device)
    k = w.numel()
    if min(a.shape[-2:]) < k:
        raise ValueError(f"SSIM window {k} larger than the image {tuple(a.shape[-2:])}")
    c = a.shape[1]
    x, y = a.double(), b.double()
    wy = w.view(1, 1, k, 1).expand(c, 1, k, 1)
    wx = w.view(1, 1, 1, k).expand(c, 1, 1, k)

    def filt(t: Tensor) -> Tensor:  # separable valid convolution, per channel
        return F.conv2d(F.conv2d(t, wy, groups=c), wx, groups=c)

    ux, uy = filt(x), filt(y)
    vx, vy, vxy = filt(x * x) - ux * ux, filt(y * y) - uy * uy, filt(x * y) - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


class SSIM(PairedFrameMetric):
    name = "ssim"
    higher_is_better = True

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        return ssim_wang(_unit(generated), _unit(reference))


TORCHMETRICS_SSIM_RANGE = ((1, 5), (1, 10))
"""torchmetrics versions ``[low, high)`` (major, minor) whose SSIM ``ssim_torchmetrics`` names; the same
range as the pin in pyproject.toml."""


def check_torchmetrics_version(version: str | None = None) -> str:
    """The installed torchmetrics version, or a ``RuntimeError`` (one line) when it is outside
    :data:`TORCHMETRICS_SSIM_RANGE`."""

    import torchmetrics

    version = version or torchmetrics.__version__
    m = re.match(r"(\d+)\.(\d+)", version)
    (lo, hi), found = TORCHMETRICS_SSIM_RANGE, (int(m.group(1)), int(m.group(2))) if m else None
    if found is None or not lo <= found < hi:
        raise RuntimeError(
            f"ssim_torchmetrics names torchmetrics {lo[0]}.{lo[1]} <= version < {hi[0]}.{hi[1]} SSIM; "
            f"torchmetrics {version} is installed (its SSIM may differ): install a version in that range"
        )
    return version


class SSIMTorchmetrics(PairedFrameMetric):
    name = "ssim_torchmetrics"
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        version = check_torchmetrics_version()  # before anything is built: refuse an unpinned SSIM
        super().__init__(**kwargs)
        self.torchmetrics_version = version

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        # float64: torchmetrics' E[x^2] - E[x]^2 in float32 loses ~3e-5
        return structural_similarity_index_measure(
            _unit(generated).double(), _unit(reference).double(), data_range=1.0, reduction="none"
        )


class L1(PairedFrameMetric):
    name = "l1"
    higher_is_better = False

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        return (_unit(generated) - _unit(reference)).abs().mean(dim=(1, 2, 3))


# -- DisCo-compatible -------------------------------------------------------------------------------


def rgb_to_gray_opencv(rgb_uint8: Tensor) -> Tensor:
    """OpenCV ``cvtColor(BGR2GRAY)`` on 8-bit input: fixed-point ``(4899 R + 9617 G + 1868 B + 8192) >> 14``.

    ``rgb_uint8 (N, 3, H, W)`` uint8 -> ``(N, H, W)`` uint8."""

    x = rgb_uint8.to(torch.int64)
    y = (x[:, 0] * 4899 + x[:, 1] * 9617 + x[:, 2] * 1868 + (1 << 13)) >> 14
    return y.clamp(0, 255).to(torch.uint8)


def ssim_skimage_default(a: Tensor, b: Tensor, data_range: float = 255.0, win_size: int = 7) -> Tensor:
    """scikit-image ``structural_similarity(a, b)`` defaults for 2-D gray images, batched.

    ``a, b (N, H, W)`` -> ``(N,)`` float64. Uniform ``win_size`` window, sample covariance
    (``NP / (NP - 1)``), K1=0.01, K2=0.03; the mean is over the region that skimage keeps after
    cropping ``(win_size - 1) // 2`` pixels per side, which is exactly the valid-window region.
    """

    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"SSIM window {win_size} larger than the image {tuple(a.shape[-2:])}")
    x, y = a.double()[:, None], b.double()[:, None]  # (N, 1, H, W)

    def filt(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, win_size, stride=1)

    ux, uy = filt(x), filt(y)
    uxx, uyy, uxy = filt(x * x), filt(y * y), filt(x * y)
    n_p = win_size * win_size
    cov_norm = n_p / (n_p - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


class SSIMDisCo(PairedFrameMetric):
    name = "ssim_disco"
    higher_is_better = True

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        ga, gb = rgb_to_gray_opencv(quantize_uint8(generated)), rgb_to_gray_opencv(quantize_uint8(reference))
        return ssim_skimage_default(ga, gb)


class PSNRDisCo(PairedFrameMetric):
    name = "psnr_disco"
    higher_is_better = True

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        a, b = quantize_uint8(generated).to(torch.int64), quantize_uint8(reference).to(torch.int64)
        diff = (a - b) % 256  # numpy uint8 subtraction wraps
        sq = (diff * diff) % 256  # and so does uint8 ** 2
        mse = sq.double().mean(dim=(1, 2, 3))
        psnr = 20 * torch.log10(255.0 / mse.sqrt())
        return torch.where(mse == 0, torch.full_like(mse, 100.0), psnr)


class PSNRDisCo2024(PairedFrameMetric):
    name = "psnr_disco_2024"
    higher_is_better = True

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        a, b = quantize_uint8(generated).double(), quantize_uint8(reference).double()
        mse = (a - b).pow(2).mean(dim=(1, 2, 3))
        psnr = 20 * torch.log10(255.0 / mse.sqrt())
        return torch.where(mse == 0, torch.full_like(mse, 100.0), psnr)


class L1DisCo(PairedFrameMetric):
    name = "l1_disco"
    higher_is_better = False

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        a, b = quantize_uint8(generated).double(), quantize_uint8(reference).double()
        h, w = a.shape[-2:]
        return (a - b).abs().mean(dim=(1, 2, 3)) / float(h * w)


__all__ = [
    "L1",
    "PSNR",
    "SSIM",
    "L1DisCo",
    "PSNRDisCo",
    "PSNRDisCo2024",
    "PSNR_CAP_DB",
    "SSIMTorchmetrics",
    "TORCHMETRICS_SSIM_RANGE",
    "check_torchmetrics_version",
    "SSIMDisCo",
    "PairedFrameMetric",
    "quantize_uint8",
    "rgb_to_gray_opencv",
    "ssim_skimage_default",
    "ssim_wang",
]
