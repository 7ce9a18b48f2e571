"""Free3D (ML-RQ-VAE lifting from 2D only), the lifting registry, pose metrics on generated videos in the
harness, and pseudo labels in 3DiMo's geometric loss."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from dimo.pose.free3d import (
    BODY,
    PRESETS,
    Free3DError,
    Free3DLifter,
    Free3DNet,
    normalised_coords,
    project_normalised,
    solve_translation,
)
from dimo.pose.free3d_module import (
    TRAIN_KEYS,
    Free3DDataModule,
    Free3DModule,
    orientation_losses,
    physical_losses,
    synth_sequences,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _camera_batch(seed: int = 5, clips: int = 3):
    """Toy clips of a validation-like seed, in the camera frame: xn (B, T, 16, 2), conf, joints (B, T, 16, 3)."""

    seqs = synth_sequences(seed, clips, num_frames=8, with_3d=True)
    ids = list(BODY)
    xn = torch.stack([normalised_coords(s["uv"][:, ids], s["K"]) for s in seqs])
    conf = torch.stack([s["valid"][:, ids].float() for s in seqs])
    joints = torch.stack([s["joints_cam"][:, ids] for s in seqs])
    return xn, conf, joints


def test_net_shapes_any_length_and_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    net = Free3DNet(PRESETS["tiny"]).eval()
    for T in (1, 7, 16):
        xn, conf = torch.randn(2, T, 16, 2) * 0.1, torch.ones(2, T, 16)
        out = net(xn, conf)
        assert out["pose"].shape == (2, T, 16, 3) and out["full"].shape == (2, T, 55, 3)
        assert out["codes"].shape == (2, PRESETS["tiny"].num_quantizers, T)
        # root-relative (mid-hip at 0) and scale-fixed: the mean limb chain is the neutral skeleton's
        from dimo.pose.free3d import L_HIP, R_HIP, chain_length, rest_chain_length

        mid = 0.5 * (out["pose"][..., L_HIP, :] + out["pose"][..., R_HIP, :])
        assert mid.abs().max() < 1e-5
        assert torch.allclose(
            chain_length(out["pose"]).mean(-1), torch.tensor(rest_chain_length()).float(), atol=1e-4
        )
        # the 16 output joints are the posed skeleton's plus the (zero-initialised) offsets
        assert torch.allclose(out["pose"], out["full"][..., list(BODY), :], atol=1e-5)
    folder = net.save_pretrained(tmp_path / "f3d")
    again = Free3DNet.from_pretrained(folder).eval()
    xn, conf = torch.randn(1, 5, 16, 2) * 0.1, torch.ones(1, 5, 16)
    assert torch.equal(net(xn, conf)["pose"], again(xn, conf)["pose"])
    (folder / "model.safetensors").unlink()
    with pytest.raises(Free3DError, match="model.safetensors: missing"):
        Free3DNet.from_pretrained(folder)
    with pytest.raises(ValueError, match="expected xn"):
        net(torch.zeros(1, 4, 15, 2), torch.ones(1, 4, 15))


def test_translation_solve_and_losses_on_true_motion():
    xn, conf, joints = _camera_batch()
    root = 0.5 * (joints[..., BODY.index(1), :] + joints[..., BODY.index(2), :])
    pose = joints - root[..., None, :]
    t = solve_translation(pose.double(), xn.double(), conf.double())
    assert (t.float() - root).abs().max() < 2e-3  # exact 2D + the true shape: the true root (metres)
    assert (project_normalised(joints) - xn)[conf > 0].abs().max() < 1e-5
    # the true toy motion is (near) free of every prior penalty; a broken one is not
    o, p = orientation_losses(pose), physical_losses(pose, joints)
    assert max(float(v) for v in {**o, **p}.values()) < 0.01, {**o, **p}
    stretched = pose.clone()
    stretched[:, ::2, BODY.index(7)] += torch.tensor([0.0, 0.15, 0.0])  # an ankle jumping every other frame
    assert physical_losses(stretched, stretched + root[..., None, :])["bone"] > 10 * p["bone"] + 1e-3
    backwards = pose.clone()
    backwards[..., 2] *= -1  # mirrored in depth: feet point backwards, knees bend the wrong way
    assert orientation_losses(backwards)["feet"] > 0.1


def test_training_batches_carry_no_3d_label():
    dm = Free3DDataModule(train_clips=6, val_clips=2, batch_size=4, window=8, stride=4, num_frames=12)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == TRAIN_KEYS  # normalised 2D, confidences, focal length: nothing else
    assert batch["xn"].shape == (4, 8, 16, 2) and batch["conf"].shape == (4, 8, 16)
    assert batch["focal"].shape == (4,)
    for item in dm.train_set.items:  # the stored training items too
        assert set(item) == TRAIN_KEYS and item["xn"].shape[-1] == 2
    assert "joints_cam" in next(iter(dm.val_dataloader()))  # 3D only where metrics are computed
    # a training step needs nothing but these keys
    module = Free3DModule("tiny")
    loss = module.training_step({k: batch[k] for k in TRAIN_KEYS}, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    with pytest.raises(ValueError, match="differ"):
        Free3DDataModule(seed=0)


def test_few_step_fit_lowers_the_losses_and_logs_val_metrics(tmp_path):
    import lightning.pytorch as pl

    from dimo.pose.free3d_module import export

    torch.manual_seed(0)
    dm = Free3DDataModule(train_clips=16, val_clips=4, batch_size=8, window=8, stride=4, num_frames=12)
    module = Free3DModule("tiny", optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    losses = []

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            assert set(batch) == TRAIN_KEYS
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        max_steps=60, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[Grab()], val_check_interval=60, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )  # fmt: skip
    dm.setup("fit")
    fixed = next(iter(dm.train_dataloader()))

    def reproj() -> float:
        module.eval()
        with torch.no_grad():
            value = float(module.losses(fixed)["reproj"])
        module.train()
        return value

    before = reproj()
    trainer.fit(module, dm)
    assert reproj() < 0.6 * before, (before, reproj(), losses)
    assert len(losses) == 60
    metrics = trainer.callback_metrics
    for key in ("val/mpjpe", "val/pa_mpjpe", "val/t_root"):
        assert math.isfinite(float(metrics[key])) and 0 < float(metrics[key]) < 5000
    assert float(metrics["val/codes_used"]) > 1  # the dead-code restart keeps the codebooks in use
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    folder = export(ckpt, tmp_path / "exported")
    lifter = Free3DLifter.from_pretrained(folder)
    seq = synth_sequences(5, 1, num_frames=6)[0]
    out = lifter(seq["uv"], seq["valid"].float(), seq["K"])
    assert out.shape == (6, 55, 3) and (out[..., 2] > 0).all()
    module.eval()
    xn = normalised_coords(seq["uv"][:, list(BODY)], seq["K"])[None]
    ref = module.lift(xn, seq["valid"][:, list(BODY)].float()[None])["joints"][0]
    assert torch.allclose(out[:, list(BODY)], ref, atol=1e-4)


def test_lifter_registry(tmp_path):
    from dimo.pose.lifting import LIFTERS, get_lifter, lifter_names, register_lifter

    assert {"fixed_depth", "smplify", "free3d"} <= set(lifter_names())
    Free3DNet(PRESETS["tiny"]).save_pretrained(tmp_path / "f3d")
    seq = synth_sequences(5, 1, num_frames=4)[0]
    for name, opts in (("fixed_depth", {}), ("free3d", {"folder": tmp_path / "f3d"})):
        out = get_lifter(name, **opts)(seq["uv"], seq["valid"].float(), seq["K"])
        assert out.shape == (4, 55, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown lifting method 'nope'"):
        get_lifter("nope")
    register_lifter("test_zero", lambda: lambda uv, conf, K: torch.zeros(uv.shape[0], 55, 3))
    try:
        assert get_lifter("test_zero")(seq["uv"], seq["valid"], seq["K"]).abs().sum() == 0
        with pytest.raises(ValueError, match="already registered"):
            register_lifter("test_zero", "x:y")
    finally:
        LIFTERS.pop("test_zero")


def _independent_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over frames and the 14 evaluation joints of |(p - p_root) - (t - t_root)| in mm, by loops."""

    from dimo.pose.lifting import EVAL_JOINTS

    total, n = 0.0, 0
    for f in range(pred.shape[0]):
        pr = [(pred[f, 1, k].item() + pred[f, 2, k].item()) / 2 for k in range(3)]
        tr = [(target[f, 1, k].item() + target[f, 2, k].item()) / 2 for k in range(3)]
        for j in EVAL_JOINTS:
            d = [(pred[f, j, k].item() - pr[k]) - (target[f, j, k].item() - tr[k]) for k in range(3)]
            total += math.sqrt(sum(x * x for x in d)) * 1000
            n += 1
    return total / n


