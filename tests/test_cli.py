from __future__ import annotations

import pytest

from dimo import cli
from dimo.commands import COMMANDS, load_command


def test_unknown_subcommand_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown subcommand 'frobnicate'") and "\n" not in err


def test_every_registered_command_resolves_to_a_callable():
    for name in COMMANDS:
        assert callable(load_command(name)), name


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in [*cli.LIGHTNING_SUBCOMMANDS, *COMMANDS]:
        assert f"\n  {name} " in out, name


def test_union_noise_is_reduced_to_the_reason():
    noisy = (
        "Does not validate against any of the Union subtypes\nSubtypes: [<class 'X'>, <class 'NoneType'>]\n"
        "Errors:\n  - batch_size must be >= 1\n  - Expected a <class 'NoneType'>\n"
        "Given value type: <class 'Namespace'>\nGiven value: Namespace(a=1)"
    )
    assert cli.one_line(ValueError(noisy)) == "batch_size must be >= 1"
    assert cli.one_line(KeyError("x")) == "KeyError: 'x'"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "data", "validate", str(tmp_path / "none")])
