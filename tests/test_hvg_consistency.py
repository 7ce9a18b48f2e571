"""HVG's multi-view keypoint consistency in validation (``consistency_detector``): camera wiring, logging."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader

from dimo.eval.multiview import KeypointConsistency
from dimo.geometry.cameras import project
from dimo.models.hvg.module import KP_CHANNELS
from dimo.pose.joints import TOY_JOINTS
from dimo.pose.toy_detector import DetectorError, ToyKeypointDetector
from dimo.testing import SyntheticHVGDataset, hvg_batch, tiny_hvg_module, tiny_trainer

DETECTOR = Path(__file__).resolve().parents[1] / "pretrained" / "toy-detector"


def _truth_2d(batch: dict) -> torch.Tensor:
    """Exact projections of the batch's joints (detector channel order): (B, V, T, 46, 2)."""

    j = batch["joints3d"][:, None, :, list(TOY_JOINTS)]  # (B, 1, T, 46, 3)
    cam = [batch[k][:, :, None] for k in ("K", "R", "t")]  # per view, shared by the frames
    uv, _ = project(j, *cam)
    return uv


class LookupDetector:
    """Stands in for the toy detector: returns the exact projections of the target frame it is shown
    (found by equality), scores 1 on even channels and 0.1 on odd ones."""

    def __init__(self, batch: dict) -> None:
        self.net = torch.nn.Identity()
        self.frames = batch["target"].flatten(0, 2)  # (B*V*T, 3, H, W)
        self.uv = _truth_2d(batch).flatten(0, 2)  # (B*V*T, 46, 2)

    def detect(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = [next(i for i, f in enumerate(self.frames) if torch.equal(f, x)) for x in images]
        score = torch.where(torch.arange(46) % 2 == 0, 1.0, 0.1).expand(len(idx), 46)
        return self.uv[idx], score

    detect_body = ToyKeypointDetector.detect_body  # the real body-joint selection over this detect()


def _module_with_lookup(batch: dict):
    module = tiny_hvg_module(consistency_detector=DETECTOR)
    module.kp_detector = LookupDetector(batch)
    return module


def _scores(module) -> dict[str, float]:
    out = {k: float(m.compute()) for k, m in module.kp_metrics.items()}
    out.update({k: float(m.compute()) for k, m in module.kp_valid.items()})
    for m in [*module.kp_metrics.values(), *module.kp_valid.values()]:
        m.reset()
    return out


def test_projected_truth_is_consistent_and_wrong_views_or_cameras_are_not():
    batch = hvg_batch(b=2, views=3, frames=2)
    module = _module_with_lookup(batch)
    assert KP_CHANNELS == tuple(range(16))  # body joints only

    module.update_keypoint_consistency(batch, batch["target"].clone())  # "generated" = the targets
    got = _scores(module)
    # the cameras are applied right: exactly projected joints triangulate back with no error
    assert got["kp_reproj_px"] < 1e-3 and got["kp_reproj_px_real"] < 1e-3, got
    # body channels only, thresholded at consistency_min_score (0.3): the even ones count
    assert got["kp_valid_frac"] == pytest.approx(0.5) and got["kp_valid_frac_real"] == pytest.approx(0.5)

    # Triangulation cannot see a rigid motion of the whole rig: on the synthetic ring of cameras at
    # pelvis height, a cyclic shift of the views or another sample's cameras (another yaw) are nearly
    # that (0.2 px measured). Swapping two views, a view of another sample, or intrinsics in another
    # pixel frame (the crop's principal-point shift missed) are not.
    swapped = batch["target"][:, [0, 2, 1]].clone()
    module.update_keypoint_consistency(batch, swapped)
    got = _scores(module)
    assert got["kp_reproj_px_real"] < 1e-3 and got["kp_reproj_px"] > 0.5, got  # measured 1.4 px

    foreign = batch["target"].clone()
    foreign[:, 1] = batch["target"].roll(1, dims=0)[:, 1]  # view 1 shows the other sample
    module.update_keypoint_consistency(batch, foreign)
    got = _scores(module)
    assert got["kp_reproj_px_real"] < 1e-3 and got["kp_reproj_px"] > 0.5, got  # measured 1.4 px

    shifted = dict(batch, K=batch["K"].clone())
    shifted["K"][:, :, :2, 2] += 4.0  # principal point 4 px off: not the aligned sample's pixel frame
    module.update_keypoint_consistency(shifted, batch["target"].clone())
    got = _scores(module)
    assert got["kp_reproj_px"] > 1.0 and got["kp_reproj_px_real"] > 1.0, got  # measured 4.2 px


def test_missing_detector_file_fails_at_construction(tmp_path: Path):
    with pytest.raises(DetectorError, match="config.json: missing"):
        tiny_hvg_module(consistency_detector=tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(DETECTOR / "config.json", partial / "config.json")
    with pytest.raises(DetectorError, match="model.safetensors: missing"):
        tiny_hvg_module(consistency_detector=partial)
    with pytest.raises(ValueError, match="consistency_min_score"):
        tiny_hvg_module(consistency_detector=DETECTOR, consistency_min_score=1.5)


def test_validation_logs_keypoint_consistency_of_samples_and_targets(tmp_path: Path, one_thread):
    seed_everything(0)
    module = tiny_hvg_module(consistency_detector=DETECTOR, val_metrics=[])
    assert module.hparams["consistency_detector"] == str(DETECTOR)
    assert not any(k.startswith(("kp_", "kp_detector")) for k in module.state_dict())  # no checkpoint keys
    loader = DataLoader(SyntheticHVGDataset(2, 3, 2, 64, 64), batch_size=2)
    logged = tiny_trainer(tmp_path).validate(module, loader, verbose=False)[0]
    for k in ("kp_reproj_px", "kp_reproj_px_real", "kp_valid_frac", "kp_valid_frac_real"):
        assert f"val/{k}" in logged, (k, sorted(logged))

    # the real-frame number is the real detector's joints on the targets, triangulated with the batch's
    # cameras (computed here independently of the module)
    batch = next(iter(loader))
    det = ToyKeypointDetector.from_pretrained(DETECTOR)
    uv, score = det.detect(batch["target"].flatten(0, 2))
    uv = uv[:, :16].reshape(2, 3, 2, 16, 2)
    valid = (score[:, :16] >= 0.3).reshape(2, 3, 2, 16)
    direct = KeypointConsistency()
    direct.update(uv, batch["K"], batch["R"], batch["t"], valid)
    assert float(logged["val/kp_reproj_px_real"]) == pytest.approx(float(direct.compute()), rel=1e-4)
    assert float(logged["val/kp_valid_frac_real"]) == pytest.approx(float(valid.float().mean()), rel=1e-5)


def test_generation_does_not_need_the_validation_detector(tmp_path: Path):
    """A checkpoint (and its export) of a run with ``consistency_detector`` rebuilds without that folder."""

    import json

    from dimo.pipelines.hvg import HVGPipeline
    from dimo.testing import save_module_checkpoint

    folder = tmp_path / "detector"
    shutil.copytree(DETECTOR, folder)
    module = tiny_hvg_module(consistency_detector=folder)
    save_module_checkpoint(module, tmp_path / "hvg.ckpt")
    shutil.rmtree(folder)  # another machine: the detector folder is not there
    pipe = HVGPipeline.from_checkpoint(tmp_path / "hvg.ckpt")  # rebuilt with no detector
    assert not any("detector" in k for k in pipe.config_dict())  # the pipeline holds none
    pipe.save_pretrained(tmp_path / "export")
    index = json.loads((tmp_path / "export" / "model_index.json").read_text())
    assert not any("detector" in k for k in index)  # (the training record names the run's folder)
    loaded = HVGPipeline.from_pretrained(tmp_path / "export")
    assert loaded.config_dict() == pipe.config_dict()
