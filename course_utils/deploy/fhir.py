"""HL7 FHIR R4 ``DiagnosticReport`` rendering of a :class:`StudyReport` (case study §4, Report
Formatting Service).

The report is ``status: "preliminary"``: an AI draft becomes ``final`` only when a radiologist
signs it. Each finding is a contained ``Observation`` (code, the detection head's probability
as ``valueQuantity``, laterality as ``bodySite``, interpretation ``AA`` for critical findings),
the impression is ``conclusion``, the full text is a base64 ``presentedForm``, and the QA
flag and reasons ride in two extensions.

Validation (:func:`validate_fhir_report`) always runs the hand-written rules below (required
elements, status codes, contained references, codings); when the ``fhir.resources`` package is
installed it also parses the resource with its pydantic models. ``fhir.resources`` 8 ships
FHIR R5, R4B (4.3) and STU3 but not R4 (4.0.1); every DiagnosticReport / Observation element
used here is the same in R4 and R4B, so the R4B models stand in for R4.

SNOMED CT codes are given for eight labels whose concepts map one to one; the others carry text
only. Check codes against your own terminology server before production use.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from typing import Any

from .service import StudyReport

EXT_REVIEW = "https://cxr-course.github.io/fhir/StructureDefinition/requires-radiologist-review"
EXT_REASON = "https://cxr-course.github.io/fhir/StructureDefinition/review-reason"
EXT_MODEL = "https://cxr-course.github.io/fhir/StructureDefinition/model-version"
SNOMED = "http://snomed.info/sct"
SNOMED_CODES: dict[str, tuple[str, str]] = {
    "Pneumothorax": ("36118008", "Pneumothorax"),
    "Pleural Effusion": ("60046008", "Pleural effusion"),
    "Cardiomegaly": ("8186001", "Cardiomegaly"),
    "Atelectasis": ("46621007", "Atelectasis"),
    "Pneumonia": ("233604007", "Pneumonia"),
    "Edema": ("19242006", "Pulmonary edema"),
    "Fracture": ("125605004", "Fracture of bone"),
    "Consolidation": ("95436008", "Lung consolidation"),
}
REPORT_STATUSES = ("registered", "partial", "preliminary", "final", "amended", "corrected",
                   "appended", "cancelled", "entered-in-error", "unknown")  # fmt: skip
OBSERVATION_STATUSES = ("registered", "preliminary", "final", "amended", "corrected",
                        "cancelled", "entered-in-error", "unknown")  # fmt: skip
_RADIOLOGY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                          "code": "RAD", "display": "Radiology"}]}  # fmt: skip
_IMAGING = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "imaging", "display": "Imaging"}]}  # fmt: skip
_REPORT_CODE = {"coding": [{"system": "http://loinc.org", "code": "18748-4",
                            "display": "Diagnostic imaging study"}],
                "text": "Chest X-ray report (AI-generated draft)"}  # fmt: skip
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


class FhirValidationError(ValueError):
    """The resource breaks a FHIR rule (message names the element)."""


def _concept(label: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": text or label}
    if label in SNOMED_CODES:
        code, display = SNOMED_CODES[label]
        concept["coding"] = [{"system": SNOMED, "code": code, "display": display}]
    return concept


def _interpretation(critical: bool) -> list[dict[str, Any]]:
    code, display = ("AA", "Critical abnormal") if critical else ("A", "Abnormal")
    system = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    return [{"coding": [{"system": system, "code": code, "display": display}]}]


def to_fhir_diagnostic_report(
    report: StudyReport,
    *,
    patient_id: str | None = None,
    issued: datetime | None = None,
) -> dict[str, Any]:
    """The response as a FHIR R4 ``DiagnosticReport`` (a JSON-ready dict)."""
    issued = issued or datetime.now(timezone.utc)
    if issued.tzinfo is None:
        raise ValueError("issued must be timezone-aware (FHIR instants carry an offset)")
    observations, results = [], []
    for i, f in enumerate(report.findings, start=1):
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": f"finding-{i}",
            "status": "preliminary",
            "category": [_IMAGING],
            "code": _concept(f.label, f.finding),
            "valueQuantity": {"value": f.confidence, "unit": "probability",
                              "system": "http://unitsofmeasure.org", "code": "1"},
            "interpretation": _interpretation(f.is_critical),
            "note": [{"text": f"{f.finding} ({f.status}; detection head "
                              f"{'confirms' if f.confirmed_by_detector else 'does not confirm'})"}],
        }  # fmt: skip
        if f.laterality:
            obs["bodySite"] = {"text": f"{f.laterality} hemithorax"}
        observations.append(obs)
        results.append({"reference": f"#finding-{i}", "display": f.finding})
    text = (f"FINDINGS: {report.report_text}\nIMPRESSION: {report.impression}\n"
            f"RECOMMENDATIONS: {report.recommendations}")  # fmt: skip
    extensions: list[dict[str, Any]] = [
        {"url": EXT_REVIEW, "valueBoolean": report.requires_radiologist_review},
        {"url": EXT_MODEL, "valueString": report.model_version},
    ]
    extensions += [{"url": EXT_REASON, "valueString": r} for r in report.review_reasons]
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report.report_id,
        "extension": extensions,
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{_uuid(report)}"}],
        "status": "preliminary",
        "category": [_RADIOLOGY],
        "code": _REPORT_CODE,
        "issued": issued.isoformat(timespec="seconds"),
        "performer": [{"display": f"CXR report model {report.model_version} (AI, unsigned)"}],
        "conclusion": report.impression,
        "conclusionCode": [_concept(f.label) for f in report.findings],
        "presentedForm": [{
            "contentType": "text/plain; charset=utf-8", "language": "en",
            "data": base64.b64encode(text.encode()).decode(), "title": "AI-generated draft",
        }],
    }  # fmt: skip
    if observations:
        resource["contained"] = observations
        resource["result"] = results
    if patient_id:
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
    if report.study_id:
        study = {"display": f"Study {report.study_id}"}
        if _OID.match(report.study_id):  # a DICOM Study Instance UID
            study["identifier"] = {"system": "urn:dicom:uid", "value": f"urn:oid:{report.study_id}"}
        resource["imagingStudy"] = [study]
    if not resource["conclusionCode"]:
        del resource["conclusionCode"]
    return resource


def _uuid(report: StudyReport) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cxr-course/{report.report_id}"))


def _check_concept(concept: Any, where: str) -> None:
    if not isinstance(concept, dict) or not (concept.get("text") or concept.get("coding")):
        raise FhirValidationError(f"{where} must be a CodeableConcept with coding or text")
    for c in concept.get("coding", []):
        if not c.get("system") or not c.get("code"):
            raise FhirValidationError(f"{where}.coding needs system and code, got {c}")


def _check_rules(resource: dict[str, Any]) -> None:
    """Hand-written R4 rules for the elements this module writes."""
    if resource.get("resourceType") != "DiagnosticReport":
        raise FhirValidationError(f"resourceType must be DiagnosticReport, got "
                                  f"{resource.get('resourceType')!r}")  # fmt: skip
    if resource.get("status") not in REPORT_STATUSES:
        raise FhirValidationError(f"DiagnosticReport.status {resource.get('status')!r} is not "
                                  f"one of {REPORT_STATUSES}")  # fmt: skip
    _check_concept(resource.get("code"), "DiagnosticReport.code")
    issued = resource.get("issued")
    if issued is not None and not _INSTANT.match(str(issued)):
        raise FhirValidationError(f"DiagnosticReport.issued {issued!r} is not a FHIR instant")
    contained = {c.get("id"): c for c in resource.get("contained", [])}
    for obs in contained.values():
        if (
            obs.get("resourceType") != "Observation"
            or obs.get("status") not in OBSERVATION_STATUSES
        ):
            raise FhirValidationError(f"contained resource {obs.get('id')!r} must be an "
                                      "Observation with a valid status")  # fmt: skip
        _check_concept(obs.get("code"), f"Observation/{obs.get('id')}.code")
    for ref in resource.get("result", []):
        target = str(ref.get("reference", ""))
        if target.startswith("#") and target[1:] not in contained:
            raise FhirValidationError(f"result reference {target} has no contained resource")
    for i, concept in enumerate(resource.get("conclusionCode", [])):
        _check_concept(concept, f"DiagnosticReport.conclusionCode[{i}]")
    for ext in resource.get("extension", []):
        if not ext.get("url") or not any(k.startswith("value") for k in ext):
            raise FhirValidationError(f"extension needs url and a value[x]: {ext}")
    for form in resource.get("presentedForm", []):
        try:
            base64.b64decode(form.get("data", ""), validate=True)
        except ValueError as err:
            raise FhirValidationError("presentedForm.data is not base64") from err


def validate_fhir_report(resource: dict[str, Any], use_library: bool = True) -> str:
    """Validate a DiagnosticReport dict; returns which validators ran.

    Raises:
        FhirValidationError: a rule is broken (hand-written rules or fhir.resources' models).
    """
    _check_rules(resource)
    if not use_library:
        return "hand-written rules"
    try:
        from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    except ImportError:
        return "hand-written rules (fhir.resources not installed)"
    try:
        DiagnosticReport.model_validate(resource)
    except Exception as err:  # pydantic.ValidationError and fhir_core errors
        raise FhirValidationError(f"fhir.resources rejected the DiagnosticReport: {err}") from err
    return "hand-written rules + fhir.resources (R4B models)"


__all__ = [
    "FhirValidationError",
    "SNOMED_CODES",
    "to_fhir_diagnostic_report",
    "validate_fhir_report",
]
