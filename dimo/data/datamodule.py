"""``ViewRichDataModule``: internet + UE5 + multi-view clips mixed by run-time weights.

* Reads one or more dataset roots in the clip format (:mod:`dimo.data.manifest`). No silent toy
  data: the embedded toy-human dataset is built only at the built-in toy root (``data/toy``) or
  when ``synthesize_if_missing: true`` asks for it; any other root without a manifest is a one-line
  error that names it (a typo never trains on synthesised humans).
* Records are checked cheaply at ``setup`` (schema, files present, long enough, views enough for
  the task); the rest are checked while loading. Every bad clip is skipped and counted, never fatal:
  ``invalid_clips`` (found at setup, with reasons in ``problems``) and ``skipped_draws`` (samples
  that landed on a clip that failed to load and were replaced). Both are logged as
  ``data/invalid_clips`` and ``data/skipped`` (summed over ranks) every ``log_every_n_steps``.
* The source of every sample comes from a :class:`~dimo.data.mixture.MixtureStream`: deterministic per
  global batch and seed, the same law on every rank, disjoint samples across ranks. The stage
  scheduler calls :meth:`set_mixture` (contract in ``docs/contracts.md``); :meth:`state_dict` puts the
  stream state in Lightning checkpoints so a resumed run continues the same stream.
* At the first training batch a grid of the batch is written to TensorBoard (``data/batch``).
* Pixels travel as uint8 (from the workers, and host to device); :meth:`on_after_batch_transfer`
  turns them into float32 in [-1, 1] on the device (:func:`to_model_batch`). Training batches come
  from the workers through reusable shared-memory slots (:mod:`dimo.data.transfer`). Reading the
  loaders without a Trainer? Call :func:`to_model_batch` on each batch (after :meth:`on_before_batch_transfer`).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, default_collate

from dimo.data.augment import AugmentConfig
from dimo.data.dataset import ClipDataset, SampleSpec, ineligible_reason, usable_reason
from dimo.data.manifest import MANIFEST_NAME, SOURCES, ClipRecord, Problem, load_manifest
from dimo.data.mixture import MULTIVIEW_SOURCES, MixtureSampler, MixtureStream, SampleKey
from dimo.data.pixels import to_model_batch
from dimo.data.synth import SynthConfig
from dimo.data.video import CropMode

__all__ = ["ViewRichDataModule", "to_model_batch"]

log = logging.getLogger(__name__)

_PRIVATE_KEYS = ("_draw", "_skipped", "_bad")
TOY_ROOT = Path("data/toy")  # the built-in toy root (relative to the working directory)


def is_toy_root(root: str | os.PathLike) -> bool:
    """Whether ``root`` is the built-in toy root ``data/toy`` (the one place toy data is built unasked)."""

    return Path(root).resolve() == TOY_ROOT.resolve()


class _FixedKeys(Dataset):
    """Map-style view of a fixed list of sample keys (validation), shardable by Lightning."""

    def __init__(self, dataset: ClipDataset, keys: list[SampleKey]) -> None:
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[self.keys[i]]


class ViewRichDataModule(LightningDataModule):
    """Mixes the clip sources into 3DiMo or HVG batches (sample dicts in ``docs/contracts.md``).

    Args:
        root: dataset root holding ``manifest.jsonl``.
        extra_roots: more dataset roots whose clips join the same pools (by their ``source``).
        task: ``"3dimo"`` (driving/target/reference samples) or ``"hvg"`` (views x frames samples).
        num_frames, frame_stride: frames per sample and the step between them in the source video.
        height, width: sample resolution; ``crop`` says how other aspect ratios are handled.
        num_views: views per HVG sample (clips with fewer are skipped).
        batch_size: per-rank batch size.
        num_workers, persistent_workers, prefetch_factor, pin_memory: DataLoader settings.
        weights: initial source weights (any subset of internet/ue5/multiview; normalised).
        cross_view: probability that a sample from a multi-view source is a cross-view sample.
        augment: driving-frame augmentation strengths (3DiMo training only).
        batches_per_epoch: training batches per epoch (the stream itself is endless).
        val_batches: fixed validation batches (no augmentation), 0 for none.
        val_cross_view_batches: fixed cross-view validation batches (3DiMo only, default 0 for none):
            a second validation loader (``dataloader_idx`` 1) of samples from the multi-view sources
            that are all cross-view (driving frames from one view, target and reference from
            another), for the cross-view motion gap (``val/cross_view_motion_gap``, docs/3dimo.md).
        seed: stream seed; ``None`` uses ``seed_everything``'s seed (``PL_GLOBAL_SEED``) or 0.
        synthesize_if_missing: build the toy dataset at ``root`` when it has no manifest; ``None``
            (default): only when ``root`` is the built-in toy root ``data/toy``.
        synth: the toy dataset's settings when it is built here.
        log_preview: write a grid of the first training batch to TensorBoard.
        max_retries: bad clips tolerated per sample before giving up on that sample.
        shards: read decoded windows from ``litdata`` streaming shards (a local folder or an
            object-store URL written by ``python -m dimo.cli data optimize``) instead of ``root``'s
            videos; their spec must match this DataModule's (``dimo.data.shards``).
        shard_cache: where litdata caches remote chunks (default: its own cache folder).
        shared_slots: with ``num_workers > 0``, training batches travel from the workers through
            ``num_workers x (prefetch_factor + 2)`` batch-sized shared-memory slots allocated once
            (:mod:`dimo.data.transfer`), instead of a new shared segment per tensor per batch; the
            batches are the same bit for bit. ``False``: the ordinary DataLoader transfer.
        latent_cache: a frozen-encoder cache folder (``python -m dimo.cli data cache``, 3DiMo only):
            samples carry the cached target latents and text embeddings (``x0``, ``ref_latent``,
            ``text``) instead of target pixels, the window is one of the cached ones, and the model
            trains with ``from_cache: true`` (``dimo.data.latent_cache``). Clips without a cached
            window are setup problems.
    """

    def __init__(
        self,
        root: Path = Path("data/toy"),
        extra_roots: list[Path] | None = None,
        task: Literal["3dimo", "hvg"] = "3dimo",
        num_frames: int = 8,
        frame_stride: int = 1,
        height: int = 64,
        width: int = 64,
        crop: CropMode = "center",
        num_views: int = 4,
        batch_size: int = 2,
        num_workers: int = 0,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
        weights: dict[str, float] | None = None,
        cross_view: float = 0.0,
        augment: AugmentConfig | None = None,
        batches_per_epoch: int = 100,
        val_batches: int = 2,
        val_cross_view_batches: int = 0,
        seed: int | None = None,
        synthesize_if_missing: bool | None = None,
        synth: SynthConfig | None = None,
        log_preview: bool = True,
        max_retries: int = 8,
        shards: str | None = None,
        shard_cache: str | None = None,
        latent_cache: Path | None = None,
        shared_slots: bool = True,
    ) -> None:
        super().__init__()
        if latent_cache is not None and (task != "3dimo" or shards is not None):
            raise ValueError("latent_cache serves 3DiMo samples read from files (task 3dimo, no shards)")
        if num_frames < 1 or frame_stride < 1 or height < 1 or width < 1:
            raise ValueError("num_frames, frame_stride, height and width must be >= 1")
        if task == "hvg" and num_views < 1:
            raise ValueError("num_views must be >= 1")
        if batch_size < 1 or batches_per_epoch < 1 or num_workers < 0 or val_batches < 0:
            raise ValueError(
                "batch_size and batches_per_epoch must be >= 1, num_workers and val_batches >= 0"
            )
        if val_cross_view_batches < 0 or (val_cross_view_batches and task != "3dimo"):
            raise ValueError("val_cross_view_batches must be >= 0, and is for task 3dimo only")
        self.save_hyperparameters(ignore=["augment", "synth"])
        # checkpoints are loaded with weights_only=True: keep hparams to plain types
        self.hparams["root"] = str(root)
        self.hparams["extra_roots"] = [str(r) for r in (extra_roots or [])]
        self.hparams["latent_cache"] = None if latent_cache is None else str(latent_cache)
        self.latent_cache = None if latent_cache is None else Path(latent_cache)
        self._latents = None  # the opened LatentCache
        self.root = Path(root)
        self.roots = [self.root, *(Path(r) for r in (extra_roots or []))]
        self.task = task
        self.spec = SampleSpec(task, num_frames, frame_stride, height, width, num_views, crop)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.persistent_workers, self.prefetch_factor, self.pin_memory = (
            persistent_workers,
            prefetch_factor,
            pin_memory,
        )
        self.augment = augment if augment is not None else AugmentConfig()
        self.batches_per_epoch, self.val_batches = batches_per_epoch, val_batches
        self.val_cross_view_batches = val_cross_view_batches
        self.synthesize_if_missing, self.synth = synthesize_if_missing, synth or SynthConfig()
        self.log_preview, self.max_retries = log_preview, max_retries
        self.shards, self.shard_cache = shards, shard_cache
        self.shared_slots = shared_slots
        if weights is None:
            weights = {"multiview": 1.0} if task == "hvg" else {s: 1.0 for s in SOURCES}
        self._seed = seed
        self.stream = MixtureStream(weights, cross_view, seed=self._resolve_seed(), hvg=task == "hvg")
        # the validation keys' law: the configured (initial) one, fixed for the run. Not the stream's
        # history, which a checkpoint truncates to the law in force at its step (a stage-1 checkpoint
        # written at the stage switch restores stage 2's mixture), so `validate --ckpt_path` and every
        # resumed stage would score other clips than training did
        self._val_law = self.stream.law(0)
        self.pools: dict[str, list[ClipRecord]] = {}
        self.problems: list[Problem] = []
        self.skipped_draws = 0
        self.bad_clips: set[str] = set()  # ids of clips that failed to load in training (checkpointed)
        self._consumed = 0
        self._preview_done = False
        self._train_set: ClipDataset | None = None

    # ---- the scheduler's door (docs/contracts.md) ------------------------------------------------
    def set_mixture(self, weights: dict[str, float], cross_view: float) -> None:
        """New source weights and cross-view fraction; they apply from the next batch drawn."""

        self.stream.set_mixture(weights, cross_view)

    def mixture_state(self) -> dict[str, Any]:
        """The stream state as of the last training batch consumed (for checkpoints)."""

        return self.stream.state_at(self._consumed)

    def load_mixture_state(self, state: dict[str, Any]) -> None:
        self.stream.load_state(state)
        self._consumed = int(state["position"])

    @property
    def invalid_clips(self) -> int:
        return len(self.problems)

    # ---- Lightning checkpoint hooks --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "mixture": self.mixture_state(),
            "skipped_draws": self.skipped_draws,
            "bad_clips": sorted(self.bad_clips),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.load_mixture_state(state_dict["mixture"])
        self.skipped_draws = int(state_dict.get("skipped_draws", 0))
        self.bad_clips = set(state_dict.get("bad_clips", []))
        if self._train_set is not None:
            self._seed_bad(self._train_set)

    def _seed_bad(self, dataset: ClipDataset) -> None:
        """Known-bad clips (from a checkpoint) are not opened again; counts do not depend on it."""

        for source, pool in dataset.pools.items():
            for i, rec in enumerate(pool):
                if rec.id in self.bad_clips:
                    dataset.bad.setdefault((source, i), "failed to load before the resume")

    # ---- data ------------------------------------------------------------------------------------
    def _resolve_seed(self) -> int:
        if self._seed is not None:
            return int(self._seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def prepare_data(self) -> None:
        if self.shards is not None:
            return  # the shards are the data; the roots are not read
        for root in self.roots[1:]:
            if not (root / MANIFEST_NAME).is_file():
                raise FileNotFoundError(f"data root {root} (extra_roots) has no {MANIFEST_NAME}")
        if (self.root / MANIFEST_NAME).is_file():
            return
        synth = self.synthesize_if_missing
        if synth is None:
            synth = is_toy_root(self.root)
        if not synth:
            what = "does not exist" if not self.root.exists() else f"has no {MANIFEST_NAME}"
            raise FileNotFoundError(
                f"data root {self.root} {what} (import data with `python -m dimo.cli data import`, "
                f"build toy data with `python -m dimo.cli data synth --out {self.root}`, or set "
                "synthesize_if_missing: true)"
            )
        from dimo.data.synth import synthesize

        log.info("building the toy-human dataset at %s", self.root)
        synthesize(self.root, self.synth)

    def setup(self, stage: str | None = None) -> None:
        if self.pools:
            return
        self.prepare_data()  # a no-op when every root has its manifest; plain use without a Trainer
        pools: dict[str, list[ClipRecord]] = {s: [] for s in SOURCES}
        problems: list[Problem] = []
        ineligible = 0
        if self.shards is not None:
            from dimo.data.shards import shard_pools

            pools, problems = shard_pools(self.shards, self.spec, self.shard_cache)
        for root in self.roots if self.shards is None else []:
            records, bad = load_manifest(root)
            problems += bad
            for rec in records:
                reason = usable_reason(rec, self.spec)
                if reason is not None:
                    problems.append(Problem(rec.id, "clip", reason))
                elif ineligible_reason(rec, self.spec) is None:
                    pools[rec.source].append(rec)
                else:
                    ineligible += 1
        if self.latent_cache is not None:
            from dimo.data.latent_cache import LatentCache

            self._latents = LatentCache(self.latent_cache)
            self._latents.check_spec(self.spec)
            for source, pool in pools.items():
                keep = [r for r in pool if self._latents.starts(r)]
                problems += [
                    Problem(r.id, "latent_cache", f"no window in the latent cache {self.latent_cache}")
                    for r in pool
                    if not self._latents.starts(r)
                ]
                pools[source] = keep
        self.pools, self.problems = pools, problems
        for p in problems:
            log.warning("skipping %s (%s): %s", p.clip_id, p.part, p.reason)
        if not any(pools.values()):
            where = self.shards if self.shards is not None else [str(r) for r in self.roots]
            raise RuntimeError(f"no usable clips in {where} ({len(problems)} skipped)")
        counts = {s: len(v) for s, v in pools.items()}
        log.info(
            "clips per source: %s; broken (skipped): %d; not usable for task %r: %d",
            counts,
            len(problems),
            self.task,
            ineligible,
        )
        rank, world = self._rank_world()
        self.stream.bind(counts, self.batch_size * world)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "_trainer", None) or getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def pixel_shapes(self) -> dict[str, tuple[int, ...]]:
        """The uint8 pixel fields of one sample and their shapes (what sizes the transfer slots)."""

        s = self.spec
        frame = (3, s.height, s.width)
        if self.task == "hvg":
            return {"target": (s.num_views, s.num_frames, *frame), "reference": frame}
        if self.latent_cache is not None:  # the targets are cached latents: only the driving frames
            return {"driving": (s.num_frames, *frame)}
        return {"driving": (s.num_frames, *frame), "target": (s.num_frames, *frame), "reference": frame}

    def _loader(
        self, dataset: Dataset, sampler=None, shuffle: bool = False, slots: bool = False
    ) -> DataLoader:
        workers = self.num_workers
        cls, collate = DataLoader, default_collate
        if slots and workers > 0 and self.shared_slots:
            from dimo.data.transfer import BatchSlots, SlotDataLoader

            # a batch's pixels, plus room for its labels and cameras (a few KB per frame); a batch that
            # does not fit (e.g. cached latents) takes the ordinary transfer
            pixels = self.batch_size * sum(math.prod(s) for s in self.pixel_shapes().values())
            cls = SlotDataLoader
            collate = BatchSlots(
                pixels + pixels // 4 + (1 << 20), workers, self.prefetch_factor + 2, self.pin_memory
            )
        return cls(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            pin_memory=self.pin_memory,
            collate_fn=collate,
            drop_last=sampler is not None,
        )

    def train_dataset(self) -> ClipDataset:
        if self._train_set is None:
            self.setup("fit")
            augment = self.augment if self.task == "3dimo" else None
            self._train_set = self._dataset(augment)
            if self.bad_clips:
                self._seed_bad(self._train_set)
        return self._train_set

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        rank, world = self._rank_world()
        self.stream.bind({s: len(v) for s, v in self.pools.items()}, self.batch_size * world)
        sampler = MixtureSampler(self.stream, self.batch_size, self.batches_per_epoch, rank, world)
        return self._loader(dataset, sampler, slots=True)

    def val_keys(self) -> list[SampleKey]:
        """Fixed validation sample keys, drawn from the configured initial law (``weights``,
        ``cross_view``) with a separate seed; the same after a checkpoint is restored."""

        self.setup("validate")
        weights, cross_view = self._val_law
        stream = MixtureStream(weights, cross_view, seed=self.stream.seed + 104_729, hvg=self.task == "hvg")
        stream.bind({s: len(v) for s, v in self.pools.items()}, self.batch_size)
        return [k for _ in range(self.val_batches) for k in stream.draw()]

    def val_cross_view_keys(self) -> list[SampleKey]:
        """Fixed cross-view validation keys: the multi-view sources with clips, every sample cross-view."""

        self.setup("validate")
        weights = {s: 1.0 for s in MULTIVIEW_SOURCES if self.pools.get(s)}
        if not weights:
            raise RuntimeError(
                f"val_cross_view_batches needs clips from a multi-view source {MULTIVIEW_SOURCES}; "
                f"{[str(r) for r in self.roots]} has none"
            )
        stream = MixtureStream(weights, 1.0, seed=self.stream.seed + 2 * 104_729, hvg=False)
        stream.bind({s: len(v) for s, v in self.pools.items()}, self.batch_size)
        return [k for _ in range(self.val_cross_view_batches) for k in stream.draw()]

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        self.setup("validate")  # no-op once set up; lets plain (Trainer-less) use work too
        plain = self._loader(_FixedKeys(self._dataset(None), self.val_keys()))
        if not self.val_cross_view_batches:
            return plain
        # dataloader_idx 1: the cross-view protocol's batches (ThreeDiMoModule.validation_step)
        return [plain, self._loader(_FixedKeys(self._dataset(None), self.val_cross_view_keys()))]

    def _dataset(self, augment: AugmentConfig | None) -> ClipDataset:
        if self.shards is not None:
            from dimo.data.shards import ShardDataset

            return ShardDataset(
                self.shards, self.pools, self.spec, augment, self.max_retries, self.shard_cache
            )
        return ClipDataset(self.pools, self.spec, augment, self.max_retries, latents=self._latents)

    # ---- per-batch bookkeeping -------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, dict) or "_draw" not in batch:
            return batch
        draw = batch.pop("_draw")
        skipped = batch.pop("_skipped")
        bad = batch.pop("_bad", [])
        trainer = getattr(self, "trainer", None)
        training = trainer is not None and trainer.training and not trainer.sanity_checking
        if training or trainer is None:
            self._consumed = int(torch.as_tensor(draw).max()) + 1
            self.skipped_draws += int(torch.as_tensor(skipped).sum())
            self.bad_clips.update(i for ids in bad for i in ids.split(";") if i)
        if training:
            self._log_stats(trainer)
            if self.log_preview and not self._preview_done:
                self._preview_done = True
                self._write_preview(trainer, batch)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 pixels (now on the device) -> float32 in [-1, 1]: :func:`to_model_batch`."""

        return to_model_batch(batch) if isinstance(batch, dict) else batch

    def _log_stats(self, trainer) -> None:
        every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1))
        if trainer.global_step % every:
            return
        stats = torch.tensor([float(self.skipped_draws), float(self.invalid_clips)])
        if trainer.world_size > 1:
            stats = trainer.strategy.reduce(stats.to(trainer.strategy.root_device), reduce_op="sum").cpu()
            stats[1] /= trainer.world_size  # every rank saw the same invalid records
        for logger in trainer.loggers:
            logger.log_metrics(
                {"data/skipped": float(stats[0]), "data/invalid_clips": float(stats[1])},
                step=trainer.global_step,
            )

    def _write_preview(self, trainer, batch: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import TensorBoardLogger

        from dimo.data.preview import batch_grid

        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or "target" not in batch:  # from the latent cache: no target pixels to draw
            return
        grid = batch_grid(to_model_batch(batch))  # (3, H', W') in [0, 1]; the batch is still uint8 here
        for lg in loggers:
            lg.experiment.add_image("data/batch", grid, trainer.global_step)

    def summary(self) -> dict[str, Any]:
        """Clips per source and the problems found at setup (for logs and the CLI)."""

        self.setup("fit")
        return {
            "clips": {s: len(v) for s, v in self.pools.items()},
            "invalid_clips": self.invalid_clips,
            "problems": Counter(p.part for p in self.problems),
        }
