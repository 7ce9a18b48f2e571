from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import run as bench  # noqa: E402


def test_goal_is_read_against_ratio_when_present():
    assert bench.judge({"value": 10.0, "ratio": 1.2, "goal": "<= 1.15"}) is False
    assert bench.judge({"value": 10.0, "ratio": 1.1, "goal": "<= 1.15"}) is True
    assert bench.judge({"value": 0.995, "goal": ">= 0.99"}) is True
    assert bench.judge({"value": None, "goal": ">= 0.99"}) is None
    assert bench.judge({"value": 1.0, "goal": "R^2 high", "meets_goal": False}) is False


def test_runner_writes_json_table_and_plot(tmp_path, monkeypatch):
    fake = tmp_path / "bench_fake.py"
    fake.write_text(
        "def run(profile):\n"
        "    return [{'name': 'scaling', 'setting': 'x', 'value': 2.0, 'unit': 's', 'goal': '<= 1',\n"
        "             'curve': {'x': [1, 2, 3], 'y': [1.0, 2.0, 3.1]}},\n"
        "            {'name': 'gpu step', 'setting': 'h200', 'value': None, 'unit': 's', 'note': 'not measured'}]\n"
    )
    broken = tmp_path / "bench_broken.py"
    broken.write_text("def run(profile):\n    raise RuntimeError('boom')\n")
    monkeypatch.setattr(bench, "HERE", tmp_path)
    rc = bench.main(["--out", str(tmp_path / "results")])
    assert rc == 1  # the broken benchmark is reported as a failure, the others still written
    (result,) = (tmp_path / "results").glob("*.json")
    rows = json.loads(result.read_text())["rows"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["scaling"]["meets_goal"] is False
    assert by_name["gpu step"]["value"] is None
    assert by_name["FAILED"]["bench"] == "broken"
    assert list((tmp_path / "results").glob("*-scaling.png"))
    assert "not measured" in (tmp_path / "results" / result.name.replace(".json", ".md")).read_text()
