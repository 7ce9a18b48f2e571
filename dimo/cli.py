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


_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "Expected a <class 'NoneType'>",
    "Problem with given class_path",
)
_UNHELPFUL = (KeyError, AssertionError, IndexError, AttributeError, NameError, ZeroDivisionError)


def one_line(err: BaseException | str) -> str:
    """A user-facing, single-line reason for ``err``: jsonargparse's Union noise is dropped, the
    innermost real reason is kept and prefixed with the config key it concerns."""

    text = err if isinstance(err, str) else str(err)
    keys, reasons = [], []
    for raw in text.splitlines():
        line = raw.strip().lstrip("-").strip()
        if not line or any(line.startswith(n) for n in _NOISE):
            continue
        if line.startswith('Parser key "') and line.endswith(":"):
            keys.append(line[len('Parser key "') : -2])
            continue
        reasons.append(line)
    reason = next((r for r in reasons if not r.startswith("Key ") or "Expected" in r), None)
    reason = reason or (reasons[0] if reasons else "")
    if isinstance(err, BaseException):
        if not reason:
            reason = type(err).__name__
        elif isinstance(err, _UNHELPFUL):
            reason = f"{type(err).__name__}: {reason}"
    key = ".".join(k for k in keys if k)
    if key and key not in reason:
        reason = f"{key}: {reason}"
    return " ".join(reason.split())[:1000]


def _command_summaries() -> list[tuple[str, str]]:
    import importlib

    from dimo.commands import COMMANDS

    rows = [
        ("fit", "train a model (LightningCLI; --config experiments/<name>.yaml)"),
        ("validate", "run the validation loop of a model (LightningCLI)"),
        ("test", "run the test loop of a model (LightningCLI)"),
        ("predict", "run prediction with a model (LightningCLI)"),
    ]
    for name in sorted(COMMANDS):
        module = importlib.import_module(COMMANDS[name].partition(":")[0])
        doc = (module.__doc__ or "").strip().splitlines()
        rows.append((name, doc[0].split(":", 1)[-1].strip().rstrip(".") if doc else ""))
    return rows


def print_help(file=None) -> None:
    file = file or sys.stdout
    print("usage: python -m dimo.cli [--debug] SUBCOMMAND [ARGS ...]\n", file=file)
    print("subcommands (`python -m dimo.cli SUBCOMMAND --help` for each):", file=file)
    for name, summary in _command_summaries():
        print(f"  {name:<10} {summary}", file=file)
    print(
        "\n--debug (anywhere, or DIMO_DEBUG=1) shows the traceback of an error instead of one line.",
        file=file,
    )


def _dispatch(argv: list[str], from_command_line: bool = False) -> int:
    from dimo.commands import COMMANDS, load_command

    if argv and argv[0] in COMMANDS:
        return load_command(argv[0])(argv[1:]) or 0
    if not argv or argv[0] in ("-h", "--help"):
        print_help()
        return 0 if argv else 2
    if not argv[0].startswith("-") and argv[0] not in LIGHTNING_SUBCOMMANDS:
        names = ", ".join([*LIGHTNING_SUBCOMMANDS, *sorted(COMMANDS)])
        raise SystemExit(f"unknown subcommand {argv[0]!r}; expected one of: {names}")
    if from_command_line:
        # LightningCLI (and Lightning's DDP launcher, which re-runs this command line) read sys.argv
        sys.argv = [sys.argv[0], *argv]
        run_lightning(None, raise_errors=True)
    else:
        run_lightning(argv, raise_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Run a subcommand; every failure is one ``error:`` line on stderr and exit status 2.

    ``--debug`` (or ``DIMO_DEBUG=1``) re-raises instead, with the full traceback.
    """

    import os

    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DIMO_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    set_env = debug and "DIMO_DEBUG" not in os.environ
    if set_env:
        os.environ["DIMO_DEBUG"] = "1"  # commands that report their own errors re-raise instead
    try:
        code = _dispatch(argv, from_command_line)
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a message instead of a status: a user-facing error
            if debug:
                raise
            print(f"error: {one_line(exc.code)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:  # noqa: BLE001 - the one door every failure leaves through
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if set_env:
            os.environ.pop("DIMO_DEBUG", None)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
