"""HVG inference: reference image + 3D motion (clip format) + a camera set -> V x T videos.

The motion file is a clip-format ``.npz`` (``docs/data.md``): world ``joints`` (T, 55, 3), or
SMPL-X style parameters (``global_orient``, ``body_pose``, ``hand_pose``, ``transl``, optional
``rest_joints``) posed by the skeleton's forward kinematics. Cameras: ``ringN`` places N static
cameras on a horizontal ring around the subject (view 0 in front, +z), looking at the frame-0 pelvis,
so the pelvis sits at the image centre of every view (HVG's temporal/view alignment of the reference
and first pose frame); ``trajectory:KIND[:N]`` takes N viewpoints along a ``make_trajectory`` path and
a ``.json`` file gives explicit views; those get the same alignment as training samples (K shifted
so the frame-0 pelvis is at the image centre). Sampling: :meth:`HVGPipeline.sample`, HVG's only sampler
(EDM + the progressive spatio-temporal sampler; the module's validation samples use it too); no
Lightning is involved. ``dimo.cli generate --model hvg`` (:mod:`dimo.commands.generate`) writes one MP4
per view plus a tiled overview (:func:`tile_views`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
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
    """HVG generation pipeline: the HVG UNet, the frozen SVD VAE and CLIP image encoder, and the sampling
    settings; no Lightning. :meth:`sample` (EDM + the progressive spatio-temporal sampler of
    :mod:`dimo.models.hvg.sampling`) is HVG's only sampler: ``__call__`` (one reference, joints and a
    camera set) and :meth:`dimo.models.hvg.HVGModule.generate` (validation samples) both call it.

    Folder (``save_pretrained``), SVD-xt diffusers style (:mod:`dimo.pipelines.exports`)::

        README.md          model card: the model, its training, parts, conditioning inputs, loading
        model_index.json   parts + stored settings (EDM, sampler windows, steps, guidance, SVD
                           conditioning, size / frames) + the training record
        pipeline.py        imports this class from the installed dimo (for diffusers' loader)
        unet/              HVGUNet: SVD UNet config + the HVG switches (``hvg``), every weight
        vae/               AutoencoderKLTemporalDecoder (frozen)
        image_encoder/     CLIPVisionModelWithProjection (frozen)

    Loading: :meth:`from_pretrained` (and ``dimo.cli generate --pretrained``) reads each part with its
    own strict loader and runs no file of the folder; ``diffusers.DiffusionPipeline.from_pretrained
    (folder, trust_remote_code=True)`` calls the same part loaders and builds the same pipeline (without
    the opt-in diffusers refuses to run ``pipeline.py``).

    Args:
        unet: the HVG network (:class:`~dimo.models.hvg.HVGUNet`).
        vae, image_encoder: the frozen SVD VAE and CLIP image encoder.
        edm: noise schedule / preconditioning; ``sampler``: the progressive sampler's windows.
        sample_steps, guidance_scale: default steps and reference CFG scale.
        noise_aug_strength, fps, motion_bucket_id: SVD's conditioning (``added_time_ids``).
        vae_chunk, vae_decode_chunk: images per VAE call; frames per decode call within a video.
        settings: stored defaults (``height``, ``width``, ``num_frames``).
        training: what the export records of its checkpoint (step, epoch, hyperparameters), if known.
    """

    #: the part classes of an export (their strict ``from_pretrained`` reads the subfolders)
    PARTS = {
        "unet": ("dimo.models.hvg.network", "HVGUNet"),
        "vae": ("dimo.models.hvg.network", "SVDVAE"),
        "image_encoder": ("dimo.models.hvg.network", "SVDImageEncoder"),
    }

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        image_encoder: torch.nn.Module,
        edm: Any = None,
        sampler: Any = None,
        sample_steps: int = 10,
        guidance_scale: float = 1.0,
        noise_aug_strength: float = 0.02,
        fps: int = 7,
        motion_bucket_id: int = 127,
        vae_chunk: int = 16,
        vae_decode_chunk: int | None = None,
        settings: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        from dimo.diffusion.edm import EDM
        from dimo.models.hvg.sampling import ProgressiveSampler

        super().__init__()
        self.register_modules(unet=unet, vae=vae, image_encoder=image_encoder)
        self.edm = EDM(**edm) if isinstance(edm, dict) else (edm or EDM())
        self.sampler = (
            ProgressiveSampler(**sampler) if isinstance(sampler, dict) else (sampler or ProgressiveSampler())
        )
        self.sample_steps, self.guidance_scale = int(sample_steps), float(guidance_scale)
        self.noise_aug_strength, self.fps, self.motion_bucket_id = noise_aug_strength, fps, motion_bucket_id
        self.vae_chunk, self.vae_decode_chunk = vae_chunk, vae_decode_chunk
        self.settings = dict(settings or {})
        self.training = training

    #: the sampling settings, as :meth:`from_module` reads them from an ``HVGModule``
    SAMPLING = (
        "sample_steps", "guidance_scale", "noise_aug_strength", "fps", "motion_bucket_id", "vae_chunk",
        "vae_decode_chunk",
    )  # fmt: skip

    @classmethod
    def from_module(cls, module: torch.nn.Module, settings: dict[str, Any] | None = None) -> HVGPipeline:
        """The sampler over a :class:`~dimo.models.hvg.HVGModule`'s parts and settings (shared, not copied)."""

        kw = {k: getattr(module, k) for k in cls.SAMPLING}
        return cls(
            module.unet, module.vae, module.image_encoder, module.edm, module.sampler, settings=settings, **kw
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> HVGPipeline:
        from dimo.pipelines.checkpoint import load_module, training_record

        module, data_hp = load_module(path, "hvg")
        pipe = cls.from_module(
            module.eval(), {k: data_hp[k] for k in ("height", "width", "num_frames") if data_hp.get(k)}
        )
        pipe.training = training_record(path)
        return pipe

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HVGPipeline:  # type: ignore[override]
        for part in (self.unet, self.vae, self.image_encoder):
            part.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return next(self.unet.parameters()).device

    def config_dict(self) -> dict[str, Any]:
        """The parts' presets and the stored settings (what an export's ``model_index.json`` keeps)."""

        return {
            "unet": asdict(self.unet.hvg),
            "vae": {"preset": self.vae.preset},
            "image_encoder": {"preset": self.image_encoder.preset},
            **self.stored_settings(),
        }

    def stored_settings(self) -> dict[str, Any]:
        """The optional constructor arguments, as plain values (``model_index.json``)."""

        return {
            "edm": asdict(self.edm),
            "sampler": asdict(self.sampler),
            **{k: getattr(self, k) for k in self.SAMPLING},
            "settings": self.settings,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> Path:  # type: ignore[override]
        """Write the folder described in the class docstring, atomically (temp folder + rename)."""

        from dimo.models.lora import is_lora_parameter
        from dimo.pipelines.exports import write_export_files

        if any(is_lora_parameter(n) for n, _ in self.unet.named_parameters()):
            raise GenerateError(
                "the HVG network carries LoRA adapters (train_parts: lora): an export holds plain weights; "
                "save the adapters with HVGModule.save_adapters and load them with HVGModule.from_adapters"
            )
        out = Path(save_directory)
        with atomic_folder(out) as tmp:
            for name in self.PARTS:
                getattr(self, name).save_pretrained(tmp / name)
            write_export_files(
                tmp, type(self), self.PARTS, self.stored_settings(), self.model_card(), self.training
            )
        return out

    def model_card(self) -> Any:
        """The method-specific text of the export's README (:class:`~dimo.pipelines.exports.ModelCard`)."""

        from dimo.pipelines.exports import ModelCard

        hvg = self.unet.hvg
        switches = ", ".join(
            k for k in ("view_attention", "camera_embedding", "reference_clip", "reference_latent", "reference_net")
            if getattr(hvg, k)
        )  # fmt: skip
        params = sum(p.numel() for p in self.unet.parameters())
        return ModelCard(
            title="HVG export",
            summary=(
                "Multi-view, multi-frame human video generation (HVG, Wang et al., arXiv 2602.21188): SVD-xt "
                "extended with view attention, a dual bone-map pose modulator, a camera embedding and a "
                "reference module. A reference image, a 3D motion and a camera set -> V views x T frames. "
                "Written by `python -m dimo.cli export` from an `HVGModule` checkpoint (`docs/hvg.md`)."
            ),
            parts=[
                (
                    "`unet/`",
                    f"`HVGUNet`: SVD UNet preset `{hvg.preset}` + HVG layers ({params:,} parameters), pose "
                    f"condition `{hvg.pose_condition}`, on: {switches or 'none'}; `config.json` holds the "
                    "switches under `hvg`",
                ),
                ("`vae/`", f"`AutoencoderKLTemporalDecoder` (frozen, preset `{self.vae.preset}`)"),
                (
                    "`image_encoder/`",
                    f"`CLIPVisionModelWithProjection` (frozen, preset `{self.image_encoder.preset}`)",
                ),
            ],
            inputs=[
                ("`reference`", "(3, H, W) image in [-1, 1]: the person (H, W multiples of the VAE factor)"),
                (
                    "`joints`",
                    "(T, 55, 3) world SMPL-X joints in metres (`load_motion_joints` reads a clip-format "
                    "motion `.npz`); rendered per view as the dual bone maps (depth + normal)",
                ),
                (
                    "`cameras`",
                    "`CameraSet`: V static cameras (K, R, t world-to-camera, OpenCV), aligned on the frame-0 "
                    "pelvis (`parse_cameras`: `ringN`, `trajectory:KIND[:N]`, a cameras `.json`); "
                    "rotations relative to view 0 enter the camera embedding",
                ),
                ("`num_inference_steps`, `generator`", "EDM steps and the noise generator (seed)"),
            ],
            usage=(
                "import torch\n"
                "from dimo.pipelines.hvg import HVGPipeline, load_motion_joints, parse_cameras\n"
                "from dimo.pipelines.io import load_image\n\n"
                'pipe = HVGPipeline.from_pretrained("<this folder>")\n'
                'joints = load_motion_joints("motion.npz")  # (T, 55, 3)\n'
                'h, w = pipe.settings.get("height", 64), pipe.settings.get("width", 64)\n'
                'cameras = parse_cameras("ring4", joints[0, 0], h, w)\n'
                'video = pipe(load_image("ref.png", (h, w)), joints, cameras, 10, torch.Generator().manual_seed(0))\n'
                "# (V, T, 3, H, W) in [-1, 1]"
            ),
            cli=(
                "python -m dimo.cli generate --model hvg --pretrained <this folder> --reference ref.png "
                "--motion motion.npz --cameras ring4 --out out.mp4"
            ),
            settings={
                **self.settings,
                "sample_steps": self.sample_steps,
                "guidance_scale": self.guidance_scale,
                "sampler": asdict(self.sampler),
            },
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **_: Any) -> HVGPipeline:  # type: ignore[override]
        """Load a folder written by :meth:`save_pretrained` (local only; no file of the folder is
        executed: each part is read by its own strict loader)."""

        from dimo.models.hvg.network import SVDVAE, HVGUNet, SVDImageEncoder
        from dimo.pipelines.exports import part_error, read_index, stored_kwargs

        folder = Path(pretrained_model_name_or_path)
        index = read_index(folder, cls)
        if (folder / "hvg").is_dir():
            raise GenerateError(
                f"{folder} was written by an older dimo export (hvg/model.safetensors); export its checkpoint "
                "again with `python -m dimo.cli export`"
            )
        try:
            unet = HVGUNet.from_pretrained(folder / "unet")
            vae = SVDVAE.from_pretrained(folder / "vae")
            image = SVDImageEncoder.from_pretrained(folder / "image_encoder")
        except (OSError, ValueError) as err:  # incl. MissingWeightsError (a FileNotFoundError)
            raise part_error(folder, err) from err
        return cls(unet, vae, image, **stored_kwargs(cls, index))

    @staticmethod
    def batch(reference: torch.Tensor, joints: torch.Tensor, cameras: CameraSet) -> dict[str, Any]:
        """The HVG batch (B = 1) for reference (3, H, W), joints (T, 55, 3), V cameras."""

        from dimo.geometry.cameras import project, relative_rotation

        h, w = reference.shape[-2:]
        v, t = cameras.K.shape[0], joints.shape[0]
        pelvis = joints[None, :, 0].expand(v, t, 3)  # (V, T, 3)
        uv, _ = project(pelvis, cameras.K, cameras.R, cameras.t)  # (V, T, 2)
        return {
            "target": torch.zeros(1, v, t, 3, h, w),  # shape only: sample() reads (V, T, H, W) here
            "reference": reference[None],
            "K": cameras.K[None],
            "R": cameras.R[None],
            "t": cameras.t[None],
            "rel_rot": relative_rotation(cameras.R)[None],
            "joints3d": joints[None],
            "pelvis2d": uv[None],
        }

    @torch.no_grad()
    def sample(
        self, batch: dict[str, Any], generator: torch.Generator, steps: int | None = None
    ) -> torch.Tensor:
        """HVG's sampler: the batch's V x T grids, (B, V, T, 3, H, W) in [-1, 1] (no input checks).

        ``generator`` draws the reference noise augmentation, then the unit noise (B, V, T, C, h, w);
        every step denoises overlapping view / frame windows (:class:`~dimo.models.hvg.ProgressiveSampler`),
        with reference CFG at ``guidance_scale``."""

        from dimo.models.hvg.conditioning import decode_latents, edm_denoise, svd_conditioning

        target = batch["target"]
        b, v, t, _, h, w = target.shape
        cond = svd_conditioning(
            self.vae, self.image_encoder, batch, generator, self.unet.hvg.pose_condition,
            self.noise_aug_strength, self.fps, self.motion_bucket_id, self.vae_chunk,
        )  # fmt: skip
        device = batch["reference"].device
        latent_shape = (b, v, t, *cond["reference_latent"].shape[1:])
        noise = torch.randn(latent_shape, generator=generator, device=device, dtype=target.dtype)
        uncond = torch.zeros(b, dtype=torch.bool, device=device)

        def window(x, sigma, views, frames):
            sub = dict(cond)
            sub["pose_maps"] = {k: m[:, views][:, :, frames] for k, m in cond["pose_maps"].items()}
            sub["rel_rot"] = cond["rel_rot"][:, views]
            d = edm_denoise(self.unet, self.edm, x, sigma, sub)
            if self.guidance_scale != 1.0:
                d_u = edm_denoise(self.unet, self.edm, x, sigma, sub, reference_keep=uncond)
                d = d_u + self.guidance_scale * (d - d_u)
            return d

        latents = self.sampler.sample(self.edm, window, noise, steps or self.sample_steps)
        flat = latents.reshape(b * v * t, *latents.shape[3:])
        frames = decode_latents(self.vae, flat, t, self.vae_chunk, self.vae_decode_chunk)
        return frames.reshape(b, v, t, 3, h, w)

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

        device = self.device
        batch = {k: v.to(device) for k, v in self.batch(reference, joints, cameras).items()}
        gen = generator or torch.Generator(device=device).manual_seed(0)
        return self.sample(batch, gen, num_inference_steps)[0].cpu()
