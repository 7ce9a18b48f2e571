"""`data import`: inputs built here in the layouts users have (estimator npz, detector JSON, phone
videos, calibrated captures, MVHumanNet), checked through the manifest, validation and a batch."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from dimo.data.manifest import load_manifest, load_motion
from dimo.data.validate import validate_root

T = 12


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Frame i: grey level 20 + 15 i, with a white 6x6 marker in the stored top-left corner."""

    f = np.stack([np.full((h, w, 3), 20 + 15 * i, np.uint8) for i in range(t)])
    f[:, :6, :6] = 255
    return f


def _write(path: Path, frames: np.ndarray, pts=None, rotate=None, rate=12) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if rotate:
            s.set_display_rotation(rotate)
        for i, f in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(f, format="rgb24")
            fr.pts = i if pts is None else pts[i]
            c.mux(s.encode(fr))
        c.mux(s.encode())
    return path


def _estimator_npz(path: Path, n: int, rng, **extra) -> dict[str, np.ndarray]:
    """What CameraHMR/SMPLer-X-style tools save: flat (T, 63)/(T, 45) poses, betas (1, 10), a focal."""

    data = {
        "global_orient": rng.normal(0, 0.2, (n, 3)),
        "body_pose": rng.normal(0, 0.2, (n, 63)),
        "left_hand_pose": rng.normal(0, 0.2, (n, 45)),
        "right_hand_pose": rng.normal(0, 0.2, (n, 45)),
        "betas": rng.normal(0, 1, (1, 10)),
        "transl": np.tile([0.0, 0.2, 3.0], (n, 1)) + rng.normal(0, 0.01, (n, 3)),
        "focal_length": np.array(90.0),
        **extra,
    }
    np.savez(path, **data)
    return data


def _dwpose_json(path: Path, n: int, rng) -> np.ndarray:
    kp = rng.uniform(0, 40, (n, 133, 2))
    entries = []
    for i in range(n):
        other = {"keypoints": (kp[i] * 0 + 5).tolist(), "keypoint_scores": [0.1] * 133}  # a bystander
        main = {"keypoints": kp[i].tolist(), "keypoint_scores": [0.9] * 133}
        entries.append({"frame_id": i, "instances": [other, main]})
    path.write_text(json.dumps(entries))
    return kp


def _openpose_dir(folder: Path, n: int) -> np.ndarray:
    folder.mkdir()
    body25 = np.zeros((n, 25, 3))
    body25[..., 0] = np.arange(25)[None] + np.arange(n)[:, None] * 100  # x encodes (frame, joint)
    body25[..., 1] = 7.0
    body25[..., 2] = 0.8
    for i in range(n):
        person = {"pose_keypoints_2d": body25[i].reshape(-1).tolist(),
                  "hand_left_keypoints_2d": [1.0, 2.0, 0.5] * 21, "hand_right_keypoints_2d": []}  # fmt: skip
        (folder / f"c_{i:012d}_keypoints.json").write_text(json.dumps({"version": 1.3, "people": [person]}))
    return body25


@pytest.fixture(scope="module")
def videos_src(tmp_path_factory):
    rng = np.random.default_rng(0)
    src = tmp_path_factory.mktemp("videos")
    _write(src / "a.mp4", _frames(T, 32, 48))
    est = _estimator_npz(src / "a.smplx.npz", T, rng)
    (src / "a.prompt.txt").write_text("Front view. The camera remains static.\n")
    kp = _dwpose_json(src / "a.keypoints.json", T, rng)
    # a phone clip: variable frame rate and a 90-degree display rotation
    _write(src / "phone.mp4", _frames(9, 32, 48), pts=[0, 1, 3, 4, 6, 9, 10, 11, 14], rotate=90)
    _write(src / "b.mp4", _frames(T, 32, 48))
    _estimator_npz(src / "b.smplx.npz", T - 2, rng)  # a fit with fewer frames than the video
    sub = src / "more"
    sub.mkdir()
    _write(sub / "c.mp4", _frames(T, 32, 48))
    body25 = _openpose_dir(sub / "c.openpose", T)
    # PCA hands (6 per hand), missed detections as NaN, fits on a subset of frames
    d = _estimator_npz(sub / "c.smplx.npz", 8, rng, left_hand_pose=np.zeros((8, 6)), right_hand_pose=np.zeros((8, 6)),
                       frame_ids=np.array([0, 1, 2, 3, 5, 6, 7, 8]))  # fmt: skip
    d["body_pose"][2] = np.nan
    np.savez(sub / "c.smplx.npz", **d)
    return {"src": src, "est": est, "kp": kp, "body25": body25}


