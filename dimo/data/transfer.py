"""Training batches from DataLoader workers through reusable shared-memory slots for their pixels.

By default a worker hands each batch to the main process in a *new* shared-memory segment per
tensor: the kernel allocates and zeroes it page by page as the worker's collate writes it, the main
process maps it again, and it is freed when the batch is dropped. For pixels that is most of the
bytes (3DiMo at 256x256 x 16 frames: 13 MB per batch of 2 samples), and on the 2-core benchmark
machine the page work cost about as much CPU as half the decoding (``benchmarks/bench_data.py``;
measured per batch: ~10 ms in the worker's collate instead of ~2 ms in plain memory, ~10 ms more in
the main process's conversion of freshly mapped pages, against ~37 ms to decode the frames).

Here the pixel fields (:data:`~dimo.data.pixels.PIXEL_KEYS` of the shapes the DataModule expects) go
into one of a few fixed slots, allocated in shared memory once, before the workers start, and reused:

* each worker owns ``per_worker`` slots; its collate claims a free one, stacks the batch's pixels
  into it and sends the rest of the batch as usual, with a :class:`SlotRef` in place of each pixel
  tensor;
* the loader (:class:`SlotDataLoader`) copies the pixels out of the slot into ordinary memory (pinned
  when the loader pins memory) as it yields the batch, and frees the slot: the batch that leaves the
  loader is the one ``default_collate`` makes, bit for bit;
* a worker whose slots are all taken, or a batch whose pixels do not fit the slots (another shape, a
  float augmentation output...), goes the ordinary way, so correctness never depends on timing; a
  batch the loader drops without yielding it (an abandoned epoch) frees its slot when it is
  garbage-collected.

Hand-written because ``torch.utils.data`` has no pooled transfer: its collate allocates a new shared
segment per tensor per batch. The slots hold ``num_workers x per_worker`` batches of pixels in
``/dev/shm`` for the loader's lifetime (the ordinary path holds the in-flight batches there too);
``ViewRichDataModule(shared_slots=False)`` turns them off.
"""

from __future__ import annotations

import logging
import multiprocessing
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

__all__ = ["PixelSlots", "SlotDataLoader", "SlotRef"]

log = logging.getLogger(__name__)

# the slot pools of this process, by token: a SlotRef dropped unread (in the main process) frees its slot
_POOLS: weakref.WeakValueDictionary[int, PixelSlots] = weakref.WeakValueDictionary()


class SlotRef:
    """Stands for a batch's pixel field in slot ``slot`` (rows ``:n``) of pool ``token`` while in transit.

    Made unarmed in the worker; the copy unpickled in the main process is armed: if it is dropped
    before :meth:`PixelSlots.receive` reads the slot, it frees the slot.
    """

    __slots__ = ("token", "slot", "n", "armed", "__weakref__")

    def __init__(self, token: int, slot: int, n: int, armed: bool = False) -> None:
        self.token, self.slot, self.n, self.armed = token, slot, n, armed

    def __reduce__(self):
        return (SlotRef, (self.token, self.slot, self.n, True))

    def __repr__(self) -> str:
        return f"SlotRef(slot={self.slot}, n={self.n})"

    def __del__(self) -> None:
        if self.armed:
            self.armed = False
            pool = _POOLS.get(self.token)
            if pool is not None:
                pool.release(self.slot)


