"""Grading validity for notebook 06: each plausible wrong answer fails its check, correct
alternative implementations (written differently from the library) pass."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from course_utils import evaluate
from course_utils.checks import CheckFailed
from course_utils.checks.nb06 import (
    check_bootstrap_ci,
    check_critical_sensitivity,
    check_per_finding_scores,
    check_sequence_log_prob,
)
from course_utils.labels import CHEXPERT_LABELS

LABELS = list(CHEXPERT_LABELS)


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny tensors, 1 thread


# ------------------------------------------------------------------ q1 per_finding_scores
def make_per_finding(
    uncertain: str = "negative",
    truth: str = "reference",
    macro: str = "all",
    macro_f1: str = "mean",
    micro: str = "pooled",
    zero_division: float = 0.0,
    drop_empty: bool = False,
    positive: str = "one",
):
    """per_finding_scores as a student might write it with numpy (one knob per mistake)."""

    def fn(ref_labels: pd.DataFrame, hyp_labels: pd.DataFrame) -> pd.DataFrame:
        ref = ref_labels[LABELS].to_numpy(dtype=float)
        hyp = hyp_labels[LABELS].to_numpy(dtype=float)
        if drop_empty:  # "skip studies the labeler could not read"
            keep = ~np.isnan(hyp).all(axis=1)
            ref, hyp = ref[keep], hyp[keep]
        if truth == "generated":
            ref, hyp = hyp, ref

        def pos(a: np.ndarray) -> np.ndarray:
            if positive == "nonzero":
                return a != 0  # NaN != 0 is True
            return (a == 1) | (a == -1) if uncertain == "positive" else a == 1

        t, p = pos(ref), pos(hyp)
        tp, fp, fn_ = (t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0)

        def div(a, b):
            a, b = np.asarray(a, float), np.asarray(b, float)
            return np.where(b > 0, a / np.maximum(b, 1), zero_division)

        prec, rec, f1 = div(tp, tp + fp), div(tp, tp + fn_), div(2 * tp, 2 * tp + fp + fn_)
        table = pd.DataFrame(
            {"precision": prec, "recall": rec, "f1": f1, "support": t.sum(0).astype(float)},
            index=LABELS,
        )
        if micro == "pooled":
            T, F, N = tp.sum(), fp.sum(), fn_.sum()
            table.loc["micro"] = [
                float(div(T, T + F)),
                float(div(T, T + N)),
                float(div(2 * T, 2 * T + F + N)),
                t.sum(),
            ]
        else:  # "micro = average over labels"
            table.loc["micro"] = [prec.mean(), rec.mean(), f1.mean(), t.sum()]
        rows = table.loc[LABELS]
        if macro == "with_support":
            rows = rows[rows["support"] > 0]
        mp, mr = rows["precision"].mean(), rows["recall"].mean()
        mf = rows["f1"].mean() if macro_f1 == "mean" else div(2 * mp * mr, mp + mr)
        table.loc["macro"] = [mp, mr, float(mf), t.sum()]
        return table

    return fn


def sklearn_per_finding(ref_labels: pd.DataFrame, hyp_labels: pd.DataFrame) -> pd.DataFrame:
    """A correct alternative: sklearn's precision_recall_fscore_support."""
    from sklearn.metrics import precision_recall_fscore_support

    y_true = ref_labels[LABELS].to_numpy() == 1
    y_pred = hyp_labels[LABELS].to_numpy() == 1
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    out = pd.DataFrame({"precision": p, "recall": r, "f1": f, "support": s}, index=LABELS)
    for avg in ("micro", "macro"):
        pa, ra, fa, _ = precision_recall_fscore_support(
            y_true, y_pred, average=avg, zero_division=0
        )
        out.loc[avg] = [pa, ra, fa, s.sum()]
    return out