def test_import_videos_converts_estimator_outputs_keypoints_and_phone_clips(videos_src, tmp_path):
    from dimo.data.datamodule import ViewRichDataModule
    from dimo.data.importers import import_videos
    from dimo.data.keypoints import load_keypoints2d

    out = tmp_path / "root"
    report = import_videos(
        videos_src["src"], out, prompt_default="Front view. The camera is handheld with slight shaking."
    )
    ids = sorted(r.id for r in report.records)
    assert ids == ["a", "more__c", "phone"]
    # the too-short fit is reported with its reason, naming the input
    assert [(i, "the motion has 10 frames, the video 12" in r) for i, r in report.skipped] == [
        ("b.mp4", True)
    ]
    assert validate_root(out).ok
    saved = json.loads((out / "import_report.json").read_text())
    assert saved["skipped"][0]["input"] == "b.mp4" and saved["clips"] == ids

    records = {r.id: r for r in load_manifest(out)[0]}
    a = records["a"]
    assert a.views[0].camera_prompt == "Front view. The camera remains static."  # sidecar beats default
    assert records["phone"].views[0].camera_prompt.startswith("Front view. The camera is handheld")
    # camera-frame fit: R = I, t = 0, K from the focal length and the image centre (48 wide, 32 high)
    np.testing.assert_allclose(a.views[0].K, [[90, 0, 24], [0, 90, 16], [0, 0, 1]])
    np.testing.assert_allclose(a.views[0].R, np.eye(3))
    m = load_motion(a)
    est = videos_src["est"]
    np.testing.assert_allclose(m["body_pose"], est["body_pose"].reshape(T, 21, 3), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m["hand_pose"][:, :15], est["left_hand_pose"].reshape(T, 15, 3), atol=1e-6)
    np.testing.assert_allclose(m["hand_pose"][:, 15:], est["right_hand_pose"].reshape(T, 15, 3), atol=1e-6)
    np.testing.assert_allclose(m["betas"], est["betas"][0], atol=1e-6)
    assert (a.motion.body, a.motion.hands, a.motion.joints3d) == ("pseudo", "pseudo", "missing")
    kp, sc = load_keypoints2d(a.path(a.views[0].keypoints2d), T)
    np.testing.assert_allclose(kp, videos_src["kp"], atol=1e-4)  # the confident person, not the bystander
    assert np.allclose(sc, 0.9)

    # the phone clip: all 9 decoded frames kept in decode order, constant rate, turned upright
    from dimo.data.video import inspect_video, read_frames

    phone = records["phone"]
    facts = inspect_video(phone.path(phone.views[0].video))
    assert (facts.num_frames, facts.rotation, facts.index_problem) == (9, 0.0, None)
    assert (phone.height, phone.width) == (48, 32)  # 90 degrees: portrait
    frames = read_frames(phone.path(phone.views[0].video), range(9))
    levels = frames[:, 20:, 10:].reshape(9, -1).mean(1)
    np.testing.assert_allclose(levels, 20 + 15 * np.arange(9), atol=4)
    # 90 degrees counter-clockwise: the stored top-left marker is now bottom-left
    assert frames[0, -4:, :4].mean() > 200 and frames[0, :4, :4].mean() < 100
    assert any("re-encoded" in n and "variable frame rate" in n for c, n in report.notes if c == "phone")

    c = records["more__c"]
    mc = load_motion(c)
    assert c.motion.hands == "missing"  # PCA hands cannot be converted without the licensed basis
    assert mc["body_valid"].tolist() == [True, True, False, True, False, True, True, True, True] + [False] * 3
    assert any("PCA" in n for cid, n in report.notes if cid == "more__c")
    kp, sc = load_keypoints2d(c.path(c.views[0].keypoints2d), T)
    body25 = videos_src["body25"]
    # COCO left shoulder (5) is BODY_25 joint 5, COCO right hip (12) is BODY_25 joint 9, left big toe (17) is 19
    np.testing.assert_allclose(kp[:, [5, 12, 17], 0], body25[:, [5, 9, 19], 0])
    assert np.allclose(kp[:, 91:112], [1.0, 2.0]) and np.allclose(sc[:, 112:], 0)

    # and a batch can be drawn from what was imported
    dm = ViewRichDataModule(
        root=out, num_frames=4, height=32, width=32, batch_size=3, weights={"internet": 1.0}
    )
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["target"].shape == (3, 4, 3, 32, 32) and dm.invalid_clips == 0
    # no 3D joints without a body model: the imported 2D keypoints place the hand crops (docs/data.md)
    assert batch["joints2d_valid"].any()
    assert not torch.isnan(batch["body_pose"]).any()


def test_import_videos_reports_instead_of_fixing_and_refuses_pickles(videos_src, tmp_path):
    from dimo.data.importers import ImportError_, import_videos

    src = tmp_path / "src"
    shutil.copytree(videos_src["src"], src)
    (src / "a.smplx.npz").rename(src / "a.smplx.pkl")
    report = import_videos(src, tmp_path / "out", fix="never")
    reasons = dict(report.skipped)
    assert "variable frame rate" in reasons["phone.mp4"] and "display rotation 90" in reasons["phone.mp4"]
    assert "pickle-based files are not read" in reasons["a.mp4"]
    with pytest.raises(ImportError_, match="already has manifest.jsonl"):
        import_videos(src, tmp_path / "out")
    with pytest.raises(ImportError_, match="video folder .*nope does not exist"):
        import_videos(tmp_path / "nope", tmp_path / "out2")


def test_captioner_folder_missing_is_a_clear_error(tmp_path):
    from dimo.data.importers import ImportError_, VLMCaptioner, clean_prompt

    with pytest.raises(ImportError_, match="captioner folder .*qwen not found"):
        VLMCaptioner(tmp_path / "qwen")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportError_, match="no config.json"):
        VLMCaptioner(tmp_path / "empty")
    answer = 'Sure! "Back-left view. The camera pans 20 degrees to the right." It is smooth.'
    assert clean_prompt(answer) == "Back-left view. The camera pans 20 degrees to the right."
    assert clean_prompt("The video shows a person dancing.") is None
    assert clean_prompt("trn<\ufffdp ss>c~ view. camera") is None


# ---- the camera captioner on a tiny random Qwen2.5-VL folder ---------------------------------------
@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from dimo.testing import tiny_vlm_folder

    return tiny_vlm_folder(tmp_path_factory.mktemp("vlm") / "qwen-tiny")


