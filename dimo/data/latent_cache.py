"""Frozen-encoder cache for 3DiMo: VAE latents of fixed windows and text embeddings of prompts.

Built once by ``python -m dimo.cli data cache --config <the training configs> --out DIR`` through
Lightning's ``predict`` loop: :class:`WindowDataset` yields every fixed window of every view of every
usable clip (``window_step`` source frames apart, the training spec's ``num_frames``/``frame_stride``/
size/crop), :class:`FrozenEncoder` runs the frozen VAE and text encoder of the training config on them
(in its ``frozen_dtype``), and :class:`LatentCacheWriter` (a ``BasePredictionWriter``) writes what each
rank encoded as safetensors shards. Under several devices Lightning shards the windows over the ranks
(its distributed predict sampler); every rank writes its own shards and an index part, and rank 0
merges the parts into ``index.json`` at the end. Every file is written to a temporary name and renamed,
and ``index.json`` comes last: a build that stopped half way is not a readable cache.

Layout::

    DIR/index.json                       spec, encoder settings, window -> shard, prompt -> shard
    DIR/shard-r000-00000.safetensors     "<clip>|v<view>|s<start>/x0" (C, F, h, w) fp32 target latents,
                                         ".../ref" (C, 1, h, w) reference latent (the window's frame 0),
                                         "text/<sha1>" (n, D) prompt embedding, trailing zero rows cut

Training from it (``data.init_args.latent_cache: DIR`` and ``model.init_args.from_cache: true``,
``experiments/3dimo_from_cache.yaml``): the DataModule draws clips exactly as before (mixture weights,
stage scheduler, resume), picks the window among the cached ones from the sample's seed, reads only the
driving frames from the videos and attaches ``x0``, ``ref_latent`` and ``text`` (padded back to the
encoder's ``max_length``) to the sample; the module then builds neither the VAE nor the text encoder.
With ``window_step`` 1 every start frame is cached and a sample is the one the file reader would draw
for the same key (same window, views and augmentation; tested against the online loss).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import Dataset

from dimo.data.dataset import LOAD_ERRORS, SampleSpec, frames_to_tensor
from dimo.data.manifest import ClipRecord
from dimo.data.video import read_frames

__all__ = [
    "INDEX_NAME",
    "FrozenEncoder",
    "LatentCache",
    "LatentCacheError",
    "LatentCacheWriter",
    "WindowDataset",
    "cache_spec",
    "entry_key",
    "merge_index",
    "window_starts",
]

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
VERSION = 1


class LatentCacheError(ValueError):
    """A latent cache that is missing, unreadable or written for another sample spec."""


def cache_spec(spec: SampleSpec) -> dict[str, Any]:
    """The parts of a sample spec the cached latents depend on."""

    if spec.task != "3dimo":
        raise LatentCacheError(f"the latent cache serves 3DiMo samples, not task {spec.task!r}")
    return {
        "num_frames": spec.num_frames,
        "frame_stride": spec.frame_stride,
        "height": spec.height,
        "width": spec.width,
        "crop": spec.crop,
    }


def window_starts(num_frames: int, span: int, step: int) -> list[int]:
    """First source frames of the cached windows of a clip: 0, step, 2*step, ... while the window fits."""

    if step < 1:
        raise ValueError(f"window_step must be >= 1, got {step}")
    return list(range(0, num_frames - span + 1, step))


def entry_key(clip_id: str, view: int, start: int) -> str:
    return f"{clip_id}|v{view}|s{start}"


def text_key(prompt: str) -> str:
    return "text/" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()


def sample_prompt(record: ClipRecord, view: int) -> str:
    """The prompt a 3DiMo sample targeting ``view`` carries (camera prompt + caption; dataset.py)."""

    prompt = record.views[view].camera_prompt
    return f"{prompt} {record.caption}".strip() if record.caption else prompt


# ---- building (predict) ---------------------------------------------------------------------------
class WindowDataset(Dataset):
    """Every fixed window of every view of ``records``: target frames (T, 3, H, W) in [-1, 1] + prompt.

    A window that fails to load is returned as ``{"key", "error"}`` and reported, never fatal.
    """

    def __init__(self, records: Sequence[ClipRecord], spec: SampleSpec, window_step: int | None = None) -> None:
        self.spec = spec
        step = spec.span if window_step is None else window_step
        self.items = [
            (rec, view, start)
            for rec in records
            for start in window_starts(rec.num_frames, spec.span, step)
            for view in range(len(rec.views))
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec, view, start = self.items[i]
        spec = self.spec
        key = entry_key(rec.id, view, start)
        frames = list(range(start, start + spec.span, spec.frame_stride))
        try:
            u8 = read_frames(rec.path(rec.views[view].video), frames, (spec.height, spec.width), spec.crop)
        except LOAD_ERRORS as err:
            return {"key": key, "error": f"{type(err).__name__}: {err}"}
        return {"key": key, "target": frames_to_tensor(u8), "prompt": sample_prompt(rec, view)}


def collate_windows(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [x for x in items if "error" not in x]
    return {
        "key": [x["key"] for x in good],
        "target": torch.stack([x["target"] for x in good]) if good else None,  # (B, T, 3, H, W)
        "prompt": [x["prompt"] for x in good],
        "failed": {x["key"]: x["error"] for x in items if "error" in x},
    }


class FrozenEncoder(LightningModule):
    """The frozen VAE + text encoder of a 3DiMo config in a ``predict`` loop (nothing trains)."""

    def __init__(self, vae: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.vae, self.text_encoder = vae, text_encoder

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out: dict[str, Any] = {"key": batch["key"], "prompt": batch["prompt"], "failed": batch["failed"]}
        if batch["target"] is None:
            return out
        target = batch["target"]  # (B, T, 3, H, W)
        # exactly what ThreeDiMoModule encodes online: the target clip, and its frame 0 alone
        out["x0"] = self.vae.encode(target.transpose(1, 2)).cpu()  # (B, C, F, h, w)
        out["ref"] = self.vae.encode(target[:, 0, :, None]).cpu()  # (B, C, 1, h, w)
        out["text"] = self.text_encoder(list(batch["prompt"]), device=self.device).cpu()  # (B, L, D)
        return out


def _trim(text: torch.Tensor) -> torch.Tensor:
    """(L, D) embedding without its trailing all-zero rows (the padding; at least one row kept)."""

    nonzero = text.abs().amax(-1) > 0
    n = int(nonzero.nonzero().max()) + 1 if nonzero.any() else 1
    return text[:n].contiguous()


class LatentCacheWriter(BasePredictionWriter):
    """Writes what :class:`FrozenEncoder` returns into ``out`` (safetensors shards + an index part per rank).

    Args:
        out: cache folder.
        shard_bytes: a shard is written once this many bytes of tensors are buffered.
    """

    def __init__(self, out: str | os.PathLike, shard_bytes: int = 256 << 20) -> None:
        super().__init__(write_interval="batch")
        self.out = Path(out)
        self.shard_bytes = int(shard_bytes)
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffered = 0
        self._shards = 0
        self._rank = 0
        self.latents: dict[str, str] = {}
        self.texts: dict[str, list[str]] = {}  # prompt -> [shard, key]
        self.failed: dict[str, str] = {}
        self._pending_latents: list[str] = []
        self._pending_texts: dict[str, str] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._rank = int(trainer.global_rank)
        self.out.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.failed.update(prediction["failed"])
        for key, err in prediction["failed"].items():
            log.warning("latent cache: window %s not encoded: %s", key, err)
        if "x0" not in prediction:
            return
        for i, key in enumerate(prediction["key"]):
            if key in self.latents or key in self._pending_latents:
                continue  # the distributed sampler repeats a few items to even out the ranks
            for part in ("x0", "ref"):
                self._add(f"{key}/{part}", prediction[part][i].float().contiguous())
            self._pending_latents.append(key)
        for i, prompt in enumerate(prediction["prompt"]):
            if prompt in self.texts or prompt in self._pending_texts:
                continue
            tk = text_key(prompt)
            self._add(tk, _trim(prediction["text"][i].float()))
            self._pending_texts[prompt] = tk
        if self._buffered >= self.shard_bytes:
            self._flush()

    def _add(self, key: str, tensor: torch.Tensor) -> None:
        self._buffer[key] = tensor
        self._buffered += tensor.numel() * tensor.element_size()

    def _flush(self) -> None:
        if not self._buffer:
            return
        from safetensors.torch import save_file

        from dimo.safe_io import atomic_path

        name = f"shard-r{self._rank:03d}-{self._shards:05d}.safetensors"
        with atomic_path(self.out / name) as tmp:
            save_file(self._buffer, str(tmp))
        self._shards += 1
        self.latents.update({k: name for k in self._pending_latents})
        self.texts.update({p: [name, k] for p, k in self._pending_texts.items()})
        self._buffer, self._buffered = {}, 0
        self._pending_latents, self._pending_texts = [], {}

    def on_predict_end(self, trainer, pl_module) -> None:
        from dimo.safe_io import atomic_write_text

        self._flush()
        part = {"latents": self.latents, "texts": self.texts, "failed": self.failed}
        atomic_write_text(self.out / f"index-r{self._rank:03d}.json", json.dumps(part))


def merge_index(out: str | os.PathLike, meta: dict[str, Any]) -> dict[str, Any]:
    """Merge the ranks' index parts into ``index.json`` (written last, atomically); returns it."""

    from dimo.safe_io import atomic_write_text

    out = Path(out)
    parts = sorted(out.glob("index-r*.json"))
    if not parts:
        raise LatentCacheError(f"{out}: no index parts (index-r*.json); the predict loop wrote nothing")
    latents: dict[str, str] = {}
    texts: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for p in parts:
        part = json.loads(p.read_text())
        for k, v in part["latents"].items():
            latents.setdefault(k, v)
        for k, v in part["texts"].items():
            texts.setdefault(k, v)
        failed.update(part["failed"])
    for k in latents:
        failed.pop(k, None)  # encoded by another rank
    missing = sorted({s for s in latents.values()} | {s for s, _ in texts.values()})
    missing = [s for s in missing if not (out / s).is_file()]
    if missing:
        raise LatentCacheError(f"{out}: shard {missing[0]} named by an index part is missing")
    index = {"version": VERSION, **meta, "latents": latents, "texts": texts, "failed": failed}
    atomic_write_text(out / INDEX_NAME, json.dumps(index, default=str))
    for p in parts:
        p.unlink()
    return index


