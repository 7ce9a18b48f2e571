"""The evaluate harness: mp4 / frame-folder items matched by name, metrics.json + markdown, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dimo.eval.distribution import FVD
from dimo.eval.harness import EvalConfig, evaluate, read_video, write_video
from dimo.eval.pixel import PSNR, L1DisCo


def _save_frames(folder, video: torch.Tensor) -> None:
    folder.mkdir(parents=True)
    arr = ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, f in enumerate(arr):
        Image.fromarray(f).save(folder / f"{i:04d}.png")


def _quantised(video: torch.Tensor) -> torch.Tensor:
    return ((video + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


@pytest.fixture
def dirs(tmp_path, rng):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    videos = {}
    for name in ("clip_a", "clip_b"):
        r = torch.rand(6, 3, 16, 16, generator=rng) * 2 - 1
        g = (r + 0.1 * torch.randn(r.shape, generator=rng)).clamp(-1, 1)
        _save_frames(gen / name, g)
        _save_frames(ref / name, r)
        videos[name] = (_quantised(g), _quantised(r))
    return gen, ref, videos


def test_mp4_roundtrip_via_pyav(tmp_path, rng):
    smooth = torch.linspace(-0.8, 0.8, 32).view(1, 1, 1, 32).expand(5, 3, 32, 32).clone()
    write_video(tmp_path / "v.mp4", smooth)
    back = read_video(tmp_path / "v.mp4")
    assert back.shape == (5, 3, 32, 32)
    assert (back - smooth).abs().mean().item() < 0.05


def test_cli_writes_json_and_markdown(dirs, tmp_path, capsys):
    from dimo.cli import main

    gen, ref, videos = dirs
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--generated", str(gen), "--reference", str(ref), "--metrics", "psnr", "l1_disco",
              "--out", str(out), "--no-progress"])  # fmt: skip
    assert exit_info.value.code == 0
    results = json.loads((out / "metrics.json").read_text())
    psnr, l1 = PSNR(), L1DisCo()
    for g, r in videos.values():
        psnr.update(g[None], r[None])
        l1.update(g[None], r[None])
    assert results["metrics"]["psnr"] == pytest.approx(psnr.compute().item(), rel=1e-6)
    assert results["metrics"]["l1_disco"] == pytest.approx(l1.compute().item(), rel=1e-6)
    assert results["config"]["metrics"] == ["psnr", "l1_disco"]
    table = (out / "metrics.md").read_text()
    assert "| psnr |" in table and "| l1_disco |" in table
    assert "| psnr |" in capsys.readouterr().out


def test_unmatched_names_and_unknown_metrics_fail_clearly(dirs, tmp_path):
    gen, ref, _ = dirs
    _save_frames(gen / "orphan", torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="orphan"):
        evaluate(gen, ref, EvalConfig(metrics=["psnr"]), progress=False)
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        evaluate(gen, ref, EvalConfig(metrics=["nope"]), progress=False)


def test_distribution_metric_and_reference_statistics(dirs, tmp_path):
    gen, ref, videos = dirs

    class MeanStd(torch.nn.Module):
        def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W) -> (B, 2)
            return torch.stack([clips.mean(dim=(1, 2, 3, 4)), clips.std(dim=(1, 2, 3, 4))], dim=1)

    def fvd() -> FVD:
        return FVD(num_frames=4, extractor=MeanStd(), feature_dim=2, allow_rank_deficient=True)

    cfg = EvalConfig(metrics=["fvd"], reference_stats=str(tmp_path / "stats"))
    with pytest.warns(UserWarning, match="singular"):
        first = evaluate(gen, ref, cfg, metrics={"fvd": fvd()}, progress=False)
    assert list(first) == ["fvd_4f"]
    direct = fvd()
    direct.update(torch.stack([g for g, _ in videos.values()]), torch.stack([r for _, r in videos.values()]))
    with pytest.warns(UserWarning):
        assert first["fvd_4f"] == pytest.approx(direct.compute().item(), rel=1e-5)
    stats = np.load(tmp_path / "stats" / "fvd_4f.npz")
    assert stats["mu"].shape == (2,) and int(stats["n"]) == 2
    # second run: the reference set is not featurised again, the value is the same
    with pytest.warns(UserWarning):
        second = evaluate(gen, ref, cfg, metrics={"fvd": fvd()}, progress=False)
    assert second["fvd_4f"] == pytest.approx(first["fvd_4f"], rel=1e-9)


def test_reference_statistics_of_another_set_are_refused(dirs, tmp_path):
    gen, ref, _ = dirs

    class Mean(torch.nn.Module):
        def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W) -> (B, 1)
            return clips.mean(dim=(1, 2, 3, 4))[:, None]

    cfg = EvalConfig(metrics=["fvd"], reference_stats=str(tmp_path / "stats"))
    evaluate(
        gen, ref, cfg, metrics={"fvd": FVD(num_frames=2, extractor=Mean(), feature_dim=1)}, progress=False
    )
    other = tmp_path / "other_ref"
    other.mkdir()
    for item in ref.iterdir():
        (other / item.name).symlink_to(item, target_is_directory=True)
    with pytest.raises(ValueError, match="another reference set"):
        evaluate(
            gen,
            other,
            cfg,
            metrics={"fvd": FVD(num_frames=2, extractor=Mean(), feature_dim=1)},
            progress=False,
        )
