"""Analytic ellipsoid ray caster: HVG's dual bone maps (depth + normal), part ids, shaded RGB.

Every bone (parent, child) becomes an ellipsoid centred at the bone midpoint whose major semi-axis
runs along the bone (half its length) and whose two minor semi-axes are the bone's thickness
(:func:`dimo.geometry.skeleton.bone_radii`). Extra ellipsoids (a head, a torso; see
:func:`toy_body_ellipsoids`) can be added so toy humans look like humans.

Ray-ellipsoid intersection is closed form: with ``M = diag(1/r) Q^T`` mapping the ellipsoid to the
unit sphere, a camera ray ``s * d`` (camera at the origin of camera space, ``|d| = 1``) hits it where
``|M (s d - c)|^2 = 1``, a quadratic in ``s``. For all pixels and ellipsoids at once its
coefficients are two small matrix products (``a = d^T A d`` with ``A = M^T M`` written over the 6
unique entries, ``b = d . M^T M (-c)``), so the caster is exact, batched, pure PyTorch and runs on
CPU or CUDA. PyTorch3D (what HVG used) has no wheels on this package index; writing the closed form
here is smaller than any mesh rasteriser dependency. Only ray-ellipsoid pairs whose 8x8-pixel tile
can reach the ellipsoid's bounding sphere are evaluated (a conservative cone test, so the image is the
same as testing every pair), in chunks so memory stays bounded (about ``chunk_pairs`` pairs at a time).

Outputs follow ``docs/contracts.md``: depth = distance to the camera centre (0 = background),
camera-space unit normals pointing towards the camera (0 = background), part id (-1 = background),
mask, and optional Lambertian RGB in [0, 1] (per-part colours, optional per-part stripes across the
ellipsoid's major axis). A camera inside an ellipsoid does not see that ellipsoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dimo.geometry.cameras import project
from dimo.geometry.skeleton import BONE_PARTS, BONES, PART_NAMES, bone_radii

__all__ = [
    "DEFAULT_PART_COLORS",
    "BoneRender",
    "Ellipsoids",
    "bone_ellipsoids",
    "render_bones",
    "render_ellipsoids",
    "render_skeleton_map",
    "toy_body_ellipsoids",
]

# One colour per PART_NAMES entry (left parts warm, right parts cool) for previews and skeleton maps.
DEFAULT_PART_COLORS = torch.tensor(
    [
        [0.80, 0.80, 0.80],  # torso
        [0.95, 0.85, 0.30],  # head
        [0.95, 0.35, 0.25],  # left upper arm
        [0.25, 0.45, 0.95],  # right upper arm
        [0.98, 0.60, 0.20],  # left forearm
        [0.25, 0.75, 0.95],  # right forearm
        [0.98, 0.80, 0.45],  # left hand
        [0.55, 0.90, 0.95],  # right hand
        [0.80, 0.20, 0.50],  # left thigh
        [0.35, 0.30, 0.85],  # right thigh
        [0.90, 0.40, 0.70],  # left shin
        [0.45, 0.55, 0.95],  # right shin
        [0.70, 0.25, 0.25],  # left foot
        [0.20, 0.35, 0.60],  # right foot
    ]
)
assert DEFAULT_PART_COLORS.shape[0] == len(PART_NAMES)


@dataclass
class Ellipsoids:
    """E ellipsoids for each of B items (world coordinates)."""

    center: torch.Tensor  # (B, E, 3)
    axes: torch.Tensor  # (B, E, 3, 3), columns are the unit principal axes (column 0 = major/bone axis)
    radii: torch.Tensor  # (B, E, 3) semi-axis lengths matching the columns of ``axes``
    part: torch.Tensor  # (E,) int64 body-part id of each ellipsoid

    def __post_init__(self) -> None:
        B, E = self.center.shape[:2]
        if (
            self.center.shape != (B, E, 3)
            or self.axes.shape != (B, E, 3, 3)
            or self.radii.shape != (B, E, 3)
            or self.part.shape != (E,)
        ):
            raise ValueError(
                "Ellipsoids shapes disagree: center "
                f"{tuple(self.center.shape)}, axes {tuple(self.axes.shape)}, radii {tuple(self.radii.shape)}, "
                f"part {tuple(self.part.shape)}"
            )
        if (self.radii <= 0).any():
            raise ValueError("ellipsoid radii must be positive")

    def cat(self, other: Ellipsoids) -> Ellipsoids:
        """Both sets of ellipsoids (same B)."""

        return Ellipsoids(
            torch.cat([self.center, other.center], 1),
            torch.cat([self.axes, other.axes], 1),
            torch.cat([self.radii, other.radii], 1),
            torch.cat([self.part, other.part.to(self.part.device)], 0),
        )


class BoneRender(NamedTuple):
    """Renderer outputs for B views (``depth, normal, part, mask, rgb = render_bones(...)``)."""

    depth: torch.Tensor  # (B, H, W) distance to the camera centre, 0 = background
    normal: torch.Tensor  # (B, 3, H, W) camera space, unit, facing the camera; 0 = background
    part: torch.Tensor  # (B, H, W) int64, -1 = background
    mask: torch.Tensor  # (B, H, W) bool
    rgb: torch.Tensor | None  # (B, 3, H, W) in [0, 1] when colours were given


def _frame(primary: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """Orthonormal frames (..., 3, 3) whose first column is ``primary``; the second leans to ``hint``."""

    a0 = F.normalize(primary, dim=-1)
    h = hint - (hint * a0).sum(-1, keepdim=True) * a0
    # fall back to another hint where the given one is (nearly) parallel to the primary axis
    alt_hint = torch.where(
        a0[..., 1:2].abs() < 0.9, a0.new_tensor([0.0, 1.0, 0.0]), a0.new_tensor([1.0, 0.0, 0.0])
    )
    alt = alt_hint - (alt_hint * a0).sum(-1, keepdim=True) * a0
    h = torch.where(h.norm(dim=-1, keepdim=True) < 1e-6, alt, h)
    a1 = F.normalize(h, dim=-1)
    a2 = torch.linalg.cross(a0, a1, dim=-1)
    return torch.stack([a0, a1, a2], dim=-1)


def bone_ellipsoids(
    joints: torch.Tensor,
    bones: Sequence[tuple[int, int]] = BONES,
    radii: torch.Tensor | None = None,
    parts: Sequence[int] | torch.Tensor | None = None,
) -> Ellipsoids:
    """One ellipsoid per bone: joints (B, J, 3); radii (E,) or (B, E) metres (default: skeleton's)."""

    if joints.dim() != 3 or joints.shape[-1] != 3:
        raise ValueError(f"joints must have shape (B, J, 3), got {tuple(joints.shape)}")
    B = joints.shape[0]
    idx = torch.as_tensor(bones, dtype=torch.long, device=joints.device)  # (E, 2)
    if radii is None:
        if tuple(map(tuple, bones)) != BONES:
            raise ValueError("radii are required for a custom bone list")
        radii = bone_radii()
    radii = radii.to(joints).expand(B, idx.shape[0])
    if parts is None:
        parts = BONE_PARTS if tuple(map(tuple, bones)) == BONES else [0] * idx.shape[0]
    a, b = joints[:, idx[:, 0]], joints[:, idx[:, 1]]  # (B, E, 3)
    vec = b - a
    half = 0.5 * vec.norm(dim=-1)
    half = torch.where(half > 1e-6, half, radii)  # a zero-length bone becomes a sphere
    axes = _frame(vec, joints.new_tensor([0.0, 0.0, 1.0]).expand_as(vec))
    return Ellipsoids(
        center=0.5 * (a + b),
        axes=axes,
        radii=torch.stack([half, radii, radii], dim=-1),
        part=torch.as_tensor(parts, dtype=torch.long, device=joints.device),
    )


def toy_body_ellipsoids(joints: torch.Tensor, scale: float | torch.Tensor = 1.0) -> Ellipsoids:
    """A head, chest, waist and hips (parts "head"/"torso") that make a SMPL-X skeleton look human.

    joints (B, 55, 3) posed SMPL-X joints; ``scale`` (float or (B,)) scales the sizes (metres).
    """

    B = joints.shape[0]
    s = torch.as_tensor(scale, dtype=joints.dtype, device=joints.device).expand(B)[:, None]  # (B, 1)
    pelvis, spine2, spine3, neck, head = (joints[:, i] for i in (0, 6, 9, 12, 15))
    lateral = (joints[:, 16] - joints[:, 17]) + (joints[:, 1] - joints[:, 2])  # subject's left
    up = neck - pelvis
    head_up = head - neck
    head_lat = joints[:, 23] - joints[:, 24]
    # (center, primary axis, secondary hint, radii along (primary, secondary, third), part)
    specs = [
        (head + 0.07 * s * F.normalize(head_up, dim=-1), head_up, head_lat, (0.115, 0.085, 0.10), 1),
        (spine3 - 0.02 * s * F.normalize(up, dim=-1), up, lateral, (0.16, 0.175, 0.11), 0),
        (spine2, up, lateral, (0.15, 0.15, 0.10), 0),
        (pelvis, up, lateral, (0.12, 0.165, 0.11), 0),
    ]
    center = torch.stack([c for c, *_ in specs], 1)  # (B, 4, 3)
    axes = torch.stack([_frame(p, h) for _, p, h, *_ in specs], 1)  # (B, 4, 3, 3)
    radii = torch.stack([joints.new_tensor(r).expand(B, 3) * s for *_, r, _ in specs], 1)  # (B, 4, 3)
    part = torch.tensor([p for *_, p in specs], dtype=torch.long, device=joints.device)
    return Ellipsoids(center, axes, radii, part)


def _pixel_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Unit ray directions in camera space (B, H*W, 3) through pixel centres (j + 0.5, i + 0.5)."""

    dev, dt = K.device, K.dtype
    v, u = torch.meshgrid(
        torch.arange(height, device=dev, dtype=dt) + 0.5,
        torch.arange(width, device=dev, dtype=dt) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)  # (P, 3)
    d = pix @ torch.linalg.inv(K).transpose(-1, -2)  # (B, P, 3)
    return F.normalize(d, dim=-1)


def _per_item(x: torch.Tensor | None, B: int, shape: tuple[int, ...], name: str) -> torch.Tensor | None:
    if x is None:
        return None
    if x.shape == shape:
        return x.expand(B, *shape)
    if x.shape == (B, *shape):
        return x
    raise ValueError(f"{name} must have shape {shape} or {(B, *shape)}, got {tuple(x.shape)}")


def _tile_candidates(
    c_cam: torch.Tensor,
    radii: torch.Tensor,
    K: torch.Tensor,
    height: int,
    width: int,
    tile: int,
) -> torch.Tensor:
    """(n, 3) long rows (view, tile, ellipsoid) whose ray cone can meet the ellipsoid's bounding sphere.

    Conservative: a ray through a pixel centre of the tile makes an angle of at most ``h`` (the
    largest angle of the tile's four pixel-centre corners to its axis; the cone is convex, so the
    corners bound the whole rectangle) with the tile axis, and a ray that hits a sphere of radius
    ``r`` at distance ``|c|`` makes an angle of at most ``asin(r / |c|)`` with the direction of its
    centre; a pair is dropped only when the two cones are separated by more than a safety margin.
    Computed in float64 so rounding cannot drop a pair.
    """

    dev = c_cam.device
    ty, tx = -(-height // tile), -(-width // tile)
    y0 = torch.arange(ty, device=dev, dtype=torch.float64) * tile + 0.5
    x0 = torch.arange(tx, device=dev, dtype=torch.float64) * tile + 0.5
    y1 = (y0 + tile - 1).clamp(max=height - 0.5)
    x1 = (x0 + tile - 1).clamp(max=width - 0.5)
    yy0, xx0 = torch.meshgrid(y0, x0, indexing="ij")
    yy1, xx1 = torch.meshgrid(y1, x1, indexing="ij")
    corners = torch.stack(
        [
            torch.stack([xx0, yy0], -1),
            torch.stack([xx1, yy0], -1),
            torch.stack([xx0, yy1], -1),
            torch.stack([xx1, yy1], -1),
        ],
        -2,
    ).reshape(-1, 4, 2)  # (T, 4, 2)
    pix = torch.cat([corners, torch.ones_like(corners[..., :1])], -1)  # (T, 4, 3)
    Kinv = torch.linalg.inv(K.double())  # (B, 3, 3)
    d = F.normalize(torch.einsum("tkj,bij->btki", pix, Kinv), dim=-1)  # (B, T, 4, 3)
    axis = F.normalize(d.sum(-2), dim=-1)  # (B, T, 3)
    half = torch.acos((d * axis[..., None, :]).sum(-1).clamp(-1, 1)).amax(-1)  # (B, T)
    c = c_cam.double()
    dist = c.norm(dim=-1)  # (B, E)
    r = radii.double().amax(-1)  # bounding sphere radius (B, E)
    inside = dist <= r * (1 + 1e-6) + 1e-9  # camera in the bounding sphere: every ray may hit
    alpha = torch.asin((r / dist.clamp_min(1e-12)).clamp(max=1.0))  # (B, E)
    cdir = c / dist.clamp_min(1e-12)[..., None]
    gap = torch.acos((axis @ cdir.transpose(-1, -2)).clamp(-1, 1))  # (B, T, E) angle between axes
    cand = (gap <= half[..., None] + alpha[:, None, :] + 1e-4) | inside[:, None, :]
    return cand.nonzero()


def _nearest_hits(
    rays: torch.Tensor,
    A6: torch.Tensor,
    Ac: torch.Tensor,
    cc: torch.Tensor,
    c_cam: torch.Tensor,
    radii: torch.Tensor,
    K: torch.Tensor,
    height: int,
    width: int,
    chunk_pairs: int,
    tile: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest ray parameter (B*P,) (inf = miss) and its ellipsoid index (B*P,) for rays (B, P, 3).

    Only (pixel, ellipsoid) pairs that pass the bounding-sphere cull of :func:`_tile_candidates`
    are evaluated (a dropped pair cannot hit, so the result equals the dense one); ties between
    ellipsoids go to the lowest index. At most ``chunk_pairs`` pairs are evaluated at once; the
    result does not depend on it.
    """

    B, P = rays.shape[:2]
    E = c_cam.shape[1]
    dev, dt = rays.device, rays.dtype
    ty, tx = -(-height // tile), -(-width // tile)
    ys = (torch.arange(ty, device=dev)[:, None] * tile + torch.arange(tile, device=dev)).clamp(max=height)
    xs = (torch.arange(tx, device=dev)[:, None] * tile + torch.arange(tile, device=dev)).clamp(max=width)
    # pixel index of every slot of every tile (T, tile*tile); slots outside the image are -1
    tile_pix = torch.where(
        (ys[:, None, :, None] < height) & (xs[None, :, None, :] < width),
        ys[:, None, :, None] * width + xs[None, :, None, :],
        -1,
    ).reshape(ty * tx, tile * tile)
    trip = _tile_candidates(c_cam, radii, K, height, width, tile)  # (n, 3): view, tile, ellipsoid
    rays_f = rays.reshape(B * P, 3)
    A6_f, Ac_f, cc_f = A6.reshape(B * E, 6), Ac.reshape(B * E, 3), cc.reshape(B * E)
    best_s = torch.full((B * P,), torch.inf, device=dev, dtype=dt)
    best_e = torch.zeros(B * P, device=dev, dtype=torch.long)
    step = max(1, chunk_pairs // (tile * tile))
    for t0 in range(0, trip.shape[0], step):
        b, tl, e = trip[t0 : t0 + step].unbind(-1)
        pix = tile_pix[tl]  # (m, S)
        valid = pix >= 0
        key = b[:, None] * P + pix.clamp_min(0)  # (m, S) into B*P
        be = b * E + e  # (m,) into B*E
        d = rays_f[key]  # (m, S, 3)
        dx, dy, dz = d.unbind(-1)
        d6 = torch.stack([dx * dx, dy * dy, dz * dz, dx * dy, dx * dz, dy * dz], -1)  # (m, S, 6)
        # running multiply-adds in the order a CPU GEMM uses, so values match the dense products
        a6, ac = A6_f[be, None, :].expand_as(d6), Ac_f[be, None, :].expand_as(d)
        qa = torch.zeros_like(dx)  # (m, S): d^T A d
        for k in range(6):
            qa = qa.addcmul(d6[..., k], a6[..., k])
        qb = torch.zeros_like(dx)  # d . Ac
        for k in range(3):
            qb = qb.addcmul(d[..., k], ac[..., k])
        disc = qb * qb - qa * cc_f[be, None]
        s = (-qb - disc.clamp_min(0).sqrt()) / qa  # nearer root
        s = torch.where((disc >= 0) & (s > 1e-6) & valid, s, torch.inf)
        key, s = key.reshape(-1), s.reshape(-1)
        ee = e[:, None].expand_as(pix).reshape(-1)
        cmin = torch.full_like(best_s, torch.inf).scatter_reduce_(0, key, s, "amin")
        # lowest ellipsoid index among this chunk's pairs at the pixel's nearest parameter
        tie = (s == cmin[key]) & torch.isfinite(s)
        cidx = torch.full_like(best_e, E).scatter_reduce_(0, key[tie], ee[tie], "amin")
        better = (cmin < best_s) | ((cmin == best_s) & (cidx < best_e) & torch.isfinite(cmin))
        best_s = torch.where(better, cmin, best_s)
        best_e = torch.where(better, cidx, best_e)
    return best_s, best_e


def render_ellipsoids(
    ellipsoids: Ellipsoids,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    height: int,
    width: int,
    *,
    part_colors: torch.Tensor | None = None,
    stripes: torch.Tensor | None = None,
    stripe_colors: torch.Tensor | None = None,
    light_dir: Sequence[float] = (-0.4, -0.6, -1.0),
    ambient: float = 0.35,
    background: torch.Tensor | None = None,
    chunk_pairs: int = 1 << 22,
) -> BoneRender:
    """Ray-cast B views of ellipsoids (world coordinates) with cameras K, R (B, 3, 3), t (B, 3).

    Colour options (all indexed by part id, P = number of parts): ``part_colors`` (P, 3) or (B, P, 3)
    in [0, 1] turns on RGB; ``stripes`` (P,) or (B, P) int gives each part that many bands across its
    ellipsoids' major axis (0 = solid) alternating with ``stripe_colors`` (default: half brightness);
    ``light_dir`` is the camera-space direction *towards* the light (default upper-left, behind the
    camera); ``background`` (3,) or (B, 3), default black. ``chunk_pairs`` bounds the number of
    ray-ellipsoid pairs evaluated at once (memory ~ 40 bytes per pair).
    """

    B, E = ellipsoids.center.shape[:2]
    if K.shape != (B, 3, 3) or R.shape != (B, 3, 3) or t.shape != (B, 3):
        raise ValueError(
            f"cameras must be K, R (B={B}, 3, 3) and t (B, 3); got {tuple(K.shape)}, {tuple(R.shape)}, {tuple(t.shape)}"
        )
    dev, dt = ellipsoids.center.device, ellipsoids.center.dtype
    K, R, t = K.to(dev, dt), R.to(dev, dt), t.to(dev, dt)
    P = height * width
    # ellipsoids in camera space; M maps a camera-space point (relative to the centre) to the unit sphere
    c_cam = ellipsoids.center @ R.transpose(-1, -2) + t[:, None]  # (B, E, 3)
    q_cam = R[:, None] @ ellipsoids.axes  # (B, E, 3, 3)
    M = q_cam.transpose(-1, -2) / ellipsoids.radii[..., :, None]  # (B, E, 3, 3)
    A = M.transpose(-1, -2) @ M  # (B, E, 3, 3), symmetric
    A6 = torch.stack(
        [A[..., 0, 0], A[..., 1, 1], A[..., 2, 2], 2 * A[..., 0, 1], 2 * A[..., 0, 2], 2 * A[..., 1, 2]], -1
    )  # (B, E, 6)
    Ac = -(A @ c_cam[..., None])[..., 0]  # (B, E, 3): b_half = d . Ac
    cc = ((M @ c_cam[..., None])[..., 0] ** 2).sum(-1) - 1.0  # (B, E)
    rays = _pixel_rays(K, height, width)  # (B, P, 3)

    # nearest hit per pixel over the ellipsoids whose bounding spheres can reach it (see _nearest_hits)
    smin, idx = _nearest_hits(rays, A6, Ac, cc, c_cam, ellipsoids.radii, K, height, width, chunk_pairs)
    hit = torch.isfinite(smin)  # (B*P,)
    depth = smin.where(hit, 0.0)
    idx = idx.where(hit, 0)
    # normals and stripe coordinates at hit pixels only (misses stay 0)
    hit_at = hit.nonzero()[:, 0]  # (N,) into B*P
    eidx = torch.div(hit_at, P, rounding_mode="floor") * E + idx[hit_at]  # (N,) into B*E
    rays_f = rays.reshape(B * P, 3)
    c_f, A_f, M_f = c_cam.reshape(B * E, 3), A.reshape(B * E, 3, 3), M.reshape(B * E, 3, 3)
    normal = torch.zeros(B * P, 3, device=dev, dtype=dt)
    major = torch.zeros(B * P, device=dev, dtype=dt)  # hit point's coordinate along the major axis, [-1, 1]
    step = max(1, chunk_pairs // 8)
    for q0 in range(0, hit_at.shape[0], step):
        at, ei = hit_at[q0 : q0 + step], eidx[q0 : q0 + step]
        rel = depth[at, None] * rays_f[at] - c_f[ei]  # hit point relative to the centre
        n = (A_f[ei] @ rel[..., None])[..., 0]  # gradient of the quadric = outward normal
        local = (M_f[ei] @ rel[..., None])[..., 0]  # on the unit sphere
        normal[at] = F.normalize(n, dim=-1)
        major[at] = local[..., 0].clamp(-1, 1)
    depth, normal, major = depth.reshape(B, P), normal.reshape(B, P, 3), major.reshape(B, P)
    part = torch.where(hit, ellipsoids.part[idx], -1).reshape(B, P)
    mask = part >= 0

    rgb = None
    if part_colors is not None:
        n_parts = part_colors.shape[-2]
        if int(ellipsoids.part.max()) >= n_parts:
            raise ValueError(
                f"part_colors has {n_parts} rows but part ids go up to {int(ellipsoids.part.max())}"
            )
        cols = _per_item(part_colors.to(dev, dt), B, (n_parts, 3), "part_colors")
        bidx = torch.arange(B, device=dev)[:, None].expand(B, P)
        pid = part.clamp_min(0)
        base = cols[bidx, pid]  # (B, P, 3)
        if stripes is not None:
            n_str = _per_item(stripes.to(dev), B, (n_parts,), "stripes")[bidx, pid]  # (B, P)
            if stripe_colors is None:
                alt = base * 0.5
            else:
                alt = _per_item(stripe_colors.to(dev, dt), B, (n_parts, 3), "stripe_colors")[bidx, pid]
            band = torch.floor((major + 1) * 0.5 * n_str.to(dt)).long()
            base = torch.where(((n_str > 0) & (band % 2 == 1))[..., None], alt, base)
        light = F.normalize(torch.tensor(light_dir, device=dev, dtype=dt), dim=0)
        shade = ambient + (1 - ambient) * (normal @ light).clamp_min(0)  # (B, P)
        bg = torch.zeros(3, device=dev, dtype=dt) if background is None else background.to(dev, dt)
        bg = _per_item(bg, B, (3,), "background")
        rgb = torch.where(mask[..., None], base * shade[..., None], bg[:, None, :]).clamp(0, 1)
        rgb = rgb.reshape(B, height, width, 3).permute(0, 3, 1, 2)  # (B, 3, H, W)

    return BoneRender(
        depth=depth.reshape(B, height, width),
        normal=normal.reshape(B, height, width, 3).permute(0, 3, 1, 2),  # (B, 3, H, W)
        part=part.reshape(B, height, width),
        mask=mask.reshape(B, height, width),
        rgb=rgb,
    )


def render_bones(
    joints: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    height: int,
    width: int,
    *,
    bones: Sequence[tuple[int, int]] = BONES,
    radii: torch.Tensor | None = None,
    parts: Sequence[int] | torch.Tensor | None = None,
    extra: Ellipsoids | None = None,
    **render_kwargs,
) -> BoneRender:
    """HVG bone maps: joints (B, J, 3) world -> depth/normal/part/mask (+ RGB) per view.

    One ellipsoid per bone (:func:`bone_ellipsoids`), plus ``extra`` ellipsoids if given; cameras
    K, R (B, 3, 3), t (B, 3). Other keywords go to :func:`render_ellipsoids` (colours, stripes,
    light, background, chunking).
    """

    ell = bone_ellipsoids(joints, bones, radii, parts)
    if extra is not None:
        ell = ell.cat(extra)
    return render_ellipsoids(ell, K, R, t, height, width, **render_kwargs)


def render_skeleton_map(
    joints: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    height: int,
    width: int,
    *,
    bones: Sequence[tuple[int, int]] = BONES,
    parts: Sequence[int] | torch.Tensor | None = None,
    part_colors: torch.Tensor | None = None,
    line_width: float = 2.0,
    chunk_pairs: int = 1 << 22,
) -> torch.Tensor:
    """2D skeleton map (HVG's ablation): coloured lines between projected joints, (B, 3, H, W) in [0, 1].

    A pixel within ``line_width / 2`` pixels of a projected bone takes the bone's part colour; where
    bones cross, the one nearer the camera (interpolated z) wins. Bones with an endpoint behind the
    camera are skipped.
    """

    B = joints.shape[0]
    dev, dt = joints.device, joints.dtype
    idx = torch.as_tensor(bones, dtype=torch.long, device=dev)  # (E, 2)
    E = idx.shape[0]
    if parts is None:
        parts = BONE_PARTS if tuple(map(tuple, bones)) == BONES else [0] * E
    part_t = torch.as_tensor(parts, dtype=torch.long, device=dev)
    cols = (DEFAULT_PART_COLORS if part_colors is None else part_colors).to(dev, dt)
    uv, z = project(joints, K.to(dev, dt), R.to(dev, dt), t.to(dev, dt))  # (B, J, 2), (B, J)
    a, b = uv[:, idx[:, 0]], uv[:, idx[:, 1]]  # (B, E, 2)
    za, zb = z[:, idx[:, 0]], z[:, idx[:, 1]]  # (B, E)
    valid = (za > 1e-6) & (zb > 1e-6)
    ab = b - a
    ab2 = (ab * ab).sum(-1).clamp_min(1e-12)  # (B, E)
    v, u = torch.meshgrid(
        torch.arange(height, device=dev, dtype=dt) + 0.5,
        torch.arange(width, device=dev, dtype=dt) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([u, v], -1).reshape(-1, 2)  # (P, 2)
    P = pix.shape[0]
    out = torch.zeros(B, P, 3, device=dev, dtype=dt)
    p_step = max(1, chunk_pairs // max(E, 1))
    for b in range(B):
        for p0 in range(0, P, p_step):
            q = pix[p0 : p0 + p_step, None, :]  # (p, 1, 2)
            s = (((q - a[b]) * ab[b]).sum(-1) / ab2[b]).clamp(0, 1)  # (p, E)
            closest = a[b] + s[..., None] * ab[b]
            dist = (q - closest).norm(dim=-1)
            zz = za[b] + s * (zb[b] - za[b])
            zz = torch.where((dist <= line_width / 2) & valid[b], zz, torch.full_like(zz, torch.inf))
            zmin, which = zz.min(-1)
            on = torch.isfinite(zmin)
            out[b, p0 : p0 + p_step] = torch.where(on[:, None], cols[part_t[which]], 0.0)
    return out.reshape(B, height, width, 3).permute(0, 3, 1, 2)  # (B, 3, H, W)
