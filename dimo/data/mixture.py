"""The source mixture: which source, task and clip each sample of the training stream comes from.

The stream is a sequence of *global batches*, ``b = 0, 1, 2, ...``, each of ``world_size * batch_size``
slots. Everything about global batch ``b`` is a pure function of ``(seed, b, the weights in force at
b, the per-source draw counters before b)``:

* each slot's source is drawn i.i.d. from the weights (numpy generator seeded by ``(seed, b)``);
* a slot from a source with several views is a ``cross_view`` sample with probability ``cross_view``,
  else ``reconstruction`` (internet clips are single-view, so always reconstruction); with
  ``hvg=True`` every sample is ``hvg``;
* the clip is the next one in that source's shuffled sequence (a fresh permutation per pass over
  the source, seeded by ``(seed, source, pass)``), so within a pass no clip repeats;
* rank ``r`` keeps slots ``r*B .. (r+1)*B - 1``. Every rank computes the same global batch, so the
  mixture law is identical everywhere and the ranks' samples are disjoint within a pass.

:meth:`MixtureStream.set_mixture` records ``(from_batch, weights, cross_view)`` in a history; the new
law applies from the next global batch the sampler draws. With a DataLoader the sampler runs ahead
of training by the prefetch depth (``num_workers * prefetch_factor`` batches, plus one that Lightning
fetches early), so the change reaches the model that many steps later, deterministically: the same
seed and the same calls at the same steps give the same stream. :meth:`MixtureStream.state_at`
returns the state *as of a consumed batch* (counters snapshotted before every draw, plus the whole
relevant history), so restoring a checkpoint replays exactly the batches that were in flight.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

from dimo.data.manifest import SOURCES

__all__ = ["MULTIVIEW_SOURCES", "MixtureSampler", "MixtureStream", "SampleKey", "normalize_weights"]

log = logging.getLogger(__name__)

MULTIVIEW_SOURCES = ("ue5", "multiview")  # sources whose clips carry 2+ views
_SNAPSHOTS = 512  # counters kept for the last N draws (must exceed the prefetch depth)


@dataclass(frozen=True)
class SampleKey:
    """What one sample is: handed by the sampler to ``ClipDataset.__getitem__``."""

    draw: int  # global batch index in the stream
    slot: int  # slot within the global batch (rank * batch_size + i)
    source: str
    index: int  # index into the source's clip list
    task: str  # "reconstruction" | "cross_view" | "hvg"
    seed: int  # per-sample seed: frame window, views, augmentation


def normalize_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Check names and values; return weights over :data:`SOURCES` summing to 1."""

    unknown = set(weights) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; expected a subset of {SOURCES}")
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {w!r}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError(f"at least one source weight must be > 0, got {dict(weights)}")
    return {s: float(weights.get(s, 0.0)) / total for s in SOURCES}


