"""Shared fixtures: tiny presets and one tiny synthetic dataset per session, CPU only."""

from __future__ import annotations

import os

import pytest
import torch

# Tests are small; more threads than cores only adds contention on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_thread():
    """Small convolutions: on a busy 2-core machine a second OpenMP thread only spin-waits (10x slower)."""

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ---- data (dimo.data): one tiny toy-human dataset per session -----------------------------------
TOY_SYNTH = {
    # 2 clips per source, 12 frames of 32x32, 4 multiview cameras: a second or two of CPU time
    "num_internet": 2,
    "num_ue5": 2,
    "num_multiview": 2,
    "num_frames": 12,
    "height": 32,
    "width": 32,
    "multiview_cameras": (4, 4),
    "ue5_trajectories": (2, 2),
}


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A tiny toy-human dataset in the real clip format (read-only: copy it before breaking it).

    2 clips per source (internet 1 view, ue5 2 trajectories, multiview 4 cameras), 12 frames at
    32x32, built once per session by :func:`dimo.data.synth.synthesize`.
    """

    from dimo.data.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("toy")
    synthesize(root, SynthConfig(**TOY_SYNTH))
    return root
