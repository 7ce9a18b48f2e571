"""Linear baselines for the toy SVD VAE's held-out PSNR (issue #11, docs/hvg.md).

``python benchmarks/toy_vae_linear_baseline.py`` synthesizes the toy SVD build's training and held-out
clips (:class:`dimo.toy.svd.ToySVDConfig` seeds) and prints the held-out PSNR of (a) a PCA code of
4x4x3 pixel patches fitted on the training clips, per number of components (16 = the tiny VAE's latent
size at 4x), and (b) average pooling + bilinear upsampling. What a code of the VAE's size can reach.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def patches(frames: torch.Tensor, p: int = 4) -> torch.Tensor:
    """(N, 3, H, W) -> (N * H/p * W/p, 3 * p * p)."""

    x = frames.unfold(2, p, p).unfold(3, p, p)  # (N, 3, H/p, W/p, p, p)
    return x.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * p * p)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / max((a - b).pow(2).mean().item(), 1e-14))


def main() -> None:
    from dimo.toy.svd import ToySVDConfig, load_clips

    torch.set_num_threads(1)
    cfg = ToySVDConfig()
    train = load_clips(cfg.data_seed, cfg.clips_per_source, cfg.num_frames, cfg.size)
    heldout = torch.cat(load_clips(cfg.heldout_seed, cfg.heldout_per_source, cfg.num_frames, cfg.size))
    x, y = patches(torch.cat(train)), patches(heldout)
    mu = x.mean(0)
    _, vecs = torch.linalg.eigh((x - mu).T @ (x - mu) / len(x))
    vecs = vecs.flip(1)  # largest eigenvalue first
    for k in (8, 12, 16, 24):
        basis = vecs[:, :k]
        rec = ((y - mu) @ basis @ basis.T + mu).clamp(-1, 1)
        print(f"PCA of 4x4x3 patches, {k} components: held-out PSNR {psnr(rec, y):.2f} dB")
    for p in (2, 4):
        rec = F.interpolate(F.avg_pool2d(heldout, p), scale_factor=p, mode="bilinear", align_corners=False)
        print(f"{p}x{p} average pooling + bilinear: held-out PSNR {psnr(rec, heldout):.2f} dB")


if __name__ == "__main__":
    main()
