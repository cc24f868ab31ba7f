"""Grade a folder of student notebooks against the answer key, one kernel per submission.

    python -m course_utils grade SUBMISSIONS/ --out gradebook.csv [--assignment 01]
        [--timeout-cell 300] [--timeout-total 900] [--memory-mb 4096] [--jobs 1]

How a submission is graded (``shared/conventions.md`` defines the cell kinds):

1. The file is read as a notebook (anything else: a ``not-a-notebook`` row with zero points) and
   matched to the answer key (nbgrader grade ids, the checker module it imports, the functions
   it defines). A notebook from another assignment gets a ``wrong-assignment`` row, not a run.
2. Graded cells are found by id (``course`` / ``nbgrader`` metadata) or by the checker call they
   contain, never by position. Their source is replaced by the answer key's, so an edited check
   counts for nothing; duplicates are dropped (each question counts once); a deleted, moved or
   retyped (markdown/raw) graded cell is re-inserted after the last cell that defines the
   function it checks. The parameters cell is the answer key's, so every run uses the same
   profile.
3. The notebook runs in a fresh kernel (own working folder, memory limit via
   ``resource.setrlimit(RLIMIT_DATA)``), cell by cell, continuing after errors, with a per-cell
   and an overall time limit. A cell that kills the kernel, or hangs even after an interrupt, is
   skipped and the notebook re-run once without it, so only the checks that depend on it lose.
4. A check passes only when its cell ran to the end: the grader appends a line that stores a
   random token to each graded cell and reads it back over the shell channel (which, unlike
   output, is never dropped). A crash, a timeout or a dead kernel is zero points with the
   reason, never "all passed".
5. Each submission's row is appended to the CSV and its feedback (markdown, plus the executed
   notebook with outputs capped per cell) is written as soon as it is graded, so one bad
   notebook never costs the batch. Before any student, the answer key itself is graded under
   the same limits and must score full marks (``--no-key-check`` skips this).

Limits: the grader defends against edited checks, rebinding the checker and runaway output or
memory; it is not a sandbox (student code runs with the grader's permissions) and it does not
stop a student who deliberately patches the reference library at run time or imports the
reference answer: it flags such cells in the feedback notes for a human to look at.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import copy
import csv
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any

from .config import REPO_ROOT

if TYPE_CHECKING:  # nbformat takes seconds to import: loaded when grading starts
    from nbformat import NotebookNode

KERNEL = "python3"
TIMEOUT_ENAME = "GraderTimeout"
COMPLETION_VAR = "_grader_check_completed"  # a graded cell's last line sets it to a token
MAX_FILE_BYTES = 500 * 2**20  # refuse to parse bigger "notebooks": they would exhaust the grader
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CHECK_CALL_RE = re.compile(r"\b([A-Za-z_]\w*)\.(check_\w+)\s*\(")
_CHECKS_IMPORT_RE = re.compile(r"course_utils\.checks(?:\.|\s+import\s+)((?:nb\d\d\s*,?\s*)+)")


def _nbf() -> Any:
    """The nbformat module, imported on first use."""
    import nbformat

    return nbformat


class GradingError(ValueError):
    """The grading run itself is misconfigured (no answer key, unknown assignment, empty folder)."""


@dataclass(frozen=True)
class GradeLimits:
    """Resource limits for one submission.

    Attributes:
        cell_timeout_s: seconds one cell may run before it is interrupted.
        total_timeout_s: seconds for the whole submission, re-runs included.
        memory_mb: RLIMIT_DATA of the kernel in MiB (heap + anonymous mmaps); ``None``: no limit.
        max_output_bytes: characters of output stored per cell (the rest is dropped, with a note).
        max_restarts: re-runs after a cell kills the kernel or hangs (that cell is skipped).
        probe_timeout_s: seconds an interrupted kernel has to answer before it counts as hung.
        output_grace_s: seconds to keep reading a cell's output after the kernel said it
            finished (a flood of prints arrives late; the completion mark comes last).
        kernel_name: Jupyter kernel to run submissions in.
    """

    cell_timeout_s: int = 300
    total_timeout_s: int = 900
    memory_mb: int | None = 4096
    max_output_bytes: int = 100_000
    max_restarts: int = 1
    probe_timeout_s: int = 10
    output_grace_s: int = 10
    kernel_name: str = KERNEL

    def __post_init__(self) -> None:
        if self.cell_timeout_s < 1 or self.total_timeout_s < 1:
            raise ValueError("timeouts must be at least 1 second")
        if self.memory_mb is not None and self.memory_mb < 64:
            raise ValueError(f"memory_mb={self.memory_mb} is too small for a Python kernel")


# --------------------------------------------------------------------------------------------
# Answer key


@dataclass(frozen=True)
class GradedSpec:
    """One graded question of the answer key.

    Attributes:
        id: ``course`` id (``"q1"``); ``grade_id``: nbgrader id (``"nb01_q1"``), the CSV column.
        points: points for passing. ``source``: the answer key's cell source.
        names: the student's functions/classes the check calls (defined in the todo cell).
        checkers: ``(module alias, check function)`` pairs the cell calls, e.g. ``("nb01",
            "check_impute_xxxx")``.
    """

    id: str
    grade_id: str
    points: float
    source: str
    names: tuple[str, ...]
    checkers: tuple[tuple[str, str], ...]

    def matches_source(self, source: str) -> bool:
        """True when ``source`` contains this question's check (a retyped or pasted copy)."""
        if self.checkers:
            return any(re.search(rf"\b{re.escape(name)}\s*\(", source) for _, name in self.checkers)
        first = _first_code_line(self.source)
        return bool(first) and first in {line.strip() for line in source.splitlines()}


@dataclass(frozen=True)
class AnswerKey:
    """An answer-key notebook reduced to what grading needs."""

    name: str
    path: Path
    graded: tuple[GradedSpec, ...]
    todo_names: dict[str, tuple[str, ...]]
    grade_ids: frozenset[str]
    checker_modules: frozenset[str]
    setup_source: str
    parameters_source: str
    course_modules: frozenset[str]

    @property
    def max_points(self) -> float:
        return float(sum(spec.points for spec in self.graded))

    def spec(self, question_id: str) -> GradedSpec:
        return next(s for s in self.graded if s.id == question_id)


