"""Grading validity for notebook 03: plausible wrong answers lose points, a correct alternative passes."""

from __future__ import annotations

import random

import pytest

from course_utils.baseline import template_baseline
from course_utils.checks import CheckFailed
from course_utils.checks.nb03 import check_template_baseline

# A student's own wording (different from the library's templates), one sentence per finding.
ORDER = ("Cardiomegaly", "Enlarged Cardiomediastinum", "Lung Lesion", "Lung Opacity", "Edema",
         "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
         "Pleural Other", "Fracture", "Support Devices")  # fmt: skip
NOUN = {
    "Cardiomegaly": "cardiomegaly", "Enlarged Cardiomediastinum": "mediastinal widening",
    "Lung Lesion": "pulmonary nodule", "Lung Opacity": "airspace opacity",
    "Edema": "pulmonary edema", "Consolidation": "consolidation", "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis", "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural effusion", "Pleural Other": "pleural thickening",
    "Fracture": "rib fracture", "Support Devices": "support devices",
}  # fmt: skip
SWAP = {"left": "right", "right": "left", "bilateral": "bilateral"}


def make_template(
    uncertain: str = "hedge",
    laterality: str = "keep",
    negatives: str = "negate",
    severity: bool = True,
    order: str = "fixed",
    dedupe: bool = True,
    normal_default: str = "The heart and lungs are normal.",
):
    """template_baseline as a student might write it (own phrasing; one knob per mistake)."""

    def template(image_path, labels):
        findings = list(dict.fromkeys(map(tuple, labels))) if dedupe else list(map(tuple, labels))
        if order == "fixed":
            findings.sort(key=lambda f: ORDER.index(f[0]))
        elif order == "random":
            random.shuffle(findings)
        sentences = []
        for label, status, side, grade in findings:
            if side and laterality == "drop":
                side = None
            if side and laterality == "swap":
                side = SWAP[side]
            words = " ".join(w for w in (grade if severity else None, side, NOUN[label]) if w)
            if status == 1:
                sentences.append(f"{words.capitalize()} is present.")
            elif status == -1:
                if uncertain == "skip":
                    continue
                if uncertain == "as_positive":
                    sentences.append(f"{words.capitalize()} is present.")
                else:
                    sentences.append(f"Findings may represent {words}.")
            elif status == 0:
                if negatives == "negate":
                    sentences.append(f"No {NOUN[label]}.")
                else:
                    sentences.append(f"{NOUN[label].capitalize()}.")
        return " ".join(sentences) or normal_default

    return template


def test_reference_passes():
    check_template_baseline(template_baseline)


def test_correct_alternative_implementation_passes():
    check_template_baseline(make_template())


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(uncertain="skip"), "read back as uncertain"),
        (dict(uncertain="as_positive"), "read back as uncertain"),
        (dict(laterality="drop"), "laterality"),
        (dict(laterality="swap"), "laterality"),
        (dict(negatives="as_positive"), "read back as negative"),
        (dict(severity=False), "severity"),
        (dict(order="random"), "deterministic|input order|fixed order"),
        (dict(order="input"), "fixed order|input order does not change"),
        (dict(dedupe=False), "no sentence is written twice"),
        (dict(normal_default="There is cardiomegaly."), "normal report"),
    ],
)
def test_plausible_wrong_answers_fail(mistake, message):
    random.seed(1)
    with pytest.raises(CheckFailed, match=message):
        check_template_baseline(make_template(**mistake))


def test_a_crash_or_a_non_string_fails_with_a_message():
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        check_template_baseline(lambda image_path, labels: str(len(labels) / 0))
    with pytest.raises(CheckFailed, match="non-empty str"):
        check_template_baseline(lambda image_path, labels: None)


def test_unfinished_todo_surfaces_not_implemented():
    def stub(image_path, labels):
        raise NotImplementedError("template_baseline: fill in this TODO")

    with pytest.raises(NotImplementedError):
        check_template_baseline(stub)
