"""Bring your own data: folders of real videos, estimator outputs and calibrated captures -> clip format.

``python -m dimo.cli data import {videos,multiview,renders,mvhumannet} SRC --out ROOT``. Every importer writes
``ROOT/clips/<id>/...`` and ``ROOT/manifest.jsonl`` (atomically), validates each clip it wrote with
:func:`dimo.data.validate.validate_record` (a clip with a finding is left out of the manifest), and
writes ``ROOT/import_report.json`` listing what it could not use and why, and notes per clip. Input
layouts: ``docs/data.md`` ("Importing your own data").

Videos are copied when they decode as dimo reads them; a variable-frame-rate, display-rotated or
odd-sized video is re-encoded (every decoded frame kept, in decode order, at the average rate,
pixels turned upright), so per-frame estimator outputs stay aligned frame for frame
(``fix="never"`` reports such files instead).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dimo.data.estimators import EstimatorError, convert_estimator_motion, read_array_file, save_motion
from dimo.data.keypoints import KeypointError, read_keypoints, save_keypoints2d
from dimo.data.manifest import (
    MANIFEST_NAME,
    ClipRecord,
    Problem,
    RecordError,
    check_intrinsics,
    check_rotation,
    parse_record,
    write_manifest,
)
from dimo.data.video import VideoError, inspect_video, transcode_upright, write_video
from dimo.safe_io import atomic_path, atomic_write_text

__all__ = [
    "VIDEO_SUFFIXES",
    "CaptionError",
    "ImportError_",
    "ImportReport",
    "VLMCaptioner",
    "import_multiview",
    "import_mvhumannet",
    "import_renders",
    "import_videos",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FixMode = Literal["auto", "never"]


class ImportError_(ValueError):  # noqa: N801 - ``ImportError`` is a builtin
    """The input as a whole cannot be imported (missing folder, unreadable calibration, ...)."""


@dataclass
class ImportReport:
    out: Path
    records: list[ClipRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (clip id, note)

    def to_json(self) -> dict[str, Any]:
        return {
            "clips": [r.id for r in self.records],
            "skipped": [{"input": i, "reason": r} for i, r in self.skipped],
            "notes": [{"clip": c, "note": n} for c, n in self.notes],
        }

    def write(self) -> Path:
        write_manifest(self.out, self.records)
        return atomic_write_text(self.out / "import_report.json", json.dumps(self.to_json(), indent=1) + "\n")


def _clip_id(rel: Path) -> str:
    text = "__".join(rel.with_suffix("").parts)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "clip"


def _prepare_out(out: Path, overwrite: bool) -> None:
    from dimo.safe_io import check_new_output

    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise ImportError_(f"{out} already has {MANIFEST_NAME}; pass --overwrite to replace it")
    check_new_output(out, overwrite=True, what="dataset folder")
    out.mkdir(parents=True, exist_ok=True)


def _place_video(src: Path, dst_stem: Path, fix: FixMode) -> tuple[Path, Any, list[str]]:
    """Copy (or re-encode) ``src`` next to ``dst_stem`` -> (path written, facts, notes)."""

    facts = inspect_video(src)
    if facts.num_frames == 0:
        raise VideoError(f"{src}: no frames decoded")
    reasons = []
    if facts.rotation:
        reasons.append(f"display rotation {facts.rotation:g} degrees")
    if facts.index_problem:
        reasons.append(f"variable frame rate (timestamp gaps vary {facts.interval_spread:.2f}x)")
    if facts.height % 2 or facts.width % 2:
        reasons.append(f"odd size {facts.width}x{facts.height}")
    if reasons and fix == "never":
        raise VideoError(f"{src}: {', '.join(reasons)}; not imported (--fix never)")
    if reasons:
        dst = dst_stem.with_suffix(".mp4")
        facts = transcode_upright(src, dst)
        return dst, facts, [f"re-encoded ({'; '.join(reasons)}): every decoded frame at {facts.fps:.3f} fps"]
    dst = dst_stem.with_suffix(src.suffix.lower())
    with atomic_path(dst, suffix=dst.suffix) as tmp:
        shutil.copyfile(src, tmp)
    return dst, facts, []


def _read_text(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
    return text or None


# ---- camera prompts from a local VLM --------------------------------------------------------------
CAPTION_INSTRUCTION = (
    "Describe only the camera in this video of a person, in exactly this form: "
    '"<view>. The camera <motion>." where <view> is the side of the person the camera sees at the '
    "start (Front view, Back view, Left side view, Front-left view, ...) and <motion> is how the "
    "camera moves (remains static, pans 20 degrees to the left, orbits around the subject, dollies in "
    "toward the subject, zooms in, is handheld with slight shaking, ...)."
)


class CaptionError(ValueError):
    """The captioner's answer for one clip is not a camera prompt (``"<view>. The camera <motion>."``)."""


VLM_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


