"""Benchmark: notebooks 04-06 under the ``gpu`` profile (tiny models and embedded data on CUDA).

Executes the answer keys with papermill (``PROFILE="gpu"``), times each notebook and reads what
they leave behind:

* notebook 05's training history (``runs/checkpoints/gpu-findings-seed<seed>/history.json``):
  optimiser steps, ms per step, samples/s, tokens/s, training and validation seconds, peak CUDA
  memory allocated by torch in the kernel (``torch.cuda.max_memory_allocated``), precision;
* notebook 06's evaluation (``runs/06_evaluation``): latency per report at batch size 1 (median
  and p95, greedy and beam), batched generation throughput, seconds per phase and the headline
  clinical / text scores;
* the GPU's name and, while each notebook runs, the most device memory in use as NVML reports it
  (the CUDA context and every process included, so above torch's own peak).

Needs a CUDA GPU, papermill and a ``python3`` Jupyter kernel. The embedded dataset and the course
encoder are built when missing (the first notebook does it).

``python benchmarks/bench_gpu_notebooks.py --out DIR [--json FILE]`` writes the executed notebooks
to DIR and prints (or writes) the JSON. ``benchmarks/run.py`` (``make bench``) stores it in
``benchmarks/results.json`` on a CUDA machine; elsewhere it is ``skipped`` and the last
measurement stays.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

NOTEBOOKS = ("04_model_architecture", "05_two_stage_training", "06_evaluation")
HISTORY_KEYS = (
    "global_step", "train_seconds", "train_cpu_seconds", "eval_seconds", "samples",
    "samples_per_second", "tokens_per_second", "target_tokens_per_second", "peak_cuda_memory_mb",
    "peak_memory_mb", "mixed_precision", "device", "stopped_early", "stop_reason", "best_val_loss",
)  # fmt: skip
HEADLINE = ("CE F1 micro-14", "CE F1 micro-5", "CE F1 macro-14", "BLEU-4", "ROUGE-L")


class _MemoryPoller:
    """Highest device memory in use (MiB, NVML) while the ``with`` block runs; None without NVML."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _MemoryPoller:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - NVML missing: report None, measure nothing
            return self

        def poll() -> None:
            peak = 0.0
            while not self._stop.is_set():
                peak = max(peak, pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
                self.peak_mib = peak
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def device_info() -> dict[str, Any]:
    """GPU name, memory, and the versions the timings depend on."""
    import torch
    import transformers

    info: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
    else:
        info["gpu"] = None
    return info


def training_figures(profile: str, seed: int) -> dict[str, Any]:
    """Notebook 05's run, from the checkpoint's history."""
    from course_utils.train import checkpoint_dir

    path = checkpoint_dir("findings", seed, profile) / "history.json"
    if not path.is_file():
        return {"missing": str(path)}
    history = json.loads(path.read_text())
    out = {k: history.get(k) for k in HISTORY_KEYS}
    steps = history.get("global_step") or 0
    if steps:
        out["ms_per_optimizer_step"] = 1000.0 * history["train_seconds"] / steps
    out["stage_steps"] = {
        str(s): sum(1 for row in history.get("steps", []) if row["stage"] == s) for s in (1, 2)
    }
    last = (history.get("epochs") or [{}])[-1]
    out["last_epoch"] = {
        k: last.get(k)
        for k in ("stage", "epoch", "train_loss", "val_loss", "val_macro_auroc",
                  "val_ce_micro_f1_14")
    }  # fmt: skip
    cfg = history.get("config", {})
    out["config"] = {
        k: cfg.get(k)
        for k in ("batch_size", "grad_accum_steps", "max_train_seconds", "budget_clock",
                  "stage1_epochs", "stage2_epochs", "mixed_precision")
    }  # fmt: skip
    return out


def evaluation_figures() -> dict[str, Any]:
    """Notebook 06's run, from ``runs/06_evaluation`` (latency.csv, headline.csv, notes)."""
    from course_utils.config import runs_dir

    folder = runs_dir() / "06_evaluation"
    if not (folder / "latency.csv").is_file():
        return {"missing": str(folder / "latency.csv")}
    with open(folder / "latency.csv") as handle:
        latency = {
            row["decoding"]: {
                "median_ms": float(row["median_ms"]),
                "p95_ms": float(row["p95_ms"]),
                "median_ci_ms": [float(row["median_low"]), float(row["median_high"])],
                "n_timed": int(row["n_timed"]),
                "batch_ms_per_report": float(row["batch_ms_per_report"]),
                "batch_reports_per_second": 1000.0 / float(row["batch_ms_per_report"]),
            }
            for row in csv.DictReader(handle)
        }
    with open(folder / "headline.csv") as handle:
        headline: dict[str, dict[str, float]] = {}
        for row in csv.DictReader(handle):
            if row["metric"] in HEADLINE:
                headline.setdefault(row["system"], {})[row["metric"]] = float(row["estimate"])
    meta = json.loads((folder / "evaluation.json").read_text())
    return {
        "latency": latency,
        "seconds_per_phase": meta.get("seconds"),
        "n_studies": meta.get("settings", {}).get("n_studies"),
        "num_beams": meta.get("settings", {}).get("num_beams"),
        "headline": headline,
        "notes": meta.get("notes"),
    }


def bench_gpu_notebooks(
    out_dir: Path | None = None,
    profile: str = "gpu",
    seed: int = 42,
    notebooks: tuple[str, ...] = NOTEBOOKS,
    src_dir: Path | None = None,
    json_path: Path | None = None,
) -> dict[str, Any]:
    """Execute ``notebooks`` under ``profile``, write them to ``out_dir``, return the figures.

    With ``json_path`` the figures so far are written after every notebook, so a run stopped
    by a time limit still leaves what it measured. Without CUDA: ``{"skipped": ...}``.
    """
    import torch

    from course_utils.config import REPO_ROOT, runs_dir
    from course_utils.runner import execute_notebook

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    out_dir = out_dir or runs_dir() / "bench-gpu-notebooks"
    src_dir = src_dir or REPO_ROOT / "solutions"
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"profile": profile, "device": device_info(), "notebooks": {}}
    for name in notebooks:
        with _MemoryPoller() as memory:
            run = execute_notebook(
                src_dir / f"{name}.ipynb", out_dir / f"{name}.ipynb",
                {"PROFILE": profile, "SEED": seed}, cwd=REPO_ROOT,
            )  # fmt: skip
        result["notebooks"][name] = {
            "seconds": round(run.seconds, 1), "ok": run.ok, "error": run.error,
            "peak_device_memory_used_mib": memory.peak_mib,
        }  # fmt: skip
        print(run.line(), flush=True)
        if name == "05_two_stage_training":
            result["training"] = training_figures(profile, seed)
        if name == "06_evaluation":
            result["evaluation"] = evaluation_figures()
        if json_path is not None:
            json_path.write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for executed notebooks")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--notebooks", nargs="+", default=list(NOTEBOOKS))
    parser.add_argument("--src-dir", type=Path, default=None, help="default: solutions/")
    parser.add_argument("--copy-history", action="store_true",
                        help="also copy notebook 05's history.json into --out")  # fmt: skip
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = bench_gpu_notebooks(
        args.out, args.profile, args.seed, tuple(args.notebooks), args.src_dir, args.json
    )
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=2, default=str)
    if args.json is not None:
        args.json.write_text(text)
    if args.copy_history:
        from course_utils.train import checkpoint_dir

        history = checkpoint_dir("findings", args.seed, args.profile) / "history.json"
        if history.is_file():
            shutil.copy(history, args.out / "history_05.json")
    print(text)
    return 0 if all(r["ok"] for r in result["notebooks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