def test_evaluate_pose_metrics_on_a_generated_folder(toy_root, tmp_path):
    """End to end: `dimo.cli evaluate --metrics mpjpe pa_mpjpe t_root psnr` on two "generated" videos
    (a clip's own driving video, and a copy of another clip's video named by the first's sidecar)."""

    from dimo.commands.evaluate import main
    from dimo.data.manifest import load_manifest, load_motion
    from dimo.data.video import read_frames
    from dimo.pose.detect import load_detector
    from dimo.pose.joints import wholebody_to_smplx
    from dimo.pose.lifting import fixed_depth_lift

    records = [r for r in load_manifest(toy_root)[0] if r.source == "internet"]
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    a, b = records[0], records[1]
    shutil.copy(a.path(a.views[0].video), gen / "same.mp4")  # a perfect generation
    shutil.copy(b.path(b.views[0].video), gen / "other.mp4")  # the wrong motion
    for name in ("same", "other"):
        (gen / f"{name}.json").write_text(json.dumps({"driving": str(a.path(a.views[0].video).resolve())}))
        shutil.copy(a.path(a.views[0].video), ref / f"{name}.mp4")
    detector = "pretrained/toy-detector"
    out = tmp_path / "eval"
    argv = [
        "--generated", str(gen), "--reference", str(ref), "--metrics", "mpjpe", "pa_mpjpe", "t_root", "psnr",
        "--pose-detector", detector, "--lifter", "fixed_depth", "--out", str(out), "--no-progress", "--no-cache",
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "metrics.json").read_text())
    m, d = result["metrics"], result["details"]
    assert set(m) == {"mpjpe", "pa_mpjpe", "t_root", "psnr"}
    assert d["mpjpe"]["lifter"] == "fixed_depth" and d["mpjpe"]["reference_labels"] == ["gt"]
    assert d["mpjpe"]["reference_motion"] == [f"{toy_root} clip {a.id} view 0"]
    assert "fixed_depth" in (out / "metrics.md").read_text() and a.id in (out / "metrics.md").read_text()
    # independent recomputation: detector + lifter + loops over joints, per item, mean over joints
    det = load_detector(detector)
    T = a.num_frames
    K, R, t = (torch.from_numpy(np.ascontiguousarray(x)).double() for x in a.views[0].cameras(T))
    target = torch.from_numpy(load_motion(a)["joints"]).double() @ R.transpose(-1, -2) + t[:, None]
    per = {}
    for name, rec in (("same", a), ("other", b)):
        frames = read_frames(rec.path(rec.views[0].video), list(range(T)))
        uv, sc, valid = wholebody_to_smplx(*det(frames))
        per[name] = _independent_mpjpe(fixed_depth_lift(uv, valid, K.float()).double(), target)
    assert m["mpjpe"] == pytest.approx((per["same"] + per["other"]) / 2, rel=1e-4)  # equal frame counts
    rows = {r["item"]: r for r in __import__("csv").DictReader(open(out / "per_video.csv"))}
    assert float(rows["same"]["mpjpe"]) == pytest.approx(per["same"], rel=1e-4)
    assert float(rows["same"]["mpjpe_driving"]) == pytest.approx(per["same"], rel=1e-4)  # same video
    assert float(rows["other"]["mpjpe"]) > float(rows["same"]["mpjpe"])  # the wrong motion scores worse
    assert float(rows["same"]["psnr"]) == 100.0
    # only pose metrics: no --reference needed; a missing detector is one clear error
    assert main(["--generated", str(gen), "--metrics", "mpjpe", "--lifter", "fixed_depth",
                 "--pose-detector", detector, "--out", str(tmp_path / "e2"), "--no-progress"]) == 0  # fmt: skip
    assert main(["--generated", str(gen), "--metrics", "mpjpe", "--out", str(tmp_path / "e3")]) == 2
    assert main(["--generated", str(gen), "--metrics", "psnr", "--out", str(tmp_path / "e4")]) == 2


