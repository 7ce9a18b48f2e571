"""Clips -> training samples (the dicts of ``docs/contracts.md``), with bad clips skipped and counted.

:class:`ClipDataset` is indexed by :class:`~dimo.data.mixture.SampleKey` (source, clip, task and a
per-sample seed chosen by the mixture sampler in the main process). The frame window, the views and
the augmentation are drawn from ``key.seed``, so a sample is the same whichever worker builds it.

A clip that fails to load (missing/truncated video, missing/corrupt motion, too few frames...) is
remembered as bad in that worker, logged once with its id and reason, and replaced by another clip
of the same source (drawn from the key's seed); the sample's ``_skipped`` field counts the
replacements so the DataModule can log them. The replacement order is a pure function of the key
(:meth:`ClipDataset._candidates`), never of what a worker happened to see before, so batches are the
same with any ``num_workers`` and after a resume. Three bookkeeping fields ride along with every
sample and are removed by the DataModule before the batch reaches the model: ``_draw`` (global batch
index in the stream, int), ``_skipped`` (int) and ``_bad`` (the ids of the bad clips met, ``;``-joined).

Pixels leave the dataset as **uint8** (``driving``, ``target``, ``reference``: same channels-first
layout as the model's floats, values 0..255), a quarter of the bytes of float32 between worker
processes and host to device. :func:`~dimo.data.pixels.to_model_batch` maps them to float32 in [-1, 1]
(:func:`frames_to_tensor`'s mapping, bit for bit); the DataModule calls it in
``on_after_batch_transfer``, i.e. on the device. Code that reads samples or batches without a Trainer
calls :func:`to_model_batch` itself; the LightningModules refuse uint8 pixels
(:func:`check_model_batch`) instead of training on 0..255.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from dimo.data.augment import AugmentConfig, DrivingAugment
from dimo.data.manifest import ClipRecord, MotionError, RecordError, load_motion
from dimo.data.mixture import SampleKey
from dimo.data.pixels import PIXEL_KEYS, check_model_batch, pixels_to_float, quantize, to_model_batch
from dimo.data.align import align_views
from dimo.data.spec import SampleSpec
from dimo.data.video import VideoError, adjust_intrinsics, read_frames, resize_crop_plan

__all__ = [
    "PIXEL_KEYS",
    "ClipDataset",
    "SampleSpec",
    "check_model_batch",
    "frames_to_tensor",
    "frames_to_uint8",
    "ineligible_reason",
    "pixels_to_float",
    "quantize",
    "to_model_batch",
    "usable_reason",
]

log = logging.getLogger(__name__)

MOTION_CACHE = 256  # motion files kept in memory per worker (a few hundred KB at toy scale)
# what a broken clip can raise while loading; ValueError/IndexError cover odd files PyAV/numpy reject
LOAD_ERRORS = (VideoError, MotionError, RecordError, OSError, EOFError, ValueError, IndexError)


def ineligible_reason(record: ClipRecord, spec: SampleSpec) -> str | None:
    """Why a sound record cannot serve this task (too few views, no cameras...), or ``None``.

    Not a defect of the data (an internet clip is not an HVG clip): such records are left out
    quietly, unlike the ones :func:`usable_reason` rejects.
    """

    if spec.task == "hvg":
        if len(record.views) < spec.num_views:
            return f"{len(record.views)} views < num_views={spec.num_views}"
        if not all(v.calibrated for v in record.views):
            return "HVG needs calibrated views (K, R, t)"
        if record.motion is None or record.motion.joints3d == "missing":
            return "HVG needs 3D joints"
    return None


def usable_reason(record: ClipRecord, spec: SampleSpec) -> str | None:
    """Why a record is broken for ``spec`` (cheap: no file is opened), or ``None``.

    Too short for the frame window, a video or the motion file missing.
    """

    if record.num_frames < spec.span:
        return f"too short: {record.num_frames} frames < {spec.span} needed ({spec.num_frames} x stride {spec.frame_stride})"
    missing = [str(record.path(v.video)) for v in record.views if not record.path(v.video).is_file()]
    if missing:
        return f"video file not found: {missing[0]}"
    if record.motion is not None and not record.path(record.motion.file).is_file():
        return f"motion file not found: {record.path(record.motion.file)}"
    return None


def frames_to_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, 3, H, W) (a view of the array: no copy)."""

    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [-1, 1]."""

    return pixels_to_float(frames_to_uint8(frames))


class ClipDataset(Dataset):
    """Builds 3DiMo or HVG samples from clip records; see the module docstring."""

    def __init__(
        self,
        pools: Mapping[str, Sequence[ClipRecord]],
        spec: SampleSpec,
        augment: AugmentConfig | None = None,
        max_retries: int = 8,
        latents: Any = None,
    ) -> None:
        self.pools = {s: list(recs) for s, recs in pools.items()}
        self.latents = latents  # a dimo.data.latent_cache.LatentCache: frozen encodings instead of targets
        self.spec = spec
        self.augment = DrivingAugment(augment) if augment is not None else None
        self.max_retries = max_retries
        self.bad: dict[tuple[str, int], str] = {}  # per process (worker): clips found broken
        self._warned: set[str] = set()
        self._motion_cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:  # informative only; the sampler decides what is drawn
        return sum(len(v) for v in self.pools.values())

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        if not isinstance(key, SampleKey):
            raise TypeError(f"ClipDataset is indexed by SampleKey, got {type(key).__name__}")
        if not self.pools.get(key.source):
            raise RuntimeError(f"no clips for source {key.source!r}")
        skipped, found = 0, []
        for source, index in self._candidates(key):
            if (source, index) not in self.bad:
                record = self.pools[source][index]
                task = key.task
                if task == "cross_view" and len(record.views) < 2:  # a fallback clip from a 1-view source
                    task = "reconstruction"
                try:
                    sample = self.build(record, task, np.random.default_rng(key.seed))
                except LOAD_ERRORS as err:
                    self.bad[(source, index)] = str(err)
                    log.warning("skipping clip %s (%s): %s", record.id, source, err)
                else:
                    sample["_draw"] = key.draw
                    sample["_skipped"] = skipped
                    sample["_bad"] = ";".join(found)
                    return sample
            skipped += 1
            found.append(self.pools[source][index].id)
        reasons = "; ".join(f"{self.pools[s][i].id}: {r}" for (s, i), r in list(self.bad.items())[:5])
        raise RuntimeError(f"could not build a {key.task} sample after {skipped} bad clips: {reasons}")

    def _candidates(self, key: SampleKey):
        """The clips tried for ``key``, in order: its own, then others of its source, then any source.

        A pure function of the key and the pools (never of which clips this process already found
        bad), so a sample is the same in every worker, with any number of workers and after a
        resume; known-bad clips are skipped from the cache but still counted.
        """

        rng = np.random.default_rng([key.seed, 1])
        budget = self.max_retries + 1
        yield key.source, key.index
        budget -= 1
        n = len(self.pools[key.source])
        same = rng.choice(n, size=min(n, budget + 1), replace=False) if budget > 0 else []
        for i in same:
            if budget <= 0:
                return
            if int(i) != key.index:
                budget -= 1
                yield key.source, int(i)
        others = [(s, len(pool)) for s, pool in self.pools.items() if s != key.source and pool]
        total = sum(c for _, c in others)
        if budget <= 0 or total == 0:
            return
        if key.source not in self._warned:
            self._warned.add(key.source)
            log.warning(
                "every tried clip of source %r failed to load; drawing from the other sources", key.source
            )
        for flat in rng.choice(total, size=min(total, budget), replace=False):
            flat = int(flat)
            for s, c in others:
                if flat < c:
                    yield s, flat
                    break
                flat -= c

    # ---- building --------------------------------------------------------------------------------
    def _window(self, record: ClipRecord, rng: np.random.Generator) -> list[int]:
        spec = self.spec
        if record.num_frames < spec.span:
            raise RecordError(f"{record.id}: {record.num_frames} frames < {spec.span} needed")
        if self.latents is not None:  # one of the cached windows (all of them: the file reader's draw)
            starts = self.latents.starts(record)
            if not starts:
                raise RecordError(f"{record.id}: no window in the latent cache")
            start = starts[int(rng.integers(0, len(starts)))]
            return list(range(start, start + spec.span, spec.frame_stride))
        start = int(rng.integers(0, record.num_frames - spec.span + 1))
        return list(range(start, start + spec.span, spec.frame_stride))

    def _read(self, record: ClipRecord, view: int, frames: list[int]) -> np.ndarray:
        out = read_frames(
            record.path(record.views[view].video), frames, (self.spec.height, self.spec.width), self.spec.crop
        )
        return out  # (T, H, W, 3) uint8

    def _cameras(self, record: ClipRecord, view: int, frames: list[int]) -> tuple[np.ndarray, ...] | None:
        """K (T,3,3) adjusted to the sample's resize/crop, R (T,3,3), t (T,3); None if uncalibrated."""

        v = record.views[view]
        if not v.calibrated:
            return None
        if record.height is None or record.width is None:
            raise RecordError(f"{record.id}: calibrated views need the record's height and width")
        K, R, t = v.cameras(record.num_frames)
        plan = resize_crop_plan(
            record.height, record.width, self.spec.height, self.spec.width, self.spec.crop
        )
        return adjust_intrinsics(K[frames], record.height, record.width, plan), R[frames], t[frames]

    def _keypoint_joints(
        self, record: ClipRecord, view: int, frames: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SMPL-X ``joints2d (T, 55, 2)`` in sample pixels and ``valid (T, 55)`` from the view's keypoint file."""

        from dimo.data.keypoints import load_keypoints2d
        from dimo.pose.joints import wholebody_to_smplx

        if record.height is None or record.width is None:
            raise RecordError(f"{record.id}: keypoints2d need the record's height and width")
        kp, sc = load_keypoints2d(record.path(record.views[view].keypoints2d), record.num_frames)
        uv, _, valid = wholebody_to_smplx(kp[frames], sc[frames])
        plan = resize_crop_plan(
            record.height, record.width, self.spec.height, self.spec.width, self.spec.crop
        )
        scale = torch.tensor([plan.scaled_w / record.width, plan.scaled_h / record.height])
        uv = uv * scale - torch.tensor([float(plan.left), float(plan.top)])
        return uv.float(), valid

    def build(self, record: ClipRecord, task: str, rng: np.random.Generator) -> dict[str, Any]:
        if task == "hvg":
            return self._build_hvg(record, rng)
        return self._build_3dimo(record, task, rng)

    def _motion(self, record: ClipRecord) -> dict[str, np.ndarray] | None:
        """The clip's motion arrays, cached per process (motion files are small; npz parsing is not free)."""

        if record.motion is None:
            return None
        key = str(record.path(record.motion.file))
        if key in self._motion_cache:
            self._motion_cache.move_to_end(key)
            return self._motion_cache[key]
        motion = load_motion(record)
        self._motion_cache[key] = motion
        if len(self._motion_cache) > MOTION_CACHE:
            self._motion_cache.popitem(last=False)
        return motion

    def _build_3dimo(self, record: ClipRecord, task: str, rng: np.random.Generator) -> dict[str, Any]:
        from dimo.geometry.cameras import project

        T = self.spec.num_frames
        frames = self._window(record, rng)
        n_views = len(record.views)
        if task == "cross_view":
            if n_views < 2:
                raise RecordError(f"{record.id}: cross-view sample needs 2+ views, clip has {n_views}")
            drive_view, target_view = (int(v) for v in rng.choice(n_views, size=2, replace=False))
        elif task == "reconstruction":
            drive_view = target_view = int(rng.integers(n_views))
        else:
            raise ValueError(f"unknown 3DiMo task {task!r}")
        aug_seed = int(rng.integers(0, 2**62))
        if self.latents is not None:  # the target is its cached latents: only the driving frames are read
            drive_u8 = self._read(record, drive_view, frames)
            target_u8 = None
        else:
            target_u8 = self._read(record, target_view, frames)
            drive_u8 = target_u8 if drive_view == target_view else self._read(record, drive_view, frames)
        motion = self._motion(record)

        body_pose = torch.zeros(T, 21, 3)
        hand_pose = torch.zeros(T, 30, 3)
        body_valid = torch.zeros(T, dtype=torch.bool)
        hand_valid = torch.zeros(T, 2, dtype=torch.bool)
        joints2d = torch.zeros(T, 55, 2)
        joints2d_valid = torch.zeros(T, 55, dtype=torch.bool)
        if motion is not None:
            flags = record.motion
            if flags.body != "missing":
                body_pose = torch.from_numpy(motion["body_pose"][frames])
                body_valid = torch.from_numpy(
                    motion.get("body_valid", np.ones(record.num_frames, bool))[frames]
                )
            if flags.hands != "missing":
                hand_pose = torch.from_numpy(motion["hand_pose"][frames])
                hv = motion.get("hand_valid", np.ones((record.num_frames, 2), bool))
                hand_valid = torch.from_numpy(hv[frames])
            cams = self._cameras(record, drive_view, frames)
            if flags.joints3d != "missing" and cams is not None:
                K, R, t = (torch.from_numpy(np.ascontiguousarray(a)).float() for a in cams)
                uv, z = project(torch.from_numpy(motion["joints"][frames]), K, R, t)  # (T, 55, 2), (T, 55)
                joints2d = uv.float()
                joints2d_valid = z > 1e-6
        if not joints2d_valid.any() and record.views[drive_view].keypoints2d is not None:
            # no cameras or no 3D joints: the view's detected 2D keypoints place the hand crops
            joints2d, joints2d_valid = self._keypoint_joints(record, drive_view, frames)
        # the target view's ground-truth 3D joints in its camera frame and its intrinsics (pixels of the
        # sample): the reference of the pose metrics on generated clips (dimo.callbacks.PoseEvaluation)
        target_joints3d = torch.zeros(T, 55, 3)
        target_K = torch.eye(3).expand(T, 3, 3).clone()
        target_joints3d_valid = False
        if motion is not None and record.motion.joints3d == "gt":
            cams = self._cameras(record, target_view, frames)
            if cams is not None:
                K, R, t = (torch.from_numpy(np.ascontiguousarray(a)).double() for a in cams)
                world = torch.from_numpy(np.asarray(motion["joints"][frames])).double()  # (T, 55, 3)
                target_joints3d = (world @ R.transpose(-1, -2) + t[:, None]).float()
                target_K, target_joints3d_valid = K.float(), True

        driving = frames_to_uint8(drive_u8)  # (T, 3, H, W) uint8
        if self.augment is not None and self.augment.active:
            # kornia works in float: augment in [0, 1] here (per-sample seed, in the worker), then
            # requantise to uint8 by rounding to nearest (quantize): at most 1/255 from the float result
            driving = quantize(self.augment((frames_to_tensor(drive_u8) + 1) / 2, generator_seed=aug_seed))
        prompt = record.views[target_view].camera_prompt
        if record.caption:
            prompt = f"{prompt} {record.caption}".strip()
        if self.latents is not None:
            x0, ref = self.latents.latent(record.id, target_view, frames[0])
            pixels = {"x0": x0, "ref_latent": ref, "text": self.latents.text(prompt)}  # (C,F,h,w) (C,1,h,w) (L,D)
        else:
            target = frames_to_uint8(target_u8)  # (T, 3, H, W) uint8
            pixels = {"target": target, "reference": target[0].clone()}
        return {
            "driving": driving,
            **pixels,
            "prompt": prompt,
            "body_pose": body_pose.float(),
            "hand_pose": hand_pose.float(),
            "body_valid": body_valid,
            "hand_valid": hand_valid,
            # label kinds (manifest flags): pseudo labels (estimates, `data label`) vs ground truth
            "body_pseudo": torch.tensor(motion is not None and record.motion.body == "pseudo"),
            "hand_pseudo": torch.tensor(motion is not None and record.motion.hands == "pseudo"),
            "joints2d": joints2d,
            "joints2d_valid": joints2d_valid,
            "target_joints3d": target_joints3d,
            "target_K": target_K,
            "target_joints3d_valid": torch.tensor(target_joints3d_valid),
            "source": record.source,
            "task": task,
            "clip_id": record.id,
            # identifies the target pixels exactly (frozen-VAE latent caches key on it)
            "target_key": f"{record.id}|v{target_view}|f{','.join(str(int(f)) for f in frames)}"
            f"|{self.spec.height}x{self.spec.width}|{self.spec.crop}",
        }

    def _build_hvg(self, record: ClipRecord, rng: np.random.Generator) -> dict[str, Any]:
        spec = self.spec
        frames = self._window(record, rng)
        if len(record.views) < spec.num_views:
            raise RecordError(f"{record.id}: {len(record.views)} views < num_views={spec.num_views}")
        views = [int(v) for v in rng.choice(len(record.views), size=spec.num_views, replace=False)]
        motion = self._motion(record)
        if motion is None or "joints" not in motion:
            raise RecordError(f"{record.id}: HVG samples need 3D joints in the motion file")
        joints3d = torch.from_numpy(motion["joints"][frames]).float()  # (T, 55, 3)
        return align_views(record, views, frames, joints3d, spec)
