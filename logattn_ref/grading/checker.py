"""``check`` and ``hint``: what a learner calls from an exercise notebook.

``check(task_id, fn)`` runs ``fn`` on fresh random inputs of several shapes, compares each output with the
float64 oracle within the task's stated tolerance (``|yours - expected| <= atol + rtol * |expected|``, with
-inf matching -inf), and prints PASS or FAIL. A failure shows a small comparison (the case, shapes, max abs
and scaled error, the first differing entries) and a hint that names the concept: when the learner's output
equals a known-wrong variant of the task (no max shift, off-by-one mask, no normaliser Z, ...) it says so.

When the environment variable ``LOGATTN_GRADE_RESULTS`` names a file (the grader sets it), every check also
appends one JSON line with its result there.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import secrets
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np

from .registry import Case, InputModified, Task, get_task

__all__ = ["CheckResult", "check", "hint", "RESULTS_ENV"]

#: Environment variable naming the JSON-lines file the grader reads results from.
RESULTS_ENV = "LOGATTN_GRADE_RESULTS"

_MAX_DIFFS_SHOWN = 3


@dataclass
class CheckResult:
    """The outcome of one ``check``: status is "pass", "fail" or "not implemented"."""

    task_id: str
    passed: bool
    points: int
    message: str
    status: str
    hint: str = ""  # one line: the concept to revisit (what the grader's table shows for a failed task)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"CheckResult(task={self.task_id!r}, status={self.status!r}, points={self.points})"

    def _ipython_display_(self) -> None:
        # check() is usually a cell's last line; its message is already printed, so show nothing more.
        pass


class _Mismatch(Exception):
    """The learner's output differs from the expected one; carries a printable comparison."""