class VLMCaptioner:
    """Camera prompts from a local vision-language model folder (Qwen2-VL / Qwen2.5-VL) via ``transformers``.

    Loaded with ``local_files_only=True`` (nothing is downloaded): the tokenizer, the model and the
    folder's image-processor settings. ``num_frames`` frames spread over the clip are given as one video
    at the rate they sample the clip. The video inputs are built here from transformers' PIL image
    processor (frames resized, normalised and cut into patches as Qwen's video processor does, pairs of
    frames interleaved into its temporal patches), because transformers' Qwen video processor, and so
    ``AutoProcessor`` for these folders, needs torchvision, which does not import on a CPU-only torch.
    The first "<view>. The camera <motion>." of the answer is kept; an answer without one raises
    :class:`CaptionError`.
    """

    def __init__(self, folder: str | os.PathLike, num_frames: int = 8, max_new_tokens: int = 48) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ImportError_(
                f"captioner folder {folder} not found (a local vision-language model folder such as "
                "Qwen2.5-VL-7B-Instruct with config.json and weights; nothing is downloaded)"
            )
        if not (folder / "config.json").is_file():
            raise ImportError_(
                f"captioner folder {folder} has no config.json: not a transformers model folder"
            )
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise ImportError_(f"captioner folder {folder} has no weights (*.safetensors)")
        try:
            model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        except (OSError, ValueError) as err:
            raise ImportError_(f"captioner folder {folder}: config.json is unreadable ({err})") from None
        if model_type not in VLM_MODEL_TYPES:
            raise ImportError_(
                f"captioner folder {folder} holds a {model_type!r} model; the captioner runs Qwen2-VL and "
                f"Qwen2.5-VL folders ({', '.join(VLM_MODEL_TYPES)})"
            )
        from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True).eval()
        except Exception as err:  # noqa: BLE001 - any load failure (corrupt weights, bad JSON) is one line
            first = (str(err).strip().splitlines() or [""])[0]
            raise ImportError_(
                f"captioner folder {folder} could not be loaded by transformers: {type(err).__name__}: {first}"
            ) from None
        self.chat_template = _chat_template(folder, self.tokenizer)
        if self.chat_template is None:
            raise ImportError_(
                f"captioner folder {folder} has no chat template (chat_template.json / .jinja or in the tokenizer)"
            )
        self.video_size = _video_size(folder, self.image_processor)
        self.num_frames, self.max_new_tokens = num_frames, max_new_tokens

    def frame_indices(self, num_frames: int) -> list[int]:
        """The frames shown: ``self.num_frames`` (at most ``num_frames``) spread from first to last."""

        n = min(self.num_frames, num_frames)
        return np.unique(np.linspace(0, num_frames - 1, n).round().astype(int)).tolist()

    def video_inputs(self, frames: np.ndarray, sampled_fps: float) -> dict[str, Any]:
        """uint8 frames (N, H, W, 3) -> ``pixel_values_videos`` (grid_t*grid_h*grid_w, C*tp*p*p),
        ``video_grid_thw`` (1, 3) and ``second_per_grid_ts`` (1,), as transformers' Qwen video processor
        lays them out (odd frame counts are padded with the last frame)."""

        import torch

        ip = self.image_processor
        tp, p = ip.temporal_patch_size, ip.patch_size
        # per frame: (grid_h*grid_w, C*tp*p*p) with the frame repeated tp times along the temporal axis
        out = ip(list(frames), size=self.video_size, return_tensors="np")
        grid = np.asarray(out["image_grid_thw"])
        n, gh, gw = len(frames), int(grid[0, 1]), int(grid[0, 2])
        patches = np.asarray(out["pixel_values"]).reshape(n, gh * gw, -1, tp, p, p)[
            :, :, :, 0
        ]  # (N, S, C, p, p)
        if pad := -n % tp:
            patches = np.concatenate([patches, np.repeat(patches[-1:], pad, axis=0)])
        gt = len(patches) // tp
        patches = patches.reshape(gt, tp, gh * gw, -1, p, p).transpose(
            0, 2, 3, 1, 4, 5
        )  # (gt, S, C, tp, p, p)
        return {
            "pixel_values_videos": torch.from_numpy(np.ascontiguousarray(patches.reshape(gt * gh * gw, -1))),
            "video_grid_thw": torch.tensor([[gt, gh, gw]]),
            "second_per_grid_ts": torch.tensor([tp / sampled_fps]),
        }

    def answer(self, video: Path, num_frames: int) -> str:
        """The model's raw answer for ``video`` (``num_frames`` frames long)."""

        import torch

        from dimo.data.video import probe, read_frames

        idx = self.frame_indices(num_frames)
        frames = read_frames(video, idx)  # (N, H, W, 3) uint8
        fps = probe(video).fps
        sampled_fps = len(idx) * fps / num_frames  # the shown frames span the clip's duration
        messages = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": CAPTION_INSTRUCTION}]}
        ]
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )
        vision = self.video_inputs(frames, sampled_fps)
        merge = self.image_processor.merge_size
        n_tokens = int(vision["video_grid_thw"][0].prod()) // merge**2
        video_token = "<|video_pad|>"
        if text.count(video_token) != 1:
            raise CaptionError(
                f"the chat template put {text.count(video_token)} {video_token} in the prompt, not 1"
            )
        ids = self.tokenizer(text.replace(video_token, video_token * n_tokens), return_tensors="pt")
        video_id = self.model.config.video_token_id
        inputs = {
            "input_ids": ids["input_ids"],
            "attention_mask": ids["attention_mask"],
            "mm_token_type_ids": (ids["input_ids"] == video_id).long() * 2,  # 0 text, 1 image, 2 video
            **vision,
        }
        if self.model.config.model_type != "qwen2_5_vl":  # Qwen2-VL has no time-aligned positions
            inputs.pop("second_per_grid_ts")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.batch_decode(out[:, ids["input_ids"].shape[1] :], skip_special_tokens=True)[0]

    def __call__(self, video: Path, num_frames: int) -> str:
        answer = self.answer(video, num_frames)
        prompt = clean_prompt(answer)
        if prompt is None:
            short = " ".join(answer.split())
            short = short if len(short) <= 80 else short[:77] + "..."
            raise CaptionError(f'captioner answer is not "<view>. The camera <motion>.": {short!r}')
        return prompt


def _chat_template(folder: Path, tokenizer) -> str | None:
    """The processor's chat template (``chat_template.jinja`` / ``.json``), else the tokenizer's."""

    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return getattr(tokenizer, "chat_template", None)


def _video_size(folder: Path, image_processor) -> dict[str, int]:
    """Pixels per video frame (``shortest_edge``/``longest_edge`` = min/max pixels): the folder's video
    processor settings, else the image processor's capped at 768 merged patches per frame (transformers'
    Qwen video default)."""

    size = dict(image_processor.size)
    cfg = folder / "video_preprocessor_config.json"
    if cfg.is_file():
        video = json.loads(cfg.read_text())
        size.update(
            {k: v for k, v in (video.get("size") or {}).items() if k in ("shortest_edge", "longest_edge")}
        )
        size["shortest_edge"] = video.get("min_pixels", size["shortest_edge"])
        size["longest_edge"] = video.get("max_pixels", size["longest_edge"])
    else:
        cap = 768 * (image_processor.patch_size * image_processor.merge_size) ** 2
        size["longest_edge"] = min(size["longest_edge"], cap)
    return {"shortest_edge": int(size["shortest_edge"]), "longest_edge": int(size["longest_edge"])}


def clean_prompt(answer: str) -> str | None:
    """A VLM answer -> ``"<view>. The camera <motion>."`` (quotes, extra sentences dropped); ``None``
    when the answer has no such pair of sentences."""

    text = " ".join(answer.replace('"', " ").split())
    m = re.search(r"([A-Z][^.!?]*view)\.\s*(The camera [^.]*\.)", text)
    return f"{m.group(1)}. {m.group(2)}" if m else None


