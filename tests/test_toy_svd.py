"""The committed toy SVD-xt folder (``make toy-pretrained-svd``): real layout, strict loading, a VAE that
reconstructs unseen toy clips at >= 28 dB (a strict xfail while it does not), its latent scale in its config,
and the HVG toy config loading it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dimo.models.common import MissingWeightsError
from dimo.models.hvg import HVGConfig
from dimo.models.hvg.network import build_image_encoder, build_unet, build_vae, read_unet_state_dict
from dimo.toy.svd import load_clips, reconstruction_psnr

FOLDER = Path(__file__).resolve().parents[1] / "pretrained" / "toy-svd-xt"
UNSEEN_SEED = 303  # neither the training clips (101), the clips the build stopped on (202)
UNSEEN_SEEDS = (303, 505)  # nor the clips of the decoder phase (404)


def test_folder_has_the_svd_xt_layout_and_stays_small():
    for sub in ("unet", "vae", "image_encoder", "feature_extractor", "scheduler"):
        assert (FOLDER / sub).is_dir(), sub
    index = json.loads((FOLDER / "model_index.json").read_text())
    assert index["_class_name"] == "StableVideoDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNetSpatioTemporalConditionModel"]
    assert list(FOLDER.rglob("*.bin")) == [] and list(FOLDER.rglob("*.safetensors"))
    size = sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file())
    # issue #11: both committed toy folders together <= 20 MB (the Wan folder is ~4 MB)
    wan = FOLDER.parent / "toy-wan2.1"
    wan_size = sum(f.stat().st_size for f in wan.rglob("*") if f.is_file())
    assert size + wan_size <= 20e6, f"{size / 1e6:.1f} + {wan_size / 1e6:.1f} MB"


def test_every_component_loads_strictly():
    cfg = HVGConfig()
    vae = build_vae(cfg, FOLDER)
    enc = build_image_encoder(cfg, FOLDER)
    net = build_unet(cfg, FOLDER)
    sd = read_unet_state_dict(FOLDER)
    own = net.state_dict()
    for k, v in sd.items():  # the SVD weights really arrived (not left at their random init)
        assert torch.equal(own[k], v), k
    assert vae.config.latent_channels * 2 == net.config.in_channels
    assert enc.config.projection_dim == net.config.cross_attention_dim


def test_a_missing_or_unexpected_key_fails(tmp_path: Path):
    bad = tmp_path / "svd"
    shutil.copytree(FOLDER, bad)
    f = bad / "vae" / "diffusion_pytorch_model.fp16.safetensors"  # the committed fp16 variant
    sd = load_file(f)
    sd.pop(sorted(sd)[0])
    save_file(sd, f)
    with pytest.raises(MissingWeightsError, match="missing 1"):  # strict, naming the key
        build_vae(HVGConfig(), bad)
    f = bad / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    sd = load_file(f)
    sd["down_blocks.9.extra.weight"] = torch.zeros(1)
    save_file(sd, f)
    with pytest.raises(RuntimeError, match="unexpected"):
        build_unet(HVGConfig(), bad)


@pytest.fixture(scope="module")
def unseen_clips() -> list[torch.Tensor]:
    return load_clips(UNSEEN_SEED, per_source=1, num_frames=8, size=64)


def test_vae_reconstructs_unseen_toy_clips_at_28_db():
    """34 unseen toy videos (two seeds no build phase used, 2 clips per source each): the per-seed means
    differ by more than a dB (28.8 and 27.6 dB for the committed folder), so one small set is too noisy
    a yardstick for a 28 dB target."""

    vae = build_vae(HVGConfig(), FOLDER)
    clips = [c for seed in UNSEEN_SEEDS for c in load_clips(seed, per_source=2, num_frames=8, size=64)]
    assert len(clips) >= 30
    psnr = reconstruction_psnr(vae, clips, clip_frames=4)
    assert psnr >= 28.0, f"{psnr:.2f} dB"


def test_vae_knows_its_latent_scale(unseen_clips):
    clips = unseen_clips
    vae = build_vae(HVGConfig(), FOLDER)
    with torch.no_grad():
        z = torch.cat([vae.encode(c).latent_dist.mode() for c in clips])
    scaled_std = float(z.std()) * vae.config.scaling_factor
    assert 0.7 < scaled_std < 1.3  # scaled latents have about unit variance (EDM sigma_data = 1)


def test_toy_config_loads_the_folder_through_pretrained():
    import yaml

    cfg = yaml.safe_load((FOLDER.parents[1] / "experiments" / "hvg.yaml").read_text())
    assert cfg["model"]["init_args"]["pretrained"] == "pretrained/toy-svd-xt"


def test_vae_training_crops_are_aligned_windows_of_the_clip():
    from dimo.toy.svd import random_crop

    n, t, h = 5, 3, 16
    x = torch.arange(n * t * 2 * h * h, dtype=torch.float32).reshape(n, t, 2, h, h)
    gen = torch.Generator().manual_seed(0)
    crops = random_crop(x, 8, gen)
    assert crops.shape == (n, t, 2, 8, 8)
    corners = set()
    for i in range(n):
        # locate the crop's first pixel in window i; every frame and channel must match that window
        ((top, left),) = torch.nonzero(x[i, 0, 0] == crops[i, 0, 0, 0, 0]).tolist()
        assert top % 4 == 0 and left % 4 == 0  # on the VAE's 4x latent grid
        assert torch.equal(crops[i], x[i, :, :, top : top + 8, left : left + 8])
        corners.add((top, left))
    assert len(corners) > 1  # random, not a fixed corner
    assert torch.equal(random_crop(x, h, gen), x)  # full-size "crop" is the clip


def test_fresh_toy_vae_decoder_ends_with_a_per_frame_temporal_conv():
    from dimo.toy.svd import make_vae

    torch.manual_seed(0)
    conv = make_vae().decoder.time_conv_out  # Conv3d over (B, C, T, H, W)
    x = torch.randn(2, 3, 4, 5, 5)
    with torch.no_grad():
        assert torch.allclose(conv(x), x, atol=1e-6)


def test_decoder_phase_changes_only_the_decoder_and_keeps_the_folder(tmp_path: Path):
    """`--refine-decoder` on a (micro) built folder: the decoder moves, the encoder (hence the latents the
    UNet was trained on) and every other part stay byte-identical, and the report records the phase."""

    from dimo.toy.svd import ToySVDConfig, build, refine_decoder

    micro = dict(clips_per_source=1, heldout_per_source=1, num_frames=8, vae_max_steps=1, vae_check_every=1,
                 unet_steps=1, unet_batch=1, decoder_clips_per_source=1)  # fmt: skip
    out = tmp_path / "svd"
    build(out, ToySVDConfig(**micro, vae_decoder_steps=0), log=lambda *_: None)
    vae_file = out / "vae" / "diffusion_pytorch_model.fp16.safetensors"
    before = load_file(vae_file)
    unet_bytes = (out / "unet" / "diffusion_pytorch_model.fp16.safetensors").read_bytes()
    config_before = json.loads((out / "vae" / "config.json").read_text())
    report = refine_decoder(out, ToySVDConfig(**micro, vae_decoder_steps=3), log=lambda *_: None)
    after = load_file(vae_file)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed), sorted(changed)[:5]
    assert (out / "unet" / "diffusion_pytorch_model.fp16.safetensors").read_bytes() == unet_bytes
    saved = json.loads((out / "toy_report.json").read_text())
    assert saved == report and saved["vae"]["decoder"]["refined_from_fp16"] is True
    assert [h["step"] for h in saved["vae"]["decoder"]["history"]] == [1, 2, 3]
    config = json.loads((out / "vae" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLTemporalDecoder"  # the real SVD-xt layout
    assert config == config_before  # the latent scale (scaling_factor) and every other field kept
    build_vae(HVGConfig(), out)  # still loads strictly
