"""Grading validity for notebook 09: plausible wrong audits lose points, correct alternatives pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from course_utils import audit
from course_utils.checks import CheckFailed
from course_utils.checks.nb09 import (
    audit_fixture,
    check_bias_audit,
    check_critical_sensitivity,
    reference_table,
)

N_BOOT = 300  # fewer resamples keep the file fast; the flags of the fixture do not depend on it


# --------------------------------------------------------------------------- q9_1
def make_sensitivity(
    uncertain: str = "exclude", pooling: str = "pooled", columns: str = "critical",
    empty: str = "nan",
):  # fmt: skip
    """critical_sensitivity as a student might write it (one knob per mistake)."""

    def critical_sensitivity(labels, calls):
        values = np.asarray(labels, dtype=float)
        values = values[:, list(audit.CRITICAL_INDEX)] if columns == "critical" else values[:, :4]
        calls = np.asarray(calls, bool)
        positive = values == 1
        if uncertain == "positive":
            positive |= values == -1
        n = int(positive.sum())
        if n == 0:
            return (float("nan") if empty == "nan" else 0.0), 0
        if pooling == "macro":  # mean of the per-finding sensitivities
            per = [(calls[:, k] & positive[:, k]).sum() / positive[:, k].sum()
                   for k in range(positive.shape[1]) if positive[:, k].any()]  # fmt: skip
            return float(np.mean(per)), n
        return float((calls & positive).sum() / n), n

    return critical_sensitivity


def test_reference_sensitivity_passes() -> None:
    def reference(labels, calls):
        truth, known = audit.critical_truth(labels)
        tp, pos = audit.sensitivity_counts(truth, calls, known)
        return (tp.sum() / pos.sum() if pos.sum() else float("nan")), int(pos.sum())

    check_critical_sensitivity(reference)
    check_critical_sensitivity(make_sensitivity())


@pytest.mark.parametrize(
    "mistake, message",
    [
        ({"uncertain": "positive"}, "counts the positive critical findings"),
        ({"pooling": "macro"}, "pooled, not averaged"),
        ({"columns": "first four"}, "counts the positive critical findings"),
        ({"empty": "zero"}, "NaN"),
    ],
)
def test_sensitivity_mistakes_fail(mistake: dict, message: str) -> None:
    with pytest.raises(CheckFailed, match=message):
        check_critical_sensitivity(make_sensitivity(**mistake))


# --------------------------------------------------------------------------- q9_2
def make_audit(
    flag_on: str = "ci", uncertain: str = "exclude", column: str = "age_group",
    min_positives_rule: bool = True, use_threshold: bool = True, label_columns: str = "critical",
    bootstrap: str = "library", gap_rule: bool = True,
):  # fmt: skip
    """bias_audit as a student might write it (one knob per mistake)."""

    def bias_audit(model, test_dataset, threshold=0.95, n_boot=1000, seed=42, min_positives=10):
        threshold = threshold if use_threshold else 0.95
        calls = model.calls(test_dataset)
        groups = audit.subgroup_table(test_dataset)
        values = np.asarray(test_dataset["labels"], dtype=float)
        cols = list(audit.CRITICAL_INDEX) if label_columns == "critical" else [0, 1, 2, 3]
        values = values[:, cols]
        truth = (values == 1) | ((values == -1) if uncertain == "positive" else False)
        known = np.ones_like(truth) if uncertain == "positive" else values != -1
        attributes = ("age" if column == "age" else "age_group", "sex", "race")
        overall_rate = calls[known].mean()
        rows = []
        for attribute in attributes:
            for subgroup, idx in groups.groupby(attribute).indices.items():
                t, c, k = truth[idx], calls[idx], known[idx]
                n_pos = int((t & k).sum())
                rest = np.setdiff1d(np.arange(len(truth)), idx)
                if bootstrap == "library":
                    ci = audit.sensitivity_ci(t, c, k, n_boot=n_boot, seed=seed)
                    est, low, high = (ci.estimate, ci.low, ci.high) if ci else (np.nan,) * 3
                    gap, _, gap_high = audit.sensitivity_gap_ci(truth, calls, known, idx,
                                                                n_boot=n_boot, seed=seed)  # fmt: skip
                else:  # own loop: resample the subgroup's studies, then the others'
                    est, low, high, dist = _own_bootstrap(t & k, c, n_boot, seed)
                    other, _, _, dist_rest = _own_bootstrap(
                        truth[rest] & known[rest], calls[rest], n_boot, seed + 7
                    )
                    gap = est - other
                    gap_high = np.nanpercentile(dist - dist_rest, 97.5) if n_pos else np.nan
                if flag_on == "ci":
                    flagged = high < threshold and (gap_high < 0 or not gap_rule)
                elif flag_on == "point":
                    flagged = est < threshold and gap < 0
                else:  # demographic parity: call rate far from the overall call rate
                    flagged = abs(c[k].mean() - overall_rate) > 0.1
                if min_positives_rule:
                    flagged = flagged and n_pos >= min_positives
                rows.append({"attribute": attribute, "subgroup": subgroup, "n_positive": n_pos,
                             "sensitivity": est, "ci_low": low, "ci_high": high,
                             "flagged": bool(flagged)})  # fmt: skip
        return pd.DataFrame(rows)

    return bias_audit


def _own_bootstrap(positive: np.ndarray, calls: np.ndarray, n_boot: int, seed: int):
    """Resample *all* the studies (not only those with positives), another RNG stream."""
    tp, pos = (positive & calls).sum(1), positive.sum(1)
    if pos.sum() == 0:
        return np.nan, np.nan, np.nan, np.full(n_boot, np.nan)
    rng = np.random.default_rng(seed + 1)
    idx = rng.integers(0, len(pos), size=(n_boot, len(pos)))
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = tp[idx].sum(1) / pos[idx].sum(1)
    low, high = np.nanpercentile(dist, [2.5, 97.5])
    return tp.sum() / pos.sum(), low, high, dist


def test_reference_and_correct_alternatives_pass() -> None:
    check_bias_audit(reference_table, n_boot=N_BOOT)
    check_bias_audit(make_audit(), n_boot=N_BOOT)
    check_bias_audit(make_audit(bootstrap="own"), n_boot=N_BOOT)  # own resampling loop


@pytest.mark.parametrize(
    "mistake, message",
    [
        ({"flag_on": "point"}, "flags exactly the right subgroups"),  # CIs ignored
        ({"gap_rule": False}, "'overlap'.*flags exactly"),  # flags every group below 0.95
        ({"flag_on": "parity"}, "flags exactly the right subgroups"),  # demographic parity
        ({"uncertain": "positive"}, "positive critical findings"),
        ({"column": "age"}, "one row per subgroup"),  # raw age instead of age groups
        ({"min_positives_rule": False}, "flags exactly the right subgroups"),
        ({"use_threshold": False}, "threshold 0.3"),
        ({"label_columns": "first four"}, "positive critical findings"),
    ],
)
def test_audit_mistakes_fail(mistake: dict, message: str) -> None:
    with pytest.raises(CheckFailed, match=message):
        check_bias_audit(make_audit(**mistake), n_boot=N_BOOT)


def test_fixture_answers_are_what_the_comments_say() -> None:
    model, data = audit_fixture("mistakes")
    table = reference_table(model, data, n_boot=N_BOOT).set_index(["attribute", "subgroup"])
    flagged = sorted(map(tuple, table.index[table.flagged]))
    assert flagged == [("age_group", "75+"), ("race", "UNKNOWN"), ("sex", "F")]
    assert table.loc[("race", "ASIAN"), "sensitivity"] == pytest.approx(10 / 12)
    assert table.loc[("age_group", "60-74"), "n_positive"] == 20  # uncertain fractures left out
    model, data = audit_fixture("overlap")
    table = reference_table(model, data, n_boot=N_BOOT).set_index(["attribute", "subgroup"])
    assert sorted(map(tuple, table.index[table.flagged])) == [("age_group", "75+"),
                                                              ("race", "UNKNOWN")]  # fmt: skip
    assert table.loc[("sex", "F"), "sensitivity"] == table.loc[("sex", "M"), "sensitivity"] == 0.7


def test_ground_truth_part_compares_with_the_reference() -> None:
    # the "trained detector" part: here a fixture plays the audit and the control test set
    model, data = audit_fixture("overlap")
    check_bias_audit(make_audit(), model, data, data, n_boot=N_BOOT)
    right = make_audit()

    def blind_on_the_audit_set(m, test_dataset, **kwargs):
        out = right(m, test_dataset, **kwargs)
        return out.assign(flagged=False) if test_dataset is data else out

    with pytest.raises(CheckFailed, match="audit test set.*flags what the reference flags"):
        check_bias_audit(blind_on_the_audit_set, model, data, data, n_boot=N_BOOT)
