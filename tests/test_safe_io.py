"""dimo.safe_io: no code runs from a file; outputs are atomic, never destroy old files, follow the umask."""

from __future__ import annotations

import os
import pickle
import stat

import numpy as np
import pytest
import torch

from dimo import safe_io


class _Payload:
    """Pickles to ``os.system("touch MARKER")``: executing it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_torch_file_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, bad)
    with pytest.raises(safe_io.UnsafeFileError) as info:
        safe_io.load_torch(bad)
    msg = str(info.value)
    assert "\n" not in msg and "evil.ckpt" in msg and "system" in msg
    assert not marker.exists()


def test_checkpoint_globals_allow_list_loads_plain_checkpoints(tmp_path):
    from collections import OrderedDict

    good = tmp_path / "good.ckpt"
    sd = OrderedDict(w=torch.ones(2))
    torch.save({"state_dict": sd, "hyper_parameters": {"lr": 1.0, "dtype": torch.bfloat16}}, good)
    out = safe_io.load_torch(good)
    assert torch.equal(out["state_dict"]["w"], torch.ones(2)) and out["hyper_parameters"]["lr"] == 1.0


def test_garbage_torch_file_is_a_value_error(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a zip" * 10)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        safe_io.load_torch(bad)


def test_restricted_unpickler_refuses_os_system_and_reads_arrays(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "MANO_RIGHT.pkl"
    evil.write_bytes(pickle.dumps({"v_template": _Payload(marker)}, protocol=2))
    with pytest.raises(safe_io.UnsafeFileError, match=r"posix\.system|os\.system"):
        safe_io.restricted_pickle_load(evil)
    assert not marker.exists()

    import scipy.sparse as sp

    ok = tmp_path / "ok.pkl"
    reg = sp.csc_matrix(np.eye(3))
    ok.write_bytes(pickle.dumps({"a": np.arange(4.0), "J_regressor": reg, "n": np.float64(2.0)}, protocol=2))
    data = safe_io.restricted_pickle_load(ok)
    assert np.array_equal(data["a"], np.arange(4.0))
    assert np.array_equal(data["J_regressor"].toarray(), np.eye(3))


def test_chumpy_arrays_map_to_numpy_without_chumpy(tmp_path, monkeypatch):
    # what an official SMPL/MANO pickle holds: chumpy.ch.Ch objects with their value in state["x"].
    # A fake chumpy module exists only while pickling; loading must not need (or import) chumpy.
    import sys
    import types

    fake = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x, self._dirty_vars = x, set()

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    fake.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", fake)
    blob = pickle.dumps({"shapedirs": Ch(np.arange(6.0).reshape(2, 3))}, protocol=2)
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    monkeypatch.delitem(sys.modules, "chumpy")
    path = tmp_path / "SMPL.pkl"
    path.write_bytes(blob)
    data = safe_io.restricted_pickle_load(path)
    assert isinstance(data["shapedirs"], np.ndarray)
    assert np.array_equal(data["shapedirs"], np.arange(6.0).reshape(2, 3))
    assert "chumpy" not in sys.modules


def test_body_model_npz_with_object_array_is_never_unpickled(tmp_path):
    from dimo.geometry import body_models as bm

    marker = tmp_path / "pwned"
    arr = np.empty((), dtype=object)
    arr[()] = _Payload(marker)
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(path, joint2num=arr, v_template=np.zeros((3, 3)))
    data = bm.read_model_arrays(path)
    assert "joint2num" not in data and data["v_template"].shape == (3, 3)
    assert not marker.exists()
    with pytest.raises(bm.BodyModelFormatError, match="lacks arrays"):
        bm.load_body_model(path, "smplx")
    assert not marker.exists()


def test_malicious_body_model_pickle_is_one_line_error(tmp_path):
    from dimo.geometry import body_models as bm

    marker = tmp_path / "pwned"
    (tmp_path / "mano").mkdir()
    (tmp_path / "mano" / "MANO_RIGHT.pkl").write_bytes(pickle.dumps({"x": _Payload(marker)}))
    with pytest.raises(bm.BodyModelFormatError) as info:
        bm.load_body_model(tmp_path, "mano")
    assert "refused to unpickle" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


# ---- writing --------------------------------------------------------------------------------------
def test_atomic_path_failure_keeps_old_file_and_leaks_no_temp(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), safe_io.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        f = safe_io.atomic_write_text(tmp_path / "a.json", "{}")
        with safe_io.atomic_dir(tmp_path / "export") as d:
            (d / "x.bin").write_bytes(b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755


def test_atomic_dir_failure_keeps_old_folder(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep").write_text("old")
    with pytest.raises(RuntimeError), safe_io.atomic_dir(out) as d:
        (d / "new").write_text("x")
        raise RuntimeError("boom")
    assert (out / "keep").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with pytest.raises(safe_io.OutputError, match="--overwrite"), safe_io.atomic_dir(out, overwrite=False):
        pass


def test_check_new_output(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(safe_io.OutputError, match="--overwrite"):
        safe_io.check_new_output(tmp_path / "f")
    assert safe_io.check_new_output(tmp_path / "f", overwrite=True)
    with pytest.raises(safe_io.OutputError, match="is a file"):
        safe_io.check_new_output(tmp_path / "f" / "out.mp4")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(safe_io.OutputError, match="not writable"):
            safe_io.check_new_output(ro / "out.mp4")


def test_toy_dataset_files_follow_the_umask(tmp_path):
    from dimo.data.synth import SynthConfig, synthesize

    old = os.umask(0o022)
    try:
        synthesize(
            tmp_path / "toy",
            SynthConfig(num_internet=1, num_ue5=0, num_multiview=0, num_frames=4, height=16, width=16),
        )
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "toy").rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes
