"""Every bad input of issue #17 (tests/bad_inputs.py) has its expected outcome: a clear one-line error,
a counted skip, or verified correct handling; never a traceback, a silently wrong result, an
executed payload or a lost file."""

from __future__ import annotations

import pytest
from bad_inputs import OUTCOMES, Env, all_cases, run_case

CASES = all_cases()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(tmp_path_factory.mktemp("bad_inputs"))


def test_the_cases_cover_every_group_of_the_issue():
    groups = {c.group for c in CASES}
    assert groups == {"code", "outputs", "manifest", "video", "config", "generate", "evaluate"}
    assert len({c.name for c in CASES}) == len(CASES)
    assert all(c.expected in OUTCOMES[:3] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, env, tmp_path):
    assert run_case(case, tmp_path, env) == case.expected
