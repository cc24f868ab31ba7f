"""A/B comparison of two model versions on the same studies (case study §4, A/B Testing).

Per study, both versions' reports are scored against the reference report:

* ``ce_f1`` - F1 of the 14 CheXpert labels the course labeler reads from the generated vs the
  reference report (positive = 1; both without any positive: 1.0);
* ``edit_distance`` - word-level Levenshtein distance / reference length (how much a
  radiologist would have to change; lower is better);
* ``critical_sensitivity`` - share of the reference's critical positives the report states
  (NaN when the reference has none: those studies drop out of that test only).

A paired t-test per metric (``scipy.stats.ttest_rel``) on the per-study differences, p-values
Bonferroni-corrected for the number of metrics. Promotion rule: B is promoted only if at least
one metric improves with corrected p < 0.01 and none gets significantly worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .parity import report_labels
from .service import CRITICAL_FINDINGS

#: metric -> +1 when higher is better, -1 when lower is better
METRICS: dict[str, int] = {"ce_f1": 1, "edit_distance": -1, "critical_sensitivity": 1}
PROMOTION_ALPHA = 0.01


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between the word sequences of ``a`` and ``b`` (case-insensitive)."""
    x, y = a.lower().split(), b.lower().split()
    prev = np.arange(len(y) + 1)
    for i, word in enumerate(x, start=1):
        cur = np.empty_like(prev)
        cur[0] = i
        for j, other in enumerate(y, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (word != other))
        prev = cur
    return int(prev[-1])


def study_f1(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-study F1 of positive labels (rows of (N, 14) labeler values); 1.0 when both empty."""
    g, r = np.asarray(generated) == 1, np.asarray(reference) == 1
    tp = (g & r).sum(1)
    denom = g.sum(1) + r.sum(1)
    return np.where(denom == 0, 1.0, 2 * tp / np.maximum(denom, 1))


def per_study_metrics(
    references: Sequence[str], generated: Sequence[str], critical: Sequence[str] = CRITICAL_FINDINGS
) -> pd.DataFrame:
    """One row per study: ``ce_f1``, ``edit_distance``, ``critical_sensitivity``."""
    from ..labels import CHEXPERT_LABELS

    if len(references) != len(generated):
        raise ValueError(f"{len(references)} references for {len(generated)} generated reports")
    if not references:
        raise ValueError("per_study_metrics: no studies")
    ref, gen = report_labels(references), report_labels(generated)
    cols = [CHEXPERT_LABELS.index(c) for c in critical]
    truth = ref[:, cols] == 1
    hits = (gen[:, cols] == 1) & truth
    n_truth = truth.sum(1)
    sens = np.where(n_truth > 0, hits.sum(1) / np.maximum(n_truth, 1), np.nan)
    edits = [word_edit_distance(g, r) / max(len(r.split()), 1)
             for g, r in zip(generated, references, strict=True)]  # fmt: skip
    return pd.DataFrame(
        {"ce_f1": study_f1(gen, ref), "edit_distance": edits, "critical_sensitivity": sens}
    )


@dataclass
class ABResult:
    """Per-metric paired tests and the promotion decision."""

    table: pd.DataFrame
    promote: bool
    reason: str
    alpha: float


def paired_ab_test(
    a: pd.DataFrame,
    b: pd.DataFrame,
    metrics: dict[str, int] | None = None,
    alpha: float = PROMOTION_ALPHA,
) -> ABResult:
    """Paired t-tests of version B against version A (the incumbent) on the same studies.

    Args:
        a, b: :func:`per_study_metrics` of the two versions (same rows = same studies).
        metrics: metric -> direction (+1 higher is better); default :data:`METRICS`.
        alpha: promotion level on Bonferroni-corrected p-values (case study: 0.01).
    """
    from scipy.stats import ttest_rel

    metrics = metrics or METRICS
    if len(a) != len(b):
        raise ValueError(f"versions scored on different studies: {len(a)} vs {len(b)} rows")
    rows = []
    for name, direction in metrics.items():
        x, y = a[name].to_numpy(float), b[name].to_numpy(float)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        diff = y - x
        if len(diff) < 2 or np.allclose(diff, diff[0] if len(diff) else 0.0):
            # identical (or constant-shift) differences: no variance to test against
            t = np.inf * np.sign(diff[0]) if len(diff) and diff[0] != 0 else 0.0
            p = 0.0 if t != 0 else 1.0
        else:
            t, p = ttest_rel(y, x)
        rows.append({"metric": name, "n": len(diff), "mean_a": x.mean() if len(x) else np.nan,
                     "mean_b": y.mean() if len(y) else np.nan,
                     "diff_b_minus_a": diff.mean() if len(diff) else np.nan,
                     "t": float(t), "p": float(p), "direction": direction})  # fmt: skip
    table = pd.DataFrame(rows).set_index("metric")
    table["p_bonferroni"] = (table["p"] * len(table)).clip(upper=1.0)
    better = (np.sign(table["diff_b_minus_a"]) == table["direction"]) & (
        table["p_bonferroni"] < alpha
    )
    worse = (np.sign(table["diff_b_minus_a"]) == -table["direction"]) & (
        table["p_bonferroni"] < alpha
    )
    table["verdict"] = np.where(better, "B better", np.where(worse, "B worse", "no difference"))
    if worse.any():
        promote, reason = False, f"B is significantly worse on {list(table.index[worse])}"
    elif better.any():
        promote, reason = True, f"B is significantly better on {list(table.index[better])}"
    else:
        promote, reason = False, f"no metric differs at Bonferroni-corrected p < {alpha}"
    return ABResult(table, promote, reason, alpha)


__all__ = [
    "METRICS",
    "PROMOTION_ALPHA",
    "ABResult",
    "paired_ab_test",
    "per_study_metrics",
    "study_f1",
    "word_edit_distance",
]
