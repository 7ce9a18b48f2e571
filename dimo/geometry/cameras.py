"""Pinhole cameras, camera trajectories, and the camera-to-text prompt.

Convention (OpenCV, as in ``docs/contracts.md``):

* extrinsics are **world-to-camera**: ``X_cam = R @ X_world + t``; the camera centre is ``-R^T t``;
* camera axes: x right, y down, z forward (the viewing direction); ``det(R) = +1``;
* intrinsics ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels, ``u = fx*x/z + cx``,
  ``v = fy*y/z + cy``; continuous image coordinates have pixel (row i, column j) centred at
  ``(j + 0.5, i + 0.5)``, so the centre of a W x H image is ``(W/2, H/2)``;
* world: metres, y up, the subject at the origin facing +z (its left side is +x).

A camera "moves to the right" along its own +x axis. Arcing/orbiting right around a subject seen
from the front therefore moves the camera towards the subject's left side (+x); panning right turns
the viewing direction towards the camera's +x. The prompt of a trajectory is
``"<view>. The camera <motion>."``, the view named from the first camera's azimuth relative to the
subject's facing direction ("Front view", "Left side view", "Back-right view", ...), with a
"High-angle"/"Low-angle" prefix for steep elevations. Everything here is deterministic
(the handheld jitter draws from a seeded generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dimo.geometry.rotations import axis_angle_to_matrix

__all__ = [
    "TRAJECTORY_KINDS",
    "Trajectory",
    "TrajectoryMotion",
    "TrajectoryKind",
    "camera_centers",
    "camera_prompt",
    "describe_trajectory",
    "intrinsics",
    "look_at",
    "make_trajectory",
    "motion_phrase",
    "project",
    "relative_rotation",
    "trajectory_prompt",
    "view_name",
]

TrajectoryKind = Literal[
    "static", "orbit", "arc", "dolly_in", "dolly_out", "pan", "zoom_in", "zoom_out", "handheld"
]
TRAJECTORY_KINDS: tuple[str, ...] = TrajectoryKind.__args__  # type: ignore[attr-defined]
Direction = Literal["left", "right"]

_WORLD_UP = (0.0, 1.0, 0.0)


def look_at(
    eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | tuple[float, float, float] = _WORLD_UP
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera (R (..., 3, 3), t (..., 3)) of a camera at ``eye`` looking at ``target``.

    Camera z points at the target, x = z cross up (right), y = z cross x (down); rows of R are the
    camera axes in world coordinates, so ``det(R) = +1``. ``up`` must not be parallel to the view.
    """

    eye = torch.as_tensor(eye, dtype=torch.float32) if not torch.is_tensor(eye) else eye
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device)
    up_t = torch.as_tensor(up, dtype=eye.dtype, device=eye.device)
    z = target - eye
    if (z.norm(dim=-1) < 1e-9).any():
        raise ValueError("look_at: eye and target coincide")
    z = F.normalize(z, dim=-1)
    x = torch.linalg.cross(z, up_t.expand_as(z), dim=-1)
    if (x.norm(dim=-1) < 1e-6).any():
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    x = F.normalize(x, dim=-1)
    y = torch.linalg.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-2)  # rows = camera axes, (..., 3, 3)
    t = -(R @ eye[..., None])[..., 0]
    return R, t


def intrinsics(
    width: int,
    height: int,
    fov_deg: float | torch.Tensor = 45.0,
    *,
    focal: float | torch.Tensor | None = None,
    cx: float | None = None,
    cy: float | None = None,
) -> torch.Tensor:
    """Pinhole K (3, 3), or (..., 3, 3) for a tensor ``fov_deg``/``focal``.

    The focal length (square pixels) comes from ``focal`` in pixels, else from the **vertical**
    field of view ``fov_deg``. The principal point defaults to the image centre ``(W/2, H/2)``.
    """

    if focal is None:
        fov = torch.as_tensor(fov_deg, dtype=torch.float32)
        if ((fov <= 0) | (fov >= 180)).any():
            raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
        f = 0.5 * height / torch.tan(torch.deg2rad(fov) / 2)
    else:
        f = torch.as_tensor(focal, dtype=torch.float32)
    K = torch.zeros(*f.shape, 3, 3)
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = width / 2 if cx is None else cx
    K[..., 1, 2] = height / 2 if cy is None else cy
    K[..., 2, 2] = 1.0
    return K


