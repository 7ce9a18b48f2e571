"""Training batches from DataLoader workers through reusable shared-memory slots.

By default a worker hands each batch to the main process with every tensor in a *new* shared-memory
segment: the kernel allocates and zeroes it page by page as the worker's collate writes it, the main
process receives its file descriptor through a socket handshake with the worker (one per tensor, a
dozen per 3DiMo batch) and maps it again, and it is freed when the batch is dropped. Measured on the
2-core benchmark machine at 256x256 x 16 frames (``benchmarks/bench_data.py``, batches of 2 3DiMo
samples, 13 MB of pixels): the page work cost ~12 ms of CPU in the worker's collate (~3 ms in plain
memory) and ~8 ms more in the main process, and the handshakes ~5 ms of the main process per batch,
against 30-40 ms to decode the batch's frames. With the slots, the DataModule at 2 workers went from
1.25-1.40x the plain-PyAV decode time to 0.86-0.89x (docs/data.md, Benchmark).

Here each worker owns ``per_worker`` slots: byte arenas in shared memory, allocated once before the
workers start and reused.

* The worker's collate (:meth:`BatchSlots.__call__`) claims a free slot of its own and stacks every
  tensor field of the batch into it (and the tensors ``default_collate`` makes of numbers); what is
  left (strings, nested structures) is collated as usual. The batch travels with a
  :class:`SlotField` (slot, offset, dtype, shape) in place of each packed tensor.
* The loader (:class:`SlotDataLoader`) yields the batch with its tensors viewing the slot (no copy);
  the slot is freed when the last of them is garbage-collected (usually as soon as the batch has
  been moved to the device or converted to float). With ``pin_memory`` the tensors are copied out
  into pinned memory instead and the slot is freed at once. Either way the batch that leaves the
  loader equals the one ``default_collate`` makes (same fields, order, dtypes, shapes and values).
* A worker whose slots are all taken (e.g. its batches are still held downstream), or a batch larger
  than a slot (``capacity`` bytes), goes the ordinary way, so correctness never depends on timing; a batch the loader drops without yielding it
  (e.g. the prefetched batches of an abandoned epoch) frees its slot when it is garbage-collected.

Hand-written because ``torch.utils.data`` has no pooled transfer: its collate allocates a new shared
segment per tensor per batch. The slots hold ``num_workers x per_worker x capacity`` bytes in
``/dev/shm`` for the loader's lifetime (the ordinary path keeps the in-flight batches there too);
``ViewRichDataModule(shared_slots=False)`` turns them off.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

__all__ = ["BatchSlots", "SlotDataLoader", "SlotField", "SlotRef"]

log = logging.getLogger(__name__)

_ALIGN = 64  # byte alignment of the fields in a slot (any dtype's view is aligned)
# the slot pools of this process, by token: a SlotRef dropped unread (in the main process) frees its slot
_POOLS: weakref.WeakValueDictionary[int, BatchSlots] = weakref.WeakValueDictionary()


class SlotRef:
    """A batch in transit in slot ``slot`` of pool ``token``.

    Made unarmed in the worker; the copy unpickled in the main process is armed: if it is dropped
    before :meth:`BatchSlots.receive` has read the slot, it frees the slot.
    """

    __slots__ = ("token", "slot", "armed", "__weakref__")

    def __init__(self, token: int, slot: int, armed: bool = False) -> None:
        self.token, self.slot, self.armed = token, slot, armed

    def __reduce__(self):
        return (SlotRef, (self.token, self.slot, True))

    def __repr__(self) -> str:
        return f"SlotRef(slot={self.slot})"

    def __del__(self) -> None:
        if self.armed:
            self.armed = False
            pool = _POOLS.get(self.token)
            if pool is not None:
                pool.release(self.slot)


class _Lease:
    """Holds a received slot (and its pool: the shared memory stays mapped) until the last tensor
    viewing it is gone, then frees it."""

    __slots__ = ("pool", "slot")

    def __init__(self, pool: BatchSlots, slot: int) -> None:
        self.pool, self.slot = pool, slot

    def __del__(self) -> None:
        try:
            self.pool.release(self.slot)
        except Exception:  # interpreter shutdown: nothing left to free
            pass


class SlotField:
    """A batch tensor in transit: ``dtype`` and ``shape`` at byte ``offset`` of ``ref``'s slot."""

    __slots__ = ("ref", "offset", "dtype", "shape")

    def __init__(self, ref: SlotRef, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        self.ref, self.offset, self.dtype, self.shape = ref, offset, dtype, shape

    def __reduce__(self):
        return (SlotField, (self.ref, self.offset, self.dtype, self.shape))

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class BatchSlots:
    """Shared-memory slots for whole batches, and the collate that fills them (module docstring).

    Args:
        capacity: bytes per slot (one batch's tensors, each aligned to 64 bytes).
        num_workers: the loader's workers; each owns ``per_worker`` slots.
        per_worker: slots per worker (the loader's ``prefetch_factor`` + 2 holds every batch a worker
            has prefetched, plus the one being trained on and the one Lightning fetches ahead).
        pin_memory: copy the tensors out of the slots into pinned memory (the loader's ``pin_memory``)
            instead of yielding views of the slots.

    An instance is the loader's ``collate_fn`` (in the workers) and reads the slots back in the main
    process (:meth:`receive`, called by :class:`SlotDataLoader`).
    """

    def __init__(self, capacity: int, num_workers: int, per_worker: int, pin_memory: bool = False) -> None:
        if capacity < 1 or num_workers < 1 or per_worker < 1:
            raise ValueError("capacity, num_workers and per_worker must be >= 1")
        self.capacity = _aligned(int(capacity))
        self.num_workers, self.per_worker = num_workers, per_worker
        self.pin_memory = pin_memory and torch.cuda.is_available()
        n = num_workers * per_worker
        # allocated (and its pages faulted) once, here, before the workers start
        self.arena = torch.zeros((n, self.capacity), dtype=torch.uint8).share_memory_()
        self.taken = torch.zeros(n, dtype=torch.uint8).share_memory_()  # 1: a worker filled it, unread
        # guards `taken`; its acquire/release also order a slot's writes and reads across processes
        # (memory barriers), which a plain shared flag would not do on weakly ordered CPUs
        self.lock = multiprocessing.get_context().Lock()
        self.token = uuid.uuid4().int
        self._next = 0  # this worker's next slot to try (per process)
        self._too_big_logged = False
        self.received = 0  # batches that came through the slots (main process)
        _POOLS[self.token] = self

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

    def _view(self, slot: int, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        n = dtype.itemsize
        for d in shape:
            n *= d
        return self.arena[slot, offset : offset + n].view(dtype).view(shape)

    def __call__(self, samples: list[Any]) -> Any:
        """The workers' collate: ``default_collate``, with the batch's tensors stacked into a slot."""

        info = get_worker_info()
        if info is None or not samples or not all(isinstance(s, Mapping) for s in samples):
            return default_collate(samples)
        # plan: the fields stacked from equal-shaped CPU tensors, the tensors collated from numbers,
        # and the rest (strings, ...) as default_collate makes them
        stacked: dict[str, tuple[list[torch.Tensor], torch.dtype, tuple[int, ...]]] = {}
        rest: dict[str, Any] = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            v0 = values[0]
            if isinstance(v0, torch.Tensor) and all(
                isinstance(v, torch.Tensor)
                and v.device.type == "cpu"
                and v.dtype == v0.dtype
                and v.shape == v0.shape
                for v in values
            ):
                stacked[key] = (values, v0.dtype, (len(values), *v0.shape))
            else:
                rest[key] = default_collate(values)
        packed = {k: v for k, v in rest.items() if isinstance(v, torch.Tensor) and v.device.type == "cpu"}
        total = sum(
            _aligned(dtype.itemsize * torch.Size(shape).numel()) for _, dtype, shape in stacked.values()
        )
        total += sum(_aligned(_nbytes(v)) for v in packed.values())
        if not stacked and not packed:
            return default_collate(samples)
        if total > self.capacity:
            if not self._too_big_logged:
                self._too_big_logged = True
                log.info(
                    "a batch of %d bytes does not fit a transfer slot (%d bytes): such batches take the "
                    "ordinary DataLoader transfer",
                    total,
                    self.capacity,
                )
            return default_collate(samples)
        slot = self._claim(info.id % self.num_workers)
        if slot is None:
            return default_collate(samples)
        ref = SlotRef(self.token, slot)
        out: dict[str, Any] = {}
        offset = 0
        for key in samples[0]:
            if key in stacked:
                values, dtype, shape = stacked[key]
                torch.stack(values, out=self._view(slot, offset, dtype, shape))
            elif key in packed:
                dtype, shape = packed[key].dtype, tuple(packed[key].shape)
                self._view(slot, offset, dtype, shape).copy_(packed[key])
            else:
                out[key] = rest[key]
                continue
            field = SlotField(ref, offset, dtype, tuple(shape))
            out[key] = field
            offset += _aligned(field.nbytes)
        return out

    # ---- main-process side -----------------------------------------------------------------------
    def release(self, slot: int) -> None:
        if not self.lock.acquire(timeout=30):  # only a worker killed inside the lock holds it
            log.warning(
                "transfer slot %d not freed (its lock is held); later batches may bypass the slots", slot
            )
            return
        try:
            self.taken[slot] = 0
        finally:
            self.lock.release()

    def receive(self, batch: Any) -> Any:
        """A batch from the workers -> the same batch with its tensors copied out of the slot (then freed)."""

        if not isinstance(batch, dict):
            return batch
        fields = [v for v in batch.values() if isinstance(v, SlotField)]
        if not fields:
            return batch
        ref = fields[0].ref
        if ref.token != self.token or any(f.ref is not ref for f in fields):
            raise RuntimeError("a batch refers to another loader's transfer slots")
        lease = _Lease(self, ref.slot)
        ref.armed = False  # the lease frees the slot from now on
        base = self.arena[ref.slot].data_ptr()
        out = {}
        for key, value in batch.items():
            if isinstance(value, SlotField):
                if self.pin_memory or value.nbytes == 0:
                    src = self._view(ref.slot, value.offset, value.dtype, value.shape)
                    value = torch.empty(value.shape, dtype=value.dtype, pin_memory=self.pin_memory).copy_(src)
                else:
                    # a view of the slot whose buffer object holds the lease: the slot is freed when
                    # the last tensor (or storage) using this memory is garbage-collected
                    buf = (ctypes.c_char * value.nbytes).from_address(base + value.offset)
                    buf.lease = lease
                    value = torch.frombuffer(buf, dtype=value.dtype).view(value.shape)
            out[key] = value
        self.received += 1
        return out


class SlotDataLoader(DataLoader):
    """A DataLoader whose ``collate_fn`` is a :class:`BatchSlots`: batches come out of the slots as
    ordinary tensors (see the module docstring)."""

    def __iter__(self):
        receive = self.collate_fn.receive
        for batch in super().__iter__():
            yield receive(batch)
