"""2D keypoint detectors: joint mapping, heatmap decoding, the committed toy detector's held-out quality,
ViTPose through transformers (tiny random config), keypoints in the data pipeline and the CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dimo.pose.joints import SMPLX_TO_WHOLEBODY, TOY_JOINTS, smplx_to_wholebody, wholebody_to_smplx
from dimo.pose.toy_detector import (
    PRESETS,
    DetectorError,
    ToyHeatmapNet,
    ToyKeypointDetector,
    decode_heatmaps,
    gaussian_heatmaps,
)

COMMITTED = Path(__file__).resolve().parents[1] / "pretrained" / "toy-detector"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_joint_mapping_round_trip_and_slots(rng):
    uv = torch.rand(3, 55, 2, generator=rng) * 64
    sc = torch.rand(3, 55, generator=rng)
    kp133, sc133 = smplx_to_wholebody(uv, sc)
    assert kp133.shape == (3, 133, 2) and sc133.shape == (3, 133)
    # named slots: COCO left wrist (9) and left-hand root (91) are SMPL-X 20; left index MCP (96) is left_index1 (25)
    for coco, smplx in ((9, 20), (91, 20), (10, 21), (112, 21), (96, 25), (92, 37), (11, 1), (16, 8)):
        assert np.allclose(kp133[:, coco], uv[:, smplx].numpy())
    assert (sc133[:, [0, 3, 4, 95, 99]] == 0).all()  # nose, ears, fingertips: no SMPL-X joint
    back, back_sc, valid = wholebody_to_smplx(kp133, sc133, threshold=0.0)
    ids = list(TOY_JOINTS)
    assert torch.allclose(back[:, ids], uv[:, ids]) and torch.allclose(back_sc[:, ids], sc[:, ids])
    assert not valid[:, [0, 3, 6, 9, 12, 15, 22]].any()  # pelvis, spine, neck, head, jaw: no slot
    assert len({c for _, c in SMPLX_TO_WHOLEBODY}) == len(SMPLX_TO_WHOLEBODY) == 46


def test_heatmap_decoding_is_subpixel(rng):
    uv = 4 + torch.rand(2, 46, 2, generator=rng) * 56  # away from the border
    heat = gaussian_heatmaps(uv, 64, 1.25)
    xy, score = decode_heatmaps(heat)
    assert (xy - uv).abs().max() < 1e-3  # pixels: exact for a Gaussian peak
    assert torch.allclose(score, heat.flatten(2).amax(-1))
    # the detector's spatial logits: log-softmax is the same parabola, the score a probability mass
    xy, score = decode_heatmaps(heat.clamp_min(1e-30).log(), logits=True)
    assert (xy - uv).abs().max() < 1e-3 and (score > 0.85).all() and (score <= 1).all()
    # a peak at the border clamps the window instead of wrapping
    xy, _ = decode_heatmaps(gaussian_heatmaps(torch.tensor([[[0.5, 63.5]]]), 64, 1.25))
    assert 0 <= xy[0, 0, 0] < 1.5 and 62 < xy[0, 0, 1] <= 64


def test_toy_detector_folder_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    det = ToyKeypointDetector(ToyHeatmapNet(PRESETS["tiny"]))
    det.save_pretrained(tmp_path / "det")
    loaded = ToyKeypointDetector.from_pretrained(tmp_path / "det")
    frames = np.random.default_rng(0).integers(0, 255, (3, 48, 40, 3), dtype=np.uint8)
    kp, sc = loaded(frames)
    kp0, _ = det(frames)
    assert kp.shape == (3, 133, 2) and sc.shape == (3, 133) and kp.dtype == np.float32
    assert np.abs(kp - kp0).max() < 0.5  # fp16 storage
    assert (kp[..., 0] <= 40).all() and (kp[..., 1] <= 48).all()  # scaled back to the 40x48 input
    (tmp_path / "det" / "model.safetensors").unlink()
    with pytest.raises(DetectorError, match="model.safetensors: missing"):
        ToyKeypointDetector.from_pretrained(tmp_path / "det")
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in det.net.state_dict().items()}
    state.pop("head.bias")
    save_file(state, tmp_path / "det" / "model.safetensors")
    with pytest.raises(RuntimeError, match="head.bias"):
        ToyKeypointDetector.from_pretrained(tmp_path / "det")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Held-out toy clips at the detector's 64x64 (synth seed 0; the detector trains on seeds 1000+)."""

    from dimo.data.synth import SynthConfig, synthesize
    from dimo.pose.toy_data import load_keypoint_frames

    root = tmp_path_factory.mktemp("held")
    synthesize(root, SynthConfig(seed=0, num_internet=2, num_ue5=1, num_multiview=1, num_frames=8,
                                 multiview_cameras=(3, 3), ue5_trajectories=(2, 2)))  # fmt: skip
    return load_keypoint_frames(root)


