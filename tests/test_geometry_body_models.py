"""Body-model loading through smplx with synthetic model files built on the fly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dimo.geometry import body_models as bm
from dimo.geometry import skeleton as sk


def _synthetic_arrays(
    num_verts: int, joints: np.ndarray, parents: list[int], num_betas: int, seed: int = 0
) -> dict:
    """A structurally valid body model: joint j is regressed from vertex j, placed at joints[j]."""
    rng = np.random.default_rng(seed)
    J = len(parents)
    v = rng.normal(scale=0.2, size=(num_verts, 3)) + joints.mean(0)
    v[:J] = joints
    reg = np.zeros((J, num_verts))
    reg[np.arange(J), np.arange(J)] = 1.0
    weights = np.zeros((num_verts, J))
    weights[np.arange(num_verts), rng.integers(0, J, num_verts)] = 1.0
    faces = rng.integers(0, num_verts, size=(200, 3))
    return {
        "v_template": v,
        "shapedirs": rng.normal(scale=0.01, size=(num_verts, 3, num_betas)),
        "posedirs": np.zeros((num_verts, 3, (J - 1) * 9), dtype=np.float32),  # zeros compress to nothing
        "J_regressor": reg,
        "kintree_table": np.stack([np.array(parents), np.arange(J)]),
        "weights": weights,
        "f": faces,
    }


def write_smplx(root: Path, gender: str = "NEUTRAL") -> Path:
    arrays = _synthetic_arrays(9930, sk.rest_joints().numpy().astype(np.float64), list(sk.PARENTS), 20)
    arrays.update(
        hands_componentsl=np.eye(45), hands_componentsr=np.eye(45), hands_meanl=np.zeros(45), hands_meanr=np.zeros(45),
        lmk_faces_idx=np.arange(51), lmk_bary_coords=np.full((51, 3), 1 / 3),
    )  # fmt: skip
    path = root / "smplx" / f"SMPLX_{gender}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def write_mano(root: Path) -> Path:
    parents = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    joints = np.random.default_rng(1).normal(scale=0.05, size=(16, 3))
    arrays = _synthetic_arrays(778, joints, parents, 10)
    arrays.update(hands_components=np.eye(45), hands_mean=np.zeros(45))
    path = root / "mano" / "MANO_RIGHT.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(arrays))
    return path


def test_smplx_loads_and_our_fk_matches_smplx(tmp_path, rng):
    write_smplx(tmp_path)
    model = bm.load_body_model(
        tmp_path, "smplx", use_pca=False, flat_hand_mean=True, num_betas=10, batch_size=2
    )
    assert model.v_template.shape == (9930, 3)
    go = torch.randn(2, 3, generator=rng) * 0.5
    body = torch.randn(2, 21, 3, generator=rng) * 0.4
    hands = torch.randn(2, 30, 3, generator=rng) * 0.3
    jaw = torch.randn(2, 3, generator=rng) * 0.2
    betas = torch.randn(2, 10, generator=rng)
    transl = torch.randn(2, 3, generator=rng)
    out = model(
        global_orient=go, body_pose=body.reshape(2, 63), left_hand_pose=hands[:, :15].reshape(2, 45),
        right_hand_pose=hands[:, 15:].reshape(2, 45), jaw_pose=jaw, betas=betas, transl=transl,
    )  # fmt: skip
    rest = bm.model_rest_joints(model, betas)
    assert rest.shape == (2, 55, 3)
    ours = sk.forward_kinematics(sk.pose_to_rotmats(go, body, hands, jaw_pose=jaw), rest, transl)
    torch.testing.assert_close(ours, out.joints[:, :55], atol=1e-5, rtol=0)
    # without betas the model's rest joints are the regressed template joints (= dimo's rest skeleton here)
    torch.testing.assert_close(bm.model_rest_joints(model), sk.rest_joints(), atol=1e-6, rtol=0)


def test_mano_loads(tmp_path):
    write_mano(tmp_path)
    model = bm.load_body_model(tmp_path, "mano", use_pca=False)
    out = model(hand_pose=torch.zeros(1, 45), global_orient=torch.zeros(1, 3), betas=torch.zeros(1, 10))
    assert out.vertices.shape == (1, 778, 3)
    # the per-type folder or the file itself work as model_dir too
    bm.load_body_model(tmp_path / "mano", "mano", use_pca=False)
    bm.load_body_model(tmp_path / "mano" / "MANO_RIGHT.pkl", "mano", use_pca=False)


def test_missing_file_raises_named_error(tmp_path):
    with pytest.raises(bm.BodyModelNotFoundError) as info:
        bm.load_body_model(tmp_path, "smplx", gender="female")
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "smplx" / "SMPLX_FEMALE.npz") in str(info.value)
    with pytest.raises(FileNotFoundError, match="MANO_LEFT.pkl"):
        bm.load_body_model(tmp_path, "mano", is_rhand=False)


def test_malformed_files_raise_named_error(tmp_path):
    path = tmp_path / "smplx" / "SMPLX_NEUTRAL.npz"
    path.parent.mkdir()
    tiny = {k: np.zeros((4, 3)) for k in bm.REQUIRED_KEYS["smplx"] if k != "lmk_faces_idx"}
    np.savez(path, **tiny)
    with pytest.raises(bm.BodyModelFormatError, match="lmk_faces_idx") as info:
        bm.load_body_model(tmp_path, "smplx")
    assert str(path) in str(info.value) and isinstance(info.value, FileNotFoundError)
    np.savez(path, lmk_faces_idx=np.zeros(3), **tiny)
    with pytest.raises(bm.BodyModelFormatError, match="9930"):
        bm.load_body_model(tmp_path, "smplx")
    path.write_bytes(b"not a model")
    with pytest.raises(bm.BodyModelFormatError, match="cannot read"):
        bm.load_body_model(tmp_path, "smplx")
    # arrays whose shapes disagree (smplx itself would only fail at the first forward pass)
    bad = write_mano(tmp_path)
    data = pickle.loads(bad.read_bytes())
    data["kintree_table"] = np.zeros((2, 3), dtype=np.int64)
    bad.write_bytes(pickle.dumps(data))
    with pytest.raises(bm.BodyModelFormatError, match="inconsistent array shapes"):
        bm.load_body_model(tmp_path, "mano", use_pca=False)