def _to_numpy(x: Any) -> Any:
    """Arrays, tensors and nested tuples/lists/states as NumPy (float64 for floats) for comparison."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    if hasattr(x, "sum_kv") and hasattr(x, "sum_k") and hasattr(x, "key_max"):  # a LogAttentionState
        fields = (_to_numpy(x.sum_kv), _to_numpy(x.sum_k), _to_numpy(x.key_max))
        # Every field, the token count included: a step that forgets to advance it is wrong.
        return fields + ((np.asarray(x.count),) if hasattr(x, "count") else ())
    if isinstance(x, (tuple, list)):
        return tuple(_to_numpy(item) for item in x)
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"returned an object that is not an array of numbers: {type(x).__name__}")
    return arr.astype(np.float64) if np.issubdtype(arr.dtype, np.floating) else arr


def _describe(x: Any) -> str:
    if isinstance(x, tuple):
        return "(" + ", ".join(_describe(item) for item in x) + ")"
    return f"array shape {x.shape} dtype {x.dtype}"


def _compare(yours: Any, expected: Any, task: Task, case: Case, label: str = "output", equal_nan: bool = False) -> None:
    """Raise ``_Mismatch`` with a readable comparison unless ``yours`` matches ``expected``."""
    if isinstance(expected, tuple):
        if not isinstance(yours, tuple) or len(yours) != len(expected):
            raise _Mismatch(f"{label}: expected a tuple of {len(expected)} ({_describe(expected)}), got {_describe(yours)}")
        names = tuple(task.output_names) if label == "output" and len(task.output_names) == len(expected) else ()
        for index, (y, e) in enumerate(zip(yours, expected)):
            _compare(y, e, task, case, names[index] if names else f"{label}[{index}]", equal_nan)
        return
    if isinstance(yours, tuple):
        raise _Mismatch(f"{label}: expected {_describe(expected)}, got a tuple {_describe(yours)}")
    if yours.shape != expected.shape:
        raise _Mismatch(f"{label}: shape {yours.shape}, expected {expected.shape}")
    if task.exact or expected.dtype == bool:
        if yours.dtype != expected.dtype and expected.dtype == bool:
            raise _Mismatch(f"{label}: dtype {yours.dtype}, expected bool")
        bad = yours != expected
    else:
        if not np.issubdtype(yours.dtype, np.number):
            raise _Mismatch(f"{label}: dtype {yours.dtype}, expected a floating-point array")
        with np.errstate(invalid="ignore"):
            close = np.isclose(yours, expected, rtol=task.rtol, atol=task.atol, equal_nan=equal_nan)
        bad = ~close
    if not bad.any():
        return
    lines = [f"{label}: {int(bad.sum())} of {bad.size} entries differ (shape {expected.shape})"]
    if not (task.exact or expected.dtype == bool):
        finite = bad & np.isfinite(expected) & np.isfinite(yours)  # differing entries where both are numbers
        n_nan = int(np.isnan(yours).sum())
        n_inf = int((np.isinf(yours) & ~np.isinf(expected)).sum())
        if n_nan or n_inf:
            lines.append(f"  yours has {n_nan} NaN and {n_inf} unexpected inf entries")
        if not finite.any():
            lines.append("  every differing entry is NaN or inf in yours or in the expected output (no finite error "
                         "to report)")
        if finite.any():
            err = float(np.max(np.abs(yours[finite] - expected[finite])))
            lines.append(f"  max abs error {err:.3g} (tolerance atol={task.atol:g}, rtol={task.rtol:g})")
            if case.scale is not None and np.size(case.scale) and expected.ndim > 0:  # not for a count
                top = float(np.max(np.abs(case.scale)))
                if top > 0:
                    lines.append(f"  scaled error max|yours - expected| / max|v| = {err / top:.3g}")
    positions = [()] if bad.ndim == 0 else list(zip(*np.nonzero(bad)))  # a 0-d output has one position, ()
    for index in positions[:_MAX_DIFFS_SHOWN]:
        index = tuple(int(i) for i in index)
        lines.append(f"  at {index}: yours {_fmt(yours[index])}, expected {_fmt(expected[index])}")
    raise _Mismatch("\n".join(lines))


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return f"{float(value):.6g}"


def _matches(yours: Any, other: Any, task: Task, case: Case) -> bool:
    # NaN matches NaN here: a known mistake that yields NaN (e.g. -inf - -inf) should be recognised.
    try:
        _compare(yours, other, task, case, equal_nan=True)
    except _Mismatch:
        return False
    return True


def _diagnose(task: Task, case: Case, yours: Any, expected: Any = None) -> Optional[str]:
    """The message of the known-wrong variant that best explains the learner's output, if any.

    Strongest evidence first: a mistake whose output equals the learner's everywhere beats one that only fails
    the same way (the same NaN/inf entries), which beats one that agrees only where its output is finite. Within
    each level the task's order decides, so a task lists its most specific mistakes first. A mistake that gets this
    case right (its output matches ``expected``) explains nothing here and is skipped: otherwise one that is right
    wherever it is finite could be named for an error that lies only where it is -inf.
    """
    outputs = []
    for mistake in task.mistakes:
        try:
            with np.errstate(all="ignore"):
                wrong = _to_numpy(task.run(mistake.fn, copy.deepcopy(case)))
        except Exception:
            continue
        if expected is not None and _matches(wrong, expected, task, case):
            continue
        outputs.append((mistake, wrong))
    for test in (lambda wrong: _matches(yours, wrong, task, case), lambda wrong: _same_failure(yours, wrong),
                 lambda wrong: _matches_where_defined(yours, wrong, task)):
        for mistake, wrong in outputs:
            if test(wrong):
                return mistake.message
    return None


def _matches_where_defined(yours: Any, wrong: Any, task: Task) -> bool:
    """``yours`` equals the mistake wherever the mistake's output is defined (finite), on most entries.

    A mistake computed with -inf may give NaN on a row (an off-by-one mask leaves row 0 empty) where the
    learner's version of the same mistake, masking with -1e9, gives some finite number; the rest still tells.
    """
    if isinstance(yours, tuple) or isinstance(wrong, tuple):
        return (
            isinstance(yours, tuple) and isinstance(wrong, tuple) and len(yours) == len(wrong)
            and all(_matches_where_defined(y, w, task) for y, w in zip(yours, wrong))
        )
    if yours.shape != wrong.shape or not np.issubdtype(wrong.dtype, np.floating) or not np.issubdtype(yours.dtype, np.number):
        return False
    defined = np.isfinite(wrong)
    if defined.sum() < max(1, 0.5 * wrong.size):
        return False
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.isclose(yours[defined], wrong[defined], rtol=task.rtol, atol=task.atol)))


def _same_failure(yours: Any, wrong: Any) -> bool:
    """Both outputs have the same non-finite entries (NaN/overflow), e.g. an unshifted exp in both."""
    if isinstance(yours, tuple) or isinstance(wrong, tuple):
        return False
    if yours.shape != wrong.shape or not np.issubdtype(yours.dtype, np.floating):
        return False
    bad_yours, bad_wrong = ~np.isfinite(yours), ~np.isfinite(wrong)
    return bool(bad_yours.any()) and bool(np.array_equal(np.isnan(yours), np.isnan(wrong))) and bool(
        np.array_equal(bad_yours, bad_wrong)
    )


def _learner_frame(err: BaseException) -> traceback.FrameSummary:
    """The innermost frame of the traceback outside this package and NumPy: the learner's line, usually."""
    frames = traceback.extract_tb(err.__traceback__)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    own = [f for f in frames if not os.path.abspath(f.filename).startswith(package) and "numpy" not in f.filename]
    return (own or frames)[-1]


def _record(result: CheckResult) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(result)) + "\n")


def _finish(result: CheckResult) -> CheckResult:
    print(result.message)
    _record(result)
    return result