def test_pseudo_labels_reach_the_geometric_loss_unless_switched_off(toy_root, tmp_path):
    from dataclasses import replace

    from dimo.data.dataset import ClipDataset
    from dimo.data.manifest import MotionRecord, load_manifest, write_manifest
    from dimo.data.spec import SampleSpec
    from dimo.models.threedimo.module import geometric_loss, label_masks
    from dimo.testing import collate, threedimo_batch, tiny_threedimo_module

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    records = load_manifest(root)[0]
    rec = next(r for r in records if r.source == "internet")
    pseudo = replace(
        rec, motion=MotionRecord(file=rec.motion.file, body="pseudo", hands="missing", joints3d="pseudo")
    )
    write_manifest(root, [pseudo if r.id == rec.id else r for r in records])
    rec = next(r for r in load_manifest(root)[0] if r.id == rec.id)
    ds = ClipDataset({"internet": [rec]}, SampleSpec(num_frames=5, height=32, width=32))
    sample = ds.build(rec, "reconstruction", np.random.default_rng(0))
    assert bool(sample["body_pseudo"]) and not bool(sample["hand_pseudo"]) and sample["body_valid"].all()
    batch = collate([sample])
    assert label_masks(batch, "gt_and_pseudo")[0].all()
    assert not label_masks(batch, "gt")[0].any()

    # the module: the default (paper) trains on them, geo_labels="gt" ignores them
    fake = threedimo_batch(b=2, frames=5)
    fake["body_pseudo"][0] = True
    body6d = torch.randn(2, 5, 21, 6)
    hand6d = torch.randn(2, 5, 30, 6)
    losses = {}
    for mode in ("gt_and_pseudo", "gt"):
        module = tiny_threedimo_module(geo_labels=mode)
        assert module.geo_labels == mode
        bv, hv = label_masks(fake, module.geo_labels)
        losses[mode] = geometric_loss(body6d, hand6d, fake["body_pose"], fake["hand_pose"], bv, hv)
        z = module.net.encode_motion(fake["driving"], fake["joints2d"], fake["joints2d_valid"])
        out = module._with_geometry(fake, z, 5, torch.zeros(()))
        only_gt = dict(
            fake, body_valid=fake["body_valid"] & torch.tensor([mode == "gt_and_pseudo", True])[:, None]
        )
        expect = module._with_geometry(only_gt, z, 5, torch.zeros(()))
        assert torch.allclose(out["loss_geo"], expect["loss_geo"])
    assert not torch.allclose(losses["gt_and_pseudo"], losses["gt"])


