"""Load user-supplied SMPL-X / MANO (/ SMPL-H / SMPL) body models through :func:`smplx.create`.

The model files are licensed and cannot be shipped or downloaded, so dimo expects the user to
place them in a model directory laid out as smplx expects::

    MODEL_DIR/smplx/SMPLX_NEUTRAL.npz     (or SMPLX_MALE / SMPLX_FEMALE, .npz or .pkl)
    MODEL_DIR/mano/MANO_RIGHT.pkl, MANO_LEFT.pkl
    MODEL_DIR/smplh/SMPLH_NEUTRAL.pkl, MODEL_DIR/smpl/SMPL_NEUTRAL.pkl

``MODEL_DIR`` may also be the per-type folder itself or the file. A missing file raises
:class:`BodyModelNotFoundError` and a file smplx cannot use (unreadable, or lacking arrays smplx
reads) raises :class:`BodyModelFormatError`; both are :class:`FileNotFoundError` subclasses whose
message names the expected path. smplx itself only ``assert``s on missing paths and raises bare
``AttributeError`` on missing arrays, hence the checks here.

Safety: smplx reads ``.npz`` with ``allow_pickle=True`` and ``.pkl`` with ``pickle.load``, either of
which runs code from a crafted file. dimo reads the file itself first (:func:`read_model_arrays`:
``allow_pickle=False`` for ``.npz``; a restricted unpickler for ``.pkl`` that allows numpy arrays,
scipy sparse matrices and chumpy arrays, the latter mapped to numpy without importing chumpy) and
hands smplx only those plain arrays (``data_struct`` for SMPL/SMPL-H/MANO, a private clean ``.npz``
copy for SMPL-X). A file that references any other class is refused with one clear line.
"""

from __future__ import annotations

import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dimo.safe_io import UnsafeFileError, restricted_pickle_load

__all__ = [
    "REQUIRED_KEYS",
    "BodyModelFileError",
    "BodyModelFormatError",
    "BodyModelNotFoundError",
    "expected_model_path",
    "load_body_model",
    "model_rest_joints",
    "read_model_arrays",
]

ModelType = Literal["smplx", "smplh", "smpl", "mano"]

_COMMON = ("v_template", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights", "f")
# Arrays smplx reads from each kind of model file (smplx 0.1.28, body_models.py).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "smpl": _COMMON,
    "smplh": (*_COMMON, "hands_componentsl", "hands_componentsr", "hands_meanl", "hands_meanr"),
    "smplx": (
        *_COMMON,
        "hands_componentsl",
        "hands_componentsr",
        "hands_meanl",
        "hands_meanr",
        "lmk_faces_idx",
        "lmk_bary_coords",
    ),
    "mano": (*_COMMON, "hands_components", "hands_mean"),
}
_DEFAULT_EXT = {"smplx": "npz", "smplh": "pkl", "smpl": "pkl", "mano": "pkl"}
# smplx hard-codes vertex ids (e.g. SMPL-X feet/finger tips up to 9929, MANO tips up to 745).
_MIN_VERTICES = {"smplx": 9930, "smplh": 6890, "smpl": 6890, "mano": 778}


class BodyModelFileError(FileNotFoundError):
    """A body-model file is missing or unusable; the message names the expected path."""


class BodyModelNotFoundError(BodyModelFileError):
    """The body-model file does not exist where it is expected."""


class BodyModelFormatError(BodyModelFileError):
    """The body-model file exists but smplx cannot use it."""


def _file_name(model_type: str, gender: str, ext: str, is_rhand: bool) -> str:
    if model_type == "mano":
        return f"MANO_{'RIGHT' if is_rhand else 'LEFT'}.{ext}"
    return f"{model_type.upper()}_{gender.upper()}.{ext}"


def expected_model_path(
    model_dir: str | Path,
    model_type: ModelType = "smplx",
    gender: str = "neutral",
    ext: str | None = None,
    is_rhand: bool = True,
) -> Path:
    """Where the model file is looked for: ``model_dir`` itself if a file, else
    ``model_dir/<type>/<FILE>`` or ``model_dir/<FILE>`` (the first that exists; the former if neither)."""

    if model_type not in REQUIRED_KEYS:
        raise ValueError(f"unknown body model type {model_type!r}; expected one of {sorted(REQUIRED_KEYS)}")
    if model_type == "smpl":
        ext = "pkl"  # smplx reads SMPL from pickles only
    ext = ext or _DEFAULT_EXT[model_type]
    root = Path(model_dir).expanduser()
    if root.is_file():
        return root
    name = _file_name(model_type, gender, ext, is_rhand)
    for candidate in (root / model_type / name, root / name):
        if candidate.is_file():
            return candidate
    return root / model_type / name


def _shape(x: Any) -> tuple[int, ...]:
    # scipy sparse matrices and chumpy arrays (found in original pickles) carry .shape too
    shape = getattr(x, "shape", None)
    return tuple(int(n) for n in (shape if shape is not None else np.shape(x)))


def read_model_arrays(path: str | Path) -> dict[str, Any]:
    """The arrays of a body-model file, read without running code from it.

    ``.npz``: ``np.load(allow_pickle=False)``; object members (official SMPL-X files carry small
    pickled dicts such as ``joint2num``) are left out unless smplx needs them. ``.pkl``: through
    :func:`dimo.safe_io.restricted_pickle_load` (numpy arrays, scipy sparse matrices, chumpy arrays
    mapped to numpy; any other class is refused with :class:`~dimo.safe_io.UnsafeFileError`).
    """

    path = Path(path)
    if path.suffix == ".npz":
        out: dict[str, Any] = {}
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                try:
                    out[key] = data[key]
                except ValueError:  # an object array: needs pickle, never loaded
                    continue
        return out
    data = restricted_pickle_load(path)
    if not isinstance(data, dict):
        raise TypeError(f"expected a pickled dict, got {type(data).__name__}")
    return dict(data)


