"""Every benchmark module imports and exposes ``run(profile)``; cheap helpers work. Nothing timed."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import run as runner  # noqa: E402

BENCHES = runner.discover(None)


def test_there_are_benchmarks():
    names = {p.stem for p in BENCHES}
    for expected in ("bench_train", "bench_lightning", "bench_memory", "bench_data"):
        assert expected in names


@pytest.mark.parametrize("path", BENCHES, ids=[p.stem for p in BENCHES])
def test_bench_module_exposes_run(path: Path):
    module = runner._load(path)
    assert callable(getattr(module, "run", None)), f"{path.name} has no run(profile)"
    params = list(inspect.signature(module.run).parameters)
    assert params and params[0] == "profile"


def test_resident_bytes_counts_params_and_optimizer_state_once():
    from benchmarks.bench_train import resident_bytes

    net = torch.nn.Linear(8, 4)
    net.register_buffer("shared", net.weight.data)  # same storage as the weight: counted once
    opt = torch.optim.Adam(net.parameters())
    params = (8 * 4 + 4) * 4
    assert resident_bytes(net) == params
    net(torch.randn(2, 8)).sum().backward()
    opt.step()
    # Adam: exp_avg + exp_avg_sq per parameter, plus a scalar step tensor per parameter
    steps = sum(s["step"].untyped_storage().nbytes() for s in opt.state.values())
    assert resident_bytes(net, opt) == 3 * params + steps


def test_memory_curve_row_fits_a_line_and_is_judged_by_the_runner():
    from benchmarks.bench_memory import _curve_row

    row = _curve_row("x", "frames", [1, 2, 3, 4], [10.0, 12.0, 14.0, 16.0], "s", "frame", 1)
    assert row["value"] == pytest.approx(2.0) and row["r2"] == pytest.approx(1.0)
    assert row["curve"]["x"] == [1, 2, 3, 4]
    assert runner.judge(row) is None  # no goal on a memory curve: informative only
