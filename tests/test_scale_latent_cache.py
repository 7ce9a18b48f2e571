"""Frozen-encoder cache (dimo.data.latent_cache): build through Lightning predict, train from it.

The cache run must give the online run's loss on the same sample and noise, must not build the VAE or
the text encoder, and must keep the mixture/resume machinery (the same sampler draws the same keys).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from dimo.cli import run_lightning

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "3dimo.yaml"
FROM_CACHE = ROOT / "experiments" / "3dimo_from_cache.yaml"


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    from dimo.data.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("cache_toy")
    cfg = SynthConfig(num_internet=1, num_ue5=1, num_multiview=0, num_frames=10, height=32, width=32,
                      ue5_trajectories=(2, 2))  # fmt: skip
    synthesize(root, cfg)
    return root


@pytest.fixture(scope="module")
def overlay(small_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache_cfg") / "root.yaml"
    # the mixture is the schedule's (its first stage's is the data's initial one; linked by the CLI);
    # frame_stride 1 because these clips have 10 frames and the recipe reads every 2nd
    path.write_text(
        "schedule:\n  stages:\n    - {name: mix, steps: 100, weights: {internet: 1.0, ue5: 1.0}, cross_view: 0.5}\n"
        f"data:\n  init_args:\n    root: {small_root}\n    frame_stride: 1\n    val_batches: 1\n    augment: {{enabled: false}}\n"
    )
    return path


@pytest.fixture(scope="module")
def cache(overlay, tmp_path_factory):
    from dimo.data.latent_cache import build_latent_cache

    out = tmp_path_factory.mktemp("cache") / "latents"
    index = build_latent_cache([BASE, overlay], out, window_step=1, accelerator="cpu", devices=1)
    return out, index


def _cli(args: list[str], tmp_path: Path):
    return run_lightning(
        [*args, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"], run=False
    )


def test_index_names_every_window_and_prompt(cache, small_root):
    from dimo.data.latent_cache import LatentCache
    from dimo.data.manifest import load_manifest

    out, index = cache
    records, _ = load_manifest(small_root)
    views = sum(len(r.views) for r in records)
    assert len(index["latents"]) == views * (10 - 9 + 1)  # every start of a 9-frame window
    assert index["failed"] == {}
    assert not list(out.glob("index-r*.json")) and not list(out.glob(".*tmp"))
    reader = LatentCache(out)
    rec = next(r for r in records if r.source == "ue5")
    assert reader.starts(rec) == [0, 1]
    x0, ref = reader.latent(rec.id, 1, 1)
    assert x0.shape[1] == 3 and ref.shape[1] == 1 and x0.shape[0] == ref.shape[0]  # 9 frames -> 3 latent
    text = reader.text(rec.views[1].camera_prompt)
    assert text.shape == (index["max_length"], index["text_dim"])


def test_cache_loss_equals_online_loss_and_no_encoder_is_built(cache, overlay, tmp_path, monkeypatch):
    out, _ = cache
    online = _cli(["--config", str(BASE), "--config", str(overlay)], tmp_path / "a")

    from dimo.models.threedimo import frozen

    def refuse(*args, **kwargs):
        raise AssertionError("a frozen encoder was built in a from-cache run")

    monkeypatch.setattr(frozen.WanVAE, "__init__", refuse)
    monkeypatch.setattr(frozen.WanTextEncoder, "__init__", refuse)
    args = ["--config", str(BASE), "--config", str(overlay), "--config", str(FROM_CACHE),
            f"--data.init_args.latent_cache={out}"]  # fmt: skip
    cached = _cli(args, tmp_path / "b")
    monkeypatch.undo()
    assert cached.model.vae is None and cached.model.text_encoder is None
    assert not any("vae" in k or "text_encoder" in k for k in cached.model.state_dict())
    cached.model.net.load_state_dict(online.model.net.state_dict())

    dm_a, dm_b = online.datamodule, cached.datamodule
    dm_a.setup("fit"), dm_b.setup("fit")
    keys = [k for _ in range(3) for k in dm_a.stream.draw()]
    assert {k.task for k in keys} >= {"cross_view"} or len(keys) >= 4
    ds_a, ds_b = dm_a.train_dataset(), dm_b.train_dataset()
    from torch.utils.data import default_collate

    from dimo.data.pixels import to_model_batch

    batch_a = to_model_batch(default_collate([ds_a[k] for k in keys[:4]]))
    batch_b = to_model_batch(default_collate([ds_b[k] for k in keys[:4]]))
    assert "target" not in batch_b and "x0" in batch_b
    torch.testing.assert_close(batch_a["driving"], batch_b["driving"], rtol=0, atol=0)
    assert batch_a["prompt"] == batch_b["prompt"]
    for m in (online.model, cached.model):
        m.eval()
    with torch.no_grad():
        la = online.model._losses(batch_a, torch.Generator().manual_seed(5))
        lb = cached.model._losses(batch_b, torch.Generator().manual_seed(5))
    torch.testing.assert_close(lb["loss_diffusion"], la["loss_diffusion"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lb["loss"], la["loss"], rtol=1e-4, atol=1e-6)
    # and it is not equal by construction: another sample's latents change the loss
    swapped = dict(batch_b, x0=batch_b["x0"].roll(1, 0))
    with torch.no_grad():
        lc = cached.model._losses(swapped, torch.Generator().manual_seed(5))
    assert abs(float(lc["loss_diffusion"]) - float(la["loss_diffusion"])) > 1e-3


def test_fit_and_resume_from_cache(cache, overlay, tmp_path):
    out, _ = cache
    common = ["--config", str(BASE), "--config", str(overlay), "--config", str(FROM_CACHE),
              f"--data.init_args.latent_cache={out}", f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--trainer.val_check_interval=2",
              "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
              f"--checkpoint.dirpath={tmp_path / 'ckpt'}", "--checkpoint.every_n_train_steps=2"]  # fmt: skip
    run_lightning(["fit", *common, "--trainer.max_steps=2"])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert not any(k.startswith(("vae.", "text_encoder.")) for k in state["state_dict"])
    assert state["ViewRichDataModule"]["mixture"]["position"] == 2
    cli = run_lightning(["fit", *common, "--trainer.max_steps=3", f"--ckpt_path={ckpt}"])
    assert cli.trainer.global_step == 3


def test_bad_cache_is_one_line(cache, overlay, tmp_path):
    from dimo.data.datamodule import ViewRichDataModule
    from dimo.data.latent_cache import LatentCacheError

    out, _ = cache
    dm = ViewRichDataModule(root=overlay.parent, latent_cache=tmp_path / "nowhere")
    with pytest.raises(LatentCacheError, match="has no index.json") as err:
        dm._latents = None
        from dimo.data.latent_cache import LatentCache

        LatentCache(tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    from dimo.data.manifest import load_manifest  # noqa: F401

    dm = ViewRichDataModule(root=Path(str(_root_of(overlay))), num_frames=5, latent_cache=out)
    with pytest.raises(LatentCacheError, match="was built for") as err:
        dm.setup("fit")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="latent_cache serves 3DiMo"):
        ViewRichDataModule(task="hvg", latent_cache=out)


def test_model_and_data_must_agree(cache, overlay, tmp_path):
    from dimo.lightning_cli import check_model_data

    out, _ = cache
    args = ["--config", str(BASE), "--config", str(overlay), "--config", str(FROM_CACHE),
            f"--data.init_args.latent_cache={out}"]  # fmt: skip
    cli = _cli(args, tmp_path)
    check_model_data(cli.model, cli.datamodule)
    cli.datamodule.latent_cache = None
    with pytest.raises(ValueError, match="needs data latent_cache"):
        check_model_data(cli.model, cli.datamodule)
    with pytest.raises(ValueError, match="set model vae and text_encoder to null"):
        _cli([*args, "--model.init_args.text_encoder=dimo.models.threedimo.WanTextEncoder"], tmp_path)
    with pytest.raises(ValueError, match="val_metrics"):
        _cli([*args, "--model.init_args.val_metrics=[psnr]"], tmp_path)


def _root_of(overlay: Path) -> str:
    import yaml

    return yaml.safe_load(overlay.read_text())["data"]["init_args"]["root"]


def test_from_cache_follows_the_mixture_weights(cache, overlay, tmp_path):
    """Weights 3:1 (internet:ue5), cross_view 0.5: the from-cache loader serves exactly the keys the
    online run's sampler draws (same sources, clips, tasks), and their counts follow the weights."""

    out, _ = cache
    # the mixture is the schedule's (one stage); the data's weights and cross_view are linked from it
    law = ["--schedule.stages=[{name: mix, steps: 1000, weights: {internet: 3.0, ue5: 1.0}, cross_view: 0.5}]",
           "--data.init_args.batch_size=4", "--data.init_args.batches_per_epoch=60"]  # fmt: skip
    online = _cli(["--config", str(BASE), "--config", str(overlay), *law], tmp_path / "a").datamodule
    cached = _cli(["--config", str(BASE), "--config", str(overlay), "--config", str(FROM_CACHE),
                   f"--data.init_args.latent_cache={out}", *law], tmp_path / "b").datamodule  # fmt: skip
    keys = list(online.train_dataloader().sampler)  # keys only: nothing is decoded
    samples = [(s, c, t) for b in cached.train_dataloader()
               for s, c, t in zip(b["source"], b["clip_id"], b["task"])]  # fmt: skip
    assert "x0" in next(iter(cached.train_dataloader()))  # really the cache's samples
    pools = cached.pools
    assert samples == [(k.source, pools[k.source][k.index].id, k.task) for k in keys]
    n = len(samples)
    assert n == 240
    share = sum(s == "internet" for s, _, _ in samples) / n  # 0.75 expected; binomial sd 0.028
    assert abs(share - 0.75) < 0.085, share
    ue5_tasks = [t for s, _, t in samples if s == "ue5"]
    assert abs(sum(t == "cross_view" for t in ue5_tasks) / len(ue5_tasks) - 0.5) < 0.2, ue5_tasks
    assert {t for s, _, t in samples if s == "internet"} == {"reconstruction"}


