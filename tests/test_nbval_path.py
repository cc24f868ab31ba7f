"""nbval path: ``pytest --nbval-lax --nbval-current-env`` passes on an answer key and fails on the
student notebook that ``course_utils.release`` generates from it; the sanitize file makes stored
paths and timings comparable.

The pair is a tiny synthetic assignment written to ``tmp_path`` so the test stays fast; the real
answer keys go through the same command in ``make test`` (``pytest tests solutions --nbval-lax``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_utils.config import REPO_ROOT
from course_utils.release import student_version

SANITIZE = REPO_ROOT / "tests" / "nbval_sanitize.cfg"


def _code(source: str, outputs: list | None = None, **metadata) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source, outputs=outputs or [], metadata=metadata)
    cell.execution_count = 1
    return cell


def _stream(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def answer_key() -> nbformat.NotebookNode:
    """Setup, parameters, one TODO with its graded cell, and two output-checked cells.

    The stored outputs were "recorded" on an instructor's machine: another path and another
    timing than any test run will print, which only the sanitize file reconciles.
    """
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                  "language": "python"}}  # fmt: skip
    nb.cells = [
        _code("import time\nfrom pathlib import Path", course={"kind": "setup"}, tags=["setup"]),
        _code("SCALE = 2", course={"kind": "parameters"}, tags=["parameters"]),
        _code(
            "def scale(x):\n    # BEGIN SOLUTION\n    return SCALE * x\n    # END SOLUTION",
            course={"kind": "todo", "id": "q1"},
            tags=["todo"],
        ),
        _code(
            "assert scale(21) == 42, 'scale(21) should be 42'",
            course={"kind": "graded", "id": "q1", "points": 1},
            tags=["graded"],
            editable=False,
            deletable=False,
            nbgrader={
                "grade": True,
                "grade_id": "nb99_q1",
                "points": 1,
                "locked": True,
                "solution": False,
                "schema_version": 3,
            },
        ),  # fmt: skip
        _code("# NBVAL_CHECK_OUTPUT\nprint(scale(5))", [_stream("10\n")]),
        _code(
            "# NBVAL_CHECK_OUTPUT\nstart = time.perf_counter()\n"
            "print(f'cache: {Path.cwd()}/table.csv, {SCALE} rows in "
            "{time.perf_counter() - start + 0.4:.2f} s')",
            [_stream("cache: /home/instructor/course/data/cache/table.csv, 2 rows in 1.73 s\n")],
        ),
    ]
    return nb


def _nbval(notebook: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
           "-p", "no:cacheprovider", "-q", *extra, str(notebook)]  # fmt: skip
    run = subprocess.run(
        cmd, cwd=notebook.parent, capture_output=True, text=True, timeout=180, check=False
    )
    run.stdout = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout)  # tracebacks are coloured
    return run


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nbval")
    key = answer_key()
    (root / "solutions").mkdir()
    (root / "notebooks").mkdir()
    nbformat.write(key, root / "solutions" / "99_scale.ipynb")
    nbformat.write(student_version(key, "99_scale"), root / "notebooks" / "99_scale.ipynb")
    return root / "solutions" / "99_scale.ipynb", root / "notebooks" / "99_scale.ipynb"


def test_sanitize_file_exists_with_the_documented_sections():
    text = SANITIZE.read_text()
    for section in ("[paths]", "[seconds]", "[devices]", "[memory addresses]"):
        assert section in text


def test_answer_key_passes_nbval_with_the_sanitize_file(pair):
    key, _ = pair
    run = _nbval(key, "--nbval-sanitize-with", str(SANITIZE))
    assert run.returncode == 0, run.stdout[-3000:]
    assert "6 passed" in run.stdout


def test_answer_key_fails_without_the_sanitize_file(pair):
    key, _ = pair
    run = _nbval(key)
    assert run.returncode == 1
    assert "1 failed, 5 passed" in run.stdout
    assert "/home/instructor/course/data/cache/table.csv" in run.stdout


def test_student_notebook_fails_on_its_todo(pair):
    _, student = pair
    run = _nbval(student, "--nbval-sanitize-with", str(SANITIZE))
    assert run.returncode == 1
    assert "NotImplementedError: scale: fill in this TODO" in run.stdout
    # the graded cell and the output-checked cell that call the stub fail; the rest pass
    assert "2 failed, 4 passed" in run.stdout
