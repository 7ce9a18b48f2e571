"""``pose_eval`` (:class:`dimo.callbacks.PoseEvaluation`): MPJPE / PA-MPJPE / T_root of the validation
samples of both methods, by the harness's own code (``evaluate``'s pose metrics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, seed_everything
from torch.utils.data import DataLoader

from dimo.callbacks import PoseEvaluation
from dimo.testing import tiny_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
DETECTOR = REPO / "pretrained" / "toy-detector"
NAMES = ("mpjpe", "pa_mpjpe", "t_root")


def _3dimo_batch(toy_root, size: int = 32, frames: int = 5) -> dict:
    from dimo.data import to_model_batch
    from dimo.data.datamodule import ViewRichDataModule

    dm = ViewRichDataModule(root=toy_root, task="3dimo", num_frames=frames, height=size, width=size, batch_size=3,
                            val_batches=1, weights={"internet": 1.0, "ue5": 1.0, "multiview": 1.0},
                            log_preview=False, seed=0)  # fmt: skip
    return to_model_batch(next(iter(dm.val_dataloader())))


def _reference_from_manifest(root: Path, target_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The clip's joints in the target camera and its intrinsics at the sample's size, read from the manifest
    by the sample's ``target_key`` (``id|v<view>|f<frames>|<H>x<W>|<crop>``): independent of the sample's
    ``target_joints3d`` / ``target_K``."""

    from dimo.data.manifest import load_manifest, load_motion
    from dimo.data.video import adjust_intrinsics, resize_crop_plan

    clip, view, frames, size, crop = target_key.split("|")
    v = int(view[1:])
    idx = [int(f) for f in frames[1:].split(",")]
    h, w = (int(x) for x in size.split("x"))
    rec = next(r for r in load_manifest(root)[0] if r.id == clip)
    K, R, t = rec.views[v].cameras(rec.num_frames)
    joints = load_motion(rec)["joints"][idx] @ np.swapaxes(R[idx], -1, -2) + t[idx][:, None]
    plan = resize_crop_plan(rec.height, rec.width, h, w, crop)
    return joints, adjust_intrinsics(K[idx], rec.height, rec.width, plan)


def _evaluate(videos: list[torch.Tensor], refs: list[tuple[np.ndarray, np.ndarray]], tmp: Path, lifter: str):
    """``evaluate``'s pose metrics (``run_pose_evaluation``) on the clips written as PNG frame folders, with
    the references as the user's ``<item>.npz`` labels."""

    from PIL import Image

    from dimo.eval.harness import EvalConfig
    from dimo.eval.motion import run_pose_evaluation

    gen, ref = tmp / "generated", tmp / "reference"
    ref.mkdir(parents=True)
    for i, (video, (joints, K)) in enumerate(zip(videos, refs)):
        item = gen / f"clip{i:02d}"
        item.mkdir(parents=True)
        u8 = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for f, frame in enumerate(u8):
            Image.fromarray(frame).save(item / f"{f:03d}.png")
        np.savez(ref / f"clip{i:02d}.npz", joints=joints, K=K)
    cfg = EvalConfig(
        pose_detector=str(DETECTOR), lifter=lifter, reference_motion=str(ref), pose_on_driving=False
    )
    return run_pose_evaluation(gen, cfg, list(NAMES), progress=False).values


