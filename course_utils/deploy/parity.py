"""Parity: does the deployed model (INT8, ONNX) say what the full-precision model says?

Three levels, strictest first:

* **logits** - max |Δlogit| on fixed inputs: the encoder graph's outputs against PyTorch
  (float rounding only: ~1e-5), and the INT8 LM's teacher-forced report logits against fp32
  (quantisation error: ~1e-2 to 1e-1), with the share of positions whose top-1 token agrees;
* **text** - identical greedy reports;
* **labels** - the course labeler's 14 CheXpert values of each report agree (what clinical
  efficacy scores). The issue's bar: identical text, or >= 99 % label agreement over the
  test split's study x label pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

MIN_LABEL_AGREEMENT = 0.99
ENCODER_TOLERANCE = 1e-4


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@torch.no_grad()
def torch_encoder_outputs(model: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The PyTorch model's ``visual_tokens``, ``label_logits`` and ``embedding`` for images."""
    model.eval()
    patches, h_cls = model.encode_images(images)
    visual = model.projector(patches.to(model.projector.fc1.weight.dtype))
    logits = model.detection_head(h_cls.to(model.detection_head.linear.weight.dtype))
    return {"visual_tokens": _np(visual), "label_logits": _np(logits), "embedding": _np(h_cls)}


def encoder_parity(
    model: nn.Module, onnx_model: Any, images: torch.Tensor, tolerance: float = ENCODER_TOLERANCE
) -> dict[str, Any]:
    """Max |Δ| between the ONNX encoder graph and PyTorch on ``images`` (B, 1, S, S).

    Returns ``max_abs_diff`` per output, the overall ``max_abs_logit_diff`` (detection logits),
    and ``passed`` (every output within ``tolerance``).
    """
    ref = torch_encoder_outputs(model, images)
    got = onnx_model.encode(images)
    diffs = {name: float(np.abs(got[name] - ref[name]).max()) for name in ref}
    return {
        "max_abs_diff": diffs,
        "max_abs_logit_diff": diffs["label_logits"],
        "tolerance": tolerance,
        "passed": all(d <= tolerance for d in diffs.values()),
    }


@torch.no_grad()
def logits_parity(
    reference: nn.Module,
    candidate: nn.Module,
    batch: dict[str, torch.Tensor],
) -> dict[str, float]:
    """Teacher-forced comparison of two PyTorch models on one collated batch.

    Args:
        batch: ``images``, ``input_ids``, ``attention_mask`` (a :class:`ReportCollator` batch).

    Returns:
        ``max_abs_logit_diff`` / ``mean_abs_logit_diff`` of the report logits over real tokens,
        ``top1_agreement`` (share of those positions with the same argmax token) and
        ``max_abs_label_logit_diff`` (detection head).
    """
    kwargs = {k: batch[k] for k in ("images", "input_ids", "attention_mask")}
    a = reference.eval()(**kwargs)
    b = candidate.eval()(**kwargs)
    real = batch["attention_mask"].bool()
    la, lb = a.logits.float()[real], b.logits.float()[real]
    diff = (la - lb).abs()
    return {
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "top1_agreement": float((la.argmax(-1) == lb.argmax(-1)).float().mean()),
        "max_abs_label_logit_diff": float((a.label_logits - b.label_logits).abs().max()),
    }


def report_labels(texts: Sequence[str]) -> np.ndarray:
    """(N, 14) CheXpert values of each text (1 / 0 / -1, NaN = not mentioned)."""
    from ..labels import label_report

    return np.stack([label_report(t).as_array() for t in texts]) if texts else np.zeros((0, 14))


def label_agreement(reference: Sequence[str], candidate: Sequence[str]) -> dict[str, float]:
    """Agreement of the labeler's values between paired reports.

    Returns ``pair_agreement`` (share of study x label pairs with the same value, "not
    mentioned" counting as a value), ``study_agreement`` (share of studies whose 14 values all
    agree) and ``identical_text`` (share of byte-identical reports).
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference reports for {len(candidate)} candidates")
    if not reference:
        raise ValueError("label_agreement: no reports to compare")
    a, b = report_labels(reference), report_labels(candidate)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return {
        "pair_agreement": float(same.mean()),
        "study_agreement": float(same.all(axis=1).mean()),
        "identical_text": float(
            np.mean([x == y for x, y in zip(reference, candidate, strict=True)])
        ),
        "n_studies": float(len(reference)),
    }


def generation_parity(
    reference: Sequence[str], candidate: Sequence[str], min_agreement: float = MIN_LABEL_AGREEMENT
) -> dict[str, float | bool]:
    """:func:`label_agreement` plus ``passed``: identical text everywhere, or label agreement
    over study x label pairs of at least ``min_agreement`` (the issue's 99 %)."""
    out: dict[str, float | bool] = dict(label_agreement(reference, candidate))
    out["min_agreement"] = min_agreement
    out["passed"] = out["identical_text"] == 1.0 or out["pair_agreement"] >= min_agreement
    return out


__all__ = [
    "ENCODER_TOLERANCE",
    "MIN_LABEL_AGREEMENT",
    "encoder_parity",
    "generation_parity",
    "label_agreement",
    "logits_parity",
    "report_labels",
    "torch_encoder_outputs",
]