def _read_summary(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The file's arrays and the shapes of the small arrays that must agree with each other."""

    small = ("v_template", "kintree_table", "J_regressor", "weights")
    data = read_model_arrays(path)
    return data, {k: _shape(data[k]) for k in small if k in data}


def _check_file(path: Path, model_type: str) -> dict[str, Any]:
    try:
        keys, shapes = _read_summary(path)
    except UnsafeFileError as err:
        raise BodyModelFormatError(str(err)) from err
    except (OSError, ValueError, TypeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise BodyModelFormatError(f"cannot read body model file {path}: {err}") from err
    except Exception as err:  # noqa: BLE001 - a corrupt pickle can raise nearly anything while loading
        raise BodyModelFormatError(
            f"cannot read body model file {path}: {type(err).__name__}: {err}"
        ) from err
    missing = [k for k in REQUIRED_KEYS[model_type] if k not in keys]
    if missing:
        raise BodyModelFormatError(
            f"body model file {path} lacks arrays {missing} that smplx needs for {model_type}"
        )
    n_vert = shapes["v_template"][0] if shapes["v_template"] else 0
    if n_vert < _MIN_VERTICES[model_type]:
        raise BodyModelFormatError(
            f"body model file {path} has {n_vert} vertices; a {model_type} model has at least {_MIN_VERTICES[model_type]}"
        )
    n_joints = shapes["kintree_table"][-1] if len(shapes["kintree_table"]) == 2 else -1
    expected = {"v_template": (n_vert, 3), "kintree_table": (2, n_joints), "J_regressor": (n_joints, n_vert)}
    expected["weights"] = (n_vert, n_joints)
    wrong = {k: shapes[k] for k, v in expected.items() if shapes[k] != v}
    if n_joints < 1 or wrong:
        raise BodyModelFormatError(
            f"body model file {path} has inconsistent array shapes {wrong or shapes} "
            f"(expected {expected} for {n_vert} vertices and {n_joints} joints)"
        )
    return keys


def load_body_model(
    model_dir: str | Path,
    model_type: ModelType = "smplx",
    *,
    gender: str = "neutral",
    ext: str | None = None,
    is_rhand: bool = True,
    **kwargs: Any,
) -> torch.nn.Module:
    """``smplx.create`` for a user-supplied model; clear errors when the file is missing or malformed.

    Extra keyword arguments go to smplx (e.g. ``use_pca=False``, ``num_betas=10``, ``batch_size``).
    """

    import smplx

    path = expected_model_path(model_dir, model_type, gender, ext, is_rhand)
    if not path.is_file():
        raise BodyModelNotFoundError(
            f"{model_type.upper()} model file not found: expected {path} (also looked for "
            f"{Path(model_dir) / path.name}). The files are licensed: download them from the model's "
            "website and place them there."
        )
    arrays = _check_file(path, model_type)
    if model_type == "mano":
        kwargs.setdefault("is_rhand", is_rhand)
    try:
        if model_type == "smplx":
            # smplx.SMPLX always reads its file itself (np.load(allow_pickle=True) / pickle.load): give it
            # a private copy holding only the plain arrays read safely above.
            with tempfile.TemporaryDirectory(prefix="dimo-smplx-") as tmp:
                clean = Path(tmp) / f"SMPLX_{gender.upper()}.npz"
                dense = {k: _dense(v) for k, v in arrays.items()}
                np.savez(clean, **{k: v for k, v in dense.items() if v.dtype != object})
                return smplx.create(str(clean), model_type="smplx", gender=gender, ext="npz", **kwargs)
        from smplx.utils import Struct

        # SMPL / SMPL-H / MANO take the arrays directly (no second read of the user's file)
        return smplx.create(
            str(path),
            model_type=model_type,
            gender=gender,
            ext=path.suffix[1:],
            data_struct=Struct(**arrays),
            **kwargs,
        )
    except (AssertionError, AttributeError, KeyError, IndexError, ValueError, RuntimeError) as err:
        raise BodyModelFormatError(
            f"smplx could not build a {model_type} model from {path}: {err!r}"
        ) from err


def _dense(value: Any) -> np.ndarray:
    return np.asarray(value.todense()) if hasattr(value, "todense") else np.asarray(value)


def model_rest_joints(
    model: torch.nn.Module, betas: torch.Tensor | None = None, num_joints: int = 55
) -> torch.Tensor:
    """Rest-pose joints of a loaded model, (num_joints, 3) or (B, num_joints, 3) for betas (B, S).

    ``J_regressor @ (v_template + shapedirs @ betas)``: feed it to
    :func:`dimo.geometry.skeleton.forward_kinematics` as ``rest`` (for SMPL-X its first 55 joints
    are the dimo joint order). Note the model's own frame: SMPL-X has the pelvis near the origin,
    not the feet on y=0; ``transl`` places it in the world.
    """

    v = model.v_template  # (V, 3)
    if betas is not None:
        S = betas.shape[-1]
        v = v + torch.einsum("...s,vcs->...vc", betas.to(v), model.shapedirs[..., :S])  # (..., V, 3)
    joints = torch.einsum("jv,...vc->...jc", model.J_regressor.to(v), v)  # (..., J, 3)
    return joints[..., :num_joints, :]
