"""Answer key -> student notebooks.

``solutions/NN_name.ipynb`` is the single source of truth. This tool writes ``notebooks/NN_name.ipynb``
from it: outputs cleared, and every solution region in a ``todo`` cell replaced by a ``raise
NotImplementedError`` stub (indentation, signature, docstring and ``# HINT:`` lines kept), per
``shared/conventions.md``.

    python -m course_utils.release            # regenerate notebooks/
    python -m course_utils.release --check    # exit 1 and name notebook + cell when out of sync

The tool also lints the answer key (cell kinds, ids, points, markers) and refuses to release a
notebook that breaks the conventions: a todo cell without a solution region, markers outside todo
cells, unbalanced markers, graded cells that are editable.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .config import REPO_ROOT

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
TODO_BANNER = "# ===== TODO ====="
_DEF_RE = re.compile(r"^(\s*)(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)")


class ReleaseError(ValueError):
    """The answer key breaks the notebook conventions; the message names notebook and cell."""


@dataclass(frozen=True)
class CellRef:
    notebook: str
    index: int
    cell_id: str

    def __str__(self) -> str:
        return f"{self.notebook} cell {self.index} (id {self.cell_id})"


def course_kind(cell: nbformat.NotebookNode) -> str:
    """The cell's kind from its ``course`` metadata: setup, parameters, todo, graded or demo."""
    return cell.get("metadata", {}).get("course", {}).get("kind", "demo")


def _enclosing_name(lines: list[str], region_start: int, indent: str, fallback: str) -> str:
    """Name of the innermost def/class that encloses the region starting at ``region_start``."""
    for line in reversed(lines[:region_start]):
        match = _DEF_RE.match(line)
        if match and len(match.group(1)) < len(indent):
            return match.group(2)
    return fallback


