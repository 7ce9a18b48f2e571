"""Batches from DataLoader workers through reusable shared-memory slots (dimo.data.transfer), and the
FFmpeg threading of read_frames per process (dimo.data.video.decode_threads)."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

import dimo.data.transfer as transfer
from dimo.data.augment import AugmentConfig
from dimo.data.datamodule import ViewRichDataModule
from dimo.data.transfer import BatchSlots, SlotDataLoader, SlotField, SlotRef
from dimo.data.video import decode_threads

NO_AUG = AugmentConfig(enabled=False)


def _dm(root, **kw) -> ViewRichDataModule:
    kw = {"num_frames": 4, "height": 32, "width": 24, "batch_size": 2, "seed": 3, "log_preview": False,
          "batches_per_epoch": 3, "augment": NO_AUG, **kw}  # fmt: skip
    dm = ViewRichDataModule(root=root, synthesize_if_missing=False, **kw)
    dm.setup("fit")
    return dm


def _epochs(dm, loader, n=2) -> list[dict]:
    return [dm.on_before_batch_transfer(b, 0) for _ in range(n) for b in loader]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert list(x) == list(y)  # the same fields, in the same order
        for k in x:
            if torch.is_tensor(x[k]):
                assert y[k].dtype == x[k].dtype and y[k].is_contiguous() and torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


def _trained(dm, loader, n=2) -> list[dict]:
    """Model-ready batches, the loader's own batches dropped as in training (float copies kept)."""

    return [
        dm.on_after_batch_transfer(dm.on_before_batch_transfer(b, 0), 0) for _ in range(n) for b in loader
    ]


@pytest.mark.parametrize("task", ["3dimo", "hvg"])
def test_worker_batches_come_through_the_slots_bit_for_bit(toy_root, task):
    kw = {"task": task, "num_views": 2} if task == "hvg" else {"task": task, "cross_view": 0.5}
    plain = _dm(toy_root, **kw)
    expected = _epochs(plain, plain.train_dataloader(), 4)  # the stream goes on: epochs 0-3
    dm = _dm(toy_root, num_workers=2, persistent_workers=True, **kw)
    loader = dm.train_dataloader()
    assert isinstance(loader, SlotDataLoader) and isinstance(loader.collate_fn, BatchSlots)
    slots = loader.collate_fn
    # streamed as in training: every batch came through a slot (a worker owns prefetch_factor + 2 of
    # them), and each slot was freed once its batch was converted and dropped
    _same([plain.on_after_batch_transfer(b, 0) for b in expected[:6]], _trained(dm, loader))
    assert slots.received == 6 and not slots.taken.any()
    # batches kept (views of the slots hold them; a worker without a free slot uses the ordinary
    # transfer): still the same batches
    _same(expected[6:], _epochs(dm, loader))
    assert slots.received > 6
    # off: the ordinary DataLoader transfer, same batches
    off = _dm(toy_root, num_workers=2, shared_slots=False, **kw)
    off_loader = off.train_dataloader()
    assert type(off_loader) is DataLoader
    _same(expected[:6], _epochs(off, off_loader))


def test_a_held_batch_keeps_its_slot_until_dropped(toy_root):
    dm = _dm(toy_root, num_workers=1, persistent_workers=True, prefetch_factor=1)
    loader = dm.train_dataloader()
    slots = loader.collate_fn
    it = iter(loader)
    batch = next(it)
    target = batch["target"]
    assert slots.received == 1 and slots.taken.sum() >= 1
    slot = int(slots.taken.nonzero()[0])
    assert target.data_ptr() >= slots.arena[slot].data_ptr()  # a view of the slot, not a copy
    del batch
    assert slots.taken[slot] == 1  # `target` still views it
    del target
    assert slots.taken[slot] == 0
    list(it)


def test_taken_slots_fall_back_to_the_ordinary_transfer(toy_root):
    plain = _dm(toy_root, cross_view=0.5)
    expected = _epochs(plain, plain.train_dataloader(), 1)
    dm = _dm(toy_root, num_workers=2, persistent_workers=False, cross_view=0.5)
    loader = dm.train_dataloader()
    loader.collate_fn.taken.fill_(1)  # every slot busy (shared: the workers see it)
    _same(expected, _epochs(dm, loader, 1))
    assert loader.collate_fn.received == 0


