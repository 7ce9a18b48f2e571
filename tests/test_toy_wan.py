"""The toy Wan2.1 folder: built by the project's own code, loaded strictly through the paper-scale path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dimo.models.threedimo import MissingWeightsError, ThreeDiMoNet, WanTextEncoder, WanVAE
from dimo.toy.wan import ToyWanConfig, build_toy_wan, load_toy_clips, psnr

REPO = Path(__file__).resolve().parents[1]
TOY_WAN = REPO / "pretrained" / "toy-wan2.1"
MIN_PSNR = 28.0  # DESIGN.md 3.5: held-out toy clips at 64x64


def _micro_config(**overrides) -> ToyWanConfig:
    """The builder at micro scale: one clip per source, two steps per part, one thread."""

    base = dict(
        train_clips_per_source=1,
        heldout_clips_per_source=1,
        frames=9,
        vae_steps=2,
        vae_decoder_steps=2,
        transformer_steps=2,
        vae_base_dim=8,
        log_every=1,
        threads=1,
    )
    return ToyWanConfig(**{**base, **overrides})


def test_builder_writes_the_real_layout_and_it_loads_strictly(tmp_path):
    cfg = _micro_config()
    report = build_toy_wan(tmp_path / "wan", cfg, work=tmp_path / "work")
    out = tmp_path / "wan"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / sub).is_dir(), sub
    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert json.loads((out / "toy_report.json").read_text())["vae"] == report["vae"]
    vae = WanVAE(path=out / "vae")
    assert (vae.spatial_compression, vae.temporal_compression) == (4, 4)
    # stored in half precision (the committed folders' size budget), loaded as float32 parameters
    from safetensors.torch import load_file

    stored = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert {p.dtype for p in vae.parameters()} == {torch.float32}
    std = torch.tensor(json.loads((out / "vae" / "config.json").read_text())["latents_std"])
    assert torch.allclose(vae.std.flatten(), std) and not torch.allclose(std, torch.ones_like(std))
    text = WanTextEncoder(path=out, max_length=16)
    net = ThreeDiMoNet(backbone_path=out / "transformer", motion_dim=16)
    assert net.text_dim == text.dim
    # strict: a weight missing from the folder is an error that names it
    from safetensors.torch import load_file, save_file

    weights = out / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop(sorted(state)[0])
    save_file(state, weights)
    with pytest.raises(MissingWeightsError, match="missing 1"):
        ThreeDiMoNet(backbone_path=out / "transformer", motion_dim=16)


def _heldout_scores(tmp_path):
    """PSNR of decode(encode(x)) on held-out clips (a seed the VAE never saw), 9 frames each."""

    from dimo.data.synth import SynthConfig, synthesize

    synthesize(tmp_path / "heldout", SynthConfig(seed=777, num_internet=2, num_ue5=1, num_multiview=1))
    clips, _ = load_toy_clips(tmp_path / "heldout", 64)
    vae = WanVAE(path=TOY_WAN / "vae")
    scores, zero_scores, latents = [], [], []
    for clip in clips[:6]:
        x = clip[:9].transpose(0, 1)[None]  # (1, 3, 9, 64, 64)
        z = vae.encode(x)
        latents.append(z)
        scores.append(psnr(vae.decode(z), x))
        zero_scores.append(psnr(vae.decode(torch.zeros_like(z)), x))
    return sum(scores) / len(scores), sum(zero_scores) / len(zero_scores), latents


def test_committed_toy_vae_encodes_held_out_clips(tmp_path):
    """The latents carry the picture (far above decoding the mean latent) and have about unit spread
    after the measured normalisation (what the flow-matching noise assumes)."""

    score, zero, latents = _heldout_scores(tmp_path)
    assert score > zero + 4.0, (score, zero)
    spread = torch.cat([z.flatten() for z in latents]).std().item()
    assert 0.5 < spread < 2.0, spread


@pytest.mark.xfail(
    strict=True,
    reason="the committed toy Wan VAE reaches 26.6 dB on its held-out clips (27.4 dB on first frames; "
    "toy_report.json) after 6000 CPU steps on 32x32 crops of 9-frame windows, short of the 28 dB target "
    "(DESIGN.md 3.5); a further 1000-step decoder-only phase gained 0.1 dB, so the encoder/latent is the "
    "limit: remove this mark when a rebuilt folder passes",
)
def test_committed_toy_vae_reaches_28_db(tmp_path):
    score, _, _ = _heldout_scores(tmp_path)
    assert score >= MIN_PSNR, score


def test_committed_toy_vae_decodes_long_clips_as_well_as_short_ones(tmp_path):
    """The causal decoder keeps its quality past the training window: frames 10-21 of a 21-frame clip
    (what `generate` decodes for a long driving video) within 1.5 dB of frames 1-9 (before the decoder
    phase on 17-frame windows: ~25 dB for frames 1-9, ~18 dB for frames 10-21)."""

    from dimo.data.synth import SynthConfig, synthesize

    synthesize(
        tmp_path / "heldout", SynthConfig(seed=778, num_internet=3, num_ue5=0, num_multiview=0, num_frames=21)
    )
    clips, _ = load_toy_clips(tmp_path / "heldout", 64)
    vae = WanVAE(path=TOY_WAN / "vae")
    early, late = [], []
    for clip in clips[:4]:
        x = clip[:21].transpose(0, 1)[None]
        y = vae.decode(vae.encode(x))
        early.append(psnr(y[:, :, :9], x[:, :, :9]))
        late.append(psnr(y[:, :, 9:], x[:, :, 9:]))
    early, late = sum(early) / len(early), sum(late) / len(late)
    assert late > early - 1.5, (early, late)


def test_committed_toy_wan_folder_loads_strictly_through_the_paper_path():
    net = ThreeDiMoNet(backbone_path=TOY_WAN / "transformer", motion_dim=32)
    text = WanTextEncoder(path=TOY_WAN, max_length=16)
    assert net.text_dim == text.dim
    emb = text(["Front view. The camera stays static.", "Back view. The camera orbits left."])
    assert emb.shape[:2] == (2, 16) and not torch.allclose(emb[0], emb[1])


def test_builder_can_reuse_a_vae_and_train_only_the_transformer(tmp_path):
    cfg = _micro_config(
        transformer_layers=1, transformer_heads=2, transformer_head_dim=16, transformer_ffn=32
    )
    build_toy_wan(tmp_path / "a", cfg, work=tmp_path / "wa")
    cfg.seed = 1
    report = build_toy_wan(tmp_path / "b", cfg, work=tmp_path / "wb", vae_from=tmp_path / "a")
    assert report["vae"]["reused_from"] == str(tmp_path / "a")
    from safetensors.torch import load_file

    va = load_file(tmp_path / "a" / "vae" / "diffusion_pytorch_model.safetensors")
    vb = load_file(tmp_path / "b" / "vae" / "diffusion_pytorch_model.safetensors")
    assert va.keys() == vb.keys() and all(torch.equal(va[k], vb[k]) for k in va)
    cfg_a = json.loads((tmp_path / "a" / "vae" / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "b" / "vae" / "config.json").read_text())
    assert cfg_a["latents_std"] == cfg_b["latents_std"]
    ta = load_file(tmp_path / "a" / "transformer" / "diffusion_pytorch_model.safetensors")
    tb = load_file(tmp_path / "b" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(ta[k], tb[k]) for k in ta)  # another seed: another transformer
    with pytest.raises(FileNotFoundError, match="no toy Wan VAE"):
        build_toy_wan(tmp_path / "c", cfg, work=tmp_path / "wc", vae_from=tmp_path / "nowhere")


def test_committed_toy_transformer_brings_a_prior(tmp_path):
    """Pretrained as a reference- and text-conditioned generator: on held-out toy clips its velocity
    loss at high noise is far below a random transformer's of the same shape, and within reach of the
    static-copy oracle (x0 predicted as the latent of the reference frame repeated)."""

    from diffusers import WanTransformer3DModel

    from dimo.data.synth import SynthConfig, synthesize
    from dimo.toy.wan import reference_timesteps

    synthesize(tmp_path / "heldout", SynthConfig(seed=778, num_internet=4, num_ue5=0, num_multiview=0))
    clips, prompts = load_toy_clips(tmp_path / "heldout", 64)
    vae = WanVAE(path=TOY_WAN / "vae")
    text = WanTextEncoder(path=TOY_WAN, max_length=48)
    net = ThreeDiMoNet(backbone_path=TOY_WAN / "transformer", motion_dim=32)
    pretrained = net.transformer.transformer.eval()
    torch.manual_seed(0)
    random = WanTransformer3DModel.from_config(pretrained.config).eval()
    with torch.no_grad():
        x = torch.stack([c[:9] for c in clips]).transpose(1, 2)  # (B, 3, 9, 64, 64)
        x0 = vae.encode(x)
        static = vae.encode(x[:, :, :1].expand_as(x).contiguous())
        ctx = text(prompts)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        sigma = 0.8
        x_t = torch.cat([x0[:, :, :1], ((1 - sigma) * x0 + sigma * noise)[:, :, 1:]], dim=2)
        t = reference_timesteps(torch.full((x0.shape[0],), sigma), (x0.shape[2], 8, 8))
        target = (noise - x0)[:, :, 1:]

        def loss(model):
            return (model(x_t, t, ctx, return_dict=False)[0][:, :, 1:] - target).square().mean().item()

        ours, rand = loss(pretrained), loss(random)
        oracle = (((x_t - static) / sigma)[:, :, 1:] - target).square().mean().item()
    assert ours < 0.5 * rand, (ours, rand)
    assert ours < 3.0 * oracle, (ours, oracle)


def test_decoder_refinement_keeps_the_latent_space_and_the_transformer(tmp_path):
    """The decoder phase trains the decoder alone: encoder, latent statistics and transformer are the
    folder's own, so everything pretrained on those latents stays valid."""

    from safetensors.torch import load_file

    from dimo.toy.wan import refine_toy_wan_decoder

    cfg = _micro_config(
        transformer_layers=1, transformer_heads=2, transformer_head_dim=16, transformer_ffn=32
    )
    build_toy_wan(tmp_path / "wan", cfg, work=tmp_path / "work")
    vae_file = tmp_path / "wan" / "vae" / "diffusion_pytorch_model.safetensors"
    tf_file = tmp_path / "wan" / "transformer" / "diffusion_pytorch_model.safetensors"
    before, tf_before = load_file(vae_file), load_file(tf_file)
    stats = json.loads((tmp_path / "wan" / "vae" / "config.json").read_text())["latents_std"]
    cfg.vae_decoder_steps, cfg.vae_decoder_lr = 3, 1e-2
    report = refine_toy_wan_decoder(tmp_path / "wan", cfg, work=tmp_path / "work")
    after, tf_after = load_file(vae_file), load_file(tf_file)
    assert after.keys() == before.keys()
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith("decoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    assert all(torch.equal(tf_before[k], tf_after[k]) for k in tf_before)
    assert json.loads((tmp_path / "wan" / "vae" / "config.json").read_text())["latents_std"] == stats
    saved = json.loads((tmp_path / "wan" / "toy_report.json").read_text())
    assert saved["vae"] == report["vae"] and saved["config"]["vae_decoder_steps"] == 2  # the build's own
    (refinement,) = saved["decoder_refinements"]
    assert refinement["vae_decoder_steps"] == 3 and refinement["after"].items() <= saved["vae"].items()
    with pytest.raises(FileNotFoundError, match="no toy Wan VAE to refine"):
        refine_toy_wan_decoder(tmp_path / "nowhere", cfg)


def test_vae_training_windows_are_crops_of_consecutive_frames():
    """The VAE trains on random crops (one square per window, the same for all its frames) of
    consecutive frames of one clip: each window must be found verbatim in a clip."""

    from dimo.toy.wan import _windows

    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(12, 3, 16, 16) for _ in range(3)]
    x = _windows(clips, 4, 5, g, crop=8)  # (n, 3, T, crop, crop)
    assert x.shape == (4, 3, 5, 8, 8)
    for w in x.transpose(1, 2):  # (T, 3, 8, 8)
        hits = [
            (c, s, i, j)
            for c, clip in enumerate(clips)
            for s in range(12 - 5 + 1)
            for i in range(16 - 8 + 1)
            for j in range(16 - 8 + 1)
            if torch.equal(clip[s : s + 5, :, i : i + 8, j : j + 8], w)
        ]
        assert len(hits) == 1, hits
    # crops land anywhere in the frame, not only on one corner
    corners = {tuple(_windows(clips, 1, 5, g, crop=8)[0, 0, 0, 0, :2].tolist()) for _ in range(20)}
    assert len(corners) > 5
    assert _windows(clips, 2, 5, g).shape == (2, 3, 5, 16, 16)  # no crop: whole frames


def test_vae_reconstruction_loss_weights_l1_as_configured():
    """``vae_l1_weight`` scales the L1 term (the loss is vae_l1_weight * L1 + MSE): the same seed and
    data give the same first update with the same weight and another one without the L1 term."""

    from dimo.toy.wan import train_vae

    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(9, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2)]

    def after_one_step(l1: float) -> torch.Tensor:
        cfg = _micro_config(vae_steps=1, vae_l1_weight=l1, vae_crop=0)
        vae, _ = train_vae(cfg, clips, clips)
        return torch.cat([p.detach().flatten() for p in vae.parameters()])

    with_l1 = after_one_step(1.0)
    assert torch.equal(with_l1, after_one_step(1.0))
    assert not torch.equal(with_l1, after_one_step(0.0))
