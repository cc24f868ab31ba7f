"""The grader on real bad submissions: a tiny synthetic assignment (fast kernels) plus notebook 01.

Most cases are graded in one batch (one kernel per submission, as instructors run it); each test
then reads its own row. Every bad submission is a real file built from the student version that
``course_utils.release`` generates from a synthetic answer key.
"""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import nbformat
import pytest

from course_utils import grade
from course_utils.config import REPO_ROOT
from course_utils.release import student_version

LIMITS = grade.GradeLimits(
    cell_timeout_s=2,
    total_timeout_s=60,
    memory_mb=512,
    max_output_bytes=5_000,
    probe_timeout_s=1,
    output_grace_s=5,
)
GOOD_ADD = "def add(a, b):\n    return b + a  # a correct alternative"
GOOD_MEAN = (
    "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)"
)


def _cell(kind: str, source: str, qid: str = "", points: int = 0, prefix: str = "nb91"):
    cell = nbformat.v4.new_code_cell(source)
    if kind in ("setup", "parameters"):
        cell.metadata.update(course={"kind": kind}, tags=[kind])
        cell.id = kind
    elif kind == "todo":
        cell.id = f"todo-{qid}"
        cell.metadata.update(
            course={"kind": "todo", "id": qid},
            tags=["todo"],
            nbgrader={"grade": False, "grade_id": f"{prefix}_{qid}_todo", "locked": False,
                      "schema_version": 3, "solution": True},
        )  # fmt: skip
    elif kind == "graded":
        cell.id = f"graded-{qid}"
        cell.metadata.update(
            course={"kind": "graded", "id": qid, "points": points},
            tags=["graded"],
            editable=False,
            deletable=False,
            nbgrader={"grade": True, "grade_id": f"{prefix}_{qid}", "locked": True,
                      "points": points, "schema_version": 3, "solution": False},
        )  # fmt: skip
    return cell


def _notebook(cells: list) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                  "language": "python"}}  # fmt: skip
    nb.cells = cells
    return nb


def arith_key() -> nbformat.NotebookNode:
    """Assignment 91: add (2 points) and mean (3 points)."""
    return _notebook([
        nbformat.v4.new_markdown_cell("# 91 arithmetic"),
        _cell("setup", "import math"),
        _cell("parameters", "SCALE = 1"),
        _cell("todo", 'def add(a, b):\n    """Sum of a and b."""\n    # BEGIN SOLUTION\n'
                      "    return a + b\n    # END SOLUTION", "q1"),
        _cell("graded", "# Graded (2 points)\nassert add(2, 3) == 5, 'add(2, 3) should be 5'\n"
                        "assert add(-1, 1) == 0", "q1", 2),
        nbformat.v4.new_markdown_cell("## Means"),
        _cell("todo", "def mean(xs):\n    # BEGIN SOLUTION\n    return sum(xs) / len(xs)\n"
                      "    # END SOLUTION", "q2"),
        _cell("graded", "# Graded (3 points)\nassert mean([1, 2, 3]) == 2, 'mean([1, 2, 3])'\n"
                        "assert abs(mean([0.5, 1.0]) - 0.75) < 1e-12", "q2", 3),
        _cell("code", "print(add(1, 1) * SCALE)"),
    ])  # fmt: skip


def strings_key() -> nbformat.NotebookNode:
    """Assignment 92, to submit to the wrong assignment."""
    return _notebook([
        _cell("setup", "import string"),
        _cell("parameters", "WORD = 'x'"),
        _cell("todo", "def shout(s):\n    # BEGIN SOLUTION\n    return s.upper() + '!'\n"
                      "    # END SOLUTION", "q1", prefix="nb92"),
        _cell("graded", "assert shout('hi') == 'HI!'", "q1", 1, prefix="nb92"),
    ])  # fmt: skip


def _index(nb: nbformat.NotebookNode, kind: str, qid: str) -> int:
    return next(
        i
        for i, c in enumerate(nb.cells)
        if c.metadata.get("course", {}).get("kind") == kind and c.metadata["course"]["id"] == qid
    )


