"""3DiMo generation: pipeline maths, export round trip, CLI outputs and bad inputs (tiny preset, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dimo.data.video import read_frames, write_video

PROMPT = "Front view. The camera stays static."


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained-looking 3DiMo checkpoint, a reference PNG and a 13-frame driving MP4."""

    from PIL import Image

    from dimo.models.threedimo import ThreeDiMoModule
    from dimo.testing import save_module_checkpoint

    root = tmp_path_factory.mktemp("gen3dimo")
    torch.manual_seed(0)
    module = ThreeDiMoModule()
    with torch.no_grad():  # leave the zero-init: motion injection must matter in these tests
        for p in module.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = save_module_checkpoint(module, root / "model.ckpt")

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    frames = []
    for i in range(13):  # a moving blob on a gradient
        img = np.stack([xx * 8, yy * 8, np.full_like(xx, 60)], -1).astype(np.float64)
        img[(yy - 16) ** 2 + (xx - 6 - 2 * i) ** 2 < 30] = (250, 240, 30)
        frames.append(np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8))
    driving = write_video(root / "drive.mp4", np.stack(frames), fps=10)
    short = write_video(root / "short.mp4", np.stack(frames[:3]), fps=10)
    ref = root / "ref.png"
    Image.fromarray(frames[0]).save(ref)
    return {"root": root, "ckpt": ckpt, "driving": driving, "short": short, "reference": ref}


@pytest.fixture(scope="module")
def pipe(assets):
    from dimo.pipelines.threedimo import ThreeDiMoPipeline

    return ThreeDiMoPipeline.from_checkpoint(assets["ckpt"])