def test_per_finding_reference_and_alternatives_pass():
    check_per_finding_scores(evaluate.per_finding_scores)
    check_per_finding_scores(make_per_finding())
    check_per_finding_scores(sklearn_per_finding)


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(uncertain="positive"), "Cardiomegaly|Edema|Atelectasis"),
        (dict(truth="generated"), "precision, recall|support"),
        (dict(macro="with_support"), "macro"),
        (dict(macro_f1="harmonic"), "macro"),
        (dict(micro="mean"), "micro"),
        (dict(zero_division=float("nan")), "no NaN"),
        (dict(drop_empty=True), "Cardiomegaly"),
        (dict(positive="nonzero"), "precision, recall|support"),
    ],
)
def test_per_finding_wrong_answers_fail(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_per_finding_scores(make_per_finding(**mistake))


def test_per_finding_needs_micro_and_macro_rows():
    def labels_only(ref, hyp):
        return make_per_finding()(ref, hyp).drop(index=["micro", "macro"])

    with pytest.raises(CheckFailed, match="'micro' and 'macro'"):
        check_per_finding_scores(labels_only)


# ------------------------------------------------------------------ q2 critical_sensitivity
def make_critical(
    measure: str = "sensitivity",
    uncertain_detected: bool = False,
    uncertain_reference: bool = False,
    no_positives: float = float("nan"),
    nan_meets: bool = False,
    use_findings: bool = True,
    use_bar: bool = True,
):
    def fn(ref_labels, hyp_labels, findings=evaluate.CRITICAL_FINDINGS, bar=0.98):
        names = list(findings) if use_findings else list(evaluate.CRITICAL_FINDINGS)
        bar = bar if use_bar else 0.98
        rows = {}
        for name in names:
            ref = ref_labels[name].to_numpy()
            hyp = hyp_labels[name].to_numpy()
            truth = (ref == 1) | ((ref == -1) if uncertain_reference else False)
            pred = (hyp == 1) | ((hyp == -1) if uncertain_detected else False)
            tp, fn_, fp = (
                int((truth & pred).sum()),
                int((truth & ~pred).sum()),
                int((~truth & pred).sum()),
            )
            den = tp + (fp if measure == "precision" else fn_)
            sens = tp / den if den else no_positives
            meets = not (sens <= bar) if nan_meets else bool(sens > bar)
            rows[name] = {"positives": tp + fn_, "detected": tp, "missed": fn_,
                          "sensitivity": sens, "meets_bar": meets}  # fmt: skip
        return pd.DataFrame.from_dict(rows, orient="index")

    return fn


def pandas_critical(ref_labels, hyp_labels, findings=evaluate.CRITICAL_FINDINGS, bar=0.98):
    """A correct alternative written with pandas boolean frames."""
    truth = ref_labels[list(findings)].eq(1)
    found = hyp_labels[list(findings)].eq(1) & truth
    out = pd.DataFrame({"positives": truth.sum(), "detected": found.sum()})
    out["missed"] = out["positives"] - out["detected"]
    out["sensitivity"] = out["detected"] / out["positives"].replace(0, np.nan)
    out["meets_bar"] = out["sensitivity"].gt(bar)
    return out


def test_critical_reference_and_alternatives_pass():
    check_critical_sensitivity(evaluate.critical_sensitivity)
    check_critical_sensitivity(make_critical())
    check_critical_sensitivity(pandas_critical)


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(measure="precision"), "Pleural Effusion|Pneumothorax"),
        (dict(uncertain_detected=True), "Fracture"),
        (dict(uncertain_reference=True), "Pleural Effusion"),
        (dict(no_positives=0.0), "Pneumothorax: sensitivity"),
        (dict(no_positives=1.0), "Pneumothorax: sensitivity"),
        (dict(nan_meets=True), "Pneumothorax: meets_bar"),
        (dict(use_findings=False), "findings it is given"),
        (dict(use_bar=False), "bar it is given"),
    ],
)
def test_critical_wrong_answers_fail(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_critical_sensitivity(make_critical(**mistake))


# ------------------------------------------------------------------ q3 bootstrap_ci
def make_bootstrap(
    replace: bool = True,
    halve_alpha: bool = True,
    size: int | None = None,
    method: str = "percentile",
    rng: str = "seeded",
    use_alpha: bool = True,
):
    def fn(values, n_resamples=1000, alpha=0.05, seed=0):
        values = np.asarray(values, dtype=float)
        n = len(values)
        a = alpha if use_alpha else 0.05
        if method == "data_sd":  # mean +- 1.96 standard deviations of the data
            m, s = values.mean(), values.std()
            return m - 1.96 * s, m + 1.96 * s
        if method == "data_percentiles":
            return tuple(np.percentile(values, [100 * a / 2, 100 * (1 - a / 2)]))
        gen = {
            "seeded": np.random.default_rng(seed),
            "fixed": np.random.default_rng(0),
        }.get(rng)
        means = np.empty(n_resamples)
        for b in range(n_resamples):
            if gen is None:  # the global generator: unseeded
                sample = np.random.choice(values, size or n, replace=replace)
            else:
                sample = gen.choice(values, size or n, replace=replace)
            means[b] = sample.mean()
        q = a / 2 if halve_alpha else a
        return float(np.quantile(means, q)), float(np.quantile(means, 1 - q))

    return fn


def scipy_bootstrap(values, n_resamples=1000, alpha=0.05, seed=0):
    """A correct alternative: scipy.stats.bootstrap with the percentile method."""
    from scipy.stats import bootstrap

    res = bootstrap((np.asarray(values, float),), np.mean, n_resamples=n_resamples,
                    confidence_level=1 - alpha, method="percentile", random_state=seed)  # fmt: skip
    return res.confidence_interval.low, res.confidence_interval.high


def test_bootstrap_reference_and_alternatives_pass():
    check_bootstrap_ci(evaluate.bootstrap_mean_ci)
    check_bootstrap_ci(scipy_bootstrap)
    check_bootstrap_ci(
        lambda v, n_resamples=1000, alpha=0.05, seed=0: evaluate.metrics.bootstrap_ci(
            v, n_resamples=n_resamples, alpha=alpha, seed=seed
        )
    )  # fmt: skip  (a BootstrapCI object)


def test_bootstrap_loop_alternative_passes():
    check_bootstrap_ci(make_bootstrap())


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(replace=False), "width"),
        (dict(halve_alpha=False), "width"),
        (dict(size=30), "width"),
        (dict(method="data_sd"), "width"),
        (dict(method="data_percentiles"), "width"),
        (dict(rng="global"), "same seed"),
        (dict(rng="fixed"), "another seed"),
        (dict(use_alpha=False), "alpha=0.10"),
    ],
)
def test_bootstrap_wrong_answers_fail(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_bootstrap_ci(make_bootstrap(**mistake))


def test_bootstrap_coverage_catches_a_90_percent_interval_with_the_right_width_elsewhere():
    """A 90 % interval disguised as 95 % on the width test still fails the coverage test."""
    real = evaluate.bootstrap_mean_ci

    def sneaky(values, n_resamples=1000, alpha=0.05, seed=0):
        if len(values) >= 1000 or alpha != 0.05:  # the width / alpha fixtures
            return real(values, n_resamples, alpha, seed)
        return real(values, n_resamples, 0.10, seed)

    with pytest.raises(CheckFailed, match="coverage"):
        check_bootstrap_ci(sneaky)


# ------------------------------------------------------------------ q4 sequence_log_prob
def make_log_prob(
    shift: bool = True,
    log_softmax: bool = True,
    reduce: str = "sum",
    include_prompt: bool = False,
    batched: bool = False,
    score_padding: bool = False,
):
    def fn(model, images, prompt_ids, continuation_ids):
        totals = []
        if batched:
            full = [list(p) + list(c) for p, c in zip(prompt_ids, continuation_ids, strict=True)]
            width = max(map(len, full))
            ids = torch.tensor([f + [0] * (width - len(f)) for f in full])
            mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in full])
            logits = model(images, ids, mask).logits
        for i, (p, c) in enumerate(zip(prompt_ids, continuation_ids, strict=True)):
            seq = list(p) + list(c)
            if batched:
                row = logits[i]
                if score_padding:
                    seq = ids[i].tolist()
            else:
                row = model(images[i : i + 1], torch.tensor([seq])).logits[0]
            scores = torch.log_softmax(row, -1) if log_softmax else row
            first = 1 if include_prompt else len(p)
            vals = []
            for t in range(first, len(seq)):
                vals.append(scores[t - 1 if shift else t, seq[t]])
            vals = torch.stack(vals)
            totals.append(vals.sum() if reduce == "sum" else vals.mean())
        return torch.stack(totals)

    return fn


