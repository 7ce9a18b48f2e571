"""HVG samples: V views x T frames, pelvis-aligned with :mod:`dimo.geometry.alignment`.

For every chosen view the pelvis of the window's first frame is projected with that view's camera;
the largest window with the sample's aspect ratio that fits in the stored video is placed so the
pelvis lands at the image centre, and resized to ``(height, width)``. The same warp is used for all
T frames of a view (temporal alignment: the reference, view 0 frame 0, is aligned like its view),
so ``pelvis2d`` is exactly the centre at t = 0 and follows the body afterwards. Regions outside the
stored frame are black (0, i.e. -1 once converted). Cameras are those of the window's first frame
(static rigs: all frames).

The warp resamples in float; the aligned frames are then requantised to uint8 (rounded to nearest:
at most 1/255 from the float warp once mapped to [-1, 1]), like every pixel field of a sample
(``dimo.data.pixels.to_model_batch`` converts them after the transfer). Shards store these very bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dimo.data.manifest import ClipRecord, RecordError
from dimo.data.pixels import quantize
from dimo.data.spec import SampleSpec
from dimo.data.video import read_frames

__all__ = ["align_views"]


def _crop_size(src_h: int, src_w: int, out_h: int, out_w: int) -> tuple[int, int]:
    """Largest (h, w) with aspect out_h:out_w inside (src_h, src_w)."""

    if src_h * out_w <= src_w * out_h:
        return src_h, max(1, round(src_h * out_w / out_h))
    return max(1, round(src_w * out_h / out_w)), src_w


def align_views(
    record: ClipRecord,
    views: list[int],
    frames: list[int],
    joints3d: torch.Tensor,
    spec: SampleSpec,
) -> dict[str, Any]:
    """Build the HVG sample dict of ``docs/contracts.md`` (joints3d: (T, 55, 3) world)."""

    from dimo.geometry.alignment import apply_alignment, pelvis_alignment
    from dimo.geometry.cameras import project, relative_rotation

    if record.height is None or record.width is None:
        raise RecordError(f"{record.id}: HVG samples need the record's height and width")
    H, W = spec.height, spec.width
    Ks, Rs, ts, clips = [], [], [], []
    for v in views:
        K, R, t = record.views[v].cameras(record.num_frames)
        Ks.append(K[frames[0]])
        Rs.append(R[frames[0]])
        ts.append(t[frames[0]])
        clips.append(read_frames(record.path(record.views[v].video), frames))  # (T, Hs, Ws, 3) uint8
    src_h, src_w = clips[0].shape[1:3]
    if any(c.shape[1:3] != (src_h, src_w) for c in clips) or (src_h, src_w) != (record.height, record.width):
        raise RecordError(
            f"{record.id}: views differ in size from the record's {record.height}x{record.width}"
        )
    K = torch.from_numpy(np.stack(Ks)).float()  # (V, 3, 3)
    R = torch.from_numpy(np.stack(Rs)).float()
    t = torch.from_numpy(np.stack(ts)).float()  # (V, 3)
    video = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 255.0  # (V, T, 3, Hs, Ws)
    crop = _crop_size(src_h, src_w, H, W)
    try:
        al = pelvis_alignment(joints3d[0, 0], K, R, t, (src_h, src_w), crop_size=crop, out_size=(H, W))
    except ValueError as err:  # a subject behind a camera: camera-to-world extrinsics, a wrong sign...
        names = [record.views[v].name or f"views[{v}]" for v in views]
        raise RecordError(f"{record.id} (views {names}, frame {frames[0]}): {err}") from None
    # (V, T, 3, H, W) uint8: the float warp in [0, 1], rounded to the nearest level
    target = quantize(apply_alignment(video, al.affine, (H, W)).clamp(0, 1))
    pelvis = joints3d[:, 0][None].expand(len(views), -1, -1)  # (V, T, 3)
    pelvis2d, _ = project(pelvis, al.K, R, t)  # (V, T, 2)
    return {
        "target": target.contiguous(),
        "reference": target[0, 0].clone(),
        "K": al.K.float(),
        "R": R,
        "t": t,
        "rel_rot": relative_rotation(R),
        "joints3d": joints3d.float(),
        "pelvis2d": pelvis2d.float(),
        "source": record.source,
        "task": "hvg",
        "clip_id": record.id,
    }