def load_answer_key(path: str | os.PathLike) -> AnswerKey:
    """Read an answer-key notebook (``solutions/NN_name.ipynb`` or a synthetic one).

    Raises:
        GradingError: not a readable notebook, or no graded cell with an id and points.
    """
    path = Path(path)
    try:
        nb = _nbf().read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad key
        raise GradingError(f"answer key {path}: not a readable notebook ({err})") from err
    todo_names: dict[str, tuple[str, ...]] = {}
    graded_cells: list[NotebookNode] = []
    setup, parameters = "", ""
    grade_ids: set[str] = set()
    for cell in nb.cells:
        meta = cell.get("metadata", {})
        course = meta.get("course", {})
        kind = course.get("kind", "demo")
        if meta.get("nbgrader", {}).get("grade_id"):
            grade_ids.add(meta["nbgrader"]["grade_id"])
        if kind == "todo":
            todo_names[course["id"]] = tuple(sorted(defined_names(cell.source)))
        elif kind == "graded":
            graded_cells.append(cell)
        elif kind == "setup" or "setup" in meta.get("tags", []):
            setup = cell.source
        if "parameters" in meta.get("tags", []):
            parameters = cell.source
    all_todo = set().union(*todo_names.values()) if todo_names else set()
    graded = tuple(_graded_spec(cell, todo_names, all_todo, path) for cell in graded_cells)
    if not graded:
        raise GradingError(f"answer key {path}: no graded cell (course kind 'graded')")
    checker_modules = {mod for spec in graded for mod, _ in spec.checkers}
    return AnswerKey(
        name=path.stem,
        path=path,
        graded=graded,
        todo_names=todo_names,
        grade_ids=frozenset(grade_ids),
        checker_modules=frozenset(m for m in checker_modules if re.fullmatch(r"nb\d\d", m)),
        setup_source=setup,
        parameters_source=parameters,
        course_modules=frozenset(_course_module_aliases(setup)),
    )


def _graded_spec(
    cell: NotebookNode, todo_names: dict[str, tuple[str, ...]], all_todo: set[str], path: Path
) -> GradedSpec:
    course = cell.metadata["course"]
    if "id" not in course or not isinstance(course.get("points"), (int, float)):
        raise GradingError(f"answer key {path}: graded cell {cell.get('id')} lacks id/points")
    used = loaded_names(cell.source)
    names = used & set(todo_names.get(course["id"], ())) or used & all_todo
    checkers = tuple(dict.fromkeys(_CHECK_CALL_RE.findall(cell.source)))
    return GradedSpec(
        id=course["id"],
        grade_id=cell.metadata.get("nbgrader", {}).get("grade_id") or course["id"],
        points=float(course["points"]),
        source=cell.source,
        names=tuple(sorted(names)),
        checkers=checkers,
    )


def find_answer_keys(key_dir: str | os.PathLike) -> list[AnswerKey]:
    """Every answer key in ``key_dir`` (``*.ipynb``), sorted by name.

    Raises:
        GradingError: the folder is missing or holds no answer key.
    """
    key_dir = Path(key_dir)
    if not key_dir.is_dir():
        raise GradingError(f"answer-key folder not found: {key_dir}")
    keys = [load_answer_key(p) for p in sorted(key_dir.glob("*.ipynb"))]
    if not keys:
        raise GradingError(f"no answer-key notebooks (*.ipynb) in {key_dir}")
    return keys


def select_answer_key(keys: list[AnswerKey], assignment: str) -> AnswerKey:
    """The key named by ``assignment``: ``"01"``, ``"nb01"`` or ``"01_load_and_preprocess"``.

    Raises:
        GradingError: no key or several keys match.
    """
    wanted = assignment.removeprefix("nb").removesuffix(".ipynb")
    hits = [k for k in keys if k.name == wanted or k.name.split("_")[0] == wanted]
    if len(hits) != 1:
        names = ", ".join(k.name for k in keys)
        what = "no answer key" if not hits else "several answer keys"
        raise GradingError(f"--assignment {assignment!r}: {what} match (available: {names})")
    return hits[0]


# --------------------------------------------------------------------------------------------
# Source analysis (AST with a regex fallback for cells that do not parse)


