"""Graded checks for notebook 02 (exploratory data analysis).

:func:`check_analyze_dataset` runs the student's ``analyze_dataset`` on a six-study fixture whose
statistics were computed by hand (:data:`FIXTURE_EXPECTED`) and, when given, on a real split,
where it compares with :func:`course_utils.eda.analyze_dataset`. The fixture is built so that
each classic mistake changes at least one number: blank (NaN) cells that must not count as
negative, uncertain (-1) cells that must not count as positive, a study with only a support
device (normal), a study with only uncertain findings and one with every label blank (both
abnormal), ``XXXX`` placeholders and stop words in the reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from ..eda import COOCCURRENCE_LABELS, LABEL_STATES, report_terms
from ..eda import analyze_dataset as reference_analyze
from ..labels import CHEXPERT_LABELS
from . import Checker

_NAN = float("nan")

# (report, {label: value}); every other label is blank (NaN).
_FIXTURE_STUDIES: tuple[tuple[str, dict[str, float]], ...] = (
    ("The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
     {"No Finding": 1, "Cardiomegaly": 0, "Pleural Effusion": 0, "Pneumothorax": 0}),
    ("The heart is enlarged. Small bilateral pleural effusions. Possible mild pulmonary edema.",
     {"Cardiomegaly": 1, "Pleural Effusion": 1, "Edema": -1}),
    ("Endotracheal tube in place. No pneumothorax.",
     {"No Finding": 1, "Support Devices": 1, "Pneumothorax": 0}),
    ("XXXX heart is enlarged. Left basilar atelectasis and a small left pleural effusion. "
     "Left basilar opacity may represent pneumonia.",
     {"Cardiomegaly": 1, "Atelectasis": 1, "Pleural Effusion": 1, "Lung Opacity": 1,
      "Pneumonia": -1}),
    ("Possible small right pneumothorax. Blunting of the right costophrenic angle.",
     {"Pneumothorax": -1, "Pleural Effusion": -1}),
    ("Comparison XXXX, XXXX.", {}),  # every label blank, as some CheXpert CSV rows are
)  # fmt: skip

_POS = {"No Finding": 2, "Cardiomegaly": 2, "Lung Opacity": 1, "Atelectasis": 1,
        "Pleural Effusion": 2, "Support Devices": 1}  # fmt: skip
_UNC = {"Edema": 1, "Pneumonia": 1, "Pneumothorax": 1, "Pleural Effusion": 1}
_NEG = {"Cardiomegaly": 1, "Pleural Effusion": 1, "Pneumothorax": 2}
_PAIRS = {("Cardiomegaly", "Pleural Effusion"): 2, ("Cardiomegaly", "Atelectasis"): 1,
          ("Cardiomegaly", "Lung Opacity"): 1, ("Pleural Effusion", "Atelectasis"): 1,
          ("Pleural Effusion", "Lung Opacity"): 1, ("Atelectasis", "Lung Opacity"): 1}  # fmt: skip


def _expected() -> dict[str, Any]:
    """The fixture's statistics, written down by hand (tests check them against the reference)."""
    n = len(_FIXTURE_STUDIES)
    counts = pd.DataFrame(
        0, index=pd.Index(CHEXPERT_LABELS, name="label"), columns=list(LABEL_STATES)
    )
    for state, table in (("positive", _POS), ("uncertain", _UNC), ("negative", _NEG)):
        for label, value in table.items():
            counts.loc[label, state] = value
    counts["not mentioned"] = n - counts[["positive", "uncertain", "negative"]].sum(axis=1)
    cooc = pd.DataFrame(0, index=list(COOCCURRENCE_LABELS), columns=list(COOCCURRENCE_LABELS))
    for (a, b), value in _PAIRS.items():
        cooc.loc[a, b] = cooc.loc[b, a] = value
    for label in COOCCURRENCE_LABELS:
        cooc.loc[label, label] = _POS.get(label, 0)
    imbalance = {label: (n - _POS[label]) / _POS[label] if label in _POS else np.inf
                 for label in CHEXPERT_LABELS}  # fmt: skip
    return {
        "n_studies": n,
        "label_counts": counts,
        "prevalence": {label: _POS.get(label, 0) / n for label in CHEXPERT_LABELS},
        "imbalance_ratio": imbalance,
        "report_length": [15, 12, 6, 19, 10, 3],
        "cooccurrence": cooc,
        "normal_vs_abnormal": {"normal": 2, "abnormal": 4},
        "normal_share": 2 / 6,
        # every term of the six reports with its count, by hand (stop words and XXXX removed)
        "term_counts": {
            "heart": 3, "left": 3, "pleural": 3, "pneumothorax": 3, "small": 3,
            "basilar": 2, "effusion": 2, "enlarged": 2, "possible": 2, "right": 2,
            **dict.fromkeys(("angle", "atelectasis", "bilateral", "blunting", "clear", "comparison",
                             "costophrenic", "edema", "effusions", "endotracheal", "lungs", "mild",
                             "normal", "opacity", "place", "pneumonia", "pulmonary", "represent",
                             "size", "tube"), 1),
        },
    }  # fmt: skip


