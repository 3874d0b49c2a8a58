"""The grading system: checks reject known-wrong answers with a hint naming the concept, accept the oracle,
survive learner code that raises or is unfinished; hints, resets, and the grader CLI on real notebooks.

Runtime: the unit tests take about 3 s; the grader tests execute notebooks in Jupyter kernels (about 5-10 s
each on 2 cores, most of it the kernel start and the course's setup cell).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wrong_answers import CORRECT_ANSWERS, CORRECT_REWRITES, WRONG_ANSWERS

from logattn_ref import grade as grade_cli
from logattn_ref import numpy_ref
from logattn_ref.grading import RESULTS_ENV, Case, all_tasks, check, checker, get_task, hint, reset_notebook, reset_task, task

ROOT = Path(__file__).resolve().parent.parent
LESSONS_1_TO_3 = [t.id for t in all_tasks() if t.id.split(".")[0] in {"1", "2", "3"}]
SEEDS = range(5)  # each check draws fresh inputs; five draws show the diagnosis does not depend on luck


def test_at_least_twelve_tasks_in_lessons_1_to_3_each_with_a_wrong_answer():
    assert len(LESSONS_1_TO_3) >= 12
    covered = {task_id for task_id, _, _ in WRONG_ANSWERS}
    assert set(LESSONS_1_TO_3) <= covered, f"tasks without a known-wrong answer: {set(LESSONS_1_TO_3) - covered}"
    assert set(LESSONS_1_TO_3) <= set(CORRECT_ANSWERS)


@pytest.mark.parametrize("task_id,fn,words", WRONG_ANSWERS, ids=[f"{t}-{f.__name__}" for t, f, _ in WRONG_ANSWERS])
def test_wrong_answer_is_rejected_with_the_concept(task_id, fn, words, capsys):
    for seed in SEEDS:
        result = check(task_id, fn, seed=seed)
        assert not result.passed and result.points == 0 and result.status == "fail"
        assert words in result.message, result.message
        printed = capsys.readouterr().out
        assert printed.startswith(f"FAIL Task {task_id}") and "hint:" in printed


@pytest.mark.parametrize("task_id", sorted(CORRECT_ANSWERS))
def test_oracle_answer_passes(task_id, capsys):
    for seed in SEEDS:
        result = check(task_id, CORRECT_ANSWERS[task_id], seed=seed)
        assert result.passed, result.message
        assert result.points == get_task(task_id).points
    assert capsys.readouterr().out.startswith(f"PASS Task {task_id}")


@pytest.mark.parametrize("task_id,fn", CORRECT_REWRITES, ids=[f"{t}-{f.__name__}" for t, f in CORRECT_REWRITES])
def test_correct_rewrite_passes(task_id, fn, capsys):
    """Loops, einsum, sentinel masks, other orderings and stabilisers: right answers written differently pass."""
    for seed in SEEDS:
        result = check(task_id, fn, seed=seed)
        assert result.passed, result.message


@settings(max_examples=6)
@given(seed=st.integers(0, 2**63 - 1))
def test_verdicts_do_not_depend_on_the_draw(seed):
    """Whatever inputs a check draws, right answers pass and every wrong one fails with its own concept."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        for task_id, fn in list(CORRECT_ANSWERS.items()) + CORRECT_REWRITES:
            assert check(task_id, fn, seed=seed).passed, (task_id, getattr(fn, "__name__", ""))
        for task_id, fn, words in WRONG_ANSWERS:
            result = check(task_id, fn, seed=seed)
            assert not result.passed and words in result.message, (task_id, fn.__name__, result.message)


def test_checks_draw_fresh_inputs():
    seen = []
    task_obj = get_task("1.1")
    for seed in (None, None):
        rng = np.random.default_rng(seed)
        seen.append(next(c for c in task_obj.cases(rng) if not c.corner).args[0])  # corner cases are fixed by design
    assert not np.array_equal(seen[0], seen[1])


def test_failure_shows_yours_against_expected(capsys):
    result = check("1.3", lambda n: np.ones((n, n), dtype=bool), seed=0)
    assert "yours True, expected False" in result.message and "entries differ" in result.message
    result = check("1.4", lambda q, k, v, causal=True: np.zeros(q.shape[:-1] + (v.shape[-1],)), seed=0)
    assert "max abs error" in result.message and "scaled error" in result.message


