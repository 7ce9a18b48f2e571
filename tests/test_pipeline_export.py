"""One sampler per method: the exported pipelines (3DiMo T2V and I2V, HVG) reproduce the modules'
validation samples, loaded by dimo's loader and by ``diffusers.DiffusionPipeline.from_pretrained``
(opt-in remote code); both exports share one folder shape (``dimo.pipelines.exports``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from dimo.commands.export import main as export_main
from dimo.pipelines.threedimo import ThreeDiMoPipeline
from dimo.testing import save_module_checkpoint, threedimo_batch, tiny_threedimo_module, tiny_threedimo_net

T, SIZE, STEPS = 9, 32, 2


def _trained_looking(module):
    with torch.no_grad():  # away from the zero-init, so the motion and every part change the output
        for p in module.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module.eval()


def _export(module, root: Path) -> Path:
    ckpt = save_module_checkpoint(module, root / "model.ckpt")
    out = root / "export"
    assert export_main([str(ckpt), str(out)]) == 0
    return out


@pytest.fixture(scope="module", params=["tiny", "tiny-i2v"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    module = tiny_threedimo_module(net=tiny_threedimo_net(backbone=request.param))
    module = _trained_looking(module)
    return module, _export(module, tmp_path_factory.mktemp(request.param))


@pytest.fixture()
def modules_cache(tmp_path, monkeypatch):
    """diffusers copies an opted-in pipeline.py into its modules cache: keep that in the test's folder."""

    import diffusers.utils.dynamic_modules_utils as dyn

    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))


def test_export_reproduces_the_module_sample(exported):
    module, folder = exported
    batch = threedimo_batch(b=2, frames=T, height=SIZE, width=SIZE, seed=1)
    want = module.generate(batch, num_steps=STEPS)  # (B, T, 3, H, W), the validation sample
    pipe = ThreeDiMoPipeline.from_pretrained(folder)
    assert pipe.net.is_i2v == module.net.is_i2v and (pipe.image_encoder is None) != module.net.is_i2v
    got = pipe.sample(
        batch["reference"], batch["driving"], batch["prompt"], STEPS, generator=module.sample_generator(),
        joints2d=batch["joints2d"], joints2d_valid=batch["joints2d_valid"],
    )  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the user call (one video) is the same sampler
    one = pipe(
        batch["reference"][0], batch["driving"][0], batch["prompt"][0], num_inference_steps=STEPS,
        window=T, generator=module.sample_generator(), progress=False,
        joints2d=batch["joints2d"][0], joints2d_valid=batch["joints2d_valid"][0],
    )  # fmt: skip
    single = module.generate({k: v[:1] for k, v in batch.items()}, num_steps=STEPS)
    torch.testing.assert_close(one, single[0], rtol=0, atol=0)
    # and the sample depends on the motion
    flipped = module.generate(dict(batch, driving=batch["driving"].flip(1)), num_steps=STEPS)
    assert (flipped[:, 1:] - want[:, 1:]).abs().mean() > 1e-4


def test_diffusers_loads_the_export_only_with_the_opt_in(exported, modules_cache):
    module, folder = exported
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(folder)  # the folder's pipeline.py is not run by default
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(pipe).__name__ == "ThreeDiMoPipeline"
    batch = threedimo_batch(b=1, frames=T, height=SIZE, width=SIZE, seed=2)
    want = module.generate(batch, num_steps=STEPS)
    got = pipe(
        batch["reference"][0], batch["driving"][0], batch["prompt"][0], num_inference_steps=STEPS,
        window=T, generator=module.sample_generator(), progress=False,
        joints2d=batch["joints2d"][0], joints2d_valid=batch["joints2d_valid"][0],
    )  # fmt: skip
    torch.testing.assert_close(got, want[0], rtol=0, atol=0)


