"""MVLift's LightningModules: stage 1 (line-conditioned 2D diffusion), stage 2 (multi-view optimisation)
and stage 4 (multi-view 2D diffusion). Stage 3 (:func:`dimo.pose.mvlift.fit.make_synthetic`) is a
function, run between stages 2 and 4 by ``python -m dimo.pose.mvlift.train``.

Every training step checks its batch with :func:`~dimo.pose.mvlift.data.assert_no_3d`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from dimo.models.common import freeze
from dimo.pose.mvlift.data import assert_no_3d
from dimo.pose.mvlift.diffusion import (
    input_lines,
    make_scheduler,
    multiview_cond,
    sample_line,
    sample_multiview,
)
from dimo.pose.mvlift.geometry import (
    COORD_SCALE,
    epipolar_distance,
    fundamental,
    line_features,
    lines_from_epipole,
    net_intrinsics,
    point_line_distance,
    ring_cameras,
)
from dimo.pose.mvlift.nets import PRESETS, LineDiffusionNet, MotionNetConfig, MultiViewDiffusionNet, load_net
from dimo.pose.mvlift.optimise import RING6, init_views, view_losses

__all__ = ["LineDiffusionModule", "MultiViewDiffusionModule", "ViewOptimisationModule"]


def _net_config(net: MotionNetConfig | dict | None) -> MotionNetConfig:
    if net is None:
        return PRESETS["toy"]
    return MotionNetConfig(**net) if isinstance(net, dict) else net


def _optimizers(module: L.LightningModule, params) -> dict | torch.optim.Optimizer:
    opt = module.optimizer_factory(params)
    if module.lr_scheduler_factory is None:
        return opt
    return {
        "optimizer": opt,
        "lr_scheduler": {"scheduler": module.lr_scheduler_factory(opt), "interval": "step"},
    }


class _DenoiserSteps:
    """The training and validation losses both diffusion modules log (``losses(batch[, generator])``
    returns loss / l1 / line; ``batch_key`` names the batch's 2D tensor, for the batch size)."""

    batch_key: str

    def _loss_step(self, batch: dict, stage: str, generator: torch.Generator | None = None) -> dict:
        out = self.losses(batch) if generator is None else self.losses(batch, generator)
        B = batch[self.batch_key].shape[0]
        for k in ("loss", "l1", "line"):
            self.log(f"{stage}/{k}", out[k], prog_bar=stage == "train" and k == "loss", batch_size=B)
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        assert_no_3d(batch)
        return self._loss_step(batch, "train")["loss"]


class _Frozen:
    """Holds a frozen network outside the module tree: no checkpoint keys, never optimised."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = freeze(net)


class LineDiffusionModule(_DenoiserSteps, L.LightningModule):
    """Stage 1: a 2D motion diffusion model conditioned on simulated epipolar lines.

    For each training sequence one virtual epipole is drawn (:meth:`sample_epipoles`); every joint's
    line is the line through the joint and the epipole, so the clean sequence lies on its lines, as a
    view's joints lie on the epipolar lines of their matches in another view. Loss: L1 on the predicted
    clean sequence + ``line_weight`` x the line-matching loss ``|a x + b y + c|`` of the prediction
    (both confidence-weighted). Lines are dropped per joint with probability ``line_drop`` (the input
    joint is missing at inference).

    Epipoles (network coordinates): with probability ``ring_prob`` where a 60-degree-ring camera's
    epipole falls (``x = S cot(theta / 2) + jitter``, ``theta`` uniform in [20, 340] degrees, ``y`` near 0),
    else uniform in ``[-2S, 2S] x [-S, S]``.
    """

    batch_key = "x2d"

    def __init__(
        self,
        net: MotionNetConfig | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        line_weight: float = 1.0,
        line_drop: float = 0.1,
        ring_prob: float = 0.8,
        val_sample_steps: int = 10,
    ) -> None:
        super().__init__()
        if not 0 <= line_drop < 1 or not 0 <= ring_prob <= 1 or line_weight < 0 or val_sample_steps < 1:
            raise ValueError(
                "need 0 <= line_drop < 1, 0 <= ring_prob <= 1, line_weight >= 0, val_sample_steps >= 1"
            )
        cfg = _net_config(net)
        self.save_hyperparameters({"net": asdict(cfg), "line_weight": line_weight, "line_drop": line_drop,
                                   "ring_prob": ring_prob, "val_sample_steps": val_sample_steps})  # fmt: skip
        self.net = LineDiffusionNet(cfg)
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.line_weight, self.line_drop, self.ring_prob = line_weight, line_drop, ring_prob
        self.val_sample_steps = val_sample_steps
        self.scheduler = make_scheduler()

    def configure_optimizers(self):
        return _optimizers(self, self.net.parameters())

    def sample_epipoles(self, B: int, generator: torch.Generator | None = None) -> torch.Tensor:
        S = COORD_SCALE
        theta = torch.empty(B).uniform_(math.radians(20), math.radians(340), generator=generator)
        ring = torch.stack(
            [
                S * (1 / torch.tan(theta / 2) + 0.3 * torch.randn(B, generator=generator)),
                0.1 * S * torch.randn(B, generator=generator),
            ],
            -1,
        )
        box = (torch.rand(B, 2, generator=generator) * 2 - 1) * torch.tensor([2 * S, S])
        pick = torch.rand(B, generator=generator) < self.ring_prob
        return torch.where(pick[:, None], ring, box)

    def losses(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x0, conf = batch["x2d"], batch["conf"]
        B, T, J, _ = x0.shape
        e = self.sample_epipoles(B, generator).to(x0)
        lines = lines_from_epipole(x0, e[:, None])  # (B, T, J, 3)
        mask = (torch.rand(B, T, J, generator=generator) >= self.line_drop).to(x0.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), generator=generator).to(
            x0.device
        )
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = self.scheduler.add_noise(x0, noise, t)
        pred = self.net(x_t, t, line_features(lines), mask)
        l1 = ((pred - x0).abs().mean(-1) * conf).sum() / conf.sum().clamp_min(1e-6)
        w = conf * mask
        line = (point_line_distance(pred, lines) * w).sum() / w.sum().clamp_min(1e-6)
        return {"loss": l1 + self.line_weight * line, "l1": l1, "line": line, "lines": lines, "mask": mask}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        g = torch.Generator().manual_seed(1000 + batch_idx)
        out = self._loss_step(batch, "val", g)
        B = batch["x2d"].shape[0]
        # samples drawn from the lines alone: how well they follow them (network units; x 64 / (2 S)
        # is roughly pixels of a 64 px frame)
        x = sample_line(self.net, out["lines"], out["mask"], self.val_sample_steps, g)
        w = batch["conf"] * out["mask"]
        dist = (point_line_distance(x, out["lines"]) * w).sum() / w.sum().clamp_min(1e-6)
        self.log("val/sample_line_dist", dist, batch_size=B)


class ViewOptimisationModule(L.LightningModule):
    """Stage 2 as a LightningModule: the parameters are the free views of every training sequence.

    ``setup`` builds each sequence's ring (``angles``, 6 views 60 degrees apart), loads the stage-1
    network (``prior``: a folder written by ``save_pretrained``, frozen, outside the checkpoint's
    module tree) and initialises the views by sampling it (:func:`~dimo.pose.mvlift.optimise.init_views`).
    Each step is one optimisation step of :func:`~dimo.pose.mvlift.optimise.view_losses` on the batch's
    sequences (use ``data.full_batch: true``). At the end of fit the 6-view sequences, confidences and
    cameras are written to ``out`` (safetensors) for stage 3.
    """

    def __init__(
        self,
        prior: Path = Path("runs/mvlift/line_diffusion"),
        out: Path | None = Path("runs/mvlift/views6.safetensors"),
        angles: Sequence[float] = RING6,
        optimizer: OptimizerCallable = torch.optim.Adam,
        sds_weight: float = 1.0,
        epipolar_weight: float = 1.0,
        t_min: float = 0.02,
        t_max: float = 0.6,
        t_max_end: float = 0.2,
        init_steps: int = 20,
        init_seed: int = 0,
        chunk: int = 256,
    ) -> None:
        super().__init__()
        if len(angles) < 2 or float(angles[0]) != 0.0:
            raise ValueError(
                f"angles must start at 0 (the input view) and have >= 2 views, got {list(angles)}"
            )
        if sds_weight < 0 or epipolar_weight < 0 or not 0 <= t_min < t_max_end <= t_max <= 1:
            raise ValueError("need weights >= 0 and 0 <= t_min < t_max_end <= t_max <= 1")
        self.save_hyperparameters(
            {"prior": str(prior), "out": None if out is None else str(out), "angles": [float(a) for a in angles],
             "sds_weight": sds_weight, "epipolar_weight": epipolar_weight, "t_min": t_min, "t_max": t_max,
             "t_max_end": t_max_end, "init_steps": init_steps, "init_seed": init_seed}
        )  # fmt: skip
        self.prior_path, self.out = Path(prior), None if out is None else Path(out)
        self.angles = tuple(float(a) for a in angles)
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, None
        self.sds_weight, self.epipolar_weight = sds_weight, epipolar_weight
        self.t_range = (t_min, t_max, t_max_end)
        self.init_steps, self.init_seed, self.chunk = init_steps, init_seed, chunk
        self._prior: _Frozen | None = None
        self.views: torch.nn.Parameter | None = None

    def setup(self, stage: str) -> None:
        if self.views is not None:
            return
        data = getattr(self.trainer.datamodule, "train_set", None)
        if data is None or not hasattr(data, "x2d"):
            raise ValueError(
                "ViewOptimisationModule needs single-view 2D data: data: dimo.pose.mvlift.Motion2DDataModule"
            )
        self._prior = _Frozen(load_net(self.prior_path, LineDiffusionNet.kind))
        x0, conf = data.x2d, data.conf
        R, t, _ = ring_cameras(x0, conf, self.angles)
        g = torch.Generator().manual_seed(self.init_seed)
        init = torch.cat(
            [
                init_views(
                    self._prior.net,
                    x0[s : s + self.chunk],
                    conf[s : s + self.chunk],
                    R[s : s + self.chunk],
                    t[s : s + self.chunk],
                    self.init_steps,
                    g,
                )  # fmt: skip
                for s in range(0, x0.shape[0], self.chunk)
            ]
        )  # (N, V-1, T, J, 2)
        self.register_buffer("init", init.clone(), persistent=False)
        self.register_buffer("R", R, persistent=False)
        self.register_buffer("t", t, persistent=False)
        self.views = torch.nn.Parameter(init)

    def configure_optimizers(self):
        return _optimizers(self, [self.views])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        assert_no_3d(batch)
        idx = batch["index"]
        progress = (
            self.global_step / max(self.trainer.max_steps - 1, 1) if self.trainer.max_steps > 0 else 0.0
        )
        t_min, t_max, t_max_end = self.t_range
        losses = view_losses(
            self._prior.net, batch["x2d"], batch["conf"], self.views[idx], self.R[idx], self.t[idx], progress,
            t_min=t_min, t_max=t_max, t_max_end=t_max_end,
        )  # fmt: skip
        loss = self.sds_weight * losses["sds"] + self.epipolar_weight * losses["epipolar"]
        B = idx.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/sds", losses["sds"], batch_size=B)
        self.log("train/epipolar", losses["epipolar"], batch_size=B)
        self.log("train/moved", (self.views[idx] - self.init[idx]).norm(dim=-1).mean(), batch_size=B)
        return loss

    def all_views(self) -> dict[str, torch.Tensor]:
        """``views6 (N, V, T, J, 2)`` (view 0 = input), ``conf (N, T, J)``, ``R``, ``t`` of every sequence."""

        data = self.trainer.datamodule.train_set
        views = torch.cat([data.x2d[:, None], self.views.detach().cpu()], 1)
        return {"views6": views.contiguous(), "conf": data.conf.contiguous(), "R": self.R.cpu().contiguous(),
                "t": self.t.cpu().contiguous()}  # fmt: skip

    def on_train_end(self) -> None:
        if self.out is None or not self.trainer.is_global_zero:
            return
        from safetensors.torch import save_file

        self.out.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.all_views(), self.out)


class MultiViewDiffusionModule(_DenoiserSteps, L.LightningModule):
    """Stage 4: the multi-view 2D motion diffusion model, trained on stage 3's synthetic 4-view data.

    Each sample's views are rolled so that a random one is the given input (the 4 views are 90 degrees
    apart on one ring, so every view has the same 0/90/180/270 neighbours); its joints are dropped with
    probability ``cond_drop`` (coordinates and confidence zeroed, as missing detections). The other
    views are noised; loss: L1 on their predicted clean sequences + ``line_weight`` x the distance to
    the epipolar lines of the input's joints.
    """

    batch_key = "views2d"

    def __init__(
        self,
        net: MotionNetConfig | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        line_weight: float = 1.0,
        cond_drop: float = 0.1,
        val_sample_steps: int = 10,
    ) -> None:
        super().__init__()
        if line_weight < 0 or not 0 <= cond_drop < 1 or val_sample_steps < 1:
            raise ValueError("need line_weight >= 0, 0 <= cond_drop < 1 and val_sample_steps >= 1")
        cfg = _net_config(net)
        self.save_hyperparameters({"net": asdict(cfg), "line_weight": line_weight, "cond_drop": cond_drop,
                                   "val_sample_steps": val_sample_steps})  # fmt: skip
        self.net = MultiViewDiffusionNet(cfg)
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.line_weight, self.cond_drop, self.val_sample_steps = line_weight, cond_drop, val_sample_steps
        self.scheduler = make_scheduler()

    def configure_optimizers(self):
        return _optimizers(self, self.net.parameters())

    @staticmethod
    def roll(batch: dict, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views and cameras rolled per sample so view ``shift[b]`` comes first."""

        views, R, t = batch["views2d"], batch["R"], batch["t"]
        V = views.shape[1]
        idx = (torch.arange(V, device=views.device)[None] + shift[:, None].to(views.device)) % V  # (B, V)
        b = torch.arange(views.shape[0], device=views.device)[:, None]
        return views[b, idx], R[b, idx], t[b, idx]

    def losses(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        B, V = batch["views2d"].shape[:2]
        shift = torch.randint(0, V, (B,), generator=generator)
        views, R, t = self.roll(batch, shift)
        _, _, T, J, _ = views.shape
        conf = (torch.rand(B, T, J, generator=generator) >= self.cond_drop).to(views)
        x0 = views[:, 0] * conf[..., None]
        lines, valid = input_lines(x0, conf, R, t)  # (B, V-1, T, J, 3)
        cond = multiview_cond(x0, conf, lines, valid)
        ts = torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), generator=generator).to(
            views.device
        )
        noise = torch.randn(views.shape, generator=generator).to(views)
        noisy = self.scheduler.add_noise(views, noise, ts)
        noisy = torch.cat([x0[:, None], noisy[:, 1:]], 1)
        pred = self.net(noisy, ts, cond)[:, 1:]
        l1 = (pred - views[:, 1:]).abs().mean()
        w = valid.to(views)
        line = (point_line_distance(pred, lines) * w).sum() / w.sum().clamp_min(1e-6)
        return {"loss": l1 + self.line_weight * line, "l1": l1, "line": line}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        g = torch.Generator().manual_seed(1000 + batch_idx)
        self._loss_step(batch, "val", g)
        B = batch["views2d"].shape[0]
        views, R, t = batch["views2d"], batch["R"], batch["t"]
        conf = torch.ones(views.shape[0], *views.shape[2:4], dtype=views.dtype, device=views.device)
        x = sample_multiview(self.net, views[:, 0], conf, R, t, self.val_sample_steps, g)
        self.log("val/sample_l1", (x[:, 1:] - views[:, 1:]).abs().mean(), batch_size=B)
        Kn = net_intrinsics(dtype=views.dtype)
        F = fundamental(Kn, R[:, 1:2], t[:, 1:2], Kn, R[:, 2:], t[:, 2:])  # view 1 -> views 2, 3
        epi = epipolar_distance(x[:, 1:2].expand(-1, F.shape[1], -1, -1, -1), x[:, 2:], F[:, :, None]).mean()
        self.log("val/sample_epipolar", epi, batch_size=B)
