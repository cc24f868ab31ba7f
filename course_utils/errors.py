"""Error analysis of generated reports (case study §3.7): what the model gets wrong, and where.

Every comparison goes through the course labeler (:mod:`course_utils.labels`): the reference and
the generated report are labeled, each finding is summarised per report by :func:`finding_state`
(status, laterality, severity), and :func:`compare_findings` puts the two side by side, one row
per study x finding. Five error categories follow (:data:`CATEGORIES`):

=============  =================================================================================
missed         the reference states the finding, the generated report does not
hallucinated   the generated report states a finding the reference does not
laterality     both state it, on different sides (left / right / bilateral)
severity       both state it, with different severity (mild / moderate / severe, small / large)
incomplete     both state it, but the generated report omits the side or the severity that the
               reference gives
=============  =================================================================================

"States" means *positive* for the labeler, as in clinical efficacy
(:func:`course_utils.metrics.clinical_efficacy`, ``uncertain="negative"``): an uncertain
mention ("possible pneumonia") is not a statement. So the missed / hallucinated counts of a
finding are exactly its CE false negatives / false positives; ``uncertain="positive"`` counts
uncertain mentions as statements, like CE's option of the same name. A side or severity the
generated report adds while the reference gives none is no error (nothing to check it against).

:func:`categorize_errors` returns the errors as a tidy table (one row per study x finding x
category); :func:`error_analysis` runs it on a test dataset and the model's predictions.
Summaries: :func:`error_counts`, :func:`confusion_matrix`, :func:`error_rates` (vs prevalence),
:func:`errors_by_study` (vs the phantom's acquisition parameters).

Attention: :func:`lm_visual_attention` measures where the language model looks among the visual
tokens while it writes a finding's words, :func:`vit_attention_rollout` where the encoder's CLS
token looks (Abnar & Zuidema, 2020). The phantom generator recorded where it drew each finding
(``phantom_findings.csv``), so :func:`pointing_score` can measure whether attention lands on it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .labels import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN, Mention, label_report

__all__ = [
    "CATEGORIES",
    "COMPARISON_COLUMNS",
    "CRITICAL_FINDINGS",
    "ERROR_COLUMNS",
    "FINDINGS",
    "STATES",
    "FindingState",
    "LMAttention",
    "PointingResult",
    "PointingScore",
    "attention_to_pixels",
    "box_mask",
    "boxes_for",
    "categorize_errors",
    "compare_findings",
    "confusion_matrix",
    "eager_attention",
    "error_analysis",
    "error_counts",
    "error_examples",
    "error_rates",
    "errors_by_study",
    "errors_from_comparison",
    "finding_attention",
    "finding_state",
    "finding_token_positions",
    "label_prevalence",
    "laterality_matrix",
    "lm_visual_attention",
    "pointing_score",
    "pointing_summary",
    "pointing_table",
    "read_acquisition",
    "read_finding_boxes",
    "report_states",
    "sensitivity",
    "status_name",
    "vit_attention_rollout",
]

PathLike = str | os.PathLike

#: The five error categories, in reporting order.
CATEGORIES: tuple[str, ...] = ("missed", "hallucinated", "laterality", "severity", "incomplete")
#: The 13 findings analysed ("No Finding" is derived from them, never an error of its own).
FINDINGS: tuple[str, ...] = tuple(CHEXPERT_LABELS[1:])
#: Findings a report must not miss (the case study's critical-finding sensitivity bar, >= 98 %).
CRITICAL_FINDINGS: tuple[str, ...] = ("Pneumothorax", "Fracture", "Lung Lesion", "Pleural Effusion")
#: What the labeler can say about a finding in one report.
STATES: tuple[str, ...] = ("positive", "uncertain", "negative", "not mentioned")
_STATE_OF = {POSITIVE: "positive", UNCERTAIN: "uncertain", NEGATIVE: "negative"}
_SEVERITY_LEVEL = {"mild": 1, "small": 1, "moderate": 2, "severe": 3, "large": 3}
_LATERALITIES = ("left", "right", "bilateral")
UNCERTAIN_MODES = ("negative", "positive")

#: Columns of :func:`categorize_errors` (one row per study x finding x category).
ERROR_COLUMNS: tuple[str, ...] = (
    "study_id",
    "finding",
    "category",
    "ref_status",
    "gen_status",
    "ref_laterality",
    "gen_laterality",
    "ref_severity",
    "gen_severity",
    "detail",
)
#: Columns of :func:`compare_findings` (one row per study x finding).
COMPARISON_COLUMNS: tuple[str, ...] = (
    "study_id",
    "finding",
    "ref_status",
    "gen_status",
    "ref_laterality",
    "gen_laterality",
    "ref_severity",
    "gen_severity",
    "ref_present",
    "gen_present",
    *CATEGORIES,
)


# ============================================================================ finding states
class FindingState(NamedTuple):
    """What one report says about one finding.

    Attributes:
        status: 1.0 (positive), -1.0 (uncertain), 0.0 (negative) or None (not mentioned).
        laterality: "left", "right", "bilateral" or None.
        severity: "mild" / "moderate" / "severe" ("small" / "moderate" / "large" for effusion,
            pneumothorax and lung lesion) or None.
    """

    status: float | None
    laterality: str | None
    severity: str | None


def status_name(status: float | None) -> str:
    """1.0 -> "positive", -1.0 -> "uncertain", 0.0 -> "negative", None/NaN -> "not mentioned"."""
    if status is None or (isinstance(status, float) and math.isnan(status)):
        return "not mentioned"
    try:
        return _STATE_OF[float(status)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"status must be 1, 0, -1 or None, got {status!r}") from None


def _combine_sides(sides: Iterable[str | None]) -> str | None:
    """Sides of several mentions -> one: "bilateral" if any says so or left and right both
    occur, else the one side, else None."""
    found = {s for s in sides if s}
    if "bilateral" in found or {"left", "right"} <= found:
        return "bilateral"
    return found.pop() if found else None


def finding_state(mentions: Iterable[Mention], label: str) -> FindingState:
    """Summarise a report's mentions of one finding, the way CheXpert aggregates labels.

    Status: positive > uncertain > negative > not mentioned (None) over the label's mentions.
    Laterality and severity come from the mentions *with that status* only ("Left effusion.
    No right effusion." is a left effusion): sides combine to "bilateral" when a mention says
    bilateral or left and right both occur; severity is the most severe one given.

    Args:
        mentions: ``label_report(text).mentions`` (mentions of other labels are ignored).
        label: one of :data:`FINDINGS`.

    Raises:
        ValueError: unknown label.
    """
    if label not in FINDINGS:
        raise ValueError(f"unknown finding {label!r}; expected one of {FINDINGS}")
    own = [m for m in mentions if m.label == label]
    statuses = {m.status for m in own}
    status = next((s for s in (POSITIVE, UNCERTAIN, NEGATIVE) if s in statuses), None)
    if status is None:
        return FindingState(None, None, None)
    chosen = [m for m in own if m.status == status]
    grades = [m.severity for m in chosen if m.severity]
    severity = max(grades, key=_SEVERITY_LEVEL.__getitem__) if grades else None
    return FindingState(status, _combine_sides(m.laterality for m in chosen), severity)


def report_states(text: str, findings: Sequence[str] = FINDINGS) -> dict[str, FindingState]:
    """``{finding: finding_state(...)}`` for one report (labeled once)."""
    mentions = label_report(text).mentions
    return {label: finding_state(mentions, label) for label in findings}


# ============================================================================ comparison
def _check_texts(
    references: Sequence[str], generated: Sequence[str], study_ids: Sequence[Any] | None
) -> list[Any]:
    for name, texts in (("references", references), ("generated", generated)):
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"{name} must be a list of report strings, got {type(texts).__name__}")
    if len(references) != len(generated):
        raise ValueError(
            f"{len(references)} references but {len(generated)} generated reports: they must be "
            "aligned one to one (same studies, same order)"
        )
    ids = list(range(len(references))) if study_ids is None else list(study_ids)
    if len(ids) != len(references):
        raise ValueError(f"{len(ids)} study ids for {len(references)} reports")
    seen: set[Any] = set()
    for i, sid in enumerate(ids):
        if sid in seen:
            raise ValueError(f"study id {sid!r} occurs twice (position {i}); ids must be unique")
        seen.add(sid)
    for i, (ref, gen) in enumerate(zip(references, generated, strict=True)):
        if not isinstance(ref, str):
            raise TypeError(f"reference {i} (study {ids[i]!r}) is {type(ref).__name__}, not str")
        if not ref.strip():
            raise ValueError(f"reference {i} (study {ids[i]!r}) is empty: nothing to compare with")
        if not isinstance(gen, str):
            raise TypeError(
                f"generated report {i} (study {ids[i]!r}) is {type(gen).__name__}, not str "
                "(an empty generation is the empty string)"
            )
    return ids


def _frame(rows: list[tuple], columns: Sequence[str], bools: Sequence[str] = ()) -> pd.DataFrame:
    """A table whose text columns keep None for "not given" (object dtype: pandas' string
    dtype would turn None into NaN, which is truthy)."""
    frame = pd.DataFrame(rows, columns=list(columns), dtype=object)
    return frame.astype({c: bool for c in bools}) if bools else frame


def _present(status: float | None, uncertain: str) -> bool:
    return status == POSITIVE or (uncertain == "positive" and status == UNCERTAIN)


def compare_findings(
    references: Sequence[str],
    generated: Sequence[str],
    study_ids: Sequence[Any] | None = None,
    *,
    findings: Sequence[str] = FINDINGS,
    uncertain: str = "negative",
) -> pd.DataFrame:
    """Reference vs generated, one row per study x finding, with a flag per error category.

    Args:
        references: reference reports (non-empty strings).
        generated: generated reports aligned with ``references`` ("" = the model wrote nothing).
        study_ids: one unique id per study (default 0..N-1).
        findings: the labels to compare (default the 13 findings).
        uncertain: ``"negative"`` (default: an uncertain mention does not state the finding,
            as in CE F1) or ``"positive"``.

    Returns:
        DataFrame with :data:`COMPARISON_COLUMNS`: states as words (:data:`STATES`), sides and
        severities (None when not given), ``ref_present`` / ``gen_present`` and one bool column
        per category of :data:`CATEGORIES` (see the module docstring).

    Raises:
        TypeError / ValueError: misaligned or non-string input, an empty reference, duplicate
            study ids, unknown finding or ``uncertain`` mode.
    """
    if uncertain not in UNCERTAIN_MODES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_MODES}, got {uncertain!r}")
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; expected some of {FINDINGS}")
    ids = _check_texts(references, generated, study_ids)
    rows = []
    for sid, ref_text, gen_text in zip(ids, references, generated, strict=True):
        ref_states = report_states(ref_text, findings)
        gen_states = report_states(gen_text, findings)
        for label in findings:
            ref, gen = ref_states[label], gen_states[label]
            ref_present, gen_present = (
                _present(ref.status, uncertain),
                _present(gen.status, uncertain),
            )
            both = ref_present and gen_present
            rows.append(
                (
                    sid, label, status_name(ref.status), status_name(gen.status),
                    ref.laterality, gen.laterality, ref.severity, gen.severity,
                    ref_present, gen_present,
                    ref_present and not gen_present,
                    gen_present and not ref_present,
                    both and bool(ref.laterality and gen.laterality)
                    and ref.laterality != gen.laterality,
                    both and bool(ref.severity and gen.severity) and ref.severity != gen.severity,
                    both and (bool(ref.laterality and not gen.laterality)
                              or bool(ref.severity and not gen.severity)),
                )
            )  # fmt: skip
    return _frame(rows, COMPARISON_COLUMNS, bools=("ref_present", "gen_present", *CATEGORIES))


def _detail(row: Any, category: str) -> str:
    def described(status: str, side: str | None, grade: str | None) -> str:
        extra = ", ".join(str(x) for x in (side, grade) if x)
        return f"{status} ({extra})" if extra else status

    ref = described(row.ref_status, row.ref_laterality, row.ref_severity)
    gen = described(row.gen_status, row.gen_laterality, row.gen_severity)
    if category in ("missed", "hallucinated"):
        return f"reference: {ref}; generated: {gen}"
    if category == "laterality":
        return f"{row.ref_laterality} -> {row.gen_laterality}"
    if category == "severity":
        up = _SEVERITY_LEVEL[row.gen_severity] > _SEVERITY_LEVEL[row.ref_severity]
        return f"{row.ref_severity} -> {row.gen_severity} ({'over' if up else 'under'}-called)"
    omitted = []
    if row.ref_laterality and not row.gen_laterality:
        omitted.append(f"laterality ({row.ref_laterality})")
    if row.ref_severity and not row.gen_severity:
        omitted.append(f"severity ({row.ref_severity})")
    return "omits " + " and ".join(omitted)


def errors_from_comparison(comparison: pd.DataFrame) -> pd.DataFrame:
    """The tidy error table (:data:`ERROR_COLUMNS`) of a :func:`compare_findings` table.

    Rows come in study order, then finding order, then :data:`CATEGORIES` order; ``detail``
    says what went wrong in words ("left -> right", "small -> large (over-called)",
    "omits laterality (left)").
    """
    missing = [c for c in COMPARISON_COLUMNS if c not in comparison.columns]
    if missing:
        raise ValueError(f"not a compare_findings table: missing column(s) {missing}")
    rows = []
    for row in comparison.itertuples(index=False):
        for category in CATEGORIES:
            if getattr(row, category):
                rows.append(
                    (
                        row.study_id, row.finding, category, row.ref_status, row.gen_status,
                        row.ref_laterality, row.gen_laterality, row.ref_severity,
                        row.gen_severity, _detail(row, category),
                    )
                )  # fmt: skip
    return _frame(rows, ERROR_COLUMNS)


def categorize_errors(
    references: Sequence[str],
    generated: Sequence[str],
    study_ids: Sequence[Any] | None = None,
    *,
    uncertain: str = "negative",
) -> pd.DataFrame:
    """Categorise the errors of generated reports against their references.

    The core of :func:`error_analysis`, on plain text pairs (see the module docstring for the
    five categories and what "states a finding" means).

    Returns:
        tidy DataFrame, one row per study x finding x category (:data:`ERROR_COLUMNS`); no
        row for a study without errors.

    Example:
        >>> categorize_errors(["Small left pleural effusion."], ["Large right pleural effusion."],
        ...                   ["s1"])[["finding", "category", "detail"]].values.tolist()
        [['Pleural Effusion', 'laterality', 'left -> right'], ['Pleural Effusion', 'severity', 'small -> large (over-called)']]
    """
    return errors_from_comparison(
        compare_findings(references, generated, study_ids, uncertain=uncertain)
    )


def _dataset_texts(test_dataset: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """(reference reports, metadata) of a ReportDataset or a load_mimic_cxr_dataset dict."""
    if isinstance(test_dataset, Mapping):
        missing = [k for k in ("reports", "metadata") if k not in test_dataset]
        if missing:
            raise ValueError(f"test_dataset lacks key(s) {missing}")
        return list(test_dataset["reports"]), list(test_dataset["metadata"])
    if hasattr(test_dataset, "reports") and hasattr(test_dataset, "metadata"):
        return list(test_dataset.reports), list(test_dataset.metadata)
    raise TypeError(
        "test_dataset must be a ReportDataset or a load_mimic_cxr_dataset dict (reports + "
        f"metadata), got {type(test_dataset).__name__}"
    )


def error_analysis(
    model: Any,
    test_dataset: Any,
    predictions: Sequence[str] | None = None,
    *,
    indices: Sequence[int] | None = None,
    uncertain: str = "negative",
    batch_size: int = 64,
    max_new_tokens: int = 120,
    progress: bool = False,
) -> pd.DataFrame:
    """Categorise the errors of a model's reports on a test split (one row per study x finding
    x category; see :func:`categorize_errors`).

    Args:
        model: the report generator; only used when ``predictions`` is None (greedy reports
            are then generated with :func:`course_utils.train.generate_reports`).
        test_dataset: a :class:`~course_utils.train.ReportDataset` or a
            :func:`~course_utils.data.load_mimic_cxr_dataset` dict; its ``reports`` (raw
            findings) are the references and ``metadata[i]["study_id"]`` the ids.
        predictions: generated reports aligned with the dataset, or with ``indices``.
        indices: the dataset positions the predictions belong to (default: all, in order).
        uncertain: see :func:`compare_findings`.

    Raises:
        ValueError: predictions and studies do not align; TypeError: no predictions and no
            model/ReportDataset to generate them.
    """
    references, metadata = _dataset_texts(test_dataset)
    idx = list(range(len(references))) if indices is None else [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < len(references)]
    if bad:
        raise ValueError(f"indices {bad[:5]} are outside the dataset (size {len(references)})")
    if predictions is None:
        if model is None or not hasattr(test_dataset, "prompts"):
            raise TypeError("without predictions, pass the model and a ReportDataset to generate")
        from .train import generate_reports

        predictions = generate_reports(
            model, test_dataset, idx, batch_size=batch_size, max_new_tokens=max_new_tokens,
            progress=progress,
        )  # fmt: skip
    if len(predictions) != len(idx):
        raise ValueError(
            f"{len(predictions)} predictions for {len(idx)} studies: pass one generated report "
            "per study of the dataset (or per entry of `indices`), in the same order"
        )
    ids = [metadata[i].get("study_id", i) for i in idx]
    return categorize_errors(
        [references[i] for i in idx], list(predictions), ids, uncertain=uncertain
    )


# ============================================================================ summaries
def error_counts(errors: pd.DataFrame, findings: Sequence[str] = FINDINGS) -> pd.DataFrame:
    """Errors per finding (rows, :data:`FINDINGS` order) and category (columns), zeros kept,
    with a ``total`` column and row."""
    for col in ("finding", "category"):
        if col not in errors.columns:
            raise ValueError(f"not an error table: column {col!r} missing")
    table = pd.crosstab(errors["finding"], errors["category"]) if len(errors) else None
    out = pd.DataFrame(0, index=pd.Index(list(findings), name="finding"), columns=list(CATEGORIES))
    if table is not None:
        out = out.add(
            table.reindex(index=out.index, columns=out.columns, fill_value=0), fill_value=0
        )
    out = out.astype(int)
    out["total"] = out.sum(axis=1)
    out.loc["total"] = out.sum(axis=0)
    return out


def confusion_matrix(comparison: pd.DataFrame, finding: str) -> pd.DataFrame:
    """Counts of reference state (rows) x generated state (columns) for one finding, both over
    :data:`STATES` (positive, uncertain, negative, not mentioned)."""
    if finding not in set(comparison["finding"]):
        raise ValueError(f"finding {finding!r} is not in the comparison table")
    rows = comparison[comparison["finding"] == finding]
    table = pd.crosstab(rows["ref_status"], rows["gen_status"])
    table = table.reindex(index=list(STATES), columns=list(STATES), fill_value=0).astype(int)
    table.index.name, table.columns.name = "reference", "generated"
    return table


def laterality_matrix(comparison: pd.DataFrame, finding: str) -> pd.DataFrame:
    """Reference side (rows) x generated side (columns) over the studies where both reports
    state ``finding``; sides left / right / bilateral / none (not given)."""
    if finding not in set(comparison["finding"]):
        raise ValueError(f"finding {finding!r} is not in the comparison table")
    rows = comparison[
        (comparison["finding"] == finding) & comparison["ref_present"] & comparison["gen_present"]
    ]
    sides = [*_LATERALITIES, "none"]
    ref = pd.Categorical([s or "none" for s in rows["ref_laterality"]], categories=sides)
    gen = pd.Categorical([s or "none" for s in rows["gen_laterality"]], categories=sides)
    table = pd.crosstab(ref, gen, dropna=False).reindex(index=sides, columns=sides, fill_value=0)
    table.index.name, table.columns.name = "reference", "generated"
    return table.astype(int)


def sensitivity(matrix: pd.DataFrame) -> float:
    """Share of reference-positive studies that the generated report also calls positive
    (NaN without a reference positive)."""
    row = matrix.loc["positive"]
    total = int(row.sum())
    return float(row["positive"]) / total if total else math.nan


def label_prevalence(labels: Any) -> pd.Series:
    """Share of studies with each finding positive, from an (N, 14) CheXpert label matrix
    (1 / 0 / -1 / NaN; uncertain is not positive), indexed by :data:`FINDINGS`."""
    values = np.asarray(labels, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(CHEXPERT_LABELS) or len(values) == 0:
        raise ValueError(f"labels must be a non-empty (N, 14) matrix, got shape {values.shape}")
    return pd.Series(
        (values[:, 1:] == POSITIVE).mean(axis=0), index=list(FINDINGS), name="prevalence"
    )


def _rate(num: pd.Series, den: pd.Series) -> pd.Series:
    return (num / den.where(den > 0)).astype(float)


def error_rates(
    comparison: pd.DataFrame, prevalence: Mapping[str, float] | pd.Series | None = None
) -> pd.DataFrame:
    """Per finding: counts and rates of each error kind, next to the finding's prevalence.

    Returns:
        DataFrame indexed by finding: ``studies``, ``reference_positive``,
        ``generated_positive``, ``both_positive``, the five category counts, ``prevalence``
        (given, e.g. the training split's :func:`label_prevalence`, else the reference
        positive share in ``comparison``), ``miss_rate`` = missed / reference positives,
        ``hallucination_rate`` = hallucinated / reference non-positives and
        ``attribute_error_rate`` = studies with a laterality, severity or incomplete error /
        both positive (NaN where the denominator is 0).
    """
    missing = [c for c in COMPARISON_COLUMNS if c not in comparison.columns]
    if missing:
        raise ValueError(f"not a compare_findings table: missing column(s) {missing}")
    frame = comparison.assign(
        both=comparison["ref_present"] & comparison["gen_present"],
        attribute=comparison["laterality"] | comparison["severity"] | comparison["incomplete"],
    )
    grouped = frame.groupby("finding", sort=False)
    out = pd.DataFrame(
        {
            "studies": grouped.size(),
            "reference_positive": grouped["ref_present"].sum(),
            "generated_positive": grouped["gen_present"].sum(),
            "both_positive": grouped["both"].sum(),
            **{c: grouped[c].sum() for c in CATEGORIES},
        }
    ).astype(int)
    order = [f for f in FINDINGS if f in out.index]
    out = out.loc[order]
    if prevalence is None:
        out["prevalence"] = out["reference_positive"] / out["studies"]
    else:
        prev = pd.Series(prevalence, dtype=float)
        lacking = [f for f in order if f not in prev.index]
        if lacking:
            raise ValueError(f"prevalence lacks finding(s) {lacking}")
        out["prevalence"] = prev.loc[order].to_numpy()
    out["miss_rate"] = _rate(out["missed"], out["reference_positive"])
    out["hallucination_rate"] = _rate(
        out["hallucinated"], out["studies"] - out["reference_positive"]
    )
    out["attribute_error_rate"] = _rate(grouped["attribute"].sum().loc[order], out["both_positive"])
    out.index.name = "finding"
    return out


def read_acquisition(data_dir: PathLike) -> pd.DataFrame:
    """``phantom_acquisition.csv`` of an embedded dataset, indexed by dicom_id: ``exposure``
    (gamma, >1 darker), ``noise`` (std on [0, 1]), ``rotation_deg`` and ``abs_rotation``.

    Raises:
        FileNotFoundError: no such file (real MIMIC-CXR has no recorded acquisition).
        ValueError: malformed CSV (missing columns, non-numeric or duplicate rows).
    """
    from .data.mimic import read_csv_checked

    path = Path(data_dir) / "phantom_acquisition.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: acquisition parameters exist only for the embedded phantom dataset"
        )
    table = read_csv_checked(path, ("dicom_id", "exposure", "noise", "rotation_deg"))
    values = table[["exposure", "noise", "rotation_deg"]].apply(pd.to_numeric, errors="coerce")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        raise ValueError(f"{path}: exposure/noise/rotation_deg must be finite numbers")
    if table["dicom_id"].duplicated().any():
        dup = table.loc[table["dicom_id"].duplicated(), "dicom_id"].iloc[0]
        raise ValueError(f"{path}: dicom_id {dup} occurs twice")
    out = values.set_axis(table["dicom_id"].to_numpy())
    out.index.name = "dicom_id"
    out["abs_rotation"] = out["rotation_deg"].abs()
    return out


def errors_by_study(
    comparison: pd.DataFrame,
    metadata: Sequence[Mapping[str, Any]],
    acquisition: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per compared study: its error counts and (optionally) its image's acquisition.

    Args:
        comparison: :func:`compare_findings` table.
        metadata: dataset metadata dicts with ``study_id`` and ``dicom_id`` (any order/superset).
        acquisition: :func:`read_acquisition` table.

    Returns:
        DataFrame indexed by study_id: ``dicom_id``, ``reference_positive`` (findings the
        reference states), the five category counts, ``errors`` (their sum) and, with
        ``acquisition``, ``exposure``, ``noise``, ``rotation_deg``, ``abs_rotation``.
    """
    dicom_of = {m.get("study_id"): m.get("dicom_id") for m in metadata}
    grouped = comparison.groupby("study_id", sort=False)
    out = pd.DataFrame(
        {
            "reference_positive": grouped["ref_present"].sum(),
            **{c: grouped[c].sum() for c in CATEGORIES},
        }
    ).astype(int)
    out["errors"] = out[list(CATEGORIES)].sum(axis=1)
    lacking = [s for s in out.index if dicom_of.get(s) is None]
    if lacking:
        raise ValueError(f"no dicom_id in metadata for study id(s) {lacking[:5]}")
    out.insert(0, "dicom_id", [dicom_of[s] for s in out.index])
    if acquisition is not None:
        absent = [d for d in out["dicom_id"] if d not in acquisition.index]
        if absent:
            raise ValueError(f"no acquisition record for dicom_id(s) {absent[:3]}")
        acq = acquisition.loc[out["dicom_id"]]
        for col in ("exposure", "noise", "rotation_deg", "abs_rotation"):
            out[col] = acq[col].to_numpy()
    out.index.name = "study_id"
    return out


