"""The course's own chest X-ray encoder: a small ViT pretrained on the embedded dataset.

A frozen encoder only helps if it was pretrained, and offline nothing can be downloaded. So the
``tiny`` profile pretrains a small ``ViTForImageClassification`` (supervised, multi-label BCE on
the 14 CheXpert labels, uncertain labels ignored, unmentioned ones negative) on the embedded training split:
the offline stand-in for the case study's "ViT fine-tuned on CheXpert". It is saved with
``save_pretrained`` and loaded with ``from_pretrained`` exactly like a hub checkpoint.

``fit_encoder`` works on tensors (testable on any fixture); ``pretrain_encoder`` reads the
dataset, trains, reports per-label AUROC and saves; ``ensure_pretrained_encoder`` builds the cached
copy once (``python -m course_utils pretrain-encoder``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from .components import detection_targets
from .configuration import TINY_VISION

METRICS_NAME = "pretraining_metrics.json"
ENCODER_VERSION = 3
"""Bumped whenever the default recipe changes, so a cached encoder from an older one is rebuilt."""
FINDING_BOXES_CSV = "phantom_findings.csv"
IMAGE_MEAN, IMAGE_STD = 0.5, 0.5  # must match ModelConfig.tiny's normalisation
logger = logging.getLogger(__name__)


def _label_names(num_labels: int) -> list[str]:
    try:
        from ..labels import CHEXPERT_LABELS
    except ImportError:  # labels module not importable: generic names keep training usable
        return [f"label_{k}" for k in range(num_labels)]
    if len(CHEXPERT_LABELS) != num_labels:
        return [f"label_{k}" for k in range(num_labels)]
    return list(CHEXPERT_LABELS)


def _check_pixels_labels(pixels: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != 1:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"{what} pixels must be a (N, 1, S, S) tensor, got {shape}")
    if pixels.shape[2] != pixels.shape[3]:
        raise ValueError(f"{what} images must be square, got {tuple(pixels.shape[2:])}")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dim() != 2
        or labels.shape[0] != pixels.shape[0]
    ):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{what} labels must be (N, K) with N={pixels.shape[0]}, got {shape}")
    if pixels.shape[0] == 0:
        raise ValueError(f"{what} split is empty")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{what} pixels must be in [0, 1], got [{lo:.3g}, {hi:.3g}]")


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] grayscale -> the encoder's input scale ``(x - 0.5) / 0.5``."""
    return (pixels - IMAGE_MEAN) / IMAGE_STD


