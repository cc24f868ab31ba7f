"""Figures of notebook 06 (evaluation): metrics with bootstrap error bars, per-finding F1,
critical-finding sensitivity against the case study's bar, latency, and beam vs greedy.

Every function takes the tidy tables of :mod:`course_utils.evaluate` and returns the matplotlib
``Figure`` (notebooks display it; tests inspect it).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .evaluate import SENSITIVITY_BAR

__all__ = [
    "plot_beam_vs_greedy",
    "plot_critical_sensitivity",
    "plot_latency",
    "plot_metric_cis",
    "plot_per_finding_f1",
]


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; pass the table evaluate produced")


def plot_metric_cis(
    long: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    systems: Sequence[str] | None = None,
    title: str = "Test-split metrics with 95 % bootstrap CIs",
    xlabel: str = "score",
) -> plt.Figure:
    """Dot-and-whisker plot: one row per metric, one marker per system, CI as error bar.

    Args:
        long: ``system, metric, estimate, low, high`` (``EvaluationResult.headline`` or
            :func:`course_utils.evaluate.comparison_table`).
        metrics: metrics to show, in order (default: all; keep metrics of one scale together).
        systems: systems to show, in order (default: all).
    """
    _require(long, ("system", "metric", "estimate", "low", "high"), "long")
    metrics = list(dict.fromkeys(long["metric"])) if metrics is None else list(metrics)
    systems = list(dict.fromkeys(long["system"])) if systems is None else list(systems)
    data = long[long["metric"].isin(metrics) & long["system"].isin(systems)]
    data = data[np.isfinite(data["estimate"].to_numpy(dtype=float))]
    if data.empty:
        raise ValueError("nothing to plot: no finite estimate for these metrics and systems")
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(metrics) * max(1, len(systems) / 2) + 1.8))
    ys = np.arange(len(metrics))
    step = 0.8 / max(len(systems), 1)
    for k, system in enumerate(systems):
        rows = data[data["system"] == system].set_index("metric")
        present = [m for m in metrics if m in rows.index]
        if not present:
            continue
        y = ys[[metrics.index(m) for m in present]] + (k - (len(systems) - 1) / 2) * step
        est = rows.loc[present, "estimate"].to_numpy(dtype=float)
        low = rows.loc[present, "low"].to_numpy(dtype=float)
        high = rows.loc[present, "high"].to_numpy(dtype=float)
        err = np.vstack([np.nan_to_num(est - low), np.nan_to_num(high - est)])
        ax.errorbar(est, y, xerr=np.clip(err, 0, None), fmt="o", ms=4, capsize=3, label=system)
    ax.set_yticks(ys, metrics, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, pad=12 + 14 * ((len(systems) + 1) // 2))
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def plot_per_finding_f1(
    per_finding: pd.DataFrame,
    systems: Sequence[str] | None = None,
    title: str = "F1 per finding (test split)",
) -> plt.Figure:
    """Grouped horizontal bars of per-label F1, one bar per system, support in the tick label.

    Args:
        per_finding: ``EvaluationResult.per_finding`` (``system, label, f1, support``; the
            ``micro`` / ``macro`` rows are shown last).
    """
    _require(per_finding, ("system", "label", "f1", "support"), "per_finding")
    systems = list(dict.fromkeys(per_finding["system"])) if systems is None else list(systems)
    frame = per_finding[per_finding["system"].isin(systems)]
    table = frame.pivot(index="label", columns="system", values="f1")
    labels = list(dict.fromkeys(frame["label"]))
    table = table.reindex(index=labels, columns=systems)
    support = frame.drop_duplicates("label").set_index("label")["support"].reindex(labels)
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(labels) + 1.8))
    ys = np.arange(len(labels))
    height = 0.8 / max(len(systems), 1)
    for k, system in enumerate(systems):
        offset = (k - (len(systems) - 1) / 2) * height
        ax.barh(ys + offset, table[system].to_numpy(dtype=float), height, label=system)
    ticks = [f"{lab} (n={int(s)})" if lab not in ("micro", "macro") else f"{lab} average"
             for lab, s in zip(labels, support, strict=True)]  # fmt: skip
    ax.set_yticks(ys, ticks, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (label positive in prediction vs reference report)")
    ax.set_title(title, pad=12 + 14 * ((len(systems) + 1) // 2))
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def plot_critical_sensitivity(
    critical: pd.DataFrame,
    systems: Sequence[str] | None = None,
    bar: float = SENSITIVITY_BAR,
    title: str = "Critical-finding sensitivity vs the case study's bar",
) -> plt.Figure:
    """Sensitivity per critical finding and system with its exact 95 % interval, and the bar.

    Args:
        critical: ``EvaluationResult.critical`` (``system, finding, sensitivity, exact_low,
            exact_high, positives``). Findings with no positive are marked "no positives".
    """
    cols = ("system", "finding", "sensitivity", "exact_low", "exact_high", "positives")
    _require(critical, cols, "critical")
    systems = list(dict.fromkeys(critical["system"])) if systems is None else list(systems)
    findings = list(dict.fromkeys(critical["finding"]))
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(findings) * max(1, len(systems) / 2) + 1.8))
    ys = np.arange(len(findings))
    step = 0.8 / max(len(systems), 1)
    for k, system in enumerate(systems):
        rows = critical[critical["system"] == system].set_index("finding").reindex(findings)
        y = ys + (k - (len(systems) - 1) / 2) * step
        est = rows["sensitivity"].to_numpy(dtype=float)
        ok = np.isfinite(est)
        err = np.vstack(
            [est - rows["exact_low"].to_numpy(dtype=float), rows["exact_high"].to_numpy() - est]
        )
        ax.errorbar(est[ok], y[ok], xerr=np.clip(err[:, ok], 0, None), fmt="o", ms=5, capsize=3,
                    label=system)  # fmt: skip
    positives = critical.drop_duplicates("finding").set_index("finding")["positives"]
    ticks = [f"{f}\n({int(positives[f])} positives)" if positives[f] else f"{f}\n(no positives)"
             for f in findings]  # fmt: skip
    ax.axvline(bar, color="crimson", ls="--", lw=1)
    ax.text(bar, len(findings) - 0.55, f"bar {bar:.0%} ", color="crimson", fontsize=8, va="bottom",
            ha="right")  # fmt: skip
    ax.set_yticks(ys, ticks, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("sensitivity = detected / positives (exact 95 % interval)")
    ax.set_title(title, pad=12 + 14 * ((len(systems) + 1) // 2))
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def plot_latency(
    latency_ms: dict[str, np.ndarray], budget_ms: float | None = None,
    title: str = "Latency per report (batch size 1)",
) -> plt.Figure:  # fmt: skip
    """Strip plot of per-study latencies per decoding with median and p95 marks.

    Args:
        latency_ms: decoding -> per-study ms (``EvaluationResult.latency_ms``).
        budget_ms: optional vertical line (e.g. the case study's 30 s = 30,000 ms).
    """
    if not latency_ms:
        raise ValueError("latency_ms is empty: nothing was timed")
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(latency_ms) + 1.6))
    rng = np.random.default_rng(0)
    for k, ms in enumerate(latency_ms.values()):
        ms = np.asarray(ms, dtype=float)
        ax.scatter(ms, k + rng.uniform(-0.15, 0.15, len(ms)), s=10, alpha=0.6)
        med, p95 = np.median(ms), np.percentile(ms, 95)
        ax.plot([med, med], [k - 0.3, k + 0.3], color="black", lw=2)
        ax.plot([p95, p95], [k - 0.3, k + 0.3], color="gray", lw=2, ls=":")
        ax.text(p95, k + 0.32, f" median {med:.0f} ms, p95 {p95:.0f} ms", fontsize=8)
    if budget_ms is not None:
        ax.axvline(budget_ms, color="crimson", ls="--", lw=1)
    ax.set_yticks(range(len(latency_ms)), list(latency_ms))
    ax.set_xlabel("ms per report")
    ax.set_ylim(-0.6, len(latency_ms) - 0.2)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_beam_vs_greedy(
    decoding: pd.DataFrame, title: str = "Log-probability of the output: beam vs greedy"
) -> plt.Figure:
    """Scatter of per-study log p(output) for greedy (x) and beam (y) with the diagonal.

    Points above the diagonal: beam found a more likely report; on it: the same report;
    below it (red): beam search pruned the greedy path and ended lower.
    """
    _require(decoding, ("greedy_log_prob", "beam_log_prob", "beam_not_worse"), "decoding")
    fig, ax = plt.subplots(figsize=(5.2, 5))
    x = decoding["greedy_log_prob"].to_numpy(dtype=float)
    y = decoding["beam_log_prob"].to_numpy(dtype=float)
    worse = ~decoding["beam_not_worse"].to_numpy(dtype=bool)
    ax.scatter(x[~worse], y[~worse], s=10, alpha=0.5, label="beam >= greedy")
    ax.scatter(x[worse], y[worse], s=18, color="crimson", label=f"beam < greedy ({worse.sum()})")
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1)
    ax.set_xlabel("greedy: log p(report | image, prompt)")
    ax.set_ylabel("beam: log p(report | image, prompt)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