def error_examples(
    errors: pd.DataFrame, per_category: int = 1, prefer: Sequence[str] = CRITICAL_FINDINGS
) -> pd.DataFrame:
    """Up to ``per_category`` error rows per category, the rows to render as examples:
    critical findings first, then study order; a study already shown (for any category) is
    used again only when the category has no other."""
    picked: list[pd.DataFrame] = []
    shown: set[Any] = set()
    for category in CATEGORIES:
        rows = errors[errors["category"] == category]
        rank = rows["finding"].map(lambda f: prefer.index(f) if f in prefer else len(prefer))
        rows = rows.assign(
            _seen=rows["study_id"].isin(shown).to_numpy(),
            _rank=rank.to_numpy(),
            _pos=np.arange(len(rows)),
        )
        rows = rows.sort_values(["_seen", "_rank", "_pos"]).drop_duplicates("study_id")
        chosen = rows.head(per_category).drop(columns=["_seen", "_rank", "_pos"])
        shown.update(chosen["study_id"])
        picked.append(chosen)
    return pd.concat(picked, ignore_index=True) if picked else errors.head(0)


# ============================================================================ phantom boxes
def read_finding_boxes(data_dir: PathLike, image_size: int | None = None) -> pd.DataFrame:
    """``phantom_findings.csv``: where the phantom generator drew each finding.

    Args:
        data_dir: an embedded dataset folder.
        image_size: the side the images were loaded at; boxes (inclusive pixel corners at the
            build size of ``embedded_dataset.json``) are rescaled to it. None: as stored.

    Returns:
        DataFrame with dicom_id, label, status, laterality (side of the box: left / right /
        midline), severity, x0, y0, x1, y1 (inclusive pixels).

    Raises:
        FileNotFoundError: no such file (only the embedded dataset has drawn findings).
        ValueError: malformed CSV (missing columns, non-integer or inverted boxes).
    """
    from .data.mimic import read_csv_checked

    path = Path(data_dir) / "phantom_findings.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: finding boxes exist only for the embedded phantom dataset"
        )
    cols = ("dicom_id", "label", "status", "laterality", "severity", "x0", "y0", "x1", "y1")
    table = read_csv_checked(path, cols)
    coords = table[["x0", "y0", "x1", "y1"]].apply(pd.to_numeric, errors="coerce")
    if coords.isna().any().any() or not (coords % 1 == 0).all().all():
        raise ValueError(f"{path}: box corners x0, y0, x1, y1 must be integers")
    if (
        (coords["x1"] < coords["x0"]) | (coords["y1"] < coords["y0"]) | (coords < 0).any(axis=1)
    ).any():
        raise ValueError(f"{path}: a box has x1 < x0, y1 < y0 or a negative corner")
    unknown = sorted(set(table["label"]) - set(FINDINGS))
    if unknown:
        raise ValueError(f"{path}: unknown label(s) {unknown[:3]}")
    coords = coords.astype(int)
    if image_size is not None:
        from .data import read_embedded_info

        built = int(read_embedded_info(data_dir)["image_size"])
        scale = image_size / built
        for lo, hi in (("x0", "x1"), ("y0", "y1")):
            coords[lo] = np.floor(coords[lo] * scale).astype(int)
            coords[hi] = (
                (np.ceil((coords[hi] + 1) * scale) - 1).astype(int).clip(upper=image_size - 1)
            )
    table[["x0", "y0", "x1", "y1"]] = coords
    table["severity"] = table["severity"].astype(object).where(table["severity"].notna(), None)
    return table


