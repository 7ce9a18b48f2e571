"""EMA of the trainable weights, used for validation and export, kept in checkpoints.

Why not Lightning's ``EMAWeightAveraging`` (2.6): it wraps the whole LightningModule in a
``torch.optim.swa_utils.AveragedModel`` (a deep copy of every parameter and buffer, the frozen UMT5 /
VAE / CLIP included: 11 GB more at 3DiMo paper scale) and writes that whole copy into every checkpoint,
undoing the modules' rule that frozen weights loaded from a folder are not copied into checkpoints.
:class:`EMA` follows its checkpoint layout but averages only the parameters that train
(``requires_grad``), in fp32, with one fused ``torch._foreach_lerp_`` per update.

* Update after every ``every_n_steps``-th optimiser step from ``start_step`` on (micro-batches of an
  accumulated step count once): ``ema <- ema + (1 - decay) (param - ema)``.
* Validation (during ``fit``) runs on the EMA weights (``validate_with_ema``); the training weights are
  swapped back afterwards, bit for bit.
* Checkpoints: ``state_dict`` holds the **EMA** values of the trainable parameters (so ``export``,
  ``generate`` and ``validate --ckpt_path`` use the EMA weights with no extra step), the training values
  are under ``ema_current_state``; resuming restores both exactly.
* Switched on in YAML by the top-level ``ema:`` section (``dimo.lightning_cli.DimoCLI`` adds it):
  ``ema: {enabled: true, decay: 0.9999}``. Off by default. One process's weights: DDP (identical on
  every rank) and single devices; not FSDP/DeepSpeed-sharded parameters (refused at setup).
"""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt, restricted_number_type
from lightning.pytorch import Callback

__all__ = ["EMA"]

# a decay outside [0, 1) fails when the YAML is parsed, before anything is built
Decay = restricted_number_type("Decay", float, [(">=", 0), ("<", 1)])

CURRENT_KEY = "ema_current_state"


class EMA(Callback):
    """Exponential moving average of the trainable parameters.

    Args:
        enabled: off by default; ``ema.enabled: true`` in YAML switches it on.
        decay: EMA decay per update, in [0, 1).
        every_n_steps: update after every n-th optimiser step.
        start_step: first optimiser step (global step) that updates; before it the EMA tracks the weights.
        validate_with_ema: run validation during ``fit`` on the EMA weights.
        cpu: keep the EMA in CPU memory (saves 4 B per trainable parameter of GPU memory; slower updates).
    """

    def __init__(
        self,
        enabled: bool = False,
        decay: Decay = 0.9999,
        every_n_steps: PositiveInt = 1,
        start_step: NonNegativeInt = 0,
        validate_with_ema: bool = True,
        cpu: bool = False,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must lie in [0, 1), got {decay}")
        if every_n_steps < 1 or start_step < 0:
            raise ValueError("ema every_n_steps must be >= 1 and start_step >= 0")
        self.enabled, self.decay = enabled, float(decay)
        self.every_n_steps, self.start_step = every_n_steps, start_step
        self.validate_with_ema, self.cpu = validate_with_ema, cpu
        self.names: list[str] = []
        self.shadow: list[torch.Tensor] = []
        self.num_updates = 0
        self._last_step = -1
        self._swapped = False

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _params(self, pl_module) -> list[torch.nn.Parameter]:
        named = dict(pl_module.named_parameters())
        return [named[n] for n in self.names]

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.enabled or stage != "fit":
            return
        strategy = type(trainer.strategy).__name__
        if "FSDP" in strategy or "DeepSpeed" in strategy:
            raise ValueError(f"ema: sharded parameters ({strategy}) are not supported; use DDP or one device")
        self.names = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        device = torch.device("cpu") if self.cpu else None
        self.shadow = [p.detach().float().clone().to(device or p.device) for p in self._params(pl_module)]

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimiser steps taken so far
        if not self.enabled or step == self._last_step:
            return
        self._last_step = step
        params = [p.detach().float() for p in self._params(pl_module)]
        if self.cpu:
            params = [p.cpu() for p in params]
        if step - 1 < self.start_step:
            torch._foreach_copy_(self.shadow, params)
            return
        if (step - 1) % self.every_n_steps == 0:
            torch._foreach_lerp_(self.shadow, params, 1.0 - self.decay)
            self.num_updates += 1

    @torch.no_grad()
    def _swap(self, pl_module) -> None:
        for p, s in zip(self._params(pl_module), self.shadow):
            tmp = p.detach().clone()
            p.copy_(s.to(p.device, p.dtype))
            s.copy_(tmp.to(s.device, s.dtype))
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.enabled and self.validate_with_ema and self.shadow and trainer.state.fn == "fit":
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap(pl_module)

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "decay": self.decay, "names": list(self.names)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict["num_updates"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if not self.enabled or not self.shadow:
            return
        sd = checkpoint["state_dict"]
        if self._swapped:  # saved during validation: the module holds the EMA, the shadow the weights
            ema = {n: sd[n] for n in self.names}
            current = {n: s.detach().to(sd[n].dtype).cpu().clone() for n, s in zip(self.names, self.shadow)}
        else:
            current = {n: sd[n] for n in self.names}
            ema = {n: s.detach().to(sd[n].dtype).cpu().clone() for n, s in zip(self.names, self.shadow)}
        checkpoint[CURRENT_KEY] = current
        checkpoint["state_dict"] = {**sd, **ema}

    @torch.no_grad()
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if not self.enabled or not self.shadow:
            return
        sd = checkpoint["state_dict"]
        current = checkpoint.get(CURRENT_KEY)
        params = self._params(pl_module)
        if current is None:  # a checkpoint written without EMA: the EMA starts from its weights
            for s, p in zip(self.shadow, params):
                s.copy_(p.detach().to(s.device, s.dtype))
            return
        missing = [n for n in self.names if n not in current or n not in sd]
        if missing:
            raise KeyError(
                f"checkpoint EMA state lacks {len(missing)} trainable parameter(s), e.g. {missing[0]}"
            )
        # Lightning has loaded state_dict (the EMA values) into the module: put the training weights back
        for n, s, p in zip(self.names, self.shadow, params):
            s.copy_(sd[n].to(s.device, s.dtype))
            p.copy_(current[n].to(p.device, p.dtype))
