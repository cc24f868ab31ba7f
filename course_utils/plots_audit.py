"""Figures of notebook 09 (bias audit): per-subgroup metrics with their bootstrap CIs.

Functions return the matplotlib ``Figure`` (notebooks display it; tests inspect it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .audit import AuditResult

FLAG_COLOUR = "#c0392b"
STATUS_COLOURS = {
    "below": "#8e44ad",  # below the threshold, but not worse than the rest (or explained)
    "inconclusive": "#e67e22",
    "meets": "#27ae60",
    "too few positives": "#7f8c8d",
    "no positives": "#95a5a6",
    "empty": "#95a5a6",
}
_METRICS = {
    "sensitivity": ("ci_low", "ci_high", "critical-finding sensitivity"),
    "hallucination_rate": ("hall_ci_low", "hall_ci_high", "reports with a hallucinated finding"),
    "fpr": (None, None, "false-positive rate (critical findings)"),
}


def _rows(result: AuditResult, attributes: Sequence[str] | None) -> pd.DataFrame:
    table = result.table
    if attributes is not None:
        unknown = sorted(set(attributes) - set(table["attribute"]))
        if unknown:
            raise ValueError(
                f"attributes {unknown} not in the audit ({sorted(set(table.attribute))})"
            )
        table = table[table["attribute"].isin(attributes)]
    return table.reset_index(drop=True)


def plot_subgroup_metric(
    result: AuditResult,
    metric: str = "sensitivity",
    attributes: Sequence[str] | None = None,
    ax: plt.Axes | None = None,
    title: str | None = None,
) -> plt.Figure:
    """Horizontal dot-and-whisker plot: one row per subgroup, its estimate and 95 % CI.

    Sensitivity rows are coloured by audit result (red: flagged; purple: below the threshold but
    not worse than the rest, or explained by a flagged subgroup; orange: inconclusive; green:
    meets; grey: too few positives) and the threshold is drawn as a dashed line; the overall
    value is a dotted line. ``n`` on the right is the number of positive findings (sensitivity)
    or of studies (other metrics).
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {list(_METRICS)}, got {metric!r}")
    low_col, high_col, label = _METRICS[metric]
    rows = _rows(result, attributes)
    if rows[metric].isna().all():
        raise ValueError(f"the audit has no {metric!r} values (hallucination needs reports)")
    n = len(rows)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 0.32 * n + 1.4))
    else:
        fig = ax.figure
    y = np.arange(n)[::-1]
    for yi, r in zip(y, rows.itertuples(index=False), strict=True):
        value = getattr(r, metric)
        colour = "#2c3e50"
        if metric == "sensitivity":
            colour = FLAG_COLOUR if r.flagged else STATUS_COLOURS[r.status]
        if np.isnan(value):
            ax.text(0.5, yi, r.status, va="center", ha="center", fontsize=7, color="grey",
                    transform=ax.get_yaxis_transform())  # fmt: skip
            continue
        if low_col is not None and not np.isnan(getattr(r, low_col)):
            ax.plot([getattr(r, low_col), getattr(r, high_col)], [yi, yi], color=colour, lw=2)
        ax.plot(value, yi, "o", color=colour, ms=5)
        count = r.n_positive if metric == "sensitivity" else r.n_studies
        ax.text(1.01, yi, f"n={count}", va="center", fontsize=7, transform=ax.get_yaxis_transform())
    ax.set_yticks(y)
    ax.set_yticklabels([f"{a}: {s}" for a, s in zip(rows.attribute, rows.subgroup, strict=True)],
                       fontsize=8)  # fmt: skip
    overall = result.overall.get(metric, np.nan)
    if not np.isnan(overall):
        ax.axvline(overall, color="grey", ls=":", lw=1, label=f"overall {overall:.2f}")
    if metric == "sensitivity":
        ax.axvline(result.threshold, color="#c0392b", ls="--", lw=1,
                   label=f"threshold {result.threshold:.2f}")  # fmt: skip
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"{label} (95 % bootstrap CI)" if low_col else label)
    ax.set_title(title or f"{label} by subgroup ({result.source})", fontsize=10)
    handles, _ = ax.get_legend_handles_labels()
    if metric == "sensitivity":
        from matplotlib.lines import Line2D

        shown = [("flagged", FLAG_COLOUR), ("below, not carried", STATUS_COLOURS["below"]),
                 ("inconclusive", STATUS_COLOURS["inconclusive"]), ("meets", STATUS_COLOURS["meets"]),
                 ("too few positives", STATUS_COLOURS["too few positives"])]  # fmt: skip
        handles += [Line2D([], [], color=c, marker="o", lw=2, label=n) for n, c in shown]
    ax.legend(handles=handles, loc="lower left", fontsize=6.5)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_audit_comparison(
    results: Mapping[str, AuditResult],
    metric: str = "sensitivity",
    attributes: Sequence[str] | None = None,
) -> plt.Figure:
    """The same metric for several audits side by side (e.g. control vs injected effect)."""
    if not results:
        raise ValueError("no audit results to compare")
    rows = max(len(_rows(r, attributes)) for r in results.values())
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 0.32 * rows + 1.6),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        plot_subgroup_metric(res, metric, attributes, ax=ax, title=name)
    fig.tight_layout()
    return fig


def plot_example_images(
    images: Sequence[np.ndarray], titles: Sequence[str], ncols: int = 4
) -> plt.Figure:
    """A row of images (e.g. the same study with and without the acquisition effect)."""
    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    nrows = int(np.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(np.asarray(image, dtype=np.float32).squeeze(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
