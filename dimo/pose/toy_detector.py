"""The toy 2D keypoint detector: a small heatmap network trained on toy-human renders.

It is the toy world's stand-in for ViTPose (DESIGN.md 3.5): same input (a person frame), same output
(per-joint heatmaps decoded to pixels and confidences), written as a folder (``config.json`` +
``model.safetensors``) and loaded with :meth:`ToyKeypointDetector.from_pretrained`.

Network (hand-written because no library ships a pose network this small; a three-level U-Net with
skip connections): 64x64 RGB -> one map of spatial logits per joint of
:data:`dimo.pose.joints.TOY_JOINTS` (16 body + 30 finger joints) at the input resolution. Training
targets are normalised Gaussians (``sigma`` px) at the projected 3D joints under a per-joint spatial
softmax cross-entropy (a plain heatmap MSE collapses to all-zero maps on this data: measured, loss
stuck at pi for 800 steps); decoding takes the arg-max and refines it with a log-domain parabola
(sub-pixel); the score is the probability mass within 2 px of the peak.
Frames of another size are resized to the network size and the keypoints scaled back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dimo.pose.joints import TOY_BODY, TOY_JOINTS, smplx_to_wholebody

__all__ = [
    "PRESETS",
    "DetectorError",
    "ToyDetectorConfig",
    "ToyHeatmapNet",
    "ToyKeypointDetector",
    "decode_heatmaps",
    "gaussian_heatmaps",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class DetectorError(RuntimeError):
    """A detector folder or file is missing or inconsistent."""


@dataclass(frozen=True)
class ToyDetectorConfig:
    size: int = 64  # input side (frames are resized to size x size)
    widths: tuple[int, int, int, int] = (12, 24, 48, 64)  # channels at 1, 1/2, 1/4, 1/8 resolution
    num_joints: int = len(TOY_JOINTS)
    sigma: float = 1.25  # target Gaussian, pixels

    def __post_init__(self) -> None:
        if self.size % 8 or self.size < 16:
            raise ValueError(f"size must be a multiple of 8 >= 16, got {self.size}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths must be 4 positive channel counts, got {self.widths}")
        if self.num_joints != len(TOY_JOINTS):
            raise ValueError(f"num_joints must be {len(TOY_JOINTS)} (dimo.pose.joints.TOY_JOINTS)")


PRESETS = {"tiny": ToyDetectorConfig(widths=(8, 8, 16, 16)), "toy": ToyDetectorConfig()}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(1, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(1, cout), nn.SiLU(),
    )  # fmt: skip


class ToyHeatmapNet(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> heatmaps (B, J, S, S)."""

    def __init__(self, cfg: ToyDetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w0, w1, w2, w3 = cfg.widths
        self.enc0 = _block(3, w0)
        self.enc1 = _block(w0, w1)
        self.enc2 = _block(w1, w2)
        self.mid = _block(w2, w3)
        self.dec2 = _block(w3 + w2, w2)
        self.dec1 = _block(w2 + w1, w1)
        self.dec0 = _block(w1 + w0, w0)
        self.head = nn.Conv2d(w0, cfg.num_joints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)  # (B, w0, S, S)
        e1 = self.enc1(F.max_pool2d(e0, 2))  # (B, w1, S/2, S/2)
        e2 = self.enc2(F.max_pool2d(e1, 2))  # (B, w2, S/4, S/4)
        m = self.mid(F.max_pool2d(e2, 2))  # (B, w3, S/8, S/8)
        up = lambda a, b: torch.cat([F.interpolate(a, size=b.shape[-2:], mode="nearest"), b], 1)  # noqa: E731
        d2 = self.dec2(up(m, e2))
        d1 = self.dec1(up(d2, e1))
        d0 = self.dec0(up(d1, e0))
        return self.head(d0)  # (B, J, S, S)


def gaussian_heatmaps(uv: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``uv (B, J, 2)`` pixel coordinates (pixel (i, j) centre at (j+.5, i+.5)) -> ``(B, J, size, size)``."""

    c = torch.arange(size, dtype=uv.dtype, device=uv.device) + 0.5
    gx = torch.exp(-((c - uv[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, J, S)
    gy = torch.exp(-((c - uv[..., 1:2]) ** 2) / (2 * sigma**2))
    return gy[..., :, None] * gx[..., None, :]


def decode_heatmaps(heat: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, J, H, W)`` -> pixel ``uv (B, J, 2)`` and ``score (B, J)`` in [0, 1].

    Arg-max, then a parabola through the log-heatmap at the peak and its two neighbours on each axis
    (the separable form of DARK's log-domain Taylor step, Zhang et al. 2020): exact for a Gaussian
    peak, the offset clamped to half a pixel. ``logits=True``: ``heat`` are per-joint spatial logits
    (the toy detector's output); the log-heatmap is their log-softmax and the score is the probability
    mass within 2 px of the peak. Otherwise ``heat`` is a heatmap and the score its clipped peak value.
    """

    b, j, h, w = heat.shape
    flat = heat.flatten(2)
    peak, idx = flat.max(-1)  # (B, J)
    py, px = idx // w, idx % w
    logh = flat.log_softmax(-1) if logits else heat.clamp_min(1e-6).log().flatten(2)

    def offset(step: int, ok: torch.Tensor) -> torch.Tensor:
        i0 = idx[..., None]
        lm = logh.gather(2, (i0 - step).clamp(0, h * w - 1))[..., 0]
        l0 = logh.gather(2, i0)[..., 0]
        lp = logh.gather(2, (i0 + step).clamp(0, h * w - 1))[..., 0]
        curv = lm - 2 * l0 + lp
        d = torch.where(ok & (curv < -1e-9), 0.5 * (lm - lp) / curv.clamp(max=-1e-9), torch.zeros_like(l0))
        return d.clamp(-0.5, 0.5)

    dx = offset(1, (px > 0) & (px < w - 1))
    dy = offset(w, (py > 0) & (py < h - 1))
    x = px.to(heat.dtype) + 0.5 + dx
    y = py.to(heat.dtype) + 0.5 + dy
    if logits:
        prob = logh.exp().reshape(b, j, h, w)
        yy = torch.arange(h, device=heat.device)[:, None]
        xx = torch.arange(w, device=heat.device)[None, :]
        near = ((yy - py[..., None, None]).abs() <= 2) & ((xx - px[..., None, None]).abs() <= 2)
        score = (prob * near).sum((-1, -2))
    else:
        score = peak
    return torch.stack([x, y], -1), score.clamp(0, 1)


class ToyKeypointDetector:
    """Frames -> COCO-WholeBody keypoints and scores with a :class:`ToyHeatmapNet`."""

    def __init__(self, net: ToyHeatmapNet) -> None:
        self.net = net.eval()
        self.cfg = net.cfg

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ToyKeypointDetector:
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise DetectorError(
                    f"{folder / name}: missing (a toy detector folder holds {CONFIG_NAME} + {WEIGHTS_NAME}; "
                    "build it with `make toy-detector`)"
                )
        raw = json.loads((folder / CONFIG_NAME).read_text())
        if raw.get("model_type") != "dimo_toy_detector":
            raise DetectorError(f"{folder / CONFIG_NAME}: model_type must be 'dimo_toy_detector'")
        fields = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in raw.items()
            if k in ToyDetectorConfig.__dataclass_fields__
        }
        net = ToyHeatmapNet(ToyDetectorConfig(**fields))
        state = {k: v.float() for k, v in load_file(folder / WEIGHTS_NAME).items()}
        net.load_state_dict(state, strict=True)
        return cls(net)

    @classmethod
    def frozen(cls, folder: str | os.PathLike) -> ToyKeypointDetector:
        """:meth:`from_pretrained` for validation metrics: the network frozen (no gradients, eval mode
        kept through a parent's ``train()``). Held as a plain attribute by the LightningModules, so it
        adds no checkpoint keys and is not optimised."""

        from dimo.models.common import freeze

        det = cls.from_pretrained(folder)
        freeze(det.net)
        return det

    def save_pretrained(self, folder: str | os.PathLike, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # fp16 storage halves the folder (upcast on load); the decoded keypoints change by < 0.01 px
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, folder / WEIGHTS_NAME)
        cfg = {"model_type": "dimo_toy_detector", **asdict(self.cfg), **(extra or {})}
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=1) + "\n")
        return folder

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``(N, 3, H, W)`` in [-1, 1] on the network's device -> ``uv (N, 46, 2)`` pixels of the
        input frames and ``scores (N, 46)``, in the detector's channel order (:data:`TOY_JOINTS`;
        body channels :data:`~dimo.pose.joints.TOY_BODY` first). Computed in float32."""

        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
        _, _, H, W = images.shape
        s = self.cfg.size
        p = next(self.net.parameters())
        x = images.to(device=p.device, dtype=torch.float32)
        if (H, W) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        with torch.autocast(p.device.type, enabled=False):
            uv, score = decode_heatmaps(self.net(x.to(p.dtype)).float(), logits=True)
        return uv * uv.new_tensor([W / s, H / s]), score

    @torch.no_grad()
    def detect_body(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`detect` on the images' device (the network follows them), body joints only:
        ``uv (N, 16, 2)``, ``scores (N, 16)`` in the order of :data:`~dimo.pose.joints.TOY_BODY`
        (SMPL-X ids :data:`~dimo.pose.joints.TOY_BODY_SMPLX`)."""

        self.net.to(images.device)  # no-op once there
        uv, score = self.detect(images)
        body = list(TOY_BODY)
        return uv[:, body], score[:, body]

    @torch.no_grad()
    def predict_smplx(
        self, frames: np.ndarray | torch.Tensor, batch_size: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``(T, H, W, 3)`` -> SMPL-X ``uv (T, 55, 2)`` pixels of the input frames and ``scores (T, 55)``."""

        x = torch.as_tensor(np.asarray(frames))
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(x.shape)}")
        T = x.shape[0]
        uv = torch.zeros(T, 55, 2)
        sc = torch.zeros(T, 55)
        ids = torch.tensor(TOY_JOINTS)
        for i in range(0, T, batch_size):
            chunk = x[i : i + batch_size].permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W)
            xy, score = self.detect(chunk)
            uv[i : i + batch_size, ids] = xy.cpu()
            sc[i : i + batch_size, ids] = score.cpu()
        return uv, sc

    def __call__(self, frames: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(T, H, W, 3)`` -> COCO-WholeBody ``keypoints (T, 133, 2)``, ``scores (T, 133)`` (float32)."""

        uv, sc = self.predict_smplx(frames)
        return smplx_to_wholebody(uv, sc)
