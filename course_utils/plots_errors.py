"""Figures of notebook 07 (error analysis): error counts, confusion matrices, examples,
attention overlays and error rates against prevalence and image quality.

Every function returns the matplotlib ``Figure`` (notebooks display it; tests inspect it).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from .errors import CATEGORIES, CRITICAL_FINDINGS, STATES, confusion_matrix, sensitivity

_COLOURS = dict(
    zip(CATEGORIES, ("#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#7f7f7f"), strict=True)
)


def _gray(image: Any) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32).squeeze()
    if array.ndim != 2:
        raise ValueError(f"expected a grayscale image (S, S) or (1, S, S), got {array.shape}")
    return array


def _overlay(ax: plt.Axes, grid: np.ndarray, size: int, alpha: float) -> None:
    """An attention grid stretched over an (S, S) image (bilinear: display only)."""
    ax.imshow(np.asarray(grid, dtype=float), cmap="inferno", alpha=alpha,
              extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="bilinear")  # fmt: skip


def _draw_boxes(ax: plt.Axes, boxes: Sequence[Sequence[int]]) -> None:
    """Inclusive pixel boxes (x0, y0, x1, y1) as green rectangles."""
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                               edgecolor="lime", linewidth=1.5))  # fmt: skip


def plot_error_counts(counts: pd.DataFrame, title: str = "Errors per finding") -> plt.Figure:
    """Stacked horizontal bars of :func:`course_utils.errors.error_counts` (total row and
    column dropped), one colour per category."""
    table = counts.drop(index="total", errors="ignore")[list(CATEGORIES)]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(table) + 1.5))
    left = np.zeros(len(table))
    for category in CATEGORIES:
        ax.barh(table.index, table[category], left=left, color=_COLOURS[category], label=category)
        left += table[category].to_numpy()
    ax.invert_yaxis()
    ax.set_xlabel("errors (studies)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_confusion_matrices(
    comparison: pd.DataFrame, findings: Sequence[str] = CRITICAL_FINDINGS, bar: float = 0.98
) -> plt.Figure:
    """Reference state x generated state count matrices, one panel per finding, with the
    sensitivity (reference positive -> generated positive) against the ``bar`` in the title."""
    fig, axes = plt.subplots(1, len(findings), figsize=(3.6 * len(findings), 3.8), squeeze=False)
    short = ["pos", "unc", "neg", "n/m"]
    for ax, finding in zip(axes[0], findings, strict=True):
        matrix = confusion_matrix(comparison, finding)
        values = matrix.to_numpy()
        ax.imshow(np.log1p(values), cmap="Blues")
        for (r, c), v in np.ndenumerate(values):
            colour = "white" if np.log1p(v) > 0.6 * np.log1p(values.max()) else "black"
            ax.text(c, r, str(v), ha="center", va="center", fontsize=9, color=colour)
        ax.set_xticks(range(len(STATES)), short)
        ax.set_yticks(range(len(STATES)), short)
        ax.set_xlabel("generated")
        ax.set_ylabel("reference")
        sens = sensitivity(matrix)
        verdict = (
            "n/a"
            if math.isnan(sens)
            else f"{sens:.0%} ({'meets' if sens >= bar else 'below'} {bar:.0%})"
        )
        ax.set_title(f"{finding}\nsensitivity {verdict}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_error_examples(
    examples: pd.DataFrame,
    images: Mapping[Any, Any],
    references: Mapping[Any, str],
    generated: Mapping[Any, str],
    maps: Sequence[np.ndarray | None] | None = None,
    boxes: Sequence[Sequence[Sequence[int]]] | None = None,
    sources: Sequence[str] | None = None,
    wrap: int = 60,
    max_chars: int = 420,
    alpha: float = 0.45,
) -> plt.Figure:
    """One row per example (:func:`course_utils.errors.error_examples`): the image, then the
    reference and generated reports, titled with the category, finding and what went wrong.

    ``images``, ``references`` and ``generated`` map study_id -> image (S, S) / text.
    ``maps`` (one attention grid or None per example row), ``boxes`` (the phantom's boxes of
    the example's finding) and ``sources`` (what each map is, e.g. "lm") overlay the image.
    """
    if examples.empty:
        raise ValueError("no examples to plot")
    n = len(examples)
    for name, extra in (("maps", maps), ("boxes", boxes), ("sources", sources)):
        if extra is not None and len(extra) != n:
            raise ValueError(f"{name} needs one entry per example ({n}), got {len(extra)}")
    fig, axes = plt.subplots(n, 2, figsize=(11, 2.9 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.6]})  # fmt: skip

    def short(text: str) -> str:
        text = " ".join(text.split()) or "(empty)"
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    for k, (row, ex) in enumerate(zip(axes, examples.itertuples(index=False), strict=True)):
        sid = ex.study_id
        img = _gray(images[sid])
        row[0].imshow(img, cmap="gray", vmin=0, vmax=1)
        label = f"study {sid}"
        if maps is not None and maps[k] is not None:
            _overlay(row[0], maps[k], img.shape[0], alpha)
            label += f" · {sources[k]}" if sources is not None else ""
        if boxes is not None:
            _draw_boxes(row[0], boxes[k])
        row[0].set_title(label, fontsize=8)
        body = (f"REFERENCE: {textwrap.fill(short(references[sid]), wrap)}\n\n"
                f"GENERATED: {textwrap.fill(short(generated[sid]), wrap)}")  # fmt: skip
        row[1].text(0, 1, body, va="top", ha="left", fontsize=8, family="monospace",
                    transform=row[1].transAxes)  # fmt: skip
        row[1].set_title(f"{ex.category.upper()} · {ex.finding} · {ex.detail}", fontsize=9,
                         loc="left", color=_COLOURS.get(ex.category, "black"))  # fmt: skip
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig


def plot_attention_maps(
    images: Sequence[Any],
    maps: Sequence[np.ndarray],
    boxes: Sequence[Sequence[Sequence[int]]],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    alpha: float = 0.45,
) -> plt.Figure:
    """Attention grids overlaid on their images (bilinear upsampling for display only) with
    the phantom's finding boxes drawn in green."""
    if not (len(images) == len(maps) == len(boxes)):
        raise ValueError("need one map and one box list per image")
    nrows = max(1, math.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (image, grid, own) in enumerate(zip(images, maps, boxes, strict=True)):
        ax = axes.flat[k]
        img = _gray(image)
        size = img.shape[0]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        _overlay(ax, grid, size, alpha)
        _draw_boxes(ax, own)
        if titles is not None:
            ax.set_title(titles[k], fontsize=8)
    fig.tight_layout()
    return fig


_SHORT = {
    "Enlarged Cardiomediastinum": "Enl. cardiomed.", "Lung Opacity": "Opacity",
    "Lung Lesion": "Lesion", "Pleural Effusion": "Effusion", "Pleural Other": "Pleural other",
    "Support Devices": "Devices",
}  # fmt: skip


def plot_error_vs_prevalence(
    rates: pd.DataFrame, title: str = "Error rate vs prevalence"
) -> plt.Figure:
    """Miss rate and hallucination rate per finding (:func:`course_utils.errors.error_rates`)
    against its prevalence, log-scaled x; marker area grows with the rate's denominator
    (reference positives for misses), names are written at an angle so ties stay legible."""
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    prev = rates["prevalence"].clip(lower=1e-3)
    series = (("miss_rate", "o", _COLOURS["missed"], rates["reference_positive"]),
              ("hallucination_rate", "^", _COLOURS["hallucinated"],
               rates["studies"] - rates["reference_positive"]))  # fmt: skip
    for column, marker, colour, support in series:
        ok = rates[column].notna()
        size = 12 + 120 * np.sqrt(support[ok] / max(1, support[ok].max()))
        ax.scatter(prev[ok], rates.loc[ok, column], marker=marker, color=colour, s=size,
                   alpha=0.8, label=column.replace("_", " "))  # fmt: skip
        for name in rates.index[ok]:
            ax.annotate(_SHORT.get(name, name), (prev[name], rates.loc[name, column]), fontsize=7,
                        rotation=35, xytext=(2, 4), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.margins(x=0.1)
    ax.set_ylim(-0.04, 1.25)
    ax.set_xlabel("prevalence (share of studies with the finding)")
    ax.set_ylabel("error rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    return fig


def plot_error_vs_quality(
    per_study: pd.DataFrame,
    measures: Sequence[str] = ("exposure", "noise", "abs_rotation"),
    y: str = "errors",
    bins: int = 5,
) -> plt.Figure:
    """Errors per study against each acquisition measure: jittered points, the mean per
    quantile bin (± standard error) and Spearman's rank correlation in the title."""
    from scipy.stats import spearmanr

    missing = [c for c in (*measures, y) if c not in per_study.columns]
    if missing:
        raise ValueError(f"per-study table lacks column(s) {missing}")
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    values = per_study[y].to_numpy(dtype=float)
    for ax, measure in zip(axes[0], measures, strict=True):
        x = per_study[measure].to_numpy(dtype=float)
        ax.scatter(x, values + rng.uniform(-0.15, 0.15, len(values)), s=6, alpha=0.3, color="gray")
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        centres, means, errs = [], [], []
        for b in range(len(edges) - 1):
            sel = values[which == b]
            if len(sel):
                centres.append(x[which == b].mean())
                means.append(sel.mean())
                errs.append(sel.std(ddof=1) / math.sqrt(len(sel)) if len(sel) > 1 else 0.0)
        ax.errorbar(centres, means, yerr=errs, color="#d62728", marker="o", capsize=3)
        rho, p = spearmanr(x, values) if len(values) > 2 else (math.nan, math.nan)
        ax.set_title(f"{measure}: Spearman ρ = {rho:.2f} (p = {p:.2g})", fontsize=9)
        ax.set_xlabel(measure.replace("_", " "))
        ax.set_ylabel(f"{y} per study")
    fig.tight_layout()
    return fig


def plot_error_examples_with_attention(
    model: Any,
    dataset: Any,
    examples: pd.DataFrame,
    predictions: Sequence[str],
    indices: Sequence[int] | None = None,
    boxes: pd.DataFrame | None = None,
) -> plt.Figure:
    """:func:`plot_error_examples` with each example's attention map and drawn boxes.

    The map is :func:`course_utils.errors.finding_attention` of the example's finding: the
    LM's attention while it wrote the finding, or the encoder rollout for a missed finding.

    Args:
        dataset: the ReportDataset the predictions were generated for; ``predictions`` align
            with ``indices`` (default: every study); ``boxes``: :func:`read_finding_boxes`
            (None: no boxes, e.g. on real MIMIC-CXR).
    """
    from .errors import boxes_for, finding_attention

    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if len(predictions) != len(idx):
        raise ValueError(f"{len(predictions)} predictions for {len(idx)} studies")
    position = {
        dataset.metadata[i].get("study_id"): (i, text)
        for i, text in zip(idx, predictions, strict=True)
    }
    missing = [s for s in examples["study_id"] if s not in position]
    if missing:
        raise ValueError(f"example study id(s) {missing[:3]} are not among the predictions")
    maps, sources, drawn = [], [], []
    for ex in examples.itertuples(index=False):
        i, text = position[ex.study_id]
        grid, source = finding_attention(model, dataset, i, text, ex.finding)
        maps.append(grid)
        sources.append(source)
        dicom = dataset.metadata[i].get("dicom_id")
        drawn.append(boxes_for(boxes, dicom, ex.finding) if boxes is not None else [])
    sids = list(examples["study_id"])
    return plot_error_examples(
        examples,
        {s: dataset.pixels[position[s][0]] for s in sids},
        {s: dataset.reports[position[s][0]] for s in sids},
        {s: position[s][1] for s in sids},
        maps=maps, boxes=drawn, sources=sources,
    )  # fmt: skip