def _fake_worker(monkeypatch, worker_id=0):
    monkeypatch.setattr(transfer, "get_worker_info", lambda: SimpleNamespace(id=worker_id, num_workers=1))


def _sample(T=2, H=4, W=6, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 256, (T, 3, H, W), dtype=torch.uint8, generator=g)
    return {
        "driving": target.permute(0, 1, 3, 2).flip(0),  # not contiguous
        "target": target,
        "valid": torch.rand(T, generator=g) > 0.5,
        "pose": torch.rand(T, 5, 3, dtype=torch.float64, generator=g),
        "empty": torch.zeros(0, 3),
        "draw": seed,
        "scale": 0.5 + seed,
        "name": f"s{seed}",
        "names": [f"a{seed}", "b"],
    }


def test_collate_packs_every_tensor_and_receive_restores_the_batch(monkeypatch):
    slots = BatchSlots(1 << 16, 1, 2)
    _fake_worker(monkeypatch)
    samples = [_sample(seed=i) for i in range(3)]
    sent = slots(samples)
    assert list(sent) == list(samples[0])
    packed = [k for k, v in sent.items() if isinstance(v, SlotField)]
    assert packed == ["driving", "target", "valid", "pose", "empty", "draw", "scale"]  # numbers too
    assert sent["name"] == ["s0", "s1", "s2"] and slots.taken.tolist() == [1, 0]
    through = pickle.loads(pickle.dumps(sent))  # what the main process unpickles: one armed ref
    assert through["target"].ref is through["pose"].ref and through["target"].ref.armed
    got = slots.receive(through)
    del through, sent
    _same([default_collate(samples)], [got])
    assert slots.received == 1 and slots.taken.tolist() == [1, 0]  # `got` views the slot
    del got
    assert slots.taken.tolist() == [0, 0]
    # a field that does not stack (shapes differ): default_collate's own error, no slot claimed
    odd = [_sample(seed=i) for i in range(2)]
    odd[1]["pose"] = odd[1]["pose"][:1]
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate(odd)
    with pytest.raises(RuntimeError, match="equal size"):
        slots(odd)
    assert slots.taken.tolist() == [0, 0]
    # a batch larger than a slot, or a worker with all its slots taken: the ordinary collate
    small = BatchSlots(64, 1, 1)
    assert not any(isinstance(v, SlotField) for v in small(samples).values())
    assert small.taken.tolist() == [0]
    slots.taken.fill_(1)
    assert not any(isinstance(v, SlotField) for v in slots(samples).values())
    assert slots.received == 1


def test_a_batch_dropped_unread_frees_its_slot(monkeypatch):
    slots = BatchSlots(1 << 16, 2, 1)
    _fake_worker(monkeypatch, worker_id=1)  # worker 1 owns slot 1
    sent = slots([_sample(seed=i) for i in range(2)])
    assert slots.taken.tolist() == [0, 1] and not sent["target"].ref.armed
    del sent  # the worker's own copy is not armed: dropping it there frees nothing
    assert slots.taken.tolist() == [0, 1]
    armed = pickle.loads(pickle.dumps(SlotRef(slots.token, 1)))
    assert armed.armed
    del armed  # e.g. a prefetched batch discarded when an epoch is abandoned
    assert slots.taken.tolist() == [0, 0]


class _Threads(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return decode_threads()


def test_decode_threads_per_process(monkeypatch):
    # the main process: FFmpeg's own frame+slice threading, what a plain PyAV loop gets with "AUTO"
    assert decode_threads() == ("AUTO", 0)
    cores = len(os.sched_getaffinity(0))
    got = [tuple(t) for t in DataLoader(_Threads(), batch_size=None, num_workers=2)]
    want = ("AUTO", cores // 2) if cores // 2 > 1 else ("SLICE", 1)
    assert got == [want, want]
    import torch.utils.data as tud

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(tud, "get_worker_info", lambda: SimpleNamespace(num_workers=1))
    assert decode_threads() == ("AUTO", 4)
    monkeypatch.setattr(tud, "get_worker_info", lambda: SimpleNamespace(num_workers=4))
    assert decode_threads() == ("SLICE", 1)  # one core per worker: one thread, no idle thread pool
