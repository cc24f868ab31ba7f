"""Grading validity for notebook 07: plausible wrong answers lose points, correct alternatives pass.

Each ``make_*`` builds the function as a student might write it (own code, not the library's),
with one knob per classic mistake.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from course_utils import errors
from course_utils.checks import CheckFailed
from course_utils.checks.nb07 import (
    PAIRS,
    check_categorize_errors,
    check_finding_state,
    check_pointing_score,
    expected_counts,
    fixture_pairs,
)
from course_utils.labels import CHEXPERT_LABELS, label_report

RANK = {"mild": 1, "small": 1, "moderate": 2, "severe": 3, "large": 3}
NAMES = {1.0: "positive", -1.0: "uncertain", 0.0: "negative", None: "not mentioned"}


# ----------------------------------------------------------------------------- finding_state
def make_state(
    first_side: bool = False,
    uncertain_first: bool = False,
    attrs_from_all: bool = False,
    first_severity: bool = False,
    ignore_label: bool = False,
    absent_as_zero: bool = False,
):
    def finding_state(mentions, label):
        own = list(mentions) if ignore_label else [m for m in mentions if m.label == label]
        if not own:
            return (0.0 if absent_as_zero else None, None, None)
        order = (-1.0, 1.0, 0.0) if uncertain_first else (1.0, -1.0, 0.0)
        status = next(s for s in order if any(m.status == s for m in own))
        chosen = own if attrs_from_all else [m for m in own if m.status == status]
        sides = [m.laterality for m in chosen if m.laterality]
        if not sides:
            side = None
        elif first_side:
            side = sides[0]
        elif "bilateral" in sides or ("left" in sides and "right" in sides):
            side = "bilateral"
        else:
            side = sides[0]
        grades = [m.severity for m in chosen if m.severity]
        grade = None
        if grades:
            grade = grades[0] if first_severity else max(grades, key=RANK.get)
        return status, side, grade

    return finding_state


def test_finding_state_reference_and_alternative_pass():
    check_finding_state(errors.finding_state)
    check_finding_state(make_state())


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(first_side=True), "not the first side seen"),
        (dict(uncertain_first=True), "positive beats uncertain"),
        (dict(attrs_from_all=True), "winning status"),
        (dict(first_severity=True), "most severe"),
        (dict(ignore_label=True), "requested label"),
        (dict(absent_as_zero=True), "never mentions"),
    ],
)
def test_finding_state_wrong_answers_fail(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_finding_state(make_state(**mistake))


# ----------------------------------------------------------------------------- categorize_errors
def make_categorizer(
    state=None,
    swap_lat_columns: bool = False,
    severity: bool = True,
    uncertain_positive: bool = False,
    swap_direction: bool = False,
    incomplete: bool = True,
    omitted_is_mismatch: bool = False,
    flag_added_detail: bool = False,
    include_no_finding: bool = False,
    validate: bool = True,
    use_index: bool = False,
    split_incomplete: bool = False,
    ignore_status: bool = False,
    float_status: bool = False,
):
    state = state or make_state()
    labels = CHEXPERT_LABELS if include_no_finding else CHEXPERT_LABELS[1:]

    def present(status):
        if ignore_status:
            return status is not None
        return status == 1.0 or (uncertain_positive and status == -1.0)

    def summary(text, label):
        read = label_report(text)
        if label == "No Finding":
            return (read.values["No Finding"], None, None)
        return state(read.mentions, label)

    def categorize_errors(references, generated, study_ids):
        if validate and not len(references) == len(generated) == len(study_ids):
            raise ValueError("references, generated and study_ids differ in length")
        rows = []
        for k, (sid, ref, gen) in enumerate(zip(study_ids, references, generated, strict=False)):
            if swap_direction:
                ref, gen = gen, ref
            for label in labels:
                (rs, rl, rv), (gs, gl, gv) = summary(ref, label), summary(gen, label)
                found = []
                if present(rs) and not present(gs):
                    found.append("missed")
                if present(gs) and not present(rs):
                    found.append("hallucinated")
                if present(rs) and present(gs):
                    if omitted_is_mismatch:
                        found += ["laterality"] * (rl != gl) + ["severity"] * (
                            severity and rv != gv
                        )
                    else:
                        if rl and gl and rl != gl:
                            found.append("laterality")
                        if severity and rv and gv and rv != gv:
                            found.append("severity")
                    gaps = [bool(rl and not gl), bool(rv and not gv)]
                    if flag_added_detail:
                        gaps += [bool(gl and not rl), bool(gv and not rv)]
                    if incomplete and split_incomplete:
                        found += ["incomplete"] * sum(gaps)
                    elif incomplete and any(gaps):
                        found.append("incomplete")
                for category in found:
                    rows.append({
                        "study_id": k if use_index else sid, "finding": label,
                        "category": category,
                        "ref_status": rs if float_status else NAMES[rs],
                        "gen_status": gs if float_status else NAMES[gs],
                        "ref_laterality": gl if swap_lat_columns else rl,
                        "gen_laterality": rl if swap_lat_columns else gl,
                        "ref_severity": rv, "gen_severity": gv,
                    })  # fmt: skip
        import pandas as pd

        columns = ["study_id", "finding", "category", "ref_status", "gen_status",
                   "ref_laterality", "gen_laterality", "ref_severity", "gen_severity"]  # fmt: skip
        return pd.DataFrame(rows, columns=columns)

    return categorize_errors


def test_fixture_counts_are_the_documented_ones():
    assert expected_counts() == {
        "missed": 5, "hallucinated": 4, "laterality": 3, "severity": 3, "incomplete": 4,
    }  # fmt: skip
    refs, gens, ids = fixture_pairs()
    table = errors.categorize_errors(refs, gens, ids)
    assert table["category"].value_counts().to_dict() == expected_counts()
    assert len(PAIRS) == 22


def test_categorize_reference_and_alternatives_pass():
    check_categorize_errors(errors.categorize_errors)
    check_categorize_errors(make_categorizer())
    # floats for statuses and NaN for "not given" are accepted too
    check_categorize_errors(make_categorizer(float_status=True))


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(swap_lat_columns=True), "ref_\\* columns describe the reference"),
        (dict(state=make_state(first_side=True)), "s06"),
        (dict(state=make_state(uncertain_first=True)), "s22"),
        (dict(state=make_state(attrs_from_all=True)), "s13"),
        (dict(state=make_state(first_severity=True)), "s14"),
        (dict(severity=False), "s07"),
        (dict(uncertain_positive=True), "s11"),
        (dict(swap_direction=True), "s02"),
        (dict(incomplete=False), "s09"),
        (dict(omitted_is_mismatch=True), "ONE incomplete row"),
        (dict(flag_added_detail=True), "s18"),
        (dict(include_no_finding=True), "No Finding"),
        (dict(validate=False), "misaligned input"),
        (dict(use_index=True), "given ids"),
        (dict(split_incomplete=True), "no duplicates"),
        (dict(ignore_status=True), "(?s)s02.*negative mention"),
    ],
)
def test_categorize_wrong_answers_fail(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_categorize_errors(make_categorizer(**mistake))


def test_categorize_messages_name_the_study_and_why():
    with pytest.raises(CheckFailed, match="(?s)s07.*mild vs severe"):
        check_categorize_errors(make_categorizer(severity=False))
    with pytest.raises(CheckFailed, match="bilateral"):
        check_categorize_errors(make_categorizer(state=make_state(first_side=True)))


def test_categorize_crash_and_non_frame_fail_and_todo_surfaces():
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        check_categorize_errors(lambda r, g, s: 1 / 0)
    with pytest.raises(CheckFailed, match="DataFrame"):
        check_categorize_errors(lambda r, g, s: [])

    def stub(references, generated, study_ids):
        raise NotImplementedError("categorize_errors: fill in this TODO")

    with pytest.raises(NotImplementedError):
        check_categorize_errors(stub)


# ----------------------------------------------------------------------------- pointing_score
def make_pointing(
    exclusive: bool = False,
    swap_xy: bool = False,
    normalise: bool = True,
    area_on_grid: bool = False,
    whole_cell: bool = False,
    lift_difference: bool = False,
    sum_boxes: bool = False,
):
    def pointing_score(attention, boxes, image_size):
        a = np.asarray(attention, dtype=float)
        if normalise:
            a = a / a.sum()
        g = a.shape[0]
        cell = image_size // g
        pixels = np.kron(a, np.ones((cell, cell))) / (1 if whole_cell else cell * cell)
        mask = np.zeros((image_size, image_size), dtype=int)
        end = 0 if exclusive else 1
        for x0, y0, x1, y1 in boxes:
            if swap_xy:
                mask[x0 : x1 + end, y0 : y1 + end] += 1
            else:
                mask[y0 : y1 + end, x0 : x1 + end] += 1
        weights = mask if sum_boxes else (mask > 0)
        mass = float((pixels * weights).sum())
        area = float(weights.sum()) / image_size**2
        if area_on_grid:
            cells = (weights.reshape(g, cell, g, cell).sum(axis=(1, 3)) > 0).sum()
            area = cells / g**2
        lift = mass - area if lift_difference else mass / area
        return mass, area, lift

    return pointing_score


def test_pointing_reference_and_alternative_pass():
    check_pointing_score(errors.pointing_score)
    check_pointing_score(make_pointing())
    check_pointing_score(lambda a, b, s: errors.pointing_score(a, b, s)._asdict()
                         if hasattr(errors.PointingScore, "_asdict") else
                         vars(errors.pointing_score(a, b, s)))  # fmt: skip


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(exclusive=True), "inclusive"),
        (dict(swap_xy=True), "x is the column"),
        (dict(normalise=False), "normalise the grid"),
        (dict(area_on_grid=True), "shared evenly|x is the column|one pixel"),
        (dict(whole_cell=True), "all attention on the box's cell"),
        (dict(lift_difference=True), "all attention on the box's cell"),
        (dict(sum_boxes=True), "UNION"),
    ],
)
def test_pointing_wrong_answers_fail(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_pointing_score(make_pointing(**mistake))


def test_pointing_bad_return_fails():
    with pytest.raises(CheckFailed, match="three numbers"):
        check_pointing_score(lambda a, b, s: math.nan)
