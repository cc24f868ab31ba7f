"""Every notebook follows shared/conventions.md: header, setup, parameters, exercises, clean student copies."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from course_utils.config import REPO_ROOT
from course_utils.release import course_kind

SOLUTIONS = sorted((REPO_ROOT / "solutions").glob("*.ipynb"))
NAME = re.compile(r"^\d{2}_[a-z0-9_]+\.ipynb$")


def _nb(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_there_are_answer_key_notebooks():
    assert SOLUTIONS, "solutions/ is empty"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_header_has_title_objectives_time_and_colab_badge(path: Path):
    assert NAME.match(path.name), f"{path.name}: name must be NN_snake_case.ipynb"
    head = _nb(path).cells[0]
    assert head.cell_type == "markdown"
    text = head.source
    assert text.startswith(f"# {path.name[:2]} · "), "title line '# NN · Title'"
    assert "colab.research.google.com/github/" in text and f"notebooks/{path.name}" in text
    assert "**You will learn to**" in text
    assert "**Prerequisites:**" in text
    assert re.search(r"\*\*Time:\*\*.*`tiny`.*`colab`", text, re.S), "time for tiny and colab"
    assert "Memory:" in text, "memory needed, so a Colab T4 user knows it fits"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_setup_installs_a_pinned_course_on_colab_and_prints_the_config(path: Path):
    """The install is guarded (Colab only) and pinned to this release; outputs are capped; the
    config printout a maintainer asks for in a bug report is there."""
    import course_utils

    code = [c for c in _nb(path).cells if c.cell_type == "code"]
    setup = code[0].source
    guard = setup.index('if "google.colab" in sys.modules:')
    install = re.search(r'"course-utils @ git\+https://\S+@v([\d.]+)"', setup)
    assert install and install.start() > guard, "a pinned install line inside the Colab guard"
    assert install.group(1) == course_utils.__version__, "install pin = the package's version"
    assert "course_utils.notebook_defaults()" in setup, "printed outputs capped"
    assert any("course_utils.print_config(" in c.source for c in code[:4]), (
        "print_config near the top"
    )
    after_parameters = next(
        code[k + 1].source for k, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])
    )
    assert "course_utils.pick_profile(PROFILE, DATA_DIR" in after_parameters, "GPU detection"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_setup_parameters_and_exercises(path: Path):
    nb = _nb(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert course_kind(code[0]) == "setup"
    assert "google.colab" in code[0].source, "setup cell installs the course on Colab"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and course_kind(params[0]) == "parameters"
    assert re.search(r'^PROFILE = "tiny"', params[0].source, re.M)
    assert re.search(r"^SEED = \d+", params[0].source, re.M)
    last_md = [c for c in nb.cells if c.cell_type == "markdown"][-1]
    assert "## Exercises" in last_md.source


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_every_todo_has_hints_and_graded_cells_have_points(path: Path):
    nb = _nb(path)
    for index, cell in enumerate(nb.cells):
        if course_kind(cell) == "todo":
            before = "\n".join(c.source for c in nb.cells[max(0, index - 2) : index])
            assert "<details>" in before, (
                f"cell {index}: hints in a <details> block before the TODO"
            )
        if course_kind(cell) == "graded":
            points = cell.metadata["course"]["points"]
            assert f"({points} point" in cell.source, f"cell {index}: graded cell states its points"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_student_notebook_has_no_outputs_and_no_solutions(path: Path):
    student = _nb(REPO_ROOT / "notebooks" / path.name)
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        assert "BEGIN SOLUTION" not in cell.source


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path: Path):
    """`papermill --help-notebook` and its parameter inference see every name of the parameters
    cell (a second '=' on a line, e.g. in its comment, makes papermill skip it with a warning)."""
    import ast

    from papermill.inspection import inspect_notebook

    cell = next(c for c in _nb(path).cells if "parameters" in c.metadata.get("tags", []))
    names = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}  # fmt: skip
    assert names and set(inspect_notebook(str(path))) == names