class MixtureStream:
    """The deterministic, resumable stream of global batches of :class:`SampleKey`."""

    def __init__(
        self,
        weights: Mapping[str, float],
        cross_view: float = 0.0,
        seed: int = 0,
        hvg: bool = False,
    ) -> None:
        self.seed = int(seed)
        self.hvg = bool(hvg)
        self.counts: dict[str, int] = {}
        self.global_batch = 0
        self.position = 0  # next global batch to draw
        self.counters = {s: 0 for s in SOURCES}
        self.history: list[tuple[int, dict[str, float], float]] = []
        self._snapshots: OrderedDict[int, dict[str, int]] = OrderedDict()
        self._perm_cache: dict[tuple[str, int], np.ndarray] = {}
        self._warned: set[str] = set()
        self.set_mixture(weights, cross_view)

    # ---- configuration -------------------------------------------------------------------------
    def bind(self, counts: Mapping[str, int], global_batch: int) -> None:
        """Tell the stream how many clips each source has and the global batch size."""

        if global_batch <= 0:
            raise ValueError(f"global batch size must be positive, got {global_batch}")
        counts = {s: int(counts.get(s, 0)) for s in SOURCES}
        if self.counts and counts != self.counts:
            self._perm_cache.clear()
        self.counts, self.global_batch = counts, int(global_batch)

    def set_mixture(self, weights: Mapping[str, float], cross_view: float) -> None:
        """New source weights and cross-view fraction, in force from the next global batch drawn."""

        w = normalize_weights(weights)
        if not (isinstance(cross_view, (int, float)) and 0.0 <= cross_view <= 1.0):
            raise ValueError(f"cross_view must be in [0, 1], got {cross_view!r}")
        entry = (self.position, w, float(cross_view))
        if self.history and self.history[-1][1:] == entry[1:]:
            return
        if self.history and self.history[-1][0] == self.position:
            self.history[-1] = entry
        else:
            self.history.append(entry)

    def law(self, position: int | None = None) -> tuple[dict[str, float], float]:
        """Weights and cross-view fraction in force at global batch ``position`` (default: next)."""

        position = self.position if position is None else position
        current = self.history[0]
        for entry in self.history:
            if entry[0] <= position:
                current = entry
        return dict(current[1]), current[2]

    # ---- drawing ------------------------------------------------------------------------------
    def _perm(self, source: str, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 16:
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, 7919, SOURCES.index(source), epoch])
            self._perm_cache[key] = rng.permutation(self.counts[source])
        return self._perm_cache[key]

    def _effective(self, weights: dict[str, float]) -> np.ndarray:
        p = np.array([weights[s] if self.counts.get(s, 0) > 0 else 0.0 for s in SOURCES])
        for s in SOURCES:
            if weights[s] > 0 and self.counts.get(s, 0) == 0 and s not in self._warned:
                self._warned.add(s)
                log.warning(
                    "source %r has weight %.3f but no usable clips; its weight is ignored", s, weights[s]
                )
        if p.sum() <= 0:
            raise RuntimeError(
                f"no usable clips in any source with a positive weight (weights {weights}, clips {self.counts})"
            )
        return p / p.sum()

    def draw(self) -> list[SampleKey]:
        """Draw the next global batch (``global_batch`` keys) and advance the stream."""

        if not self.global_batch:
            raise RuntimeError("MixtureStream.bind(counts, global_batch) must be called before drawing")
        b = self.position
        self._snapshots[b] = dict(self.counters)
        while len(self._snapshots) > _SNAPSHOTS:
            self._snapshots.popitem(last=False)
        weights, cross_view = self.law(b)
        p = self._effective(weights)
        rng = np.random.default_rng([self.seed, b])
        n = self.global_batch
        src = rng.choice(len(SOURCES), size=n, p=p)
        u = rng.random(n)
        seeds = rng.integers(0, 2**62, size=n)
        keys = []
        for slot in range(n):
            source = SOURCES[src[slot]]
            k = self.counters[source]
            self.counters[source] = k + 1
            count = self.counts[source]
            index = int(self._perm(source, k // count)[k % count])
            if self.hvg:
                task = "hvg"
            elif source in MULTIVIEW_SOURCES and u[slot] < cross_view:
                task = "cross_view"
            else:
                task = "reconstruction"
            keys.append(SampleKey(b, slot, source, index, task, int(seeds[slot])))
        self.position = b + 1
        return keys

    # ---- state ----------------------------------------------------------------------------------
    def state_at(self, consumed: int | None = None) -> dict[str, Any]:
        """Checkpointable state as of ``consumed`` global batches (default: everything drawn)."""

        position = self.position if consumed is None else int(consumed)
        if position == self.position:
            counters = dict(self.counters)
        elif position in self._snapshots:
            counters = dict(self._snapshots[position])
        else:
            raise ValueError(
                f"no snapshot of the stream at batch {position} (drawn: {self.position}); "
                f"the prefetch depth exceeds {_SNAPSHOTS} batches?"
            )
        # keep the entry in force at `position` and everything after it (already scheduled draws)
        first = max((i for i, e in enumerate(self.history) if e[0] <= position), default=0)
        history = [[e[0], e[1], e[2]] for e in self.history[first:]]
        return {
            "seed": self.seed,
            "hvg": self.hvg,
            "position": position,
            "counters": counters,
            "history": history,
            "global_batch": self.global_batch,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        for key in ("seed", "position", "counters", "history"):
            if key not in state:
                raise ValueError(f"mixture state lacks {key!r}: {sorted(state)}")
        if state.get("global_batch") and self.global_batch and state["global_batch"] != self.global_batch:
            log.warning(
                "resuming with global batch %d instead of %d: the sample stream will differ from the original run",
                self.global_batch,
                state["global_batch"],
            )
        self.seed = int(state["seed"])
        self.hvg = bool(state.get("hvg", self.hvg))
        self.position = int(state["position"])
        self.counters = {s: int(state["counters"].get(s, 0)) for s in SOURCES}
        self.history = [
            (int(e[0]), {s: float(e[1].get(s, 0.0)) for s in SOURCES}, float(e[2])) for e in state["history"]
        ]
        if not self.history:
            raise ValueError("mixture state has an empty history")
        self._snapshots.clear()
        self._perm_cache.clear()


class MixtureSampler(DistributedSampler):
    """Per-rank view of a :class:`MixtureStream`: yields this rank's :class:`SampleKey` s.

    It subclasses :class:`~torch.utils.data.DistributedSampler` only so that Lightning recognises it
    as rank-aware and does not wrap it in another distributed sampler; it is not a
    ``DistributedSampler`` over dataset indices. One epoch is ``batches_per_epoch`` batches; the
    stream itself never restarts (epochs only cut it into pieces).
    """

    def __init__(
        self,
        stream: MixtureStream,
        batch_size: int,
        batches_per_epoch: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if batch_size <= 0 or batches_per_epoch <= 0:
            raise ValueError("batch_size and batches_per_epoch must be positive")
        if stream.global_batch != batch_size * world_size:
            raise ValueError(
                f"stream is bound to global batch {stream.global_batch}, sampler has {batch_size} x {world_size}"
            )
        # DistributedSampler's attributes, for anything that inspects them
        self.num_replicas, self.rank, self.epoch, self.shuffle, self.drop_last = (
            world_size,
            rank,
            0,
            False,
            True,
        )
        self.seed = stream.seed
        self.stream, self.batch_size, self.batches_per_epoch = stream, batch_size, batches_per_epoch
        self.num_samples = self.total_size = batch_size * batches_per_epoch

    def __iter__(self) -> Iterator[SampleKey]:
        lo = self.rank * self.batch_size
        # Epoch e is stream batches [e * n, (e + 1) * n). A stream restored mid-epoch (resume) yields
        # only the rest of that epoch, so epoch boundaries, and with them the stream positions of later
        # epochs, match the uninterrupted run whatever the loader prefetched before the checkpoint.
        for _ in range(self.batches_per_epoch - self.stream.position % self.batches_per_epoch):
            keys = self.stream.draw()
            yield from keys[lo : lo + self.batch_size]

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