class PixelSlots:
    """Shared-memory slots for the uint8 pixel fields of batches, and the collate that fills them.

    Args:
        shapes: per pixel field, the shape of one sample's tensor, e.g. ``{"target": (T, 3, H, W)}``.
        batch_size: rows per slot (the loader's batch size).
        num_workers: the loader's workers; each owns ``per_worker`` slots.
        per_worker: slots per worker (the loader's ``prefetch_factor`` + 1 keeps every prefetched
            batch of a worker in a slot while the main process reads the previous one).
        pin_memory: copy the pixels out of the slots into pinned memory (the loader's ``pin_memory``).

    An instance is the loader's ``collate_fn`` (in the workers) and reads the slots back in the main
    process (:meth:`receive`, called by :class:`SlotDataLoader`).
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        batch_size: int,
        num_workers: int,
        per_worker: int,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1 or num_workers < 1 or per_worker < 1:
            raise ValueError("batch_size, num_workers and per_worker must be >= 1")
        self.shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
        self.batch_size, self.num_workers, self.per_worker = batch_size, num_workers, per_worker
        self.pin_memory = pin_memory and torch.cuda.is_available()
        n = num_workers * per_worker
        # allocated (and its pages faulted) once, here, before the workers start
        self.buffers = {
            k: torch.zeros((n, batch_size, *s), dtype=torch.uint8).share_memory_()
            for k, s in self.shapes.items()
        }
        self.taken = torch.zeros(n, dtype=torch.uint8).share_memory_()  # 1: a worker filled it, unread
        # guards `taken`; its acquire/release also order the slot's pixel writes and reads across
        # processes (memory barriers), which a plain shared flag would not on weakly ordered CPUs
        self.lock = multiprocessing.get_context().Lock()
        self.token = uuid.uuid4().int
        self._next = 0  # this worker's next slot to try (per process)
        self.received = 0  # batches whose pixels came through the slots (main process)
        _POOLS[self.token] = self

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _POOLS[self.token] = self  # a spawned worker's copy

    @property
    def num_slots(self) -> int:
        return len(self.taken)

    # ---- worker side -----------------------------------------------------------------------------
    def _claim(self, worker: int) -> int | None:
        base = worker * self.per_worker
        with self.lock:
            for i in range(self.per_worker):
                slot = base + (self._next + i) % self.per_worker
                if not self.taken[slot]:
                    self.taken[slot] = 1
                    self._next = (self._next + i + 1) % self.per_worker
                    return slot
        return None

    def _fits(self, samples: list[Mapping[str, Any]], key: str) -> bool:
        shape = self.shapes[key]
        return all(
            isinstance(s.get(key), torch.Tensor)
            and s[key].dtype == torch.uint8
            and tuple(s[key].shape) == shape
            for s in samples
        )

    def __call__(self, samples: list[Mapping[str, Any]]) -> Any:
        """The workers' collate: ``default_collate`` with the fitting pixel fields stacked into a slot."""

        info = get_worker_info()
        if (
            info is None
            or not samples
            or not isinstance(samples[0], Mapping)
            or len(samples) > self.batch_size
        ):
            return default_collate(samples)
        keys = [k for k in self.shapes if self._fits(samples, k)]
        slot = self._claim(info.id % self.num_workers) if keys else None
        if slot is None:
            return default_collate(samples)
        n = len(samples)
        for k in keys:
            torch.stack([s[k] for s in samples], out=self.buffers[k][slot, :n])
        rest = default_collate([{k: v for k, v in s.items() if k not in keys} for s in samples])
        ref = SlotRef(self.token, slot, n)
        return {k: ref if k in keys else rest[k] for k in samples[0]}

    # ---- main-process side -----------------------------------------------------------------------
    def release(self, slot: int) -> None:
        if not self.lock.acquire(timeout=30):  # only a worker killed inside the lock holds it
            log.warning(
                "pixel slot %d not freed (its lock is held); later batches may bypass the slots", slot
            )
            return
        try:
            self.taken[slot] = 0
        finally:
            self.lock.release()

    def receive(self, batch: Any) -> Any:
        """A batch from the workers -> the same batch with its pixels copied out of the slot (then freed)."""

        if not isinstance(batch, dict):
            return batch
        ref = next((v for v in batch.values() if isinstance(v, SlotRef)), None)
        if ref is None:
            return batch
        if ref.token != self.token:
            raise RuntimeError("a batch refers to another loader's pixel slots")
        out = {}
        for k, v in batch.items():
            if v is ref:
                src = self.buffers[k][ref.slot, : ref.n]
                v = torch.empty(src.shape, dtype=torch.uint8, pin_memory=self.pin_memory)
                v.copy_(src)
            out[k] = v
        ref.armed = False
        self.release(ref.slot)
        self.received += 1
        return out


class SlotDataLoader(DataLoader):
    """A DataLoader whose ``collate_fn`` is a :class:`PixelSlots`: batches come out of the slots as
    ordinary tensors (see the module docstring)."""

    def __iter__(self):
        receive = self.collate_fn.receive
        for batch in super().__iter__():
            yield receive(batch)