def test_committed_free3d_beats_the_flat_baseline_on_held_out_clips():
    """pretrained/toy-free3d (make train-free3d) on exact 2D of held-out toy clips (seed 0, never trained on)."""

    from dimo.eval.pose import PoseMetrics
    from dimo.pose.lifting import EVAL_JOINTS, ROOT, fixed_depth_lift, get_lifter

    lifter = get_lifter("free3d")  # the committed folder
    scores = {}
    for name, lift in (("free3d", lifter), ("flat", lambda uv, c, K: fixed_depth_lift(uv, c > 0, K))):
        m = PoseMetrics(root=list(ROOT), joints=EVAL_JOINTS)
        for s in synth_sequences(0, 8, num_frames=20, with_3d=True):
            m.update(lift(s["uv"], s["valid"].float(), s["K"])[None].double(), s["joints_cam"][None].double())
        scores[name] = {k: float(v) for k, v in m.compute().items()}
    # measured on these 8 internet clips: free3d MPJPE 64.6 mm / PA-MPJPE 38.1 against 175.1 / 143.1 (flat)
    assert scores["free3d"]["mpjpe"] < 130 and scores["free3d"]["pa_mpjpe"] < 80, scores
    assert scores["free3d"]["mpjpe"] < 0.7 * scores["flat"]["mpjpe"], scores
