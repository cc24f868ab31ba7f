"""benchmarks/run.py: a GPU bench skipped on a CPU machine does not erase the last measurement."""

from __future__ import annotations

import importlib.util
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def _run_module():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skip_keeps_the_last_real_measurement() -> None:
    merge = _run_module().merge_result
    results = {"gpu": {"p50_ms": 907.0, "measured_at": "2026-11-23"}}
    assert not merge(results, "gpu", {"skipped": "no CUDA device"})
    assert results["gpu"]["p50_ms"] == 907.0
    assert merge(results, "gpu", {"p50_ms": 880.0})  # a new measurement replaces it
    assert results["gpu"] == {"p50_ms": 880.0}
    assert merge(results, "new", {"skipped": "no CUDA device"})  # nothing to keep: record the skip
    assert merge(results, "new", {"skipped": "still no CUDA"})
    assert results["new"] == {"skipped": "still no CUDA"}


def test_every_bench_module_is_discovered() -> None:
    names = set(_run_module().discover())
    assert {"deploy", "deploy_gpu", "gpu", "gpu_notebooks", "train"} <= names
