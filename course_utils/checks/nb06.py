"""Graded checks for notebook 06 (evaluation).

Four small pieces of ``evaluate_model`` are graded, each on hand-made fixtures whose answers
were worked out by hand (and agree with :mod:`course_utils.evaluate`):

* :func:`check_per_finding_scores` - per-finding precision / recall / F1 with micro and macro
  averages from labeler tables: uncertain is not positive, NaN is not positive, an empty
  generation is a row of NaN (every finding missed), a label with no positive anywhere scores
  0 and stays in the macro mean, macro F1 is the mean of per-label F1s;
* :func:`check_critical_sensitivity` - TP / (TP + FN) per critical finding: NaN (not 0, not 1)
  when there is no positive, an uncertain mention is no detection, the bar is compared strictly;
* :func:`check_bootstrap_ci` - a percentile bootstrap of the mean: seeded, the right width on a
  large normal sample, and close to 95 % coverage in a seeded simulation on a known distribution;
* :func:`check_sequence_log_prob` - teacher-forced log p(continuation | image, prompt) matches
  the model's own scorer, and with it beam search (4 beams) is never worse than greedy on fixed
  inputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..labels import CHEXPERT_LABELS
from . import Checker

__all__ = [
    "CRITICAL_FIXTURE",
    "LABEL_FIXTURE",
    "check_bootstrap_ci",
    "check_critical_sensitivity",
    "check_per_finding_scores",
    "check_sequence_log_prob",
    "critical_fixture",
    "label_fixture",
    "log_prob_fixture",
]

NAN = float("nan")

# ---------------------------------------------------------------------------- q1 fixture
#: Six studies: (reference labels, generated labels); unlisted labels are NaN (not mentioned).
LABEL_FIXTURE: list[tuple[dict[str, float], dict[str, float]]] = [
    ({"No Finding": 1}, {"No Finding": 1, "Support Devices": 1}),  # an invented device
    ({"Cardiomegaly": 1, "Pleural Effusion": 1}, {"Cardiomegaly": 1, "Pleural Effusion": 0}),
    ({"Cardiomegaly": -1, "Edema": 1}, {"Cardiomegaly": 1, "Edema": -1}),  # hedges
    ({"Pleural Effusion": 1, "Pneumothorax": 0}, {"Pleural Effusion": 1, "Pneumothorax": 1}),
    ({"Lung Opacity": 1, "Atelectasis": -1}, {"Lung Opacity": 1, "Atelectasis": 1}),
    ({"Cardiomegaly": 1}, {}),  # an empty generation: the labeler finds nothing at all
]
#: Hand-computed answer: label -> (precision, recall, f1, support); other labels all 0.
EXPECTED_PER_LABEL: dict[str, tuple[float, float, float, int]] = {
    "No Finding": (1.0, 1.0, 1.0, 1),
    "Cardiomegaly": (0.5, 0.5, 0.5, 2),  # TP study 1, FP study 2 (ref uncertain), FN study 5
    "Edema": (0.0, 0.0, 0.0, 1),  # "possible edema" is not a positive finding
    "Pleural Effusion": (1.0, 0.5, 2 / 3, 2),
    "Pneumothorax": (0.0, 0.0, 0.0, 0),  # FP only
    "Lung Opacity": (1.0, 1.0, 1.0, 1),
    "Atelectasis": (0.0, 0.0, 0.0, 0),  # FP only (reference uncertain)
    "Support Devices": (0.0, 0.0, 0.0, 0),  # FP only
}
# TP 4, FP 4, FN 3 summed over labels.
EXPECTED_MICRO = (4 / 8, 4 / 7, 8 / 15)
EXPECTED_MACRO = (3.5 / 14, 3.0 / 14, (1 + 0.5 + 2 / 3 + 1) / 14)

#: Reference and generated texts for a second, end-to-end fixture (labels via the labeler).
TEXT_FIXTURE: list[tuple[str, str]] = [
    (
        "The heart is normal in size. The lungs are clear.",
        "The lungs are clear. Heart size normal.",
    ),
    ("Small right pleural effusion. Mild cardiomegaly.", "Mild cardiomegaly. No pleural effusion."),
    ("Possible left basilar atelectasis.", "There is left basilar atelectasis."),
    ("Right upper lobe nodule. No pneumothorax.", ""),  # empty generation
    ("There is a small left pneumothorax.", "Small left pneumothorax. Small left effusion."),
]


def _frame(rows: Sequence[dict[str, float]]) -> pd.DataFrame:
    data = np.full((len(rows), len(CHEXPERT_LABELS)), NAN)
    for i, row in enumerate(rows):
        for name, value in row.items():
            data[i, CHEXPERT_LABELS.index(name)] = value
    return pd.DataFrame(data, columns=list(CHEXPERT_LABELS))


def label_fixture() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference labels, generated labels) of :data:`LABEL_FIXTURE` as labeler-style tables."""
    return _frame([r for r, _ in LABEL_FIXTURE]), _frame([h for _, h in LABEL_FIXTURE])


