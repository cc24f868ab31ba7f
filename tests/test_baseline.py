"""course_utils.baseline: template filling (labeler round trip), input handling, classifier."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from course_utils import baseline as bl
from course_utils.baseline import FIXED_NORMAL_REPORT, Finding, template_baseline
from course_utils.labels import (
    CHEXPERT_LABELS,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    label_report,
    split_sentences,
)

SIZE_LABELS = {"Pleural Effusion", "Pneumothorax", "Lung Lesion"}
NO_SIDE = {"Cardiomegaly", "Enlarged Cardiomediastinum", "Support Devices"}


def _options(label: str) -> tuple[list, list]:
    sides = [None] if label in NO_SIDE else [None, "left", "right", "bilateral"]
    if label == "Support Devices":
        grades: list = [None]
    elif label in SIZE_LABELS:
        grades = [None, "small", "moderate", "large"]
    else:
        grades = [None, "mild", "moderate", "severe"]
    return sides, grades


def _assert_round_trip(findings: list[Finding]) -> str:
    text = template_baseline("img.jpg", findings)
    read = label_report(text)
    strongest = {}
    for f in findings:  # the labeler's aggregation: positive > uncertain > negative
        rank = {POSITIVE: 0, UNCERTAIN: 1, NEGATIVE: 2}
        if f.label not in strongest or rank[f.status] < rank[strongest[f.label]]:
            strongest[f.label] = f.status
    for label, status in strongest.items():
        assert read.values[label] == status, (findings, text)
    for f in findings:
        if f.status != NEGATIVE and strongest[f.label] == f.status:
            assert any(
                m.label == f.label
                and m.status == f.status
                and m.laterality == f.laterality
                and m.severity == f.severity
                for m in read.mentions
            ), (f, text)
    for label, value in read.values.items():
        if label != "No Finding" and label not in strongest:
            assert value in (None, NEGATIVE), (label, text)
    sentences = [s.lower() for s in split_sentences(text)]
    assert len(sentences) == len(set(sentences)), text
    return text


def test_every_label_state_side_and_severity_round_trips_through_the_labeler():
    n = 0
    for label in bl.FINDING_LABELS:
        sides, grades = _options(label)
        for status, side, grade in itertools.product(
            (POSITIVE, UNCERTAIN, NEGATIVE), sides, grades
        ):
            _assert_round_trip([Finding(label, status, side, grade)])
            n += 1
    assert n == 507


def test_random_finding_sets_round_trip_and_ignore_input_order():
    rng = random.Random(0)
    for _ in range(150):
        labels = rng.sample(bl.FINDING_LABELS, rng.randint(1, 6))
        findings = []
        for label in labels:
            sides, grades = _options(label)
            status = rng.choice((POSITIVE, UNCERTAIN, NEGATIVE))
            findings.append(Finding(label, status, rng.choice(sides), rng.choice(grades)))
        text = _assert_round_trip(findings)
        assert template_baseline(None, list(reversed(findings))) == text


def test_exact_paragraphs():
    text = template_baseline(
        "x.jpg",
        [("Pleural Effusion", 1, "right", "small"), ("Atelectasis", -1, "left", None),
         ("Pneumothorax", 0), ("Cardiomegaly", 1.0, None, "mild"), ("Support Devices", 1)],
    )  # fmt: skip
    assert text == (
        "There is mild cardiomegaly. The mediastinum is unremarkable. Possible atelectasis in "
        "the left lung. There is a small right pleural effusion. No pneumothorax. No acute bony "
        "abnormality. Support devices are in place."
    )
    assert template_baseline(None, [("Edema", 0), ("Pleural Other", 0)]) == (
        "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear. "
        "No pulmonary edema. No pleural effusion or pneumothorax. No pleural thickening. "
        "No acute bony abnormality."
    )


def test_fixed_normal_report_is_the_empty_template_and_reads_normal():
    assert template_baseline(None, []) == FIXED_NORMAL_REPORT
    assert template_baseline(None, None) == FIXED_NORMAL_REPORT
    values = label_report(FIXED_NORMAL_REPORT).values
    assert values["No Finding"] == POSITIVE
    assert {k for k, v in values.items() if v == NEGATIVE} == {
        "Cardiomegaly", "Enlarged Cardiomediastinum", "Pleural Effusion", "Pneumothorax"
    }  # fmt: skip


def test_render_finding():
    assert bl.render_finding(Finding("Pleural Effusion", 1.0, "right", "small")) == (
        "There is a small right pleural effusion."
    )
    assert bl.render_finding(Finding("Atelectasis", -1.0, "bilateral")) == (
        "Possible atelectasis in both lungs."
    )
    with pytest.raises(ValueError, match="positive and uncertain"):
        bl.render_finding(Finding("Edema", 0.0))


def test_aggregation_keeps_the_strongest_status_and_drops_covered_findings():
    findings = [
        ("Atelectasis", 1, "left", None),
        ("Atelectasis", 1, None, None),  # covered by the left one
        ("Atelectasis", 0),  # weaker status
        ("Atelectasis", 1, "left", None),  # duplicate
        ("Pleural Effusion", -1, "right", None),
        ("Pleural Effusion", -1, "left", "small"),  # another side: kept
    ]
    text = template_baseline(None, findings)
    assert text.count("atelectasis") == 1
    assert "Possible right pleural effusion." in text
    assert "Possible small left pleural effusion." in text
    assert "No atelectasis" not in text


def test_as_findings_accepts_mentions_reportlabels_dicts_and_tuples():
    labels = label_report("Small left pleural effusion. No pneumothorax.")
    from_mentions = bl.as_findings(labels.mentions)
    assert from_mentions == [
        Finding("Pleural Effusion", 1.0, "left", "small"),
        Finding("Pneumothorax", 0.0, None, None),
    ]
    assert bl.as_findings(labels) == from_mentions
    as_dict = bl.as_findings({"No Finding": 1.0, "Edema": 0.0, "Fracture": None, "Cardiomegaly": float("nan")})  # fmt: skip
    assert as_dict == [Finding("Edema", 0.0)]
    assert bl.as_findings([("Edema", -1)]) == [Finding("Edema", -1.0)]
    # laterality is dropped where the labeler has none; severity scales are mapped
    assert bl.as_findings([("Cardiomegaly", 1, "left", "large")]) == [
        Finding("Cardiomegaly", 1.0, None, "severe")
    ]
    assert bl.as_findings([("Pneumothorax", 1, "right", "mild")])[0].severity == "small"
    assert bl.findings_from_report("Moderate cardiomegaly.") == [
        Finding("Cardiomegaly", 1.0, None, "moderate")
    ]


@pytest.mark.parametrize(
    "labels, error, message",
    [
        ([("Pleural Effusions", 1)], ValueError, "unknown label 'Pleural Effusions'"),
        ([("Edema", 2)], ValueError, r"labels\[0\]: status must be 1, 0 or -1"),
        ([("Edema", "yes")], ValueError, "status must be"),
        ([("Edema", 1, "upper", None)], ValueError, "laterality"),
        ([("Edema", 1, None, "huge")], ValueError, "severity"),
        ([("Edema",)], TypeError, "expected a Finding"),
        (["Edema"], TypeError, "expected a Finding"),
        ("Edema is present.", TypeError, "not a string"),
    ],
)
def test_bad_label_input_raises(labels, error, message):
    with pytest.raises(error, match=message):
        template_baseline(None, labels)


def test_findings_from_report_rejects_non_text():
    with pytest.raises(TypeError, match="str"):
        bl.findings_from_report(None)


def test_templates_table():
    table = bl.templates_table()
    assert list(table.index) == [lab for s in bl.SECTIONS for lab in s.labels]
    assert len(table) == 13
    assert table.loc["Cardiomegaly", "negative"] == "The heart is normal in size."
    assert table.loc["Edema", "uncertain"] == "Possible pulmonary edema."


# ------------------------------------------------------------------------------ classifier
def test_downsample_averages_blocks():
    image = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out = bl.downsample(torch.from_numpy(image), 2)
    assert out.shape == (1, 4)
    np.testing.assert_allclose(out[0], [2.5, 4.5, 10.5, 12.5])
    assert bl.downsample(image[:, 0], 4).shape == (1, 16)
    with pytest.raises(ValueError, match="multiple"):
        bl.downsample(image, 3)
    with pytest.raises(ValueError, match="shape"):
        bl.downsample(np.zeros((2, 4, 5)), 2)
    with pytest.raises(ValueError, match="one channel"):
        bl.downsample(np.zeros((2, 3, 4, 4)), 2)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images; Cardiomegaly positive = bright left block, Edema positive = bright right."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0.0, 0.3, size=(n, 1, 16, 16)).astype(np.float32)
    labels = np.full((n, 14), np.nan)
    cm = rng.random(n) < 0.3
    ed = rng.random(n) < 0.4
    pixels[cm, 0, 4:12, 0:6] += 0.6
    pixels[ed, 0, 4:12, 10:16] += 0.6
    labels[:, CHEXPERT_LABELS.index("Cardiomegaly")] = np.where(cm, 1.0, 0.0)
    labels[:, CHEXPERT_LABELS.index("Edema")] = np.where(ed, 1.0, -1.0)  # -1 is not positive
    labels[:3, CHEXPERT_LABELS.index("Fracture")] = 1.0  # too few positives for a model
    return pixels, labels


def test_classifier_learns_visible_findings():
    pixels, labels = _synthetic(240, 0)
    val = _synthetic(80, 1)
    clf = bl.train_label_classifier(pixels, labels, size=8, val=val, seed=0)
    assert set(clf.labels) == {"Cardiomegaly", "Edema"}
    test_pixels, test_labels = _synthetic(60, 2)
    predicted = bl.predict_labels(clf, torch.from_numpy(test_pixels))
    assert len(predicted) == 60
    for row, findings in zip(test_labels, predicted, strict=True):
        got = {f.label for f in findings}
        want = {lab for lab in ("Cardiomegaly", "Edema") if row[CHEXPERT_LABELS.index(lab)] == 1}
        assert got == want
        assert all(f == Finding(f.label, POSITIVE) for f in findings)
    proba = bl.predict_proba(clf, test_pixels)
    assert proba.shape == (60, 13) and (proba["Fracture"] == 0).all()
    reports = [template_baseline(None, f) for f in predicted]
    assert all(isinstance(r, str) and r for r in reports)


def test_classifier_rejects_mismatched_input():
    pixels, labels = _synthetic(20, 0)
    with pytest.raises(ValueError, match="20 images but 19 label rows"):
        bl.train_label_classifier(pixels, labels[:19], size=8)
    with pytest.raises(ValueError, match="shape"):
        bl.train_label_classifier(pixels, labels[:, :13], size=8)


def test_best_threshold_maximises_f1():
    y = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    proba = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    # top-2: F1 = 4/5; top-4: 2*3/(4+3) = 6/7 (best); top-1: 2/4
    assert bl._best_threshold(y, proba) == pytest.approx(0.6)
    assert bl._best_threshold(np.zeros(3, dtype=bool), np.array([0.1, 0.2, 0.3])) == 1.0


# ------------------------------------------------------------------------------ scoring
def test_score_system_and_comparison_table():
    refs = [
        "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
        "There is a small right pleural effusion. The lungs are clear.",
        "There is mild cardiomegaly. No pneumothorax.",
    ]
    fixed = bl.score_system(refs, [FIXED_NORMAL_REPORT] * 3)
    same = bl.score_system(refs, refs)
    assert same["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert same["CE F1 micro-14"] == pytest.approx(1.0)
    # the fixed normal report never names a positive finding: CE F1 over the 5 labels is 0,
    # while No Finding (a true positive on study 0) keeps micro F1-14 above 0
    assert fixed["CE F1 micro-5"] == 0.0
    assert fixed["CE F1 micro-14"] > 0.0
    assert fixed["BLEU-4"] > 0.0
    table = bl.comparison_table({"same": same, "fixed": fixed})
    assert list(table.columns) == list(bl.SCORE_COLUMNS)
    assert table.loc["case study baseline (reported, MIMIC-CXR)", "BLEU-4"] == 0.08
    assert table.loc["case study baseline (reported, MIMIC-CXR)", "RadGraph F1"] == 0.22
    assert np.isnan(table.loc["case study baseline (reported, MIMIC-CXR)", "CIDEr"])
    if same["radgraph_note"]:
        assert np.isnan(table.loc["same", "RadGraph F1"])
        assert "RadGraph" in same["radgraph_note"]


def test_classifier_report():
    pixels, labels = _synthetic(120, 0)
    clf = bl.train_label_classifier(pixels, labels, size=8, val=_synthetic(80, 1))
    report = bl.classifier_report(clf, *_synthetic(60, 3))
    assert list(report.index) == ["Cardiomegaly", "Edema"]
    assert (report["auroc"] > 0.95).all() and (report["f1"] > 0.9).all()


def test_bleu_by_group_matches_nlg_scores_on_each_group():
    from course_utils.metrics import nlg_scores

    refs = [
        "The heart is normal in size. The lungs are clear.",
        "There is a small right pleural effusion. The lungs are clear.",
        "The heart is normal in size. No pneumothorax or pleural effusion.",
        "There is mild cardiomegaly. There is mild pulmonary edema.",
    ]
    hyps = [FIXED_NORMAL_REPORT] * 4
    groups = ["normal", "abnormal", "normal", "abnormal"]
    table = bl.bleu_by_group(refs, {"fixed": hyps}, groups)
    assert list(table.columns) == ["abnormal", "normal", "all"]
    for group in ("normal", "abnormal"):
        keep = [i for i, g in enumerate(groups) if g == group]
        want = nlg_scores([refs[i] for i in keep], [hyps[i] for i in keep])["BLEU_4"]
        assert table.loc["fixed", group] == pytest.approx(want, abs=1e-9)
    assert table.loc["fixed", "all"] == pytest.approx(nlg_scores(refs, hyps)["BLEU_4"], abs=1e-9)
    with pytest.raises(ValueError, match="group names"):
        bl.bleu_by_group(refs, {"fixed": hyps}, groups[:3])
    with pytest.raises(ValueError, match="3 reports for 4"):
        bl.bleu_by_group(refs, {"fixed": hyps[:3]}, groups)
