"""Training data: targets, the tokenizer, `ReportDataset`, the collator and balanced sampling.

One training example is ``[visual tokens] <bos> prompt target <eos>`` (see
:mod:`course_utils.model.prompts`); its ``labels`` are ``-100`` on ``<bos>`` and the prompt, so
the loss only asks the model to write the target. Three targets (``TrainConfig.target``):

* ``"findings"``: the findings text (lower-cased and whitespace-normalised by the tokenizer);
* ``"json"``: R2Gen2's model I, :func:`course_utils.text.report_to_json` serialised compactly;
* ``"style"``: R2Gen2's model II, :func:`course_utils.text.to_style` in a style drawn per study
  (seeded) and named in the prompt (``<style:sectioned> ... in the sectioned style .``).

Options that shape what the small LM learns from: :func:`abnormal_first` (sentences with
findings first), :func:`word_dropout` (hide some target input words), and
:func:`balanced_sample_weights` (normal vs abnormal studies drawn equally often).

The word-level tokenizer of the ``tiny`` profile turns every whitespace run into one space, so a
sectioned report comes back from ``decode`` on a single line; :func:`postprocess_generation`
puts the line breaks back before the section headers (a detokenisation step, not a fix-up of
content: the model still has to write every header).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..labels import POSITIVE, UNCERTAIN, label_report, split_sentences
from ..model.components import IGNORE_INDEX
from ..model.prompts import build_prompt, encode_example, pad_batch, prompt_corpus
from ..text import (
    SECTIONS,
    STYLES,
    impute_xxxx,
    normalize_report_text,
    report_to_json,
    to_style,
    train_word_tokenizer,
)
from .config import ORDERS, TARGETS

REQUIRED_KEYS = ("pixels", "reports", "labels", "metadata")
_SECTION_HEADER = re.compile(
    r"\s*\b(" + "|".join(re.escape(h) for h, _ in SECTIONS.values()) + r")\s*:",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------- targets
def clean_report(report: str, impute: bool = True) -> str:
    """Whitespace/punctuation-normalised report (case kept), ``XXXX`` slots filled when ``impute``."""
    if not isinstance(report, str):
        raise TypeError(f"report must be a str, got {type(report).__name__}")
    text = normalize_report_text(report, lowercase=False)
    if not text:
        raise ValueError("report is empty")
    return impute_xxxx(text).text if impute else text


def abnormal_first(report: str) -> str:
    """The same sentences, those with a positive or uncertain finding first (stable order).

    A report that mentions its one abnormality after four normal sentences teaches a small LM
    to open every report with the normal boilerplate; under greedy decoding the abnormal
    sentence then rarely wins at any later sentence boundary. Putting pertinent positives first
    (a common reporting convention) makes the image decide the very first sentence. The
    sentences themselves, and so the report's labels, do not change.
    """
    sentences = split_sentences(report)
    flagged = {
        m.sentence_index for m in label_report(report).mentions if m.status in (POSITIVE, UNCERTAIN)
    }
    ordered = [s for i, s in enumerate(sentences) if i in flagged]
    ordered += [s for i, s in enumerate(sentences) if i not in flagged]
    return " ".join(ordered)


def json_target(
    report: str,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    impute: bool = True,
    order: str = "original",
) -> str:
    """Compact R2Gen2 JSON of a report (``separators=(",", ":")``), always valid JSON.

    When ``tokenizer`` and ``max_tokens`` are given and the JSON is longer, trailing *sentence
    objects* are dropped until it fits (never cut inside an object: a truncated target would
    teach the model to write invalid JSON). At least one object is kept. ``order=
    "abnormal_first"`` puts the sentences with findings first, so they are the ones that
    survive the cut (in report order, a long report loses its findings and keeps "heart normal").
    """
    text = clean_report(report, impute)
    objs = report_to_json(abnormal_first(text) if order == "abnormal_first" else text)

    def dump(items: list[dict]) -> str:
        return json.dumps(items, separators=(",", ":"), ensure_ascii=False)

    text = dump(objs)
    if tokenizer is None or max_tokens is None:
        return text
    while len(objs) > 1 and _n_tokens(tokenizer, text) > max_tokens:
        objs = objs[:-1]
        text = dump(objs)
    return text


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def style_target(report: str, style: str, impute: bool = True) -> str:
    """The report rewritten in ``style`` (:func:`course_utils.text.to_style`)."""
    return to_style(clean_report(report, impute), style)


def make_target(
    report: str,
    target: str = "findings",
    style: str | None = None,
    *,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    impute: bool = True,
    order: str = "original",
) -> str:
    """The text the model learns to write for one study (see the module docstring).

    ``order="abnormal_first"`` moves the sentences with findings to the front of a findings,
    JSON or narrative-style target (:func:`abnormal_first`); sectioned targets keep their order.
    """
    if order not in ORDERS:
        raise ValueError(f"order={order!r}; choose one of {ORDERS}")
    if target == "findings":
        text = clean_report(report, impute)
        return abnormal_first(text) if order == "abnormal_first" else text
    if target == "json":
        return json_target(report, tokenizer, max_tokens, impute, order)
    if target == "style":
        if style not in STYLES:
            raise ValueError(f"target='style' needs a style in {STYLES}, got {style!r}")
        text = clean_report(report, impute)
        if order == "abnormal_first" and style == "narrative":
            text = abnormal_first(text)
        return to_style(text, style)
    raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")


def postprocess_generation(text: str, target: str = "findings") -> str:
    """Undo the tokenizer's whitespace folding: section headers start new lines again.

    ``"lines/tubes: none. lungs: clear."`` -> ``"lines/tubes: none.\\nlungs: clear."`` for any
    target whose text contains at least two headers; other text is only stripped.
    """
    text = text.strip()
    if target == "json" or len(_SECTION_HEADER.findall(text)) < 2:
        return text
    return _SECTION_HEADER.sub(lambda m: "\n" + m.group(1) + ":", text).strip()


def assign_styles(n: int, styles: Sequence[str] = STYLES, seed: int = 42) -> list[str]:
    """A style per study, drawn uniformly with a seeded generator (same seed, same styles)."""
    if not styles:
        raise ValueError("assign_styles needs at least one style")
    rng = np.random.default_rng(seed)
    return [styles[i] for i in rng.integers(0, len(styles), size=n)]


def example_prompt(meta: dict[str, Any], target: str, style: str | None, context: bool) -> str:
    """The prompt of one study (:func:`course_utils.model.build_prompt`), context optional."""
    task_style = style if target == "style" else None
    if not context:
        return build_prompt(target, task_style)
    return build_prompt(
        target, task_style, meta.get("age"), meta.get("sex"), meta.get("indication")
    )


# ---------------------------------------------------------------------- tokenizer
def check_split(data: dict[str, Any], what: str = "dataset", need_pixels: bool = True) -> int:
    """Validate a :func:`course_utils.data.load_mimic_cxr_dataset` dict; returns N."""
    if not isinstance(data, dict):
        raise TypeError(
            f"{what} must be the dict of load_mimic_cxr_dataset, got {type(data).__name__}"
        )
    keys = REQUIRED_KEYS if need_pixels else REQUIRED_KEYS[1:]
    missing = [k for k in keys if k not in data]
    if missing:
        hint = " (load it with load_pixels=True)" if "pixels" in missing else ""
        raise ValueError(f"{what} lacks key(s) {missing}{hint}")
    n = len(data["reports"])
    if n == 0:
        raise ValueError(f"{what} is empty")
    sizes = {"reports": n, "labels": len(data["labels"]), "metadata": len(data["metadata"])}
    if need_pixels:
        sizes["pixels"] = len(data["pixels"])
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{what}: fields have different lengths {sizes}")
    for i, report in enumerate(data["reports"]):
        if not isinstance(report, str) or not report.strip():
            raise ValueError(f"{what}: report {i} is empty")
    if need_pixels:
        pixels = data["pixels"]
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != 1:
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels)
            raise ValueError(f"{what}: pixels must be a (N, 1, S, S) tensor, got {shape}")
    return n


def tokenizer_corpus(
    data: dict[str, Any],
    targets: Iterable[str] = ("findings",),
    styles: Sequence[str] = STYLES,
    impute: bool = True,
) -> list[str]:
    """Every text a tokenizer must cover for these targets: targets, prompts, context words."""
    targets = tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown target(s) {unknown}; choose from {TARGETS}")
    check_split(data, "train_dataset", need_pixels=False)
    texts = list(prompt_corpus())
    for meta in data["metadata"]:
        for target in targets:
            for style in styles if target == "style" else (None,):
                texts.append(example_prompt(meta, target, style, context=True))
    for report in data["reports"]:
        for target in targets:
            for style in styles if target == "style" else (None,):
                texts.append(make_target(report, target, style, impute=impute))
    return texts


def build_tokenizer(
    train_dataset: dict[str, Any],
    targets: Iterable[str] = ("findings",),
    vocab_size: int = 4000,
    min_frequency: int = 2,
    styles: Sequence[str] = STYLES,
    impute: bool = True,
) -> Any:
    """Word-level tokenizer trained on the TRAINING split's targets and prompts only.

    Args:
        train_dataset: the training split's dict (``load_mimic_cxr_dataset``).
        targets: the targets the model will be trained on (their texts differ: JSON keys and
            punctuation, section headers).
        vocab_size, min_frequency: see :func:`course_utils.text.train_word_tokenizer`.

    Returns:
        a ``PreTrainedTokenizerFast`` (``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2).
    """
    corpus = tokenizer_corpus(train_dataset, targets, styles, impute)
    return train_word_tokenizer(corpus, vocab_size=vocab_size, min_frequency=min_frequency)


# ---------------------------------------------------------------------- dataset
class ReportDataset(Dataset):
    """Images, prompt + target token ids and finding labels of one split.

    Args:
        data: the dict of :func:`course_utils.data.load_mimic_cxr_dataset` with
            ``load_pixels=True`` (``pixels`` (N, 1, S, S) in [0, 1], ``reports``, ``labels``
            (N, 14), ``metadata``).
        tokenizer: the LM's tokenizer (``bos``/``eos``/``pad`` ids are read from it).
        target: ``"findings"``, ``"json"`` or ``"style"``.
        styles: styles drawn per study for ``target="style"`` (:func:`assign_styles`).
        max_length: cap on text tokens per example (prompt + target + specials).
        prompt_context: include age / sex / indication in the prompt.
        impute: fill ``XXXX`` slots of the targets.
        order: ``"original"`` or ``"abnormal_first"`` sentence order (:func:`make_target`).
        seed: seeds the style choice.

    Items are dicts: ``images`` (1, S, S), ``input_ids`` / ``labels`` (lists of ints, labels
    -100 on the prompt), ``finding_targets`` (14,), ``index``. Token ids are computed once, in
    the constructor.
    """

    def __init__(
        self,
        data: dict[str, Any],
        tokenizer: Any,
        target: str = "findings",
        *,
        styles: Sequence[str] = STYLES,
        max_length: int = 256,
        prompt_context: bool = True,
        impute: bool = True,
        order: str = "original",
        seed: int = 42,
    ) -> None:
        n = check_split(data, "dataset")
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
        if tokenizer is None:
            raise ValueError("ReportDataset needs the LM's tokenizer")
        pixels = data["pixels"]
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"pixels must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        labels = torch.as_tensor(data["labels"], dtype=torch.float32)
        if labels.dim() != 2:
            raise ValueError(f"labels must be (N, K), got shape {tuple(labels.shape)}")
        self.pixels = pixels
        self.finding_targets = labels
        self.reports = list(data["reports"])
        self.metadata = list(data["metadata"])
        self.tokenizer = tokenizer
        self.target = target
        self.max_length = int(max_length)
        self.prompt_context = prompt_context
        self.styles_used = assign_styles(n, styles, seed) if target == "style" else [None] * n
        self.prompts: list[str] = []
        self.targets: list[str] = []
        self.examples: list[dict[str, list[int]]] = []
        for i in range(n):
            style = self.styles_used[i]
            prompt = example_prompt(self.metadata[i], target, style, prompt_context)
            room = None
            if target == "json":  # keep whole sentence objects (room for <bos> prompt <eos>)
                room = self.max_length - 2 - _n_tokens(tokenizer, prompt)
            text = make_target(
                self.reports[i], target, style, tokenizer=tokenizer, max_tokens=room,
                impute=impute, order=order,
            )  # fmt: skip
            self.prompts.append(prompt)
            self.targets.append(text)
            self.examples.append(encode_example(tokenizer, prompt, text, self.max_length))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        return {
            "images": self.pixels[index],
            "input_ids": example["input_ids"],
            "labels": example["labels"],
            "finding_targets": self.finding_targets[index],
            "index": index,
        }

    def target_token_counts(self) -> np.ndarray:
        """Target tokens (``labels != -100``, ``<eos>`` included) per example."""
        return np.array([sum(t != IGNORE_INDEX for t in e["labels"]) for e in self.examples])

    def sequence_lengths(self) -> np.ndarray:
        """Text tokens per example (prompt + target + specials)."""
        return np.array([len(e["input_ids"]) for e in self.examples])


class ReportCollator:
    """Pads a list of :class:`ReportDataset` items into one batch (right padding).

    Returns ``images`` (B, 1, S, S), ``input_ids`` (B, T), ``attention_mask`` (B, T),
    ``labels`` (B, T; -100 on prompt and padding), ``finding_targets`` (B, K) and ``index`` (B,).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        ids, mask = pad_batch([it["input_ids"] for it in items], self.pad_token_id, "right")
        labels, _ = pad_batch([it["labels"] for it in items], self.pad_token_id, "right", True)
        return {
            "images": torch.stack([it["images"] for it in items]).float(),
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "finding_targets": torch.stack([it["finding_targets"] for it in items]).float(),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        }


