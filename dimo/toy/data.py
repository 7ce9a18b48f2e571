"""Toy clips for the toy pretrained builders (``wan``, ``svd``): synthesised by the real generator and
read back by the real video reader, so every builder trains on exactly what the datasets decode."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["synth_config", "load_toy_clips"]


def synth_config(seed: int, per_source: int, frames: int, size: int):
    """A :class:`~dimo.data.synth.SynthConfig` with ``per_source`` clips of each source."""

    from dimo.data.synth import SynthConfig

    return SynthConfig(
        seed=seed,
        num_internet=per_source,
        num_ue5=per_source,
        num_multiview=per_source,
        num_frames=frames,
        height=size,
        width=size,
    )


def load_toy_clips(root: Path | str, size: int | None = None) -> tuple[list[torch.Tensor], list[str]]:
    """Every view of every clip of a toy dataset: (T, 3, H, W) float in [-1, 1], and its camera prompt.

    ``size``: decode resized to (size, size); None keeps the stored size.
    """

    from dimo.data.dataset import frames_to_tensor
    from dimo.data.manifest import load_manifest
    from dimo.data.video import read_frames

    records, problems = load_manifest(root)
    if problems:
        raise RuntimeError(f"toy dataset {root} has problems: {problems[:3]}")
    clips, prompts = [], []
    for rec in records:
        for view in rec.views:
            hw = None if size is None else (size, size)
            clips.append(
                frames_to_tensor(read_frames(rec.path(view.video), list(range(rec.num_frames)), size=hw))
            )
            prompts.append(view.camera_prompt)
    return clips, prompts
