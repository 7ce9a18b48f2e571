"""FID / FVD / FID-VID pipelines end to end with random-initialised weights written to temp files in
each accepted format (state dict, wrapped state dict, TorchScript), and the missing-file errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dimo.eval.distribution import FID, FIDVID, FVD, to_uint8_range
from dimo.eval.frechet import FrechetMetric
from dimo.eval.i3d import I3DFeatures, InceptionI3d
from dimo.eval.inception import FID_INCEPTION_WEIGHTS, FIDInceptionV3, resize_bilinear_tf1
from dimo.eval.resnet3d import KINETICS_MEAN_255, ResNet3D50, ResNet3DFeatures
from dimo.eval.weights import WEIGHTS_ENV, MissingWeightsError


def _videos(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g) * 2 - 1


def _lively(net: nn.Module) -> nn.Module:
    """He-normal conv weights so random activations stay O(1) through the depth (PyTorch's default
    init shrinks them to ~1e-6 at the top of Inception, into slow denormal arithmetic)."""

    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.eval()


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    net = _lively(FIDInceptionV3())
    path = tmp_path_factory.mktemp("fid") / FID_INCEPTION_WEIGHTS
    # older files carry no BatchNorm num_batches_tracked: they must load all the same
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return net, path


def test_tf1_bilinear_resize_matches_hand_computation():
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    # TF1 (align_corners=False, no half-pixel): src = i * in/out = 0, .5, 1, 1.5 -> clamps at the edge
    row = torch.tensor([0.0, 5.0, 10.0, 10.0])
    expected = torch.stack([row, row + 10, row + 20, row + 20])
    assert torch.allclose(resize_bilinear_tf1(x, (4, 4))[0, 0], expected)


def _fid_inputs(rng):
    return _videos(rng, 2, 1, 3, 24, 24), _videos(rng, 2, 1, 3, 24, 24) * 0.3


def test_fid_pipeline_accumulates_the_extractor_features(inception_file, rng):
    net, path = inception_file
    fid = FID(weights=path.parent, allow_rank_deficient=True)  # a directory: default file name inside
    gen, _ = _fid_inputs(rng)
    fid.update(gen, None)
    with torch.no_grad():
        fg = net(to_uint8_range(gen.reshape(-1, 3, 24, 24)))  # frames pooled as images
    assert fg.shape == (2, 2048) and fg.abs().mean() > 1e-3
    assert torch.allclose(fid.fake_sum, fg.double().sum(0), rtol=1e-4, atol=1e-6)
    assert torch.allclose(fid.fake_outer, fg.double().T @ fg.double(), rtol=1e-4, atol=1e-6)
    assert int(fid.fake_n) == 2 and int(fid.real_n) == 0
    # the extractor is not part of the metric's state dict (kept out of Lightning checkpoints)
    assert not any(k.startswith("extractor") for k in fid.state_dict())


@pytest.mark.slow
def test_fid_value_end_to_end(inception_file, rng):
    """The full 2048-d distance (two float64 2048x2048 eigendecompositions: ~10 s on 2 busy cores)."""

    net, path = inception_file
    fid = FID(weights=path, allow_rank_deficient=True)
    gen, ref = _fid_inputs(rng)
    fid.update(gen, ref)
    with torch.no_grad():
        fg, fr = (net(to_uint8_range(v.reshape(-1, 3, 24, 24))) for v in (gen, ref))
    direct = FrechetMetric(2048, allow_rank_deficient=True)
    direct.update(fg, fr)
    with pytest.warns(UserWarning):
        value = fid.compute().item()
    with pytest.warns(UserWarning):
        assert value == pytest.approx(direct.compute().item(), rel=1e-4)
    assert value > 0


def test_weight_files_are_checked_strictly(inception_file, tmp_path):
    _, path = inception_file
    sd = torch.load(path)
    sd["Mixed_9z.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="Mixed_9z.weight"):
        FIDInceptionV3.from_file(tmp_path / "extra.pth")
    del sd["Mixed_9z.weight"], sd["Mixed_7c.branch_pool.conv.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.conv.weight"):
        FIDInceptionV3.from_file(tmp_path / "missing.pth")


def test_missing_weight_files_name_the_file_and_place(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError, match=r"pt_inception-2015-12-05-6726825d\.pth.*" + str(tmp_path)):
        FID(weights=tmp_path)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "wdir"))
    with pytest.raises(MissingWeightsError, match=r"i3d_torchscript\.pt.*wdir.*DIMO_WEIGHTS_DIR"):
        FVD()
    with pytest.raises(MissingWeightsError, match=r"i3d_pretrained_400\.pt"):
        FVD(weights_format="state_dict")
    with pytest.raises(MissingWeightsError, match=r"resnet-50-kinetics\.pth"):
        FIDVID()


class _ProbeDetector(nn.Module):
    """Stands in for the StyleGAN-V TorchScript: its 'features' expose what it was given."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ):
        b = x.shape[0]
        flat = x.reshape(b, -1)
        stats = [flat.mean(1), flat.amax(1), flat.amin(1), torch.full((b,), float(x.shape[2]))]
        stats += [torch.full((b,), float(x.shape[-1])), torch.full((b,), float(rescale) + 2 * float(resize))]
        return torch.stack(stats, dim=1)


