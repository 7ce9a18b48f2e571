"""Pixels from DataLoader workers through reusable shared-memory slots (dimo.data.transfer), and the
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
from dimo.data.transfer import PixelSlots, SlotDataLoader, SlotRef
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


@pytest.mark.parametrize("task", ["3dimo", "hvg"])
def test_worker_batches_come_through_the_slots_bit_for_bit(toy_root, task):
    kw = {"task": task, "num_views": 2} if task == "hvg" else {"task": task, "cross_view": 0.5}
    plain = _dm(toy_root, **kw)
    expected = _epochs(plain, plain.train_dataloader())
    dm = _dm(toy_root, num_workers=2, persistent_workers=True, **kw)
    loader = dm.train_dataloader()
    assert isinstance(loader, SlotDataLoader) and isinstance(loader.collate_fn, PixelSlots)
    assert set(loader.collate_fn.shapes) == (
        {"target", "reference"} if task == "hvg" else {"driving", "target", "reference"}
    )
    got = _epochs(dm, loader)
    _same(expected, got)
    # every batch's pixels came through a slot (each worker owns prefetch_factor + 1 of them, enough
    # for all its prefetched batches), and every slot was freed when its batch left the loader
    assert loader.collate_fn.received == len(got) == 6
    assert not loader.collate_fn.taken.any()
    # off: the ordinary DataLoader transfer, same batches
    off = _dm(toy_root, num_workers=2, shared_slots=False, **kw)
    off_loader = off.train_dataloader()
    assert type(off_loader) is DataLoader
    _same(expected, _epochs(off, off_loader))


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
        "driving": target.flip(0),
        "target": target,
        "reference": target[0].clone(),
        "x": torch.rand(3, generator=g),
        "name": f"s{seed}",
    }


def test_collate_fills_only_fitting_fields_and_receive_restores_the_batch(monkeypatch):
    slots = PixelSlots({"driving": (2, 3, 4, 6), "target": (2, 3, 4, 6), "reference": (3, 4, 6)}, 3, 1, 2)
    _fake_worker(monkeypatch)
    samples = [_sample(seed=i) for i in range(2)]  # 2 of 3 rows
    samples[1]["driving"] = samples[1]["driving"].float()  # float pixels (e.g. augmented): not in a slot
    sent = slots(samples)
    assert isinstance(sent["target"], SlotRef) and sent["reference"] is sent["target"]
    assert torch.is_tensor(sent["driving"]) and slots.taken.tolist() == [1, 0]
    through = pickle.loads(pickle.dumps(sent))  # what the main process unpickles: an armed ref
    got = slots.receive(through)
    _same([default_collate(samples)], [got])
    assert slots.taken.tolist() == [0, 0] and slots.received == 1
    # a worker's slots all taken: the ordinary collate, nothing claimed
    slots.taken.fill_(1)
    assert all(torch.is_tensor(v) for k, v in slots(samples).items() if k != "name")


def test_a_batch_dropped_unread_frees_its_slot(monkeypatch):
    slots = PixelSlots({"target": (2, 3, 4, 6)}, 2, 2, 1)
    _fake_worker(monkeypatch, worker_id=1)  # worker 1 owns slot 1
    sent = slots([_sample(seed=i) for i in range(2)])
    assert slots.taken.tolist() == [0, 1] and not sent["target"].armed
    del sent  # the worker's own copy is not armed: dropping it there frees nothing
    assert slots.taken.tolist() == [0, 1]
    armed = pickle.loads(pickle.dumps(SlotRef(slots.token, 1, 2)))
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
    cores = os.cpu_count() or 1
    got = [tuple(t) for t in DataLoader(_Threads(), batch_size=None, num_workers=2)]
    want = ("AUTO", cores // 2) if cores // 2 > 1 else ("SLICE", 1)
    assert got == [want, want]
    import torch.utils.data as tud

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(tud, "get_worker_info", lambda: SimpleNamespace(num_workers=1))
    assert decode_threads() == ("AUTO", 4)
    monkeypatch.setattr(tud, "get_worker_info", lambda: SimpleNamespace(num_workers=4))
    assert decode_threads() == ("SLICE", 1)  # one core per worker: one thread, no idle thread pool
