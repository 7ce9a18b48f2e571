"""The SMPL-X joint tree, a neutral rest skeleton, and forward kinematics.

Conventions (``docs/contracts.md``): metres, right-handed, **y up**, the subject stands on y=0 at the
origin facing +z, so its left side is +x. The rest pose is SMPL's T-pose (arms along +-x, palms
down). Joint order is the standard SMPL-X order: 0-21 body (0 pelvis), 22 jaw, 23/24 left/right
eye, 25-39 left hand, 40-54 right hand (index, middle, pinky, ring, thumb; three joints each).

The rest joint positions are hand-made plausible adult proportions (about 1.72 m tall), not the
licensed SMPL-X template; load a real model with :mod:`dimo.geometry.body_models` for that.
Forward kinematics is :func:`smplx.lbs.batch_rigid_transform` with any leading batch dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from smplx.lbs import batch_rigid_transform

from dimo.geometry.rotations import axis_angle_to_matrix

__all__ = [
    "BODY_IDS",
    "BONES",
    "BONE_PARTS",
    "JOINT_NAMES",
    "JOINT_RADII",
    "LEFT_HAND_IDS",
    "NUM_BODY_JOINTS",
    "NUM_HAND_JOINTS",
    "NUM_JOINTS",
    "PARENTS",
    "PART_NAMES",
    "RIGHT_HAND_IDS",
    "bone_radii",
    "children",
    "descendants",
    "forward_kinematics",
    "pose_to_rotmats",
    "rest_joints",
]

_HAND = [f"{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb") for i in (1, 2, 3)]
JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "jaw", "left_eye", "right_eye",
    *(f"left_{n}" for n in _HAND), *(f"right_{n}" for n in _HAND),
)  # fmt: skip
NUM_JOINTS = 55
NUM_BODY_JOINTS = 21  # body pose = joints 1..21 (pelvis orientation is global_orient)
NUM_HAND_JOINTS = 15

# SMPL-X kinematic tree: parent of each joint (-1 for the pelvis).
PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)  # fmt: skip
BODY_IDS: tuple[int, ...] = tuple(range(22))
LEFT_HAND_IDS: tuple[int, ...] = tuple(range(25, 40))
RIGHT_HAND_IDS: tuple[int, ...] = tuple(range(40, 55))
# Every (parent, child) pair; the renderer places one ellipsoid per bone.
BONES: tuple[tuple[int, int], ...] = tuple((PARENTS[j], j) for j in range(1, NUM_JOINTS))

PART_NAMES: tuple[str, ...] = (
    "torso", "head", "left_upper_arm", "right_upper_arm", "left_forearm", "right_forearm",
    "left_hand", "right_hand", "left_thigh", "right_thigh", "left_shin", "right_shin",
    "left_foot", "right_foot",
)  # fmt: skip
_CHILD_PART = {
    15: 1,
    22: 1,
    23: 1,
    24: 1,
    18: 2,
    19: 3,
    20: 4,
    21: 5,
    4: 8,
    5: 9,
    7: 10,
    8: 11,
    10: 12,
    11: 13,
}
_CHILD_PART.update({j: 6 for j in LEFT_HAND_IDS})
_CHILD_PART.update({j: 7 for j in RIGHT_HAND_IDS})
# Body-part id (index into PART_NAMES) of each bone in BONES, keyed by the bone's child joint.
BONE_PARTS: tuple[int, ...] = tuple(_CHILD_PART.get(c, 0) for _, c in BONES)

# Left-side and midline rest positions (metres); right side mirrors x. Feet on y=0, facing +z.
_REST_LEFT: dict[str, tuple[float, float, float]] = {
    "pelvis": (0.0, 0.94, 0.0),
    "left_hip": (0.07, 0.86, -0.005),
    "spine1": (0.0, 1.05, -0.015),
    "left_knee": (0.10, 0.50, 0.005),
    "spine2": (0.0, 1.18, 0.0),
    "left_ankle": (0.09, 0.09, -0.03),
    "spine3": (0.0, 1.24, 0.01),
    "left_foot": (0.11, 0.02, 0.10),
    "neck": (0.0, 1.47, -0.02),
    "left_collar": (0.075, 1.38, -0.005),
    "head": (0.0, 1.56, 0.01),
    "left_shoulder": (0.18, 1.41, -0.02),
    "left_elbow": (0.44, 1.40, -0.03),
    "left_wrist": (0.69, 1.40, -0.03),
    "jaw": (0.0, 1.54, 0.04),
    "left_eye": (0.032, 1.64, 0.085),
}
# Finger joints as offsets from their parent (left hand; palm down, fingers along +x, thumb to +z).
_FINGER_OFFSETS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "index": ((0.095, 0.005, 0.025), (0.035, -0.002, 0.0), (0.025, -0.002, 0.0)),
    "middle": ((0.100, 0.006, 0.002), (0.038, -0.002, 0.0), (0.027, -0.002, 0.0)),
    "pinky": ((0.083, 0.000, -0.040), (0.025, -0.002, -0.003), (0.018, -0.002, -0.002)),
    "ring": ((0.092, 0.004, -0.020), (0.033, -0.002, -0.002), (0.025, -0.002, -0.001)),
    "thumb": ((0.030, -0.012, 0.028), (0.028, -0.005, 0.018), (0.022, -0.002, 0.012)),
}

# Per-joint limb radius (metres) for the bone-map renderer; anthropometric, e.g. 2.5 cm at the wrist.
_RADIUS_LEFT = {
    "pelvis": 0.09, "left_hip": 0.08, "spine1": 0.10, "left_knee": 0.055, "spine2": 0.10,
    "left_ankle": 0.04, "spine3": 0.10, "left_foot": 0.035, "neck": 0.05, "left_collar": 0.05,
    "head": 0.06, "left_shoulder": 0.05, "left_elbow": 0.04, "left_wrist": 0.025, "jaw": 0.04,
    "left_eye": 0.012,
}  # fmt: skip
_FINGER_RADII = {"thumb": (0.011, 0.010, 0.009)}


def _mirror_name(name: str) -> str:
    return name.replace("left_", "right_") if name.startswith("left_") else name


def _build_rest() -> torch.Tensor:
    pos: dict[str, tuple[float, float, float]] = {}
    for name, (x, y, z) in _REST_LEFT.items():
        pos[name] = (x, y, z)
        if name.startswith("left_"):
            pos[_mirror_name(name)] = (-x, y, z)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        for finger, offsets in _FINGER_OFFSETS.items():
            parent = pos[f"{side}_wrist"]
            for i, (dx, dy, dz) in enumerate(offsets, start=1):
                parent = (parent[0] + sign * dx, parent[1] + dy, parent[2] + dz)
                pos[f"{side}_{finger}{i}"] = parent
    return torch.tensor([pos[n] for n in JOINT_NAMES], dtype=torch.float32)


def _build_radii() -> torch.Tensor:
    radius: dict[str, float] = {}
    for name, r in _RADIUS_LEFT.items():
        radius[name] = radius[_mirror_name(name)] = r
    for side in ("left", "right"):
        for finger in _FINGER_OFFSETS:
            for i, r in enumerate(_FINGER_RADII.get(finger, (0.010, 0.009, 0.008)), start=1):
                radius[f"{side}_{finger}{i}"] = r
    return torch.tensor([radius[n] for n in JOINT_NAMES], dtype=torch.float32)


_REST = _build_rest()  # (55, 3)
JOINT_RADII: torch.Tensor = _build_radii()  # (55,) metres
_PARENTS_T = torch.tensor(PARENTS, dtype=torch.long)

# Joint groups whose parent offsets a proportion factor scales (keys of ``rest_joints(proportions=)``).
_PROPORTION_GROUPS: dict[str, tuple[int, ...]] = {
    "leg": (4, 5, 7, 8, 10, 11),
    "torso": (3, 6, 9, 12),
    "arm": (18, 19, 20, 21),
    "shoulder_width": (13, 14, 16, 17),
    "hip_width": (1, 2),
    "head": (15, 22, 23, 24),
    "hand": LEFT_HAND_IDS + RIGHT_HAND_IDS,
}


def children(joint: int) -> tuple[int, ...]:
    """Direct children of ``joint`` in the SMPL-X tree."""

    return tuple(j for j in range(NUM_JOINTS) if PARENTS[j] == joint)


def descendants(joint: int) -> tuple[int, ...]:
    """All joints below ``joint`` (excluding itself)."""

    out: list[int] = []
    stack = list(children(joint))
    while stack:
        j = stack.pop()
        out.append(j)
        stack.extend(children(j))
    return tuple(sorted(out))


def rest_joints(
    scale: float | torch.Tensor = 1.0, proportions: Mapping[str, float] | None = None
) -> torch.Tensor:
    """Neutral T-pose joints (55, 3), or (..., 55, 3) for a tensor ``scale`` of shape (...,).

    ``scale`` multiplies every bone (overall height); ``proportions`` multiplies the bones of named
    groups (``leg``, ``torso``, ``arm``, ``shoulder_width``, ``hip_width``, ``head``, ``hand``) for
    per-identity variation. The skeleton is re-stood so the lowest foot joint stays at its rest height.
    """

    offsets = _REST - _REST[_PARENTS_T.clamp_min(0)]  # (55, 3), row 0 unused
    factor = torch.ones(NUM_JOINTS)
    for key, value in (proportions or {}).items():
        if key not in _PROPORTION_GROUPS:
            raise KeyError(f"unknown proportion {key!r}; expected one of {sorted(_PROPORTION_GROUPS)}")
        if value <= 0:
            raise ValueError(f"proportion {key!r} must be positive, got {value}")
        factor[list(_PROPORTION_GROUPS[key])] *= value
    scale_t = torch.as_tensor(scale, dtype=torch.float32)
    offsets = offsets * factor[:, None] * scale_t[..., None, None]  # (..., 55, 3)
    joints = [offsets.new_zeros(offsets.shape[:-2] + (3,))]
    for j in range(1, NUM_JOINTS):
        joints.append(joints[PARENTS[j]] + offsets[..., j, :])
    out = torch.stack(joints, dim=-2)  # (..., 55, 3)
    foot_y = _REST[[10, 11], 1].min()
    lift = foot_y - out[..., [10, 11], 1].amin(dim=-1)  # (...,)
    out = out + torch.stack([torch.zeros_like(lift), lift, torch.zeros_like(lift)], dim=-1)[..., None, :]
    return out


def bone_radii(joint_radii: torch.Tensor | None = None) -> torch.Tensor:
    """Per-bone minor radius (len(BONES),) = mean of the bone's two joint radii (metres)."""

    r = JOINT_RADII if joint_radii is None else joint_radii
    idx = torch.tensor(BONES, dtype=torch.long, device=r.device)
    return 0.5 * (r[..., idx[:, 0]] + r[..., idx[:, 1]])