def test_fvd_torchscript_conventions(tmp_path, rng):
    torch.jit.save(torch.jit.script(_ProbeDetector()), str(tmp_path / "i3d_torchscript.pt"))
    videos = _videos(rng, 2, 20, 3, 16, 24)
    internal = I3DFeatures("torchscript", tmp_path)(videos[:, :16])
    assert internal[:, 5].tolist() == [3.0, 3.0]  # rescale=True, resize=True
    assert internal[:, 1].max() > 200 and internal[:, 2].min() >= 0  # 0..255 values
    assert internal[:, 4].tolist() == [24.0, 24.0]  # native size: the detector resizes itself
    external = I3DFeatures("torchscript", tmp_path, preprocess="external")(videos[:, :16])
    assert external[:, 5].tolist() == [0.0, 0.0]
    assert external[:, 4].tolist() == [224.0, 224.0] and external[:, 1].max() <= 1.0 + 1e-6
    fvd = FVD(
        num_frames=8,
        frame_stride=2,
        weights=tmp_path / "i3d_torchscript.pt",
        feature_dim=6,
        allow_rank_deficient=True,
    )
    assert fvd.name == "fvd_8f_s2"
    assert fvd.clip(videos).shape == (2, 8, 3, 16, 24)
    assert torch.equal(fvd.clip(videos)[:, 1], videos[:, 2])
    fvd.update(videos, videos)
    with pytest.warns(UserWarning):
        assert abs(fvd.compute().item()) < 1e-6
    with pytest.raises(ValueError, match="T >= 15"):
        fvd.update(videos[:, :10], None)


def test_fvd_pytorch_i3d_state_dict(tmp_path, rng):
    net = _lively(InceptionI3d(400))
    torch.save(net.state_dict(), tmp_path / "i3d_pretrained_400.pt")
    assert "Mixed_5c.b3b.conv3d.weight" in net.state_dict() and "logits.conv3d.bias" in net.state_dict()
    fvd = FVD(num_frames=9, weights_format="state_dict", weights=tmp_path, allow_rank_deficient=True)
    video = _videos(rng, 1, 10, 3, 20, 20)
    # the features are the loaded network on the externally preprocessed 224x224 clip
    with torch.no_grad():
        x = torch.nn.functional.interpolate(
            video[:, :9].reshape(-1, 3, 20, 20), size=(224, 224), mode="bilinear", align_corners=False
        )
        direct = net(x.reshape(1, 9, 3, 224, 224).permute(0, 2, 1, 3, 4)).double()
    assert direct.shape == (1, 400) and direct.abs().mean() > 1e-3
    np.savez(tmp_path / "ref.npz", mu=direct[0].numpy(), sigma=np.zeros((400, 400)), n=2)
    fvd.load_reference(tmp_path / "ref.npz")
    fvd.update(torch.cat([video, video]), None)
    assert torch.allclose(fvd.fake_sum, 2 * direct[0], rtol=1e-4, atol=1e-4)
    with pytest.warns(UserWarning):
        assert abs(fvd.compute().item()) < 1e-6 * max(1.0, direct.pow(2).sum().item())
    with pytest.raises(ValueError, match="at least 9 frames"):
        net(torch.zeros(1, 3, 8, 224, 224))


def test_fid_vid_wrapped_checkpoint_and_clip_averaging(tmp_path, rng):
    net = _lively(ResNet3D50(sample_size=32, sample_duration=4))
    wrapped = {
        "state_dict": {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    }
    torch.save(wrapped, tmp_path / "resnet-50-kinetics.pth")
    feats = ResNet3DFeatures(tmp_path, sample_size=32, sample_duration=4)
    videos = _videos(rng, 2, 6, 3, 32, 32)
    out = feats(videos)
    # by hand: 0..255, mean-subtracted, two clips (second padded with the last frame), averaged
    x = to_uint8_range(videos) - torch.tensor(KINETICS_MEAN_255).view(1, 1, 3, 1, 1)
    x = torch.cat([x, x[:, -1:].expand(2, 2, 3, 32, 32)], dim=1)
    with torch.no_grad():
        clips = net(x.reshape(4, 4, 3, 32, 32).permute(0, 2, 1, 3, 4)).reshape(2, 2, -1)
    assert torch.allclose(out, clips.mean(1), rtol=1e-4, atol=1e-5)
    metric = FIDVID(sample_duration=4, sample_size=32, extractor=feats, allow_rank_deficient=True)
    metric.update(videos, None)
    assert torch.allclose(metric.fake_sum, out.double().sum(0), rtol=1e-4, atol=1e-5)
    assert int(metric.fake_n) == 2  # one feature per video, not per clip
