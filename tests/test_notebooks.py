"""Notebook harness: the answer key runs under papermill; the student version fails exactly where it should.

(`make test` also runs `pytest --nbval-lax solutions/`, which executes the answer key under nbval.)
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from course_utils.config import REPO_ROOT
from course_utils.release import course_kind
from course_utils.runner import KERNEL, execute_notebook

SOLUTIONS = sorted((REPO_ROOT / "solutions").glob("*.ipynb"))
CELL_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def _errors(cell: nbformat.NotebookNode) -> list[str]:
    return [out.get("ename", "") for out in cell.get("outputs", []) if out.output_type == "error"]


@pytest.mark.parametrize("src", SOLUTIONS, ids=lambda p: p.stem)
def test_answer_key_runs_top_to_bottom_with_papermill(src: Path, tmp_path: Path):
    result = execute_notebook(src, tmp_path / src.name, {"PROFILE": "tiny"}, CELL_TIMEOUT_S)
    assert result.ok, f"{src.name} failed under papermill: {result.error}"


@pytest.mark.parametrize("src", SOLUTIONS, ids=lambda p: p.stem)
def test_student_notebook_fails_only_in_todo_and_graded_cells(src: Path):
    student_path = REPO_ROOT / "notebooks" / src.name
    nb = nbformat.read(student_path, as_version=4)
    NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        allow_errors=True,
        resources={"metadata": {"path": str(student_path.parent)}},
    ).execute()
    todo_ids = {c.metadata["course"]["id"] for c in nb.cells if course_kind(c) == "todo"}
    assert todo_ids, f"{src.name} has no student TODO"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        kind, errors = course_kind(cell), _errors(cell)
        where = f"{src.name} cell {index} ({kind} {cell.metadata.get('course', {}).get('id', '')})"
        if kind in ("todo", "graded"):
            # A todo cell exercises the stub it defines; its graded cell calls the stub too.
            assert errors == ["NotImplementedError"], (
                f"{where}: expected NotImplementedError, got {errors}"
            )
        else:
            assert errors == [], (
                f"{where}: demo cells must run on the reference library, got {errors}"
            )
