"""Graded checks for notebook 07 (error analysis).

* :func:`check_finding_state` - the student's ``finding_state(mentions, label)`` on mention lists
  of hand-written reports whose summary is known (bilateral from left + right, positive beats
  uncertain, attributes only from the mentions of the winning status, the most severe grade).
* :func:`check_categorize_errors` - the student's ``categorize_errors(references, generated,
  study_ids)`` on :data:`PAIRS`, 22 hand-made reference / generated pairs in which each
  category's count is known (5 missed, 4 hallucinated, 3 laterality, 3 severity, 4 incomplete);
  every row is compared, values included, so a swapped column or a wrong direction shows up.
* :func:`check_pointing_score` - the student's ``pointing_score(attention, boxes, image_size)``
  on synthetic attention grids and boxes with hand-computed answers.

The reference for all three is :mod:`course_utils.errors`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CATEGORIES, FINDINGS, categorize_errors, finding_state, status_name
from ..labels import label_report
from . import Checker

TOL = 1e-9

#: (study_id, reference, generated, expected errors as {(finding, category)}), all hand-checked.
PAIRS: tuple[tuple[str, str, str, frozenset[tuple[str, str]]], ...] = (
    ("s01", "Small left pleural effusion. No pneumothorax.",
     "Small left pleural effusion. No pneumothorax.", frozenset()),
    ("s02", "Large right pneumothorax.", "No pneumothorax. The lungs are clear.",
     frozenset({("Pneumothorax", "missed")})),
    ("s03", "The lungs are clear. No pleural effusion.", "Right rib fracture. The lungs are clear.",
     frozenset({("Fracture", "hallucinated")})),
    ("s04", "Small left pleural effusion.", "Small right pleural effusion.",
     frozenset({("Pleural Effusion", "laterality")})),
    ("s05", "Bilateral pleural effusions.", "Left pleural effusion.",
     frozenset({("Pleural Effusion", "laterality")})),
    ("s06", "There is a left pleural effusion. There is also a right pleural effusion.",
     "Bilateral pleural effusions.", frozenset()),
    ("s07", "Mild cardiomegaly.", "Severe cardiomegaly.",
     frozenset({("Cardiomegaly", "severity")})),
    ("s08", "Large left pneumothorax.", "Small left pneumothorax.",
     frozenset({("Pneumothorax", "severity")})),
    ("s09", "Small right pleural effusion.", "Pleural effusion.",
     frozenset({("Pleural Effusion", "incomplete")})),
    ("s10", "Moderate pulmonary edema.", "Pulmonary edema.", frozenset({("Edema", "incomplete")})),
    ("s11", "Possible right lower lobe pneumonia.", "The lungs are clear.", frozenset()),
    ("s12", "The heart is normal in size. The lungs are clear.",
     "Possible left lower lobe atelectasis.", frozenset()),
    ("s13", "Left pleural effusion. No right pleural effusion.", "Left pleural effusion.",
     frozenset()),
    ("s14", "Small right pneumothorax. Large left pneumothorax.",
     "Large bilateral pneumothoraces.", frozenset()),
    ("s15", "Mild cardiomegaly. Small left pleural effusion.", "",
     frozenset({("Cardiomegaly", "missed"), ("Pleural Effusion", "missed")})),
    ("s16", "The lungs are clear.", "Right upper lobe nodule. Mild cardiomegaly.",
     frozenset({("Lung Lesion", "hallucinated"), ("Cardiomegaly", "hallucinated")})),
    ("s17", "Left lower lobe atelectasis.", "Right lower lobe atelectasis. Left pleural effusion.",
     frozenset({("Atelectasis", "laterality"), ("Pleural Effusion", "hallucinated")})),
    ("s18", "Pleural effusion.", "Small left pleural effusion.", frozenset()),
    ("s19", "Small right pleural effusion.", "Large pleural effusion.",
     frozenset({("Pleural Effusion", "severity"), ("Pleural Effusion", "incomplete")})),
    ("s20", "Left rib fracture. Large right pneumothorax.", "Right pneumothorax.",
     frozenset({("Fracture", "missed"), ("Pneumothorax", "incomplete")})),
    ("s21", "Right upper lobe mass.", "The lungs are clear. No pneumothorax.",
     frozenset({("Lung Lesion", "missed")})),
    ("s22", "Possible right pleural effusion. Small left pleural effusion.",
     "Small left pleural effusion.", frozenset()),
)  # fmt: skip

#: Why each pair is in the fixture: the mistake it exposes (shown when that study goes wrong).
WHY: dict[str, str] = {
    "s01": "identical reports have no error at all",
    "s02": "'No pneumothorax' is a negative mention: the finding is missed, not stated",
    "s03": "a finding only the generated report states is hallucinated (the reference is truth)",
    "s04": "left vs right is a laterality error",
    "s05": "bilateral vs left is a laterality error: 'bilateral' is a side of its own",
    "s06": "a left and a right mention together make 'bilateral' (combine the sides)",
    "s07": "mild vs severe is a severity error",
    "s08": "large vs small is a severity error (compare the words, not only their presence)",
    "s09": "the generated report omits side and severity the reference gives: ONE incomplete row",
    "s10": "an omitted severity is 'incomplete', not a severity error",
    "s11": "an uncertain reference finding ('possible ...') is not stated: nothing is missed",
    "s12": "an uncertain generated finding is not a statement: nothing is hallucinated",
    "s13": "take sides only from mentions with the winning status ('No right effusion' is no side)",
    "s14": "several severities: keep the most severe (large), not the first one",
    "s15": "an empty generated report misses every reference finding (and must not crash)",
    "s16": "two hallucinated findings in one study are two rows",
    "s17": "one study can have errors of several findings",
    "s18": "detail the generated report ADDS is no error: the reference cannot confirm it",
    "s19": "a study x finding can have two categories (severity and incomplete)",
    "s20": "missed fracture + pneumothorax without its size",
    "s21": "'mass' is Lung Lesion: a missed critical finding",
    "s22": "positive beats uncertain: the reference states a small LEFT effusion, as generated",
}

_VALUE_COLUMNS = (
    "ref_status", "gen_status", "ref_laterality", "gen_laterality", "ref_severity", "gen_severity",
)  # fmt: skip
_REQUIRED = ("study_id", "finding", "category", *_VALUE_COLUMNS)


def _none(value: Any) -> Any:
    """None for every spelling of "not given" (None, NaN, pd.NA, "")."""
    if value is None or value is pd.NA or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _status(value: Any) -> str:
    """A status as one of STATES (students may keep the labeler's floats)."""
    value = _none(value)
    if value is None:
        return "not mentioned"
    if isinstance(value, str):
        return value
    try:
        return status_name(float(value))
    except (TypeError, ValueError):
        return str(value)


# ============================================================================ q1 finding_state
#: (report, label, expected (status, laterality, severity), what it exposes)
STATE_CASES: tuple[tuple[str, str, tuple[float | None, str | None, str | None], str], ...] = (
    ("Bilateral pleural effusions.", "Pleural Effusion", (1.0, "bilateral", None),
     "'bilateral' is a side of its own"),
    ("There is a left pleural effusion. There is also a right pleural effusion.",
     "Pleural Effusion", (1.0, "bilateral", None),
     "a left and a right mention together are 'bilateral', not the first side seen"),
    ("Left pleural effusion. No right pleural effusion.", "Pleural Effusion", (1.0, "left", None),
     "sides come only from mentions with the winning status (the negated right one is no side)"),
    ("Possible right pleural effusion. Small left pleural effusion.", "Pleural Effusion",
     (1.0, "left", "small"), "positive beats uncertain; then side/severity from the positive one"),
    ("Small right pneumothorax. Large left pneumothorax.", "Pneumothorax",
     (1.0, "bilateral", "large"), "keep the most severe grade, not the first"),
    ("No pneumothorax.", "Pneumothorax", (0.0, None, None), "a negated finding is status 0.0"),
    ("Mild cardiomegaly. Small left pleural effusion.", "Cardiomegaly", (1.0, None, "mild"),
     "use only the mentions of the requested label"),
    ("Mild cardiomegaly. Small left pleural effusion.", "Pneumothorax", (None, None, None),
     "a finding the report never mentions has status None (not 0.0)"),
    ("Possible left lower lobe atelectasis.", "Atelectasis", (-1.0, "left", None),
     "an uncertain-only finding is status -1.0 with its side"),
    ("Possible moderate pulmonary edema. No pleural effusion.", "Edema",
     (-1.0, None, "moderate"), "uncertain beats negative"),
)  # fmt: skip


def _as_state(value: Any) -> tuple[Any, Any, Any] | None:
    try:
        status, side, grade = value
    except (TypeError, ValueError):
        return None
    status = _none(status)
    return (None if status is None else float(status), _none(side), _none(grade))


def check_finding_state(student_fn: Callable[..., Any]) -> None:
    """Grade ``finding_state(mentions, label) -> (status, laterality, severity)``."""
    check = Checker("finding_state")
    for text, label, expected, why in STATE_CASES:
        mentions = label_report(text).mentions
        got = _as_state(check.call(student_fn, mentions, label))
        check.expect(got is not None, f"[{text!r}, {label}] returns (status, laterality, severity)",
                     "a 3-tuple", got)  # fmt: skip
        reference = tuple(finding_state(mentions, label))
        assert reference == expected, f"fixture drifted from the reference: {text!r}"  # noqa: S101
        check.expect(got == expected, f"[{text!r}, {label}] summarised correctly", expected, got,
                     why)  # fmt: skip
    check.done()


# ============================================================================ q2 categorize_errors
def _rows(frame: Any, check: Checker) -> pd.DataFrame:
    check.expect(isinstance(frame, pd.DataFrame), "returns a pandas DataFrame", "DataFrame",
                 type(frame).__name__)  # fmt: skip
    missing = [c for c in _REQUIRED if c not in frame.columns]
    check.expect(not missing, "has the tidy columns", list(_REQUIRED), list(frame.columns),
                 "one row per study x finding x category, with the values of both reports")  # fmt: skip
    out = frame[list(_REQUIRED)].copy()
    for col in ("ref_status", "gen_status"):
        out[col] = [_status(v) for v in out[col]]
    for col in _VALUE_COLUMNS[2:]:
        out[col] = [_none(v) for v in out[col]]
    return out.reset_index(drop=True)


def _keyed(frame: pd.DataFrame) -> dict[tuple[Any, str, str], tuple[Any, ...]]:
    return {
        (r.study_id, r.finding, r.category): tuple(getattr(r, c) for c in _VALUE_COLUMNS)
        for r in frame.itertuples(index=False)
    }


def check_categorize_errors(student_fn: Callable[..., Any]) -> None:
    """Grade ``categorize_errors(references, generated, study_ids) -> DataFrame`` on
    :data:`PAIRS` (known counts per category), row by row, values included."""
    check = Checker("categorize_errors")
    ids = [p[0] for p in PAIRS]
    refs = [p[1] for p in PAIRS]
    gens = [p[2] for p in PAIRS]
    reference = _rows(categorize_errors(refs, gens, ids), Checker("reference"))
    expected_keys = {(sid, f, c) for sid, _, _, errs in PAIRS for f, c in errs}
    assert set(_keyed(reference)) == expected_keys, "fixture drifted from the reference"  # noqa: S101

    got = _rows(check.call(student_fn, refs, gens, ids), check)
    bad_cat = sorted(set(got["category"]) - set(CATEGORIES))
    check.expect(not bad_cat, "categories are named as in CATEGORIES", list(CATEGORIES), bad_cat)
    bad_finding = sorted(set(got["finding"]) - set(FINDINGS))
    check.expect(not bad_finding, "findings are the 13 CheXpert findings ('No Finding' is not one)",
                 "names from errors.FINDINGS", bad_finding,
                 "'No Finding' is derived from the others: its errors are the findings' errors")  # fmt: skip
    unknown_ids = sorted(set(map(str, got["study_id"])) - set(ids))
    check.expect(not unknown_ids, "study_id holds the given ids (not row positions)", ids[:3],
                 unknown_ids[:3])  # fmt: skip
    dup = got[got.duplicated(["study_id", "finding", "category"])]
    check.expect(dup.empty, "one row per study x finding x category (no duplicates)", "no duplicate",
                 dup[["study_id", "finding", "category"]].values.tolist()[:3],
                 "an incomplete finding that omits side AND severity is still one row")  # fmt: skip
    mine, theirs = _keyed(got), _keyed(reference)
    for sid, ref_text, gen_text, _ in PAIRS:
        want = sorted(k[1:] for k in theirs if k[0] == sid)
        have = sorted(k[1:] for k in mine if k[0] == sid)
        check.expect(have == want, f"[{sid}] errors of REFERENCE {ref_text!r} vs GENERATED "
                     f"{gen_text!r}", want, have, WHY[sid])  # fmt: skip
    expected_counts = {c: int((reference["category"] == c).sum()) for c in CATEGORIES}
    got_counts = {c: int((got["category"] == c).sum()) for c in CATEGORIES}
    check.expect(got_counts == expected_counts, "error count per category", expected_counts,
                 got_counts)  # fmt: skip
    for key, values in theirs.items():
        named = dict(zip(_VALUE_COLUMNS, values, strict=True))
        given = dict(zip(_VALUE_COLUMNS, mine[key], strict=True))
        check.expect(given == named, f"[{key[0]}] {key[1]} / {key[2]}: status, side and severity "
                     "of both reports", named, given,
                     "ref_* columns describe the reference, gen_* the generated report; status "
                     "as 'positive' / 'uncertain' / 'negative' / 'not mentioned'")  # fmt: skip

    raised = False
    try:
        student_fn(refs[:3], gens[:2], ids[:3])
    except NotImplementedError:
        raise
    except ValueError:
        raised = True
    except Exception:  # noqa: BLE001 - any other exception is a crash, not a clear refusal
        raised = False
    check.expect(raised, "misaligned input (3 references, 2 generated) raises ValueError",
                 "ValueError", "no ValueError",
                 "zip() silently drops the extra reference: check the lengths first")  # fmt: skip
    check.done()


# ============================================================================ q3 pointing_score
#: (name, attention grid, boxes, image_size, (mass_in_box, area_fraction, lift), what it exposes)
_ONE_HOT = np.zeros((4, 4))
_ONE_HOT[1, 2] = 1.0
_UNIFORM = np.ones((4, 4))
POINTING_CASES: tuple[tuple[str, np.ndarray, list[tuple[int, int, int, int]], int,
                            tuple[float, float, float], str], ...] = (
    ("all attention on the box's cell", _ONE_HOT, [(4, 2, 5, 3)], 8, (1.0, 4 / 64, 16.0),
     "cell (row 1, col 2) of a 4 x 4 grid covers pixels y 2-3, x 4-5 of an 8 px image; "
     "corners are inclusive and x is the column: mask[y0:y1 + 1, x0:x1 + 1]"),
    ("box half over the cell", _ONE_HOT, [(5, 2, 6, 3)], 8, (0.5, 4 / 64, 8.0),
     "x is the column, y the row: the mask is mask[y0:y1 + 1, x0:x1 + 1]; corners are inclusive"),
    ("unnormalised attention", 7.0 * _ONE_HOT, [(4, 2, 5, 3)], 8, (1.0, 4 / 64, 16.0),
     "normalise the grid to sum 1 first (attention weights over the visual tokens)"),
    ("one pixel of a 2 x 2 cell", _ONE_HOT, [(4, 2, 4, 2)], 8, (0.25, 1 / 64, 16.0),
     "a cell's attention is shared evenly among its pixels (here 4), not given whole"),
    ("uniform attention, overlapping boxes", _UNIFORM, [(0, 0, 3, 3), (2, 2, 5, 5)], 8,
     (28 / 64, 28 / 64, 1.0), "several boxes: use their UNION (overlap counted once)"),
    ("graded 2 x 2 grid", np.array([[0.5, 0.25], [0.25, 0.0]]), [(1, 1, 2, 2)], 4,
     (0.25, 0.25, 1.0), "the box covers one pixel of each 2 x 2 cell"),
    ("128 px image, 4 x 4 grid", _ONE_HOT, [(60, 30, 99, 50)], 128,
     (32 * 19 / 1024, 40 * 21 / 128**2, (32 * 19 / 1024) / (40 * 21 / 128**2)),
     "cells are 32 px wide here: box x 60-99, y 30-50 overlaps cell (1, 2) on x 64-95, y 32-50"),
)  # fmt: skip


def _as_score(value: Any) -> tuple[float, float, float] | None:
    try:
        if isinstance(value, dict):
            return tuple(float(value[k]) for k in ("mass_in_box", "area_fraction", "lift"))
        if hasattr(value, "mass_in_box"):
            return (float(value.mass_in_box), float(value.area_fraction), float(value.lift))
        return tuple(float(v) for v in list(value)[:3])  # type: ignore[return-value]
    except (TypeError, ValueError, KeyError):
        return None


def check_pointing_score(student_fn: Callable[..., Any]) -> None:
    """Grade ``pointing_score(attention, boxes, image_size) -> (mass_in_box, area_fraction,
    lift, ...)`` on synthetic grids with hand-computed answers (tolerance 1e-9)."""
    from ..errors import pointing_score

    check = Checker("pointing_score")
    for name, grid, boxes, size, expected, why in POINTING_CASES:
        ref = pointing_score(grid, boxes, size)
        assert np.allclose((ref.mass_in_box, ref.area_fraction, ref.lift), expected), name  # noqa: S101
        got = _as_score(check.call(student_fn, grid.copy(), list(boxes), size))
        check.expect(got is not None and len(got) == 3,
                     f"[{name}] returns (mass_in_box, area_fraction, lift)", "three numbers", got)  # fmt: skip
        ok = all(abs(g - e) < TOL for g, e in zip(got, expected, strict=True))  # type: ignore[arg-type]
        check.expect(ok, f"[{name}] mass_in_box, area_fraction, lift (tolerance {TOL:g})",
                     tuple(round(v, 6) for v in expected),
                     tuple(round(v, 6) for v in got),  # type: ignore[union-attr]
                     why)  # fmt: skip
    check.done()


def fixture_pairs() -> tuple[list[str], list[str], list[str]]:
    """(references, generated, study_ids) of :data:`PAIRS`, for trying one's code."""
    return [p[1] for p in PAIRS], [p[2] for p in PAIRS], [p[0] for p in PAIRS]


def expected_counts() -> dict[str, int]:
    """Errors per category in :data:`PAIRS`: 5 missed, 4 hallucinated, 3 laterality,
    3 severity, 4 incomplete."""
    counts = dict.fromkeys(CATEGORIES, 0)
    for *_, errs in PAIRS:
        for _, category in errs:
            counts[category] += 1
    return counts


__all__: Sequence[str] = (
    "PAIRS",
    "POINTING_CASES",
    "STATE_CASES",
    "check_categorize_errors",
    "check_finding_state",
    "check_pointing_score",
    "expected_counts",
    "fixture_pairs",
)