def _text_fixture() -> tuple[pd.DataFrame, pd.DataFrame]:
    from ..labels import label_reports

    return (
        label_reports([r for r, _ in TEXT_FIXTURE]),
        label_reports([h for _, h in TEXT_FIXTURE]),
    )


_ROW_HINTS = {
    "micro": "micro: sum TP, FP and FN over the 14 labels first, then P = TP/(TP+FP), "
    "R = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN)",
    "macro": "macro: the plain mean over ALL 14 labels of the per-label values (labels with no "
    "positive anywhere count as 0); macro F1 is the mean of the per-label F1s, not the F1 of "
    "macro P and macro R",
}


def _as_table(check: Checker, out: Any, where: str) -> pd.DataFrame:
    check.expect(isinstance(out, pd.DataFrame), f"[{where}] returns a DataFrame", "DataFrame",
                 type(out).__name__)  # fmt: skip
    needed = [*CHEXPERT_LABELS, "micro", "macro"]
    missing = [k for k in needed if k not in out.index]
    check.expect(not missing, f"[{where}] rows for the 14 labels, 'micro' and 'macro'", needed,
                 f"missing {missing}", "index the table by label name; add 'micro' and "
                 "'macro' rows")  # fmt: skip
    cols = [c for c in ("precision", "recall", "f1", "support") if c not in out.columns]
    check.expect(not cols, f"[{where}] columns precision, recall, f1, support",
                 ["precision", "recall", "f1", "support"], f"missing {cols}")  # fmt: skip
    values = out.loc[needed, ["precision", "recall", "f1"]].to_numpy(dtype=float)
    check.expect(bool(np.isfinite(values).all()), f"[{where}] no NaN: 0/0 counts as 0",
                 "finite numbers", out.loc[needed][~np.isfinite(values).all(axis=1)].index.tolist(),
                 "zero_division=0: a label nobody wrote or predicted has P = R = F1 = 0")  # fmt: skip
    return out


def _compare_row(
    check: Checker, table: pd.DataFrame, row: str, want: Sequence[float], where: str, hint: str
) -> None:
    got = tuple(float(table.loc[row, c]) for c in ("precision", "recall", "f1"))
    ok = all(abs(g - w) < 1e-9 for g, w in zip(got, want, strict=True))
    check.expect(ok, f"[{where}] {row}: precision, recall, f1", tuple(round(w, 4) for w in want),
                 tuple(round(g, 4) for g in got), hint)  # fmt: skip


