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
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