class _Spy:
    """Wraps an object: records the positional arguments and keywords of each call, delegates the rest."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_captioner_runs_a_tiny_qwen_vl_folder_end_to_end(tiny_vlm, tmp_path, monkeypatch):
    """Chat template with a video, frames sampled at the linspace indices, video patches and token count
    the model accepts, greedy generation, decoding of the new tokens only."""

    from dimo.data.importers import CaptionError, VLMCaptioner
    from dimo.data.video import read_frames

    video = _write(tmp_path / "clip.mp4", _frames(T, 32, 32))  # 12 frames at 12 fps
    cap = VLMCaptioner(tiny_vlm, num_frames=5)
    spy = _Spy(cap.image_processor)
    monkeypatch.setattr(cap, "image_processor", spy)
    gen = _Spy(cap.model.generate)
    monkeypatch.setattr(cap.model, "generate", gen)

    answer = cap.answer(video, T)
    assert isinstance(answer, str) and answer.strip()
    # the frames shown are the decoded frames at linspace(0, 11, 5) = 0, 3, 6, 8, 11
    ((args, kwargs),) = spy.calls
    assert cap.frame_indices(T) == [0, 3, 6, 8, 11]
    np.testing.assert_array_equal(np.stack(args[0]), read_frames(video, [0, 3, 6, 8, 11]))
    assert kwargs["size"] == {"shortest_edge": 64, "longest_edge": 256}
    # 32x32 -> 16x16 (at most 256 pixels): 4x4 patches of 4 px; 5 frames padded to 3 pairs
    ((_, inputs),) = gen.calls
    assert inputs["video_grid_thw"].tolist() == [[3, 4, 4]]
    assert tuple(inputs["pixel_values_videos"].shape) == (3 * 4 * 4, 3 * 2 * 4 * 4)
    # 5 frames spread over 1 s: 5 fps, 2 frames per temporal patch
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([0.4])
    video_id = cap.model.config.video_token_id
    assert int((inputs["input_ids"] == video_id).sum()) == 3 * 4 * 4 // 4  # 2x2 patches merged per token
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == video_id).long() * 2)
    text = cap.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "<|vision_start|><|video_pad|>" in text and "Describe only the camera" in text
    # only the new tokens are decoded
    assert inputs["max_new_tokens"] == cap.max_new_tokens and inputs["do_sample"] is False
    out = gen.inner(**inputs)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert answer == cap.tokenizer.decode(new, skip_special_tokens=True)
    # a random model's answer is not a camera prompt
    with pytest.raises(CaptionError, match="captioner answer is not"):
        cap(video, T)
    monkeypatch.setattr(cap, "answer", lambda v, n: 'Sure. "Front view. The camera remains static." Bye.')
    assert cap(video, T) == "Front view. The camera remains static."


def test_captioner_video_patches_have_the_qwen_video_processor_layout(tiny_vlm):
    """Frames already at the model size: the patches equal transformers' Qwen2-VL video patchify
    (``Qwen2VLVideoProcessor.patchify``, written out here) of the normalised frames."""

    from dimo.data.importers import VLMCaptioner

    cap = VLMCaptioner(tiny_vlm)
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)  # 16x16: no resize
    got = cap.video_inputs(frames, sampled_fps=2.0)
    mean, std = np.array(cap.image_processor.image_mean), np.array(cap.image_processor.image_std)
    x = torch.from_numpy(((frames / 255.0 - mean) / std).transpose(0, 3, 1, 2)).float()[
        None
    ]  # (1, N, C, H, W)
    x = torch.cat([x, x[:, -1:]], dim=1)  # odd frame count: the last frame repeated
    tp, p, m = 2, 4, 2
    gt, gh, gw = 2, 4, 4
    ref = x.view(1, gt, tp, 3, gh // m, m, p, gw // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    ref = ref.reshape(gt * gh * gw, 3 * tp * p * p)
    assert got["video_grid_thw"].tolist() == [[gt, gh, gw]]
    torch.testing.assert_close(got["pixel_values_videos"].float(), ref, atol=1e-5, rtol=0)
    assert got["second_per_grid_ts"].tolist() == [1.0]


def test_captioner_answer_that_is_not_a_camera_prompt_is_reported(tiny_vlm, tmp_path, capsys):
    """The random model's answer never becomes a prompt: the clip gets --prompt (or none) and a note."""

    from dimo.cli import main
    from dimo.data.importers import VLMCaptioner, import_videos

    src = tmp_path / "src"
    src.mkdir()
    _write(src / "a.mp4", _frames(T, 32, 32))
    _write(src / "b.mp4", _frames(T, 32, 32))
    (src / "b.prompt.txt").write_text("Back view. The camera remains static.\n")
    cap = VLMCaptioner(tiny_vlm)

    report = import_videos(src, tmp_path / "out", captioner=cap)
    prompts = {r.id: r.views[0].camera_prompt for r in report.records}
    assert prompts == {"a": "", "b": "Back view. The camera remains static."}
    (note,) = [n for c, n in report.notes if c == "a"]
    assert note.startswith('captioner answer is not "<view>. The camera <motion>.": ') and note.endswith(
        "; no camera prompt"
    )
    assert "\n" not in note and not [n for c, n in report.notes if c == "b"]
    saved = json.loads((tmp_path / "out" / "import_report.json").read_text())["notes"]
    assert {"clip": "a", "note": note} in saved

    default = "Front view. The camera remains static."
    argv = ["data", "import", "videos", str(src), "--out", str(tmp_path / "out2"), "--captioner", str(tiny_vlm),
            "--prompt", default]  # fmt: skip
    assert main_code(main, argv) == 0 and "2 clip(s) written" in capsys.readouterr().out
    records, _ = load_manifest(tmp_path / "out2")
    assert {r.id: r.views[0].camera_prompt for r in records}["a"] == default
    notes = json.loads((tmp_path / "out2" / "import_report.json").read_text())["notes"]
    assert [n["note"].rsplit("; ", 1)[1] for n in notes if n["clip"] == "a"] == ["--prompt used instead"]

    # a captioner that answers with a camera prompt wins over --prompt
    good = lambda video, n: "Left side view. The camera orbits around the subject."  # noqa: E731
    report = import_videos(src, tmp_path / "out3", captioner=good, prompt_default=default)
    assert {r.id: r.views[0].camera_prompt for r in report.records}["a"] == good(None, 0)
    assert ("a", "camera prompt from the captioner") in report.notes


