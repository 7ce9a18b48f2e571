"""Free3D (arXiv 2511.11368) at toy scale: a Motion-Lifting Residual-Quantised VAE (ML-RQ-VAE).

A 2D motion sequence (the 16 body joints of :data:`dimo.pose.joints.TOY_BODY_SMPLX`, normalised camera
coordinates ``K^-1 [u, v, 1]``) is encoded per frame by a temporal convolution stack, quantised by a
residual vector quantiser, and decoded to a root-relative 3D motion in the input camera's axes. No 3D
label is used anywhere: the losses (:mod:`dimo.pose.free3d_module`) are 2D reprojection, view
consistency under random virtual views, orientation coherence and physical plausibility, all
functions of the decoded motion and the input 2D.

Two conventions make the decoded motion metric without 3D labels (documented in docs/pose.md):

* **scale**: the decoded pose is rescaled per sequence so that its mean limb length (the chain of
  :data:`dimo.pose.lifting._CHAIN`) equals the neutral toy skeleton's: the same anthropometric prior
  as the fixed-depth and SMPLify-like baselines (2D alone cannot tell a small near person from a tall
  far one);
* **translation**: the root (mid-hip) position per frame is the confidence-weighted least-squares
  solution of the perspective equations ``x_j (Z_j + t_z) = X_j + t_x`` (and y), linear in ``t``
  (the camera-translation solve of HMR-style methods), with a weak ridge towards 3 m in front of the
  camera so that frames with no valid joint stay defined.

Residual quantisation is ``transformers``' ``DacResidualVectorQuantizer`` (SoundStream/DAC RVQ with
factorised, l2-normalised codes, straight-through gradients, commitment and codebook losses): no
hand-written quantiser; ``vector-quantize-pytorch`` is not installed here.

Inference: :class:`Free3DLifter` loads a folder (``config.json`` + ``model.safetensors``, written by
:meth:`Free3DNet.save_pretrained`) and maps SMPL-X 2D joints ``(T, 55, 2)`` + confidences + intrinsics to
camera-space joints ``(T, 55, 3)`` like the baselines of :mod:`dimo.pose.lifting` (joints without a 2D
input channel sit at the mid-hip).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dimo.pose.joints import TOY_BODY_SMPLX

__all__ = [
    "BODY",
    "BONES",
    "PRESETS",
    "Free3DConfig",
    "Free3DError",
    "Free3DLifter",
    "Free3DNet",
    "chain_length",
    "normalised_coords",
    "project_normalised",
    "solve_translation",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

BODY: tuple[int, ...] = TOY_BODY_SMPLX  # SMPL-X ids of the 16 input/output joints, in this order
_IDX = {j: i for i, j in enumerate(BODY)}
# local indices of named joints
L_HIP, R_HIP = _IDX[1], _IDX[2]
L_KNEE, R_KNEE = _IDX[4], _IDX[5]
L_ANKLE, R_ANKLE = _IDX[7], _IDX[8]
L_FOOT, R_FOOT = _IDX[10], _IDX[11]
L_SHOULDER, R_SHOULDER = _IDX[16], _IDX[17]
L_ELBOW, R_ELBOW = _IDX[18], _IDX[19]
L_WRIST, R_WRIST = _IDX[20], _IDX[21]
L_EYE, R_EYE = _IDX[23], _IDX[24]
# rigid segments of the 16-joint set (local indices): limbs, feet, hip and shoulder widths, torso sides, eyes
BONES: tuple[tuple[int, int], ...] = (
    (L_HIP, L_KNEE), (L_KNEE, L_ANKLE), (L_ANKLE, L_FOOT),
    (R_HIP, R_KNEE), (R_KNEE, R_ANKLE), (R_ANKLE, R_FOOT),
    (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST),
    (L_HIP, R_HIP), (L_SHOULDER, R_SHOULDER), (L_HIP, L_SHOULDER), (R_HIP, R_SHOULDER), (L_EYE, R_EYE),
)  # fmt: skip
# left/right pairs of BONES (indices into BONES) for the symmetry term
SYMMETRIC: tuple[tuple[int, int], ...] = ((0, 3), (1, 4), (2, 5), (6, 8), (7, 9), (12, 13))
# the limb chain of the baselines' scale (dimo.pose.lifting._CHAIN), local indices
_CHAIN = (
    (L_HIP, L_KNEE), (L_KNEE, L_ANKLE), (R_HIP, R_KNEE), (R_KNEE, R_ANKLE),
    (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST),
    (L_SHOULDER, L_HIP), (R_SHOULDER, R_HIP),
)  # fmt: skip


class Free3DError(RuntimeError):
    """A Free3D folder is missing or inconsistent."""


@dataclass(frozen=True)
class Free3DConfig:
    hidden: int = 128  # temporal conv channels
    depth: int = 3  # residual temporal conv blocks in the encoder and in the decoder
    kernel: int = 5  # temporal kernel (odd; any sequence length >= 1 works)
    latent: int = 64  # RVQ input/output width
    codebook_size: int = 256
    codebook_dim: int = 8  # factorised code width (DAC)
    num_quantizers: int = 4
    num_joints: int = len(BODY)

    def __post_init__(self) -> None:
        if self.kernel % 2 == 0 or self.kernel < 1:
            raise ValueError(f"kernel must be odd and >= 1, got {self.kernel}")
        if min(self.hidden, self.depth, self.latent, self.codebook_size, self.codebook_dim) < 1:
            raise ValueError("hidden, depth, latent, codebook_size and codebook_dim must be >= 1")
        if self.num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {self.num_quantizers}")
        if self.num_joints != len(BODY):
            raise ValueError(f"num_joints must be {len(BODY)} (dimo.pose.joints.TOY_BODY_SMPLX)")


PRESETS: dict[str, Free3DConfig] = {
    "tiny": Free3DConfig(hidden=32, depth=1, latent=16, codebook_size=32, num_quantizers=2),
    "toy": Free3DConfig(),
}


# ---- geometry (no learning) ----------------------------------------------------------------------


def normalised_coords(uv: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pixels ``(..., J, 2)`` and intrinsics ``(..., 3, 3)`` -> normalised coordinates ``K^-1 [u, v, 1]`` ``(..., J, 2)``."""

    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy, s = K[..., 0, 2, None], K[..., 1, 2, None], K[..., 0, 1, None]
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - s * y) / fx
    return torch.stack([x, y], -1)


