"""ViTPose (transformers ``VitPoseForPoseEstimation``) as a dimo keypoint detector, from a local folder.

The folder is what ``save_pretrained`` writes for the model and its image processor
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``), e.g. a copy of
``usyd-community/vitpose-base-simple`` (COCO 17 body keypoints) or a whole-body ViTPose with 133
outputs. Nothing is downloaded: a missing folder or file is one error line naming it.

Single-person videos: every frame's box is the whole frame (top-down ViTPose needs a box; a person
detector is not needed when one person fills the video). The image processor crops/warps the box to
the model's input, and ``post_process_pose_estimation`` decodes the heatmaps (arg-max + DARK-style
refinement) back to frame pixels. Output: dimo's one 2D keypoint format (COCO-WholeBody 133 +
scores): a 17-keypoint model fills the body slots, a 133-keypoint model all of them.
ViTPose+ (mixture-of-experts backbones) runs with ``dataset_index`` 0 (its COCO head).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dimo.pose.toy_detector import DetectorError

__all__ = ["ViTPoseDetector"]

_REQUIRED = ("config.json", "preprocessor_config.json")


class ViTPoseDetector:
    """uint8 frames ``(T, H, W, 3)`` -> COCO-WholeBody ``keypoints (T, 133, 2)``, ``scores (T, 133)``."""

    def __init__(self, model, processor, batch_size: int = 16) -> None:
        n = model.config.num_labels
        if n not in (17, 133):
            raise DetectorError(
                f"ViTPose with {n} keypoints: dimo maps COCO (17) or COCO-WholeBody (133) outputs"
            )
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> ViTPoseDetector:
        from transformers import VitPoseForPoseEstimation, VitPoseImageProcessorPil

        folder = Path(folder)
        if not folder.is_dir():
            raise DetectorError(
                f"{folder}: ViTPose folder not found (save_pretrained of VitPoseForPoseEstimation + its image processor)"
            )
        for name in _REQUIRED:
            if not (folder / name).is_file():
                raise DetectorError(f"{folder / name}: missing from the ViTPose folder")
        if not any(folder.glob("*.safetensors")):
            raise DetectorError(f"{folder}: no *.safetensors weights in the ViTPose folder")
        model = VitPoseForPoseEstimation.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        # the PIL processor: transformers' default one needs torchvision, which has no CPU build here
        processor = VitPoseImageProcessorPil.from_pretrained(folder, local_files_only=True)
        return cls(model.to(device), processor)

    def decode(self, heatmaps: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps ``(T, K, h, w)`` of whole-frame boxes -> frame pixels ``(T, K, 2)`` and scores ``(T, K)``."""

        from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

        boxes = [[[0.0, 0.0, float(width), float(height)]]] * heatmaps.shape[0]  # COCO (x, y, w, h)
        res = self.processor.post_process_pose_estimation(
            VitPoseEstimatorOutput(heatmaps=heatmaps), boxes=boxes
        )
        kp = np.stack([np.asarray(r[0]["keypoints"], np.float32) for r in res])
        sc = np.stack([np.asarray(r[0]["scores"], np.float32) for r in res])
        return kp, sc

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.shape}")
        T, H, W, _ = frames.shape
        n = self.model.config.num_labels
        kp_all, sc_all = np.zeros((T, n, 2), np.float32), np.zeros((T, n), np.float32)
        dev = next(self.model.parameters()).device
        moe = getattr(self.model.config.backbone_config, "num_experts", 1) > 1
        for i in range(0, T, self.batch_size):
            chunk = list(frames[i : i + self.batch_size])
            boxes = [[[0.0, 0.0, float(W), float(H)]]] * len(chunk)
            inputs = self.processor(images=chunk, boxes=boxes, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(dev, next(self.model.parameters()).dtype)
            extra = {"dataset_index": torch.zeros(len(chunk), dtype=torch.long, device=dev)} if moe else {}
            heat = self.model(pixel_values=pixel_values, **extra).heatmaps.float().cpu()
            kp, sc = self.decode(heat, H, W)
            kp_all[i : i + len(chunk)], sc_all[i : i + len(chunk)] = kp, sc
        sc_all = np.clip(np.nan_to_num(sc_all), 0.0, 1.0)
        if n == 133:
            return kp_all, sc_all
        kp133, sc133 = np.zeros((T, 133, 2), np.float32), np.zeros((T, 133), np.float32)
        kp133[:, :17], sc133[:, :17] = kp_all, sc_all
        return kp133, sc133
