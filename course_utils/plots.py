"""Every figure the notebooks show, so notebook cells stay short.

Functions return the matplotlib ``Figure`` (notebooks display it; tests inspect it).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _as_image(image: np.ndarray | str | Path, size: int | None = None) -> np.ndarray:
    if isinstance(image, (str, Path)):
        from .data import load_image

        return load_image(image, size)
    array = np.asarray(image, dtype=np.float32)
    return array.squeeze()


def plot_studies(
    images: Sequence[np.ndarray | str | Path],
    reports: Sequence[str],
    titles: Sequence[str] | None = None,
    ncols: int = 3,
    wrap: int = 48,
    max_chars: int = 400,
) -> plt.Figure:
    """Grid of chest X-rays with their (wrapped, truncated) report text underneath.

    Args:
        images: arrays (H, W) / (1, H, W) in [0, 1], or image paths.
        reports: one report per image.
        titles: optional title per image (e.g. the study id).
        ncols: images per row.
    """
    if len(images) != len(reports):
        raise ValueError(f"{len(images)} images but {len(reports)} reports")
    nrows = int(np.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 6.0 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, (image, report) in enumerate(zip(images, reports, strict=True)):
        ax = axes.flat[index]
        ax.imshow(_as_image(image), cmap="gray", vmin=0, vmax=1)
        if titles is not None:
            ax.set_title(titles[index], fontsize=9)
        text = report if len(report) <= max_chars else report[: max_chars - 1] + "…"
        ax.text(
            0.0, -0.03, textwrap.fill(text, wrap), transform=ax.transAxes, va="top", fontsize=7.5
        )
    fig.tight_layout()
    return fig


def plot_label_counts(counts: pd.DataFrame, title: str = "CheXpert label frequency") -> plt.Figure:
    """Horizontal stacked bars of positive / uncertain (/ negative) counts per label.

    Args:
        counts: DataFrame indexed by label with columns among ``positive``, ``uncertain``,
            ``negative`` (as returned by ``analyze_dataset``).
    """
    colors = {"positive": "#c0392b", "uncertain": "#f39c12", "negative": "#95a5a6"}
    cols = [c for c in ("positive", "uncertain", "negative") if c in counts.columns]
    order = counts.sort_values(cols[0]).index
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(order) + 1.5))
    left = np.zeros(len(order))
    for col in cols:
        values = counts.loc[order, col].to_numpy(dtype=float)
        ax.barh(order, values, left=left, color=colors[col], label=col)
        left += values
    ax.set_xlabel("studies")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ notebook 02 (EDA)
def plot_imbalance(ratio: pd.Series, n_studies: int, title: str = "Class imbalance") -> plt.Figure:
    """Not-positive studies per positive study, per label, on a log axis.

    Args:
        ratio: ``imbalance_ratio`` of :func:`course_utils.eda.analyze_dataset` (``inf`` where
            no study is positive; those labels are marked "no positive").
        n_studies: N, used for the prevalence annotation ``1 / (1 + ratio)``.
    """
    order = ratio.sort_values(ascending=True).index
    values = ratio.loc[order].to_numpy(dtype=float)
    finite = np.isfinite(values)
    top = float(values[finite].max()) if finite.any() else 1.0
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(order) + 1.5))
    colors = ["#c0392b" if v >= 50 else "#e67e22" if v >= 10 else "#2c7fb8" for v in values]
    ax.barh(order, np.where(finite, values, top * 2), color=colors)
    for y, v in enumerate(values):
        text = "no positive" if not np.isfinite(v) else f"1 : {v:.0f}  ({100 / (1 + v):.1f} %)"
        ax.text(np.where(np.isfinite(v), v, top * 2) * 1.05, y, text, va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(right=top * 12)
    ax.axvline(10, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel(f"not-positive studies per positive study (log scale, N = {n_studies})")
    ax.set_title(f"{title}: red >= 1:50, orange >= 1:10")
    fig.tight_layout()
    return fig


def plot_report_lengths(lengths: pd.Series, title: str = "Report length") -> plt.Figure:
    """Histogram of words per report with mean and median marked."""
    values = np.asarray(lengths, dtype=float)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bins = np.arange(0, max(values.max(), 1) + 6, 5) if len(values) else 10
    ax.hist(values, bins=bins, color="0.55", edgecolor="white")
    mean, median = float(np.mean(values)), float(np.median(values))
    ax.axvline(mean, color="#c0392b", lw=1.5, label=f"mean {mean:.1f}")
    ax.axvline(median, color="#2c7fb8", lw=1.5, ls="--", label=f"median {median:.0f}")
    ax.set_xlabel("words per report")
    ax.set_ylabel("studies")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_cooccurrence(
    matrix: pd.DataFrame, title: str = "Positive findings that occur together"
) -> plt.Figure:
    """Heat map of a co-occurrence count matrix; the diagonal (each label's own count) is
    written in the cells but greyed out so the colour scale shows the pairs."""
    counts = matrix.to_numpy(dtype=float)
    off = counts.copy()
    np.fill_diagonal(off, np.nan)
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(0.62 * n + 3, 0.55 * n + 2))
    ax.imshow(np.where(np.eye(n, dtype=bool), 1.0, np.nan), cmap="Greys", vmin=0, vmax=4)
    image = ax.imshow(np.log1p(off), cmap="Reds")
    vmax = np.nanmax(np.log1p(off)) if np.isfinite(off).any() else 1.0
    for i in range(n):
        for j in range(n):
            value = int(counts[i, j])
            if value:
                dark = i != j and np.log1p(value) > 0.6 * vmax
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black", fontweight="bold" if i == j else None)  # fmt: skip
    labels = [str(name) for name in matrix.index]
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    bar = fig.colorbar(image, ax=ax, shrink=0.7)
    bar.set_label("log(1 + studies)")
    ax.set_title(title + " (diagonal: studies per label)")
    fig.tight_layout()
    return fig


def plot_normal_abnormal(
    counts: pd.Series, title: str = "Normal vs abnormal studies"
) -> plt.Figure:
    """Two bars (normal, abnormal) annotated with counts and shares."""
    total = float(counts.sum())
    fig, ax = plt.subplots(figsize=(5, 3.4))
    bars = ax.bar(counts.index.astype(str), counts.to_numpy(), color=["#2c7fb8", "#c0392b"])
    for bar, value in zip(bars, counts.to_numpy(), strict=True):
        share = 100 * value / total if total else 0.0
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value} ({share:.1f} %)",
                ha="center", va="bottom")  # fmt: skip
    ax.set_ylabel("studies")
    ax.set_ylim(0, max(float(counts.max()), 1.0) * 1.15)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_top_terms(terms: pd.Series, title: str = "Most frequent terms") -> plt.Figure:
    """Horizontal bars of term counts, the most frequent on top."""
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(terms) + 1.4))
    ax.barh(terms.index[::-1].astype(str), terms.to_numpy()[::-1], color="0.35")
    ax.set_xlabel("occurrences (stop words and XXXX removed)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ notebook 03 (baseline)
def plot_per_label_f1(
    per_label: dict[str, pd.Series], title: str = "CE F1 per label"
) -> plt.Figure:
    """Grouped horizontal bars: one group per label, one bar per system.

    Args:
        per_label: system name -> Series label -> F1 (e.g. ``CEResult.per_label["f1"]``).
    """
    frame = pd.DataFrame(dict(per_label))
    n_labels, n_systems = frame.shape
    height = 0.8 / max(n_systems, 1)
    fig, ax = plt.subplots(figsize=(8, 0.45 * n_labels + 1.6))
    ys = np.arange(n_labels)
    for k, name in enumerate(frame.columns):
        ax.barh(ys + (k - (n_systems - 1) / 2) * height, frame[name].to_numpy(), height, label=name)
    ax.set_yticks(ys, [str(i) for i in frame.index], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (label positive in generated vs reference report)")
    ax.set_title(title, pad=12 + 14 * ((n_systems + 1) // 2))
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ notebook 04 (architecture)
def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{int(n)}"


def plot_model_architecture(
    counts: pd.DataFrame,
    shapes: dict[str, str],
    title: str = "RadiologyMultimodalModel",
) -> plt.Figure:
    """Boxes-and-arrows diagram of the LLaVA-style model with parameter counts.

    Args:
        counts: :func:`course_utils.model.count_parameters` table (rows ``vision``,
            ``projector``, ``lm``, ``detection_head``; columns ``total``, ``trainable``).
        shapes: tensor shapes written on the arrows, keys ``image``, ``patches``, ``cls``,
            ``visual``, ``text``, ``logits``, ``label_logits`` (missing keys are left blank).

    Frozen components are drawn grey, trainable ones blue.
    """
    needed = {"vision", "projector", "lm", "detection_head"}
    if not needed <= set(counts.index):
        raise ValueError(f"counts needs rows {sorted(needed)}, got {list(counts.index)}")
    fig, ax = plt.subplots(figsize=(12, 4.4))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 4.4)
    ax.axis("off")
    boxes = {  # name: (x, y, label)
        "vision": (2.4, 2.9, "vision encoder\n(ViT)"),
        "projector": (5.6, 2.9, "projector\nLinear-GELU-Linear"),
        "lm": (8.8, 2.9, "language model\n(causal decoder)"),
        "detection_head": (5.6, 0.9, "detection head\nLinear on CLS"),
    }
    w, h = 2.1, 1.15
    for name, (x, y, label) in boxes.items():
        total, trainable = counts.loc[name, "total"], counts.loc[name, "trainable"]
        frozen = trainable == 0
        colour = "0.85" if frozen else "#cfe2f3"
        ax.add_patch(plt.Rectangle((x - w / 2, y - h / 2), w, h, fc=colour, ec="0.2", lw=1.2))
        state = "frozen" if frozen else f"trainable {_human(trainable)}"
        ax.text(x, y + 0.15, label, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x, y - 0.38, f"{_human(total)} params · {state}", ha="center", fontsize=7.5)

    def arrow(x0: float, y0: float, x1: float, y1: float, text: str, dy: float = 0.12) -> None:
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "lw": 1.3})
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + dy, text, ha="center", fontsize=7.5, color="0.25")

    ax.text(0.55, 2.9, "image", ha="center", va="center", fontsize=9)
    ax.text(0.55, 2.55, shapes.get("image", ""), ha="center", fontsize=7.5, color="0.25")
    arrow(0.9, 2.9, 2.4 - w / 2, 2.9, "")
    arrow(2.4 + w / 2, 2.9, 5.6 - w / 2, 2.9, "Z_v " + shapes.get("patches", ""))
    arrow(5.6 + w / 2, 2.9, 8.8 - w / 2, 2.9, "H_v " + shapes.get("visual", ""))
    ax.text(8.8, 4.05, "text embeddings " + shapes.get("text", ""), ha="center", fontsize=7.5,
            color="0.25")  # fmt: skip
    ax.annotate("", (8.8, 2.9 + h / 2), (8.8, 3.9), arrowprops={"arrowstyle": "->", "lw": 1.3})
    ax.text(8.9, 3.55, "concatenated:\n[ H_v | text ]", ha="left", fontsize=7, color="0.4")
    ax.annotate("", (2.4, 0.9), (2.4, 2.9 - h / 2), arrowprops={"arrowstyle": "-", "lw": 1.3})
    arrow(2.4, 0.9, 5.6 - w / 2, 0.9, "h_cls " + shapes.get("cls", ""))
    arrow(5.6 + w / 2, 0.9, 7.2, 0.9, "")
    ax.text(7.25, 0.9, "label logits\n" + shapes.get("label_logits", ""), va="center", fontsize=7.5)
    arrow(8.8, 2.9 - h / 2, 8.8, 1.75, "")
    ax.text(8.8, 1.5, "report logits " + shapes.get("logits", ""), ha="center", fontsize=7.5)
    ax.text(9.6, 0.6, "loss = λ1·L_report + λ2·L_detect\n         + λ3·‖θ_proj‖²", fontsize=8.5)
    total = counts.loc["total"] if "total" in counts.index else counts.sum()
    ax.set_title(
        f"{title}: {_human(total['total'])} parameters, {_human(total['trainable'])} trainable",
        fontsize=11,
    )
    fig.tight_layout()
    return fig
