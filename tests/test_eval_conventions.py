"""Each named convention against an independent implementation on real toy videos: scikit-image (SSIM,
PSNR), numpy transcriptions of DisCo's script lines, clean-fid's resizer (the package when installed,
else its transcription), and a formula check of DisCo's I3D variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dimo.eval.harness import read_video
from dimo.eval.pixel import (
    PSNR,
    SSIM,
    L1DisCo,
    PSNRDisCo,
    PSNRDisCo2024,
    SSIMDisCo,
    SSIMTorchmetrics,
    quantize_uint8,
)
from dimo.eval.resize import pil_bicubic_resize

skimage_metrics = pytest.importorskip("skimage.metrics")


@pytest.fixture(scope="module")
def toy_pairs(toy_root):
    """(generated, reference) uint8 video pairs (T, H, W, 3): each toy view against the next view."""

    videos = [read_video(p) for p in sorted(toy_root.glob("clips/*/view_*.mp4"))]
    u8 = [quantize_uint8(v).permute(0, 2, 3, 1).numpy() for v in videos]
    return [(u8[i], u8[i + 1]) for i in range(0, len(u8) - 1, 3)]  # 5 pairs from different clips


def _to_model(u8: np.ndarray) -> torch.Tensor:  # (T, H, W, 3) uint8 -> (T, 3, H, W) in [-1, 1]
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1


def _per_frame(metric, g: np.ndarray, r: np.ndarray) -> np.ndarray:
    return metric.per_frame(_to_model(g), _to_model(r)).numpy()


def test_ssim_equals_skimage_wang_convention(toy_pairs):
    worst = 0.0
    for g, r in toy_pairs:
        ours = _per_frame(SSIM(), g, r)
        ref = [
            skimage_metrics.structural_similarity(
                a / 255.0,
                b / 255.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=-1,
            )  # fmt: skip
            for a, b in zip(g, r)
        ]
        worst = max(worst, float(np.abs(ours - np.array(ref)).max()))
    assert worst < 1e-6, worst  # measured 9.8e-8: float32 rounding of the [0, 1] input


def test_ssim_torchmetrics_is_pinned_and_differs_from_wang(toy_pairs):
    from scipy.ndimage import gaussian_filter

    g, r = toy_pairs[0]
    tm = _per_frame(SSIMTorchmetrics(), g, r)
    # torchmetrics >= 1.5: reflect padding ('mirror' in scipy), Gaussian 11/1.5, mean over every pixel
    expected = []
    for a, b in zip(g / 255.0, r / 255.0):
        vals = []
        for c in range(3):
            x, y = a[..., c], b[..., c]

            def f(t):
                return gaussian_filter(t, 1.5, truncate=3.5, mode="mirror")

            ux, uy = f(x), f(y)
            vx, vy, vxy = f(x * x) - ux**2, f(y * y) - uy**2, f(x * y) - ux * uy
            c1, c2 = 0.01**2, 0.03**2
            vals.append(
                (((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))).mean()
            )
        expected.append(np.mean(vals))
    assert np.abs(tm - np.array(expected)).max() < 1e-7  # measured 9.8e-9 (float32 input)
    wang = _per_frame(SSIM(), g, r)
    assert np.abs(tm - wang).mean() > 1e-3  # the border convention matters at 32 px


def test_psnr_conventions(toy_pairs):
    worst = worst24 = worst23 = 0.0
    for g, r in toy_pairs:
        ours = _per_frame(PSNR(), g, r)
        ref = [
            skimage_metrics.peak_signal_noise_ratio(b / 255.0, a / 255.0, data_range=1.0)
            for a, b in zip(g, r)
        ]
        worst = max(worst, float(np.abs(ours - np.array(ref)).max()))
        # DisCo 2024 (6190108): float64 MSE of the 8-bit frames, data range 255
        d24 = _per_frame(PSNRDisCo2024(), g, r)
        ref24 = [skimage_metrics.peak_signal_noise_ratio(b, a, data_range=255) for a, b in zip(g, r)]
        worst24 = max(worst24, float(np.abs(d24 - np.array(ref24)).max()))
        # DisCo 2023 (f53ce62): the script's own line on uint8 arrays, np.mean((a - b) ** 2), wraps
        d23 = _per_frame(PSNRDisCo(), g, r)
        ref23 = []
        for a, b in zip(g, r):
            mse = np.mean((a - b) ** 2)
            ref23.append(100.0 if mse == 0 else 20 * np.log10(255.0 / np.sqrt(mse)))
        worst23 = max(worst23, float(np.abs(d23 - np.array(ref23)).max()))
    # psnr: measured 1.2e-6 dB (float32 [-1, 1] input); the 8-bit DisCo forms: 7e-15
    assert worst < 1e-5 and worst24 < 1e-9 and worst23 < 1e-9, (worst, worst24, worst23)
    # a frame equal to its reference: capped at 100 dB, never +inf
    g, _ = toy_pairs[0]
    assert (_per_frame(PSNR(), g, g) == 100.0).all()
    m = PSNR()
    m.update(_to_model(g)[None], _to_model(g)[None])
    assert m.compute().item() == 100.0


def test_disco_ssim_and_l1_equal_the_script(toy_pairs):
    worst_s = worst_l = 0.0
    for g, r in toy_pairs:
        # cv2.imread gives BGR; cvtColor(BGR2GRAY) is this fixed-point formula on 8-bit data
        def gray(u8: np.ndarray) -> np.ndarray:
            x = u8.astype(np.int64)
            return ((x[..., 0] * 4899 + x[..., 1] * 9617 + x[..., 2] * 1868 + 8192) >> 14).astype(np.uint8)

        ref_s = [skimage_metrics.structural_similarity(gray(a), gray(b)) for a, b in zip(g, r)]
        worst_s = max(worst_s, float(np.abs(_per_frame(SSIMDisCo(), g, r) - np.array(ref_s)).max()))
        # l1_eval: |a - b| as float / (H * W), then np.mean over everything
        ref_l = [np.mean(np.absolute(a.astype("float") - b.astype("float")) / float(a.shape[0] * a.shape[1])) for a, b in zip(g, r)]  # fmt: skip
        worst_l = max(worst_l, float(np.abs(_per_frame(L1DisCo(), g, r) - np.array(ref_l)).max()))
    assert worst_s < 1e-12 and worst_l < 1e-15, (worst_s, worst_l)


def _clean_fid_resizer(clip: bool, size: int = 299):
    """clean-fid 0.1.35 ``make_resizer("PIL", False, "bicubic", size)`` (the package if installed); DisCo's
    copy is the same without ``.clip(0, 255)``."""

    if clip:
        try:
            from cleanfid.resize import make_resizer

            return make_resizer("PIL", False, "bicubic", (size, size))
        except ImportError:
            pass

    def func(x):  # transcription of cleanfid/resize.py, PIL branch, quantize_after=False
        def one(ch):
            img = Image.fromarray(ch.astype(np.float32), mode="F").resize(
                (size, size), resample=Image.BICUBIC
            )
            out = np.asarray(img)
            return (out.clip(0, 255) if clip else out).reshape(size, size, 1)

        return np.concatenate([one(x[:, :, i]) for i in range(3)], axis=2).astype(np.float32)

    return func


@pytest.mark.parametrize("clip", [True, False])
def test_pil_bicubic_resize_equals_clean_fid(toy_pairs, clip):
    frames = toy_pairs[0][0][:3]  # (3, H, W, 3) uint8
    ours = pil_bicubic_resize(torch.from_numpy(frames).permute(0, 3, 1, 2), (299, 299), clip=clip)
    ref = np.stack([_clean_fid_resizer(clip)(f) for f in frames]).transpose(0, 3, 1, 2)
    assert np.array_equal(ours.numpy(), ref)
    if not clip:  # DisCo keeps the bicubic overshoot: the two conventions really differ here
        assert ours.max() > 255 or ours.min() < 0


def test_fid_clean_feeds_the_extractor_clean_fid_frames(toy_pairs):
    from dimo.eval.distribution import FID

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x.mean(dim=(2, 3))  # (N, 3)

    g = toy_pairs[0][0][:2]
    for resize, clip in (("clean", True), ("disco", False)):
        seen.clear()
        fid = FID(extractor=Recorder(), feature_dim=3, resize=resize)
        assert fid.name == {"clean": "fid_clean", "disco": "fid_disco"}[resize]
        fid.update(_to_model(g)[None], None)
        ref = np.stack([_clean_fid_resizer(clip)(f) for f in g]).transpose(0, 3, 1, 2)
        assert np.array_equal(seen[0].numpy(), ref)


def test_disco_i3d_variant_formula(toy_pairs, tmp_path):
    """DisCo's I3D = the VideoGPT network with BatchNorm eps 1e-3 and logits of the (t, h, w) mean of
    Mixed_5c; and fvd_disco feeds the whole video, PIL bicubic to 224 (not clipped), in [-1, 1]."""

    from dimo.eval.distribution import DisCoI3DFeatures, FVDDisCo
    from dimo.eval.i3d import InceptionI3d

    torch.manual_seed(0)
    disco = InceptionI3d(variant="disco")
    for m in disco.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_var.uniform_(0.5, 1.5)
    disco.eval()
    torch.save(disco.state_dict(), tmp_path / "i3d_pretrained_400.pt")
    loaded = InceptionI3d.from_file(tmp_path, variant="disco")
    videogpt = InceptionI3d.from_file(tmp_path)
    assert {m.eps for m in loaded.modules() if isinstance(m, torch.nn.BatchNorm3d)} == {1e-3}

    g = toy_pairs[0][0][:4]  # 4 frames: the whole (short) video is one clip
    resized = torch.from_numpy(np.stack([_clean_fid_resizer(False, 224)(f) for f in g]).transpose(0, 3, 1, 2))
    x = (resized / 127.5 - 1).permute(1, 0, 2, 3)[None]  # (1, 3, 4, 224, 224)
    with torch.no_grad():
        # eps 1e-3 on variance v == eps 1e-5 on variance v + (1e-3 - 1e-5): the VideoGPT trunk, shifted
        for m in videogpt.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_var += 1e-3 - 1e-5
        trunk = videogpt.trunk(x)  # (1, 1024, T', 7, 7)
        w, b = loaded.logits.conv3d.weight[:, :, 0, 0, 0], loaded.logits.conv3d.bias
        expected = trunk.mean(dim=(2, 3, 4)) @ w.T + b
        metric = FVDDisCo(extractor=DisCoI3DFeatures(module=loaded), allow_rank_deficient=True)
        got = metric.features(_to_model(g)[None])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("version", ["1.4.3", "1.10.0", "2.0.1", "dev"])
def test_ssim_torchmetrics_refuses_an_unpinned_torchmetrics(monkeypatch, version):
    import re

    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    import torchmetrics

    from dimo.eval.pixel import TORCHMETRICS_SSIM_RANGE

    # the refused range is pyproject's pin
    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    pin = next(d for d in deps if d.startswith("torchmetrics"))
    (lo, hi) = TORCHMETRICS_SSIM_RANGE
    assert pin == f"torchmetrics>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}"
    SSIMTorchmetrics()  # the installed version is in range
    monkeypatch.setattr(torchmetrics, "__version__", version)
    with pytest.raises(RuntimeError, match=re.escape(f"torchmetrics {version} is installed")) as err:
        SSIMTorchmetrics()
    assert "\n" not in str(err.value)
    monkeypatch.setattr(torchmetrics, "__version__", "1.9.0")
    assert SSIMTorchmetrics().torchmetrics_version == "1.9.0"
