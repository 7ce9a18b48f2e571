"""Gradient clipping, warm-up and fused AdamW are configurable in both methods' YAML (issue 15 D)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dimo.cli import DimoCLI, run_lightning

EXP = Path(__file__).resolve().parents[1] / "experiments"


class _ParseOnly(DimoCLI):
    def instantiate_classes(self) -> None:
        return None


@pytest.mark.parametrize("base", ["3dimo.yaml", "hvg.yaml"])
def test_clip_warmup_and_fused_adamw_from_yaml(base, tmp_path):
    args = ["--config", str(EXP / base), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
            "--trainer.gradient_clip_val=0.5", "--trainer.gradient_clip_algorithm=norm",
            "--model.init_args.optimizer=torch.optim.AdamW", "--model.init_args.optimizer.init_args.fused=true",
            "--model.init_args.optimizer.init_args.lr=0.002",
            "--model.init_args.lr_scheduler=torch.optim.lr_scheduler.LinearLR",
            "--model.init_args.lr_scheduler.init_args.start_factor=0.25",
            "--model.init_args.lr_scheduler.init_args.total_iters=7"]  # fmt: skip
    cli = run_lightning(args, run=False)
    assert cli.trainer.gradient_clip_val == 0.5 and cli.trainer.gradient_clip_algorithm == "norm"
    conf = cli.model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    assert isinstance(sched, torch.optim.lr_scheduler.LinearLR) and sched.total_iters == 7
    assert conf["lr_scheduler"]["interval"] == "step"  # warm-up counts optimiser steps
    base_lr = opt.param_groups[0]["initial_lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25 * base_lr)
    for _ in range(7):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(base_lr)


@pytest.mark.parametrize(
    "chain,warmup",
    [(["3dimo.yaml", "3dimo_paper.yaml"], None), (["hvg.yaml", "hvg_paper_phase1.yaml"], 500)],
)
def test_paper_configs_use_fused_adam_and_accept_clipping(chain, warmup, tmp_path):
    args = [a for name in chain for a in ("--config", str(EXP / name))]
    cfg = _ParseOnly(args=[*args, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
                           "--trainer.gradient_clip_val=1.0"], run=False, raise_errors=True).config  # fmt: skip
    init = cfg["model"]["init_args"]
    assert init["optimizer"]["init_args"]["fused"] is True
    assert cfg["trainer"]["gradient_clip_val"] == 1.0
    sched = init["lr_scheduler"]
    if warmup is None:
        assert sched is None  # the paper gives none; the YAML shows the LinearLR lines to add
    else:
        assert sched["class_path"].endswith("LinearLR") and sched["init_args"]["total_iters"] == warmup