# ---- reading (training) ----------------------------------------------------------------------------
class LatentCache:
    """Read side of a cache folder: windows per clip, latents per window and view, text per prompt.

    Shards are opened lazily with ``safetensors.safe_open`` (memory-mapped, no pickle) in the process
    that reads them (DataLoader workers open their own).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        index_file = self.path / INDEX_NAME
        if not index_file.is_file():
            raise LatentCacheError(
                f"latent cache {self.path} has no {INDEX_NAME} (build it with `python -m dimo.cli data cache "
                f"--config ... --out {self.path}`)"
            )
        try:
            index = json.loads(index_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LatentCacheError(f"{index_file}: unreadable ({type(err).__name__}: {err})") from None
        if not isinstance(index, dict) or index.get("version") != VERSION:
            raise LatentCacheError(f"{index_file}: not a version-{VERSION} dimo latent cache index")
        self.spec: dict[str, Any] = index["spec"]
        self.max_length = int(index["max_length"])
        self.text_dim = int(index["text_dim"])
        self.latents: dict[str, str] = index["latents"]
        self.texts: dict[str, list[str]] = index["texts"]
        self.failed: dict[str, str] = index.get("failed", {})
        starts: dict[str, dict[int, set[int]]] = {}
        for key in self.latents:
            clip, view, start = key.rsplit("|", 2)
            starts.setdefault(clip, {}).setdefault(int(start[1:]), set()).add(int(view[1:]))
        self._starts = starts
        self._handles: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def check_spec(self, spec: SampleSpec) -> None:
        want = cache_spec(spec)
        if self.spec != want:
            raise LatentCacheError(
                f"latent cache {self.path} was built for {self.spec}, the DataModule asks for {want}; rebuild "
                "it with `python -m dimo.cli data cache` and the training configs"
            )

    def starts(self, record: ClipRecord) -> list[int]:
        """Cached window starts of a clip where every one of its views is cached (sorted)."""

        views = set(range(len(record.views)))
        return sorted(s for s, v in self._starts.get(record.id, {}).items() if v >= views)

    def _tensor(self, shard: str, key: str) -> torch.Tensor:
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(self.path / shard), framework="pt")
        return self._handles[shard].get_tensor(key)

    def latent(self, clip_id: str, view: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Target latents (C, F, h, w) and reference latent (C, 1, h, w) of one cached window."""

        key = entry_key(clip_id, view, start)
        shard = self.latents.get(key)
        if shard is None:
            raise KeyError(f"window {key} is not in the latent cache {self.path}")
        return self._tensor(shard, f"{key}/x0"), self._tensor(shard, f"{key}/ref")

    def text(self, prompt: str) -> torch.Tensor:
        """(max_length, D) embedding of ``prompt``, zero past its tokens (as the text encoder gives it)."""

        if prompt not in self.texts:
            raise KeyError(f"prompt {prompt!r} is not in the latent cache {self.path}")
        shard, key = self.texts[prompt]
        t = self._tensor(shard, key)
        out = t.new_zeros(self.max_length, t.shape[-1])
        out[: t.shape[0]] = t
        return out


