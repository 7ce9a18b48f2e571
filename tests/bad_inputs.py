"""The project's own adversarial inputs, each run and classified (issue #17).

Every case builds its bad input in a fresh folder, runs the real entry point (in-process
``dimo.cli.main`` or the library function the entry point calls) and returns one outcome:

* ``clear error``   exit status 2 and exactly one ``error:`` line on stderr, no traceback;
* ``counted skip``  the bad item is reported once (a validation problem / a skipped, counted clip)
                    and the rest of the data is used;
* ``handled``       the input is odd but legal and the result is verified correct;
* ``traceback``     an exception escaped (or a traceback was printed);
* ``silently wrong`` exit 0 / no report but the result is wrong;
* ``executed``      a payload in a file ran (a marker file appeared);
* ``lost``          a pre-existing file or checkpoint was removed or damaged.

``tests/test_bad_inputs.py`` asserts each case's expected outcome; ``python tests/bad_inputs.py``
prints the outcome table (tried / clear error / counted skip / handled / traceback / silently
wrong / executed / lost).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = ("clear error", "counted skip", "handled", "traceback", "silently wrong", "executed", "lost")


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    expected: str
    fn: Callable[[Path, Env], str]


class Env:
    """Shared, built-once inputs: a tiny toy dataset."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._toy: Path | None = None

    @property
    def toy(self) -> Path:
        if self._toy is None:
            from dimo.data.synth import SynthConfig, synthesize

            self._toy = self.root / "toy"
            if not (self._toy / "manifest.jsonl").is_file():
                cfg = SynthConfig(
                    num_internet=2, num_ue5=1, num_multiview=1, num_frames=9, height=32, width=32,
                    multiview_cameras=(3, 3), ue5_trajectories=(2, 2),
                )  # fmt: skip
                synthesize(self._toy, cfg)
        return self._toy

    def toy_copy(self, tmp: Path) -> Path:
        dst = tmp / "data"
        shutil.copytree(self.toy, dst)
        return dst


