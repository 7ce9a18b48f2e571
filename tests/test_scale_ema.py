"""EMA of the trainable weights (dimo.callbacks.EMA): exact averages, validation on the EMA weights,
checkpoints holding both weight sets, exact resume, the YAML switch and its parse-time checks."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from dimo.callbacks import EMA


class _Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 3)
        self.frozen = torch.nn.Linear(3, 3).requires_grad_(False)
        self.seen_in_val: list[torch.Tensor] = []
        self.after_step: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.frozen(self.net(x)).square().mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.after_step.append(self.net.weight.detach().clone())

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen_in_val.append(self.net.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.5)


def _loader():
    # every batch alike: a resumed run (which restarts a plain DataLoader's epoch) sees the same data
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0)).repeat(8, 1)
    return DataLoader(TensorDataset(x), batch_size=2)


def _fit(tmp, steps, ema, ckpt=None, val_every=None):
    seed_everything(0)
    module = _Tiny()
    trainer = Trainer(default_root_dir=tmp, max_steps=steps, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[ema], val_check_interval=val_every, limit_val_batches=1 if val_every else 0,
                      num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, _loader(), _loader() if val_every else None, ckpt_path=ckpt)
    return trainer, module


def test_ema_is_the_exact_average_of_the_trainable_weights(tmp_path):
    ema = EMA(enabled=True, decay=0.5)
    _, module = _fit(tmp_path, 3, ema)
    assert ema.names == ["net.weight", "net.bias"]  # the frozen layer is not averaged
    seed_everything(0)
    expected = _Tiny().net.weight.detach().clone()
    for w in module.after_step:
        expected = 0.5 * expected + 0.5 * w
    torch.testing.assert_close(ema.shadow[0], expected)
    assert ema.num_updates == 3
    assert not torch.allclose(ema.shadow[0], module.net.weight)  # not the weights themselves


def test_validation_sees_ema_and_training_weights_come_back(tmp_path):
    ema = EMA(enabled=True, decay=0.9)
    _, module = _fit(tmp_path, 4, ema, val_every=2)
    assert len(module.seen_in_val) == 2
    # at step 4 validation ran on the EMA; afterwards the module holds its training weights again
    torch.testing.assert_close(module.seen_in_val[-1], ema.shadow[0])
    torch.testing.assert_close(module.net.weight.detach(), module.after_step[-1], rtol=0, atol=0)


def test_checkpoint_holds_ema_and_resume_is_exact(tmp_path):
    full, full_module = _fit(tmp_path / "a", 4, ema_a := EMA(enabled=True, decay=0.7))
    half, _ = _fit(tmp_path / "b", 2, EMA(enabled=True, decay=0.7))
    ckpt = tmp_path / "half.ckpt"
    half.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    half_ema = half.callbacks[[type(c) for c in half.callbacks].index(EMA)]
    torch.testing.assert_close(saved["state_dict"]["net.weight"], half_ema.shadow[0])
    assert "frozen.weight" not in saved["ema_current_state"]
    assert not torch.equal(saved["ema_current_state"]["net.weight"], saved["state_dict"]["net.weight"])
    _, resumed = _fit(tmp_path / "c", 4, ema_c := EMA(enabled=True, decay=0.7), ckpt=ckpt)
    torch.testing.assert_close(resumed.net.weight, full_module.net.weight, rtol=0, atol=0)
    torch.testing.assert_close(ema_c.shadow[0], ema_a.shadow[0], rtol=0, atol=0)
    assert ema_c.num_updates == ema_a.num_updates == 4


def test_off_by_default_and_checked_at_parse_time(tmp_path):
    from pathlib import Path

    from dimo.cli import one_line, run_lightning

    base = Path(__file__).resolve().parents[1] / "experiments" / "3dimo.yaml"
    args = ["--config", str(base), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]

    class Parsed(Exception):
        pass

    from dimo.cli import DimoCLI

    class _ParseOnly(DimoCLI):
        def instantiate_classes(self) -> None:
            raise Parsed

    with pytest.raises(Parsed):
        _ParseOnly(args=[*args, "--ema.enabled=true", "--ema.decay=0.999"], run=False, raise_errors=True)
    with pytest.raises(Exception) as err:  # noqa: B017 - jsonargparse raises its ArgumentError
        _ParseOnly(args=[*args, "--ema.decay=1.0"], run=False, raise_errors=True)
    assert not isinstance(err.value, Parsed) and "decay" in one_line(err.value)
    cli = run_lightning([*args], run=False)
    emas = [c for c in cli.trainer.callbacks if isinstance(c, EMA)]
    assert len(emas) == 1 and not emas[0].enabled