def _parse(source: str) -> ast.Module | None:
    """Parse a cell, turning IPython magics/shell lines into ``pass``; ``None`` on syntax errors."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        lines.append(indent + "pass" if stripped.startswith(("%", "!")) else line)
    try:
        return ast.parse("\n".join(lines))
    except (SyntaxError, ValueError):
        return None


def _top_level(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Statements at module level, descending into if/try/with/for blocks but not into defs."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.Try)):
            for block in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)


def _target_names(target: ast.expr) -> Iterable[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            yield from _target_names(elt)


def defined_names(source: str) -> set[str]:
    """Names a cell binds at module level (def, class, assignment, import)."""
    tree = _parse(source)
    if tree is None:
        return set(re.findall(r"^(?:def|class)\s+([A-Za-z_]\w*)", source, re.M))
    names: set[str] = set()
    for node in _top_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(_target_names(target))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            names.update(_target_names(node.target))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def loaded_names(source: str) -> set[str]:
    """Names a cell reads."""
    tree = _parse(source)
    if tree is None:
        return set(re.findall(r"[A-Za-z_]\w*", source))
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _first_code_line(source: str) -> str:
    for line in source.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped
    return ""


def _course_module_aliases(setup_source: str) -> set[str]:
    """Names the setup cell binds to course_utils modules (``course_utils``, ``data``, ``nb01``)."""
    tree = _parse(setup_source)
    aliases: set[str] = set()
    if tree is None:
        return aliases
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if a.name.startswith("course_utils")
            )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_utils"):
            aliases.update(a.asname or a.name for a in node.names)
    return aliases


def tamper_warnings(source: str, aliases: Iterable[str]) -> list[str]:
    """Statements that rebind attributes of course modules (``text.impute_xxxx = ...``)."""
    tree = _parse(source)
    aliases = set(aliases) | {"course_utils"}
    if tree is None:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        else:
            targets = []
        for target in targets:
            if isinstance(target, ast.Attribute) and _base_name(target) in aliases:
                found.append(ast.unparse(target))
        is_setattr = isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr"
        if is_setattr and node.args and _base_name(node.args[0]) in aliases:
            found.append(f"setattr({ast.unparse(node.args[0])}, ...)")
    return found


def borrowed_answers(source: str, todo_names: Iterable[str], aliases: Iterable[str]) -> list[str]:
    """Statements that take a TODO's answer from the course library instead of writing it
    (``from course_utils.text import impute_xxxx``, ``impute_xxxx = text.impute_xxxx``)."""
    tree = _parse(source)
    todo, aliases = set(todo_names), set(aliases) | {"course_utils"}
    if tree is None:
        return []
    found = []
    for node in _top_level(tree.body):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_utils"):
            if any((a.asname or a.name) in todo for a in node.names):
                found.append(ast.unparse(node))
        elif isinstance(node, ast.Assign) and _base_name(node.value) in aliases:
            if isinstance(node.value, ast.Attribute) and any(
                set(_target_names(t)) & todo for t in node.targets
            ):
                found.append(ast.unparse(node))
    return found


def _base_name(expr: ast.expr) -> str | None:
    while isinstance(expr, ast.Attribute):
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None


# --------------------------------------------------------------------------------------------
# Reading a submission and matching it to an assignment


class NotANotebook(ValueError):
    """The submitted file is not a Jupyter notebook; the message says why."""


def read_submission(path: Path) -> NotebookNode:
    """Read a submitted file as a v4 notebook.

    Raises:
        NotANotebook: unreadable, too large, not JSON, or JSON without a list of cells.
    """
    try:
        size = path.stat().st_size
    except OSError as err:
        raise NotANotebook(f"cannot read the file ({err})") from err
    if size > MAX_FILE_BYTES:
        raise NotANotebook(f"{size / 2**20:.0f} MB is too large for a notebook; clear the outputs")
    if size == 0:
        raise NotANotebook("the file is empty")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotANotebook(f"not JSON text ({err})") from err
    if isinstance(raw, dict) and raw.get("nbformat") == 3 and "worksheets" in raw:
        raw = json.loads(_nbf().writes(_nbf().reads(json.dumps(raw), as_version=4)))
    if not isinstance(raw, dict) or not isinstance(raw.get("cells", None), list):
        raise NotANotebook("JSON without a 'cells' list")
    bad = [i for i, c in enumerate(raw["cells"]) if not _is_cell(c)]
    if bad:
        raise NotANotebook(f"malformed notebook: cells {bad[:5]} lack a valid 'cell_type'")
    raw.setdefault("nbformat", 4)
    raw.setdefault("nbformat_minor", 5)
    raw.setdefault("metadata", {})
    try:
        nb = _nbf().reads(json.dumps(raw), as_version=4)
    except Exception as err:  # noqa: BLE001 - nbformat raises many kinds
        raise NotANotebook(f"malformed notebook ({type(err).__name__}: {err})") from err
    for cell in nb.cells:
        cell.setdefault("metadata", _nbf().NotebookNode())
        if not isinstance(cell.get("source", ""), str):
            cell.source = "".join(cell.get("source") or [])
    return nb


def _is_cell(cell: Any) -> bool:
    return isinstance(cell, dict) and cell.get("cell_type") in ("code", "markdown", "raw")


def _code_sources(nb: NotebookNode) -> list[str]:
    return [c.get("source", "") for c in nb.cells if c.get("cell_type") == "code"]


def assignment_score(nb: NotebookNode, key: AnswerKey) -> int:
    """How strongly a submission looks like ``key``'s assignment (0: nothing in common).

    Evidence, strongest first: notebook metadata ``course.assignment``, shared nbgrader grade
    ids, the ``course_utils.checks.nbNN`` module it imports, checks it contains, functions of the
    key's todo cells it defines.
    """
    score = 0
    if _dict(_dict(nb.get("metadata")).get("course")).get("assignment") == key.name:
        score += 100
    grade_ids = {_dict(_dict(c.get("metadata")).get("nbgrader")).get("grade_id") for c in nb.cells}
    score += 10 * len(grade_ids & key.grade_ids)
    sources = _code_sources(nb)
    joined = "\n".join(sources)
    imported = {
        m for group in _CHECKS_IMPORT_RE.findall(joined) for m in re.findall(r"nb\d\d", group)
    }
    score += 5 * len(imported & key.checker_modules)
    score += 2 * sum(any(spec.matches_source(s) for s in sources) for spec in key.graded)
    todo = set().union(*key.todo_names.values()) if key.todo_names else set()
    defined = set().union(*(defined_names(s) for s in sources)) if sources else set()
    return score + len(todo & defined)


def identify_assignment(nb: NotebookNode, keys: list[AnswerKey]) -> AnswerKey | None:
    """The best-matching key, or ``None`` when no key shares anything with the notebook."""
    scored = [(assignment_score(nb, k), k) for k in keys]
    best_score, best = max(scored, key=lambda pair: pair[0])
    return best if best_score > 0 else None


def wrong_assignment_reason(nb: NotebookNode, key: AnswerKey, keys: list[AnswerKey]) -> str | None:
    """Why ``nb`` is not a submission for ``key`` (``None`` when it plausibly is)."""
    own = assignment_score(nb, key)
    others = [(assignment_score(nb, k), k) for k in keys if k.name != key.name]
    best_other = max(others, key=lambda pair: pair[0], default=(0, None))
    if best_other[1] is not None and best_other[0] > own:
        return (
            f"wrong assignment: this notebook looks like {best_other[1].name}, "
            f"not {key.name} (grade ids, checker imports and functions point there)"
        )
    if own == 0:
        return (
            f"wrong assignment: nothing in this notebook belongs to {key.name} "
            f"(none of its graded ids, checks or functions {sorted(_todo_names(key))[:4]})"
        )
    return None


def _todo_names(key: AnswerKey) -> set[str]:
    return set().union(*key.todo_names.values()) if key.todo_names else set()


# --------------------------------------------------------------------------------------------
# Preparing the notebook that is executed


@dataclass
class CellRole:
    """What a cell of the prepared notebook is: its kind and where it came from."""

    kind: str  # prologue | student | graded | setup | parameters
    question: str | None = None
    original_index: int | None = None  # 0-based index in the submission


@dataclass
class Prepared:
    """The notebook to execute plus the bookkeeping that maps results back to questions."""

    nb: NotebookNode
    roles: list[CellRole]
    notes: list[str]
    missing_definitions: dict[str, tuple[str, ...]]
    sentinel: str


def _dict(value: Any) -> dict:
    """``value`` when it is a dict, else ``{}`` (student metadata can be anything)."""
    return value if isinstance(value, dict) else {}


def _cell_kind(cell: NotebookNode) -> str:
    meta = _dict(cell.get("metadata"))
    kind = _dict(meta.get("course")).get("kind")
    tags = meta.get("tags", []) if isinstance(meta.get("tags"), list) else []
    if kind in ("setup", "parameters", "todo", "graded"):
        return kind
    for tag in ("graded", "todo", "parameters", "setup"):
        if tag in tags:
            return tag
    return "setup" if cell.get("id") == "setup" else "demo"


def _graded_match(cell: NotebookNode, key: AnswerKey) -> str | None:
    """The key question a submitted cell is a copy of (by id, grade id, then content)."""
    meta = _dict(cell.get("metadata"))
    nbg = _dict(meta.get("nbgrader"))
    by_grade_id = {s.grade_id: s.id for s in key.graded}
    if isinstance(nbg.get("grade_id"), str) and nbg["grade_id"] in by_grade_id:
        return by_grade_id[nbg["grade_id"]]
    course = _dict(meta.get("course"))
    ids = {s.id for s in key.graded}
    if course.get("kind") == "graded" and str(course.get("id")) in ids and not nbg.get("grade_id"):
        return course["id"]
    if cell.get("cell_type") == "code" and _cell_kind(cell) != "todo":
        for spec in key.graded:
            if spec.matches_source(cell.get("source", "")):
                return spec.id
    return None


def _code_cell(source: str, role: CellRole, metadata: dict | None = None) -> NotebookNode:
    cell = _nbf().v4.new_code_cell(source)
    cell.metadata.update(metadata or {})
    cell.metadata["grader"] = {"kind": role.kind, "question": role.question}
    return cell


def _prologue_source(limits: GradeLimits, fault_log: Path | None = None) -> str:
    lines = ["# grader prologue: memory limit, crash log (plots: MPLBACKEND=Agg)"]
    if limits.memory_mb is not None:
        limit = limits.memory_mb * 2**20
        lines += [
            "import resource as _grader_resource",
            f"_grader_resource.setrlimit(_grader_resource.RLIMIT_DATA, ({limit}, {limit}))",
            "del _grader_resource",
        ]
    if fault_log is not None:  # a segfault leaves a Python trace there (stderr is a pipe)
        lines += [
            "import faulthandler as _grader_fh",
            f"_grader_fh.enable(open({str(fault_log)!r}, 'a'))",
            "del _grader_fh",
        ]
    return "\n".join(lines)


def _graded_source(spec: GradedSpec, key: AnswerKey, sentinel: str) -> str:
    """The answer key's check, with its checker modules re-imported (a student cannot rebind
    them) and a completion token printed last."""
    lines = []
    for module in sorted({m for m, _ in spec.checkers} & key.checker_modules):
        lines.append(
            f"import importlib as _gi; {module} = _gi.reload(_gi.import_module("
            f"'course_utils.checks.{module}')); del _gi"
        )
    # the grader reads the token back on the shell channel right after this cell
    lines += [spec.source, f"globals()[{COMPLETION_VAR!r}] = {sentinel!r}"]
    return "\n".join(lines)


def prepare_submission(nb: NotebookNode, key: AnswerKey, limits: GradeLimits) -> Prepared:
    """Build the notebook to execute from a submission (see the module docstring, step 2)."""
    notes: list[str] = []
    todo_all = _todo_names(key)
    kept: list[tuple[NotebookNode, CellRole]] = []
    graded_positions: dict[str, int] = {}  # question -> index in ``kept`` of the first copy
    copies: Counter[str] = Counter()
    for index, cell in enumerate(nb.cells):
        question = _graded_match(cell, key)
        source = cell.get("source", "")
        if question is not None:
            copies[question] += 1
            if cell.get("cell_type") == "code" and defined_names(source) & todo_all:
                # the student wrote their answer into the graded cell: keep it as plain code
                kept.append((_plain_copy(cell), CellRole("student", None, index)))
                notes.append(
                    f"cell {index + 1} mixes your code with check {question}: kept as code"
                )
            graded_positions.setdefault(question, len(kept))
            continue
        kind = _cell_kind(cell)
        if cell.get("cell_type") != "code":
            kept.append((copy.deepcopy(cell), CellRole("student", None, index)))
        elif kind == "parameters":
            params = _code_cell(key.parameters_source, CellRole("parameters", None, index))
            params.metadata["tags"] = ["parameters"]
            kept.append((params, CellRole("parameters", None, index)))
        else:
            role = CellRole("setup" if kind == "setup" else "student", None, index)
            kept.append((_plain_copy(cell), role))
    for question, count in copies.items():
        if count > 1:
            notes.append(f"check {question} appears {count} times: graded once")
    for at in _ensure_setup_and_parameters(kept, key, notes):
        graded_positions = {q: p + (p >= at) for q, p in graded_positions.items()}
    sentinel = f"__grader_ok_{secrets.token_hex(8)}__"
    missing: dict[str, tuple[str, ...]] = {}
    for spec in key.graded:
        at = _placement(kept, spec, graded_positions, missing, notes)
        cell = _code_cell(_graded_source(spec, key, sentinel), CellRole("graded", spec.id))
        kept.insert(at, (cell, CellRole("graded", spec.id)))
        graded_positions = {q: p + (p >= at) for q, p in graded_positions.items()}
    for cell, role in kept:
        if role.original_index is None or cell.cell_type != "code":
            continue
        for what in tamper_warnings(cell.source, key.course_modules):
            notes.append(f"cell {role.original_index + 1} rebinds course code: {what}")
        for what in borrowed_answers(cell.source, todo_all, key.course_modules):
            notes.append(f"cell {role.original_index + 1} takes an answer from the library: {what}")
    prologue = _code_cell(_prologue_source(limits), CellRole("prologue"))
    out = _nbf().v4.new_notebook()
    out.metadata = {"kernelspec": {"name": limits.kernel_name, "display_name": "Python 3",
                                   "language": "python"},
                    "language_info": {"name": "python"},
                    "course": {"assignment": key.name, "graded": True}}  # fmt: skip
    out.cells = [prologue] + [c for c, _ in kept]
    roles = [CellRole("prologue")] + [r for _, r in kept]
    return Prepared(out, roles, notes, missing, sentinel)


def _plain_copy(cell: NotebookNode) -> NotebookNode:
    """A code cell with the student's source and no outputs (graded metadata dropped)."""
    new = _nbf().v4.new_code_cell(cell.get("source", ""))
    meta = copy.deepcopy(_dict(cell.get("metadata")))
    for key in ("course", "nbgrader", "editable", "deletable"):
        meta.pop(key, None)
    new.metadata.update(meta)
    return new