def boxes_for(boxes: pd.DataFrame, dicom_id: str, label: str) -> list[tuple[int, int, int, int]]:
    """The drawn boxes ``(x0, y0, x1, y1)`` of one finding on one image (empty if not drawn)."""
    rows = boxes[(boxes["dicom_id"] == dicom_id) & (boxes["label"] == label)]
    return [tuple(int(v) for v in r) for r in rows[["x0", "y0", "x1", "y1"]].to_numpy()]


# ============================================================================ pointing score
@dataclass(frozen=True)
class PointingScore:
    """How much attention falls on a drawn finding.

    Attributes:
        mass_in_box: share of the attention mass inside the box(es), in [0, 1].
        area_fraction: share of the image the box(es) cover: what uniform attention would give.
        lift: ``mass_in_box / area_fraction`` (1 = no better than uniform; >1 = on the finding).
        hit: the most-attended grid cell overlaps the box (the "pointing game").
    """

    mass_in_box: float
    area_fraction: float
    lift: float
    hit: bool


def _check_grid(attention: Any) -> np.ndarray:
    grid = np.asarray(attention, dtype=float)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"attention must be a 2-D grid (gh, gw), got shape {grid.shape}")
    if not np.isfinite(grid).all() or (grid < 0).any():
        raise ValueError("attention must be finite and non-negative")
    if grid.sum() <= 0:
        raise ValueError("attention sums to 0: nothing to normalise")
    return grid / grid.sum()


