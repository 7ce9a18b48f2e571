"""Safe reading of untrusted files and crash-safe, umask-respecting writing of outputs.

Reading (no file can run code):

* :func:`load_torch` — ``torch.load(weights_only=True)`` with an explicit allow-list
  (:data:`CHECKPOINT_SAFE_GLOBALS`) of the few non-tensor globals dimo checkpoints hold. Anything
  else (e.g. an ``os.system`` reduce) is refused with :class:`UnsafeFileError`, one line naming the
  file and the global; nothing is executed.
* :func:`restricted_pickle_load` — for the licensed SMPL/SMPL-H/MANO ``.pkl`` files only: a
  :class:`pickle.Unpickler` whose ``find_class`` allows numpy arrays/dtypes/scalars, scipy sparse
  CSC/CSR matrices and chumpy ``Ch`` arrays, which are *mapped* to an inert stand-in holding the
  numpy value (chumpy itself is never imported). Every other global is refused.

Writing (a crash never leaves a half-written file and never destroys a pre-existing one):

* :func:`atomic_path` — a context manager yielding a temporary path in the target's folder; on
  success it is fsynced, given umask permissions and ``os.replace``-d onto the target; on failure
  it is removed and the target is untouched.
* :func:`atomic_write_bytes` / :func:`atomic_write_text` on top of it; :func:`atomic_dir` for folders.
* :func:`check_new_output` — an existing output needs ``overwrite=True``; a parent that is a file or
  read-only is a clear :class:`OutputError` *before* any work is done.

``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries; :func:`umask_mode` gives the mode a plain
``open``/``mkdir`` would have had, so outputs are readable by whoever the user's umask allows.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_SAFE_GLOBALS",
    "OutputError",
    "UnsafeFileError",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_new_output",
    "load_torch",
    "restricted_pickle_load",
    "umask_mode",
]


class UnsafeFileError(ValueError):
    """A file holds (or would need) something other than plain data; it was not loaded."""


class OutputError(OSError):
    """An output cannot be written where asked (exists without --overwrite, read-only, under a file)."""


# ---- permissions ---------------------------------------------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file/folder under the current umask."""

    return (0o777 if directory else 0o666) & ~_current_umask()


# ---- checkpoints ---------------------------------------------------------------------------------
# Globals dimo checkpoints may hold besides what torch's weights_only unpickler allows by default
# (tensors, dtypes, plain containers, OrderedDict). Lightning stores hyperparameters as plain dicts and
# dimo keeps datamodule/callback state to plain types, so nothing else is needed today (a real `fit`
# checkpoint is loaded in tests/test_bad_inputs.py). Add a type here, and only here, if that changes.
CHECKPOINT_SAFE_GLOBALS: list[Any] = []


def _unpickler_reason(err: BaseException) -> str:
    """The one informative sentence of torch's multi-paragraph weights_only error."""

    text = " ".join(str(err).split())
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif "trusted source." in text:
        text = text.split("trusted source.", 1)[1]
    for stop in (" Please use", " Check the documentation", " Please file an issue"):
        text = text.split(stop, 1)[0]
    return text.strip()[:200]


def load_torch(
    path: str | os.PathLike, *, what: str = "checkpoint", mmap: bool = False, map_location: str = "cpu"
) -> Any:
    """``torch.load`` with ``weights_only=True`` and :data:`CHECKPOINT_SAFE_GLOBALS` only.

    Raises :class:`UnsafeFileError` (one line, naming the file and the refused global) when the
    file needs anything else, :class:`ValueError` when it is not a torch file at all.
    """

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # garbage, not a pickle that asks for code
            raise ValueError(
                f"cannot read {what} {path}: not a torch file ({_unpickler_reason(err)})"
            ) from err
        raise UnsafeFileError(
            f"refused to load {what} {path}: it needs code outside the allow-list ({_unpickler_reason(err)}); "
            "only tensors and plain data are loaded"
        ) from err
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read {what} {path}: {msg[:200]}") from err


