"""Joint correspondences between dimo's SMPL-X skeleton and the COCO-WholeBody 133 keypoint order.

dimo stores 2D keypoints in one format (:mod:`dimo.data.keypoints`: COCO-WholeBody 133 + scores).
Detectors and lifters work on the subset that has an SMPL-X joint: body (eyes, shoulders, elbows,
wrists, hips, knees, ankles), one toe per foot and the 15 finger joints per hand. The COCO-WholeBody
nose, ears, small toes, heels, face and fingertips have no SMPL-X joint and stay at score 0 when a
skeleton is written out. The COCO hips sit lower and wider than SMPL-X's hip joints; on the toy
skeleton they are the same point by construction, on real data this is a known offset.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "SMPLX_TO_WHOLEBODY",
    "TOY_JOINTS",
    "TOY_BODY",
    "TOY_HANDS",
    "smplx_to_wholebody",
    "wholebody_to_smplx",
]

# COCO-WholeBody hand layout (21 per hand): 0 wrist, thumb 1-4, index 5-8, middle 9-12, ring 13-16,
# pinky 17-20 (root to tip). SMPL-X hands: index, middle, pinky, ring, thumb, 3 joints each (root first).
_COCO_FINGER_BASE = {"index": 5, "middle": 9, "pinky": 17, "ring": 13, "thumb": 1}
_SMPLX_FINGERS = ("index", "middle", "pinky", "ring", "thumb")


def _pairs() -> list[tuple[int, int]]:
    """(SMPL-X joint, COCO-WholeBody index) pairs, body first."""

    body = [
        (23, 1), (24, 2),  # eyes
        (16, 5), (17, 6), (18, 7), (19, 8), (20, 9), (21, 10),  # shoulders, elbows, wrists
        (1, 11), (2, 12), (4, 13), (5, 14), (7, 15), (8, 16),  # hips, knees, ankles
        (10, 17), (11, 20),  # feet: SMPL-X foot joint <-> big toe
    ]  # fmt: skip
    hands = []
    for smplx_base, coco_base in ((25, 91), (40, 112)):
        for f, finger in enumerate(_SMPLX_FINGERS):
            for s in range(3):
                hands.append((smplx_base + 3 * f + s, coco_base + _COCO_FINGER_BASE[finger] + s))
    return body + hands


SMPLX_TO_WHOLEBODY: tuple[tuple[int, int], ...] = tuple(_pairs())
# wrists appear twice in COCO-WholeBody: body slots 9/10 and the hands' root slots 91/112
_WRIST_HAND_SLOTS = ((20, 91), (21, 112))
TOY_JOINTS: tuple[int, ...] = tuple(
    s for s, _ in SMPLX_TO_WHOLEBODY
)  # the detector's 46 channels (SMPL-X ids)
TOY_BODY: tuple[int, ...] = tuple(range(16))  # channel indices of body joints (incl. wrists)
TOY_HANDS: tuple[int, ...] = tuple(range(16, 46))  # channel indices of finger joints
TOY_BODY_SMPLX: tuple[int, ...] = tuple(TOY_JOINTS[c] for c in TOY_BODY)  # SMPL-X ids of the body channels


def smplx_to_wholebody(
    uv: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """``uv (T, 55, 2)`` and ``scores (T, 55)`` on SMPL-X joints -> ``(T, 133, 2)``, ``(T, 133)`` float32."""

    uv, scores = np.asarray(uv, np.float32), np.asarray(scores, np.float32)
    if uv.ndim != 3 or uv.shape[1:] != (55, 2) or scores.shape != uv.shape[:2]:
        raise ValueError(f"expected uv (T, 55, 2) and scores (T, 55), got {uv.shape} and {scores.shape}")
    T = uv.shape[0]
    kp, sc = np.zeros((T, 133, 2), np.float32), np.zeros((T, 133), np.float32)
    for s, c in SMPLX_TO_WHOLEBODY + _WRIST_HAND_SLOTS:
        kp[:, c], sc[:, c] = uv[:, s], scores[:, s]
    return kp, sc


def wholebody_to_smplx(
    keypoints: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, threshold: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(..., 133, 2)`` + ``(..., 133)`` -> SMPL-X ``uv (..., 55, 2)``, ``scores (..., 55)``, ``valid (..., 55)``.

    A joint is valid where its score is positive and at least ``threshold``; joints without a COCO-WholeBody slot
    (pelvis, spine, neck, collars, head, jaw) are never valid. The wrist takes the better of its two slots.
    """

    kp = torch.as_tensor(np.asarray(keypoints), dtype=torch.float32)
    sc = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    if kp.shape[-2:] != (133, 2) or sc.shape != kp.shape[:-1]:
        raise ValueError(
            f"expected keypoints (..., 133, 2) and scores (..., 133), got {tuple(kp.shape)} and {tuple(sc.shape)}"
        )
    uv = kp.new_zeros((*kp.shape[:-2], 55, 2))
    out = sc.new_zeros((*sc.shape[:-1], 55))
    s_idx = torch.tensor([s for s, _ in SMPLX_TO_WHOLEBODY])
    c_idx = torch.tensor([c for _, c in SMPLX_TO_WHOLEBODY])
    uv[..., s_idx, :], out[..., s_idx] = kp[..., c_idx, :], sc[..., c_idx]
    for s, c in _WRIST_HAND_SLOTS:
        better = sc[..., c] > out[..., s]
        uv[..., s, :] = torch.where(better[..., None], kp[..., c, :], uv[..., s, :])
        out[..., s] = torch.maximum(out[..., s], sc[..., c])
    return uv, out, (out >= threshold) & (out > 0)
