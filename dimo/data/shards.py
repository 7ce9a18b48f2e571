"""Streaming shards with ``litdata``: decoded sample windows, written once, read from disk or an object store.

``python -m dimo.cli data optimize ROOT --out DIR_OR_URL`` cuts every usable clip into windows of
the sample spec (``num_frames`` frames every ``frame_stride``, non-overlapping by default) and writes
one ``litdata`` dataset per source (``OUT/internet``, ``OUT/ue5``, ``OUT/multiview``) with
:func:`litdata.optimize`. An item is one window of one clip, everything a sample needs, decoded:

* 3DiMo shards: ``frames (V, T, H, W, 3)`` uint8 of every view at the sample size (resized/cropped
  exactly as the file reader does), per-view ``K`` (adjusted to that size), ``R``, ``t``, the motion
  labels of the window, prompts and caption;
* HVG shards: every view pelvis-aligned (:func:`dimo.data.align.align_views`) as uint8
  ``(V, T, 3, H, W)`` (the very bytes the file reader builds), with the aligned ``K``, ``R``, ``t``,
  ``joints3d`` and ``pelvis2d``.

Samples carry uint8 pixels like :class:`~dimo.data.dataset.ClipDataset`'s (converted to float on the
device by the DataModule's ``on_after_batch_transfer``).

The DataModule (``shards: DIR_OR_URL``) reads them with :class:`litdata.StreamingDataset` by random
access: the mixture sampler still picks every sample's source, window, task and seed, so mixture
weights, the stage scheduler, rank-disjoint batches and exact resume work as with files (litdata
fetches and caches the chunks an index needs, from a local folder or ``s3://``/``gs://``/... URLs).
A window that fails to load is skipped and counted like a bad clip. Each item carries the spec it
was written for; a DataModule asking for another spec is a one-line error.
"""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from dimo.data.dataset import ClipDataset, SampleSpec, ineligible_reason, usable_reason
from dimo.data.manifest import SOURCES, ClipRecord, MotionRecord, Problem, RecordError, load_manifest

__all__ = ["ShardDataset", "ShardError", "optimize_root", "shard_pools", "spec_json"]

log = logging.getLogger(__name__)


class ShardError(RuntimeError):
    """Shards are missing, unreadable or were written for another sample spec."""


def _litdata():
    try:
        import litdata
    except ImportError as err:
        raise ShardError(
            "streaming shards need litdata: `make setup` installs it, or `pip install --no-deps litdata` "
            "plus `pip install boto3 obstore tifffile filelock requests` (its torchvision dependency is "
            f"not needed by dimo and has no CPU build here) ({err})"
        ) from None
    return litdata


def spec_json(spec: SampleSpec) -> str:
    d = {k: getattr(spec, k) for k in ("task", "num_frames", "frame_stride", "height", "width", "crop")}
    if spec.task == "hvg":
        d["num_views"] = spec.num_views
    return json.dumps(d, sort_keys=True)


def _is_url(path: str) -> bool:
    return "://" in str(path)


def _join(base: str, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}" if _is_url(base) else str(Path(base) / name)


# ---- writing --------------------------------------------------------------------------------------
def _windows(rec: ClipRecord, spec: SampleSpec, step: int) -> list[int]:
    return list(range(0, rec.num_frames - spec.span + 1, step))


def _item(rec: ClipRecord, start: int, spec: SampleSpec) -> dict[str, Any]:
    from dimo.data.align import align_views

    ds = ClipDataset({rec.source: [rec]}, spec)
    frames = list(range(start, start + spec.span, spec.frame_stride))
    T, V = spec.num_frames, len(rec.views)
    item: dict[str, Any] = {"spec": spec_json(spec), "clip_id": rec.id, "source": rec.source,
                            "start": int(start), "caption": rec.caption or "",
                            "prompts": json.dumps([v.camera_prompt for v in rec.views])}  # fmt: skip
    motion = ds._motion(rec)
    if spec.task == "hvg":
        joints = torch.from_numpy(motion["joints"][frames]).float()
        s = align_views(rec, list(range(V)), frames, joints, spec)
        item["frames"] = s["target"].numpy()  # (V, T, 3, H, W) uint8, the file reader's bytes
        for k in ("K", "R", "t", "joints3d", "pelvis2d"):
            item[k] = s[k].numpy().astype(np.float32)
        return item
    item["frames"] = np.stack([ds._read(rec, v, frames) for v in range(V)])  # (V, T, H, W, 3)
    K = np.zeros((V, T, 3, 3), np.float32)
    R = np.zeros((V, T, 3, 3), np.float32)
    t = np.zeros((V, T, 3), np.float32)
    calibrated = np.zeros(V, np.uint8)
    for v in range(V):
        cams = ds._cameras(rec, v, frames)
        if cams is not None:
            K[v], R[v], t[v] = cams
            calibrated[v] = 1
    item.update(K=K, R=R, t=t, calibrated=calibrated)
    flags = {"body": "missing", "hands": "missing", "joints3d": "missing"}
    if motion is not None:
        flags = {"body": rec.motion.body, "hands": rec.motion.hands, "joints3d": rec.motion.joints3d}
        for key in ("body_pose", "hand_pose", "joints"):
            if key in motion:
                item[key] = motion[key][frames].astype(np.float32)
        item["body_valid"] = motion.get("body_valid", np.ones(rec.num_frames, bool))[frames].astype(np.uint8)
        item["hand_valid"] = motion.get("hand_valid", np.ones((rec.num_frames, 2), bool))[frames].astype(np.uint8)
    item["flags"] = json.dumps(flags if motion is not None else None)
    return item


