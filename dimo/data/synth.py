"""The embedded toy-human dataset: procedural people, motions and cameras, in the real clip format.

Everything is built from :mod:`dimo.geometry`: per-identity skeletons (:func:`rest_joints` with random
height and proportions), motions as SMPL-X axis-angle parameters posed by
:func:`forward_kinematics`, cameras from :func:`make_trajectory` (with their prompts), and frames
ray-cast by :func:`render_bones` (bone ellipsoids plus head/torso ellipsoids, per-part colours and
stripes, per-identity limb thickness), composited over a two-tone background with a floor.

The three sources (DESIGN.md 3.2): ``internet`` (one static or handheld camera at a random place),
``ue5`` (the same motion seen along 2+ trajectories: orbit, arc, dolly, pan, zoom, static) and
``multiview`` (3-8 synchronised static cameras on a ring). Each clip is written as H.264 MP4 views
plus a ``motion.npz`` with the exact parameters, the rest skeleton and the posed joints, and listed
in ``manifest.jsonl``. Deterministic given :attr:`SynthConfig.seed`.

Motion library (bounded sums of sinusoids inside joint limits, random speeds and combinations):
walk in place, turn, arm swings, leg swings, squats, dance; fingers curl and spread.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dimo.data.manifest import MANIFEST_NAME, ClipRecord, MotionRecord, ViewRecord, write_manifest
from dimo.data.video import write_video
from dimo.safe_io import atomic_path, atomic_write_text

__all__ = ["MOTIONS", "TRAJECTORIES", "SynthConfig", "make_identity", "make_motion", "synthesize"]

MOTIONS = ("walk", "turn", "arm_swing", "leg_swing", "squat", "dance")
TRAJECTORIES = ("orbit", "arc", "dolly_in", "dolly_out", "pan", "zoom_in", "zoom_out", "static")


@dataclass
class SynthConfig:
    """Size and look of the toy dataset. Defaults: 20 clips, 64x64, 20 frames, ~1 MB, seconds to build."""

    seed: int = 0
    num_internet: int = 12  # stage 1 (self-reconstruction) trains on these
    num_ue5: int = 4
    num_multiview: int = 4
    num_frames: int = 20
    height: int = 64
    width: int = 64
    fps: float = 12.0
    ue5_trajectories: tuple[int, int] = (2, 3)  # min, max trajectories per UE5 clip
    multiview_cameras: tuple[int, int] = (4, 5)  # min, max cameras per multiview clip (3-8)
    handheld_prob: float = 0.5  # internet clips with handheld jitter
    fov_deg: float = 40.0
    # camera distance range, metres: person-centric framing (the body fills ~80% of the frame height,
    # as in human-animation datasets); at 2.7-3.3 m the toy person covered a third of the frame and its
    # pose moved too few latent pixels for the motion / bone-map conditioning to matter (docs/toy.md)
    radius: tuple[float, float] = (2.2, 2.5)
    crf: int = 20

    def __post_init__(self) -> None:
        if min(self.num_internet, self.num_ue5, self.num_multiview) < 0:
            raise ValueError("clip counts must be >= 0")
        if self.num_frames < 1 or self.height < 2 or self.width < 2 or self.height % 2 or self.width % 2:
            raise ValueError("num_frames >= 1 and even height/width >= 2 are required")
        lo, hi = self.multiview_cameras
        if not 3 <= lo <= hi <= 8:
            raise ValueError(
                f"multiview_cameras must satisfy 3 <= min <= max <= 8, got {self.multiview_cameras}"
            )
        lo, hi = self.ue5_trajectories
        if not 2 <= lo <= hi:
            raise ValueError(f"ue5_trajectories must satisfy 2 <= min <= max, got {self.ue5_trajectories}")


# ---- identities ---------------------------------------------------------------------------------
@dataclass
class Identity:
    rest: torch.Tensor  # (55, 3) T-pose joints
    scale: float  # overall size (head/torso ellipsoids follow it)
    thickness: float  # limb radius multiplier
    part_colors: torch.Tensor  # (P, 3) in [0, 1]
    stripes: torch.Tensor  # (P,) int, bands per part (0 = solid)
    bg_top: np.ndarray  # (3,) sky colour
    bg_floor: np.ndarray  # (3,) floor colour


def _hsv(h: float, s: float, v: float) -> list[float]:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def make_identity(rng: np.random.Generator) -> Identity:
    from dimo.geometry.renderer import DEFAULT_PART_COLORS
    from dimo.geometry.skeleton import rest_joints

    scale = float(rng.uniform(0.85, 1.1))
    proportions = {
        k: float(rng.uniform(0.9, 1.1)) for k in ("leg", "torso", "arm", "shoulder_width", "hip_width")
    }
    rest = rest_joints(scale, proportions)
    n_parts = DEFAULT_PART_COLORS.shape[0]
    top, bottom, skin = (_hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.5, 0.95)) for _ in range(3))
    skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.95))
    # parts: torso, head, L/R upper arm, L/R forearm, L/R hand, L/R thigh, L/R shin, L/R foot
    shoe = [0.15] * 3
    cols = [top, skin, top, top, skin, skin, skin, skin, bottom, bottom, bottom, bottom, shoe, shoe]  # fmt: skip
    cols = torch.tensor(cols[:n_parts], dtype=torch.float32)
    stripes = torch.zeros(n_parts, dtype=torch.long)
    if rng.random() < 0.5:  # striped top
        stripes[[0, 2, 3]] = int(rng.integers(2, 6))
    if rng.random() < 0.3:  # striped trousers
        stripes[[8, 9, 10, 11]] = int(rng.integers(2, 5))
    bg_top = np.array(_hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.55, 0.95)), dtype=np.float32)
    bg_floor = np.array(_hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.5)), dtype=np.float32)
    return Identity(rest, scale, float(rng.uniform(0.8, 1.35)), cols, stripes, bg_top, bg_floor)


# ---- motions --------------------------------------------------------------------------------------
def _wave(rng: np.random.Generator, t: np.ndarray, freq: float, n: int = 2) -> np.ndarray:
    """A bounded (|x| <= 1) sum of ``n`` sinusoids near ``freq`` Hz with random phases, (T,)."""

    out = np.zeros_like(t)
    for k in range(n):
        out += np.sin(2 * np.pi * freq * (1 + 0.5 * k) * t + rng.uniform(0, 2 * np.pi)) / (k + 1)
    return out / sum(1 / (k + 1) for k in range(n))


def make_motion(
    rng: np.random.Generator, num_frames: int, fps: float, kinds: tuple[str, ...] | None = None
) -> dict:
    """SMPL-X parameters for one clip: global_orient (T, 3), body_pose (T, 21, 3), hand_pose (T, 30, 3),
    transl (T, 3), all float32 axis-angle, plus ``kinds`` (the primitives used)."""

    if kinds is None:
        kinds = tuple(rng.choice(MOTIONS, size=int(rng.integers(1, 3)), replace=False))
    unknown = set(kinds) - set(MOTIONS)
    if unknown:
        raise ValueError(f"unknown motions {sorted(unknown)}; expected some of {MOTIONS}")
    T = num_frames
    t = np.arange(T) / fps  # seconds
    speed = float(rng.uniform(0.7, 1.4))
    f = 0.8 * speed  # base frequency, Hz
    body = np.zeros((T, 22, 3))  # index = joint id (0 = global orientation)
    transl = np.zeros((T, 3))
    # arms hang at ~65-75 degrees below the T-pose, elbows slightly bent
    down = np.radians(rng.uniform(60, 75))
    body[:, 16, 2] -= down  # left shoulder about z (down = negative for the +x arm)
    body[:, 17, 2] += down
    body[:, 18, 1] -= np.radians(rng.uniform(5, 20))
    body[:, 19, 1] += np.radians(rng.uniform(5, 20))
    yaw0 = np.radians(rng.uniform(-40, 40))
    body[:, 0, 1] += yaw0
    for kind in kinds:
        if kind == "walk":
            s = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
            amp = np.radians(rng.uniform(15, 30))
            body[:, 1, 0] += -amp * np.maximum(s, 0)  # hips flex (negative x = leg forward)
            body[:, 2, 0] += -amp * np.maximum(-s, 0)
            body[:, 4, 0] += 1.6 * amp * np.maximum(s, 0)  # knees bend (positive x)
            body[:, 5, 0] += 1.6 * amp * np.maximum(-s, 0)
            body[:, 16, 1] += 0.8 * amp * s  # arms swing opposite to the legs
            body[:, 17, 1] += 0.8 * amp * s
            transl[:, 1] += 0.02 * np.abs(s)
        elif kind == "turn":
            body[:, 0, 1] += np.radians(rng.uniform(-120, 120)) * t / max(t[-1], 1e-6)
        elif kind == "arm_swing":
            amp = np.radians(rng.uniform(25, 60))
            body[:, 16, 2] += amp * (1 + _wave(rng, t, f)) / 2
            body[:, 17, 2] -= amp * (1 + _wave(rng, t, f)) / 2
            body[:, 18, 1] -= np.radians(rng.uniform(10, 60)) * (1 + _wave(rng, t, f)) / 2
            body[:, 19, 1] += np.radians(rng.uniform(10, 60)) * (1 + _wave(rng, t, f)) / 2
        elif kind == "leg_swing":
            side = int(rng.integers(1, 3))  # 1 = left hip, 2 = right hip
            body[:, side, 0] += np.radians(rng.uniform(20, 45)) * _wave(rng, t, f, 1)
            body[:, side, 2] += (
                np.radians(rng.uniform(0, 15)) * (1 if side == 1 else -1) * (1 + _wave(rng, t, f)) / 2
            )
        elif kind == "squat":
            depth = (1 - np.cos(2 * np.pi * 0.6 * f * t + rng.uniform(0, 1))) / 2  # in [0, 1]
            knee = np.radians(rng.uniform(50, 90)) * depth
            body[:, 1, 0] -= knee * 0.9
            body[:, 2, 0] -= knee * 0.9
            body[:, 4, 0] += knee * 1.8
            body[:, 5, 0] += knee * 1.8
            body[:, 7, 0] -= knee * 0.9
            body[:, 8, 0] -= knee * 0.9
            body[:, 3, 0] += knee * 0.3  # lean forward
            transl[:, 1] -= 0.35 * (1 - np.cos(knee))  # lower the pelvis
        elif kind == "dance":
            for j, axis, deg in (
                (3, 1, 20),
                (6, 2, 12),
                (9, 0, 10),
                (12, 1, 20),
                (15, 2, 15),
                (16, 0, 50),
                (17, 0, 50),
            ):
                body[:, j, axis] += np.radians(deg) * _wave(rng, t, f * rng.uniform(0.7, 1.5))
            body[:, 0, 1] += np.radians(25) * _wave(rng, t, 0.5 * f)
            transl[:, 0] += 0.08 * _wave(rng, t, 0.5 * f)
    # fingers: curl (toward the palm: -y for the left hand along +x, i.e. negative z; mirrored right)
    hand = np.zeros((T, 2, 5, 3, 3))  # hand, finger, segment, axis
    curl = np.radians(rng.uniform(10, 70)) * (1 + _wave(rng, t, f * rng.uniform(0.5, 1.5))) / 2
    spread = np.radians(rng.uniform(0, 12)) * _wave(rng, t, f)
    for finger in range(4):  # index, middle, pinky, ring
        for seg in range(3):
            hand[:, 0, finger, seg, 2] = -curl
            hand[:, 1, finger, seg, 2] = curl
        offset = (finger - 1.5) / 1.5  # fan out around the middle finger
        hand[:, 0, finger, 0, 1] = spread * offset
        hand[:, 1, finger, 0, 1] = -spread * offset
    hand[:, 0, 4, :, 1] = -0.4 * curl[:, None]  # thumb folds in
    hand[:, 1, 4, :, 1] = 0.4 * curl[:, None]
    # joint limits (radians) as a final clamp: keep every rotation component inside +-150 degrees
    body = np.clip(body, -np.radians(150), np.radians(150))
    return {
        "global_orient": body[:, 0].astype(np.float32),
        "body_pose": body[:, 1:].astype(np.float32),
        "hand_pose": hand.reshape(T, 30, 3).astype(np.float32),
        "transl": transl.astype(np.float32),
        "kinds": tuple(str(k) for k in kinds),
    }


def pose_joints(motion: dict, rest: torch.Tensor) -> torch.Tensor:
    """World joints (T, 55, 3) of a motion on a rest skeleton (the geometry's FK)."""

    from dimo.geometry.skeleton import forward_kinematics, pose_to_rotmats

    rot = pose_to_rotmats(
        torch.from_numpy(motion["global_orient"]),
        torch.from_numpy(motion["body_pose"]),
        torch.from_numpy(motion["hand_pose"]),
    )  # (T, 55, 3, 3)
    return forward_kinematics(rot, rest, torch.from_numpy(motion["transl"]))


# ---- rendering ------------------------------------------------------------------------------------
def _background(
    ident: Identity, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Sky/floor background per frame (T, 3, H, W): the floor is where pixel rays hit y = 0."""

    from dimo.geometry.cameras import camera_centers

    T = R.shape[0]
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)  # (P, 3)
    rays_cam = pix @ torch.linalg.inv(K).transpose(-1, -2)  # (T, P, 3)
    rays_world = rays_cam @ R  # R^T d, (T, P, 3)
    center = camera_centers(R, t)  # (T, 3)
    s = -center[:, None, 1] / rays_world[..., 1].clamp(max=-1e-6)  # ray parameter at y = 0
    floor = (rays_world[..., 1] < 0) & (s > 0)
    hit = center[:, None, :] + s[..., None] * rays_world  # (T, P, 3)
    checker = ((torch.floor(hit[..., 0] * 2) + torch.floor(hit[..., 2] * 2)) % 2).abs()  # 50 cm tiles
    top = torch.from_numpy(ident.bg_top)
    low = torch.from_numpy(ident.bg_floor)
    sky = top * (0.85 + 0.15 * (1 - v.reshape(-1, 1) / h))  # (P, 3) slight vertical gradient
    floor_col = low * (0.8 + 0.2 * checker[..., None])  # (T, P, 3)
    img = torch.where(floor[..., None], floor_col, sky.expand(T, -1, -1))
    return img.reshape(T, h, w, 3).permute(0, 3, 1, 2)  # (T, 3, H, W)


def render_views(ident: Identity, joints: torch.Tensor, trajs: list, h: int, w: int) -> list[np.ndarray]:
    """Frames of several camera paths over the same motion, ray-cast in one batch.

    joints (T, 55, 3) -> one uint8 (T, H, W, 3) array per path; the same frames as rendering each
    path on its own (every pixel is computed independently of the batch).
    """

    from dimo.geometry.renderer import render_bones, toy_body_ellipsoids
    from dimo.geometry.skeleton import JOINT_RADII, bone_radii

    if not trajs:
        return []
    T = joints.shape[0]
    jj = joints.repeat(len(trajs), 1, 1)  # (V*T, 55, 3), view-major
    K, R, t = (torch.cat([getattr(traj, k) for traj in trajs]) for k in ("K", "R", "t"))
    radii = bone_radii(JOINT_RADII * ident.thickness)
    out = render_bones(
        jj,
        K,
        R,
        t,
        h,
        w,
        radii=radii,
        extra=toy_body_ellipsoids(jj, ident.scale),
        part_colors=ident.part_colors,
        stripes=ident.stripes,
    )
    bg = _background(ident, R, t, K, h, w)
    rgb = torch.where(out.mask[:, None], out.rgb, bg)  # (V*T, 3, H, W)
    frames = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return [frames[v * T : (v + 1) * T] for v in range(len(trajs))]


def render_view(ident: Identity, joints: torch.Tensor, traj, h: int, w: int) -> np.ndarray:
    """Frames of one camera path: joints (T, 55, 3) -> uint8 (T, H, W, 3)."""

    return render_views(ident, joints, [traj], h, w)[0]


def _camera_json(traj) -> dict:
    """K, R, t of a path for the manifest: one matrix when constant over the clip, else per frame."""

    out = {}
    for key, arr in (("K", traj.K), ("R", traj.R), ("t", traj.t)):
        out[key] = (arr[0] if torch.equal(arr, arr[:1].expand_as(arr)) else arr).tolist()
    return out


def _cameras_for(source: str, rng: np.random.Generator, cfg: SynthConfig, seed: int) -> list:
    from dimo.geometry.cameras import camera_prompt, make_trajectory

    common = dict(width=cfg.width, height=cfg.height, fov_deg=cfg.fov_deg)
    T = cfg.num_frames
    radius = float(rng.uniform(*cfg.radius))
    if source == "internet":
        kind = "handheld" if rng.random() < cfg.handheld_prob else "static"
        az, el = float(rng.uniform(-70, 70)), float(rng.uniform(0, 15))
        return [make_trajectory(kind, T, radius=radius, azimuth=az, elevation=el, seed=seed, **common)]
    if source == "ue5":
        n = int(rng.integers(cfg.ue5_trajectories[0], cfg.ue5_trajectories[1] + 1))
        kinds = rng.choice(TRAJECTORIES, size=n, replace=n > len(TRAJECTORIES))
        trajs = []
        for i, kind in enumerate(kinds):
            degrees = {
                "orbit": float(rng.uniform(60, 120)),
                "arc": float(rng.uniform(20, 45)),
                "pan": float(rng.uniform(5, 12)),
            }
            trajs.append(
                make_trajectory(
                    str(kind),
                    T,
                    radius=radius,
                    azimuth=float(rng.uniform(-90, 90)),
                    elevation=float(rng.uniform(0, 20)),
                    degrees=degrees.get(str(kind)),
                    direction="left" if rng.random() < 0.5 else "right",
                    seed=seed + i,
                    **common,
                )
            )
        return trajs
    n = int(rng.integers(cfg.multiview_cameras[0], cfg.multiview_cameras[1] + 1))
    az0, el = float(rng.uniform(0, 360)), float(rng.uniform(0, 12))
    trajs = []
    for k in range(n):
        traj = make_trajectory(
            "static", T, radius=radius, azimuth=az0 + 360.0 * k / n, elevation=el, **common
        )
        traj.prompt = camera_prompt(traj.centers[0], "static")
        trajs.append(traj)
    return trajs


def make_clip(root: Path, source: str, index: int, cfg: SynthConfig) -> ClipRecord:
    """Generate, render and write one clip; returns its manifest record."""

    clip_id = f"{source}_{index:04d}"
    seed = cfg.seed * 1_000_003 + {"internet": 0, "ue5": 1, "multiview": 2}[source] * 10_007 + index
    rng = np.random.default_rng([cfg.seed, {"internet": 0, "ue5": 1, "multiview": 2}[source], index])
    ident = make_identity(rng)
    motion = make_motion(rng, cfg.num_frames, cfg.fps)
    joints = pose_joints(motion, ident.rest)  # (T, 55, 3)
    trajs = _cameras_for(source, rng, cfg, seed)
    clip_dir = root / "clips" / clip_id
    clip_dir.mkdir(parents=True, exist_ok=True)
    views = []
    all_frames = render_views(ident, joints, trajs, cfg.height, cfg.width)
    for v, (traj, frames) in enumerate(zip(trajs, all_frames)):
        rel = f"clips/{clip_id}/view_{v:02d}.mp4"
        write_video(root / rel, frames, cfg.fps, crf=cfg.crf)
        cams = _camera_json(traj)
        views.append(ViewRecord(video=rel, camera_prompt=traj.prompt, name=traj.kind, **cams))
    motion_rel = f"clips/{clip_id}/motion.npz"
    arrays = {k: motion[k] for k in ("global_orient", "body_pose", "hand_pose", "transl")}
    with atomic_path(root / motion_rel, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp, **arrays, rest_joints=ident.rest.numpy(), joints=joints.numpy().astype(np.float32)
        )
    return ClipRecord(
        id=clip_id,
        source=source,
        fps=cfg.fps,
        num_frames=cfg.num_frames,
        views=tuple(views),
        height=cfg.height,
        width=cfg.width,
        motion=MotionRecord(file=motion_rel, body="gt", hands="gt", joints3d="gt"),
        caption=None,
        root=root,
    )


def synthesize(
    root: str | os.PathLike, cfg: SynthConfig | None = None, overwrite: bool = False
) -> list[ClipRecord]:
    """Build the toy dataset at ``root`` (``manifest.jsonl`` + clips); returns the records.

    An existing dataset (a manifest at ``root``) is an error unless ``overwrite``; then its
    ``clips/`` and manifest are replaced. The manifest is written last, so an interrupted build
    never looks complete.
    """

    cfg = cfg or SynthConfig()
    root = Path(root)
    if (root / MANIFEST_NAME).exists():
        if not overwrite:
            raise FileExistsError(f"{root / MANIFEST_NAME} exists; pass overwrite=True (--force) to rebuild")
        (root / MANIFEST_NAME).unlink()
        shutil.rmtree(root / "clips", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    prev_threads = torch.get_num_threads()
    # one thread: every op here is small (one 64x64 view at a time), so extra OpenMP threads only add
    # synchronisation and spin-waiting, which on a busy 2-core machine costs several times the work
    torch.set_num_threads(1)
    try:
        records = [
            make_clip(root, source, i, cfg)
            for source, n in (
                ("internet", cfg.num_internet),
                ("ue5", cfg.num_ue5),
                ("multiview", cfg.num_multiview),
            )
            for i in range(n)
        ]
    finally:
        torch.set_num_threads(prev_threads)
    atomic_write_text(
        root / "synth_config.json",
        json.dumps({**asdict(cfg), "seconds": round(time.perf_counter() - start, 2)}, indent=1) + "\n",
    )
    write_manifest(root, records)
    return records
