"""Validation during training: losses, detection AUROC and a fast generation metric.

The fast metric writes greedy reports for a few validation studies and scores what matters for
each target: clinical efficacy (CE micro-F1 of the course labeler's labels, reference = truth)
for findings and styled text, the share of requested styles that :func:`detect_style` reads
back, and the share of JSON outputs that :func:`validate_findings_json` accepts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..model.components import IGNORE_INDEX
from .data import ReportDataset, postprocess_generation
from .optim import model_inputs


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, loader: DataLoader, device: torch.device | str | None = None
) -> dict[str, Any]:
    """Mean losses over a loader and the detection head's probabilities.

    Returns:
        ``loss`` (mean of the combined loss over studies), ``loss_report`` (mean NLL per target
        token over the whole split), ``loss_detect`` (mean over studies), ``n`` (studies),
        ``target_tokens`` and, when the model has a detection head, ``probs`` (N, K) and
        ``labels`` (N, K) tensors on the CPU.
    """
    was_training = model.training
    model.eval()
    n = 0
    tokens = 0
    sums = {"loss": 0.0, "loss_report": 0.0, "loss_detect": 0.0}
    seen = {"loss": False, "loss_report": False, "loss_detect": False}
    probs, labels = [], []
    try:
        for batch in loader:
            out = model(**model_inputs(batch, device))
            b = int(batch["input_ids"].shape[0])
            n_tok = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            n += b
            tokens += n_tok
            if out.loss is not None:
                sums["loss"] += float(out.loss) * b
                seen["loss"] = True
            if getattr(out, "loss_report", None) is not None:
                sums["loss_report"] += float(out.loss_report) * n_tok
                seen["loss_report"] = True
            if getattr(out, "loss_detect", None) is not None:
                sums["loss_detect"] += float(out.loss_detect) * b
                seen["loss_detect"] = True
            if getattr(out, "label_logits", None) is not None:
                probs.append(torch.sigmoid(out.label_logits.float()).cpu())
                labels.append(batch["finding_targets"].cpu())
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate_loss: the loader is empty")
    result: dict[str, Any] = {
        "loss": sums["loss"] / n if seen["loss"] else math.nan,
        "loss_report": sums["loss_report"] / max(tokens, 1) if seen["loss_report"] else math.nan,
        "loss_detect": sums["loss_detect"] / n if seen["loss_detect"] else math.nan,
        "n": n,
        "target_tokens": tokens,
    }
    if probs:
        result["probs"] = torch.cat(probs)
        result["labels"] = torch.cat(labels)
    return result


def detection_macro_auroc(
    probs: torch.Tensor, labels: torch.Tensor
) -> tuple[float, dict[str, float]]:
    """Macro AUROC of the detection head (uncertain studies left out, blanks negative) and the
    per-label AUROCs (NaN where a label has one class only)."""
    from ..model import macro_auroc, per_label_auroc

    per_label = per_label_auroc(probs, labels)
    return macro_auroc(per_label), per_label


@torch.no_grad()
def generate_reports(
    model: nn.Module,
    dataset: ReportDataset,
    indices: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 120,
    num_beams: int = 1,
    progress: bool = False,
) -> list[str]:
    """Generated texts (post-processed, see :func:`postprocess_generation`) for ``indices``.

    Each study is prompted with its own training prompt (same target, style and context), so
    the outputs are comparable with ``dataset.targets``.
    """
    from tqdm.auto import tqdm

    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    out: list[str] = []
    for start in tqdm(
        range(0, len(idx), batch_size), desc="generating", disable=not progress, leave=False
    ):
        chunk = idx[start : start + batch_size]
        images = dataset.pixels[chunk].float()
        prompts = [dataset.prompts[i] for i in chunk]
        texts = model.generate(
            images,
            prompt=prompts,
            tokenizer=dataset.tokenizer,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
        )
        out.extend(postprocess_generation(t, dataset.target) for t in texts)
    return out


def json_to_text(text: str) -> tuple[bool, str]:
    """(is valid findings JSON, its narrative rendering or ``""``)."""
    from ..text import FindingsJSONError, json_to_report, validate_findings_json

    try:
        items = validate_findings_json(text)
    except FindingsJSONError:
        return False, ""
    return True, json_to_report(items)


def generation_metrics(
    generated: Sequence[str],
    references: Sequence[str],
    target: str = "findings",
    requested_styles: Sequence[str | None] | None = None,
) -> dict[str, float]:
    """Scores of generated texts against the reference reports.

    Args:
        generated: model outputs (post-processed).
        references: the studies' reference reports (raw findings text).
        target: ``"findings"``, ``"json"`` or ``"style"``.
        requested_styles: the style named in each prompt (``target="style"``).

    Returns:
        ``ce_micro_f1_14``, ``ce_micro_f1_5``, ``ce_macro_f1_14`` (JSON outputs are rendered with
        :func:`course_utils.text.json_to_report` first, invalid ones count as empty reports),
        plus ``json_valid_rate`` (json) or ``style_adherence`` (style), and ``empty_rate``.
    """
    from ..metrics import clinical_efficacy
    from ..text import detect_style

    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated texts for {len(references)} references")
    if not generated:
        raise ValueError("generation_metrics: nothing to score")
    result: dict[str, float] = {}
    texts = list(generated)
    if target == "json":
        parsed = [json_to_text(t) for t in texts]
        result["json_valid_rate"] = float(np.mean([ok for ok, _ in parsed]))
        texts = [rendered for _, rendered in parsed]
    if target == "style":
        if requested_styles is None or len(requested_styles) != len(texts):
            raise ValueError("target='style' needs one requested style per generated text")
        pairs = zip(texts, requested_styles, strict=True)
        hits = [bool(t.strip()) and detect_style(t) == s for t, s in pairs]
        result["style_adherence"] = float(np.mean(hits))
    result["empty_rate"] = float(np.mean([not t.strip() for t in texts]))
    ce = clinical_efficacy(list(references), texts)
    for key in ("ce_micro_f1_14", "ce_micro_f1_5", "ce_macro_f1_14"):
        result[key] = float(ce.scores[key])
    return result
