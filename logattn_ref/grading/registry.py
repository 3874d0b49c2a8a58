"""The task registry: what a graded task is, and how lesson modules declare theirs.

How to add a task (lesson authors read this)
--------------------------------------------
1. Put the tasks of lesson N in ``logattn_ref/grading/lessonN.py`` (the registry imports ``lesson*.py`` modules
   lazily, the first time a task id is looked up; a lesson without a module is simply absent).
2. Declare a task with the :func:`task` decorator on a *case generator*: a function that takes a NumPy
   ``Generator`` and returns a list of :class:`Case` (fresh random inputs each call: odd lengths, ``n = 1``,
   batch/head dims, extreme magnitudes where the task is about stability, signed V where relevant)::

       @task("4.1", "Causal log-attention in PyTorch", points=2,
             concept="a cumulative log-sum-exp over keys is the causal state",
             hints=["first hint", "more specific", "almost the answer"],
             reference=lambda q, k, v: numpy_ref.log_attention(q, k, v),   # the oracle gives the answer
             mistakes=[Mistake(wrong_fn, "the causal mask is off by one: token i must see itself")],
             rtol=1e-6, atol=1e-9, scale_arg="v")
       def _cases(rng):
           return [Case("n = 1", (rng.normal(size=(1, 4)), ...)), ...]

   ``reference`` and every mistake take the same arguments as the learner's function. When the learner's
   output is wrong, the checker runs each mistake on the same inputs and, if the learner's output matches one,
   prints that mistake's message (so name the CONCEPT in it). A :class:`Case` may carry its own ``hint``, printed
   when that case fails and no mistake matched (e.g. "fails only for n = 1: ..."). Corner cases that must run on
   every check (a row spanning 1e3, a huge key at index 0, d_v != d_k, ...) are cases built from fixed numbers
   with ``corner=True``; list them in the generator beside the random draws.
3. For functions that are driven rather than called once (a recurrent ``step``), pass ``call=``: a function
   ``call(fn, case) -> output`` used for the learner's function, the reference and the mistakes alike; and, if
   the oracle is not a function of the same signature, ``expected=lambda case: ...`` (then ``reference`` may be
   ``None``).
4. In the solution notebook, the task cell holds ``### BEGIN SOLUTION`` / ``### END SOLUTION`` and the check cell
   calls ``check("4.1", my_function)`` (see :mod:`logattn_ref.make_exercises`).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

__all__ = ["Case", "Mistake", "Task", "InputModified", "task", "get_task", "all_tasks", "task_order", "TASK_ID_PATTERN"]

#: A task id: lesson "." number, the lesson a number with an optional letter ("2.3", "4b.1": lesson 4b follows 4).
TASK_ID_PATTERN = r"\d+[a-z]?\.\d+"
_TASK_ID = re.compile(r"^(\d+[a-z]?)\.(\d+)$")


def task_order(task_id: str) -> tuple:
    """Sort key of a task id: "4.4" < "4b.1" < "5.1" < "10.1"."""
    lesson, number = task_id.split(".")
    digits = lesson.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(digits), lesson[len(digits):], int(number)


@dataclass
class Case:
    """One set of inputs for a check: ``fn(*args, **kwargs)``.

    ``name`` says what the case probes ("n = 1", "batch and head dims", "|q|, |k| ~ 800"); ``hint`` is printed
    when this case fails and no known mistake matched; ``scale`` (optional array) is the ``v`` whose largest
    magnitude the scaled error divides by. ``corner=True`` marks a named corner case: built from fixed numbers
    (never from the check's random generator), so it runs identically on every check; the checker runs corner
    cases before the random draws.
    """

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    hint: Optional[str] = None
    scale: Any = None
    corner: bool = False


class InputModified(Exception):
    """Raised (by the checker, or by a task's ``call`` driver) when the learner's function changed an input in
    place: its message names the input and says what changed."""


@dataclass
class Mistake:
    """A known-wrong implementation and the message that names the concept it gets wrong."""

    fn: Callable
    message: str


@dataclass
class Task:
    """A graded task: one function the learner writes, checked against the oracle on fresh random inputs."""

    id: str
    title: str
    points: int
    concept: str
    hints: Sequence[str]
    cases: Callable  # (np.random.Generator) -> list[Case]
    reference: Optional[Callable]  # same signature as the learner's function
    mistakes: Sequence[Mistake] = ()
    rtol: float = 1e-7
    atol: float = 1e-9
    call: Optional[Callable] = None  # (fn, case) -> output; default fn(*case.args, **case.kwargs)
    exact: bool = False  # integer/boolean outputs must be equal, not close
    expected: Optional[Callable] = None  # (case) -> output, when the oracle is not a drop-in for fn
    # (fn, rng) -> None, or a message saying which prescribed method the learner's (value-correct) fn did not use
    method: Optional[Callable] = None
    # names of the fields of a tuple output (e.g. ("y", "sum_kv", "sum_k", "key_max", "count")), used in messages
    output_names: Sequence[str] = ()

    def answer(self, case: Case):
        """The expected output for ``case``, from the oracle."""
        return self.expected(case) if self.expected is not None else self.run(self.reference, case)

    def run(self, fn: Callable, case: Case):
        if self.call is not None:
            return self.call(fn, case)
        return fn(*case.args, **case.kwargs)


_REGISTRY: dict[str, Task] = {}
_LOADED: set[str] = set()


def task(
    task_id: str,
    title: str,
    *,
    points: int,
    concept: str,
    hints: Sequence[str],
    reference: Optional[Callable],
    mistakes: Sequence[Mistake] = (),
    rtol: float = 1e-7,
    atol: float = 1e-9,
    call: Optional[Callable] = None,
    exact: bool = False,
    expected: Optional[Callable] = None,
    method: Optional[Callable] = None,
    output_names: Sequence[str] = (),
):
    """Decorator registering a task whose inputs come from the decorated case generator (see module doc).

    ``mistakes`` are tried in order, most specific first: list a mistake that is a special case of another
    before it. ``method(fn, rng)`` (optional) runs once the values are right and returns ``None`` or a message
    naming the method the task prescribes that ``fn`` did not use (e.g. it built the n x n weights).
    """
    if not _TASK_ID.match(task_id):
        raise ValueError(f"task_id must look like '2.3' or '4b.1' (lesson.number), got {task_id!r}")
    if points < 1:
        raise ValueError(f"points must be a positive integer, got {points!r}")
    if not hints:
        raise ValueError(f"task {task_id} needs at least one hint")

    def register(cases: Callable) -> Callable:
        if task_id in _REGISTRY and _REGISTRY[task_id].cases.__module__ != cases.__module__:
            raise ValueError(f"task {task_id} is registered twice ({_REGISTRY[task_id].cases.__module__})")
        _REGISTRY[task_id] = Task(
            task_id, title, points, concept, tuple(hints), cases, reference, tuple(mistakes), rtol, atol, call, exact,
            expected, method, tuple(output_names),
        )
        return cases

    return register


def _load_lesson(lesson: str) -> None:
    """Import ``lesson<N>.py`` once; a lesson that has no module yet is not an error."""
    if lesson in _LOADED:
        return
    _LOADED.add(lesson)
    try:
        importlib.import_module(f"{__package__}.lesson{lesson}")
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.lesson{lesson}":
            raise  # the module exists but imports something missing: that is a real error


def get_task(task_id: str) -> Task:
    """The task with id ``task_id`` ("2.3", "4b.1"); raises ``KeyError`` naming the known ids when there is none."""
    match = _TASK_ID.match(str(task_id))
    if not match:
        raise KeyError(f"task id must look like '2.3', got {task_id!r}")
    _load_lesson(match.group(1))
    if task_id not in _REGISTRY:
        known = ", ".join(t.id for t in all_tasks()) or "none"
        raise KeyError(f"no task {task_id!r}; known tasks: {known}")
    return _REGISTRY[task_id]


def all_tasks() -> list[Task]:
    """Every registered task of every lesson module present, in id order."""
    from . import __path__ as package_path

    for info in pkgutil.iter_modules(package_path):
        match = re.match(r"^lesson(\d+[a-z]?)$", info.name)
        if match:
            _load_lesson(match.group(1))
    return sorted(_REGISTRY.values(), key=lambda t: task_order(t.id))
