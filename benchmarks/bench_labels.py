"""Labeler speed on all 3,955 IU X-ray reports (findings + impression) on one CPU core.

Run ``python benchmarks/bench_labels.py`` (prints one JSON object) or ``make bench``. Target:
>= 5,000 reports/s. The labeler is pure single-threaded Python, so it uses one core; the
best of 3 passes is reported (on a shared machine the minimum time is the fair one), with
the CPU time of that pass alongside the wall time.
"""

from __future__ import annotations

import json
import time

REPEATS = 3
TARGET_REPORTS_PER_SECOND = 5000


def load_reports() -> tuple[list[str], str]:
    """Every IU report as ``findings + " " + impression`` (sorted by uid) and its source."""
    from course_utils.data import load_iu_reports

    frame = load_iu_reports()
    texts = (frame["findings"] + " " + frame["impression"]).str.strip().tolist()
    return texts, "course_utils.data.load_iu_reports"


def bench_labeler() -> dict:
    """Reports/s of :func:`course_utils.labels.label_reports` over all IU reports, best of 3."""
    from course_utils.labels import CHEXPERT_LABELS, label_reports

    texts, source = load_reports()
    label_reports(texts[:200])  # warm-up (imports, regex caches)
    wall, cpu = [], []
    for _ in range(REPEATS):
        start, start_cpu = time.perf_counter(), time.process_time()
        frame = label_reports(texts)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    best = min(wall)
    return {
        "n_reports": len(texts),
        "source": source,
        "reports_per_second": round(len(texts) / best, 1),
        "best_seconds": round(best, 4),
        "cpu_reports_per_second": round(len(texts) / min(cpu), 1),
        "repeats": REPEATS,
        "positives": {lab: int((frame[lab] == 1.0).sum()) for lab in CHEXPERT_LABELS},
        "uncertain": {lab: int((frame[lab] == -1.0).sum()) for lab in CHEXPERT_LABELS},
        "targets": {"reports_per_second": f">= {TARGET_REPORTS_PER_SECOND}"},
    }


# benchmarks/run.py discovers ``bench_<file suffix>``
bench_labels = bench_labeler


if __name__ == "__main__":
    print(json.dumps(bench_labeler(), indent=2))