def project(
    points: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (..., N, 3) -> pixel coordinates (..., N, 2) and camera-space z depth (..., N).

    K, R (..., 3, 3) and t (..., 3) broadcast against the points' leading dims. Note: this depth is
    the z coordinate; the renderer's depth maps are distances to the camera centre.
    """

    cam = points @ R.transpose(-1, -2) + t[..., None, :]  # (..., N, 3)
    z = cam[..., 2]
    pix = cam @ K.transpose(-1, -2)  # (..., N, 3)
    uv = pix[..., :2] / pix[..., 2:3]
    return uv, z


def camera_centers(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Camera centres in world coordinates, ``-R^T t`` (..., 3)."""

    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def relative_rotation(R: torch.Tensor) -> torch.Tensor:
    """Rotation of each view relative to the first: ``R_v @ R_0^T`` for R (..., V, 3, 3)."""

    return R @ R[..., :1, :, :].transpose(-1, -2)


@dataclass
class Trajectory:
    """A camera path over T frames (world-to-camera, OpenCV convention, pixels of height x width)."""

    R: torch.Tensor  # (T, 3, 3)
    t: torch.Tensor  # (T, 3)
    K: torch.Tensor  # (T, 3, 3)
    kind: str
    prompt: str
    height: int = 0
    width: int = 0

    def __post_init__(self) -> None:
        T = self.R.shape[0]
        if self.R.shape != (T, 3, 3) or self.t.shape != (T, 3) or self.K.shape != (T, 3, 3):
            raise ValueError(
                f"Trajectory shapes disagree: R {tuple(self.R.shape)}, t {tuple(self.t.shape)}, K {tuple(self.K.shape)}"
            )

    def __len__(self) -> int:
        return self.R.shape[0]

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres (T, 3)."""

        return camera_centers(self.R, self.t)


def _yaw(deg: float | torch.Tensor) -> torch.Tensor:
    """Rotation about world +y by ``deg`` degrees (maps +z towards +x for positive angles)."""

    a = torch.deg2rad(torch.as_tensor(deg, dtype=torch.float32))
    aa = torch.stack([torch.zeros_like(a), a, torch.zeros_like(a)], dim=-1)
    return axis_angle_to_matrix(aa)


def _facing_yaw(facing: tuple[float, float, float] | torch.Tensor) -> float:
    f = torch.as_tensor(facing, dtype=torch.float32)
    if float(f[0] ** 2 + f[2] ** 2) < 1e-12:
        raise ValueError("facing must have a horizontal component")
    return math.degrees(math.atan2(float(f[0]), float(f[2])))


def view_name(
    eye: torch.Tensor | tuple[float, float, float],
    subject: torch.Tensor | tuple[float, float, float] = (0.0, 0.9, 0.0),
    facing: torch.Tensor | tuple[float, float, float] = (0.0, 0.0, 1.0),
) -> str:
    """Name the view of a camera at ``eye``: "Front view", "Left side view", "Back-right view", ...

    The azimuth of the camera around the subject is measured from the subject's facing direction
    towards the subject's left (+x for a subject facing +z); 45-degree sectors give the name.
    """

    d = torch.as_tensor(eye, dtype=torch.float32) - torch.as_tensor(subject, dtype=torch.float32)
    horiz = math.hypot(float(d[0]), float(d[2]))
    elevation = math.degrees(math.atan2(float(d[1]), horiz))
    azimuth = math.degrees(math.atan2(float(d[0]), float(d[2]))) - _facing_yaw(facing)
    azimuth = (azimuth + 180.0) % 360.0 - 180.0  # (-180, 180], + = subject's left
    if horiz < 1e-6:
        name = "top" if d[1] > 0 else "bottom"
        return f"{name.capitalize()} view"
    sector = round(azimuth / 45.0) % 8
    name = (
        "front",
        "front-left",
        "left side",
        "back-left",
        "back",
        "back-right",
        "right side",
        "front-right",
    )[sector]
    if elevation > 35.0:
        name = f"high-angle {name}"
    elif elevation < -20.0:
        name = f"low-angle {name}"
    return f"{name[0].upper()}{name[1:]} view"


def _deg(x: float) -> str:
    return f"{round(x):d}"


def motion_phrase(kind: TrajectoryKind, degrees: float | None = None, direction: Direction = "right") -> str:
    """The "<motion>" part of a prompt, e.g. "arcs 30 degrees to the right"."""

    if kind in ("orbit", "arc", "pan") and degrees is None:
        raise ValueError(f"{kind} needs degrees")
    phrases = {
        "static": "remains static",
        "orbit": f"orbits {_deg(degrees or 0)} degrees to the {direction} around the subject",
        "arc": f"arcs {_deg(degrees or 0)} degrees to the {direction}",
        "dolly_in": "dollies in toward the subject",
        "dolly_out": "dollies out away from the subject",
        "pan": f"pans {_deg(degrees or 0)} degrees to the {direction}",
        "zoom_in": "zooms in",
        "zoom_out": "zooms out",
        "handheld": "is handheld with slight shaking",
    }
    if kind not in phrases:
        raise ValueError(f"unknown trajectory kind {kind!r}; expected one of {TRAJECTORY_KINDS}")
    return phrases[kind]


def camera_prompt(
    eye: torch.Tensor | tuple[float, float, float],
    kind: TrajectoryKind,
    *,
    degrees: float | None = None,
    direction: Direction = "right",
    subject: torch.Tensor | tuple[float, float, float] = (0.0, 0.9, 0.0),
    facing: torch.Tensor | tuple[float, float, float] = (0.0, 0.0, 1.0),
) -> str:
    """``"<view>. The camera <motion>."`` for a path starting at ``eye``.

    >>> camera_prompt((3.0, 0.9, 0.0), "arc", degrees=30, direction="right")
    'Left side view. The camera arcs 30 degrees to the right.'
    """

    return f"{view_name(eye, subject, facing)}. The camera {motion_phrase(kind, degrees, direction)}."


_DEFAULT_DEGREES = {"orbit": 360.0, "arc": 30.0, "pan": 20.0}


def make_trajectory(
    kind: TrajectoryKind,
    num_frames: int,
    *,
    width: int = 256,
    height: int = 256,
    fov_deg: float = 40.0,
    radius: float = 3.0,
    azimuth: float = 0.0,
    elevation: float = 5.0,
    target: tuple[float, float, float] = (0.0, 0.9, 0.0),
    facing: tuple[float, float, float] = (0.0, 0.0, 1.0),
    degrees: float | None = None,
    direction: Direction = "right",
    dolly: float = 0.4,
    zoom: float = 1.5,
    jitter_m: float = 0.015,
    jitter_deg: float = 1.0,
    seed: int = 0,
) -> Trajectory:
    """A camera path of ``num_frames`` frames looking at ``target``.

    The start camera sits ``radius`` m from ``target`` at ``azimuth`` degrees (0 = in front of the
    subject, + towards its left) and ``elevation`` degrees. ``degrees`` is the sweep of
    orbit/arc/pan (defaults 360/30/20), ``direction`` its side; ``dolly`` is the fraction of the
    radius a dolly covers; ``zoom`` the focal-length ratio of a zoom; ``jitter_*`` the handheld
    shake (smooth, seeded by ``seed``). Motion is linear in the frame index from frame 0 to T-1.
    """

    if kind not in TRAJECTORY_KINDS:
        raise ValueError(f"unknown trajectory kind {kind!r}; expected one of {TRAJECTORY_KINDS}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if direction not in ("left", "right"):
        raise ValueError(f"direction must be 'left' or 'right', got {direction!r}")
    if not 0.0 < dolly < 1.0:
        raise ValueError(f"dolly must be in (0, 1), got {dolly}")
    if zoom <= 1.0:
        raise ValueError(f"zoom must be > 1, got {zoom}")
    if kind in _DEFAULT_DEGREES and degrees is None:
        degrees = _DEFAULT_DEGREES[kind]
    T = num_frames
    s = torch.linspace(0.0, 1.0, T) if T > 1 else torch.zeros(1)  # progress (T,)
    sign = 1.0 if direction == "right" else -1.0
    tgt = torch.tensor(target, dtype=torch.float32)
    face_yaw = _facing_yaw(facing)
    el = math.radians(elevation)
    # start offset from the target in the subject's frame, then turned to its facing direction
    offset0 = torch.tensor([0.0, math.sin(el), math.cos(el)]) * radius
    offset0 = _yaw(face_yaw + azimuth) @ offset0
    eye0 = tgt + offset0
    f0 = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    focal = torch.full((T,), f0)
    eyes = eye0.expand(T, 3).clone()
    targets = tgt.expand(T, 3).clone()
    ups = torch.tensor(_WORLD_UP).expand(T, 3).clone()

    if kind in ("orbit", "arc"):
        eyes = tgt + (_yaw(sign * (degrees or 0.0) * s) @ offset0[:, None])[..., 0]
    elif kind in ("dolly_in", "dolly_out"):
        # dolly in covers `dolly` of the start radius towards the target; dolly out the same away
        frac = (1.0 - dolly * s) if kind == "dolly_in" else (1.0 + dolly * s)  # (T,)
        eyes = tgt + offset0[None] * frac[:, None]
    elif kind == "pan":
        # turn the viewing direction towards the camera's right (a negative yaw about +y)
        targets = eye0 + (_yaw(-sign * (degrees or 0.0) * s) @ (tgt - eye0)[:, None])[..., 0]
    elif kind in ("zoom_in", "zoom_out"):
        ratio = zoom**s if kind == "zoom_in" else zoom ** (-s)
        focal = f0 * ratio
    elif kind == "handheld":
        g = torch.Generator().manual_seed(seed)
        # smooth shake: a few random sinusoids per axis, bounded by the jitter amplitudes
        freqs = torch.rand(2, 3, 3, generator=g) * 2.0 + 0.5  # (pos/rot, axis, component) cycles per clip
        phases = torch.rand(2, 3, 3, generator=g) * 2 * math.pi
        ts = s[:, None, None] * (T - 1) / 24.0  # seconds at 24 fps
        wave = torch.sin(2 * math.pi * freqs[0] * ts + phases[0]).mean(-1)  # (T, 3)
        eyes = eye0 + jitter_m * wave
        ang = torch.sin(2 * math.pi * freqs[1] * ts + phases[1]).mean(-1)  # (T, 3)
        targets = tgt + (tgt - eye0).norm() * math.radians(jitter_deg) * ang

    R, t = look_at(eyes, targets, ups)
    if kind == "handheld":
        # a little roll about the viewing axis
        roll = torch.deg2rad(torch.tensor(jitter_deg)) * 0.5 * torch.sin(2 * math.pi * s * 0.7 + float(seed))
        Rz = axis_angle_to_matrix(torch.stack([torch.zeros_like(roll), torch.zeros_like(roll), roll], -1))
        R = Rz @ R
        t = (Rz @ t[..., None])[..., 0]
    K = intrinsics(width, height, focal=focal)
    prompt = camera_prompt(eye0, kind, degrees=degrees, direction=direction, subject=tgt, facing=facing)
    return Trajectory(R=R, t=t, K=K, kind=kind, prompt=prompt, height=height, width=width)


# ---- trajectory -> prompt (the inverse of make_trajectory) ------------------------------------------
@dataclass(frozen=True)
class TrajectoryMotion:
    """What a camera path does, in :func:`motion_phrase`'s terms (``degrees`` for orbit/arc/pan)."""

    kind: str
    degrees: float | None = None
    direction: Direction = "right"


# thresholds of describe_trajectory (documented in docs/data.md, "renders")
STATIC_TOL = (1e-3, 0.1, 1e-3)  # centre (fraction of the subject distance), rotation (deg), focal ratio
SMALL_MOVE = (0.02, 3.0, 0.03)  # below all three: handheld shake (centre fraction, rotation deg, focal)
ORBIT_MIN_DEG = 50.0  # an arc sweeping at least this far is called an orbit


def _unwrapped_sweep(angles: torch.Tensor) -> float:
    """Total signed change of an angle sequence (radians, (T,)), unwrapped frame to frame, in degrees."""

    step = torch.remainder(angles[1:] - angles[:-1] + math.pi, 2 * math.pi) - math.pi
    return math.degrees(float(step.sum()))


def describe_trajectory(
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    subject: torch.Tensor | tuple[float, float, float] = (0.0, 0.9, 0.0),
) -> TrajectoryMotion | None:
    """Classify a per-frame camera path (K, R (T, 3, 3), t (T, 3); world y up) as a trajectory kind.

    The inverse of :func:`make_trajectory`, deterministic: with ``d`` the largest move of the camera
    centre from frame 0 as a fraction of its distance to ``subject``, ``a`` the largest rotation from
    frame 0, ``z`` the largest focal-length ratio change, and ``h`` the signed, frame-to-frame
    unwrapped turn of the viewing direction about the up axis (+ = towards +x):

    * nothing changes (``d`` < 0.1 %, ``a`` < 0.1 degree, ``z`` < 0.1 %): ``static``;
    * the centre stays (``d`` < 2 %) and the focal length changes by >= 3 %: ``zoom_in``/``zoom_out``;
    * the centre stays and the view turns >= 3 degrees: ``pan`` ``|h|`` degrees, to the right when
      ``h`` < 0 (the view turns towards the camera's +x);
    * everything small (``d`` < 2 %, ``a`` < 3 degrees, ``z`` < 3 %): ``handheld``;
    * the centre moves, the view turns >= 3 degrees and the distance to the subject stays within 10 %:
      ``arc`` (or ``orbit`` from 50 degrees) ``|h|`` degrees, to the right when ``h`` > 0 (the camera
      moves towards its own +x);
    * the centre moves along the line to the subject (within 18 degrees), the view turns < 3 degrees
      and the distance changes >= 5 %: ``dolly_in``/``dolly_out``;
    * anything else (a crane, a truck, a combined move): ``None``.
    """

    K, R, t = (torch.as_tensor(x, dtype=torch.float64) for x in (K, R, t))
    T = R.shape[0]
    K = K.expand(T, 3, 3) if K.ndim == 2 else K
    c = camera_centers(R, t)  # (T, 3)
    s = torch.as_tensor(subject, dtype=torch.float64)
    dist = (c - s).norm(dim=-1)  # (T,)
    scale = max(float(dist[0]), 1e-6)
    d = float((c - c[0]).norm(dim=-1).max()) / scale
    cos = ((torch.einsum("tij,ij->t", R, R[0]) - 1) / 2).clamp(-1, 1)  # trace(R_t R_0^T)
    a = math.degrees(float(torch.arccos(cos).max()))
    focal = K[:, 0, 0]
    ratio = focal / focal[0]
    z = float((ratio - 1).abs().max())
    view = R[:, 2]  # (T, 3) viewing directions
    h = _unwrapped_sweep(torch.atan2(view[:, 0], view[:, 2])) if T > 1 else 0.0
    radial = float(dist[-1] / dist[0]) - 1.0
    if d < STATIC_TOL[0] and a < STATIC_TOL[1] and z < STATIC_TOL[2]:
        return TrajectoryMotion("static")
    if d < SMALL_MOVE[0]:
        if z >= SMALL_MOVE[2] and a < SMALL_MOVE[1]:
            return TrajectoryMotion("zoom_in" if float(ratio[-1]) > 1 else "zoom_out")
        if abs(h) >= SMALL_MOVE[1] and z < SMALL_MOVE[2]:
            return TrajectoryMotion("pan", abs(h), "right" if h < 0 else "left")
        if a < SMALL_MOVE[1] and z < SMALL_MOVE[2]:
            return TrajectoryMotion("handheld")
        return None
    if z >= SMALL_MOVE[2]:
        return None
    if abs(h) >= SMALL_MOVE[1] and float((dist / dist[0] - 1).abs().max()) < 0.1:
        kind = "orbit" if abs(h) >= ORBIT_MIN_DEG else "arc"
        return TrajectoryMotion(kind, abs(h), "right" if h > 0 else "left")
    move, out = c[-1] - c[0], c[0] - s
    along = float(move @ out) / max(float(move.norm() * out.norm()), 1e-12)  # cos(move, line to subject)
    if abs(h) < SMALL_MOVE[1] and abs(radial) >= 0.05 and abs(along) > 0.95:
        return TrajectoryMotion("dolly_in" if radial < 0 else "dolly_out")
    return None


def trajectory_prompt(
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    subject: torch.Tensor | tuple[float, float, float] = (0.0, 0.9, 0.0),
    facing: torch.Tensor | tuple[float, float, float] = (0.0, 0.0, 1.0),
) -> str:
    """``"<view>. The camera <motion>."`` of a per-frame camera path (world y up): the view named from
    the first frame's centre (:func:`view_name`), the motion from :func:`describe_trajectory`.

    Raises ``ValueError`` when the path is none of the kinds :func:`describe_trajectory` knows. For
    every path :func:`make_trajectory` builds, this returns that trajectory's own ``prompt``.
    """

    R, t = torch.as_tensor(R, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
    motion = describe_trajectory(K, R, t, subject)
    if motion is None:
        raise ValueError(
            "the camera path is none of static, orbit, arc, dolly, pan, zoom or handheld shake "
            "(a combined or other move)"
        )
    eye = camera_centers(R[:1], t[:1])[0]
    return camera_prompt(
        eye.float(),
        motion.kind,
        degrees=motion.degrees,
        direction=motion.direction,
        subject=subject,
        facing=facing,
    )
