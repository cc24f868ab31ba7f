"""Data drift (case study §4): maximum mean discrepancy between embedding batches, with a
permutation-test threshold, demonstrated on phantoms with shifted exposure and rotation.

For embeddings X (reference, m x d) and Y (incoming batch, n x d) and the Gaussian kernel
``k(x, y) = exp(-||x - y||² / (2 σ²))`` (σ: median pairwise distance of the pooled sample),
the unbiased estimate is

    MMD² = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j).

It is ~0 when both come from the same distribution. The *calibrated threshold* is the
``1 - alpha`` quantile of MMD² over random re-splits of the pooled sample (a permutation test):
under "no drift" the labels X / Y are exchangeable, so an observed MMD² above it happens with
probability at most alpha.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def median_bandwidth(z: np.ndarray) -> float:
    """Median of the pairwise Euclidean distances of the rows of ``z`` (σ of the kernel)."""
    d = _sq_dists(z, z)
    upper = d[np.triu_indices(len(z), k=1)]
    sigma = float(np.sqrt(np.median(upper))) if upper.size else 1.0
    return sigma if sigma > 0 else 1.0


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aa, bb = (a * a).sum(1)[:, None], (b * b).sum(1)[None, :]
    return np.maximum(aa + bb - 2.0 * a @ b.T, 0.0)


def _mmd2_from_kernel(k: np.ndarray, m: int) -> float:
    """Unbiased MMD² from the pooled kernel matrix (first ``m`` rows = X)."""
    n = len(k) - m
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD² between samples ``x`` (m, d) and ``y`` (n, d) with a Gaussian kernel."""
    x, y = _check(x, y)
    z = np.concatenate([x, y])
    sigma = bandwidth or median_bandwidth(z)
    return _mmd2_from_kernel(np.exp(-_sq_dists(z, z) / (2 * sigma**2)), len(x))


def _check(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (m, d) and (n, d) embeddings, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("each sample needs at least 2 embeddings")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("embeddings contain NaN or inf")
    return x, y


@dataclass(frozen=True)
class MMDTest:
    """MMD² of a batch against the reference, its permutation threshold and p-value."""

    mmd2: float
    threshold: float
    p_value: float
    drift: bool
    alpha: float
    bandwidth: float


def mmd_permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_permutations: int = 200,
    alpha: float = 0.05,
    bandwidth: float | None = None,
    seed: int = 0,
) -> MMDTest:
    """Is ``y`` drawn from the distribution of ``x``? (kernel computed once, rows permuted)."""
    x, y = _check(x, y)
    z = np.concatenate([x, y])
    sigma = bandwidth or median_bandwidth(z)
    k = np.exp(-_sq_dists(z, z) / (2 * sigma**2))
    m = len(x)
    observed = _mmd2_from_kernel(k, m)
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        p = rng.permutation(len(z))
        null[i] = _mmd2_from_kernel(k[np.ix_(p, p)], m)
    threshold = float(np.quantile(null, 1 - alpha))
    p_value = float((1 + (null >= observed).sum()) / (1 + n_permutations))
    return MMDTest(observed, threshold, p_value, bool(observed > threshold), alpha, sigma)


class DriftDetector:
    """MMD drift monitor against a fixed reference set of embeddings.

    ``calibrate`` draws ``n_calibration`` random batches of ``batch_size`` from the reference
    itself, measures each one's MMD² against the rest, and sets the alarm threshold at their
    ``1 - alpha`` quantile; ``check(batch)`` then flags a batch above it (the case study's
    "alert when MMD exceeds a calibrated threshold"). The kernel bandwidth is fixed at
    calibration so that all batches are measured with the same ruler.
    """

    def __init__(
        self, reference: np.ndarray, batch_size: int = 64, alpha: float = 0.05, seed: int = 0
    ) -> None:
        self.reference = np.asarray(reference, dtype=np.float64)
        if self.reference.ndim != 2 or len(self.reference) < 2 * batch_size:
            raise ValueError(
                f"reference needs at least {2 * batch_size} embeddings (2 x batch_size), "
                f"got shape {self.reference.shape}"
            )
        self.batch_size, self.alpha, self.seed = batch_size, alpha, seed
        self.bandwidth = median_bandwidth(self.reference)
        self.null: np.ndarray | None = None
        self.threshold: float | None = None

    def calibrate(self, n_calibration: int = 100) -> float:
        rng = np.random.default_rng(self.seed)
        null = []
        for _ in range(n_calibration):
            p = rng.permutation(len(self.reference))
            batch, rest = self.reference[p[: self.batch_size]], self.reference[p[self.batch_size :]]
            null.append(mmd2(rest, batch, self.bandwidth))
        self.null = np.asarray(null)
        self.threshold = float(np.quantile(self.null, 1 - self.alpha))
        return self.threshold

    def check(self, batch: np.ndarray) -> dict[str, float | bool]:
        """``mmd2`` of ``batch`` vs the reference, the calibrated ``threshold``, ``drift``."""
        if self.threshold is None:
            self.calibrate()
        value = mmd2(self.reference, batch, self.bandwidth)
        assert self.threshold is not None and self.null is not None
        p_value = float((1 + (self.null >= value).sum()) / (1 + len(self.null)))
        return {"mmd2": value, "threshold": self.threshold, "p_value": p_value,
                "drift": bool(value > self.threshold)}  # fmt: skip


def render_phantom_batch(
    reports: Sequence[str],
    *,
    size: int = 128,
    seed: int = 0,
    effects: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Frontal phantoms (N, 1, S, S) for ``reports``, drawn like the embedded dataset's
    (:mod:`course_utils.data.phantom`) with acquisition offsets ``effects`` (``exposure``:
    added to the gamma, >0 darker; ``rotation_deg``; ``noise``) - the drift scenarios."""
    from ..data.phantom import render_phantom, resolve_findings, sample_acquisition, sample_anatomy
    from ..labels import label_report

    images = []
    for i, text in enumerate(reports):
        labels = label_report(text)
        specs = resolve_findings(
            labels.values, labels.mentions, np.random.default_rng([seed, 1, i])
        )
        anatomy = sample_anatomy(np.random.default_rng([seed, 2, i]))
        acquisition = sample_acquisition(np.random.default_rng([seed, 3, i]), effects)
        phantom = render_phantom(specs, anatomy, acquisition, size, "PA", seed=seed * 100_003 + i)
        images.append(phantom.image)
    return np.stack(images)[:, None].astype(np.float32)


__all__ = [
    "DriftDetector",
    "MMDTest",
    "median_bandwidth",
    "mmd2",
    "mmd_permutation_test",
    "render_phantom_batch",
]