def test_log_prob_reference_and_alternatives_pass():
    check_sequence_log_prob(evaluate.sequence_log_prob)
    check_sequence_log_prob(make_log_prob())
    check_sequence_log_prob(make_log_prob(batched=True))


@pytest.mark.parametrize(
    "mistake",
    [
        dict(shift=False),
        dict(log_softmax=False),
        dict(reduce="mean"),
        dict(include_prompt=True),
        dict(batched=True, score_padding=True),
    ],
)
def test_log_prob_wrong_answers_fail(mistake):
    with pytest.raises(CheckFailed, match="log-probabilit|greedy outputs"):
        check_sequence_log_prob(make_log_prob(**mistake))


# ------------------------------------------------------------------ all checks
def test_unfinished_todos_surface_not_implemented():
    def stub(*args, **kwargs):
        raise NotImplementedError("fill in this TODO")

    for check in (check_per_finding_scores, check_critical_sensitivity, check_bootstrap_ci,
                  check_sequence_log_prob):  # fmt: skip
        with pytest.raises(NotImplementedError):
            check(stub)


def test_a_crash_or_a_wrong_type_fails_with_a_message():
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        check_per_finding_scores(lambda ref, hyp: 1 / 0)
    with pytest.raises(CheckFailed, match="returns a DataFrame"):
        check_critical_sensitivity(lambda ref, hyp, findings=(), bar=0.98: {"a": 1})
    with pytest.raises(CheckFailed, match=r"returns \(low, high\)"):
        check_bootstrap_ci(lambda v, n_resamples=1000, alpha=0.05, seed=0: math.nan)
    with pytest.raises(CheckFailed, match="one log-probability per example"):
        check_sequence_log_prob(lambda model, images, p, c: torch.zeros(1))
