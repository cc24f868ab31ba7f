"""Benchmark: does the tiny two-stage training really learn? (issue §3, measured, not a timed test)

On the embedded dataset (phantom images + real IU report text), train the ``tiny`` model the
way notebook 05 does - course-pretrained encoder, small random BioGPT, ``TrainConfig.tiny()`` with
a 90 s training budget - and measure on the TEST split:

* detection-head macro AUROC (target >= 0.95);
* CE micro-F1 (14 labels, the course's pinned definition, on every seed; the 5-label value is
  recorded too, not a pass/fail: a handful of positives per label makes it noisy)
  of the greedy reports vs that of a template filled from the same model's detection head
  (``course_utils.baseline.template_baseline`` on the labels the head calls positive: at
  0.5, at per-label thresholds tuned for F1 on val, or at one threshold tuned on val for the
  template's own CE micro-F1 - the best of the three on test is the bar; target ratio >= 0.9)
  and vs the fixed normal report (must be clearly above it, also on the 5 labels);
* style adherence of the styled-text model (R2Gen2 model II; target >= 95 %);
* JSON validity of the structured model (R2Gen2 model I; target >= 95 %);
* training throughput (samples/s, tokens/s), wall and CPU seconds, peak memory.

The findings model is trained with three seeds (the CE ratio of one tiny run moves by a few
points from seed to seed); pass/fail flags use the first seed, the spread is recorded.

The budget is counted in single-threaded CPU seconds by default (``--clock cpu --threads 1``):
stable on a machine shared with other jobs, and what the run costs on one idle core, so an idle
2-core machine needs at most that much wall time. ``--clock wall --threads 2`` measures what a
student sees.

Run ``python benchmarks/bench_train.py [--targets findings style json] [--seeds 42 1 2]`` to
print the JSON; ``benchmarks/run.py --only train`` stores it in ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from typing import Any

import numpy as np

BUDGET_SECONDS = 90.0
TARGETS = {
    "detection_macro_auroc": 0.95,
    "ce_ratio_to_head_template": 0.90,
    "style_adherence": 0.95,
    "json_valid_rate": 0.95,
}
# Model, tokenizer and per-target settings live in course_utils.train.course (one recipe).


def _head_template_reports(probs: np.ndarray, thresholds: np.ndarray) -> list[str]:
    """Template reports from detection-head probabilities (positive when p >= threshold)."""
    from course_utils.baseline import template_baseline
    from course_utils.labels import CHEXPERT_LABELS

    out = []
    for row in probs:
        found = [
            (CHEXPERT_LABELS[k], 1.0)
            for k in range(1, len(CHEXPERT_LABELS))
            if row[k] >= thresholds[k]
        ]
        out.append(template_baseline(None, found))
    return out


def _f1_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-label threshold maximising F1 on a split (grid 0.05..0.95)."""
    grid = np.linspace(0.05, 0.95, 19)
    out = np.full(probs.shape[1], 0.5)
    for k in range(probs.shape[1]):
        y = labels[:, k] == 1
        if not y.any():
            continue
        scores = []
        for t in grid:
            pred = probs[:, k] >= t
            tp = (pred & y).sum()
            scores.append(2 * tp / max(1, 2 * tp + (pred & ~y).sum() + (~pred & y).sum()))
        out[k] = grid[int(np.argmax(scores))]
    return out


def _global_threshold(probs: np.ndarray, references: list[str]) -> float:
    """One threshold for all labels, chosen on val to maximise the template's CE micro-F1-14
    (the strongest template under the metric it is compared on)."""
    from course_utils.metrics import clinical_efficacy

    grid = np.round(np.linspace(0.1, 0.9, 17), 3)
    scores = [
        clinical_efficacy(
            references, _head_template_reports(probs, np.full(probs.shape[1], t))
        ).scores["ce_micro_f1_14"]
        for t in grid
    ]
    return float(grid[int(np.argmax(scores))])