def test_captioner_folder_with_missing_or_corrupt_weights_is_one_line(tiny_vlm, tmp_path, capsys):
    from dimo.cli import main
    from dimo.data.importers import ImportError_, VLMCaptioner

    folder = tmp_path / "qwen"
    shutil.copytree(tiny_vlm, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ImportError_, match=r"captioner folder .*qwen has no weights"):
        VLMCaptioner(folder)
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ImportError_) as err:
        VLMCaptioner(folder)
    msg = str(err.value)
    assert (
        msg.startswith(f"captioner folder {folder} could not be loaded by transformers: ") and "\n" not in msg
    )
    # a truncated copy of the real weights
    data = (tiny_vlm / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImportError_, match="could not be loaded by transformers"):
        VLMCaptioner(folder)
    config = json.loads((tiny_vlm / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, model_type="llava")))
    with pytest.raises(ImportError_, match="holds a 'llava' model; the captioner runs Qwen2-VL"):
        VLMCaptioner(folder)
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "a.mp4", _frames(4, 32, 32))
    argv = ["data", "import", "videos", str(src), "--out", str(tmp_path / "o"), "--captioner", str(folder)]
    assert main_code(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder) in err and "Traceback" not in err


# ---- multi-view --------------------------------------------------------------------------------
def _toy_multiview(toy_root):
    records, _ = load_manifest(toy_root)
    return next(r for r in records if r.source == "multiview")


def _capture(toy_root, folder: Path, convention: str, images_for: int | None = None) -> dict:
    """A toy multiview clip written as a capture in the generic layout."""

    from dimo.data.video import read_frames

    rec = _toy_multiview(toy_root)
    (folder / "videos").mkdir(parents=True)
    cams = {}
    for i, v in enumerate(rec.views):
        name = f"cam{i:02d}"
        K, R, t = (np.asarray(x, dtype=np.float64) for x in (v.K, v.R, v.t))
        if convention == "camera_to_world":
            cams[name] = {"K": K.tolist(), "RT": np.concatenate([R.T, (-R.T @ t)[:, None]], 1).tolist()}
        else:
            cams[name] = {"K": K.tolist(), "R": R.tolist(), "t": (t * 1000).tolist()}
        if i == images_for:
            from PIL import Image

            (folder / "images" / name).mkdir(parents=True)
            for j, f in enumerate(read_frames(rec.path(v.video), range(rec.num_frames))):
                Image.fromarray(f).save(folder / "images" / name / f"{j:05d}.png")
        else:
            shutil.copy(rec.path(v.video), folder / "videos" / f"{name}.mp4")
    spec = {"convention": convention, "cameras": cams, "fps": rec.fps}
    if convention == "world_to_camera":
        spec["units"] = "mm"
    (folder / "cameras.json").write_text(json.dumps(spec))
    motion = load_motion(rec)
    np.savez(folder / "motion.npz", joints=motion["joints"])
    return {"rec": rec, "motion": motion}


@pytest.mark.parametrize("convention", ["world_to_camera", "camera_to_world"])
def test_import_multiview_generic_layout_round_trips_the_cameras(toy_root, tmp_path, convention):
    from dimo.data.datamodule import ViewRichDataModule
    from dimo.data.importers import import_multiview

    src = tmp_path / "captures"
    made = _capture(
        toy_root, src / "take1", convention, images_for=1 if convention == "world_to_camera" else None
    )
    report = import_multiview(src, tmp_path / "out")
    assert report.skipped == [] and [r.id for r in report.records] == ["take1"]
    assert validate_root(tmp_path / "out").ok
    rec, toy = report.records[0], made["rec"]
    assert rec.source == "multiview" and len(rec.views) == len(toy.views) and rec.num_frames == toy.num_frames
    for mine, theirs in zip(rec.views, toy.views):
        np.testing.assert_allclose(mine.R, theirs.R, atol=1e-5)
        np.testing.assert_allclose(mine.t, theirs.t, atol=1e-4)  # mm -> m, or inverted camera-to-world
        # the view names computed from the rig and the subject's hips match the generator's prompts
        assert mine.camera_prompt == theirs.camera_prompt, (
            mine.name,
            mine.camera_prompt,
            theirs.camera_prompt,
        )
    dm = ViewRichDataModule(root=tmp_path / "out", task="hvg", num_views=3, num_frames=4, height=32, width=32,
                            batch_size=1)  # fmt: skip
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["target"].shape == (1, 3, 4, 3, 32, 32) and dm.skipped_draws == 0


