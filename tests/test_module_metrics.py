"""Video metrics inside both LightningModules: logged as val/<name>, equal to a direct computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from test_hvg_module import _loader as _hvg_loader
from torch.utils.data import DataLoader

from dimo.eval.pixel import L1, PSNR, SSIM
from dimo.testing import threedimo_batch as _threedimo_batch
from dimo.testing import tiny_hvg_module as _hvg_module
from dimo.testing import tiny_threedimo_module as _threedimo_module
from dimo.testing import tiny_trainer

DIRECT = {"psnr": PSNR, "ssim": SSIM, "l1": L1}


def _trainer(tmp_path: Path) -> Trainer:
    return tiny_trainer(tmp_path)


def _capture_generate(module) -> list[torch.Tensor]:
    """Record what the module's sampler returns during validation/test."""

    calls: list[torch.Tensor] = []
    original = module.generate

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out.detach().clone())
        return out

    module.generate = wrapped
    return calls


def _check(logged: dict, split: str, generated: torch.Tensor, target: torch.Tensor) -> None:
    for name, cls in DIRECT.items():
        key = f"{split}/{name}"
        assert key in logged, (key, sorted(logged))
        direct = cls()
        direct.update(generated.clamp(-1, 1), target)
        expected = float(direct.compute())
        assert float(logged[key]) == pytest.approx(expected, rel=1e-5, abs=1e-6), (key, logged[key], expected)
    # a wrong wiring (target vs itself) would give a different PSNR / L1
    assert float(logged[f"{split}/l1"]) > 0


def test_threedimo_validation_and_test_log_metrics(tmp_path: Path):
    seed_everything(0)
    module = _threedimo_module(sample_steps=2)
    assert not any("metric" in k for k in module.state_dict())  # checkpoints unchanged
    batch = _threedimo_batch(b=1)
    loader = DataLoader([batch], batch_size=None)
    calls = _capture_generate(module)
    logged = _trainer(tmp_path).validate(module, loader, verbose=False)[0]
    assert len(calls) == 1 and calls[0].shape == batch["target"].shape
    _check(logged, "val", calls[0], batch["target"])

    calls.clear()
    logged = _trainer(tmp_path).test(module, loader, verbose=False)[0]
    assert len(calls) == 1
    _check(logged, "test", calls[0], batch["target"])
    assert "test/loss_diffusion" in logged


def test_hvg_validation_logs_metrics_over_every_view(tmp_path: Path):
    seed_everything(0)
    module = _hvg_module()
    assert not any("metric" in k for k in module.state_dict())
    loader = _hvg_loader(1)
    batch = next(iter(loader))
    calls = _capture_generate(module)
    logged = _trainer(tmp_path).validate(module, loader, verbose=False)[0]
    assert len(calls) == 1 and calls[0].shape == batch["target"].shape  # (B, V, T, 3, H, W)
    _check(logged, "val", calls[0].flatten(0, 1), batch["target"].flatten(0, 1))
    assert "val/loss" in logged


def test_val_metric_batches_bounds_sampling(tmp_path: Path):
    module = _hvg_module(val_metric_batches=0)
    calls = _capture_generate(module)
    logged = _trainer(tmp_path).validate(module, _hvg_loader(1), verbose=False)[0]
    assert calls == [] and not any(k.startswith("val/psnr") for k in logged)


def test_unknown_metric_fails_at_construction():
    with pytest.raises(ValueError, match="unknown metric 'nope'.*psnr"):
        _hvg_module(val_metrics=["psnr", "nope"])
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        _threedimo_module(val_metrics=["nope"])
    with pytest.raises(ValueError, match="grids"):
        _threedimo_module(val_metrics=["fvd_v"])
