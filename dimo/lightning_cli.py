"""The LightningCLI behind ``python -m dimo.cli {fit,validate,test,predict}``."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


class DimoCLI(LightningCLI):
    """LightningCLI with the defaults a dimo user expects.

    * TensorBoard logger under ``runs/`` (override with ``--trainer.logger``),
    * a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` configurable as ``--checkpoint.*``
      (it always saves ``last.ckpt``; Lightning writes checkpoints atomically),
    * a learning-rate monitor and a rich progress bar, always present,
    * seeding on by default (``--seed_everything``), deterministic data order per seed.
    """

    def __init__(self, *args, **kwargs):
        from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar

        trainer_defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "dimo"},
            },
            "callbacks": [LearningRateMonitor(logging_interval="step"), RichProgressBar(leave=True)],
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", {}) or {})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, trainer_defaults=trainer_defaults, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": -1})
