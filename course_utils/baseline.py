"""The template baseline of case study §3.3: labels -> template sentences -> findings paragraph.

The case study's baseline "extracts CheXpert labels using a pretrained classifier, then fills a
template report" (BLEU-4 0.08, RadGraph F1 0.22). This module has both halves:

* :func:`template_baseline` turns a list of findings into an IU-style FINDINGS paragraph;
* :func:`train_label_classifier` / :func:`predict_labels` give it labels from the image (a
  scikit-learn logistic regression per label on downsampled pixels; seconds on a CPU), and
  :func:`findings_from_report` gives it the reference report's own labels (the *oracle*, the
  ceiling of template filling).

Input of the template: findings
    A finding is ``(label, status, laterality, severity)`` - the :class:`Finding` named tuple;
    :func:`as_findings` also accepts :class:`course_utils.labels.Mention` objects, a
    :class:`~course_utils.labels.ReportLabels`, a ``{label: status}`` dict or shorter tuples.
    ``label`` is one of ``CHEXPERT_LABELS[1:]``, ``status`` 1.0 (positive), -1.0 (uncertain) or
    0.0 (negative), ``laterality`` ``"left" | "right" | "bilateral" | None`` and ``severity``
    ``"mild" | "moderate" | "severe"`` (``"small" | "moderate" | "large"`` for the size labels
    Pleural Effusion, Pneumothorax, Lung Lesion; the two scales are mapped onto each other as
    the labeler does). Laterality is ignored for Cardiomegaly, Enlarged Cardiomediastinum and
    Support Devices, severity for Support Devices. "No Finding" is derived, never written: a
    paragraph without positive or uncertain findings *is* a normal report.

Assembly (deterministic; the input order does not matter)
    1. per label keep the findings of its strongest status (positive > uncertain > negative,
       the labeler's aggregation), drop exact duplicates and findings that a more specific
       one of the same label and status covers (no side/severity vs "left"/"small");
    2. walk the sections in reading order - heart, mediastinum, lungs, pleura, bones, devices
       (:data:`SECTIONS`) - and the labels of each section in ``CHEXPERT_LABELS`` order;
    3. a positive finding becomes "There is {a} {severity} {side} {noun}." (:data:`TEMPLATES`),
       an uncertain one "Possible {severity} {side} {noun}.";
    4. a section with no positive or uncertain finding gets its normal sentence ("The lungs are
       clear.", "No pleural effusion or pneumothorax."); negatives that the normal sentence
       does not already state are added as one sentence "No {noun}, {noun} or {noun}.".

The sentences are IU X-ray's own most frequent ones where they exist ("The heart is normal in
size.", "The mediastinum is unremarkable.", "The lungs are clear.") and are written so that
:func:`course_utils.labels.label_report` reads back every input label, laterality and severity
(``tests/test_baseline.py`` checks the round trip on all labels, states, sides and severities).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .labels import (
    CHEXPERT_LABELS,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    Mention,
    ReportLabels,
    label_report,
)

__all__ = [
    "CASE_STUDY_BASELINE",
    "FIXED_NORMAL_REPORT",
    "FINDING_LABELS",
    "SCORE_COLUMNS",
    "SECTIONS",
    "TEMPLATES",
    "Finding",
    "LabelClassifier",
    "Section",
    "Template",
    "as_findings",
    "bleu_by_group",
    "classifier_report",
    "comparison_table",
    "downsample",
    "findings_from_report",
    "predict_labels",
    "predict_proba",
    "render_finding",
    "score_system",
    "template_baseline",
    "templates_table",
    "train_label_classifier",
]

#: Labels a finding can name (every CheXpert label but the derived "No Finding").
FINDING_LABELS: tuple[str, ...] = tuple(CHEXPERT_LABELS[1:])
LATERALITIES: tuple[str, ...] = ("left", "right", "bilateral")
_SIZE_LABELS = frozenset({"Pleural Effusion", "Pneumothorax", "Lung Lesion"})
_NO_LATERALITY = frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum", "Support Devices"})
_NO_SEVERITY = frozenset({"Support Devices"})
# The labeler's two severity scales and how one maps onto the other.
_SIZE_OF = {"mild": "small", "small": "small", "moderate": "moderate", "severe": "large",
            "large": "large"}  # fmt: skip
_GRADE_OF = {"small": "mild", "mild": "mild", "moderate": "moderate", "large": "severe",
             "severe": "severe"}  # fmt: skip
_STATUS_RANK = {POSITIVE: 0, UNCERTAIN: 1, NEGATIVE: 2}


class Finding(NamedTuple):
    """One finding to write: ``(label, status, laterality, severity)``."""

    label: str
    status: float
    laterality: str | None = None
    severity: str | None = None


@dataclass(frozen=True)
class Template:
    """How one label is written.

    Attributes:
        article: ``"a "`` for count nouns ("a pleural effusion"), ``""`` for mass nouns.
        phrase: noun phrase with ``{severity}`` and ``{side}`` (adjectives before the noun) or
            ``{in_side}`` (" in the left lung" / " in both lungs" after it) slots.
        negative: noun phrase after "No" ("No pleural effusion").
    """

    article: str
    phrase: str
    negative: str


TEMPLATES: dict[str, Template] = {
    "Enlarged Cardiomediastinum": Template("", "{severity} mediastinal widening", "mediastinal widening"),
    "Cardiomegaly": Template("", "{severity} cardiomegaly", "cardiomegaly"),
    "Lung Lesion": Template("a ", "{severity} {side} lung nodule", "pulmonary nodule"),
    "Lung Opacity": Template("", "{severity} {side} airspace opacity", "focal airspace opacity"),
    "Edema": Template("", "{severity} {side} pulmonary edema", "pulmonary edema"),
    "Consolidation": Template("", "{severity} focal consolidation{in_side}", "focal consolidation"),
    "Pneumonia": Template("", "{severity} pneumonia{in_side}", "pneumonia"),
    "Atelectasis": Template("", "{severity} atelectasis{in_side}", "atelectasis"),
    "Pneumothorax": Template("a ", "{severity} {side} pneumothorax", "pneumothorax"),
    "Pleural Effusion": Template("a ", "{severity} {side} pleural effusion", "pleural effusion"),
    "Pleural Other": Template("", "{severity} {side} pleural thickening", "pleural thickening"),
    "Fracture": Template("a ", "{severity} {side} rib fracture", "fracture"),
    "Support Devices": Template("", "support devices", "support devices"),
}  # fmt: skip


@dataclass(frozen=True)
class Section:
    """One part of the paragraph.

    Attributes:
        name: "heart", "mediastinum", "lungs", "pleura", "bones" or "devices".
        labels: the labels written in this section, in order.
        normal: sentence written when the section has no positive or uncertain finding
            (``None``: nothing).
        normal_negates: labels the normal sentence already states as negative.
    """

    name: str
    labels: tuple[str, ...]
    normal: str | None
    normal_negates: tuple[str, ...] = field(default=())


SECTIONS: tuple[Section, ...] = (
    Section("heart", ("Cardiomegaly",), "The heart is normal in size.", ("Cardiomegaly",)),
    Section("mediastinum", ("Enlarged Cardiomediastinum",), "The mediastinum is unremarkable.",
            ("Enlarged Cardiomediastinum",)),
    Section("lungs", ("Lung Lesion", "Lung Opacity", "Edema", "Consolidation", "Pneumonia",
                      "Atelectasis"), "The lungs are clear."),
    Section("pleura", ("Pneumothorax", "Pleural Effusion", "Pleural Other"),
            "No pleural effusion or pneumothorax.", ("Pleural Effusion", "Pneumothorax")),
    Section("bones", ("Fracture",), "No acute bony abnormality."),
    Section("devices", ("Support Devices",), None),
)  # fmt: skip

#: What template filling writes when nothing is found - and baseline (c) of notebook 03, the
#: same text for every study. Each sentence is among IU X-ray's most frequent findings sentences.
FIXED_NORMAL_REPORT = (
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear. "
    "No pleural effusion or pneumothorax. No acute bony abnormality."
)


# ------------------------------------------------------------------------------ input
def _status(value: Any, where: str) -> float | None:
    try:
        status = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: status must be 1, 0 or -1, got {value!r}") from None
    if math.isnan(status):
        return None  # "not mentioned": nothing to write
    if status not in _STATUS_RANK:
        raise ValueError(f"{where}: status must be 1, 0 or -1 (or NaN), got {value!r}")
    return status


def _finding(label: Any, status: Any, laterality: Any, severity: Any, where: str) -> Finding | None:
    if label not in FINDING_LABELS:
        if label == "No Finding":
            return None  # derived from the others, never written
        raise ValueError(f"{where}: unknown label {label!r}; expected one of {FINDING_LABELS}")
    value = _status(status, where)
    if value is None:
        return None
    if laterality is not None and laterality not in LATERALITIES:
        raise ValueError(f"{where}: laterality must be one of {LATERALITIES} or None, got {laterality!r}")  # fmt: skip
    if severity is not None and severity not in _SIZE_OF:
        raise ValueError(f"{where}: severity must be one of {sorted(_SIZE_OF)} or None, got {severity!r}")  # fmt: skip
    if label in _NO_LATERALITY:
        laterality = None
    if label in _NO_SEVERITY:
        severity = None
    elif severity is not None:
        severity = (_SIZE_OF if label in _SIZE_LABELS else _GRADE_OF)[severity]
    return Finding(label, value, laterality, severity)


def as_findings(labels: Any) -> list[Finding]:
    """Normalise any supported label input to a list of :class:`Finding` (input order kept).

    Accepts ``None``, a :class:`~course_utils.labels.ReportLabels` (its mentions, or its values
    when it has none), a ``{label: status}`` mapping (None/NaN = not mentioned), or an iterable
    of :class:`Finding`, :class:`~course_utils.labels.Mention` or tuples ``(label, status[,
    laterality[, severity]])``. "No Finding" and NaN statuses are dropped; laterality and
    severity are cleaned as the module docstring says.

    Raises:
        TypeError: an item of an unsupported type.
        ValueError: unknown label, status, laterality or severity (the message names the item).
    """
    if labels is None:
        return []
    if isinstance(labels, ReportLabels):
        if labels.mentions:
            labels = labels.mentions
        else:
            labels = labels.values
    if isinstance(labels, Mapping):
        items: Iterable[Any] = [(k, v) for k, v in labels.items() if v is not None]
    elif isinstance(labels, str):
        raise TypeError("labels must be a list of findings, not a string (label the report first)")
    else:
        items = labels
    out: list[Finding] = []
    for i, item in enumerate(items):
        where = f"labels[{i}]"
        if isinstance(item, Mention):
            parts: tuple = (item.label, item.status, item.laterality, item.severity)
        elif isinstance(item, tuple | list) and 2 <= len(item) <= 4:
            parts = tuple(item) + (None,) * (4 - len(item))
        else:
            raise TypeError(
                f"{where}: expected a Finding, Mention or (label, status, laterality, severity) "
                f"tuple, got {type(item).__name__} {item!r}"
            )
        finding = _finding(*parts, where=where)
        if finding is not None:
            out.append(finding)
    return out


def findings_from_report(report: str) -> list[Finding]:
    """The labeler's mentions of ``report`` as findings (the oracle input of notebook 03).

    Raises:
        TypeError: ``report`` is not a string.
    """
    if not isinstance(report, str):
        raise TypeError(f"report must be a str, got {type(report).__name__}")
    return as_findings(label_report(report).mentions)


def _covers(a: Finding, b: Finding) -> bool:
    """``a`` says everything ``b`` says (same label and status, b's side/severity blank or equal)."""
    return (
        a != b
        and a.label == b.label
        and a.status == b.status
        and b.laterality in (None, a.laterality)
        and b.severity in (None, a.severity)
    )


def _aggregate(findings: Sequence[Finding]) -> dict[str, list[Finding]]:
    """label -> its findings of the strongest status, deduplicated, in a fixed order."""
    out: dict[str, list[Finding]] = {}
    for label in FINDING_LABELS:
        mine = [f for f in findings if f.label == label]
        if not mine:
            continue
        best = min(_STATUS_RANK[f.status] for f in mine)
        kept = {f for f in mine if _STATUS_RANK[f.status] == best}
        kept = {f for f in kept if not any(_covers(other, f) for other in kept)}
        out[label] = sorted(kept, key=lambda f: (f.laterality or "", f.severity or ""))
    return out


# ------------------------------------------------------------------------------ writing
def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def render_finding(finding: Finding) -> str:
    """The sentence for one positive or uncertain finding.

    >>> render_finding(Finding("Pleural Effusion", 1.0, "right", "small"))
    'There is a small right pleural effusion.'
    >>> render_finding(Finding("Atelectasis", -1.0, "left", None))
    'Possible atelectasis in the left lung.'

    Raises:
        ValueError: a negative finding (negatives are written per section, see the module).
    """
    if finding.status == NEGATIVE:
        raise ValueError("render_finding writes positive and uncertain findings only")
    if finding.label == "Support Devices":
        return "Support devices are in place." if finding.status == POSITIVE else "Possible support devices."  # fmt: skip
    template = TEMPLATES[finding.label]
    side = finding.laterality or ""
    in_side = {"left": " in the left lung", "right": " in the right lung",
               "bilateral": " in both lungs"}.get(side, "")  # fmt: skip
    phrase = template.phrase.format(severity=finding.severity or "", side=side, in_side=in_side)
    phrase = " ".join(phrase.split())
    if finding.status == POSITIVE:
        return f"There is {template.article}{phrase}."
    return f"Possible {phrase}."


def _join_negatives(nouns: Sequence[str]) -> str:
    listed = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " or " + nouns[-1]
    return f"No {listed}."


def template_baseline(image_path: str | None, labels: Any) -> str:
    """Write a FINDINGS paragraph from labels by template filling (case study §3.3).

    Args:
        image_path: the study's image. Template filling never looks at pixels - the labels
            come from an oracle or from a classifier (:func:`predict_labels`) - so it is only
            kept for the case study's signature; any value (also ``None``) is accepted.
        labels: findings in any form :func:`as_findings` accepts, typically a list of
            ``(label, status, laterality, severity)`` tuples.

    Returns:
        One paragraph, sentences in the order heart, mediastinum, lungs, pleura, bones,
        devices (see the module docstring); :data:`FIXED_NORMAL_REPORT` when there is no
        finding. Deterministic: the same findings in any order give the same text.

    Raises:
        TypeError, ValueError: see :func:`as_findings`.
    """
    by_label = _aggregate(as_findings(labels))
    sentences = [s for section in SECTIONS for s in _render_section(section, by_label)]
    return " ".join(_capitalise(s) for s in sentences)


def _render_section(section: Section, by_label: Mapping[str, list[Finding]]) -> list[str]:
    """Sentences of one section (steps 3 and 4 of the module docstring)."""
    found = [f for label in section.labels for f in by_label.get(label, [])]
    found.sort(key=lambda f: _STATUS_RANK[f.status])  # stable: positives, then uncertain
    sentences = [render_finding(f) for f in found if f.status != NEGATIVE]
    negatives = [f.label for f in found if f.status == NEGATIVE]
    if not sentences and section.normal:
        sentences.append(section.normal)
        negatives = [lab for lab in negatives if lab not in section.normal_negates]
    if negatives:
        sentences.append(_join_negatives([TEMPLATES[lab].negative for lab in negatives]))
    return sentences


def templates_table() -> pd.DataFrame:
    """The sentence each label gets in each state (no side or severity), one row per label."""
    rows = {}
    for section in SECTIONS:
        for label in section.labels:
            negative = _render_section(section, {label: [Finding(label, NEGATIVE)]})
            rows[label] = {
                "section": section.name,
                "positive": render_finding(Finding(label, POSITIVE)),
                "uncertain": render_finding(Finding(label, UNCERTAIN)),
                "negative": " ".join(negative),
            }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("label")


# ------------------------------------------------------------------------------ classifier
def downsample(pixels: Any, size: int = 32) -> np.ndarray:
    """Area-average images to ``size`` x ``size`` and flatten them.

    Args:
        pixels: (N, 1, S, S) or (N, S, S) tensor/array in [0, 1]; S a multiple of ``size``.

    Returns:
        float32 array (N, size * size).

    Raises:
        ValueError: wrong rank, non-square images or S not a multiple of ``size``.
    """
    if hasattr(pixels, "detach"):
        pixels = pixels.detach().cpu().numpy()
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 4:
        if array.shape[1] != 1:
            raise ValueError(f"pixels must have one channel, got shape {array.shape}")
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise ValueError(f"pixels must have shape (N, 1, S, S) or (N, S, S), got {array.shape}")
    side = array.shape[1]
    if size < 1 or side % size:
        raise ValueError(f"image side {side} is not a multiple of size {size}")
    k = side // size
    pooled = array.reshape(len(array), size, k, size, k).mean(axis=(2, 4))
    return pooled.reshape(len(array), size * size)


@dataclass
class LabelClassifier:
    """One logistic regression per finding label on standardised downsampled pixels.

    Attributes:
        size: side of the downsampled image the models read.
        labels: the labels with a model (enough positives to train one).
        models: label -> fitted ``sklearn`` pipeline (scaler + logistic regression).
        thresholds: label -> probability above which the label is predicted positive.
        train_seconds: wall time of :func:`train_label_classifier`.
    """

    size: int
    labels: tuple[str, ...]
    models: dict[str, Any]
    thresholds: dict[str, float]
    train_seconds: float = 0.0


def _positive_matrix(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    values = np.asarray(labels, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"labels must have shape (N, {len(CHEXPERT_LABELS)}), got {values.shape}")
    return values == POSITIVE


def _best_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """Probability threshold that maximises F1 of "positive" on (y, proba)."""
    order = np.argsort(-proba, kind="stable")
    hits = np.cumsum(y[order])
    k = np.arange(1, len(y) + 1)
    f1 = 2 * hits / (k + y.sum())
    best = int(np.argmax(f1))
    if f1[best] <= 0:
        return 1.0  # never predict a label no threshold can find
    return float(proba[order][best])


def train_label_classifier(
    pixels: Any,
    labels: Any,
    size: int = 32,
    c: float = 0.05,
    min_positives: int = 10,
    val: tuple[Any, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> LabelClassifier:
    """Fit a "positive vs rest" logistic regression per finding label.

    Features: the images area-averaged to ``size`` x ``size`` (:func:`downsample`), then
    standardised. Target: label == 1 (uncertain, negative and not mentioned are "rest").
    Each model uses ``class_weight="balanced"`` (rare labels would otherwise never be
    predicted) and L2 strength ``1 / c``. The decision threshold of each label maximises F1
    on ``val`` when given, else on the training data (optimistic).

    Args:
        pixels: (N, 1, S, S) training images in [0, 1].
        labels: (N, 14) CheXpert labels (1 / 0 / -1 / NaN).
        size: downsampled side (S must be a multiple).
        c: inverse L2 regularisation strength of the logistic regressions.
        min_positives: labels with fewer training positives get no model (never predicted).
        val: optional ``(pixels, labels)`` to choose the thresholds on.
        seed: random state of the solver.
        progress: tqdm bar over labels.

    Returns:
        :class:`LabelClassifier`.

    Raises:
        ValueError: shapes disagree (see :func:`downsample`).
    """
    import time

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    start = time.perf_counter()
    features = downsample(pixels, size)
    target = _positive_matrix(labels)
    if len(features) != len(target):
        raise ValueError(f"{len(features)} images but {len(target)} label rows")
    if val is not None:
        val_features, val_target = downsample(val[0], size), _positive_matrix(val[1])
    models: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    # One BLAS thread: these problems are small, and on a busy 2-core machine competing BLAS
    # threads made the lbfgs solver ~30x slower (measured: 0.3 s vs 10 s for three labels).
    with threadpool_limits(1):
        for label in tqdm(FINDING_LABELS, disable=not progress, desc="labels"):
            j = CHEXPERT_LABELS.index(label)
            y = target[:, j]
            if y.sum() < min_positives:
                continue
            model = make_pipeline(
                StandardScaler(),
                LogisticRegression(C=c, class_weight="balanced", max_iter=500, random_state=seed),
            )
            model.fit(features, y)
            models[label] = model
            if val is not None:
                proba = model.predict_proba(val_features)[:, 1]
                thresholds[label] = _best_threshold(val_target[:, j], proba)
            else:
                thresholds[label] = _best_threshold(y, model.predict_proba(features)[:, 1])
    return LabelClassifier(
        size, tuple(models), models, thresholds, train_seconds=time.perf_counter() - start
    )


def predict_proba(classifier: LabelClassifier, pixels: Any) -> pd.DataFrame:
    """Probability of "positive" per study and label: DataFrame (N, 13), 0 for untrained labels."""
    from threadpoolctl import threadpool_limits

    features = downsample(pixels, classifier.size)
    out = pd.DataFrame(0.0, index=range(len(features)), columns=list(FINDING_LABELS))
    with threadpool_limits(1):
        for label, model in classifier.models.items():
            out[label] = model.predict_proba(features)[:, 1]
    return out


def predict_labels(classifier: LabelClassifier, pixels: Any) -> list[list[Finding]]:
    """Predicted positive findings per study (no laterality or severity: the classifier
    predicts presence only), ready for :func:`template_baseline`."""
    proba = predict_proba(classifier, pixels)
    out: list[list[Finding]] = []
    for _, row in proba.iterrows():
        out.append(
            [
                Finding(label, POSITIVE)
                for label in classifier.labels
                if row[label] >= classifier.thresholds[label]
            ]
        )
    return out


def classifier_report(classifier: LabelClassifier, pixels: Any, labels: Any) -> pd.DataFrame:
    """How well the classifier finds each label on held-out studies.

    Returns:
        DataFrame indexed by the trained labels: ``positives`` (studies with label == 1),
        ``auroc`` (NaN when a class is missing), ``threshold``, ``precision``, ``recall``
        and ``f1`` of the thresholded prediction.
    """
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    proba = predict_proba(classifier, pixels)
    target = _positive_matrix(labels)
    rows = {}
    for label in classifier.labels:
        y = target[:, CHEXPERT_LABELS.index(label)]
        pred = proba[label].to_numpy() >= classifier.thresholds[label]
        both = 0 < y.sum() < len(y)
        rows[label] = {
            "positives": int(y.sum()),
            "auroc": float(roc_auc_score(y, proba[label])) if both else float("nan"),
            "threshold": classifier.thresholds[label],
            "precision": float(precision_score(y, pred, zero_division=0)),
            "recall": float(recall_score(y, pred, zero_division=0)),
            "f1": float(f1_score(y, pred, zero_division=0)),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("label")


# ------------------------------------------------------------------------------ scoring
#: The case study's numbers for its template baseline (MIMIC-CXR, a pretrained CheXpert
#: classifier; only these two metrics are reported).
CASE_STUDY_BASELINE: dict[str, float] = {"BLEU-4": 0.08, "RadGraph F1": 0.22}
#: Columns of :func:`comparison_table`.
SCORE_COLUMNS: tuple[str, ...] = (
    "BLEU-4",
    "ROUGE-L",
    "CIDEr",
    "CE F1 micro-14",
    "CE F1 micro-5",
    "CE F1 macro-14",
    "RadGraph F1",
)


def score_system(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
    """Score one system's reports against the references with :mod:`course_utils.metrics`.

    BLEU-4, ROUGE-L and CIDEr are pycocoevalcap's corpus scores after the pinned
    normalisation (:func:`course_utils.metrics.nlg_scores`); CE F1 is
    :func:`course_utils.metrics.clinical_efficacy` (course labeler, "positive" = 1, uncertain
    counted as negative; micro over 14 and over the 5 common labels, macro over 14). RadGraph
    F1 is computed only where :func:`course_utils.metrics.radgraph_f1` can run (the
    ``radgraph`` package and its model from the Hugging Face Hub), else NaN.

    Returns:
        dict with the :data:`SCORE_COLUMNS` keys, ``"ce"`` (the
        :class:`~course_utils.metrics.CEResult` with its per-label table) and
        ``"radgraph_note"`` (why RadGraph F1 is missing, or ``""``).
    """
    from . import metrics

    refs, hyps = list(refs), list(hyps)
    nlg = metrics.nlg_scores(refs, hyps)
    ce = metrics.clinical_efficacy(refs, hyps)
    out: dict[str, Any] = {
        "BLEU-4": nlg["BLEU_4"],
        "ROUGE-L": nlg["ROUGE_L"],
        "CIDEr": nlg["CIDEr"],
        "CE F1 micro-14": ce["ce_micro_f1_14"],
        "CE F1 micro-5": ce["ce_micro_f1_5"],
        "CE F1 macro-14": ce["ce_macro_f1_14"],
        "RadGraph F1": float("nan"),
        "ce": ce,
        "radgraph_note": "",
    }
    try:
        out["RadGraph F1"] = metrics.radgraph_f1(refs, hyps)["radgraph_f1"]
    except metrics.MetricUnavailable as err:
        out["radgraph_note"] = str(err)
    return out


def comparison_table(
    scores: Mapping[str, Mapping[str, Any]], with_case_study: bool = True
) -> pd.DataFrame:
    """One row per system (:func:`score_system` outputs), plus the case study's reported row.

    Returns:
        DataFrame indexed by system, columns :data:`SCORE_COLUMNS`; NaN where a number does
        not exist (the case study reports only BLEU-4 and RadGraph F1).
    """
    rows = {name: {col: float(s[col]) for col in SCORE_COLUMNS} for name, s in scores.items()}
    if with_case_study:
        rows["case study baseline (reported, MIMIC-CXR)"] = {
            col: CASE_STUDY_BASELINE.get(col, float("nan")) for col in SCORE_COLUMNS
        }
    return pd.DataFrame.from_dict(rows, orient="index")[list(SCORE_COLUMNS)].rename_axis("system")


def bleu_by_group(
    refs: Sequence[str], systems: Mapping[str, Sequence[str]], groups: Sequence[str]
) -> pd.DataFrame:
    """Corpus BLEU-4 of each system on each group of studies (e.g. normal vs abnormal).

    Uses the per-study sufficient statistics of :func:`course_utils.metrics.bleu_counts`, so
    each cell equals ``nlg_scores`` on that group's studies alone.

    Args:
        refs: reference reports (N).
        systems: name -> generated reports (N each).
        groups: group name of each study (N).

    Returns:
        DataFrame indexed by system, one column per group (sorted) plus ``"all"``.

    Raises:
        ValueError: lengths differ.
    """
    from . import metrics

    groups = np.asarray(groups, dtype=object)
    if len(groups) != len(refs):
        raise ValueError(f"{len(groups)} group names for {len(refs)} references")
    names = sorted(set(groups.tolist()))
    rows = {}
    for system, hyps in systems.items():
        if len(hyps) != len(refs):
            raise ValueError(
                f"system {system!r} has {len(hyps)} reports for {len(refs)} references"
            )
        counts = metrics.bleu_counts(list(refs), list(hyps))
        row = {g: float(metrics.bleu_from_counts(counts[groups == g].sum(0))[3]) for g in names}
        row["all"] = float(metrics.bleu_from_counts(counts.sum(0))[3])
        rows[system] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("system")
