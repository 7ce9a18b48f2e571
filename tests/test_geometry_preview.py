"""Smoke test of ``python -m dimo.cli geometry preview`` (tiny sizes)."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from dimo.cli import main
from dimo.commands.geometry import load_motion_joints


def _read_video(path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def test_preview_writes_png_and_mp4(tmp_path, capsys):
    out = tmp_path / "prev"
    args = ["geometry", "preview", "--out", str(out), "--size", "32", "--views", "3", "--frames", "5"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--trajectory", "arc", "--degrees", "45", "--direction", "left"])
    assert info.value.code == 0
    png = np.asarray(Image.open(out / "views.png"))
    assert png.shape == (4 * 32, 3 * 32, 3)
    rgb_row = png[:32]
    assert (rgb_row.reshape(-1, 3).std(0) > 5).all()  # a body was drawn, not a flat image
    frames = _read_video(out / "trajectory_arc.mp4")
    assert frames.shape == (5, 32, 96, 3)
    assert frames[:, :, 32:64].max() > 100  # the normal panel shows the body
    assert "The camera arcs 45 degrees to the left." in capsys.readouterr().out


def test_preview_with_motion_file(tmp_path, capsys):
    T = 3
    motion = tmp_path / "motion.npz"
    body = np.zeros((T, 63), dtype=np.float32)
    body[:, 15 * 3 + 2] = -1.0  # left shoulder (joint 16)
    np.savez(
        motion, global_orient=np.zeros((T, 3)), body_pose=body, left_hand_pose=np.zeros((T, 45)),
        right_hand_pose=np.zeros((T, 45)), transl=np.tile([1.0, 0.0, 0.0], (T, 1)),
    )  # fmt: skip
    joints = load_motion_joints(motion)
    assert joints.shape == (T, 55, 3)
    assert joints[0, 0, 0].item() == pytest.approx(1.0)  # transl applied
    assert joints[0, 20, 1] < joints[0, 16, 1] - 0.2  # the left arm hangs down
    out = tmp_path / "m"
    with pytest.raises(SystemExit) as info:
        main(
            [
                "geometry",
                "preview",
                "--motion",
                str(motion),
                "--out",
                str(out),
                "--size",
                "24",
                "--frames",
                "0",
            ]
        )
    assert info.value.code == 0 and (out / "views.png").is_file() and not list(out.glob("*.mp4"))


def test_preview_bad_motion_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["geometry", "preview", "--motion", str(tmp_path / "nope.npz"), "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "motion file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, poses=np.zeros((2, 3)))
    with pytest.raises(SystemExit):
        main(["geometry", "preview", "--motion", str(bad), "--out", str(tmp_path)])
    assert "global_orient" in capsys.readouterr().err
