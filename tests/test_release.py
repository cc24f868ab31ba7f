"""The release tool: answer key -> student notebooks, and the sync check."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from course_utils.release import ReleaseError, main, release, strip_solutions, student_version

TODO_SRC = '''def template_baseline(image_path: str, labels: list) -> str:
    """Docstring kept for the student."""
    # HINT: map each label to a sentence
    # BEGIN SOLUTION
    sentences = [f"{label}." for label in labels]
    return " ".join(sentences)
    # END SOLUTION


THRESHOLD = 0.5'''


def _cell(kind: str, source: str, qid: str = "q1", points: int = 2) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.id = f"{kind}-{qid}"
    if kind in ("setup", "parameters"):
        cell.metadata.update(course={"kind": kind}, tags=[kind])
    elif kind == "todo":
        cell.metadata.update(course={"kind": "todo", "id": qid}, tags=["todo"])
    elif kind == "graded":
        cell.metadata.update(
            course={"kind": "graded", "id": qid, "points": points},
            tags=["graded"],
            editable=False,
            deletable=False,
            nbgrader={"grade": True, "points": points, "grade_id": qid},
        )
    return cell


def _notebook(todo_source: str = TODO_SRC) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _cell("setup", "import math", "s"),
        _cell("parameters", "PROFILE = 'tiny'", "p"),
        _cell("todo", todo_source),
        _cell("graded", "assert template_baseline('x', ['Edema']) == 'Edema.'"),
    ]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="answer key output")]
    nb.cells[2].execution_count = 3
    return nb


def test_strip_keeps_signature_docstring_hints_and_indent():
    out = strip_solutions(TODO_SRC, "q1")
    assert out.splitlines()[:3] == TODO_SRC.splitlines()[:3]
    assert "    # HINT: map each label to a sentence" in out
    assert "    # ===== TODO =====" in out
    assert '    raise NotImplementedError("template_baseline: fill in this TODO")' in out
    assert "sentences" not in out and "BEGIN SOLUTION" not in out
    assert out.rstrip().endswith("THRESHOLD = 0.5")


def test_top_level_region_uses_fallback_name():
    out = strip_solutions("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\nprint(x)", "q7")
    assert out == '# ===== TODO =====\nraise NotImplementedError("q7: fill in this TODO")\nprint(x)'


def test_nested_function_region_names_innermost_function():
    src = "class M:\n    def forward(self, x):\n        # BEGIN SOLUTION\n        return x\n        # END SOLUTION"
    assert 'NotImplementedError("forward: fill' in strip_solutions(src, "q")


@pytest.mark.parametrize(
    "source, message",
    [
        ("x = 1", "has no '# BEGIN SOLUTION' region"),
        ("# BEGIN SOLUTION\nx = 1", "never closed"),
        ("x = 1\n# END SOLUTION", "without '# BEGIN SOLUTION'"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "nested"),
    ],
)
def test_bad_markers_are_rejected(source, message):
    with pytest.raises(ReleaseError, match=message):
        strip_solutions(source, "q", "nb.ipynb cell 2")


def test_student_version_clears_outputs_and_leaves_answer_key_alone():
    nb = _notebook()
    student = student_version(nb, "01.ipynb")
    assert student.cells[2].outputs == [] and student.cells[2].execution_count is None
    assert "NotImplementedError" in student.cells[2].source
    assert "sentences" in nb.cells[2].source  # the answer key is not mutated
    assert student.cells[3].source == nb.cells[3].source


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda nb: nb.cells.pop(0), "first code cell must be the 'setup' cell"),
        (lambda nb: nb.cells[1].metadata.update(tags=[]), "exactly one cell tagged 'parameters'"),
        (lambda nb: nb.cells[3].metadata.update(editable=True), "editable=false"),
        (lambda nb: nb.cells[3].metadata["course"].update(points=0), "positive 'points'"),
        (lambda nb: nb.cells.pop(3), "has no graded cell"),
        (lambda nb: nb.cells.append(_cell("todo", TODO_SRC)), "duplicate todo id"),
        (lambda nb: setattr(nb.cells[0], "source", "# BEGIN SOLUTION"), "markers outside a todo"),
    ],
)
def test_lint_rejects_convention_breaks(mutate, message):
    nb = _notebook()
    mutate(nb)
    with pytest.raises(ReleaseError, match=message):
        student_version(nb, "01.ipynb")


def _write_key(tmp_path: Path) -> tuple[Path, Path]:
    solutions, notebooks = tmp_path / "solutions", tmp_path / "notebooks"
    solutions.mkdir()
    nbformat.write(_notebook(), solutions / "01_demo.ipynb")
    return solutions, notebooks


def test_release_then_check_is_in_sync(tmp_path):
    solutions, notebooks = _write_key(tmp_path)
    assert release(solutions, notebooks) == []
    assert release(solutions, notebooks, check=True) == []
    first = (notebooks / "01_demo.ipynb").read_text()
    release(solutions, notebooks)
    assert (notebooks / "01_demo.ipynb").read_text() == first  # deterministic


def test_check_names_notebook_and_cell_when_out_of_sync(tmp_path, capsys):
    solutions, notebooks = _write_key(tmp_path)
    release(solutions, notebooks)
    nb = nbformat.read(solutions / "01_demo.ipynb", as_version=4)
    nb.cells[3].source += "\nassert True"
    nbformat.write(nb, solutions / "01_demo.ipynb")
    problems = release(solutions, notebooks, check=True)
    assert problems == ["01_demo.ipynb: cell 3 (id graded-q1, graded) differs"]
    assert main(["--check", "--solutions", str(solutions), "--notebooks", str(notebooks)]) == 1
    assert "cell 3" in capsys.readouterr().err


def test_check_reports_missing_and_stale_notebooks(tmp_path):
    solutions, notebooks = _write_key(tmp_path)
    notebooks.mkdir()
    (notebooks / "99_orphan.ipynb").write_text("{}")
    problems = release(solutions, notebooks, check=True)
    assert "01_demo.ipynb: missing in notebooks/" in problems
    assert "99_orphan.ipynb: student notebook without an answer key" in problems


def test_repository_notebooks_are_in_sync():
    assert main(["--check"]) == 0