def _cells(size: int, n: int) -> np.ndarray:
    """Grid cell of each of ``size`` pixels along one axis when ``n`` cells cover it."""
    if size < n:
        raise ValueError(f"image side {size} is smaller than the attention grid ({n} cells)")
    return (np.arange(size) * n) // size


def attention_to_pixels(attention: Any, image_size: int) -> np.ndarray:
    """Spread a (gh, gw) attention grid over an (S, S) image: each cell's share is divided
    evenly among the pixels it covers (cell of pixel y = floor(y * gh / S)).

    Returns:
        float array (S, S) summing to 1.
    """
    grid = _check_grid(attention)
    rows, cols = _cells(image_size, grid.shape[0]), _cells(image_size, grid.shape[1])
    per_row = np.bincount(rows, minlength=grid.shape[0])
    per_col = np.bincount(cols, minlength=grid.shape[1])
    density = grid / np.outer(per_row, per_col)
    return density[np.ix_(rows, cols)]


def box_mask(boxes: Iterable[Sequence[int]], image_size: int) -> np.ndarray:
    """Union of inclusive pixel boxes ``(x0, y0, x1, y1)`` as a bool mask (S, S) [row = y]."""
    mask = np.zeros((image_size, image_size), dtype=bool)
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 < x0 or y1 < y0 or min(x0, y0) < 0 or max(x1, y1) >= image_size:
            raise ValueError(f"box {box!r} is inverted or outside a {image_size}px image")
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def pointing_score(
    attention: Any, boxes: Iterable[Sequence[int]], image_size: int
) -> PointingScore:
    """Attention mass inside a finding's drawn box(es) vs the area they cover.

    Args:
        attention: (gh, gw) non-negative attention over visual tokens (normalised here).
        boxes: inclusive pixel boxes ``(x0, y0, x1, y1)`` of one finding (union if several).
        image_size: the image side S the boxes refer to.

    Example: all attention on one cell of a 4 x 4 grid over an 8 px image, box = that cell's
    2 x 2 pixels -> mass 1, area 4 / 64, lift 16, hit.

    Raises:
        ValueError: no box, bad box, bad attention grid.
    """
    boxes = list(boxes)
    if not boxes:
        raise ValueError("pointing_score needs at least one box")
    mask = box_mask(boxes, image_size)
    pixels = attention_to_pixels(attention, image_size)
    mass = float(pixels[mask].sum())
    area = float(mask.mean())
    grid = _check_grid(attention)
    rows, cols = _cells(image_size, grid.shape[0]), _cells(image_size, grid.shape[1])
    r, c = np.unravel_index(int(np.argmax(grid)), grid.shape)
    hit = bool(mask[np.ix_(rows == r, cols == c)].any())
    return PointingScore(mass, area, mass / area, hit)


