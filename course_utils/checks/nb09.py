"""Graded checks for notebook 09 (bias audit).

* :func:`check_critical_sensitivity` - the pooled critical-finding sensitivity on hand-made label
  tables: uncertain labels are neither positives nor negatives, blanks are negatives, the four
  critical columns (not the first four), findings pooled (not averaged per finding), NaN when
  there is nothing to measure.
* :func:`check_bias_audit` - the student's ``bias_audit`` on a hand-made audit where each usual
  mistake flags a wrong subgroup or reports a wrong number (:func:`audit_fixture`): flags from
  the point estimate instead of the CI, demographic parity instead of sensitivity, uncertain
  labels counted as missed positives, the raw age column instead of ``age_group``, a flag on
  three positives; then, when given the trained detector and the audit / control test sets,
  that it flags exactly what the reference flags - the injected subgroup on the audit set and
  nothing on the control.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..audit import (
    AUDIT_ATTRIBUTES,
    CRITICAL_FINDINGS,
    CriticalDetector,
    audit_calls,
    critical_truth,
    subgroup_table,
)
from ..labels import CHEXPERT_LABELS
from . import Checker

_K = {name: CHEXPERT_LABELS.index(name) for name in CHEXPERT_LABELS}
# Bootstrap variants (other resampling, other RNG, no Wilson floor at 0 % / 100 %) move the bounds.
CI_TOLERANCE = 0.2
_COLUMNS = ("attribute", "subgroup", "n_positive", "sensitivity", "ci_low", "ci_high", "flagged")


def _label_rows(rows: list[dict[str, float]]) -> np.ndarray:
    out = np.full((len(rows), len(CHEXPERT_LABELS)), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i, _K[name]] = value
    return out


# --------------------------------------------------------------------------- q9_1
#: (name, labels, calls (N, 4) in CRITICAL_FINDINGS order, expected sensitivity, positives)
SENSITIVITY_CASES: list[tuple[str, np.ndarray, np.ndarray, float, int]] = [
    (
        "uncertain and blank labels",
        _label_rows([
            {"Pneumothorax": 1.0, "Fracture": -1.0},
            {"Pleural Effusion": 1.0, "Lung Lesion": 0.0},
            {"Fracture": -1.0},
            {},
        ]),
        np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool),
        0.5, 2,
    ),
    (
        "pooled, not averaged per finding",
        _label_rows([{"Pneumothorax": 1.0}] + [{"Pleural Effusion": 1.0}] * 4),
        np.array([[0, 0, 0, 0]] + [[0, 0, 0, 1]] * 4, bool),
        0.8, 5,
    ),
    (
        "critical columns only",
        _label_rows([{"No Finding": 1.0, "Cardiomegaly": 1.0, "Fracture": 1.0},
                     {"Enlarged Cardiomediastinum": 1.0, "Lung Lesion": 1.0}]),
        np.array([[0, 1, 0, 0], [0, 0, 0, 0]], bool),
        0.5, 2,
    ),
    (
        "no positive",
        _label_rows([{"Pneumothorax": 0.0, "Fracture": -1.0}, {}]),
        np.array([[1, 0, 0, 0], [0, 0, 0, 0]], bool),
        float("nan"), 0,
    ),
]  # fmt: skip


def check_critical_sensitivity(critical_sensitivity: Callable[..., Any]) -> None:
    """Grade ``critical_sensitivity(labels, calls) -> (sensitivity, n_positive)``."""
    check = Checker("critical_sensitivity")
    for name, labels, calls, want, n_pos in SENSITIVITY_CASES:
        out = check.call(critical_sensitivity, torch.from_numpy(labels.copy()), calls.copy())
        check.expect(isinstance(out, tuple) and len(out) == 2,
                     f"[{name}] returns (sensitivity, n_positive)", "a 2-tuple", out)  # fmt: skip
        sens, n = out
        check.expect(int(n) == n_pos, f"[{name}] counts the positive critical findings", n_pos, n,
                     "a positive is label == 1 in one of CRITICAL_INDEX's columns; -1 (uncertain) "
                     "is not a positive, NaN (not mentioned) is a negative")  # fmt: skip
        same = (math.isnan(want) and sens is not None and math.isnan(float(sens))) or (
            not math.isnan(want) and abs(float(sens) - want) < 1e-9
        )
        check.expect(same, f"[{name}] sensitivity = called positives / positives", want, sens,
                     "pool the (study, finding) pairs: sum TP over all four findings / sum of "
                     "positives; NaN (not 0) when there is no positive")  # fmt: skip
    check.done()


# --------------------------------------------------------------------------- q9_2
#: (count, age, race, labels, which studies the detector calls, sex pattern) per block.
Block = tuple[int, int, str, dict[str, float], str, str]
AUDIT_FIXTURES: dict[str, list[Block]] = {
    # 75+ (women, race unknown): 20 effusions, 8 called -> flagged, like the women and race
    # UNKNOWN whose misses these are; asian 18-39: 10 of 12 called (0.83 is under 0.95 and
    # under the rest, but both CIs reach across: not flagged); black 40-59: high call rate,
    # every lesion called; race OTHER: 3 missed effusions (too few to flag); white men 60-74:
    # 20 fractures called, 30 *uncertain* fractures not called.
    "mistakes": [
        (20, 80, "UNKNOWN", {"Pleural Effusion": 1.0}, "first 8", "F"),
        (12, 30, "ASIAN", {"Pneumothorax": 1.0}, "first 10", "FM"),
        (100, 50, "WHITE", {"Pleural Effusion": 1.0}, "all", "FM"),
        (30, 50, "WHITE", {"No Finding": 1.0}, "first 10", "FM"),
        (20, 45, "BLACK/AFRICAN AMERICAN", {"Lung Lesion": 1.0}, "all", "FM"),
        (5, 45, "BLACK/AFRICAN AMERICAN", {}, "none", "FM"),
        (3, 55, "OTHER", {"Pleural Effusion": 1.0}, "none", "F"),
        (20, 65, "WHITE", {"Fracture": 1.0}, "all", "M"),
        (30, 66, "WHITE", {"Fracture": -1.0}, "none", "M"),
    ],
    # 75+ (both sexes, race unknown): 40 effusions, 16 called. Their misses take women and men
    # alike below 0.95 (0.7 each), but neither sex is worse than the other: only the 75+ (and
    # race UNKNOWN, the same studies) are flagged.
    "overlap": [
        (40, 82, "UNKNOWN", {"Pleural Effusion": 1.0}, "first 16", "FM"),
        (40, 50, "WHITE", {"Pleural Effusion": 1.0}, "all", "FM"),
        (10, 50, "WHITE", {}, "none", "FM"),
    ],
}


def audit_fixture(name: str = "mistakes") -> tuple[CriticalDetector, dict[str, Any]]:
    """A hand-made audit (detector at probability 0.5, dataset dict) from :data:`AUDIT_FIXTURES`."""
    rows, meta, probs = [], [], []
    for count, age, race, labels, called, sexes in AUDIT_FIXTURES[name]:
        for j in range(count):
            p = np.full(len(CHEXPERT_LABELS), 0.1)
            if called == "all" or (called.startswith("first") and j < int(called.split()[1])):
                for label in labels:
                    p[_K[label]] = 0.9
            rows.append(labels)
            probs.append(p)
            meta.append({"study_id": 1000 + len(meta), "age": age, "sex": sexes[j % len(sexes)],
                         "race": race, "findings": "", "impression": ""})  # fmt: skip
    data = {
        "labels": torch.from_numpy(_label_rows(rows)),
        "metadata": meta,
        "reports": ["Fixture report."] * len(meta),
    }
    detector = CriticalDetector(np.array(probs), dict.fromkeys(CRITICAL_FINDINGS, 0.5))
    return detector, data


def reference_table(
    model: CriticalDetector,
    test_dataset: Any,
    threshold: float = 0.95,
    n_boot: int = 1000,
    seed: int = 42,
    min_positives: int = 10,
) -> pd.DataFrame:
    """The library's answer in the student's format (demographic attributes only).

    ``flagged`` is the library's ``candidate`` column: below the threshold and worse than the
    rest. The library's extra step that drops candidates another flagged subgroup explains
    (:func:`course_utils.audit.resolve_overlaps`) is shown in the notebook, not asked for.
    """
    truth, known = critical_truth(test_dataset["labels"])
    calls = model.calls(test_dataset)
    result = audit_calls(truth, calls, known, subgroup_table(test_dataset), threshold=threshold,
                         n_boot=n_boot, seed=seed, min_positives=min_positives,
                         edge_cases=())  # fmt: skip
    table = result.table.assign(flagged=result.table["candidate"])
    return table[list(_COLUMNS)]


def _as_table(check: Checker, out: Any, where: str) -> pd.DataFrame:
    check.expect(isinstance(out, pd.DataFrame), f"[{where}] returns a DataFrame", "DataFrame",
                 type(out).__name__)  # fmt: skip
    missing = [c for c in _COLUMNS if c not in out.columns]
    check.expect(not missing, f"[{where}] has the columns {', '.join(_COLUMNS)}", list(_COLUMNS),
                 list(out.columns))  # fmt: skip
    table = out[out["attribute"].isin(AUDIT_ATTRIBUTES)].copy()
    table["subgroup"] = table["subgroup"].astype(str)
    return table.set_index(["attribute", "subgroup"])


def _flags(table: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(map(tuple, table.index[table["flagged"].astype(bool)]))


def _compare(
    check: Checker, got: pd.DataFrame, want: pd.DataFrame, where: str, min_positives: int = 10
) -> None:
    want = want.assign(subgroup=want["subgroup"].astype(str)).set_index(["attribute", "subgroup"])
    check.expect(sorted(got.index) == sorted(want.index),
                 f"[{where}] one row per subgroup of age_group, sex and race",
                 sorted(want.index), sorted(got.index),
                 "group by the columns of audit.subgroup_table named in audit.AUDIT_ATTRIBUTES "
                 "(age_group, not the raw age)")  # fmt: skip
    for key, ref in want.iterrows():
        row = got.loc[key]
        check.expect(int(row["n_positive"]) == int(ref["n_positive"]),
                     f"[{where}] {key}: positive critical findings", int(ref["n_positive"]),
                     row["n_positive"], "label == 1 in the critical columns; an uncertain label "
                     "(-1) is not a positive")  # fmt: skip
        if ref["n_positive"] == 0:
            continue
        check.expect(abs(float(row["sensitivity"]) - ref["sensitivity"]) < 1e-9,
                     f"[{where}] {key}: pooled sensitivity", round(ref["sensitivity"], 4),
                     row["sensitivity"])  # fmt: skip
        if ref["n_positive"] < min_positives:  # never flagged: any honest interval will do
            continue
        low, high = float(row["ci_low"]), float(row["ci_high"])
        ok = low <= ref["sensitivity"] + 1e-9 <= high + 2e-9 and (
            abs(low - ref["ci_low"]) < CI_TOLERANCE and abs(high - ref["ci_high"]) < CI_TOLERANCE
        )
        check.expect(ok, f"[{where}] {key}: 95 % bootstrap CI (within {CI_TOLERANCE})",
                     (round(ref["ci_low"], 3), round(ref["ci_high"], 3)), (low, high),
                     "audit.sensitivity_ci(truth, calls, known, n_boot=..., seed=...) resamples "
                     "the studies of the subgroup")  # fmt: skip
    check.expect(_flags(got) == _flags(want), f"[{where}] flags exactly the right subgroups",
                 _flags(want), _flags(got),
                 "flag when the whole CI is below the threshold (ci_high < threshold), the "
                 "whole CI of the gap to the other studies is below 0 (gap_high < 0) and the "
                 "subgroup has at least min_positives positives - not on point estimates, and "
                 "never on call rates (demographic parity)")  # fmt: skip


def check_bias_audit(
    bias_audit: Callable[..., Any],
    detector: Any = None,
    audit_test: Any = None,
    control_test: Any = None,
    n_boot: int = 1000,
) -> None:
    """Grade ``bias_audit(model, test_dataset, threshold, n_boot, seed, min_positives)``.

    Args:
        bias_audit: the student's function (returns a DataFrame, see the notebook).
        detector, audit_test, control_test: the trained :class:`CriticalDetector` and the
            audit / control test splits: when given, the student's flags must equal the
            reference's on both (the injected subgroup on the audit set, none on the control).
    """
    check = Checker("bias_audit")
    for name, threshold in (("mistakes", 0.95), ("overlap", 0.95), ("mistakes", 0.3)):
        model, data = audit_fixture(name)
        where = f"hand-made audit '{name}', threshold {threshold}"
        out = check.call(bias_audit, model, data, threshold=threshold, n_boot=n_boot, seed=42,
                         min_positives=10)  # fmt: skip
        want = reference_table(model, data, threshold, n_boot, 42, 10)
        _compare(check, _as_table(check, out, where), want, where)
    if detector is not None:
        for name, split in (("audit test set", audit_test), ("control test set", control_test)):
            if split is None:
                continue
            out = check.call(bias_audit, detector, split, threshold=0.95, n_boot=n_boot,
                             seed=42, min_positives=10)  # fmt: skip
            got = _as_table(check, out, name)
            want = reference_table(detector, split, 0.95, n_boot, 42, 10)
            want = want.assign(subgroup=want["subgroup"].astype(str))
            flags = _flags(want.set_index(["attribute", "subgroup"]))
            check.expect(_flags(got) == flags, f"[{name}] flags what the reference flags",
                         flags, _flags(got))  # fmt: skip
    check.done()
