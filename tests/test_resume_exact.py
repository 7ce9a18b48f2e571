"""Exact resume: mid-epoch, with DataLoader workers and with bad clips (skip state in the checkpoint)."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_data_datamodule import NO_AUG, _dm, _Recorder, _trainer

from dimo.data.manifest import load_manifest


def _broken_copy(toy_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(toy_root, root)
    records, _ = load_manifest(root)
    bad = [r for r in records if r.source == "internet"][0]
    video = root / bad.views[0].video
    video.write_bytes(video.read_bytes()[:400])  # truncated: found only when decoded, at run time
    return root, bad.id


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_is_exact_with_workers_and_bad_clips(toy_root, tmp_path, workers):
    root, bad_id = _broken_copy(toy_root, tmp_path)

    def dm():
        # 3 batches per epoch: the checkpoint at step 4 is mid-epoch 2; 8 steps cross two boundaries
        return _dm(
            root, batch_size=2, batches_per_epoch=3, num_workers=workers, augment=NO_AUG,
            weights={"internet": 3.0, "ue5": 1.0}, cross_view=0.5,
        )  # fmt: skip

    full_dm = dm()
    full = _Recorder()
    _trainer(8).fit(full, datamodule=full_dm)
    assert len(full.seen) == 16
    assert full_dm.skipped_draws >= 1 and bad_id in full_dm.bad_clips  # the bad clip was met and replaced
    assert bad_id not in {c for _, c, _, _ in full.seen}

    first_dm, first = dm(), _Recorder()
    trainer = _trainer(4)
    trainer.fit(first, datamodule=first_dm)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["ViewRichDataModule"]
    assert state["skipped_draws"] == first_dm.skipped_draws and state["bad_clips"] == sorted(
        first_dm.bad_clips
    )

    second_dm, second = dm(), _Recorder()
    _trainer(8).fit(second, datamodule=second_dm, ckpt_path=ckpt)
    assert first.seen + second.seen == full.seen
    assert second_dm.skipped_draws == full_dm.skipped_draws  # the skip count continues, not restarts


def test_replacement_clip_does_not_depend_on_what_a_worker_saw_before(toy_root, tmp_path):
    from dimo.data.dataset import ClipDataset, SampleSpec
    from dimo.data.mixture import SampleKey

    root, bad_id = _broken_copy(toy_root, tmp_path)
    records, _ = load_manifest(root)
    pools = {s: [r for r in records if r.source == s] for s in ("internet", "ue5", "multiview")}
    index = [r.id for r in pools["internet"]].index(bad_id)
    key = SampleKey(0, 0, "internet", index, "reconstruction", 7)
    fresh = ClipDataset(pools, SampleSpec(num_frames=4, height=32, width=32))
    warm = ClipDataset(pools, SampleSpec(num_frames=4, height=32, width=32))
    warm.bad[("internet", index)] = "seen before"
    a, b = fresh[key], warm[key]
    assert a["clip_id"] == b["clip_id"] != bad_id
    assert a["_skipped"] == b["_skipped"] == 1 and a["_bad"] == b["_bad"] == bad_id
    assert torch.equal(a["target"], b["target"])