def pose_to_rotmats(
    global_orient: torch.Tensor,
    body_pose: torch.Tensor,
    hand_pose: torch.Tensor | None = None,
    jaw_pose: torch.Tensor | None = None,
    eye_pose: torch.Tensor | None = None,
) -> torch.Tensor:
    """SMPL-X axis-angle parameters -> per-joint rotation matrices (..., 55, 3, 3).

    global_orient (..., 3); body_pose (..., 21, 3) or (..., 63); hand_pose (..., 30, 3) or (..., 90),
    left 15 then right 15; jaw_pose (..., 3); eye_pose (..., 2, 3) left then right. Missing parts
    are the identity (rest pose).
    """

    lead = global_orient.shape[:-1]
    z = global_orient.new_zeros

    def _parts(x: torch.Tensor | None, n: int, name: str) -> torch.Tensor:
        if x is None:
            return z((*lead, n, 3))
        if x.shape[-1] == 3 * n and (x.dim() == len(lead) + 1):
            x = x.reshape(*x.shape[:-1], n, 3)
        if x.shape[-2:] != (n, 3):
            raise ValueError(f"{name} must have shape (..., {n}, 3) or (..., {3 * n}), got {tuple(x.shape)}")
        return x

    aa = torch.cat(
        [
            global_orient[..., None, :],
            _parts(body_pose, NUM_BODY_JOINTS, "body_pose"),
            _parts(None if jaw_pose is None else jaw_pose[..., None, :], 1, "jaw_pose"),
            _parts(eye_pose, 2, "eye_pose"),
            _parts(hand_pose, 2 * NUM_HAND_JOINTS, "hand_pose"),
        ],
        dim=-2,
    )  # (..., 55, 3)
    return axis_angle_to_matrix(aa)


