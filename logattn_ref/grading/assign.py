"""Solution notebook -> exercise notebook: the ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers.

In a task cell of ``solutions/NN_<name>.ipynb``, the code between the lines ``### BEGIN SOLUTION`` and
``### END SOLUTION`` is the answer; the cell names its task with ``Task X.Y`` somewhere in its source (usually the
docstring). The exercise version keeps everything else (signature, docstring, check cells) and replaces the marked
region, markers included, by

    raise NotImplementedError("Task X.Y: <title>")

at the indentation of the BEGIN marker, and tags the cell ``task-X.Y`` so that a reset finds it even after the
learner edits it. Both the generator (:mod:`logattn_ref.make_exercises`) and the resets (:mod:`.reset`) take the
stripping from here, so that they cannot disagree on what an exercise looks like.
"""

from __future__ import annotations

import copy
import re

import nbformat

from ..notebooks import clean
from .registry import TASK_ID_PATTERN, get_task

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
_TASK_REF = re.compile(r"\bTask (" + TASK_ID_PATTERN + r")\b")

__all__ = ["BEGIN", "END", "MarkerError", "exercise_from_solution", "stub_cells", "task_tag"]


class MarkerError(ValueError):
    """A solution cell whose markers are unbalanced or that names no task."""


def task_tag(task_id: str) -> str:
    """The cell tag of a task cell in an exercise notebook."""
    return f"task-{task_id}"


def _strip_solution(source: str, where: str) -> tuple[str, str]:
    """Return ``(stub_source, task_id)`` for a cell source holding marked regions."""
    match = _TASK_REF.search(source)
    if not match:
        raise MarkerError(f"{where}: a cell with {BEGIN!r} must name its task ('Task 2.3') in its source")
    task_id = match.group(1)
    try:
        title = get_task(task_id).title
    except KeyError as err:
        raise MarkerError(f"{where}: {err.args[0]}") from None
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise MarkerError(f"{where}: {BEGIN!r} twice without {END!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("Task {task_id}: {title}")')
        elif stripped.startswith(END):
            if not inside:
                raise MarkerError(f"{where}: {END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: {BEGIN!r} without {END!r}")
    return "\n".join(out), task_id


def exercise_from_solution(nb: nbformat.NotebookNode, where: str = "notebook") -> nbformat.NotebookNode:
    """The exercise version of a solution notebook (a new object; ``nb`` is not modified), stored clean.

    Raises:
        MarkerError: unbalanced markers, or a marked cell that names no task or an unknown one.
    """
    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or BEGIN not in cell.source:
            if cell.cell_type == "code" and END in cell.source:
                raise MarkerError(f"{where}, cell {index}: {END!r} without {BEGIN!r}")
            continue
        cell.source, task_id = _strip_solution(cell.source, f"{where}, cell {index}")
        tags = [t for t in cell.metadata.get("tags", []) if not t.startswith("task-")]
        cell.metadata["tags"] = tags + [task_tag(task_id)]
    return clean(nb)


def stub_cells(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    """Task id -> its stub cell, for a generated exercise notebook."""
    found = {}
    for cell in nb.cells:
        for tag in cell.metadata.get("tags", []):
            if tag.startswith("task-"):
                found[tag[len("task-"):]] = cell
    return found
