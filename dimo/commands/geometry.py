"""``python -m dimo.cli geometry preview``: look at a posed skeleton and a camera path by eye.

Writes ``views.png`` (columns = views around the subject; rows = shaded RGB, camera-space normals,
depth, and the 2D skeleton map) and ``trajectory_<kind>.mp4`` (H.264, yuv420p, via PyAV: RGB |
normal | depth for every camera of the path), plus the trajectory's camera prompt on stdout. With
``--motion FILE.npz`` (SMPL-X parameters: ``global_orient``, ``body_pose``, optional
``left_hand_pose``/``right_hand_pose`` or ``hand_pose``, ``jaw_pose``, ``transl``, ``betas``; or
posed ``joints`` (T, 55, 3)) the user's own motion is shown; ``--model-dir`` takes the rest skeleton
(and ``betas``) from a real SMPL-X model instead of dimo's neutral skeleton.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dimo.geometry import cameras as cam
from dimo.geometry import renderer as rd
from dimo.geometry import skeleton as sk
from dimo.geometry.rotations import axis_angle_to_matrix
from dimo.viz import depth_range, depth_to_image

__all__ = ["demo_motion", "load_motion_joints", "main", "write_mp4"]


def demo_motion(num_frames: int) -> torch.Tensor:
    """A short built-in motion (waving, stepping in place): world joints (T, 55, 3)."""

    s = torch.arange(num_frames, dtype=torch.float32) / 24.0 * 2 * torch.pi * 0.5  # phase, 0.5 Hz
    aa = torch.zeros(num_frames, 55, 3)
    aa[:, 16, 2] = -1.2  # left shoulder: arm down-ish
    aa[:, 17, 2] = 1.3 + 0.1 * torch.sin(s)  # right shoulder: arm down
    aa[:, 16, 1] = -0.3
    aa[:, 18, 1] = -1.6 + 0.4 * torch.sin(2 * s)  # left elbow: waving forearm
    aa[:, 19, 1] = 0.3
    aa[:, 1, 0] = -0.5 * torch.relu(torch.sin(s))  # left hip flexes
    aa[:, 4, 0] = 1.0 * torch.relu(torch.sin(s))  # left knee
    aa[:, 2, 0] = -0.5 * torch.relu(-torch.sin(s))
    aa[:, 5, 0] = 1.0 * torch.relu(-torch.sin(s))
    aa[:, 15, 1] = 0.3 * torch.sin(s)  # head turns
    aa[:, sk.LEFT_HAND_IDS, 2] = -0.3 * (1 + torch.sin(2 * s))[:, None]  # fingers curl
    aa[:, sk.RIGHT_HAND_IDS, 2] = 0.2
    return sk.forward_kinematics(axis_angle_to_matrix(aa), sk.rest_joints())


def load_motion_joints(path: Path, model_dir: Path | None = None, gender: str = "neutral") -> torch.Tensor:
    """World joints (T, 55, 3) from a motion ``.npz`` (:func:`dimo.geometry.motion.read_motion_joints`)."""

    from dimo.geometry.motion import read_motion_joints

    return read_motion_joints(path, model_dir=model_dir, gender=gender)


def _facing(joints: torch.Tensor) -> tuple[float, float, float]:
    """Horizontal facing direction of a posed skeleton (55, 3): left hip - right hip, turned by 90 degrees."""

    left = joints[1] - joints[2]
    f = torch.linalg.cross(left, torch.tensor([0.0, 1.0, 0.0]))
    f[1] = 0
    if f.norm() < 1e-6:
        return (0.0, 0.0, 1.0)
    f = f / f.norm()
    return (float(f[0]), float(f[1]), float(f[2]))


def _panels(out: rd.BoneRender, near_far: tuple[float, float]) -> torch.Tensor:
    """RGB | normal | depth side by side, uint8 (B, H, 3W, 3)."""

    depth = depth_to_image(out.depth, out.mask, near_far)  # near = bright
    normal = (out.normal * 0.5 + 0.5) * out.mask[:, None]
    assert out.rgb is not None
    img = torch.cat([out.rgb, normal, depth.to(out.rgb)], dim=-1)  # (B, 3, H, 3W)
    return (img.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


def _render(
    joints: torch.Tensor, traj_K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, size: int
) -> rd.BoneRender:
    extra = rd.toy_body_ellipsoids(joints)
    bg = torch.tensor([0.18, 0.18, 0.22])
    return rd.render_bones(
        joints, traj_K, R, t, size, size, extra=extra, part_colors=rd.DEFAULT_PART_COLORS, background=bg
    )


def write_mp4(frames: np.ndarray, path: Path, fps: float = 24.0, crf: int = 18) -> None:
    """Encode uint8 frames (T, H, W, 3) as H.264 / yuv420p (H and W must be even)."""

    from dimo.data.video import write_video

    write_video(path, frames, fps, crf=crf)


def preview(args: argparse.Namespace) -> int:
    from PIL import Image, ImageDraw
    from rich.progress import Progress

    size = args.size + args.size % 2
    if args.motion is not None:
        joints_seq = load_motion_joints(args.motion, args.model_dir, args.gender)
    else:
        joints_seq = demo_motion(max(args.frames, 1))
    frame = min(args.frame, joints_seq.shape[0] - 1)
    posed = joints_seq[frame]  # (55, 3)
    target = tuple(float(x) for x in posed[0])  # look at the pelvis
    facing = _facing(posed)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    # --- several views of one frame ---
    azimuths = [360.0 * i / args.views for i in range(args.views)]
    views = [
        cam.make_trajectory(
            "static", 1, width=size, height=size, fov_deg=args.fov, radius=args.radius, azimuth=a,
            elevation=args.elevation, target=target, facing=facing,
        )
        for a in azimuths
    ]  # fmt: skip
    K = torch.cat([v.K for v in views])
    R = torch.cat([v.R for v in views])
    t = torch.cat([v.t for v in views])
    J = posed.expand(args.views, 55, 3)
    out = _render(J, K, R, t, size)
    panels = _panels(out, depth_range(out.depth, out.mask))  # (V, S, 3S, 3)
    skel = rd.render_skeleton_map(J, K, R, t, size, size, line_width=max(2.0, size / 128))
    skel = (skel.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)  # (V, S, S, 3)
    rows = [panels[..., i * size : (i + 1) * size, :] for i in range(3)] + [skel]
    grid = torch.cat([torch.cat(list(r), dim=1) for r in rows], dim=0).numpy()  # (4S, V*S, 3)
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    for i, v in enumerate(views):
        draw.text((i * size + 4, 4), v.prompt.split(".")[0], fill=(255, 255, 255))
    for r, name in enumerate(("rgb", "normal", "depth", "skeleton map")):
        draw.text((4, r * size + size - 14), name, fill=(255, 255, 255))
    png = out_dir / "views.png"
    image.save(png)
    print(f"wrote {png}")

    # --- a camera trajectory over the motion ---
    if args.frames > 0:
        traj = cam.make_trajectory(
            args.trajectory, args.frames, width=size, height=size, fov_deg=args.fov, radius=args.radius,
            elevation=args.elevation, target=target, facing=facing, degrees=args.degrees, direction=args.direction,
        )  # fmt: skip
        renders: list[rd.BoneRender] = []
        chunk = 8
        with Progress(transient=True) as progress:
            task = progress.add_task(f"rendering {args.trajectory}", total=args.frames)
            for f0 in range(0, args.frames, chunk):
                idx = torch.arange(f0, min(args.frames, f0 + chunk))
                joints = joints_seq[idx % joints_seq.shape[0]]
                renders.append(_render(joints, traj.K[idx], traj.R[idx], traj.t[idx], size))
                progress.advance(task, len(idx))
        # one depth range for the whole video, so brightness does not flicker
        near_far = depth_range(torch.cat([r.depth for r in renders]), torch.cat([r.mask for r in renders]))
        video = torch.cat([_panels(r, near_far) for r in renders]).numpy()  # (T, S, 3S, 3)
        mp4 = out_dir / f"trajectory_{args.trajectory}.mp4"
        write_mp4(video, mp4, fps=args.fps)
        print(f"wrote {mp4}")
        print(f"prompt: {traj.prompt}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dimo geometry", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("preview", help="render views of a posed skeleton (PNG) and a camera trajectory (MP4)")
    p.add_argument(
        "--motion", type=Path, default=None, help="motion .npz (SMPL-X params or joints); default: demo"
    )
    p.add_argument(
        "--model-dir", type=Path, default=None, help="SMPL-X model directory for the rest skeleton"
    )
    p.add_argument("--gender", default="neutral")
    p.add_argument("--frame", type=int, default=0, help="motion frame shown in views.png")
    p.add_argument("--out", type=Path, default=Path("runs/geometry_preview"))
    p.add_argument("--size", type=int, default=256, help="panel size in pixels")
    p.add_argument("--views", type=int, default=4, help="views around the subject in views.png")
    p.add_argument("--trajectory", choices=cam.TRAJECTORY_KINDS, default="orbit")
    p.add_argument("--frames", type=int, default=48, help="trajectory frames (0: no video)")
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--radius", type=float, default=3.0, help="camera distance to the pelvis (m)")
    p.add_argument("--elevation", type=float, default=5.0, help="camera elevation (degrees)")
    p.add_argument("--fov", type=float, default=40.0, help="vertical field of view (degrees)")
    p.add_argument("--degrees", type=float, default=None, help="sweep of orbit/arc/pan")
    p.add_argument("--direction", choices=("left", "right"), default="right")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.views < 1:
        print("dimo geometry preview: --views must be >= 1", file=sys.stderr)
        return 2
    try:
        return preview(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"dimo geometry preview: {err}", file=sys.stderr)
        return 2
