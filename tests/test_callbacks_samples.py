"""SampleLogger: when samples are logged, that they go through the logger's media API (the W&B-style
``log_image`` / ``log_video``), that a validation step's own samples are reused, and that videos are
also written as MP4; 3DiMo's and HVG's ``sample_media`` give what the callback logs."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from dimo.callbacks import SampleLogger
from dimo.data.video import probe
from dimo.testing import hvg_batch, threedimo_batch, tiny_hvg_module, tiny_threedimo_module, tiny_trainer


class MediaLogger(Logger):
    """A logger with W&B's media methods, recording what it is given."""

    def __init__(self, root) -> None:
        super().__init__()
        self.root, self.images, self.videos = root, [], []

    name = "media"
    version = 0

    @property
    def log_dir(self) -> str:
        return str(self.root)

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key, images, step=None) -> None:
        self.images.append((key, images, step))

    def log_video(self, key, videos, step=None, fps=None) -> None:
        self.videos.append((key, videos, step, fps))


class Recorder(LightningModule):
    """Linear model whose validation step returns a marked sample; ``sample_media`` records its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.calls: list[tuple[str, int, int, float | None]] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx):
        return {"generated": torch.full((1,), 10.0 * self.global_step + batch_idx)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def sample_media(self, batch, split, num_samples, generated=None):
        self.calls.append(
            (split, self.global_step, num_samples, None if generated is None else float(generated))
        )
        return {f"{split}/samples": torch.rand(3, 8, 12), f"{split}/samples_video": torch.rand(3, 3, 8, 12)}


def test_sample_logger_schedule_media_api_and_mp4(tmp_path):
    module, logger = Recorder(), MediaLogger(tmp_path)
    samples = SampleLogger(every_n_steps=2, num_samples=3, train_every_n_steps=3, fps=5)
    loader = DataLoader(torch.randn(8, 2), batch_size=2)
    trainer = tiny_trainer(
        tmp_path, logger=logger, callbacks=[samples], max_steps=4, val_check_interval=2,
        limit_val_batches=2, num_sanity_val_steps=1, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(module, loader, loader)
    # validation at steps 2 and 4, first batch only, the step's own sample reused; not in the sanity check;
    # training batches at step 3 (a multiple of 3), one sample
    assert module.calls == [("val", 2, 3, 20.0), ("train", 3, 1, None), ("val", 4, 3, 40.0)]
    assert [(k, s) for k, _, s in logger.images] == [
        ("val/samples", 2),
        ("train/samples", 3),
        ("val/samples", 4),
    ]
    key, images, step = logger.images[0]
    assert images[0].shape == (8, 12, 3)  # HWC for the media API
    key, videos, step, fps = logger.videos[0]
    assert (key, step, fps) == ("val/samples_video", 2, [5]) and videos[0].shape == (3, 3, 8, 12)
    assert videos[0].dtype.name == "uint8"
    mp4s = sorted(p.name for p in (tmp_path / "samples").glob("*.mp4"))
    assert mp4s == [
        "train_samples_video_step_0000003.mp4",
        "val_samples_video_step_0000002.mp4",
        "val_samples_video_step_0000004.mp4",
    ]
    assert probe(tmp_path / "samples" / mp4s[0]).num_frames == 3


def test_sample_logger_settings_are_checked():
    with pytest.raises(ValueError, match="every_n_steps"):
        SampleLogger(every_n_steps=-1)
    with pytest.raises(ValueError, match="num_samples"):
        SampleLogger(num_samples=0)


def test_threedimo_sample_media_shows_the_given_or_a_new_sample():
    torch.manual_seed(0)
    module = tiny_threedimo_module(sample_steps=1).eval()
    batch = threedimo_batch(2, 5, 32, 32)
    generated = torch.full_like(batch["target"], 1.0)  # white: what the validation step sampled
    media = module.sample_media(batch, "val", 2, generated=generated)
    grid, video = media["val/samples"], media["val/samples_video"]
    assert set(media) == {"val/samples", "val/samples_video"}
    # rows driving | generated | target per clip (6 rows of 32 px) below a header; 5 frame columns
    assert grid.shape[0] == 3 and grid.shape[1] > 6 * 32 and grid.shape[2] > 5 * 32
    assert video.shape[0] == 5 and video.shape[1] == 3
    # the given sample is shown, not a new one: row 2 (clip 0 generated) is white
    head = grid.shape[1] - 6 * 32
    assert torch.equal(grid[:, head + 32 : head + 64, -5 * 32 :], torch.ones(3, 32, 5 * 32))
    fresh = module.sample_media(batch, "val", 1)["val/samples"]
    assert fresh.shape[1] == head + 3 * 32
    assert not torch.equal(fresh[:, head + 32 : head + 64, -5 * 32 :], torch.ones(3, 32, 5 * 32))


def test_hvg_sample_media_rows_and_train_video():
    torch.manual_seed(0)
    module = tiny_hvg_module(sample_steps=1).eval()
    batch = hvg_batch(2, views=2, frames=2)
    media = module.sample_media(batch, "val", 1)
    assert set(media) == {"val/samples", "val/samples_video"}
    assert media["val/samples"].shape[1] > 5 * 32  # reference | normal | depth | generated | target
    train = module.sample_media(batch, "train", 1)["train/samples"]
    assert train.shape == (2, 3, 2 * 32, 4 * 32)  # (T, 3, V*H, [generated | target | normal | depth])