def test_camera_to_world_declared_as_world_to_camera_is_caught_everywhere(toy_root, tmp_path):
    """The issue's crash: validate names the clip and suggests the fix; training skips and counts it."""

    from dimo.data.dataset import ClipDataset, SampleSpec
    from dimo.data.importers import import_multiview
    from dimo.data.mixture import SampleKey

    _capture(toy_root, tmp_path / "cap", "camera_to_world")
    spec = json.loads((tmp_path / "cap" / "cameras.json").read_text())
    spec["convention"] = "world_to_camera"  # the mistake
    cams = spec["cameras"]
    for c in cams.values():  # write the camera-to-world matrices as if they were R, t
        M = np.asarray(c.pop("RT"))
        c["R"], c["t"] = M[:, :3].tolist(), M[:, 3].tolist()
    (tmp_path / "cap" / "cameras.json").write_text(json.dumps(spec))
    report = import_multiview(tmp_path / "cap", tmp_path / "out")
    assert report.records == []
    (label, reason), = report.skipped  # fmt: skip
    assert "behind the camera" in reason and "look camera-to-world" in reason

    # the same clip in a hand-written manifest: validate reports it; HVG training skips and counts it
    report = import_multiview(tmp_path / "cap", tmp_path / "out2", convention="camera_to_world")
    rec = report.records[0]
    raw = rec.to_json()
    for v in raw["views"]:
        R, t = np.asarray(v["R"]), np.asarray(v["t"])
        v["R"], v["t"] = R.T.tolist(), (-R.T @ t).tolist()
    raw["id"] = "c2w_clip"
    good = report.records[0].to_json()
    from dimo.data.manifest import write_manifest

    write_manifest(tmp_path / "out2", [raw, good])
    problems = validate_root(tmp_path / "out2").problems
    assert problems and {p.clip_id for p in problems} == {"c2w_clip"}
    # on a ring, cameras whose centre has z > 0 see the subject "in front" even with the wrong
    # convention: those views are caught as never projecting into the image, or not at all
    assert any("behind the camera" in p.reason and "look camera-to-world" in p.reason for p in problems)
    assert all("behind the camera" in p.reason or "never projects inside" in p.reason for p in problems)
    records, _ = load_manifest(tmp_path / "out2")
    ds = ClipDataset(
        {"multiview": records}, SampleSpec(task="hvg", num_frames=4, height=32, width=32, num_views=3)
    )
    sample = ds[SampleKey(0, 0, "multiview", 0, "hvg", 3)]
    assert sample["clip_id"] == rec.id and sample["_skipped"] == 1 and sample["_bad"] == "c2w_clip"
    assert "c2w_clip" in ds.bad[("multiview", 0)] and "behind the camera" in ds.bad[("multiview", 0)]


def test_import_mvhumannet_native_layout(toy_root, tmp_path):
    from dimo.data.importers import import_mvhumannet
    from dimo.data.video import read_frames

    rec = _toy_multiview(toy_root)
    motion = load_motion(rec)
    seq = tmp_path / "mvh" / "100001"
    scale = 1.5
    extr, K_full = {}, None
    for i, v in enumerate(rec.views[:3]):
        name = f"CC3287{i:04d}"
        R, t = np.asarray(v.R), np.asarray(v.t)
        extr[f"{i + 1}_{name}.png"] = {"rotation": R.tolist(), "translation": (t * 1000 / scale).tolist()}
        K_full = np.asarray(v.K) * [[2], [2], [1]]  # calibration at twice the image size
        (seq / "images_lr" / name).mkdir(parents=True)
        from PIL import Image

        for j, f in enumerate(read_frames(rec.path(v.video), range(rec.num_frames))):
            Image.fromarray(f).save(seq / "images_lr" / name / f"{(j + 1) * 5:04d}_img.png")
    (seq / "camera_extrinsics.json").write_text(json.dumps(extr))
    (seq / "camera_intrinsics.json").write_text(json.dumps({"intrinsics": K_full.tolist()}))
    with open(seq / "camera_scale.pkl", "wb") as fh:
        pickle.dump(scale, fh)
    (seq / "smplx" / "smpl").mkdir(parents=True)
    for k in range(rec.num_frames):
        poses = np.zeros(3 + 63 + 12 + 9)
        poses[3:66] = motion["body_pose"][k].reshape(-1)
        entry = [{"id": 0, "Rh": [motion["global_orient"][k].tolist()], "Th": [[0.0, 0.0, 0.0]],
                  "poses": [poses.tolist()], "shapes": [[0.0] * 10], "expression": [[0.0] * 10]}]  # fmt: skip
        (seq / "smplx" / "smpl" / f"{k:06d}.json").write_text(json.dumps(entry))
    report = import_mvhumannet(tmp_path / "mvh", tmp_path / "out", fps=rec.fps)
    assert report.skipped == [], report.skipped
    (got,) = report.records
    assert got.id == "mvhumannet_100001" and len(got.views) == 3 and got.num_frames == rec.num_frames
    for mine, theirs in zip(got.views, rec.views):
        np.testing.assert_allclose(mine.K, theirs.K, atol=1e-4)  # half-size images: K / 2
        np.testing.assert_allclose(mine.t, theirs.t, atol=1e-4)  # mm / 1000 * camera_scale
    m = load_motion(got)
    np.testing.assert_allclose(m["body_pose"], motion["body_pose"], atol=1e-5)
    assert (got.motion.hands, got.motion.joints3d) == ("missing", "missing")
    assert validate_root(tmp_path / "out").ok
    assert not (tmp_path / "out" / "clips" / got.id / "_frames").exists()

    # a camera_scale.pkl that is not a plain number is refused, nothing executed
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(seq / "camera_scale.pkl", "wb") as fh:
        pickle.dump(Evil(), fh)
    report = import_mvhumannet(tmp_path / "mvh", tmp_path / "out3")
    assert "cannot read the camera scale safely" in report.skipped[0][1]


