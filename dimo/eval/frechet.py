"""One Fréchet-distance base for FID, FVD and FID-VID.

Features are never stored: each set keeps float64 running sums ``n``, ``sum x`` and ``sum x x^T``
(torchmetrics states, sum-reduced across processes), so the result is independent of sample order and
of how samples are sharded over ranks. The distance

    d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2})

uses unbiased covariances (``n - 1``, as numpy ``np.cov`` and every reference implementation) and the
symmetric form ``tr((S_1 S_2)^{1/2}) = tr((A^T S_2 A)^{1/2})`` with ``S_1 = A A^T`` (Cholesky, or the
PSD square root when ``S_1`` is singular), computed with float64 symmetric eigenvalue solvers
(negative round-off eigenvalues clamped to 0); this is stable where ``scipy.linalg.sqrtm`` of the
non-symmetric product can return complex noise.

Reference statistics can be saved to / loaded from ``.npz`` (``mu``, ``sigma``, ``n``; the
``mu``/``sigma`` keys are the pytorch-fid layout) so a reference set is featurised once.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric


def sqrtm_psd(mat: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (float64)."""

    mat = mat.double()
    mat = (mat + mat.T) / 2
    evals, evecs = torch.linalg.eigh(mat)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> Tensor:
    """``tr((sigma1 @ sigma2)^{1/2})`` for symmetric PSD inputs, via a symmetric similar matrix.

    ``sigma1 @ sigma2`` has the eigenvalues of ``A^T sigma2 A`` for any ``sigma1 = A A^T``: the Cholesky
    factor when ``sigma1`` is positive definite (cheap), else the PSD square root (rank-deficient
    sets). Only eigenvalues of a symmetric matrix are then needed.
    """

    s1, s2 = sigma1.double(), sigma2.double()
    factor, info = torch.linalg.cholesky_ex((s1 + s1.T) / 2)
    if int(info) != 0:
        factor = sqrtm_psd(s1)
    inner = factor.T @ s2 @ factor
    inner = (inner + inner.T) / 2
    return torch.linalg.eigvalsh(inner).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64 scalar."""

    mu1, mu2, sigma1, sigma2 = mu1.double(), mu2.double(), sigma1.double(), sigma2.double()
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimension: {tuple(mu1.shape)} vs {tuple(mu2.shape)}")
    diff = mu1 - mu2
    return diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2)


def mean_cov(n: Tensor, total: Tensor, outer: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance from running sums (float64)."""

    n = n.double()
    mu = total / n
    cov = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return mu, (cov + cov.T) / 2


class FrechetMetric(Metric):
    """Fréchet distance between the feature distributions of generated and reference samples.

    Subclasses implement :meth:`features` (samples -> ``(N, D)`` features); this base owns the running
    statistics, the distributed reduction and the distance. ``update(generated, reference)`` takes one
    batch of each (either may be None); the base class's :meth:`features` is the identity, so
    ``FrechetMetric(D).update(gen_feats, ref_feats)`` scores precomputed ``(N, D)`` features.

    Args:
        feature_dim: D, the feature dimension.
        allow_rank_deficient: by default computing with fewer samples than ``D + 1`` in either set is
            an error (the covariance is singular and the number is not comparable to published ones);
            True computes anyway with a warning (smoke tests, tiny debug sets).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, feature_dim: int, allow_rank_deficient: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.allow_rank_deficient = allow_rank_deficient
        d = self.feature_dim
        for prefix in ("real", "fake"):
            self.add_state(f"{prefix}_n", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        # Loaded reference statistics (mu, sigma, n) are not metric states: they must not be summed
        # over ranks, and reset() keeps them.
        self._reference: tuple[Tensor, Tensor, int] | None = None

    # -- features -----------------------------------------------------------------------------
    def features(self, samples: Tensor) -> Tensor:
        """Samples -> ``(N, D)`` features. The base class takes features as they are."""

        return samples

    def update(self, generated: Tensor | None = None, reference: Tensor | None = None) -> None:
        if generated is not None:
            self._accumulate(self.features(generated), real=False)
        if reference is not None:
            if self._reference is not None:
                raise RuntimeError(
                    "reference statistics were loaded from a file; do not feed reference samples too"
                )
            self._accumulate(self.features(reference), real=True)

    def _accumulate(self, feats: Tensor, real: bool) -> None:
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim:
            raise ValueError(f"expected features (N, {self.feature_dim}), got {tuple(feats.shape)}")
        f = feats.detach().double()
        prefix = "real" if real else "fake"
        setattr(self, f"{prefix}_n", getattr(self, f"{prefix}_n") + f.shape[0])
        setattr(self, f"{prefix}_sum", getattr(self, f"{prefix}_sum") + f.sum(dim=0))
        setattr(self, f"{prefix}_outer", getattr(self, f"{prefix}_outer") + f.T @ f)

    # -- statistics ---------------------------------------------------------------------------
    def _check_count(self, n: float, which: str) -> None:
        if n < 2:
            raise ValueError(
                f"{type(self).__name__}: {which} set has {int(n)} samples; at least 2 are needed"
            )
        if n <= self.feature_dim:
            msg = (
                f"{type(self).__name__}: {which} set has {int(n)} samples but the features are "
                f"{self.feature_dim}-dimensional; the covariance is singular and the distance is not "
                "comparable to published numbers (use more samples than the feature dimension)"
            )
            if not self.allow_rank_deficient:
                raise ValueError(msg + "; pass allow_rank_deficient=True to compute it anyway")
            warnings.warn(msg, stacklevel=3)

    def fake_statistics(self) -> tuple[Tensor, Tensor, int]:
        self._check_count(float(self.fake_n), "generated")
        mu, cov = mean_cov(self.fake_n, self.fake_sum, self.fake_outer)
        return mu, cov, int(self.fake_n)

    def real_statistics(self) -> tuple[Tensor, Tensor, int]:
        if self._reference is not None:
            return self._reference
        self._check_count(float(self.real_n), "reference")
        mu, cov = mean_cov(self.real_n, self.real_sum, self.real_outer)
        return mu, cov, int(self.real_n)

    def compute(self) -> Tensor:
        mu_r, cov_r, _ = self.real_statistics()
        mu_f, cov_f, _ = self.fake_statistics()
        return frechet_distance(mu_f, cov_f, mu_r, cov_r)

    def save_reference(self, path: str | os.PathLike, **extra: str) -> None:
        """Write the reference statistics (``mu``, ``sigma``, ``n``, ``feature_dim``, ``extra``) to ``.npz``."""

        mu, cov, n = self.real_statistics()
        np.savez(
            Path(path),
            mu=mu.cpu().numpy(),
            sigma=cov.cpu().numpy(),
            n=np.int64(n),
            feature_dim=np.int64(self.feature_dim),
            **{k: np.str_(v) for k, v in extra.items()},
        )

    def load_reference(self, path: str | os.PathLike) -> None:
        """Use reference statistics from ``.npz`` (``mu``, ``sigma``; ``n`` optional) instead of samples."""

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"reference statistics file not found: {p}")
        with np.load(p) as data:
            mu = torch.from_numpy(np.asarray(data["mu"], dtype=np.float64))
            sigma = torch.from_numpy(np.asarray(data["sigma"], dtype=np.float64))
            n = int(data["n"]) if "n" in data else -1
        if mu.shape != (self.feature_dim,) or sigma.shape != (self.feature_dim, self.feature_dim):
            raise ValueError(f"{p}: statistics of shape {tuple(mu.shape)}, expected ({self.feature_dim},)")
        self._reference = (mu, sigma, n)
