"""Generate the exercise notebooks from the solution notebooks: one source, no drift.

``solutions/NN_<name>.ipynb`` are complete notebooks. In a task cell, the code between the lines
``### BEGIN SOLUTION`` and ``### END SOLUTION`` is the answer; the cell names its task with ``Task X.Y``
somewhere in its source (usually the docstring). The generated ``exercises/NN_<name>.ipynb`` keeps everything
else (signature, docstring, check cells) and replaces the marked region, markers included, by

    raise NotImplementedError("Task X.Y: <title>")

at the indentation of the BEGIN marker, tags the cell ``task-X.Y`` (so that :func:`logattn_ref.grading.reset_task`
finds it even after the learner edits it), and stores the notebook clean (:mod:`logattn_ref.notebooks`).

    python -m logattn_ref.make_exercises            # (re)write exercises/
    python -m logattn_ref.make_exercises --check    # exit 1 and list files when exercises/ is out of date
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

from . import colab
from .notebooks import clean, repo_root

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
_TASK_REF = re.compile(r"\bTask (\d+\.\d+)\b")

__all__ = ["BEGIN", "END", "exercise_from_solution", "expected_exercises", "main", "task_tag", "stub_cells"]


class MarkerError(ValueError):
    """A solution cell whose markers are unbalanced or that names no task."""


def task_tag(task_id: str) -> str:
    """The cell tag of a task cell in an exercise notebook."""
    return f"task-{task_id}"


def _strip_solution(source: str, where: str) -> tuple[str, str]:
    """Return ``(stub_source, task_id)`` for a cell source holding marked regions."""
    from .grading.registry import get_task  # lazy: the grading package imports this module for resets

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
    """The exercise version of a solution notebook (a new object; ``nb`` is not modified)."""
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


def expected_exercises(root: Path) -> dict[Path, str]:
    """Exercise path -> the text it must have, for every notebook in ``root/solutions``."""
    out = {}
    # A folder outside a checkout (no pyproject.toml) has no repository setting: no badge, like an empty one.
    repository = colab.read_repository(root) if (root / "pyproject.toml").exists() else ""
    for solution in sorted((root / "solutions").glob("*.ipynb")):
        nb = nbformat.read(solution, as_version=4)
        exercise = exercise_from_solution(nb, where=str(solution.relative_to(root)))
        # The exercise gets the badge and setup cell of its own path (a solution's would open the solution).
        exercise = colab.stamp(exercise, f"exercises/{solution.name}", repository)
        text = nbformat.writes(exercise)
        out[root / "exercises" / solution.name] = text if text.endswith("\n") else text + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logattn_ref.make_exercises", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 and list files when exercises/ is out of date")
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    root = (args.root or repo_root()).resolve()
    try:
        expected = expected_exercises(root)
    except MarkerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stale = sorted(set((root / "exercises").glob("*.ipynb")) - set(expected))
    if args.check:
        bad = [p for p, text in expected.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for path in bad:
            print(f"out of date: {path.relative_to(root)} (run python -m logattn_ref.make_exercises)")
        for path in stale:
            print(f"no solution for: {path.relative_to(root)}")
        return 1 if bad or stale else 0
    (root / "exercises").mkdir(exist_ok=True)
    for path, text in expected.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(root)}")
    for path in stale:
        print(f"warning: {path.relative_to(root)} has no solution notebook", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
