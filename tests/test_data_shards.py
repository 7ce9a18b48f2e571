"""`data optimize` -> litdata shards -> the DataModule: same samples as from files, mixing, resume, skips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("litdata")

from dimo.data.augment import AugmentConfig  # noqa: E402
from dimo.data.datamodule import ViewRichDataModule  # noqa: E402
from dimo.data.dataset import SampleSpec  # noqa: E402
from dimo.data.manifest import load_manifest  # noqa: E402

NO_AUG = AugmentConfig(enabled=False)


def _dm(toy_root, shards, **kw):
    kw = {"num_frames": 4, "height": 32, "width": 32, "batch_size": 2, "seed": 0, "log_preview": False,
          "augment": NO_AUG, **kw}  # fmt: skip
    return ViewRichDataModule(root=toy_root, synthesize_if_missing=False, shards=shards, **kw)


@pytest.fixture(scope="module")
def shards_3dimo(toy_root, tmp_path_factory):
    from dimo.data.shards import optimize_root

    out = tmp_path_factory.mktemp("shards") / "s3dimo"
    summary = optimize_root([toy_root], str(out), SampleSpec("3dimo", 4, 1, 32, 32))
    return out, summary


def test_optimize_writes_every_window_and_samples_equal_the_file_reader(toy_root, shards_3dimo):
    from dimo.data.video import read_frames

    out, summary = shards_3dimo
    # 12-frame clips, windows of 4 every 4 frames: 3 windows per clip, 2 clips per source
    assert {s: r["items"] for s, r in summary["sources"].items()} == {"internet": 6, "ue5": 6, "multiview": 6}
    dm = _dm(toy_root, str(out), cross_view=0.5, batches_per_epoch=4)
    records = {r.id: r for r in load_manifest(toy_root)[0]}
    n = 0
    for batch in dm.train_dataloader():
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
        assert batch["target"].shape == (2, 4, 3, 32, 32) and batch["driving"].shape == (2, 4, 3, 32, 32)
        for i, key in enumerate(batch["target_key"]):
            clip, view, frames = key.split("|")[:3]
            frames = [int(f) for f in frames[1:].split(",")]
            rec = records[clip]
            raw = read_frames(rec.path(rec.views[int(view[1:])].video), frames, (32, 32))
            want = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 127.5 - 1
            assert torch.equal(batch["target"][i], want)  # bit-identical to decoding the file
            assert batch["clip_id"][i] == clip
        # labels: the toy clips are calibrated with 3D joints, so joints2d are projected as from files
        assert batch["joints2d_valid"].any() and batch["body_valid"].all()
        n += 1
    assert n == 4 and dm.skipped_draws == 0


def test_shards_follow_the_mixture_and_resume_exactly(toy_root, shards_3dimo, tmp_path):
    from tests.test_data_datamodule import _Recorder, _trainer

    out, _ = shards_3dimo
    dm = _dm(toy_root, str(out), weights={"multiview": 1.0}, batches_per_epoch=3)
    sources = {s for b in dm.train_dataloader() for s in b["source"]}
    assert sources == {"multiview"}

    def make():
        return _dm(toy_root, str(out), batches_per_epoch=50, cross_view=0.5)

    full = _Recorder(switch_at=3)
    _trainer(7).fit(full, datamodule=make())
    assert {s for s, *_ in full.seen[2 * 5 :]} == {"ue5"}  # the stage scheduler's door works on shards
    first = _Recorder(switch_at=3)
    trainer = _trainer(4)
    trainer.fit(first, datamodule=make())
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    second = _Recorder(switch_at=3)
    _trainer(7).fit(second, datamodule=make(), ckpt_path=ckpt)
    assert first.seen + second.seen == full.seen


def test_hvg_shards_hold_aligned_views(toy_root, tmp_path):
    from dimo.data.shards import optimize_root

    out = tmp_path / "hvg"
    summary = optimize_root([toy_root], str(out), SampleSpec("hvg", 4, 1, 32, 32, num_views=3))
    assert set(summary["sources"]) == {"ue5", "multiview"} or set(summary["sources"]) == {"multiview"}
    files = _dm(toy_root, None, task="hvg", num_views=3, batches_per_epoch=2)
    shard = _dm(toy_root, str(out), task="hvg", num_views=3, batches_per_epoch=2)
    a = files.on_before_batch_transfer(next(iter(files.train_dataloader())), 0)
    b = shard.on_before_batch_transfer(next(iter(shard.train_dataloader())), 0)
    assert {k: tuple(v.shape) for k, v in a.items() if torch.is_tensor(v)} == {
        k: tuple(v.shape) for k, v in b.items() if torch.is_tensor(v)
    }
    # rel_rot of view 0 is the identity, pelvis2d of every view at the centre at t = 0 (aligned)
    assert torch.allclose(b["rel_rot"][:, 0], torch.eye(3).expand(2, 3, 3), atol=1e-5)
    assert torch.allclose(b["pelvis2d"][:, :, 0], torch.full((2, 3, 2), 16.0), atol=1e-3)


def test_spec_mismatch_missing_shards_and_broken_chunks(toy_root, shards_3dimo, tmp_path):

    from dimo.data.shards import ShardError

    out, _ = shards_3dimo
    with pytest.raises(ShardError, match="were written for .*the DataModule asks for"):
        _dm(toy_root, str(out), num_frames=8).setup("fit")
    with pytest.raises(ShardError, match="no shards at"):
        _dm(toy_root, str(tmp_path / "nope")).setup("fit")
    from dimo.data.shards import optimize_root

    broken = tmp_path / "broken"
    optimize_root([toy_root], str(broken), SampleSpec("3dimo", 4, 1, 32, 32), chunk_bytes="40KB")
    chunks = sorted((broken / "multiview").glob("*.bin"))
    assert len(chunks) >= 3
    for chunk in chunks[1:]:  # every multiview item but those of the first chunk
        chunk.write_bytes(b"\0" * 10)
    dm = _dm(toy_root, str(broken), weights={"multiview": 1.0}, batches_per_epoch=4)
    batches = [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert len(batches) == 4 and dm.skipped_draws >= 1  # replaced and counted, not a crash
    assert dm.bad_clips and all(c.startswith("multiview[") for c in dm.bad_clips)
    # a sub-dataset that cannot be read at all is a setup problem (data/invalid_clips), not a crash
    for chunk in chunks[:1]:
        chunk.write_bytes(b"\0" * 10)
    dm = _dm(toy_root, str(broken), batches_per_epoch=2)
    dm.setup("fit")
    assert [p.clip_id for p in dm.problems] == ["multiview shards"] and dm.invalid_clips == 1


def test_cli_optimize(toy_root, tmp_path, capsys):
    from dimo.cli import main

    args = ["data", "optimize", str(toy_root), "--out", str(tmp_path / "s"), "--num-frames", "8"]
    args += ["--size", "32", "32"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "internet: 2 clips, 2 windows" in out
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "already holds shards" in err and err.count("\n") == 1
    assert np.isfinite(1.0)
