"""The evaluate CLI under ``torchrun --nproc_per_node 2`` (CPU, gloo) gives exactly the single-process
report, and only rank 0 writes; a re-run reads every feature from the cache; sample counts are checked
before anything is featurised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dimo.eval.distribution import FVD
from dimo.eval.harness import EvalConfig, run_evaluation, write_video
from dimo.eval.pixel import PSNR

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_videomae import _tiny_videomae  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _toy_dirs(toy_root, tmp_path):
    """generated = each toy view with noise, reference = the view itself (mp4, 12 frames 32x32)."""

    from dimo.eval.harness import read_video

    g = torch.Generator().manual_seed(0)
    for i, p in enumerate(sorted(toy_root.glob("clips/*/view_*.mp4"))[:5]):  # 5 items: an uneven split
        v = read_video(p)
        for side, video in (("ref", v), ("gen", (v + 0.1 * torch.randn(v.shape, generator=g)).clamp(-1, 1))):
            (tmp_path / side).mkdir(exist_ok=True)
            write_video(tmp_path / side / f"item{i}.mp4", video)
    return tmp_path / "gen", tmp_path / "ref"


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(toy_root, tmp_path):
    gen, ref = _toy_dirs(toy_root, tmp_path)
    _tiny_videomae(tmp_path / "vm")
    args = ["--generated", str(gen), "--reference", str(ref), "--metrics", "psnr", "ssim", "l1_disco",
            "fvd_videomae", "--videomae-weights", str(tmp_path / "vm"), "--allow-rank-deficient",
            "--bootstrap", "20", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "dimo.cli", "evaluate", *args, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "dimo.cli", "evaluate", *args, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["metrics"] == two["metrics"]  # exactly equal, every metric
    for k in one["details"]:
        assert one["details"][k] == two["details"][k], k  # counts, intervals, hashes
    assert (tmp_path / "one" / "per_video.csv").read_text() == (
        tmp_path / "two" / "per_video.csv"
    ).read_text()
    assert run.stdout.count("wrote ") == 1  # rank 0 alone writes and prints
    assert not list((tmp_path / "two").glob(".*.tmp"))


def test_feature_cache_and_counts_checked_first(toy_root, tmp_path):
    gen, ref = _toy_dirs(toy_root, tmp_path)

    class MeanStd(torch.nn.Module):
        calls = 0

        def forward(self, clips):  # (B, T, 3, H, W) -> (B, 2)
            MeanStd.calls += 1
            return torch.stack([clips.mean(dim=(1, 2, 3, 4)), clips.std(dim=(1, 2, 3, 4))], dim=1)

    def fvd(frames: int = 8) -> FVD:
        return FVD(num_frames=frames, extractor=MeanStd(), feature_dim=2)

    cfg = EvalConfig(metrics=["fvd", "psnr"], cache_dir=str(tmp_path / "cache"), bootstrap=10)
    first = run_evaluation(gen, ref, cfg, metrics={"fvd": fvd(), "psnr": PSNR()}, progress=False)
    assert first.cache == {"hits": 0, "misses": 10} and MeanStd.calls == 10
    d = first.details["fvd_8f"]
    assert d["n_videos"] == 5 and d["n_samples"] == 5 and d["sample_unit"] == "clips"
    # half of 5 videos is 2 clips of 2-d features: no valid half-sample distance, so no interval (said so)
    assert "ci_low" not in d and "half of each set" in d["ci_note"]
    assert first.details["psnr"]["n_frames"] == 60 and first.details["psnr"]["std"] > 0
    MeanStd.calls = 0
    second = run_evaluation(gen, ref, EvalConfig(metrics=["fvd"], cache_dir=str(tmp_path / "cache")),
                            metrics={"fvd": fvd()}, progress=False)  # fmt: skip
    assert MeanStd.calls == 0 and second.cache == {"hits": 10, "misses": 0}
    assert second.values["fvd_8f"] == first.values["fvd_8f"]
    # 13-frame clips do not fit 12-frame videos: an error naming them, before any featurising
    with pytest.raises(ValueError, match=r"fvd_13f: 5 video\(s\) too short"):
        run_evaluation(gen, ref, EvalConfig(metrics=["fvd"]), metrics={"fvd": fvd(13)}, progress=False)
    assert MeanStd.calls == 0
