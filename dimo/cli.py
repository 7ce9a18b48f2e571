"""Command line entry point: ``python -m dimo.cli SUBCOMMAND ...``.

Two kinds of subcommand share one door:

* the Lightning ones (``fit``, ``validate``, ``test``, ``predict``) go to :class:`DimoCLI`, a thin
  :class:`~lightning.pytorch.cli.LightningCLI` in omegaconf parser mode, so ``${...}`` interpolation,
  several ``--config`` overlays and ``--print_config`` work as LightningCLI documents them;
* every other subcommand (``data``, ``geometry``, ``evaluate``, ``generate``, ``export`` ...) is looked
  up in :data:`dimo.commands.COMMANDS`, a name -> ``"module:function"`` table. A command module owns
  its own argument parser and is imported only when called, so this file never grows with them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningCLI

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


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


def run_lightning(args: Sequence[str] | None = None, run: bool = True, **kwargs) -> DimoCLI:
    """Build (and, with ``run=True``, execute) the Lightning CLI; used by tests with ``run=False``."""

    return DimoCLI(args=list(args) if args is not None else None, run=run, **kwargs)


def main(argv: Sequence[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    from dimo.commands import COMMANDS, load_command

    if argv and argv[0] in COMMANDS:
        raise SystemExit(load_command(argv[0])(argv[1:]) or 0)
    if argv and not argv[0].startswith("-") and argv[0] not in LIGHTNING_SUBCOMMANDS:
        names = ", ".join([*LIGHTNING_SUBCOMMANDS, *sorted(COMMANDS)])
        raise SystemExit(f"dimo: unknown subcommand {argv[0]!r}; expected one of: {names}")
    # LightningCLI reads sys.argv itself when args is None (and warns when given both).
    run_lightning(None if from_command_line else argv)


if __name__ == "__main__":
    main()
