"""Every setting typed once (issue #12): the CLI derives the keys that must agree from one source
(``dimo.lightning_cli.LINKS``), refuses a derived key typed anyway, and checks what remains at parse
time; an overlay that changes the source changes every side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dimo.callbacks import StageScheduler
from dimo.cli import main
from dimo.lightning_cli import LINKS, DimoCLI, check_model_data

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
TOY_WAN = REPO / "pretrained" / "toy-wan2.1"
M = "model.init_args."


class _ParseOnly(DimoCLI):
    def instantiate_classes(self) -> None:
        return None


def _parse(*args: str):
    """The composed config (links applied, parse-time checks run, nothing built)."""

    return _ParseOnly(args=[*args, "--trainer.logger=false"], run=False, raise_errors=True).config


def _configs(*names: str) -> list[str]:
    return [a for n in names for a in ("--config", str(EXP / n))]


def _error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--trainer.logger=false"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _first_stage(cfg):
    first = cfg["schedule"]["stages"][0]
    return dict(first["weights"]), first["cross_view"]


def test_every_link_target_is_typed_in_no_experiment_file():
    import yaml

    def flat(tree, prefix=""):
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from flat(v, f"{prefix}{k}.")
        else:
            yield prefix[:-1]

    targets = {target for _, target, _ in LINKS}
    for path in sorted(EXP.glob("*.yaml")):
        keys = set(flat(yaml.safe_load(path.read_text()) or {}))
        assert not keys & targets, (path.name, keys & targets)
        for cb in (yaml.safe_load(path.read_text()).get("trainer") or {}).get("callbacks", []) or []:
            assert not cb["class_path"].endswith("StageScheduler"), path.name  # it is `schedule:`


def test_3dimo_linked_values_reach_every_side():
    cfg = _parse(*_configs("3dimo.yaml")).as_dict()
    init, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    sched = cfg["schedule"]
    # the schedule owns the mixture and the geometric weight
    assert (data["weights"], data["cross_view"]) == _first_stage(cfg) == ({"internet": 1.0}, 0.0)
    assert init["geo_weight"] == sched["geo_weight_start"] == 0.1
    # one Wan folder for every part, one preset for the frozen parts
    root = Path(init["pretrained"])
    assert root == Path("pretrained/toy-wan2.1")
    assert Path(init["net"]["init_args"]["backbone_path"]) == root / "transformer"
    assert Path(init["vae"]["init_args"]["path"]) == root / "vae"
    assert Path(init["text_encoder"]["init_args"]["path"]) == root
    assert init["vae"]["init_args"]["preset"] == init["text_encoder"]["init_args"]["preset"] == "tiny"
    # the net's temporal stride is the toy VAE's (its config: 4)
    assert init["net"]["init_args"]["temporal_compression"] == 4


def test_paper_configs_type_the_wan_folder_once():
    cfg = _parse(*_configs("3dimo.yaml", "3dimo_paper.yaml", "3dimo_paper_14b_fsdp.yaml")).as_dict()
    init = cfg["model"]["init_args"]
    root = Path("pretrained/Wan2.1-I2V-14B-480P-Diffusers")
    assert Path(init["pretrained"]) == root
    assert Path(init["net"]["init_args"]["backbone_path"]) == root / "transformer"
    assert Path(init["vae"]["init_args"]["path"]) == root / "vae"
    assert Path(init["text_encoder"]["init_args"]["path"]) == root
    assert Path(init["image_encoder"]["init_args"]["path"]) == root
    # the frozen parts follow the backbone's preset (the memory model reads the VAE's)
    parts = ("vae", "text_encoder", "image_encoder")
    assert {init[p]["init_args"]["preset"] for p in parts} == {"wan2.1"}
    assert init["text_encoder"]["init_args"]["max_length"] == 512  # the overlay's own values stay
    assert cfg["schedule"]["geo_anneal_steps"] == 12000 and cfg["schedule"]["geo_weight_start"] == 0.1


def test_an_overlay_that_changes_a_source_changes_every_side(tmp_path):
    # a committed overlay: no geometric supervision, set once in the schedule
    cfg = _parse(*_configs("3dimo.yaml", "3dimo_stage1.yaml", "ablation_3dimo_no_geo.yaml"))
    assert cfg["schedule.geo_weight_start"] == cfg[M + "geo_weight"] == 0.0
    # a new first stage changes the data's initial mixture; a new folder every part's path; a new
    # backbone preset the frozen parts' presets
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "schedule:\n"
        "  stages:\n"
        "    - {name: a, steps: 5, weights: {ue5: 2.0, multiview: 1.0}, cross_view: 0.25}\n"
        "model:\n"
        "  init_args:\n"
        f"    pretrained: {tmp_path / 'wan'}\n"
        "    net:\n"
        "      init_args: {backbone: wan2.1-t2v-1.3b}\n"
    )
    cfg = _parse(*_configs("3dimo.yaml"), "--config", str(overlay))
    assert cfg["data.init_args.weights"] == {"ue5": 2.0, "multiview": 1.0}
    assert cfg["data.init_args.cross_view"] == 0.25
    assert Path(cfg[M + "net.init_args.backbone_path"]) == tmp_path / "wan" / "transformer"
    assert Path(cfg[M + "vae.init_args.path"]) == tmp_path / "wan" / "vae"
    assert Path(cfg[M + "text_encoder.init_args.path"]) == tmp_path / "wan"
    assert cfg[M + "vae.init_args.preset"] == cfg[M + "text_encoder.init_args.preset"] == "wan2.1"
    # the same change on the command line
    cfg = _parse(*_configs("3dimo.yaml"), "--schedule.geo_weight_start=0.05")
    assert cfg[M + "geo_weight"] == 0.05


def test_the_vae_stride_comes_from_the_pretrained_folder_and_frames_are_checked_at_parse_time(tmp_path):
    wan = tmp_path / "wan"
    shutil.copytree(TOY_WAN, wan)
    config = json.loads((wan / "vae" / "config.json").read_text())
    config["temperal_downsample"] = [False, False, True]  # a VAE with temporal stride 2
    (wan / "vae" / "config.json").write_text(json.dumps(config))
    args = [*_configs("3dimo.yaml"), f"--model.init_args.pretrained={wan}"]
    cfg = _parse(*args, "--data.init_args.num_frames=7")  # 1 + 2k: fits stride 2, not stride 4
    assert cfg[M + "net.init_args.temporal_compression"] == 2
    with pytest.raises(
        ValueError, match=r"num_frames=8 does not fit the Wan VAE: frame counts must be 1 \+ 2k"
    ):
        _parse(*args, "--data.init_args.num_frames=8")  # nothing is built: _ParseOnly


@pytest.mark.parametrize(
    "typed, source",
    [
        (f"--{M}net.init_args.backbone_path={TOY_WAN / 'transformer'}", M + "pretrained"),
        (f"--{M}vae.init_args.path={TOY_WAN / 'vae'}", M + "pretrained"),
        (f"--{M}vae.init_args.preset=tiny", M + "net.init_args.backbone"),
        (f"--{M}net.init_args.temporal_compression=4", M + "pretrained"),
        (f"--{M}geo_weight=0.1", "schedule.geo_weight_start"),
        ("--data.init_args.weights={internet: 1.0}", "schedule.stages"),
        ("--data.init_args.cross_view=0.0", "schedule.stages"),
    ],
)
def test_a_derived_key_typed_anyway_is_one_line_naming_its_source(capsys, typed, source):
    # refused even when it equals the derived value: each setting is typed in one place
    err = _error(capsys, *_configs("3dimo.yaml"), typed)
    assert "is derived from" in err and source in err, err


def test_a_derived_key_in_a_config_file_and_an_old_style_scheduler_are_one_line(capsys, tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  init_args:\n    weights: {ue5: 1.0}\n")
    assert "data.init_args.weights is derived from schedule.stages" in _error(
        capsys, *_configs("3dimo.yaml"), "--config", str(old)
    )
    old.write_text(
        "trainer:\n  callbacks:\n    - class_path: dimo.callbacks.StageScheduler\n"
        "      init_args: {stages: [{name: s, steps: 1}]}\n"
    )
    assert "the StageScheduler is the `schedule:` section" in _error(
        capsys, *_configs("3dimo.yaml"), "--config", str(old)
    )


def test_remaining_cross_checks_fail_at_parse_time(capsys):
    # the motion encoder resizes frames to net.image_size, but a different aspect ratio would squash them
    err = _error(capsys, *_configs("3dimo.yaml"), "--data.init_args.height=32")
    assert "net.image_size=[64, 64]" in err and "squash" in err
    # the paper's 480x848 frames encoded at 256x448 (1% apart) are fine
    _parse(*_configs("3dimo.yaml", "3dimo_paper.yaml"))
    err = _error(capsys, *_configs("3dimo.yaml"), f"--{M}from_cache=true")
    assert "needs data latent_cache" in err


def test_hvg_has_no_schedule_and_keeps_its_mixture():
    cfg = _parse(*_configs("hvg.yaml"))
    assert cfg["schedule.stages"] is None
    assert cfg["data.init_args.weights"] is None  # the DataModule's default for task hvg: multiview only
    assert "geo_weight" not in cfg["model.init_args"]  # links to keys HVG does not have are skipped


def test_built_run_agrees_with_its_config(tmp_path, toy_root):
    """Instantiated: the trainer runs the schedule first, the data starts on its first stage's mixture,
    the module's parts read the one folder and its stride is the VAE's."""

    from dimo.cli import run_lightning

    cli = run_lightning(
        [*_configs("3dimo.yaml"), f"--data.init_args.root={toy_root}", "--data.init_args.frame_stride=1", f"--trainer.default_root_dir={tmp_path}",
         "--trainer.logger=false", f"--{M}pretrained={TOY_WAN}",
         f"--{M}pose_detector={REPO / 'pretrained' / 'toy-detector'}",
         f"--pose_eval.detector={REPO / 'pretrained' / 'toy-detector'}"],
        run=False,
    )  # fmt: skip
    module, dm = cli.model, cli.datamodule
    assert isinstance(cli.trainer.callbacks[0], StageScheduler) and cli.trainer.callbacks[0].active
    # the first stage's (normalised over every source), before training starts
    assert dm.stream.law(0) == ({"internet": 1.0, "ue5": 0.0, "multiview": 0.0}, 0.0)
    assert module.geo_weight == 0.1
    assert module.hparams["pretrained"] == str(TOY_WAN.resolve())
    assert Path(module.vae.config["path"]) == (TOY_WAN / "vae").resolve()
    assert module.vae.temporal_compression == module.net.config["temporal_compression"] == 4
    check_model_data(module, dm)  # the programmatic form of the parse-time checks agrees


def test_module_reads_unset_parts_from_pretrained_and_refuses_another_folder(tmp_path):
    from dimo.models.threedimo import ThreeDiMoModule, ThreeDiMoNet, WanVAE

    net = ThreeDiMoNet(
        backbone_path=TOY_WAN / "transformer", motion_dim=32, image_size=(32, 32), hand_crop=16
    )
    module = ThreeDiMoModule(net=net, pretrained=TOY_WAN)
    assert Path(module.vae.config["path"]) == (TOY_WAN / "vae").resolve()
    assert Path(module.text_encoder.config["path"]) == TOY_WAN.resolve()
    other = tmp_path / "other"
    shutil.copytree(TOY_WAN / "vae", other / "vae")
    with pytest.raises(ValueError, match="vae.path=.* is not read from pretrained="):
        ThreeDiMoModule(net=net, vae=WanVAE(path=other / "vae"), pretrained=TOY_WAN)
    with torch.no_grad():
        assert module.vae.temporal_compression == 4


def test_an_empty_schedule_does_nothing():
    sched = StageScheduler()
    assert not sched.active and sched.initial_mixture() == (None, 0.0)

    class _M:
        geo_weight = 0.5

    sched.apply(trainer=None, pl_module=_M, step=0)  # no stages: no mixture, no weight
    assert _M.geo_weight == 0.5
