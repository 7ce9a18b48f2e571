"""ThreeDiMoModule on the tiny preset: losses, masks, flow matching, fit/resume on toy data, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from dimo.diffusion.flow_matching import FlowMatching, shift_sigma
from dimo.geometry.rotations import axis_angle_to_matrix, matrix_to_rot6d
from dimo.models.threedimo import (
    ThreeDiMoModule,
    ThreeDiMoNet,
    geometric_loss,
    geometric_mpjpe,
)
from dimo.testing import threedimo_batch, tiny_threedimo_module, tiny_threedimo_net, tiny_trainer

T, H, W = 9, 32, 32
REPO = Path(__file__).resolve().parents[1]


def _net(injection: str = "cross_attention") -> ThreeDiMoNet:
    return tiny_threedimo_net(injection, size=H)


def _module(**kw) -> ThreeDiMoModule:
    return tiny_threedimo_module(**kw)


def _batch(b: int = 2, seed: int = 0) -> dict:
    return threedimo_batch(b, T, H, W, seed=seed)


# -- pure pieces ------------------------------------------------------------------------------------
def test_flow_matching_shift_noise_and_sampler():
    fm = FlowMatching(shift=3.0)
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(shift_sigma(u, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    assert torch.equal(shift_sigma(u, 1.0), u)
    sig = fm.sample_sigmas(4096, generator=torch.Generator().manual_seed(0))
    assert 0 <= sig.min() and sig.max() <= 1 and sig.median() > 0.7  # shift 3 moves mass to high noise
    x0, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    xt = fm.add_noise(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1])
    # with the exact velocity of a straight path, Euler lands on the data from any schedule
    out = fm.sample(lambda x, t: noise - x0, noise, num_steps=3)
    assert torch.allclose(out, x0, atol=1e-5)


def test_geometric_loss_masks_invalid_labels_and_mpjpe():
    g = torch.Generator().manual_seed(0)
    body, hand = torch.randn(2, T, 21, 3, generator=g) * 0.5, torch.randn(2, T, 30, 3, generator=g) * 0.5
    body6d = matrix_to_rot6d(axis_angle_to_matrix(body))
    hand6d = matrix_to_rot6d(axis_angle_to_matrix(hand))
    bv = torch.ones(2, T, dtype=torch.bool)
    hv = torch.ones(2, T, 2, dtype=torch.bool)
    assert geometric_loss(body6d, hand6d, body, hand, bv, hv) < 1e-10
    assert geometric_mpjpe(body6d, hand6d, body, hand, bv, hv) < 1e-3  # mm
    # corrupt labels where they are marked invalid: nothing changes
    bv[0, 3] = False
    hv[1, :, 0] = False
    bad_body, bad_hand = body.clone(), hand.clone()
    bad_body[0, 3] += 1.0
    bad_hand[1, :, :15] += 1.0
    assert geometric_loss(body6d, hand6d, bad_body, bad_hand, bv, hv) < 1e-10
    assert geometric_mpjpe(body6d, hand6d, bad_body, bad_hand, bv, hv) < 1e-3
    # ...but the same corruption on valid labels is seen by both
    bad_body[0, 4] += 1.0
    assert geometric_loss(body6d, hand6d, bad_body, bad_hand, bv, hv) > 0.05
    assert geometric_mpjpe(body6d, hand6d, bad_body, bad_hand, bv, hv) > 10.0
    none = torch.zeros(2, T, dtype=torch.bool)
    assert geometric_loss(body6d, hand6d, bad_body, bad_hand, none, hv & False) == 0
    assert geometric_mpjpe(body6d, hand6d, bad_body, bad_hand, none, hv) is None


def _sgd_steps(module: ThreeDiMoModule, batch: dict, steps: int, lr: float = 0.05) -> list[float]:
    opt = torch.optim.Adam(module.trainable_parameters(), lr=lr)
    losses = []
    for i in range(steps):
        out = module._losses(batch, torch.Generator().manual_seed(i))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss_diffusion"]))
    return losses


def test_diffusion_gradients_reach_the_motion_encoders():
    torch.manual_seed(0)
    module = _module(geo_weight=0.0)  # only the diffusion loss: the geo head cannot feed the encoders
    batch = _batch()
    out = module._losses(batch, torch.Generator().manual_seed(0))
    out["loss"].backward()
    enc = module.net.encoders
    # step 0: zero-initialised output layers block the path (the pretrained output is unchanged) ...
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in enc.parameters())
    assert module.net.transformer.motion_layers[0].to_out[0].weight.grad.abs().sum() > 0
    _sgd_steps(module, batch, 1, lr=1e-2)
    # ... after one update the diffusion loss reaches the encoders
    module.zero_grad()
    module._losses(batch, torch.Generator().manual_seed(1))["loss"].backward()
    assert enc.body.patchify.weight.grad.abs().sum() > 0
    assert enc.hands.patchify.weight.grad.abs().sum() > 0
    assert module.vae.vae.encoder.conv_in.weight.grad is None  # frozen parts stay out
    assert not any(p is q for p in module.trainable_parameters() for q in module.vae.parameters())


def test_channel_concat_ablation_trains():
    torch.manual_seed(0)
    module = _module(injection="channel_concat", geo_weight=0.0)
    batch = _batch(seed=3)
    fixed = torch.Generator().manual_seed(123)
    before = float(module._losses(batch, fixed)["loss_diffusion"])
    _sgd_steps(module, batch, 6, lr=3e-3)
    after = float(module._losses(batch, torch.Generator().manual_seed(123))["loss_diffusion"])
    assert after < before
    assert module.net.transformer.motion_patch_embedding.weight.abs().sum() > 0


def test_motion_only_training_freezes_the_backbone():
    module = _module(train_parts="motion")
    names = {id(p) for p in module.trainable_parameters()}
    wan = list(module.net.transformer.transformer.parameters())
    assert wan and not any(id(p) in names for p in wan)
    assert any(id(p) in names for p in module.net.transformer.motion_layers.parameters())
    assert any(id(p) in names for p in module.net.encoders.parameters())


def test_generate_keeps_the_reference_frame_and_follows_the_motion():
    torch.manual_seed(0)
    module = _module().eval()
    batch = _batch(b=1)
    video = module.generate(batch, num_steps=2)
    assert video.shape == (1, T, 3, H, W) and video.abs().max() <= 1
    # frame 0 is the decoded clean reference latent (the causal VAE decodes latent frame 0 alone) ...
    _, ref, _ = module.encode_conditions(batch)
    assert torch.equal(video[:, :1], module.vae.decode(ref).transpose(1, 2))
    # ... so another reference changes it
    other = module.generate(dict(batch, reference=-batch["reference"]), num_steps=2)
    assert (other[:, 0] - video[:, 0]).abs().mean() > 1e-3
    # the generated frames follow the motion, frame 0 never does: open the zero-initialised injection
    with torch.no_grad():
        for name, p in module.net.transformer.named_parameters():
            if name.startswith("motion_layers"):
                p.add_(0.2 * torch.randn_like(p))
    moved = module.generate(batch, num_steps=2)
    flipped = module.generate(dict(batch, driving=batch["driving"].flip(1)), num_steps=2)
    assert torch.equal(flipped[:, :1], moved[:, :1])
    assert (flipped[:, 1:] - moved[:, 1:]).abs().mean() > 1e-4


# -- Lightning fit on the toy data --------------------------------------------------------------------
class _LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step - 1] = outputs["loss"].detach().clone()


def _fit(root: Path, tmp: Path, max_steps: int, ckpt_path: Path | None = None):
    from dimo.callbacks import Stage, StageScheduler
    from dimo.data.datamodule import ViewRichDataModule

    seed_everything(0, workers=True)
    module = _module(optimizer=lambda params: torch.optim.Adam(params, lr=3e-3))
    data = ViewRichDataModule(
        root=root, num_frames=T, height=H, width=W, batch_size=2, val_batches=0, log_preview=False, seed=0
    )
    rec = _LossRecorder()
    sched = StageScheduler(
        [Stage("stage1", 3), Stage("stage2", 10, {"internet": 1.0, "ue5": 1.0}, 0.5)], 0.1, 0.0, 4
    )
    trainer = tiny_trainer(
        tmp, max_steps=max_steps, enable_checkpointing=False, limit_val_batches=0, callbacks=[rec, sched]
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, module, data, rec


def test_fit_lowers_the_loss_and_resume_is_exact(toy_root, tmp_path):
    # uninterrupted: 5 steps (stage boundary at step 3)
    _, module, data, rec = _fit(toy_root, tmp_path / "a", 5)
    assert sorted(rec.losses) == [0, 1, 2, 3, 4]
    assert module.geo_weight == pytest.approx(0.0)  # step 4 = end of the 4-step anneal
    # the loss on a fixed toy batch with fixed noise falls after training
    from dimo.data.datamodule import ViewRichDataModule, to_model_batch

    val = ViewRichDataModule(
        root=toy_root, num_frames=T, height=H, width=W, batch_size=2, val_batches=1, seed=3
    )
    val.setup("validate")
    batch = to_model_batch(
        next(iter(val.val_dataloader()))
    )  # uint8 pixels -> float, as on_after_batch_transfer
    with torch.no_grad():
        seed_everything(0, workers=True)
        start = _module()  # the run's initial weights (seeded and built the same way)
        before = float(start._losses(batch, torch.Generator().manual_seed(99))["loss_diffusion"])
        after = float(module._losses(batch, torch.Generator().manual_seed(99))["loss_diffusion"])
    assert after < 0.9 * before, (before, after)

    # interrupted after 3 steps, resumed to 5: steps 3 and 4 reproduce the uninterrupted losses
    trainer_b, _, _, _ = _fit(toy_root, tmp_path / "b", 3)
    ckpt = tmp_path / "b.ckpt"
    trainer_b.save_checkpoint(ckpt)
    _, _, _, rec_c = _fit(toy_root, tmp_path / "c", 5, ckpt_path=ckpt)
    assert sorted(rec_c.losses) == [3, 4]
    for step in (3, 4):
        assert torch.equal(rec_c.losses[step], rec.losses[step]), (step, rec_c.losses[step], rec.losses[step])


def test_two_process_ddp_fit(toy_root, tmp_path):
    from test_reliability import _toy_wan_args

    args = [
        sys.executable, "-m", "dimo.cli", "fit",
        "--config", str(REPO / "experiments/3dimo.yaml"),
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_steps=2",
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
        f"--data.init_args.root={toy_root}", "--data.init_args.frame_stride=1", "--data.init_args.height=32", "--data.init_args.width=32",
        "--data.init_args.batch_size=1", "--data.init_args.val_batches=0", "--data.init_args.log_preview=false",
        "--model.init_args.net.init_args.image_size=[32,32]", "--model.init_args.net.init_args.hand_crop=16",
        "--samples.every_n_steps=0",
        *_toy_wan_args(),  # the run starts in a temporary folder: absolute pretrained paths
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 2
