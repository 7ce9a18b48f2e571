"""``python -m dimo.cli generate``: animate a reference image with a trained model, write an MP4.

3DiMo (driving video + camera prompt)::

    python -m dimo.cli generate --model 3dimo --checkpoint runs/3dimo/stage1/checkpoints/last.ckpt \\
        --reference ref.png --driving drive.mp4 \\
        --prompt "Front view. The camera arcs 30 degrees to the left." --out out.mp4

HVG (3D motion in the clip format + a camera set)::

    python -m dimo.cli generate --model hvg --checkpoint runs/hvg/.../last.ckpt \\
        --reference ref.png --motion clip_motion.npz --cameras ring8 --out out.mp4

``--cameras`` also takes ``trajectory:KIND[:N]`` (e.g. ``trajectory:orbit:8``) or ``cameras.json``
(explicit views; schema in ``docs/generate.md``).

``--pretrained DIR`` (a folder from ``python -m dimo.cli export``, either model) replaces ``--checkpoint``. Next to
every MP4 a JSON sidecar (``out.json``) records the inputs and settings. Bad input prints one
``error:`` line and exits with status 2; files appear at ``--out`` only when generation succeeded
(temporary file + rename).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimo generate", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, choices=["3dimo", "hvg"])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="Lightning .ckpt written by `dimo.cli fit`")
    src.add_argument("--pretrained", type=Path, help="folder written by `dimo.cli export`")
    p.add_argument(
        "--config", type=Path, help="the run's config.yaml (default: found next to the checkpoint)"
    )
    p.add_argument("--reference", type=Path, required=True, help="reference image (PNG/JPEG)")
    p.add_argument("--out", type=Path, required=True, help="output .mp4 (its JSON sidecar goes next to it)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (and its sidecar); else an error"
    )
    g3 = p.add_argument_group("3dimo")
    g3.add_argument("--driving", type=Path, help="driving video (3dimo)")
    g3.add_argument("--prompt", help='camera prompt, e.g. "Front view. The camera stays static." (3dimo)')
    g3.add_argument("--caption", help="optional appearance caption appended to the prompt (3dimo)")
    g3.add_argument("--negative-prompt", default="", help="unconditional text for --guidance-scale")
    p.add_argument(
        "--guidance-scale",
        type=float,
        help="CFG scale: 3dimo text (default 1 = off); hvg reference (default: trained)",
    )
    g3.add_argument(
        "--motion-guidance-scale", type=float, default=1.0, help="motion guidance scale (1 = off)"
    )
    g3.add_argument(
        "--window", type=int, help="frames per temporal window, 1+4k (default: training clip length)"
    )
    g3.add_argument("--overlap", type=int, default=1, help="latent frames shared by neighbouring windows")
    g3.add_argument("--num-frames", type=int, help="use at most this many driving frames")
    g3.add_argument(
        "--frame-stride",
        type=int,
        help="read every N-th driving frame, the output at the driving fps / N (default: the training "
        "data's frame_stride, so the motion per frame is what the model learned)",
    )
    g3.add_argument(
        "--detector",
        type=Path,
        help="2D keypoint detector folder (toy detector or ViTPose): its hand keypoints place the hand crops",
    )
    gh = p.add_argument_group("hvg")
    gh.add_argument("--motion", type=Path, help="motion file in the clip format (.npz) (hvg)")
    gh.add_argument(
        "--cameras",
        default="ring8",
        help="ringN (N cameras on a ring), trajectory:KIND[:N] (N views along a camera path, e.g. "
        "trajectory:orbit:8) or a cameras .json file (see docs/generate.md) (hvg)",
    )
    gh.add_argument("--fps", type=float, default=8.0, help="output fps (hvg; 3dimo uses the driving fps)")
    p.add_argument("--steps", type=int, default=8, help="sampling steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, help="output height (default: the training size)")
    p.add_argument("--width", type=int, help="output width (default: the training size)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--offload", action="store_true", help="keep VAE/text encoder on the CPU between uses")
    p.add_argument("--vae-tiling", action="store_true", help="decode in spatial tiles (less memory)")
    p.add_argument("--vae-slicing", action="store_true", help="decode one sample at a time")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _size(args: argparse.Namespace, settings: dict[str, Any], reference: Path) -> tuple[int, int]:
    from dimo.pipelines.errors import GenerateError

    h = args.height or settings.get("height")
    w = args.width or settings.get("width")
    if not (h and w):
        from dimo.pipelines.io import load_image

        img = load_image(reference)
        h, w = h or img.shape[1] // 16 * 16, w or img.shape[2] // 16 * 16
    if h < 16 or w < 16 or h % 16 or w % 16:
        raise GenerateError(f"output size {h}x{w} must be multiples of 16, at least 16x16")
    return int(h), int(w)


def _check_out(out: Path, overwrite: bool = False) -> None:
    """Everything about --out that can fail, checked before any model is loaded."""

    from dimo.pipelines.errors import GenerateError
    from dimo.safe_io import OutputError, check_new_output

    if out.suffix.lower() != ".mp4":
        raise GenerateError(f"--out must end in .mp4, got {out}")
    views = (
        sorted(out.parent.glob(f"{out.stem}_view*.mp4")) if out.parent.is_dir() else []
    )  # hvg per-view files
    for path in (out, out.with_suffix(".json"), *views):
        if path.is_dir():
            raise GenerateError(f"{path} is a folder; expected a file path for the {path.suffix[1:]} output")
        try:
            check_new_output(path, overwrite=overwrite, what="output")
        except OutputError as err:
            raise GenerateError(str(err)) from err


def _check_numbers(args: argparse.Namespace) -> None:
    """Values argparse accepts but generation cannot use (NaN scales gave a black video, exit 0)."""

    import math

    from dimo.pipelines.errors import GenerateError

    for name in ("guidance_scale", "motion_guidance_scale", "fps"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise GenerateError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    for name in ("steps", "window", "num_frames", "frame_stride", "height", "width"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise GenerateError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.overlap is not None and args.overlap < 0:
        raise GenerateError(f"--overlap must be >= 0, got {args.overlap}")


def _check_device(name: str) -> None:
    import torch

    from dimo.pipelines.errors import GenerateError

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise GenerateError(f"unknown --device {name!r}; expected cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GenerateError(f"--device {name}: no CUDA device is available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GenerateError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise GenerateError(f"--device {name}: MPS is not available here (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise GenerateError(f"unsupported --device {name!r}; expected cpu, cuda, cuda:N or mps")


def _run_threedimo(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dimo.pipelines.errors import GenerateError
    from dimo.pipelines.io import load_image, load_video, write_json, write_mp4
    from dimo.pipelines.threedimo import ThreeDiMoPipeline

    if args.driving is None:
        raise GenerateError("--model 3dimo needs --driving VIDEO (the motion source)")
    if args.prompt is None or not args.prompt.strip():
        raise GenerateError(
            'empty prompt; expected a camera prompt such as --prompt "Front view. The camera stays static."'
        )
    if args.checkpoint is not None:
        pipe = ThreeDiMoPipeline.from_checkpoint(args.checkpoint, args.config)
    else:
        pipe = ThreeDiMoPipeline.from_pretrained(args.pretrained)
    size = _size(args, pipe.settings, args.reference)
    reference = load_image(args.reference, size)  # (3, H, W)
    stride = args.frame_stride or int(pipe.settings.get("frame_stride") or 1)
    driving, fps = load_video(
        args.driving,
        size,
        min_frames=1 + pipe.temporal_compression,
        max_frames=args.num_frames,
        stride=stride,
    )
    pipe.to(torch.device(args.device))
    pipe.set_precision(args.dtype)
    if args.offload:
        pipe.enable_frozen_cpu_offload()
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    if args.vae_slicing:
        pipe.enable_vae_slicing()
    joints2d = joints2d_valid = None
    if args.detector is not None:
        from dimo.pipelines.io import to_uint8
        from dimo.pose.detect import load_detector
        from dimo.pose.joints import wholebody_to_smplx
        from dimo.pose.toy_detector import DetectorError

        try:
            kp, sc = load_detector(args.detector)(to_uint8(driving))  # on the frames the encoders see
        except DetectorError as err:
            raise GenerateError(str(err)) from None
        joints2d, _, joints2d_valid = wholebody_to_smplx(kp, sc)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    start = time.time()
    video = pipe(
        reference,
        driving,
        args.prompt,
        caption=args.caption,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=1.0 if args.guidance_scale is None else args.guidance_scale,
        motion_guidance_scale=args.motion_guidance_scale,
        window=args.window,
        overlap=args.overlap,
        generator=gen,
        progress=args.progress,
        joints2d=joints2d,
        joints2d_valid=joints2d_valid,
    )  # (T, 3, H, W)
    sidecar = {
        "model": "3dimo",
        "detector": None if args.detector is None else str(args.detector.resolve()),
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint.resolve()),
        "pretrained": None if args.pretrained is None else str(args.pretrained.resolve()),
        "config": _run_config(args),
        "reference": str(args.reference.resolve()),
        "driving": str(args.driving.resolve()),
        "prompt": args.prompt,
        "caption": args.caption,
        "negative_prompt": args.negative_prompt,
        "settings": {
            "steps": args.steps,
            "seed": args.seed,
            "guidance_scale": 1.0 if args.guidance_scale is None else args.guidance_scale,
            "motion_guidance_scale": args.motion_guidance_scale,
            "window": args.window or pipe.settings.get("window") or int(video.shape[0]),
            "overlap": args.overlap,
            "height": size[0],
            "width": size[1],
            "dtype": args.dtype,
            "device": args.device,
            "offload": args.offload,
            "vae_tiling": args.vae_tiling,
            "vae_slicing": args.vae_slicing,
        },
        "driving_frames_read": int(driving.shape[0]),
        "driving_frame_stride": stride,
        "frames": int(video.shape[0]),
        "fps": fps,
        "seconds": round(time.time() - start, 3),
    }
    _write_outputs(args.out, {args.out: video}, fps, sidecar, write_mp4, write_json)
    return sidecar


def _run_hvg(args: argparse.Namespace) -> dict[str, Any]:
    """``--model hvg``: per-view MP4s ``<out>_view{i}.mp4`` + overview ``<out>``."""

    from dataclasses import asdict

    import torch

    from dimo.pipelines.cameras import check_cameras, parse_cameras
    from dimo.pipelines.errors import GenerateError
    from dimo.pipelines.hvg import HVGPipeline, load_motion_joints, tile_views
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
    h, w = _size(args, pipe.settings, args.reference)
    reference = load_image(args.reference, (h, w))
    cameras = parse_cameras(args.cameras, joints[0, 0], h, w)
    pipe.to(torch.device(args.device))
    if args.guidance_scale is not None:
        pipe.guidance_scale = float(args.guidance_scale)
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
            "guidance_scale": float(pipe.guidance_scale),
            "sampler": asdict(pipe.sampler),
            "height": h,
            "width": w,
            "device": args.device,
        },
        "frames": int(video.shape[1]),
        "fps": args.fps,
        "seconds": round(time.time() - start, 3),
    }
    _write_outputs(out, videos, args.fps, sidecar, write_mp4, write_json)
    return sidecar


def _run_config(args: argparse.Namespace) -> str | None:
    from dimo.pipelines.checkpoint import find_run_config

    if args.checkpoint is None:
        return None
    config = args.config or find_run_config(args.checkpoint)
    return None if config is None else str(Path(config).resolve())


def _write_outputs(out: Path, videos: dict, fps: float, sidecar: dict, write_mp4, write_json) -> None:
    """Write every video and the sidecar to hidden temporary siblings, then rename them all into place.

    A failure while writing leaves every pre-existing file as it was (only this call's temporaries
    are removed); nothing already at a target path is ever deleted.
    """

    import os
    import tempfile

    staged: list[tuple[Path, Path]] = []

    def stage(target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
        os.close(fd)
        staged.append((Path(tmp), target))
        return Path(tmp)

    try:
        for path, frames in videos.items():
            write_mp4(stage(Path(path)), frames, fps)
        write_json(stage(out.with_suffix(".json")), sidecar)
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate for parsed ``args``; returns the sidecar dict. Raises :class:`GenerateError`."""

    _check_out(args.out, getattr(args, "overwrite", False))
    _check_numbers(args)
    _check_device(args.device)
    return _run_threedimo(args) if args.model == "3dimo" else _run_hvg(args)


def main(argv: Sequence[str]) -> int:
    from dimo.commands import fail
    from dimo.pipelines.errors import GenerateError

    args = build_parser().parse_args(list(argv))
    try:
        sidecar = run(args)
    except (GenerateError, OSError) as err:
        return fail(err)
    print(f"wrote {args.out} ({sidecar['frames']} frames) and {args.out.with_suffix('.json')}")
    return 0
