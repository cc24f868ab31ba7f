"""predict_study's response schema, the QA review, templates and the FHIR rendering."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch

from course_utils.deploy import (
    FhirValidationError,
    ReportService,
    StudyReport,
    TorchBackend,
    TruncatedImageError,
    build_response,
    predict_study,
    to_fhir_diagnostic_report,
    tune_thresholds,
    validate_fhir_report,
)
from course_utils.deploy.fixtures import (
    encode_jpeg,
    encode_png,
    gradient_image,
    tiny_model_and_data,
)
from course_utils.labels import CHEXPERT_LABELS

K = {name: k for k, name in enumerate(CHEXPERT_LABELS)}
HALF = np.full(14, 0.5)


def probs(**values: float) -> np.ndarray:
    p = np.full(14, 0.1)
    for name, value in values.items():
        p[K[name.replace("_", " ")]] = value
    return p


def respond(text: str, p: np.ndarray, threshold: float = 0.85) -> StudyReport:
    return build_response(text, p, thresholds=HALF, confidence_threshold=threshold,
                          model_version="v-test", processing_time_ms=12.4)  # fmt: skip


def test_response_schema_keys_and_findings() -> None:
    text = "There is a small left pleural effusion. Mild cardiomegaly. No pneumothorax."
    r = respond(text, probs(Pleural_Effusion=0.93, Cardiomegaly=0.9))
    data = r.model_dump()
    for key in ("report_id", "findings", "impression", "recommendations", "processing_time_ms",
                "model_version", "requires_radiologist_review"):  # fmt: skip
        assert key in data
    assert re.fullmatch(r"rpt-\d{4}-[0-9a-f]{6}", r.report_id)
    assert r.processing_time_ms == 12 and r.model_version == "v-test"
    heart, effusion = r.findings  # CheXpert order: Cardiomegaly (2) before Pleural Effusion (10)
    assert (
        effusion.label == "Pleural Effusion" and effusion.finding == "Small left pleural effusion"
    )
    assert effusion.is_critical and effusion.severity == "small" and effusion.laterality == "left"
    assert effusion.confidence == 0.93 and effusion.confirmed_by_detector
    assert effusion.bounding_box is None
    assert heart.label == "Cardiomegaly" and not heart.is_critical
    assert heart.finding == "Mild cardiomegaly"
    assert not r.requires_radiologist_review and r.review_reasons == []
    assert r.impression == "Small left pleural effusion. Mild cardiomegaly."  # critical first
    assert r.recommendations.startswith("Critical finding (small left pleural effusion)")
    assert r.detector_probabilities["Pleural Effusion"] == 0.93


def test_qa_flags_critical_disagreement_both_ways() -> None:
    # The report states a pneumothorax the head does not see ...
    r = respond("Small right apical pneumothorax.", probs(Pneumothorax=0.2, No_Finding=0.9))
    assert r.requires_radiologist_review
    assert any("report states pneumothorax" in x for x in r.review_reasons)
    assert "Radiologist review required" in r.recommendations
    # ... and the head sees a fracture that a normal report does not mention.
    r = respond("The lungs are clear.", probs(Fracture=0.8, No_Finding=0.95))
    assert r.findings == [] and r.impression == "No acute cardiopulmonary process."
    assert [x for x in r.review_reasons if "head finds fracture" in x]
    # Disagreement on a non-critical finding is not a QA flag.
    r = respond("The lungs are clear.", probs(Cardiomegaly=0.9, No_Finding=0.95))
    assert not r.requires_radiologist_review and r.recommendations == "No follow-up needed."


def test_low_confidence_flags_review() -> None:
    text = "Mild cardiomegaly."
    assert not respond(text, probs(Cardiomegaly=0.9)).requires_radiologist_review
    low = respond(text, probs(Cardiomegaly=0.7))
    assert low.review_reasons == ["low confidence: mild cardiomegaly (p=0.70 < 0.85)"]
    assert not respond(text, probs(Cardiomegaly=0.7), threshold=0.6).requires_radiologist_review
    normal = respond("The lungs are clear.", probs(No_Finding=0.6))
    assert normal.review_reasons == ["low confidence in a normal report: P(no finding)=0.60 < 0.85"]
    with pytest.raises(ValueError, match="14 detection probabilities"):
        respond("x", np.zeros(3))


def test_uncertain_finding_is_possible() -> None:
    r = respond("Possible left basilar atelectasis.", probs(Atelectasis=0.9))
    (f,) = r.findings
    assert f.status == "possible" and f.finding == "Possible left atelectasis"


def test_tune_thresholds_by_hand() -> None:
    p = np.array([[0.9, 0.2], [0.7, 0.6], [0.3, 0.4], [0.1, 0.8]])
    y = np.array([[1, np.nan], [1, 0], [0, -1], [0, 0]])
    t = tune_thresholds(p, y)
    assert 0.3 < t[0] <= 0.7  # any cut between the positives (0.9, 0.7) and negatives (0.3)
    assert t[1] == 0.5  # no positive: default


@pytest.fixture(scope="module")
def service():
    model, tok, _ = tiny_model_and_data(seed=1)
    return ReportService(TorchBackend(model, tok), model_version="v-tiny", max_new_tokens=6)


def test_predict_study_on_bytes_and_warnings(service) -> None:
    image = encode_png(gradient_image((80, 70)))
    r = predict_study(service, image, {"age": 60, "sex": "F", "indication": "cough"},
                      study_id="1.2.840.1")  # fmt: skip
    assert r.study_id == "1.2.840.1" and r.model_version == "v-tiny"
    assert r.warnings == ["image resized from 70x80 to 64x64 pixels"]
    r2 = predict_study(service, gradient_image((64, 64)))
    assert r2.warnings == ["clinical context is empty (no age, sex or indication): the report "
                           "is written from the image alone"]  # fmt: skip
    jpeg = encode_jpeg(gradient_image((64, 64)))
    with pytest.raises(TruncatedImageError):
        predict_study(service, jpeg[:100])


def test_predict_study_builds_a_service_from_a_model() -> None:
    model, tok, _ = tiny_model_and_data(seed=2)
    r = predict_study(model, torch.rand(1, 1, 64, 64), tokenizer=tok, max_new_tokens=4)
    assert isinstance(r, StudyReport) and 0 < r.processing_time_ms < 60_000
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        predict_study(model, torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="confidence_threshold"):
        predict_study(model, torch.rand(64, 64), tokenizer=tok, confidence_threshold=1.5)


def test_service_batch_answers_in_order(service) -> None:
    items = [service.prepare(gradient_image((64, 64), seed=i), {"age": 30 + i}, study_id=str(i))
             for i in range(3)]  # fmt: skip
    out = service.run_batch(items)
    assert [r.study_id for r in out] == ["0", "1", "2"] and service.run_batch([]) == []
    alone = service.run_batch(items[1:2])[0]
    assert alone.report_text == out[1].report_text  # batching does not change a report


# ---------------------------------------------------------------------------- FHIR
def test_fhir_diagnostic_report_validates() -> None:
    r = respond("There is a small left pleural effusion. Mild cardiomegaly.",
                probs(Pleural_Effusion=0.93, Cardiomegaly=0.6))  # fmt: skip
    r.study_id = "1.2.840.113619.2.55.3"
    fhir = to_fhir_diagnostic_report(r, patient_id="p123")
    used = validate_fhir_report(fhir)
    assert "fhir.resources" in used or "not installed" in used
    assert fhir["resourceType"] == "DiagnosticReport" and fhir["status"] == "preliminary"
    assert fhir["subject"] == {"reference": "Patient/p123"}
    assert fhir["imagingStudy"][0]["identifier"]["value"] == "urn:oid:1.2.840.113619.2.55.3"
    obs = {o["id"]: o for o in fhir["contained"]}
    assert [x["reference"] for x in fhir["result"]] == ["#finding-1", "#finding-2"]
    effusion = obs["finding-2"]
    assert effusion["code"]["coding"][0]["code"] == "60046008"  # SNOMED pleural effusion
    assert effusion["valueQuantity"]["value"] == 0.93
    assert effusion["interpretation"][0]["coding"][0]["code"] == "AA"  # critical
    assert effusion["bodySite"] == {"text": "left hemithorax"}
    review = next(e for e in fhir["extension"] if e["url"].endswith("requires-radiologist-review"))
    assert review["valueBoolean"] is True  # cardiomegaly confidence 0.6 < 0.85
    text = base64.b64decode(fhir["presentedForm"][0]["data"]).decode()
    assert text.startswith("FINDINGS: There is a small left pleural effusion.")
    assert fhir["conclusion"] == r.impression


def test_fhir_validation_catches_errors() -> None:
    r = respond("The lungs are clear.", probs(No_Finding=0.95))
    good = to_fhir_diagnostic_report(r)
    assert "contained" not in good and validate_fhir_report(good, use_library=False)
    for broken, message in [
        ({**good, "status": "draft"}, "status"),
        ({**good, "code": {}}, "DiagnosticReport.code"),
        ({**good, "result": [{"reference": "#missing"}]}, "no contained resource"),
        ({**good, "issued": "2025-01-01"}, "instant"),
        ({**good, "extension": [{"url": "x"}]}, "value"),
    ]:
        with pytest.raises(FhirValidationError, match=message):
            validate_fhir_report(broken)
    pytest.importorskip("fhir.resources")
    with pytest.raises(FhirValidationError, match="fhir.resources"):
        validate_fhir_report({**good, "performer": "not a list of references"})