def check_per_finding_scores(per_finding_scores: Callable[..., pd.DataFrame]) -> None:
    """Grade ``per_finding_scores(ref_labels, hyp_labels)`` on two fixtures (tolerance 1e-9)."""
    from ..evaluate import per_finding_scores as reference

    check = Checker("per_finding_scores")
    ref, hyp = label_fixture()
    table = _as_table(check, check.call(per_finding_scores, ref.copy(), hyp.copy()), "labels")
    hints = {
        "Cardiomegaly": "a reference -1 (uncertain) is not a positive case, and the empty "
        "generation (a row of NaN) misses the cardiomegaly of study 5",
        "Edema": "a generated -1 ('possible edema') is not a positive prediction",
        "Pleural Effusion": "precision = TP/(TP+FP) over predictions, recall = TP/(TP+FN) over "
        "reference positives (not the other way round)",
        "Atelectasis": "only 1 is positive: -1 and NaN are negative on both sides",
    }
    for label in CHEXPERT_LABELS:
        p, r, f, support = EXPECTED_PER_LABEL.get(label, (0.0, 0.0, 0.0, 0))
        _compare_row(check, table, label, (p, r, f), "labels",
                     hints.get(label, "positive = value 1 only; 0/0 = 0"))  # fmt: skip
        got = float(table.loc[label, "support"])
        check.expect(got == support, f"[labels] {label}: support = reference positives",
                     support, got, "support counts the reference's positives (value 1)")  # fmt: skip
    _compare_row(check, table, "micro", EXPECTED_MICRO, "labels", _ROW_HINTS["micro"])
    _compare_row(check, table, "macro", EXPECTED_MACRO, "labels", _ROW_HINTS["macro"])
    # End to end: labels of real sentences, with an empty generation.
    ref, hyp = _text_fixture()
    table = _as_table(check, check.call(per_finding_scores, ref.copy(), hyp.copy()), "texts")
    want = reference(ref, hyp)
    for row in [*CHEXPERT_LABELS, "micro", "macro"]:
        expected = tuple(float(want.loc[row, c]) for c in ("precision", "recall", "f1"))
        _compare_row(check, table, row, expected, "texts", _ROW_HINTS.get(row, "see above"))
    check.done()


# ---------------------------------------------------------------------------- q2 fixture
#: 60 studies; hand-computed answer per finding: (positives, detected, sensitivity).
CRITICAL_FIXTURE: dict[str, tuple[int, int, float]] = {
    "Pneumothorax": (0, 0, NAN),  # no positive in the references (one false alarm)
    "Fracture": (3, 2, 2 / 3),  # the third is only "possible fracture" in the generation
    "Lung Lesion": (50, 50, 1.0),
    "Pleural Effusion": (50, 45, 0.9),  # + 3 uncertain references and 10 false alarms
}


