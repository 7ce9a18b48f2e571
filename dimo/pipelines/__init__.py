"""Inference pipelines: reference image + driving video / 3D motion -> MP4 (``docs/generate.md``).

* :mod:`.threedimo` — :class:`ThreeDiMoPipeline` (diffusers ``DiffusionPipeline``);
* :mod:`.windows` — sliding temporal windows with overlap fusion for long videos;
* :mod:`.checkpoint` — rebuilding trained Lightning checkpoints for inference;
* :mod:`.io` — image/video reading, atomic MP4/JSON writing.

Submodules are imported on use, so ``import dimo.pipelines`` stays cheap.
"""

from dimo.pipelines.errors import GenerateError

__all__ = ["GenerateError"]
