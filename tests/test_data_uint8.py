"""uint8 pixels from the datasets, float32 in [-1, 1] after the DataModule's ``on_after_batch_transfer``.

The expectations are computed here from independently decoded frames (``read_frames`` +
``x / 127.5 - 1``, the float pipeline the datasets used before): targets and references equal them
bit for bit; augmented driving frames are within 1/255 (the dataset augments in float, then rounds
to uint8); HVG frames are within 1/255 of the float pelvis-aligned warp (rounded to uint8 after the
warp) and equal to its rounding bit for bit, from files and from shards alike.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dimo.data.augment import AugmentConfig, DrivingAugment
from dimo.data.datamodule import ViewRichDataModule
from dimo.data.manifest import load_manifest
from dimo.data.pixels import PIXEL_KEYS, check_model_batch, to_model_batch
from dimo.data.video import read_frames

NO_AUG = AugmentConfig(enabled=False)
ONE_LEVEL = 1 / 255 + 1e-6  # half a uint8 step (0.5/255 in [0, 1]) is 1/255 in [-1, 1]; + float32 slack


def _dm(root, **kw) -> ViewRichDataModule:
    kw = {"num_frames": 4, "height": 32, "width": 32, "batch_size": 4, "seed": 1, "log_preview": False, **kw}
    return ViewRichDataModule(root=root, synthesize_if_missing=False, **kw)


def _decoded(rec, view: int, frames: list[int], size=(32, 32)) -> torch.Tensor:
    """The float pipeline: decode, (T, 3, H, W), ``x / 127.5 - 1``."""

    raw = read_frames(rec.path(rec.views[view].video), frames, size)
    return torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 127.5 - 1


def _target_key(key: str) -> tuple[str, int, list[int]]:
    clip, view, frames = key.split("|")[:3]
    return clip, int(view[1:]), [int(f) for f in frames[1:].split(",")]


def _through_the_hooks(dm, raw: dict) -> dict:
    assert all(raw[k].dtype == torch.uint8 for k in PIXEL_KEYS if k in raw), {k: raw[k].dtype for k in raw}
    batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(dict(raw), 0), 0)
    assert all(batch[k].dtype == torch.float32 for k in PIXEL_KEYS if k in batch)
    return batch


def _check_3dimo(batch: dict, records: dict, seeds: list[int] | None, augment: AugmentConfig | None) -> None:
    fresh = DrivingAugment(augment) if augment is not None else None
    for i, key in enumerate(batch["target_key"]):
        clip, view, frames = _target_key(key)
        rec = records[clip]
        target = _decoded(rec, view, frames)
        assert torch.equal(batch["target"][i], target)  # bit for bit
        assert torch.equal(batch["reference"][i], target[0])
        # the driving view: the target's (reconstruction) or another camera of the clip (cross-view)
        views = (
            [view]
            if batch["task"][i] == "reconstruction"
            else [v for v in range(len(rec.views)) if v != view]
        )
        matches = []
        for v in views:
            x = _decoded(rec, v, frames)
            if fresh is None:
                if torch.equal(batch["driving"][i], x):
                    matches.append(v)
                continue
            aug01 = fresh((x + 1) / 2, generator_seed=seeds[i])  # the float pipeline's augmentation
            want = aug01 * 2 - 1
            if (batch["driving"][i] - want).abs().max() <= ONE_LEVEL:
                # and exactly the float result rounded to the nearest uint8 level
                assert torch.equal(batch["driving"][i], (aug01 * 255).round() / 127.5 - 1)
                matches.append(v)
        assert len(matches) == 1, (key, batch["task"][i], matches)


def test_3dimo_files_uint8_from_workers_float_after_the_hook(toy_root, monkeypatch):
    seeds: list[int] = []
    forward = DrivingAugment.forward

    def spy(self, frames, generator_seed=None):  # records each sample's augmentation seed, in order
        seeds.append(generator_seed)
        return forward(self, frames, generator_seed)

    monkeypatch.setattr(DrivingAugment, "forward", spy)
    aug = AugmentConfig(perspective_p=1.0, jitter_p=1.0)
    records = {r.id: r for r in load_manifest(toy_root)[0]}
    dm = _dm(toy_root, cross_view=0.5, augment=aug)
    raw = next(iter(dm.train_dataloader()))
    assert len(seeds) == 4 and set(raw["task"]) == {"reconstruction", "cross_view"}
    batch = _through_the_hooks(dm, raw)
    _check_3dimo(batch, records, seeds, aug)
    # float in, float out: the conversion is idempotent, and the input batch is left as it was
    assert raw["driving"].dtype == torch.uint8 and to_model_batch(batch)["target"] is batch["target"]

    # worker processes send the same uint8 tensors
    workers = _dm(toy_root, cross_view=0.5, augment=aug, num_workers=2)
    raw2 = next(iter(workers.train_dataloader()))
    for k in PIXEL_KEYS:
        assert raw2[k].dtype == torch.uint8 and torch.equal(raw2[k], raw[k]), k

    # validation: no augmentation, every pixel bit for bit
    val = _dm(toy_root, cross_view=0.5, augment=aug, val_batches=1)
    _check_3dimo(_through_the_hooks(val, next(iter(val.val_dataloader()))), records, None, None)


def _hvg_identify(records: dict, batch: dict, i: int, T: int):
    """(record, views, frames) of HVG sample ``i``: frames from its joints3d, views from its R."""

    rec = records[batch["clip_id"][i]]
    from dimo.data.manifest import load_motion

    joints = load_motion(rec)["joints"]
    starts = [s for s in range(rec.num_frames - T + 1)
              if torch.equal(torch.from_numpy(joints[s : s + T]).float(), batch["joints3d"][i])]  # fmt: skip
    assert len(starts) == 1
    frames = list(range(starts[0], starts[0] + T))
    views = []
    for R in batch["R"][i]:
        found = [v for v, view in enumerate(rec.views)
                 if torch.equal(torch.from_numpy(np.array(view.cameras(rec.num_frames)[1][frames[0]])).float(), R)]  # fmt: skip
        assert len(found) == 1
        views.append(found[0])
    return rec, views, frames


def _hvg_float(
    rec, views: list[int], frames: list[int], joints3d: torch.Tensor, H: int, W: int
) -> torch.Tensor:
    """The float pipeline's HVG target: decoded views, pelvis-aligned warp in [0, 1] (V, T, 3, H, W)."""

    from dimo.data.align import _crop_size
    from dimo.geometry.alignment import apply_alignment, pelvis_alignment

    cams = [rec.views[v].cameras(rec.num_frames) for v in views]
    K, R, t = (torch.from_numpy(np.stack([c[j][frames[0]] for c in cams])).float() for j in range(3))
    video = np.stack([read_frames(rec.path(rec.views[v].video), frames) for v in views])  # (V, T, Hs, Ws, 3)
    video = torch.from_numpy(video).permute(0, 1, 4, 2, 3).float() / 255.0
    src = tuple(video.shape[-2:])
    al = pelvis_alignment(joints3d[0, 0], K, R, t, src, crop_size=_crop_size(*src, H, W), out_size=(H, W))
    return apply_alignment(video, al.affine, (H, W)).clamp(0, 1)


