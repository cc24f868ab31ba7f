"""The instruction prompt (case study §2: image + optional clinical context -> report).

A training example is laid out as::

    [visual tokens] <bos> <task> [context] instruction  target tokens <eos>
    └── model ──┘ └──────── prompt: label -100 ────┘ └─ LM targets ─┘

:func:`build_prompt` writes the text, :func:`encode_prompt` / :func:`encode_example` turn it into
ids with the same convention that :meth:`RadiologyMultimodalModel.generate` uses, so training and
generation agree. The text is lower case with spaces around punctuation so a word-level tokenizer
splits it; :func:`prompt_corpus` lists every fixed prompt word for tokenizer training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .components import IGNORE_INDEX

TASKS = ("findings", "json", "style")
STYLES = ("narrative", "sectioned")
TASK_TOKENS = {"findings": "<findings>", "json": "<json>"}
INSTRUCTIONS = {
    "findings": "write the findings section of the report for this chest x-ray .",
    "json": "list the findings of this chest x-ray as json .",
    "style": "write the findings section of the report for this chest x-ray in the {style} style .",
}
_SEX_WORDS = {"m": "male", "male": "male", "f": "female", "female": "female"}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _age_phrase(age: Any) -> str | None:
    if _is_missing(age):
        return None
    try:
        years = float(age)
    except (TypeError, ValueError) as err:
        raise ValueError(f"age must be a number of years, got {age!r}") from err
    if not 0 <= years <= 120:
        raise ValueError(f"age must be between 0 and 120 years, got {age!r}")
    return f"{int(round(years))} year old"


def _sex_word(sex: Any) -> str | None:
    if _is_missing(sex) or (isinstance(sex, str) and not sex.strip()):
        return None
    word = _SEX_WORDS.get(str(sex).strip().lower())
    if word is None:
        raise ValueError(f"sex must be one of M, F, male, female (or None), got {sex!r}")
    return word


def _clean_indication(indication: Any) -> str | None:
    if _is_missing(indication):
        return None
    text = " ".join(str(indication).split()).strip()
    if not text:
        return None
    text = text.lower().rstrip(".").strip()
    for mark in (",", ";", ":", "?", "(", ")"):
        text = text.replace(mark, f" {mark} ")
    return " ".join(text.split())


def clinical_context(age: Any = None, sex: Any = None, indication: Any = None) -> str:
    """``"patient : 63 year old female . indication : chest pain ."`` (parts that are given)."""
    parts = []
    age_text, sex_text = _age_phrase(age), _sex_word(sex)
    if age_text or sex_text:
        who = " ".join(p for p in (age_text, sex_text) if p)
        parts.append(f"patient : {who} .")
    ind = _clean_indication(indication)
    if ind:
        parts.append(f"indication : {ind} .")
    return " ".join(parts)


def build_prompt(
    task: str = "findings",
    style: str | None = None,
    age: Any = None,
    sex: Any = None,
    indication: Any = None,
) -> str:
    """The instruction text for one study.

    Args:
        task: ``"findings"`` (free-text findings), ``"json"`` (structured findings, R2Gen2's
            structured model) or ``"style"`` (findings in a radiologist's style).
        style: ``"narrative"`` or ``"sectioned"``; required for ``task="style"`` only.
        age, sex, indication: optional clinical context c of case study §2 (``None``/NaN omitted;
            sex accepts M/F/male/female).

    Returns:
        e.g. ``"<findings> patient : 63 year old female . indication : dyspnea . write the
        findings section of the report for this chest x-ray ."``
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}; choose one of {TASKS}")
    if task == "style":
        if style not in STYLES:
            raise ValueError(f"task='style' needs style in {STYLES}, got {style!r}")
        head, instruction = f"<style:{style}>", INSTRUCTIONS["style"].format(style=style)
    else:
        if style is not None:
            raise ValueError(f"style={style!r} is only used with task='style'")
        head, instruction = TASK_TOKENS[task], INSTRUCTIONS[task]
    context = clinical_context(age, sex, indication)
    return " ".join(p for p in (head, context, instruction) if p)


def prompt_from_metadata(
    meta: dict[str, Any], task: str = "findings", style: str | None = None
) -> str:
    """:func:`build_prompt` with the context read from a dataset ``metadata`` dict."""
    return build_prompt(task, style, meta.get("age"), meta.get("sex"), meta.get("indication"))


def prompt_corpus(ages: Iterable[int] = range(0, 121)) -> list[str]:
    """Every fixed prompt phrase (all tasks, styles, sexes and ages), for tokenizer training.

    Indication words come from the reports' indication field: train the tokenizer on those too.
    """
    texts = [build_prompt("findings"), build_prompt("json")]
    texts += [build_prompt("style", style=s) for s in STYLES]
    texts += [clinical_context(age=a, sex=s) for a in ages for s in ("male", "female")]
    texts.append(clinical_context(indication="x"))
    return texts


# ---------------------------------------------------------------------- ids
def _special_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None)
    return int(value) if value is not None else None


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """``[<bos>] + tokens(prompt)``: the text part of a generation input (no ``<eos>``)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = _special_id(tokenizer, "bos")
    return ([bos] if bos is not None else []) + ids


def encode_example(
    tokenizer: Any, prompt: str, target: str | None = None, max_length: int | None = None
) -> dict[str, list[int]]:
    """Ids and LM targets of one training example: ``[<bos>] prompt target <eos>``.

    Returns ``{"input_ids": [...], "labels": [...]}`` of equal length; labels are ``-100`` on
    ``<bos>`` and the prompt (the model never learns to predict its own instruction) and equal
    to the ids on the target and ``<eos>``. ``max_length`` truncates the *target* so that the
    whole example fits, keeping ``<eos>``.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    if target is None:
        return {"input_ids": prompt_ids, "labels": [IGNORE_INDEX] * len(prompt_ids)}
    if not isinstance(target, str) or not target.strip():
        raise ValueError("target report is empty")
    eos = _special_id(tokenizer, "eos")
    if eos is None:
        raise ValueError("the tokenizer has no eos token: generation could never stop")
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    if max_length is not None:
        room = max_length - len(prompt_ids) - 1
        if room < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for the target after a "
                f"{len(prompt_ids)}-token prompt"
            )
        target_ids = target_ids[:room]
    target_ids = target_ids + [eos]
    return {
        "input_ids": prompt_ids + target_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
    }


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    side: str = "right",
    value_for_labels: bool = False,
) -> tuple[list[list[int]], list[list[int]]]:
    """Pad id lists to one length -> (padded ids, attention mask). Labels pad with -100."""
    if side not in ("left", "right"):
        raise ValueError(f"side={side!r}; choose 'left' or 'right'")
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    length = max(len(s) for s in sequences)
    fill = IGNORE_INDEX if value_for_labels else pad_id
    ids, mask = [], []
    for seq in sequences:
        pad = [fill] * (length - len(seq))
        ones, zeros = [1] * len(seq), [0] * (length - len(seq))
        ids.append(list(seq) + pad if side == "right" else pad + list(seq))
        mask.append(ones + zeros if side == "right" else zeros + ones)
    return ids, mask
