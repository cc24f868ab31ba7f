"""Run every benchmark and write ``benchmarks/results.json``.

Each ``benchmarks/bench_<name>.py`` exposes ``bench_<name>() -> dict``. Speed and memory targets live
here, not in timed tests: a slow machine fails no test, but the numbers are recorded and compared
with their targets in the ``targets`` entry of each result.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def load_bench(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return getattr(module, f"bench_{name}")


def merge_result(results: dict, name: str, result: dict) -> bool:
    """Store ``result`` under ``name`` unless it is a skip (a GPU bench on a CPU machine) and a
    real measurement is already there: that one is kept. Returns whether ``result`` was stored."""
    if "skipped" in result and "skipped" not in results.get(name, {"skipped": True}):
        return False
    results[name] = result
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name, path in discover().items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        result = load_bench(name, path)()
        result["bench_seconds"] = round(time.perf_counter() - start, 2)
        result["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        result["machine"] = f"{platform.machine()} {os.cpu_count()} cores"
        # Wall-clock figures depend on what else runs: keep the 1-minute load average beside them.
        result["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        print(json.dumps(result, indent=2), flush=True)
        if not merge_result(results, name, result):
            print(f"{name}: {result['skipped']}; kept the result of "
                  f"{results[name].get('measured_at')}")  # fmt: skip
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
