"""Evaluation speed: the full metric suite (studies/s) and report latency, greedy and beam.

On the embedded dataset's test split with the course's tiny findings model
(:func:`course_utils.train.course_model`; trained once, about two minutes, when its checkpoint is
missing), single-threaded like the notebooks (``THREADS = 1``):

* ``metric_suite_studies_per_s`` - :func:`course_utils.evaluate.score_reports` (pycocoevalcap
  BLEU/ROUGE-L/CIDEr, rouge-score, the labeler's CE counts, offline MiniLM BERTScore on every
  study, the RadGraph availability check) plus :func:`~course_utils.evaluate.bootstrap_table`
  (1,000 resamples of every headline number) on the beam-4 reports; also without BERTScore;
* ``bootstrap_1000_seconds`` - the bootstrap alone (all metrics of one system);
* ``latency_ms`` - one study at a time (batch size 1), median and p95, greedy and 4-beam, on
  ``LATENCY_STUDIES`` seeded test studies (the case study's budget: 30 s per study; deployment
  targets p50 < 5 s, p99 < 15 s);
* ``generation_studies_per_s`` - batched generation (64 studies per call) of the whole split;
* ``evaluate_model_seconds`` - the notebook's call end to end (BERTScore on 100 studies).

Run ``python benchmarks/bench_evaluate.py`` (prints JSON) or ``benchmarks/run.py --only evaluate``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

SEED = 42
THREADS = 1
LATENCY_STUDIES = 64
N_BOOT = 1000


def _timed(fn, *args, **kwargs) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_evaluate() -> dict[str, Any]:
    """Studies/s of the metric suite, bootstrap time, latency p50/p95 greedy and beam."""
    import warnings

    import torch

    from course_utils import evaluate as ev
    from course_utils.train import course_model

    torch.set_num_threads(THREADS)
    (cm, load_s, _) = _timed(course_model, "findings", seed=SEED, progress=False)
    ds = cm.datasets["test"]
    n = len(ds)
    max_new = cm.config.max_new_tokens
    out: dict[str, Any] = {
        "name": "evaluate (tiny findings model, CPU)",
        "threads": THREADS,
        "cpu_count": os.cpu_count(),
        "n_test_studies": n,
        "course_model_seconds": round(load_s, 2),
        "max_new_tokens": max_new,
    }

    gen: dict[str, Any] = {}
    runs = {}
    for beams in (4, 1):
        run, wall, cpu = _timed(ev.generate, cm.model, ds, num_beams=beams, batch_size=64,
                                max_new_tokens=max_new)  # fmt: skip
        runs[run.decoding] = run
        gen[run.decoding] = {"studies_per_s": round(n / wall, 1), "wall_seconds": round(wall, 2),
                             "cpu_seconds": round(cpu, 2),
                             "mean_tokens": round(float(np.mean([len(t) for t in run.token_ids])), 1)}  # fmt: skip
    out["generation"] = gen

    timed = np.sort(np.random.default_rng(SEED).choice(n, LATENCY_STUDIES, replace=False)).tolist()
    latency = {}
    for name, run in runs.items():
        ms = ev.measure_latency(
            cm.model, ds, timed, num_beams=run.num_beams, max_new_tokens=max_new
        )
        latency[name] = {"p50_ms": round(float(np.median(ms)), 1),
                         "p95_ms": round(float(np.percentile(ms, 95)), 1),
                         "max_ms": round(float(ms.max()), 1), "n": len(ms)}  # fmt: skip
    out["latency_ms"] = latency

    refs = list(ds.reports)
    texts = runs["beam-4"].texts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev.score_reports(refs[:4], texts[:4], bertscore=True, radgraph=False)  # load MiniLM
        scores, wall_full, cpu_full = _timed(ev.score_reports, refs, texts, name="beam-4",
                                             bertscore=True, bertscore_backend="minilm-offline")  # fmt: skip
        plain, wall_plain, cpu_plain = _timed(ev.score_reports, refs, texts, bertscore=False)
    boot, wall_boot, _ = _timed(ev.bootstrap_table, scores, n_boot=N_BOOT, seed=SEED)
    _, wall_boot_plain, _ = _timed(ev.bootstrap_table, plain, n_boot=N_BOOT, seed=SEED)
    out["metric_suite_studies_per_s"] = round(n / (wall_full + wall_boot), 1)
    out["metric_suite_cpu_studies_per_s"] = round(n / (cpu_full + wall_boot), 1)
    out["metric_suite_no_bertscore_studies_per_s"] = round(n / (wall_plain + wall_boot_plain), 1)
    out["bertscore_backend"] = scores.bertscore["backend"] if scores.bertscore else None
    out["bootstrap_1000_seconds"] = round(wall_boot, 4)
    out["bootstrap_metrics"] = int(len(boot))
    head = boot.set_index("metric")
    out["beam4_scores"] = {m: round(float(head.loc[m, "estimate"]), 4)
                           for m in ("BLEU-4", "ROUGE-L", "CE F1 micro-14", "CE F1 micro-5")}  # fmt: skip

    result, wall_eval, cpu_eval = _timed(
        ev.evaluate_model, cm.model, ds, max_new_tokens=max_new, bertscore_studies=100,
        latency_studies=32, n_boot=N_BOOT, seed=SEED, progress=False,
    )  # fmt: skip
    out["evaluate_model_seconds"] = round(wall_eval, 2)
    out["evaluate_model_cpu_seconds"] = round(cpu_eval, 2)
    out["evaluate_model_phases_seconds"] = {k: round(v, 2) for k, v in result.seconds.items()}
    beam = latency["beam-4"]
    out["targets"] = {
        "latency_p50_ms_beam": "< 5000 (case study deployment p50 < 5 s)",
        "latency_p95_ms_beam": "< 15000 (case study p99 < 15 s)",
        "bootstrap_1000_seconds": "< 1.0",
        "met": bool(beam["p50_ms"] < 5000 and beam["p95_ms"] < 15000 and wall_boot < 1.0),
    }
    return out


if __name__ == "__main__":
    print(json.dumps(bench_evaluate(), indent=2))
    sys.exit(0)