def test_committed_toy_detector_quality_on_held_out_clips(held_out):
    from dimo.pose.train_toy import evaluate_detector

    report = json.loads((COMMITTED / "report.json").read_text())
    assert report["held_out_synth_seed"] == 0 and report["train_synth_seed"] != 0
    assert sum(f.stat().st_size for f in COMMITTED.iterdir()) < 2e6
    res = evaluate_detector(ToyKeypointDetector.from_pretrained(COMMITTED), held_out)
    assert (
        res["body"]["pck"] >= 0.40 and res["body"]["px"] <= 7.5
    )  # report.json: 0.51 and 5.4 px on 1260 frames
    assert res["hands"]["pck"] >= 0.35 and res["hands"]["px"] <= 14.0  # report.json: 0.47 and 11.0 px
    torch.manual_seed(0)
    untrained = evaluate_detector(ToyKeypointDetector(ToyHeatmapNet(PRESETS["toy"])), held_out)
    assert untrained["body"]["pck"] < 0.2


# ---- ViTPose (transformers) ------------------------------------------------------------------------
def _tiny_vitpose(folder: Path, num_keypoints: int = 17) -> Path:
    from transformers import (
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessorPil,
    )

    backbone = VitPoseBackboneConfig(image_size=(64, 48), patch_size=(16, 16), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, out_indices=[2])  # fmt: skip
    cfg = VitPoseConfig(backbone_config=backbone, id2label={i: str(i) for i in range(num_keypoints)})
    torch.manual_seed(0)
    VitPoseForPoseEstimation(cfg).save_pretrained(folder)
    VitPoseImageProcessorPil(size={"height": 64, "width": 48}).save_pretrained(folder)
    return folder


def test_vitpose_detector_shapes_and_body_slots(tmp_path):
    from dimo.pose.detect import load_detector

    det = load_detector(_tiny_vitpose(tmp_path / "vitpose"))
    frames = np.random.default_rng(0).integers(0, 255, (5, 80, 60, 3), dtype=np.uint8)
    kp, sc = det(frames)
    assert kp.shape == (5, 133, 2) and sc.shape == (5, 133)
    assert (sc[:, 17:] == 0).all() and (sc >= 0).all() and (sc <= 1).all()
    assert np.isfinite(kp).all()


def test_vitpose_decoding_maps_heatmap_peaks_to_frame_pixels(tmp_path):
    from dimo.pose.vitpose import ViTPoseDetector

    det = ViTPoseDetector.from_pretrained(_tiny_vitpose(tmp_path / "vitpose"))
    h, w = 16, 12  # heatmap of the 64x48 input
    heat = torch.zeros(1, 17, h, w)
    # ViTPose (UDP) maps heatmap index i to the box as i / (size - 1): cells symmetric about (5.5, 7.5)
    cells = {0: (4, 3), 1: (11, 8), 2: (4, 8), 3: (11, 3)}  # joint: (row, col)
    for j, (r, c) in cells.items():
        heat[0, j, r, c] = 1.0
        heat[0, j, r, c - 1] = heat[0, j, r, c + 1] = heat[0, j, r - 1, c] = heat[0, j, r + 1, c] = 0.5
    kp, sc = det.decode(heat, height=160, width=120)
    centre = kp[0, :4].mean(0)
    assert abs(centre[0] - 60) < 0.5 and abs(centre[1] - 80) < 0.5  # the whole frame is the box
    assert kp[0, 0, 0] < 60 < kp[0, 2, 0] and kp[0, 0, 1] < 80 < kp[0, 1, 1]  # left/right, up/down
    assert abs(kp[0, 0, 0] - kp[0, 3, 0]) < 0.5 and abs(kp[0, 0, 1] - kp[0, 2, 1]) < 0.5
    assert sc[0, :4].min() > 0.5 and sc[0, 4:].max() < 1e-6