FIXTURE_EXPECTED: dict[str, Any] = _expected()


def fixture_dataset() -> dict[str, Any]:
    """The six-study fixture as a loader dict (``reports``, ``labels`` (6, 14), ``metadata``).

    ``images`` are not real files: the checker calls ``analyze_dataset(..., plot=False)``.
    """
    rows = [[study.get(label, _NAN) for label in CHEXPERT_LABELS] for _, study in _FIXTURE_STUDIES]
    return {
        "images": [f"fixture/study{i}.jpg" for i in range(len(rows))],
        "reports": [report for report, _ in _FIXTURE_STUDIES],
        "labels": np.array(rows, dtype=np.float32),
        "metadata": [{"study_id": 60000000 + i} for i in range(len(rows))],
    }


_REQUIRED = (
    "n_studies",
    "label_counts",
    "prevalence",
    "imbalance_ratio",
    "report_length",
    "report_length_stats",
    "cooccurrence",
    "normal_vs_abnormal",
    "normal_share",
    "top_terms",
)


def _per_label(value: Any, labels: tuple[str, ...]) -> np.ndarray:
    """A per-label Series/dict/array as a float array in ``labels`` order."""
    if isinstance(value, pd.Series | dict):
        series = pd.Series(value, dtype=float)
        return series.reindex(list(labels)).to_numpy(dtype=float)
    return np.asarray(value, dtype=float).reshape(-1)


def _same(got: np.ndarray, want: np.ndarray, tol: float = 1e-9) -> bool:
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    if got.shape != want.shape:
        return False
    both_inf = np.isinf(got) & np.isinf(want)
    with np.errstate(invalid="ignore"):
        close = np.abs(got - want) <= tol * np.maximum(1.0, np.abs(want))
    return bool(np.all(both_inf | close))


def _as_frame(
    value: Any, labels: tuple[str, ...], columns: list[str] | None = None
) -> pd.DataFrame:
    if isinstance(value, pd.DataFrame):
        return value
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[0] != len(labels):
        return pd.DataFrame(array)
    return pd.DataFrame(array, index=list(labels), columns=columns or list(labels))


def _check_counts(check: Checker, out: dict, want: pd.DataFrame, where: str) -> None:
    counts = _as_frame(out["label_counts"], CHEXPERT_LABELS, list(LABEL_STATES))
    missing = [c for c in LABEL_STATES if c not in counts.columns]
    check.expect(not missing, f"{where} label_counts has columns {list(LABEL_STATES)}",
                 list(LABEL_STATES), list(counts.columns))  # fmt: skip
    counts = counts.reindex(list(CHEXPERT_LABELS))
    hints = {
        "positive": "positive means == 1; -1 is uncertain, not positive",
        "uncertain": "uncertain means == -1",
        "negative": "negative means == 0; a blank (NaN) cell is 'not mentioned', not negative",
        "not mentioned": "not mentioned means NaN (labels.isna()/np.isnan)",
    }
    for state in LABEL_STATES:
        got = counts[state].to_numpy(dtype=float)
        ok = _same(np.nan_to_num(got, nan=-99), want[state].to_numpy(dtype=float))
        check.expect(ok, f"{where} {state} counts per label", want[state].to_dict(),
                     counts[state].to_dict(), hints[state])  # fmt: skip


