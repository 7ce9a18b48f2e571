"""Score a directory of generated videos against a directory of reference videos.

Items are matched by name (file stem or folder name). An item is a video file readable by PyAV
(``.mp4``, ``.avi``, ``.mov``, ``.webm``, ``.mkv``, ``.gif``), a folder of frames (``.png``/``.jpg``,
sorted by name), or a single image. With ``grid=True`` an item is a folder holding one video (or frame
folder) per view, sorted by name, giving ``(V, T, 3, H, W)`` grids for the multi-view metrics.

When ``torch.distributed`` is initialised (``torchrun``), items are sharded over ranks and every
metric is reduced across them (torchmetrics sync), so the numbers equal the single-process run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".webm", ".mkv", ".gif"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

PAIRED = (
    "psnr",
    "ssim",
    "ssim_torchmetrics",
    "l1",
    "lpips_alex",
    "lpips_vgg",
    "psnr_disco",
    "psnr_disco_2024",
    "ssim_disco",
    "l1_disco",
    "lpips_disco",
)
DISTRIBUTION = ("fid", "fid_clean", "fid_disco", "fvd", "fvd_disco", "fvd_videomae", "fid_vid")
MULTIVIEW = ("fvd_v", "fvd_f")
POSE = ("mpjpe", "pa_mpjpe", "t_root")  # detect + lift + compare with the driving motion (dimo.eval.motion)
ALL_METRICS = PAIRED + DISTRIBUTION + MULTIVIEW + POSE
DEFAULT_METRICS = ("fid", "fvd", "fid_vid", "lpips_alex", "ssim", "psnr", "l1")

_DISCO = "DisCo tool/metrics (github.com/Wangt-CN/DisCo)"
CONVENTIONS: dict[str, str] = {
    "psnr": "PSNR on [0,1] RGB per frame, capped at 100 dB (mse = 0), mean over frames",
    "ssim": "SSIM of Wang et al. 2004 = skimage structural_similarity(gaussian_weights, sigma 1.5, "
    "population cov, valid windows), RGB mean",
    "ssim_torchmetrics": "torchmetrics>=1.5 structural_similarity_index_measure (Gaussian 11/1.5, "
    "no border crop)",
    "l1": "mean |a-b| on [0,1]",
    "lpips_alex": "LPIPS v0.1 AlexNet, [-1,1] input",
    "lpips_vgg": "LPIPS v0.1 VGG16, [-1,1] input",
    "psnr_disco": f"{_DISCO} ssim_l1_lpips_psnr.py @ f53ce62 (2023-12-08): uint8-overflow MSE, 100 if equal",
    "psnr_disco_2024": f"{_DISCO} ssim_l1_lpips_psnr.py @ 6190108 (2024-04-10): float64 MSE, 100 if equal",
    "ssim_disco": f"{_DISCO} ssim_l1_lpips_psnr.py @ 6190108 (same since 4772790): OpenCV gray + "
    "skimage SSIM defaults",
    "l1_disco": f"{_DISCO} ssim_l1_lpips_psnr.py @ 6190108: mean |a-b| in 0..255 / (H*W)",
    "lpips_disco": f"{_DISCO} ssim_l1_lpips_psnr.py @ 6190108: LPIPS-VGG on [0,1] frames",
    "fid": "torch-fidelity: Inception pool3, 8-bit frames, TF1 bilinear resize to 299; frames pooled",
    "fid_clean": "clean-fid 0.1.35 (github.com/GaParmar/clean-fid) mode 'clean': PIL bicubic float "
    "resize to 299 clipped to 0..255; frames pooled",
    "fid_disco": f"{_DISCO} metric_center.py @ 6190108 FID: clean-fid resizer copy without clipping; "
    "frames pooled",
    "fvd": "StyleGAN-V (github.com/universome/stylegan-v) I3D logits of one {frames}-frame clip per video: "
    "{clip}",
    "fvd_disco": f"{_DISCO} metric_center.py @ 6190108 'FVD-3DInception': whole video as one clip (every "
    "frame), PIL bicubic to 224, I3D BatchNorm eps 1e-3 / pool (1,7,7)",
    "fvd_videomae": "content-debiased FVD (Ge et al. 2024, github.com/songweige/content-debiased-fvd "
    "@ a1e037a): VideoMAE-v2 fc_norm(mean tokens), [0,1] bilinear 224, one {frames}-frame clip per video: "
    "the first {frames} frames (tubelets of {tubelet})",
    "fid_vid": f"{_DISCO} metric_center.py @ 6190108 'FVD-3DRN50': 3D ResNet-50, PIL bicubic 112, "
    "{frames}-frame clips (last padded) averaged per video",
    "fvd_v": "FVD over view sequences (dimo): at every frame the views in order form one sequence; I3D "
    "logits of one {frames}-view clip per sequence: {clip}",
    "fvd_f": "FVD over time per view (dimo): every view is one sequence; I3D logits of one {frames}-frame "
    "clip per sequence: {clip}",
}


def _clip_text(frames: int, stride: int, unit: str = "frames") -> str:
    need = (frames - 1) * stride + 1
    if stride == 1:
        return f"the first {frames} {unit}"
    return f"{frames} {unit}, one every {stride}, from the first {need}"


def convention(name: str, metric: Metric | None = None) -> str:
    """The convention text of harness metric ``name`` with the settings ``metric`` actually uses (clip
    length, stride, tubelet); the templates in :data:`CONVENTIONS` hold no frame counts of their own."""

    text = CONVENTIONS.get(name, type(metric).__name__ if metric is not None else name)
    if "{" not in text:
        return text
    if metric is None:
        raise ValueError(f"the convention of {name!r} depends on its settings: pass the metric")
    frames = int(getattr(metric, "num_frames", 0) or 0)
    stride = int(getattr(metric, "frame_stride", 1))
    ext = getattr(metric, "extractor", None)
    if name == "fid_vid":
        frames = int(getattr(metric, "sample_duration", 0) or 0)
    if frames <= 0:
        raise ValueError(f"{name}: cannot tell the clip length of {type(metric).__name__}")
    tubelet = getattr(getattr(ext, "config", None), "tubelet_size", "?")
    unit = "views" if name == "fvd_v" else "frames"
    return text.format(frames=frames, clip=_clip_text(frames, stride, unit), tubelet=tubelet)


@dataclass
class EvalConfig:
    """Settings of an evaluation run (also the keys of ``--config`` YAML files).

    Attributes:
        metrics: metric names (see :data:`ALL_METRICS`).
        weights_dir: directory of the weight files (default ``$DIMO_WEIGHTS_DIR``).
        fvd_frames, fvd_stride: FVD clip (named ``fvd_{frames}f[_s{stride}]``).
        fvd_format: ``"torchscript"`` (StyleGAN-V) or ``"state_dict"`` (pytorch-i3d).
        fvd_preprocess: TorchScript I3D preprocessing, ``"internal"`` or ``"external"``.
        fid_vid_duration: FID-VID clip length (DisCo: 16).
        reference_stats: directory of ``<metric>.npz`` reference statistics; read when present,
            written after a run that featurised the reference set.
        allow_rank_deficient: compute Fréchet metrics with fewer samples than feature dimensions.
        grid: items are per-view folders (multi-view metrics).
        device: torch device for the extractors.
        max_frames: score at most this many frames per video (None: all).
        videomae_weights: folder of the content-debiased FVD VideoMAE weights (default
            ``weights_dir/videomae-v2`` or ``$DIMO_WEIGHTS_DIR/videomae-v2``).
        cache_dir: feature cache (safetensors per video, metric and extractor weights); None: off.
        bootstrap: half-sample draws (of videos, without replacement) for the Fréchet metrics'
            bias-corrected confidence intervals (:func:`half_sample_interval`); 0: off.
        confidence: the interval's coverage.
        seed: seed of the half-sample draws.
        pose_detector: 2D keypoint detector folder of the pose metrics (``mpjpe``, ``pa_mpjpe``, ``t_root``).
        lifter: their lifting method by name (:data:`dimo.pose.lifting.LIFTERS`), built with ``lifter_options``
            (e.g. ``{"folder": ...}`` for a trained Free3D).
        reference_motion: where the driving motion comes from (:mod:`dimo.eval.motion`): a dataset folder,
            a folder of ``<item>.npz``, or None (the generate sidecar's driving clip).
        pose_on_driving: also run detector + lifter on the driving video (the estimator's own error).
    """

    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    weights_dir: str | None = None
    fvd_frames: int = 16
    fvd_stride: int = 1
    fvd_format: Literal["torchscript", "state_dict"] = "torchscript"
    fvd_preprocess: Literal["internal", "external"] = "internal"
    fid_vid_duration: int = 16
    reference_stats: str | None = None
    allow_rank_deficient: bool = False
    grid: bool = False
    device: str = "cpu"
    max_frames: int | None = None
    videomae_weights: str | None = None
    cache_dir: str | None = None
    bootstrap: int = 100
    confidence: float = 0.95
    seed: int = 0
    pose_detector: str | None = None
    lifter: str = "smplify"
    lifter_options: dict[str, Any] = field(default_factory=dict)
    reference_motion: str | None = None
    pose_on_driving: bool = True


# -- reading -----------------------------------------------------------------------------------------


def _frames_to_tensor(frames: Iterable[np.ndarray]) -> Tensor:
    arr = np.stack(list(frames))  # (T, H, W, 3) uint8
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1  # (T, 3, H, W) in [-1, 1]


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> Tensor:
    """A video file, a frame folder or an image -> ``(T, 3, H, W)`` float32 in [-1, 1]."""

    p = Path(path)
    if p.is_dir():
        from PIL import Image

        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ValueError(f"{p}: no frames ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
        files = files[:max_frames] if max_frames else files
        return _frames_to_tensor(np.asarray(Image.open(f).convert("RGB")) for f in files)
    if p.suffix.lower() in IMAGE_EXTS:
        from PIL import Image

        return _frames_to_tensor([np.asarray(Image.open(p).convert("RGB"))])
    import av

    frames = []
    with av.open(str(p)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{p}: no decodable video frames")
    return _frames_to_tensor(frames)


def write_video(path: str | os.PathLike, video: Tensor, fps: int = 8) -> None:
    """``(T, 3, H, W)`` in [-1, 1] -> a near-lossless (crf 0) H.264 mp4 (:func:`dimo.data.video.write_video`)."""

    from dimo.data.video import to_uint8
    from dimo.data.video import write_video as write_uint8

    write_uint8(path, to_uint8(video), fps, crf=0)


def list_items(root: str | os.PathLike, grid: bool = False) -> dict[str, Path]:
    """Name -> path of the scoreable items directly under ``root``."""

    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"not a directory: {r}")
    items: dict[str, Path] = {}
    for p in sorted(r.iterdir()):
        if p.name.startswith(".") or (p / "metrics.json").is_file():  # hidden, or an earlier eval output
            continue
        if p.is_dir() or (not grid and p.suffix.lower() in VIDEO_EXTS | IMAGE_EXTS):
            items[p.stem if p.is_file() else p.name] = p
    return items


def read_item(path: Path, grid: bool, max_frames: int | None) -> Tensor:
    """``(T, 3, H, W)``, or ``(V, T, 3, H, W)`` with ``grid=True`` (views = sorted entries of the folder)."""

    if not grid:
        return read_video(path, max_frames)
    views = [v for v in sorted(path.iterdir()) if v.is_dir() or v.suffix.lower() in VIDEO_EXTS]
    if not views:
        raise ValueError(f"{path}: a grid item needs one video or frame folder per view")
    vids = [read_video(v, max_frames) for v in views]
    t = min(v.shape[0] for v in vids)
    return torch.stack([v[:t] for v in vids])


def match_items(generated: dict[str, Path], reference: dict[str, Path]) -> list[str]:
    """Names present in both; every generated item must have a reference."""

    missing = sorted(set(generated) - set(reference))
    if missing:
        raise ValueError(
            f"{len(missing)} generated item(s) have no reference of the same name: {missing[:10]}"
        )
    if not generated:
        raise ValueError("no generated items found")
    extra = set(reference) - set(generated)
    if extra:
        warnings.warn(
            f"{len(extra)} reference item(s) have no generated counterpart and are ignored", stacklevel=2
        )
    return sorted(generated)


# -- metrics -----------------------------------------------------------------------------------------


def build_metric(name: str, cfg: EvalConfig) -> Metric:
    """One metric object by harness name (weights from ``cfg.weights_dir`` / ``$DIMO_WEIGHTS_DIR``)."""

    from dimo.eval import distribution, lpips, multiview, pixel

    wd = cfg.weights_dir
    frechet = dict(allow_rank_deficient=cfg.allow_rank_deficient)
    fvd = dict(
        num_frames=cfg.fvd_frames,
        frame_stride=cfg.fvd_stride,
        weights_format=cfg.fvd_format,
        weights=wd,
        preprocess=cfg.fvd_preprocess,
        **frechet,
    )
    factories: dict[str, Callable[[], Metric]] = {
        "psnr": pixel.PSNR,
        "ssim": pixel.SSIM,
        "ssim_torchmetrics": pixel.SSIMTorchmetrics,
        "l1": pixel.L1,
        "psnr_disco": pixel.PSNRDisCo,
        "psnr_disco_2024": pixel.PSNRDisCo2024,
        "ssim_disco": pixel.SSIMDisCo,
        "l1_disco": pixel.L1DisCo,
        "lpips_alex": lambda: lpips.LPIPS("alex", wd),
        "lpips_vgg": lambda: lpips.LPIPS("vgg", wd),
        "lpips_disco": lambda: lpips.LPIPS("vgg", wd, disco=True),
        "fid": lambda: distribution.FID(wd, **frechet),
        "fid_clean": lambda: distribution.FID(wd, resize="clean", **frechet),
        "fid_disco": lambda: distribution.FID(wd, resize="disco", **frechet),
        "fvd": lambda: distribution.FVD(**fvd),
        "fvd_disco": lambda: distribution.FVDDisCo(wd, **frechet),
        "fvd_videomae": lambda: distribution.FVDVideoMAE(
            cfg.videomae_weights or (Path(wd) / "videomae-v2" if wd else None), **frechet
        ),
        "fid_vid": lambda: distribution.FIDVID(cfg.fid_vid_duration, weights=wd, **frechet),
        "fvd_v": lambda: multiview.MultiViewFVD("view", **fvd),
        "fvd_f": lambda: multiview.MultiViewFVD("time", **fvd),
    }
    if name in POSE:
        raise ValueError(
            f"{name!r} detects and lifts whole videos against their driving motion (dimo.eval.motion): it runs "
            "in `dimo.cli evaluate` (run_evaluation), not as a per-batch metric object"
        )
    if name not in factories:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(ALL_METRICS)}")
    return factories[name]()


def metric_label(name: str, metric: Metric) -> str:
    """The reported key: the metric's own name where it states its settings (``fvd_16f``)."""

    return str(getattr(metric, "name", name)) if name in ("fvd", "fvd_v", "fvd_f", "fvd_videomae") else name


def build_metrics(
    names: Sequence[str], weights_dir: str | None = None, allow_grid: bool = True
) -> torch.nn.ModuleDict:
    """``{label: metric}`` for harness names, as a ``ModuleDict`` (the LightningModules' val/test metrics).

    The metrics hold no persistent state and keep their extractors outside the module tree, so adding
    them to a LightningModule changes neither its checkpoints nor their loading. ``allow_grid=False``
    rejects the multi-view metrics (for models that do not generate V x T grids).
    """

    cfg = EvalConfig(metrics=list(names), weights_dir=weights_dir)
    out = torch.nn.ModuleDict()
    for name in names:
        if not allow_grid and name in MULTIVIEW:
            raise ValueError(f"metric {name!r} scores (V, T) grids; this model generates single videos")
        metric = build_metric(name, cfg)
        out[metric_label(name, metric)] = metric
    return out


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard(names: Sequence[str]) -> Sequence[str]:
    rank, world = _dist()
    return names[rank::world]


def init_distributed_from_env() -> bool:
    """Initialise ``torch.distributed`` from a ``torchrun`` (``RANK``/``WORLD_SIZE``) or ``srun``
    (``SLURM_PROCID``/``SLURM_NTASKS``, with ``MASTER_ADDR``/``MASTER_PORT`` set) environment when it
    names more than one process. Returns True if this call initialised the group."""

    if not torch.distributed.is_available() or torch.distributed.is_initialized():
        return False
    env = os.environ
    if "WORLD_SIZE" not in env and "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        if int(env["SLURM_NTASKS"]) > 1:
            if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
                raise RuntimeError(
                    "srun with several tasks: set MASTER_ADDR and MASTER_PORT (e.g. the first host of "
                    "$SLURM_JOB_NODELIST and a free port), or launch with torchrun"
                )
            env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
            env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend, init_method="env://")
    return True


def count_frames(path: Path, grid: bool = False) -> int:
    """Frames of an item without decoding pixels where the container says (folders: files; videos: the
    stream's frame count, else a demux-only count)."""

    if grid:
        views = [v for v in sorted(path.iterdir()) if v.is_dir() or v.suffix.lower() in VIDEO_EXTS]
        return min(count_frames(v) for v in views) if views else 0
    if path.is_dir():
        return sum(1 for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if path.suffix.lower() in IMAGE_EXTS:
        return 1
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for p in container.demux(stream) if p.size)


def count_views(path: Path) -> int:
    """Views of a grid item (its video files and frame folders)."""

    return sum(1 for v in path.iterdir() if v.is_dir() or v.suffix.lower() in VIDEO_EXTS)


def content_hash(path: Path) -> str:
    """SHA-256 of an item's bytes (a folder: its sorted entries' names and bytes)."""

    import hashlib

    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    return _file_sha256(str(p.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:  # keyed by mtime/size: re-hash on change
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_sha256(net: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256(type(net).__qualname__.encode())
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _networks(metric: Metric) -> list[torch.nn.Module]:
    """The networks a metric holds outside its module tree (Fréchet extractors, LPIPS)."""

    nets = [getattr(metric, a, None) for a in ("extractor", "lpips")]
    return [n for n in nets if isinstance(n, torch.nn.Module)]


def weight_hashes(metric: Metric) -> dict[str, str]:
    """``{weight file: SHA-256}`` of every file the metric's networks were loaded from (a module's
    ``weight_path`` and extra ``weight_files``, e.g. LPIPS' linear heads or VideoMAE's config). A network
    with no ``weight_path`` (built in memory, injected) is hashed from its state dict as
    ``{"<state_dict ClassName>": SHA-256}``. Empty for metrics without networks."""

    out: dict[str, str] = {}
    for net in _networks(metric):
        mods = list(net.modules())
        primary = [p for p in (getattr(m, "weight_path", None) for m in mods) if p is not None]
        extra = [f for m in mods for f in (getattr(m, "weight_files", None) or ())]
        for f in dict.fromkeys([*primary, *extra]):  # the network's own weights first
            if Path(f).is_file():
                out[str(f)] = file_sha256(f)
        if not any(Path(p).is_file() for p in primary):
            out[f"<state_dict {type(net).__qualname__}>"] = _state_sha256(net)
    return out


def extractor_hash(metric: Metric) -> tuple[str, str | None]:
    """(SHA-256 identifying the extractor weights, weight file or None): the first weight file of
    :func:`weight_hashes` (the network's own weights), else the state-dict hash (injected extractors)."""

    hashes = weight_hashes(metric)
    for k, v in hashes.items():
        if not k.startswith("<"):
            return v, k
    if hashes:
        return next(iter(hashes.values())), None
    return _state_sha256(metric), None


class FeatureCache:
    """Per-video feature files ``<root>/<metric>/<weights sha[:16]>/<content sha>[_f<max_frames>].safetensors``."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root else None
        self.hits = self.misses = 0

    def path(self, label: str, weights: str, content: str, max_frames: int | None) -> Path | None:
        if self.root is None:
            return None
        suffix = f"_f{max_frames}" if max_frames else ""
        return self.root / label / weights[:16] / f"{content}{suffix}.safetensors"

    def load(self, p: Path | None) -> Tensor | None:
        if p is None or not p.is_file():
            return None
        from safetensors.torch import load_file

        self.hits += 1
        return load_file(str(p))["features"]

    def save(self, p: Path | None, feats: Tensor) -> None:
        if p is None:
            return
        from safetensors.torch import save_file

        self.misses += 1
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        save_file({"features": feats.detach().cpu().double().contiguous()}, str(tmp))
        os.replace(tmp, p)


@dataclass
class EvalReport:
    """What :func:`run_evaluation` found: ``values`` ``{label: value}``, ``details`` per label (counts,
    convention, weights, interval), ``per_video`` rows, cache statistics."""

    values: dict[str, float]
    details: dict[str, dict]
    per_video: list[dict]
    cache: dict[str, int] = field(default_factory=dict)


def _check_counts(
    names: Sequence[str],
    frames: dict[str, int],
    views: dict[str, int],
    frechet: dict[str, Metric],
    labels: dict[str, str],
    preloaded: set[str],
    allow_rank_deficient: bool,
    samples: Callable[[Metric, str], int],
) -> None:
    """Every requested Fréchet metric has enough samples (``samples(metric, item)`` feature vectors per
    item, from frame and view counts alone): raises one error listing every problem."""

    problems: list[str] = []
    for n, m in frechet.items():
        per = {item: samples(m, item) for item in names}
        kind = "grid(s)" if views else "video(s)"

        def size(item: str) -> str:
            return f"{views[item]} views x {frames[item]} frames" if views else f"{frames[item]} frames"

        short = [f"{item} ({size(item)})" for item, k in per.items() if k == 0]
        if short:
            problems.append(f"{labels[n]}: {len(short)} {kind} too short: {', '.join(short[:5])}")
            continue
        total = sum(per.values())
        sides = ["generated"] + ([] if n in preloaded else ["reference"])
        for side in sides:
            if total < 2:
                problems.append(f"{labels[n]}: {side} set gives {total} sample(s); at least 2 are needed")
            elif total <= m.feature_dim and not (allow_rank_deficient or m.allow_rank_deficient):
                problems.append(
                    f"{labels[n]}: {side} set gives {total} samples for {m.feature_dim}-dimensional features "
                    f"(needs more than {m.feature_dim}; pass allow_rank_deficient to compute anyway)"
                )
    if problems:
        raise ValueError("sample counts checked before featurising:\n  " + "\n  ".join(problems))


def _frechet_value(m: Metric, gen: Tensor, ref: Tensor | None) -> float:
    """The Fréchet distance of gathered features (no torchmetrics sync: every rank holds all of them)."""

    from dimo.eval.frechet import frechet_distance

    m.reset()
    m._accumulate(gen, real=False)
    if ref is not None:
        m._accumulate(ref, real=True)
    mu_r, cov_r, _ = m.real_statistics()
    mu_f, cov_f, _ = m.fake_statistics()
    return float(frechet_distance(mu_f, cov_f, mu_r, cov_r))


def half_sample_interval(
    m: Metric, gen: list[Tensor], ref: list[Tensor] | None, n: int, confidence: float, seed: int
) -> dict | None:
    """Interval for the population Fréchet distance by half-sampling videos without replacement.

    Resampling *with* replacement duplicates videos, which shrinks the feature covariances' effective
    sample size and biases a Fréchet distance upward, so a percentile bootstrap sits above the point
    value. Here each of ``n`` draws takes ``m = n_videos // 2`` distinct videos of each set (the
    generated and reference sets independently; only the generated set when the reference comes from a
    statistics file) and computes ``T_b``. Two facts about half-samples without replacement:

    * spread: for a statistic that is a smooth function of means, ``Var(T_b) = sigma^2 (1/m - 1/N)``
      (finite-population correction), which equals ``Var(FD_N) = sigma^2 / N`` when ``m = N/2``; in
      general the deviations ``T_b - mean(T)`` are scaled by ``sqrt(m / (N - m))``;
    * bias: ``E[FD_N] = FD + k/N`` (the O(1/N) bias of plug-in Fréchet distances, Chong & Forsyth 2020),
      so ``mean(T) - FD_N`` estimates ``k (1/m - 1/N)`` and the bias of the reported value is
      ``b = (mean(T) - FD_N) m / (N - m)``.

    The interval is ``FD_N - b + quantiles of sqrt(m/(N-m)) (T_b - mean(T))`` at ``(1 -/+ confidence)/2``.
    Returns ``{"ci_low", "ci_high", "bias", "n_draws", "half_videos"}`` or None (``n <= 0``, fewer
    than 4 videos, or no draw gave a valid distance, e.g. half a set has too few samples for the
    feature dimension).
    """

    if n <= 0 or len(gen) < 4 or (ref is not None and len(ref) < 4):
        return None
    point = _frechet_value(m, torch.cat(gen), None if ref is None else torch.cat(ref))
    g = np.random.default_rng(seed)
    mg = len(gen) // 2
    mr = len(ref) // 2 if ref is not None else 0
    vals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            gf = torch.cat([gen[i] for i in g.choice(len(gen), mg, replace=False)])
            rf = None if ref is None else torch.cat([ref[i] for i in g.choice(len(ref), mr, replace=False)])
            try:
                vals.append(_frechet_value(m, gf, rf))
            except ValueError:  # half a set with too few samples for the feature dimension
                continue
    if len(vals) < 2:
        return None
    t = np.asarray(vals)
    # m/(N-m) per set (1 for an even count); the generated set's when the reference is fixed
    ratios = [mg / (len(gen) - mg)] + ([mr / (len(ref) - mr)] if ref is not None else [])
    r = float(np.mean(ratios))
    bias = (t.mean() - point) * r
    dev = np.sqrt(r) * (t - t.mean())
    q_lo, q_hi = np.quantile(dev, [(1 - confidence) / 2, (1 + confidence) / 2])
    out = {  # a distance is >= 0: the lower end is clamped there (degenerate case FD ~ 0)
        "ci_low": max(float(point - bias + q_lo), 0.0),
        "ci_high": float(point - bias + q_hi),
        "bias": float(bias),
        "n_draws": len(vals),
        "half_videos": mg,
    }
    if point > out["ci_high"]:
        out["note"] = (
            f"the point value lies above the interval: its estimated O(1/n) bias ({bias:.4g}) exceeds the "
            "sampling spread (too few samples for the feature dimension); use more videos"
        )
    return out


def run_evaluation(
    generated_dir: str | os.PathLike,
    reference_dir: str | os.PathLike | None,
    cfg: EvalConfig,
    metrics: dict[str, Metric] | None = None,
    progress: bool = True,
) -> EvalReport:
    """Score every matched item (sharded over ranks when ``torch.distributed`` is initialised).

    Per video: paired metrics' per-frame scores, Fréchet metrics' features (from the cache when there);
    all ranks gather them and compute the same numbers, in item-name order, so the result equals the
    single-process run exactly. Sample counts are checked before any featurising.
    """

    for name in cfg.metrics:
        if name not in ALL_METRICS and (metrics is None or name not in metrics):
            raise ValueError(f"unknown metric {name!r}; available: {', '.join(ALL_METRICS)}")
    pose = [n for n in cfg.metrics if n in POSE and (metrics is None or n not in metrics)]
    if pose:
        if cfg.grid:
            raise ValueError(
                "the pose metrics (mpjpe, pa_mpjpe, t_root) score single videos, not grid=True items"
            )
        from dataclasses import replace

        from dimo.eval.motion import run_pose_evaluation

        pose_report = run_pose_evaluation(generated_dir, cfg, pose, progress)
        rest = [n for n in cfg.metrics if n not in pose]
        if not rest:
            return pose_report
        report = run_evaluation(generated_dir, reference_dir, replace(cfg, metrics=rest), metrics, progress)
        by_item = {r["item"]: r for r in report.per_video}
        for r in pose_report.per_video:
            by_item.setdefault(r["item"], {}).update(r)
        return EvalReport(
            {**report.values, **pose_report.values},
            {**report.details, **pose_report.details},
            list(by_item.values()),
            report.cache,
        )
    if reference_dir is None:
        raise ValueError("these metrics compare with reference videos: pass a reference folder (--reference)")
    if cfg.grid and any(n not in MULTIVIEW for n in cfg.metrics):
        raise ValueError("grid=True items are (V, T) grids: only the multi-view metrics (fvd_v, fvd_f) apply")
    if not cfg.grid and any(n in MULTIVIEW for n in cfg.metrics):
        raise ValueError("fvd_v / fvd_f score (V, T) grids: pass grid=True (--grid) with one folder per item")
    gen, ref = list_items(generated_dir, cfg.grid), list_items(reference_dir, cfg.grid)
    names = match_items(gen, ref)
    mets = metrics if metrics is not None else {n: build_metric(n, cfg) for n in cfg.metrics}
    from dimo.eval.frechet import FrechetMetric
    from dimo.eval.pixel import PairedFrameMetric

    labels = {n: metric_label(n, m) for n, m in mets.items()}
    device = torch.device(cfg.device)
    for m in mets.values():
        m.to(device)
    paired = {n: m for n, m in mets.items() if isinstance(m, PairedFrameMetric)}
    frechet = {
        n: m for n, m in mets.items() if isinstance(m, FrechetMetric) and hasattr(m, "samples_per_video")
    }
    generic = {n: m for n, m in mets.items() if n not in paired and n not in frechet}

    stats_dir = Path(cfg.reference_stats) if cfg.reference_stats else None
    # The statistics describe one reference set: the folder and the matched names are recorded with
    # them, and a cache made from another set is an error rather than a silently wrong number.
    source = f"{Path(reference_dir).resolve()}|{len(names)}|{hash_names(names)}"
    preloaded = set()
    if stats_dir is not None:
        for n, m in mets.items():
            f = stats_dir / f"{labels[n]}.npz"
            if f.is_file() and hasattr(m, "load_reference"):
                with np.load(f) as data:
                    cached = str(data["source"]) if "source" in data else "<unknown>"
                if cached != source:
                    raise ValueError(
                        f"{f} holds statistics of another reference set ({cached}); this run uses "
                        f"({source}). Delete the file or choose another --reference-stats folder."
                    )
                m.load_reference(f)
                preloaded.add(n)

    def frames_of(item: str) -> int:
        try:
            tg, tr = count_frames(gen[item], cfg.grid), count_frames(ref[item], cfg.grid)
        except Exception as err:  # noqa: BLE001 - corrupt/empty/audio-only files: name the item
            raise ValueError(f"item {item!r}: cannot read it ({' '.join(str(err).split())[:300]})") from err
        if tg != tr and not cfg.max_frames:
            raise ValueError(
                f"{item}: generated has {tg} frames, reference {tr} (truncated output?); "
                "set --max-frames to score a common prefix on purpose"
            )
        t = min(tg, tr)
        return min(t, cfg.max_frames) if cfg.max_frames else t

    frames = {item: frames_of(item) for item in names}
    views = {item: min(count_views(gen[item]), count_views(ref[item])) for item in names} if cfg.grid else {}

    def samples(m: Metric, item: str) -> int:
        if cfg.grid:
            return m.samples_per_grid(views[item], frames[item])
        return m.samples_per_video(frames[item])

    _check_counts(names, frames, views, frechet, labels, preloaded, cfg.allow_rank_deficient, samples)
    hashes = {n: extractor_hash(m) for n, m in frechet.items()}
    cache = FeatureCache(cfg.cache_dir)

    mine = _shard(names)
    rows: dict[str, dict] = {}
    with _progress(progress, len(mine)) as advance:
        for item in mine:
            row: dict = {"frames": frames[item], "paired": {}, "gen": {}, "ref": {}}
            todo: dict[tuple[str, str], Path | None] = {}
            keys = {}
            for side, folder in (("gen", gen), ("ref", ref)):
                if frechet and cache.root is not None:
                    keys[side] = content_hash(folder[item])
                for n in frechet:
                    if side == "ref" and n in preloaded:
                        continue
                    p = cache.path(labels[n], hashes[n][0], keys[side], cfg.max_frames) if keys else None
                    hit = cache.load(p)
                    if hit is None:
                        todo[(side, n)] = p
                    else:
                        row[side][n] = hit
            if paired or generic or todo:
                try:
                    g = read_item(gen[item], cfg.grid, cfg.max_frames).to(device)
                    r = read_item(ref[item], cfg.grid, cfg.max_frames).to(device)
                except Exception as err:  # noqa: BLE001 - corrupt/empty/audio-only files: name the item
                    raise ValueError(
                        f"item {item!r}: cannot read it ({' '.join(str(err).split())[:300]})"
                    ) from err
                if g.shape[-2:] != r.shape[-2:]:
                    raise ValueError(
                        f"{item}: generated frames are {tuple(g.shape[-2:])}, reference {tuple(r.shape[-2:])}"
                    )
                t = min(g.shape[-4], r.shape[-4])
                g, r = g[..., :t, :, :, :], r[..., :t, :, :, :]
                for n, m in paired.items():
                    with torch.no_grad():
                        gg, rr = g.reshape(-1, *g.shape[-3:]), r.reshape(-1, *r.shape[-3:])
                        row["paired"][n] = m.per_frame(gg, rr).double().cpu()
                for (side, n), p in todo.items():
                    with torch.no_grad():
                        feats = frechet[n].features((g if side == "gen" else r)[None]).detach().double().cpu()
                    cache.save(p, feats)
                    row[side][n] = feats
                for n, m in generic.items():
                    m.update(g[None], None if n in preloaded else r[None])
            rows[item] = row
            advance()

    rank, world = _dist()
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, rows)
        rows = {k: v for part in gathered for k, v in part.items()}
    ordered = [rows[item] for item in names]

    values: dict[str, float] = {}
    details: dict[str, dict] = {}
    for n, m in mets.items():
        label = labels[n]
        info: dict = {"convention": convention(n, m)}
        if n in paired:
            scores = torch.cat([r["paired"][n] for r in ordered])
            value = float(scores.sum() / scores.numel())
            info.update(
                n_videos=len(names), n_frames=int(scores.numel()),
                std=float(scores.std()) if scores.numel() > 1 else 0.0,
            )  # fmt: skip
        elif n in frechet:
            gf = [r["gen"][n] for r in ordered]
            rf = None if n in preloaded else [r["ref"][n] for r in ordered]
            value = _frechet_value(m, torch.cat(gf), None if rf is None else torch.cat(rf))
            if stats_dir is not None and n not in preloaded and rank == 0:  # before the resampling
                stats_dir.mkdir(parents=True, exist_ok=True)
                m.save_reference(stats_dir / f"{label}.npz", source=source)
            interval = half_sample_interval(m, gf, rf, cfg.bootstrap, cfg.confidence, cfg.seed)
            unit = getattr(m, "sample_unit", "clips")
            info.update(
                n_videos=len(names), n_samples=int(sum(x.shape[0] for x in gf)), sample_unit=unit,
                item_unit="grids" if cfg.grid else "videos",
                feature_dim=int(m.feature_dim), weights=hashes[n][1], weights_sha256=hashes[n][0],
                reference="statistics file" if n in preloaded else "featurised",
            )  # fmt: skip
            if interval is not None:
                info.update(ci_low=interval["ci_low"], ci_high=interval["ci_high"], confidence=cfg.confidence,
                            ci_method="half-sampling without replacement, O(1/n) bias-corrected",
                            bias_estimate=interval["bias"], n_bootstrap=interval["n_draws"])  # fmt: skip
                if "note" in interval:
                    info["ci_note"] = interval["note"]
            elif cfg.bootstrap > 0:
                info.update(ci_note="no interval: needs >= 4 videos per set and half of each set "
                            "giving more samples than the feature dimension")  # fmt: skip
        else:
            value = float(m.compute())
            info.update(n_videos=len(names))
            if stats_dir is not None and n not in preloaded and hasattr(m, "save_reference") and rank == 0:
                stats_dir.mkdir(parents=True, exist_ok=True)
                m.save_reference(stats_dir / f"{label}.npz", source=source)
        files = weight_hashes(m)
        if files:
            info["weight_files"] = files
            if "weights_sha256" not in info:
                info["weights_sha256"] = next(iter(files.values()))
        values[label] = value
        details[label] = {"value": value, **info}

    per_video = []
    for item, r in zip(names, ordered):
        out = {"item": item, "frames": r["frames"]}
        for n, scores in r["paired"].items():
            out[labels[n]] = float(scores.mean())
        per_video.append(out)
    return EvalReport(values, details, per_video, {"hits": cache.hits, "misses": cache.misses})


def evaluate(
    generated_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    cfg: EvalConfig,
    metrics: dict[str, Metric] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Score every matched item; returns ``{label: value}`` (see :func:`run_evaluation`)."""

    return run_evaluation(generated_dir, reference_dir, cfg, metrics, progress).values


def hash_names(names: Sequence[str]) -> str:
    """A short stable digest of the matched item names."""

    import hashlib

    return hashlib.sha1("\n".join(names).encode()).hexdigest()[:12]


def _is_rank_zero() -> bool:
    return (
        not (torch.distributed.is_available() and torch.distributed.is_initialized())
        or torch.distributed.get_rank() == 0
    )


class _progress:
    """Progress over items on rank 0: a rich bar on a terminal, plain lines otherwise (logs, srun)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled and _is_rank_zero(), total, None
        self.done, self.start = 0, 0.0

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        import sys
        import time

        self.start = time.monotonic()
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
            )
            self.bar.start()
            task = self.bar.add_task("evaluate", total=self.total)
            return lambda: self.bar.advance(task)
        every = max(1, self.total // 20)

        def advance() -> None:
            self.done += 1
            if self.done % every == 0 or self.done == self.total:
                elapsed = time.monotonic() - self.start
                sys.stderr.write(f"evaluate: {self.done}/{self.total} items ({elapsed:.1f} s)\n")
                sys.stderr.flush()

        return advance

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def fmt(value: float, digits: int = 4) -> str:
    """``digits`` significant figures (``0.0001234``, ``12.35``, ``1235``), never fixed decimals."""

    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    mag = math.floor(math.log10(abs(value)))
    if -5 <= mag < digits:
        return f"{value:.{max(digits - 1 - mag, 0)}f}"
    return f"{value:.{digits - 1}e}"


def to_markdown(results: dict[str, float], title: str = "", details: dict[str, dict] | None = None) -> str:
    """A markdown table of the results (4 significant figures), with counts, intervals and conventions
    when ``details`` is given."""

    lines = [f"### {title}", ""] if title else []
    if not details:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in results.items()]
        return "\n".join(lines) + "\n"
    lines += ["| metric | value | spread | samples | weights (SHA-256) |", "| --- | --- | --- | --- | --- |"]
    for k, v in results.items():
        d = details.get(k, {})
        if "ci_low" in d:
            spread = (
                f"{int(round(100 * d['confidence']))}% CI [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}] "
                f"({d['n_bootstrap']} half-samples; bias {fmt(d['bias_estimate'])})"
            )
        elif "std" in d:
            spread = f"± {fmt(d['std'])} (std over frames)"
        else:
            spread = ""
        if "n_samples" in d:
            samples = f"{d['n_videos']} {d.get('item_unit', 'videos')}, {d['n_samples']} {d['sample_unit']}"
        elif "n_frames" in d:
            samples = f"{d['n_videos']} videos, {d['n_frames']} frames"
        else:
            samples = f"{d.get('n_videos', '')} videos"
        sha = d.get("weights_sha256")
        lines.append(f"| {k} | {fmt(v)} | {spread} | {samples} | {sha[:12] if sha else ''} |")
    lines += ["", "Conventions:", ""]
    lines += [f"- `{k}`: {details[k]['convention']}" for k in results if k in details]
    files = [(k, f, h) for k in results for f, h in details.get(k, {}).get("weight_files", {}).items()]
    if files:
        lines += ["", "Weight files (SHA-256):", ""]
        lines += [f"- `{k}`: `{f}` {h}" for k, f, h in files]
    return "\n".join(lines) + "\n"


def provenance() -> dict[str, str]:
    """dimo version, git revision of the dimo checkout (if any), library versions."""

    import subprocess
    import sys

    import torchmetrics

    import dimo

    rev = ""
    try:
        root = Path(dimo.__file__).resolve().parent.parent
        rev = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "dimo_version": getattr(dimo, "__version__", "unknown"),
        "git_revision": rev or "unknown",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchmetrics": torchmetrics.__version__,
    }


def _atomic_write(path: Path, text: str) -> None:
    from dimo.safe_io import atomic_write_text  # temp file in the folder + fsync + rename, umask modes

    atomic_write_text(path, text)


def write_results(
    out_dir: str | os.PathLike,
    results: dict[str, float],
    cfg: EvalConfig,
    extra: dict | None = None,
    report: EvalReport | None = None,
) -> None:
    """``metrics.json`` (results, details, config, provenance), ``metrics.md`` and, with a ``report``,
    ``per_video.csv`` under ``out_dir``; each written atomically (temp file + rename). Rank 0 only."""

    if not _is_rank_zero():
        return
    import csv
    import io

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    details = report.details if report is not None else None
    payload = {
        "metrics": results,
        **({"details": details, "feature_cache": report.cache} if report is not None else {}),
        "config": asdict(cfg),
        "provenance": provenance(),
        **(extra or {}),
    }
    _atomic_write(d / "metrics.json", json.dumps(payload, indent=2, default=str) + "\n")
    title = str((extra or {}).get("generated", ""))
    md = to_markdown(results, title=title, details=details)
    prov = payload["provenance"]
    md += f"\ndimo {prov['dimo_version']} ({prov['git_revision']}), torch {prov['torch']}, torchmetrics {prov['torchmetrics']}\n"
    if extra and "command" in extra:
        md += f"\nCommand: `{extra['command']}`\n"
    _atomic_write(d / "metrics.md", md)
    if report is not None:
        cols = ["item", "frames"] + sorted({k for r in report.per_video for k in r} - {"item", "frames"})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in report.per_video:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        _atomic_write(d / "per_video.csv", buf.getvalue())
