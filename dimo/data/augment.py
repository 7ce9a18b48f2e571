"""Augmentations of 3DiMo driving frames (kornia): random perspective + appearance jitter + blur.

The paper augments driving frames so the motion tokens cannot carry the driving view or the
identity. One draw of parameters is shared by all frames of a clip (``same_on_batch=True``): a
perspective warp that changed every frame would add motion that is not in the video. Targets and
the reference are never augmented. Every strength is a config field; zero disables that part.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn

__all__ = ["AugmentConfig", "DrivingAugment"]


@dataclass
class AugmentConfig:
    """Strengths of the driving-frame augmentations (``enabled=False`` turns all of them off)."""

    enabled: bool = True
    perspective: float = 0.3  # kornia distortion_scale in [0, 1]
    perspective_p: float = 0.7
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05  # in [0, 0.5]
    jitter_p: float = 0.8
    blur_p: float = 0.3
    blur_sigma: float = 1.2  # max sigma in pixels (min 0.1)

    def __post_init__(self) -> None:
        for name in ("perspective", "perspective_p", "jitter_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        for name in ("brightness", "contrast", "saturation", "blur_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")


class DrivingAugment(nn.Module):
    """(T, 3, H, W) float in [0, 1] -> the same shape, one random draw shared by the T frames."""

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        ops: list[nn.Module] = []
        if cfg.enabled and cfg.perspective > 0 and cfg.perspective_p > 0:
            ops.append(K.RandomPerspective(cfg.perspective, p=cfg.perspective_p, same_on_batch=True))
        jitter = (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
        if cfg.enabled and any(v > 0 for v in jitter) and cfg.jitter_p > 0:
            ops.append(K.ColorJiggle(*jitter, p=cfg.jitter_p, same_on_batch=True))
        if cfg.enabled and cfg.blur_sigma > 0 and cfg.blur_p > 0:
            sigma = (min(0.1, cfg.blur_sigma), cfg.blur_sigma)
            ops.append(K.RandomGaussianBlur((5, 5), sigma, p=cfg.blur_p, same_on_batch=True))
        self.ops = nn.Sequential(*ops)

    @property
    def active(self) -> bool:
        return len(self.ops) > 0

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, generator_seed: int | None = None) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"driving frames must be (T, 3, H, W), got {tuple(frames.shape)}")
        if not self.active:
            return frames
        if generator_seed is None:
            return self.ops(frames).clamp_(0, 1)
        # kornia draws from torch's global generator: fork it so the draw is a function of the seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)
            return self.ops(frames).clamp_(0, 1)
