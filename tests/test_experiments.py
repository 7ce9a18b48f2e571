"""Every committed YAML under experiments/ parses through the real CLI (run=False).

Overlays are not meant to stand alone: a file may name its base in a first-line comment
``# base: other.yaml [another.yaml]``; those are composed before it, as a user would with several
``--config`` flags. A bad key in any file must fail here, at parse time.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dimo.callbacks import PoseEvaluation, StageScheduler
from dimo.cli import DimoCLI, run_lightning


class _ParseOnlyCLI(DimoCLI):
    def instantiate_classes(self) -> None:
        return None


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted(p for p in EXPERIMENTS.glob("*.yaml"))


def _config_chain(path: Path) -> list[Path]:
    first = path.read_text().splitlines()[:1]
    match = re.match(r"#\s*base:\s*(.+)", first[0]) if first else None
    chain: list[Path] = []
    if match:
        for name in match.group(1).split():
            chain.extend(_config_chain(EXPERIMENTS / name))
    return [*chain, path]


def _parse_args(path: Path, tmp_path: Path) -> list[str]:
    # run=False: LightningCLI then takes no subcommand, exactly the `fit` arguments.
    args: list[str] = []
    for p in _config_chain(path):
        args += ["--config", str(p)]
    # Keep the parse side-effect free: logs and checkpoints go to a temp folder.
    return [*args, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]


def test_there_are_experiment_configs():
    assert CONFIGS, f"no YAML configs under {EXPERIMENTS}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses(path: Path, tmp_path: Path):
    # mvlift_stage4 trains on the data stage 3 writes (runs/mvlift/synthetic.safetensors, made by `make
    # train-mvlift`; tests/test_mvlift.py runs all four stages end to end): parse it like the paper configs
    if "paper" in path.stem or path.name == "mvlift_stage4.yaml":
        # Paper-scale configs name local pretrained folders that do not exist here: parse and
        # type-check them fully, but do not instantiate (their models are counted on `meta` elsewhere).
        cli = _ParseOnlyCLI(args=_parse_args(path, tmp_path), run=False)
        assert cli.config["model"]["class_path"]
    else:
        cli = run_lightning(_parse_args(path, tmp_path), run=False)
        assert cli.model is not None and cli.datamodule is not None
        # the schedule: section is the run's one StageScheduler, first among the callbacks; none for HVG
        schedulers = [c for c in cli.trainer.callbacks if isinstance(c, StageScheduler)]
        staged = bool(cli.config["schedule"]["stages"])
        assert len(schedulers) == int(staged) and (not staged or cli.trainer.callbacks[0] is schedulers[0])
        # the pose_eval: section is a callback only when it names a detector (off: not even a hook call)
        posed = [c for c in cli.trainer.callbacks if isinstance(c, PoseEvaluation)]
        assert len(posed) == int(cli.config["pose_eval"]["detector"] is not None)


def test_bad_key_fails_at_parse_time(tmp_path: Path):
    candidates = [p for p in CONFIGS if "paper" not in p.stem]
    if not candidates:
        pytest.fail("no toy config to corrupt")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    no_such_option_xyz: 1\n")
    args = _parse_args(candidates[0], tmp_path)
    with pytest.raises(SystemExit):
        run_lightning([*args[:-2], "--config", str(bad), *args[-2:]], run=False)


HVG_ARMS = {  # overlay -> the one key it sets (dotted) and its value
    "ablation_hvg_bone.yaml": ("model.init_args.net.init_args.hvg.pose_condition", "dual"),
    "ablation_hvg_skeleton.yaml": ("model.init_args.net.init_args.hvg.pose_condition", "skeleton"),
    "ablation_hvg_view_attention.yaml": ("model.init_args.net.init_args.hvg.view_attention", True),
    "ablation_hvg_no_view_attention.yaml": ("model.init_args.net.init_args.hvg.view_attention", False),
}


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _parsed(path: Path, tmp_path: Path) -> dict:
    """The composed config of ``path`` and its bases, as LightningCLI parses it (nothing instantiated)."""

    parsed = _flat(_ParseOnlyCLI(args=_parse_args(path, tmp_path), run=False).config.as_dict())
    parsed.pop("config")  # the --config paths themselves
    return parsed


@pytest.mark.parametrize("name", sorted(HVG_ARMS))
def test_hvg_ablation_overlay_changes_only_its_switch(name: str, tmp_path: Path):
    path = EXPERIMENTS / name
    assert path.read_text().splitlines()[0] == "# base: hvg.yaml"
    key, value = HVG_ARMS[name]
    base = _parsed(EXPERIMENTS / "hvg.yaml", tmp_path)
    arm = _parsed(path, tmp_path)
    assert arm[key] == value
    changed = {k for k in base.keys() | arm.keys() if base.get(k, "<absent>") != arm.get(k, "<absent>")}
    # the paper's arms restate hvg.yaml's value (no change); the others change exactly their key, and
    # the rest of model.init_args.net (preset, reference pathways, ...) is kept by the nested merge
    assert changed == (set() if base[key] == value else {key}), changed