def test_cli_import_and_validate_name_the_clip_in_one_line(videos_src, tmp_path, capsys):
    from dimo.cli import main
    from dimo.data.manifest import write_manifest

    with pytest.raises(SystemExit) as e:
        main(["data", "import", "videos", str(tmp_path / "typo"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert (
        e.value.code == 2 and err.count("\n") == 1 and "typo does not exist" in err and "Traceback" not in err
    )
    with pytest.raises(SystemExit) as e:
        main(["data", "import", "videos", str(videos_src["src"]), "--out", str(tmp_path / "o"), "--prompt",
              "Front view. The camera remains static."])  # fmt: skip
    assert e.value.code == 0 and "3 clip(s) written" in capsys.readouterr().out
    # the raw phone clip (VFR + rotated) and a fit of the wrong length in a hand-written manifest
    root = tmp_path / "o"
    shutil.copy(videos_src["src"] / "phone.mp4", root / "phone_raw.mp4")
    raw = [r.to_json() for r in load_manifest(root)[0]]
    raw.append({"id": "phone_raw", "source": "internet", "fps": 12.0, "num_frames": 9,
                "views": [{"video": "phone_raw.mp4", "camera_prompt": "x"}]})  # fmt: skip
    bad_len = dict(raw[0], id="short_fit")
    bad_len["num_frames"] = 10
    raw.append(bad_len)
    raw.append(dict(raw[0], id="outside", views=[{"video": "../elsewhere.mp4", "camera_prompt": "x"}]))
    write_manifest(root, raw)
    with pytest.raises(SystemExit) as e:
        main(["data", "validate", str(root)])
    out = capsys.readouterr().out
    assert e.value.code == 1
    lines = [ln for ln in out.splitlines() if ln.startswith("PROBLEM")]
    assert any(ln.startswith("PROBLEM phone_raw") and "display rotation of 90" in ln for ln in lines)
    assert any(ln.startswith("PROBLEM short_fit") and "has 12 frames, the clip has 10" in ln for ln in lines)
    assert any(ln.startswith("PROBLEM outside") and "outside the dataset root" in ln for ln in lines)


def test_validate_catches_variable_frame_rate_and_rotation_separately(tmp_path):
    from dimo.data.video import VideoError, inspect_video, probe

    vfr = _write(tmp_path / "vfr.mp4", _frames(9, 32, 32), pts=[0, 1, 3, 4, 6, 9, 10, 11, 14])
    facts = inspect_video(vfr)
    assert "variable frame rate" in facts.index_problem and facts.rotation == 0
    with pytest.raises(VideoError, match="variable frame rate: decoded frame"):
        probe(vfr, count=True)
    rot = _write(tmp_path / "rot.mp4", _frames(4, 32, 32), rotate=-90)
    with pytest.raises(VideoError, match="display rotation of -90"):
        probe(rot)  # without decoding the whole file too
    cfr = _write(tmp_path / "cfr.mp4", _frames(9, 32, 32))
    assert inspect_video(cfr).index_problem is None and probe(cfr, count=True).num_frames == 9


def test_preview_draws_keypoints_and_bone_maps_over_the_frames(videos_src, toy_root, tmp_path):
    from PIL import Image

    from dimo.cli import main
    from dimo.data.importers import import_multiview, import_videos
    from dimo.data.keypoints import load_keypoints2d
    from dimo.data.preview import KEYPOINT_COLOUR, clip_overlay, overlay_frame
    from dimo.data.video import read_frames

    out = import_videos(videos_src["src"], tmp_path / "v").out
    rec = next(r for r in load_manifest(out)[0] if r.id == "a")
    frame = read_frames(rec.path(rec.views[0].video), [0])[0]
    kp, sc = load_keypoints2d(rec.path(rec.views[0].keypoints2d), T)
    drawn = overlay_frame(frame, keypoints=kp[0], scores=sc[0])
    x, y = np.floor(kp[0, 40]).astype(int)  # a face keypoint: drawn as a point exactly there
    assert tuple(drawn[y, x]) == KEYPOINT_COLOUR
    assert (drawn != frame).any(axis=-1).sum() > 50  # the skeleton lines

    made = _capture(toy_root, tmp_path / "cap", "world_to_camera")
    mv = import_multiview(tmp_path / "cap", tmp_path / "mv").records[0]
    img = clip_overlay(mv, max_frames=2, max_views=2)  # (3, 2 * 32 + 2, 2 * 32 + 2)
    assert img.shape == (3, 66, 66)
    raw = read_frames(mv.path(mv.views[0].video), [0])[0].astype(np.float32) / 255
    tile = img[:, :32, :32].permute(1, 2, 0).numpy()
    changed = np.abs(tile - raw).max(-1) > 0.05
    # bone maps and joints are drawn where the person is: the changed pixels cover the rendered body
    from dimo.data.preview import bone_maps_raw

    K, R, t = (
        torch.from_numpy(np.ascontiguousarray(a[[0]])).float() for a in mv.views[0].cameras(mv.num_frames)
    )
    _, mask = bone_maps_raw(torch.from_numpy(made["motion"]["joints"][[0]]), K, R, t, 32, 32)
    assert mask[0].sum() > 10 and changed[mask[0]].mean() > 0.9 and changed[~mask[0]].mean() < 0.2
    assert (
        main_code(
            main, ["data", "preview", str(tmp_path / "mv"), "--clips", "1", "--out", str(tmp_path / "p.png")]
        )
        == 0
    )
    assert Image.open(tmp_path / "p.png").size == (4 * 34 - 2, 4 * 34 - 2)  # 4 views x 4 frames of 32 px


def main_code(main, argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_moving_cameras_get_their_trajectory_prompts(toy_root, tmp_path):
    """Rendered trajectories (ue5) in the multiview layout: a moving camera's prompt is derived from its
    path (as ``import renders`` does); a path no prompt describes is skipped unless prompts.json names it,
    never made up."""

    from dimo.data.importers import import_multiview

    rec = next(r for r in load_manifest(toy_root)[0] if r.source == "ue5")
    take = tmp_path / "renders" / "shot1"
    (take / "videos").mkdir(parents=True)
    cams, prompts = {}, {}
    for v in rec.views:
        cams[v.name] = {
            "K": np.asarray(v.K).tolist(),
            "R": np.asarray(v.R).tolist(),
            "t": np.asarray(v.t).tolist(),
        }
        prompts[v.name] = v.camera_prompt
        shutil.copy(rec.path(v.video), take / "videos" / f"{v.name}.mp4")
    (take / "cameras.json").write_text(json.dumps({"convention": "world_to_camera", "cameras": cams}))
    np.savez(take / "motion.npz", joints=load_motion(rec)["joints"])
    moving = [v.name for v in rec.views if v.name != "static"]
    assert moving
    report = import_multiview(tmp_path / "renders", tmp_path / "out", source="ue5")
    (got,) = report.records
    assert [v.camera_prompt for v in got.views] == [v.camera_prompt for v in rec.views]  # the generator's own
    # a sideways slide (the centre moves across, the view does not turn): no known kind -> skipped
    T = rec.num_frames
    R0 = np.asarray(rec.views[0].R).reshape(-1, 3, 3)[0]
    t0 = np.asarray(rec.views[0].t).reshape(-1, 3)[0]
    slide = [(t0 + np.array([0.03 * f, 0.0, 0.0])).tolist() for f in range(T)]
    cams[moving[0]] = {"K": cams[moving[0]]["K"], "R": [R0.tolist()] * T, "t": slide}
    (take / "cameras.json").write_text(json.dumps({"convention": "world_to_camera", "cameras": cams}))
    report = import_multiview(tmp_path / "renders", tmp_path / "out1", source="ue5")
    assert report.records == [] and f"camera {moving[0]} moves and" in report.skipped[0][1]
    assert "prompts.json" in report.skipped[0][1]
    prompts[moving[0]] = "Front view. The camera slides to the left."
    (take / "prompts.json").write_text(json.dumps(prompts))
    report = import_multiview(tmp_path / "renders", tmp_path / "out2", source="ue5")
    (got,) = report.records
    assert got.source == "ue5" and [v.camera_prompt for v in got.views] == [
        prompts[v.name] for v in rec.views
    ]
    for mine, theirs in zip(got.views, rec.views):
        if theirs.name != moving[0]:  # the slide replaced that one's path
            np.testing.assert_allclose(mine.R, theirs.R, atol=1e-6)
    assert validate_root(tmp_path / "out2").ok


# ---- rendered trajectories (import renders) ------------------------------------------------------
_GL = np.diag([1.0, -1.0, -1.0])


def _renders(toy_root, seq: Path, index: int = 0, *, convention="camera_to_world", units="cm", axes="opengl",
             fmt="json"):  # fmt: skip
    """A toy ue5 clip written as a render sequence: per trajectory a video and a per-frame camera file
    (camera-to-world 4x4 in centimetres with Blender/OpenGL camera axes, or world-to-camera R, t)."""

    rec = [r for r in load_manifest(toy_root)[0] if r.source == "ue5"][index]
    scale = {"m": 1.0, "cm": 100.0, "mm": 1000.0}[units]
    (seq / "videos").mkdir(parents=True)
    (seq / "cameras").mkdir()
    for v in rec.views:
        K, R, t = (np.array(a) for a in v.cameras(rec.num_frames))
        if axes == "opengl":
            R, t = _GL @ R, t @ _GL
        if convention == "camera_to_world":
            M = np.tile(np.eye(4), (rec.num_frames, 1, 1))
            M[:, :3, :3] = np.swapaxes(R, 1, 2)
            M[:, :3, 3] = -np.einsum("tji,tj->ti", R, t) * scale
            cam = {"frames": [{"transform_matrix": m.tolist(), "K": k.tolist()} for m, k in zip(M, K)]}
        else:
            cam = {"K": K.tolist(), "R": R.tolist(), "t": (t * scale).tolist()}
        if fmt == "npz":
            np.savez(seq / "cameras" / f"{v.name}.npz", **{k: np.asarray(x) for k, x in cam.items()})
        else:
            (seq / "cameras" / f"{v.name}.json").write_text(json.dumps(cam))
        shutil.copy(rec.path(v.video), seq / "videos" / f"{v.name}.mp4")
    motion = load_motion(rec)
    np.savez(seq / "motion.npz", **{k: motion[k] for k in ("global_orient", "body_pose", "hand_pose", "transl",
                                                           "rest_joints", "joints")})  # fmt: skip
    meta = {"fps": rec.fps, "convention": convention, "units": units, "camera_axes": axes,
            "subject": [0.0, 0.9 * scale, 0.0], "facing": [0.0, 0.0, 1.0], "caption": "a toy person"}  # fmt: skip
    (seq / "metadata.json").write_text(json.dumps(meta))
    return rec


def test_import_renders_writes_ue5_clips_with_prompts_from_the_trajectories(toy_root, tmp_path):
    from dimo.cli import main
    from dimo.data.datamodule import ViewRichDataModule

    src = tmp_path / "renders"
    toy = {
        "shot_a": _renders(toy_root, src / "shot_a", 0),
        "shot_b": _renders(
            toy_root, src / "shot_b", 1, convention="world_to_camera", units="m", axes="opencv", fmt="npz"
        ),  # fmt: skip
    }
    for seq in toy:  # the prompts must come from the camera paths, not from anything the sequence says
        assert not (src / seq / "prompts.json").exists()
    assert main_code(main, ["data", "import", "renders", str(src), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert report["clips"] == ["shot_a", "shot_b"] and report["skipped"] == []
    assert validate_root(tmp_path / "out").ok
    records, problems = load_manifest(tmp_path / "out")
    assert problems == []
    for rec in records:
        theirs = toy[rec.id]
        assert rec.source == "ue5" and rec.num_frames == theirs.num_frames and rec.caption == "a toy person"
        assert [v.name for v in rec.views] == sorted(v.name for v in theirs.views)
        by_name = {v.name: v for v in theirs.views}
        for mine in rec.views:
            K, R, t = mine.cameras(rec.num_frames)
            K0, R0, t0 = by_name[mine.name].cameras(rec.num_frames)
            np.testing.assert_allclose(R, R0, atol=1e-5)
            np.testing.assert_allclose(t, t0, atol=1e-4)  # cm -> m, camera-to-world inverted, GL axes
            np.testing.assert_allclose(K, K0, atol=1e-4)
            # the prompt computed from the path equals the generator's prompt for that path
            assert mine.camera_prompt == by_name[mine.name].camera_prompt, (rec.id, mine.name)
        motion = load_motion(rec)
        assert rec.motion.body == rec.motion.hands == rec.motion.joints3d == "gt"
        np.testing.assert_allclose(motion["joints"], load_motion(theirs)["joints"], atol=1e-6)
    prompts = {f"{v.camera_prompt} a toy person" for r in records for v in r.views}
    dm = ViewRichDataModule(root=tmp_path / "out", task="3dimo", weights={"ue5": 1.0}, cross_view=1.0,
                            num_frames=4, height=32, width=32, batch_size=2)  # fmt: skip
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["target"].shape == (2, 4, 3, 32, 32) and dm.skipped_draws == 0
    assert set(batch["task"]) == {"cross_view"} and set(batch["source"]) == {"ue5"}
    assert not torch.equal(batch["driving"], batch["target"]) and set(batch["prompt"]) <= prompts


def _break(seq: Path, how: str) -> str:
    """Break one thing in a render sequence (world-to-camera, metres, JSON) -> the phrase the report must say."""

    first = sorted((seq / "cameras").iterdir())[0]
    cam = json.loads(first.read_text())
    if how == "missing_camera_file":
        first.unlink()
        return "no camera file"
    if how == "frame_count":
        cam["R"], cam["t"] = cam["R"][:-1], cam["t"][:-1]
        phrase = "frame-count mismatch"
    elif how == "not_a_rotation":
        cam["R"] = (np.asarray(cam["R"]) * 1.5).tolist()
        phrase = "not a rotation matrix"
    elif how == "focal":
        K = np.asarray(cam["K"])
        K[..., 0, 0] = 0.0
        cam["K"] = K.tolist()
        phrase = "focal lengths"
    elif how == "non_finite":
        cam["t"][3][0] = float("nan")
        phrase = "non-finite"
    else:  # camera-to-world matrices declared world-to-camera
        R, t = np.asarray(cam["R"]), np.asarray(cam["t"])
        for f in sorted((seq / "cameras").iterdir()):
            c = json.loads(f.read_text())
            R, t = np.asarray(c["R"]), np.asarray(c["t"])
            c["R"], c["t"] = np.swapaxes(R, 1, 2).tolist(), (-np.einsum("tji,tj->ti", R, t)).tolist()
            f.write_text(json.dumps(c))
        return "look camera-to-world"
    first.write_text(json.dumps(cam))
    return phrase


@pytest.mark.parametrize(
    "how", ["missing_camera_file", "frame_count", "not_a_rotation", "focal", "non_finite", "camera_to_world"]
)
def test_import_renders_rejects_bad_cameras_naming_the_sequence(toy_root, tmp_path, how):
    from dimo.data.importers import import_renders

    _renders(toy_root, tmp_path / "src" / "good", 0, convention="world_to_camera", units="m", axes="opencv")
    _renders(toy_root, tmp_path / "src" / "shot7", 1, convention="world_to_camera", units="m", axes="opencv")
    phrase = _break(tmp_path / "src" / "shot7", how)
    report = import_renders(tmp_path / "src", tmp_path / "out")
    assert [r.id for r in report.records] in (["good"], ["good", "shot7"])
    bad = [(label, why) for label, why in report.skipped if "shot7" in label]
    assert bad and all(why.startswith("sequence shot7: ") for _, why in bad), report.skipped
    assert any(phrase in why for _, why in bad), bad
    if how != "camera_to_world":  # a trajectory-level finding names its file
        assert any("/shot7/cameras/" in label or "/shot7/videos/" in label for label, _ in bad)
    for line in json.loads((tmp_path / "out" / "import_report.json").read_text())["skipped"]:
        assert "\n" not in line["reason"]
    assert validate_root(tmp_path / "out").ok
