"""The LightningCLI behind ``python -m dimo.cli {fit,validate,test,predict}``."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


class DimoCLI(LightningCLI):
    """LightningCLI with the defaults a dimo user expects.

    * TensorBoard logger under ``runs/`` (override with ``--trainer.logger``),
    * a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` configurable as ``--checkpoint.*``
      (it always saves ``last.ckpt``), written atomically by
      :class:`~dimo.callbacks.reliability.AtomicCheckpointIO` (temp file in the checkpoint folder,
      fsync, rename), unless ``--trainer.plugins`` names another ``CheckpointIO``,
    * :class:`~dimo.callbacks.reliability.CheckpointOnSignal`: SIGTERM/SIGUSR1 save ``last.ckpt`` and
      exit ``128 + signal``,
    * a learning-rate monitor, and a progress display unless ``--trainer.enable_progress_bar=false``:
      the rich bar on a terminal, plain periodic lines when stdout is redirected,
    * seeding on by default (``--seed_everything``), deterministic data order per seed.
    """

    def __init__(self, *args, **kwargs):
        from lightning.pytorch.callbacks import LearningRateMonitor

        from dimo.callbacks.reliability import CheckpointOnSignal

        trainer_defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "dimo"},
            },
            "callbacks": [LearningRateMonitor(logging_interval="step"), CheckpointOnSignal()],
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", {}) or {})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, trainer_defaults=trainer_defaults, **kwargs)

    def _instantiate_trainer(self, config, callbacks):
        from lightning.pytorch.callbacks import ProgressBar
        from lightning.pytorch.plugins.io import CheckpointIO

        from dimo.callbacks.reliability import AtomicCheckpointIO, default_progress_bar

        config = dict(config)
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        given = [c for c in (config.get("callbacks") or []) if isinstance(c, ProgressBar)]
        if config.get("enable_progress_bar", True) is not False and not given:
            callbacks = [*callbacks, default_progress_bar()]
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": -1})