# ============================================================================ attention maps
@contextmanager
def eager_attention(*modules: Any) -> Iterator[None]:
    """Switch transformers models to the eager attention kernel (SDPA cannot return attention
    weights) for the ``with`` block, restoring their own kernel afterwards."""
    saved = [m.config._attn_implementation for m in modules]
    try:
        for m in modules:
            m.set_attn_implementation("eager")
        yield
    finally:
        for m, impl in zip(modules, saved, strict=True):
            m.set_attn_implementation(impl)


def _check_model(model: Any) -> None:
    for attr in ("lm", "vision", "visual_tokens", "_lm_inputs", "preprocess_images"):
        if not hasattr(model, attr):
            raise TypeError(
                f"attention maps need a RadiologyMultimodalModel (no {attr!r} on "
                f"{type(model).__name__})"
            )


def _one_image(image: Any) -> Any:
    import torch

    image = torch.as_tensor(image, dtype=torch.float32)
    if image.dim() == 2:
        image = image[None, None]
    elif image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 1:
        raise ValueError(f"expected one grayscale image (1, S, S), got shape {tuple(image.shape)}")
    return image


def _token_spans(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` and each token's character span in it."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(s) for s in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):
        pass  # slow tokenizers (e.g. BioGPT's) have no offsets: decode prefixes instead
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    spans, prev = [], 0
    for k in range(len(ids)):
        cur = len(tokenizer.decode(ids[: k + 1], skip_special_tokens=True))
        spans.append((prev, cur))
        prev = cur
    return ids, spans


def finding_token_positions(
    tokenizer: Any, text: str, label: str, statuses: Sequence[float] = (POSITIVE,)
) -> tuple[list[int], list[int]]:
    """Token ids of a generated report and the positions of the tokens that write ``label``.

    The report is labeled; the tokens overlapping the phrase of a mention of ``label`` with a
    status in ``statuses`` (the span the labeler matched, e.g. "small left pleural effusion"
    -> "pleural effusion") are the finding's tokens.

    Returns:
        (ids, positions): ids of ``text`` (no special tokens) and indices into them.
    """
    if label not in FINDINGS:
        raise ValueError(f"unknown finding {label!r}")
    ids, spans = _token_spans(tokenizer, text)
    from .labels import split_sentences

    offsets, cursor = [], 0
    for sentence in split_sentences(text):
        start = text.find(sentence, cursor)
        offsets.append(start)
        cursor = start + len(sentence)
    targets = [
        (offsets[m.sentence_index] + m.start, offsets[m.sentence_index] + m.end)
        for m in label_report(text).mentions
        if m.label == label and m.status in statuses
    ]
    positions = [
        k for k, (a, b) in enumerate(spans) if b > a and any(a < e and b > s for s, e in targets)
    ]
    return ids, positions


@dataclass(frozen=True)
class LMAttention:
    """Where the language model looked among the visual tokens while writing some tokens.

    Attributes:
        grid: (g, g) attention over the visual tokens (row-major patch grid), summing to 1.
        visual_share: mean share of those tokens' attention that went to visual tokens at all
            (the rest went to the prompt and the report written so far).
        positions: the generated-token positions used.
    """

    grid: np.ndarray
    visual_share: float
    positions: tuple[int, ...] = field(default=())


def _lm_attention(
    model: Any, tokenizer: Any, image: Any, prompt: str, text: str, layers: Sequence[int] | None
) -> tuple[Any, int, int, int]:
    """One teacher-forced pass with eager attention -> (attention (T, T) averaged over heads and
    ``layers``, visual tokens N, prompt tokens P, text tokens L).

    Label-prompt tokens, when the model has them, sit between the visual tokens and the
    prompt; they count in P here (they are not part of the image grid)."""
    import torch

    from .model.prompts import encode_prompt

    _check_model(model)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError("the generated text has no tokens")
    prompt_ids = encode_prompt(tokenizer, prompt)
    if not prompt_ids:
        raise ValueError("the prompt encodes to no token: nothing predicts the first word")
    device = model.device
    with torch.no_grad(), eager_attention(model.lm):
        pixels = _one_image(image).to(device)
        prefix = model.prefix_tokens(pixels) if hasattr(model, "prefix_tokens") else None
        visual = model.visual_tokens(pixels)
        if prefix is None:
            prefix = visual
        input_ids = torch.tensor([prompt_ids + ids], device=device)
        inputs, _ = model._lm_inputs(prefix, input_ids, None)
        out = model.lm(**inputs, output_attentions=True, use_cache=False)
    chosen = range(len(out.attentions)) if layers is None else list(layers)
    att = torch.stack([out.attentions[k][0].float() for k in chosen]).mean(dim=(0, 1))
    n_label = int(prefix.shape[1] - visual.shape[1])
    return att, int(visual.shape[1]), n_label + len(prompt_ids), len(ids)


def _visual_rows(att: Any, n: int, n_prompt: int, positions: Sequence[int]) -> LMAttention:
    """Rows that predicted ``positions`` -> their normalised attention over the visual grid."""
    import torch

    rows = torch.tensor([n + n_prompt + p - 1 for p in positions], device=att.device)
    visual_rows = att[rows, :n]  # (P, N)
    share = float(visual_rows.sum(dim=1).mean())
    weights = visual_rows.mean(dim=0).cpu().numpy()
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} visual tokens do not form a square grid")
    grid = weights.reshape(side, side)
    return LMAttention(grid / grid.sum(), share, tuple(positions))


def lm_visual_attention(
    model: Any,
    tokenizer: Any,
    image: Any,
    prompt: str,
    text: str,
    positions: Sequence[int],
    layers: Sequence[int] | None = None,
) -> LMAttention:
    """Attention of generated tokens to the visual tokens of a RadiologyMultimodalModel.

    The sequence ``[visual tokens (N) | <bos> prompt | text]`` is run once by teacher forcing
    with eager attention. For each chosen token of ``text`` the attention row of the position
    that *predicted* it (the one before it: where the model decided to write that word) is
    taken, averaged over heads and ``layers`` (default all), restricted to the N visual
    columns; rows are averaged and renormalised. Visual tokens are the encoder's patch grid
    (pooled to ``visual_grid``), row-major, so the result is a (g, g) map over the image.

    Args:
        image: (1, S, S) or (S, S) in [0, 1].
        prompt: the prompt the report was generated with (``dataset.prompts[i]``).
        text: the generated report; ``positions`` index its tokens
            (see :func:`finding_token_positions`).

    Raises:
        ValueError: no positions, positions outside the text, empty text.
    """
    positions = sorted({int(p) for p in positions})
    n_text = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not positions or positions[0] < 0 or positions[-1] >= n_text:
        raise ValueError(f"positions must be non-empty indices into the {n_text} text tokens")
    att, n, n_prompt, _ = _lm_attention(model, tokenizer, image, prompt, text, layers)
    return _visual_rows(att, n, n_prompt, positions)


def vit_attention_rollout(model: Any, image: Any, residual: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020) from the encoder's CLS token to its patches.

    Per layer the head-averaged attention ``A`` becomes ``residual·I + (1-residual)·A``
    (the skip connection), rows renormalised; the product over layers, CLS row, patch
    columns, is how much each patch reaches the CLS token that the detection head reads.

    Returns:
        (side, side) map over the encoder's patch grid (before pooling), summing to 1.
    """
    import torch

    _check_model(model)
    if not 0.0 <= residual < 1.0:
        raise ValueError(f"residual must be in [0, 1), got {residual}")
    vision = model.vision
    pixel_values = model.preprocess_images(_one_image(image).to(model.device))
    kwargs: dict[str, Any] = {}
    native = int(getattr(vision.config, "image_size", pixel_values.shape[-1]))
    if model.config.vision_family == "vit" and pixel_values.shape[-1] != native:
        kwargs["interpolate_pos_encoding"] = True
    with torch.no_grad(), eager_attention(vision):
        out = vision(pixel_values=pixel_values.to(next(vision.parameters()).dtype),
                     output_attentions=True, **kwargs)  # fmt: skip
    rollout = None
    for layer in out.attentions:
        a = layer[0].float().mean(dim=0)
        a = residual * torch.eye(a.shape[0], device=a.device) + (1 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    cls_row = rollout[0, prefix:].cpu().numpy()
    side = math.isqrt(cls_row.size)
    if side * side != cls_row.size:
        raise ValueError(f"{cls_row.size} patch tokens do not form a square grid")
    grid = cls_row.reshape(side, side)
    return grid / grid.sum()


def finding_attention(
    model: Any, dataset: Any, index: int, text: str, finding: str
) -> tuple[np.ndarray, str]:
    """The attention map to show for one study's finding, and where it comes from.

    ``"lm"``: the language model's attention to the visual tokens while it wrote the finding's
    words (:func:`lm_visual_attention`), when ``text`` states the finding; otherwise (a missed
    finding has no words to follow) ``"vit_rollout"``: what the encoder's CLS token - the
    detection head's input - gathered from the image (:func:`vit_attention_rollout`).

    Args:
        dataset: the ReportDataset ``text`` was generated for (pixels, prompts, tokenizer);
        index: the study's position in it.
    """
    image = dataset.pixels[index]
    positions: list[int] = []
    if text.strip():
        _, positions = finding_token_positions(dataset.tokenizer, text, finding)
    if positions:
        lm = lm_visual_attention(
            model, dataset.tokenizer, image, dataset.prompts[index], text, positions
        )
        return lm.grid, "lm"
    return vit_attention_rollout(model, image), "vit_rollout"


@dataclass
class PointingResult:
    """:func:`pointing_table`'s output: the scores and the attention grids behind them.

    Attributes:
        table: one row per (study, finding, source): index, study_id, dicom_id, finding,
            source ("lm" or "vit_rollout"), mass_in_box, area_fraction, lift, hit,
            visual_share (lm only), tokens (lm only).
        maps: ``(index, finding, source) -> grid`` for plotting.
    """

    table: pd.DataFrame
    maps: dict[tuple[int, str, str], np.ndarray]


def pointing_table(
    model: Any,
    dataset: Any,
    predictions: Sequence[str],
    boxes: pd.DataFrame,
    indices: Sequence[int] | None = None,
    findings: Sequence[str] = FINDINGS,
    rollout: bool = True,
    progress: bool = False,
) -> PointingResult:
    """Pointing scores of the LM's finding-token attention (and the encoder rollout) on every
    finding that a generated report states *and* the phantom drew on its image.

    Args:
        model: RadiologyMultimodalModel; dataset: its ReportDataset (pixels, prompts,
            tokenizer, metadata with dicom_id); predictions: generated reports aligned with
            ``indices`` (default all studies); boxes: :func:`read_finding_boxes` at the
            dataset's image size.
    """
    from tqdm.auto import tqdm

    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if len(predictions) != len(idx):
        raise ValueError(f"{len(predictions)} predictions for {len(idx)} studies")
    size = int(dataset.pixels.shape[-1])
    rows: list[dict[str, Any]] = []
    maps: dict[tuple[int, str, str], np.ndarray] = {}
    by_dicom = {d: g for d, g in boxes.groupby("dicom_id")}
    for i, text in tqdm(list(zip(idx, predictions, strict=True)), desc="attention",
                        disable=not progress, leave=False):  # fmt: skip
        meta = dataset.metadata[i]
        drawn = by_dicom.get(meta.get("dicom_id"))
        if drawn is None or not text.strip():
            continue
        states = report_states(text, findings)
        image = dataset.pixels[i]
        vit_grid = att = None
        for label in findings:
            own = boxes_for(drawn, meta["dicom_id"], label)
            if states[label].status != POSITIVE or not own:
                continue
            _, positions = finding_token_positions(dataset.tokenizer, text, label)
            if not positions:
                continue
            if att is None:  # one pass serves every finding of the study
                att, n, n_prompt, _ = _lm_attention(
                    model, dataset.tokenizer, image, dataset.prompts[i], text, None
                )
            lm = _visual_rows(att, n, n_prompt, positions)
            sources = [("lm", lm.grid, lm.visual_share, len(positions))]
            if rollout:
                vit_grid = vit_attention_rollout(model, image) if vit_grid is None else vit_grid
                sources.append(("vit_rollout", vit_grid, math.nan, 0))
            for source, grid, share, n_tok in sources:
                score = pointing_score(grid, own, size)
                maps[(i, label, source)] = grid
                rows.append({
                    "index": i, "study_id": meta.get("study_id"), "dicom_id": meta["dicom_id"],
                    "finding": label, "source": source, "mass_in_box": score.mass_in_box,
                    "area_fraction": score.area_fraction, "lift": score.lift, "hit": score.hit,
                    "visual_share": share, "tokens": n_tok,
                })  # fmt: skip
    columns = ["index", "study_id", "dicom_id", "finding", "source", "mass_in_box",
               "area_fraction", "lift", "hit", "visual_share", "tokens"]  # fmt: skip
    return PointingResult(pd.DataFrame(rows, columns=columns), maps)


def pointing_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per source: pairs scored, mean attention mass in the box, mean box area (= uniform
    attention's mass), mean lift, pointing-game hit rate and (lm) mean visual share."""
    columns = ["pairs", "mass_in_box", "area_fraction", "lift", "hit_rate", "visual_share"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    grouped = table.groupby("source")
    return pd.DataFrame({
        "pairs": grouped.size(),
        "mass_in_box": grouped["mass_in_box"].mean(),
        "area_fraction": grouped["area_fraction"].mean(),
        "lift": grouped["lift"].mean(),
        "hit_rate": grouped["hit"].mean(),
        "visual_share": grouped["visual_share"].mean(),
    })[columns]  # fmt: skip
