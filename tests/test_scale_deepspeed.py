"""DeepSpeed ZeRO alternative for the 14B preset: the overlay parses, a missing deepspeed is one line,
and the memory model's ZeRO-2/3 rows follow the ZeRO accounting."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dimo.cli import DimoCLI, one_line

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHAIN = ["3dimo.yaml", "3dimo_paper.yaml", "3dimo_paper_14b_fsdp.yaml", "3dimo_paper_14b_deepspeed.yaml"]


class _ParseOnly(DimoCLI):
    def instantiate_classes(self) -> None:
        return None


def _config(tmp_path):
    args = [a for name in CHAIN for a in ("--config", str(ROOT / "experiments" / name))]
    return _ParseOnly(args=[*args, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"],
                      run=False, raise_errors=True).config  # fmt: skip


def test_overlay_parses_to_zero3(tmp_path):
    cfg = _config(tmp_path)
    strategy = cfg["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    init = strategy["init_args"]
    assert init["stage"] == 3 and init["exclude_frozen_parameters"] is True
    assert "auto_wrap_policy" not in init  # the FSDP base's options do not leak into DeepSpeed's
    assert cfg["model"]["init_args"]["gradient_checkpointing"] is True
    assert cfg["model"]["init_args"]["net"]["init_args"]["backbone"] == "wan2.1-i2v-14b"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_missing_deepspeed_is_one_clear_line(tmp_path):
    import importlib

    node = _config(tmp_path)["trainer"]["strategy"]
    module, _, name = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(Exception) as err:  # noqa: B017 - Lightning's MisconfigurationException
        cls(**dict(node["init_args"]))
    line = one_line(err.value)
    assert "\n" not in line and "DeepSpeed installed" in line and "pip install" in line


def test_memory_model_zero_rows():
    from benchmarks.memory_model import GIB, OVERHEAD, deepspeed_estimate, wan14b_estimates

    p, unit, frozen, act = 1_000_000_000, 100_000_000, 500_000_000, 10 * GIB
    z2 = deepspeed_estimate("z2", 2, p, unit, frozen, act, 8)
    z3 = deepspeed_estimate("z3", 3, p, unit, frozen, act, 8)
    assert z2.states_gib * GIB == pytest.approx(2 * p + 14 * p / 8, rel=1e-9)
    assert z3.states_gib * GIB == pytest.approx(16 * p / 8 + 8 * unit, rel=1e-9)
    assert z3.frozen_gib * GIB == pytest.approx(2 * frozen / 8, rel=1e-9)
    assert z3.total_gib == pytest.approx((z3.states_gib + z3.frozen_gib + 10) * (1 + OVERHEAD))
    with pytest.raises(ValueError, match="stage must be 2 or 3"):
        deepspeed_estimate("z1", 1, p, unit, frozen, act, 8)
    rows = {e.config: e for e in wan14b_estimates()}
    z2_32 = next(e for k, e in rows.items() if "ZeRO-2 over 32" in k)
    z3_32 = next(e for k, e in rows.items() if "ZeRO-3 over 32" in k)
    fsdp_32 = next(e for k, e in rows.items() if "FSDP full shard over 32" in k)
    assert (
        z3_32.total_gib < fsdp_32.total_gib < z2_32.total_gib
    )  # ZeRO-3 also shards the root and frozen parts
    # I2V counted with its one timestep per sample (not per token) and bf16 modulation: 63.5 GiB
    assert z3_32.fits(80) and not fsdp_32.fits(80) and fsdp_32.fits(141)
