"""Score a directory of generated videos against a directory of reference videos.

Items are matched by name (file stem or folder name). An item is a video file readable by PyAV
(``.mp4``, ``.avi``, ``.mov``, ``.webm``, ``.mkv``, ``.gif``), a folder of frames (``.png``/``.jpg``,
sorted by name), or a single image. With ``grid=True`` an item is a folder holding one video (or frame
folder) per view, sorted by name, giving ``(V, T, 3, H, W)`` grids for the multi-view metrics.

When ``torch.distributed`` is initialised (``torchrun``), items are sharded over ranks and every
metric is reduced across them (torchmetrics sync), so the numbers equal the single-process run.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".webm", ".mkv", ".gif"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

PAIRED = (
    "psnr",
    "ssim",
    "l1",
    "lpips_alex",
    "lpips_vgg",
    "psnr_disco",
    "ssim_disco",
    "l1_disco",
    "lpips_disco",
)
DISTRIBUTION = ("fid", "fvd", "fid_vid")
MULTIVIEW = ("fvd_v", "fvd_f")
ALL_METRICS = PAIRED + DISTRIBUTION + MULTIVIEW
DEFAULT_METRICS = ("fid", "fvd", "fid_vid", "lpips_alex", "ssim", "psnr", "l1")


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
    """``(T, 3, H, W)`` in [-1, 1] -> an mp4 (H.264 where available, else MPEG-4 part 2)."""

    import av

    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with av.open(str(path), mode="w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "0", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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
        "l1": pixel.L1,
        "psnr_disco": pixel.PSNRDisCo,
        "ssim_disco": pixel.SSIMDisCo,
        "l1_disco": pixel.L1DisCo,
        "lpips_alex": lambda: lpips.LPIPS("alex", wd),
        "lpips_vgg": lambda: lpips.LPIPS("vgg", wd),
        "lpips_disco": lambda: lpips.LPIPS("vgg", wd, disco=True),
        "fid": lambda: distribution.FID(wd, **frechet),
        "fvd": lambda: distribution.FVD(**fvd),
        "fid_vid": lambda: distribution.FIDVID(cfg.fid_vid_duration, weights=wd, **frechet),
        "fvd_v": lambda: multiview.MultiViewFVD("view", **fvd),
        "fvd_f": lambda: multiview.MultiViewFVD("time", **fvd),
    }
    if name not in factories:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(ALL_METRICS)}")
    return factories[name]()


def metric_label(name: str, metric: Metric) -> str:
    """The reported key: the metric's own name where it states its settings (``fvd_16f``)."""

    return str(getattr(metric, "name", name)) if name in ("fvd", "fvd_v", "fvd_f") else name


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


def _shard(names: Sequence[str]) -> Sequence[str]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return names[rank::world]
    return names


def evaluate(
    generated_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    cfg: EvalConfig,
    metrics: dict[str, Metric] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Score every matched item; returns ``{label: value}``. ``metrics`` overrides :func:`build_metric`."""

    for name in cfg.metrics:
        if name not in ALL_METRICS and (metrics is None or name not in metrics):
            raise ValueError(f"unknown metric {name!r}; available: {', '.join(ALL_METRICS)}")
    if cfg.grid and any(n not in MULTIVIEW for n in cfg.metrics):
        raise ValueError("grid=True items are (V, T) grids: only the multi-view metrics (fvd_v, fvd_f) apply")
    if not cfg.grid and any(n in MULTIVIEW for n in cfg.metrics):
        raise ValueError("fvd_v / fvd_f score (V, T) grids: pass grid=True (--grid) with one folder per item")
    gen, ref = list_items(generated_dir, cfg.grid), list_items(reference_dir, cfg.grid)
    names = match_items(gen, ref)
    mets = metrics if metrics is not None else {n: build_metric(n, cfg) for n in cfg.metrics}
    device = torch.device(cfg.device)
    for m in mets.values():
        m.to(device)
    stats_dir = Path(cfg.reference_stats) if cfg.reference_stats else None
    # The statistics describe one reference set: the folder and the matched names are recorded with
    # them, and a cache made from another set is an error rather than a silently wrong number.
    source = f"{Path(reference_dir).resolve()}|{len(names)}|{hash_names(names)}"
    preloaded = set()
    if stats_dir is not None:
        for n, m in mets.items():
            f = stats_dir / f"{metric_label(n, m)}.npz"
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

    mine = _shard(names)
    with _progress(progress, len(mine)) as advance:
        for item in mine:
            try:
                g = read_item(gen[item], cfg.grid, cfg.max_frames).to(device)
                r = read_item(ref[item], cfg.grid, cfg.max_frames).to(device)
            except Exception as err:  # noqa: BLE001 - corrupt/empty/audio-only files: name the item
                raise ValueError(
                    f"item {item!r}: cannot read it ({' '.join(str(err).split())[:300]})"
                ) from err
            if g.shape[-4] != r.shape[-4] and cfg.max_frames is None:
                raise ValueError(
                    f"{item}: generated has {g.shape[-4]} frames, reference {r.shape[-4]} (truncated output?); "
                    "set --max-frames to score a common prefix on purpose"
                )
            if g.shape[-2:] != r.shape[-2:]:
                raise ValueError(
                    f"{item}: generated frames are {tuple(g.shape[-2:])}, reference {tuple(r.shape[-2:])}"
                )
            t = min(g.shape[-4], r.shape[-4])
            g, r = g[..., :t, :, :, :], r[..., :t, :, :, :]
            for n, m in mets.items():
                m.update(g[None], None if n in preloaded else r[None])
            advance()
    out: dict[str, float] = {}
    for n, m in mets.items():
        value = m.compute()
        out[metric_label(n, m)] = float(value)
        if stats_dir is not None and n not in preloaded and hasattr(m, "save_reference") and _is_rank_zero():
            stats_dir.mkdir(parents=True, exist_ok=True)
            m.save_reference(stats_dir / f"{metric_label(n, m)}.npz", source=source)
    return out


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
    """A rich progress bar (or nothing) yielding an ``advance()`` callable."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled and _is_rank_zero(), total, None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self.bar.start()
        task = self.bar.add_task("evaluate", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def to_markdown(results: dict[str, float], title: str = "") -> str:
    """A two-column markdown table of the results (values to 4 significant decimals)."""

    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value |", "| --- | --- |"]
    for k, v in results.items():
        lines.append(f"| {k} | {v:.4f} |" if math.isfinite(v) else f"| {k} | {v} |")
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: str | os.PathLike, results: dict[str, float], cfg: EvalConfig, extra: dict | None = None
) -> None:
    """``metrics.json`` (results + config) and ``metrics.md`` under ``out_dir``."""

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    payload = {"metrics": results, "config": asdict(cfg), **(extra or {})}
    from dimo.safe_io import atomic_write_text

    atomic_write_text(d / "metrics.json", json.dumps(payload, indent=2, default=str) + "\n")
    atomic_write_text(d / "metrics.md", to_markdown(results, title=str((extra or {}).get("generated", ""))))
