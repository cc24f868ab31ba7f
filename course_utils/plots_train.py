"""Figures and tables of notebook 05 (two-stage training).

Functions return a matplotlib ``Figure`` or a pandas ``DataFrame`` (notebooks display it, tests
inspect it). Nothing here trains or evaluates: the numbers come from :mod:`course_utils.train`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

IGNORE_INDEX = -100
STAGE_COLOURS = {1: "tab:orange", 2: "tab:blue"}


# ---------------------------------------------------------------------- the loss mask
def loss_mask_table(
    input_ids: Sequence[int], labels: Sequence[int], tokenizer: Any
) -> pd.DataFrame:
    """One row per text position: ``token``, ``input_id``, ``label``, ``in_loss``.

    ``labels`` are the example's LM targets aligned with ``input_ids`` (``-100`` = not scored).

    Raises:
        ValueError: the two sequences differ in length or are empty.
    """
    ids, labs = [int(i) for i in input_ids], [int(x) for x in labels]
    if not ids:
        raise ValueError("loss_mask_table: the example has no tokens")
    if len(ids) != len(labs):
        raise ValueError(f"{len(ids)} input ids but {len(labs)} labels")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return pd.DataFrame(
        {
            "token": tokens,
            "input_id": ids,
            "label": labs,
            "in_loss": [lab != IGNORE_INDEX for lab in labs],
        }
    ).rename_axis("position")


def plot_loss_mask(
    table: pd.DataFrame,
    max_tokens: int = 60,
    per_row: int = 10,
    title: str = "What the loss scores: grey = label -100 (prompt, specials), green = target",
) -> plt.Figure:
    """Tokens of one example as boxes, grey where the label is -100, green where it is scored.

    Args:
        table: :func:`loss_mask_table` of the example.
        max_tokens: positions shown (the rest is summarised in the last box).
        per_row: boxes per line.
    """
    if table.empty:
        raise ValueError("plot_loss_mask: empty table")
    rows = table.head(max_tokens)
    n_lines = int(np.ceil(len(rows) / per_row))
    fig, ax = plt.subplots(figsize=(1.15 * per_row, 0.55 * n_lines + 0.8))
    ax.set_xlim(0, per_row)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    for k, (token, scored) in enumerate(zip(rows["token"], rows["in_loss"], strict=True)):
        x, y = k % per_row, k // per_row
        colour = "#b7e4c7" if scored else "#dddddd"
        text = str(token) if len(str(token)) <= 11 else str(token)[:10] + "…"
        ax.text(
            x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=8,
            bbox={"boxstyle": "round,pad=0.25", "facecolor": colour, "edgecolor": "none"},
        )  # fmt: skip
    hidden = len(table) - len(rows)
    scored = int(table["in_loss"].sum())
    ax.set_title(
        f"{title}\n{scored} of {len(table)} positions scored"
        + (f" ({hidden} more not shown)" if hidden > 0 else ""),
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- augmentation
def plot_augmentations(variants: Mapping[str, torch.Tensor | np.ndarray]) -> plt.Figure:
    """One panel per named image ((H, W), (1, H, W) or (1, 1, H, W) in [0, 1])."""
    if not variants:
        raise ValueError("plot_augmentations: nothing to show")
    n = len(variants)
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.6), squeeze=False)
    for ax, (name, image) in zip(axes.flat, variants.items(), strict=True):
        array = np.asarray(
            image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32
        ).squeeze()
        if array.ndim != 2:
            raise ValueError(f"{name}: expected one grayscale image, got shape {array.shape}")
        ax.imshow(array, cmap="gray", vmin=0, vmax=1)
        ax.set_title(textwrap.fill(name, 18), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- balanced sampling
def sampling_balance(
    labels: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray, names: Sequence[str]
) -> pd.DataFrame:
    """Expected share of drawn studies showing each finding, uniform vs weighted sampling.

    A study "shows" a finding when its label is positive or uncertain (1 / -1). The shares are
    exact expectations (``Σ w_i · present_i`` with weights normalised to sum 1), not a random
    draw. Rows: ``"abnormal (any finding)"`` then the findings ``names[1:]`` (column 0 is
    "No Finding"); columns ``uniform`` and ``balanced``.

    Raises:
        ValueError: shapes disagree or the weights are not positive.
    """
    y = np.asarray(labels, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != len(names):
        raise ValueError(f"labels must be (N, {len(names)}), got {y.shape}")
    if w.shape != (y.shape[0],) or not np.all(w >= 0) or w.sum() <= 0:
        raise ValueError(f"weights must be (N,) = ({y.shape[0]},), non-negative, not all zero")
    present = (y[:, 1:] == 1) | (y[:, 1:] == -1)
    abnormal = present.any(axis=1)
    w = w / w.sum()
    table = pd.DataFrame(
        {
            "uniform": np.r_[abnormal.mean(), present.mean(axis=0)],
            "balanced": np.r_[(w * abnormal).sum(), w @ present],
        },
        index=["abnormal (any finding)", *names[1:]],
    )
    return table


def plot_sampling_balance(table: pd.DataFrame, title: str = "Who the model sees") -> plt.Figure:
    """Grouped bars of :func:`sampling_balance` (share of drawn studies, in %)."""
    ys = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(7, 0.36 * len(table) + 1.4))
    for k, (column, colour) in enumerate(
        zip(table.columns, ("tab:gray", "tab:green"), strict=False)
    ):
        ax.barh(
            ys + (k - 0.5) * 0.4, 100 * table[column].to_numpy(), 0.4, label=column, color=colour
        )
    ax.set_yticks(ys, list(table.index), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of drawn training studies showing it")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- schedules and history
def plot_lr_schedules(
    schedules: Mapping[str, Sequence[float]], warmups: Mapping[str, int] | None = None
) -> plt.Figure:
    """Learning rate against optimiser step, one panel per named schedule.

    Args:
        schedules: name -> learning rate at each step.
        warmups: name -> warm-up steps (a dotted line marks the end of warm-up).
    """
    if not schedules:
        raise ValueError("plot_lr_schedules: nothing to plot")
    n = len(schedules)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.0), squeeze=False)
    for ax, (name, lrs) in zip(axes.flat, schedules.items(), strict=True):
        ax.plot(np.arange(len(lrs)), lrs, color="tab:purple")
        if warmups and name in warmups:
            ax.axvline(warmups[name], color="gray", ls=":", lw=1)
            ax.text(warmups[name], max(lrs), f" warm-up {warmups[name]}", fontsize=7, va="top")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.tight_layout()
    return fig


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.r_[head, np.convolve(values, kernel, mode="valid")]


def history_frames(history: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(steps, epochs) DataFrames of a ``train_two_stage`` history.

    ``steps``: one row per optimiser step (``stage``, ``epoch``, ``step``, ``loss``, ``lr``,
    ``grad_norm``); ``epochs``: one row per epoch with ``last_step`` (the global step it ended
    on) added, so validation points can be drawn on the step axis.

    Raises:
        ValueError: the history has no steps.
    """
    steps = pd.DataFrame(list(history.get("steps", [])))
    if steps.empty:
        raise ValueError("the history has no optimiser steps: did training run?")
    epochs = pd.DataFrame(list(history.get("epochs", [])))
    if not epochs.empty:
        last = steps.groupby(["stage", "epoch"])["step"].max()
        epochs["last_step"] = [
            last.get((s, e), np.nan) for s, e in zip(epochs["stage"], epochs["epoch"], strict=True)
        ]
    return steps, epochs