def solved(add: str = GOOD_ADD, mean: str = GOOD_MEAN) -> nbformat.NotebookNode:
    """The generated student notebook with both TODOs answered."""
    nb = student_version(arith_key(), "91")
    nb.cells[_index(nb, "todo", "q1")].source = add
    nb.cells[_index(nb, "todo", "q2")].source = mean
    return nb


def _write_keys(root: Path) -> Path:
    keys = root / "keys"
    keys.mkdir(parents=True)
    nbformat.write(arith_key(), keys / "91_arith.ipynb")
    nbformat.write(strings_key(), keys / "92_strings.ipynb")
    return keys


def _submissions() -> dict[str, nbformat.NotebookNode | bytes]:
    subs: dict[str, nbformat.NotebookNode | bytes] = {}
    subs["good"] = solved()
    subs["stub"] = student_version(arith_key(), "91")

    nb = solved(add="def add(a, b):\n    return a - b")
    nb.cells[_index(nb, "graded", "q1")].source = "assert True  # the student 'fixed' the check"
    subs["edited_check"] = nb

    nb = solved()
    nb.cells = [c for c in nb.cells if c.metadata.get("course", {}).get("kind") != "graded"]
    subs["deleted"] = nb

    nb = solved()
    q1 = nb.cells[_index(nb, "graded", "q1")]
    nb.cells += [copy.deepcopy(q1), copy.deepcopy(q1)]
    nb.cells[-2].id, nb.cells[-1].id = "copy-1", "copy-2"  # Jupyter gives pasted cells new ids
    subs["duplicated"] = nb

    nb = solved()
    q2 = nb.cells.pop(_index(nb, "graded", "q2"))
    nb.cells.insert(1, q2)  # above the setup and both todo cells
    subs["moved"] = nb

    nb = solved()
    i = _index(nb, "graded", "q1")
    nb.cells[i] = nbformat.v4.new_markdown_cell(nb.cells[i].source, metadata=nb.cells[i].metadata)
    j = _index(nb, "graded", "q2")
    nb.cells[j] = nbformat.v4.new_code_cell(nb.cells[j].source)  # pasted: metadata lost
    subs["retyped"] = nb

    subs["loop"] = solved(mean="def mean(xs):\n    while True:\n        pass")
    subs["hung"] = solved(
        mean="import time\n\ndef mean(xs):\n    while True:\n        try:\n"
        "            time.sleep(0.05)\n        except KeyboardInterrupt:\n            pass"
    )
    nb = solved()
    nb.cells.insert(4, nbformat.v4.new_code_cell("import os\nos._exit(3)"))
    subs["kills_kernel"] = nb
    subs["sigkill_in_check"] = solved(
        mean="import os, signal\n\ndef mean(xs):\n    os.kill(os.getpid(), signal.SIGKILL)"
    )
    subs["out_of_memory"] = solved(
        mean="def mean(xs):\n    buffer = bytearray(2 * 1024**3)\n    return sum(xs) / len(xs)"
    )
    nb = solved(mean=GOOD_MEAN.replace("    return", "    print('m' * 1_000_000)\n    return"))
    nb.cells.insert(
        4, nbformat.v4.new_code_cell("for i in range(100_000):\n    print('spam' * 20)")
    )
    subs["huge_output"] = nb
    nb = solved()
    nb.cells.insert(
        4, nbformat.v4.new_code_cell("import os, sys\nsys.stdout = open(os.devnull, 'w')")
    )
    subs["silenced_stdout"] = nb
    subs["exits_in_check"] = solved(mean="import sys\n\ndef mean(xs):\n    sys.exit(0)")

    other = student_version(strings_key(), "92")
    other.cells[_index(other, "todo", "q1")].source = "def shout(s):\n    return s.upper() + '!'"
    subs["other_assignment"] = other
    return subs


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("grading")
    keys = _write_keys(root)
    subs_dir = root / "submissions"
    for name, nb in _submissions().items():
        folder = subs_dir / name  # one folder per student, as LMS exports do
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "91_arith.ipynb")
    (subs_dir / "report.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3 not a notebook")
    (subs_dir / "truncated").mkdir()
    text = nbformat.writes(solved())
    (subs_dir / "truncated" / "91_arith.ipynb").write_text(text[: len(text) // 2])
    (subs_dir / "no_cells").mkdir()
    (subs_dir / "no_cells" / "91_arith.ipynb").write_text(json.dumps({"answers": [1, 2]}))
    out = root / "gradebook.csv"
    results = grade.grade_submissions(
        subs_dir, out, assignment="91", key_dir=keys, limits=LIMITS, progress=False, jobs=3
    )
    with out.open() as handle:
        rows = {row["submission"].split("/")[0]: row for row in csv.DictReader(handle)}
    by_name = {r.submission.split("/")[0]: r for r in results}
    return {"rows": rows, "results": by_name, "feedback": root / "gradebook_feedback"}


def _points(batch: dict, name: str) -> tuple[float, float, float]:
    row = batch["rows"][name]
    return float(row["total"]), float(row["nb91_q1"]), float(row["nb91_q2"])


# ---- answer key and preparation (no kernel) -------------------------------------------------


def test_answer_key_lists_questions_points_and_checked_functions(tmp_path: Path):
    key = grade.load_answer_key(_write_keys(tmp_path) / "91_arith.ipynb")
    assert [(s.id, s.grade_id, s.points, s.names) for s in key.graded] == [
        ("q1", "nb91_q1", 2.0, ("add",)),
        ("q2", "nb91_q2", 3.0, ("mean",)),
    ]
    assert key.max_points == 5.0
    assert key.todo_names == {"q1": ("add",), "q2": ("mean",)}


def test_prepare_restores_checks_and_places_them_after_the_definition(tmp_path: Path):
    key = grade.load_answer_key(_write_keys(tmp_path) / "91_arith.ipynb")
    nb = solved()
    nb.cells[_index(nb, "graded", "q1")].source = "assert True"
    q2 = nb.cells.pop(_index(nb, "graded", "q2"))
    nb.cells.insert(0, q2)
    nb.cells.insert(0, copy.deepcopy(q2))
    nb.cells[0].id = "copy-1"
    prepared = grade.prepare_submission(nb, key, LIMITS)
    kinds = [(r.kind, r.question) for r in prepared.roles if r.kind != "student"]
    assert kinds == [("prologue", None), ("setup", None), ("parameters", None),
                     ("graded", "q1"), ("graded", "q2")]  # fmt: skip
    sources = [c.source for c in prepared.nb.cells]
    graded_q1 = next(s for s in sources if "add(2, 3)" in s)
    assert "assert True" not in "".join(sources)
    assert prepared.sentinel in graded_q1.splitlines()[-1]  # the completion mark comes last
    define_mean = next(i for i, s in enumerate(sources) if s.startswith("def mean"))
    assert "mean([1, 2, 3])" in sources[define_mean + 1]
    assert "check q2 appears 2 times: graded once" in prepared.notes


def test_answers_borrowed_from_the_library_are_flagged():
    src = "from course_utils.text import impute_xxxx\nadd = data.add\nfrom course_utils import data"
    assert grade.borrowed_answers(src, {"impute_xxxx", "add"}, {"data"}) == [
        "from course_utils.text import impute_xxxx",
        "add = data.add",
    ]


def test_tamper_warnings_flag_rebinding_course_code():
    aliases = {"text", "nb01"}
    src = "text.impute_xxxx = my_fn\nsetattr(nb01, 'check_impute_xxxx', print)\nx.y = 1"
    assert grade.tamper_warnings(src, aliases) == [
        "text.impute_xxxx",
        "setattr(nb01, ...)",
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"\x89PNG\r\n\x1a\n", "not JSON text"),
        (b'{"cells": "nope"}', "JSON without a 'cells' list"),
        (b'{"cells": [{"source": "x"}]}', "lack a valid 'cell_type'"),
    ],
)
def test_read_submission_rejects_non_notebooks(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "sub.ipynb"
    path.write_bytes(content)
    with pytest.raises(grade.NotANotebook, match=message):
        grade.read_submission(path)


def test_odd_metadata_and_list_sources_are_read_not_fatal(tmp_path: Path):
    key = grade.load_answer_key(_write_keys(tmp_path) / "91_arith.ipynb")
    raw = json.loads(nbformat.writes(solved()))
    raw["metadata"]["course"] = 5
    raw["cells"][3]["metadata"] = {"nbgrader": "locked", "course": ["graded"], "tags": "todo"}
    raw["cells"][3]["source"] = ["def add(a, b):\n", "    return a + b"]
    path = tmp_path / "odd.ipynb"
    path.write_text(json.dumps(raw))
    nb = grade.read_submission(path)
    assert nb.cells[3].source == "def add(a, b):\n    return a + b"
    assert grade.assignment_score(nb, key) > 0
    prepared = grade.prepare_submission(nb, key, LIMITS)
    assert [r.question for r in prepared.roles if r.kind == "graded"] == ["q1", "q2"]


def test_select_answer_key_and_majority_vote(tmp_path: Path):
    keys = grade.find_answer_keys(_write_keys(tmp_path))
    assert grade.select_answer_key(keys, "nb92").name == "92_strings"
    with pytest.raises(grade.GradingError, match="no answer key match"):
        grade.select_answer_key(keys, "07")
    subs = tmp_path / "subs"
    subs.mkdir()
    for i in range(2):
        nbformat.write(solved(), subs / f"a{i}.ipynb")
    nbformat.write(student_version(strings_key(), "92"), subs / "b.ipynb")
    files = grade.collect_submissions(subs)
    assert grade._majority_key(files, keys).name == "91_arith"
    (tmp_path / "empty" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "empty" / ".ipynb_checkpoints" / "a-checkpoint.ipynb").write_text("{}")
    with pytest.raises(grade.GradingError, match="no submissions"):
        grade.collect_submissions(tmp_path / "empty")


# ---- the batch: one real bad submission per case ---------------------------------------------


def test_batch_has_one_row_and_one_feedback_file_per_submission(batch):
    assert len(batch["rows"]) == 19
    feedback = sorted(p.name for p in batch["feedback"].glob("*.md"))
    assert len(feedback) == 19
    assert (batch["feedback"] / "good__91_arith.ipynb.graded.ipynb").exists()


def test_correct_answers_get_full_marks(batch):
    assert _points(batch, "good") == (5, 2, 3)
    assert batch["rows"]["good"]["status"] == "graded"
    text = (batch["feedback"] / "good__91_arith.ipynb.md").read_text()
    assert "score **5 / 5**" in text


def test_unfinished_todos_score_zero_with_the_stub_message(batch):
    assert _points(batch, "stub") == (0, 0, 0)
    assert batch["rows"]["stub"]["nb91_q1_error"] == "NotImplementedError: add: fill in this TODO"


def test_an_edited_check_is_replaced_by_the_answer_key(batch):
    assert _points(batch, "edited_check") == (3, 0, 3)
    error = batch["rows"]["edited_check"]["nb91_q1_error"]
    assert error == "AssertionError: add(2, 3) should be 5"


def test_deleted_checks_are_reinserted(batch):
    assert _points(batch, "deleted") == (5, 2, 3)
    notes = batch["rows"]["deleted"]["notes"]
    assert "check q1 was missing: re-inserted after the cell defining add" in notes


def test_duplicated_checks_count_once(batch):
    assert _points(batch, "duplicated") == (5, 2, 3)
    assert "check q1 appears 3 times: graded once" in batch["rows"]["duplicated"]["notes"]


def test_a_check_moved_above_its_function_still_runs_after_it(batch):
    assert _points(batch, "moved") == (5, 2, 3)
    assert "check q2 came before mean was defined" in batch["rows"]["moved"]["notes"]


def test_retyped_checks_are_found_by_id_and_by_content(batch):
    assert _points(batch, "retyped") == (5, 2, 3)


def test_an_infinite_loop_is_interrupted_and_only_its_check_loses(batch):
    assert _points(batch, "loop") == (2, 2, 0)
    error = batch["rows"]["loop"]["nb91_q2_error"]
    assert error.startswith("GraderTimeout: the cell did not finish within 2 s")


def test_a_kernel_that_ignores_interrupts_is_restarted_without_that_check(batch):
    assert _points(batch, "hung") == (2, 2, 0)
    error = batch["rows"]["hung"]["nb91_q2_error"]
    assert "kernel stopped responding even after an interrupt" in error


def test_a_cell_that_kills_the_kernel_is_skipped_on_a_rerun(batch):
    assert _points(batch, "kills_kernel") == (5, 2, 3)
    notes = batch["rows"]["kills_kernel"]["notes"]
    assert "the kernel exited with code 3" in notes and "re-ran the notebook without it" in notes


def test_a_check_that_kills_the_kernel_scores_zero_with_the_reason(batch):
    assert _points(batch, "sigkill_in_check") == (2, 2, 0)
    error = batch["rows"]["sigkill_in_check"]["nb91_q2_error"]
    assert error.startswith("the kernel was killed by SIGKILL (usually: the machine ran out")


def test_running_out_of_memory_is_a_zero_with_the_limit_named(batch):
    assert _points(batch, "out_of_memory") == (2, 2, 0)
    error = batch["rows"]["out_of_memory"]["nb91_q2_error"]
    assert error == (
        "MemoryError: raised at `buffer = bytearray(2 * 1024**3)` (memory limit 512 MB)"
    )


def test_megabytes_of_output_are_truncated_in_what_is_stored(batch):
    assert _points(batch, "huge_output") == (5, 2, 3)  # the check still saw its completion mark
    executed = batch["feedback"] / "huge_output__91_arith.ipynb.graded.ipynb"
    assert executed.stat().st_size < 60_000  # the run printed ~9 MB
    nb = nbformat.read(executed, as_version=4)
    loop_cell = next(c for c in nb.cells if c.source.startswith("for i in range"))
    texts = [o.get("text", "") for o in loop_cell.outputs]
    assert sum(map(len, texts[:-1])) == LIMITS.max_output_bytes
    # 8,100,000 characters printed; Jupyter's IOPub channel itself may drop part of a flood
    dropped = re.fullmatch(r"\n\[grader: ([\d,]+) more characters of output dropped\]\n", texts[-1])
    assert dropped and 1_000_000 < int(dropped.group(1).replace(",", "")) <= 8_095_000


def test_redirecting_stdout_does_not_hide_a_passed_check(batch):
    assert _points(batch, "silenced_stdout") == (5, 2, 3)


def test_a_check_that_exits_early_never_counts_as_passed(batch):
    assert _points(batch, "exits_in_check") == (2, 2, 0)
    assert batch["rows"]["exits_in_check"]["nb91_q2_error"] == "SystemExit: 0"


@pytest.mark.parametrize(
    "name, message",
    [
        ("report.pdf", "not JSON text"),
        ("truncated", "not JSON text"),
        ("no_cells", "JSON without a 'cells' list"),
    ],
)
def test_files_that_are_not_notebooks_get_a_zero_row(batch, name: str, message: str):
    row = batch["rows"][name]
    assert (row["status"], row["total"]) == ("not-a-notebook", "0")
    assert message in row["nb91_q1_error"]


def test_a_notebook_from_another_assignment_is_not_run(batch):
    row = batch["rows"]["other_assignment"]
    assert (row["status"], row["total"]) == ("wrong-assignment", "0")
    assert "looks like 92_strings, not 91_arith" in row["nb91_q1_error"]
    assert not (batch["feedback"] / "other_assignment__91_arith.ipynb.graded.ipynb").exists()


def test_a_grader_crash_costs_one_row_and_rows_are_written_as_they_go(tmp_path, monkeypatch):
    keys = _write_keys(tmp_path)
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("a", "b", "c"):
        nbformat.write(solved(), subs / f"{name}.ipynb")
    out = tmp_path / "book.csv"
    seen_rows: list[int] = []

    def fake_grade(path, key, keys, limits, name):
        seen_rows.append(len(out.read_text().splitlines()))  # rows already on disk
        if name == "b.ipynb":
            raise RuntimeError("boom")
        checks = [grade.CheckResult(s.id, s.grade_id, s.points, s.points) for s in key.graded]
        return grade.SubmissionResult(name, key.name, "graded", checks), None

    monkeypatch.setattr(grade, "grade_notebook", fake_grade)
    results = grade.grade_submissions(
        subs, out, "91", keys, LIMITS, progress=False, check_key=False
    )
    assert seen_rows == [1, 2, 3]
    assert [(r.submission, r.status, r.total) for r in results] == [
        ("a.ipynb", "graded", 5.0),
        ("b.ipynb", "grader-error", 0.0),
        ("c.ipynb", "graded", 5.0),
    ]
    assert "grader error: RuntimeError: boom" in out.read_text()


def test_cli_grades_a_folder_and_reports_configuration_errors(tmp_path: Path, capsys):
    keys = _write_keys(tmp_path)
    subs = tmp_path / "subs"
    subs.mkdir()
    nbformat.write(solved(mean="def mean(xs):\n    return 2"), subs / "alice.ipynb")
    out = tmp_path / "book.csv"
    argv = [str(subs), "--out", str(out), "--key-dir", str(keys), "--timeout-cell", "20",
            "--memory-mb", "1024", "--no-progress"]  # fmt: skip
    assert grade.main(argv) == 0
    row = next(csv.DictReader(out.open()))
    assert (row["total"], row["nb91_q2"]) == ("2", "0")
    assert row["nb91_q2_error"] == (
        "AssertionError: raised at `assert abs(mean([0.5, 1.0]) - 0.75) < 1e-12`"
    )
    assert "graded 1 submissions" in capsys.readouterr().out
    assert grade.main([str(tmp_path / "missing"), "--key-dir", str(keys)]) == 2
    assert "submissions folder not found" in capsys.readouterr().err


def test_an_answer_key_that_fails_under_the_limits_stops_the_run(tmp_path: Path):
    keys = _write_keys(tmp_path)
    slow = arith_key()  # e.g. a cold cache: the reference answer now takes 30 s
    slow.cells[3].source = slow.cells[3].source.replace(
        "    return a + b", "    __import__('time').sleep(30)\n    return a + b"
    )
    nbformat.write(slow, keys / "91_arith.ipynb")
    subs = tmp_path / "subs"
    subs.mkdir()
    nbformat.write(solved(), subs / "a.ipynb")
    with pytest.raises(grade.GradingError) as caught:
        grade.grade_submissions(subs, tmp_path / "book.csv", "91", keys, LIMITS, progress=False)
    message = str(caught.value)
    assert message.startswith("the answer key 91_arith.ipynb scores 3 / 5 under these limits")
    assert "nb91_q1: GraderTimeout" in message and "raise --timeout-cell" in message
    assert not (tmp_path / "book.csv").exists()


# ---- one real assignment ---------------------------------------------------------------------


@pytest.mark.slow
def test_real_notebook_01_with_a_moved_check_a_cheat_and_one_todo_done(tmp_path: Path):
    solution = nbformat.read(REPO_ROOT / "solutions" / "01_load_and_preprocess.ipynb", 4)
    nb = nbformat.read(REPO_ROOT / "notebooks" / "01_load_and_preprocess.ipynb", 4)
    q2_todo = _index(nb, "todo", "q2")
    nb.cells[q2_todo].source = solution.cells[_index(solution, "todo", "q2")].source
    moved = nb.cells.pop(_index(nb, "graded", "q2"))
    nb.cells.insert(3, moved)  # before impute_xxxx is defined
    cheat = "nb01.check_load_mimic_cxr_dataset = lambda *args, **kwargs: print('all good')"
    nb.cells.insert(_index(nb, "graded", "q1"), nbformat.v4.new_code_cell(cheat))
    path = tmp_path / "student.ipynb"
    nbformat.write(nb, path)
    keys = grade.find_answer_keys(REPO_ROOT / "solutions")
    key = grade.select_answer_key(keys, "01")
    result, executed = grade.grade_notebook(path, key, keys, grade.GradeLimits(memory_mb=4096))
    assert result.status == "graded"
    assert [(c.grade_id, c.points) for c in result.checks] == [("nb01_q1", 0.0), ("nb01_q2", 2.0)]
    assert result.checks[0].error == (
        "NotImplementedError: load_mimic_cxr_dataset: fill in this TODO"
    )
    assert any("rebinds course code: nb01.check_load_mimic_cxr_dataset" in n for n in result.notes)
    assert any("check q2 came before impute_xxxx was defined" in n for n in result.notes)
    assert executed is not None and len(executed.cells) == len(nb.cells)