def _check_cooccurrence(check: Checker, out: dict, want: pd.DataFrame, where: str) -> None:
    cooc = _as_frame(out["cooccurrence"], COOCCURRENCE_LABELS)
    check.expect(cooc.shape == want.shape, f"{where} co-occurrence is 13 x 13 (CHEXPERT_LABELS[1:])",
                 want.shape, cooc.shape, "leave 'No Finding' out: it co-occurs with no pathology")  # fmt: skip
    if isinstance(out["cooccurrence"], pd.DataFrame):
        cooc = cooc.reindex(index=want.index, columns=want.columns)
    got = np.nan_to_num(cooc.to_numpy(dtype=float), nan=-99)
    check.expect(np.array_equal(got, got.T), f"{where} co-occurrence is symmetric",
                 "C == C.T", got.tolist(), "C[a, b] and C[b, a] count the same studies: X.T @ X")  # fmt: skip
    wanted = want.to_numpy(dtype=float)
    check.expect(np.array_equal(np.diag(got), np.diag(wanted)),
                 f"{where} co-occurrence diagonal = positive count of each label",
                 np.diag(wanted).tolist(), np.diag(got).tolist(),
                 "C[a, a] counts the studies where a is 1 (X.T @ X does this; -1 is not positive)")  # fmt: skip
    check.expect(np.array_equal(got, wanted), f"{where} co-occurrence counts (both labels == 1)",
                 wanted.tolist(), got.tolist(),
                 "count studies where both labels are 1; uncertain (-1) is not positive")  # fmt: skip


def _check_terms(
    check: Checker, out: dict, all_counts: Counter, ref_top: pd.Series, where: str
) -> None:
    terms = out["top_terms"]
    if not isinstance(terms, pd.Series):
        terms = pd.Series(dict(terms) if not isinstance(terms, dict) else terms)
    names = [str(t) for t in terms.index]
    bad = [t for t in names if t != t.lower() or t == "xxxx" or t not in all_counts]
    check.expect(not bad, f"{where} top terms are lower-cased words without stop words or XXXX",
                 "terms from re.findall(r'[a-z]{2,}', report.lower()) not in eda.STOP_WORDS",
                 bad, "lower-case first; drop eda.STOP_WORDS (it contains 'xxxx')")  # fmt: skip
    wrong = {t: (int(c), all_counts[t]) for t, c in zip(names, terms.to_numpy(), strict=True)
             if int(c) != all_counts[t]}  # fmt: skip
    check.expect(not wrong, f"{where} top-term counts are total occurrences over all reports",
                 "count per term", {t: f"got {g}, want {w}" for t, (g, w) in wrong.items()},
                 "count every occurrence (a Counter over all reports), not documents")  # fmt: skip
    got_sorted = sorted((int(c) for c in terms.to_numpy()), reverse=True)
    check.expect(got_sorted == [int(c) for c in ref_top.to_numpy()],
                 f"{where} top terms are the {len(ref_top)} most frequent ones",
                 ref_top.to_dict(), terms.to_dict(),
                 "count every occurrence over all reports; keep the 20 largest counts")  # fmt: skip


