"""Bone-map renderer throughput: frames/s vs resolution and number of ellipsoids, CPU (and GPU).

Renders HVG's dual bone maps (depth + normal, the training-time work) of a posed SMPL-X skeleton
seen by a ring of cameras. Ellipsoid counts other than the 54 bones are made by repeating bones
with jittered centres, which costs the caster exactly what real extra ellipsoids would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median_time, not_measured  # noqa: E402
from dimo.geometry import cameras, skeleton  # noqa: E402
from dimo.geometry.renderer import Ellipsoids, bone_ellipsoids, render_ellipsoids  # noqa: E402


def _scene(batch: int, num_ellipsoids: int, res: int, device: torch.device):
    joints = skeleton.rest_joints().to(device)[None].expand(batch, -1, -1)  # (B, 55, 3)
    ell = bone_ellipsoids(joints)
    reps = -(-num_ellipsoids // ell.center.shape[1])
    gen = torch.Generator().manual_seed(0)
    jitter = (torch.rand(batch, ell.center.shape[1] * reps, 3, generator=gen) - 0.5).to(device) * 0.05
    ell = Ellipsoids(
        ell.center.repeat(1, reps, 1)[:, :num_ellipsoids] + jitter[:, :num_ellipsoids],
        ell.axes.repeat(1, reps, 1, 1)[:, :num_ellipsoids],
        ell.radii.repeat(1, reps, 1)[:, :num_ellipsoids],
        ell.part.repeat(reps)[:num_ellipsoids],
    )
    angles = torch.linspace(0, 360, batch + 1)[:-1]
    eyes = torch.stack(
        [
            3.0 * torch.sin(torch.deg2rad(angles)),
            torch.full_like(angles, 1.0),
            3.0 * torch.cos(torch.deg2rad(angles)),
        ],
        -1,
    )
    R, t = cameras.look_at(eyes, torch.tensor([0.0, 0.9, 0.0]).expand(batch, 3))
    K = cameras.intrinsics(res, res, 40.0).expand(batch, 3, 3)
    return ell, K.to(device), R.to(device), t.to(device)


def _rows(device: torch.device, resolutions, counts, batch: int, repeats: int) -> list[dict]:
    rows = []
    for res in resolutions:
        for n in counts:
            scene = _scene(batch, n, res, device)
            sec = median_time(
                lambda scene=scene, res=res: render_ellipsoids(*scene, res, res),
                repeats=repeats,
                device=device,
            )
            rows.append(
                {
                    "name": f"bone maps {device.type}",
                    "setting": f"{res}x{res}, {n} ellipsoids, {batch} views",
                    "value": batch / sec,
                    "unit": "frames/s",
                    "median_s": sec,
                    "repeats": repeats,
                }
            )
    return rows


def run(profile: str = "cpu") -> list[dict]:
    torch.manual_seed(0)
    rows = _rows(torch.device("cpu"), [256, 512] if profile == "cpu" else [256, 512, 1024], [54, 108], 2, 3)
    by_res = [r for r in rows if r["setting"].endswith("54 ellipsoids, 2 views")]
    rows.append(
        {
            "name": "bone maps cpu vs resolution",
            "setting": "54 ellipsoids",
            "value": by_res[-1]["value"],
            "unit": "frames/s",
            "curve": {
                "x": [int(r["setting"].split("x")[0]) ** 2 for r in by_res],
                "y": [r["median_s"] for r in by_res],
                "xlabel": "pixels",
                "ylabel": "s per 2 views",
            },
        }
    )
    if torch.cuda.is_available():
        rows += _rows(torch.device("cuda"), [256, 512, 1024], [54, 108, 216], 16, 10)
    else:
        rows.append(
            not_measured("bone maps cuda", "256-1024, 54-216 ellipsoids", "frames/s", "no CUDA device")
        )
    return rows


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2))