def test_3dimo_validation_logs_what_evaluate_computes_on_the_same_clips(toy_root, tmp_path):
    from dimo.geometry.cameras import project
    from dimo.testing import tiny_threedimo_module

    seed_everything(0)
    batch = _3dimo_batch(toy_root)
    assert batch["target_joints3d_valid"].all() and len(set(batch["clip_id"])) == 3
    # the sample's new reference: in reconstruction samples the driving view is the target view, so the
    # target-camera joints through target_K land on the driving view's projected 2D joints
    for i, task in enumerate(batch["task"]):
        uv, z = project(batch["target_joints3d"][i], batch["target_K"][i], torch.eye(3), torch.zeros(3))
        if task == "reconstruction":
            ok = batch["joints2d_valid"][i]
            assert (uv[ok] - batch["joints2d"][i][ok]).abs().max() < 1e-3 and (z > 0).all()
    module = tiny_threedimo_module(val_metric_batches=1, sample_steps=1, val_metrics=["psnr"])
    module.generate = lambda b, num_steps=None: b[
        "target"
    ]  # a perfect generator: the detector sees toy renders
    callback = PoseEvaluation(detector=DETECTOR, lifter="fixed_depth")
    trainer = tiny_trainer(tmp_path, callbacks=[callback])
    logged = trainer.validate(module, DataLoader([batch], batch_size=None), verbose=False)[0]
    refs = [_reference_from_manifest(toy_root, k) for k in batch["target_key"]]
    videos = list(batch["target"])
    want = _evaluate(videos, refs, tmp_path / "right", "fixed_depth")
    for name in NAMES:
        assert float(logged[f"val/{name}"]) == pytest.approx(want[name], rel=1e-5), name
        # the real target frames, scored the same way (the floor): here the "samples" are those frames
        assert float(logged[f"val/{name}_real"]) == float(logged[f"val/{name}"]), name
    # a wrong wiring (each clip compared with another clip's motion) gives other numbers
    wrong = _evaluate(videos, refs[1:] + refs[:1], tmp_path / "wrong", "fixed_depth")
    assert abs(wrong["mpjpe"] - want["mpjpe"]) > 5 and abs(wrong["pa_mpjpe"] - want["pa_mpjpe"]) > 5, (
        want,
        wrong,
    )


def test_hvg_validation_scores_every_view_against_the_sample_motion(tmp_path):
    from dimo.eval.motion import score_item, summarise
    from dimo.geometry.cameras import project
    from dimo.pose.detect import load_detector
    from dimo.pose.lifting import get_lifter
    from dimo.testing import hvg_batch, tiny_hvg_module

    seed_everything(0)
    batch = hvg_batch(b=2, views=2, frames=3, height=64, width=64)
    module = tiny_hvg_module(val_metrics=["psnr"], gap_sigmas=())
    module.generate = lambda b, gen=None, steps=None: b["target"]
    clips = module.pose_clips(batch, batch["target"])
    assert len(clips) == 2 * 2
    for k, (video, ref) in enumerate(clips):
        i, v = divmod(k, 2)
        assert torch.equal(video, batch["target"][i, v])
        # the reference is in that view's camera: its pelvis projects onto the sample's pelvis2d
        uv, _ = project(
            ref.joints[:, :1], ref.K, torch.eye(3, dtype=ref.K.dtype), torch.zeros(3, dtype=ref.K.dtype)
        )
        assert (uv[:, 0].float() - batch["pelvis2d"][i, v]).abs().max() < 1e-3
    callback = PoseEvaluation(detector=DETECTOR, lifter="fixed_depth")
    trainer = tiny_trainer(tmp_path, callbacks=[callback])
    logged = trainer.validate(module, DataLoader([batch], batch_size=None), verbose=False)[0]
    det, lift = load_detector(DETECTOR), get_lifter("fixed_depth")
    want = summarise([score_item(x, r, det, lift, driving=False)["generated"] for x, r in clips])
    for name in NAMES:
        assert float(logged[f"val/{name}"]) == pytest.approx(want[name], rel=1e-6), name
    assert "val/pose_unscored" not in logged
    # a clip the lifter refuses is counted, not a crash; the others are still scored
    calls = []

    def picky(uv, conf, K):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("no valid 2D keypoint")
        return lift(uv, conf, K)

    callback.lifter = picky
    with pytest.warns(UserWarning, match="not scored"):
        logged = trainer.validate(module, DataLoader([batch], batch_size=None), verbose=False)[0]
    assert float(logged["val/pose_unscored"]) == 1 and "val/pose_unscored_real" not in logged
    assert len(calls) == 4 + 4  # the generated views, then the real ones
    assert float(logged["val/mpjpe_real"]) == pytest.approx(want["mpjpe"], rel=1e-6)
    rest = summarise([score_item(x, r, det, lift, driving=False)["generated"] for x, r in clips[1:]])
    assert float(logged["val/mpjpe"]) == pytest.approx(rest["mpjpe"], rel=1e-6)


