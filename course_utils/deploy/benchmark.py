"""Latency and throughput: p50 / p95 / p99 per study, studies per hour, interleaved timing.

On a shared machine the load changes from second to second, so backends are timed
*interleaved* (study 1 on every backend, then study 2, ...): a busy moment slows all of them
alike and their ratio stays fair. Wall-clock time is what a user waits for; ``clock="cpu"``
(process CPU time, all threads) is steadier when other jobs share the cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class LatencyStats:
    """Latency of ``n`` timed calls in milliseconds (nearest-rank-free linear percentiles).

    ``studies_per_hour`` is 3,600,000 / mean: one worker serving one study at a time.
    """

    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    studies_per_hour: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def latency_stats(milliseconds: Any, studies_per_call: int = 1) -> LatencyStats:
    """Percentiles of per-call latencies (ms); ``studies_per_call`` > 1 for batched calls."""
    ms = np.asarray(milliseconds, dtype=float)
    if ms.size == 0:
        raise ValueError("latency_stats: no timings")
    if not np.isfinite(ms).all() or (ms < 0).any():
        raise ValueError("latencies must be finite and >= 0")
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    mean = float(ms.mean())
    return LatencyStats(
        n=int(ms.size), p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99),
        mean_ms=mean, studies_per_hour=3.6e6 * studies_per_call / mean if mean > 0 else np.inf,
    )  # fmt: skip


def time_interleaved(
    functions: Mapping[str, Callable[[int], Any]],
    n: int,
    *,
    warmup: int = 2,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Call every ``functions[name](i)`` for i in 0..n-1, round-robin; ms per call and name.

    ``warmup`` untimed rounds first (first calls pay for allocation and kernel selection).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}; choose one of {sorted(CLOCKS)}")
    if n < 1:
        raise ValueError("need at least one timed call")
    tick = CLOCKS[clock]
    for i in range(warmup):
        for fn in functions.values():
            fn(i % n)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for i in range(n):
        for name, fn in functions.items():
            start = tick()
            fn(i)
            times[name].append((tick() - start) * 1e3)
    return times


def compare_latency(
    functions: Mapping[str, Callable[[int], Any]],
    n: int,
    *,
    warmup: int = 2,
    clock: str = "wall",
    baseline: str | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`time_interleaved` summarised: LatencyStats per name plus ``speedup`` (baseline
    median / this median, robust to load spikes; the first name is the baseline by default)."""
    times = time_interleaved(functions, n, warmup=warmup, clock=clock)
    stats = {name: latency_stats(ms).to_dict() for name, ms in times.items()}
    base = baseline or next(iter(functions))
    for row in stats.values():
        row["speedup"] = stats[base]["p50_ms"] / row["p50_ms"]
    return stats


__all__ = ["CLOCKS", "LatencyStats", "compare_latency", "latency_stats", "time_interleaved"]
