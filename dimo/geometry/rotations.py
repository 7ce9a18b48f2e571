"""Rotation conversions: axis-angle <-> matrix <-> 6D, batched over any leading dimensions.

Axis-angle <-> matrix goes through kornia (closed-form Rodrigues with a Taylor branch near the
identity, so gradients are finite at zero rotation). The 6D representation (Zhou et al., CVPR 2019)
is small enough to write here; its layout follows ``docs/contracts.md``: the first two matrix columns
flattened as ``[r00, r10, r20, r01, r11, r21]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle

__all__ = ["axis_angle_to_matrix", "matrix_to_axis_angle", "matrix_to_rot6d", "rot6d_to_matrix"]


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) in radians -> rotation matrices (..., 3, 3)."""

    if axis_angle.shape[-1] != 3:
        raise ValueError(f"axis-angle must have shape (..., 3), got {tuple(axis_angle.shape)}")
    if axis_angle.numel() == 0:
        return axis_angle.new_zeros((*axis_angle.shape, 3))
    return axis_angle_to_rotation_matrix(axis_angle)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3) with angle in [0, pi]."""

    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (..., 3, 3), got {tuple(matrix.shape)}")
    if matrix.numel() == 0:
        return matrix.new_zeros(matrix.shape[:-1])
    aa = rotation_matrix_to_axis_angle(matrix)
    # kornia does not canonicalise the quaternion sign, so angles in (pi, 2pi) can come back;
    # map theta*axis to (theta - 2pi)*axis, the same rotation with angle in [0, pi].
    theta = aa.norm(dim=-1, keepdim=True)
    over = theta > torch.pi
    scale = torch.where(over, (theta - 2 * torch.pi) / theta.clamp_min(1e-12), torch.ones_like(theta))
    return aa * scale


def matrix_to_rot6d(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> 6D (..., 6) = first two columns, column-major."""

    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (..., 3, 3), got {tuple(matrix.shape)}")
    # (..., 3, 2) -> (..., 2, 3) -> (..., 6): [r00, r10, r20, r01, r11, r21]
    return matrix[..., :, :2].transpose(-1, -2).reshape(*matrix.shape[:-2], 6)


def rot6d_to_matrix(rot6d: torch.Tensor) -> torch.Tensor:
    """6D (..., 6) -> rotation matrices (..., 3, 3) by Gram-Schmidt (always orthonormal, det +1)."""

    if rot6d.shape[-1] != 6:
        raise ValueError(f"6D rotations must have shape (..., 6), got {tuple(rot6d.shape)}")
    a1, a2 = rot6d[..., :3], rot6d[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # columns -> (..., 3, 3)
