"""HVG pose conditioning: dual bone maps (or the skeleton-map ablation) rendered on the fly.

Bone maps are rendered on the device of the joints by the geometry package's analytic ellipsoid
ray caster (:func:`dimo.geometry.renderer.render_bones`) from world joints and the (view-aligned)
cameras of an HVG batch, for every view x frame. Normalisation to the network's [-1, 1] range:

* ``normal``: camera-space unit normals as they are (background 0);
* ``depth``: per image, foreground depth mapped to [-0.8, 1] with the nearest point at 1 and the
  farthest at -0.8, background -1 (relative depth: the absolute distance is not the model's concern);
* ``skeleton``: :func:`~dimo.geometry.renderer.render_skeleton_map` colours, ``2 * rgb - 1``.
"""

from __future__ import annotations

import torch

from dimo.geometry.renderer import render_bones, render_skeleton_map
from dimo.models.hvg.config import PoseCondition


def normalise_depth(depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Depth (N, H, W) + mask -> (N, 1, H, W) in [-1, 1], near = 1, background = -1."""

    big = torch.finfo(depth.dtype).max
    dmin = torch.where(mask, depth, depth.new_full((), big)).flatten(1).amin(1)[:, None, None]
    dmax = torch.where(mask, depth, depth.new_full((), -big)).flatten(1).amax(1)[:, None, None]
    rel = (depth - dmin) / (dmax - dmin).clamp_min(1e-6)  # 0 near .. 1 far
    return torch.where(mask, 1.0 - 1.8 * rel, depth.new_full((), -1.0))[:, None]


@torch.no_grad()
def render_pose_maps(
    joints3d: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    height: int,
    width: int,
    condition: PoseCondition = "dual",
) -> dict[str, torch.Tensor]:
    """Pose maps for a V x T grid.

    Args:
        joints3d: world joints (B, T, J, 3); K, R: (B, V, 3, 3); t: (B, V, 3).
    Returns:
        name -> (B, V, T, C, H, W): ``normal`` (3) and ``depth`` (1) for ``dual``, one of them for
        ``normal`` / ``depth``, ``skeleton`` (3) for ``skeleton``.
    """

    b, nt, j, _ = joints3d.shape
    v = K.shape[1]
    joints = joints3d[:, None].expand(b, v, nt, j, 3).reshape(b * v * nt, j, 3)

    def per_frame(x: torch.Tensor) -> torch.Tensor:  # (B, V, ...) -> (B*V*T, ...)
        return x[:, :, None].expand(b, v, nt, *x.shape[2:]).reshape(b * v * nt, *x.shape[2:])

    Kf, Rf, tf = per_frame(K.float()), per_frame(R.float()), per_frame(t.float())
    joints = joints.float()
    out: dict[str, torch.Tensor] = {}
    if condition == "skeleton":
        rgb = render_skeleton_map(joints, Kf, Rf, tf, height, width)  # (N, 3, H, W) in [0, 1]
        out["skeleton"] = rgb * 2.0 - 1.0
    else:
        r = render_bones(joints, Kf, Rf, tf, height, width)
        if condition in ("dual", "normal"):
            out["normal"] = r.normal
        if condition in ("dual", "depth"):
            out["depth"] = normalise_depth(r.depth, r.mask)
    return {k: m.reshape(b, v, nt, *m.shape[1:]) for k, m in out.items()}


# -- frozen encoders and the preconditioned network: shared by training (HVGModule) and sampling
# (HVGPipeline), so both see the same conditioning ------------------------------------------------
@torch.no_grad()
def encode_images(
    vae: torch.nn.Module, images: torch.Tensor, chunk: int, scaled: bool = True
) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> VAE latent mode (N, C, h, w), times the VAE scale if ``scaled``;
    ``chunk`` images per encoder call."""

    dt = vae.dtype
    z = torch.cat([vae.encode(c.to(dt)).latent_dist.mode() for c in images.split(chunk)]).to(images.dtype)
    return z * vae.config.scaling_factor if scaled else z


@torch.no_grad()
def decode_latents(
    vae: torch.nn.Module, latents: torch.Tensor, num_frames: int, chunk: int, decode_chunk: int | None
) -> torch.Tensor:
    """(N, C, h, w) scaled latents, N a multiple of ``num_frames`` -> images (N, 3, H, W) in [-1, 1].

    Whole videos, several per call (``chunk`` frames at most), or with ``decode_chunk`` each video in
    chunks of that many frames (diffusers' SVD ``decode_chunk_size``: bounded decode memory)."""

    z = (latents / vae.config.scaling_factor).to(vae.dtype)
    if decode_chunk is None or decode_chunk >= num_frames:
        step = max(num_frames, (chunk // num_frames) * num_frames)
        out = [vae.decode(c, num_frames=num_frames).sample for c in z.split(step)]
    else:
        out = [
            vae.decode(c, num_frames=c.shape[0]).sample
            for video in z.split(num_frames)
            for c in video.split(decode_chunk)
        ]
    return torch.cat(out).to(latents.dtype).clamp(-1, 1)


@torch.no_grad()
def clip_embed(image_encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> CLIP image embedding (B, 1, D) (bicubic resize, CLIP mean/std)."""

    from dimo.models.common import CLIP_MEAN, CLIP_STD

    size = image_encoder.config.image_size
    x = torch.nn.functional.interpolate(
        (images + 1) / 2, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    x = (x - x.new_tensor(CLIP_MEAN)[:, None, None]) / x.new_tensor(CLIP_STD)[:, None, None]
    return image_encoder(pixel_values=x.to(image_encoder.dtype)).image_embeds[:, None].to(images.dtype)


@torch.no_grad()
def svd_conditioning(
    vae: torch.nn.Module,
    image_encoder: torch.nn.Module,
    batch: dict,
    generator: torch.Generator,
    pose_condition: PoseCondition,
    noise_aug_strength: float,
    fps: int,
    motion_bucket_id: int,
    chunk: int,
) -> dict:
    """Everything the HVG UNet needs besides the noisy latents, for an HVG batch (``docs/contracts.md``):
    CLIP embedding, SVD's ``added_time_ids``, the noise-augmented conditioning latent (unscaled mode),
    the clean reference latent (ReferenceNet), the bone maps and the relative camera rotations.
    The augmentation noise is the first draw from ``generator``."""

    b, _, _, _, h, w = batch["target"].shape  # (B, V, T, 3, H, W): only its shape is read
    ref = batch["reference"]
    noisy_ref = ref + noise_aug_strength * torch.randn(
        ref.shape, generator=generator, device=ref.device, dtype=ref.dtype
    )
    ids = torch.tensor([fps - 1, motion_bucket_id, noise_aug_strength], device=ref.device, dtype=ref.dtype)
    return {
        "encoder_hidden_states": clip_embed(image_encoder, ref),
        "added_time_ids": ids.expand(b, 3),
        "cond_latent": encode_images(vae, noisy_ref, chunk, scaled=False),
        "reference_latent": encode_images(vae, ref, chunk),
        "pose_maps": render_pose_maps(
            batch["joints3d"], batch["K"], batch["R"], batch["t"], h, w, pose_condition
        ),
        "rel_rot": batch["rel_rot"],
    }


def edm_denoise(
    unet: torch.nn.Module, edm, noisy: torch.Tensor, sigma: torch.Tensor, cond: dict, **kwargs
) -> torch.Tensor:
    """EDM-preconditioned denoised estimate D (B, V, T, C, h, w) of ``noisy`` at noise level ``sigma`` (B,)."""

    _, _, c_in, c_noise = edm.precondition(sigma)
    scale = c_in.reshape(-1, *([1] * (noisy.ndim - 1))).to(noisy.dtype)
    return edm.denoised(unet(noisy * scale, c_noise, **cond, **kwargs), noisy, sigma)