# ---- the build command ----------------------------------------------------------------------------
def _build(node: Any, default: type) -> Any:
    """An object from a parsed ``{class_path, init_args}`` node (``None``: ``default()``)."""

    import importlib

    if node is None:
        return default()
    module, _, name = node["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(node.get("init_args") or {}))


def parse_training_config(configs: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The composed, type-checked config of a training run's ``--config`` files (nothing built)."""

    from dimo.cli import DimoCLI

    class _ParseOnly(DimoCLI):
        def instantiate_classes(self) -> None:
            return None

    args = [a for c in configs for a in ("--config", str(c))]
    return _ParseOnly(args=[*args, "--trainer.logger=false"], run=False, raise_errors=True).config.as_dict()


def build_latent_cache(
    configs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    window_step: int | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    accelerator: str | None = None,
    devices: int | str | None = None,
    num_nodes: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Encode every fixed window of the training data of ``configs`` into a cache at ``out``.

    The VAE, text encoder and ``frozen_dtype`` are the model's, the clips and sample spec the data's
    (roots, frames, stride, size, crop); accelerator/devices/nodes default to the config's trainer.
    Returns the merged index on global rank 0 (None on the other ranks).
    """

    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from dimo.data.datamodule import ViewRichDataModule
    from dimo.models.threedimo.backbone import WAN_PRESETS
    from dimo.models.threedimo.frozen import WanTextEncoder, WanVAE

    cfg = parse_training_config(configs)
    model = cfg["model"]
    if not model["class_path"].endswith("ThreeDiMoModule"):
        raise LatentCacheError(f"the latent cache is for 3DiMo configs; the model is {model['class_path']}")
    init = model["init_args"]
    net = (init.get("net") or {}).get("init_args") or {}
    if WAN_PRESETS.get(net.get("backbone", "tiny"), {}).get("image_dim") is not None:
        raise LatentCacheError("the latent cache serves T2V backbones; I2V conditioning is not cached")
    data = cfg["data"]
    if not data["class_path"].endswith("ViewRichDataModule"):
        raise LatentCacheError(f"the latent cache reads ViewRichDataModule data; the config has {data['class_path']}")
    d = data["init_args"]
    if d.get("task", "3dimo") != "3dimo" or d.get("shards") or d.get("latent_cache"):
        raise LatentCacheError("the cache is built from 3DiMo file data (task 3dimo, no shards/latent_cache)")
    out = Path(out)
    done = out / INDEX_NAME
    old = [*out.glob("shard-r*.safetensors"), *out.glob("index-r*.json")] if out.is_dir() else []
    if (done.exists() or old) and not overwrite:
        raise LatentCacheError(f"{out} already holds a latent cache; pass --overwrite to rebuild it")
    keys = ("root", "extra_roots", "num_frames", "frame_stride", "height", "width", "crop", "synthesize_if_missing")
    dm = ViewRichDataModule(task="3dimo", **{k: d[k] for k in keys if k in d})
    dm.setup("predict")
    records = [r for pool in dm.pools.values() for r in pool]
    step = dm.spec.span if window_step is None else int(window_step)
    dataset = WindowDataset(records, dm.spec, step)
    if not len(dataset):
        raise LatentCacheError("no window to encode (no usable clip)")

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        init.get("frozen_dtype", "float32")
    ]
    vae = _build(init.get("vae"), WanVAE).to(dtype)
    text_encoder = _build(init.get("text_encoder"), WanTextEncoder).to(dtype)
    trainer_cfg = cfg.get("trainer") or {}
    accelerator = accelerator or trainer_cfg.get("accelerator") or "auto"
    devices = devices if devices is not None else trainer_cfg.get("devices") or "auto"
    num_nodes = num_nodes or trainer_cfg.get("num_nodes") or 1
    many = num_nodes > 1 or (str(devices) not in ("1", "auto") and devices != [0])
    writer = LatentCacheWriter(out)
    trainer = Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp" if many else "auto",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[writer],
    )  # fmt: skip
    if trainer.is_global_zero:
        for f in old + ([done] if done.exists() else []):
            f.unlink()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_windows)
    trainer.predict(FrozenEncoder(vae, text_encoder), dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    meta = {
        "spec": cache_spec(dm.spec),
        "window_step": step,
        "max_length": int(text_encoder.max_length),
        "text_dim": int(text_encoder.dim),
        "frozen_dtype": init.get("frozen_dtype", "float32"),
        "vae": init.get("vae"),
        "text_encoder": init.get("text_encoder"),
        "roots": [str(r) for r in dm.roots],
    }
    return merge_index(out, meta)
