"""Bias audit (case study §3.9): does the model miss critical findings more often in some patients?

The audit asks one regulator-facing question per subgroup - *is the sensitivity for critical
findings (pneumothorax, fracture, mass/lung lesion, pleural effusion; case study §1) high enough
in this group?* - and answers it with a confidence interval, because test subgroups are small:

1. **Ground truth.** A critical finding is present when the reference labels say 1. Uncertain
   labels (-1) are neither positive nor negative and are left out; blanks (not mentioned) are
   negative, as in the CheXpert convention the phantoms are drawn from.
2. **Calls.** The detection head's probabilities become calls at an *operating point* fixed
   before the audit (per-finding thresholds at one common false-positive rate, reaching
   ``target_sensitivity`` on a calibration split: :class:`CriticalDetector`,
   :func:`operating_thresholds`), or the course labeler reads the generated report.
3. **Per subgroup** (age group, sex, race, and the edge cases support devices / post-surgical /
   pediatric): pooled sensitivity over (study, critical finding) pairs, computed with fairlearn's
   :class:`~fairlearn.metrics.MetricFrame`, and a percentile-bootstrap CI that resamples
   *studies* (:func:`course_utils.metrics.bootstrap_ci`), since the findings of one study are
   not independent - widened to the Wilson score interval where the bootstrap collapses (all
   findings found or all missed).
4. **Status** against ``threshold``: ``"below"`` when the *whole* CI lies under it,
   ``"inconclusive"`` when the CI straddles it (not enough positives to tell: the audit says
   so instead of guessing), ``"meets"`` when the CI lies above; ``"too few positives"`` (under
   ``min_positives``: an interval from five findings is not evidence either way),
   ``"no positives"`` / ``"empty"`` when there is nothing to measure.
5. **Flag** = status ``"below"`` *and* worse than everybody else: the CI of the gap
   ``sensitivity(subgroup) - sensitivity(rest)`` (Newcombe's MOVER from the two CIs) lies
   entirely under 0. Subgroups overlap (the 75+ are also women, men, white...), so one
   subgroup's misses pull every group it belongs to down; the gap separates the subgroup that
   *carries* a shortfall from those that only *contain* it. A subgroup below the threshold
   without a gap is still reported (the whole population falls short there); it is not a
   *disparity*. When two candidates overlap (a race group with many old patients), the one whose
   gap vanishes once the other's studies are set aside is *explained by* it and loses its flag
   (:func:`resolve_overlaps`).
6. Fairness summaries per attribute with fairlearn: equalised-odds difference (the largest gap in
   TPR or FPR between groups) and demographic-parity difference (gap in call rates) - the second
   is reported, never used as the flag: when prevalence differs between groups, a perfect
   model has unequal call rates.
7. Generated reports: hallucination rate per subgroup = the fraction of reports that state a
   finding (labeler says 1) which the reference report neither states nor hedges.

The embedded dataset's demographics are synthetic and independent of the labels. To give the
audit something real to find, :data:`AUDIT_PRESETS` documents a seeded acquisition effect for
one subgroup, and :func:`ensure_audit_dataset` rebuilds only the test split with it (its own
cache folder; the default dataset is never touched).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import DEFAULT_SEED, cache_lock, data_cache_dir
from .labels import CHEXPERT_LABELS
from .metrics import BootstrapCI, bootstrap_ci, resample_weights

PathLike = str | os.PathLike

#: The case study's critical findings (§1: pneumothorax, fracture, mass, pleural effusion);
#: "mass" is CheXpert's Lung Lesion.
CRITICAL_FINDINGS: tuple[str, ...] = ("Pneumothorax", "Fracture", "Lung Lesion", "Pleural Effusion")
#: Column of each critical finding in the 14-label arrays.
CRITICAL_INDEX: tuple[int, ...] = tuple(CHEXPERT_LABELS.index(f) for f in CRITICAL_FINDINGS)
#: Age groups (label, lower bound inclusive, upper bound exclusive), in years.
AGE_BINS: tuple[tuple[str, int, int], ...] = (
    ("0-17", 0, 18),
    ("18-39", 18, 40),
    ("40-59", 40, 60),
    ("60-74", 60, 75),
    ("75+", 75, 200),
)
#: The demographic attributes audited, as columns of :func:`subgroup_table`.
AUDIT_ATTRIBUTES: tuple[str, ...] = ("age_group", "sex", "race")
#: Edge-case columns of :func:`subgroup_table` (each a boolean subgroup).
EDGE_CASES: tuple[str, ...] = ("support_devices", "post_surgical", "pediatric")
EDGE_CASE_NAMES = {
    "support_devices": "support devices / implants",
    "post_surgical": "post-surgical",
    "pediatric": "pediatric (<18)",
}
STATUSES = ("below", "inconclusive", "meets", "too few positives", "no positives", "empty")
#: Fewer positive findings than this and an interval means little (5 of 5 found still allows a
#: sensitivity of 0.57): the subgroup is reported as "too few positives", neither flagged nor
#: cleared.
DEFAULT_MIN_POSITIVES = 10
DEFAULT_THRESHOLD = 0.95
DEFAULT_TARGET_SENSITIVITY = 0.95

# Words that say the chest was operated on (IU and MIMIC reports): sternotomy wires, CABG clips,
# resections, "status post", "postoperative".
_POST_SURGICAL = re.compile(
    r"\b(sternotom\w*|post[- ]?(?:surgical|operative|op)|status[- ]post|s/p|cabg|bypass graft"
    r"|surgical (?:clip|change|suture|staple)s?|(?:lob|pneumon|mastect|thoracot|segmentect)omy"
    r"|valve replacement|(?:aortic|mitral) valve prosthe\w*|fixation hardware|orthopedic hardware"
    r"|fusion hardware|arthroplasty)\b",
    re.I,
)


# --------------------------------------------------------------------------- dataset access
@dataclass(frozen=True)
class _Split:
    labels: np.ndarray  # (N, 14) float, 1 / 0 / -1 / NaN
    metadata: list[dict]
    reports: list[str]
    pixels: Any  # torch tensor (N, 1, S, S) or None


def _as_split(dataset: Any) -> _Split:
    """Accept a :func:`~course_utils.data.load_mimic_cxr_dataset` dict or a ``ReportDataset``."""
    if isinstance(dataset, Mapping):
        missing = [k for k in ("labels", "metadata") if k not in dataset]
        if missing:
            raise ValueError(
                f"test_dataset lacks {missing}; pass the dict of load_mimic_cxr_dataset "
                "(labels, metadata, reports, pixels) or a ReportDataset"
            )
        labels, metadata = dataset["labels"], dataset["metadata"]
        reports, pixels = dataset.get("reports"), dataset.get("pixels")
    elif hasattr(dataset, "finding_targets") and hasattr(dataset, "metadata"):
        labels, metadata = dataset.finding_targets, dataset.metadata
        reports, pixels = getattr(dataset, "reports", None), getattr(dataset, "pixels", None)
    else:
        raise TypeError(
            "test_dataset must be a load_mimic_cxr_dataset dict or a ReportDataset, "
            f"got {type(dataset).__name__}"
        )
    labels = _check_labels(labels, "test_dataset labels")
    metadata = list(metadata)
    if len(metadata) != labels.shape[0]:
        raise ValueError(f"{labels.shape[0]} label rows but {len(metadata)} metadata entries")
    if reports is None:
        reports = [str(m.get("findings") or m.get("impression") or "") for m in metadata]
    reports = list(reports)
    if len(reports) != labels.shape[0]:
        raise ValueError(f"{labels.shape[0]} label rows but {len(reports)} reports")
    return _Split(labels, metadata, reports, pixels)


def _check_labels(labels: Any, what: str) -> np.ndarray:
    values = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"{what} must have shape (N, {len(CHEXPERT_LABELS)}), got {values.shape}")
    ok = np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0))
    if not ok.all():
        raise ValueError(f"{what} must hold 1, 0, -1 or NaN; found {values[~ok][0]!r}")
    return values


# --------------------------------------------------------------------------- subgroups
def age_group(age: float) -> str:
    """The :data:`AGE_BINS` label of an age in years (``"75+"`` for 75 and over).

    Raises:
        ValueError: missing (NaN), negative or implausible (> 130) age.
    """
    if age is None or (isinstance(age, float) and math.isnan(age)):
        raise ValueError("age is missing (NaN/None): fill it from the patients table first")
    age = float(age)
    if age < 0 or age > 130:
        raise ValueError(f"implausible age {age!r}")
    for name, low, high in AGE_BINS:
        if low <= age < high:
            return name
    raise ValueError(f"age {age!r} falls in no age bin")  # unreachable with the bins above


def is_post_surgical(report: str) -> bool:
    """Does the (reference) report describe a post-surgical chest (sternotomy, CABG, resection)?"""
    return bool(_POST_SURGICAL.search(report or ""))


def subgroup_table(test_dataset: Any) -> pd.DataFrame:
    """One row per study: the subgroups the audit compares.

    Columns: ``study_id``, ``age`` (years), ``age_group`` (:data:`AGE_BINS`), ``sex``, ``race``,
    and the boolean edge cases ``support_devices`` (reference label Support Devices = 1),
    ``post_surgical`` (:func:`is_post_surgical` on the reference findings + impression) and
    ``pediatric`` (age < 18).

    Raises:
        ValueError: a study's metadata lacks age, sex or race (on MIMIC-CXR, join MIMIC-IV
            ``patients``/``admissions`` first; see notebook 09).
    """
    split = _as_split(test_dataset)
    rows = []
    devices = split.labels[:, CHEXPERT_LABELS.index("Support Devices")] == 1.0
    for i, meta in enumerate(split.metadata):
        missing = [k for k in ("age", "sex", "race") if meta.get(k) in (None, "")]
        if missing:
            raise ValueError(
                f"study {meta.get('study_id', i)} has no {missing} in its metadata: audits need "
                "demographics (embedded: patients.csv; MIMIC-CXR: MIMIC-IV patients/admissions)"
            )
        text = " ".join(str(meta.get(k) or "") for k in ("findings", "impression")).strip()
        rows.append(
            {
                "study_id": meta.get("study_id", i),
                "age": float(meta["age"]),
                "age_group": age_group(meta["age"]),
                "sex": str(meta["sex"]),
                "race": str(meta["race"]),
                "support_devices": bool(devices[i]),
                "post_surgical": is_post_surgical(text or split.reports[i]),
                "pediatric": float(meta["age"]) < 18,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- truth and calls
def critical_truth(
    labels: Any, findings: Sequence[str] = CRITICAL_FINDINGS
) -> tuple[np.ndarray, np.ndarray]:
    """Reference labels -> (positive, known), both bool (N, F) for the F ``findings``.

    ``positive`` is label == 1. ``known`` is False where the label is uncertain (-1): such a
    pair is neither a positive nor a negative and is left out of sensitivity and FPR. Blank
    (NaN, not mentioned) counts as a known negative.
    """
    values = _check_labels(labels, "labels")
    cols = [_label_column(f) for f in findings]
    sub = values[:, cols]
    return sub == 1.0, sub != -1.0


def _label_column(finding: str) -> int:
    if finding not in CHEXPERT_LABELS:
        raise ValueError(f"unknown finding {finding!r}; expected one of {list(CHEXPERT_LABELS)}")
    return CHEXPERT_LABELS.index(finding)


class PrecomputedDetector:
    """A "model" that returns stored probabilities (N, 14): audits of saved outputs, fixtures."""

    def __init__(self, probs: Any) -> None:
        values = np.asarray(probs.numpy() if hasattr(probs, "numpy") else probs, dtype=float)
        if values.ndim != 2 or values.shape[1] != len(CHEXPERT_LABELS):
            raise ValueError(
                f"probs must have shape (N, {len(CHEXPERT_LABELS)}), got {values.shape}"
            )
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError("probs must be finite probabilities in [0, 1]")
        self.probs = values

    def predict_findings(self, test_dataset: Any) -> np.ndarray:
        n = _as_split(test_dataset).labels.shape[0]
        if n != self.probs.shape[0]:
            raise ValueError(f"stored probs cover {self.probs.shape[0]} studies, dataset has {n}")
        return self.probs


def detection_probs(model: Any, test_dataset: Any, batch_size: int = 128) -> np.ndarray:
    """Finding probabilities (N, 14) of a detection model on the dataset's images.

    ``model`` may be a ``RadiologyMultimodalModel`` (its detection head on the CLS token: the
    fast path, no text generated), the course encoder's ``ViTForImageClassification``, any
    object with ``predict_findings(dataset)`` (e.g. :class:`PrecomputedDetector`), or a callable
    mapping images (B, 1, S, S) in [0, 1] to probabilities (B, 14).
    """
    if hasattr(model, "predict_findings"):
        probs = np.asarray(model.predict_findings(test_dataset), dtype=float)
    else:
        import torch

        split = _as_split(test_dataset)
        if split.pixels is None:
            raise ValueError("test_dataset has no pixels: load it with load_pixels=True")
        pixels = torch.as_tensor(split.pixels)
        if hasattr(model, "encode_images") and hasattr(model, "detection_head"):
            model.eval()

            def run(x: torch.Tensor) -> torch.Tensor:
                _, h_cls = model.encode_images(x)
                head = model.detection_head
                return head.predict_proba(h_cls.to(head.linear.weight.dtype))
        elif hasattr(model, "vit") and hasattr(model, "classifier"):
            from .model import predict_probs

            def run(x: torch.Tensor) -> torch.Tensor:
                return predict_probs(model, x, batch_size=batch_size)
        elif callable(model):
            run = model
        else:
            raise TypeError(f"cannot get finding probabilities from a {type(model).__name__}")
        out = []
        with torch.no_grad():
            for start in range(0, pixels.shape[0], batch_size):
                p = run(pixels[start : start + batch_size].float())
                out.append(np.asarray(p.detach().cpu() if hasattr(p, "detach") else p, float))
        probs = np.concatenate(out) if out else np.zeros((0, len(CHEXPERT_LABELS)))
    n = _as_split(test_dataset).labels.shape[0]
    if probs.shape != (n, len(CHEXPERT_LABELS)):
        raise ValueError(f"model returned probabilities of shape {probs.shape}, expected {(n, 14)}")
    return probs


def operating_thresholds(
    probs: Any,
    labels: Any,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    findings: Sequence[str] = CRITICAL_FINDINGS,
    method: str = "equal_fpr",
) -> dict[str, float]:
    """Per-finding probability thresholds that reach ``target_sensitivity`` on a calibration set.

    Fix them on data the audit does not use (the validation split). A call is
    ``prob >= threshold``. Two methods:

    * ``"equal_fpr"`` (default): every finding works at the same false-positive rate a (read
      from its calibration *negatives*), the smallest a whose calls reach the target on the
      *pooled* positives. A validation split holds a handful of positives per rare finding
      (two pneumothoraces in the embedded one) but hundreds of negatives, so this is stable
      where per-finding quantiles are not.
    * ``"per_finding"``: for each finding with P positives, the ``ceil(target * P)``-th highest
      positive probability (needs positives of every finding).

    Raises:
        ValueError: bad target/method, shapes, no positive (pooled, or of a finding for
            ``per_finding``), or a finding without negatives.
    """
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    if method not in ("equal_fpr", "per_finding"):
        raise ValueError(f"method must be 'equal_fpr' or 'per_finding', got {method!r}")
    values = _check_labels(labels, "calibration labels")
    p = np.asarray(probs, dtype=float)
    if p.shape != values.shape:
        raise ValueError(f"probs shape {p.shape} != labels shape {values.shape}")
    cols = [_label_column(f) for f in findings]
    positives = [np.sort(p[values[:, k] == 1.0, k])[::-1] for k in cols]
    if method == "per_finding":
        out = {}
        for finding, pos in zip(findings, positives, strict=True):
            if pos.size == 0:
                raise ValueError(f"no positive {finding!r} in the calibration set")
            out[finding] = float(pos[math.ceil(target_sensitivity * pos.size - 1e-9) - 1])
        return out
    n_pos = sum(pos.size for pos in positives)
    if n_pos == 0:
        raise ValueError(f"no positive {list(findings)} in the calibration set")
    negatives = [np.sort(p[(values[:, k] == 0.0) | np.isnan(values[:, k]), k])[::-1] for k in cols]
    for finding, neg in zip(findings, negatives, strict=True):
        if neg.size == 0:
            raise ValueError(f"no negative {finding!r} in the calibration set")
    need = math.ceil(target_sensitivity * n_pos - 1e-9)
    levels = np.unique(np.concatenate([np.arange(neg.size + 1) / neg.size for neg in negatives]))
    for level in levels:  # ascending false-positive rate: the first that reaches the target
        thresholds = []
        for neg in negatives:
            allowed = int(math.floor(level * neg.size + 1e-9))  # negatives called
            top = neg[0] if allowed == 0 else neg[allowed - 1]
            thresholds.append(float(np.nextafter(top, np.inf)) if allowed == 0 else float(top))
        called = sum(int((pos >= t).sum()) for pos, t in zip(positives, thresholds, strict=True))
        if called >= need:
            return dict(zip(findings, thresholds, strict=True))
    return dict.fromkeys(findings, 0.0)  # a positive below every negative: call everything


@dataclass
class CriticalDetector:
    """A detection model plus its operating point: which critical findings does it call?

    Attributes:
        model: anything :func:`detection_probs` accepts (a (N, 14) array is wrapped in
            :class:`PrecomputedDetector`).
        thresholds: finding -> probability threshold (a call is ``prob >= threshold``).
        findings: the critical findings, in output column order.
    """

    model: Any
    thresholds: Mapping[str, float]
    findings: tuple[str, ...] = CRITICAL_FINDINGS
    batch_size: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.model, np.ndarray):
            self.model = PrecomputedDetector(self.model)
        missing = [f for f in self.findings if f not in self.thresholds]
        if missing:
            raise ValueError(f"no threshold for {missing}")
        self.findings = tuple(self.findings)

    @classmethod
    def calibrate(
        cls,
        model: Any,
        calibration_dataset: Any,
        target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
        findings: Sequence[str] = CRITICAL_FINDINGS,
        method: str = "equal_fpr",
    ) -> CriticalDetector:
        """Thresholds from :func:`operating_thresholds` on ``calibration_dataset`` (val split)."""
        if isinstance(model, np.ndarray):
            model = PrecomputedDetector(model)
        probs = detection_probs(model, calibration_dataset)
        labels = _as_split(calibration_dataset).labels
        thresholds = operating_thresholds(probs, labels, target_sensitivity, findings, method)
        return cls(model, thresholds, tuple(findings))

    def probs(self, test_dataset: Any) -> np.ndarray:
        """(N, 14) probabilities."""
        return detection_probs(self.model, test_dataset, self.batch_size)

    def calls(self, test_dataset: Any) -> np.ndarray:
        """bool (N, F): the model raises critical finding f for study i."""
        return self.calls_from_probs(self.probs(test_dataset))

    def calls_from_probs(self, probs: np.ndarray) -> np.ndarray:
        cols = [_label_column(f) for f in self.findings]
        thr = np.array([self.thresholds[f] for f in self.findings])
        return np.asarray(probs, dtype=float)[:, cols] >= thr[None, :]


def report_labels(reports: Sequence[str], progress: bool = False) -> np.ndarray:
    """Course-labeler output (N, 14) for generated reports (an empty report is all-NaN)."""
    from .labels import label_reports

    if isinstance(reports, str):
        raise TypeError("reports must be a list of strings, not one string")
    return label_reports(list(reports), progress=progress).to_numpy(dtype=float)


def report_calls(
    hyp_labels: Any, findings: Sequence[str] = CRITICAL_FINDINGS, uncertain: str = "negative"
) -> np.ndarray:
    """bool (N, F): the generated report states the finding (labeler 1; with
    ``uncertain="positive"`` a hedged mention counts too, as a triage reader would review it)."""
    if uncertain not in ("negative", "positive"):
        raise ValueError(f"uncertain must be 'negative' or 'positive', got {uncertain!r}")
    values = _check_labels(hyp_labels, "generated-report labels")
    sub = values[:, [_label_column(f) for f in findings]]
    return (sub == 1.0) | ((sub == -1.0) if uncertain == "positive" else False)


def hallucinated_findings(ref_labels: Any, hyp_labels: Any) -> np.ndarray:
    """int (N,): findings a generated report states (labeler 1) that its reference neither
    states nor hedges (reference not 1 and not -1). "No Finding" is not a finding."""
    ref = _check_labels(ref_labels, "reference labels")
    hyp = _check_labels(hyp_labels, "generated-report labels")
    if ref.shape != hyp.shape:
        raise ValueError(f"reference labels {ref.shape} and generated labels {hyp.shape} differ")
    cols = [k for k, name in enumerate(CHEXPERT_LABELS) if name != "No Finding"]
    stated = hyp[:, cols] == 1.0
    supported = np.isin(ref[:, cols], (1.0, -1.0))
    return (stated & ~supported).sum(axis=1)


# --------------------------------------------------------------------------- statistics
def sensitivity_counts(
    truth: np.ndarray, calls: np.ndarray, known: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-study (true positives, positives), int (N,), summed over the critical findings."""
    truth, calls = np.asarray(truth, bool), np.asarray(calls, bool)
    if truth.shape != calls.shape:
        raise ValueError(f"truth {truth.shape} and calls {calls.shape} differ in shape")
    known = np.ones_like(truth) if known is None else np.asarray(known, bool)
    pos = truth & known
    return (pos & calls).sum(axis=1), pos.sum(axis=1)


