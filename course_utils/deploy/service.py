"""`predict_study`: one validated study in, the case study's response (§4) out.

Response fields (case study §4 "API Design"), plus four the QA service needs:

* ``report_id``, ``findings`` (``finding``, ``confidence``, ``severity``, ``bounding_box``,
  ``is_critical``), ``impression``, ``recommendations``, ``processing_time_ms``,
  ``model_version``, ``requires_radiologist_review``;
* added: ``study_id``, ``report_text`` (the generated findings paragraph), ``review_reasons``
  (why review is required), ``warnings`` (e.g. the image was resized),
  ``detector_probabilities`` (the detection head's 14 probabilities, for monitoring).

How the fields are made:

* **findings** - the course labeler reads the *generated* report; every positive or uncertain
  label (not "No Finding") becomes a finding with the report's severity and laterality.
  ``confidence`` is the detection head's probability for that label. ``bounding_box`` is
  ``null``: this model does not localise (the phantoms' boxes are ground truth, not output).
* **QA (§4 Quality Assurance Service)** - the detection head is an independent check. Review is
  required when, for a critical finding (pneumothorax, fracture, mass/lung lesion, pleural
  effusion), the report and the head disagree (the report states it and the head's
  probability is below its threshold, or the head is above threshold and the report is silent),
  or when any reported finding's confidence is below ``confidence_threshold`` (for a normal
  report: the head's probability of "No Finding").
* **impression / recommendations** - templates over the findings (critical ones first).
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from ..labels import CHEXPERT_LABELS, POSITIVE, UNCERTAIN, ReportLabels, label_report
from .validation import ImageLimits, validate_clinical_context, validate_image

#: Critical findings of the case study (§2 metric 4): CheXpert's "Lung Lesion" covers "mass".
CRITICAL_FINDINGS: tuple[str, ...] = ("Pneumothorax", "Fracture", "Lung Lesion", "Pleural Effusion")
NO_FINDING = CHEXPERT_LABELS[0]
DEFAULT_CONFIDENCE_THRESHOLD = 0.85
NORMAL_IMPRESSION = "No acute cardiopulmonary process."


class FindingOut(BaseModel):
    """One finding of the response (case study keys first)."""

    finding: str
    confidence: float = Field(ge=0.0, le=1.0)
    severity: str | None = None
    bounding_box: list[int] | None = None
    is_critical: bool
    label: str
    laterality: str | None = None
    status: str  # "present" or "possible"
    confirmed_by_detector: bool


class StudyReport(BaseModel):
    """The response of ``POST /api/v1/studies/{study_id}/report`` (see the module docstring)."""

    report_id: str
    findings: list[FindingOut]
    impression: str
    recommendations: str
    processing_time_ms: int
    model_version: str
    requires_radiologist_review: bool
    study_id: str | None = None
    report_text: str = ""
    review_reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    detector_probabilities: dict[str, float] = Field(default_factory=dict)


def new_report_id(now: datetime | None = None) -> str:
    """``rpt-<year>-<6 hex>`` as in the case study's example (``rpt-2025-abc123``)."""
    now = now or datetime.now(timezone.utc)
    return f"rpt-{now.year}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------- findings and QA
def _phrase(label: str, severity: str | None, laterality: str | None) -> str:
    words = [w for w in (severity, laterality, label.lower()) if w]
    return " ".join(words)


def findings_from_labels(
    labels: ReportLabels, probs: np.ndarray, thresholds: np.ndarray
) -> list[FindingOut]:
    """Positive / uncertain labels of a generated report as response findings (CheXpert order)."""
    out = []
    for k, label in enumerate(CHEXPERT_LABELS):
        status = labels.values[label]
        if label == NO_FINDING or status not in (POSITIVE, UNCERTAIN):
            continue
        mine = [m for m in labels.mentions if m.label == label and m.status == status]
        severity = next((m.severity for m in mine if m.severity), None)
        laterality = next((m.laterality for m in mine if m.laterality), None)
        phrase = _phrase(label, severity, laterality)
        text = phrase[0].upper() + phrase[1:] if status == POSITIVE else f"Possible {phrase}"
        out.append(
            FindingOut(
                finding=text, confidence=round(float(probs[k]), 4), severity=severity,
                is_critical=label in CRITICAL_FINDINGS, label=label, laterality=laterality,
                status="present" if status == POSITIVE else "possible",
                confirmed_by_detector=bool(probs[k] >= thresholds[k]),
            )
        )  # fmt: skip
    return out


