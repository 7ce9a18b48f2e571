"""Command line entry point: ``python -m dimo.cli SUBCOMMAND ...``.

Two kinds of subcommand share one door:

* the Lightning ones (``fit``, ``validate``, ``test``, ``predict``) go to
  :class:`dimo.lightning_cli.DimoCLI`, a thin
  :class:`~lightning.pytorch.cli.LightningCLI` in omegaconf parser mode, so ``${...}`` interpolation,
  several ``--config`` overlays and ``--print_config`` work as LightningCLI documents them;
* every other subcommand (``data``, ``geometry``, ``evaluate``, ``generate``, ``export`` ...) is looked
  up in :data:`dimo.commands.COMMANDS`, a name -> ``"module:function"`` table. A command module owns
  its own argument parser and is imported only when called, so this file never grows with them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dimo.lightning_cli import DimoCLI

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def run_lightning(args: Sequence[str] | None = None, run: bool = True, **kwargs) -> DimoCLI:
    """Build (and, with ``run=True``, execute) the Lightning CLI; used by tests with ``run=False``."""

    from dimo.lightning_cli import DimoCLI

    return DimoCLI(args=list(args) if args is not None else None, run=run, **kwargs)


def __getattr__(name: str):
    # Lightning is imported only when a Lightning subcommand (or DimoCLI itself) is needed, so the
    # other commands (data synth, geometry preview, evaluate) start in a fraction of the time.
    if name == "DimoCLI":
        from dimo.lightning_cli import DimoCLI

        return DimoCLI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
