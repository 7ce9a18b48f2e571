"""Fréchet base: closed forms, order invariance, running sums vs numpy, statistics files, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from dimo.eval.frechet import FrechetMetric, frechet_distance, sqrtm_psd


def _numpy_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_identical_sets_give_zero():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(200, 8)))
    m = FrechetMetric(8)
    m.update(x, x)
    assert abs(m.compute().item()) < 1e-9


def test_closed_form_gaussians():
    # Diagonal covariances commute: d = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 0.5])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # Non-commuting full covariances against scipy's sqrtm on the same matrices.
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = A @ A.T + 0.1 * np.eye(5), B @ B.T + 0.1 * np.eye(5)
    ref = 1.0 + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(
        torch.zeros(5), torch.from_numpy(s1), torch.full((5,), 1 / np.sqrt(5)), torch.from_numpy(s2)
    )
    assert got.item() == pytest.approx(ref, rel=1e-6)
    root = sqrtm_psd(torch.from_numpy(s1))
    assert torch.allclose(root @ root, torch.from_numpy(s1), atol=1e-10)


def test_running_sums_match_numpy_and_order():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(120, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(90, 6)) * 2 + 0.5
    ref = _numpy_fd(a, b)
    m1 = FrechetMetric(6)
    for chunk in np.array_split(a, 7):
        m1.update(torch.from_numpy(chunk), None)
    m1.update(None, torch.from_numpy(b))
    m2 = FrechetMetric(6)
    perm = rng.permutation(len(a))
    m2.update(torch.from_numpy(a[perm]).float(), torch.from_numpy(b[::-1].copy()).float())
    assert m1.compute().item() == pytest.approx(ref, rel=1e-9)
    assert m2.compute().item() == pytest.approx(ref, rel=1e-5)  # float32 inputs, float64 sums


def test_too_few_samples_is_a_loud_error():
    m = FrechetMetric(16)
    m.update(torch.randn(10, 16), torch.randn(40, 16))
    with pytest.raises(ValueError, match="16-dimensional"):
        m.compute()
    lenient = FrechetMetric(16, allow_rank_deficient=True)
    lenient.update(torch.randn(10, 16), torch.randn(40, 16))
    with pytest.warns(UserWarning, match="singular"):
        assert np.isfinite(lenient.compute().item())
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        FrechetMetric(16).update(torch.randn(10, 15), None)


def test_reference_statistics_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) + 1
    full = FrechetMetric(4)
    full.update(torch.from_numpy(a), torch.from_numpy(b))
    expected = full.compute().item()
    full.save_reference(tmp_path / "ref.npz")
    with np.load(tmp_path / "ref.npz") as data:
        assert np.allclose(data["mu"], b.mean(0)) and np.allclose(data["sigma"], np.cov(b, rowvar=False))
        assert int(data["n"]) == 60
    fresh = FrechetMetric(4)
    fresh.load_reference(tmp_path / "ref.npz")
    fresh.update(torch.from_numpy(a), None)
    assert fresh.compute().item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(RuntimeError, match="loaded"):
        fresh.update(None, torch.from_numpy(b))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        fresh.load_reference(tmp_path / "missing.npz")