def qa_review(
    labels: ReportLabels,
    probs: np.ndarray,
    thresholds: np.ndarray,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    critical: Sequence[str] = CRITICAL_FINDINGS,
) -> list[str]:
    """Reasons why a radiologist must review this study (empty list: none).

    Args:
        labels: the labeler's reading of the generated report.
        probs: (14,) detection-head probabilities; thresholds: (14,) its operating points.
        confidence_threshold: the request's ``confidence_threshold``.
    """
    reasons = []
    for label in critical:
        k = CHEXPERT_LABELS.index(label)
        in_report = labels.values[label] in (POSITIVE, UNCERTAIN)
        in_head = bool(probs[k] >= thresholds[k])
        if in_report and not in_head:
            reasons.append(
                f"QA disagreement: the report states {label.lower()} but the detection head "
                f"does not confirm it (p={probs[k]:.2f} < {thresholds[k]:.2f})"
            )
        elif in_head and not in_report:
            reasons.append(
                f"QA disagreement: the detection head finds {label.lower()} "
                f"(p={probs[k]:.2f} >= {thresholds[k]:.2f}) but the report does not state it"
            )
    found = findings_from_labels(labels, probs, thresholds)
    for f in found:
        if f.confidence < confidence_threshold:
            reasons.append(
                f"low confidence: {f.finding.lower()} (p={f.confidence:.2f} < "
                f"{confidence_threshold:.2f})"
            )
    if not found:
        p_normal = float(probs[CHEXPERT_LABELS.index(NO_FINDING)])
        if p_normal < confidence_threshold:
            reasons.append(
                f"low confidence in a normal report: P(no finding)={p_normal:.2f} < "
                f"{confidence_threshold:.2f}"
            )
    return reasons


def impression_text(findings: Sequence[FindingOut]) -> str:
    """One-line impression: critical findings first, then the others; normal when none."""
    if not findings:
        return NORMAL_IMPRESSION
    ordered = sorted(findings, key=lambda f: (not f.is_critical, f.status != "present"))
    return " ".join(f"{f.finding}." for f in ordered)


def recommendations_text(findings: Sequence[FindingOut], reasons: Sequence[str]) -> str:
    """Templated recommendation: critical findings are communicated, review when flagged."""
    parts = []
    critical = [f.finding.lower() for f in findings if f.is_critical and f.status == "present"]
    if critical:
        parts.append(
            "Critical finding (" + ", ".join(critical) + "): communicate to the referring "
            "clinician immediately."
        )
    if reasons:
        parts.append("Radiologist review required before release.")
    if not parts:
        parts.append("Clinical correlation recommended." if findings else "No follow-up needed.")
    return " ".join(parts)


