"""3DiMo (Fang et al., CVPR 2026): implicit motion tokens injected into a Wan video DiT.

* :mod:`.motion_encoder` — TiTok-style body/hand motion encoders E_b, E_h;
* :mod:`.geometric_decoder` — D_g, tokens -> 6D body/hand pose;
* :mod:`.injection` — motion cross-attention (attention processor) / channel-concat ablation;
* :mod:`.backbone` — Wan presets, :class:`ThreeDiMoTransformer`, strict loading;
* :mod:`.frozen` — frozen Wan VAE, UMT5 text encoder and (I2V) CLIP image encoder;
* :mod:`.config` — :class:`ThreeDiMoNetConfig`, the network's typed config and named presets;
* :mod:`.network` — :class:`ThreeDiMoNet`, the trainable parts with save/from_pretrained;
* :mod:`.module` — :class:`ThreeDiMoModule`, the LightningModule.
"""

from dimo.models.threedimo.backbone import WAN_PRESETS, MissingWeightsError, ThreeDiMoTransformer
from dimo.models.threedimo.config import NET_PRESETS, ThreeDiMoNetConfig
from dimo.models.threedimo.frozen import WanImageEncoder, WanTextEncoder, WanVAE
from dimo.models.threedimo.geometric_decoder import GeometricDecoder
from dimo.models.threedimo.motion_encoder import MotionEncoders, TiTokEncoder, hand_crops
from dimo.models.threedimo.network import ThreeDiMoNet

__all__ = [
    "NET_PRESETS",
    "WAN_PRESETS",
    "GeometricDecoder",
    "MissingWeightsError",
    "MotionEncoders",
    "ThreeDiMoModule",
    "ThreeDiMoNet",
    "ThreeDiMoNetConfig",
    "ThreeDiMoTransformer",
    "TiTokEncoder",
    "WanImageEncoder",
    "WanTextEncoder",
    "WanVAE",
    "geometric_loss",
    "geometric_mpjpe",
    "hand_crops",
]


def __getattr__(name: str):
    # the LightningModule and its losses are imported on use: inference (dimo.pipelines.threedimo) runs
    # without Lightning
    if name in ("ThreeDiMoModule", "geometric_loss", "geometric_mpjpe"):
        from dimo.models.threedimo import module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
