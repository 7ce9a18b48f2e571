"""Labelled grids and videos, logged through a real TensorBoardLogger."""

from __future__ import annotations

import io

import pytest
import torch

from dimo.viz import labelled_grid, labelled_video, log_image, log_video, to_unit


def test_labelled_grid_places_rows_columns_and_labels():
    a = torch.zeros(3, 3, 16, 16)
    b = torch.ones(3, 3, 16, 16)
    grid = labelled_grid([("driving", a), ("generated", b)], ["t=0", "t=1", "t=2"])
    assert grid.shape == (3, 12 + 2 * 16, 72 + 3 * 16)
    body = grid[:, 12:, 72:]
    assert torch.equal(body[:, :16], torch.zeros(3, 16, 48)) and torch.equal(
        body[:, 16:], torch.ones(3, 16, 48)
    )
    assert (grid[:, 12:, :72] < 0.5).any()  # row label text drawn in the margin
    assert (grid[:, :12, 72:] < 0.5).any()  # column label text drawn in the header
    with pytest.raises(ValueError, match="column labels"):
        labelled_grid([("x", a)], ["only one"])


def test_labelled_video_and_to_unit():
    v = to_unit(torch.linspace(-1, 1, 5 * 2 * 3 * 8 * 8).view(5, 2, 3, 8, 8))
    assert v.min() >= 0 and v.max() <= 1
    frames = labelled_video([("gen", v)], ["a", "b"])
    assert frames.shape == (5, 3, 12 + 8, 72 + 16)
    torch.testing.assert_close(frames[3, :, 12:, 72:80], v[3, 0])


def test_log_image_and_video_reach_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="viz", default_hp_metric=False)
    frames = torch.rand(4, 3, 20, 30)
    log_video(logger, "val/video", frames, step=7, fps=4)
    log_image(logger, "val/grid", frames[0], step=7)
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert set(acc.Tags()["images"]) == {"val/video", "val/grid"}
    event = acc.Images("val/video")[0]
    assert event.step == 7 and (event.width, event.height) == (30, 20)
    gif = Image.open(io.BytesIO(event.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == 4