def critical_fixture() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference labels, generated labels), 60 studies, answers in :data:`CRITICAL_FIXTURE`."""
    ref = [dict[str, float]() for _ in range(60)]
    hyp = [dict[str, float]() for _ in range(60)]
    for i in range(50):
        ref[i]["Lung Lesion"] = hyp[i]["Lung Lesion"] = 1.0
        ref[i]["Pleural Effusion"] = 1.0
        hyp[i]["Pleural Effusion"] = 1.0 if i < 45 else 0.0
    for i in range(50, 60):
        hyp[i]["Pleural Effusion"] = 1.0  # false alarms
        ref[i]["No Finding"] = 1.0
    for i in (50, 51, 52):
        ref[i]["Pleural Effusion"] = -1.0  # uncertain reference: not a positive case
        del ref[i]["No Finding"]
    for i, value in zip((53, 54, 55), (1.0, 1.0, -1.0), strict=True):
        ref[i]["Fracture"] = 1.0
        hyp[i]["Fracture"] = value
    hyp[56]["Pneumothorax"] = 1.0
    ref[56]["Pneumothorax"] = 0.0
    return _frame(ref), _frame(hyp)


_SENS_HINTS = {
    "Pneumothorax": "with no positive case the sensitivity is undefined: return NaN (0 would "
    "claim every case was missed, 1 that the bar is met - neither has any evidence)",
    "Fracture": "detected = reference 1 AND generated 1; a generated -1 ('possible fracture') "
    "is no detection",
    "Lung Lesion": "sensitivity = detected / positives",
    "Pleural Effusion": "sensitivity = TP / (TP + FN): false alarms (FP) do not enter it, and a "
    "reference -1 is not a positive case",
}


def check_critical_sensitivity(critical_sensitivity: Callable[..., pd.DataFrame]) -> None:
    """Grade ``critical_sensitivity(ref_labels, hyp_labels, findings, bar)`` on a 60-study
    fixture, with the default and with other findings / bar."""
    from ..evaluate import CRITICAL_FINDINGS

    check = Checker("critical_sensitivity")
    ref, hyp = critical_fixture()
    out = check.call(critical_sensitivity, ref.copy(), hyp.copy())
    check.expect(isinstance(out, pd.DataFrame), "returns a DataFrame", "DataFrame",
                 type(out).__name__)  # fmt: skip
    cols = ("positives", "detected", "missed", "sensitivity", "meets_bar")
    missing = [c for c in cols if c not in out.columns]
    check.expect(not missing, f"columns {cols}", cols, f"missing {missing}")
    check.expect(list(out.index) == list(CRITICAL_FINDINGS),
                 "one row per critical finding, in the given order", list(CRITICAL_FINDINGS),
                 list(out.index), "the case study's mass is CheXpert's 'Lung Lesion'")  # fmt: skip
    for name, (positives, detected, sens) in CRITICAL_FIXTURE.items():
        row = out.loc[name]
        got = (int(row["positives"]), int(row["detected"]), int(row["missed"]))
        check.expect(got == (positives, detected, positives - detected),
                     f"{name}: positives, detected, missed", (positives, detected,
                     positives - detected), got, _SENS_HINTS[name])  # fmt: skip
        value = float(row["sensitivity"])
        same = math.isnan(value) if math.isnan(sens) else abs(value - sens) < 1e-9
        check.expect(same, f"{name}: sensitivity", sens, value, _SENS_HINTS[name])
        meets = not math.isnan(sens) and sens > 0.98
        check.expect(bool(row["meets_bar"]) == meets, f"{name}: meets_bar (sensitivity > 0.98)",
                     meets, row["meets_bar"], "no positives means the bar is NOT met: "
                     "there is no evidence")  # fmt: skip
    other = check.call(critical_sensitivity, ref.copy(), hyp.copy(),
                       ["Pleural Effusion", "Fracture"], 0.85)  # fmt: skip
    check.expect(list(other.index) == ["Pleural Effusion", "Fracture"],
                 "uses the findings it is given, in that order", ["Pleural Effusion", "Fracture"],
                 list(other.index))  # fmt: skip
    check.expect(bool(other.loc["Pleural Effusion", "meets_bar"]) and not bool(
        other.loc["Fracture", "meets_bar"]), "uses the bar it is given (0.85: effusion 0.9 "
                 "meets it, fracture 0.67 does not)", (True, False),
                 (other.loc["Pleural Effusion", "meets_bar"], other.loc["Fracture", "meets_bar"]))  # fmt: skip
    check.done()


# ---------------------------------------------------------------------------- q3 bootstrap
_COVERAGE_SEED = 2026
_COVERAGE_TRIALS = 300
_COVERAGE_N = 80
_COVERAGE_RESAMPLES = 500
_COVERAGE_BAND = (0.91, 0.975)


def _interval(check: Checker, out: Any, where: str) -> tuple[float, float]:
    if hasattr(out, "low") and hasattr(out, "high"):
        out = (out.low, out.high)
    ok = isinstance(out, tuple | list | np.ndarray) and len(out) == 2
    check.expect(ok, f"[{where}] returns (low, high)", "a tuple of two floats", out)
    low, high = float(out[0]), float(out[1])
    check.expect(np.isfinite(low) and np.isfinite(high) and low <= high,
                 f"[{where}] low <= high, both finite", "low <= high", (low, high))  # fmt: skip
    return low, high


def check_bootstrap_ci(bootstrap_ci: Callable[..., Any]) -> None:
    """Grade ``bootstrap_ci(values, n_resamples=1000, alpha=0.05, seed=0) -> (low, high)``.

    Checks, in order: the mean lies inside; on 4,000 normal values the width is within 10 % of
    ``2 · 1.96 · s / sqrt(n)``; ``alpha=0.10`` gives a narrower interval; a constant sample
    gives a zero-width interval; the same seed gives the same interval and another seed a
    (slightly) different one; and in a seeded simulation (300 samples of 80 values from a
    Beta(2, 5) distribution, true mean 2/7, 500 resamples each) the intervals cover the true
    mean between 91 % and 97.5 % of the time.
    """
    check = Checker("bootstrap_ci")
    rng = np.random.default_rng(7)
    values = rng.beta(2, 5, 120)
    low, high = _interval(check, check.call(bootstrap_ci, values.copy(), 1000, 0.05, 0), "beta")
    check.expect(low <= values.mean() <= high, "[beta] the sample mean lies inside",
                 round(float(values.mean()), 4), (round(low, 4), round(high, 4)),
                 "bootstrap the MEAN of each resample, then take percentiles")  # fmt: skip
    big = np.random.default_rng(11).normal(0.0, 1.0, 4000)
    lo, hi = _interval(check, check.call(bootstrap_ci, big.copy(), 1000, 0.05, 0), "normal")
    expected = 2 * 1.959964 * big.std(ddof=1) / math.sqrt(len(big))
    ratio = (hi - lo) / expected
    check.expect(0.9 <= ratio <= 1.1, "[normal] width within 10 % of 2 · 1.96 · s/sqrt(n)",
                 round(expected, 4), f"{hi - lo:.4f} (ratio {ratio:.2f})",
                 "resample n values WITH replacement (same n as the data), take the mean of "
                 "each resample, and the alpha/2 and 1 - alpha/2 percentiles of those means")  # fmt: skip
    lo90, hi90 = _interval(check, check.call(bootstrap_ci, big.copy(), 1000, 0.10, 0), "alpha")
    check.expect(hi90 - lo90 < 0.95 * (hi - lo), "[alpha] alpha=0.10 gives a narrower interval",
                 f"< {0.95 * (hi - lo):.4f}", round(hi90 - lo90, 4), "use the alpha argument")  # fmt: skip
    flat = _interval(check, check.call(bootstrap_ci, np.full(30, 0.25), 200, 0.05, 0), "flat")
    check.expect(abs(flat[0] - 0.25) < 1e-12 and abs(flat[1] - 0.25) < 1e-12,
                 "[constant] a constant sample gives (c, c)", (0.25, 0.25), flat)  # fmt: skip

    again = _interval(check, check.call(bootstrap_ci, values.copy(), 1000, 0.05, 0), "again")
    check.expect(again == (low, high), "[seed] the same seed gives the same interval",
                 (low, high), again, "draw with np.random.default_rng(seed), not np.random.*")  # fmt: skip
    other = _interval(check, check.call(bootstrap_ci, values.copy(), 1000, 0.05, 1), "seed 1")
    check.expect(other != (low, high), "[seed] another seed gives other resamples", "different",
                 other, "use the seed argument")  # fmt: skip

    sim = np.random.default_rng(_COVERAGE_SEED)
    truth = 2 / 7
    hits = 0
    for trial in range(_COVERAGE_TRIALS):
        sample = sim.beta(2, 5, _COVERAGE_N)
        out = check.call(bootstrap_ci, sample, _COVERAGE_RESAMPLES, 0.05, trial)
        if trial == 0:
            lo, hi = _interval(check, out, "coverage")  # shape and order checked once
        else:
            lo, hi = (out.low, out.high) if hasattr(out, "low") else (out[0], out[1])
        hits += float(lo) <= truth <= float(hi)
    coverage = hits / _COVERAGE_TRIALS
    band = _COVERAGE_BAND
    check.expect(band[0] <= coverage <= band[1],
                 f"[coverage] a 95 % interval covers the true mean {band[0]:.1%}-{band[1]:.1%} "
                 f"of the time ({_COVERAGE_TRIALS} seeded samples)", "about 0.95",
                 round(coverage, 3), "too low: the interval is too narrow (alpha/2 on each side?"
                 " resampling without replacement?); too high: too wide (resample size = n?)")  # fmt: skip
    print(f"  coverage in the seeded simulation: {coverage:.1%} (nominal 95 %)")
    check.done()


# ---------------------------------------------------------------------------- q4 log-probs
_FIXTURE_REPORTS = [
    "the heart is normal in size . the lungs are clear .",
    "no pleural effusion or pneumothorax . mild cardiomegaly .",
    "there is a small left pleural effusion . no focal consolidation .",
    "the mediastinum is unremarkable . no acute osseous abnormality .",
]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny tensors: a second OpenMP thread only adds synchronisation (60x slower when the CPU
    is shared), so the check runs single-threaded and restores the setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def log_prob_fixture() -> dict[str, Any]:
    """A small random model, its tokenizer, 4 images and prompts (seeded; ~0.5 s on a CPU).

    Returns ``{"model", "tokenizer", "images" (4, 1, 32, 32), "prompts", "prompt_ids"}``.
    Seed 5 gives outputs of different lengths (one stops after 2 tokens) and beam outputs
    strictly more likely than greedy on three of the four studies.
    """
    import torch

    from ..model import ModelConfig, RadiologyMultimodalModel, build_prompt, encode_prompt
    from ..model.prompts import prompt_corpus
    from ..text import train_word_tokenizer

    tok = train_word_tokenizer(
        _FIXTURE_REPORTS * 2 + prompt_corpus(ages=range(40, 80)), min_frequency=1
    )
    cfg = ModelConfig.tiny(
        len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, image_size=32, vision_checkpoint=None,
    )  # fmt: skip
    cfg.vision_config.update(num_hidden_layers=1)
    cfg.lm_config.update(initializer_range=0.3)  # varied (not constant) random continuations
    torch.manual_seed(5)
    model = RadiologyMultimodalModel(cfg, load_weights=False).eval()
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    prompts = [build_prompt(), build_prompt(age=71, sex="M"),
               build_prompt(age=50, sex="F", indication="cough"), build_prompt()]  # fmt: skip
    return {"model": model, "tokenizer": tok, "images": images, "prompts": prompts,
            "prompt_ids": [encode_prompt(tok, p) for p in prompts]}  # fmt: skip


def _scores(check: Checker, fn: Callable[..., Any], fx: dict[str, Any], conts: list) -> np.ndarray:
    import torch

    out = check.call(fn, fx["model"], fx["images"], fx["prompt_ids"], conts)
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().double().numpy()
    out = np.asarray(out, dtype=float).reshape(-1)
    check.expect(out.shape == (len(conts),), "returns one log-probability per example (B,)",
                 (len(conts),), out.shape)  # fmt: skip
    return out


def check_sequence_log_prob(sequence_log_prob: Callable[..., Any]) -> None:
    """Grade ``sequence_log_prob(model, images, prompt_ids, continuation_ids) -> (B,)``.

    On a seeded random model (:func:`log_prob_fixture`): hand-picked continuations of
    different lengths (one is ``[<eos>]`` alone, an empty report), then the model's greedy and
    4-beam outputs, must match ``model.sequence_log_probs`` within 1e-4 (absolute, nats); and
    scored with the student's function, beam search (``length_penalty=0``) is never worse than
    greedy on these fixed inputs.
    """
    check = Checker("sequence_log_prob")
    with _one_thread():
        fx = log_prob_fixture()
        model, tok = fx["model"], fx["tokenizer"]
        words = [tok(t, add_special_tokens=False)["input_ids"] for t in _FIXTURE_REPORTS]
        eos = tok.eos_token_id
        conts = [words[0] + [eos], words[1][:3], [eos], words[2] + [eos]]
        want = model.sequence_log_probs(fx["images"], fx["prompt_ids"], conts, tok).double()
        got = _scores(check, sequence_log_prob, fx, conts)
        diff = np.abs(got - want.numpy())
        check.expect(bool((diff < 1e-4).all()),
                     "matches the teacher-forced log-probabilities of the model (|diff| < 1e-4)",
                     np.round(want.numpy(), 4).tolist(), np.round(got, 4).tolist(),
                     "log_softmax over the vocabulary; logits[:, t] predict token t + 1, so the "
                     "continuation token at position len(prompt) + j is read at len(prompt) + j "
                     "- 1; SUM over the continuation only (no prompt, no padding)")  # fmt: skip
        greedy = model.generate(fx["images"], fx["prompts"], tok, max_new_tokens=10,
                                return_scores=True)  # fmt: skip
        beam = model.generate(fx["images"], fx["prompts"], tok, max_new_tokens=10, num_beams=4,
                              length_penalty=0.0, return_scores=True)  # fmt: skip
        g = _scores(check, sequence_log_prob, fx, greedy.token_ids)
        b = _scores(check, sequence_log_prob, fx, beam.token_ids)
        check.expect(bool((np.abs(g - greedy.log_probs.double().numpy()) < 1e-4).all()),
                     "scores the greedy outputs like the model does", greedy.log_probs.tolist(),
                     g.tolist(), "outputs of different lengths: handle each example's own "
                     "length (padding must not be scored)")  # fmt: skip
        check.expect(bool((b >= g - 1e-4).all()),
                     "beam search (4 beams) is never worse in log-probability than greedy",
                     "beam >= greedy for every study", {"greedy": np.round(g, 3).tolist(),
                     "beam": np.round(b, 3).tolist()})  # fmt: skip
        print(f"  log p greedy {np.round(g, 2).tolist()}\n  log p beam   {np.round(b, 2).tolist()}")
    check.done()