# ---- running and classifying ----------------------------------------------------------------------
class Payload:
    """Unpickling it runs ``touch MARKER`` (what a malicious checkpoint or model file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_cli(argv: list[str]) -> tuple[int | None, str, str]:
    """``dimo.cli.main(argv)`` in-process -> (exit status or None if an exception escaped, out, err)."""

    from dimo import cli

    out, err = io.StringIO(), io.StringIO()
    code: int | None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the outcome we are measuring
        code = None
        err.write(traceback.format_exc())
    return code, out.getvalue(), err.getvalue()


def classify_cli(code: int | None, err: str) -> str:
    if code is None or "Traceback (most recent call last)" in err:
        return "traceback"
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    if code == 2 and len(errors) == 1:
        return "clear error"
    return "silently wrong" if code == 0 else "traceback"


def cli_case(argv: list[str]) -> str:
    return classify_cli(*_drop_out(run_cli(argv)))


def _drop_out(res):
    return res[0], res[2]


def function_case(fn: Callable[[], object], errors: tuple[type[BaseException], ...]) -> str:
    """A library call the CLI reports: one of ``errors`` with a one-line message is a clear error."""

    try:
        fn()
    except errors as err:
        return "clear error" if "\n" not in str(err) and str(err) else "traceback"
    except BaseException:  # noqa: BLE001
        return "traceback"
    return "silently wrong"


def guard(marker: Path | None = None, keep: dict[Path, bytes] | None = None) -> Callable[[str], str]:
    """Post-check: a marker file means executed; a changed protected file means lost."""

    def check(outcome: str) -> str:
        if marker is not None and marker.exists():
            return "executed"
        for path, data in (keep or {}).items():
            if not path.is_file() or path.read_bytes() != data:
                return "lost"
        return outcome

    return check


# ---- code from files -------------------------------------------------------------------------------
def _evil_ckpt(tmp: Path) -> tuple[Path, Path]:
    import torch

    marker = tmp / "pwned"
    path = tmp / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, path)
    return path, marker


def c_generate_evil_ckpt(tmp: Path, env: Env) -> str:
    ckpt, marker = _evil_ckpt(tmp)
    ref = env.toy / "clips/internet_0000/view_00.mp4"
    argv = ["generate", "--model", "3dimo", "--checkpoint", str(ckpt), "--reference", str(ref)]
    argv += ["--driving", str(ref), "--prompt", "Front view.", "--out", str(tmp / "o.mp4")]
    return guard(marker)(cli_case(argv))


def c_export_evil_ckpt(tmp: Path, env: Env) -> str:
    ckpt, marker = _evil_ckpt(tmp)
    return guard(marker)(cli_case(["export", str(ckpt), str(tmp / "exp")]))


def c_hvg_init_from_evil(tmp: Path, env: Env) -> str:
    from dimo.models.hvg.module import HVGModule
    from dimo.safe_io import UnsafeFileError

    ckpt, marker = _evil_ckpt(tmp)
    return guard(marker)(function_case(lambda: HVGModule._init_from(object(), ckpt), (UnsafeFileError,)))


def c_fit_ckpt_path_garbage(tmp: Path, env: Env) -> str:
    bad = tmp / "garbage.ckpt"
    bad.write_bytes(os.urandom(4096))
    return cli_case([*_fit_args(tmp, env), f"--ckpt_path={bad}"])


def c_body_model_evil_pkl(tmp: Path, env: Env) -> str:
    from dimo.geometry.body_models import BodyModelFileError, load_body_model

    marker = tmp / "pwned"
    (tmp / "mano").mkdir()
    (tmp / "mano" / "MANO_RIGHT.pkl").write_bytes(pickle.dumps({"v_template": Payload(marker)}, protocol=2))
    return guard(marker)(function_case(lambda: load_body_model(tmp, "mano"), (BodyModelFileError,)))


def c_body_model_evil_npz(tmp: Path, env: Env) -> str:
    from dimo.geometry.body_models import BodyModelFileError, load_body_model

    marker = tmp / "pwned"
    obj = np.empty((), dtype=object)
    obj[()] = Payload(marker)
    (tmp / "smplx").mkdir()
    np.savez(tmp / "smplx" / "SMPLX_NEUTRAL.npz", v_template=obj, shapedirs=obj)
    return guard(marker)(function_case(lambda: load_body_model(tmp, "smplx"), (BodyModelFileError,)))


# ---- outputs and checkpoints never lost --------------------------------------------------------------
def _gen_argv(tmp: Path, env: Env, out: Path, *extra: str) -> list[str]:
    ref = str(env.toy / "clips/internet_0000/view_00.mp4")
    argv = ["generate", "--model", "3dimo", "--checkpoint", str(tmp / "none.ckpt"), "--reference", ref]
    return [*argv, "--driving", ref, "--prompt", "Front view.", "--out", str(out), *extra]


def c_generate_existing_out(tmp: Path, env: Env) -> str:
    out = tmp / "old.mp4"
    out.write_bytes(b"previous result")
    return guard(keep={out: b"previous result"})(cli_case(_gen_argv(tmp, env, out)))


def c_generate_sidecar_is_a_folder(tmp: Path, env: Env) -> str:
    out = tmp / "old.mp4"
    out.write_bytes(b"previous result")
    (tmp / "old.json").mkdir()
    return guard(keep={out: b"previous result"})(cli_case(_gen_argv(tmp, env, out, "--overwrite")))


def c_generate_write_fails_late(tmp: Path, env: Env) -> str:
    """The sidecar write fails after the video was written: the previous files must survive."""

    import torch

    from dimo.commands.generate import _write_outputs
    from dimo.pipelines.io import write_mp4

    out = tmp / "old.mp4"
    out.write_bytes(b"previous result")
    (tmp / "old.json").write_text("{}")

    def failing_json(path, data):
        raise OSError("disk full")

    frames = torch.zeros(2, 3, 16, 16)
    outcome = function_case(
        lambda: _write_outputs(out, {out: frames}, 8.0, {}, write_mp4, failing_json), (OSError,)
    )
    leaked = [p.name for p in tmp.iterdir() if p.name.startswith(".")]
    return guard(keep={out: b"previous result", tmp / "old.json": b"{}"})("lost" if leaked else outcome)


def c_generate_out_under_a_file(tmp: Path, env: Env) -> str:
    (tmp / "afile").write_text("x")
    return cli_case(_gen_argv(tmp, env, tmp / "afile" / "o.mp4"))


def c_checkpoint_crash_mid_write(tmp: Path, env: Env) -> str:
    import torch

    from dimo.callbacks.reliability import AtomicCheckpointIO

    last = tmp / "last.ckpt"
    torch.save({"global_step": 1}, last)
    before = last.read_bytes()

    class Crash(Exception):
        pass

    def crashing_save(obj, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise Crash("killed mid-write")

    import dimo.safe_io as sio

    original = sio.save_torch_atomic
    try:
        sio.save_torch_atomic = lambda obj, target, saver=None: original(obj, target, crashing_save)
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, last)
    except Crash:
        pass
    finally:
        sio.save_torch_atomic = original
    leaked = [p.name for p in tmp.iterdir() if p.name != "last.ckpt"]
    ok = last.read_bytes() == before and not leaked
    return "handled" if ok else "lost"


def c_export_existing_without_overwrite(tmp: Path, env: Env) -> str:
    out = tmp / "exp"
    out.mkdir()
    (out / "model_index.json").write_text("{}")
    return guard(keep={out / "model_index.json": b"{}"})(cli_case(["export", str(tmp / "x.ckpt"), str(out)]))


def c_make_train_stage1_existing_run(tmp: Path, env: Env) -> str:
    run = tmp / "r" / "stage1" / "checkpoints"
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes(b"precious")
    cmd = ["make", "-s", "-o", "setup", "-o", "data", "train-stage1", "PY=true", f"RUN_DIR={tmp / 'r'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    refused = proc.returncode != 0 and "exists" in proc.stderr and "RESUME=1" in proc.stderr
    return guard(keep={run / "last.ckpt": b"precious"})("clear error" if refused else "silently wrong")


def c_data_synth_under_a_file(tmp: Path, env: Env) -> str:
    (tmp / "afile").write_text("x")
    return cli_case(["data", "synth", "--out", str(tmp / "afile" / "toy"), "--clips-per-source", "1"])


# ---- manifest and motion values: one counted problem each ------------------------------------------
def _manifest_case(
    mutate: Callable[[dict], object], raw_line: bytes | None = None
) -> Callable[[Path, Env], str]:
    def run(tmp: Path, env: Env) -> str:
        from dimo.data.validate import validate_root

        root = env.toy_copy(tmp)
        lines = (root / "manifest.jsonl").read_text().splitlines()
        rec = json.loads(lines[0])
        if raw_line is None:
            rec["id"] = "bad_clip"
            mutated = mutate(rec)
            if isinstance(mutated, bytes):
                bad = mutated
            else:
                bad = json.dumps(rec, allow_nan=True).encode()
        else:
            bad = raw_line
        with open(root / "manifest.jsonl", "ab") as fh:
            fh.write(bad + b"\n")
        try:
            report = validate_root(root, decode=False)
        except BaseException:  # noqa: BLE001
            return "traceback"
        n_good = len(lines)
        bad_problems = [p for p in report.problems if p.clip_id in ("bad_clip", f"line {n_good + 1}")]
        if len(report.problems) == 1 and len(bad_problems) == 1 and len(report.records) == n_good:
            return _datamodule_skips(root, n_good)
        if not report.problems:
            return "silently wrong"
        return "traceback"

    return run


def _datamodule_skips(root: Path, n_good: int) -> str:
    """The DataModule set-up must count the same bad line and keep the good clips."""

    from dimo.data.datamodule import ViewRichDataModule

    dm = ViewRichDataModule(root=root, num_frames=4, height=32, width=32, synthesize_if_missing=False)
    try:
        dm.setup("fit")
    except BaseException:  # noqa: BLE001
        return "traceback"
    return "counted skip" if dm.invalid_clips == 1 else "silently wrong"


def _set(key: str, value) -> Callable[[dict], None]:
    def f(rec: dict) -> None:
        rec[key] = value

    return f


def _view(key: str, value) -> Callable[[dict], None]:
    def f(rec: dict) -> None:
        rec["views"][0][key] = value

    return f


def _nested(rec: dict) -> bytes:
    return b'{"id": "bad_clip", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


MANIFEST_CASES = {
    "ragged K": _view("K", [[1.0, 0.0, 16.0], [0.0, 1.0], [0.0, 0.0, 1.0]]),
    "string K": _view("K", "eye(3)"),
    "dict K": _view("K", {"fx": 30.0}),
    "zero focal length": _view("K", [[0.0, 0.0, 16.0], [0.0, 0.0, 16.0], [0.0, 0.0, 1.0]]),
    "zero R": _view("R", [[0.0] * 3] * 3),
    "fps true": _set("fps", True),
    "fps NaN": _set("fps", float("nan")),
    "num_frames 2^63": _set("num_frames", 2**63),
    "num_frames string": _set("num_frames", "12"),
    "../ video path": _view("video", "../../etc/passwd"),
    "../ motion path": lambda rec: rec["motion"].__setitem__("file", "../outside.npz"),
    "views not a list": _set("views", {"video": "a.mp4"}),
    "unknown source": _set("source", "youtube"),
    "deeply nested JSON": _nested,
}


def _raw_case(line: bytes) -> Callable[[Path, Env], str]:
    return _manifest_case(lambda rec: None, raw_line=line)


RAW_MANIFEST_CASES = {
    "non-UTF-8 line": b'{"id": "\xff\xfe bad"}',
    "truncated JSON line": b'{"id": "x", "source": "ue5", ',
    "JSON array line": b"[1, 2, 3]",
}


def c_motion_1e39(tmp: Path, env: Env) -> str:
    from dimo.data.validate import validate_root

    root = env.toy_copy(tmp)
    lines = (root / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    path = root / rec["motion"]["file"]
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}
    data["body_pose"] = data["body_pose"].astype(np.float64)
    data["body_pose"][0, 0, 0] = 1e39
    np.savez(path, **data)
    report = validate_root(root, decode=False)
    hits = [p for p in report.problems if p.clip_id == rec["id"] and "float32" in p.reason]
    return "counted skip" if len(report.problems) == 1 and hits else "silently wrong"


# ---- odd videos: counted skip with a reason, or decoded correctly ----------------------------------
def _frames(t: int, h: int, w: int) -> np.ndarray:
    """Frame i: a flat grey of 20 + 25 i (so each frame's identity is checkable after decoding)."""

    return np.stack([np.full((h, w, 3), 20 + 25 * i, np.uint8) for i in range(t)])


def _write(
    path: Path, frames: np.ndarray, codec="libx264", pix_fmt="yuv420p", fmt=None, pts=None, rotate=None
):
    import av

    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=8)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if rotate:
            s.set_display_rotation(rotate)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i if pts is None else pts[i]
            c.mux(s.encode(frame))
        c.mux(s.encode())