def test_stub_reports_not_implemented_and_does_not_raise(capsys):
    def stub(x):
        raise NotImplementedError("Task 1.1: Stable softmax")

    result = check("1.1", stub)
    assert (result.passed, result.status, result.points) == (False, "not implemented", 0)
    assert capsys.readouterr().out.strip() == "Task 1.1: not implemented yet"


def test_exception_in_learner_code_is_a_reported_fail(capsys):
    result = check("1.2", lambda x: np.sum(x))  # a 0-d answer where a vector's LSE is a 0-d array too
    assert not result.passed and "expected" in result.message
    result = check("2.1", lambda q, k: 1 / 0)
    assert not result.passed and "ZeroDivisionError" in result.message and "division by zero" in result.message
    result = check("1.1", lambda x: None)  # returning nothing is a FAIL too, not a crash
    assert not result.passed and result.status == "fail"


def test_bad_arguments_to_check_raise_clearly():
    with pytest.raises(KeyError, match="known tasks"):
        check("9.9", lambda x: x)
    with pytest.raises(KeyError, match="2.3"):
        get_task("two")
    with pytest.raises(TypeError, match="fn must be the function"):
        check("1.1", "softmax")


def test_task_decorator_validates():
    with pytest.raises(ValueError, match="task_id"):
        task("1", "x", points=1, concept="c", hints=["h"], reference=None)
    with pytest.raises(ValueError, match="hint"):
        task("9.1", "x", points=1, concept="c", hints=[], reference=None)


def test_results_file_gets_one_json_line_per_check(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv(RESULTS_ENV, str(results))
    check("1.3", CORRECT_ANSWERS["1.3"])
    check("1.1", lambda x: x)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["task_id"], r["passed"], r["points"]) for r in records] == [("1.3", True, 1), ("1.1", False, 0)]


def test_hints_are_progressive(monkeypatch, capsys):
    monkeypatch.setattr(checker, "_HINTS_GIVEN", {})
    hints = get_task("2.4").hints
    shown = [hint("2.4") for _ in range(len(hints) + 1)]
    for number, text in enumerate(hints, start=1):
        assert shown[number - 1].startswith(f"Hint {number}/{len(hints)}") and text in shown[number - 1]
    assert shown[-1] == shown[-2] and "last hint" in shown[-1]


# ------------------------------------------------------------------------------------------------ resets


def _edit_task_cell(path: Path, task_id: str, text: str) -> None:
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if f"task-{task_id}" in c.metadata.get("tags", []))
    cell.source = text
    nbformat.write(nb, path)


def _sources(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells]


def test_reset_task_restores_one_stub_and_backs_up(tmp_path, capsys):
    pristine = ROOT / "exercises" / "02_log_of_exponentials.ipynb"
    mine = tmp_path / pristine.name
    shutil.copy(pristine, mine)
    _edit_task_cell(mine, "2.1", "def similarity(q, k):\n    return 'my attempt'")
    _edit_task_cell(mine, "2.2", "def attention_weights(q, k, causal=True):\n    return 'keep me'")
    edited = mine.read_text()
    backup = reset_task(mine, "2.1")
    assert backup.parent == tmp_path and re.search(r"\.backup-\d{8}T\d+Z\.ipynb$", backup.name)
    assert backup.read_text() == edited
    sources = _sources(mine)
    assert any("keep me" in s for s in sources), "another task's work was lost"
    stub = next(s for s in _sources(pristine) if "def similarity" in s)
    assert stub in sources and not any("my attempt" in s for s in sources)
    with pytest.raises(KeyError, match="9.9"):
        reset_task(mine, "9.9")