def test_vitpose_missing_files_are_named(tmp_path):
    from dimo.pose.detect import load_detector
    from dimo.pose.vitpose import ViTPoseDetector

    with pytest.raises(DetectorError, match="ViTPose folder not found"):
        ViTPoseDetector.from_pretrained(tmp_path / "nowhere")
    folder = _tiny_vitpose(tmp_path / "vp")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(DetectorError, match="preprocessor_config.json: missing"):
        ViTPoseDetector.from_pretrained(folder)
    with pytest.raises(DetectorError, match="config.json: missing"):
        load_detector(tmp_path)


# ---- keypoints in the data pipeline -------------------------------------------------------------------
def test_dataset_uses_keypoints_for_hand_crops_without_cameras(toy_root, tmp_path):
    from dimo.data.dataset import ClipDataset, SampleSpec
    from dimo.data.keypoints import save_keypoints2d
    from dimo.data.manifest import load_manifest, load_motion
    from dimo.geometry.cameras import project

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    rec = next(r for r in load_manifest(root)[0] if r.source == "internet")
    view = rec.views[0]
    K, R, t = (torch.from_numpy(np.ascontiguousarray(a)).float() for a in view.cameras(rec.num_frames))
    uv, _ = project(torch.from_numpy(load_motion(rec)["joints"]), K, R, t)  # stored 32x32 pixels
    kp, sc = smplx_to_wholebody(uv, torch.ones(rec.num_frames, 55))
    save_keypoints2d(root / "kp.npz", kp, sc)
    bare = replace(rec, views=(replace(view, K=None, R=None, t=None, keypoints2d="kp.npz"),))
    spec = SampleSpec(num_frames=4, height=64, width=64)  # 2x the stored size
    ds = ClipDataset({"internet": [bare]}, spec)
    sample = ds.build(bare, "reconstruction", np.random.default_rng(0))
    frames = [int(f) for f in sample["target_key"].split("|f")[1].split("|")[0].split(",")]
    ids = list(TOY_JOINTS)
    assert sample["joints2d_valid"][:, ids].all() and not sample["joints2d_valid"][:, 0].any()
    assert torch.allclose(sample["joints2d"][:, ids], 2 * uv[frames][:, ids], atol=1e-4)
    # without the keypoint file the hands fall back to the whole frame (no valid joint)
    none = replace(bare, views=(replace(bare.views[0], keypoints2d=None),))
    assert not ds.build(none, "reconstruction", np.random.default_rng(0))["joints2d_valid"].any()


def test_data_keypoints_command_writes_the_format(toy_root, tmp_path):
    from dimo.commands.data import main
    from dimo.data.keypoints import load_keypoints2d
    from dimo.data.manifest import load_manifest

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    torch.manual_seed(0)
    ToyKeypointDetector(ToyHeatmapNet(PRESETS["tiny"])).save_pretrained(tmp_path / "det")
    assert main(["keypoints", str(root), "--detector", str(tmp_path / "det")]) == 0
    records, problems = load_manifest(root)
    assert not problems
    for rec in records:
        for view in rec.views:
            kp, sc = load_keypoints2d(rec.path(view.keypoints2d), rec.num_frames)
            assert kp.shape == (rec.num_frames, 133, 2)
    assert main(["keypoints", str(root), "--detector", str(tmp_path / "nowhere")]) == 2
