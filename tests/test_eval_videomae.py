"""Content-debiased FVD: local VideoMAE weights (strict load, clear error), and on toy videos with their
frames shuffled in time the VideoMAE score moves clearly more than I3D FVD."""

from __future__ import annotations

import json

import pytest
import torch

from dimo.eval.distribution import DisCoI3DFeatures, FVDDisCo, FVDVideoMAE
from dimo.eval.frechet import frechet_distance, mean_cov
from dimo.eval.harness import read_video
from dimo.eval.weights import MissingWeightsError


def _tiny_videomae(folder, seed: int = 0):
    from safetensors.torch import save_file
    from transformers import VideoMAEConfig

    from dimo.eval.videomae import VideoMAEFeatures

    cfg = VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=8, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, use_mean_pooling=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = VideoMAEFeatures(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["classifier.weight"] = torch.zeros(3, 32)  # a classification checkpoint's head: allow-listed
    save_file(state, str(folder / "model.safetensors"))
    return model


def test_videomae_weights_are_local_and_strict(tmp_path):
    with pytest.raises(MissingWeightsError, match="config.json"):
        FVDVideoMAE(tmp_path / "nowhere")
    ref = _tiny_videomae(tmp_path / "vm")
    metric = FVDVideoMAE(tmp_path / "vm", allow_rank_deficient=True)
    assert metric.name == "fvd_videomae_8f" and metric.feature_dim == 32
    x = torch.rand(2, 9, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        # cd-FVD's path: 8-bit / 255, bilinear (align_corners=False) to 32, the first 8 frames
        u = ((x[:, :8] + 1) * 127.5).round().clamp(0, 255) / 255
        u = torch.nn.functional.interpolate(u.reshape(-1, 3, 40, 40), size=(32, 32), mode="bilinear")
        h = ref.videomae(pixel_values=u.reshape(2, 8, 3, 32, 32)).last_hidden_state
        expected = ref.fc_norm(h.mean(1))
    assert torch.allclose(metric.features(x), expected, atol=1e-5)
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "vm" / "model.safetensors"))
    state.pop("fc_norm.weight")
    save_file(state, str(tmp_path / "vm" / "model.safetensors"))
    with pytest.raises(ValueError, match="fc_norm.weight"):
        FVDVideoMAE(tmp_path / "vm")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="with random weights the claim does not hold: I3D FVD moves more under every fair design tried "
    "(34 videos x 16 frames, same seeds, both default or both Kaiming init, FD / tr(cov), FD / split-half "
    "FD, per-video displacement): VideoMAE 0.0009-0.010 vs I3D 0.020-0.062 (FD / tr cov); here 0.0086 vs "
    "0.037. The paper's evidence uses pretrained VideoMAE-v2 weights, not available here",
)
def test_shuffled_frames_move_videomae_fvd_more_than_i3d(toy_root, tmp_path):
    """Fair by construction: both extractors have random weights (seeded) and see the same 8-frame toy
    videos; each score is the Fréchet distance between the shuffled and the original set divided by the
    trace of the original set's feature covariance, so the feature scale of either network cancels."""

    videos = [read_video(p)[:8] for p in sorted(toy_root.glob("clips/*/view_*.mp4"))][:6]
    g = torch.Generator().manual_seed(0)
    shuffled = [v[torch.randperm(8, generator=g)] for v in videos]
    _tiny_videomae(tmp_path / "vm")
    vm = FVDVideoMAE(tmp_path / "vm", allow_rank_deficient=True)
    from dimo.eval.i3d import InceptionI3d

    torch.manual_seed(0)
    i3d = InceptionI3d(variant="disco").eval()
    for m in i3d.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    fvd = FVDDisCo(extractor=DisCoI3DFeatures(module=i3d), allow_rank_deficient=True)

    def moved(metric) -> float:
        with torch.no_grad():
            a = torch.cat([metric.features(v[None]) for v in videos]).double()
            b = torch.cat([metric.features(v[None]) for v in shuffled]).double()
        ones = torch.tensor(float(len(a)))
        mu_a, cov_a = mean_cov(ones, a.sum(0), a.T @ a)
        mu_b, cov_b = mean_cov(ones, b.sum(0), b.T @ b)
        return float(frechet_distance(mu_b, cov_b, mu_a, cov_a) / cov_a.trace())

    debiased, i3d_score = moved(vm), moved(fvd)
    print(f"normalised FD shuffled-vs-original: videomae {debiased:.4g}, i3d {i3d_score:.4g}")
    assert debiased > 3 * i3d_score, (debiased, i3d_score)
