"""ViewRichDataModule: the sample contract, workers, bad clips, checkpoints and run-time mixing."""

from __future__ import annotations

import json
import shutil

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from dimo.data.augment import AugmentConfig
from dimo.data.datamodule import ViewRichDataModule
from dimo.data.manifest import MANIFEST_NAME, load_manifest
from dimo.testing import tiny_trainer

NO_AUG = AugmentConfig(enabled=False)


def _dm(root, **kw) -> ViewRichDataModule:
    kw.setdefault("num_frames", 4)
    kw.setdefault("height", 32)
    kw.setdefault("width", 32)
    kw.setdefault("batch_size", 2)
    kw.setdefault("seed", 0)
    kw.setdefault("log_preview", False)
    return ViewRichDataModule(root=root, synthesize_if_missing=False, **kw)


def _first_batch(dm: ViewRichDataModule) -> dict:
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)  # float pixels, as in fit


def test_3dimo_batch_matches_the_contract(toy_root):
    from dimo.geometry.cameras import project

    dm = _dm(toy_root, batch_size=4, weights={"internet": 1}, augment=NO_AUG, frame_stride=2)
    b = _first_batch(dm)
    B, T, H, W = 4, 4, 32, 32
    shapes = {
        "driving": (B, T, 3, H, W),
        "target": (B, T, 3, H, W),
        "reference": (B, 3, H, W),
        "body_pose": (B, T, 21, 3),
        "hand_pose": (B, T, 30, 3),
        "body_valid": (B, T),
        "hand_valid": (B, T, 2),
        "joints2d": (B, T, 55, 2),
        "joints2d_valid": (B, T, 55),
    }
    for key, shape in shapes.items():
        assert tuple(b[key].shape) == shape, key
        assert b[key].dtype == (torch.bool if key.endswith("valid") else torch.float32), key
    assert not any(k.startswith("_") for k in b)
    assert b["target"].min() >= -1 and b["target"].max() <= 1 and b["target"].std() > 0.05
    assert torch.equal(b["reference"], b["target"][:, 0])
    assert torch.equal(b["driving"], b["target"])  # reconstruction without augmentation
    assert b["body_valid"].all() and b["hand_valid"].all() and b["joints2d_valid"].all()
    assert set(b["task"]) == {"reconstruction"} and set(b["source"]) == {"internet"}
    assert all(p.endswith(".") and ". The camera " in p for p in b["prompt"])
    # labels are the clip's own: pose of the sampled frames, joints2d = projection of its joints
    records = {r.id: r for r in load_manifest(toy_root)[0]}
    from dimo.data.manifest import load_motion

    rec = records[b["clip_id"][0]]
    motion = load_motion(rec)
    T_all = torch.from_numpy(motion["body_pose"])
    starts = [s for s in range(rec.num_frames - 6) if torch.equal(T_all[s : s + 7 : 2], b["body_pose"][0])]
    assert len(starts) == 1
    frames = list(range(starts[0], starts[0] + 7, 2))
    K, R, t = (torch.from_numpy(a[frames].copy()).float() for a in rec.views[0].cameras(rec.num_frames))
    uv, _ = project(torch.from_numpy(motion["joints"][frames]), K, R, t)  # stored 32x32 = sample 32x32
    torch.testing.assert_close(b["joints2d"][0], uv, atol=1e-3, rtol=0)


def test_cross_view_and_augmentation(toy_root):
    dm = _dm(
        toy_root,
        batch_size=4,
        weights={"ue5": 1, "multiview": 1},
        cross_view=1.0,
        augment=AugmentConfig(perspective_p=1.0, jitter_p=1.0),
    )
    b = _first_batch(dm)
    assert set(b["task"]) == {"cross_view"}
    assert not torch.equal(b["driving"], b["target"])
    assert b["driving"].min() >= -1 and b["driving"].max() <= 1
    assert torch.equal(b["reference"], b["target"][:, 0])  # the target side is never augmented


def test_hvg_batch_matches_the_contract(toy_root):
    from dimo.geometry.cameras import project

    dm = _dm(toy_root, task="hvg", num_views=3, batch_size=2, height=24, width=32)
    b = _first_batch(dm)
    B, V, T = 2, 3, 4
    assert tuple(b["target"].shape) == (B, V, T, 3, 24, 32)
    assert tuple(b["reference"].shape) == (B, 3, 24, 32) and torch.equal(b["reference"], b["target"][:, 0, 0])
    assert tuple(b["K"].shape) == (B, V, 3, 3) and tuple(b["t"].shape) == (B, V, 3)
    assert tuple(b["joints3d"].shape) == (B, T, 55, 3) and tuple(b["pelvis2d"].shape) == (B, V, T, 2)
    assert set(b["source"]) == {"multiview"} and set(b["task"]) == {"hvg"}
    torch.testing.assert_close(b["rel_rot"][:, 0], torch.eye(3).expand(B, 3, 3), atol=1e-5, rtol=0)
    # aligned: the first frame's pelvis sits at the image centre in every view ...
    torch.testing.assert_close(
        b["pelvis2d"][:, :, 0], torch.tensor([16.0, 12.0]).expand(B, V, 2), atol=1e-3, rtol=0
    )
    # ... and K, R, t are the aligned cameras: they project the joints onto pelvis2d
    pelvis = b["joints3d"][:, None, :, 0].expand(B, V, T, 3)
    uv, _ = project(pelvis, b["K"], b["R"], b["t"])
    torch.testing.assert_close(uv, b["pelvis2d"], atol=1e-3, rtol=0)


