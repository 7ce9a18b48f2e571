"""Reports a paper table can cite: bias-corrected half-sample intervals for Fréchet distances (checked
against closed-form Gaussian distances), convention texts that state the clip length actually used,
SHA-256 of every weight file (LPIPS included), and multi-view FVD through the same checked, cached,
counted path as the other Fréchet metrics."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest
import torch

from dimo.eval.distribution import FIDVID, FVD, FVDVideoMAE
from dimo.eval.frechet import FrechetMetric
from dimo.eval.harness import (
    CONVENTIONS,
    EvalConfig,
    _frechet_value,
    convention,
    half_sample_interval,
    read_video,
    run_evaluation,
    write_results,
    write_video,
)
from dimo.eval.multiview import MultiViewFVD

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_torchrun import _toy_dirs  # noqa: E402
from test_eval_videomae import _tiny_videomae  # noqa: E402


class MeanStd(torch.nn.Module):
    """A 2-d clip feature (mean, std) that counts its calls."""

    calls = 0

    def forward(self, clips):  # (B, T, 3, H, W) -> (B, 2)
        MeanStd.calls += 1
        return torch.stack([clips.mean(dim=(1, 2, 3, 4)), clips.std(dim=(1, 2, 3, 4))], dim=1)


def test_half_sample_interval_covers_the_point_and_usually_the_true_distance():
    # generated ~ N(mu, diag(s)), reference ~ N(0, I): FD = |mu|^2 + sum(1 + s - 2 sqrt(s)) exactly
    d = 4
    mu = torch.tensor([0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    s = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    truth = float(mu.dot(mu) + (1 + s - 2 * s.sqrt()).sum())  # 0.5074
    covered, biases = 0, []
    m = FrechetMetric(d)

    def sample(g: torch.Generator, videos: int, frames: int) -> tuple[list, list]:
        gen = [
            mu + s.sqrt() * torch.randn(frames, d, generator=g, dtype=torch.float64) for _ in range(videos)
        ]
        ref = [torch.randn(frames, d, generator=g, dtype=torch.float64) for _ in range(videos)]
        return gen, ref

    for seed in range(20):
        gen, ref = sample(torch.Generator().manual_seed(seed), 40, 5)  # 40 videos x 5 frames per set
        point = _frechet_value(m, torch.cat(gen), torch.cat(ref))
        iv = half_sample_interval(m, gen, ref, 100, 0.95, seed)
        assert iv["ci_low"] <= point <= iv["ci_high"], (seed, point, iv)
        assert iv["n_draws"] == 100 and iv["half_videos"] == 20
        covered += iv["ci_low"] <= truth <= iv["ci_high"]
        biases.append(iv["bias"])
    assert covered >= 16, covered  # nominal 95%: measured 20/20 (39/40 over seeds 0..39)
    # the bias estimate matches the Monte-Carlo bias of the plug-in distance at 200 samples per set
    # (measured: 0.097 +- 0.0025 over 3000 draws; mean estimate 0.088 over 40 seeds)
    g = torch.Generator().manual_seed(1000)
    mc = [_frechet_value(m, *(torch.cat(x) for x in sample(g, 1, 200))) for _ in range(1000)]
    mc_bias = sum(mc) / len(mc) - truth
    mean_bias = sum(biases) / len(biases)
    assert mc_bias > 0.05 and abs(mean_bias - mc_bias) < 0.25 * mc_bias, (mean_bias, mc_bias)


def test_half_sample_interval_says_when_the_bias_exceeds_the_spread():
    # 16-d features, 200 samples per set: the plug-in value's bias is larger than its spread, so the
    # interval for the true distance lies below it (measured over 20 seeds: truth covered 20/20, the
    # point value 0/20; the old with-replacement percentile interval covered neither, 0/20)
    d = 16
    mu = torch.zeros(d, dtype=torch.float64)
    mu[0] = 0.5
    g = torch.Generator().manual_seed(0)
    gen = [mu + torch.randn(5, d, generator=g, dtype=torch.float64) for _ in range(40)]
    ref = [torch.randn(5, d, generator=g, dtype=torch.float64) for _ in range(40)]
    m = FrechetMetric(d)
    point = _frechet_value(m, torch.cat(gen), torch.cat(ref))
    iv = half_sample_interval(m, gen, ref, 100, 0.95, 0)
    assert iv["ci_low"] <= 0.25 <= iv["ci_high"] < point  # true distance |mu|^2 = 0.25
    assert "exceeds the sampling spread" in iv["note"]


def test_half_sample_interval_needs_enough_videos():
    m = FrechetMetric(2)
    few = [torch.randn(3, 2, dtype=torch.float64) for _ in range(3)]
    assert half_sample_interval(m, few, few, 10, 0.95, 0) is None
    assert half_sample_interval(m, few * 2, few * 2, 0, 0.95, 0) is None  # n = 0: off


def test_conventions_state_the_clip_length_in_use(tmp_path):
    def frame_counts(text: str) -> set[str]:
        return set(re.findall(r"(\d+)[- ](?:frame|view)", text))

    fvd = FVD(num_frames=8, extractor=MeanStd(), feature_dim=2)
    assert frame_counts(convention("fvd", fvd)) == {"8"}
    strided = convention("fvd", FVD(num_frames=4, frame_stride=3, extractor=MeanStd(), feature_dim=2))
    assert "4 frames, one every 3, from the first 10" in strided
    _tiny_videomae(tmp_path / "vm")
    vm = FVDVideoMAE(tmp_path / "vm", allow_rank_deficient=True)
    text = convention("fvd_videomae", vm)
    assert frame_counts(text) == {"8"} and "first 8 frames" in text and "tubelets of 2" in text

    class Clip4(MeanStd):
        sample_duration = 4

    assert frame_counts(convention("fid_vid", FIDVID(extractor=Clip4(), feature_dim=2))) == {"4"}
    fvd_v = MultiViewFVD("view", num_frames=3, extractor=MeanStd(), feature_dim=2)
    assert frame_counts(convention("fvd_v", fvd_v)) == {"3"} and "first 3 views" in convention("fvd_v", fvd_v)
    fvd_f = MultiViewFVD("time", num_frames=5, extractor=MeanStd(), feature_dim=2)
    assert frame_counts(convention("fvd_f", fvd_f)) == {"5"}
    # no fixed text claims a clip length: those that have one are templates filled from the metric
    for name, template in CONVENTIONS.items():
        if "{frames}" not in template:
            assert not frame_counts(template), name
            assert convention(name) == template
        else:
            with pytest.raises(ValueError, match="depends on its settings"):
                convention(name)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_report_hashes_every_weight_file(toy_root, tmp_path):
    from dimo.eval.lpips import Backbone, torchmetrics_lin_weights

    gen, ref = _toy_dirs(toy_root, tmp_path)
    wd = tmp_path / "weights"
    wd.mkdir()
    torch.manual_seed(0)
    alex = wd / "alexnet-owt-7be5be79.pth"
    torch.save(Backbone("alex").state_dict(), alex)
    _tiny_videomae(tmp_path / "vm")
    cfg = EvalConfig(
        metrics=["lpips_alex", "fvd_videomae", "psnr"], weights_dir=str(wd), videomae_weights=str(tmp_path / "vm"),
        allow_rank_deficient=True, bootstrap=10,
    )  # fmt: skip
    report = run_evaluation(gen, ref, cfg, progress=False)
    lp = report.details["lpips_alex"]
    lin = torchmetrics_lin_weights("alex")
    assert lp["weight_files"] == {str(alex): _sha(alex), str(lin): _sha(lin)}
    assert lp["weights_sha256"] == _sha(alex)
    vm = report.details["fvd_videomae_8f"]
    st, cj = tmp_path / "vm" / "model.safetensors", tmp_path / "vm" / "config.json"
    assert vm["weight_files"] == {str(st): _sha(st), str(cj): _sha(cj)} and vm["weights_sha256"] == _sha(st)
    assert "first 8 frames" in vm["convention"]
    assert "weight_files" not in report.details["psnr"]
    write_results(tmp_path / "out", report.values, cfg, report=report)
    md = (tmp_path / "out" / "metrics.md").read_text()
    for f in (alex, lin, st, cj):
        assert f"`{f}` {_sha(f)}" in md


def _grid_dirs(toy_root, tmp_path, n: int = 6):
    """n grids (4 views x 12 frames, 32 px) per side from the toy multiview clips: reference = a clip's
    views brightened by 0.03 x the grid index, generated = the same views with noise."""

    clips = sorted(
        {p.parent for p in toy_root.glob("clips/*/view_*.mp4") if len(list(p.parent.glob("view_*.mp4"))) == 4}
    )
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        views = sorted(clips[i % len(clips)].glob("view_*.mp4"))
        for j, p in enumerate(views):
            v = (read_video(p) + 0.03 * i).clamp(-1, 1)  # distinct content per grid (the cache keys on it)
            noisy = (v + (0.05 + 0.02 * i) * torch.randn(v.shape, generator=g)).clamp(-1, 1)
            for side, video in (("ref", v), ("gen", noisy)):
                (tmp_path / side / f"grid{i}").mkdir(parents=True, exist_ok=True)
                write_video(tmp_path / side / f"grid{i}" / f"view_{j}.mp4", video)
    return tmp_path / "gen", tmp_path / "ref"


def test_multiview_fvd_through_the_checked_cached_counted_path(toy_root, tmp_path):
    gen, ref = _grid_dirs(toy_root, tmp_path)

    def mets(v_frames: int = 3):
        return {
            "fvd_v": MultiViewFVD("view", num_frames=v_frames, extractor=MeanStd(), feature_dim=2),
            "fvd_f": MultiViewFVD("time", num_frames=8, extractor=MeanStd(), feature_dim=2),
        }

    cfg = EvalConfig(metrics=["fvd_v", "fvd_f"], grid=True, cache_dir=str(tmp_path / "cache"), bootstrap=30)
    MeanStd.calls = 0
    first = run_evaluation(gen, ref, cfg, metrics=mets(), progress=False)
    # 6 grids x 2 sides x 2 metrics featurised; extractor calls: fvd_v's 12 sequences per grid take two
    # batches of at most 8, fvd_f's 4 one
    assert first.cache == {"hits": 0, "misses": 24} and MeanStd.calls == 6 * 2 * (2 + 1)
    v, f = first.details["fvd_v_3f"], first.details["fvd_f_8f"]
    assert (v["n_videos"], v["item_unit"], v["n_samples"], v["sample_unit"]) == (
        6,
        "grids",
        72,
        "view sequences",
    )
    assert (f["n_videos"], f["n_samples"], f["sample_unit"]) == (6, 24, "time sequences")
    for d in (v, f):
        assert d["ci_low"] < d["ci_high"] and d["n_bootstrap"] == 30 and "bias_estimate" in d
        assert "weights_sha256" in d and d["weight_files"]
    assert "first 3 views" in v["convention"] and "first 8 frames" in f["convention"]
    # the same number as the metric object fed every grid directly
    from dimo.eval.harness import list_items, read_item

    direct = mets()
    for name in sorted(list_items(gen, grid=True)):
        gg = read_item(gen / name, True, None)[None]
        rr = read_item(ref / name, True, None)[None]
        for m in direct.values():
            m.update(gg, rr)
    assert first.values["fvd_v_3f"] == pytest.approx(float(direct["fvd_v"].compute()), rel=1e-9)
    assert first.values["fvd_f_8f"] == pytest.approx(float(direct["fvd_f"].compute()), rel=1e-9)
    # a re-run reads every feature from the cache
    MeanStd.calls = 0
    second = run_evaluation(gen, ref, cfg, metrics=mets(), progress=False)
    assert MeanStd.calls == 0 and second.cache == {"hits": 24, "misses": 0}
    assert second.values == first.values
    # 5-view clips do not fit 4-view grids: one error naming them, before any featurising
    with pytest.raises(ValueError, match=r"fvd_v_5f: 6 grid\(s\) too short: grid0 \(4 views x 12 frames\)"):
        run_evaluation(gen, ref, EvalConfig(metrics=["fvd_v"], grid=True), metrics={"fvd_v": mets(5)["fvd_v"]},
                       progress=False)  # fmt: skip
    assert MeanStd.calls == 0
