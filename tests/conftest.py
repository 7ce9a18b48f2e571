"""Shared fixtures: tiny presets and one tiny synthetic dataset per session, CPU only."""

from __future__ import annotations

import os

import pytest
import torch

# One intra-op thread unless OMP_NUM_THREADS asks for more. The tests run small ops, where a second
# thread only adds per-op synchronisation, and on a busy 2-core machine it spin-waits: measured at load
# 4.4, three tiny HVG training steps took 0.3 s on one thread and 60 s on two (the suite's slowest test,
# test_hvg_module's fit/resume, went from 129 s to a few seconds). Subprocesses inherit the variable.
torch.set_num_threads(max(1, min(int(os.environ.get("OMP_NUM_THREADS") or 1), os.cpu_count() or 1)))


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
