"""Camera sets of HVG generation: V static cameras (``--cameras`` of ``dimo.cli generate --model hvg``).

``ringN`` places N static cameras on a horizontal ring around the subject (view 0 in front, +z),
looking at the frame-0 pelvis, so the pelvis sits at the image centre of every view (HVG's
temporal/view alignment of the reference and first pose frame); ``trajectory:KIND[:N]`` takes N
viewpoints along a ``make_trajectory`` path and a ``.json`` file gives explicit views; those get the
same alignment as training samples (K shifted so the frame-0 pelvis is at the image centre). A bad
value is one :class:`~dimo.pipelines.errors.GenerateError` line (``docs/generate.md``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dimo.pipelines.errors import GenerateError

__all__ = ["MAX_VIEWS", "CameraSet", "check_cameras", "parse_cameras", "ring_cameras"]


@dataclass
class CameraSet:
    """V static cameras: K (V, 3, 3), R (V, 3, 3), t (V, 3) world-to-camera (OpenCV)."""

    K: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    name: str


def ring_cameras(
    num: int,
    target: torch.Tensor,
    height: int,
    width: int,
    radius: float = 3.0,
    elevation_deg: float = 10.0,
    fov_deg: float = 40.0,
) -> CameraSet:
    """``num`` cameras evenly on a ring around ``target`` (3,), view 0 on the +z side (the front)."""

    from dimo.geometry.cameras import intrinsics, look_at

    az = torch.arange(num, dtype=torch.float32) * (2 * math.pi / num)
    el = math.radians(elevation_deg)
    offset = torch.stack(
        [
            radius * math.cos(el) * torch.sin(az),
            radius * math.sin(el) * torch.ones_like(az),
            radius * math.cos(el) * torch.cos(az),
        ],
        dim=-1,
    )  # (V, 3)
    R, t = look_at(target[None] + offset, target[None].expand(num, 3))
    K = intrinsics(width, height, fov_deg)[None].expand(num, 3, 3).clone()
    return CameraSet(K, R, t, f"ring{num}")


MAX_VIEWS = 64
_EXPLICIT_KEYS = ("K", "R", "t")
_LOOK_AT_KEYS = ("eye", "target", "fov_deg")
_FORMS = "K, R, t or eye, target, fov_deg"


def _array(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    want = "x".join(map(str, shape))
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise GenerateError(f"{where} must be a {want} array of numbers") from None
    if arr.shape != shape:
        raise GenerateError(f"{where} has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        raise GenerateError(f"{where} has non-finite values")
    return arr


def _read_camera_file(path: Path) -> list[tuple[str, tuple[Any, ...]]]:
    """Validated views of a cameras ``.json``: ``("explicit", (K, R, t))`` or ``("look_at", (eye, target, fov))``."""

    if not path.is_file():
        raise GenerateError(
            f"camera file not found: {path} (expected a JSON list of views, see docs/generate.md)"
        )
    try:
        views = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        msg = " ".join(str(err).split())
        raise GenerateError(
            f"cannot read camera file {path}: {msg} (expected a JSON list of views)"
        ) from None
    if not isinstance(views, list) or not 1 <= len(views) <= MAX_VIEWS:
        got = f"a list of {len(views)}" if isinstance(views, list) else f"a JSON {type(views).__name__}"
        raise GenerateError(f"{path}: expected a JSON list of 1..{MAX_VIEWS} views, got {got}")
    out: list[tuple[str, tuple[Any, ...]]] = []
    for i, view in enumerate(views):
        where = f"{path}: view {i}"
        if not isinstance(view, dict):
            raise GenerateError(f"{where} is a JSON {type(view).__name__}; expected an object with {_FORMS}")
        keys = set(view)
        form = _EXPLICIT_KEYS if keys & set(_EXPLICIT_KEYS) else _LOOK_AT_KEYS
        missing = [k for k in form if k not in keys]
        extra = sorted(str(k) for k in keys - set(form))
        problems = [
            f"{what} key(s) {', '.join(map(repr, ks))}"
            for what, ks in (("missing", missing), ("unknown", extra))
            if ks
        ]
        if problems:
            raise GenerateError(f"{where}: {'; '.join(problems)} (expected {_FORMS})")
        if form is _EXPLICIT_KEYS:
            K = _array(view["K"], (3, 3), f"{where}: K")
            R = _array(view["R"], (3, 3), f"{where}: R")
            t = _array(view["t"], (3,), f"{where}: t")
            dev = float(np.abs(R @ R.T - np.eye(3)).max())
            det = float(np.linalg.det(R))
            if dev > 1e-3 or det < 0:
                raise GenerateError(
                    f"{where}: R is not a rotation (max |R R^T - I| = {dev:.2g}, det = {det:.3g}); "
                    "expected an orthonormal world-to-camera R with det +1"
                )
            if not (np.allclose(K[2], [0, 0, 1], atol=1e-6) and K[1, 0] == 0 and K[0, 0] > 0 and K[1, 1] > 0):
                raise GenerateError(
                    f"{where}: K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0"
                )
            out.append(("explicit", (K, R, t)))
        else:
            eye = _array(view["eye"], (3,), f"{where}: eye")
            target = _array(view["target"], (3,), f"{where}: target")
            fov = view["fov_deg"]
            if isinstance(fov, bool) or not isinstance(fov, (int, float)) or not 0 < fov < 180:
                raise GenerateError(f"{where}: fov_deg must be a number in (0, 180), got {fov!r}")
            out.append(("look_at", (eye, target, float(fov))))
    return out


def _camera_source(spec: str) -> tuple[str, Any]:
    """Size-independent parse + validation of a ``--cameras`` value (errors before any model loads)."""

    from dimo.geometry.cameras import TRAJECTORY_KINDS

    spec = spec.strip()
    m = re.fullmatch(r"ring(\d+)", spec)
    if m is not None and 1 <= int(m.group(1)) <= MAX_VIEWS:
        return "ring", int(m.group(1))
    if spec.startswith("trajectory:"):
        m = re.fullmatch(r"trajectory:([a-z_]+)(?::(\d+))?", spec)
        if m is None or m.group(1) not in TRAJECTORY_KINDS or not 1 <= int(m.group(2) or 8) <= MAX_VIEWS:
            raise GenerateError(
                f"bad trajectory camera set {spec!r}; expected trajectory:KIND[:N] with KIND one of "
                f"{', '.join(TRAJECTORY_KINDS)} and 1 <= N <= {MAX_VIEWS}, e.g. trajectory:orbit:8"
            )
        return "trajectory", (m.group(1), int(m.group(2) or 8))
    if m is None and (spec.lower().endswith(".json") or Path(spec).is_file()):
        return "file", (Path(spec), _read_camera_file(Path(spec)))
    raise GenerateError(
        f"unknown camera set {spec!r}; expected ringN with 1 <= N <= {MAX_VIEWS} (e.g. ring8), "
        "trajectory:KIND[:N] or a cameras .json file"
    )


def check_cameras(spec: str) -> None:
    """Raise :class:`GenerateError` for a bad ``--cameras`` value (shape-independent checks only)."""

    _camera_source(spec)


def _aligned(
    K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, pelvis: torch.Tensor, h: int, w: int, name: str
) -> CameraSet:
    """HVG view alignment (as in ``dimo.data.align``): shift K so the frame-0 pelvis is the image centre."""

    from dimo.geometry.alignment import pelvis_alignment

    K, R, t = K.float(), R.float(), t.float()
    try:
        al = pelvis_alignment(pelvis.float(), K, R, t, (h, w))
    except ValueError as err:
        raise GenerateError(f"camera set {name}: {err}") from None
    return CameraSet(al.K.float().contiguous(), R.contiguous(), t.contiguous(), name)


def parse_cameras(spec: str, target: torch.Tensor, height: int, width: int) -> CameraSet:
    """A ``--cameras`` value -> aligned :class:`CameraSet` (bad values are a :class:`GenerateError`).

    ``ringN`` (1 <= N <= 64): :func:`ring_cameras` (aimed at ``target``, aligned by construction);
    ``trajectory:KIND[:N]``: N views sampled along ``make_trajectory(KIND, N)`` around ``target``
    (default N = 8; an orbit spans 360 * (N - 1) / N degrees so its views are evenly spaced);
    a ``.json`` file: explicit views (see ``docs/generate.md``). Trajectory and file cameras get the
    HVG alignment: K shifted so ``target`` (the frame-0 pelvis) projects to the image centre.
    """

    from dimo.geometry.cameras import intrinsics, look_at, make_trajectory

    kind, payload = _camera_source(spec)
    if kind == "ring":
        return ring_cameras(payload, target, height, width)
    if kind == "trajectory":
        traj_kind, n = payload
        extra = {"degrees": 360.0 * (n - 1) / n} if traj_kind == "orbit" else {}
        try:
            traj = make_trajectory(
                traj_kind, n, width=width, height=height, target=tuple(float(x) for x in target), **extra
            )
        except ValueError as err:
            raise GenerateError(f"camera set {spec.strip()}: {err}") from None
        return _aligned(traj.K, traj.R, traj.t, target, height, width, f"trajectory:{traj_kind}:{n}")
    path, views = payload
    Ks, Rs, ts = [], [], []
    for i, (form, values) in enumerate(views):
        if form == "explicit":
            K, R, t = (torch.from_numpy(v).float() for v in values)
        else:
            eye, tgt, fov = values
            try:
                R, t = look_at(torch.from_numpy(eye).float(), torch.from_numpy(tgt).float())
            except ValueError as err:
                raise GenerateError(f"{path}: view {i}: {err}") from None
            K = intrinsics(width, height, fov)
        Ks.append(K)
        Rs.append(R)
        ts.append(t)
    return _aligned(torch.stack(Ks), torch.stack(Rs), torch.stack(ts), target, height, width, str(path))