class BatchRecorder(Callback):
    """The (source, clip, task) of every training batch, by global step."""

    def __init__(self) -> None:
        self.seen: dict[int, list[tuple[str, str, str]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen[trainer.global_step] = list(zip(batch["source"], batch["clip_id"], batch["task"]))


def test_stage_scheduler_changes_the_mixture_from_cache(cache, overlay, tmp_path):
    """A 3 + 3 step schedule (internet only, then ue5 only, every sample cross-view) trained from the
    cache: the mixture switches, and every step sees exactly the batch the online run sees."""

    out, _ = cache
    stages = tmp_path / "stages.yaml"
    stages.write_text(
        "schedule:\n  stages:\n"
        "    - {name: a, steps: 3, weights: {internet: 1.0}, cross_view: 0.0}\n"
        "    - {name: b, steps: 3, weights: {ue5: 1.0}, cross_view: 1.0}\n"
        "trainer:\n  callbacks:\n"
        "    - class_path: test_scale_latent_cache.BatchRecorder\n"
    )
    common = ["--config", str(BASE), "--config", str(overlay), "--config", str(stages),
              "--data.init_args.batch_size=2", "--trainer.max_steps=6", "--trainer.val_check_interval=100",
              "--trainer.enable_progress_bar=false",
              "--checkpoint.every_n_train_steps=0", "--samples.every_n_steps=0"]  # fmt: skip
    runs = {"online": [], "cache": ["--config", str(FROM_CACHE), f"--data.init_args.latent_cache={out}"]}
    seen = {}
    for name, extra in runs.items():
        where = tmp_path / name
        cli = run_lightning(["fit", *common, *extra, f"--trainer.default_root_dir={where}",
                             f"--trainer.logger.init_args.save_dir={where}",
                             f"--checkpoint.dirpath={where / 'ckpt'}"])  # fmt: skip
        assert cli.trainer.global_step == 6
        (recorder,) = [c for c in cli.trainer.callbacks if isinstance(c, BatchRecorder)]
        seen[name] = recorder.seen
    assert seen["cache"] == seen["online"]
    sources = [{s for s, _, _ in seen["cache"][step]} for step in range(6)]
    assert sources[0] == sources[1] == sources[2] == {"internet"}
    # the scheduler sets the next draw's law at the end of each step; without loader workers the batch
    # of step 3 is drawn after step 2 ends, so stage b starts exactly on time
    assert sources[3:] == [{"ue5"}] * 3, sources
    assert all(t == "cross_view" for step in range(3, 6) for _, _, t in seen["cache"][step])


def test_two_process_build_equals_one_process(cache, overlay, tmp_path):
    """``data cache --devices 2`` (CPU, gloo, Lightning's distributed predict): one shard per rank and
    the same windows and prompts as the one-process build, latents equal to float tolerance (another
    batch composition), text embeddings equal."""

    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    one, _ = cache
    two = tmp_path / "two"
    args = [sys.executable, "-m", "dimo.cli", "data", "cache", "--config", str(BASE), "--config", str(overlay),
            "--out", str(two), "--window-step", "1", "--accelerator", "cpu", "--devices", "2"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in two.glob("shard-*")) == ["shard-r000-00000.safetensors",
                                                           "shard-r001-00000.safetensors"]  # fmt: skip
    index = [json.loads((c / "index.json").read_text()) for c in (one, two)]
    assert index[0]["latents"].keys() == index[1]["latents"].keys() and index[1]["failed"] == {}
    assert index[0]["texts"].keys() == index[1]["texts"].keys()
    tensors = [{k: v for f in sorted(c.glob("shard-*")) for k, v in load_file(f).items()} for c in (one, two)]
    assert tensors[0].keys() == tensors[1].keys()
    for key, value in tensors[0].items():
        if key.startswith("text/"):
            assert torch.equal(tensors[1][key], value), key
        else:
            torch.testing.assert_close(tensors[1][key], value, rtol=1e-4, atol=1e-5, msg=key)
