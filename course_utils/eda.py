"""Exploratory data analysis of a report-generation dataset (case study §3.2, R2Gen2's text EDA).

:func:`analyze_dataset` takes a dataset dict as returned by
:func:`course_utils.data.load_mimic_cxr_dataset` and returns its statistics as pandas objects
(and, with ``plot=True``, the figures from :mod:`course_utils.plots`). Every statistic has one
pinned definition, so a student's implementation can be graded against this one:

* **Label states** - CheXpert values are 1 (positive), 0 (negative), -1 (uncertain) and NaN
  (*not mentioned*). NaN is never negative and -1 is never positive.
* **Prevalence** of a label: positive studies / all studies. **Imbalance ratio**: studies
  that are *not* positive (negative, uncertain or not mentioned) per positive study,
  ``(N - n_pos) / n_pos`` (``inf`` when no study is positive) - the weight a "label vs rest"
  classifier would have to give each positive to balance the classes.
* **Report length** in *words*: ``len(report.split())`` (whitespace tokens), not characters.
* **Co-occurrence**: a 13 x 13 matrix over ``CHEXPERT_LABELS[1:]`` (No Finding is left out:
  by definition it co-occurs with no pathology, so its row would be zeros except for Support
  Devices). ``C[a, b]`` = number of studies where *both* a and b are positive (1; uncertain
  does not count), i.e. ``C = X.T @ X`` for the 0/1 positive matrix ``X`` (N x 13). ``C`` is
  symmetric and its diagonal is each label's positive count.
* **Normal vs abnormal** (R2Gen2: 67.56 % normal on IU X-ray): *normal* = "No Finding" is 1;
  *abnormal* = every other study, including studies whose "No Finding" is blank (a blank is
  not a normal reading). A study with only a support device is normal (CheXpert's No Finding
  ignores Support Devices).
* **Top terms**: lower-cased runs of two or more letters (``re.findall(r"[a-z]{2,}",
  report.lower())``), minus :data:`STOP_WORDS` (scikit-learn's English stop words plus the IU
  de-identification mask ``xxxx``), counted over all reports (total occurrences, not
  documents); ties broken alphabetically.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .labels import CHEXPERT_LABELS

__all__ = [
    "COOCCURRENCE_LABELS",
    "LABEL_STATES",
    "STOP_WORDS",
    "analyze_dataset",
    "cooccurrence_matrix",
    "imbalance_ratio",
    "label_counts",
    "label_matrix",
    "normal_vs_abnormal",
    "report_lengths",
    "report_terms",
    "sample_indices",
    "top_pairs",
    "top_terms",
]

#: Column names of :func:`label_counts`, one per CheXpert state.
LABEL_STATES: tuple[str, ...] = ("positive", "uncertain", "negative", "not mentioned")
#: Labels of the co-occurrence matrix: every CheXpert label but "No Finding".
COOCCURRENCE_LABELS: tuple[str, ...] = tuple(CHEXPERT_LABELS[1:])


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | {"xxxx"}


#: Words :func:`top_terms` ignores: scikit-learn's 318 English stop words (which include
#: "no", "not", "without") and ``"xxxx"``.
STOP_WORDS: frozenset[str] = _stop_words()
_TERM_RE = re.compile(r"[a-z]{2,}")


# ------------------------------------------------------------------------------ input checks
def label_matrix(labels: Any) -> np.ndarray:
    """Labels as a float array (N, 14) in ``CHEXPERT_LABELS`` order (1 / 0 / -1 / NaN).

    Args:
        labels: torch tensor, numpy array or nested list (N, 14), or a DataFrame with the
            CheXpert label columns.

    Raises:
        ValueError: wrong shape, missing columns, or values other than 1, 0, -1, NaN.
    """
    if isinstance(labels, pd.DataFrame):
        missing = [name for name in CHEXPERT_LABELS if name not in labels.columns]
        if missing:
            raise ValueError(f"labels: DataFrame lacks column(s) {missing}")
        values = labels[list(CHEXPERT_LABELS)].to_numpy(dtype=float)
    else:
        if hasattr(labels, "detach"):  # torch tensor, without importing torch
            labels = labels.detach().cpu().numpy()
        values = np.asarray(labels, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"labels must have shape (N, {len(CHEXPERT_LABELS)}), got {values.shape}")
    known = np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0))
    if not known.all():
        raise ValueError(f"labels: values must be 1, 0, -1 or NaN; found {values[~known][0]!r}")
    return values


def _check_dataset(dataset: Any) -> tuple[list[str], np.ndarray]:
    if not isinstance(dataset, dict):
        raise TypeError(f"dataset must be a dict, got {type(dataset).__name__}")
    missing = [key for key in ("reports", "labels") if key not in dataset]
    if missing:
        raise KeyError(f"dataset lacks key(s) {missing} (expected the load_mimic_cxr_dataset dict)")
    reports = list(dataset["reports"])
    bad = [i for i, r in enumerate(reports) if not isinstance(r, str)]
    if bad:
        raise TypeError(
            f"dataset['reports'][{bad[0]}] is {type(reports[bad[0]]).__name__}, not str"
        )
    values = label_matrix(dataset["labels"])
    if len(reports) != len(values):
        raise ValueError(f"dataset has {len(reports)} reports but {len(values)} label rows")
    if not reports:
        raise ValueError("dataset is empty: no studies to analyse")
    return reports, values


# ------------------------------------------------------------------------------ statistics
def label_counts(labels: Any) -> pd.DataFrame:
    """Studies per label and state.

    Returns:
        int DataFrame (14, 4), index ``CHEXPERT_LABELS``, columns :data:`LABEL_STATES`; each
        row sums to N.
    """
    values = label_matrix(labels)
    table = {
        "positive": (values == 1.0).sum(0),
        "uncertain": (values == -1.0).sum(0),
        "negative": (values == 0.0).sum(0),
        "not mentioned": np.isnan(values).sum(0),
    }
    return pd.DataFrame(table, index=pd.Index(CHEXPERT_LABELS, name="label")).astype(int)


def imbalance_ratio(counts: pd.DataFrame) -> pd.Series:
    """Not-positive studies per positive study, ``(N - n_pos) / n_pos`` (``inf`` if n_pos = 0).

    Args:
        counts: :func:`label_counts` output.
    """
    positive = counts["positive"].to_numpy(dtype=float)
    total = counts[list(LABEL_STATES)].sum(axis=1).to_numpy(dtype=float)
    with np.errstate(divide="ignore"):
        ratio = np.where(positive > 0, (total - positive) / np.maximum(positive, 1), np.inf)
    return pd.Series(ratio, index=counts.index, name="imbalance_ratio")


def report_lengths(reports: Sequence[str]) -> pd.Series:
    """Words per report (``len(report.split())``), an int Series of length N."""
    return pd.Series([len(r.split()) for r in reports], name="words", dtype=int)


def cooccurrence_matrix(labels: Any) -> pd.DataFrame:
    """Positive-positive co-occurrence counts ``X.T @ X`` over :data:`COOCCURRENCE_LABELS`.

    Returns:
        int DataFrame (13, 13), symmetric, diagonal = positive count per label.
    """
    positive = (label_matrix(labels)[:, 1:] == 1.0).astype(np.int64)
    index = pd.Index(COOCCURRENCE_LABELS, name="label")
    return pd.DataFrame(positive.T @ positive, index=index, columns=index)


def top_pairs(cooccurrence: pd.DataFrame, k: int = 8) -> pd.DataFrame:
    """The ``k`` most frequent pairs of a co-occurrence matrix, with conditional shares.

    Returns:
        DataFrame with columns ``a``, ``b`` (a before b in the matrix order), ``studies``
        (both positive), ``P(b | a)`` = studies / C[a, a] and ``P(a | b)`` = studies / C[b, b];
        sorted by ``studies`` (descending), ties in matrix order.
    """
    counts = cooccurrence.to_numpy()
    names = list(cooccurrence.index)
    rows = [
        (
            names[i],
            names[j],
            int(counts[i, j]),
            counts[i, j] / counts[i, i],
            counts[i, j] / counts[j, j],
        )
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if counts[i, j] > 0
    ]
    table = pd.DataFrame(rows, columns=["a", "b", "studies", "P(b | a)", "P(a | b)"])
    return (
        table.sort_values("studies", ascending=False, kind="stable").head(k).reset_index(drop=True)
    )


def normal_vs_abnormal(labels: Any) -> pd.Series:
    """``{"normal": n, "abnormal": n}``: normal = "No Finding" is 1, abnormal = the rest."""
    values = label_matrix(labels)
    normal = int((values[:, 0] == 1.0).sum())
    return pd.Series({"normal": normal, "abnormal": len(values) - normal}, name="studies")


def report_terms(report: str) -> list[str]:
    """The terms :func:`top_terms` counts in one report, in order (stop words removed)."""
    return [t for t in _TERM_RE.findall(report.lower()) if t not in STOP_WORDS]


def top_terms(reports: Sequence[str], k: int = 20) -> pd.Series:
    """The ``k`` most frequent terms over all reports (total occurrences), ties alphabetical.

    Returns:
        int Series indexed by term, sorted by count (descending) then term.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    counter: Counter[str] = Counter()
    for report in reports:
        counter.update(report_terms(report))
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:k]
    return pd.Series(dict(ranked), name="count", dtype=int)


