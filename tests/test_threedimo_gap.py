"""3DiMo conditioning-use evidence: ``val/motion_gap`` (own vs another clip's driving frames)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything
from test_threedimo_training import _batch, _module
from torch.utils.data import DataLoader

from dimo.models.threedimo.module import other_clip_index, relative_gap
from dimo.testing import tiny_trainer


def test_other_clip_index_picks_the_next_sample_from_another_clip():
    assert other_clip_index(None, 3).tolist() == [1, 2, 0]
    assert other_clip_index(["a", "a", "b"], 3).tolist() == [2, 2, 0]
    assert other_clip_index(["a", "b", "a", "b"], 4).tolist() == [1, 2, 3, 0]
    assert other_clip_index(["a", "a"], 2).tolist() == [0, 1]  # nobody to swap with: itself
    assert float(relative_gap(2.0, 2.5)) == pytest.approx(0.25)


def _live(module):
    with torch.no_grad():
        for layer in module.net.transformer.motion_layers:
            layer.to_out[0].weight.normal_(std=0.3, generator=torch.Generator().manual_seed(3))
    return module


def _by_hand(module, batch, batch_idx=0):
    """The protocol written out independently: fixed noise, fixed sigma grid, own/other/no motion."""

    b, t = batch["driving"].shape[:2]
    x0, ref, text = module.encode_conditions(batch)
    g = torch.Generator().manual_seed(module.noise_seed + 7919 * (1 + batch_idx))
    noise = torch.randn(x0.shape, generator=g)
    other = [1, 0]
    drv_o = batch["driving"][other]
    z = {
        "own": module.net.encode_motion(batch["driving"], batch["joints2d"], batch["joints2d_valid"]),
        "other": module.net.encode_motion(drv_o, batch["joints2d"][other], batch["joints2d_valid"][other]),
        "none": None,
    }
    out = {}
    for name, zz in z.items():
        total = 0.0
        for s in module.gap_sigmas:
            sigma = torch.full((b,), s)
            x_t = (1 - s) * x0 + s * noise
            x_t = torch.cat([ref, x_t[:, :, 1:]], dim=2)
            ts = module._timesteps(sigma, x_t.shape)
            v = module.net(x_t, ts, text, zz, t)
            total += (v[:, :, 1:] - (noise - x0)[:, :, 1:]).square().mean().item()
        out[name] = total / len(module.gap_sigmas)
    return out


@torch.no_grad()
def test_conditioning_losses_follow_the_protocol():
    seed_everything(0)
    module = _live(_module(gap_sigmas=(0.3, 0.7))).eval()
    batch = _batch(b=2)
    res = module.conditioning_losses(batch, 0)
    own, other, none, count = (res[:3] / res[3]).tolist() + [res[3].item()]
    assert count == 2
    expected = _by_hand(module, batch)
    assert own == pytest.approx(expected["own"], rel=1e-5)
    assert other == pytest.approx(expected["other"], rel=1e-5)
    assert none == pytest.approx(expected["none"], rel=1e-5)
    assert abs(other - own) > 1e-4  # the swapped motion changes the prediction
    # the noise is fixed per validation batch, not per step
    module.noise_seed = module.noise_seed
    assert torch.equal(module.conditioning_losses(batch, 0), res)
    assert not torch.equal(module.conditioning_losses(batch, 1), res)


@torch.no_grad()
def test_gap_is_zero_for_the_zero_initialised_injection_and_for_identical_driving():
    seed_everything(0)
    module = _module().eval()  # zero-init: the motion cannot change the output yet
    own, other, none, _ = module.conditioning_losses(_batch(b=2), 0).tolist()
    assert own == other == none
    live = _live(_module()).eval()
    batch = _batch(b=2)
    batch["driving"][1] = batch["driving"][0]
    batch["joints2d"][1] = batch["joints2d"][0]
    own, other, _, _ = live.conditioning_losses(batch, 0).tolist()
    assert own == pytest.approx(other, rel=1e-6)  # "another clip" with the same frames: no gap
    batch["clip_id"] = ["x", "x"]
    assert live.conditioning_losses(batch, 0) is None  # one clip only: nothing to compare


def test_validation_logs_the_motion_gap(tmp_path: Path):
    seed_everything(0)
    module = _live(_module(sample_steps=1, val_metric_batches=0))
    loader = DataLoader([_batch(b=2), _batch(b=2, seed=1)], batch_size=None)
    trainer = tiny_trainer(tmp_path)
    logged = trainer.validate(module, loader, verbose=False)[0]
    for key in ("val/loss_own_motion", "val/loss_other_motion", "val/loss_no_motion", "val/motion_gap"):
        assert key in logged, sorted(logged)
    expected = (logged["val/loss_other_motion"] - logged["val/loss_own_motion"]) / logged[
        "val/loss_own_motion"
    ]
    assert float(logged["val/motion_gap"]) == pytest.approx(float(expected), rel=1e-4)
    direct = [module.conditioning_losses(b, i) for i, b in enumerate(loader)]
    sums = sum(direct)
    assert float(logged["val/loss_own_motion"]) == pytest.approx(float(sums[0] / sums[3]), rel=1e-5)


@torch.no_grad()
def test_latent_cache_returns_what_the_vae_computes_and_skips_known_windows():
    seed_everything(0)
    module = _module(latent_cache_size=3).eval()
    batch = _batch(b=2)
    batch["target_key"] = ["clip_a|v0|f0-8", "clip_b|v0|f0-8"]
    direct_x0 = module.vae.encode(batch["target"].transpose(1, 2))
    direct_ref = module.vae.encode(batch["reference"][:, :, None])
    calls = []
    original = module.vae.encode
    module.vae.encode = lambda x: calls.append(x.shape) or original(x)
    x0, ref, _ = module.encode_conditions(batch)
    assert len(calls) == 2  # target and reference of the two misses
    torch.testing.assert_close(x0, direct_x0)
    torch.testing.assert_close(ref, direct_ref)
    x0b, refb, _ = module.encode_conditions(batch)
    assert len(calls) == 2  # all hits: no encode
    assert torch.equal(x0b, x0) and torch.equal(refb, ref)
    other = _batch(b=2, seed=5)
    other["target_key"] = ["clip_c|v0|f0-8", "clip_a|v0|f0-8"]  # one miss, one hit
    x0c, _, _ = module.encode_conditions(other)
    assert calls[-1][0] == 1  # only the miss was encoded
    torch.testing.assert_close(x0c[1], x0[0])  # the hit is clip_a's cached latent
    assert len(module._latent_cache) == 3


def test_cross_view_loader_feeds_its_own_gap_and_leaves_the_plain_one_alone(tmp_path: Path):
    from dimo.models.threedimo.module import CROSS_VIEW_BATCH_OFFSET

    seed_everything(0)
    module = _live(_module(sample_steps=1, val_metric_batches=0))
    plain = DataLoader([_batch(b=2), _batch(b=2, seed=1)], batch_size=None)
    cross = DataLoader([_batch(b=2, seed=2)], batch_size=None)
    trainer = tiny_trainer(tmp_path)
    logged = trainer.validate(module, [plain, cross], verbose=False)
    keys = {k for d in logged for k in d}
    assert not any("dataloader_idx" in k for k in keys), sorted(keys)  # one name per metric
    logged = {k: float(v) for d in logged for k, v in d.items()}
    only_plain = sum(module.conditioning_losses(b, i) for i, b in enumerate(plain))
    assert logged["val/loss_own_motion"] == pytest.approx(float(only_plain[0] / only_plain[3]), rel=1e-5)
    c = module.conditioning_losses(next(iter(cross)), CROSS_VIEW_BATCH_OFFSET)
    own, other = float(c[0] / c[3]), float(c[1] / c[3])
    assert logged["val/cross_view_loss_own_motion"] == pytest.approx(own, rel=1e-5)
    assert logged["val/cross_view_motion_gap"] == pytest.approx((other - own) / own, abs=1e-6)
    assert logged["val/cross_view_motion_gap"] != pytest.approx(logged["val/motion_gap"], rel=1e-3)


def test_datamodule_cross_view_batches_drive_from_another_view(toy_root):
    from dimo.data.datamodule import ViewRichDataModule

    dm = ViewRichDataModule(
        root=toy_root,
        task="3dimo",
        num_frames=5,
        height=32,
        width=32,
        batch_size=2,
        val_batches=1,
        val_cross_view_batches=2,
        weights={"internet": 1.0},
        log_preview=False,
        seed=0,
    )
    plain, cross = dm.val_dataloader()
    (batch,) = list(plain)
    assert set(batch["task"]) == {"reconstruction"}
    assert torch.equal(batch["driving"], batch["target"])  # no augmentation in validation
    batches = list(cross)
    assert len(batches) == 2
    for b in batches:
        assert set(b["task"]) == {"cross_view"} and set(b["source"]) <= {"ue5", "multiview"}
        for i in range(2):  # another camera of the same moment: never the target's pixels
            assert not torch.equal(b["driving"][i], b["target"][i])
    assert [k for b in batches for k in b["target_key"]] == [
        k for b in dm.val_dataloader()[1] for k in b["target_key"]
    ]  # fixed keys: every validation sees the same samples
    with pytest.raises(ValueError, match="3dimo only"):
        ViewRichDataModule(root=toy_root, task="hvg", val_cross_view_batches=1)


def test_validation_samples_again_with_another_clips_motion(tmp_path: Path):
    """``val/psnr_gen_own`` / ``val/psnr_gen_other_motion``: the same samples (same noise) driven by
    their own and by the partner clip's frames; equal when the partner's frames are the same, different
    otherwise, and the own-motion PSNR is the PSNR of the validation sample itself."""

    seed_everything(0)
    module = _live(_module(sample_steps=2, val_metric_batches=1, val_metrics=("psnr",)))
    batch = _batch(b=2)
    logged = tiny_trainer(tmp_path).validate(module, DataLoader([batch], batch_size=None), verbose=False)[0]
    own, other = float(logged["val/psnr_gen_own"]), float(logged["val/psnr_gen_other_motion"])
    assert own == pytest.approx(float(logged["val/psnr_gen"]), rel=1e-5)  # both samples have a partner
    assert abs(own - other) > 2e-5, (own, other)  # the motion changes the sample (random targets: slightly)
    # a wrong wiring that swaps nothing (or swaps the target too) could not tell these apart
    same = _batch(b=2)
    same["driving"][1] = same["driving"][0]
    same["joints2d"][1] = same["joints2d"][0]
    logged = tiny_trainer(tmp_path).validate(module, DataLoader([same], batch_size=None), verbose=False)[0]
    assert float(logged["val/psnr_gen_own"]) == pytest.approx(
        float(logged["val/psnr_gen_other_motion"]), abs=1e-4
    )
    off = _live(_module(sample_steps=2, val_metric_batches=1, val_metrics=("psnr",), val_swap_samples=False))
    logged = tiny_trainer(tmp_path).validate(off, DataLoader([batch], batch_size=None), verbose=False)[0]
    assert "val/psnr_gen_other_motion" not in logged