def test_reset_notebook_restores_everything_and_backs_up(tmp_path, capsys):
    pristine = ROOT / "exercises" / "01_softmax_attention.ipynb"
    mine = tmp_path / pristine.name
    shutil.copy(pristine, mine)
    _edit_task_cell(mine, "1.3", "def causal_mask(n):\n    return 42")
    backup = reset_notebook(mine)
    assert "return 42" in backup.read_text()
    assert _sources(mine) == _sources(pristine)
    with pytest.raises(FileNotFoundError):
        reset_notebook(tmp_path / "missing.ipynb")
    with pytest.raises(ValueError, match="ipynb"):
        reset_notebook(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------------ the grader


def _grade(paths, tmp_path, *extra):
    out = tmp_path / "grades.json"
    code = grade_cli.main([str(p) for p in paths] + ["--json", str(out), "--csv", str(tmp_path / "grades.csv"), *extra])
    return code, json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["01_softmax_attention", "02_log_of_exponentials", "03_numpy_reference"])
def test_grader_full_marks_for_solutions_zero_for_exercises(stem, tmp_path, capsys):
    solution, exercise = ROOT / "solutions" / f"{stem}.ipynb", ROOT / "exercises" / f"{stem}.ipynb"
    before = (solution.read_bytes(), exercise.read_bytes())
    code, summary = _grade([solution, exercise], tmp_path)
    assert code == 1  # the exercise has unfinished tasks
    rows = {(Path(r["notebook"]).parent.name, r["task"]): r for r in summary["rows"]}
    task_ids = {t for _, t in rows}
    assert len(task_ids) >= 4
    for task_id in task_ids:
        assert rows[("solutions", task_id)]["status"] == "pass", rows[("solutions", task_id)]["message"]
        assert rows[("solutions", task_id)]["points"] == get_task(task_id).points
        assert rows[("exercises", task_id)]["status"] == "not implemented"
        assert rows[("exercises", task_id)]["points"] == 0
    assert summary["cell_errors"] == {str(solution): 0, str(exercise): 0}  # stubs never break the notebook
    assert (solution.read_bytes(), exercise.read_bytes()) == before  # executed copies only
    assert "Total:" in capsys.readouterr().out
    assert (tmp_path / "grades.csv").read_text().startswith("notebook,task,title,points,max_points,status")


@pytest.mark.slow
def test_grader_survives_raise_hang_and_flood(tmp_path, capfd):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(s)
        for s in [
            "import numpy as np\nfrom logattn_ref.grading import check",
            "raise RuntimeError('learner bug')",
            "while True:\n    pass",
            "for _ in range(20000):\n    print('x' * 100)",
            "check('1.3', lambda n: np.tril(np.ones((n, n), dtype=bool)))",
            "import time\ndef slow(n):\n    time.sleep(60)\ncheck('1.1', slow)",
            "check('1.2', lambda x: x.sum(-1))",
        ]
    ]
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    before = path.read_bytes()
    code, summary = _grade([tmp_path], tmp_path, "--timeout", "4", "--max-output", "5000")
    assert code == 1 and path.read_bytes() == before
    assert list(tmp_path.glob("*.ipynb")) == [path]  # no copy or output written beside it
    status = {r["task"]: r["status"] for r in summary["rows"]}
    assert status == {"1.3": "pass", "1.1": "no result", "1.2": "fail"}
    assert summary["cell_errors"][str(path)] == 3  # the raise and the two interrupted cells
    assert summary["points"] == 1
    # The table says, under each task that did not pass, its one-line hint (not only in --json).
    out, err = capfd.readouterr()
    hints = {r["task"]: r["hint"] for r in summary["rows"]}
    assert hints["1.3"] == "" and hints["1.1"] and hints["1.2"] and "\n" not in hints["1.2"]
    message_1_2 = next(r["message"] for r in summary["rows"] if r["task"] == "1.2")
    assert " ".join(message_1_2.split("hint: ", 1)[1].split()).startswith(hints["1.2"].rstrip("…"))
    for task in ("1.1", "1.2"):
        assert f"hint: {hints[task]}" in out
    # The kernel's own start-up warnings do not reach the learner's terminal.
    assert "without encryption" not in out + err


