"""``python -m dimo.pose.train_toy --out pretrained/toy-detector``: build the toy 2D keypoint detector.

Deterministic from ``--seed``: toy clips are synthesised (synth seed ``1000 + seed``, so never the
default ``data/toy`` seed 0), decoded by the real video reader, labelled by projecting their exact 3D
joints, and a :class:`~dimo.pose.toy_detector.ToyHeatmapNet` is trained with a visibility-masked
spatial-softmax cross-entropy to normalised Gaussians (Adam, cosine schedule). It is then scored on held-out clips (synth seed 0, the
``data/toy`` seed, which training never sees): PCK@0.05 and mean pixel error for body and hand joints,
written to ``report.json`` in the folder with the wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dimo.pose.joints import TOY_BODY, TOY_HANDS, TOY_JOINTS
from dimo.pose.toy_data import load_keypoint_frames
from dimo.pose.toy_detector import PRESETS, ToyHeatmapNet, ToyKeypointDetector, gaussian_heatmaps

__all__ = ["TrainConfig", "build_toy_detector", "evaluate_detector", "main"]

HELD_OUT_SEED = 0


@dataclass
class TrainConfig:
    seed: int = 0
    preset: str = "toy"
    clips_per_source: int = 25
    frames: int = 20
    steps: int = 500
    batch_size: int = 16
    lr: float = 2e-3
    held_out_clips: int = 8  # per source
    threads: int = 1  # one thread: on a shared 2-core machine a second one spin-waits (measured 30x slower)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if min(self.clips_per_source, self.frames, self.steps, self.batch_size, self.held_out_clips) < 1:
            raise ValueError("clips_per_source, frames, steps, batch_size and held_out_clips must be >= 1")


def _synth(root: Path, seed: int, per_source: int, frames: int, size: int) -> dict[str, torch.Tensor]:
    from dimo.data.synth import synthesize
    from dimo.toy.data import synth_config

    synthesize(root, synth_config(seed, per_source, frames, size))
    return load_keypoint_frames(root)


def evaluate_detector(
    detector: ToyKeypointDetector, data: dict[str, torch.Tensor], alpha: float = 0.05
) -> dict:
    """PCK@alpha and mean pixel error of ``detector`` on ``load_keypoint_frames`` output (body, hands, all)."""

    uv, _ = detector.predict_smplx(data["frames"])
    ids = torch.tensor(TOY_JOINTS)
    pred, gt, valid = uv[:, ids], data["uv"][:, ids], data["valid"][:, ids]
    out = {"alpha": alpha, "frames": int(len(uv))}
    for name, ch in (("body", TOY_BODY), ("hands", TOY_HANDS), ("all", tuple(range(len(TOY_JOINTS))))):
        c = torch.tensor(ch)
        # the person size (PCK normaliser) always comes from all joints of the frame
        res = pck_subset(pred, gt, valid, c, alpha)
        out[name] = res
    return out


def pck_subset(pred, gt, valid, channels, alpha):
    """PCK over ``channels`` with the person size measured on all valid joints of each frame."""

    from dimo.pose.metrics import keypoint_errors

    dist, size = keypoint_errors(pred, gt, valid)
    v = valid[:, channels]
    d = dist[:, channels]
    n = int(v.sum())
    hit = (d <= alpha * size[:, None]) & v
    return {"pck": round(float(hit.sum()) / n, 4), "px": round(float(d[v].mean()), 3), "n": n}


def build_toy_detector(out: Path, cfg: TrainConfig, log=print) -> dict:
    """Train the detector and write ``out`` (config.json, model.safetensors, report.json); returns the report."""

    start = time.perf_counter()
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        size = PRESETS[cfg.preset].size
        with tempfile.TemporaryDirectory(prefix="dimo-toy-detector-") as tmp:
            train = _synth(Path(tmp) / "train", 1000 + cfg.seed, cfg.clips_per_source, cfg.frames, size)
            held = _synth(Path(tmp) / "held", HELD_OUT_SEED, cfg.held_out_clips, cfg.frames, size)
        data_s = time.perf_counter() - start
        log(
            f"data: {len(train['frames'])} train frames, {len(held['frames'])} held-out frames ({data_s:.0f} s)"
        )
        torch.manual_seed(cfg.seed)
        net = ToyHeatmapNet(PRESETS[cfg.preset])
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))
        )
        g = torch.Generator().manual_seed(cfg.seed)
        ids = torch.tensor(TOY_JOINTS)
        x_all = train["frames"].permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
        uv_all, valid_all = train["uv"][:, ids], train["valid"][:, ids]
        net.train()
        t0 = time.perf_counter()
        for step in range(cfg.steps):
            idx = torch.randint(len(x_all), (cfg.batch_size,), generator=g)
            x = x_all[idx].float() / 127.5 - 1
            target = gaussian_heatmaps(uv_all[idx], size, net.cfg.sigma).flatten(2)  # (B, J, S*S)
            target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
            w = valid_all[idx].float()  # (B, J)
            logp = net(x).flatten(2).log_softmax(-1)
            # spatial softmax cross-entropy per labelled joint (minus the target entropy: 0 at a perfect fit)
            ce = -(target * logp).sum(-1) + (target * target.clamp_min(1e-12).log()).sum(-1)  # (B, J)
            loss = (ce * w).sum() / w.sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 100 == 0 or step == cfg.steps - 1:
                log(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
        train_s = time.perf_counter() - t0
        det = ToyKeypointDetector(net.eval())
        report = {
            "held_out": evaluate_detector(det, held),
            "train_frames": int(len(x_all)),
            "held_out_synth_seed": HELD_OUT_SEED,
            "train_synth_seed": 1000 + cfg.seed,
            "config": cfg.__dict__,
            "parameters": sum(p.numel() for p in net.parameters()),
            "train_seconds": round(train_s, 1),
            "total_seconds": round(time.perf_counter() - start, 1),
        }
        det.save_pretrained(out)
        # the report scores the stored (fp16) weights, i.e. exactly what from_pretrained loads
        report["held_out"] = evaluate_detector(ToyKeypointDetector.from_pretrained(out), held)
        (Path(out) / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        return report
    finally:
        torch.set_num_threads(prev)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dimo.pose.train_toy", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("pretrained/toy-detector"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--clips-per-source", type=int, default=None)
    p.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    p.add_argument("--force", action="store_true", help="rebuild when the folder exists")
    args = p.parse_args(argv)
    if (args.out / "model.safetensors").is_file() and not args.force:
        print(f"{args.out} exists (pass --force to rebuild)")
        return 0
    cfg = TrainConfig(seed=args.seed, preset=args.preset)
    if args.steps is not None:
        cfg.steps = args.steps
    if args.clips_per_source is not None:
        cfg.clips_per_source = args.clips_per_source
    cfg.__post_init__()
    report = build_toy_detector(args.out, cfg)
    print(json.dumps(report["held_out"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
