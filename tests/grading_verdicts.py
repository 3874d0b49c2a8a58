"""The verdicts the lesson 4-6 grading tests assert, in one place: a right answer passes on every seed, a wrong one
fails on every seed naming its concept, and an unfinished stub is reported as not implemented.

Every verdict is asserted on five seeds: the corner cases are fixed, the random draws are not.
"""

import contextlib
import io

from logattn_ref.grading import check, get_task

SEEDS = range(5)


def quiet_check(task_id, fn, seed):
    """``check(task_id, fn, seed=seed)`` without its printout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return check(task_id, fn, seed=seed)


def case_ids(cases) -> list:
    """Test ids ``<task>-<function name>`` for a list of ``(task_id, fn, ...)`` tuples."""
    return [f"{case[0]}-{getattr(case[1], '__name__', 'fn')}" for case in cases]


def assert_passes_on_every_seed(task_id, fn):
    for seed in SEEDS:
        result = quiet_check(task_id, fn, seed)
        assert result.passed, result.message


def assert_rejected_with_concept(task_id, wrong, phrase):
    for seed in SEEDS:
        result = quiet_check(task_id, wrong, seed)
        assert not result.passed and result.status == "fail"
        assert phrase in result.message, (seed, result.message)


def assert_stub_is_not_implemented(task_id, title):
    def stub(*args):
        raise NotImplementedError(f"Task {task_id}: {title}")

    result = check(task_id, stub)
    assert result.status == "not implemented" and not result.passed and "not implemented" in result.message


def assert_reference_passes(task_id):
    """The task's own reference (the oracle) passes its check."""
    assert check(task_id, get_task(task_id).reference, seed=1).passed