# ---------------------------------------------------------------------- sampling
def balanced_sample_weights(
    labels: torch.Tensor | np.ndarray, mode: str = "normal_abnormal"
) -> torch.Tensor:
    """Sampling weights (N,) that rebalance normal and abnormal studies; they sum to 1.

    Args:
        labels: (N, 14) CheXpert values in ``CHEXPERT_LABELS`` order (column 0 "No Finding").
        mode: ``"normal_abnormal"``: a study is *abnormal* when any finding (columns 1..13) is
            positive or uncertain; each group gets half the draws, equally shared inside it
            (with 70 % normal studies a normal one is drawn 0.5/70 vs an abnormal 0.5/30).
            ``"rarest_label"``: a study weighs ``1 / count`` of its rarest positive finding
            (normal studies: ``1 / n_normal``), so rare findings are seen far more often.

    Raises:
        ValueError: unknown mode or wrong shape.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    if y.dim() != 2 or y.shape[1] < 2:
        raise ValueError(f"labels must be (N, 14), got shape {tuple(y.shape)}")
    findings = y[:, 1:]
    present = (findings == 1) | (findings == -1)
    abnormal = present.any(dim=1)
    n = y.shape[0]
    if mode == "normal_abnormal":
        n_abn = int(abnormal.sum())
        n_norm = n - n_abn
        if n_abn == 0 or n_norm == 0:
            return torch.full((n,), 1.0 / n)
        weights = torch.where(abnormal, 0.5 / n_abn, 0.5 / n_norm)
    elif mode == "rarest_label":
        counts = present.sum(dim=0).clamp(min=1).float()  # (13,)
        inv = torch.where(present, 1.0 / counts, torch.zeros_like(findings))
        n_norm = max(int((~abnormal).sum()), 1)
        weights = torch.where(abnormal, inv.max(dim=1).values, torch.tensor(1.0 / n_norm))
    else:
        raise ValueError(f"mode={mode!r}; choose 'normal_abnormal' or 'rarest_label'")
    return weights / weights.sum()


def word_dropout(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    p: float,
    unk_id: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace each *target* input token by ``unk_id`` with probability ``p`` (word dropout).

    A language model can predict most of a formulaic report from the words before it and learn
    to ignore the image; hiding some of those words (Bowman et al., 2016) makes the visual
    tokens worth attending to. Prompt and padding positions (``labels == -100``) and the first
    position are never replaced; the labels are untouched, so the model still has to predict
    every target token. Returns a new tensor.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"word dropout probability must be in [0, 1), got {p}")
    if input_ids.shape != labels.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} differ"
        )
    if p == 0.0:
        return input_ids.clone()
    drop = torch.rand(input_ids.shape, generator=generator) < p
    drop &= labels.cpu() != IGNORE_INDEX
    drop[:, 0] = False
    return input_ids.masked_fill(drop.to(input_ids.device), unk_id)
