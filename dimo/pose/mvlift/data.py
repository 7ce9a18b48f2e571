"""MVLift training data: single-view 2D sequences only, and the stage-3 synthetic multi-view 2D data.

**No 3D label enters training.** Every training batch is a dict of the keys in :data:`ALLOWED_KEYS`:
2D sequences in network coordinates (:mod:`dimo.pose.mvlift.geometry`), their confidences, an index,
and (stage 4 only) the *virtual* ring cameras the synthetic views were made with. :func:`assert_no_3d`
checks a batch (the modules call it on every training batch); ``tests/test_mvlift.py`` checks that the
batches are also unchanged when the 3D motion behind the 2D is moved along the camera rays.

Where the 2D comes from:

* :func:`toy_internet_sequences` (default): the toy ``internet`` clips of :mod:`dimo.data.synth`
  (one static or handheld camera; identity, motion and camera drawn from the same random streams as
  :func:`dimo.data.synth.make_clip`, so clip ``i`` of seed ``s`` is the clip ``synthesize`` would write),
  with the keypoints *projected* from the generator and the pixels never rendered (nothing here needs
  them). Only the 2D projection leaves the function.
* :func:`sequences_from_keypoint_files`: a dataset's recorded 2D keypoint files (``python -m dimo.cli
  data keypoints ROOT --detector pretrained/toy-detector``, i.e. the toy detector's output), with the
  view's intrinsics or an assumed pinhole; the clip's motion file is never opened.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dimo.pose.mvlift.geometry import J16, pixels_to_net

__all__ = [
    "ALLOWED_KEYS",
    "Motion2DDataModule",
    "Motion2DDataset",
    "MultiView2DDataModule",
    "MultiView2DDataset",
    "assert_no_3d",
    "sequences_from_keypoint_files",
    "toy_internet_sequences",
]

# keys a training batch may carry; "R"/"t" are the stage-4 virtual ring cameras (made up, not measured)
ALLOWED_KEYS = frozenset({"x2d", "conf", "index", "views2d", "R", "t"})
_FORBIDDEN_HINTS = ("joint", "3d", "motion", "pose", "transl", "orient", "depth", "smpl")


def assert_no_3d(batch: Mapping[str, object]) -> None:
    """Raise ``ValueError`` if a batch carries anything but 2D sequences, confidences and virtual cameras.

    Checks the key names (:data:`ALLOWED_KEYS`, nothing that looks like joints/pose/depth) and the
    shapes: sequences end in ``(J, 2)``, confidences in ``(J,)``, cameras are ``(V, 3, 3)`` / ``(V, 3)``.
    """

    for key, value in batch.items():
        low = key.lower()
        if key not in ALLOWED_KEYS or any(h in low for h in _FORBIDDEN_HINTS):
            raise ValueError(f"training batch key {key!r} is not 2D data (allowed: {sorted(ALLOWED_KEYS)})")
        if not torch.is_tensor(value):
            raise ValueError(f"training batch key {key!r} is not a tensor")
        shape = tuple(value.shape)
        if key in ("x2d", "views2d") and shape[-1] != 2:
            raise ValueError(f"{key} must end in (J, 2) 2D coordinates, got {shape}")
        if key == "conf" and shape[-1] != len(J16):
            raise ValueError(f"conf must end in J={len(J16)}, got {shape}")
        if key == "R" and shape[-2:] != (3, 3):
            raise ValueError(f"R must be (..., 3, 3) rotations, got {shape}")
        if key == "t" and (shape[-1] != 3 or value.ndim != 3):
            raise ValueError(f"t must be (B, V, 3) virtual camera translations, got {shape}")


def toy_internet_sequences(
    seed: int, num: int, frames: int = 20, size: int = 64, fov_deg: float = 40.0
) -> dict[str, torch.Tensor]:
    """``num`` toy internet clips' 2D keypoints: ``x2d (N, T, 16, 2)`` network coordinates, ``conf (N, T, 16)``.

    Confidence 1 where the joint is in front of the camera and inside the ``size`` x ``size`` frame
    (what a detector could see), else 0. Deterministic in ``seed``.
    """

    from dimo.data.synth import SynthConfig, _cameras_for, make_identity, make_motion, pose_joints
    from dimo.geometry.cameras import project

    cfg = SynthConfig(
        seed=seed, num_internet=num, num_frames=frames, height=size, width=size, fov_deg=fov_deg
    )
    xs, confs = [], []
    for index in range(num):
        # the random streams of dimo.data.synth.make_clip("internet", index)
        clip_seed = cfg.seed * 1_000_003 + index
        rng = np.random.default_rng([cfg.seed, 0, index])
        ident = make_identity(rng)
        motion = make_motion(rng, cfg.num_frames, cfg.fps)
        joints = pose_joints(motion, ident.rest).double()  # (T, 55, 3), dropped below
        traj = _cameras_for("internet", rng, cfg, clip_seed)[0]
        K = traj.K.double()
        uv, z = project(joints, K, traj.R.double(), traj.t.double())  # (T, 55, 2), (T, 55)
        inside = (
            (uv[..., 0] >= 0) & (uv[..., 0] < size) & (uv[..., 1] >= 0) & (uv[..., 1] < size) & (z > 1e-6)
        )
        xs.append(pixels_to_net(uv[:, list(J16)], K).float())
        confs.append(inside[:, list(J16)].float())
        del joints, z
    return {"x2d": torch.stack(xs), "conf": torch.stack(confs)}


def sequences_from_keypoint_files(
    root: str | os.PathLike,
    frames: int = 20,
    sources: Sequence[str] = ("internet",),
    fov_deg: float = 40.0,
    threshold: float = 0.3,
) -> dict[str, torch.Tensor]:
    """Windows of ``frames`` frames of every view with a ``keypoints2d`` file (clips of ``sources``).

    Intrinsics: the view's ``K`` where recorded, else a pinhole with a vertical field of view of
    ``fov_deg`` centred in the frame. Confidence: the keypoint score where at least ``threshold``, else 0.
    """

    from dimo.data.keypoints import load_keypoints2d
    from dimo.data.manifest import load_manifest
    from dimo.geometry.cameras import intrinsics
    from dimo.pose.joints import wholebody_to_smplx

    records, problems = load_manifest(root)
    if problems:
        raise RuntimeError(f"{root}: dataset has problems, first: {problems[0]}")
    xs, confs = [], []
    for rec in records:
        if rec.source not in sources or rec.num_frames < frames:
            continue
        for view in rec.views:
            if view.keypoints2d is None:
                continue
            kp, sc = load_keypoints2d(rec.path(view.keypoints2d), rec.num_frames)
            uv, score, valid = wholebody_to_smplx(kp, sc, threshold)
            if view.K is not None:
                K = torch.as_tensor(np.asarray(view.K, np.float64))
                K = K.expand(rec.num_frames, 3, 3) if K.ndim == 2 else K
            else:
                if rec.height is None or rec.width is None:
                    continue
                K = intrinsics(rec.width, rec.height, fov_deg).double().expand(rec.num_frames, 3, 3)
            x = pixels_to_net(uv[:, list(J16)].double(), K).float()
            c = (score * valid)[:, list(J16)].float()
            for s in range(0, rec.num_frames - frames + 1, frames):
                xs.append(x[s : s + frames])
                confs.append(c[s : s + frames])
    if not xs:
        raise RuntimeError(
            f"{root}: no {'/'.join(sources)} view with a keypoints2d file of >= {frames} frames "
            "(record them with `python -m dimo.cli data keypoints ROOT --detector DIR`)"
        )
    return {"x2d": torch.stack(xs), "conf": torch.stack(confs)}


class Motion2DDataset(Dataset):
    """Single-view 2D sequences: items ``{"x2d": (T, J, 2), "conf": (T, J), "index": ()}``."""

    def __init__(self, x2d: torch.Tensor, conf: torch.Tensor) -> None:
        if x2d.ndim != 4 or x2d.shape[-1] != 2 or conf.shape != x2d.shape[:-1]:
            raise ValueError(
                f"expected x2d (N, T, J, 2) and conf (N, T, J), got {tuple(x2d.shape)} and {tuple(conf.shape)}"
            )
        self.x2d, self.conf = x2d.float(), conf.float()

    def __len__(self) -> int:
        return self.x2d.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x2d": self.x2d[i], "conf": self.conf[i], "index": torch.tensor(i)}


class Motion2DDataModule(L.LightningDataModule):
    """Stages 1 and 2: single-view 2D sequences (module docstring), a training and a validation split.

    Args:
        source: ``toy_internet`` (projected keypoints of toy internet clips, seed ``seed``) or
            ``keypoint_files`` (the ``keypoints2d`` files of the dataset at ``root``).
        num_train / num_val: sequences (toy source); validation uses seed ``seed + 1``.
        full_batch: one batch of the whole training set per step (stage 2 optimises every sequence at once).
    """

    def __init__(
        self,
        source: str = "toy_internet",
        root: Path | None = None,
        seed: int = 2000,
        num_train: int = 1500,
        num_val: int = 64,
        frames: int = 20,
        size: int = 64,
        batch_size: int = 64,
        full_batch: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if source not in ("toy_internet", "keypoint_files"):
            raise ValueError(f"source must be 'toy_internet' or 'keypoint_files', got {source!r}")
        if source == "keypoint_files" and root is None:
            raise ValueError("source 'keypoint_files' needs root (a dataset with keypoints2d files)")
        if min(num_train, frames, batch_size) < 1 or num_val < 0:
            raise ValueError("num_train, frames and batch_size must be >= 1, num_val >= 0")
        self.source, self.root, self.seed = source, root, seed
        self.num_train, self.num_val, self.frames, self.size = num_train, num_val, frames, size
        self.batch_size, self.full_batch, self.num_workers = batch_size, full_batch, num_workers
        self.train_set: Motion2DDataset | None = None
        self.val_set: Motion2DDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.source == "toy_internet":
            tr = toy_internet_sequences(self.seed, self.num_train, self.frames, self.size)
            self.train_set = Motion2DDataset(tr["x2d"], tr["conf"])
            if self.num_val:
                va = toy_internet_sequences(self.seed + 1, self.num_val, self.frames, self.size)
                self.val_set = Motion2DDataset(va["x2d"], va["conf"])
        else:
            data = sequences_from_keypoint_files(self.root, self.frames)
            n = data["x2d"].shape[0]
            nv = min(self.num_val, n // 5)
            g = torch.Generator().manual_seed(self.seed)
            perm = torch.randperm(n, generator=g)
            tr, va = perm[nv : nv + self.num_train], perm[:nv]
            self.train_set = Motion2DDataset(data["x2d"][tr], data["conf"][tr])
            self.val_set = Motion2DDataset(data["x2d"][va], data["conf"][va]) if nv else None

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        bs = len(self.train_set) if self.full_batch else self.batch_size
        return DataLoader(
            self.train_set, batch_size=bs, shuffle=not self.full_batch, drop_last=not self.full_batch,
            num_workers=self.num_workers,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None or self.full_batch:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)


class MultiView2DDataset(Dataset):
    """Stage-3 synthetic data: ``views2d (V, T, J, 2)`` with the virtual ring cameras ``R (V, 3, 3)``,
    ``t (V, 3)`` they were projected with (network intrinsics)."""

    def __init__(self, views2d: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> None:
        if views2d.ndim != 5 or views2d.shape[-1] != 2 or R.shape != (*views2d.shape[:2], 3, 3):
            raise ValueError(
                f"expected views2d (N, V, T, J, 2), R (N, V, 3, 3), t (N, V, 3); got {tuple(views2d.shape)}, "
                f"{tuple(R.shape)}, {tuple(t.shape)}"
            )
        self.views2d, self.R, self.t = views2d.float(), R.float(), t.float()

    @classmethod
    def load(cls, path: str | os.PathLike) -> MultiView2DDataset:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no synthetic multi-view data (stage 3 writes it: `make train-mvlift`)"
            )
        data = load_file(path)
        return cls(data["views2d"], data["R"], data["t"])

    def __len__(self) -> int:
        return self.views2d.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"views2d": self.views2d[i], "R": self.R[i], "t": self.t[i], "index": torch.tensor(i)}


class MultiView2DDataModule(L.LightningDataModule):
    """Stage 4: the synthetic multi-view 2D data of stage 3 (a safetensors file), a small validation split."""

    def __init__(
        self, path: Path = Path("runs/mvlift/synthetic.safetensors"), num_val: int = 16, batch_size: int = 32,
        seed: int = 0, num_workers: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        if batch_size < 1 or num_val < 0:
            raise ValueError("batch_size must be >= 1 and num_val >= 0")
        self.path, self.num_val, self.batch_size, self.seed = Path(path), num_val, batch_size, seed
        self.num_workers = num_workers
        self.train_set: MultiView2DDataset | None = None
        self.val_set: MultiView2DDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = MultiView2DDataset.load(self.path)
        n = len(full)
        nv = min(self.num_val, n // 5)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        tr, va = perm[nv:], perm[:nv]
        self.train_set = MultiView2DDataset(full.views2d[tr], full.R[tr], full.t[tr])
        self.val_set = MultiView2DDataset(full.views2d[va], full.R[va], full.t[va]) if nv else None

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        bs = min(self.batch_size, len(self.train_set))
        return DataLoader(
            self.train_set, batch_size=bs, shuffle=True, drop_last=True, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