def _ensure_setup_and_parameters(
    kept: list[tuple[NotebookNode, CellRole]], key: AnswerKey, notes: list[str]
) -> list[int]:
    """Insert the key's setup/parameters cell when the student deleted it; returns the
    positions inserted at (in order)."""
    inserted = []
    if all(role.kind != "setup" for _, role in kept) and key.setup_source:
        kept.insert(0, (_code_cell(key.setup_source, CellRole("setup")), CellRole("setup")))
        notes.append("the setup cell was missing: the answer key's setup cell was inserted")
        inserted.append(0)
    if all(role.kind != "parameters" for _, role in kept) and key.parameters_source:
        setup_at = [i for i, (_, role) in enumerate(kept) if role.kind == "setup"]
        at = setup_at[0] + 1 if setup_at else 0
        cell = _code_cell(key.parameters_source, CellRole("parameters"))
        cell.metadata["tags"] = ["parameters"]
        kept.insert(at, (cell, CellRole("parameters")))
        notes.append("the parameters cell was missing: the answer key's was inserted")
        inserted.append(at)
    return inserted


def _placement(
    kept: list[tuple[NotebookNode, CellRole]],
    spec: GradedSpec,
    graded_positions: dict[str, int],
    missing: dict[str, tuple[str, ...]],
    notes: list[str],
) -> int:
    """Where the check for ``spec`` runs: the student's position when it comes after the last
    definition of the checked function, else right after that definition."""
    anchor = -1
    for position, (cell, role) in enumerate(kept):
        if role.kind == "graded" or cell.cell_type != "code":
            continue
        if set(spec.names) & defined_names(cell.source):
            anchor = position
    own = graded_positions.get(spec.id)
    if anchor >= 0:
        if own is not None and own > anchor:
            return own
        if own is None:
            notes.append(f"check {spec.id} was missing: re-inserted after the cell defining "
                         f"{', '.join(spec.names)}")  # fmt: skip
        elif own <= anchor:
            notes.append(f"check {spec.id} came before {', '.join(spec.names)} was defined: "
                         "moved after the definition")  # fmt: skip
        return anchor + 1
    if spec.names:
        missing[spec.id] = spec.names
        notes.append(f"no cell defines {', '.join(spec.names)} (check {spec.id})")
    return own if own is not None else len(kept)


