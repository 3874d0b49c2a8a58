"""What every graded task must have (issue 13): fixed corner cases that run on every check, at least five known
mistakes each named by its concept and each recognised by its own message on every seed, and the oracle passing.

The learner-style wrong answers and correct rewrites, written independently of the known mistakes, are tested per
lesson (tests/wrong_answers*.py via test_grading.py, and test_grading_lesson4-6.py).
"""

import contextlib
import io

import numpy as np
import pytest

from logattn_ref.grading import all_tasks, check
from logattn_ref.grading.checker import _to_numpy

TASKS = all_tasks()
SEEDS = range(5)


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _same(a, b) -> bool:
    a, b = _to_numpy(a), _to_numpy(b)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.id)
def test_every_task_has_fixed_corner_cases(task):
    first = task.cases(np.random.default_rng(1))
    second = task.cases(np.random.default_rng(2))
    corners = [c for c in first if c.corner]
    assert corners, f"task {task.id} has no corner cases (Case(..., corner=True))"
    again = [c for c in second if c.corner]
    assert [c.name for c in corners] == [c.name for c in again]
    for a, b in zip(corners, again):  # built from fixed numbers, not from the check's random draw
        assert _same(a.args, b.args) and a.kwargs.keys() == b.kwargs.keys(), (task.id, a.name)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.id)
def test_every_task_has_five_known_mistakes_each_rejected_with_its_own_message(task):
    assert len(task.mistakes) >= 5, f"task {task.id} has {len(task.mistakes)} known mistakes, needs at least 5"
    messages = [m.message for m in task.mistakes]
    assert len(set(messages)) == len(messages), f"task {task.id}: two mistakes share a message"
    for mistake in task.mistakes:
        for seed in SEEDS:
            result = _quiet(check, task.id, mistake.fn, seed=seed)
            assert not result.passed, f"task {task.id}: the known mistake '{mistake.message}' passed on seed {seed}"
            assert mistake.message in result.message, (
                f"task {task.id}, seed {seed}: the mistake '{mistake.message}' got another diagnosis:\n{result.message}")
