"""Checkpoints describe themselves: a 3DiMo checkpoint rebuilds its exact network and frozen parts
with no run config beside it; frozen parts loaded from a folder are left out and put back."""

from __future__ import annotations

import torch

from dimo.models.threedimo import WanTextEncoder, WanVAE
from dimo.models.threedimo.module import PARTS_KEY
from dimo.pipelines.checkpoint import load_module, read_checkpoint
from dimo.testing import save_module_checkpoint as _save
from dimo.testing import tiny_threedimo_module


def test_threedimo_checkpoint_rebuilds_without_a_run_config(tmp_path):
    torch.manual_seed(0)
    vae_folder = tmp_path / "vae"
    WanVAE().vae.save_pretrained(vae_folder)
    # not the defaults: channel concat, 32-wide motion tokens, 32x32 frames, 16-token prompts, VAE folder
    module = tiny_threedimo_module(
        injection="channel_concat", vae=WanVAE(path=vae_folder), text_encoder=WanTextEncoder(max_length=16)
    )
    ckpt_path = tmp_path / "run" / "m.ckpt"
    ckpt_path.parent.mkdir()
    _save(module, ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    assert ckpt[PARTS_KEY]["net"]["backbone_config"] == module.net.transformer.wan_config()
    assert not any(k.startswith("vae.") for k in ckpt["state_dict"])  # re-read from its folder
    assert any(k.startswith("text_encoder.") for k in ckpt["state_dict"])  # random init: kept

    loaded, _ = load_module(ckpt_path, "3dimo")  # no config.yaml beside it
    assert loaded.net.config["injection"] == "channel_concat" and loaded.text_encoder.max_length == 16
    assert loaded.vae.from_folder and not loaded.image_encoder
    own, back = module.state_dict(), loaded.state_dict()
    assert own.keys() == back.keys()
    assert all(torch.equal(own[k], back[k]) for k in own)


def test_a_cli_run_checkpoint_rebuilds_with_or_without_its_config_yaml(toy_root, tmp_path):
    """`make generate` on a `make train-stage1` checkpoint: the run's config.yaml (as LightningCLI writes
    it) names one `pretrained` folder and not the parts the CLI derives from it; loading through it once
    built random frozen parts and failed on the missing VAE keys: the config path now applies the CLI's
    links. Without the config.yaml the checkpoint describes itself."""

    from dimo.lightning_cli import DimoCLI

    cli = DimoCLI(
        run=False,
        args=[
            "--config",
            "experiments/3dimo.yaml",
            "--data.init_args.root",
            str(toy_root),
            "--trainer.logger",
            "false",
        ],
    )
    module = cli.model
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt_path = run / "checkpoints" / "last.ckpt"
    _save(module, ckpt_path)
    (run / "config.yaml").write_text(cli.parser.dump(cli.config, skip_none=False))

    own = module.state_dict()
    for kwargs in ({}, {"config": run / "config.yaml"}):  # the config.yaml beside it / named
        loaded, _ = load_module(ckpt_path, "3dimo", **kwargs)
        assert loaded.vae.from_folder and loaded.text_encoder.from_folder, kwargs
        back = loaded.state_dict()
        assert own.keys() == back.keys() and all(torch.equal(own[k], back[k]) for k in own), kwargs
    (run / "config.yaml").unlink()  # no run config: the checkpoint rebuilds itself
    loaded, _ = load_module(ckpt_path, "3dimo")
    back = loaded.state_dict()
    assert all(torch.equal(own[k], back[k]) for k in own)
