"""Metric featurisation throughput: FVD (I3D, videos/s), FID (Inception-v3, frames/s), LPIPS-Alex
(frame pairs/s), and the float64 Fréchet distance at 2048 dimensions (seconds).

Extractors are random-initialised (He-normal convolutions so activations stay O(1)): the cost of a
forward pass does not depend on the weight values, and no pretrained file is needed. Inputs follow
the metric conventions: FVD clips of 16 frames resized to 224x224 (state-dict I3D, external
preprocessing), FID frames 256x256 resized inside to 299x299, LPIPS 256x256 pairs.

``python benchmarks/bench_metrics.py [--profile cpu|gpu]`` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median_time, not_measured  # noqa: E402

PROFILES = {
    # batch sizes and repeats; the CPU profile is sized for a shared 2-core machine
    "cpu": dict(device="cpu", fvd_batch=1, fid_batch=8, lpips_batch=8, repeats=3),
    "gpu": dict(device="cuda", fvd_batch=8, fid_batch=64, lpips_batch=64, repeats=10),
}


def _lively(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.eval().requires_grad_(False)


def run(profile: str = "cpu") -> list[dict]:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    p = PROFILES[profile]
    device = torch.device(p["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "no CUDA device on this machine"
        return [
            not_measured("metrics/fvd_i3d_featurise", "gpu", "videos/s", why),
            not_measured("metrics/fid_inception_featurise", "gpu", "frames/s", why),
            not_measured("metrics/lpips_alex", "gpu", "pairs/s", why),
            not_measured("metrics/frechet_2048d", "gpu", "s", why),
        ]
    from dimo.eval.frechet import FrechetMetric
    from dimo.eval.i3d import I3DFeatures, InceptionI3d
    from dimo.eval.inception import FIDInceptionV3
    from dimo.eval.lpips import Backbone, LPIPSNet

    rows: list[dict] = []
    repeats = p["repeats"]
    g = torch.Generator().manual_seed(0)
    tag = f"{profile}, {device.type}, fp32, threads={torch.get_num_threads()}"

    with torch.no_grad():
        i3d = I3DFeatures("state_dict", preprocess="external", module=_lively(InceptionI3d(400))).to(device)
        clips = (torch.rand(p["fvd_batch"], 16, 3, 224, 224, generator=g) * 2 - 1).to(device)
        secs = median_time(lambda: i3d(clips), repeats=repeats, device=device)
        rows.append(dict(name="metrics/fvd_i3d_featurise", setting=f"{tag}, batch={p['fvd_batch']}, 16x224x224",
                         value=p["fvd_batch"] / secs, unit="videos/s", median_s=secs, repeats=repeats))  # fmt: skip

        inception = _lively(FIDInceptionV3()).to(device)
        frames = torch.randint(0, 256, (p["fid_batch"], 3, 256, 256), generator=g).float().to(device)
        secs = median_time(lambda: inception(frames), repeats=repeats, device=device)
        rows.append(dict(name="metrics/fid_inception_featurise", setting=f"{tag}, batch={p['fid_batch']}, 256->299",
                         value=p["fid_batch"] / secs, unit="frames/s", median_s=secs, repeats=repeats))  # fmt: skip

        lpips = LPIPSNet("alex", backbone=_lively(Backbone("alex"))).to(device)
        a = (torch.rand(p["lpips_batch"], 3, 256, 256, generator=g) * 2 - 1).to(device)
        b = (torch.rand(p["lpips_batch"], 3, 256, 256, generator=g) * 2 - 1).to(device)
        secs = median_time(lambda: lpips(a, b), repeats=repeats, device=device)
        rows.append(dict(name="metrics/lpips_alex", setting=f"{tag}, batch={p['lpips_batch']}, 256x256",
                         value=p["lpips_batch"] / secs, unit="pairs/s", median_s=secs, repeats=repeats))  # fmt: skip

    fd = FrechetMetric(2048).to(device)
    feats = torch.randn(4200, 2048, generator=g, dtype=torch.float64)
    fd.update(feats[:2100].to(device), feats[2100:].to(device) + 0.1)
    secs = median_time(lambda: fd.compute(), repeats=1, warmup=0, device=device)
    rows.append(dict(name="metrics/frechet_2048d", setting=f"{tag}, float64 Cholesky + eigvalsh, 2100 vs 2100 samples",
                     value=secs, unit="s", median_s=secs, repeats=1))  # fmt: skip
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    print(json.dumps(run(parser.parse_args().profile), indent=2))