def strip_solutions(source: str, fallback_name: str, where: str = "cell") -> str:
    """Replace each ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` region with a TODO stub.

    Args:
        source: the answer-key cell source.
        fallback_name: name used in the stub's message for regions outside any def/class.
        where: description of the cell for error messages.

    Returns:
        The student source. Lines outside the regions are kept verbatim.

    Raises:
        ReleaseError: unbalanced or nested markers, or no region at all.
    """
    lines = source.split("\n")
    out: list[str] = []
    inside = False
    regions = 0
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ReleaseError(f"{where}: nested '{BEGIN}' at line {number + 1}")
            inside = True
            regions += 1
            indent = line[: len(line) - len(line.lstrip())]
            name = _enclosing_name(lines, number, indent, fallback_name)
            out.append(f"{indent}{TODO_BANNER}")
            out.append(f'{indent}raise NotImplementedError("{name}: fill in this TODO")')
        elif stripped == END:
            if not inside:
                raise ReleaseError(f"{where}: '{END}' without '{BEGIN}' at line {number + 1}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ReleaseError(f"{where}: '{BEGIN}' is never closed")
    if regions == 0:
        raise ReleaseError(f"{where}: todo cell has no '{BEGIN}' region")
    return "\n".join(out)


def _has_marker(source: str) -> bool:
    return any(line.strip() in (BEGIN, END) for line in source.split("\n"))


def lint(nb: nbformat.NotebookNode, name: str) -> None:
    """Check an answer-key notebook against the conventions; raise :class:`ReleaseError`."""
    code_cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if not code_cells or course_kind(code_cells[0][1]) != "setup":
        raise ReleaseError(f"{name}: the first code cell must be the 'setup' cell")
    params = [i for i, c in code_cells if "parameters" in c.metadata.get("tags", [])]
    if len(params) != 1:
        raise ReleaseError(
            f"{name}: needs exactly one cell tagged 'parameters', found {len(params)}"
        )
    seen: set[tuple[str, str]] = set()
    for index, cell in enumerate(nb.cells):
        ref = CellRef(name, index, cell.get("id", "?"))
        kind = course_kind(cell)
        meta = cell.metadata.get("course", {})
        if kind in ("todo", "graded"):
            if "id" not in meta:
                raise ReleaseError(f"{ref}: {kind} cell without a course id")
            if (kind, meta["id"]) in seen:
                raise ReleaseError(f"{ref}: duplicate {kind} id {meta['id']!r}")
            seen.add((kind, meta["id"]))
            if kind not in cell.metadata.get("tags", []):
                raise ReleaseError(f"{ref}: {kind} cell must carry the {kind!r} tag")
        if kind == "graded":
            if not isinstance(meta.get("points"), (int, float)) or meta["points"] <= 0:
                raise ReleaseError(f"{ref}: graded cell needs positive 'points'")
            if cell.metadata.get("editable", True) or cell.metadata.get("deletable", True):
                raise ReleaseError(f"{ref}: graded cell must be editable=false, deletable=false")
            nbg = cell.metadata.get("nbgrader", {})
            if not nbg.get("grade") or nbg.get("points") != meta["points"]:
                raise ReleaseError(f"{ref}: graded cell's nbgrader metadata disagrees")
        if kind != "todo" and _has_marker(cell.source):
            raise ReleaseError(f"{ref}: solution markers outside a todo cell")
    graded_ids = {i for k, i in seen if k == "graded"}
    for kind, todo_id in seen:
        if kind == "todo" and todo_id not in graded_ids:
            raise ReleaseError(f"{name}: todo {todo_id!r} has no graded cell")


def student_version(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """Return the student notebook for answer-key notebook ``nb`` (which is left unchanged)."""
    lint(nb, name)
    student = copy.deepcopy(nb)
    student.metadata.pop("papermill", None)
    for index, cell in enumerate(student.cells):
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            if course_kind(cell) == "todo":
                where = str(CellRef(name, index, cell.get("id", "?")))
                fallback = cell.metadata["course"]["id"]
                cell.source = strip_solutions(cell.source, fallback, where)
    return student


def render(nb: nbformat.NotebookNode) -> str:
    """Deterministic on-disk form of a notebook."""
    return nbformat.writes(nb, version=4) + "\n"


def _first_difference(expected: nbformat.NotebookNode, actual_text: str, name: str) -> str:
    actual = nbformat.reads(actual_text, as_version=4)
    if len(actual.cells) != len(expected.cells):
        return f"{name}: {len(actual.cells)} cells, answer key gives {len(expected.cells)}"
    for index, (want, got) in enumerate(zip(expected.cells, actual.cells, strict=True)):
        if render_cell(want) != render_cell(got):
            return f"{name}: cell {index} (id {want.get('id', '?')}, {course_kind(want)}) differs"
    return f"{name}: notebook metadata differs"


def render_cell(cell: nbformat.NotebookNode) -> str:
    return nbformat.writes(nbformat.v4.new_notebook(cells=[cell]))


def release(
    solutions_dir: Path = REPO_ROOT / "solutions",
    notebooks_dir: Path = REPO_ROOT / "notebooks",
    check: bool = False,
) -> list[str]:
    """Regenerate (or with ``check=True`` compare) every student notebook.

    Returns:
        Problems found (empty when in sync). With ``check=False`` the files are written and the
        list is empty unless stale student notebooks without an answer key exist.
    """
    problems: list[str] = []
    sources = sorted(Path(solutions_dir).glob("*.ipynb"))
    if not sources:
        raise ReleaseError(f"no answer-key notebooks in {solutions_dir}")
    for src in sources:
        nb = nbformat.read(src, as_version=4)
        text = render(student_version(nb, src.name))
        dst = Path(notebooks_dir) / src.name
        if check:
            if not dst.exists():
                problems.append(f"{dst.name}: missing in {notebooks_dir.name}/")
            elif dst.read_text() != text:
                problems.append(
                    _first_difference(nbformat.reads(text, 4), dst.read_text(), dst.name)
                )
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text)
    known = {s.name for s in sources}
    for stale in sorted(Path(notebooks_dir).glob("*.ipynb")):
        if stale.name not in known:
            problems.append(f"{stale.name}: student notebook without an answer key")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_utils.release", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="fail when notebooks/ is out of sync")
    parser.add_argument("--solutions", type=Path, default=REPO_ROOT / "solutions")
    parser.add_argument("--notebooks", type=Path, default=REPO_ROOT / "notebooks")
    args = parser.parse_args(argv)
    try:
        problems = release(args.solutions, args.notebooks, check=args.check)
    except ReleaseError as err:
        print(f"release: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"release: {problem}", file=sys.stderr)
    if args.check and problems:
        print(
            "release: run `python -m course_utils.release` to regenerate notebooks/",
            file=sys.stderr,
        )
    if not problems:
        print(("in sync" if args.check else "released") + f": {args.notebooks}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
