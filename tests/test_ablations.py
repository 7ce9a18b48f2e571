"""`make ablations` (benchmarks/ablations.py): one arm runs through the real entry point, the verdict
rule, and the arm overlays stay in step with the base config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ablations import ABLATIONS, Ablation, main, verdict  # noqa: E402


def test_every_arm_is_a_committed_overlay_that_names_its_base():
    for ab in ABLATIONS.values():
        assert bool(ab.arms) != bool(ab.not_run), ab.key
        base = " ".join(Path(b).name for b in ab.base)
        for overlay in ab.arms.values():
            first = (REPO / overlay).read_text().splitlines()[0]
            assert first == f"# base: {base}", overlay


def test_stage_arms_differ_only_in_how_the_same_steps_split_into_stages():
    sched = yaml.safe_load((REPO / "experiments/3dimo.yaml").read_text())["schedule"]
    arms = {}
    for arm in ("stages123", "stage1_only"):
        cfg = yaml.safe_load((REPO / f"experiments/ablation_3dimo_{arm}.yaml").read_text())
        # nothing but the stage list changes: the geometric anneal (geo_weight_start/end,
        # geo_anneal_steps) is the base's, not restated
        assert set(cfg) == {"schedule"} and set(cfg["schedule"]) == {"stages"}, arm
        arms[arm] = cfg["schedule"]
    full, one = arms["stages123"]["stages"], arms["stage1_only"]["stages"]
    assert sum(s["steps"] for s in full) == sum(s["steps"] for s in one) == ABLATIONS["c"].steps
    assert [s["name"] for s in one] == ["stage1"] and one[0]["weights"] == sched["stages"][0]["weights"]
    assert [(s["weights"], s["cross_view"]) for s in full] == [
        (s["weights"], s["cross_view"]) for s in sched["stages"]
    ]  # the paper's three stages as the base config has them, shortened


def test_no_geo_arm_keeps_the_base_stages_and_stops_after_stage1():
    base = yaml.safe_load((REPO / "experiments/3dimo.yaml").read_text())["schedule"]
    path = REPO / "experiments/ablation_3dimo_no_geo.yaml"
    arm = yaml.safe_load(path.read_text())
    # only the starting weight changes (the end weight is 0 already): the stages and the anneal are
    # the base's, and the model's geo_weight follows the schedule (linked, tests/test_links.py)
    assert arm == {"schedule": {"geo_weight_start": 0.0}}
    assert base["geo_weight_start"] > 0 and base["geo_weight_end"] == 0.0
    # stage 1's StopAfterStage comes from the bases, named in the first line
    assert path.read_text().splitlines()[0] == "# base: 3dimo.yaml 3dimo_stage1.yaml"
    stage1 = yaml.safe_load((REPO / "experiments/3dimo_stage1.yaml").read_text())["trainer"]["callbacks+"]
    assert stage1 == [{"class_path": "dimo.callbacks.StopAfterStage", "init_args": {"stage": "stage1"}}]


def _final(mean, std):
    return {"mean": mean, "std": std, "n": 3}


def test_verdict_needs_the_right_order_and_a_gap_beyond_the_spread():
    ab = Ablation("x", "t", "c", {"good": "", "bad": ""}, expect_best="good")
    assert verdict(ab, {"good": _final(0.30, 0.02), "bad": _final(0.20, 0.03)}) == "reproduced"
    assert verdict(ab, {"good": _final(0.30, 0.06), "bad": _final(0.26, 0.03)}) == "within noise"
    assert verdict(ab, {"good": _final(0.20, 0.01), "bad": _final(0.30, 0.01)}) == "not reproduced"
    lower = Ablation("y", "t", "c", {"good": "", "bad": ""}, higher_is_better=False, expect_best="good")
    assert verdict(lower, {"good": _final(0.2, 0.01), "bad": _final(0.3, 0.01)}) == "reproduced"


def test_one_arm_runs_through_the_real_entry_point(tmp_path, toy_root):
    out = tmp_path / "ablations"
    args = ["--only", "a", "--arms", "cross_attention", "--seeds", "0", "--steps", "2", "--val-every", "2"]
    args += ["--frame-stride", "1"]  # the test data's clips have 12 frames
    assert main([*args, "--data", str(toy_root), "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    arm = result["ablations"]["a"]["arms"]["cross_attention"]
    (run,) = arm["runs"]
    steps = [s for s, _ in run["scalars"]["val/motion_gap"]]
    assert steps == [1] or steps == [2], steps  # the one validation of a 2-step run (0-based step)
    assert arm["final"]["n"] == 1 and arm["final"]["mean"] == run["scalars"]["val/motion_gap"][-1][1]
    assert "val/loss_own_motion" in run["scalars"]
    assert 0 < run["cpu_seconds"] and result["ablations"]["a"]["cpu_seconds"] == run["cpu_seconds"]
    assert (out / "runs" / "a_cross_attention_seed0.log").read_text()  # the run's output is kept
    assert result["ablations"]["a"]["verdict"] == "one arm run"
    assert "| a |" in (out / "results.md").read_text()
    # a run folder is never overwritten
    with pytest.raises(SystemExit, match="exists"):
        main([*args, "--data", str(toy_root), "--out", str(out)])