def test_off_by_default_costs_nothing(tmp_path):
    from dimo.cli import run_lightning

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"an inactive PoseEvaluation used the module ({name})")

    off = PoseEvaluation()
    assert not off.active
    off.setup(None, Untouchable(), "validate")
    off.on_validation_batch_end(_Trainer(), Untouchable(), {"generated": None}, {}, 0)
    off.on_validation_epoch_end(_Trainer(), Untouchable())
    # the CLI leaves it out of the trainer's callbacks unless a detector is named (hvg.yaml names one; a
    # config without a pose_eval: section gets the default, None: tests/test_experiments.py)
    base = ["--config", str(REPO / "experiments" / "hvg.yaml"), f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false"]  # fmt: skip
    cli = run_lightning([*base, "--pose_eval.detector=null"], run=False)
    assert not any(isinstance(c, PoseEvaluation) for c in cli.trainer.callbacks)
    cli = run_lightning([*base, f"--pose_eval.detector={DETECTOR}", "--pose_eval.lifter=free3d"], run=False)
    (on,) = [c for c in cli.trainer.callbacks if isinstance(c, PoseEvaluation)]
    assert on.active and on.lifter_name == "free3d"


class _Trainer:
    sanity_checking = False
    world_size = 1


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--pose_eval.lifter=nope", "pose_eval.lifter: unknown lifting method 'nope'"),
        (
            "--pose_eval.detector=/nonexistent/detector",
            "pose_eval.detector: /nonexistent/detector/config.json",
        ),
    ],
)
def test_a_bad_pose_eval_value_is_one_line_before_any_work(option, message, tmp_path, capsys):
    from dimo import cli

    argv = ["fit", "--config", str(REPO / "experiments" / "hvg.yaml"), f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", option]  # fmt: skip
    if "lifter" in option:
        argv.append(f"--pose_eval.detector={DETECTOR}")
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err, err


class _PerfectGenerator(LightningModule):
    """Validation "samples" = the targets; clips and references as HVG's (every view of every grid)."""

    def validation_step(self, batch, batch_idx):
        return {"generated": batch["target"]}

    def pose_clips(self, batch, generated):
        from dimo.models.hvg import HVGModule

        return HVGModule.pose_clips(self, batch, generated)


def test_two_ranks_log_what_one_process_logs(tmp_path):
    """DDP (2 CPU processes, gloo): each rank scores its own batch, the summed errors are reduced, and the
    logged numbers equal one process scoring both batches."""

    from dimo.testing import collate, synthetic_hvg_sample

    batches = [collate([synthetic_hvg_sample(2, 3, 64, 64, seed=s)]) for s in (0, 1)]  # two clips
    logged = []
    for devices, strategy, per_rank in ((1, "auto", 2), (2, "ddp_spawn", 1), (1, "auto", 1)):
        callback = PoseEvaluation(detector=DETECTOR, lifter="fixed_depth", batches=per_rank)
        trainer = tiny_trainer(
            tmp_path / str(devices), callbacks=[callback], devices=devices, strategy=strategy
        )
        logged.append(
            trainer.validate(_PerfectGenerator(), DataLoader(batches, batch_size=None), verbose=False)[0]
        )
    for name in NAMES:
        assert float(logged[1][f"val/{name}"]) == pytest.approx(float(logged[0][f"val/{name}"]), rel=1e-6), (
            name
        )