def check(task_id: str, fn: Callable, seed: Optional[int] = None) -> CheckResult:
    """Check the learner's ``fn`` for task ``task_id`` against the oracle; print PASS/FAIL and return the result.

    Inputs are drawn fresh on every call (pass ``seed`` to repeat a draw). A stub that raises
    ``NotImplementedError`` is reported as "not implemented yet" without raising, and any other exception in
    ``fn`` is reported, with its type and message, as a FAIL, so the notebook keeps running.

    Raises:
        KeyError: ``task_id`` names no registered task.
        TypeError: ``fn`` is not callable.
    """
    task = get_task(task_id)
    if not callable(fn):
        raise TypeError(f"check({task_id!r}, fn): fn must be the function you wrote, got {type(fn).__name__}")
    head = f"Task {task.id} ({task.title})"
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(64))
    cases = task.cases(rng)
    cases = [c for c in cases if c.corner] + [c for c in cases if not c.corner]  # fixed corner cases first
    for case in cases:
        try:
            # The learner's function gets its own copy of the inputs: an in-place edit (x -= x.max()) must not
            # change what the oracle and the known mistakes see. The copy is compared afterwards to say so.
            given = copy.deepcopy(case)
            with np.errstate(all="ignore"):  # overflow in learner code shows up as a wrong value, below
                yours = task.run(fn, given)
            _check_unmodified(given, case, task, fn)
        except NotImplementedError:
            return _finish(CheckResult(task.id, False, 0, f"Task {task.id}: not implemented yet", "not implemented",
                                       "replace the `raise NotImplementedError` in the task's cell with your code"))
        except InputModified as err:
            message = (f"FAIL {head} on case '{case.name}': {err}\n"
                       "  hint: a function should not change its inputs: callers still use them afterwards. Work "
                       "on new arrays (x = x - m, not x -= m; np.copy for a state you update).")
            return _finish(CheckResult(task.id, False, 0, message, "fail", f"it changed its input in place: {err}"))
        except Exception as err:  # learner code: report, never crash the notebook
            where = _learner_frame(err)
            message = (
                f"FAIL {head}: your function raised {type(err).__name__}: {err}\n"
                f"  on case '{case.name}' (line {where.lineno} of {where.name})\n"
                f"  hint: {case.hint or task.concept}"
            )
            return _finish(CheckResult(task.id, False, 0, message, "fail",
                                       f"your function raised {type(err).__name__}; {case.hint or task.concept}"))
        expected = _to_numpy(task.answer(case))
        try:
            yours_np = _to_numpy(yours)
            _compare(yours_np, expected, task, case)
        except (_Mismatch, TypeError) as err:
            diagnosis = _diagnose(task, case, yours_np, expected) if isinstance(err, _Mismatch) else None
            advice = diagnosis or case.hint or task.concept
            message = f"FAIL {head} on case '{case.name}':\n{err}\n  hint: {advice}"
            return _finish(CheckResult(task.id, False, 0, message, "fail", advice))
    if task.method is not None:
        try:
            problem = task.method(fn, rng)
        except NotImplementedError:
            problem = None
        except Exception as err:  # the method probe runs learner code too
            problem = f"your function raised {type(err).__name__} when run at the probe's size: {err}"
        if problem:
            message = f"FAIL {head}: the values are right, but {problem}\n  hint: {task.concept}"
            return _finish(CheckResult(task.id, False, 0, message, "fail", problem))
    corners = sum(c.corner for c in cases)
    return _finish(CheckResult(task.id, True, task.points, f"PASS {head}: {len(cases)} cases ({corners} fixed corner "
                                                            f"cases), {task.points} point(s)", "pass"))


def _parameter_names(task: Task, fn: Callable, count: int) -> list:
    if task.call is not None:
        # A driven task feeds the learner slices or states made from the case, not the case's arguments one to one:
        # the signature's names would mislabel them (drivers that hand over a state check it themselves).
        return [f"input {i + 1} (of {count})" for i in range(count)]
    for candidate in (task.reference, fn):
        try:
            names = [p.name for p in inspect.signature(candidate).parameters.values()]
        except (TypeError, ValueError):
            continue
        if len(names) >= count:
            return names[:count]
    return [f"argument {i + 1}" for i in range(count)]


def _same_value(a: Any, b: Any) -> bool:
    """Deep equality for the inputs of a case: arrays (NaN equal to NaN), tensors, states, tuples, dicts."""
    if hasattr(a, "detach") and hasattr(b, "detach"):
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[key], b[key]) for key in a)
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        return all(_same_value(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    try:
        return bool(a == b)
    except Exception:
        return True  # an input we cannot compare is not reported


def _check_unmodified(given: Case, pristine: Case, task: Task, fn: Callable) -> None:
    """Raise :class:`InputModified` naming the first input the learner's function changed in place."""
    names = _parameter_names(task, fn, len(given.args))
    for name, after, before in zip(names, given.args, pristine.args):
        if not _same_value(after, before):
            raise InputModified(f"your function changed its input `{name}` in place")
    for key in given.kwargs:
        if not _same_value(given.kwargs[key], pristine.kwargs.get(key)):
            raise InputModified(f"your function changed its input `{key}` in place")


_HINTS_GIVEN: dict[str, int] = {}


def hint(task_id: str) -> str:
    """Print the next hint of a task (one more each call, in this kernel session) and return it."""
    task = get_task(task_id)
    shown = _HINTS_GIVEN.get(task.id, 0)
    index = min(shown, len(task.hints) - 1)
    _HINTS_GIVEN[task.id] = shown + 1
    more = "" if index < len(task.hints) - 1 else " (that was the last hint)"
    text = f"Hint {index + 1}/{len(task.hints)} for task {task.id}{more}: {task.hints[index]}"
    print(text)
    return text
