"""Figures of notebook 08: deployment summary, the monitored stream, drift."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def plot_deployment_summary(result: Any) -> Any:
    """Size on disk, p50 / p95 latency per study and label agreement of fp32 / INT8 / ONNX."""
    import matplotlib.pyplot as plt

    table = result.summary()
    names = list(table.index)
    colours = ["#4c72b0", "#dd8452", "#55a868"][: len(names)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].bar(names, table["size_mb"], color=colours)
    axes[0].set_title("size on disk (MB)")
    x = np.arange(len(names))
    axes[1].bar(x - 0.2, table["p50_ms"], 0.4, label="p50", color=colours)
    axes[1].bar(x + 0.2, table["p95_ms"], 0.4, label="p95", color=colours, alpha=0.5)
    axes[1].set_xticks(x, names)
    axes[1].set_yscale("log")
    axes[1].set_title("ms per study (log scale)")
    axes[1].legend(frameon=False)
    axes[2].bar(names, 100 * table["label_agreement"], color=colours)
    axes[2].axhline(99, color="k", ls="--", lw=1, label="99 % bar")
    low = float(100 * table["label_agreement"].min())
    axes[2].set_ylim(min(95.0, low - 1), 100.2)
    axes[2].set_title("CheXpert-label agreement with fp32 (%)")
    axes[2].legend(frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def plot_stream(stream: Any) -> Any:
    """Latency and the queue depth each request found, in arrival order."""
    import matplotlib.pyplot as plt

    log = stream.log
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3))
    a.plot(log["latency_ms"].to_numpy(), ".-", lw=0.8)
    for q, style in ((50, "--"), (99, ":")):
        a.axhline(np.percentile(log["latency_ms"], q), color="k", ls=style, lw=1, label=f"p{q}")
    a.set_xlabel("request (arrival order)")
    a.set_ylabel("latency (ms)")
    a.legend(frameon=False)
    b.step(np.arange(len(log)), log["queue_depth"].to_numpy(), where="post")
    b.set_xlabel("request (arrival order)")
    b.set_ylabel("queue depth on arrival")
    fig.tight_layout()
    return fig


def plot_drift(
    null: np.ndarray,
    threshold: float,
    observed: Mapping[str, float],
    examples: Mapping[str, np.ndarray] | None = None,
) -> Any:
    """MMD² of batches against the calibration distribution, and one example image per batch."""
    import matplotlib.pyplot as plt

    n_ex = len(examples or {})
    fig = plt.figure(figsize=(12, 3.4))
    grid = fig.add_gridspec(1, 2 + n_ex, width_ratios=[2.4, 0.1] + [1] * n_ex)
    ax = fig.add_subplot(grid[0, 0])
    ax.hist(null, bins=30, color="0.7", label="no-drift calibration batches")
    ax.axvline(threshold, color="k", ls="--", label="threshold")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, value), colour in zip(observed.items(), colours, strict=False):
        ax.axvline(value, color=colour, lw=2, label=name)
    ax.set_xscale("symlog", linthresh=max(abs(threshold), 1e-6))
    ax.set_xlabel("MMD² to the reference embeddings")
    ax.legend(frameon=False, fontsize=8)
    for i, (name, image) in enumerate((examples or {}).items()):
        sub = fig.add_subplot(grid[0, 2 + i])
        sub.imshow(np.asarray(image).squeeze(), cmap="gray", vmin=0, vmax=1)
        sub.set_title(name, fontsize=8)
        sub.axis("off")
    fig.tight_layout()
    return fig


__all__ = ["plot_deployment_summary", "plot_drift", "plot_stream"]
