"""Why does (or doesn't) HVG use its bone maps? Measurements on fixed validation batches (issue #11).

``python benchmarks/hvg_diagnose.py [--ckpt runs/hvg/.../last.ckpt] [--config experiments/hvg.yaml]``
prints a JSON report:

* ``vae``: reconstruction PSNR of the targets, over the whole frame and inside the bone-map mask (the
  person), i.e. whether the latent can hold the person at all;
* ``grad``: gradient norms of one training loss, per parameter group (pose modulator, its zero-init
  projection, the rest), and the pose residual's RMS against ``conv_in``'s output RMS;
* ``loss_split``: per gap sigma, the own / pose-swapped / no-pose EDM-weighted losses and the share
  of the own loss that falls on latent cells covered by the person (what bone maps could explain).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(config: list[str], ckpt: str | None):
    from dimo.cli import run_lightning

    cli = run_lightning([x for c in config for x in ("--config", c)], run=False)
    module, dm = cli.model, cli.datamodule
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        module.on_load_checkpoint(state)
        module.load_state_dict(state["state_dict"], strict=True)
    return module, dm


@torch.no_grad()
def vae_report(module, batch) -> dict:
    from dimo.models.hvg.conditioning import render_pose_maps

    x = batch["target"]  # (B, V, T, 3, H, W)
    b, v, t, _, h, w = x.shape
    z = module.encode_images(x.flatten(0, 2))
    y = module.decode_latents(z, num_frames=t).reshape(x.shape)
    maps = render_pose_maps(batch["joints3d"], batch["K"], batch["R"], batch["t"], h, w, "depth")
    mask = (maps["depth"] > -1).expand_as(x)
    err = (y - x).square()
    return {
        "psnr_frame": 10 * math.log10(4 / err.mean().item()),
        "psnr_person": 10 * math.log10(4 / err[mask].mean().item()),
        "person_fraction": mask.float().mean().item(),
        "latent_std_scaled": z.std().item(),
        "latent_channel_std_scaled": [round(s, 3) for s in z.std(dim=(0, 2, 3)).tolist()],
    }


def grad_report(module, batch) -> dict:
    module.train()
    module.zero_grad(set_to_none=True)
    rms = {}
    unet = module.unet
    h1 = unet.conv_in.register_forward_hook(
        lambda m, a, o: rms.__setitem__("conv_in", o.pow(2).mean().sqrt().item())
    )
    h2 = unet.pose_modulator.register_forward_hook(
        lambda m, a, o: rms.__setitem__("pose_residual", o.pow(2).mean().sqrt().item())
    )
    try:
        loss = module._loss(batch, torch.Generator().manual_seed(0))
        loss.backward()
    finally:
        h1.remove()
        h2.remove()

    def norm(params):
        g = [p.grad.pow(2).sum() for p in params if p.grad is not None]
        return math.sqrt(float(sum(g))) if g else 0.0

    pm = unet.pose_modulator
    proj = list(pm.proj_out.parameters())
    inner = [p for n, p in pm.named_parameters() if not n.startswith("proj_out")]
    rest = [p for n, p in unet.named_parameters() if not n.startswith("pose_modulator")]
    out = {
        "loss": loss.item(),
        "grad_pose_proj_out": norm(proj),
        "grad_pose_guiders": norm(inner),
        "grad_rest": norm(rest),
        "param_pose_proj_out": math.sqrt(sum(float(p.pow(2).sum()) for p in proj)),
        **{f"rms_{k}": v for k, v in rms.items()},
    }
    module.zero_grad(set_to_none=True)
    module.eval()
    return out


@torch.no_grad()
def loss_split(module, batch) -> dict:
    from dimo.models.hvg.module import donor_indices

    module.eval()
    gen = torch.Generator().manual_seed(1)
    x = batch["target"]
    b, v, t, _, h, w = x.shape
    cond = module.conditioning(batch, gen)
    x0 = module.encode_images(x.flatten(0, 2)).reshape(b, v, t, *cond["reference_latent"].shape[1:])
    noise = torch.randn(x0.shape, generator=gen)
    donor, _ = donor_indices(batch.get("clip_id"), b)
    mask = (cond["pose_maps"].get("depth", next(iter(cond["pose_maps"].values())))[:, :, :, :1] > -1).float()
    cell = F.adaptive_max_pool2d(mask.flatten(0, 2), x0.shape[-2:]).reshape(b, v, t, 1, *x0.shape[-2:])
    out = {}
    for s in module.gap_sigmas:
        sigma = torch.full((b,), s)
        noisy = x0 + s * noise
        _, _, c_in, c_noise = module.edm.precondition(sigma)
        tgt = module.edm.v_target(x0, noisy, sigma)
        res = {}
        for name, c in (
            ("own", cond),
            ("pose_swapped", dict(cond, pose_maps={k: m[donor] for k, m in cond["pose_maps"].items()})),
            ("no_pose", dict(cond, pose_maps=None)),
        ):
            err = (module.unet(noisy * c_in[0], c_noise, **c) - tgt).square()  # (B, V, T, C, h, w)
            res[name] = err.mean().item()
            if name == "own":
                per_cell = err.mean(3, keepdim=True)
                res["own_person_share"] = (per_cell * cell).sum().item() / per_cell.sum().item()
        res["person_cell_fraction"] = cell.mean().item()
        out[str(s)] = {k: round(v_, 5) for k, v_ in res.items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", nargs="+", default=["experiments/hvg.yaml"])
    p.add_argument("--ckpt")
    p.add_argument("--batches", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(1)
    from dimo.data.datamodule import to_model_batch

    module, dm = load(a.config, a.ckpt)
    dm.setup("fit")
    reports = []
    for i, batch in enumerate(dm.val_dataloader()):
        if i >= a.batches:
            break
        batch = to_model_batch(batch)  # the loader's uint8 pixels -> float in [-1, 1]
        reports.append(
            {
                "vae": vae_report(module, batch),
                "grad": grad_report(module, batch),
                "loss_split": loss_split(module, batch),
            }
        )
    print(json.dumps(reports, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
