"""Evaluation of a trained report model on the test split (case study §3.6).

:func:`evaluate_model` is the case study's ``evaluate_model(model, test_dataset)``: it writes a
report for every test study with beam search (4 beams) and greedily, then measures

* **clinical accuracy** - per-finding precision / recall / F1 with micro and macro averages,
  from the generated reports read by the course labeler (:func:`per_finding_scores`) and,
  separately, from the model's detection head (probabilities at a threshold);
* **critical-finding sensitivity** for pneumothorax, fracture, lung lesion (the case study's
  "mass") and pleural effusion against the case study's bar: sensitivity above 98 %, i.e. a
  false-negative rate below 2 % (:func:`critical_sensitivity`);
* **text overlap** - BLEU-4, ROUGE-L (pycocoevalcap), ROUGE-1/2/L/Lsum (rouge-score), CIDEr,
  all from :mod:`course_utils.metrics` with its pinned definitions;
* **BERTScore** P/R/F - the ``bert-score`` package where it can run (Colab), otherwise the
  offline MiniLM variant, *named as such* in every metric name;
* **RadGraph F1** only where the ``radgraph`` package and its model are available; otherwise NaN
  with the reason in :attr:`EvaluationResult.notes` (never a look-alike);
* **latency** in ms per report (median and p95), timed one study at a time;
* for R2Gen2's structured model: JSON validity and JSON overlap; for the styled model: style
  adherence per requested style;
* greedy vs beam: both decodings score the same studies, and the teacher-forced
  log-probability of each output shows what beam search optimises (:func:`beam_vs_greedy`).

Every headline number gets a 95 % percentile-bootstrap confidence interval over studies
(:func:`bootstrap_table`): ``n_boot`` resamples drawn once with a seeded generator, the same
resampled studies for every metric and every system (paired intervals), vectorised through
per-study sufficient statistics (BLEU counts, TP/FP/FN counts, per-report scores), so 1,000
resamples of all metrics take well under a second.

:func:`comparison_table` scores any set of systems (the fixed normal report, template
baselines with oracle and classifier labels from :mod:`course_utils.baseline`, the model greedy
and beam) with the same scorers and the same resamples; :func:`baseline_reports` builds the
baseline texts.

Pinned choices (read them before comparing numbers):

* The truth for every clinical metric is the course labeler's reading of the *reference report*
  (``test_dataset.reports``), for the generated reports and for the detection head alike, so
  the rows are comparable. A label is positive when the labeler says 1; uncertain (-1), negative
  and not mentioned count as negative, in the reference and in the prediction.
* The structured model's JSON is rendered to text (:func:`course_utils.train.json_to_text`;
  invalid JSON becomes an empty report) and the styled model's output to narrative prose
  (:func:`course_utils.text.to_style`) before text and clinical metrics, so all models are
  scored against the same reference text.
* CIDEr's CI resamples per-report CIDEr with the idf of the full test set (recomputing idf per
  resample would be a different metric); BLEU's CI recomputes corpus BLEU from resampled counts.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import metrics
from .baseline import SCORE_COLUMNS
from .labels import CHEXPERT_LABELS

__all__ = [
    "BERTSCORE_NAMES",
    "COMPARISON_METRICS",
    "CRITICAL_FINDINGS",
    "SENSITIVITY_BAR",
    "EvaluationResult",
    "GenerationRun",
    "SystemScores",
    "baseline_reports",
    "beam_vs_greedy",
    "bootstrap_mean_ci",
    "bootstrap_table",
    "clopper_pearson",
    "comparison_table",
    "content_text",
    "critical_sensitivity",
    "decoding_name",
    "detection_probabilities",
    "evaluate_model",
    "format_ci_table",
    "generate",
    "measure_latency",
    "per_finding_scores",
    "score_labels",
    "score_reports",
    "sequence_log_prob",
    "structured_scores",
    "style_scores",
    "wide_table",
]

#: The case study's critical findings; "mass" is CheXpert's Lung Lesion.
CRITICAL_FINDINGS: tuple[str, ...] = ("Pneumothorax", "Fracture", "Lung Lesion", "Pleural Effusion")
#: Case study: critical-finding sensitivity "must exceed 98 %" (false-negative rate below 2 %).
SENSITIVITY_BAR: float = 0.98
#: Metric names of BERTScore per backend (the offline variant is never called plain BERTScore).
BERTSCORE_NAMES: dict[str, str] = {
    "bert-score": "BERTScore-{x} (roberta-large)",
    "minilm-offline": "BERTScore-{x} (MiniLM, offline)",
}
#: Columns of :func:`comparison_table`'s wide form, in order.
COMPARISON_METRICS: tuple[str, ...] = (
    *(m for m in SCORE_COLUMNS if m != "RadGraph F1"),  # notebook 03's columns, same order
    *(f"sensitivity {f}" for f in CRITICAL_FINDINGS),
    "RadGraph F1",
)
_LABELS5 = metrics.CE_LABELS_5
# Per-report columns of nlg_scores_per_report that are averaged (name in the tables first).
_MEAN_TEXT_METRICS: tuple[tuple[str, str], ...] = (
    ("ROUGE-L", "ROUGE_L"),
    ("ROUGE-1", "rouge1"),
    ("ROUGE-2", "rouge2"),
    ("ROUGE-L (rouge-score F1)", "rougeL"),
    ("ROUGE-Lsum", "rougeLsum"),
    ("CIDEr", "CIDEr"),
)


# ============================================================================================
# Label-based metrics (the student TODOs of notebook 06 re-implement these)
# ============================================================================================


def _ratio(num: Any, den: Any) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's ``zero_division=0``)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _label_matrix(labels: Any, what: str) -> np.ndarray:
    """(N, 14) float matrix in ``CHEXPERT_LABELS`` order from a DataFrame or an array."""
    if isinstance(labels, pd.DataFrame):
        missing = [name for name in CHEXPERT_LABELS if name not in labels.columns]
        if missing:
            raise ValueError(f"{what} lacks label column(s) {missing}")
        values = labels[list(CHEXPERT_LABELS)].to_numpy(dtype=float)
    else:
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        values = np.asarray(labels, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"{what} must have shape (N, {len(CHEXPERT_LABELS)}), got {values.shape}")
    return values


def per_finding_scores(
    ref_labels: pd.DataFrame | np.ndarray, hyp_labels: pd.DataFrame | np.ndarray
) -> pd.DataFrame:
    """Per-finding precision / recall / F1 plus micro and macro averages.

    The reference report's labels are the truth. A label is *positive* where the labeler says
    1; uncertain (-1), negative (0) and not mentioned (NaN) are not positive. A ratio with an
    empty denominator is 0 (sklearn's ``zero_division=0``): a label nobody wrote or predicted
    has P = R = F1 = 0 and stays in the macro average (as sklearn's ``average="macro"``).

    Args:
        ref_labels, hyp_labels: labeler output (N, 14), DataFrames with the CheXpert columns
            (:func:`course_utils.labels.label_reports`) or arrays in ``CHEXPERT_LABELS`` order.

    Returns:
        DataFrame indexed by the 14 labels then ``"micro"`` and ``"macro"``; columns
        ``precision``, ``recall``, ``f1``, ``support`` (positives in the references),
        ``predicted`` (positives in the predictions), ``tp``, ``fp``, ``fn``. ``micro`` sums
        TP/FP/FN over labels first; ``macro`` is the plain mean of the 14 per-label values
        (macro F1 is the mean of per-label F1s, not the F1 of macro P and R). Count columns of
        both average rows hold the totals.

    Raises:
        ValueError: wrong shapes, different N, values other than 1/0/-1/NaN.
    """
    ref = _label_matrix(ref_labels, "ref_labels")
    hyp = _label_matrix(hyp_labels, "hyp_labels")
    if ref.shape != hyp.shape:
        raise ValueError(f"ref_labels {ref.shape} and hyp_labels {hyp.shape} differ in size")
    ce = metrics.ce_scores_from_labels(ref, hyp)
    table = ce.per_label.copy()
    tp, fp, fn = (table[c].sum() for c in ("tp", "fp", "fn"))
    micro = {
        "precision": float(_ratio(tp, tp + fp)),
        "recall": float(_ratio(tp, tp + fn)),
        "f1": float(_ratio(2 * tp, 2 * tp + fp + fn)),
    }
    macro = {k: float(table[k].mean()) for k in ("precision", "recall", "f1")}
    totals = {c: table[c].sum() for c in ("support", "predicted", "tp", "fp", "fn")}
    extra = pd.DataFrame([{**micro, **totals}, {**macro, **totals}], index=["micro", "macro"])
    out = pd.concat([table, extra])
    out.index.name = "label"
    for col in ("support", "predicted", "tp", "fp", "fn"):
        out[col] = out[col].astype(int)
    return out


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided ``1 - alpha`` interval of a binomial proportion.

    ``(nan, nan)`` when ``trials == 0``. With 25 of 25 pneumothoraces found the interval is
    [0.863, 1.0]: 25 positives cannot show a sensitivity above 0.98.
    """
    from scipy.stats import beta

    if trials <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}, {trials}")
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = (
        1.0
        if successes == trials
        else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    )
    return low, high


def critical_sensitivity(
    ref_labels: pd.DataFrame | np.ndarray,
    hyp_labels: pd.DataFrame | np.ndarray,
    findings: Sequence[str] = CRITICAL_FINDINGS,
    bar: float = SENSITIVITY_BAR,
) -> pd.DataFrame:
    """Sensitivity (true-positive rate) of each critical finding against the case study's bar.

    Positive = labeler value 1, in the reference and in the prediction (an uncertain mention is
    not a detection, an uncertain reference is not a positive case - the CE convention).

    Returns:
        DataFrame indexed by finding (in the order given): ``positives`` (reference positives),
        ``detected`` (of those, predicted positive), ``missed``, ``sensitivity``
        (``detected / positives``; **NaN** when there is no positive - no evidence either way),
        ``false_negative_rate``, ``exact_low`` / ``exact_high`` (95 % Clopper-Pearson interval),
        ``meets_bar`` (sensitivity > ``bar``; False when NaN) and ``demonstrated`` (the exact
        lower bound > ``bar``: what a regulator would ask for).

    Raises:
        ValueError: an unknown finding name, or bad label tables (see :func:`per_finding_scores`).
    """
    ref = _label_matrix(ref_labels, "ref_labels")
    hyp = _label_matrix(hyp_labels, "hyp_labels")
    if ref.shape != hyp.shape:
        raise ValueError(f"ref_labels {ref.shape} and hyp_labels {hyp.shape} differ in size")
    unknown = [f for f in findings if f not in CHEXPERT_LABELS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; use CheXpert names {CHEXPERT_LABELS}")
    rows = []
    for name in findings:
        j = CHEXPERT_LABELS.index(name)
        truth, pred = ref[:, j] == 1.0, hyp[:, j] == 1.0
        positives, detected = int(truth.sum()), int((truth & pred).sum())
        sens = detected / positives if positives else math.nan
        low, high = clopper_pearson(detected, positives)
        rows.append(
            {
                "positives": positives,
                "detected": detected,
                "missed": positives - detected,
                "sensitivity": sens,
                "false_negative_rate": 1 - sens if positives else math.nan,
                "exact_low": low,
                "exact_high": high,
                "meets_bar": bool(positives and sens > bar),
                "demonstrated": bool(positives and low > bar),
            }
        )
    return pd.DataFrame(rows, index=pd.Index(list(findings), name="finding"))


# ============================================================================================
# Generation, latency, log-probabilities, detection head
# ============================================================================================


def decoding_name(num_beams: int) -> str:
    """``"greedy"`` for 1 beam, else ``"beam-<k>"``."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    return "greedy" if num_beams == 1 else f"beam-{num_beams}"


@dataclass
class GenerationRun:
    """The outputs of one decoding on the evaluated studies.

    Attributes:
        decoding: ``"greedy"`` or ``"beam-<k>"``.
        num_beams: beams used.
        texts: post-processed outputs (:func:`course_utils.train.postprocess_generation`), (N,).
        token_ids: generated ids per study (``<eos>`` included when produced).
        log_probs: (N,) total log p(output | image, prompt) by teacher forcing (nats).
        seconds: wall time of the batched generation (teacher-forced scoring included).
        batch_size: studies per ``generate`` call.
    """

    decoding: str
    num_beams: int
    texts: list[str]
    token_ids: list[list[int]]
    log_probs: np.ndarray
    seconds: float
    batch_size: int

    @property
    def ms_per_report(self) -> float:
        """Batched throughput cost in ms per report (not a latency: see :func:`measure_latency`)."""
        return 1000.0 * self.seconds / max(len(self.texts), 1)


def _check_dataset(dataset: Any) -> int:
    for attr in ("pixels", "prompts", "reports", "tokenizer", "target"):
        if not hasattr(dataset, attr):
            raise TypeError(
                f"test_dataset must be a course_utils.train.ReportDataset (it lacks .{attr}); "
                f"got {type(dataset).__name__}"
            )
    n = len(dataset.reports)
    if n == 0:
        raise ValueError("test_dataset is empty: nothing to evaluate")
    return n


def _indices(dataset: Any, indices: Sequence[int] | None) -> list[int]:
    n = _check_dataset(dataset)
    if indices is None:
        return list(range(n))
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("indices is empty: nothing to evaluate")
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise IndexError(f"indices {bad[:5]} out of range for a dataset of {n} studies")
    return idx


def generate(
    model: Any,
    dataset: Any,
    indices: Sequence[int] | None = None,
    *,
    num_beams: int = 1,
    batch_size: int = 64,
    max_new_tokens: int = 100,
    length_penalty: float = 0.0,
    progress: bool = False,
) -> GenerationRun:
    """Reports for ``indices`` of a :class:`~course_utils.train.ReportDataset`, with scores.

    Each study is prompted with its own prompt (``dataset.prompts``), as
    :func:`course_utils.train.generate_reports` does; this version also keeps the token ids
    and the teacher-forced log-probabilities (``model.generate(..., return_scores=True)``).
    ``length_penalty=0`` ranks beams by total log-probability, the quantity beam search
    maximises (Hugging Face's default 1.0 ranks by per-token average).
    """
    from tqdm.auto import tqdm

    from .train import postprocess_generation

    idx = _indices(dataset, indices)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts: list[str] = []
    token_ids: list[list[int]] = []
    log_probs: list[np.ndarray] = []
    name = decoding_name(num_beams)
    start = time.perf_counter()
    for first in tqdm(
        range(0, len(idx), batch_size), desc=f"generating ({name})", disable=not progress,
        leave=False,
    ):  # fmt: skip
        chunk = idx[first : first + batch_size]
        out = model.generate(
            dataset.pixels[chunk].float(),
            prompt=[dataset.prompts[i] for i in chunk],
            tokenizer=dataset.tokenizer,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            length_penalty=length_penalty,
            return_scores=True,
        )
        texts.extend(postprocess_generation(t, dataset.target) for t in out.texts)
        token_ids.extend(out.token_ids)
        log_probs.append(out.log_probs.detach().cpu().double().numpy())
    seconds = time.perf_counter() - start
    return GenerationRun(
        decoding=name,
        num_beams=num_beams,
        texts=texts,
        token_ids=token_ids,
        log_probs=np.concatenate(log_probs),
        seconds=seconds,
        batch_size=batch_size,
    )


def measure_latency(
    model: Any,
    dataset: Any,
    indices: Sequence[int],
    *,
    num_beams: int = 4,
    max_new_tokens: int = 100,
    length_penalty: float = 0.0,
    warmup: int = 1,
) -> np.ndarray:
    """Wall-clock ms to write one report, one study at a time (batch size 1) -> (len(indices),).

    What a radiologist waits for: image preprocessing, encoder, projector, generation and
    decoding of one study (post-processing and scoring excluded). ``warmup`` untimed calls
    first (the first call pays one-off allocation costs).
    """
    idx = _indices(dataset, indices)

    def one(i: int) -> None:
        model.generate(
            dataset.pixels[i : i + 1].float(),
            prompt=[dataset.prompts[i]],
            tokenizer=dataset.tokenizer,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            length_penalty=length_penalty,
        )

    for i in idx[: max(warmup, 0)]:
        one(i)
    out = np.empty(len(idx))
    for k, i in enumerate(idx):
        start = time.perf_counter()
        one(i)
        out[k] = 1000.0 * (time.perf_counter() - start)
    return out


def detection_probabilities(
    model: Any, dataset: Any, indices: Sequence[int] | None = None, batch_size: int = 128
) -> np.ndarray:
    """Detection-head probabilities σ(w_kᵀ h_cls + b_k) -> (N, K) float array.

    Runs only the vision encoder and the head (no language model).

    Raises:
        AttributeError: the model has no detection head.
    """
    import torch

    if not hasattr(model, "detection_head") or not hasattr(model, "encode_images"):
        raise AttributeError(f"{type(model).__name__} has no detection head to evaluate")
    idx = _indices(dataset, indices)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for first in range(0, len(idx), batch_size):
                chunk = idx[first : first + batch_size]
                _, h_cls = model.encode_images(dataset.pixels[chunk].float())
                weight = model.detection_head.linear.weight
                probs = model.detection_head.predict_proba(h_cls.to(weight.dtype))
                out.append(probs.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(float)


def sequence_log_prob(
    model: Any,
    images: Any,
    prompt_ids: Sequence[Sequence[int]],
    continuation_ids: Sequence[Sequence[int]],
) -> Any:
    """Total log p(continuation | image, prompt) per example by teacher forcing -> (B,) tensor.

    The reference for notebook 06's TODO: ``forward`` returns logits over the text positions,
    where ``logits[:, t]`` predicts token ``t + 1``; so the continuation token at position
    ``len(prompt) + j`` is scored by the log-softmax at ``len(prompt) + j - 1``. Summed (not
    averaged) over the continuation, prompt and padding excluded.
    """

    class _Ids:  # sequence_log_probs reads only the pad id from the tokenizer
        pad_token_id = 0

    return model.sequence_log_probs(
        images, [list(p) for p in prompt_ids], [list(c) for c in continuation_ids], _Ids()
    )


def beam_vs_greedy(greedy: GenerationRun, beam: GenerationRun, tol: float = 1e-4) -> pd.DataFrame:
    """Per study: log-probabilities of the greedy and the beam output, and how they compare.

    Beam search keeps the ``k`` best partial reports by total log-probability, so its output
    should almost never be *less* likely than the greedy one (``beam_not_worse`` allows ``tol``
    for float noise; it can fail when the greedy path falls out of the beam, or when the
    length penalty ranks by something other than the total).

    Returns:
        DataFrame (N rows): ``greedy_log_prob``, ``beam_log_prob``, ``gain`` (beam - greedy),
        ``beam_not_worse``, ``same_text``, ``greedy_tokens``, ``beam_tokens``.
    """
    if len(greedy.texts) != len(beam.texts):
        raise ValueError(f"{len(greedy.texts)} greedy vs {len(beam.texts)} beam outputs")
    gain = beam.log_probs - greedy.log_probs
    return pd.DataFrame(
        {
            "greedy_log_prob": greedy.log_probs,
            "beam_log_prob": beam.log_probs,
            "gain": gain,
            "beam_not_worse": gain >= -tol,
            "same_text": [a == b for a, b in zip(greedy.texts, beam.texts, strict=True)],
            "greedy_tokens": [len(t) for t in greedy.token_ids],
            "beam_tokens": [len(t) for t in beam.token_ids],
        }
    )


# ============================================================================================
# Scoring systems and bootstrapping them
# ============================================================================================


def content_text(text: str, target: str = "findings") -> str:
    """The prose a model output is scored as: JSON rendered to a report (invalid -> ``""``),
    sectioned text back to narrative, findings unchanged."""
    if not isinstance(text, str):
        raise TypeError(f"generated text must be a str, got {type(text).__name__}")
    if target == "json":
        from .train import json_to_text

        return json_to_text(text)[1]
    if target == "style":
        from .text import to_style

        try:
            return to_style(text, "narrative") if text.strip() else ""
        except ValueError:  # nothing left that is a sentence (e.g. only punctuation)
            return ""
    if target != "findings":
        raise ValueError(f"unknown target {target!r}; choose findings, json or style")
    return text


@dataclass
class SystemScores:
    """Per-study scores of one system: everything a bootstrap needs.

    Attributes:
        name: system name (``"beam-4"``, ``"fixed normal report"``, ``"detection head"``...).
        references: reference reports (N,).
        texts: scored texts (N,) or ``None`` for a label-only system (the detection head).
        ce: clinical-efficacy result with per-study TP/FP/FN counts and the label tables.
        nlg: per-report NLG scores (N, ``metrics.NLG_KEYS``) or ``None``.
        bleu_counts: (N, 10) BLEU sufficient statistics or ``None``.
        bertscore: ``{"backend", "P_each", "R_each", "F_each", "index"}`` (scores of the studies
            in ``index``) or ``None``.
        radgraph: (N,) per-report RadGraph F1 or ``None`` (unavailable).
        notes: why something is missing.
    """

    name: str
    references: list[str]
    texts: list[str] | None
    ce: metrics.CEResult
    nlg: pd.DataFrame | None = None
    bleu_counts: np.ndarray | None = None
    bertscore: dict[str, Any] | None = None
    radgraph: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.references)


def _radgraph_each(refs: list[str], hyps: list[str]) -> tuple[np.ndarray | None, str]:
    try:
        return np.asarray(metrics.radgraph_f1(refs, hyps)["per_report"], dtype=float), ""
    except metrics.MetricUnavailable as err:
        return None, str(err)


def score_reports(
    references: Sequence[str],
    texts: Sequence[str],
    *,
    name: str = "system",
    bertscore: bool = True,
    bertscore_backend: str = "auto",
    bertscore_index: Sequence[int] | None = None,
    radgraph: bool = True,
    progress: bool = False,
) -> SystemScores:
    """Score generated reports against references with the pinned scorers of
    :mod:`course_utils.metrics` (see the module docstring).

    Args:
        references, texts: N reference and N generated reports (an empty generation is allowed
            and scores 0 / "nothing found").
        name: system name.
        bertscore: compute BERTScore (slow on a CPU: ~30 pairs/s with MiniLM).
        bertscore_backend: ``"auto"``, ``"bert-score"`` or ``"minilm-offline"``.
        bertscore_index: score BERTScore on these studies only (None = all).
        radgraph: try RadGraph F1 (NaN with a note when unavailable).
    """
    refs, hyps = list(references), list(texts)
    if len(refs) != len(hyps):
        raise ValueError(f"system {name!r}: {len(hyps)} texts for {len(refs)} references")
    if not refs:
        raise ValueError(f"system {name!r}: nothing to score")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # CIDEr on a single report
        nlg = metrics.nlg_scores_per_report(refs, hyps)
    counts = metrics.bleu_counts(refs, hyps)
    ce = metrics.clinical_efficacy(refs, hyps, progress=progress)
    out = SystemScores(name, refs, hyps, ce, nlg=nlg, bleu_counts=counts)
    if bertscore:
        index = np.arange(len(refs)) if bertscore_index is None else np.asarray(bertscore_index)
        try:
            bs = metrics.bertscore(
                [refs[i] for i in index], [hyps[i] for i in index], backend=bertscore_backend
            )
            out.bertscore = {**bs, "index": index}
            if bs.get("fallback_reason"):
                out.notes.append(
                    f"BERTScore uses the offline MiniLM model: {bs['fallback_reason']}"
                )
        except metrics.MetricUnavailable as err:
            out.notes.append(f"BERTScore unavailable: {err}")
    if radgraph:
        out.radgraph, note = _radgraph_each(refs, hyps)
        if note:
            out.notes.append(note)
    return out


def score_labels(
    name: str,
    references: Sequence[str],
    ref_labels: pd.DataFrame | np.ndarray,
    pred_labels: pd.DataFrame | np.ndarray,
) -> SystemScores:
    """A label-only system (e.g. the detection head at a threshold): clinical metrics only."""
    ref = _label_matrix(ref_labels, "ref_labels")
    pred = _label_matrix(pred_labels, "pred_labels")
    if len(ref) != len(references):
        raise ValueError(f"system {name!r}: {len(ref)} label rows for {len(references)} references")
    ce = metrics.ce_scores_from_labels(ref, pred)
    ce.ref_labels = pd.DataFrame(ref, columns=list(CHEXPERT_LABELS))
    ce.hyp_labels = pd.DataFrame(pred, columns=list(CHEXPERT_LABELS))
    return SystemScores(name, list(references), None, ce)


def _count_statistics(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, labels: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Clinical metrics from summed counts (..., 14) -> {name: (...)} (NaN for 0/0 sensitivity)."""
    cols5 = [labels.index(n) for n in _LABELS5]
    out = {
        "CE F1 micro-14": metrics.f1_from_counts(tp, fp, fn, "micro"),
        "CE F1 macro-14": metrics.f1_from_counts(tp, fp, fn, "macro"),
        "CE F1 micro-5": metrics.f1_from_counts(tp[..., cols5], fp[..., cols5], fn[..., cols5]),
        "CE F1 macro-5": metrics.f1_from_counts(
            tp[..., cols5], fp[..., cols5], fn[..., cols5], "macro"
        ),
        "CE precision micro-14": _ratio(tp.sum(-1), tp.sum(-1) + fp.sum(-1)),
        "CE recall micro-14": _ratio(tp.sum(-1), tp.sum(-1) + fn.sum(-1)),
    }
    for name in CRITICAL_FINDINGS:
        j = labels.index(name)
        den = tp[..., j] + fn[..., j]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"sensitivity {name}"] = np.where(den > 0, tp[..., j] / np.maximum(den, 1), np.nan)
    return out


def _percentiles(distribution: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI per column, ignoring resamples where a statistic is undefined (NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN
        low, high = np.nanpercentile(distribution, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return low, high


def _ci_rows(
    system: str,
    names: Sequence[str],
    estimate: np.ndarray,
    distribution: np.ndarray,
    alpha: float,
    n: int,
) -> list[dict[str, Any]]:
    low, high = _percentiles(distribution, alpha)
    return [
        {"system": system, "metric": m, "estimate": float(e), "low": float(lo),
         "high": float(hi), "n": n}
        for m, e, lo, hi in zip(names, estimate, low, high, strict=True)
    ]  # fmt: skip


def bootstrap_table(
    scores: SystemScores, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 42
) -> pd.DataFrame:
    """Every headline number of one system with its percentile-bootstrap CI over studies.

    One seeded set of ``n_boot`` resamples of the N studies (``np.random.default_rng(seed)``:
    the same studies for every system scored on the same N, so CIs are paired); each resample
    recomputes corpus BLEU-4 from summed BLEU counts, the CE metrics and critical sensitivities
    from summed TP/FP/FN, and the means of per-report scores (ROUGE, CIDEr with the full-set
    idf, RadGraph). BERTScore, scored on a subset, is resampled over that subset (same seed).
    Vectorised: a resample is a row of :func:`course_utils.metrics.resample_weights`.

    Returns:
        long DataFrame: ``system``, ``metric``, ``estimate``, ``low``, ``high``, ``n``
        (studies); sensitivities are NaN (with NaN bounds) when a finding has no positive.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n = scores.n
    ce = scores.ce.counts
    stacked = np.concatenate([ce.tp, ce.fp, ce.fn], axis=1).astype(float)  # (N, 3L)
    n_labels = ce.tp.shape[1]
    names: list[str] = []
    mean_cols: list[np.ndarray] = []
    if scores.nlg is not None:
        names.append("BLEU-4")
        for label, key in _MEAN_TEXT_METRICS:
            names.append(label)
            mean_cols.append(scores.nlg[key].to_numpy(dtype=float))
    if scores.radgraph is not None:
        mean_cols.append(np.asarray(scores.radgraph, dtype=float))
    means = np.stack(mean_cols, axis=1) if mean_cols else np.zeros((n, 0))
    count_names = list(_count_statistics(*(np.zeros((1, n_labels)),) * 3, labels=ce.labels))
    names_all = names + (["RadGraph F1"] if scores.radgraph is not None else []) + count_names

    def statistic(idx: np.ndarray) -> np.ndarray:
        weights = metrics.resample_weights(idx, n)  # (B, N)
        parts = []
        if scores.bleu_counts is not None:
            parts.append(metrics.bleu_from_counts(weights @ scores.bleu_counts)[:, 3:4])
        if means.shape[1]:
            parts.append(weights @ means / idx.shape[1])
        sums = weights @ stacked
        tp, fp, fn = np.split(sums, 3, axis=1)
        parts.append(np.stack(list(_count_statistics(tp, fp, fn, ce.labels).values()), axis=1))
        return np.concatenate(parts, axis=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN sensitivities in some resamples
        joint = metrics.bootstrap_ci(statistic, n, n_resamples=n_boot, alpha=alpha, seed=seed)
    rows = _ci_rows(scores.name, names_all, np.atleast_1d(joint.estimate), joint.distribution,
                    alpha, n)  # fmt: skip
    if scores.radgraph is None and scores.texts is not None:
        rows.append({"system": scores.name, "metric": "RadGraph F1", "estimate": math.nan,
                     "low": math.nan, "high": math.nan, "n": n})  # fmt: skip
    if scores.bertscore is not None:
        bs = scores.bertscore
        label = BERTSCORE_NAMES.get(bs["backend"], "BERTScore-{x} (" + str(bs["backend"]) + ")")
        each = np.stack([bs["P_each"], bs["R_each"], bs["F_each"]], axis=1)
        ci = metrics.bootstrap_ci(each, n_resamples=n_boot, alpha=alpha, seed=seed)
        rows += _ci_rows(scores.name, [label.format(x=x) for x in "PRF"], ci.estimate,
                         ci.distribution, alpha, len(each))  # fmt: skip
    return pd.DataFrame(rows)


def wide_table(long: pd.DataFrame, value: str = "estimate") -> pd.DataFrame:
    """Pivot a long table (``system``, ``metric``, values) to systems x metrics, order kept."""
    systems = list(dict.fromkeys(long["system"]))
    metric_names = list(dict.fromkeys(long["metric"]))
    table = long.pivot_table(index="system", columns="metric", values=value, dropna=False)
    return table.reindex(index=systems, columns=metric_names).rename_axis(None, axis=1)


def format_ci_table(long: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Systems x metrics of strings ``"0.412 [0.380, 0.445]"`` (``"n/a"`` where NaN)."""

    def fmt(row: pd.Series) -> str:
        if not np.isfinite(row["estimate"]):
            return "n/a"
        if not (np.isfinite(row["low"]) and np.isfinite(row["high"])):
            return f"{row['estimate']:.{digits}f}"
        return f"{row['estimate']:.{digits}f} [{row['low']:.{digits}f}, {row['high']:.{digits}f}]"

    frame = long.assign(text=long.apply(fmt, axis=1))
    systems = list(dict.fromkeys(frame["system"]))
    metric_names = list(dict.fromkeys(frame["metric"]))
    return (
        frame.pivot(index="system", columns="metric", values="text")
        .reindex(index=systems, columns=metric_names)
        .rename_axis(None, axis=1)
    )


# ============================================================================================
# Structured and styled models
# ============================================================================================


def structured_scores(raw_outputs: Sequence[str], references: Sequence[str]) -> pd.DataFrame:
    """Per study: JSON validity and R2Gen2's JSON overlap of the structured model's output.

    Returns:
        DataFrame (N rows): ``json_parses`` (strict ``json.loads`` gives an object or array),
        ``json_schema_valid`` (:func:`course_utils.text.validate_findings_json` accepts it),
        ``json_precision``, ``json_recall``, ``json_f1`` (:func:`course_utils.metrics.json_overlap`,
        0 for invalid output).
    """
    from .train import json_to_text

    if len(raw_outputs) != len(references):
        raise ValueError(f"{len(raw_outputs)} outputs for {len(references)} references")
    rows = []
    for out, ref in zip(raw_outputs, references, strict=True):
        overlap = metrics.json_overlap(out, ref)
        rows.append(
            {
                "json_parses": bool(overlap["valid"]),
                "json_schema_valid": bool(json_to_text(out)[0]),
                "json_precision": overlap["precision"],
                "json_recall": overlap["recall"],
                "json_f1": overlap["f1"],
            }
        )
    return pd.DataFrame(rows)


def style_scores(raw_outputs: Sequence[str], requested: Sequence[str | None]) -> pd.DataFrame:
    """Per study: the requested style, the style :func:`course_utils.text.detect_style` reads
    back (``"empty"`` for an empty output) and whether they agree."""
    from .text import detect_style

    if len(raw_outputs) != len(requested):
        raise ValueError(f"{len(raw_outputs)} outputs for {len(requested)} requested styles")
    detected = [detect_style(t) if t.strip() else "empty" for t in raw_outputs]
    return pd.DataFrame(
        {
            "requested": list(requested),
            "detected": detected,
            "adherent": [d == r for d, r in zip(detected, requested, strict=True)],
        }
    )


def _mean_rows(
    system: str, frame: pd.DataFrame, columns: Mapping[str, str], n_boot: int, alpha: float,
    seed: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Bootstrap CIs of the means of some per-study columns (name in table -> column)."""
    values = frame[list(columns.values())].to_numpy(dtype=float)
    ci = metrics.bootstrap_ci(values, n_resamples=n_boot, alpha=alpha, seed=seed)
    return _ci_rows(system, list(columns), np.atleast_1d(ci.estimate), ci.distribution, alpha,
                    len(values))  # fmt: skip


# ============================================================================================
# evaluate_model
# ============================================================================================


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate_model` measured, as tidy tables.

    Attributes:
        target: the model's target (``"findings"``, ``"json"``, ``"style"``).
        indices: evaluated dataset indices; ``study_ids`` the matching study ids.
        references: reference reports.
        generations: decoding name -> :class:`GenerationRun` (raw model outputs).
        headline: long table ``system, metric, estimate, low, high, n`` - every headline number
            with its bootstrap CI, for every system (decodings and the detection head),
            including latency (ms) and the structured / style metrics where they apply.
        per_finding: long table ``system, label, precision, recall, f1, support, predicted,
            tp, fp, fn`` (14 labels then ``micro``, ``macro``; :func:`per_finding_scores`).
        critical: ``system, finding`` + :func:`critical_sensitivity` columns + bootstrap
            ``low``/``high`` of the sensitivity.
        latency: per decoding: ``median_ms``, ``p95_ms`` with CIs, ``n_timed``,
            ``batch_ms_per_report``.
        latency_ms: decoding -> per-study latencies (ms).
        decoding: :func:`beam_vs_greedy` table (``None`` with one decoding).
        structured: :func:`structured_scores` table (json target) or ``None``.
        style: :func:`style_scores` table (style target) or ``None``.
        systems: system name -> :class:`SystemScores` (reuse in :func:`comparison_table`).
        head_probs: (N, 14) detection-head probabilities or ``None``.
        notes: what is missing or approximated, and why.
        settings: the arguments used; ``seconds``: time per phase.
    """

    target: str
    indices: list[int]
    study_ids: list[Any]
    references: list[str]
    generations: dict[str, GenerationRun]
    headline: pd.DataFrame
    per_finding: pd.DataFrame
    critical: pd.DataFrame
    latency: pd.DataFrame
    latency_ms: dict[str, np.ndarray]
    decoding: pd.DataFrame | None
    structured: pd.DataFrame | None
    style: pd.DataFrame | None
    systems: dict[str, SystemScores]
    head_probs: np.ndarray | None
    notes: list[str]
    settings: dict[str, Any]
    seconds: dict[str, float]

    @property
    def main_decoding(self) -> str:
        """The decoding the case study evaluates with (the first one, beam by default)."""
        return next(iter(self.generations))

    def table(self, names: Sequence[str] | None = None, ci: bool = True) -> pd.DataFrame:
        """Systems x metrics (``names`` in that order, default all): strings with CIs
        (``ci=True``) or the float estimates."""
        long = self.headline
        if names is not None:
            order = {m: k for k, m in enumerate(names)}
            long = long[long["metric"].isin(list(names))]
            long = long.iloc[np.argsort(long["metric"].map(order).to_numpy(), kind="stable")]
        return format_ci_table(long) if ci else wide_table(long)

    def texts(self, decoding: str | None = None) -> list[str]:
        """Scored texts of a decoding (rendered prose for JSON / styled models)."""
        return list(self.systems[decoding or self.main_decoding].texts or [])

    def save(self, directory: str | Path) -> Path:
        """Write the tables (CSV), generated texts and notes (JSON) under ``directory``."""
        import json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.headline.to_csv(directory / "headline.csv", index=False)
        self.per_finding.to_csv(directory / "per_finding.csv", index=False)
        self.critical.to_csv(directory / "critical.csv", index=False)
        self.latency.to_csv(directory / "latency.csv", index=False)
        for name in ("decoding", "structured", "style"):
            frame = getattr(self, name)
            if frame is not None:
                frame.to_csv(directory / f"{name}.csv", index=False)
        reports = {
            str(sid): {"reference": ref, **{d: g.texts[k] for d, g in self.generations.items()}}
            for k, (sid, ref) in enumerate(zip(self.study_ids, self.references, strict=True))
        }
        (directory / "reports.json").write_text(json.dumps(reports, indent=1))
        meta = {"target": self.target, "notes": self.notes, "settings": self.settings,
                "seconds": self.seconds}  # fmt: skip
        (directory / "evaluation.json").write_text(json.dumps(meta, indent=1, default=str))
        return directory


def _latency_table(
    runs: Mapping[str, GenerationRun], latency: Mapping[str, np.ndarray], n_boot: int,
    alpha: float, seed: int,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:  # fmt: skip
    """Median and p95 latency with bootstrap CIs (quantiles of resampled timings)."""
    rows, headline = [], []
    for name, ms in latency.items():
        if len(ms) == 0:
            continue

        def stat(idx: np.ndarray, ms: np.ndarray = ms) -> np.ndarray:
            sample = ms[idx]
            return np.stack([np.median(sample, axis=1), np.percentile(sample, 95, axis=1)], axis=1)

        ci = metrics.bootstrap_ci(stat, len(ms), n_resamples=n_boot, alpha=alpha, seed=seed)
        est, low, high = (np.atleast_1d(v) for v in (ci.estimate, ci.low, ci.high))
        rows.append({"decoding": name, "median_ms": est[0], "median_low": low[0],
                     "median_high": high[0], "p95_ms": est[1], "p95_low": low[1],
                     "p95_high": high[1], "n_timed": len(ms),
                     "batch_ms_per_report": runs[name].ms_per_report})  # fmt: skip
        for k, metric in enumerate(("latency median (ms)", "latency p95 (ms)")):
            headline.append({"system": name, "metric": metric, "estimate": float(est[k]),
                             "low": float(low[k]), "high": float(high[k]), "n": len(ms)})  # fmt: skip
    return pd.DataFrame(rows), headline


def _labels_of(scores: SystemScores) -> tuple[np.ndarray, np.ndarray]:
    """(reference, prediction) label matrices (N, 14) behind a system's CE counts."""
    ce = scores.ce
    if ce.ref_labels is not None and ce.hyp_labels is not None:
        return _label_matrix(ce.ref_labels, "ref"), _label_matrix(ce.hyp_labels, "hyp")
    raise ValueError(f"system {scores.name!r} has no label tables")


def evaluate_model(
    model: Any,
    test_dataset: Any,
    *,
    num_beams: int = 4,
    compare_greedy: bool = True,
    batch_size: int = 64,
    max_new_tokens: int = 100,
    length_penalty: float = 0.0,
    indices: Sequence[int] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 42,
    head_threshold: float | Sequence[float] = 0.5,
    bertscore: bool = True,
    bertscore_backend: str = "auto",
    bertscore_studies: int | None = None,
    radgraph: bool = True,
    latency_studies: int = 32,
    progress: bool = True,
) -> EvaluationResult:
    """Comprehensive evaluation on the test set (case study §3.6).

    Args:
        model: a :class:`~course_utils.model.RadiologyMultimodalModel` (any model with the
            course's ``generate(..., return_scores=True)``; the detection head is optional).
        test_dataset: the test split as a :class:`~course_utils.train.ReportDataset` (its
            prompts, target and requested styles are used).
        num_beams: beams of the main decoding (the case study: 4).
        compare_greedy: also decode greedily and compare (skipped when ``num_beams == 1``).
        batch_size: studies per ``generate`` call.
        max_new_tokens: generation budget (use the training config's ``max_new_tokens``).
        length_penalty: beam ranking, ``log p / len**length_penalty`` (0 = total log p).
        indices: evaluate these studies only (default: all).
        n_boot, alpha, seed: bootstrap resamples, 1 - confidence level, seed (the same seed
            gives the same resamples, so CIs of all systems are paired).
        head_threshold: probability at which the detection head calls a label positive (one
            value or one per label).
        bertscore, bertscore_backend: BERTScore on/off and backend (``"auto"``: bert-score if
            it runs, else offline MiniLM, named so in the tables).
        bertscore_studies: score BERTScore on a seeded random subset of this many studies (it
            is the slowest metric on a CPU); None = all.
        radgraph: try RadGraph F1 (NaN with a note when unavailable).
        latency_studies: how many studies (seeded random subset) to time one at a time.
        progress: tqdm bars.

    Returns:
        :class:`EvaluationResult`.

    Raises:
        TypeError: ``test_dataset`` is not a ReportDataset-like object.
        ValueError / IndexError: empty dataset or indices, bad arguments.
    """
    idx = _indices(test_dataset, indices)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if latency_studies < 0:
        raise ValueError(f"latency_studies must be >= 0, got {latency_studies}")
    target, n = str(test_dataset.target), len(idx)
    references = [test_dataset.reports[i] for i in idx]
    notes: list[str] = []
    seconds: dict[str, float] = {}
    # separate seeded streams: the timed studies do not move the BERTScore subset, and back
    timed_rng, bertscore_rng = (np.random.default_rng([seed, k]) for k in (1, 2))
    gen_kw = dict(max_new_tokens=max_new_tokens, length_penalty=length_penalty)

    runs: dict[str, GenerationRun] = {}
    for beams in [num_beams] + ([1] if compare_greedy and num_beams > 1 else []):
        run = generate(model, test_dataset, idx, num_beams=beams, batch_size=batch_size,
                       progress=progress, **gen_kw)  # fmt: skip
        runs[run.decoding] = run
        seconds[f"generate {run.decoding}"] = run.seconds
    main = next(iter(runs))

    start = time.perf_counter()
    timed = sorted(timed_rng.choice(n, size=min(latency_studies, n), replace=False).tolist())
    latency_ms = {
        name: measure_latency(
            model, test_dataset, [idx[k] for k in timed], num_beams=run.num_beams, **gen_kw
        )  # fmt: skip
        for name, run in runs.items()
        if timed
    }
    seconds["latency"] = time.perf_counter() - start

    start = time.perf_counter()
    bs_index = None
    if bertscore and bertscore_studies is not None and bertscore_studies < n:
        bs_index = np.sort(bertscore_rng.choice(n, size=bertscore_studies, replace=False))
        notes.append(f"BERTScore is computed on a seeded random subset of {bertscore_studies} "
                     f"of the {n} studies (its CI is over that subset)")  # fmt: skip
    systems = _score_decodings(runs, references, target, bertscore, bertscore_backend, bs_index,
                               radgraph, notes)  # fmt: skip
    seconds["score texts"] = time.perf_counter() - start

    start = time.perf_counter()
    head_probs = _add_detection_head(model, test_dataset, idx, systems, head_threshold, notes)
    seconds["detection head"] = time.perf_counter() - start

    start = time.perf_counter()
    boots = {name: bootstrap_table(s, n_boot=n_boot, alpha=alpha, seed=seed)
             for name, s in systems.items()}  # fmt: skip
    latency, lat_rows = _latency_table(runs, latency_ms, n_boot, alpha, seed)
    if lat_rows:
        notes.append(f"latency: {len(timed)} studies timed one at a time (batch size 1) on "
                     f"{_device_of(model)}; p95 of {len(timed)} timings is a rough estimate")  # fmt: skip
    structured = style = None
    extra_rows: list[dict[str, Any]] = []
    if target == "json":
        structured = structured_scores(runs[main].texts, references)
        extra_rows = _mean_rows(main, structured, _JSON_COLUMNS, n_boot, alpha, seed)
    if target == "style":
        style = style_scores(runs[main].texts, [test_dataset.styles_used[i] for i in idx])
        extra_rows = _style_rows(main, style, n_boot, alpha, seed)
    headline = pd.concat([*boots.values(), pd.DataFrame(lat_rows), pd.DataFrame(extra_rows)],
                         ignore_index=True)  # fmt: skip
    seconds["bootstrap"] = time.perf_counter() - start

    per_finding, critical = _label_tables(systems, boots)
    decoding = beam_vs_greedy(runs["greedy"], runs[main]) if len(runs) > 1 else None
    meta = getattr(test_dataset, "metadata", None)
    study_ids = [meta[i].get("study_id", i) if meta else i for i in idx]
    settings = dict(num_beams=num_beams, compare_greedy=compare_greedy, batch_size=batch_size,
                    max_new_tokens=max_new_tokens, length_penalty=length_penalty, n_boot=n_boot,
                    alpha=alpha, seed=seed, head_threshold=head_threshold, bertscore=bertscore,
                    bertscore_studies=bertscore_studies, latency_studies=latency_studies,
                    n_studies=n)  # fmt: skip
    return EvaluationResult(
        target=target, indices=idx, study_ids=study_ids, references=references, generations=runs,
        headline=headline, per_finding=per_finding, critical=critical, latency=latency,
        latency_ms=latency_ms, decoding=decoding, structured=structured, style=style,
        systems=systems, head_probs=head_probs, notes=notes, settings=settings, seconds=seconds,
    )  # fmt: skip


_JSON_COLUMNS: dict[str, str] = {
    "JSON valid rate (parses)": "json_parses",
    "JSON valid rate (schema)": "json_schema_valid",
    "JSON overlap P": "json_precision",
    "JSON overlap R": "json_recall",
    "JSON overlap F1": "json_f1",
}


def _score_decodings(
    runs: Mapping[str, GenerationRun], references: list[str], target: str, bertscore: bool,
    backend: str, bs_index: np.ndarray | None, radgraph: bool, notes: list[str],
) -> dict[str, SystemScores]:  # fmt: skip
    """:func:`score_reports` of every decoding (its prose rendering); notes collected once."""
    systems: dict[str, SystemScores] = {}
    for name, run in runs.items():
        texts = [content_text(t, target) for t in run.texts]
        systems[name] = score_reports(references, texts, name=name, bertscore=bertscore,
                                      bertscore_backend=backend, bertscore_index=bs_index,
                                      radgraph=radgraph)  # fmt: skip
        radgraph = radgraph and systems[name].radgraph is not None  # unavailable once: for all
        notes.extend(note for note in systems[name].notes if note not in notes)
    if target != "findings":
        how = "rendered from JSON (invalid -> empty)" if target == "json" else "as narrative"
        notes.append(f"text and clinical metrics score the {target} model's output {how}")
    return systems


def _add_detection_head(
    model: Any, dataset: Any, idx: list[int], systems: dict[str, SystemScores],
    threshold: float | Sequence[float], notes: list[str],
) -> np.ndarray | None:  # fmt: skip
    """Score the detection head at ``threshold`` as system "detection head" (same truth)."""
    try:
        probs = detection_probabilities(model, dataset, idx)
    except AttributeError as err:
        notes.append(f"no detection-head metrics: {err}")
        return None
    thr = np.broadcast_to(np.asarray(threshold, dtype=float), (probs.shape[1],))
    first = next(iter(systems.values()))
    systems["detection head"] = score_labels(
        "detection head", first.references, first.ce.ref_labels, (probs >= thr).astype(float)
    )
    return probs


def _style_rows(
    system: str, style: pd.DataFrame, n_boot: int, alpha: float, seed: int
) -> list[dict[str, Any]]:
    """Style adherence overall and per requested style, with CIs."""
    frame = style.assign(a=style["adherent"].astype(float))
    rows = _mean_rows(system, frame, {"style adherence": "a"}, n_boot, alpha, seed)
    for name, group in frame.groupby("requested", sort=True):
        rows += _mean_rows(system, group, {f"style adherence ({name})": "a"}, n_boot, alpha, seed)
    return rows


def _label_tables(
    systems: Mapping[str, SystemScores], boots: Mapping[str, pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long per-finding and critical tables of all systems (critical with bootstrap bounds)."""
    per_finding, critical = [], []
    for name, s in systems.items():
        ref_m, hyp_m = _labels_of(s)
        per_finding.append(per_finding_scores(ref_m, hyp_m).reset_index().assign(system=name))
        table = critical_sensitivity(ref_m, hyp_m)
        mine = boots[name].set_index("metric")
        table["low"] = [mine.loc[f"sensitivity {f}", "low"] for f in table.index]
        table["high"] = [mine.loc[f"sensitivity {f}", "high"] for f in table.index]
        critical.append(table.reset_index().assign(system=name))

    def system_first(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[["system", *[c for c in frame if c != "system"]]]

    return (
        system_first(pd.concat(per_finding, ignore_index=True)),
        system_first(pd.concat(critical, ignore_index=True)),
    )


def _device_of(model: Any) -> str:
    try:
        device = str(next(model.parameters()).device)
    except (StopIteration, AttributeError, TypeError):
        return "this machine"
    import os

    import torch

    if device == "cpu":
        threads = torch.get_num_threads()
        return f"CPU ({threads} thread{'s' * (threads != 1)}, {os.cpu_count()} cores)"
    return device


# ============================================================================================
# Comparison with baselines
# ============================================================================================


def baseline_reports(
    test: Mapping[str, Any],
    train: Mapping[str, Any] | None = None,
    val: Mapping[str, Any] | None = None,
    *,
    indices: Sequence[int] | None = None,
    classifier_size: int = 32,
    seed: int = 42,
) -> dict[str, list[str]]:
    """Baseline reports for the test studies (notebook 03's three systems).

    * ``"fixed normal report"`` - :data:`course_utils.baseline.FIXED_NORMAL_REPORT` for every
      study;
    * ``"template (oracle labels)"`` - the template filled with the reference report's own
      findings: the ceiling of template filling;
    * ``"template (classifier labels)"`` - the template filled with the labels of
      :func:`course_utils.baseline.train_label_classifier` (trained on ``train``, thresholds
      on ``val``); only when ``train`` is given.

    Args:
        test, train, val: ``load_mimic_cxr_dataset`` dicts (``pixels`` needed for the
            classifier).
        indices: test studies to write for (default: all).
    """
    from . import baseline

    reports = list(test["reports"])
    idx = list(range(len(reports))) if indices is None else [int(i) for i in indices]
    refs = [reports[i] for i in idx]
    out = {
        "fixed normal report": [baseline.FIXED_NORMAL_REPORT] * len(idx),
        "template (oracle labels)": [
            baseline.template_baseline(None, baseline.findings_from_report(r)) for r in refs
        ],
    }
    if train is not None:
        clf = baseline.train_label_classifier(
            train["pixels"], train["labels"], size=classifier_size,
            val=None if val is None else (val["pixels"], val["labels"]), seed=seed,
        )  # fmt: skip
        pixels = test["pixels"][idx]
        out["template (classifier labels)"] = [
            baseline.template_baseline(None, f) for f in baseline.predict_labels(clf, pixels)
        ]
    return out


def comparison_table(
    references: Sequence[str],
    systems: Mapping[str, Sequence[str] | SystemScores],
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 42,
    radgraph: bool = True,
    metric_names: Sequence[str] = COMPARISON_METRICS,
) -> pd.DataFrame:
    """Score several systems on the same studies with the same scorers and resamples.

    Args:
        references: the N reference reports.
        systems: name -> N generated texts, or a :class:`SystemScores` already computed on the
            same references (e.g. ``result.systems["beam-4"]``; not rescored).
        n_boot, alpha, seed: bootstrap (the same seed -> the same resampled studies for all).
        radgraph: try RadGraph F1 for text systems (NaN where unavailable).
        metric_names: metrics to keep, in order (default :data:`COMPARISON_METRICS`).

    Returns:
        long DataFrame ``system, metric, estimate, low, high, n``; :func:`wide_table` /
        :func:`format_ci_table` turn it into the systems x metrics table.

    Raises:
        ValueError: a system has another number of texts or other references.
    """
    refs = list(references)
    parts = []
    for name, value in systems.items():
        if isinstance(value, SystemScores):
            if value.references != refs:
                raise ValueError(f"system {name!r} was scored on other references")
            scores = value
            if scores.name != name:
                scores = SystemScores(**{**scores.__dict__, "name": name})
        else:
            scores = score_reports(refs, list(value), name=name, bertscore=False, radgraph=radgraph)
            radgraph = radgraph and scores.radgraph is not None
        parts.append(bootstrap_table(scores, n_boot=n_boot, alpha=alpha, seed=seed))
    long = pd.concat(parts, ignore_index=True)
    keep = long[long["metric"].isin(list(metric_names))].copy()
    order = {m: k for k, m in enumerate(metric_names)}
    keep["_order"] = keep["metric"].map(order)
    keep["_sys"] = keep["system"].map({s: k for k, s in enumerate(systems)})
    return (
        keep.sort_values(["_sys", "_order"]).drop(columns=["_order", "_sys"]).reset_index(drop=True)
    )


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray, n_resamples: int = 1000, alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """The reference for notebook 06's ``bootstrap_ci`` TODO: percentile CI of a mean."""
    ci = metrics.bootstrap_ci(np.asarray(values, dtype=float), n_resamples=n_resamples,
                              alpha=alpha, seed=seed)  # fmt: skip
    return float(ci.low), float(ci.high)