def _video_case(make: Callable[[Path], None], suffix: str = ".mp4") -> Callable[[Path, Env], str]:
    def run(tmp: Path, env: Env) -> str:
        from dimo.data.dataset import ClipDataset, SampleSpec
        from dimo.data.manifest import load_manifest, write_manifest
        from dimo.data.mixture import SampleKey
        from dimo.data.validate import validate_root
        from dimo.data.video import read_frames

        root = env.toy_copy(tmp)
        records, _ = load_manifest(root)
        rec = next(r for r in records if r.source == "internet")
        video = root / "clips" / rec.id / f"odd{suffix}"
        make(video)
        raw = [r.to_json() for r in records]
        target = next(r for r in raw if r["id"] == rec.id)
        target["views"][0]["video"] = str(video.relative_to(root))
        target.pop("height", None), target.pop("width", None)  # odd sizes are legal content
        for v in target["views"]:
            v.pop("K", None)
        write_manifest(root, raw)
        try:
            report = validate_root(root, decode=True)
        except BaseException:  # noqa: BLE001
            return "traceback"
        mine = [p for p in report.problems if p.clip_id == rec.id]
        records, _ = load_manifest(root)
        pools = {s: [r for r in records if r.source == s] for s in ("internet", "ue5", "multiview")}
        index = [r.id for r in pools["internet"]].index(rec.id)
        ds = ClipDataset(pools, SampleSpec(num_frames=4, height=32, width=32))
        try:
            sample = ds[SampleKey(0, 0, "internet", index, "reconstruction", 5)]
        except BaseException:  # noqa: BLE001
            return "traceback"
        if mine:  # reported: the dataset must skip it (and count that)
            if len(mine) == 1 and sample["clip_id"] != rec.id and sample["_skipped"] >= 1:
                return "counted skip"
            return "silently wrong"
        # accepted: every frame must decode with its own content at the requested size
        try:
            got = read_frames(video, range(9), size=(32, 32))
        except BaseException:  # noqa: BLE001
            return "traceback"
        want = np.array([20 + 25 * i for i in range(9)], dtype=float)
        ok = got.shape == (9, 32, 32, 3) and np.abs(got.reshape(9, -1).mean(1) - want).max() < 6
        ok = ok and sample["clip_id"] == rec.id and tuple(sample["target"].shape) == (4, 3, 32, 32)
        return "handled" if ok else "silently wrong"

    return run


