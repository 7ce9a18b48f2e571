"""Two CPU processes (gloo) give the same numbers as one: metric states are sum-reduced, the harness
shards items over ranks (including an uneven split)."""

from __future__ import annotations

import json
import os
import socket
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dimo.eval.distribution import FVD
from dimo.eval.frechet import FrechetMetric
from dimo.eval.harness import EvalConfig, evaluate
from dimo.eval.pixel import PSNR
from dimo.eval.pose import PoseMetrics


class _MeanStd(torch.nn.Module):
    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W) -> (B, 2)
        return torch.stack([clips.mean(dim=(1, 2, 3, 4)), clips.std(dim=(1, 2, 3, 4))], dim=1)


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "feats_a": torch.randn(37, 3, generator=g, dtype=torch.float64),
        "feats_b": torch.randn(23, 3, generator=g, dtype=torch.float64) + 0.5,
        "img_a": torch.rand(5, 3, 8, 8, generator=g) * 2 - 1,
        "img_b": torch.rand(5, 3, 8, 8, generator=g) * 2 - 1,
        "pose_a": torch.randn(5, 3, 22, 3, generator=g),
        "pose_b": torch.randn(5, 3, 22, 3, generator=g),
    }


def _score(rank: int, world: int, gen_dir: str, ref_dir: str) -> dict[str, float]:
    d = _data()
    fd, psnr, pose = FrechetMetric(3), PSNR(), PoseMetrics()
    # uneven, interleaved shards of every input
    fd.update(d["feats_a"][rank::world], d["feats_b"][rank::world])
    psnr.update(d["img_a"][rank::world], d["img_b"][rank::world])
    pose.update(d["pose_a"][rank::world], d["pose_b"][rank::world])
    out = {"fd": fd.compute().item(), "psnr": psnr.compute().item()}
    out.update({k: v.item() for k, v in pose.compute().items()})
    fvd = FVD(num_frames=3, extractor=_MeanStd(), feature_dim=2, allow_rank_deficient=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.update(
            evaluate(
                gen_dir,
                ref_dir,
                EvalConfig(metrics=["psnr", "fvd"]),
                metrics={"psnr": PSNR(), "fvd": fvd},
                progress=False,
            )
        )
    return out


def _worker(rank: int, world: int, port: int, gen_dir: str, ref_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _score(rank, world, gen_dir, ref_dir)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    for side in ("gen", "ref"):
        for i in range(3):  # 3 items over 2 ranks: an uneven split
            folder = tmp_path / side / f"item{i}"
            folder.mkdir(parents=True)
            frames = torch.randint(0, 256, (4, 12, 12, 3), generator=g, dtype=torch.uint8).numpy()
            for j, f in enumerate(frames):
                Image.fromarray(f).save(folder / f"{j}.png")
    single = _score(0, 1, str(tmp_path / "gen"), str(tmp_path / "ref"))
    # fork: the children reuse the imported modules (spawn would re-import torch & co: tens of seconds)
    args = (2, _free_port(), str(tmp_path / "gen"), str(tmp_path / "ref"), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=2, start_method="fork")
    for rank in range(2):
        multi = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(multi) == set(single)
        for key, value in single.items():
            assert abs(multi[key] - value) <= 1e-9 * max(1.0, abs(value)), (rank, key, multi[key], value)
