"""Helpers for tests/test_scale_fsdp.py's 2-process CPU runs (imported by the launched ``dimo.cli fit``).

* :class:`CPUFSDPStrategy`: Lightning's ``FSDPStrategy`` with two CPU obstacles lifted, nothing else.
  (1) Lightning refuses FSDP on CPU in its accelerator connector by an identity check
  (``type(strategy) is FSDPStrategy``), which a subclass passes; (2) it wraps with
  ``device_id=root_device.index``, which is ``None`` for a CPU device, and torch's FSDP1 then looks for
  an accelerator and raises; given ``device_id=cpu`` explicitly, FSDP1 over gloo wraps, shards, steps
  and saves on CPU. Every other line is Lightning's strategy: wrapping by the overlay's policies,
  activation checkpointing, the sharded (DCP) checkpoint save and load, the optimiser state.
* :class:`DumpLocalState`: each rank's shard of the model and optimiser state at the start of training
  (after any resume) and at its end, so the test can compare what was trained and saved with what a
  resume restored.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
import torch.distributed.fsdp
from lightning.pytorch import Callback
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel


class _FSDPOnCPU(FullyShardedDataParallel):
    def __init__(self, *args, device_id=None, **kwargs):
        super().__init__(*args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` runnable on CPU (see the module docstring)."""

    def _setup_model(self, model):
        # Lightning's own wrapping, with FSDP told the device (it imports the class inside the method)
        with mock.patch.object(torch.distributed.fsdp, "FullyShardedDataParallel", _FSDPOnCPU):
            return super()._setup_model(model)


class DumpLocalState(Callback):
    """Each rank writes its own shard of every parameter and of its optimiser state, keyed by name
    (``rank<r>_<start|end>_step<n>.pt``), at the start of training (after any resume) and at its end.
    Same world size and wrapping on both runs, so a resumed rank must hold exactly the shard it saved.
    (Local tensors only: gathering full FSDP1 state dicts on CPU crashes inside torch.)"""

    def __init__(self, out: str):
        self.out = Path(out)

    def _dump(self, trainer, tag: str) -> None:
        model, optim = trainer.strategy.model, trainer.optimizers[0]
        names = {p: n for n, p in model.named_parameters()}
        state = {
            "global_step": trainer.global_step,
            "params": {n: p.detach().clone() for p, n in names.items()},
            "optim": {
                names[p]: {k: torch.as_tensor(v).clone() for k, v in s.items()}
                for p, s in optim.state.items()
            },
        }
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(state, self.out / f"rank{trainer.global_rank}_{tag}_step{trainer.global_step}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self._dump(trainer, "start")

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer, "end")