VIDEO_CASES = {
    "truncated mp4": (lambda p: (_write(p, _frames(9, 32, 32)), p.write_bytes(p.read_bytes()[:600])), ".mp4"),
    "VFR timestamps (frames by average rate)": (
        lambda p: _write(p, _frames(9, 32, 32), pts=[0, 1, 3, 4, 6, 7, 9, 10, 12]),
        ".mp4",
    ),
    "VP9 WebM": (lambda p: _write(p, _frames(9, 32, 32), codec="libvpx-vp9", fmt="webm"), ".webm"),
    "odd size 33x47": (lambda p: _write(p, _frames(9, 33, 47), codec="libx264", pix_fmt="yuv444p"), ".mp4"),
    "yuv444": (lambda p: _write(p, _frames(9, 32, 32), pix_fmt="yuv444p"), ".mp4"),
    "10-bit": (lambda p: _write(p, _frames(9, 32, 32), pix_fmt="yuv420p10le"), ".mp4"),
    "rotated 90": (lambda p: _write(p, _frames(9, 32, 32), rotate=90), ".mp4"),
    "garbage bytes": (lambda p: p.write_bytes(os.urandom(5000)), ".mp4"),
    "empty file": (lambda p: p.write_bytes(b""), ".mp4"),
    "audio-only": (lambda p: _write_audio(p), ".mp4"),
}


