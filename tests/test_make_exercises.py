"""Exercise notebooks are generated from the solution notebooks and kept in sync (runtime about 2 s)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest

from logattn_ref import make_exercises
from logattn_ref.grading import assign, get_task
from logattn_ref.notebooks import problems

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_exercises_are_in_sync_with_solutions(capsys):
    assert make_exercises.main(["--check"]) == 0, capsys.readouterr().out


def test_every_solution_has_its_exercise_and_lesson():
    assert [p.name for p in SOLUTIONS] == sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))
    for name in ("01_softmax_attention", "02_log_of_exponentials", "03_numpy_reference"):
        assert (ROOT / "solutions" / f"{name}.ipynb").exists()


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_exercise_keeps_signature_and_docstring_and_drops_the_answer(solution):
    lesson = solution.name.split("_", 1)[0].lstrip("0")  # "4" for 04_gpu_scan, "4b" for 04b_kernels
    exercise = nbformat.read(ROOT / "exercises" / solution.name, as_version=4)
    solved = nbformat.read(solution, as_version=4)
    assert not problems(ROOT / "exercises" / solution.name) and not problems(solution)
    assert len(exercise.cells) == len(solved.cells)
    stubs = assign.stub_cells(exercise)
    assert stubs, "no task cells"
    checked = set(re.findall(r"""check\(\s*["'](\d+[a-z]?\.\d+)["']""", "\n".join(c.source for c in exercise.cells)))
    assert set(stubs) == checked, "every task cell needs a check cell and vice versa"
    for ex_cell, sol_cell in zip(exercise.cells, solved.cells):
        if assign.BEGIN not in sol_cell.source:
            assert ex_cell.source == sol_cell.source
            continue
        task_id = next(t[len("task-"):] for t in ex_cell.metadata["tags"] if t.startswith("task-"))
        assert task_id.split(".")[0] == lesson
        answer = sol_cell.source.split(assign.BEGIN)[1].split(assign.END)[0]
        kept = sol_cell.source.split(assign.BEGIN)[0]
        assert ex_cell.source.startswith(kept.rstrip(" "))  # the signature and docstring stay
        assert f'raise NotImplementedError("Task {task_id}: {get_task(task_id).title}")' in ex_cell.source
        assert "SOLUTION" not in ex_cell.source
        for line in answer.strip().splitlines()[1:]:
            assert line.strip() == "" or line not in ex_cell.source.splitlines(), f"answer line leaked: {line}"


@pytest.mark.parametrize("exercise", sorted((ROOT / "exercises").glob("*.ipynb")), ids=lambda p: p.stem)
def test_exercise_says_how_to_hint_reset_and_grade(exercise):
    top = nbformat.read(exercise, as_version=4).cells[0].source
    for words in ("hint(", "reset_task(", "reset_notebook(", "python -m logattn_ref.grade", exercise.name):
        assert words in top


def _tmp_root(tmp_path: Path) -> Path:
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def test_check_flags_a_stale_exercise_and_generation_fixes_it(tmp_path, capsys):
    root = _tmp_root(tmp_path)
    path = root / "solutions" / "01_softmax_attention.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A new closing remark."))
    nbformat.write(nb, path)
    (root / "exercises" / "99_orphan.ipynb").write_text((root / "exercises" / "01_softmax_attention.ipynb").read_text())
    assert make_exercises.main(["--check", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "out of date: exercises/01_softmax_attention.ipynb" in out and "no solution for: exercises/99_orphan.ipynb" in out
    (root / "exercises" / "99_orphan.ipynb").unlink()
    assert make_exercises.main(["--root", str(root)]) == 0
    assert make_exercises.main(["--check", "--root", str(root)]) == 0
    assert "A new closing remark." in (root / "exercises" / "01_softmax_attention.ipynb").read_text()


def _solution_cell(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    return nb


def test_stub_replaces_the_region_at_its_indentation():
    nb = _solution_cell('def f(x):\n    """Task 1.1: doc."""\n    ### BEGIN SOLUTION\n    y = x\n    return y\n    ### END SOLUTION\n')
    out = assign.exercise_from_solution(nb)
    assert out.cells[0].source == 'def f(x):\n    """Task 1.1: doc."""\n    raise NotImplementedError("Task 1.1: Stable softmax")'
    assert out.cells[0].metadata["tags"] == ["task-1.1"]


@pytest.mark.parametrize(
    "source,words",
    [
        ("# Task 1.1\n### BEGIN SOLUTION\nx = 1\n", "without '### END SOLUTION'"),
        ("# Task 1.1\nx = 1\n### END SOLUTION\n", "without '### BEGIN SOLUTION'"),
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "must name its task"),
        ("# Task 9.9\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "no task '9.9'"),
    ],
)
def test_bad_markers_are_reported(source, words):
    with pytest.raises(assign.MarkerError, match=re.escape(words)):
        assign.exercise_from_solution(_solution_cell(source))


def test_moved_names_still_import_from_make_exercises_with_a_warning():
    for name in ("BEGIN", "END", "MarkerError", "exercise_from_solution", "stub_cells", "task_tag"):
        with pytest.warns(DeprecationWarning, match=f"grading.assign.{name}"):
            assert getattr(make_exercises, name) is getattr(assign, name)
    with pytest.raises(AttributeError):
        make_exercises.no_such_name
