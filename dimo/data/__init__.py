"""Data: the clip format, PyAV video IO, the toy-human generator, the source mixture and the DataModule.

See ``docs/data.md`` for the on-disk format and the sample dicts; ``docs/contracts.md`` for the
shapes other parts rely on. Heavy pieces import lazily: ``from dimo.data import ViewRichDataModule``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ViewRichDataModule": "dimo.data.datamodule",
    "ClipDataset": "dimo.data.dataset",
    "to_model_batch": "dimo.data.pixels",
    "SampleSpec": "dimo.data.spec",
    "AugmentConfig": "dimo.data.augment",
    "MixtureStream": "dimo.data.mixture",
    "MixtureSampler": "dimo.data.mixture",
    "SampleKey": "dimo.data.mixture",
    "SynthConfig": "dimo.data.synth",
    "synthesize": "dimo.data.synth",
    "validate_root": "dimo.data.validate",
    "load_manifest": "dimo.data.manifest",
    "read_frames": "dimo.data.video",
    "write_video": "dimo.data.video",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dimo.data' has no attribute {name!r}")