# ---- videos ---------------------------------------------------------------------------------------
def _sidecar(video: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        p = video.with_name(video.stem + name)
        if p.exists():
            return p
    return None


def import_videos(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    prompt_default: str | None = None,
    captioner: Callable[[Path, int], str] | None = None,
    labels: str = "pseudo",
    model_dir: str | os.PathLike | None = None,
    fix: FixMode = "auto",
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> ImportReport:
    """A folder of single-view videos (+ optional sidecars) -> ``internet`` clips (``docs/data.md``)."""

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ImportError_(f"video folder {src} does not exist")
    videos = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise ImportError_(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {src}")
    _prepare_out(out, overwrite)
    report = ImportReport(out)
    seen: set[str] = set()
    for video in videos:
        rel = video.relative_to(src)
        clip_id = _clip_id(rel)
        if clip_id in seen:
            report.skipped.append((str(rel), f"clip id {clip_id!r} already used by another video"))
            continue
        seen.add(clip_id)
        try:
            rec, notes = _import_one_video(
                video, out, clip_id, prompt_default, captioner, labels, model_dir, fix
            )
        except (VideoError, EstimatorError, KeypointError, ImportError_, OSError) as err:
            report.skipped.append((str(rel), str(err)))
            log(f"skipped {rel}: {err}")
            continue
        _accept(report, rec, notes, str(rel), log)
    report.write()
    return report


def _accept(report: ImportReport, rec: ClipRecord, notes: list[str], label: str, log) -> None:
    from dimo.data.validate import validate_record

    problems: list[Problem] = validate_record(rec, decode=True)
    for n in notes:
        report.notes.append((rec.id, n))
    if problems:
        reason = "; ".join(f"{p.part}: {p.reason}" for p in problems)
        report.skipped.append((label, f"imported as {rec.id} but failed validation: {reason}"))
        log(f"skipped {label}: {reason}")
        return
    report.records.append(rec)
    log(f"imported {label} -> {rec.id}" + (f" ({'; '.join(notes)})" if notes else ""))


def _import_one_video(video, out, clip_id, prompt_default, captioner, labels, model_dir, fix):
    clip_dir = out / "clips" / clip_id
    placed, facts, notes = _place_video(video, clip_dir / "view_00", fix)
    T, H, W = facts.num_frames, facts.height, facts.width
    view: dict[str, Any] = {"video": placed.relative_to(out).as_posix(), "name": "camera"}
    prompt_file = _sidecar(video, (".prompt.txt",))
    prompt = _read_text(prompt_file) if prompt_file else None
    if prompt is None and captioner is not None:
        try:
            prompt = captioner(placed, T)
            notes.append("camera prompt from the captioner")
        except CaptionError as err:
            fallback = "--prompt used instead" if prompt_default else "no camera prompt"
            notes.append(f"{err}; {fallback}")
    if prompt is None and prompt_default:
        prompt = prompt_default
    if prompt is None and captioner is None:
        notes.append("no camera prompt (no .prompt.txt sidecar, --prompt or --captioner)")
    view["camera_prompt"] = prompt or ""
    record: dict[str, Any] = {"id": clip_id, "source": "internet", "fps": facts.fps, "num_frames": T,
                              "height": H, "width": W, "views": [view]}  # fmt: skip
    caption = _read_text(_sidecar(video, (".caption.txt",)) or Path("/nonexistent"))
    if caption:
        record["caption"] = caption
    motion_file = _sidecar(video, (".smplx.npz", ".smplx.json", ".motion.npz", ".motion.json", ".smplx.pkl"))
    if motion_file is not None:
        conv = convert_estimator_motion(read_array_file(motion_file), T, (H, W), labels, model_dir)
        save_motion(clip_dir / "motion.npz", conv.arrays)
        record["motion"] = {"file": f"clips/{clip_id}/motion.npz", "body": conv.body, "hands": conv.hands,
                            "joints3d": conv.joints3d}  # fmt: skip
        notes += [f"motion: {n}" for n in conv.notes]
        if conv.K is not None:
            view["K"] = conv.K.tolist()
            view["R"] = np.eye(3).tolist()
            view["t"] = [0.0, 0.0, 0.0]
    kp_src = _sidecar(video, (".keypoints.json", ".openpose", ".coco_wholebody.json", ".dwpose.json"))
    if kp_src is not None:
        kp, sc = read_keypoints(kp_src, T)
        save_keypoints2d(clip_dir / "keypoints2d_00.npz", kp, sc)
        view["keypoints2d"] = f"clips/{clip_id}/keypoints2d_00.npz"
        detected = float((sc[:, :17].max(axis=1) > 0).mean())
        notes.append(f"2D keypoints from {kp_src.name}: body found in {detected:.0%} of frames")
    return parse_record(record, out), notes


# ---- multi-view captures --------------------------------------------------------------------------
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}


def _camera_from_json(name: str, cam: dict, convention: str, scale: float) -> dict[str, Any]:
    """One camera entry -> world-to-camera K (3,3), R (3,3)|(T,3,3), t (3,)|(T,3) in metres."""

    if not isinstance(cam, dict) or "K" not in cam:
        raise ImportError_(f"camera {name!r}: needs 'K' and 'R' + 't' (or 'RT' / 'matrix')")
    K = np.asarray(cam["K"], dtype=np.float64)
    if "RT" in cam or "matrix" in cam:
        M = np.asarray(cam.get("RT", cam.get("matrix")), dtype=np.float64)
        if M.shape[-2:] not in ((3, 4), (4, 4)):
            raise ImportError_(f"camera {name!r}: RT must be 3x4 or 4x4, got {M.shape}")
        R, t = M[..., :3, :3], M[..., :3, 3]
    else:
        R, t = np.asarray(cam["R"], dtype=np.float64), np.asarray(cam["t"], dtype=np.float64)
    t = t.reshape(*R.shape[:-2], 3) * scale
    if not (np.isfinite(K).all() and np.isfinite(R).all() and np.isfinite(t).all()):
        raise ImportError_(f"camera {name!r} has non-finite values")
    if convention == "camera_to_world":  # R, t place the camera in the world: invert
        Rw = np.swapaxes(R, -1, -2)
        R, t = Rw, -np.einsum("...ij,...j->...i", Rw, t)
    dist = np.asarray(cam.get("dist", []), dtype=np.float64).reshape(-1)
    return {"K": K, "R": R, "t": t, "dist": dist}


def _rig_up(Rs: list[np.ndarray]) -> np.ndarray:
    """World 'up' as the cameras see it.

    Cameras without roll have a horizontal x axis: when the x axes of all cameras and frames span a
    plane (cameras facing different ways), up is its normal, signed like minus the mean camera y axis
    (OpenCV y points down); otherwise up is minus the mean camera y axis.
    """

    Rall = np.concatenate([np.asarray(R, dtype=np.float64).reshape(-1, 3, 3) for R in Rs])  # (N, 3, 3)
    up = -Rall[:, 1].mean(0)
    xs = Rall[:, 0]
    evals, evecs = np.linalg.eigh(xs.T @ xs / len(xs))  # ascending
    if evals[1] > 0.05 and evals[0] < 0.01 * evals[1]:  # x axes span a plane (no roll, several headings)
        normal = evecs[:, 0]
        up = normal if normal @ up >= 0 else -normal
    return up / max(np.linalg.norm(up), 1e-9)


def _rig_center(Rs, ts) -> np.ndarray:
    """The point nearest to every camera's optical axis (least squares): where the subject stands."""

    A, b = np.zeros((3, 3)), np.zeros(3)
    for R, t in zip(Rs, ts):
        R0, t0 = np.asarray(R).reshape(-1, 3, 3)[0], np.asarray(t).reshape(-1, 3)[0]
        c, d = -R0.T @ t0, R0[2]
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _subject_frame(Rs, ts, joints=None, subject=None, facing=None, up=None) -> tuple[np.ndarray, np.ndarray]:
    """Where the subject stands and a world frame around it for :func:`view_name` -> (subject (3,), B (3, 3)).

    ``B``'s rows are the axes of a frame with y = up and z = the subject's facing (in world
    coordinates). Unless given: up is the cameras' mean up, the subject is the pelvis at frame 0 (or
    where the optical axes meet), facing its hips' forward direction (or the first camera).
    """

    up = _rig_up(Rs) if up is None else np.asarray(up, dtype=np.float64) / max(np.linalg.norm(up), 1e-9)
    if subject is None:
        subject = joints[0, 0] if joints is not None else _rig_center(Rs, ts)
    subject = np.asarray(subject, dtype=np.float64)
    if facing is None:
        if joints is not None:
            left = joints[0, 1] - joints[0, 2]  # left hip - right hip
            facing = np.cross(left, up)  # left x up = forward (y up, x = subject left, z forward)
        else:
            R0, t0 = np.asarray(Rs[0]).reshape(-1, 3, 3)[0], np.asarray(ts[0]).reshape(-1, 3)[0]
            facing = -R0.T @ t0 - subject  # facing the first camera
    facing = np.asarray(facing, dtype=np.float64)
    facing = facing - up * (facing @ up)
    # a world frame with y = up for view_name (it assumes y up)
    y = up
    z = facing / max(np.linalg.norm(facing), 1e-9)
    x = np.cross(y, z)
    return subject, np.stack([x, y, z])  # rows: new axes in old coordinates


def _static_prompts(cams: dict[str, dict], joints: np.ndarray | None) -> dict[str, str]:
    """ "<view>. The camera remains static." per camera, the view named around the subject."""

    import torch

    from dimo.geometry.cameras import view_name

    names = list(cams)
    subject, B = _subject_frame([cams[n]["R"] for n in names], [cams[n]["t"] for n in names], joints)
    out = {}
    for n in names:
        R0, t0 = np.asarray(cams[n]["R"]).reshape(-1, 3, 3)[0], np.asarray(cams[n]["t"]).reshape(-1, 3)[0]
        eye = B @ (-R0.T @ t0 - subject)
        view = view_name(torch.tensor(eye, dtype=torch.float32), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
        out[n] = f"{view}. The camera remains static."
    return out


def _frames_from_images(folder: Path, dst: Path, fps: float) -> Path:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImportError_(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")

    def frames():
        size = None
        for f in files:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"))
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise ImportError_(f"{f}: image size {arr.shape[:2]} differs from the first {size[:2]}")
            yield arr[: arr.shape[0] // 2 * 2, : arr.shape[1] // 2 * 2]

    return write_video(dst, frames(), fps)


def _sequence_dirs(src: Path, marker: str) -> list[Path]:
    if (src / marker).is_file():
        return [src]
    return sorted(p.parent for p in src.glob(f"*/{marker}"))


def import_multiview(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    convention: Literal["world_to_camera", "camera_to_world"] | None = None,
    source: Literal["multiview", "ue5"] = "multiview",
    fps: float | None = None,
    labels: str = "gt",
    model_dir: str | os.PathLike | None = None,
    fix: FixMode = "auto",
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> ImportReport:
    """Calibrated captures in the generic layout (``docs/data.md``) -> ``multiview`` clips.

    ``convention`` overrides the one declared in ``cameras.json`` (one of them is required).
    """

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ImportError_(f"capture folder {src} does not exist")
    seqs = _sequence_dirs(src, "cameras.json")
    if not seqs:
        raise ImportError_(f"no cameras.json in {src} or its subfolders (layout: docs/data.md)")
    _prepare_out(out, overwrite)
    return _import_sequences(
        out,
        seqs,
        lambda seq: _import_capture(
            seq,
            out,
            _clip_id(seq.relative_to(src)) if seq != src else _clip_id(Path(src.name)),
            convention,
            source,
            fps,
            labels,
            model_dir,
            fix,
        ),  # fmt: skip
        (VideoError, EstimatorError, ImportError_, OSError, ValueError),
        log,
    )


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ImportError_(f"{path}: unreadable JSON ({err})") from None


def _import_capture(seq, out, clip_id, convention, source, fps, labels, model_dir, fix):
    spec = _load_json(seq / "cameras.json")
    if not isinstance(spec, dict) or not isinstance(spec.get("cameras"), dict) or not spec["cameras"]:
        raise ImportError_(f"{seq / 'cameras.json'}: needs a non-empty 'cameras' object")
    conv = convention or spec.get("convention")
    if conv not in ("world_to_camera", "camera_to_world"):
        raise ImportError_(
            f'{seq / "cameras.json"}: declare "convention": "world_to_camera" or "camera_to_world" '
            "(or pass --convention)"
        )
    units = spec.get("units", "m")
    if units not in UNITS:
        raise ImportError_(f"{seq / 'cameras.json'}: units must be one of {sorted(UNITS)}, got {units!r}")
    cams = {n: _camera_from_json(n, c, conv, UNITS[units]) for n, c in spec["cameras"].items()}
    return _write_capture(seq, out, clip_id, cams, source, fps or spec.get("fps"), labels, model_dir, fix,
                          motion_file=_first(seq, ("motion.npz", "motion.json", "smplx.npz", "smplx.json")),
                          prompts=_load_json(seq / "prompts.json") if (seq / "prompts.json").is_file() else {},
                          media=lambda n: _first(seq / "videos", tuple(n + s for s in VIDEO_SUFFIXES))
                          or _dir_or_none(seq / "images" / n))  # fmt: skip


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _dir_or_none(p: Path) -> Path | None:
    return p if p.is_dir() else None


def _write_capture(seq, out, clip_id, cams, source, fps, labels, model_dir, fix, motion_file, prompts, media,
                   frame_map=None, motion_arrays=None):  # fmt: skip
    notes: list[str] = []
    clip_dir = out / "clips" / clip_id
    views, sizes, counts, rates = [], [], [], []
    for i, (name, cam) in enumerate(cams.items()):
        m = media(name)
        if m is None:
            notes.append(f"camera {name}: no video or image folder, left out")
            continue
        if m.is_dir():
            if not fps:
                raise ImportError_(f'{m}: image folders need a frame rate ("fps" in cameras.json or --fps)')
            placed = _frames_from_images(m, clip_dir / f"view_{i:02d}.mp4", float(fps))
            facts = inspect_video(placed)
        else:
            placed, facts, vnotes = _place_video(m, clip_dir / f"view_{i:02d}", fix)
            notes += [f"camera {name}: {n}" for n in vnotes]
        if cam["dist"].size and np.abs(cam["dist"]).max() > 1e-6:
            notes.append(
                f"camera {name}: lens distortion {cam['dist'].round(4).tolist()} ignored (pinhole model)"
            )
        K = cam["K"]
        if "image_scale" in cam:
            K = K.copy()
            K[..., :2, :] *= cam["image_scale"]
        views.append({"video": placed.relative_to(out).as_posix(), "name": name, "K": K.tolist(),
                      "R": cam["R"].tolist(), "t": cam["t"].tolist()})  # fmt: skip
        sizes.append((facts.height, facts.width))
        counts.append(facts.num_frames)
        rates.append(facts.fps)
    if len(views) < 2:
        raise ImportError_(f"{seq}: fewer than 2 cameras with media")
    if len(set(sizes)) != 1:
        raise ImportError_(f"{seq}: views differ in size {sorted(set(sizes))}; dimo needs one size per clip")
    T = min(counts)
    if max(counts) != T:
        notes.append(f"views have {min(counts)}..{max(counts)} frames: the first {T} are used")
    joints = None
    record: dict[str, Any] = {"id": clip_id, "source": source, "fps": float(fps or rates[0]), "num_frames": T,
                              "height": sizes[0][0], "width": sizes[0][1], "views": views}  # fmt: skip
    if motion_arrays is None and motion_file is not None:
        motion_arrays = read_array_file(motion_file)
    if motion_arrays is not None:
        record["motion"], joints = _world_motion(
            motion_arrays, T, sizes[0], labels, model_dir, out, clip_id, notes
        )
    names = [v["name"] for v in views]
    auto = _static_prompts({n: cams[n] for n in names}, joints)
    for v in views:
        p = prompts.get(v["name"]) if isinstance(prompts, dict) else None
        if isinstance(p, str) and p.strip():
            v["camera_prompt"] = " ".join(p.split())
        elif _moves(cams[v["name"]], T):
            v["camera_prompt"] = _moving_prompt(seq, v["name"], cams, names, T, joints)
        else:
            v["camera_prompt"] = auto[v["name"]]
    return parse_record(record, out), notes


def _moving_prompt(seq, name, cams, names, T, joints) -> str:
    """The prompt of a moving camera of a capture: its path in the subject's frame, described like a
    rendered trajectory's (:func:`dimo.geometry.cameras.trajectory_prompt`)."""

    from dimo.geometry.cameras import trajectory_prompt

    def per_frame(cam):
        return {
            "R": np.broadcast_to(np.asarray(cam["R"]).reshape(-1, 3, 3)[:T], (T, 3, 3)),
            "t": np.broadcast_to(np.asarray(cam["t"]).reshape(-1, 3)[:T], (T, 3)),
        }

    rig = [per_frame(cams[n]) for n in names]
    subject, B = _subject_frame([c["R"] for c in rig], [c["t"] for c in rig], joints)
    R, t = _canonical_path(per_frame(cams[name]), subject, B)
    try:
        return trajectory_prompt(np.asarray(cams[name]["K"]), R, t, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    except ValueError as err:
        raise ImportError_(
            f'{seq}: camera {name} moves and {err}; give its prompt ("<view>. The camera <motion>.") in '
            "prompts.json"
        ) from None


def _world_motion(motion_arrays, T, size, labels, model_dir, out, clip_id, notes):
    """World-coordinate motion arrays -> ``clips/<id>/motion.npz`` -> (record's motion entry, joints or None).

    Joints alone are kept as 3D joints; SMPL-X parameters are converted (:mod:`dimo.data.estimators`),
    and joints given beside them (``joints (T, 55, 3)``, optional ``rest_joints (55, 3)``) are kept
    when no model folder computes them (validation then checks them against the parameters' FK).
    """

    given = motion_arrays.get("joints")
    if given is not None:
        given = np.asarray(given, dtype=np.float32)
        if given.shape != (T, 55, 3):
            raise EstimatorError(f"joints has shape {given.shape}, expected ({T}, 55, 3)")
    if given is not None and "body_pose" not in motion_arrays and "poses" not in motion_arrays:
        arrays, flags = {"joints": given}, {"body": "missing", "hands": "missing", "joints3d": labels}
    else:
        conv = convert_estimator_motion(motion_arrays, T, size, labels, model_dir)
        if conv.K is not None:
            raise EstimatorError("a multi-view motion must be in world coordinates (no focal length)")
        arrays, flags = conv.arrays, {"body": conv.body, "hands": conv.hands, "joints3d": conv.joints3d}
        notes += [f"motion: {n}" for n in conv.notes]
        if given is not None and "joints" not in arrays:
            arrays["joints"], flags["joints3d"] = given, labels
            rest = motion_arrays.get("rest_joints")
            if rest is not None and np.shape(rest) == (55, 3):
                arrays["rest_joints"] = np.asarray(rest, dtype=np.float32)
    save_motion(out / "clips" / clip_id / "motion.npz", arrays)
    return {"file": f"clips/{clip_id}/motion.npz", **flags}, arrays.get("joints")


def _moves(cam: dict, T: int, tol_m: float = 1e-3, tol_deg: float = 0.1) -> bool:
    """Whether a camera's per-frame extrinsics or focal length (a zoom) change over the first ``T`` frames."""

    f = np.asarray(cam["K"]).reshape(-1, 3, 3)[:T, 0, 0]
    if np.abs(f / f[0] - 1).max() > 1e-3:
        return True
    R = np.asarray(cam["R"]).reshape(-1, 3, 3)[:T]
    t = np.asarray(cam["t"]).reshape(-1, 3)[:T]
    centres = -np.einsum("tji,tj->ti", R, t)  # -R^T t
    cos = np.clip((np.einsum("tij,ij->t", R, R[0]) - 1) / 2, -1, 1)  # trace(R_t R_0^T)
    return bool(np.abs(centres - centres[0]).max() > tol_m or np.degrees(np.arccos(cos)).max() > tol_deg)


# ---- rendered trajectories (UE5 / Blender) --------------------------------------------------------
CAMERA_AXES = ("opencv", "opengl")  # opengl: Blender / OpenGL cameras (x right, y up, looking down -z)
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


def import_renders(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    convention: Literal["world_to_camera", "camera_to_world"] | None = None,
    fps: float | None = None,
    labels: str = "gt",
    model_dir: str | os.PathLike | None = None,
    fix: FixMode = "auto",
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> ImportReport:
    """Rendered trajectories with known per-frame cameras (``docs/data.md``, "renders") -> ``ue5`` clips.

    One clip per sequence folder (``metadata.json``), one view per trajectory with its per-frame
    ``K``, ``R``, ``t`` and a camera prompt computed from the path
    (:func:`dimo.geometry.cameras.trajectory_prompt`). A trajectory that cannot be used (no camera
    file, no media, a frame-count mismatch, non-finite values, a non-positive focal length, a
    non-rotation ``R``, a path of no known kind) is reported by file and left out; a sequence with
    fewer than 2 usable trajectories, or whose subject is behind a camera, is reported as a whole.
    ``convention`` overrides the one declared in ``metadata.json``.
    """

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ImportError_(f"render folder {src} does not exist")
    seqs = _sequence_dirs(src, "metadata.json")
    if not seqs:
        raise ImportError_(f"no metadata.json in {src} or its subfolders (layout: docs/data.md, renders)")
    _prepare_out(out, overwrite)
    report = ImportReport(out)
    for seq in seqs:
        clip_id = _clip_id(seq.relative_to(src)) if seq != src else _clip_id(Path(src.name))

        def skip(path: Path, why: str, seq=seq) -> None:
            report.skipped.append((str(path), f"sequence {seq.name}: {why}"))
            log(f"skipped {path}: {why}")

        try:
            rec, notes = _import_render(seq, out, clip_id, convention, fps, labels, model_dir, fix, skip)
        except (VideoError, EstimatorError, ImportError_, OSError, ValueError) as err:
            skip(seq, str(err))
            shutil.rmtree(out / "clips" / clip_id, ignore_errors=True)
            continue
        _accept(report, rec, notes, str(seq), log)
    report.write()
    return report


def _trajectory_names(seq: Path) -> list[str]:
    names = set()
    if (seq / "videos").is_dir():
        names |= {p.stem for p in (seq / "videos").iterdir() if p.suffix.lower() in VIDEO_SUFFIXES}
    if (seq / "images").is_dir():
        names |= {p.name for p in (seq / "images").iterdir() if p.is_dir()}
    if (seq / "cameras").is_dir():
        names |= {p.stem for p in (seq / "cameras").iterdir() if p.suffix in (".json", ".npz")}
    return sorted(names)


def _read_trajectory_camera(path: Path, convention, scale: float, axes: str, size: tuple[int, int]) -> dict:
    """A per-trajectory camera file -> world-to-camera OpenCV ``K (T|1, 3, 3)``, ``R (T, 3, 3)``, ``t (T, 3)``
    in metres. Raises :class:`ImportError_` naming the file."""

    if path.suffix == ".npz":
        try:
            raw: dict[str, Any] = read_array_file(path)
        except EstimatorError as err:
            raise ImportError_(str(err)) from None
    else:
        raw = _load_json(path)
        if not isinstance(raw, dict):
            raise ImportError_(f"{path}: must be a JSON object")
    conv = convention or raw.get("convention")
    conv = str(conv) if isinstance(conv, np.ndarray) and conv.ndim == 0 else conv  # an .npz string
    if conv not in ("world_to_camera", "camera_to_world"):
        raise ImportError_(
            f'{path}: no convention: declare "convention" in metadata.json (or pass --convention)'
        )
    cam: dict[str, Any] = {}
    frames = raw.get("frames")
    try:
        if isinstance(frames, list) and frames:  # NeRF/Blender style: one entry per frame
            key = next((k for k in ("transform_matrix", "matrix", "RT") if k in frames[0]), None)
            if key is not None:
                cam["RT"] = [f[key] for f in frames]
            else:
                cam["R"], cam["t"] = [f["R"] for f in frames], [f["t"] for f in frames]
            if "K" in frames[0]:
                cam["K"] = [f["K"] for f in frames]
        else:
            for key in ("R", "t", "RT", "matrix", "transform_matrix"):
                if key in raw:
                    cam["RT" if key == "transform_matrix" else key] = raw[key]
        if "K" not in cam:
            H, W = size
            if "K" in raw:
                cam["K"] = raw["K"]
            elif "fl_x" in raw:
                fx = float(raw["fl_x"])
                cam["K"] = [[fx, 0, float(raw.get("cx", W / 2))], [0, float(raw.get("fl_y", fx)), float(raw.get("cy", H / 2))],
                            [0, 0, 1]]  # fmt: skip
            elif "camera_angle_x" in raw:  # horizontal field of view, radians (NeRF / Blender)
                fx = 0.5 * W / math.tan(float(raw["camera_angle_x"]) / 2)
                cam["K"] = [[fx, 0, W / 2], [0, fx, H / 2], [0, 0, 1]]
        if "K" not in cam or not ({"R", "t"} <= cam.keys() or "RT" in cam or "matrix" in cam):
            raise ImportError_(
                f"{path}: needs intrinsics (K, fl_x/fl_y/cx/cy or camera_angle_x) and per-frame extrinsics "
                "(R + t, matrix, or frames[].transform_matrix)"
            )
        c = _camera_from_json(path.name, cam, conv, scale)
    except ImportError_ as err:
        raise ImportError_(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ImportError_(f"{path}: malformed camera ({type(err).__name__}: {err})") from None
    K, R, t = c["K"], c["R"].reshape(-1, 3, 3), c["t"].reshape(-1, 3)
    if K.shape[-2:] != (3, 3) or K.ndim not in (2, 3):
        raise ImportError_(f"{path}: K must be 3x3 or per frame Tx3x3, got {K.shape}")
    if axes == "opengl":  # camera axes x right, y up, z backward -> OpenCV's y down, z forward
        R, t = _GL_TO_CV @ R, t @ _GL_TO_CV
    try:
        check_intrinsics(K.tolist(), f"{path}: K")
        check_rotation(R.tolist(), f"{path}: R")
    except RecordError as err:
        raise ImportError_(str(err)) from None
    return {"K": K, "R": R, "t": t}


def _canonical_path(cam: dict, subject: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera R, t in the frame of :func:`_subject_frame` (subject at the origin, y up)."""

    R = cam["R"] @ B.T  # X_cam = R X_world + t = (R B^T)(B (X_world - s)) + (t + R s)
    t = cam["t"] + np.einsum("tij,j->ti", cam["R"], subject)
    return R, t


def _import_render(seq, out, clip_id, convention, fps, labels, model_dir, fix, skip):
    meta = _load_json(seq / "metadata.json")
    if not isinstance(meta, dict):
        raise ImportError_(f"{seq / 'metadata.json'}: must be a JSON object")
    conv = convention or meta.get("convention")
    units = meta.get("units", "m")
    if units not in UNITS:
        raise ImportError_(f"{seq / 'metadata.json'}: units must be one of {sorted(UNITS)}, got {units!r}")
    axes = meta.get("camera_axes", "opencv")
    if axes not in CAMERA_AXES:
        raise ImportError_(f"{seq / 'metadata.json'}: camera_axes must be one of {CAMERA_AXES}, got {axes!r}")
    fps = fps or meta.get("fps")
    prompts = meta.get("prompts") or {}
    names = _trajectory_names(seq)
    if not names:
        raise ImportError_(
            f"{seq}: no trajectories (videos/<name>.mp4 or images/<name>/ with cameras/<name>.json)"
        )
    clip_dir = out / "clips" / clip_id
    notes: list[str] = []
    trajs: dict[str, dict] = {}
    for i, name in enumerate(names):
        media = _first(seq / "videos", tuple(name + s for s in VIDEO_SUFFIXES)) or _dir_or_none(
            seq / "images" / name
        )
        camfile = _first(seq / "cameras", (f"{name}.json", f"{name}.npz"))
        if media is None:
            skip(camfile, f"trajectory {name}: no video videos/{name}.mp4 or image folder images/{name}/")
            continue
        if camfile is None:
            skip(media, f"trajectory {name}: no camera file cameras/{name}.json or cameras/{name}.npz")
            continue
        placed = None
        try:
            if media.is_dir():
                if not fps:
                    raise ImportError_(
                        f'{media}: image folders need a frame rate ("fps" in metadata.json or --fps)'
                    )
                placed = _frames_from_images(media, clip_dir / f"view_{i:02d}.mp4", float(fps))
                facts, vnotes = inspect_video(placed), []
            else:
                placed, facts, vnotes = _place_video(media, clip_dir / f"view_{i:02d}", fix)
            cam = _read_trajectory_camera(camfile, conv, UNITS[units], axes, (facts.height, facts.width))
            n_R, n_K = len(cam["R"]), len(cam["K"]) if cam["K"].ndim == 3 else 1
            for what, n in (("extrinsics", n_R), ("intrinsics", n_K)):
                if n not in (1, facts.num_frames):
                    raise ImportError_(f"{camfile}: frame-count mismatch: {n} frames of {what}, "
                                       f"{facts.num_frames} frames in {media.name}")  # fmt: skip
        except (VideoError, ImportError_, OSError) as err:
            if placed is not None:
                placed.unlink(missing_ok=True)
            skip(camfile if str(camfile) in str(err) else media, f"trajectory {name}: {err}")
            continue
        notes += [f"trajectory {name}: {n}" for n in vnotes]
        trajs[name] = {**cam, "placed": placed, "facts": facts, "camfile": camfile, "media": media}
    counts = [tr["facts"].num_frames for tr in trajs.values()]
    sizes = {(tr["facts"].height, tr["facts"].width) for tr in trajs.values()}
    if len(sizes) > 1:
        raise ImportError_(
            f"{seq}: trajectories differ in size {sorted(sizes)}; dimo needs one size per clip"
        )
    if counts:
        T = max(set(counts), key=lambda n: (counts.count(n), n))  # the most common frame count
        for name in [n for n, tr in trajs.items() if tr["facts"].num_frames != T]:
            tr = trajs.pop(name)
            tr["placed"].unlink(missing_ok=True)
            skip(tr["media"], f"trajectory {name}: frame-count mismatch: "
                 f"{tr['facts'].num_frames} frames, the sequence's other trajectories have {T}")  # fmt: skip
    if len(trajs) < 2:
        raise ImportError_(f"fewer than 2 usable trajectories ({len(trajs)}); ue5 clips need 2 or more")
    H, W = next(iter(sizes))
    for tr in trajs.values():  # static cameras given once: one pose for every frame
        tr["R"], tr["t"] = np.broadcast_to(tr["R"], (T, 3, 3)), np.broadcast_to(tr["t"], (T, 3))
    rate = float(fps or next(iter(trajs.values()))["facts"].fps)
    record: dict[str, Any] = {
        "id": clip_id,
        "source": "ue5",
        "fps": rate,
        "num_frames": T,
        "height": H,
        "width": W,
    }
    if isinstance(meta.get("caption"), str) and meta["caption"].strip():
        record["caption"] = " ".join(meta["caption"].split())
    motion_file = _first(seq, ("motion.npz", "motion.json", "smplx.npz", "smplx.json"))
    joints = None
    if motion_file is not None:
        record["motion"], joints = _world_motion(read_array_file(motion_file), T, (H, W), labels, model_dir, out,
                                                 clip_id, notes)  # fmt: skip
    scale = UNITS[units]
    subject = (
        np.asarray(meta["subject"], dtype=np.float64) * scale if meta.get("subject") is not None else None
    )
    # the subject in front of every camera: a camera-to-world path declared world-to-camera fails here
    probe_point = joints[:, 0] if joints is not None else subject
    views_tmp = [{"video": "x", "K": tr["K"].tolist(), "R": tr["R"].tolist(), "t": tr["t"].tolist(), "name": n}
                 for n, tr in trajs.items()]  # fmt: skip
    if probe_point is not None:
        from dimo.data.validate import subject_view_problems

        problems = subject_view_problems(
            parse_record({**record, "views": views_tmp, "motion": None}), probe_point
        )
        if problems:
            raise ImportError_(f"{seq}: " + "; ".join(p.reason for p in problems))
    subject, B = _subject_frame([tr["R"] for tr in trajs.values()], [tr["t"] for tr in trajs.values()], joints,
                                subject, meta.get("facing"), meta.get("up"))  # fmt: skip
    from dimo.geometry.cameras import trajectory_prompt

    views = []
    for name, tr in list(trajs.items()):
        given = prompts.get(name) if isinstance(prompts, dict) else None
        if isinstance(given, str) and given.strip():
            prompt = " ".join(given.split())
            notes.append(f"trajectory {name}: camera prompt from metadata.json")
        else:
            R, t = _canonical_path(tr, subject, B)
            try:
                prompt = trajectory_prompt(tr["K"], R, t, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
            except ValueError as err:
                skip(tr["camfile"], f'trajectory {name}: {err}; give its prompt in metadata.json "prompts"')
                trajs.pop(name)
                continue
        views.append({"video": tr["placed"].relative_to(out).as_posix(), "name": name, "camera_prompt": prompt,
                      "K": tr["K"].tolist(), "R": tr["R"].tolist(), "t": tr["t"].tolist()})  # fmt: skip
    if len(views) < 2:
        raise ImportError_(f"fewer than 2 usable trajectories ({len(views)}); ue5 clips need 2 or more")
    record["views"] = views
    return parse_record(record, out), notes


# ---- MVHumanNet (native layout) -------------------------------------------------------------------
def _camera_scale(path: Path) -> float:
    from dimo.safe_io import restricted_pickle_load

    try:
        value = restricted_pickle_load(path)
        value = float(np.asarray(value).reshape(-1)[0])
    except Exception as err:  # noqa: BLE001 - refused globals, corrupt pickles
        raise ImportError_(
            f"{path}: cannot read the camera scale safely ({err}); pass --camera-scale"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ImportError_(f"{path}: camera scale must be a positive number, got {value}")
    return value


def import_mvhumannet(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_dir: str = "images_lr",
    image_scale: float = 0.5,
    fps: float = 5.0,
    camera_scale: float | None = None,
    max_frames: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> ImportReport:
    """MVHumanNet outfit folders (their documented layout) -> ``multiview`` clips.

    Per outfit ``SRC/<id>/``: ``camera_extrinsics.json`` (``{"<n>_<camera>.<ext>": {"rotation": 3x3,
    "translation": [3]}}``, world-to-camera, translation in millimetres times ``camera_scale``),
    ``camera_intrinsics.json`` (``{"intrinsics": 3x3}``, full-resolution pixels, shared by the
    cameras), ``camera_scale.pkl`` (a float; read with a restricted unpickler that only admits
    numbers), ``<image_dir>/<camera>/<frame>_img.jpg`` (half resolution: ``image_scale`` 0.5 is applied to
    K), and optional EasyMocap-style SMPL-X fits ``smplx/smpl/<k:06d>.json`` (``Rh``, ``Th``,
    ``poses``, ``shapes``) for image frame ``(k + 1) * 5``. Hand poses there are PCA coefficients:
    hands are marked missing. Every image frame present in all cameras becomes a video frame at ``fps``.
    """

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ImportError_(f"MVHumanNet folder {src} does not exist")
    seqs = _sequence_dirs(src, "camera_extrinsics.json")
    if not seqs:
        raise ImportError_(f"no camera_extrinsics.json in {src} or its subfolders (not an MVHumanNet layout)")
    _prepare_out(out, overwrite)
    return _import_sequences(
        out,
        seqs,
        lambda seq: _import_mvh(
            seq, out, f"mvhumannet_{seq.name}", image_dir, image_scale, fps, camera_scale, max_frames
        ),
        (VideoError, EstimatorError, ImportError_, OSError, ValueError, KeyError),
        log,
    )


def _import_sequences(
    out: Path,
    seqs: list[Path],
    import_one: Callable[[Path], tuple[Any, list[str]]],
    errors: tuple[type[BaseException], ...],
    log: Callable[[str], None],
) -> ImportReport:
    """One record per sequence folder; a sequence that fails with ``errors`` is skipped and reported."""

    report = ImportReport(out)
    for seq in seqs:
        try:
            rec, notes = import_one(seq)
        except errors as err:
            why = f"{type(err).__name__}: {err}" if isinstance(err, KeyError) else str(err)
            report.skipped.append((str(seq), why))
            log(f"skipped {seq}: {err}")
            continue
        _accept(report, rec, notes, str(seq), log)
    report.write()
    return report


def _import_mvh(seq, out, clip_id, image_dir, image_scale, fps, camera_scale, max_frames):
    extr = _load_json(seq / "camera_extrinsics.json")
    intr = _load_json(seq / "camera_intrinsics.json")
    scale = camera_scale if camera_scale is not None else _camera_scale(seq / "camera_scale.pkl")
    K = np.asarray(intr["intrinsics"], dtype=np.float64)
    images = seq / image_dir
    if not images.is_dir():
        raise ImportError_(f"{images}: image folder not found (--image-dir)")
    cams: dict[str, dict] = {}
    for key, value in sorted(extr.items()):
        name = key.rsplit(".", 1)[0].split("_")[-1]
        if not (images / name).is_dir():
            continue
        R = np.asarray(value["rotation"], dtype=np.float64)
        t = np.asarray(value["translation"], dtype=np.float64).reshape(3) / 1000.0 * scale
        cams[name] = {"K": K, "R": R, "t": t, "dist": np.zeros(0), "image_scale": image_scale}
    if len(cams) < 2:
        raise ImportError_(f"{seq}: fewer than 2 cameras with images in {images}")

    def frame_no(p: Path) -> int | None:
        m = re.match(r"(\d+)", p.name)
        return int(m.group(1)) if m else None

    per_cam = {
        n: {frame_no(p): p for p in (images / n).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        for n in cams
    }
    common = sorted(set.intersection(*(set(k for k in d if k is not None) for d in per_cam.values())))
    smpl_dir = seq / "smplx" / "smpl"
    if smpl_dir.is_dir():  # keep the frames that have a fit: fit k <-> image frame (k + 1) * 5
        fits = {(int(p.stem) + 1) * 5: p for p in smpl_dir.glob("*.json") if p.stem.isdigit()}
        with_fit = [f for f in common if f in fits]
        common = with_fit or common
    if max_frames:
        common = common[:max_frames]
    if not common:
        raise ImportError_(f"{seq}: no frame number present in every camera folder")
    tmp_media = out / "clips" / clip_id / "_frames"
    media: dict[str, Path] = {}
    for n in cams:
        d = tmp_media / n
        d.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(common):
            target = d / f"{i:06d}{per_cam[n][f].suffix.lower()}"
            if not target.exists():
                os.link(per_cam[n][f], target) if _same_fs(per_cam[n][f], d) else shutil.copyfile(
                    per_cam[n][f], target
                )
        media[n] = d
    motion = None
    if smpl_dir.is_dir() and all(f in fits for f in common):
        frames = [_load_json(fits[f]) for f in common]
        people = [fr[0] if isinstance(fr, list) else fr for fr in frames]
        motion = {k: np.stack([np.asarray(p[k], dtype=np.float64).reshape(-1) for p in people])
                  for k in ("Rh", "Th", "poses", "shapes") if all(k in p for p in people)}  # fmt: skip
        if "poses" in motion and motion["poses"].shape[1] >= 66:
            body = motion.pop("poses")[:, 3:66]
            motion["body_pose"] = body  # the rest (PCA hands, head) is not converted
    try:
        rec, notes = _write_capture(seq, out, clip_id, cams, "multiview", fps, "pseudo", None, "auto", None, {},
                                    media.get, motion_arrays=motion)  # fmt: skip
    finally:
        shutil.rmtree(tmp_media, ignore_errors=True)
    notes.append(f"{len(common)} frames at {fps:g} fps, camera scale {scale:g}")
    if motion is not None:
        notes.append("SMPL-X body from smplx/smpl (hands are PCA there: marked missing)")
    return rec, notes


def _same_fs(a: Path, folder: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(folder).st_dev
    except OSError:
        return False
