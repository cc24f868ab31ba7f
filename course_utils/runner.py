"""Execute answer-key notebooks with papermill and keep the executed notebook + HTML.

``make run`` calls :func:`run_notebooks` on every ``solutions/*.ipynb`` under the ``tiny`` profile
and writes ``runs/<timestamp>/<name>.ipynb``, ``<name>.html`` and ``summary.txt`` (one line per
notebook: seconds and ok/failed).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .config import REPO_ROOT, runs_dir

DEFAULT_TIMEOUT_S = 600  # per cell; papermill's default is "no limit"
KERNEL = "python3"


@dataclass(frozen=True)
class RunResult:
    notebook: str
    seconds: float
    ok: bool
    error: str = ""

    def line(self) -> str:
        status = "ok" if self.ok else f"FAILED: {self.error}"
        return f"{self.notebook:<40} {self.seconds:7.1f} s  {status}"


def execute_notebook(
    src: Path,
    dst: Path,
    parameters: dict | None = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    cwd: Path | None = None,
) -> RunResult:
    """Run one notebook top to bottom with papermill; never raises for a failing notebook."""
    import papermill as pm

    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(src),
            str(dst),
            parameters=parameters or {},
            kernel_name=KERNEL,
            execution_timeout=timeout_s,
            progress_bar=False,
            cwd=str(cwd or src.parent),
        )
    except Exception as err:  # noqa: BLE001 - report every failure as a result line
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        return RunResult(src.stem, time.perf_counter() - start, False, first_line[:200])
    return RunResult(src.stem, time.perf_counter() - start, True)


def export_html(notebook: Path) -> Path:
    """Write ``notebook`` as HTML beside it and return the HTML path."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    html = notebook.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def run_notebooks(
    notebooks: list[Path] | None = None,
    out_dir: Path | None = None,
    profile: str = "tiny",
    timeout_s: int = DEFAULT_TIMEOUT_S,
) -> list[RunResult]:
    """Execute ``notebooks`` (default: every answer-key notebook) and write HTML + a summary."""
    notebooks = notebooks or sorted((REPO_ROOT / "solutions").glob("*.ipynb"))
    out_dir = out_dir or runs_dir() / datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for src in notebooks:
        dst = out_dir / src.name
        result = execute_notebook(src, dst, {"PROFILE": profile}, timeout_s)
        if dst.exists():
            export_html(dst)
        print(result.line(), flush=True)
        results.append(result)
    summary = "\n".join(r.line() for r in results) + "\n"
    (out_dir / "summary.txt").write_text(summary)
    print(f"executed notebooks and HTML in {out_dir}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils run")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: solutions/*.ipynb")
    parser.add_argument("--profile", default="tiny", choices=["tiny", "colab"])
    parser.add_argument("--out", type=Path, default=None, help="default: runs/<timestamp>/")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="seconds per cell")
    args = parser.parse_args(argv)
    results = run_notebooks(args.notebooks or None, args.out, args.profile, args.timeout)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