def sample_indices(n_studies: int, n: int = 9, seed: int = 0) -> list[int]:
    """``n`` distinct study indices drawn with a seeded generator, in increasing order."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(n_studies, size=min(n, n_studies), replace=False)
    return sorted(int(i) for i in picks)


def analyze_dataset(
    dataset: dict, plot: bool = True, top_k: int = 20, n_samples: int = 9, seed: int = 0
) -> dict[str, Any]:
    """EDA of a report-generation dataset (case study §3.2 plus R2Gen2's text analysis).

    Args:
        dataset: dict with ``reports`` (list[str]) and ``labels`` ((N, 14), 1 / 0 / -1 / NaN),
            and ``images`` (paths) for the sample grid when ``plot`` is True.
        plot: also draw the figures (returned under ``"figures"``).
        top_k: how many terms ``top_terms`` keeps.
        n_samples: studies in the sample grid (9 = the case study's 3 x 3).
        seed: seed of the sample grid's draw.

    Returns:
        dict with the definitions of the module docstring:

        * ``n_studies`` - int N;
        * ``label_counts`` - DataFrame (14, 4): positive / uncertain / negative / not mentioned;
        * ``prevalence`` - Series (14): positive share; ``imbalance_ratio`` - Series (14);
        * ``report_length`` - Series (N) of word counts; ``report_length_stats`` - its
          ``describe()`` (count, mean, std, min, quartiles, max);
        * ``cooccurrence`` - DataFrame (13, 13) of positive-positive counts;
        * ``normal_vs_abnormal`` - Series (normal, abnormal); ``normal_share`` - float;
        * ``top_terms`` - Series term -> count (``top_k`` rows);
        * ``figures`` (only with ``plot=True``) - dict name -> matplotlib Figure:
          ``label_counts``, ``imbalance``, ``report_length``, ``samples``, ``cooccurrence``,
          ``normal_vs_abnormal``, ``top_terms``.

    Raises:
        TypeError, KeyError, ValueError: the dataset is not a loader dict, reports are not
            strings, labels have the wrong shape or values, or it has no study.
    """
    reports, values = _check_dataset(dataset)
    counts = label_counts(values)
    lengths = report_lengths(reports)
    split = normal_vs_abnormal(values)
    stats: dict[str, Any] = {
        "n_studies": len(reports),
        "label_counts": counts,
        "prevalence": (counts["positive"] / len(reports)).rename("prevalence"),
        "imbalance_ratio": imbalance_ratio(counts),
        "report_length": lengths,
        "report_length_stats": lengths.describe(),
        "cooccurrence": cooccurrence_matrix(values),
        "normal_vs_abnormal": split,
        "normal_share": float(split["normal"] / len(reports)),
        "top_terms": top_terms(reports, top_k),
    }
    if plot:
        stats["figures"] = _figures(dataset, stats, n_samples, seed)
    return stats


def _figures(dataset: dict, stats: dict[str, Any], n_samples: int, seed: int) -> dict[str, Any]:
    from . import plots

    if "images" not in dataset:
        raise KeyError("dataset lacks 'images' (needed for the sample grid; use plot=False)")
    picks = sample_indices(stats["n_studies"], n_samples, seed)
    titles = None
    if "metadata" in dataset:
        titles = [f"s{dataset['metadata'][i].get('study_id', i)}" for i in picks]
    return {
        "label_counts": plots.plot_label_counts(stats["label_counts"]),
        "imbalance": plots.plot_imbalance(stats["imbalance_ratio"], stats["n_studies"]),
        "report_length": plots.plot_report_lengths(stats["report_length"]),
        "samples": plots.plot_studies(
            [dataset["images"][i] for i in picks],
            [dataset["reports"][i] for i in picks],
            titles=titles,
        ),
        "cooccurrence": plots.plot_cooccurrence(stats["cooccurrence"]),
        "normal_vs_abnormal": plots.plot_normal_abnormal(stats["normal_vs_abnormal"]),
        "top_terms": plots.plot_top_terms(stats["top_terms"]),
    }
