"""Grading validity for notebook 02: plausible wrong answers lose points, a correct alternative passes."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from course_utils.checks import CheckFailed
from course_utils.checks.nb02 import FIXTURE_EXPECTED, check_analyze_dataset, fixture_dataset
from course_utils.eda import STOP_WORDS, analyze_dataset
from course_utils.labels import CHEXPERT_LABELS

STATES = ("positive", "uncertain", "negative", "not mentioned")


def make_analyzer(
    nan_as_negative: bool = False,
    uncertain_as_positive: bool = False,
    diagonal: str = "count",
    upper_only: bool = False,
    cooc_uncertain: bool = False,
    cooc_with_no_finding: bool = False,
    length_in_chars: bool = False,
    normal: str = "no_finding",
    imbalance: str = "not_positive",
    stop_words: bool = True,
    drop_xxxx: bool = True,
    lowercase: bool = True,
    count_documents: bool = False,
    ties: str = "most_common",
):
    """An independent analyze_dataset written the way a student might (plain numpy, a Counter,
    insertion-order ties), with one knob per classic mistake."""

    def analyze(dataset, plot=True):
        y = np.asarray(dataset["labels"], dtype=float)
        reports = dataset["reports"]
        n = len(reports)
        pos = (y == 1) | ((y == -1) if uncertain_as_positive else False)
        neg = (y == 0) | (np.isnan(y) if nan_as_negative else False)
        unc = (y == -1) & ~pos
        miss = np.isnan(y) & ~neg
        counts = pd.DataFrame(
            {"positive": pos.sum(0), "uncertain": unc.sum(0), "negative": neg.sum(0),
             "not mentioned": miss.sum(0)},
            index=list(CHEXPERT_LABELS),
        )  # fmt: skip
        n_pos = counts["positive"].to_numpy(dtype=float)
        base = n - n_pos if imbalance == "not_positive" else counts["negative"].to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(n_pos > 0, base / n_pos, np.inf)
        first = 0 if cooc_with_no_finding else 1
        x = ((y == 1) | ((y == -1) if cooc_uncertain else False))[:, first:].astype(int)
        cooc = x.T @ x
        if diagonal == "zero":
            np.fill_diagonal(cooc, 0)
        elif diagonal == "double":
            cooc = cooc + np.diag(np.diag(cooc))
        if upper_only:
            cooc = np.triu(cooc)
        names = list(CHEXPERT_LABELS[first:])
        lengths = [len(r) if length_in_chars else len(r.split()) for r in reports]
        if normal == "no_finding":
            n_normal = int((y[:, 0] == 1).sum())
        elif normal == "no_positive":
            n_normal = int((~(y[:, 1:] == 1).any(axis=1)).sum())
        elif normal == "not_zero":  # NaN != 0 is True: blanks count as normal
            n_normal = int((y[:, 0] != 0).sum())
        else:  # "nanmean": the mean of No Finding over the non-blank cells
            n_normal = int(round(np.nanmean(y[:, 0]) * n))
        terms = Counter()
        for report in reports:
            text = report.lower() if lowercase else report
            words = re.findall(r"[a-z]{2,}" if lowercase else r"[A-Za-z]{2,}", text)
            words = [w for w in words if not (stop_words and w.lower() in STOP_WORDS - {"xxxx"})]
            words = [w for w in words if not (drop_xxxx and w.lower() == "xxxx")]
            terms.update(set(words) if count_documents else words)
        if ties == "most_common":
            top = dict(terms.most_common(20))
        else:
            top = dict(sorted(terms.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
        return {
            "n_studies": n,
            "label_counts": counts,
            "prevalence": counts["positive"] / n,
            "imbalance_ratio": pd.Series(ratio, index=list(CHEXPERT_LABELS)),
            "report_length": lengths,
            "report_length_stats": pd.Series(lengths).describe(),
            "cooccurrence": pd.DataFrame(cooc, index=names, columns=names),
            "normal_vs_abnormal": {"normal": n_normal, "abnormal": n - n_normal},
            "normal_share": n_normal / n,
            "top_terms": pd.Series(top),
        }

    return analyze


def test_reference_passes_and_matches_the_hand_computed_fixture():
    check_analyze_dataset(analyze_dataset)
    stats = analyze_dataset(fixture_dataset(), plot=False)
    assert stats["label_counts"].loc["Pleural Effusion"].tolist() == [2, 1, 1, 2]
    assert stats["label_counts"].loc["No Finding"].tolist() == [2, 0, 0, 4]
    assert stats["report_length"].tolist() == [15, 12, 6, 19, 10, 3]
    assert stats["cooccurrence"].loc["Cardiomegaly", "Pleural Effusion"] == 2
    assert stats["normal_vs_abnormal"].to_dict() == {"normal": 2, "abnormal": 4}
    assert stats["top_terms"].index[:5].tolist() == [
        "heart", "left", "pleural", "pneumothorax", "small"
    ]  # fmt: skip
    for key in ("label_counts", "cooccurrence"):
        pd.testing.assert_frame_equal(
            stats[key], FIXTURE_EXPECTED[key], check_dtype=False, check_names=False
        )


def test_correct_alternative_implementation_passes():
    check_analyze_dataset(make_analyzer())
    check_analyze_dataset(make_analyzer(ties="alphabetical"))


def test_checker_compares_with_the_reference_on_a_larger_dataset():
    rng = np.random.default_rng(0)
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=(60, 14), p=[0.2, 0.2, 0.1, 0.5])
    words = ["heart", "lungs", "clear", "no", "effusion", "XXXX", "the", "normal", "left"]
    reports = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(60)]
    dataset = {"reports": reports, "labels": torch.tensor(labels, dtype=torch.float32)}
    check_analyze_dataset(analyze_dataset, dataset)
    check_analyze_dataset(make_analyzer(), dataset)


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(nan_as_negative=True), r"\[fixture\] negative counts"),
        (dict(uncertain_as_positive=True), r"\[fixture\] positive counts"),
        (dict(diagonal="zero"), "diagonal = positive count"),
        (dict(diagonal="double"), "diagonal = positive count"),
        (dict(upper_only=True), "co-occurrence is symmetric"),
        (dict(cooc_uncertain=True), r"co-occurrence (diagonal|counts)"),
        (dict(cooc_with_no_finding=True), "co-occurrence is 13 x 13"),
        (dict(length_in_chars=True), "report length in words"),
        (dict(normal="no_positive"), "normal vs abnormal counts"),
        (dict(normal="not_zero"), "normal vs abnormal counts"),
        (dict(normal="nanmean"), "normal vs abnormal counts"),
        (dict(imbalance="negative_only"), "imbalance ratio"),
        (dict(stop_words=False), "without stop words or XXXX"),
        (dict(drop_xxxx=False), "without stop words or XXXX"),
        (dict(lowercase=False), "without stop words or XXXX"),
        (dict(count_documents=True), "total occurrences|20 most frequent"),
    ],
)
def test_plausible_wrong_answers_fail(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_analyze_dataset(make_analyzer(**mistake))


def test_missing_statistic_and_crash_fail_with_a_message():
    def partial(dataset, plot=True):
        out = analyze_dataset(dataset, plot=False)
        del out["top_terms"]
        return out

    with pytest.raises(CheckFailed, match="every statistic"):
        check_analyze_dataset(partial)

    def crash(dataset, plot=True):
        raise KeyError("labels")

    with pytest.raises(CheckFailed, match="raised KeyError"):
        check_analyze_dataset(crash)


def test_unfinished_todo_surfaces_not_implemented():
    def stub(dataset, plot=True):
        raise NotImplementedError("analyze_dataset: fill in this TODO")

    with pytest.raises(NotImplementedError):
        check_analyze_dataset(stub)