def _inputs(assets, frames: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    from dimo.pipelines.io import load_image, load_video

    ref = load_image(assets["reference"], (32, 32))
    drv, fps = load_video(assets["driving"], (32, 32), min_frames=5, max_frames=frames)
    assert fps == pytest.approx(10.0)
    return ref, drv


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_single_window_pipeline_equals_direct_flow_matching_sample(pipe, assets) -> None:
    """One window covering the video == plain sampling with the network on the whole latent video."""

    from dimo.diffusion.flow_matching import FlowMatching

    ref, drv = _inputs(assets, frames=9)
    out = pipe(ref, drv, PROMPT, num_inference_steps=3, window=9, generator=_gen(), progress=False)
    assert out.shape == (9, 3, 32, 32)

    with torch.no_grad():
        net, vae = pipe.net, pipe.vae
        text = pipe.text_encoder([PROMPT])
        ref_lat = vae.encode(ref[None, :, None])  # (1, 16, 1, 4, 4)
        z = net.encode_motion(drv[None])
        noise = torch.randn((1, 16, 3, 4, 4), generator=_gen())

        def velocity(x, t):
            f, h, w = net.transformer.patch_grid(x.shape)
            ts = (t / 1000.0 * 1000.0)[:, None, None].expand(-1, f, h * w).clone()
            ts[:, 0] = 0
            return net(x, ts.flatten(1), text, z, 9)

        lat = FlowMatching(shift=float(pipe.scheduler.config.shift)).sample(
            velocity, noise, 3, clamp=lambda x: torch.cat([ref_lat, x[:, :, 1:]], 2)
        )
        direct = vae.decode(lat)[0].transpose(0, 1)
    torch.testing.assert_close(out, direct, rtol=0, atol=1e-5)


def test_long_video_windows_cover_every_frame(pipe, assets) -> None:
    ref, drv = _inputs(assets)
    whole = pipe(ref, drv, PROMPT, num_inference_steps=2, window=13, generator=_gen(), progress=False)
    windowed = pipe(
        ref, drv, PROMPT, num_inference_steps=2, window=5, overlap=0, generator=_gen(), progress=False
    )
    wide = pipe(ref, drv, PROMPT, num_inference_steps=2, window=41, generator=_gen(), progress=False)
    assert whole.shape == windowed.shape == (13, 3, 32, 32)
    assert bool(torch.isfinite(windowed).all())
    torch.testing.assert_close(wide, whole, rtol=0, atol=0)  # a window larger than the video = one window
    assert not torch.equal(windowed, whole)  # windows really change what the network sees


def test_motion_and_guidance_change_the_output(pipe, assets) -> None:
    ref, drv = _inputs(assets, frames=9)
    kw = dict(num_inference_steps=2, progress=False)
    base = pipe(ref, drv, PROMPT, generator=_gen(), **kw)
    assert torch.equal(base, pipe(ref, drv, PROMPT, generator=_gen(), **kw))  # seeded
    assert not torch.equal(base, pipe(ref, drv.flip(0), PROMPT, generator=_gen(), **kw))
    assert not torch.equal(base, pipe(ref, drv, PROMPT, guidance_scale=3.0, generator=_gen(), **kw))
    assert not torch.equal(base, pipe(ref, drv, PROMPT, motion_guidance_scale=2.0, generator=_gen(), **kw))


def test_export_load_generate_matches_checkpoint(pipe, assets, tmp_path) -> None:
    from dimo.commands.export import main as export_main
    from dimo.pipelines.threedimo import ThreeDiMoPipeline

    out_dir = tmp_path / "exported"
    assert export_main([str(assets["ckpt"]), str(out_dir)]) == 0
    assert (out_dir / "model_index.json").is_file() and (out_dir / "net" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    card = (out_dir / "README.md").read_text()
    assert "ThreeDiMoPipeline.from_pretrained" in card and "2 layers" in card  # the tiny backbone's shape
    assert (
        "global step" in card and "`driving`" in card and "trust_remote_code=True" in card
    )  # training, inputs
    loaded = ThreeDiMoPipeline.from_pretrained(out_dir)
    ref, drv = _inputs(assets)
    kw = dict(num_inference_steps=2, window=5, overlap=1, progress=False)
    a = pipe(ref, drv, PROMPT, generator=_gen(3), **kw)
    b = loaded(ref, drv, PROMPT, generator=_gen(3), **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cli_generate_writes_video_and_sidecar(assets, tmp_path, capsys) -> None:
    from dimo.commands.export import main as export_main
    from dimo.commands.generate import main

    common = [
        "--model",
        "3dimo",
        "--reference",
        str(assets["reference"]),
        "--driving",
        str(assets["driving"]),
    ]
    common += ["--prompt", PROMPT, "--steps", "2", "--seed", "7", "--no-progress", "--window", "5"]
    out_a = tmp_path / "a" / "out.mp4"
    assert main([*common, "--checkpoint", str(assets["ckpt"]), "--out", str(out_a)]) == 0
    side = json.loads(out_a.with_suffix(".json").read_text())
    assert side["prompt"] == PROMPT and side["settings"]["seed"] == 7 and side["frames"] == 13
    assert side["fps"] == pytest.approx(10.0) and side["settings"]["height"] == 32
    frames_a = read_frames(out_a, range(13))
    assert frames_a.shape == (13, 32, 32, 3)

    export_main([str(assets["ckpt"]), str(tmp_path / "exp")])
    out_b = tmp_path / "b" / "out.mp4"
    assert main([*common, "--pretrained", str(tmp_path / "exp"), "--out", str(out_b)]) == 0
    np.testing.assert_array_equal(read_frames(out_b, range(13)), frames_a)
    assert sorted(p.name for p in out_a.parent.iterdir()) == ["out.json", "out.mp4"]


def test_driving_video_read_at_the_training_frame_stride(pipe, assets, tmp_path) -> None:
    """A model trained on every 2nd source frame reads driving videos the same way: frames 0, 2, 4, ...
    at half the fps, by default from the checkpoint's data settings, or as --frame-stride says."""

    import copy

    from dimo.commands.generate import main
    from dimo.pipelines.io import load_video

    every, fps = load_video(assets["driving"], (32, 32), min_frames=5)
    strided, fps2 = load_video(assets["driving"], (32, 32), min_frames=5, stride=2)
    assert strided.shape[0] == 7 and fps2 == pytest.approx(fps / 2)
    torch.testing.assert_close(strided, every[0::2], rtol=0, atol=0)
    with pytest.raises(Exception, match="has 13 frames, 5 at stride 3 .limited"):
        load_video(assets["driving"], (32, 32), min_frames=5, max_frames=4, stride=3)

    ckpt = torch.load(assets["ckpt"], map_location="cpu", weights_only=True)
    ckpt = copy.deepcopy(ckpt)
    ckpt["datamodule_hyper_parameters"] = {"height": 32, "width": 32, "num_frames": 5, "frame_stride": 2}
    strided_ckpt = tmp_path / "strided.ckpt"
    torch.save(ckpt, strided_ckpt)
    args = ["--model", "3dimo", "--reference", str(assets["reference"]), "--driving", str(assets["driving"])]
    args += ["--prompt", PROMPT, "--steps", "1", "--no-progress", "--checkpoint", str(strided_ckpt)]
    assert main([*args, "--out", str(tmp_path / "a.mp4")]) == 0
    side = json.loads((tmp_path / "a.json").read_text())
    read = (side["driving_frames_read"], side["driving_frame_stride"], side["settings"]["window"])
    assert read == (7, 2, 5)
    assert side["fps"] == pytest.approx(5.0)
    assert main([*args, "--frame-stride", "1", "--out", str(tmp_path / "b.mp4")]) == 0
    side = json.loads((tmp_path / "b.json").read_text())
    assert (side["driving_frames_read"], side["frames"], side["driving_frame_stride"]) == (13, 13, 1)
    assert main([*args, "--frame-stride", "0", "--out", str(tmp_path / "c.mp4")]) == 2
    assert not (tmp_path / "c.mp4").exists()


def _bad(assets, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "broken.png").write_text("not an image")
    (root / "broken.mp4").write_bytes(b"\x00" * 2048)
    hvg_ckpt = root / "hvg.ckpt"
    torch.save(
        {
            "state_dict": {"unet.conv_in.weight": torch.zeros(1)},
            "hyper_parameters": {"_class_path": "dimo.models.hvg.HVGModule"},
        },
        hvg_ckpt,
    )
    ok = {"--reference": str(assets["reference"]), "--driving": str(assets["driving"]), "--prompt": PROMPT}
    ok["--checkpoint"] = str(assets["ckpt"])

    def args(**change: str) -> list[str]:
        a = dict(ok, **{f"--{k.replace('_', '-')}": v for k, v in change.items()})
        if "--pretrained" in a:
            a.pop("--checkpoint")
        return ["--model", "3dimo", "--steps", "1", "--no-progress", *[x for kv in a.items() for x in kv]]

    return {
        "image": (args(reference=str(root / "broken.png")), "cannot read reference image"),
        "video": (args(driving=str(root / "broken.mp4")), "cannot read driving video"),
        "short": (args(driving=str(assets["short"])), "has 3 frames; at least 5 are needed"),
        "prompt": (args(prompt="  "), "empty prompt"),
        "other model": (args(checkpoint=str(hvg_ckpt)), "holds a hvg model; expected a 3dimo checkpoint"),
        "pretrained": (args(pretrained=str(root / "nowhere")), "pretrained folder not found"),
    }


@pytest.mark.parametrize("case", ["image", "video", "short", "prompt", "other model", "pretrained"])
def test_bad_input_one_clear_error_and_no_output(case, assets, tmp_path, capsys) -> None:
    from dimo.commands.generate import main

    argv, expected = _bad(assets, tmp_path)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main([*argv, "--out", str(out_dir / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err, err
    assert len(err.splitlines()) == 1
    assert list(out_dir.iterdir()) == []


def test_run_config_next_to_the_checkpoint_rebuilds_the_networks(assets, tmp_path) -> None:
    import shutil

    from dimo.pipelines.errors import GenerateError
    from dimo.pipelines.threedimo import ThreeDiMoPipeline

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = shutil.copy(assets["ckpt"], run / "checkpoints" / "last.ckpt")
    text = "text_encoder: {class_path: dimo.models.threedimo.WanTextEncoder, init_args: {max_length: 24}}"
    (run / "config.yaml").write_text(
        f"model:\n  class_path: dimo.models.threedimo.ThreeDiMoModule\n  init_args:\n    {text}\n"
    )
    assert ThreeDiMoPipeline.from_checkpoint(ckpt).text_encoder.max_length == 24
    bad = tmp_path / "bad.yaml"  # a different network width: strict loading must refuse it
    bad.write_text(
        "model:\n  class_path: dimo.models.threedimo.ThreeDiMoModule\n  init_args:\n"
        "    net: {class_path: dimo.models.threedimo.ThreeDiMoNet, init_args: {motion_dim: 32}}\n"
    )
    with pytest.raises(GenerateError, match="does not match the model built from its config"):
        ThreeDiMoPipeline.from_checkpoint(ckpt, bad)


def test_memory_options_run(assets) -> None:
    from dimo.pipelines.threedimo import ThreeDiMoPipeline

    pipe = ThreeDiMoPipeline.from_checkpoint(assets["ckpt"])
    ref, drv = _inputs(assets, frames=5)
    full = pipe(ref, drv, PROMPT, num_inference_steps=1, generator=_gen(), progress=False)
    pipe.set_precision("bfloat16")
    pipe.enable_frozen_cpu_offload()
    pipe.enable_vae_slicing()
    low = pipe(ref, drv, PROMPT, num_inference_steps=1, generator=_gen(), progress=False)
    assert low.shape == full.shape == (5, 3, 32, 32) and low.dtype == torch.float32
    assert bool(torch.isfinite(low).all()) and (low - full).abs().mean() < 0.1
    assert next(pipe.vae.parameters()).dtype == torch.bfloat16


def test_export_bad_input(assets, tmp_path, capsys) -> None:
    from dimo.commands.export import main as export_main

    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"backbone.weight": torch.zeros(1)}, "hyper_parameters": {}}, other)
    assert export_main([str(other), str(tmp_path / "a")]) == 2
    assert "holds an unknown model; expected a 3dimo" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert export_main([str(assets["ckpt"]), str(busy)]) == 2
    assert "is not an earlier export" in capsys.readouterr().err
    assert (busy / "keep.txt").read_text() == "mine" and not (tmp_path / "a").exists()
    assert export_main([str(tmp_path / "missing.ckpt"), str(tmp_path / "b")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_detected_hand_keypoints_place_the_hand_crops(pipe, assets, tmp_path) -> None:
    """joints2d from a detector change the hand crops, hence the output; the CLI records the detector."""

    from dimo.commands.generate import main
    from dimo.pipelines.errors import GenerateError
    from dimo.pose.toy_detector import PRESETS, ToyHeatmapNet, ToyKeypointDetector

    ref, drv = _inputs(assets, frames=9)
    kw = dict(num_inference_steps=2, progress=False)
    base = pipe(ref, drv, PROMPT, generator=_gen(), **kw)
    j2d = torch.full((9, 55, 2), 8.0)
    valid = torch.zeros(9, 55, dtype=torch.bool)
    valid[:, [20, 21, *range(25, 55)]] = True
    with_kp = pipe(ref, drv, PROMPT, generator=_gen(), joints2d=j2d, joints2d_valid=valid, **kw)
    assert not torch.equal(base, with_kp)
    with pytest.raises(GenerateError, match="joints2d must be"):
        pipe(ref, drv, PROMPT, generator=_gen(), joints2d=j2d[:, :22], **kw)
    torch.manual_seed(0)
    ToyKeypointDetector(ToyHeatmapNet(PRESETS["tiny"])).save_pretrained(tmp_path / "det")
    out = tmp_path / "out.mp4"
    args = ["--model", "3dimo", "--reference", str(assets["reference"]), "--driving", str(assets["driving"])]
    args += [
        "--prompt",
        PROMPT,
        "--steps",
        "1",
        "--no-progress",
        "--window",
        "5",
        "--checkpoint",
        str(assets["ckpt"]),
    ]
    assert main([*args, "--detector", str(tmp_path / "det"), "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["detector"] == str((tmp_path / "det").resolve())
    assert main([*args, "--detector", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.mp4")]) == 2