def run_target(
    target: str,
    splits: dict[str, dict],
    budget: float = BUDGET_SECONDS,
    clock: str = "cpu",
    seed: int = 42,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one tiny model on ``target`` within ``budget`` seconds and score it on test."""
    from torch.utils.data import DataLoader

    from course_utils.baseline import FIXED_NORMAL_REPORT
    from course_utils.config import runs_dir, seed_everything
    from course_utils.metrics import clinical_efficacy
    from course_utils.train import (
        ReportCollator,
        build_course_model,
        course_train_config,
        detection_macro_auroc,
        evaluate_loss,
        generate_reports,
        generation_metrics,
        train_two_stage,
    )

    seed_everything(seed)
    start = time.perf_counter()
    cfg = course_train_config(
        target,
        seed,
        run_name=f"bench-train-{target}-seed{seed}",
        output_dir=str(runs_dir() / f"bench-train-{target}-seed{seed}"),
        max_train_seconds=budget,
        budget_clock=clock,
        progress=progress,
    )
    model, tok, datasets = build_course_model(splits, cfg)  # notebook 05's recipe
    train, val, test = datasets["train"], datasets["val"], datasets["test"]
    head_from_encoder = True  # build_course_model starts the head from the encoder's
    setup_seconds = time.perf_counter() - start
    wall0, cpu0 = time.perf_counter(), time.process_time()
    history = train_two_stage(model, train, val, cfg)
    run_wall, run_cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    # ---- test split
    t0 = time.perf_counter()
    collate = ReportCollator(tok.pad_token_id)
    test_eval = evaluate_loss(model, DataLoader(test, batch_size=128, collate_fn=collate))
    auroc, per_label = detection_macro_auroc(test_eval["probs"], test_eval["labels"])
    generated = generate_reports(model, test, batch_size=128, max_new_tokens=cfg.max_new_tokens)
    styles = test.styles_used if target == "style" else None
    scores = generation_metrics(generated, test.reports, target, styles)
    eval_seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "target": target,
        "n_train": len(train),
        "n_test": len(test),
        "vocab_size": len(tok),
        "visual_tokens": model.num_visual_tokens(),
        "head_initialised_from_encoder": head_from_encoder,
        "test_detection_macro_auroc": auroc,
        "test_detection_auroc_per_label": per_label,
        "test_loss_report": test_eval["loss_report"],
        **{f"test_{k}": v for k, v in scores.items()},
        "seed": seed,
        "budget_clock": clock,
        "train_seconds": history["train_seconds"],
        "train_cpu_seconds": history["train_cpu_seconds"],
        "val_seconds": history["eval_seconds"],
        "train_two_stage_wall_seconds": run_wall,
        "train_two_stage_cpu_seconds": run_cpu,
        "peak_memory_mb": history["peak_memory_mb"],
        "setup_seconds": setup_seconds,
        "test_eval_seconds": eval_seconds,
        "optimizer_steps": history["global_step"],
        "epochs_completed": [(r["stage"], r["epoch"], r["partial"]) for r in history["epochs"]],
        "stopped_early": history["stopped_early"],
        "samples_per_second": history["samples_per_second"],
        "tokens_per_second": history["tokens_per_second"],
        "target_tokens_per_second": history["target_tokens_per_second"],
        "examples": [{"reference": test.reports[i], "generated": generated[i]} for i in range(3)],
    }
    if target == "findings":
        val_eval = evaluate_loss(model, DataLoader(val, batch_size=128, collate_fn=collate))
        probs = test_eval["probs"].numpy()
        fixed = clinical_efficacy(test.reports, [FIXED_NORMAL_REPORT] * len(test)).scores
        templates = {}
        val_probs = val_eval["probs"].numpy()
        global_thr = _global_threshold(val_probs, val.reports)
        for name, thr in (
            ("0.5", np.full(probs.shape[1], 0.5)),
            ("val_f1", _f1_thresholds(val_probs, val_eval["labels"].numpy())),
            ("val_ce", np.full(probs.shape[1], global_thr)),
        ):
            ce = clinical_efficacy(test.reports, _head_template_reports(probs, thr)).scores
            templates[name] = {
                k: ce[k] for k in ("ce_micro_f1_14", "ce_micro_f1_5", "ce_macro_f1_14")
            }
        best14 = max(t["ce_micro_f1_14"] for t in templates.values())
        best5 = max(t["ce_micro_f1_5"] for t in templates.values())
        result.update(
            head_template=templates,
            head_template_val_ce_threshold=global_thr,
            fixed_normal={
                k: fixed[k] for k in ("ce_micro_f1_14", "ce_micro_f1_5", "ce_macro_f1_14")
            },
            ce_ratio_to_head_template_14=scores["ce_micro_f1_14"] / max(best14, 1e-9),
            ce_ratio_to_head_template_5=scores["ce_micro_f1_5"] / max(best5, 1e-9),
        )
    return result


def bench_train(
    targets: tuple[str, ...] = ("findings", "style", "json"),
    threads: int = 1,
    budget: float = BUDGET_SECONDS,
    clock: str = "cpu",
    seeds: tuple[int, ...] = (42, 1, 2),
    progress: bool = False,
) -> dict[str, Any]:
    """Entry point for ``benchmarks/run.py``: one tiny run per target (findings: one per seed).

    The budget is counted on ``clock``: ``"cpu"`` (default) = CPU seconds of this
    single-threaded process, i.e. what the run costs on one idle core - stable on a machine
    shared with other jobs, and an upper bound for the wall time on an idle 2-core machine.
    ``"wall"`` is what a student sees on an idle machine.
    """
    import torch

    from course_utils.data import ensure_embedded_dataset, load_mimic_cxr_dataset
    from course_utils.model import ensure_pretrained_encoder, load_pretraining_metrics

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    data_dir = ensure_embedded_dataset(image_size=128, seed=42)
    encoder_dir = ensure_pretrained_encoder(image_size=128, seed=42)
    splits = {
        s: load_mimic_cxr_dataset(data_dir, s, image_size=128, load_pixels=True)
        for s in ("train", "val", "test")
    }
    prep = time.perf_counter() - t0
    load_before = os.getloadavg()
    runs: dict[str, Any] = {}
    for target in targets:
        for seed in seeds if target == "findings" else seeds[:1]:
            key = target if seed == seeds[0] else f"{target}_seed{seed}"
            runs[key] = run_target(target, splits, budget, clock, seed, progress)
    out: dict[str, Any] = {
        "name": "train_two_stage (tiny, CPU)",
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "budget_seconds": budget,
        "budget_clock": clock,
        "data_and_encoder_seconds": prep,
        "encoder_test_macro_auroc": load_pretraining_metrics(encoder_dir).get("test_macro_auroc"),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "runs": runs,
    }
    met: dict[str, Any] = {"thresholds": TARGETS}
    if "findings" in runs:
        r = runs["findings"]
        met["detection_macro_auroc"] = (
            r["test_detection_macro_auroc"] >= TARGETS["detection_macro_auroc"]
        )
        met["above_fixed_normal"] = (
            r["test_ce_micro_f1_14"] > r["fixed_normal"]["ce_micro_f1_14"]
            and r["test_ce_micro_f1_5"] > r["fixed_normal"]["ce_micro_f1_5"] + 0.2
        )
        met["within_budget"] = r["train_seconds" if clock == "wall" else "train_cpu_seconds"] <= (
            budget * 1.05
        )
        ratios = [
            v["ce_ratio_to_head_template_14"] for k, v in runs.items() if k.startswith("findings")
        ]
        out["findings_ce_ratio_14_over_seeds"] = {
            "values": ratios, "mean": float(np.mean(ratios)), "min": float(np.min(ratios))
        }  # fmt: skip
        # the bar is on the course's pinned CE definition (14 CheXpert labels), on every seed;
        # the 5-label ratio (few positives per label, noisy) is recorded, not a pass/fail
        met["ce_ratio_14_every_seed"] = min(ratios) >= TARGETS["ce_ratio_to_head_template"]
        ratios5 = [
            v["ce_ratio_to_head_template_5"] for k, v in runs.items() if k.startswith("findings")
        ]
        out["findings_ce_ratio_5_over_seeds"] = {
            "values": ratios5, "mean": float(np.mean(ratios5)), "min": float(np.min(ratios5))
        }  # fmt: skip
    if "style" in runs:
        met["style_adherence"] = runs["style"]["test_style_adherence"] >= TARGETS["style_adherence"]
    if "json" in runs:
        met["json_valid_rate"] = runs["json"]["test_json_valid_rate"] >= TARGETS["json_valid_rate"]
    met["met"] = all(v for k, v in met.items() if k != "thresholds")
    out["targets"] = met
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="*", default=["findings", "style", "json"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 1, 2])
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    result = bench_train(
        tuple(args.targets), args.threads, args.budget, args.clock, tuple(args.seeds),
        args.progress,
    )  # fmt: skip
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
