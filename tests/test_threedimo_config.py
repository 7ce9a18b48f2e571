"""ThreeDiMoNetConfig: named presets equal the committed experiments' networks, bad values fail in the
config with one line, the JSON form round-trips, and checkpoints store the exported config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dimo.cli import DimoCLI
from dimo.models.threedimo import NET_PRESETS, ThreeDiMoNet, ThreeDiMoNetConfig
from dimo.models.threedimo.config import CHECKPOINT_KEY
from dimo.models.threedimo.module import PARTS_KEY
from dimo.pipelines.checkpoint import load_module, read_checkpoint
from dimo.testing import save_module_checkpoint, tiny_threedimo_module

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


class _ParseOnlyCLI(DimoCLI):
    def instantiate_classes(self) -> None:
        return None


def _yaml_net_args(tmp_path: Path, *names: str) -> dict:
    """``model.init_args.net.init_args`` as the CLI parses the composed ``names`` (links applied)."""

    args: list[str] = []
    for name in names:
        args += ["--config", str(EXPERIMENTS / name)]
    cli = _ParseOnlyCLI(
        args=[*args, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"], run=False
    )
    net = cli.config["model"]["init_args"]["net"]
    assert net["class_path"] == "dimo.models.threedimo.ThreeDiMoNet"
    return net["init_args"].as_dict()


@pytest.mark.parametrize(
    ("preset", "chain"),
    [
        ("tiny", ["3dimo.yaml"]),
        ("wan2.1-t2v-1.3b", ["3dimo.yaml", "3dimo_paper.yaml"]),
        ("wan2.1-i2v-14b", ["3dimo.yaml", "3dimo_paper.yaml", "3dimo_paper_14b_fsdp.yaml"]),
        (
            "wan2.1-i2v-14b",
            ["3dimo.yaml", "3dimo_paper.yaml", "3dimo_paper_14b_fsdp.yaml", "3dimo_paper_14b_deepspeed.yaml"],
        ),
    ],
    ids=["toy", "paper-1.3b", "paper-14b-fsdp", "paper-14b-deepspeed"],
)
def test_presets_are_the_experiments_networks(preset, chain, tmp_path):
    parsed = _yaml_net_args(tmp_path, *chain)
    from_yaml = ThreeDiMoNetConfig.from_dict(parsed)
    # the pretrained folder is the run's (linked from model.init_args.pretrained), never a preset's
    assert from_yaml.backbone_path is not None and from_yaml.backbone_path.name == "transformer"
    assert ThreeDiMoNetConfig.from_name(preset, backbone_path=from_yaml.backbone_path) == from_yaml
    assert ThreeDiMoNetConfig.from_name(preset) == from_yaml.replace(backbone_path=None)
    assert ThreeDiMoNetConfig.from_name(preset).backbone == preset


def test_tiny_preset_builds_the_toy_yaml_network(tmp_path):
    """The net of experiments/3dimo.yaml (the toy pretrained Wan folder) and ``from_name("tiny")``
    on the same folder: same config, same weights for the same seed."""

    parsed = _yaml_net_args(tmp_path, "3dimo.yaml")
    assert Path(parsed["backbone_path"]).resolve() == (Path("pretrained/toy-wan2.1/transformer")).resolve()
    torch.manual_seed(0)
    yaml_net = ThreeDiMoNet(**parsed)  # as jsonargparse instantiates class_path + init_args
    torch.manual_seed(0)
    preset_net = ThreeDiMoNet.from_name("tiny", backbone_path=parsed["backbone_path"])
    assert preset_net.config == yaml_net.config and preset_net.net_config == yaml_net.net_config
    a, b = yaml_net.state_dict(), preset_net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the defaults are the tiny preset (the constructor and the preset cannot drift apart)
    assert ThreeDiMoNetConfig() == ThreeDiMoNetConfig.from_name("tiny") == ThreeDiMoNet().net_config


def test_every_preset_builds_on_meta():
    with torch.device("meta"):
        for name in NET_PRESETS:
            net = ThreeDiMoNet.from_name(name)
            assert net.net_config == ThreeDiMoNetConfig.from_name(name)
            assert net.is_i2v == ("i2v" in name)


H, W = 64, 64
BAD = [  # (field, value, the one-line message)
    ("patch_size", 0, "net.patch_size must be a positive integer, got 0"),
    ("motion_depth", True, "net.motion_depth must be a positive integer, got True"),
    ("geo_layers", 1.5, "net.geo_layers must be a positive integer, got 1.5"),
    ("temporal_compression", -4, "net.temporal_compression must be a positive integer, got -4"),
    ("image_size", (64, 60), "net.image_size 64x60 must be positive multiples of patch_size=8"),
    ("motion_dim", 30, "net.motion_dim=30 must be divisible by motion_heads=4"),
    ("hand_crop", 12, "net.hand_crop must be a multiple of 8 between 8 and the frame size 64, got 12"),
    ("hand_crop", 72, "net.hand_crop must be a multiple of 8 between 8 and the frame size 64, got 72"),
    ("backbone", "wan9", "unknown backbone preset 'wan9'; expected one of ["),
    ("injection", "add", "net.injection must be one of ['cross_attention', 'channel_concat'], got 'add'"),
    (
        "motion_placement",
        "before",
        "net.motion_placement must be one of ['sequential', 'parallel'], got 'before'",
    ),
    ("lora", {"rank": 0}, "lora.rank must be a positive integer, got 0"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=[f"{b[0]}={b[1]}" for b in BAD])
def test_bad_value_fails_in_the_config_with_one_line(name, value, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        ThreeDiMoNetConfig(**{name: value})
    assert "\n" not in str(err.value)
    # the network's constructor says the same (it builds the config first)
    with pytest.raises(ValueError, match=re.escape(message)):
        ThreeDiMoNet(**{name: value})


def test_unknown_preset_and_unknown_key_fail_with_one_line():
    with pytest.raises(ValueError, match=r"unknown 3DiMo net preset 'huge'; expected one of \['tiny'"):
        ThreeDiMoNetConfig.from_name("huge")
    with pytest.raises(ValueError, match=r"unknown 3DiMo net config keys \['motion_width'\]"):
        ThreeDiMoNetConfig.from_name("tiny", motion_width=32)
    with pytest.raises(ValueError, match="unknown 3DiMo net config keys"):
        ThreeDiMoNet.from_config({"motion_width": 32})


@pytest.mark.parametrize("name", list(NET_PRESETS))
def test_round_trip_through_json(name):
    cfg = ThreeDiMoNetConfig.from_name(
        name,
        backbone_path=Path("somewhere/transformer"),
        lora={"rank": 4, "alpha": 8, "targets": ["to_q", "to_v"]},
        backbone_config={"num_layers": 3, "patch_size": [1, 2, 2]},
    )
    plain = cfg.as_dict()
    assert list(plain) == [f for f in ThreeDiMoNetConfig.__dataclass_fields__]
    assert json.loads(json.dumps(plain)) == plain  # JSON values only
    assert ThreeDiMoNetConfig.from_dict(plain) == cfg
    assert ThreeDiMoNetConfig.from_dict(json.loads(json.dumps(plain))) == cfg
    assert plain["backbone_path"] == "somewhere/transformer" and plain["lora"]["rank"] == 4
    assert cfg.image_size == tuple(plain["image_size"]) and cfg.lora.targets == ("to_q", "to_v")


def test_older_configs_missing_fields_take_the_defaults():
    old = {k: v for k, v in ThreeDiMoNetConfig().as_dict().items() if k not in ("lora", "motion_placement")}
    assert ThreeDiMoNetConfig.from_dict(old) == ThreeDiMoNetConfig()


def test_export_config_rebuilds_the_same_network():
    torch.manual_seed(0)
    net = ThreeDiMoNet.from_name("tiny", motion_dim=32, geo_hidden=64, injection="channel_concat")
    exported = net.export_config()
    assert exported == net.export_net_config().as_dict()
    assert exported["backbone_path"] is None and exported["backbone_config"] == net.backbone.backbone_config()
    # only the backbone's description differs from the net's own config
    assert net.export_net_config().replace(backbone_config=None) == net.net_config
    for again in (ThreeDiMoNet(**exported), ThreeDiMoNet.from_config(exported)):
        assert again.config == exported
        a, b = net.state_dict(), again.state_dict()
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def test_checkpoint_stores_the_exported_net_config(tmp_path):
    torch.manual_seed(0)
    net = ThreeDiMoNet.from_name(
        "tiny", image_size=(32, 32), hand_crop=16, motion_dim=32, geo_hidden=64, body_tokens=3
    )
    module = tiny_threedimo_module(net=net)
    path = tmp_path / "m.ckpt"
    save_module_checkpoint(module, path)
    stored = read_checkpoint(path)[PARTS_KEY]["net"]
    assert stored == net.export_net_config().as_dict() == net.export_config()
    assert ThreeDiMoNetConfig.from_dict(stored) == net.export_net_config()
    loaded, _ = load_module(path, "3dimo")  # no YAML beside it
    assert loaded.net.net_config == net.export_net_config()
    assert loaded.net.net_config.body_tokens == 3
    # litgpt's Config.from_checkpoint: the config alone, from the .ckpt
    assert ThreeDiMoNetConfig.from_checkpoint(path) == net.export_net_config()
    assert CHECKPOINT_KEY == PARTS_KEY


def test_from_checkpoint_reads_saved_and_exported_folders(tmp_path):
    net = ThreeDiMoNet.from_name("tiny", motion_dim=32, geo_hidden=64, geo_layers=3)
    net.save_pretrained(tmp_path / "export" / "net")  # an export's layout: <export>/net/config.json
    want = net.export_net_config()
    for where in (tmp_path / "export" / "net", tmp_path / "export", tmp_path / "export/net/config.json"):
        assert ThreeDiMoNetConfig.from_checkpoint(where) == want
    with pytest.raises(FileNotFoundError, match="no 3DiMo net config.json in"):
        ThreeDiMoNetConfig.from_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="3DiMo checkpoint not found"):
        ThreeDiMoNetConfig.from_checkpoint(tmp_path / "missing.ckpt")
    not_ours = tmp_path / "wan" / "config.json"  # e.g. a Wan transformer folder
    not_ours.parent.mkdir()
    not_ours.write_text(json.dumps({"num_layers": 2}))
    with pytest.raises(ValueError, match=r"config.json: unknown 3DiMo net config keys \['num_layers'\]"):
        ThreeDiMoNetConfig.from_checkpoint(not_ours.parent)
    old = tmp_path / "old.ckpt"  # a checkpoint that does not describe its network
    torch.save({"state_dict": {}, "hyper_parameters": {}}, old)
    with pytest.raises(ValueError, match=r"old.ckpt holds no 3DiMo net config \(no dimo_parts\['net'\]\)"):
        ThreeDiMoNetConfig.from_checkpoint(old)
