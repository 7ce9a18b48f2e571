"""HVG inference: reference image + 3D motion (clip format) + a camera set -> V x T videos.

The motion file is a clip-format ``.npz`` (``docs/data.md``): world ``joints`` (T, 55, 3), or
SMPL-X style parameters (``global_orient``, ``body_pose``, ``hand_pose``, ``transl``, optional
``rest_joints``) posed by the skeleton's forward kinematics. Cameras: ``ringN`` places N static
cameras on a horizontal ring around the subject (view 0 in front, +z), looking at the frame-0 pelvis,
so the pelvis sits at the image centre of every view (HVG's temporal/view alignment of the reference
and first pose frame); ``trajectory:KIND[:N]`` takes N viewpoints along a ``make_trajectory`` path and
a ``.json`` file gives explicit views; those get the same alignment as training samples (K shifted
so the frame-0 pelvis is at the image centre). Sampling is the module's progressive spatio-temporal sampler
(:meth:`dimo.models.hvg.HVGModule.generate`); outputs: one MP4 per view plus a tiled overview.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from dimo.pipelines.errors import GenerateError
from dimo.pipelines.io import atomic_folder

__all__ = [
    "CameraSet",
    "ring_cameras",
    "parse_cameras",
    "check_cameras",
    "load_motion_joints",
    "HVGPipeline",
    "tile_views",
    "run_hvg",
]


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


def load_motion_joints(path: str | os.PathLike, max_frames: int | None = None) -> torch.Tensor:
    """World joints (T, 55, 3) from a clip-format motion ``.npz``; a bad file is a :class:`GenerateError`."""

    from dimo.geometry.motion import MotionFileError, read_motion_joints

    try:
        return read_motion_joints(path, max_frames)
    except MotionFileError as err:
        raise GenerateError(str(err)) from err


def tile_views(video: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """(V, T, 3, H, W) -> overview (T, 3, rows*H, cols*W); empty tiles are black (-1)."""

    v, t, c, h, w = video.shape
    cols = columns or math.ceil(math.sqrt(v))
    rows = math.ceil(v / cols)
    pad = video.new_full((rows * cols - v, t, c, h, w), -1.0)
    grid = torch.cat([video, pad]).reshape(rows, cols, t, c, h, w)
    return grid.permute(2, 3, 0, 4, 1, 5).reshape(t, c, rows * h, cols * w)


class HVGPipeline(DiffusionPipeline):
    """HVG generation pipeline: a ``DiffusionPipeline`` around a trained :class:`~dimo.models.hvg.HVGModule`.

    HVG's generator and progressive sampler live in the module (SVD UNet + HVG layers, EDM); the
    pipeline turns user inputs into the module's batch layout and back. Its components (``unet``,
    ``vae``, ``image_encoder``) are the module's. Folder (``save_pretrained``/``from_pretrained``)::

        model_index.json   diffusers index + dimo settings
        hvg/config.json    the module's hyperparameters (network preset, EDM, sampler, guidance)
        hvg/model.safetensors   every weight of the module (UNet + HVG layers, VAE, CLIP), strict load
    """

    def __init__(self, module: torch.nn.Module, settings: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.register_modules(unet=module.unet, vae=module.vae, image_encoder=module.image_encoder)
        self.module = module.eval()
        self.settings = dict(settings or {})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> HVGPipeline:
        from dimo.pipelines.checkpoint import load_module

        module, data_hp = load_module(path, "hvg")
        return cls(module, {k: data_hp[k] for k in ("height", "width", "num_frames") if data_hp.get(k)})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HVGPipeline:  # type: ignore[override]
        if device is not None:
            self.module.to(device)
        if dtype is not None:
            self.module.to(dtype=dtype)
        return self

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> Path:  # type: ignore[override]
        """Write the folder (temp folder + rename)."""

        from safetensors.torch import save_file

        out = Path(save_directory)
        with atomic_folder(out) as tmp:
            (tmp / "hvg").mkdir()
            hp = {k: v for k, v in dict(self.module.hparams).items() if not k.startswith("_")}
            # the weights below hold everything; the validation-only keypoint detector is not needed
            hp.update(pretrained=None, init_from=None, consistency_detector=None)
            (tmp / "hvg" / "config.json").write_text(json.dumps(hp, indent=2, default=str))
            state = {k: v.detach().contiguous().clone().cpu() for k, v in self.module.state_dict().items()}
            save_file(
                state, tmp / "hvg" / "model.safetensors", metadata={"format": "pt", "class": "HVGModule"}
            )
            import diffusers

            index = {
                "_class_name": type(self).__name__,
                "_diffusers_version": diffusers.__version__,
                "unet": ["dimo.models.hvg.network", type(self.module.unet).__name__],
                "vae": ["diffusers", type(self.module.vae).__name__],
                "image_encoder": ["transformers", type(self.module.image_encoder).__name__],
                "dimo": {"settings": self.settings},
            }
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **_: Any) -> HVGPipeline:  # type: ignore[override]
        from safetensors.torch import load_file

        from dimo.models.hvg import HVGModule

        folder = Path(pretrained_model_name_or_path)
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise GenerateError(
                f"pretrained folder not found or incomplete: {index_file} missing "
                "(expected a folder written by `python -m dimo.cli export`)"
            )
        index = json.loads(index_file.read_text())
        if index.get("_class_name") != cls.__name__:
            raise GenerateError(
                f"{folder} holds a {index.get('_class_name')}; expected a {cls.__name__} folder"
            )
        for name in ("config.json", "model.safetensors"):
            if not (folder / "hvg" / name).is_file():
                raise GenerateError(f"pretrained folder incomplete: {folder / 'hvg' / name} missing")
        module = HVGModule(**json.loads((folder / "hvg" / "config.json").read_text()))
        try:
            module.load_state_dict(load_file(folder / "hvg" / "model.safetensors"), strict=True)
        except RuntimeError as err:
            raise GenerateError(
                f"{folder / 'hvg' / 'model.safetensors'} does not match its config: {err}"
            ) from err
        return cls(module, index.get("dimo", {}).get("settings"))

    @staticmethod
    def batch(reference: torch.Tensor, joints: torch.Tensor, cameras: CameraSet) -> dict[str, Any]:
        """The module's HVG batch (B = 1) for reference (3, H, W), joints (T, 55, 3), V cameras."""

        from dimo.geometry.cameras import project, relative_rotation

        h, w = reference.shape[-2:]
        v, t = cameras.K.shape[0], joints.shape[0]
        pelvis = joints[None, :, 0].expand(v, t, 3)  # (V, T, 3)
        uv, _ = project(pelvis, cameras.K, cameras.R, cameras.t)  # (V, T, 2)
        return {
            "target": torch.zeros(1, v, t, 3, h, w),  # shape only: generate() reads (V, T, H, W) here
            "reference": reference[None],
            "K": cameras.K[None],
            "R": cameras.R[None],
            "t": cameras.t[None],
            "rel_rot": relative_rotation(cameras.R)[None],
            "joints3d": joints[None],
            "pelvis2d": uv[None],
        }

    @torch.no_grad()
    def __call__(
        self,
        reference: torch.Tensor,
        joints: torch.Tensor,
        cameras: CameraSet,
        num_inference_steps: int = 10,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(V, T, 3, H, W) in [-1, 1] for reference (3, H, W) [-1, 1] and world joints (T, 55, 3)."""

        device = self.module.device
        batch = {k: v.to(device) for k, v in self.batch(reference, joints, cameras).items()}
        gen = generator or torch.Generator(device=device).manual_seed(0)
        return self.module.generate(batch, gen=gen, steps=num_inference_steps)[0].cpu()


def run_hvg(args: argparse.Namespace, size_fn, write_fn) -> dict[str, Any]:
    """``dimo.cli generate --model hvg``: per-view MP4s ``<out>_view{i}.mp4`` + overview ``<out>``."""

    from dimo.pipelines.io import load_image, write_json, write_mp4

    if args.motion is None:
        raise GenerateError("--model hvg needs --motion FILE (a clip-format motion .npz)")
    unused = [
        f
        for f, on in (
            ("--dtype", args.dtype != "float32"),
            ("--offload", args.offload),
            ("--vae-tiling", args.vae_tiling),
            ("--vae-slicing", args.vae_slicing),
        )
        if on
    ]
    if unused:
        raise GenerateError(f"{', '.join(unused)} are 3dimo options; HVG runs in float32 on --device")
    joints = load_motion_joints(args.motion, args.num_frames)
    check_cameras(args.cameras)  # a bad --cameras fails before the model loads
    if args.checkpoint is not None:
        pipe = HVGPipeline.from_checkpoint(args.checkpoint)
    else:
        pipe = HVGPipeline.from_pretrained(args.pretrained)
    h, w = size_fn(args, pipe.settings, args.reference)
    reference = load_image(args.reference, (h, w))
    cameras = parse_cameras(args.cameras, joints[0, 0], h, w)
    pipe.to(torch.device(args.device))
    if args.guidance_scale is not None:
        pipe.module.guidance_scale = float(args.guidance_scale)
    start = time.time()
    video = pipe(
        reference, joints, cameras, args.steps, torch.Generator(device=args.device).manual_seed(args.seed)
    )
    out = Path(args.out)
    videos = {out.with_name(f"{out.stem}_view{i}.mp4"): video[i] for i in range(video.shape[0])}
    videos[out] = tile_views(video)
    sidecar = {
        "model": "hvg",
        "checkpoint": None if args.checkpoint is None else str(Path(args.checkpoint).resolve()),
        "pretrained": None if args.pretrained is None else str(Path(args.pretrained).resolve()),
        "reference": str(Path(args.reference).resolve()),
        "motion": str(Path(args.motion).resolve()),
        "cameras": cameras.name,
        "camera_matrices": {"K": cameras.K.tolist(), "R": cameras.R.tolist(), "t": cameras.t.tolist()},
        "views": [str(p) for p in videos if p != out],
        "settings": {
            "steps": args.steps,
            "seed": args.seed,
            "guidance_scale": float(pipe.module.guidance_scale),
            "sampler": dict(pipe.module.hparams.get("sampler", {})),
            "height": h,
            "width": w,
            "device": args.device,
        },
        "frames": int(video.shape[1]),
        "fps": args.fps,
        "seconds": round(time.time() - start, 3),
    }
    write_fn(out, videos, args.fps, sidecar, write_mp4, write_json)
    return sidecar