def project_normalised(X: torch.Tensor, min_depth: float = 0.1) -> torch.Tensor:
    """Camera points ``(..., J, 3)`` -> normalised image coordinates ``(..., J, 2)`` (depth clamped)."""

    return X[..., :2] / X[..., 2:3].clamp_min(min_depth)


def chain_length(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean length of the limb chain per frame ``(...)`` for 16-joint ``x (..., 16, D)`` (NaN where no segment is valid)."""

    a = torch.tensor([c[0] for c in _CHAIN], device=x.device)
    b = torch.tensor([c[1] for c in _CHAIN], device=x.device)
    seg = (x[..., a, :] - x[..., b, :]).norm(dim=-1)
    if valid is None:
        return seg.mean(-1)
    ok = (valid[..., a] & valid[..., b]).to(x.dtype)
    return (seg * ok).sum(-1) / ok.sum(-1)


def rest_chain_length() -> float:
    """The neutral toy skeleton's mean limb-chain length (metres), the scale prior."""

    from dimo.geometry.skeleton import rest_joints

    return float(chain_length(rest_joints()[list(BODY)].double()))


def solve_translation(
    pose: torch.Tensor, xn: torch.Tensor, conf: torch.Tensor, ridge: float = 1e-4, depth0: float = 3.0
) -> torch.Tensor:
    """Root translation ``(..., 3)`` placing root-relative ``pose (..., J, 3)`` onto normalised 2D ``xn (..., J, 2)``.

    Weighted linear least squares of ``t_x - x_j t_z = x_j Z_j - X_j`` and ``t_y - y_j t_z = y_j Z_j - Y_j``
    (weights ``conf (..., J)``) plus ``ridge * |t - (0, 0, depth0)|^2``; differentiable.
    """

    w = conf.to(pose.dtype)
    x, y = xn[..., 0], xn[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    # rows (..., 2J, 3) and right-hand sides (..., 2J)
    A = torch.cat([torch.stack([ones, zeros, -x], -1), torch.stack([zeros, ones, -y], -1)], -2)
    b = torch.cat([x * pose[..., 2] - pose[..., 0], y * pose[..., 2] - pose[..., 1]], -1)
    ww = torch.cat([w, w], -1)
    AtA = (A * ww[..., None]).transpose(-1, -2) @ A  # (..., 3, 3)
    Atb = ((A * ww[..., None]) * b[..., None]).sum(-2)  # (..., 3)
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
    prior = torch.tensor([0.0, 0.0, depth0], dtype=pose.dtype, device=pose.device)
    return torch.linalg.solve(AtA + ridge * eye, Atb + ridge * prior)


def root_of(x: torch.Tensor) -> torch.Tensor:
    """Mid-hip ``(..., 1, D)`` of 16-joint ``x (..., 16, D)``."""

    return 0.5 * (x[..., L_HIP : L_HIP + 1, :] + x[..., R_HIP : R_HIP + 1, :])


# ---- the network ---------------------------------------------------------------------------------


class _TemporalBlock(nn.Module):
    """Pre-norm residual temporal convolution: (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, padding_mode="replicate")
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(self.norm(x))))


class Free3DNet(nn.Module):
    """ML-RQ-VAE: normalised 2D ``(B, T, 16, 2)`` + confidence ``(B, T, 16)`` -> root-relative 3D ``(B, T, 16, 3)``.

    :meth:`forward` returns ``{"pose": (B, T, 16, 3) metres, root-relative, scale-fixed; "full": the
    posed skeleton (B, T, 55, 3), same root and scale;
    "codes": (B, Q, T) RVQ indices; "commitment", "codebook": scalar RVQ losses}``.
    """

    def __init__(self, cfg: Free3DConfig = Free3DConfig()) -> None:
        super().__init__()
        from transformers import DacConfig
        from transformers.models.dac.modeling_dac import DacResidualVectorQuantizer

        self.cfg = cfg
        J, H = cfg.num_joints, cfg.hidden
        self.inp = nn.Linear(J * 3 + 2, H)
        self.encoder = nn.Sequential(*[_TemporalBlock(H, cfg.kernel) for _ in range(cfg.depth)])
        self.to_latent = nn.Conv1d(H, cfg.latent, 1)
        # quantizer_dropout 0: every code level is used in training too (no bitrate scalability needed)
        self.rvq = DacResidualVectorQuantizer(
            DacConfig(
                hidden_size=cfg.latent,
                codebook_size=cfg.codebook_size,
                codebook_dim=cfg.codebook_dim,
                n_codebooks=cfg.num_quantizers,
                quantizer_dropout=0.0,
            )
        )
        self.from_latent = nn.Conv1d(cfg.latent, H, 1)
        self.decoder = nn.Sequential(*[_TemporalBlock(H, cfg.kernel) for _ in range(cfg.depth)])
        self.out_rot = nn.Linear(H, 22 * 6)
        self.out_offset = nn.Linear(H, J * 3)
        for layer in (self.out_rot, self.out_offset):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        from dimo.geometry.rotations import axis_angle_to_matrix
        from dimo.geometry.skeleton import rest_joints

        self.register_buffer("rest_chain", torch.tensor(rest_chain_length()), persistent=False)
        self.register_buffer("rest", rest_joints(), persistent=False)
        self.register_buffer("identity6d", torch.tensor([1.0, 0, 0, 0, 1, 0]), persistent=False)
        # the toy subject faces +z with y up; pi about x turns it upright in an OpenCV camera (y down),
        # facing the camera (-z), its left on the image's right
        facing = axis_angle_to_matrix(torch.tensor([torch.pi, 0.0, 0.0]))
        self.register_buffer("facing", facing, persistent=False)

    @staticmethod
    def features(xn: torch.Tensor, conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale- and position-free input ``(B, T, 16*3 + 2)`` and the 2D scale ``(B,)``.

        Joints are centred on the frame's 2D mid-hip (the valid joints' mean where a hip is missing) and
        divided by the sequence's median 2D limb-chain length; the mid-hip's normalised position (its
        viewing ray) is appended. Invalid joints are zero with confidence 0.
        """

        valid = conf > 0
        w = conf.clamp(0, 1)
        hips_ok = valid[..., L_HIP] & valid[..., R_HIP]
        mean_valid = (xn * w[..., None]).sum(-2) / w.sum(-1, keepdim=True).clamp_min(1e-6)
        center = torch.where(hips_ok[..., None], root_of(xn)[..., 0, :], mean_valid)  # (B, T, 2)
        length = chain_length(xn, valid)  # (B, T)
        length = torch.where(torch.isfinite(length), length, torch.full_like(length, float("nan")))
        scale = torch.nanmedian(length, dim=-1).values  # (B,)
        scale = torch.where(torch.isfinite(scale) & (scale > 1e-6), scale, torch.full_like(scale, 0.1))
        rel = (xn - center[..., None, :]) / scale[:, None, None, None] * w[..., None]
        B, T = xn.shape[:2]
        return torch.cat([rel.reshape(B, T, -1), w, center], -1), scale

    def encode(self, xn: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
        """-> continuous latents ``(B, latent, T)``."""

        feats, _ = self.features(xn, conf)
        h = self.inp(feats).transpose(1, 2)  # (B, H, T)
        return self.to_latent(self.encoder(h))

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantised latents ``(B, latent, T)`` -> root-relative, scale-fixed 16-joint pose ``(B, T, 16, 3)``
        and the whole posed skeleton ``(B, T, 55, 3)`` (same root and scale; hands at rest).

        The decoder predicts the global orientation and the 21 body rotations (6D, identity at zero
        output; the global one relative to "facing the camera") of the neutral toy skeleton, posed by
        the project's FK, plus a zero-initialised free offset per output joint: the skeleton is the
        inductive bias (as SMPLify's neutral body model), the offsets let the bone-length and
        proportion terms act on what is actually output.
        """

        from dimo.geometry.rotations import rot6d_to_matrix
        from dimo.geometry.skeleton import forward_kinematics

        h = self.decoder(self.from_latent(z)).transpose(1, 2)  # (B, T, H)
        B, T = h.shape[:2]
        rot6d = self.out_rot(h).reshape(B, T, 22, 6) + self.identity6d
        rot = rot6d_to_matrix(rot6d)  # (B, T, 22, 3, 3)
        rot = torch.cat([rot[..., :1, :, :] @ self.facing, rot[..., 1:, :, :]], -3)
        eye = torch.eye(3, dtype=h.dtype, device=h.device).expand(B, T, 33, 3, 3)
        full = forward_kinematics(torch.cat([rot, eye], -3), self.rest.to(h.dtype))  # (B, T, 55, 3)
        offsets = self.out_offset(h).reshape(B, T, self.cfg.num_joints, 3)
        pose = full[..., list(BODY), :] + offsets
        root = root_of(pose)
        pose, full = pose - root, full - root
        # scale prior: the sequence's mean limb chain equals the neutral skeleton's
        scale = (self.rest_chain / chain_length(pose).mean(-1).clamp_min(1e-6))[
            :, None, None, None
        ]  # (B,1,1,1)
        return pose * scale, full * scale

    @torch.no_grad()
    def restart_codes(
        self,
        xn: torch.Tensor,
        conf: torch.Tensor,
        generator: torch.Generator | None = None,
        all_codes: bool = False,
    ) -> list[int]:
        """Replace unused codes of every RVQ level by randomly drawn latents of this batch (all codes with
        ``all_codes``: data-dependent initialisation); returns the number replaced per level.

        Dead-code restart (SoundStream / Jukebox codebook expiry) is not part of ``transformers``' DAC
        quantiser and without it the codebooks collapse here (measured: one code per level used after
        150 steps); it is a few lines on top of the library's quantiser, so it is written here.
        """

        residual = self.encode(xn, conf)  # (B, latent, T)
        replaced = []
        for vq in self.rvq.quantizers:
            proj = vq.in_proj(residual)  # (B, cd, T)
            flat = proj.permute(0, 2, 1).reshape(-1, proj.shape[1])  # (N, cd)
            _, idx = vq.decode_latents(proj)
            counts = torch.bincount(idx.flatten(), minlength=vq.codebook.num_embeddings)
            dead = (
                torch.arange(counts.numel(), device=counts.device)
                if all_codes
                else (counts == 0).nonzero()[:, 0]
            )
            if dead.numel():
                pick = torch.randint(flat.shape[0], (dead.numel(),), generator=generator).to(flat.device)
                vq.codebook.weight.data[dead] = flat[pick]
            replaced.append(int(dead.numel()))
            q, _ = vq.decode_latents(proj)
            residual = residual - vq.out_proj(q)
        return replaced

    def forward(self, xn: torch.Tensor, conf: torch.Tensor) -> dict[str, torch.Tensor]:
        if xn.ndim != 4 or xn.shape[-2:] != (self.cfg.num_joints, 2) or conf.shape != xn.shape[:-1]:
            raise ValueError(
                f"expected xn (B, T, {self.cfg.num_joints}, 2) and conf (B, T, {self.cfg.num_joints}), "
                f"got {tuple(xn.shape)} and {tuple(conf.shape)}"
            )
        z = self.encode(xn, conf)
        q, codes, _, commitment, codebook = self.rvq(z)
        pose, full = self.decode(q)
        return {
            "pose": pose,
            "full": full,
            "codes": codes,
            "commitment": commitment.mean(),
            "codebook": codebook.mean(),
        }

    # ---- folders ----------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME))
        cfg = {"model_type": "dimo_free3d", **asdict(self.cfg), **(extra or {})}
        (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=1) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> Free3DNet:
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise Free3DError(
                    f"{folder / name}: missing (a Free3D folder holds {CONFIG_NAME} + {WEIGHTS_NAME}; "
                    "build it with `make train-free3d`)"
                )
        try:
            raw = json.loads((folder / CONFIG_NAME).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise Free3DError(f"{folder / CONFIG_NAME}: unreadable ({err})") from None
        if raw.get("model_type") != "dimo_free3d":
            raise Free3DError(f"{folder / CONFIG_NAME}: model_type must be 'dimo_free3d'")
        names = {f.name for f in fields(Free3DConfig)}
        net = cls(Free3DConfig(**{k: v for k, v in raw.items() if k in names}))
        net.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
        return net


class Free3DLifter:
    """A trained :class:`Free3DNet` as a lifting method: ``(uv (T, 55, 2), conf (T, 55), K (T, 3, 3)) -> (T, 55, 3)``.

    Camera-space joints in metres (OpenCV camera): the 16 body joints of :data:`BODY` as decoded (skeleton +
    offsets), every other joint from the decoded skeleton (hands at rest).
    """

    def __init__(self, net: Free3DNet) -> None:
        self.net = net.eval()

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> Free3DLifter:
        return cls(Free3DNet.from_pretrained(folder))

    @torch.no_grad()
    def lift16(
        self, uv: torch.Tensor, conf: torch.Tensor, K: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SMPL-X-indexed inputs -> camera-space 16-joint motion ``(T, 16, 3)`` and the posed skeleton ``(T, 55, 3)``."""

        ids = list(BODY)
        p = next(self.net.parameters())
        xn = normalised_coords(uv[:, ids].float(), K.float()).to(p.device)
        c = conf[:, ids].float().clamp(0, 1).to(p.device)
        out = self.net(xn[None], c[None])
        pose = out["pose"][0]  # (T, 16, 3)
        t = solve_translation(pose.double(), xn.double(), c.double()).float()  # (T, 3)
        return (pose + t[:, None]).cpu(), (out["full"][0] + t[:, None]).cpu()

    def __call__(self, uv: torch.Tensor, conf: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        if (
            uv.ndim != 3
            or uv.shape[1:] != (55, 2)
            or conf.shape != uv.shape[:2]
            or K.shape != (uv.shape[0], 3, 3)
        ):
            raise ValueError(
                f"expected uv (T, 55, 2), conf (T, 55), K (T, 3, 3), got {tuple(uv.shape)}, "
                f"{tuple(conf.shape)}, {tuple(K.shape)}"
            )
        joints16, full = self.lift16(uv, conf, K)
        full[:, list(BODY)] = joints16
        return full