def _check_stats(check: Checker, out: Any, want: dict[str, Any], all_counts: Counter,
                 ref_top: pd.Series, where: str) -> None:  # fmt: skip
    check.expect(isinstance(out, dict), f"{where} returns a dict", "dict", type(out).__name__)
    missing = [key for key in _REQUIRED if key not in out]
    check.expect(not missing, f"{where} the dict has every statistic", list(_REQUIRED),
                 f"missing {missing}")  # fmt: skip
    check.expect(int(out["n_studies"]) == want["n_studies"], f"{where} n_studies",
                 want["n_studies"], out["n_studies"])  # fmt: skip
    _check_counts(check, out, want["label_counts"], where)
    got = _per_label(out["prevalence"], CHEXPERT_LABELS)
    exp = _per_label(want["prevalence"], CHEXPERT_LABELS)
    check.expect(_same(got, exp), f"{where} prevalence = positive studies / all studies",
                 exp.round(4).tolist(), got.round(4).tolist())  # fmt: skip
    got = _per_label(out["imbalance_ratio"], CHEXPERT_LABELS)
    exp = _per_label(want["imbalance_ratio"], CHEXPERT_LABELS)
    check.expect(_same(got, exp), f"{where} imbalance ratio = (N - positive) / positive",
                 exp.round(3).tolist(), got.round(3).tolist(),
                 "not-positive studies (negative, uncertain AND not mentioned) per positive; "
                 "inf when a label has no positive")  # fmt: skip
    lengths = np.asarray(out["report_length"], dtype=float).reshape(-1)
    exp_len = np.asarray(want["report_length"], dtype=float)
    shown = lengths[:10].tolist() if len(lengths) else lengths.tolist()
    check.expect(_same(lengths, exp_len), f"{where} report length in words, one per report",
                 exp_len[:10].tolist(), shown,
                 "words = len(report.split()), not characters (len(report))")  # fmt: skip
    stats = out["report_length_stats"]
    mean = float(stats["mean"]) if "mean" in stats else float("nan")
    check.expect(_same(mean, exp_len.mean(), 1e-6), f"{where} report_length_stats (describe())",
                 round(float(exp_len.mean()), 3), round(mean, 3), "lengths.describe()")  # fmt: skip
    _check_cooccurrence(check, out, want["cooccurrence"], where)
    split = out["normal_vs_abnormal"]
    got_split = {k: int(split[k]) for k in ("normal", "abnormal") if k in split}
    want_split = {k: int(v) for k, v in dict(want["normal_vs_abnormal"]).items()}
    check.expect(got_split == want_split, f"{where} normal vs abnormal counts",
                 want_split, got_split,
                 "normal = 'No Finding' == 1; a blank No Finding is not normal, and a study with "
                 "only a support device is normal")  # fmt: skip
    check.expect(_same(float(out["normal_share"]), want["normal_share"]),
                 f"{where} normal_share = normal / all studies", round(want["normal_share"], 4),
                 out["normal_share"], "divide by every study, blanks included")  # fmt: skip
    _check_terms(check, out, all_counts, ref_top, where)


def _term_counter(reports: list[str]) -> Counter:
    counter: Counter[str] = Counter()
    for report in reports:
        counter.update(report_terms(report))
    return counter


def _closing(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """Call ``func`` and close any figure it opened (a graded cell shows no plots)."""

    def run() -> Any:
        import matplotlib.pyplot as plt

        try:
            return func(*args, **kwargs)
        finally:
            plt.close("all")

    return run


def check_analyze_dataset(
    analyze_dataset: Callable[..., dict], dataset: dict | None = None
) -> None:
    """Grade ``analyze_dataset`` on the hand-computed fixture, then on ``dataset`` if given."""
    check = Checker("analyze_dataset")
    fixture = fixture_dataset()
    out = check.call(_closing(analyze_dataset, fixture, plot=False))
    counts = Counter(FIXTURE_EXPECTED["term_counts"])
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:20]
    _check_stats(check, out, FIXTURE_EXPECTED, counts, pd.Series(dict(ranked)), "[fixture]")
    if dataset is not None:
        ref = reference_analyze(dataset, plot=False)
        want = {key: ref[key] for key in _REQUIRED if key != "top_terms"}
        counts = _term_counter(list(dataset["reports"]))
        out = check.call(_closing(analyze_dataset, dataset, plot=False))
        _check_stats(
            check, out, want, counts, ref["top_terms"], f"[{len(ref['report_length'])} studies]"
        )
    check.done()
