"""PIL bicubic resizing of 8-bit frames in float mode: the clean-fid / DisCo resizer.

clean-fid (``cleanfid/resize.py``, ``make_resizer("PIL", quantize_after=False, "bicubic", size)``, release
0.1.35) resizes each channel of a uint8 image separately as a 32-bit float PIL image (mode ``"F"``) with
PIL's bicubic filter (a = -0.5, support widened when downsampling, i.e. antialiased), clips to 0..255 and
keeps floats (no re-quantisation). DisCo vendors a copy of that file (``tool/metrics/resize.py``, unchanged
from commit 4772790 to 6190108) that does *not* clip: bicubic overshoot beyond 0..255 is kept.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def pil_bicubic_resize(frames_uint8: Tensor, size: tuple[int, int], clip: bool) -> Tensor:
    """``(N, 3, H, W)`` values 0..255 -> ``(N, 3, size[0], size[1])`` float32 via PIL float-mode bicubic.

    ``size`` is ``(height, width)``; ``clip`` clamps to 0..255 (clean-fid) or not (DisCo's copy).
    """

    h, w = size
    arr = frames_uint8.detach().to("cpu", torch.float32).numpy()
    out = np.empty((arr.shape[0], arr.shape[1], h, w), dtype=np.float32)
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[i, c])  # float32 -> PIL mode "F"
            img = img.resize((w, h), resample=Image.BICUBIC)
            out[i, c] = np.asarray(img)
    if clip:
        np.clip(out, 0, 255, out=out)
    return torch.from_numpy(out).to(frames_uint8.device)