def forward_kinematics(
    rotmats: torch.Tensor,
    rest: torch.Tensor | None = None,
    transl: torch.Tensor | None = None,
    return_transforms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pose the skeleton: rotmats (..., 55, 3, 3) local rotations -> world joints (..., 55, 3).

    ``rest`` is (55, 3) or (..., 55, 3) (default :func:`rest_joints`); ``transl`` (..., 3) is added
    to every joint (SMPL-X convention: the root rotates about the rest pelvis). With
    ``return_transforms`` also returns the global joint rotations (..., 55, 3, 3). Differentiable.
    """

    if rotmats.shape[-3:] != (NUM_JOINTS, 3, 3):
        raise ValueError(f"rotmats must have shape (..., {NUM_JOINTS}, 3, 3), got {tuple(rotmats.shape)}")
    if rest is None:
        rest = _REST.to(rotmats)
    lead = torch.broadcast_shapes(rotmats.shape[:-3], rest.shape[:-2])
    rot = rotmats.expand(*lead, NUM_JOINTS, 3, 3).reshape(-1, NUM_JOINTS, 3, 3)
    rst = rest.to(rotmats).expand(*lead, NUM_JOINTS, 3).reshape(-1, NUM_JOINTS, 3)
    posed, rel = batch_rigid_transform(rot, rst, _PARENTS_T.to(rot.device), dtype=rot.dtype)
    joints = posed.reshape(*lead, NUM_JOINTS, 3)  # (..., 55, 3)
    if transl is not None:
        joints = joints + transl[..., None, :]
    if return_transforms:
        return joints, rel[..., :3, :3].reshape(*lead, NUM_JOINTS, 3, 3)
    return joints