def test_grader_truncates_output():
    nb = nbformat.v4.new_notebook()
    client = grade_cli._BoundedClient(nb, 100)
    client.clear_before_next_output = False  # nbclient sets this when a cell starts executing
    outs = []
    for _ in range(50):
        msg = {"msg_type": "stream", "content": {"name": "stdout", "text": "y" * 30}, "parent_header": {"msg_id": "m"}, "header": {"msg_type": "stream"}}
        client.output(outs, msg, None, 0)
    assert sum(len(o.get("text", "")) for o in outs) < 200 and "truncated" in outs[-1]["text"]


def test_grader_rejects_bad_paths(tmp_path, capsys):
    with pytest.raises(SystemExit):
        grade_cli.main([str(tmp_path / "nope.ipynb")])


def test_deleting_a_task_cell_does_not_hide_the_task_from_the_grader(tmp_path):
    nb = nbformat.read(ROOT / "exercises" / "01_softmax_attention.ipynb", as_version=4)
    nb.cells = [c for c in nb.cells if "1.4" not in c.source]
    path = tmp_path / "01_softmax_attention.ipynb"
    nbformat.write(nb, path)
    assert grade_cli._task_ids(nb, path) == ["1.1", "1.2", "1.3", "1.4"]
    assert grade_cli._task_ids(nb, tmp_path / "renamed.ipynb") == ["1.1", "1.2", "1.3"]


def test_learner_editing_inputs_in_place_fails_naming_the_input(capsys):
    """Right values computed by overwriting the input: a FAIL that names the input, since callers reuse it; and the
    in-place edit never changes what the oracle or the known mistakes see."""
    def softmax_in_place(x):
        x -= x.max(axis=-1, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(axis=-1, keepdims=True)
        return x

    for seed in range(5):
        result = check("1.1", softmax_in_place, seed=seed)
        assert not result.passed and "changed its input `x` in place" in result.message
        assert "x = x - m" in result.message and "changed its input" in result.hint
    assert not check("1.1", lambda x: np.exp(np.multiply(x, 0, out=x)) / x.shape[-1] * 0).passed

    def softmax_copy_then_in_place(x):  # editing its own copy is fine
        x = x - x.max(axis=-1, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(axis=-1, keepdims=True)
        return x

    assert check("1.1", softmax_copy_then_in_place, seed=0).passed


def test_nan_differences_are_reported_as_nan_not_as_zero_error():
    def softmax_nan_where_wrong(x):
        out = numpy_ref.softmax(x, axis=-1)
        return np.where(out > 0.5, np.nan, out)

    result = check("1.1", softmax_nan_where_wrong, seed=0)
    assert not result.passed and "NaN" in result.message
    assert "max abs error 0 " not in result.message


def test_state_count_is_compared():
    """A state is compared field by field, the token count included."""
    state = numpy_ref.initial_state((), 2, 3)
    assert len(checker._to_numpy(state)) == 4


def test_a_mistake_that_gets_the_case_right_is_not_the_diagnosis():
    """An error only on the all -inf row: a known mistake that is right there (starting the max at 0 keeps -inf)
    must not be named just because it agrees with the learner wherever it is finite."""
    def logsumexp_empty_row_is_five(x):
        out = numpy_ref.logsumexp(x, axis=-1)
        return np.where(np.isneginf(out), 5.0, out)

    for seed in SEEDS:
        result = check("1.2", logsumexp_empty_row_is_five, seed=seed)
        assert not result.passed and "all -inf" in result.message
        assert "do not start the max at 0" not in result.message and "MAX (not its mean" not in result.message


def test_a_failed_state_field_is_named_not_numbered():
    """A step that forgets to advance count is told about `count` by name, with no scaled error for a count."""
    from logattn_ref.numpy_ref import LogAttentionState

    def step_forgets_count(state, q_t, k_t, v_t):
        y, new = numpy_ref.step(state, q_t, k_t, v_t)
        return y, LogAttentionState(new.sum_kv, new.sum_k, new.key_max, state.count)

    result = _quiet_check("3.4", step_forgets_count)
    assert not result.passed and "\ncount: " in result.message and "output[4]" not in result.message
    assert "count" in result.message.split("hint:")[1]
    assert "scaled error" not in result.message.split("count: ")[1].split("hint:")[0]


def _quiet_check(task_id, fn, seed=0):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return check(task_id, fn, seed=seed)