def _write_audio(path: Path) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in s.encode(frame):
            c.mux(packet)
        c.mux(s.encode())


# ---- config values ---------------------------------------------------------------------------------
def _fit_args(tmp: Path, env: Env, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(REPO / "experiments/3dimo.yaml"), "--trainer.max_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp}", f"--checkpoint.dirpath={tmp / 'ckpt'}",
        f"--data.init_args.root={env.toy}", "--data.init_args.frame_stride=1", "--data.init_args.height=32", "--data.init_args.width=32",
        "--data.init_args.batch_size=1", "--data.init_args.val_batches=0", "--data.init_args.log_preview=false",
        "--model.init_args.net.init_args.image_size=[32,32]", "--model.init_args.net.init_args.hand_crop=16",
        "--samples.every_n_steps=0", "--trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip


def _config_case(*extra: str) -> Callable[[Path, Env], str]:
    return lambda tmp, env: cli_case(_fit_args(tmp, env, *extra))


CONFIG_CASES = {
    "negative batch size": ("--data.init_args.batch_size=-1",),
    "zero frames": ("--data.init_args.num_frames=0",),
    "frames not 1+4k": ("--data.init_args.num_frames=8",),
    "body_tokens 0": ("--model.init_args.net.init_args.body_tokens=0",),
    "hand_crop 1000": ("--model.init_args.net.init_args.hand_crop=1000",),
    # the mixture is the schedule's (data.init_args.weights is derived from its first stage)
    "negative weight": ("--schedule.stages=[{name: s, steps: 1, weights: {internet: -1.0}}]",),
    "derived key typed": ("--data.init_args.weights={internet: 1.0}",),
    "unknown key": ("--trainer.max_stepz=3",),
    "wrong type": ("--data.init_args.batch_size=two",),
    "data/model size mismatch": ("--data.init_args.height=64",),
}


def c_config_file_broken(tmp: Path, env: Env) -> str:
    bad = tmp / "bad.yaml"
    bad.write_text("model: {class_path: [unclosed\n")
    return cli_case(_fit_args(tmp, env, "--config", str(bad)))


def c_config_file_missing(tmp: Path, env: Env) -> str:
    return cli_case(_fit_args(tmp, env, "--config", str(tmp / "nope.yaml")))


def c_paper_config_without_weights(tmp: Path, env: Env) -> str:
    argv = [
        "fit",
        "--config",
        str(REPO / "experiments/3dimo.yaml"),
        "--config",
        str(REPO / "experiments/3dimo_paper.yaml"),
    ]
    code, _, err = run_cli(argv)
    outcome = classify_cli(code, err)
    if outcome == "clear error" and err.count("=") < 2:  # every missing path at once, not the first
        return "silently wrong"
    return outcome


# ---- generate / evaluate values and devices ----------------------------------------------------------
GENERATE_CASES = {
    "NaN guidance": ("--guidance-scale", "nan"),
    "inf motion guidance": ("--motion-guidance-scale", "inf"),
    "zero steps": ("--steps", "0"),
    "device cuda without GPU": ("--device", "cuda:7"),
    "unknown device": ("--device", "quantum"),
    "out not .mp4": None,
}


def _gen_case(extra) -> Callable[[Path, Env], str]:
    def run(tmp: Path, env: Env) -> str:
        if extra is None:
            return cli_case(_gen_argv(tmp, env, tmp / "o.gif"))
        if "cuda" in extra[-1]:
            import torch

            if torch.cuda.device_count() > 7:
                return "clear error"  # nothing to test on this machine
        return cli_case(_gen_argv(tmp, env, tmp / "o.mp4", *extra))

    return run


def _eval_dirs(tmp: Path, env: Env) -> tuple[Path, Path]:
    gen, ref = tmp / "gen", tmp / "ref"
    gen.mkdir(), ref.mkdir()
    src = env.toy / "clips/internet_0000/view_00.mp4"
    shutil.copy(src, ref / "a.mp4")
    return gen, ref


def c_eval_corrupt_item(tmp: Path, env: Env) -> str:
    gen, ref = _eval_dirs(tmp, env)
    (gen / "a.mp4").write_bytes(os.urandom(3000))
    code, _, err = run_cli(
        ["evaluate", "--generated", str(gen), "--reference", str(ref), "--metrics", "psnr", "--no-progress"]
    )
    outcome = classify_cli(code, err)
    return outcome if outcome != "clear error" or "'a'" in err else "silently wrong"


def c_eval_truncated_output(tmp: Path, env: Env) -> str:
    from dimo.data.video import read_frames, write_video

    gen, ref = _eval_dirs(tmp, env)
    write_video(gen / "a.mp4", read_frames(ref / "a.mp4", range(4)), fps=8)
    return cli_case(
        ["evaluate", "--generated", str(gen), "--reference", str(ref), "--metrics", "psnr", "--no-progress"]
    )


def c_eval_second_run_default_out(tmp: Path, env: Env) -> str:
    gen, ref = _eval_dirs(tmp, env)
    shutil.copy(ref / "a.mp4", gen / "a.mp4")
    argv = [
        "evaluate",
        "--generated",
        str(gen),
        "--reference",
        str(ref),
        "--metrics",
        "psnr",
        "--no-progress",
    ]
    first, second = run_cli(argv), run_cli(argv)
    if first[0] == 0 and second[0] == 0:
        return "handled"
    return classify_cli(second[0], second[2])


def c_eval_missing_dir(tmp: Path, env: Env) -> str:
    return cli_case(
        ["evaluate", "--generated", str(tmp / "no"), "--reference", str(tmp / "no2"), "--metrics", "psnr"]
    )


# ---- the table -------------------------------------------------------------------------------------
def all_cases() -> list[Case]:
    cases = [
        Case("generate --checkpoint with os.system payload", "code", "clear error", c_generate_evil_ckpt),
        Case("export with os.system payload", "code", "clear error", c_export_evil_ckpt),
        Case("HVG init_from with os.system payload", "code", "clear error", c_hvg_init_from_evil),
        Case("fit --ckpt_path random bytes", "code", "clear error", c_fit_ckpt_path_garbage),
        Case("MANO .pkl with os.system payload", "code", "clear error", c_body_model_evil_pkl),
        Case("SMPL-X .npz with pickled object arrays", "code", "clear error", c_body_model_evil_npz),
        Case("generate over an existing --out", "outputs", "clear error", c_generate_existing_out),
        Case(
            "generate when the sidecar path is a folder",
            "outputs",
            "clear error",
            c_generate_sidecar_is_a_folder,
        ),
        Case(
            "generate sidecar write fails after the video",
            "outputs",
            "clear error",
            c_generate_write_fails_late,
        ),
        Case("generate --out under a file", "outputs", "clear error", c_generate_out_under_a_file),
        Case("checkpoint write killed midway", "outputs", "handled", c_checkpoint_crash_mid_write),
        Case("export over an earlier export", "outputs", "clear error", c_export_existing_without_overwrite),
        Case(
            "make train-stage1 over an existing run",
            "outputs",
            "clear error",
            c_make_train_stage1_existing_run,
        ),
        Case("data synth --out under a file", "outputs", "clear error", c_data_synth_under_a_file),
        Case("motion value 1e39 (float32 overflow)", "manifest", "counted skip", c_motion_1e39),
        Case("evaluate: corrupt item", "evaluate", "clear error", c_eval_corrupt_item),
        Case("evaluate: truncated generated video", "evaluate", "clear error", c_eval_truncated_output),
        Case(
            "evaluate: second run with the default --out",
            "evaluate",
            "handled",
            c_eval_second_run_default_out,
        ),
        Case("evaluate: missing folders", "evaluate", "clear error", c_eval_missing_dir),
        Case("broken --config YAML", "config", "clear error", c_config_file_broken),
        Case("missing --config file", "config", "clear error", c_config_file_missing),
        Case(
            "paper config without weights (all listed)",
            "config",
            "clear error",
            c_paper_config_without_weights,
        ),
    ]
    cases += [
        Case(f"manifest: {n}", "manifest", "counted skip", _manifest_case(f))
        for n, f in MANIFEST_CASES.items()
    ]
    cases += [
        Case(f"manifest: {n}", "manifest", "counted skip", _raw_case(b))
        for n, b in RAW_MANIFEST_CASES.items()
    ]
    expected_video = {
        "VFR timestamps (frames by average rate)": "handled",
        "VP9 WebM": "handled",
        "odd size 33x47": "handled",
        "yuv444": "handled",
        "10-bit": "handled",
    }
    cases += [
        Case(f"video: {n}", "video", expected_video.get(n, "counted skip"), _video_case(make, suffix))
        for n, (make, suffix) in VIDEO_CASES.items()
    ]
    cases += [
        Case(f"config: {n}", "config", "clear error", _config_case(*a)) for n, a in CONFIG_CASES.items()
    ]
    cases += [
        Case(f"generate: {n}", "generate", "clear error", _gen_case(a)) for n, a in GENERATE_CASES.items()
    ]
    return cases


def run_case(case: Case, tmp: Path, env: Env) -> str:
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        return case.fn(tmp, env)
    except BaseException:  # noqa: BLE001 - an escaped exception is a traceback outcome
        traceback.print_exc()
        return "traceback"


def main() -> int:
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="dimo-bad-inputs-") as d:
        env = Env(Path(d))
        counts: Counter[str] = Counter()
        mismatches = []
        for i, case in enumerate(all_cases()):
            got = run_case(case, Path(d) / f"case{i}", env)
            counts[got] += 1
            mark = "" if got == case.expected else f"   (expected {case.expected})"
            if mark:
                mismatches.append(case.name)
            print(f"{case.group:<9} {case.name:<48} {got}{mark}", flush=True)
    print()
    print("| tried | " + " | ".join(OUTCOMES) + " |")
    print("|---" * (len(OUTCOMES) + 1) + "|")
    print(f"| {sum(counts.values())} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