def _augment(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation (±max_shift px, edge-padded) and mild contrast/brightness jitter."""
    if max_shift > 0:
        n, _, s, _ = x.shape
        padded = F.pad(x, (max_shift,) * 4, mode="replicate")
        dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
        x = torch.stack([padded[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(n)])
    gain = 1 + 0.1 * (torch.rand(x.shape[0], 1, 1, 1, generator=generator) - 0.5)
    bias = 0.05 * (torch.rand(x.shape[0], 1, 1, 1, generator=generator) - 0.5)
    return (x * gain + bias).clamp(0, 1)


def per_label_auroc(
    probs: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    names: Sequence[str] | None = None,
    uncertain_policy: str = "ignore",
    blank_policy: str = "negative",
) -> dict[str, float]:
    """AUROC of each label; NaN when the label has only one class among the counted studies.

    ``labels`` hold 1 / 0 / -1 / NaN, mapped as in :func:`detection_targets`: by default
    uncertain studies are left out and blanks count as negatives (the phantom renderer draws
    nothing for an unmentioned finding).
    """
    from sklearn.metrics import roc_auc_score

    probs_t = torch.as_tensor(np.asarray(probs), dtype=torch.float32)
    y, mask = detection_targets(
        torch.as_tensor(np.asarray(labels), dtype=torch.float32), uncertain_policy, blank_policy
    )
    if probs_t.shape != y.shape:
        raise ValueError(f"probs shape {tuple(probs_t.shape)} != labels shape {tuple(y.shape)}")
    names = list(names) if names is not None else _label_names(y.shape[1])
    out = {}
    for k, name in enumerate(names):
        yk, pk = y[mask[:, k], k].numpy(), probs_t[mask[:, k], k].numpy()
        both = yk.size and 0 < yk.sum() < yk.size
        out[name] = float(roc_auc_score(yk, pk)) if both else float("nan")
    return out


def macro_auroc(aurocs: dict[str, float]) -> float:
    """Mean AUROC over the labels where it is defined (NaN if none)."""
    values = [v for v in aurocs.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


@torch.no_grad()
def predict_probs(
    model: ViTForImageClassification, pixels: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Sigmoid probabilities (N, K) of a pretrained classifier on [0, 1] images (N, 1, S, S)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [
        torch.sigmoid(
            model(pixel_values=normalize_pixels(pixels[i : i + batch_size].to(device))).logits
        ).cpu()
        for i in range(0, pixels.shape[0], batch_size)
    ]
    model.train(was_training)
    return torch.cat(out)


def patch_grid(image_size: int, patch_size: int) -> int:
    """Patches per side: ``image_size // patch_size`` (must divide exactly)."""
    if image_size % patch_size:
        raise ValueError(
            f"image size {image_size} is not a multiple of the patch size {patch_size}"
        )
    return image_size // patch_size


def patch_targets_from_boxes(
    boxes: pd.DataFrame,
    dicom_ids: Sequence[str],
    labels: torch.Tensor,
    label_names: Sequence[str],
    image_size: int,
    patch_size: int,
    box_image_size: int | None = None,
) -> torch.Tensor:
    """Per-patch finding targets (N, G·G, K) from finding boxes, for token labelling.

    Args:
        boxes: rows ``dicom_id, label, status, x0, y0, x1, y1`` (pixel boxes, the embedded
            dataset's ``phantom_findings.csv``).
        dicom_ids: the image of each row of ``labels``.
        labels: (N, K) image-level labels; a label that is positive or uncertain in the image
            but has no positive box, and every label without boxes at all ("No Finding"),
            gets NaN (ignored) in every patch.
        image_size, patch_size: the encoder input and its patches (G = image_size / patch_size).
        box_image_size: the side the boxes were drawn at (default ``image_size``).

    Returns:
        1 where a positive finding's box overlaps the patch, NaN where only an uncertain one
        does, 0 elsewhere.
    """
    missing = {"dicom_id", "label", "status", "x0", "y0", "x1", "y1"} - set(boxes.columns)
    if missing:
        raise ValueError(f"finding boxes lack column(s) {sorted(missing)}")
    g = patch_grid(image_size, patch_size)
    scale = image_size / float(box_image_size or image_size)
    n, k = labels.shape
    out = torch.zeros(n, k, g, g)
    column = {name: j for j, name in enumerate(label_names)}
    row_of = {d: i for i, d in enumerate(dicom_ids)}
    has_box = torch.zeros(n, k, dtype=torch.bool)
    for rec in boxes.itertuples(index=False):
        i, j = row_of.get(rec.dicom_id), column.get(rec.label)
        if i is None or j is None:
            continue
        # patches overlapped by the box [x0, x1) x [y0, y1) (pixel coordinates)
        c0, c1 = int(rec.x0 * scale) // patch_size, math.ceil(rec.x1 * scale / patch_size)
        r0, r1 = int(rec.y0 * scale) // patch_size, math.ceil(rec.y1 * scale / patch_size)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(max(c1, c0 + 1), g), min(max(r1, r0 + 1), g)
        region = out[i, j, r0:r1, c0:c1]
        if float(rec.status) == 1.0:
            out[i, j, r0:r1, c0:c1] = 1.0
            has_box[i, j] = True
        else:  # uncertain finding: drawn faintly, neither 0 nor 1
            out[i, j, r0:r1, c0:c1] = torch.where(region == 1.0, region, torch.nan)
    image_positive = (labels == 1) | (labels == -1)
    unknown = image_positive & ~has_box
    out[unknown] = float("nan")
    out[:, ~has_box.any(0)] = float("nan")  # labels never boxed (e.g. "No Finding")
    return out.flatten(2).transpose(1, 2)  # (N, G*G, K)


@torch.no_grad()
def init_patch_embedding_pca(
    model: ViTForImageClassification, pixels: torch.Tensor, max_patches: int = 20000, seed: int = 0
) -> None:
    """Data-dependent init: the patch embedding projects patches on their principal components.

    Each of the ``hidden_size`` filters is a principal component of (normalised) training
    patches, so from step one every patch token summarises its patch instead of a random
    projection of it. Components are scaled by ``1/sqrt(eigenvalue + mean eigenvalue)``: close
    to whitening for the strong ones without blowing the weakest (pixel noise) up to unit size.
    """
    conv = model.vit.embeddings.patch_embeddings.projection
    p, hidden = conv.kernel_size[0], conv.out_channels
    if p * p * conv.in_channels < hidden:
        return  # fewer pixels per patch than filters: keep the random init
    x = normalize_pixels(pixels.float())
    patches = (
        F.unfold(x, kernel_size=p, stride=p).transpose(1, 2).reshape(-1, p * p * conv.in_channels)
    )
    g = torch.Generator().manual_seed(seed)
    if patches.shape[0] > max_patches:
        patches = patches[torch.randperm(patches.shape[0], generator=g)[:max_patches]]
    mean = patches.mean(0)
    cov = torch.cov((patches - mean).T)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    strong = eigvals[-hidden:].flip(0).clamp(min=0)
    top = eigvecs[:, -hidden:].flip(1) / (strong + strong.mean() + 1e-8).sqrt()
    weight = top.T.reshape(hidden, conv.in_channels, p, p)
    conv.weight.copy_(weight)
    conv.bias.copy_(-(top.T @ mean))


def sincos_position_embedding(grid: int, dim: int) -> torch.Tensor:
    """(grid·grid, dim) fixed 2-D sine-cosine position code (as in MAE), rows then columns."""
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be a multiple of 4 for a 2-D sin-cos code")
    omega = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    axis = torch.arange(grid, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    angle_y, angle_x = ys.reshape(-1, 1) * omega, xs.reshape(-1, 1) * omega
    return torch.cat([angle_y.sin(), angle_y.cos(), angle_x.sin(), angle_x.cos()], dim=1)


@torch.no_grad()
def init_position_embedding_sincos(model: ViTForImageClassification) -> None:
    """Start the (trainable) patch position embeddings from a 2-D sin-cos code.

    Hugging Face initialises them with std 0.02, far below the patch content, so a small ViT
    first has to *learn* where each patch is; a sin-cos start gives it that for free.
    """
    emb = model.vit.embeddings.position_embeddings  # (1, 1 + G*G, hidden)
    grid = int(math.isqrt(emb.shape[1] - 1))
    emb[0, 1:] = sincos_position_embedding(grid, emb.shape[2])


def _forward_with_tokens(
    model: ViTForImageClassification, token_head: nn.Linear | None, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(CLS logits (B, K), patch-token logits (B, G·G, K) or None)."""
    hidden = model.vit(pixel_values=x).last_hidden_state
    logits = model.classifier(hidden[:, 0])
    return logits, token_head(hidden[:, 1:]) if token_head is not None else None


def fit_encoder(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    *,
    val_pixels: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    patch_targets: torch.Tensor | None = None,
    token_weight: float = 1.0,
    pca_init: bool = True,
    vit_config: dict[str, Any] | None = None,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    max_shift: int = 0,
    pos_weight_cap: float = 10.0,
    oversample_cap: float = 10.0,
    seed: int = 42,
    progress: bool = True,
    label_names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[ViTForImageClassification, dict[str, Any]]:
    """Train a small ViT multi-label classifier on tensors.

    Args:
        pixels: (N, 1, S, S) grayscale in [0, 1].
        labels: (N, K) CheXpert values 1 / 0 / -1 / NaN; uncertain (-1) is masked out of the
            loss, blank (NaN) counts as negative (an unmentioned finding is not drawn).
        val_pixels, val_labels: optional validation split, scored (macro AUROC) after each epoch.
        patch_targets: optional (N, G·G, K) per-patch targets (1 / 0 / NaN = ignore), e.g. from
            :func:`patch_targets_from_boxes`. Token labelling: a linear head on every patch token
            learns *where* each finding is, which trains a small ViT far faster than the image
            label alone and makes the patch tokens (the LM's visual tokens) carry local findings.
        token_weight: weight of the token-labelling loss.
        pca_init: initialise the patch embedding with :func:`init_patch_embedding_pca` and the
            position embeddings with :func:`init_position_embedding_sincos`.
        vit_config: ``ViTConfig`` kwargs (default: :data:`TINY_VISION` at ``image_size=S``).
        epochs, batch_size, lr, weight_decay: AdamW with linear warm-up (1 epoch) and cosine decay.
        max_shift: augmentation translation in pixels (0, the default, disables it: the phantom
            renderer already varies exposure, noise and rotation; not allowed with patch targets).
        pos_weight_cap: rare positives are up-weighted by min(neg/pos, cap) in the BCE.
        oversample_cap: images are drawn with replacement, each weighted by the largest
            ``min(cap, median positives / positives of k)`` over its positive labels, so a
            label with a dozen positives is seen as often as a common one (1.0: plain shuffle).
        device: where to train (``"cuda"`` on Colab); the returned model is on the CPU.

    Returns:
        (model in eval mode, history) with per-epoch ``train_loss`` and ``val_macro_auroc``,
        and ``train_seconds``. The token head is not part of the model (it is only a teacher).
    """
    _check_pixels_labels(pixels, labels, "train")
    if val_pixels is not None:
        if val_labels is None:
            raise ValueError("val_pixels given without val_labels")
        _check_pixels_labels(val_pixels, val_labels, "val")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    n, num_labels = labels.shape
    names = list(label_names) if label_names is not None else _label_names(num_labels)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cfg = dict(TINY_VISION, image_size=int(pixels.shape[-1]))
    cfg.update(vit_config or {})
    config = ViTConfig(
        **cfg,
        num_labels=num_labels,
        problem_type="multi_label_classification",
        id2label=dict(enumerate(names)),
        label2id={name: k for k, name in enumerate(names)},
    )
    model = ViTForImageClassification(config)
    if pca_init:
        init_patch_embedding_pca(model, pixels, seed=seed)
        init_position_embedding_sincos(model)
    token_head = None
    if patch_targets is not None:
        g = patch_grid(config.image_size, config.patch_size)
        if patch_targets.shape != (n, g * g, num_labels):
            raise ValueError(
                f"patch_targets must be (N, G*G, K) = {(n, g * g, num_labels)}, "
                f"got {tuple(patch_targets.shape)}"
            )
        if max_shift:
            raise ValueError("max_shift must be 0 with patch_targets (shifts would move the boxes)")
        token_head = nn.Linear(config.hidden_size, num_labels)

    targets, mask = detection_targets(labels.float(), "ignore", "negative")
    positives = (targets * mask).sum(0)
    negatives = ((1 - targets) * mask).sum(0)
    pos_weight = (negatives / positives.clamp(min=1)).clamp(min=1.0, max=pos_weight_cap)

    params = list(model.parameters()) + (list(token_head.parameters()) if token_head else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    sample_weights = _oversample_weights(targets * mask, oversample_cap)
    model.to(device)
    if token_head is not None:
        token_head.to(device)
    history: dict[str, Any] = {"train_loss": [], "val_macro_auroc": []}
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="pretrain encoder", disable=not progress)
    for _epoch in bar:
        model.train()
        if sample_weights is None:
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
        losses = []
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            x = pixels[idx].float()
            if max_shift > 0:
                x = _augment(x, generator, max_shift)
            x = normalize_pixels(x).to(device)
            logits, token_logits = _forward_with_tokens(model, token_head, x)
            y, m = targets[idx].to(device), mask[idx].to(device)
            per = F.binary_cross_entropy_with_logits(
                logits, y, pos_weight=pos_weight.to(device), reduction="none"
            )
            loss = per[m].mean() if bool(m.any()) else logits.sum() * 0
            if token_logits is not None and patch_targets is not None:
                pt = patch_targets[idx].to(device)
                known = ~torch.isnan(pt)
                if bool(known.any()):
                    tok = F.binary_cross_entropy_with_logits(
                        token_logits[known], pt[known], reduction="mean"
                    )
                    loss = loss + token_weight * tok
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        history["train_loss"].append(float(np.mean(losses)))
        if val_pixels is not None:
            val = macro_auroc(per_label_auroc(predict_probs(model, val_pixels), val_labels, names))
            history["val_macro_auroc"].append(val)
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", val_auroc=f"{val:.3f}")
        else:
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}")
    history["train_seconds"] = time.perf_counter() - start
    model.to("cpu")
    model.eval()
    return model, history


def _oversample_weights(positives: torch.Tensor, cap: float) -> torch.Tensor | None:
    """Per-image sampling weights (N,) that lift rare labels towards the median count.

    ``positives`` is the (N, K) 0/1 matrix of known positives. ``None`` when ``cap <= 1``.
    """
    if cap <= 1.0:
        return None
    counts = positives.sum(0)
    present = counts > 0
    if not bool(present.any()):
        return None
    median = counts[present].median()
    boost = (median / counts.clamp(min=1)).clamp(min=1.0, max=cap) * present
    weights = (positives * boost).amax(dim=1).clamp(min=1.0)
    return weights / weights.sum()


def rerender_rare_positives(
    data: dict[str, Any],
    names: Sequence[str],
    image_size: int,
    min_positives: int = 96,
    max_copies: int = 8,
    seed: int = 42,
) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame, list[str]]:
    """Extra phantom renders of the training studies that carry a rare label.

    A label with a dozen positive studies (pneumothorax in IU) cannot be learned from a dozen
    images, however often they are repeated. The phantom renderer can do what a hospital
    cannot: image the *same findings* again on another patient, exposure and noise. Each
    training study whose rarest positive label has ``c < min_positives`` positives is rendered
    ``min(max_copies, ceil(min_positives / c) - 1)`` more times (frontal view, new anatomy,
    acquisition and texture seeds; same labels, so same report).

    Args:
        data: the training split (``load_mimic_cxr_dataset`` dict with ``reports``, ``labels``
            and ``metadata``).
        names: label names, aligned with the columns of ``data["labels"]``.
        image_size: render side in pixels.

    Returns:
        ``(pixels (M, 1, S, S), labels (M, K), boxes, dicom_ids)``: the new images, their
        labels, finding boxes in ``phantom_findings.csv`` form and made-up ids (M may be 0).
    """
    from ..data.phantom import render_phantom, resolve_findings, sample_acquisition, sample_anatomy
    from ..labels import label_report

    labels = torch.as_tensor(np.asarray(data["labels"]), dtype=torch.float32)
    positives = labels == 1.0
    counts = positives.sum(0)
    copies = torch.zeros(labels.shape[0], dtype=torch.long)
    for k in range(labels.shape[1]):
        c = int(counts[k])
        if 0 < c < min_positives:
            extra = min(max_copies, math.ceil(min_positives / c) - 1)
            copies[positives[:, k]] = torch.clamp(copies[positives[:, k]], min=extra)
    images, rows, new_labels, ids = [], [], [], []
    for i in torch.nonzero(copies).flatten().tolist():
        meta = data["metadata"][i]
        parsed = label_report(str(data["reports"][i]))
        values = {
            n: (None if math.isnan(v) else float(v))
            for n, v in zip(names, labels[i].tolist(), strict=True)
        }
        for c in range(int(copies[i])):
            rng = np.random.default_rng([seed, 11, i, c])
            specs = resolve_findings(values, parsed.mentions, rng)
            sex = meta.get("sex") if meta.get("sex") in ("M", "F") else None
            anatomy = sample_anatomy(rng, sex)
            phantom = render_phantom(
                specs, anatomy, sample_acquisition(rng), image_size, "PA", int(rng.integers(2**31))
            )
            dicom = f"rerender-{i}-{c}"
            images.append(torch.from_numpy(phantom.image)[None])
            new_labels.append(labels[i])
            ids.append(dicom)
            rows += [dict(dicom_id=dicom, **vars(f)) for f in phantom.findings]
    if not images:
        empty = torch.zeros(0, 1, image_size, image_size)
        return empty, labels[:0], pd.DataFrame(columns=["dicom_id", "label", "status"]), []
    return torch.stack(images), torch.stack(new_labels), pd.DataFrame(rows), ids


def _built_image_size(dataset_dir: Path, default: int) -> int:
    """Side of the images the finding boxes were drawn on (the embedded dataset's build size)."""
    info = dataset_dir / "embedded_dataset.json"
    if info.is_file():
        try:
            return int(json.loads(info.read_text()).get("image_size", default))
        except (ValueError, json.JSONDecodeError):
            return default
    return default


def _data_version(dataset_dir: Path) -> str | None:
    """The embedded dataset's build version (None for other datasets)."""
    info = dataset_dir / "embedded_dataset.json"
    try:
        return str(json.loads(info.read_text()).get("version"))
    except (OSError, json.JSONDecodeError):
        return None


def _label_counts(labels: torch.Tensor, names: Sequence[str]) -> dict[str, dict[str, int]]:
    out = {}
    for k, name in enumerate(names):
        col = labels[:, k]
        out[name] = {
            "positive": int((col == 1).sum()),
            "negative": int((col == 0).sum()),
            "uncertain": int((col == -1).sum()),
        }
    return out


def pretrain_encoder(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_size: int = 128,
    epochs: int = 30,
    seed: int = 42,
    progress: bool = True,
    token_labels: bool = True,
    rerender_min_positives: int = 96,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Pretrain the course encoder on a MIMIC-CXR-JPG-layout dataset and save it.

    Trains on ``train``, picks nothing on ``val`` (reported only), reports per-label AUROC on
    ``val`` and ``test``. Writes ``config.json`` + ``model.safetensors`` (``save_pretrained``)
    and ``pretraining_metrics.json`` to ``out_dir``. With ``token_labels`` and a
    ``phantom_findings.csv`` (the embedded dataset's finding boxes) in ``dataset_dir``, the patch
    tokens are also trained to say which findings they overlap (see :func:`fit_encoder`).
    Training studies with a rare label are re-rendered until each such label has about
    ``rerender_min_positives`` images (:func:`rerender_rare_positives`; 0 disables it).

    Returns:
        the metrics dict: ``val_auroc`` / ``test_auroc`` (label -> AUROC, NaN where a label has
        one class only), ``val_macro_auroc`` / ``test_macro_auroc``, ``train_seconds``,
        ``label_counts`` (train split), sizes and settings.
    """
    from ..data import load_mimic_cxr_dataset

    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {dataset_dir}")
    splits = {
        split: load_mimic_cxr_dataset(dataset_dir, split, image_size=image_size, load_pixels=True)
        for split in ("train", "val", "test")
    }
    for split, data in splits.items():
        if "pixels" not in data:
            raise ValueError(f"load_mimic_cxr_dataset returned no pixels for split {split!r}")
    names = _label_names(splits["train"]["labels"].shape[1])
    train_pixels = splits["train"]["pixels"]
    train_labels = torch.as_tensor(np.asarray(splits["train"]["labels"]), dtype=torch.float32)
    train_ids = [m["dicom_id"] for m in splits["train"]["metadata"]]
    boxes_csv = dataset_dir / FINDING_BOXES_CSV
    box_size = _built_image_size(dataset_dir, image_size)
    boxes = pd.read_csv(boxes_csv) if boxes_csv.is_file() else None
    n_rerendered = 0
    if rerender_min_positives > 0 and boxes is not None:  # phantom data only: re-render it
        extra_pixels, extra_labels, extra_boxes, extra_ids = rerender_rare_positives(
            splits["train"], names, image_size, rerender_min_positives, seed=seed
        )
        n_rerendered = len(extra_ids)
        train_pixels = torch.cat([train_pixels, extra_pixels])
        train_labels = torch.cat([train_labels, extra_labels])
        train_ids = train_ids + extra_ids
        if boxes is not None and n_rerendered:
            # re-rendered boxes are in image_size pixels; rescale them to the CSV's frame
            extra_boxes = extra_boxes.copy()
            for col in ("x0", "y0", "x1", "y1"):
                extra_boxes[col] = extra_boxes[col] * box_size / image_size
            boxes = pd.concat([boxes, extra_boxes], ignore_index=True)
    if token_labels and boxes is not None and "patch_targets" not in fit_kwargs:
        cfg = dict(TINY_VISION, **fit_kwargs.get("vit_config", {}))
        fit_kwargs["patch_targets"] = patch_targets_from_boxes(
            boxes,
            train_ids,
            train_labels,
            names,
            image_size,
            int(cfg["patch_size"]),
            box_image_size=box_size,
        )
    model, history = fit_encoder(
        train_pixels,
        train_labels,
        val_pixels=splits["val"]["pixels"],
        val_labels=splits["val"]["labels"],
        epochs=epochs,
        seed=seed,
        progress=progress,
        label_names=names,
        **fit_kwargs,
    )
    metrics: dict[str, Any] = {
        "image_size": image_size,
        "seed": seed,
        "epochs": epochs,
        "train_seconds": history["train_seconds"],
        "train_loss": history["train_loss"],
        "val_macro_auroc_per_epoch": history["val_macro_auroc"],
        "n_train": int(splits["train"]["pixels"].shape[0]),
        "n_rerendered": n_rerendered,
        "n_val": int(splits["val"]["pixels"].shape[0]),
        "n_test": int(splits["test"]["pixels"].shape[0]),
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "label_counts": _label_counts(train_labels, names),
        "token_labels": "patch_targets" in fit_kwargs,
        "encoder_version": ENCODER_VERSION,
        "data_version": _data_version(dataset_dir),
        "vit_config": {k: v for k, v in model.config.to_dict().items() if k in TINY_VISION},
    }
    for split in ("val", "test"):
        aurocs = per_label_auroc(
            predict_probs(model, splits[split]["pixels"]), splits[split]["labels"], names
        )
        metrics[f"{split}_auroc"] = aurocs
        metrics[f"{split}_macro_auroc"] = macro_auroc(aurocs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    (out_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2, allow_nan=True))
    return metrics


def load_pretrained_encoder(
    path: str | os.PathLike, with_head: bool = False
) -> ViTModel | ViTForImageClassification:
    """``from_pretrained`` on a saved course encoder: the bare ``ViTModel`` (CLS + patch tokens)
    or, with ``with_head=True``, the ``ViTForImageClassification`` with its CheXpert head."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no pretrained encoder at {path} (config.json missing)")
    if with_head:
        return ViTForImageClassification.from_pretrained(path)
    from transformers.utils import logging as hf_logging

    # The checkpoint holds the pretraining classifier too; dropping it is expected, not news.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return ViTModel.from_pretrained(path, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(previous)


def load_pretraining_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """The ``pretraining_metrics.json`` written next to a pretrained encoder."""
    file = Path(path) / METRICS_NAME
    if not file.is_file():
        raise FileNotFoundError(f"no pretraining metrics at {file}")
    return json.loads(file.read_text())


def default_encoder_dir(image_size: int = 128, seed: int = 42) -> Path:
    """``data_cache_dir()/encoder-vit-{image_size}px-seed{seed}``."""
    from ..config import data_cache_dir

    return data_cache_dir() / f"encoder-vit-{image_size}px-seed{seed}"


def _is_complete(path: Path) -> bool:
    """All files present and written by the current recipe and data (both versions match)."""
    names = ("config.json", "model.safetensors", METRICS_NAME)
    if not all((path / name).is_file() for name in names):
        return False
    try:
        metrics = json.loads((path / METRICS_NAME).read_text())
    except json.JSONDecodeError:
        return False
    from ..data.embedded import EMBEDDED_VERSION

    return (
        isinstance(metrics, dict)
        and metrics.get("encoder_version") == ENCODER_VERSION
        and metrics.get("data_version") == EMBEDDED_VERSION
    )


def ensure_pretrained_encoder(
    image_size: int = 128,
    seed: int = 42,
    progress: bool = False,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """Path of the cached course encoder, pretraining it first when missing.

    Builds the embedded dataset on the way if needed (``course_utils.data.ensure_embedded_dataset``).
    The copy is written to a temporary folder and renamed into place, so an interrupted run never
    leaves a half-written encoder behind.
    """
    from ..config import cache_lock

    target = Path(out_dir) if out_dir is not None else default_encoder_dir(image_size, seed)
    if _is_complete(target):
        return target
    with cache_lock(f"encoder-{image_size}-{seed}"):
        if _is_complete(target):  # built by another process while we waited
            return target
        return _build_encoder(target, image_size, seed, progress)


def _build_encoder(target: Path, image_size: int, seed: int, progress: bool) -> Path:
    from ..data import ensure_embedded_dataset

    dataset = ensure_embedded_dataset(image_size=image_size, seed=seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        metrics = pretrain_encoder(
            dataset, tmp, image_size=image_size, seed=seed, progress=progress
        )
        logger.info("course encoder: test macro AUROC %.3f", metrics["test_macro_auroc"])
        if target.exists() and not _is_complete(target):
            shutil.rmtree(target)
        if not target.exists():
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m course_utils pretrain-encoder [--size 128] [--seed 42] [--epochs N] [--force]``.

    Prints where the encoder is and its per-label test AUROC.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="pretrain-encoder", description=main.__doc__)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=None, help="default: pretrain_encoder's")
    parser.add_argument("--force", action="store_true", help="retrain even when cached")
    args = parser.parse_args(argv)
    target = default_encoder_dir(args.size, args.seed)
    if args.force or args.epochs is not None:
        from ..data import ensure_embedded_dataset

        dataset = ensure_embedded_dataset(image_size=args.size, seed=args.seed)
        kwargs = {"epochs": args.epochs} if args.epochs is not None else {}
        pretrain_encoder(dataset, target, image_size=args.size, seed=args.seed, **kwargs)
    else:
        target = ensure_pretrained_encoder(args.size, args.seed, progress=True)
    metrics = load_pretraining_metrics(target)
    print(f"course encoder: {target}")
    print(f"train time {metrics['train_seconds']:.0f} s, {metrics['epochs']} epochs")
    for name, value in metrics["test_auroc"].items():
        print(f"  {name:<28} test AUROC {value:.3f}")
    print(f"  {'macro':<28} test AUROC {metrics['test_macro_auroc']:.3f}")
    return 0