def sensitivity_ci(
    truth: np.ndarray,
    calls: np.ndarray,
    known: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
) -> BootstrapCI | None:
    """Pooled sensitivity ``sum TP / sum positives`` with a percentile-bootstrap CI.

    Resamples the studies that hold at least one positive (the only ones sensitivity depends
    on) with :func:`course_utils.metrics.bootstrap_ci`, then widens the interval to contain the
    Wilson score interval of the pooled counts: when every finding is found (or missed) each
    resample gives the same value and the percentile interval collapses to [1, 1] (or [0, 0]),
    which would claim certainty from ten findings. ``None`` when there is no positive.
    """
    tp, pos = sensitivity_counts(truth, calls, known)
    keep = pos > 0
    if not keep.any():
        return None
    counts = np.stack([tp[keep], pos[keep]], axis=1).astype(float)
    n = counts.shape[0]

    def statistic(idx: np.ndarray) -> np.ndarray:
        sums = resample_weights(idx, n) @ counts
        return sums[:, 0] / sums[:, 1]

    ci = bootstrap_ci(statistic, n, n_resamples=n_boot, alpha=alpha, seed=seed)
    w_low, w_high = wilson_interval(int(tp.sum()), int(pos.sum()), alpha)
    return replace(ci, low=min(float(ci.low), w_low), high=max(float(ci.high), w_high))


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (stays inside [0, 1] and has
    width at 0 % and 100 %)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sensitivity_gap_ci(
    truth: np.ndarray,
    calls: np.ndarray,
    known: np.ndarray,
    idx: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """Gap ``d = sensitivity(studies idx) - sensitivity(all other studies)`` and its CI.

    Each side gets its :func:`sensitivity_ci` (seeds ``seed`` and ``seed + 1``); the two
    intervals (l1, u1), (l2, u2) around p1, p2 combine by Newcombe's MOVER:
    ``d - sqrt((p1 - l1)^2 + (u2 - p2)^2)`` to ``d + sqrt((u1 - p1)^2 + (p2 - l2)^2)``, which
    keeps the width a side has at 0 % or 100 %. NaNs when either side has no positive.
    """
    idx = np.asarray(idx)
    rest = np.setdiff1d(np.arange(np.asarray(truth).shape[0]), idx)
    mine = sensitivity_ci(truth[idx], calls[idx], known[idx], n_boot=n_boot, seed=seed,
                          alpha=alpha)  # fmt: skip
    other = sensitivity_ci(truth[rest], calls[rest], known[rest], n_boot=n_boot, seed=seed + 1,
                           alpha=alpha)  # fmt: skip
    if mine is None or other is None:
        return float("nan"), float("nan"), float("nan")
    p1, l1, u1 = float(mine.estimate), float(mine.low), float(mine.high)
    p2, l2, u2 = float(other.estimate), float(other.low), float(other.high)
    gap = p1 - p2
    low = gap - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = gap + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return gap, low, high


def flag_status(
    low: float, high: float, threshold: float, n_positive: int | None = None, min_positives: int = 1
) -> str:
    """``"below"`` (CI entirely under the threshold), ``"meets"`` (CI at or above it), else
    ``"inconclusive"``; ``"too few positives"`` when ``n_positive < min_positives``."""
    if n_positive is not None and n_positive < min_positives:
        return "too few positives"
    if high < threshold:
        return "below"
    if low >= threshold:
        return "meets"
    return "inconclusive"


def _pairs(
    truth: np.ndarray, calls: np.ndarray, known: np.ndarray, features: pd.Series
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten (study, finding) pairs with a known label: y_true, y_pred, group per pair."""
    rows, cols = np.nonzero(known)
    return (
        truth[rows, cols].astype(int),
        calls[rows, cols].astype(int),
        np.asarray(features)[rows],
    )


def fairness_metrics(
    truth: np.ndarray, calls: np.ndarray, known: np.ndarray, features: pd.Series
) -> tuple[dict[str, float], Any]:
    """fairlearn on the (study, finding) pairs of one attribute.

    Returns:
        (``{"equalized_odds_difference", "demographic_parity_difference", "groups_compared",
        "groups_skipped"}``, the :class:`~fairlearn.metrics.MetricFrame` with sensitivity,
        fpr, call rate and count per group). Groups without both a positive and a negative pair
        have no TPR/FPR and are left out of the two differences (``groups_skipped``).
    """
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    y_true, y_pred, groups = _pairs(truth, calls, known, features)
    with warnings.catch_warnings():  # groups without positives: TPR undefined (reported as NaN)
        warnings.simplefilter("ignore")
        frame = MetricFrame(
            metrics={
                "sensitivity": true_positive_rate,
                "fpr": false_positive_rate,
                "call_rate": selection_rate,
                "pairs": count,
            },
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features=pd.Series(groups, name=features.name),
        )
    usable = [
        g
        for g in pd.unique(groups)
        if (y_true[groups == g] == 1).any() and (y_true[groups == g] == 0).any()
    ]
    keep = np.isin(groups, usable)
    out: dict[str, float] = {"groups_compared": float(len(usable))}
    out["groups_skipped"] = float(len(pd.unique(groups)) - len(usable))
    if len(usable) >= 2:
        sf = groups[keep]
        out["equalized_odds_difference"] = float(
            equalized_odds_difference(y_true[keep], y_pred[keep], sensitive_features=sf)
        )
        out["demographic_parity_difference"] = float(
            demographic_parity_difference(y_true[keep], y_pred[keep], sensitive_features=sf)
        )
    else:
        out["equalized_odds_difference"] = out["demographic_parity_difference"] = float("nan")
    return out, frame


# --------------------------------------------------------------------------- the audit
@dataclass
class AuditResult:
    """What :func:`bias_audit` found.

    Attributes:
        table: one row per (attribute, subgroup): ``n_studies``, ``n_positive`` (positive
            (study, finding) pairs), ``n_positive_studies``, ``sensitivity``, ``ci_low``,
            ``ci_high``, ``fpr``, ``call_rate``, ``hallucination_rate`` / ``hall_ci_low`` /
            ``hall_ci_high`` (generated reports only, else NaN), ``status`` (:data:`STATUSES`),
            ``gap`` / ``gap_low`` / ``gap_high`` (sensitivity minus the rest's, with
            :func:`sensitivity_gap_ci`'s interval), ``worse_than_rest`` (``gap_high < 0``),
            ``candidate`` (status ``"below"`` and worse than the rest), ``explained_by`` and
            ``flagged`` (a candidate no other candidate explains: :func:`resolve_overlaps`).
        fairness: one row per attribute: equalised-odds and demographic-parity differences.
        overall: the same metrics on the whole test set.
        threshold: the sensitivity a subgroup must reach.
        source: ``"detection"`` or ``"report"``.
        thresholds: the detection operating point (finding -> probability), ``None`` for reports.
        frames: attribute -> fairlearn ``MetricFrame``.
        settings: n_boot, seed, alpha, min_positives, findings.
    """

    table: pd.DataFrame
    fairness: pd.DataFrame
    overall: dict[str, float]
    threshold: float
    source: str
    thresholds: dict[str, float] | None = None
    frames: dict[str, Any] = field(default_factory=dict, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> pd.DataFrame:
        """The flagged rows: sensitivity confidently below the threshold *and* below the rest."""
        return self.table[self.table["flagged"]]

    def flagged_subgroups(self) -> list[tuple[str, str]]:
        """``[(attribute, subgroup), ...]`` of the flagged rows."""
        rows = self.flagged
        return [(str(a), str(s)) for a, s in zip(rows.attribute, rows.subgroup, strict=True)]

    def summary(self) -> str:
        """A short plain-text verdict (what a regulator-facing report opens with)."""
        o = self.overall
        lines = [
            f"Bias audit ({self.source}): critical-finding sensitivity must be >= "
            f"{self.threshold:.2f}; overall {o['sensitivity']:.3f} "
            f"[{o['ci_low']:.3f}, {o['ci_high']:.3f}] on {int(o['n_positive'])} positive "
            f"findings in {int(o['n_studies'])} studies.",
        ]
        if self.flagged.empty:
            lines.append("No subgroup is confidently below the threshold and below the rest.")
        for r in self.flagged.itertuples():
            lines.append(
                f"FLAG {r.attribute}={r.subgroup}: sensitivity {r.sensitivity:.3f} "
                f"[{r.ci_low:.3f}, {r.ci_high:.3f}] ({r.n_positive} positive findings)"
            )
        shared = self.table[(self.table["status"] == "below") & ~self.table["flagged"]]
        for r in shared.itertuples():
            why = f"explained by {r.explained_by}" if r.explained_by else "no gap to the rest"
            lines.append(
                f"BELOW ({why}) {r.attribute}={r.subgroup}: sensitivity "
                f"{r.sensitivity:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
            )
        unclear = self.table[~self.table["status"].isin(["below", "meets"])]
        if len(unclear):
            names = ", ".join(f"{a}={s} ({st})" for a, s, st in zip(
                unclear.attribute, unclear.subgroup, unclear.status, strict=True))  # fmt: skip
            lines.append(f"Not enough evidence either way: {names}.")
        return "\n".join(lines)


def _subgroup_row(
    attribute: str,
    name: str,
    idx: np.ndarray,
    truth: np.ndarray,
    calls: np.ndarray,
    known: np.ndarray,
    hallucinated: np.ndarray | None,
    threshold: float,
    n_boot: int,
    seed: int,
    alpha: float,
    min_positives: int,
) -> dict[str, Any]:
    t, c, k = truth[idx], calls[idx], known[idx]
    tp, pos = sensitivity_counts(t, c, k)
    neg = ~t & k
    row: dict[str, Any] = {
        "attribute": attribute,
        "subgroup": name,
        "n_studies": int(len(idx)),
        "n_positive": int(pos.sum()),
        "n_positive_studies": int((pos > 0).sum()),
        "sensitivity": float(tp.sum() / pos.sum()) if pos.sum() else float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "fpr": float((c & neg).sum() / neg.sum()) if neg.sum() else float("nan"),
        "call_rate": float(c[k].mean()) if k.any() else float("nan"),
        "hallucination_rate": float("nan"),
        "hall_ci_low": float("nan"),
        "hall_ci_high": float("nan"),
        "gap": float("nan"),
        "gap_low": float("nan"),
        "gap_high": float("nan"),
    }
    if len(idx) == 0:
        row["status"] = "empty"
    else:
        ci = sensitivity_ci(t, c, k, n_boot=n_boot, seed=seed, alpha=alpha)
        if ci is None:
            row["status"] = "no positives"
        else:
            row["ci_low"], row["ci_high"] = float(ci.low), float(ci.high)
            row["status"] = flag_status(row["ci_low"], row["ci_high"], threshold,
                                        row["n_positive"], min_positives)  # fmt: skip
            row["gap"], row["gap_low"], row["gap_high"] = sensitivity_gap_ci(
                truth, calls, known, idx, n_boot=n_boot, seed=seed, alpha=alpha
            )
        if hallucinated is not None:
            h = bootstrap_ci((hallucinated[idx] > 0).astype(float), n_resamples=n_boot,
                             alpha=alpha, seed=seed)  # fmt: skip
            row["hallucination_rate"] = float(h.estimate)
            row["hall_ci_low"], row["hall_ci_high"] = float(h.low), float(h.high)
    row["worse_than_rest"] = bool(row["gap_high"] < 0)  # False when NaN
    row["flagged"] = row["status"] == "below" and row["worse_than_rest"]
    return row


def audit_calls(
    truth: np.ndarray,
    calls: np.ndarray,
    known: np.ndarray,
    groups: pd.DataFrame,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
    min_positives: int = DEFAULT_MIN_POSITIVES,
    attributes: Sequence[str] = AUDIT_ATTRIBUTES,
    edge_cases: Sequence[str] = EDGE_CASES,
    hallucinated: np.ndarray | None = None,
    source: str = "detection",
    thresholds: Mapping[str, float] | None = None,
    findings: Sequence[str] = CRITICAL_FINDINGS,
) -> AuditResult:
    """The audit on calls already made: the core of :func:`bias_audit`, testable by hand.

    Args:
        truth, known: :func:`critical_truth` of the reference labels, bool (N, F).
        calls: bool (N, F), the model raises finding f for study i.
        groups: :func:`subgroup_table` (N rows) - ``attributes`` and ``edge_cases`` columns.
        threshold: the sensitivity every subgroup must reach (case study: 0.95 pages the
            on-call engineer; 0.98 for clearance).
        n_boot, seed, alpha: the bootstrap (same seed for every subgroup).
        min_positives: fewer positive findings -> status "too few positives" (not flagged).
        hallucinated: :func:`hallucinated_findings` (N,) for generated reports, else ``None``.

    Returns:
        :class:`AuditResult`; sensitivities come from fairlearn's ``MetricFrame``, the CIs from
        :func:`sensitivity_ci`.
    """
    truth, calls, known = (np.asarray(a, bool) for a in (truth, calls, known))
    if not (truth.shape == calls.shape == known.shape) or truth.ndim != 2:
        raise ValueError(f"truth {truth.shape}, calls {calls.shape}, known {known.shape} differ")
    if len(groups) != truth.shape[0]:
        raise ValueError(f"groups has {len(groups)} rows for {truth.shape[0]} studies")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a sensitivity in (0, 1], got {threshold}")
    missing = [c for c in (*attributes, *edge_cases) if c not in groups.columns]
    if missing:
        raise ValueError(f"groups lacks column(s) {missing} (see subgroup_table)")
    groups = groups.reset_index(drop=True)
    stats = dict(n_boot=n_boot, seed=seed, alpha=alpha, min_positives=min_positives)
    every = np.arange(truth.shape[0])
    overall = _subgroup_row("all", "all", every, truth, calls, known, hallucinated, threshold,
                            **stats)  # fmt: skip
    rows, fair, frames, members = [], [], {}, []
    for attribute in attributes:
        metrics, frame = fairness_metrics(truth, calls, known, groups[attribute])
        frames[attribute] = frame
        fair.append({"attribute": attribute, **metrics})
        for name, idx in sorted(groups.groupby(attribute).indices.items(), key=_bin_order):
            row = _subgroup_row(attribute, str(name), np.asarray(idx), truth, calls, known,
                                hallucinated, threshold, **stats)  # fmt: skip
            mf = frame.by_group.loc[name, "sensitivity"]  # fairlearn's number; ours must agree
            if row["n_positive"] and not math.isclose(mf, row["sensitivity"], abs_tol=1e-9):
                raise RuntimeError(f"sensitivity mismatch for {attribute}={name}")
            rows.append(row)
            members.append(np.asarray(idx))
    for case in edge_cases:
        idx = np.flatnonzero(groups[case].to_numpy(bool))
        rows.append(_subgroup_row("edge_case", EDGE_CASE_NAMES.get(case, case), idx, truth,
                                  calls, known, hallucinated, threshold, **stats))  # fmt: skip
        members.append(idx)
    table = resolve_overlaps(pd.DataFrame(rows), members, truth, calls, known, n_boot=n_boot,
                             seed=seed, alpha=alpha)  # fmt: skip
    return AuditResult(
        table=table,
        fairness=pd.DataFrame(fair).set_index("attribute"),
        overall={k: v for k, v in overall.items() if k not in ("attribute", "subgroup")},
        threshold=threshold,
        source=source,
        thresholds=dict(thresholds) if thresholds is not None else None,
        frames=frames,
        settings={**stats, "findings": list(findings)},
    )


def resolve_overlaps(
    table: pd.DataFrame,
    members: Sequence[np.ndarray],
    truth: np.ndarray,
    calls: np.ndarray,
    known: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Keep the flags a subgroup carries itself; drop those another flagged subgroup explains.

    Subgroups overlap, so the misses of one (the 75+) can make another that shares many of its
    studies (a race group with many old patients) look worse than the rest too. Among the
    *candidates* (``flagged`` on entry: below the threshold and worse than the rest), a is
    *explained by* b when, with b's studies removed from everyone, a is no longer
    significantly worse than the rest (:func:`sensitivity_gap_ci` upper bound >= 0). a loses
    its flag when some b explains it and a does not explain b. When removing b leaves nothing
    to test (a inside b), a is not explained by b; two subgroups with the same studies keep
    both flags (no data can tell them apart).

    Args:
        table: :func:`audit_calls` rows (``flagged`` = candidates).
        members: the study indices of each row, in table order.

    Returns:
        A copy with ``candidate`` (the entry flags), ``explained_by`` ("" or the explaining
        subgroups, "attribute=value; ...") and the final ``flagged``.
    """
    table = table.copy()
    table["candidate"] = table["flagged"].astype(bool)
    table["explained_by"] = ""
    candidates = [i for i in range(len(table)) if table.at[i, "candidate"]]
    n = truth.shape[0]

    def explained(a: int, b: int) -> bool:
        keep = np.ones(n, bool)
        keep[members[b]] = False
        inside = np.zeros(n, bool)
        inside[members[a]] = True
        where = np.flatnonzero(inside[keep])
        if where.size == 0:
            return False
        _, _, high = sensitivity_gap_ci(truth[keep], calls[keep], known[keep], where,
                                        n_boot=n_boot, seed=seed, alpha=alpha)  # fmt: skip
        return bool(high >= 0)  # NaN (nothing left to compare) -> False

    pairs = {(a, b): explained(a, b) for a in candidates for b in candidates if a != b}
    for a in candidates:
        by = [b for b in candidates if b != a and pairs[(a, b)] and not pairs[(b, a)]]
        if by:
            table.at[a, "flagged"] = False
            names = [f"{table.at[b, 'attribute']}={table.at[b, 'subgroup']}" for b in by]
            table.at[a, "explained_by"] = "; ".join(names)
    return table


def _bin_order(item: tuple[Any, Any]) -> tuple[int, str]:
    names = [b[0] for b in AGE_BINS]
    key = str(item[0])
    return (names.index(key), key) if key in names else (len(names), key)


def bias_audit(
    model: Any,
    test_dataset: Any,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
    min_positives: int = DEFAULT_MIN_POSITIVES,
    source: str = "detection",
    thresholds: Mapping[str, float] | None = None,
    calibration: Any = None,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    reports: Sequence[str] | None = None,
    uncertain: str = "negative",
    findings: Sequence[str] = CRITICAL_FINDINGS,
    attributes: Sequence[str] = AUDIT_ATTRIBUTES,
    edge_cases: Sequence[str] = EDGE_CASES,
    max_new_tokens: int = 120,
    batch_size: int = 64,
    progress: bool = False,
) -> AuditResult:
    """Audit a report model for demographic bias (case study §3.9).

    Args:
        model: with ``source="detection"``: a :class:`CriticalDetector` (model + operating
            point), or anything :func:`detection_probs` takes plus ``thresholds`` or a
            ``calibration`` split; with ``source="report"``: a ``RadiologyMultimodalModel``
            (``test_dataset`` must then be its ``ReportDataset``) or ``None`` with ``reports``.
        test_dataset: a ``load_mimic_cxr_dataset`` dict (pixels for detection) or a
            ``ReportDataset``; metadata must hold age, sex and race.
        threshold: the critical-finding sensitivity every subgroup must reach; flagged when the
            whole bootstrap CI is below it and the subgroup is below the rest (module docstring).
        n_boot, seed, alpha: bootstrap resamples, seed and 1 - confidence.
        min_positives: subgroups with fewer positive findings are "too few positives".
        source: ``"detection"`` (detection-head calls: fast) or ``"report"`` (labeler on the
            generated reports: also gives hallucination rates).
        thresholds: detection operating point, finding -> probability.
        calibration: a split (validation) to set the operating point on, at
            ``target_sensitivity`` (:func:`operating_thresholds`).
        reports: generated reports (N) - for ``source="report"`` instead of generating them,
            or with ``source="detection"`` to add hallucination rates.
        uncertain: whether a hedged mention in a generated report is a call (:func:`report_calls`).
        findings, attributes, edge_cases: what to audit.

    Returns:
        :class:`AuditResult`.
    """
    if source not in ("detection", "report"):
        raise ValueError(f"source must be 'detection' or 'report', got {source!r}")
    split = _as_split(test_dataset)
    truth, known = critical_truth(split.labels, findings)
    groups = subgroup_table(test_dataset)
    hallucinated = None
    if source == "report" and reports is None:
        if model is None:
            raise ValueError("source='report' needs a model that generates, or reports=")
        from .train import generate_reports

        reports = generate_reports(model, test_dataset, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, progress=progress)  # fmt: skip
    if reports is not None:
        if len(reports) != truth.shape[0]:
            raise ValueError(f"{len(reports)} generated reports for {truth.shape[0]} studies")
        hyp = report_labels(reports, progress=progress)
        hallucinated = hallucinated_findings(split.labels, hyp)
    used_thresholds = None
    if source == "detection":
        detector = model
        if not isinstance(detector, CriticalDetector):
            if thresholds is not None:
                detector = CriticalDetector(model, thresholds, tuple(findings), batch_size)
            elif calibration is not None:
                detector = CriticalDetector.calibrate(model, calibration, target_sensitivity,
                                                      findings)  # fmt: skip
            else:
                raise ValueError(
                    "a detection audit needs an operating point: pass a CriticalDetector, "
                    "thresholds=, or calibration= (the validation split)"
                )
        if tuple(detector.findings) != tuple(findings):
            raise ValueError(f"detector findings {detector.findings} != {tuple(findings)}")
        calls = detector.calls(test_dataset)
        used_thresholds = dict(detector.thresholds)
    else:
        calls = report_calls(report_labels(reports, progress=False), findings, uncertain)
    return audit_calls(
        truth, calls, known, groups, threshold=threshold, n_boot=n_boot, seed=seed, alpha=alpha,
        min_positives=min_positives, attributes=attributes, edge_cases=edge_cases,
        hallucinated=hallucinated, source=source, thresholds=used_thresholds, findings=findings,
    )  # fmt: skip


# --------------------------------------------------------------------------- ground truth
@dataclass(frozen=True)
class AuditPreset:
    """A documented acquisition effect for one subgroup of the embedded dataset.

    Attributes:
        name: preset key in :data:`AUDIT_PRESETS`.
        attribute: ``"age_group"``, ``"sex"`` or ``"race"``.
        subgroup: the affected value (an :data:`AGE_BINS` label for ``age_group``).
        acquisition: offsets added to every image of the subgroup (keys ``exposure``,
            ``noise``, ``rotation_deg``; see :func:`course_utils.data.sample_acquisition`).
        story: why such a shift happens in real hospitals.
    """

    name: str
    attribute: str
    subgroup: str
    acquisition: Mapping[str, float]
    story: str

    def subgroup_effects(self) -> dict[str, dict[str, dict[str, float]]]:
        """The ``subgroup_effects`` argument of ``build_embedded_dataset`` (ages spelled out,
        since the builder matches exact values)."""
        effect = {k: float(v) for k, v in self.acquisition.items()}
        if self.attribute == "age_group":
            bins = {b[0]: b for b in AGE_BINS}
            if self.subgroup not in bins:
                raise ValueError(f"unknown age group {self.subgroup!r}; one of {list(bins)}")
            _, low, high = bins[self.subgroup]
            return {"age": {str(a): dict(effect) for a in range(low, min(high, 131))}}
        if self.attribute not in ("sex", "race"):
            raise ValueError(f"preset attribute must be age_group, sex or race: {self.attribute}")
        return {self.attribute: {self.subgroup: effect}}


#: Named ground-truth effects. ``"portable-elderly"``: see its story.
AUDIT_PRESETS: dict[str, AuditPreset] = {
    "portable-elderly": AuditPreset(
        name="portable-elderly",
        attribute="age_group",
        subgroup="75+",
        acquisition={"exposure": 3.0},
        story=(
            "Patients aged 75 and over are mostly imaged at the bedside, and the audit site's "
            "portable unit writes its images through a misconfigured look-up table: every "
            "image of a patient aged 75+ gets +3.0 on the exposure gamma (the sampled 0.8-1.25 "
            "becomes 3.8-4.25), so the films come out dark, with little contrast left in the "
            "lungs and ribs. Nothing else changes: same reports, labels, patients, placements "
            "and seeds as the default test split."
        ),
    ),
}
DEFAULT_PRESET = "portable-elderly"


def audit_dataset_dir(
    preset: str | None = DEFAULT_PRESET, image_size: int = 128, seed: int = DEFAULT_SEED
) -> Path:
    """``data_cache_dir()/embedded-{size}px-seed{seed}-audit-{preset}`` (``-audit-control``
    for ``preset=None``)."""
    return data_cache_dir() / f"embedded-{image_size}px-seed{seed}-audit-{preset or 'control'}"


def _preset(preset: str | AuditPreset | None) -> AuditPreset | None:
    if preset is None or isinstance(preset, AuditPreset):
        return preset
    if preset not in AUDIT_PRESETS:
        raise ValueError(f"unknown audit preset {preset!r}; known: {list(AUDIT_PRESETS)}")
    return AUDIT_PRESETS[preset]


def build_audit_dataset(
    preset: str | AuditPreset | None = DEFAULT_PRESET,
    out_dir: PathLike | None = None,
    *,
    image_size: int = 128,
    seed: int = DEFAULT_SEED,
    max_studies: int | None = None,
    reports: pd.DataFrame | None = None,
    only_splits: Sequence[str] | None = ("test",),
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Build the embedded dataset's test split with the preset's effect (``None``: control).

    Same seed, reports and patients as the default build, so every image outside the affected
    subgroup is byte-identical to the default test split's, and the control build equals it.
    """
    from .data import build_embedded_dataset

    p = _preset(preset)
    name = p.name if p else None
    out = Path(out_dir) if out_dir is not None else audit_dataset_dir(name, image_size, seed)
    return build_embedded_dataset(
        out, seed=seed, image_size=image_size, progress=progress, max_studies=max_studies,
        workers=workers, subgroup_effects=p.subgroup_effects() if p else None, reports=reports,
        only_splits=only_splits,
    )  # fmt: skip


def ensure_audit_dataset(
    preset: str | None = DEFAULT_PRESET,
    image_size: int = 128,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
) -> Path:
    """The cached audit test set (built on first use, ~10-20 s on 2 cores); rebuilt when the
    generator version, seed, size or the preset's effect changed."""
    from .data import read_embedded_info
    from .data.embedded import EMBEDDED_VERSION

    p = _preset(preset)
    path = audit_dataset_dir(p.name if p else None, image_size, seed)
    want = json.loads(json.dumps(p.subgroup_effects() if p else {}))

    def current() -> bool:
        try:
            info = read_embedded_info(path)
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return (
            info.get("version") == EMBEDDED_VERSION
            and info.get("seed") == seed
            and info.get("image_size") == image_size
            and info.get("max_studies") is None
            and info.get("only_splits") == ["test"]
            and info.get("subgroup_effects", {}) == want
        )

    if current():
        return path
    with cache_lock(path.name):  # a second process waits, then finds it built
        if current():
            return path
        return build_audit_dataset(p, path, image_size=image_size, seed=seed, progress=progress)


def load_audit_split(
    preset: str | None = DEFAULT_PRESET, image_size: int = 128, seed: int = DEFAULT_SEED
) -> dict[str, Any]:
    """The audit test split with pixels (:func:`ensure_audit_dataset` + the MIMIC loader)."""
    from .data import load_mimic_cxr_dataset

    path = ensure_audit_dataset(preset, image_size, seed)
    return load_mimic_cxr_dataset(path, "test", image_size=image_size, load_pixels=True)


# --------------------------------------------------------------------------- real data
_UNKNOWN_RACE = ("UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER", "DECLINED", "")
_RACE_PREFIXES = (
    ("HISPANIC", "HISPANIC/LATINO"),
    ("LATINO", "HISPANIC/LATINO"),
    ("SOUTH AMERICAN", "HISPANIC/LATINO"),
    ("BLACK", "BLACK/AFRICAN AMERICAN"),
    ("AFRICAN", "BLACK/AFRICAN AMERICAN"),
    ("WHITE", "WHITE"),
    ("PORTUGUESE", "WHITE"),
    ("ASIAN", "ASIAN"),
)


def coarse_race(value: Any) -> str:
    """MIMIC-IV's fine race categories -> the audit's six groups (``"WHITE - RUSSIAN"`` ->
    ``"WHITE"``, ``"ASIAN - CHINESE"`` -> ``"ASIAN"``, declined/unable/missing -> ``"UNKNOWN"``,
    anything else -> ``"OTHER"``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "UNKNOWN"
    text = str(value).strip().upper()
    if text in _UNKNOWN_RACE:
        return "UNKNOWN"
    for prefix, group in _RACE_PREFIXES:
        if text.startswith(prefix):
            return group
    return "OTHER"


def mimic_iv_demographics(patients_csv: PathLike, admissions_csv: PathLike) -> pd.DataFrame:
    """Per-subject demographics from MIMIC-IV ``hosp/patients.csv(.gz)`` and ``admissions``.

    Returns:
        DataFrame indexed by ``subject_id``: ``sex`` (``gender``), ``anchor_age``,
        ``anchor_year`` (shifted, as MIMIC-CXR's ``StudyDate``), ``race`` (:func:`coarse_race` of
        the subject's most frequent *known* race over admissions; MIMIC-IV v1 calls the column
        ``ethnicity``). Subjects without an admission get race ``"UNKNOWN"``.

    Raises:
        FileNotFoundError / ValueError: missing files or columns.
    """
    for path in (patients_csv, admissions_csv):
        if not Path(path).is_file():
            raise FileNotFoundError(f"MIMIC-IV table not found: {path}")
    patients = pd.read_csv(patients_csv)
    need = {"subject_id", "gender", "anchor_age", "anchor_year"}
    if need - set(patients.columns):
        raise ValueError(f"{patients_csv} lacks {sorted(need - set(patients.columns))}")
    admissions = pd.read_csv(admissions_csv)
    race_col = "race" if "race" in admissions.columns else "ethnicity"
    if {"subject_id", race_col} - set(admissions.columns):
        raise ValueError(f"{admissions_csv} needs subject_id and race (or ethnicity) columns")
    races = admissions[["subject_id", race_col]].assign(race=admissions[race_col].map(coarse_race))
    known = races[races["race"] != "UNKNOWN"]
    mode = known.groupby("subject_id")["race"].agg(lambda r: r.value_counts().index[0])
    out = patients.set_index("subject_id")[["gender", "anchor_age", "anchor_year"]]
    out = out.rename(columns={"gender": "sex"})
    out["race"] = mode.reindex(out.index).fillna("UNKNOWN")
    return out


def attach_demographics(
    test_dataset: Mapping[str, Any],
    demographics: pd.DataFrame,
    study_years: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """A copy of a ``load_mimic_cxr_dataset`` dict whose metadata carry age, sex and race.

    Args:
        test_dataset: the split dict (metadata with ``subject_id`` / ``study_id``).
        demographics: indexed by ``subject_id`` with ``sex``, ``race`` and either ``age`` or
            MIMIC-IV's ``anchor_age`` + ``anchor_year`` (:func:`mimic_iv_demographics`).
        study_years: study_id -> (shifted) year of the study (:func:`mimic_cxr_study_years`);
            the age at the study is ``anchor_age + year - anchor_year`` (MIMIC-IV caps ages
            over 89 at 91).

    Raises:
        ValueError: a subject without demographics, or anchor ages without study years.
    """
    metadata = []
    for meta in test_dataset["metadata"]:
        sid = int(meta["subject_id"])
        if sid not in demographics.index:
            raise ValueError(f"subject {sid} has no row in the demographics table")
        row = demographics.loc[sid]
        if "age" in demographics.columns:
            age = float(row["age"])
        else:
            if study_years is None or int(meta["study_id"]) not in study_years:
                raise ValueError(f"study {meta['study_id']}: anchor ages need its study year")
            age = float(row["anchor_age"]) + study_years[int(meta["study_id"])]
            age -= float(row["anchor_year"])
        metadata.append({**meta, "age": age, "sex": str(row["sex"]), "race": str(row["race"])})
    return {**test_dataset, "metadata": metadata}


def mimic_cxr_study_years(data_dir: PathLike) -> dict[int, int]:
    """study_id -> shifted year of ``StudyDate`` from ``mimic-cxr-2.0.0-metadata.csv(.gz)``."""
    from .data import find_csv

    table = pd.read_csv(find_csv(data_dir, "mimic-cxr-2.0.0-metadata.csv"),
                        usecols=["study_id", "StudyDate"])  # fmt: skip
    table = table.drop_duplicates("study_id")
    return dict(zip(table["study_id"].astype(int), table["StudyDate"].astype(int) // 10000,
                    strict=True))  # fmt: skip


def compare_audits(results: Mapping[str, AuditResult]) -> pd.DataFrame:
    """Sensitivity, CI and status per subgroup side by side (``{"control": a, "audit": b}``)."""
    frames = []
    for name, res in results.items():
        t = res.table.set_index(["attribute", "subgroup"])[
            ["n_positive", "sensitivity", "ci_low", "ci_high", "status"]
        ]
        t.columns = pd.MultiIndex.from_product([[name], t.columns])
        frames.append(t)
    return pd.concat(frames, axis=1)


__all__ = [
    "AGE_BINS",
    "AUDIT_ATTRIBUTES",
    "AUDIT_PRESETS",
    "CRITICAL_FINDINGS",
    "CRITICAL_INDEX",
    "DEFAULT_PRESET",
    "EDGE_CASES",
    "STATUSES",
    "AuditPreset",
    "AuditResult",
    "CriticalDetector",
    "PrecomputedDetector",
    "age_group",
    "attach_demographics",
    "audit_calls",
    "audit_dataset_dir",
    "bias_audit",
    "build_audit_dataset",
    "coarse_race",
    "compare_audits",
    "critical_truth",
    "detection_probs",
    "ensure_audit_dataset",
    "fairness_metrics",
    "flag_status",
    "hallucinated_findings",
    "is_post_surgical",
    "load_audit_split",
    "mimic_cxr_study_years",
    "mimic_iv_demographics",
    "operating_thresholds",
    "report_calls",
    "report_labels",
    "sensitivity_ci",
    "sensitivity_gap_ci",
    "resolve_overlaps",
    "sensitivity_counts",
    "subgroup_table",
    "wilson_interval",
]