# ---- body-model pickles --------------------------------------------------------------------------
class ChumpyArray:
    """Inert stand-in for ``chumpy.ch.Ch`` in SMPL/MANO pickles: keeps the array value (``x``) only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.x = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.x = state.get("x", state.get("_x"))
        elif isinstance(state, tuple) and state and isinstance(state[-1], dict):
            self.x = state[-1].get("x")

    def to_numpy(self):
        import numpy as np

        return np.asarray(self.x)


def _allowed_classes() -> dict[tuple[str, str], Any]:
    import codecs
    import copyreg

    import numpy as np

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("builtins", "object"): object,
        ("builtins", "set"): set,  # chumpy's bookkeeping (_dirty_vars)
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles of bytes (array buffers) from Python 3
    }
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray.multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.multiarray.scalar
        allowed[(mod.replace("multiarray", "numeric"), "_frombuffer")] = multiarray.numeric._frombuffer
    for name in ("float64", "float32", "int64", "int32", "uint32", "uint8", "bool_"):
        allowed[("numpy", name)] = getattr(np, name)
    with contextlib.suppress(ImportError):
        import scipy.sparse as sp

        for mod in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr"):
            kind = "csc_matrix" if "csc" in mod else "csr_matrix"
            allowed[(mod, kind)] = getattr(sp, kind)
    allowed[("chumpy.ch", "Ch")] = ChumpyArray
    return allowed


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the classes official SMPL/SMPL-H/MANO pickles use."""

    def __init__(self, file, source: str = "file", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = _allowed_classes()
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)  # Python 2 pickles (the original SMPL/MANO files)
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise UnsafeFileError(
            f"refused to unpickle {self._source}: it references {module}.{name}, which is not an array type "
            "a body-model file needs (allowed: numpy arrays, scipy sparse matrices, chumpy arrays)"
        )


def restricted_pickle_load(path: str | os.PathLike, encoding: str = "latin1") -> Any:
    """Unpickle a body-model ``.pkl`` with :class:`RestrictedUnpickler`; chumpy values become numpy."""

    path = Path(path)
    with open(path, "rb") as fh:
        data = RestrictedUnpickler(fh, source=str(path), encoding=encoding).load()
    if isinstance(data, dict):
        data = {k: v.to_numpy() if isinstance(v, ChumpyArray) else v for k, v in data.items()}
    return data


# ---- outputs -------------------------------------------------------------------------------------
def check_new_output(path: str | os.PathLike, overwrite: bool = False, what: str = "output") -> Path:
    """Fail early (before any work) when ``path`` cannot be written as a new output.

    * it exists and ``overwrite`` is false -> :class:`OutputError` ("pass --overwrite");
    * a parent is an existing file, or the nearest existing parent is not writable -> :class:`OutputError`.
    """

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{what} {path} exists; pass --overwrite to replace it")
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: folder {parent} is not writable")
    return path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; on success it atomically becomes ``target``.

    The temporary file lives in the target's folder (so ``os.replace`` is a rename on one filesystem),
    is fsynced before the rename and gets :func:`umask_mode` permissions. On any exception (or
    ``KeyboardInterrupt``) it is removed and ``target`` keeps its previous content.
    """

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" if suffix is None else suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` (umask permissions).

    The previous ``target`` (allowed only with ``overwrite``) is moved aside first and removed only
    after the new folder is in place; if the final rename fails it is moved back.
    """

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists; pass --overwrite to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        _chmod_tree(tmp)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
            raise
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _chmod_tree(root: Path) -> None:
    fmode, dmode = umask_mode(), umask_mode(directory=True)
    os.chmod(root, dmode)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), dmode)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if (os.stat(p).st_mode & 0o777) == 0o600:  # made by mkstemp
                os.chmod(p, fmode)


def save_torch_atomic(
    obj: Any, target: str | os.PathLike, saver: Callable[[Any, Any], None] | None = None
) -> Path:
    """``torch.save`` (or ``saver(obj, file)``) into ``target`` via :func:`atomic_path`."""

    import torch

    saver = saver or torch.save
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        saver(obj, fh)
    return Path(target)
