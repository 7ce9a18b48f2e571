"""Local pretrained folders as they come from the hub: the SVD-xt fp16-only variant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from dimo.models.hvg import HVGConfig, HVGModule, HVGUNet
from dimo.models.hvg.network import build_image_encoder, build_vae


def _fp16_folder(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A tiny SVD-xt folder holding only ``*.fp16.safetensors`` files (as a ``variant="fp16"``
    download does); returns the fp32 state dicts the fp16 files were made from."""

    torch.manual_seed(0)
    cfg = HVGConfig()
    parts = {
        "unet": UNetSpatioTemporalConditionModel(**cfg.unet_kwargs()),
        "vae": build_vae(cfg),
        "image_encoder": build_image_encoder(cfg),
    }
    want = {}
    for name, model in parts.items():
        model = model.half()
        want[name] = {k: v.float() for k, v in model.state_dict().items()}
        model.save_pretrained(root / name, variant="fp16")
    return want


def test_fp16_only_svd_folder_loads_every_part(tmp_path: Path):
    want = _fp16_folder(tmp_path / "svd")
    names = sorted(p.name for p in (tmp_path / "svd").rglob("*.safetensors"))
    assert names == ["diffusion_pytorch_model.fp16.safetensors"] * 2 + ["model.fp16.safetensors"]
    module = HVGModule(net=HVGUNet(HVGConfig()), pretrained=tmp_path / "svd")
    for part in ("vae", "image_encoder"):
        sd = getattr(module, part).state_dict()
        assert sd.keys() == want[part].keys()
        for k, v in want[part].items():
            assert sd[k].dtype == torch.float32 and torch.equal(sd[k], v), (part, k)
    unet = module.unet.state_dict()
    assert all(torch.equal(unet[k], v) for k, v in want["unet"].items())


@pytest.mark.parametrize(
    ("part", "file"),
    [("vae", "diffusion_pytorch_model"), ("image_encoder", "model"), ("unet", "diffusion_pytorch_model")],
)
def test_missing_weights_name_the_file(tmp_path: Path, part: str, file: str):
    _fp16_folder(tmp_path / "svd")
    (tmp_path / "svd" / part / f"{file}.fp16.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"no {file}\.safetensors \(or {file}\.fp16\.safetensors"
    ) as e:
        HVGModule(net=HVGUNet(HVGConfig()), pretrained=tmp_path / "svd")
    assert "\n" not in str(e.value) and str(tmp_path / "svd" / part) in str(e.value)
