"""Typed, YAML-friendly pieces of the distributed strategies (FSDP wrap / activation-checkpoint policies),
and :func:`loads_weights_itself` (which strategies load checkpoint weights before the module's hook).

Lightning's ``FSDPStrategy`` takes ``auto_wrap_policy`` and ``activation_checkpointing_policy`` as sets
of module classes or policy objects, which a YAML file cannot name. :class:`ClassWrapPolicy` is
torch's ``ModuleWrapPolicy`` built from a closed list of layer names, so a misspelt layer fails when the
config is parsed, with the list of valid names::

    strategy:
      class_path: lightning.pytorch.strategies.FSDPStrategy
      init_args:
        auto_wrap_policy:
          class_path: dimo.strategies.ClassWrapPolicy
          init_args: {layers: [WanTransformerBlock]}

Layers (one FSDP unit / one checkpointed region each):

* ``WanTransformerBlock`` - a Wan DiT block (3DiMo; the motion cross-attention runs inside it);
* ``TransformerEncoderLayer`` - a motion-encoder layer (3DiMo);
* ``SpatioTemporalResBlock``, ``TransformerSpatioTemporalModel`` - the SVD UNet's layers (HVG; HVG's
  own ``gradient_checkpointing`` already checkpoints these with its per-call state restored, so HVG
  uses them as FSDP units only, never as a strategy checkpoint policy: recomputation there would see
  a cleared state).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

WrapLayer = Literal[
    "WanTransformerBlock",
    "TransformerEncoderLayer",
    "SpatioTemporalResBlock",
    "TransformerSpatioTemporalModel",
]


def layer_class(name: WrapLayer) -> type[nn.Module]:
    if name == "WanTransformerBlock":
        from diffusers.models.transformers.transformer_wan import WanTransformerBlock

        return WanTransformerBlock
    if name == "TransformerEncoderLayer":
        return nn.TransformerEncoderLayer
    if name == "SpatioTemporalResBlock":
        from diffusers.models.resnet import SpatioTemporalResBlock

        return SpatioTemporalResBlock
    if name == "TransformerSpatioTemporalModel":
        from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

        return TransformerSpatioTemporalModel
    raise ValueError(f"unknown layer {name!r}; expected one of {list(WrapLayer.__args__)}")


class ClassWrapPolicy(ModuleWrapPolicy):
    """``ModuleWrapPolicy`` over the named layer classes (see the module docstring)."""

    def __init__(self, layers: list[WrapLayer]):
        if not layers:
            raise ValueError("ClassWrapPolicy needs at least one layer")
        self.layers = list(layers)
        super().__init__({layer_class(n) for n in layers})


def loads_weights_itself(strategy: Any) -> bool:
    """Whether ``strategy`` loads a checkpoint's weights inside its own ``load_checkpoint``, before
    the LightningModule's ``on_load_checkpoint`` runs, and against the module's full key set.

    Lightning's ``FSDPStrategy`` (sharded: a DCP load planned from the live module's state dict, which
    fails on any key the checkpoint lacks; full: a strict ``load_state_dict``), ``ModelParallelStrategy``
    (DCP) and ``DeepSpeedStrategy`` (its engine) do; DDP and single-device strategies load through
    ``load_model_state_dict`` after the hook. A module that leaves frozen, folder-loaded weights out
    of its checkpoints (and puts them back in ``on_load_checkpoint``) may only do so when this is
    False: otherwise resuming fails (``tests/test_scale_fsdp.py``).
    """

    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy))