def _check_hvg(batch: dict, records: dict, H: int, W: int) -> None:
    for i in range(len(batch["clip_id"])):
        rec, views, frames = _hvg_identify(records, batch, i, batch["target"].shape[2])
        a = _hvg_float(rec, views, frames, batch["joints3d"][i], H, W)
        assert (batch["target"][i] - (a * 2 - 1)).abs().max() <= ONE_LEVEL  # the old float samples
        assert torch.equal(batch["target"][i], (a * 255).round() / 127.5 - 1)  # their rounding, exactly
        assert torch.equal(batch["reference"][i], batch["target"][i, 0, 0])


def test_hvg_files_uint8_then_float_within_one_level_of_the_float_warp(toy_root):
    records = {r.id: r for r in load_manifest(toy_root)[0]}
    dm = _dm(toy_root, task="hvg", num_views=3, batch_size=2, height=24, width=32, augment=NO_AUG)
    _check_hvg(_through_the_hooks(dm, next(iter(dm.train_dataloader()))), records, 24, 32)


def test_shards_uint8_then_float_equal_the_decoded_files(toy_root, tmp_path):
    pytest.importorskip("litdata")
    from dimo.data.shards import optimize_root
    from dimo.data.spec import SampleSpec

    records = {r.id: r for r in load_manifest(toy_root)[0]}
    out = tmp_path / "s3dimo"
    optimize_root([toy_root], str(out), SampleSpec("3dimo", 4, 1, 32, 32))
    dm = _dm(toy_root, shards=str(out), cross_view=0.5, augment=NO_AUG)
    raw = next(iter(dm.train_dataloader()))
    assert set(raw["task"]) == {"reconstruction", "cross_view"}
    _check_3dimo(_through_the_hooks(dm, raw), records, None, None)

    out = tmp_path / "shvg"
    optimize_root([toy_root], str(out), SampleSpec("hvg", 4, 1, 24, 32, num_views=3))
    dm = _dm(toy_root, shards=str(out), task="hvg", num_views=3, batch_size=2, height=24, width=32)
    _check_hvg(_through_the_hooks(dm, next(iter(dm.train_dataloader()))), records, 24, 32)


def test_models_refuse_uint8_pixels():
    from dimo.testing import hvg_batch, threedimo_batch, tiny_hvg_module, tiny_threedimo_module

    def raw(batch):  # what a loader gives: the float pixels back to uint8
        return {
            **batch,
            **{k: ((batch[k] + 1) * 127.5).round().to(torch.uint8) for k in PIXEL_KEYS if k in batch},
        }

    batch = raw(threedimo_batch(1, 5, 32, 32))
    with pytest.raises(TypeError, match="to_model_batch"):
        check_model_batch(batch)
    check_model_batch(to_model_batch(batch))
    with pytest.raises(TypeError, match="uint8"):
        tiny_threedimo_module()._losses(batch, torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="uint8"):
        tiny_hvg_module().conditioning(raw(hvg_batch(1, 2, 2)), torch.Generator().manual_seed(0))
