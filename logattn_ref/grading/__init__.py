"""Grading for the course's exercises: ``from logattn_ref.grading import check, hint``.

- :func:`check` ``(task_id, fn)`` runs your function on fresh random inputs and compares it with the float64
  oracle (:mod:`logattn_ref.numpy_ref`), printing PASS/FAIL and a hint that names the concept.
- :func:`hint` ``(task_id)`` prints the next hint of a task (one more each call).
- :func:`reset_task` ``(notebook_path, task_id)`` / :func:`reset_notebook` ``(path)`` restore the generated stub
  of one task / the whole exercise notebook, after writing a timestamped backup of your file.
- ``python -m logattn_ref.grade PATH`` grades notebooks (instructors); ``python -m logattn_ref.make_exercises``
  generates ``exercises/`` from ``solutions/``.

Tasks of lesson N live in ``logattn_ref/grading/lessonN.py``; how to add one is in :mod:`.registry`.
"""

from .checker import RESULTS_ENV, CheckResult, check, hint
from .registry import Case, Mistake, Task, all_tasks, get_task, task
from .reset import reset_notebook, reset_task

__all__ = [
    "check",
    "hint",
    "reset_task",
    "reset_notebook",
    "CheckResult",
    "RESULTS_ENV",
    "Case",
    "Mistake",
    "Task",
    "task",
    "get_task",
    "all_tasks",
]