# --------------------------------------------------------------------------------------------
# Execution


def _nbclient_classes() -> tuple[type, type]:
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    return NotebookClient, DeadKernelError


def _make_client(nb: NotebookNode, prepared: Prepared, limits: GradeLimits, workdir: Path) -> Any:
    """A NotebookClient that caps stored output per cell and spots the completion token."""
    notebook_client, _ = _nbclient_classes()

    class GraderClient(notebook_client):  # type: ignore[misc, valid-type]
        def output(self, outs, msg, display_id, cell_index):  # noqa: ANN001, ANN202
            content = msg.get("content", {})
            if msg["msg_type"] == "error":
                content["traceback"] = list(content.get("traceback", []))[-40:]
                return super().output(outs, msg, display_id, cell_index)
            size = _content_size(content)
            used = self.output_chars.get(cell_index, 0)
            room = limits.max_output_bytes - used
            if size > room:
                if msg["msg_type"] == "stream" and room > 0:
                    content["text"] = content["text"][:room]
                    self.dropped[cell_index] = self.dropped.get(cell_index, 0) + size - room
                    size = room
                else:
                    self.dropped[cell_index] = self.dropped.get(cell_index, 0) + size
                    return None
            self.output_chars[cell_index] = used + size
            return super().output(outs, msg, display_id, cell_index)

        async def async_probe(self, seconds: int, token: str | None = None) -> bool:
            """True when the kernel answers a trivial request within ``seconds`` (and, with
            ``token``, when the last graded cell left that token behind: it ran to its end).

            Asked on the shell channel, which never drops messages (IOPub does under a flood
            of output, so a printed or displayed mark could be lost)."""
            expressions = {"done": f"globals().pop({COMPLETION_VAR!r}, None)"} if token else {}
            request = self.kc.execute(
                "" if token else "pass", silent=bool(token), store_history=False,
                user_expressions=expressions,
            )  # fmt: skip
            msg_id = await _maybe_await(request)
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await _maybe_await(self.kc.shell_channel.get_msg(timeout=left))
                except (Empty, asyncio.TimeoutError):
                    break
                if msg["parent_header"].get("msg_id") == msg_id:
                    if token is None:
                        return True
                    done = msg["content"].get("user_expressions", {}).get("done", {})
                    return done.get("data", {}).get("text/plain") == repr(token)
            await self._async_check_alive()
            return False

    client = GraderClient(
        nb,
        timeout=limits.cell_timeout_s,
        kernel_name=limits.kernel_name,
        allow_errors=True,
        interrupt_on_timeout=True,
        error_on_timeout={
            "ename": TIMEOUT_ENAME,
            "evalue": f"the cell did not finish within {limits.cell_timeout_s} s "
            "(an infinite loop?) and was interrupted",
        },
        record_timing=False,
        shutdown_kernel="immediate",
        coalesce_streams=True,
        iopub_timeout=limits.output_grace_s,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.completed = set()
    client.output_chars = {}
    client.dropped = {}
    client.replies = {}

    def record(cell: NotebookNode, cell_index: int, execute_reply: dict | None) -> None:
        client.replies[cell_index] = dict((execute_reply or {}).get("content", {}))

    client.on_cell_executed = record
    return client


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) or asyncio.isfuture(value) else value


def _content_size(content: dict) -> int:
    if "text" in content:
        return len(content["text"])
    data = content.get("data", {})
    return sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in data.values())


@dataclass
class Attempt:
    """One kernel's run through the prepared notebook."""

    nb: NotebookNode
    replies: dict[int, dict]
    completed: set[int]
    dropped: dict[int, int]
    fatal: tuple[int, str] | None = None  # (cell index, "died" | "hung")
    exit_code: int | None = None  # the dead kernel's process return code (-9: SIGKILL)
    log: str = ""  # the kernel's own stdout/stderr (crash messages land there)
    not_run: dict[int, str] = field(default_factory=dict)


def _run_attempt(
    prepared: Prepared, skip: dict[int, str], deadline: float, limits: GradeLimits, workdir: Path
) -> Attempt:
    from jupyter_core.utils import run_sync

    _, dead_kernel_error = _nbclient_classes()
    nb = copy.deepcopy(prepared.nb)
    client = _make_client(nb, prepared, limits, workdir)
    attempt = Attempt(nb, client.replies, client.completed, client.dropped)
    env = {**os.environ, "MPLBACKEND": "Agg", "COURSE_GRADING": "1"}
    log_path = workdir / f"kernel-{secrets.token_hex(4)}.log"
    nb.cells[0].source = _prologue_source(limits, log_path)
    with (
        log_path.open("w") as log,
        client.setup_kernel(env=env, cwd=str(workdir), stdout=log, stderr=log),
    ):
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or index in skip:
                continue
            if attempt.fatal is not None:
                attempt.not_run[index] = attempt.fatal[1]
                continue
            remaining = deadline - time.monotonic()
            if remaining < 1:
                attempt.not_run[index] = (
                    f"not run: the overall time limit of {limits.total_timeout_s} s was reached"
                )
                continue
            client.timeout = int(max(1, min(limits.cell_timeout_s, remaining)))
            try:
                client.execute_cell(cell, index)
                reply = client.replies.get(index, {})
                graded = prepared.roles[index].kind == "graded"
                if graded and reply.get("status") == "ok":
                    confirm = run_sync(client.async_probe)
                    if confirm(limits.probe_timeout_s + limits.output_grace_s, prepared.sentinel):
                        client.completed.add(index)
                if reply.get("ename") == TIMEOUT_ENAME:
                    if remaining <= limits.cell_timeout_s:
                        reply["evalue"] = (
                            f"the overall time limit of {limits.total_timeout_s} s ran out "
                            "during this cell"
                        )
                    if not run_sync(client.async_probe)(limits.probe_timeout_s):
                        attempt.fatal = (index, "hung")
            except dead_kernel_error:
                attempt.fatal = (index, "died")
                attempt.exit_code = _exit_code(client)
    attempt.log = log_path.read_text(errors="replace")[-20_000:]
    return attempt