def _write_clip(job: tuple[int, int], records: list[ClipRecord], spec: SampleSpec):
    """litdata worker: yield the items of one clip window (a broken clip is logged and yields nothing)."""

    from dimo.data.dataset import LOAD_ERRORS

    index, start = job
    rec = records[index]
    try:
        item = _item(rec, start, spec)
    except LOAD_ERRORS as err:
        log.warning("optimize: skipping %s window %d: %s", rec.id, start, err)
        return
    yield item


def optimize_root(
    roots: list[str | os.PathLike],
    out: str,
    spec: SampleSpec,
    window_step: int | None = None,
    num_workers: int = 1,
    chunk_bytes: str = "64MB",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the shards of every usable clip in ``roots`` for ``spec`` (module docstring) -> summary."""

    litdata = _litdata()
    step = window_step or spec.span
    if step < 1:
        raise ValueError(f"window_step must be >= 1, got {step}")
    records: list[ClipRecord] = []
    skipped: list[tuple[str, str]] = []
    for root in roots:
        recs, problems = load_manifest(root)
        skipped += [(p.clip_id, p.reason) for p in problems]
        for rec in recs:
            reason = usable_reason(rec, spec) or ineligible_reason(rec, spec)
            if reason is None and spec.task == "3dimo" and rec.views[0].calibrated and rec.height is None:
                reason = "calibrated views need the record's height and width"
            if reason is not None:
                skipped.append((rec.id, reason))
            else:
                records.append(rec)
    if not _is_url(out):
        Path(out).mkdir(parents=True, exist_ok=True)
        existing = [s for s in SOURCES if (Path(out) / s / "index.json").is_file()]
        if existing and not overwrite:
            raise ShardError(f"{out} already holds shards ({', '.join(existing)}); pass --overwrite to replace them")
    summary: dict[str, Any] = {"out": str(out), "spec": json.loads(spec_json(spec)), "sources": {}, "skipped": skipped}
    import multiprocessing

    # litdata.optimize sets the process-wide start method (to "spawn"); restore it afterwards so that
    # DataLoader workers started later in this process keep forking (spawned workers re-import all)
    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        _optimize_sources(litdata, records, out, spec, step, num_workers, chunk_bytes, summary, skipped)
    finally:
        multiprocessing.set_start_method(previous, force=True)
    if not summary["sources"]:
        raise ShardError(f"no usable clips for {spec_json(spec)} in {[str(r) for r in roots]}")
    return summary


def _optimize_sources(litdata, records, out, spec, step, num_workers, chunk_bytes, summary, skipped) -> None:
    for source in SOURCES:
        mine = [r for r in records if r.source == source]
        jobs = [(i, s) for i, r in enumerate(mine) for s in _windows(r, spec, step)]
        if not jobs:
            continue
        litdata.optimize(
            fn=partial(_write_clip, records=mine, spec=spec),
            inputs=jobs,
            output_dir=_join(out, source),
            chunk_bytes=chunk_bytes,
            num_workers=max(1, num_workers),
            mode="overwrite",
        )
        n = len(litdata.StreamingDataset(_join(out, source)))
        summary["sources"][source] = {"clips": len(mine), "windows": len(jobs), "items": n}
        if n < len(jobs):
            skipped.append((source, f"{len(jobs) - n} window(s) failed to load while optimizing (see the log)"))


# ---- reading --------------------------------------------------------------------------------------
class _Slot(SimpleNamespace):
    """A pool entry before its item is read: what the mixture sampler and the skip logic need."""


def shard_pools(
    shards: str, spec: SampleSpec, cache_dir: str | None = None
) -> tuple[dict[str, list[_Slot]], list[Problem]]:
    """Item slots per source of the shards at ``shards`` (local folder or URL); checks the spec.

    A source whose index or first item cannot be read is left out and returned as a problem."""

    litdata = _litdata()
    pools: dict[str, list[_Slot]] = {s: [] for s in SOURCES}
    errors: list[str] = []
    problems: list[Problem] = []
    want = spec_json(spec)
    for source in SOURCES:
        path = _join(shards, source)
        if not _is_url(shards) and not (Path(path) / "index.json").is_file():
            continue
        try:
            ds = litdata.StreamingDataset(path, cache_dir=cache_dir)
            n = len(ds)
            first = ds[0] if n else None
        except Exception as err:  # noqa: BLE001 - missing prefix, credentials, corrupt index
            errors.append(f"{path}: {type(err).__name__}: {err}")
            if not _is_url(shards):  # a local sub-dataset that exists but cannot be read
                problems.append(Problem(f"{source} shards", "shards", errors[-1]))
            continue
        if first is not None and first["spec"] != want:
            raise ShardError(
                f"shards {path} were written for {first['spec']}, the DataModule asks for {want}; run "
                "`python -m dimo.cli data optimize` with the DataModule's settings"
            )
        views = 1 if source == "internet" else 2
        pools[source] = [_Slot(id=f"{source}[{i}]", source=source, views=[None] * views) for i in range(n)]
    if not any(pools.values()):
        detail = f" ({errors[0]})" if errors else ""
        raise ShardError(f"no shards at {shards} (expected {', '.join(SOURCES)} sub-datasets){detail}")
    return pools, problems


class ShardDataset(ClipDataset):
    """:class:`ClipDataset` over shard items: same keys, same skip-and-count, no video decoding."""

    def __init__(self, shards: str, pools, spec: SampleSpec, augment=None, max_retries: int = 8,
                 cache_dir: str | None = None) -> None:  # fmt: skip
        super().__init__(pools, spec, augment, max_retries)
        self.shards, self.cache_dir = str(shards), cache_dir
        self._datasets: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # workers open their own streams
        state = dict(self.__dict__)
        state["_datasets"] = {}
        return state

    def _stream(self, source: str):
        if source not in self._datasets:
            self._datasets[source] = _litdata().StreamingDataset(_join(self.shards, source), cache_dir=self.cache_dir)
        return self._datasets[source]

    def _load(self, slot: _Slot) -> SimpleNamespace:
        index = int(slot.id.rsplit("[", 1)[1][:-1])
        try:
            item = self._stream(slot.source)[index]
        except Exception as err:  # noqa: BLE001 - a corrupt or missing chunk is a bad "clip"
            raise RecordError(f"{slot.id}: shard item unreadable ({type(err).__name__}: {err})") from None
        spec = self.spec
        start = int(item["start"])
        frames = list(range(start, start + spec.span, spec.frame_stride))
        rec = SimpleNamespace(id=item["clip_id"], source=item["source"], caption=item["caption"] or None,
                              num_frames=frames[-1] + 1, item=item, window=frames)  # fmt: skip
        prompts = json.loads(item["prompts"])
        if spec.task == "hvg":
            rec.views = [SimpleNamespace(camera_prompt=p) for p in prompts]
            return rec
        cal = item["calibrated"]
        rec.views = [SimpleNamespace(camera_prompt=p, calibrated=bool(c)) for p, c in zip(prompts, cal)]
        flags = json.loads(item["flags"])
        rec.motion = MotionRecord(file="", **flags) if flags is not None else None
        return rec

    def build(self, record, task: str, rng: np.random.Generator) -> dict[str, Any]:
        rec = self._load(record)
        if task != "hvg":
            sample = self._build_3dimo(rec, task, rng)
            sample["clip_id"] = rec.id
            return sample
        item, spec = rec.item, self.spec
        rng.integers(0, 1)  # the window draw of the file reader (the window is the item)
        V = item["frames"].shape[0]
        if V < spec.num_views:
            raise RecordError(f"{rec.id}: {V} views < num_views={spec.num_views}")
        views = [int(v) for v in rng.choice(V, size=spec.num_views, replace=False)]
        target = torch.from_numpy(item["frames"][views])  # (V, T, 3, H, W) uint8, like the file reader
        from dimo.geometry.cameras import relative_rotation

        R = torch.from_numpy(item["R"][views])
        return {
            "target": target,
            "reference": target[0, 0].clone(),
            "K": torch.from_numpy(item["K"][views]),
            "R": R,
            "t": torch.from_numpy(item["t"][views]),
            "rel_rot": relative_rotation(R),
            "joints3d": torch.from_numpy(item["joints3d"]),
            "pelvis2d": torch.from_numpy(item["pelvis2d"][views]),
            "source": rec.source,
            "task": "hvg",
            "clip_id": rec.id,
        }

    # the file reader's hooks, served from the item
    def _window(self, record, rng: np.random.Generator) -> list[int]:
        rng.integers(0, 1)
        return record.window

    def _read(self, record, view: int, frames: list[int]) -> np.ndarray:
        return record.item["frames"][view]

    def _motion(self, record):
        if record.motion is None:
            return None
        item, n, w = record.item, record.num_frames, record.window
        out = {}
        for key in ("body_pose", "hand_pose", "joints", "body_valid", "hand_valid"):
            if key in item:
                arr = item[key]
                full = np.zeros((n, *arr.shape[1:]), bool if key.endswith("_valid") else np.float32)
                full[w] = arr
                out[key] = full
        return out

    def _cameras(self, record, view: int, frames: list[int]):
        if not record.views[view].calibrated:
            return None
        item = record.item
        return item["K"][view].astype(np.float64), item["R"][view], item["t"][view]
