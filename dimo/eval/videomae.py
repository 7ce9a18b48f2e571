"""Self-supervised VideoMAE(-v2) video features for the content-debiased FVD (Ge et al., CVPR 2024).

Reproduces the feature path of ``songweige/content-debiased-fvd`` (``cdfvd/fvd.py`` +
``third_party/VideoMAEv2/utils.py`` at commit a1e037a, 2024-09-28): uint8 frames divided by 255 (no
mean/std normalisation), resized to 224x224 with ``F.interpolate(mode="bilinear", align_corners=False)``,
16 frames (here ``config.num_frames``), ``forward_features`` = ``fc_norm(tokens.mean(1))`` of a VideoMAE-v2 ViT (mean pooling), or the
final-norm first token without mean pooling.

The network is transformers' :class:`~transformers.VideoMAEModel`; the weights are a local folder holding
``config.json`` (a ``VideoMAEConfig``) and ``model.safetensors`` with the parameter names of
``VideoMAEForVideoClassification`` (``videomae.*``, ``fc_norm.*``; ``classifier.*`` is on the ignore
allow-list). Converting the released ``vit_g_hybrid_pt_1200e_ssv2_ft.pth`` to that layout is a separate
step (docs/metrics.md). Nothing is downloaded; a missing file is a :class:`MissingWeightsError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from dimo.eval.weights import MissingWeightsError, load_strict, weights_dir

VIDEOMAE_DIR = "videomae-v2"  # default folder name under $DIMO_WEIGHTS_DIR


class VideoMAEFeatures(nn.Module):
    """``(B, T, 3, H, W)`` in [-1, 1] -> ``(B, hidden_size)`` content-debiased FVD features.

    Args:
        config: a ``transformers.VideoMAEConfig``.
    """

    def __init__(self, config) -> None:  # noqa: ANN001 (transformers config)
        super().__init__()
        from transformers import VideoMAEModel

        self.config = config
        self.videomae = VideoMAEModel(config)
        self.fc_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.use_mean_pooling else None
        )
        self.num_frames, self.image_size = int(config.num_frames), int(config.image_size)

    @classmethod
    def from_folder(cls, path: str | os.PathLike | None = None) -> VideoMAEFeatures:
        """Build from ``path`` (a folder with ``config.json`` + ``model.safetensors``; default
        ``$DIMO_WEIGHTS_DIR/videomae-v2``), loading strictly."""

        from safetensors.torch import load_file
        from transformers import VideoMAEConfig

        folder = Path(path).expanduser() if path is not None else weights_dir() / VIDEOMAE_DIR
        if folder.is_file():
            folder = folder.parent
        for name in ("config.json", "model.safetensors"):
            if not (folder / name).is_file():
                raise MissingWeightsError(
                    f"content-debiased FVD (VideoMAE): weight file {name!r} not found in {folder}. dimo never "
                    "downloads weights: convert the VideoMAE-v2 checkpoint to a transformers folder "
                    "(config.json + model.safetensors) there, or pass its path (see docs/metrics.md)."
                )
        model = cls(VideoMAEConfig.from_json_file(str(folder / "config.json")))
        load_strict(
            model, load_file(str(folder / "model.safetensors")), str(folder), ignore_prefixes=("classifier.",)
        )
        model.weight_path = folder / "model.safetensors"
        model.weight_files = [folder / "config.json"]
        return model.eval().requires_grad_(False)

    def preprocess(self, videos: Tensor) -> Tensor:
        """[-1, 1] ``(B, T, 3, H, W)`` -> ``(B, num_frames, 3, S, S)`` in [0, 1] (8-bit values / 255)."""

        b, t = videos.shape[:2]
        if t < self.num_frames:
            raise ValueError(f"VideoMAE features need videos of at least {self.num_frames} frames, got {t}")
        x = ((videos[:, : self.num_frames].float() + 1) * 127.5).round().clamp(0, 255) / 255
        s = self.image_size
        frames = x.reshape(-1, *x.shape[2:])
        if frames.shape[-2:] != (s, s):
            frames = F.interpolate(frames, size=(s, s), mode="bilinear", align_corners=False)
        return frames.reshape(b, self.num_frames, 3, s, s)

    def forward(self, videos: Tensor) -> Tensor:
        hidden = self.videomae(pixel_values=self.preprocess(videos)).last_hidden_state  # (B, tokens, D)
        if self.fc_norm is not None:
            return self.fc_norm(hidden.mean(dim=1)).float()
        return hidden[:, 0].float()