def _exit_code(client: Any) -> int | None:
    """Return code of the kernel process (``None`` when unknown or still running)."""
    process = getattr(getattr(client.km, "provisioner", None), "process", None)
    for _ in range(20):  # the process may need a moment to be reaped
        code = process.poll() if process is not None else None
        if code is not None:
            return code
        time.sleep(0.05)
    return None


def _fatal_reason(attempt: Attempt, where: str, limits: GradeLimits) -> str:
    """One sentence on why the kernel was lost, from its exit code and its log."""
    assert attempt.fatal is not None
    if attempt.fatal[1] == "died":
        code = attempt.exit_code
        if code == -signal.SIGKILL:
            why = "was killed by SIGKILL (usually: the machine ran out of memory)"
        elif code is not None and code < 0:
            why = f"crashed with {signal.Signals(-code).name}"
        elif code is not None:
            why = f"exited with code {code} (exit(), quit() or os._exit())"
        else:
            memory = f"{limits.memory_mb} MB" if limits.memory_mb else "the machine's memory"
            why = f"died (a crash, exit() or running out of memory, limit {memory})"
        last = _last_log_line(attempt.log)
        return f"the kernel {why} while running {where}" + (f"; kernel log: {last}" if last else "")
    return (
        f"{where} ran past {limits.cell_timeout_s} s and the kernel stopped responding even "
        "after an interrupt"
    )


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class CheckResult:
    """The outcome of one graded question for one submission."""

    question: str
    grade_id: str
    max_points: float
    points: float = 0.0
    error: str = ""  # first line of the reason; empty when passed
    detail: str = ""  # the full message for the feedback file
    output: str = ""  # what the check printed

    @property
    def passed(self) -> bool:
        return self.points > 0 or (self.max_points == 0 and not self.error)


@dataclass
class SubmissionResult:
    """A gradebook row plus the feedback that goes with it."""

    submission: str
    assignment: str
    status: str  # graded | not-a-notebook | wrong-assignment | grader-error
    checks: list[CheckResult]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return sum(c.points for c in self.checks)

    @property
    def max_total(self) -> float:
        return sum(c.max_points for c in self.checks)


def _zero_checks(key: AnswerKey, reason: str) -> list[CheckResult]:
    return [CheckResult(s.id, s.grade_id, s.points, 0.0, reason, reason) for s in key.graded]


def _strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def _error_of(cell: NotebookNode, reply: dict, limits: GradeLimits) -> tuple[str, str]:
    """(first line, detail) of the error a cell raised, from its outputs or its reply."""
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    source = errors[-1] if errors else reply
    ename, evalue = source.get("ename", "Error"), _strip_ansi(str(source.get("evalue", "")))
    if reply.get("ename") == TIMEOUT_ENAME:
        ename, evalue = TIMEOUT_ENAME, str(reply.get("evalue", ""))
    frames = _strip_ansi("\n".join(errors[-1].get("traceback", []))).splitlines() if errors else []
    if not evalue.strip():
        # a bare `assert` or MemoryError says nothing: name the line that failed instead
        failing = [line.split("---->", 1)[1].strip() for line in frames if "---->" in line]
        evalue = f"raised at `{failing[-1].split(' ', 1)[-1].strip()}`" if failing else ""
        if ename == "MemoryError" and limits.memory_mb:
            evalue += f" (memory limit {limits.memory_mb} MB)"
    first = f"{ename}: {evalue.strip().splitlines()[0] if evalue.strip() else ''}".strip()
    detail = f"{ename}: {evalue}"
    if frames and ename not in ("CheckFailed", TIMEOUT_ENAME):
        detail += "\n\n" + "\n".join(frames[-15:])
    return first[:300], detail[:4000]


def _stream_text(cell: NotebookNode) -> str:
    return "".join(
        o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
    )


def _collect(
    prepared: Prepared, attempt: Attempt, skip: dict[int, str], key: AnswerKey, limits: GradeLimits
) -> list[CheckResult]:
    results = []
    for index, role in enumerate(prepared.roles):
        if role.kind != "graded":
            continue
        spec = key.spec(role.question)
        result = CheckResult(spec.id, spec.grade_id, spec.points)
        cell = attempt.nb.cells[index]
        reply = attempt.replies.get(index)
        if index in skip:
            result.error = result.detail = skip[index]
        elif index in attempt.not_run or reply is None:
            result.error = result.detail = attempt.not_run.get(index, "not run")
        elif reply.get("status") == "ok" and index in attempt.completed:
            result.points = spec.points
        elif reply.get("status") == "ok":
            result.error = result.detail = (
                "the check ended without error but did not reach its last line "
                "(the kernel's execution was tampered with?)"
            )
        else:
            result.error, result.detail = _error_of(cell, reply, limits)
            if spec.id in prepared.missing_definitions and "NameError" in result.error:
                names = ", ".join(prepared.missing_definitions[spec.id])
                result.error += f" (no cell in your notebook defines {names})"
        result.output = _stream_text(cell)[:2000]
        results.append(result)
    return results


def _describe(prepared: Prepared, index: int) -> str:
    role = prepared.roles[index]
    if role.kind == "graded":
        return f"check {role.question}"
    if role.original_index is None:
        return f"the inserted {role.kind} cell"
    first = _first_code_line(prepared.nb.cells[index].source)[:60]
    return f"cell {role.original_index + 1} (`{first}`)"


def execute_prepared(
    prepared: Prepared, key: AnswerKey, limits: GradeLimits, workdir: Path
) -> tuple[list[CheckResult], NotebookNode]:
    """Run the prepared notebook (re-running without a fatal cell) and score each question."""
    deadline = time.monotonic() + limits.total_timeout_s
    skip: dict[int, str] = {}
    attempt: Attempt | None = None
    for run in range(limits.max_restarts + 1):
        attempt = _run_attempt(prepared, skip, deadline, limits, workdir)
        if attempt.fatal is None:
            break
        index = attempt.fatal[0]
        reason = _fatal_reason(attempt, _describe(prepared, index), limits)
        skip[index] = reason
        rerun = run < limits.max_restarts and time.monotonic() < deadline
        prepared.notes.append(reason + ("; re-ran the notebook without it" if rerun else ""))
        for later in attempt.not_run:
            attempt.not_run[later] = f"not run: {reason}"
    assert attempt is not None
    _note_student_failures(prepared, attempt, limits)
    return _collect(prepared, attempt, skip, key, limits), _stored_notebook(prepared, attempt, key)