def test_workers_give_the_same_batches(toy_root):
    def batches(workers):
        dm = _dm(toy_root, num_workers=workers, persistent_workers=True, batches_per_epoch=3, cross_view=0.5)
        dm.setup("fit")
        return [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]

    a, b = batches(0), batches(2)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["clip_id"] == y["clip_id"] and x["task"] == y["task"]
        assert torch.equal(x["driving"], y["driving"]) and torch.equal(x["target"], y["target"])


class _Capture(Logger):
    def __init__(self):
        super().__init__()
        self.metrics = []

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return "0"

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class _Recorder(L.LightningModule):
    """Records what it is fed; one parameter so the optimiser has something to do."""

    def __init__(self, switch_at: int | None = None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []
        self.switch_at = switch_at

    def on_train_batch_start(self, batch, batch_idx):
        if self.switch_at is not None and self.global_step == self.switch_at:  # a stage scheduler's call
            self.trainer.datamodule.set_mixture({"ue5": 1.0}, 1.0)

    def training_step(self, batch, batch_idx):
        self.seen += [
            (s, c, t, float(x.sum()))
            for s, c, t, x in zip(batch["source"], batch["clip_id"], batch["task"], batch["target"])
        ]
        return (self.w * batch["target"].mean()).sum() + self.w.pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(max_steps, logger=False, **kw):
    return tiny_trainer(
        devices=1, max_steps=max_steps, logger=logger, enable_checkpointing=False, num_sanity_val_steps=0,
        limit_val_batches=0, log_every_n_steps=1, **kw,
    )  # fmt: skip


def test_bad_clips_are_skipped_counted_and_logged(toy_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(toy_root, root)
    records, _ = load_manifest(root)
    by_source = {s: [r for r in records if r.source == s] for s in ("internet", "ue5", "multiview")}
    truncated, no_motion, corrupt = by_source["internet"][0], by_source["ue5"][0], by_source["multiview"][0]
    video = root / truncated.views[0].video
    video.write_bytes(video.read_bytes()[:400])  # truncated MP4
    (root / no_motion.motion.file).unlink()  # missing motion file
    (root / corrupt.motion.file).write_bytes(b"not an npz")  # corrupt motion file
    with (root / MANIFEST_NAME).open("a") as fh:
        fh.write(json.dumps({"id": "half_a_record", "source": "ue5"}) + "\n")

    dm = _dm(root, batch_size=2, batches_per_epoch=5)
    model, logger = _Recorder(), _Capture()
    _trainer(5, logger=logger).fit(model, datamodule=dm)
    assert len(model.seen) == 10  # the epoch did not die
    seen_ids = {c for _, c, _, _ in model.seen}
    assert not seen_ids & {truncated.id, no_motion.id, corrupt.id}
    assert {p.clip_id for p in dm.problems} == {no_motion.id, "half_a_record"}  # found at setup
    assert dm.invalid_clips == 2
    assert dm.skipped_draws >= 1  # the truncated/corrupt ones were met and replaced at run time
    logged = [m for _, m in logger.metrics if "data/skipped" in m]
    assert len(logged) == 5 and all(m["data/invalid_clips"] == 2 for m in logged)
    assert logged[-1]["data/skipped"] == dm.skipped_draws


def test_a_fully_broken_source_falls_back_to_the_others(toy_root, tmp_path):
    from dimo.data.dataset import ClipDataset, SampleSpec
    from dimo.data.mixture import SampleKey

    root = tmp_path / "broken"
    shutil.copytree(toy_root, root)
    records, _ = load_manifest(root)
    for rec in records:
        if rec.source == "internet":
            (root / rec.views[0].video).write_bytes(b"")
    pools = {s: [r for r in records if r.source == s] for s in ("internet", "ue5", "multiview")}
    ds = ClipDataset(pools, SampleSpec(num_frames=4, height=32, width=32))
    sample = ds[SampleKey(0, 0, "internet", 0, "reconstruction", 123)]
    assert sample["source"] != "internet" and sample["_skipped"] == 2
    assert len(ds.bad) == 2


def test_resume_from_checkpoint_continues_the_stream(toy_root, tmp_path):
    def dm():
        return _dm(toy_root, batch_size=2, batches_per_epoch=50, cross_view=0.5, augment=NO_AUG)

    full = _Recorder(switch_at=3)
    _trainer(7).fit(full, datamodule=dm())
    # the weights changed at step 3 reach the model after the loader's one-batch lookahead, for good
    assert {s for s, *_ in full.seen[2 * 5 :]} == {"ue5"}
    assert {s for s, *_ in full.seen[:6]} != {"ue5"}

    first = _Recorder(switch_at=3)
    trainer = _trainer(4)
    trainer.fit(first, datamodule=dm())
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    assert "mixture" in torch.load(ckpt, weights_only=False)["ViewRichDataModule"]
    second = _Recorder(switch_at=3)
    _trainer(7).fit(second, datamodule=dm(), ckpt_path=ckpt)
    assert first.seen + second.seen == full.seen


def test_validation_keys_survive_a_checkpoint_written_after_a_mixture_switch(toy_root):
    """The validation set is drawn from the configured law, not from the restored stream: a checkpoint
    written after a stage switch (the mixture's history truncated to the new law) once made
    ``validate --ckpt_path`` and resumed stages score other clips than training did."""

    trained = _dm(toy_root, weights={"internet": 1.0}, cross_view=0.0, val_batches=3)
    trained.setup("fit")
    keys = trained.val_keys()
    assert {k.source for k in keys} == {"internet"}
    loader = iter(trained.train_dataloader())
    for _ in range(3):
        trained.on_before_batch_transfer(next(loader), 0)
    trained.set_mixture({"ue5": 1.0, "multiview": 1.0}, 0.5)  # the scheduler's stage switch
    for _ in range(2):
        trained.on_before_batch_transfer(next(loader), 0)
    state = trained.state_dict()
    assert all(entry[1]["internet"] == 0.0 for entry in state["mixture"]["history"])  # stage 1's law is gone

    restored = _dm(toy_root, weights={"internet": 1.0}, cross_view=0.0, val_batches=3)
    restored.setup("validate")
    restored.load_state_dict(state)
    assert restored.val_keys() == keys


def test_missing_root_is_synthesized_or_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="dimo.cli data synth"):
        ViewRichDataModule(root=tmp_path / "none", synthesize_if_missing=False).setup("fit")
    # no silent toy data: the default synthesises only at the built-in toy root data/toy
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "data" / "toyy"
    with pytest.raises(FileNotFoundError, match=f"data root {typo} does not exist"):
        ViewRichDataModule(root=typo).setup("fit")
    assert not typo.exists()  # nothing was written there
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no manifest.jsonl"):
        ViewRichDataModule(root=tmp_path / "empty").prepare_data()
    assert not any((tmp_path / "empty").iterdir())
    with pytest.raises(FileNotFoundError, match="extra_roots"):
        ViewRichDataModule(
            root=tmp_path / "e", extra_roots=[typo], synthesize_if_missing=False
        ).prepare_data()
    from dimo.data.datamodule import is_toy_root

    assert is_toy_root("data/toy") and is_toy_root(tmp_path / "data" / "toy") and not is_toy_root(typo)


def test_bad_config_is_a_clear_error(toy_root):
    with pytest.raises(ValueError, match="unknown sources"):
        _dm(toy_root, weights={"tiktok": 1})
    with pytest.raises(ValueError, match="augment.hue"):
        AugmentConfig(hue=0.9)
    dm = _dm(toy_root, num_frames=40)  # longer than every clip: all skipped, clear error
    with pytest.raises(RuntimeError, match="no usable clips"):
        dm.setup("fit")


@pytest.mark.parametrize("task", ["3dimo", "hvg"])
def test_first_batch_grid_is_logged_to_tensorboard(toy_root, tmp_path, task):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dm = _dm(toy_root, task=task, num_views=2, batch_size=2, batches_per_epoch=2)
    dm.log_preview = True
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    _trainer(2, logger=logger).fit(_Recorder(), datamodule=dm)
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0}).Reload()
    images = events.Images("data/batch")
    assert len(images) == 1  # once, at the first batch
    # 2 rows (items) for 3DiMo: 4 driving + 4 target + reference tiles of 32 px, 2 px separators
    # 4 rows (items x views) for HVG: 4 frames + 4 depth + 4 normal tiles
    width, height = (9 * 34 - 2, 2 * 34 - 2) if task == "3dimo" else (12 * 34 - 2, 4 * 34 - 2)
    assert (images[0].width, images[0].height) == (width, height)
    assert "data/skipped" in events.Tags()["scalars"]


def test_signature_is_a_config_schema(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ViewRichDataModule, "data")
    cfg = parser.parse_args(
        [
            "--data.task=hvg",
            "--data.augment.hue=0.1",
            "--data.synth.num_ue5=1",
            "--data.weights={multiview: 2.0}",
        ]
    )
    dm = parser.instantiate_classes(cfg).data
    assert dm.task == "hvg" and dm.augment.hue == 0.1 and dm.synth.num_ue5 == 1
    with pytest.raises(Exception, match="task"):
        parser.parse_args(["--data.task=sora"])
    with pytest.raises(Exception, match="augment"):
        parser.parse_args(["--data.augment.wobble=1"])
