"""Tiny fakes shared by the tests and the benchmarks: batches, modules and trainers at toy scale.

Everything here runs on a CPU in seconds and follows the sample contracts of ``docs/contracts.md``:

* :func:`threedimo_batch`: a collated 3DiMo batch of random values with the right shapes and ranges;
* :func:`synthetic_hvg_sample` / :class:`SyntheticHVGDataset` / :func:`hvg_batch`: HVG samples built
  in memory from the geometry package (a rest skeleton swinging its arms, V cameras on a ring looking
  at the pelvis, targets rendered as shaded coloured ellipsoids, so the target is a function of the
  bone maps the network sees), in milliseconds and without disk. The toy dataset (:mod:`dimo.data`)
  is the real data path; these are for unit tests and benchmarks;
* :func:`tiny_threedimo_net` / :func:`tiny_threedimo_module` / :func:`tiny_hvg_module`: the ``tiny``
  presets at 32x32 with small motion encoders;
* :func:`tiny_trainer`: a CPU ``Trainer`` without logger, progress bar or model summary;
* :func:`save_module_checkpoint`: a Lightning checkpoint of a module as ``fit`` writes it, without training;
* :func:`tiny_vlm_folder`: a tiny random Qwen2.5-VL model folder (config, weights, byte-level BPE
  tokenizer, image-processor settings, chat template) written offline in about a second, for the
  camera captioner (:class:`dimo.data.importers.VLMCaptioner`).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dimo.geometry.cameras import intrinsics, look_at, project, relative_rotation
from dimo.geometry.renderer import DEFAULT_PART_COLORS, render_bones
from dimo.geometry.skeleton import rest_joints

__all__ = [
    "PROMPTS",
    "SyntheticHVGDataset",
    "collate",
    "hvg_batch",
    "synthetic_hvg_sample",
    "threedimo_batch",
    "save_module_checkpoint",
    "tiny_hvg_module",
    "tiny_threedimo_module",
    "tiny_threedimo_net",
    "tiny_trainer",
    "tiny_vlm_folder",
]

PROMPTS = ["front view. The camera orbits left.", "back view. The camera is static."]


def collate(samples: list[dict]) -> dict:
    """Stack tensors, list everything else (what ``DataLoader``'s default collation does here)."""

    return {k: torch.stack([s[k] for s in samples]) if torch.is_tensor(v) else [s[k] for s in samples]
            for k, v in samples[0].items()}  # fmt: skip


# -- 3DiMo -------------------------------------------------------------------------------------------
def threedimo_batch(
    b: int = 2, frames: int = 9, height: int = 32, width: int = 32, device: Any = "cpu", seed: int = 0
) -> dict:
    """A 3DiMo batch per ``docs/contracts.md`` (random values of the right shapes and ranges)."""

    g = torch.Generator().manual_seed(seed)
    batch = {
        "driving": torch.rand(b, frames, 3, height, width, generator=g) * 2 - 1,
        "target": torch.rand(b, frames, 3, height, width, generator=g) * 2 - 1,
        "reference": torch.rand(b, 3, height, width, generator=g) * 2 - 1,
        "body_pose": torch.randn(b, frames, 21, 3, generator=g) * 0.4,
        "hand_pose": torch.randn(b, frames, 30, 3, generator=g) * 0.4,
        "body_valid": torch.ones(b, frames, dtype=torch.bool),
        "hand_valid": torch.ones(b, frames, 2, dtype=torch.bool),
        "body_pseudo": torch.zeros(b, dtype=torch.bool),
        "hand_pseudo": torch.zeros(b, dtype=torch.bool),
        "joints2d": torch.rand(b, frames, 55, 2, generator=g) * torch.tensor([width, height]),
        "joints2d_valid": torch.ones(b, frames, 55, dtype=torch.bool),
        "target_joints3d": torch.zeros(b, frames, 55, 3),
        "target_K": torch.eye(3).expand(b, frames, 3, 3).clone(),
        "target_joints3d_valid": torch.zeros(b, dtype=torch.bool),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["prompt"] = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
    return batch


def tiny_threedimo_net(injection: str = "cross_attention", size: int = 32, **kwargs):
    """The ``tiny`` Wan backbone with small motion encoders for ``size`` x ``size`` frames."""

    from dimo.models.threedimo import ThreeDiMoNet

    kwargs = {"image_size": (size, size), "hand_crop": 16, "motion_dim": 32, "geo_hidden": 64, **kwargs}
    return ThreeDiMoNet(injection=injection, **kwargs)


def tiny_threedimo_module(net=None, injection: str = "cross_attention", **kwargs):
    """``ThreeDiMoModule`` on :func:`tiny_threedimo_net` with a 16-token tiny text encoder."""

    from dimo.models.threedimo import ThreeDiMoModule, WanTextEncoder

    net = net if net is not None else tiny_threedimo_net(injection)
    kwargs.setdefault("text_encoder", WanTextEncoder(max_length=16))
    return ThreeDiMoModule(net=net, **kwargs)


# -- HVG ---------------------------------------------------------------------------------------------
def synthetic_hvg_sample(
    num_views: int = 3, num_frames: int = 2, height: int = 64, width: int = 64, seed: int = 0
) -> dict:
    """One HVG sample: target (V, T, 3, H, W) in [-1, 1], reference, cameras, joints3d (T, 55, 3) ..."""

    g = torch.Generator().manual_seed(seed)
    rest = rest_joints(scale=float(0.9 + 0.2 * torch.rand((), generator=g)))  # (55, 3)
    phase = float(torch.rand((), generator=g)) * 2 * math.pi
    joints = []
    for f in range(num_frames):
        j = rest.clone()
        swing = 0.15 * math.sin(phase + 0.8 * f)
        j[16:22:2, 1] += swing  # left arm chain moves up/down
        j[17:22:2, 1] -= swing
        j[:, 0] += 0.05 * math.sin(phase + 0.5 * f)
        joints.append(j)
    joints3d = torch.stack(joints)  # (T, 55, 3)
    pelvis = joints3d[0, 0]
    yaw0 = float(torch.rand((), generator=g)) * 2 * math.pi
    yaws = torch.tensor([yaw0 + 2 * math.pi * v / num_views for v in range(num_views)])
    eye = torch.stack([2.2 * yaws.sin(), torch.full_like(yaws, float(pelvis[1])), 2.2 * yaws.cos()], dim=-1)
    R, t = look_at(eye, pelvis.expand(num_views, 3))  # (V, 3, 3), (V, 3)
    K = intrinsics(width, height, fov_deg=50.0).expand(num_views, 3, 3).clone()
    n = num_views * num_frames
    jt = joints3d[None].expand(num_views, -1, -1, -1).reshape(n, 55, 3)

    def per_frame(x):
        return x[:, None].expand(num_views, num_frames, *x.shape[1:]).reshape(n, *x.shape[1:])

    r = render_bones(
        jt, per_frame(K), per_frame(R), per_frame(t), height, width, part_colors=DEFAULT_PART_COLORS
    )
    target = (r.rgb * 2 - 1).reshape(num_views, num_frames, 3, height, width)
    uv, _ = project(joints3d[None, :, :1].expand(num_views, -1, -1, -1), K[:, None], R[:, None], t[:, None])
    return {
        "target": target,
        "reference": target[0, 0].clone(),
        "K": K,
        "R": R,
        "t": t,
        "rel_rot": relative_rotation(R),
        "joints3d": joints3d,
        "pelvis2d": uv[..., 0, :],  # (V, T, 2)
        "source": "multiview",
        "task": "hvg",
        "clip_id": f"synthetic_{seed:04d}",
    }


class SyntheticHVGDataset(Dataset):
    """``length`` deterministic samples (index = seed)."""

    def __init__(
        self, length: int = 4, num_views: int = 3, num_frames: int = 2, height: int = 64, width: int = 64
    ):
        self.length, self.kwargs = (
            length,
            {"num_views": num_views, "num_frames": num_frames, "height": height},
        )
        self.kwargs["width"] = width
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if i not in self._cache:
            self._cache[i] = synthetic_hvg_sample(seed=i, **self.kwargs)
        return self._cache[i]


def hvg_batch(
    b: int = 1, views: int = 2, frames: int = 2, height: int = 32, width: int = 32, device: Any = "cpu"
) -> dict:
    """An HVG batch: ``b`` synthetic samples (seeds 0..b-1) collated."""

    batch = collate([synthetic_hvg_sample(views, frames, height, width, seed=i) for i in range(b)])
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def tiny_hvg_module(**kwargs):
    """``HVGModule`` on the ``tiny`` preset: AdamW lr 1e-3 without weight decay, one-cell sampler
    windows, 2 sampling steps (override any of them)."""

    from dimo.models.hvg import HVGModule, HVGUNet, ProgressiveSampler

    kwargs.setdefault("optimizer", functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0))
    kwargs.setdefault(
        "sampler", ProgressiveSampler(view_window=1, frame_window=1, view_overlap=0, frame_overlap=0)
    )
    kwargs.setdefault("sample_steps", 2)
    kwargs.setdefault("net", HVGUNet())
    return HVGModule(**kwargs)


# -- Lightning ---------------------------------------------------------------------------------------
def tiny_trainer(root: str | Path | None = None, **kwargs):
    """A CPU ``Trainer`` in ``root`` with no logger, progress bar or model summary unless given."""

    from lightning.pytorch import Trainer

    for key in ("logger", "enable_progress_bar", "enable_model_summary"):
        kwargs.setdefault(key, False)
    return Trainer(accelerator="cpu", default_root_dir=root, **kwargs)


def save_module_checkpoint(module, path: str | Path) -> Path:
    """Write ``module``'s Lightning checkpoint (hyperparameters, ``dimo_parts``, weights) at ``path``
    through a :func:`tiny_trainer`, as ``fit`` would, without a training step."""

    path = Path(path)
    trainer = tiny_trainer(path.parent, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


# -- vision-language captioner -----------------------------------------------------------------------
# Qwen2-VL's chat template (the one its model folders ship in chat_template.json)
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_VL_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                          "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                          "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                          "<|video_pad|>")  # fmt: skip


def tiny_vlm_folder(path: str | Path, seed: int = 0, patch_size: int = 4, max_pixels: int = 16 * 16) -> Path:
    """Write a tiny random Qwen2.5-VL folder at ``path`` as ``save_pretrained`` lays one out, offline.

    A byte-level BPE tokenizer (300 tokens, Qwen's special tokens) trained on a few sentences, a 1-layer
    text model and 1-block vision tower of width 32, ``patch_size`` pixel patches merged 2x2 and 2
    frames deep, frames resized to at most ``max_pixels`` pixels (a 32x32 frame becomes 16x16: 4 video
    tokens per pair of frames), Qwen-VL's chat template in ``chat_template.json`` and the image-processor
    settings in ``preprocessor_config.json`` in the format the Qwen2.5-VL folders use. Its answers are
    random tokens.
    """

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(QWEN_VL_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(
        [
            "You are a helpful assistant.",
            "system user assistant",
            *PROMPTS,
            "Front view. The camera remains static.",
        ],
        trainer,
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.save_pretrained(path)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VL_SPECIAL_TOKENS}
    (path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_VL_CHAT_TEMPLATE}, indent=1))
    pre = {"min_pixels": (2 * patch_size) ** 2, "max_pixels": max_pixels, "patch_size": patch_size,
           "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
           "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
           "processor_class": "Qwen2_5_VLProcessor"}  # fmt: skip
    (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "patch_size": patch_size, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "window_size": 4 * patch_size, "out_hidden_size": 32, "fullatt_block_indexes": [0]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    return path