def test_dimo_loader_refuses_a_part_with_a_missing_weight(exported, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from dimo.pipelines.errors import GenerateError

    folder = tmp_path / "export"
    shutil.copytree(exported[1], folder)
    part = (
        "image_encoder/model.safetensors"
        if exported[0].net.is_i2v
        else "vae/diffusion_pytorch_model.safetensors"
    )
    state = load_file(folder / part)
    state.pop(sorted(state)[0])
    save_file(state, folder / part)
    with pytest.raises(GenerateError, match=r"weights do not match .*missing 1"):  # not a warning
        ThreeDiMoPipeline.from_pretrained(folder)


def test_i2v_samples_one_window_and_t2v_slides_windows(exported):
    from dimo.pipelines.errors import GenerateError

    module, folder = exported
    pipe = ThreeDiMoPipeline.from_pretrained(folder)
    batch = threedimo_batch(b=1, frames=T, height=SIZE, width=SIZE)
    args = (batch["reference"][0], batch["driving"][0], "Front view. The camera stays static.")
    if module.net.is_i2v:  # Wan I2V conditions latent frame 0 only: no sliding windows
        with pytest.raises(GenerateError, match="one window"):
            pipe(*args, num_inference_steps=1, window=5, progress=False)
    whole = pipe(*args, num_inference_steps=1, generator=torch.Generator().manual_seed(0), progress=False)
    assert whole.shape == (T, 3, SIZE, SIZE) and bool(torch.isfinite(whole).all())
    if not module.net.is_i2v:
        windowed = pipe(
            *args,
            num_inference_steps=1,
            window=5,
            overlap=0,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
        assert windowed.shape == whole.shape and not torch.equal(windowed, whole)


# -- HVG: the pipeline's sampler is the module's; exports need no Lightning ------------------------
@pytest.fixture(scope="module")
def hvg_exported(tmp_path_factory):
    from diffusers import UNetSpatioTemporalConditionModel

    from dimo.models.hvg import HVGConfig
    from dimo.models.hvg.network import build_image_encoder, build_vae
    from dimo.testing import tiny_hvg_module

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hvg")
    svd, cfg = root / "svd", HVGConfig()  # the run's pretrained SVD-xt folder, with a latent scale of its own
    UNetSpatioTemporalConditionModel(**cfg.unet_kwargs()).save_pretrained(svd / "unet")
    vae = build_vae(cfg)
    vae.register_to_config(scaling_factor=1.48)
    vae.save_pretrained(svd / "vae")
    build_image_encoder(cfg).save_pretrained(svd / "image_encoder")
    module = tiny_hvg_module(guidance_scale=1.5, pretrained=svd)
    with torch.no_grad():  # open the zero-initialised pose door so the bone maps matter
        torch.nn.init.normal_(module.unet.pose_modulator.proj_out.weight, std=0.2)
    return module.eval(), _export(module, root)


def test_hvg_export_reproduces_the_module_sample(hvg_exported):
    from dimo.pipelines.hvg import HVGPipeline
    from dimo.testing import hvg_batch

    module, folder = hvg_exported
    batch = hvg_batch(2, views=2, frames=2, height=SIZE, width=SIZE)
    want = module.generate(batch, gen=torch.Generator().manual_seed(3), steps=2)  # (B, V, T, 3, H, W)
    pipe = HVGPipeline.from_pretrained(folder)
    assert pipe.guidance_scale == 1.5 and pipe.sampler == module.sampler and pipe.edm == module.edm
    got = pipe.sample(batch, torch.Generator().manual_seed(3), 2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    moved = dict(batch, joints3d=batch["joints3d"] + 0.2)  # other bone maps, another sample
    assert (pipe.sample(moved, torch.Generator().manual_seed(3), 2) - want).abs().mean() > 1e-4


def test_hvg_diffusers_loads_the_export_only_with_the_opt_in(hvg_exported, modules_cache):
    from dimo.pipelines.cameras import ring_cameras
    from dimo.pipelines.hvg import HVGPipeline
    from dimo.testing import hvg_batch

    module, folder = hvg_exported
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(folder)  # the folder's pipeline.py is not run by default
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(pipe).__name__ == "HVGPipeline" and type(pipe.unet).__name__ == "HVGUNet"
    assert not pipe.unet.training and not any(p.requires_grad for p in pipe.vae.parameters())
    assert pipe.stored_settings() == module.pipeline().stored_settings()
    batch = hvg_batch(1, views=2, frames=2, height=SIZE, width=SIZE)
    want = module.generate(batch, gen=torch.Generator().manual_seed(4), steps=2)
    torch.testing.assert_close(pipe.sample(batch, torch.Generator().manual_seed(4), 2), want, rtol=0, atol=0)
    # the user call is the same sampler, with the same result as dimo's own loader
    joints = batch["joints3d"][0]
    cams = ring_cameras(2, joints[0, 0], SIZE, SIZE)
    args = (batch["reference"][0], joints, cams, 2)
    native = HVGPipeline.from_pretrained(folder)(*args, torch.Generator().manual_seed(5))
    torch.testing.assert_close(pipe(*args, torch.Generator().manual_seed(5)), native, rtol=0, atol=0)


def test_hvg_export_is_an_svd_style_folder_with_a_model_card(hvg_exported):
    import json

    from diffusers import AutoencoderKLTemporalDecoder

    module, folder = hvg_exported
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "image_encoder", "model_index.json", "pipeline.py", "unet", "vae",
    ]  # fmt: skip
    for part, weights in (
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("image_encoder", "model"),
    ):
        assert (folder / part / f"{weights}.safetensors").is_file() and (
            folder / part / "config.json"
        ).is_file()
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert unet["_class_name"] == "HVGUNet" and unet["hvg"]["preset"] == "tiny"
    assert (
        json.loads((folder / "vae" / "config.json").read_text())["_class_name"]
        == "AutoencoderKLTemporalDecoder"
    )
    clip = json.loads((folder / "image_encoder" / "config.json").read_text())
    assert clip["architectures"] == ["CLIPVisionModelWithProjection"]
    # the VAE folder is a plain SVD one: diffusers' own class reads it and decodes the same
    plain = AutoencoderKLTemporalDecoder.from_pretrained(folder / "vae")
    z = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            plain.decode(z, num_frames=2).sample, module.vae.decode(z, num_frames=2).sample
        )
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "HVGPipeline"]
    assert index["unet"] == ["dimo.models.hvg.network", "HVGUNet"]
    assert (
        index["training"]["global_step"] == 0 and index["training"]["model"] is None
    )  # saved by a bare Trainer
    assert index["training"]["parts"]["net"]["hvg"]["preset"] == "tiny"
    card = (folder / "README.md").read_text()
    for words in ("HVG", "HVGPipeline.from_pretrained", "trust_remote_code=True", "global step 0", "`joints`",
                  "`cameras`", "`reference`", "preset `tiny`", "--model hvg"):  # fmt: skip
        assert words in card, words