def _last_log_line(log: str) -> str:
    """The last informative line of a kernel log (ipykernel's start-up warnings skipped)."""
    lines = [
        _strip_ansi(line).strip()
        for line in log.splitlines()
        if line.strip() and "WARNING" not in line and "Kernel is running over TCP" not in line
    ]
    fatal = [line for line in lines if line.startswith("Fatal Python error")]
    if fatal:  # faulthandler lists the innermost frame first: name the student's function
        frames = re.findall(r'File ".*ipykernel_\d+.*", line (\d+) in (\S+)', log)
        where = f" (in {frames[0][1]}, line {frames[0][0]} of its cell)" if frames else ""
        return fatal[-1][:200] + where
    return (lines or [""])[-1][:200]


def _note_student_failures(prepared: Prepared, attempt: Attempt, limits: GradeLimits) -> None:
    """Notes for non-graded cells that timed out or ran out of memory (they explain later
    NameErrors in the checks)."""
    for index, reply in sorted(attempt.replies.items()):
        role = prepared.roles[index]
        if role.kind == "graded" or reply.get("status") != "error":
            continue
        if role.kind == "prologue":
            prepared.notes.append(
                f"the grader's set-up failed (no memory limit): {reply.get('ename')}"
            )
        if reply.get("ename") == TIMEOUT_ENAME:
            prepared.notes.append(f"{_describe(prepared, index)} timed out and was interrupted")
        elif reply.get("ename") == "MemoryError":
            prepared.notes.append(
                f"{_describe(prepared, index)} ran out of memory (limit {limits.memory_mb} MB)"
            )


def _stored_notebook(prepared: Prepared, attempt: Attempt, key: AnswerKey) -> NotebookNode:
    """The executed notebook as the student should see it: no prologue, plain check sources,
    a note where output was cut."""
    nb = copy.deepcopy(attempt.nb)
    for index, role in enumerate(prepared.roles):
        cell = nb.cells[index]
        if role.kind == "graded":
            cell.source = key.spec(role.question).source
        if index in attempt.dropped:
            cell.outputs.append(_nbf().v4.new_output(
                "stream", name="stderr",
                text=f"\n[grader: {attempt.dropped[index]:,} more characters of output dropped]\n"))  # fmt: skip
    nb.cells = [c for c, r in zip(nb.cells, prepared.roles, strict=True) if r.kind != "prologue"]
    return nb


# --------------------------------------------------------------------------------------------
# One submission, a batch, the gradebook and feedback files


def grade_notebook(
    path: str | os.PathLike,
    key: AnswerKey,
    keys: list[AnswerKey] | None = None,
    limits: GradeLimits | None = None,
    name: str | None = None,
) -> tuple[SubmissionResult, NotebookNode | None]:
    """Grade one submitted file; never raises for a bad submission.

    Args:
        path: the submitted file.
        key: the answer key of the assignment being graded.
        keys: every known answer key (to name the assignment a wrong submission belongs to).
        limits: time, memory and output limits.
        name: the row's name (default: the file name).

    Returns:
        The result and the executed notebook (``None`` when nothing ran).
    """
    path = Path(path)
    limits = limits or GradeLimits()
    name = name or path.name
    start = time.monotonic()
    try:
        nb = read_submission(path)
    except NotANotebook as err:
        reason = f"not a notebook: {err}; submit the .ipynb file itself"
        return SubmissionResult(name, key.name, "not-a-notebook", _zero_checks(key, reason)), None
    reason = wrong_assignment_reason(nb, key, keys or [key])
    if reason:
        return SubmissionResult(name, key.name, "wrong-assignment", _zero_checks(key, reason)), None
    prepared = prepare_submission(nb, key, limits)
    with tempfile.TemporaryDirectory(prefix="grade-") as workdir:
        try:
            checks, executed = execute_prepared(prepared, key, limits, Path(workdir))
        except Exception as err:  # noqa: BLE001 - e.g. the kernel cannot start: report, go on
            reason = f"grader error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            result = SubmissionResult(name, key.name, "grader-error", _zero_checks(key, reason))
            result.notes = prepared.notes
            return result, None
    result = SubmissionResult(name, key.name, "graded", checks, prepared.notes)
    result.seconds = time.monotonic() - start
    return result, executed


def check_answer_key(
    key: AnswerKey, keys: list[AnswerKey] | None = None, limits: GradeLimits | None = None
) -> SubmissionResult:
    """Grade the answer key itself under ``limits``; it must score full marks.

    This catches a grading environment that would fail everyone (cold caches that make a cell
    exceed the time limit, a memory limit too low, a missing dependency) before any student
    is marked, and warms those caches as a side effect.

    Raises:
        GradingError: the answer key loses points; the message lists why.
    """
    result, _ = grade_notebook(key.path, key, keys, limits, name=f"answer key {key.name}")
    if result.total < result.max_total:
        failed = "; ".join(f"{c.grade_id}: {c.error}" for c in result.checks if c.error)
        raise GradingError(
            f"the answer key {key.path.name} scores {result.total:g} / {result.max_total:g} "
            f"under these limits, so submissions cannot be graded fairly ({failed}; "
            f"{' | '.join(result.notes)}). Run it once (python -m course_utils run) to warm the "
            "caches, or raise --timeout-cell / --timeout-total / --memory-mb."
        )
    return result


def gradebook_header(key: AnswerKey) -> list[str]:
    """CSV columns: identity, totals, one points column and one error column per question."""
    ids = [s.grade_id for s in key.graded]
    return ["submission", "assignment", "status", "total", "max_total", *ids,
            *[f"{i}_error" for i in ids], "notes", "seconds"]  # fmt: skip


def gradebook_row(result: SubmissionResult) -> list[str]:
    points = [_fmt(c.points) for c in result.checks]
    errors = [c.error for c in result.checks]
    return [result.submission, result.assignment, result.status, _fmt(result.total),
            _fmt(result.max_total), *points, *errors, " | ".join(result.notes),
            f"{result.seconds:.1f}"]  # fmt: skip


def _fmt(value: float) -> str:
    return f"{value:g}"


