"""HVG validation: conditioning-use gaps (val/pose_gap, val/reference_gap) follow the documented
protocol; static-reference PSNR baseline and labelled sample grids/videos are logged."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.data import DataLoader

from dimo.callbacks import SampleLogger
from dimo.models.hvg import HVGConfig, HVGModule, HVGUNet
from dimo.models.hvg.conditioning import render_pose_maps
from dimo.models.hvg.module import GAP_SEED_OFFSET, donor_indices
from dimo.testing import SyntheticHVGDataset, tiny_hvg_module, tiny_trainer

V, T, H = 2, 2, 32
SIGMAS = (0.5, 3.0)
D = HVGConfig().latent_downsample


def _module(**kwargs) -> HVGModule:
    torch.manual_seed(0)
    module = tiny_hvg_module(
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        noise_aug_strength=0.0,
        gap_sigmas=SIGMAS,
        val_metric_batches=0,
        **kwargs,
    )
    return module.eval()


def _batch(n: int = 3) -> dict:
    return next(iter(DataLoader(SyntheticHVGDataset(n, V, T, H, H), batch_size=n)))


def test_donors_come_from_another_clip():
    donor, kept = donor_indices(["a", "a", "b"], 3)
    assert donor.tolist() == [2, 2, 0] and kept.all()
    donor, kept = donor_indices(["a", "a"], 2)
    assert not kept.any()
    donor, kept = donor_indices(None, 3)  # no ids: every sample its own clip, roll by one
    assert donor.tolist() == [1, 2, 0] and kept.all()


@torch.no_grad()
def _expected_losses(module: HVGModule, batch: dict) -> dict[str, torch.Tensor]:
    """The protocol written out independently: donors re-rendered from rolled joints/cameras, the
    reference rolled in pixels, EDM-weighted denoising error of the denoiser D (== the v-MSE)."""

    b = batch["target"].shape[0]
    roll = [(i + 1) % b for i in range(b)]  # distinct clips: the donor is the next sample
    gen = torch.Generator().manual_seed(module.noise_seed * 31 + GAP_SEED_OFFSET + 0)
    cond = module.conditioning(batch, gen)
    x0 = module.encode_images(batch["target"].flatten(0, 2)).reshape(b, V, T, -1, H // D, H // D)
    noise = torch.randn(x0.shape, generator=gen)
    pose_maps = render_pose_maps(
        batch["joints3d"][roll], batch["K"][roll], batch["R"][roll], batch["t"][roll], H, H, "dual"
    )
    other = dict(batch, reference=batch["reference"][roll])
    ref_cond = module.conditioning(other, torch.Generator().manual_seed(1))  # no noise aug: seed irrelevant
    conds = {
        "own": cond,
        "pose_swapped": dict(cond, pose_maps=pose_maps),
        "reference_swapped": dict(cond, pose_maps=cond["pose_maps"], rel_rot=cond["rel_rot"]),
    }
    for k in ("encoder_hidden_states", "cond_latent", "reference_latent"):
        conds["reference_swapped"][k] = ref_cond[k]
    out = {k: [] for k in conds}
    for s in SIGMAS:
        sigma = torch.full((b,), s)
        noisy = x0 + s * noise
        _, c_out, _, _ = module.edm.precondition(sigma)
        for k, c in conds.items():
            d = module(noisy, sigma, c)
            out[k].append(((d - x0) / c_out[0]).pow(2).flatten(1).mean(1))
    return {k: torch.stack(v, 1) for k, v in out.items()}


def test_gap_losses_and_logged_gaps_follow_the_formula(tmp_path):
    module = _module()
    with torch.no_grad():  # open the zero-initialised pose door so the bone maps matter
        torch.nn.init.normal_(module.unet.pose_modulator.proj_out.weight, std=0.2)
    batch = _batch(3)
    got = module.conditioning_losses(batch, 0)
    want = _expected_losses(module, batch)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got["pose_swapped"], got["own"])
    assert not torch.allclose(got["reference_swapped"], got["own"])

    trainer = tiny_trainer()
    trainer.validate(module, DataLoader(SyntheticHVGDataset(3, V, T, H, H), batch_size=3), verbose=False)
    m = trainer.callback_metrics
    own = want["own"].sum()
    for name in ("pose", "reference"):
        expected = (want[f"{name}_swapped"].sum() - own) / own  # ratio of sums over samples x sigmas
        # (float32 sums in another order: a near-zero gap is compared to 1e-6 absolute, as per sigma below)
        assert float(m[f"val/{name}_gap"]) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
        for i, s in enumerate(SIGMAS):  # the same ratio at each sigma alone
            own_s = want["own"][:, i].sum()
            expected = (want[f"{name}_swapped"][:, i].sum() - own_s) / own_s
            # (a small gap is a difference of near-equal losses: compared to 1e-6 absolute)
            assert float(m[f"val/{name}_gap_sigma{s:g}"]) == pytest.approx(
                float(expected), rel=1e-4, abs=1e-6
            )


def test_a_model_blind_to_the_bone_maps_has_zero_pose_gap():
    module = _module()  # pose modulator zero-initialised: the bone maps cannot change the output
    got = module.conditioning_losses(_batch(2), 0)
    torch.testing.assert_close(got["pose_swapped"], got["own"])
    assert (got["reference_swapped"] != got["own"]).any()


def test_gap_sigmas_are_validated():
    with pytest.raises(ValueError, match="gap_sigmas"):
        HVGModule(net=HVGUNet(HVGConfig()), gap_sigmas=(1.0, -2.0))


def test_validation_logs_gaps_static_baseline_and_labelled_samples(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dimo.eval.harness import build_metrics

    module = _module()
    module.val_metric_batches = 1
    logger = TensorBoardLogger(tmp_path, name="hvg", default_hp_metric=False)
    trainer = tiny_trainer(logger=logger, callbacks=[SampleLogger()])
    loader = DataLoader(SyntheticHVGDataset(2, V, T, H, H), batch_size=2)
    trainer.validate(module, loader, verbose=False)

    batch = next(iter(loader))
    cells = batch["target"].flatten(1, 2)[:, 1:].flatten(0, 1)[:, None]  # all but the reference's cell
    ref = batch["reference"][:, None].expand(-1, V * T - 1, -1, -1, -1).flatten(0, 1)[:, None]
    static = build_metrics(["psnr"], None)["psnr"]
    static.update(ref, cells)
    got = float(trainer.callback_metrics["val/psnr_static"])
    assert got == pytest.approx(float(static.compute()), rel=1e-5) and got < 100
    assert "val/psnr_novel" in trainer.callback_metrics

    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"val/pose_gap", "val/reference_gap", "val/psnr", "val/psnr_novel", "val/psnr_static"} <= scalars
    assert "hp_metric" not in scalars
    images = acc.Tags()["images"]
    assert {"val/samples", "val/samples_video"} <= set(images)
    grid = acc.Images("val/samples")[0]
    # rows: reference | normal | depth | generated | target, columns: V x T, plus label margins
    assert grid.height > 5 * H and grid.width > V * T * H
    assert acc.Images("val/samples_video")[0].encoded_image_string[:6] in (b"GIF89a", b"GIF87a")


def test_gap_protocol_repeats_exactly_between_validations(toy_root):
    """Fixed protocol (issue #11): the same validation samples, noise and sigmas at every validation,
    whatever training did in between (global RNG, training batches drawn)."""

    from dimo.data.datamodule import ViewRichDataModule

    dm = ViewRichDataModule(
        root=toy_root, synthesize_if_missing=False, task="hvg", num_views=2, num_frames=2, height=32,
        width=32, batch_size=2, weights={"multiview": 1.0}, val_batches=2, seed=0, log_preview=False,
    )  # fmt: skip
    dm.setup("fit")
    keys = dm.val_keys()
    next(iter(dm.train_dataloader()))  # training draws in between
    assert dm.val_keys() == keys

    module = _module()
    with torch.no_grad():
        torch.nn.init.normal_(module.unet.pose_modulator.proj_out.weight, std=0.2)
    batch = _batch(3)
    first = module.conditioning_losses(batch, 1)
    torch.manual_seed(123)  # the global RNG moves (as training moves it)
    torch.randn(1000)
    module._loss(batch, torch.Generator().manual_seed(5))  # a training-style loss call in between
    again = module.conditioning_losses(batch, 1)
    for k in first:
        torch.testing.assert_close(again[k], first[k], rtol=0, atol=0)
    other = module.conditioning_losses(batch, 2)  # another validation batch gets its own noise
    assert not torch.equal(other["own"], first["own"])


def test_validation_samples_again_with_a_donors_bone_maps():
    """``val/psnr_novel_own`` / ``val/psnr_novel_other_pose``: the same grids (same noise) drawn with
    their own bone maps and with the donor's; the own one is the validation sample's PSNR, the two
    differ when the bone maps differ and are equal when the donor has the same motion and cameras."""

    module = _module()
    with torch.no_grad():  # a pose path that reaches the output (zero-initialised otherwise)
        torch.nn.init.normal_(module.unet.pose_modulator.proj_out.weight, std=0.2)
    module.val_metric_batches = 1
    batch = _batch(2)
    trainer = tiny_trainer()
    logged = trainer.validate(module, DataLoader([batch], batch_size=None), verbose=False)[0]
    own, other = float(logged["val/psnr_novel_own"]), float(logged["val/psnr_novel_other_pose"])
    assert own == pytest.approx(float(logged["val/psnr_novel"]), rel=1e-5)  # both grids have a donor
    assert abs(own - other) > 1e-4, (own, other)
    same = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    for key in ("joints3d", "K", "R", "t"):
        same[key][1] = same[key][0]
    logged = tiny_trainer().validate(module, DataLoader([same], batch_size=None), verbose=False)[0]
    assert float(logged["val/psnr_novel_own"]) == float(logged["val/psnr_novel_other_pose"])
    module.val_swap_samples = False
    logged = tiny_trainer().validate(module, DataLoader([batch], batch_size=None), verbose=False)[0]
    assert "val/psnr_novel_other_pose" not in logged
