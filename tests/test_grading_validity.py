"""Grading validity, structurally: every graded question of every answer key is backed by a
checker in ``course_utils.checks.nbNN`` and by a wrong-answer suite ``tests/test_checks_nbNN.py``;
the answer keys are valid nbgrader sources (metadata schema, and nbgrader's own
``generate_assignment`` when nbgrader is installed).

The wrong-answer suites themselves (one plausible mistake per knob must fail, a correct
alternative must pass) live in ``tests/test_checks_nbNN.py``. Notebooks that do not exist yet are
skipped, so this file starts guarding 05-09 as soon as their answer keys land.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_utils.config import REPO_ROOT
from course_utils.grade import defined_names

SOLUTIONS = REPO_ROOT / "solutions"
NUMBERS = [f"{n:02d}" for n in range(1, 10)]


def _answer_key(number: str) -> Path:
    found = sorted(SOLUTIONS.glob(f"{number}_*.ipynb"))
    if not found:
        pytest.skip(f"solutions/{number}_*.ipynb does not exist yet")
    return found[0]


def _cells(path: Path, kind: str) -> list[nbformat.NotebookNode]:
    nb = nbformat.read(path, as_version=4)
    return [c for c in nb.cells if c.metadata.get("course", {}).get("kind") == kind]


def _checker_calls(source: str) -> list[tuple[str, str, list[str]]]:
    """``(module alias, function, names passed positionally)`` for each ``x.check_y(...)``."""
    calls = []
    for node in ast.walk(ast.parse(source)):
        func = getattr(node, "func", None)
        if (
            isinstance(node, ast.Call)
            and isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.attr.startswith("check_")
        ):
            args = [a.id for a in node.args if isinstance(a, ast.Name)]
            calls.append((func.value.id, func.attr, args))
    return calls


@pytest.mark.parametrize("number", NUMBERS)
def test_every_graded_cell_calls_a_checker_of_its_own_notebook(number: str):
    path = _answer_key(number)
    module = importlib.import_module(f"course_utils.checks.nb{number}")
    todo_names = {c.metadata["course"]["id"]: defined_names(c.source) for c in _cells(path, "todo")}
    graded = _cells(path, "graded")
    assert graded, f"{path.name} has no graded cell"
    for cell in graded:
        qid = cell.metadata["course"]["id"]
        calls = _checker_calls(cell.source)
        assert calls, f"{path.name} graded {qid}: calls no nb{number}.check_*(...)"
        for alias, name, args in calls:
            where = f"{path.name} graded {qid}: {alias}.{name}"
            assert alias == f"nb{number}", f"{where} uses another notebook's checker module"
            assert callable(getattr(module, name, None)), f"{where} is not in {module.__name__}"
            assert inspect.signature(getattr(module, name)).parameters, f"{where} takes nothing"
            assert args and args[0] in todo_names.get(qid, set()), (
                f"{where}: its first argument should be the function/class the todo cell "
                f"{qid!r} defines ({sorted(todo_names.get(qid, set()))}), got {args}"
            )


@pytest.mark.parametrize("number", NUMBERS)
def test_every_checker_has_a_wrong_answer_suite(number: str):
    path = _answer_key(number)
    suite = REPO_ROOT / "tests" / f"test_checks_nb{number}.py"
    assert suite.is_file(), f"{path.name} has graded cells but no {suite.name}"
    text = suite.read_text()
    for cell in _cells(path, "graded"):
        for _, name, _ in _checker_calls(cell.source):
            assert name in text, f"{suite.name} never exercises {name} (graded in {path.name})"


# ---- nbgrader ---------------------------------------------------------------------------------


def _expected_nbgrader(number: str, cell: nbformat.NotebookNode) -> dict:
    course = cell.metadata["course"]
    if course["kind"] == "graded":
        return {"grade": True, "grade_id": f"nb{number}_{course['id']}", "locked": True,
                "points": course["points"], "schema_version": 3, "solution": False}  # fmt: skip
    return {"grade": False, "grade_id": f"nb{number}_{course['id']}_todo", "locked": False,
            "schema_version": 3, "solution": True}  # fmt: skip


@pytest.mark.parametrize("number", NUMBERS)
def test_graded_and_todo_cells_carry_the_nbgrader_schema(number: str):
    path = _answer_key(number)
    for kind in ("graded", "todo"):
        for cell in _cells(path, kind):
            got = dict(cell.metadata.get("nbgrader", {}))
            got.pop("cell_type", None)  # nbgrader adds it itself
            assert got == _expected_nbgrader(number, cell), f"{path.name} {kind} {cell.id}"
            if kind == "graded":
                assert cell.metadata.get("editable") is False
                assert cell.metadata.get("deletable") is False


def test_nbgrader_grade_ids_are_unique_across_the_course():
    seen: dict[str, str] = {}
    for path in sorted(SOLUTIONS.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if grade_id:
                assert grade_id not in seen, f"{grade_id} in {path.name} and {seen[grade_id]}"
                seen[grade_id] = path.name
    assert seen


@pytest.mark.skipif(importlib.util.find_spec("nbgrader") is None, reason="nbgrader not installed")
def test_nbgrader_generate_assignment_accepts_an_answer_key(tmp_path: Path):
    from nbgrader.nbgraderformat import MetadataValidator

    key = _answer_key("01")
    MetadataValidator().validate_nb(nbformat.read(key, as_version=4))
    source = tmp_path / "source" / "nb01"
    source.mkdir(parents=True)
    shutil.copy(key, source / key.name)
    run = subprocess.run(
        [sys.executable, "-m", "nbgrader", "generate_assignment", "nb01", "--force", "--no-db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    released = nbformat.read(tmp_path / "release" / "nb01" / key.name, as_version=4)
    todo = [c for c in released.cells if c.metadata.get("nbgrader", {}).get("solution")]
    graded = [c for c in released.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert len(todo) == len(_cells(key, "todo")) and len(graded) == len(_cells(key, "graded"))
    for cell in todo:
        assert "# BEGIN SOLUTION" not in cell.source and "# END SOLUTION" not in cell.source
        assert "raise NotImplementedError()" in cell.source
    for cell, original in zip(graded, _cells(key, "graded"), strict=True):
        assert cell.source == original.source
        assert cell.metadata["nbgrader"]["points"] == original.metadata["course"]["points"]
        assert cell.metadata["nbgrader"]["checksum"]  # locked cells are checksummed