def _tampered_copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    return copy


@pytest.mark.parametrize(
    "victim",
    ["vae/diffusion_pytorch_model.safetensors", "unet/config.json", "image_encoder/model.safetensors"],
)
def test_hvg_export_missing_file_is_one_line_naming_it(hvg_exported, tmp_path, modules_cache, victim):
    from dimo.pipelines.errors import GenerateError
    from dimo.pipelines.hvg import HVGPipeline

    folder = _tampered_copy(hvg_exported[1], tmp_path)
    (folder / victim).unlink()
    with pytest.raises(GenerateError) as err:
        HVGPipeline.from_pretrained(folder)
    assert "\n" not in str(err.value) and Path(victim).name in str(err.value), str(err.value)
    with pytest.raises(FileNotFoundError) as err:  # diffusers' loader reaches the same part loader
        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert "\n" not in str(err.value) and Path(victim).name in str(err.value), str(err.value)


def test_hvg_export_loads_strictly(hvg_exported, tmp_path):
    from safetensors.torch import load_file, save_file

    from dimo.pipelines.errors import GenerateError
    from dimo.pipelines.hvg import HVGPipeline

    folder = _tampered_copy(hvg_exported[1], tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop(next(k for k in state if k.startswith("pose_modulator.")))  # an HVG layer's weight
    save_file(state, weights)
    with pytest.raises(GenerateError, match="missing 1 .*unexpected 0"):
        HVGPipeline.from_pretrained(folder)
    (folder / "unet").rename(folder / "hvg")  # the layout before the parts had folders of their own
    with pytest.raises(GenerateError, match="older dimo export"):
        HVGPipeline.from_pretrained(folder)


def test_exports_load_and_generate_without_lightning(exported, hvg_exported, tmp_path):
    """Inference imports no Lightning: a fresh interpreter where importing it fails loads both exports."""

    import subprocess
    import sys

    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning"):
            raise ImportError("no Lightning here")
sys.meta_path.insert(0, Block())
import torch
from dimo.pipelines.cameras import ring_cameras
from dimo.pipelines.hvg import HVGPipeline
from dimo.pipelines.threedimo import ThreeDiMoPipeline
hvg = HVGPipeline.from_pretrained({str(hvg_exported[1])!r})
joints = torch.zeros(2, 55, 3)
video = hvg(torch.zeros(3, {SIZE}, {SIZE}), joints, ring_cameras(2, joints[0, 0], {SIZE}, {SIZE}), 1)
assert video.shape == (2, 2, 3, {SIZE}, {SIZE}), video.shape
wan = ThreeDiMoPipeline.from_pretrained({str(exported[1])!r})
out = wan(torch.zeros(3, {SIZE}, {SIZE}), torch.zeros(5, 3, {SIZE}, {SIZE}), "Front view.", num_inference_steps=1, progress=False)
assert out.shape == (5, 3, {SIZE}, {SIZE}), out.shape
assert not any(m.split(".")[0] == "lightning" for m in sys.modules)
print("ok")
"""
    repo = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_hvg_export_of_a_lora_network_is_refused_in_one_line(tmp_path):
    from dimo.models.lora import LoRASettings
    from dimo.pipelines.errors import GenerateError
    from dimo.pipelines.hvg import HVGPipeline
    from dimo.testing import tiny_hvg_module

    module = tiny_hvg_module(train_parts="lora", lora=LoRASettings(rank=4, alpha=8.0))
    with pytest.raises(GenerateError, match="LoRA adapters .*save_adapters"):
        HVGPipeline.from_module(module).save_pretrained(tmp_path / "export")
    assert not (tmp_path / "export").exists()
