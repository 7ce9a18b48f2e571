"""Non-Lightning subcommands of ``python -m dimo.cli``.

Add a command by adding one line to :data:`COMMANDS`: ``name -> "module:function"``. The function
takes the remaining argv (a list of strings), parses it itself, and returns an exit code (or None).
Modules are imported lazily so ``python -m dimo.cli fit`` never pays for them.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, str] = {
    "data": "dimo.commands.data:main",
    "evaluate": "dimo.commands.evaluate:main",
    "export": "dimo.commands.export:main",
    "generate": "dimo.commands.generate:main",
    "geometry": "dimo.commands.geometry:main",
    "toy": "dimo.commands.toy:main",
}


def load_command(name: str) -> Callable[[Sequence[str]], int | None]:
    module_name, _, func = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module_name), func)


def debug_enabled() -> bool:
    """``--debug`` (set by :func:`dimo.cli.main`) or ``DIMO_DEBUG=1``: show tracebacks."""

    return os.environ.get("DIMO_DEBUG", "") not in ("", "0")


def fail(err: BaseException) -> int:
    """Report a user-facing error as one ``error:`` line on stderr, return exit status 2.

    With ``--debug`` the exception is re-raised (traceback) instead.
    """

    if debug_enabled():
        raise err
    from dimo.cli import one_line

    print(f"error: {one_line(err)}", file=sys.stderr)
    return 2