def feedback_markdown(result: SubmissionResult) -> str:
    """Per-submission feedback: a score table, then each failed check's full message."""
    lines = [
        f"# Feedback: {result.submission}",
        "",
        f"Assignment **{result.assignment}** · status **{result.status}** · "
        f"score **{_fmt(result.total)} / {_fmt(result.max_total)}**",
        "",
        "| question | points | result |",
        "|---|---|---|",
    ]
    for check in result.checks:
        verdict = "✓ passed" if check.passed else "✗ " + check.error.replace("|", "\\|")
        lines.append(
            f"| {check.grade_id} | {_fmt(check.points)} / {_fmt(check.max_points)} | {verdict} |"
        )
    for check in result.checks:
        if not check.passed:
            lines += ["", f"## {check.grade_id} ({_fmt(check.points)} / {_fmt(check.max_points)})",
                      "", "```text", check.detail.strip(), "```"]  # fmt: skip
    if result.notes:
        lines += ["", "## Notes from the grader", ""] + [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def collect_submissions(root: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """Submitted files: every ``*.ipynb`` under ``root`` plus any other file directly in it
    (a mis-uploaded PDF gets a row too); hidden files and checkpoints are skipped.

    Raises:
        GradingError: ``root`` is missing or holds no submission.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise GradingError(f"submissions folder not found: {root}")
    excluded = [Path(p).resolve() for p in exclude]
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if any(path.resolve() == e or e in path.resolve().parents for e in excluded):
            continue
        if path.suffix == ".ipynb" or path.parent == root:
            found.append(path)
    if not found:
        raise GradingError(f"no submissions in {root}")
    return found


def _safe_name(rel: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", rel.replace("/", "__"))


def grade_submissions(
    submissions: str | os.PathLike,
    out_csv: str | os.PathLike,
    assignment: str | None = None,
    key_dir: str | os.PathLike = REPO_ROOT / "solutions",
    limits: GradeLimits | None = None,
    feedback_dir: str | os.PathLike | None = None,
    progress: bool = True,
    jobs: int = 1,
    check_key: bool = True,
) -> list[SubmissionResult]:
    """Grade every submission in a folder into ``out_csv`` and ``feedback_dir``.

    Args:
        submissions: folder of submitted files (sub-folders per student are fine) or one file.
        out_csv: the gradebook; rewritten, one row appended (and flushed) per submission.
        assignment: ``"01"`` / ``"nb01"`` / a key name; ``None``: the assignment most
            submissions match.
        key_dir: folder of answer keys (default ``solutions/``).
        limits: per-submission limits.
        feedback_dir: per-submission ``<name>.md`` and ``<name>.graded.ipynb`` (default:
            ``<out_csv stem>_feedback/`` beside the CSV).
        progress: show a tqdm bar over submissions.
        jobs: submissions graded at once (each in its own kernel); with more than one, rows
            are written in the order submissions finish.
        check_key: first grade the answer key itself and stop unless it gets full marks
            (:func:`check_answer_key`).

    Returns:
        One result per submission, in the CSV's order.

    Raises:
        GradingError: no answer key, unknown assignment, or no submissions.
    """
    limits = limits or GradeLimits()
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    out_csv = Path(out_csv)
    feedback = Path(feedback_dir) if feedback_dir else out_csv.with_name(out_csv.stem + "_feedback")
    root = Path(submissions)
    files = collect_submissions(root, exclude=[out_csv, feedback])
    keys = find_answer_keys(key_dir)
    key = select_answer_key(keys, assignment) if assignment else _majority_key(files, keys)
    if check_key:
        check_answer_key(key, keys, limits)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    feedback.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    def run_one(path: Path) -> tuple[SubmissionResult, NotebookNode | None]:
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        try:
            return grade_notebook(path, key, keys, limits, name=rel)
        except Exception as err:  # noqa: BLE001 - a grader bug must not cost the batch
            reason = f"grader error: {type(err).__name__}: {err}"
            return SubmissionResult(rel, key.name, "grader-error", _zero_checks(key, reason)), None

    results = []
    with (
        out_csv.open("w", newline="", encoding="utf-8") as handle,
        tqdm(total=len(files), desc=f"grading {key.name}", unit="nb", disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=jobs) as pool,
    ):
        writer = csv.writer(handle)
        writer.writerow(gradebook_header(key))
        handle.flush()
        graded = map(run_one, files) if jobs == 1 else _as_completed(pool, run_one, files)
        for result, executed in graded:
            writer.writerow(gradebook_row(result))  # row and feedback land as each one finishes
            handle.flush()
            stem = _safe_name(result.submission)
            (feedback / f"{stem}.md").write_text(feedback_markdown(result), encoding="utf-8")
            if executed is not None:
                _nbf().write(executed, feedback / f"{stem}.graded.ipynb")
            results.append(result)
            bar.update()
    return results


def _as_completed(pool: ThreadPoolExecutor, func: Any, items: list[Path]) -> Iterable[Any]:
    futures = [pool.submit(func, item) for item in items]
    for future in as_completed(futures):
        yield future.result()


def _majority_key(files: list[Path], keys: list[AnswerKey]) -> AnswerKey:
    votes: Counter[str] = Counter()
    for path in files:
        try:
            found = identify_assignment(read_submission(path), keys)
        except NotANotebook:
            continue
        if found is not None:
            votes[found.name] += 1
    if not votes:
        raise GradingError("cannot tell which assignment these submissions are: pass --assignment")
    return next(k for k in keys if k.name == votes.most_common(1)[0][0])


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``grade`` command's options (shared by ``python -m course_utils grade``)."""
    parser.add_argument(
        "submissions", type=Path, help="folder of submitted notebooks (or one file)"
    )
    parser.add_argument("--out", type=Path, default=Path("gradebook.csv"), help="gradebook CSV")
    parser.add_argument("--assignment", default=None, help="01, nb01 or 01_load_and_preprocess")
    parser.add_argument("--key-dir", type=Path, default=REPO_ROOT / "solutions")
    parser.add_argument("--feedback-dir", type=Path, default=None,
                        help="default: <out stem>_feedback/ beside the CSV")  # fmt: skip
    parser.add_argument("--timeout-cell", type=int, default=GradeLimits.cell_timeout_s)
    parser.add_argument("--timeout-total", type=int, default=GradeLimits.total_timeout_s)
    parser.add_argument("--memory-mb", type=int, default=GradeLimits.memory_mb,
                        help="kernel memory limit in MiB (0: none)")  # fmt: skip
    parser.add_argument("--max-output-kb", type=int, default=GradeLimits.max_output_bytes // 1000)
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel")
    parser.add_argument("--no-key-check", action="store_true",
                        help="skip grading the answer key first (it must get full marks)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    """Grade with parsed :func:`add_arguments` options: 0, or 2 with the reason on stderr."""
    try:
        limits = GradeLimits(
            cell_timeout_s=args.timeout_cell,
            total_timeout_s=args.timeout_total,
            memory_mb=args.memory_mb or None,
            max_output_bytes=args.max_output_kb * 1000,
        )
        results = grade_submissions(args.submissions, args.out, args.assignment, args.key_dir,
                                    limits, args.feedback_dir, progress=not args.no_progress,
                                    jobs=args.jobs, check_key=not args.no_key_check)  # fmt: skip
    except (GradingError, ValueError) as err:
        print(f"grade: {err}", file=sys.stderr)
        return 2
    statuses = Counter(r.status for r in results)
    mean = sum(r.total for r in results) / len(results)
    print(f"graded {len(results)} submissions ({dict(statuses)}), mean {mean:.2f} / "
          f"{results[0].max_total:g} -> {args.out}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.grade SUBMISSIONS/ --out gradebook.csv``."""
    parser = argparse.ArgumentParser(
        prog="python -m course_utils grade", description=__doc__.split("\n")[0]
    )
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
