"""HVG (Wang et al., arXiv 2602.21188): bone-map driven multi-view SVD, see ``docs/hvg.md``."""

from dimo.models.hvg.config import HVGConfig
from dimo.models.hvg.network import SVDVAE, HVGUNet, SVDImageEncoder, build_unet
from dimo.models.hvg.sampling import ProgressiveSampler

__all__ = [
    "HVGConfig",
    "HVGModule",
    "HVGUNet",
    "ProgressiveSampler",
    "SVDImageEncoder",
    "SVDVAE",
    "build_unet",
]


def __getattr__(name: str):
    # the LightningModule is imported on use: inference (dimo.pipelines.hvg) runs without Lightning
    if name == "HVGModule":
        from dimo.models.hvg.module import HVGModule

        return HVGModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
