from __future__ import annotations

import pytest

from dimo import cli
from dimo.commands import COMMANDS, load_command


def test_unknown_subcommand_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown subcommand 'frobnicate'"):
        cli.main(["frobnicate"])


def test_every_registered_command_resolves_to_a_callable():
    for name in COMMANDS:
        assert callable(load_command(name)), name