def build_response(
    text: str,
    probs: np.ndarray,
    *,
    thresholds: np.ndarray,
    confidence_threshold: float,
    model_version: str,
    processing_time_ms: float,
    study_id: str | None = None,
    warnings_: Sequence[str] = (),
    report_id: str | None = None,
) -> StudyReport:
    """Assemble the response from a generated report and the head's probabilities (14,)."""
    probs = np.asarray(probs, dtype=float).reshape(-1)
    if probs.shape != (len(CHEXPERT_LABELS),):
        raise ValueError(f"need {len(CHEXPERT_LABELS)} detection probabilities, got {probs.shape}")
    labels = label_report(text)
    findings = findings_from_labels(labels, probs, thresholds)
    reasons = qa_review(labels, probs, thresholds, confidence_threshold)
    return StudyReport(
        report_id=report_id or new_report_id(), findings=findings,
        impression=impression_text(findings),
        recommendations=recommendations_text(findings, reasons),
        processing_time_ms=int(round(processing_time_ms)), model_version=model_version,
        requires_radiologist_review=bool(reasons), study_id=study_id, report_text=text,
        review_reasons=reasons, warnings=list(warnings_),
        detector_probabilities={k: round(float(p), 4) for k, p in zip(CHEXPERT_LABELS, probs,
                                                                      strict=True)},
    )  # fmt: skip


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-label detection threshold maximising F1 on a validation split (grid 0.05..0.95).

    ``labels`` are CheXpert values (1 positive; 0, -1 and NaN count as not positive). Labels
    without a positive keep ``default``.
    """
    probs, y = np.asarray(probs, float), np.nan_to_num(np.asarray(labels, float)) == 1
    grid = np.linspace(0.05, 0.95, 19)
    out = np.full(probs.shape[1], default)
    for k in range(probs.shape[1]):
        if not y[:, k].any():
            continue
        pred = probs[:, k][:, None] >= grid[None, :]
        tp = (pred & y[:, k][:, None]).sum(0)
        f1 = 2 * tp / (pred.sum(0) + y[:, k].sum() + 1e-12)
        out[k] = grid[int(f1.argmax())]
    return out


# ---------------------------------------------------------------------- the service
@dataclass
class StudyInput:
    """A validated study waiting for the model."""

    image: np.ndarray  # (S, S) float32 in [0, 1]
    prompt: str
    study_id: str | None = None
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    warnings: list[str] = field(default_factory=list)
    received: float = field(default_factory=time.perf_counter)


class ReportService:
    """Validation, prompting, batched inference and response formatting around a backend.

    Args:
        backend: a :class:`~course_utils.deploy.backends.Backend` (PyTorch fp32 / INT8, ONNX).
        model_version: reported in every response.
        target: the prompt's task (the model's training target; ``"findings"``).
        prompt_context: put age / sex / indication into the prompt (as in training).
        thresholds: (14,) detection operating points (default 0.5 each).
        max_new_tokens: generation budget.
        limits: image limits; ``target_size`` defaults to the backend's image size.
        context_policy: ``"warn"`` or ``"reject"`` an empty clinical context.
    """

    def __init__(
        self,
        backend: Any,
        *,
        model_version: str = "dev",
        target: str = "findings",
        prompt_context: bool = True,
        thresholds: np.ndarray | None = None,
        max_new_tokens: int = 100,
        limits: ImageLimits | None = None,
        context_policy: str = "warn",
    ) -> None:
        self.backend = backend
        self.model_version = model_version
        self.target = target
        self.prompt_context = prompt_context
        self.thresholds = (
            np.full(len(CHEXPERT_LABELS), 0.5) if thresholds is None else np.asarray(thresholds)
        )
        if self.thresholds.shape != (len(CHEXPERT_LABELS),):
            raise ValueError(f"thresholds must have {len(CHEXPERT_LABELS)} values")
        self.max_new_tokens = max_new_tokens
        self.limits = limits or ImageLimits(target_size=backend.image_size)
        if self.limits.target_size != backend.image_size:
            raise ValueError(
                f"limits.target_size={self.limits.target_size} but the model reads "
                f"{backend.image_size}-pixel images"
            )
        self.context_policy = context_policy

    def prompt(self, context: Mapping[str, Any]) -> str:
        from ..model.prompts import build_prompt

        if not self.prompt_context:
            return build_prompt(self.target)
        return build_prompt(self.target, None, context.get("age"), context.get("sex"),
                            context.get("indication"))  # fmt: skip

    def prepare(
        self,
        image: Any,
        clinical_context: Mapping[str, Any] | None = None,
        *,
        study_id: str | None = None,
        confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    ) -> StudyInput:
        """Validate one study (raises an :class:`InputValidationError` subclass) -> StudyInput.

        Warnings raised during validation (resizing, missing context) are kept for the response.
        """
        received = time.perf_counter()
        if not 0.0 < float(confidence_threshold) <= 1.0:
            raise ValueError(f"confidence_threshold must be in (0, 1], got {confidence_threshold}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = validate_image(image, self.limits)
            context = validate_clinical_context(clinical_context, self.context_policy)
        return StudyInput(
            image=pixels, prompt=self.prompt(context), study_id=study_id,
            confidence_threshold=float(confidence_threshold),
            warnings=[str(w.message) for w in caught], received=received,
        )  # fmt: skip

    def run_batch(self, inputs: Sequence[StudyInput]) -> list[StudyReport]:
        """Run validated studies through the model together -> one response each."""
        if not inputs:
            return []
        images = torch.from_numpy(np.stack([s.image for s in inputs])[:, None])
        probs = self.backend.label_probs(images)
        texts = self.backend.generate(images, [s.prompt for s in inputs], self.max_new_tokens)
        done = time.perf_counter()
        return [
            build_response(
                text, p, thresholds=self.thresholds, confidence_threshold=s.confidence_threshold,
                model_version=self.model_version, processing_time_ms=(done - s.received) * 1e3,
                study_id=s.study_id, warnings_=s.warnings,
            )
            for s, text, p in zip(inputs, texts, probs, strict=True)
        ]  # fmt: skip

    def predict(
        self,
        image: Any,
        clinical_context: Mapping[str, Any] | None = None,
        *,
        study_id: str | None = None,
        confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    ) -> StudyReport:
        """Validate and report one study."""
        item = self.prepare(image, clinical_context, study_id=study_id,
                            confidence_threshold=confidence_threshold)  # fmt: skip
        return self.run_batch([item])[0]


def predict_study(
    model_or_service: Any,
    image: Any,
    clinical_context: Mapping[str, Any] | None = None,
    *,
    tokenizer: Any = None,
    study_id: str | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    **service_kwargs: Any,
) -> StudyReport:
    """The case study's response for one study.

    Args:
        model_or_service: a :class:`ReportService`, a backend, or a PyTorch model (then
            ``tokenizer`` is required).
        image: encoded bytes (JPEG / PNG / DICOM), a file path, or pixels.
        clinical_context: ``{"age", "sex", "indication", "prior_studies"}`` (all optional).
        service_kwargs: :class:`ReportService` options when a model or backend is given.
    """
    from .backends import TorchBackend

    service = model_or_service
    if not isinstance(service, ReportService):
        if isinstance(service, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("predict_study(model, ...) needs the model's tokenizer")
            service = TorchBackend(service, tokenizer)
        service = ReportService(service, **service_kwargs)
    return service.predict(image, clinical_context, study_id=study_id,
                           confidence_threshold=confidence_threshold)  # fmt: skip


__all__ = [
    "CRITICAL_FINDINGS",
    "DEFAULT_CONFIDENCE_THRESHOLD",
    "FindingOut",
    "ReportService",
    "StudyInput",
    "StudyReport",
    "build_response",
    "findings_from_labels",
    "impression_text",
    "new_report_id",
    "predict_study",
    "qa_review",
    "recommendations_text",
    "tune_thresholds",
]
