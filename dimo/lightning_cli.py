"""The LightningCLI behind ``python -m dimo.cli {fit,validate,test,predict}``."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


class DimoCLI(LightningCLI):
    """LightningCLI with the defaults a dimo user expects.

    * TensorBoard logger under ``runs/`` (override with ``--trainer.logger``),
    * a :class:`~dimo.callbacks.SampleLogger` configurable as ``--samples.*`` (both methods' sample
      grids and videos through the logger's API),
    * a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` configurable as ``--checkpoint.*``
      (it always saves ``last.ckpt``), written atomically by
      :class:`~dimo.callbacks.reliability.AtomicCheckpointIO` (temp file in the checkpoint folder,
      fsync, rename), unless ``--trainer.plugins`` names another ``CheckpointIO``,
    * :class:`~dimo.callbacks.reliability.CheckpointOnSignal`: SIGTERM/SIGUSR1 save ``last.ckpt`` and
      exit ``128 + signal``,
    * an EMA of the trainable weights configurable as ``--ema.*`` (off unless ``ema.enabled: true``;
      :class:`~dimo.callbacks.ema.EMA`),
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
                "init_args": {"save_dir": "runs", "name": "dimo", "default_hp_metric": False},
            },
            "callbacks": [LearningRateMonitor(logging_interval="step"), CheckpointOnSignal()],
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", {}) or {})
        # raise_errors (what `dimo.cli.main` asks for): a bad value raises instead of printing usage and a
        # multi-line message, so main can reduce it to one line (and --debug can show the traceback)
        common = {"parser_mode": "omegaconf", "exit_on_error": not kwargs.pop("raise_errors", False)}
        parser_kwargs = {**common, **{sub: dict(common) for sub in ("fit", "validate", "test", "predict")}}
        kwargs.setdefault("parser_kwargs", parser_kwargs)
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

        from dimo.callbacks.ema import EMA
        from dimo.callbacks.samples import SampleLogger

        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EMA, "ema")  # `ema: {enabled: true, decay: ...}` (off by default)
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": -1})
        parser.add_lightning_class_args(SampleLogger, "samples")

    # ---- checks before any work --------------------------------------------------------------------
    def instantiate_classes(self) -> None:
        self.check_pretrained_paths()
        super().instantiate_classes()

    def check_pretrained_paths(self) -> None:
        """Every missing pretrained file or folder named in the config, listed at once (before any is built)."""

        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        missing = sorted(set(missing_paths(config.as_dict() if hasattr(config, "as_dict") else config)))
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} pretrained path(s) in the config do not exist: "
                + "; ".join(f"{key}={path}" for key, path in missing)
                + " (nothing is downloaded: place the files there or point the config at them)"
            )

    def before_fit(self) -> None:
        check_model_data(self.model, self.datamodule)

    before_validate = before_test = before_predict = before_fit


# config keys that name pretrained inputs which must exist before anything is built
PRETRAINED_KEYS = ("backbone_path", "path", "pretrained", "init_from", "pretrained_path")


def missing_paths(node, prefix: str = "") -> list[tuple[str, str]]:
    """``(config key, path)`` of every pretrained path in ``node`` (nested dicts/lists) that is absent."""

    import os

    out: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key in PRETRAINED_KEYS and isinstance(value, (str, os.PathLike)) and str(value):
                if not os.path.exists(os.path.expanduser(str(value))):
                    out.append((name, str(value)))
            else:
                out += missing_paths(value, name)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += missing_paths(value, f"{prefix}[{i}]")
    return out


def check_model_data(model, datamodule) -> None:
    """Model/data agreements a wrong YAML breaks deep inside the first step, checked up front."""

    from_cache, cache = getattr(model, "from_cache", False), getattr(datamodule, "latent_cache", None)
    if from_cache and cache is None:
        raise ValueError(
            "model from_cache: true needs data latent_cache: <folder of `python -m dimo.cli data cache`>"
        )
    if cache is not None and not from_cache:
        raise ValueError(
            f"data latent_cache={cache} needs model from_cache: true (the frozen encoders are not run)"
        )
    spec = getattr(datamodule, "spec", None)
    net = getattr(model, "net", None)
    config = getattr(net, "config", None)
    if spec is None or not isinstance(config, dict):
        return
    tc = config.get("temporal_compression")
    if spec.task == "3dimo" and isinstance(tc, int) and tc > 1 and (spec.num_frames - 1) % tc:
        lo = (spec.num_frames - 1) // tc * tc + 1
        raise ValueError(
            f"data.num_frames={spec.num_frames} does not fit the Wan VAE: frame counts must be 1 + {tc}k "
            f"(e.g. {lo} or {lo + tc})"
        )
    size = config.get("image_size")
    if spec.task == "3dimo" and size is not None and tuple(size) != (spec.height, spec.width):
        raise ValueError(
            f"model net.image_size={list(size)} differs from data height x width = {spec.height}x{spec.width}"
        )