def plot_training_history(history: Mapping[str, Any], smooth: int = 20) -> plt.Figure:
    """Loss per stage (train per step, smoothed; validation per epoch) and the learning rate.

    Panels: stage 1 loss, stage 2 loss, and the learning rate of every step, coloured by stage.
    """
    steps, epochs = history_frames(history)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
    for ax, stage in zip(axes[:2], (1, 2), strict=True):
        part = steps[steps["stage"] == stage]
        ax.set_title(
            f"stage {stage}: " + ("projector + head" if stage == 1 else "+ LM"), fontsize=9
        )
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        if part.empty:
            ax.text(0.5, 0.5, "stage skipped", ha="center", transform=ax.transAxes)
            continue
        colour = STAGE_COLOURS[stage]
        loss = part["loss"].to_numpy(dtype=float)
        ax.plot(part["step"], loss, color=colour, alpha=0.25, lw=0.8)
        ax.plot(part["step"], _smooth(loss, smooth), color=colour, label="train (smoothed)")
        if "val_loss" in epochs:
            val = epochs[(epochs["stage"] == stage) & epochs["val_loss"].notna()]
            ax.plot(
                val["last_step"], val["val_loss"], "o-", color="black", ms=4, label="validation"
            )
        ax.legend(fontsize=8)
    ax = axes[2]
    for stage, part in steps.groupby("stage"):
        ax.plot(part["step"], part["lr"], color=STAGE_COLOURS.get(int(stage), "gray"),
                label=f"stage {stage}")  # fmt: skip
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate (cosine with warm-up, per stage)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- outputs
def samples_table(
    references: Sequence[str], generated: Mapping[str, Sequence[str]], max_chars: int = 400
) -> pd.DataFrame:
    """Reference next to each system's text, one row per study (long texts cut with "…")."""

    def cut(text: str) -> str:
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    for name, texts in generated.items():
        if len(texts) != len(references):
            raise ValueError(f"{name}: {len(texts)} texts for {len(references)} references")
    data = {"reference": [cut(t) for t in references]}
    data.update({name: [cut(t) for t in texts] for name, texts in generated.items()})
    return pd.DataFrame(data).rename_axis("study")


def plot_per_label_auroc(
    per_label: Mapping[str, float], title: str = "Detection head: AUROC per label"
) -> plt.Figure:
    """Horizontal bars of per-label AUROC; labels without both classes (NaN) are marked n/a."""
    if not per_label:
        raise ValueError("plot_per_label_auroc: no labels")
    names = list(per_label)
    values = np.array([float(per_label[n]) for n in names])
    ys = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 0.34 * len(names) + 1.3))
    ax.barh(ys, np.nan_to_num(values, nan=0.0), color="tab:blue")
    for y, v in zip(ys, values, strict=True):
        ax.text((v if np.isfinite(v) else 0.5) + 0.005, y, "n/a" if not np.isfinite(v) else f"{v:.2f}",
                va="center", fontsize=7)  # fmt: skip
    ax.axvline(0.5, color="gray", ls=":", lw=1)
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.4, 1.02)
    ax.set_xlabel("AUROC (0.5 = chance)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
