"""Grade exercise notebooks: ``python -m logattn_ref.grade PATH [PATH...]`` (notebooks or folders).

Each notebook is executed as a COPY with nbclient (the learner's file is never written). The grader points
the environment variable ``LOGATTN_GRADE_RESULTS`` at a fresh file, so every ``check(...)`` run in the kernel
appends its result there; the tasks of a notebook are the ids of its ``check("X.Y", ...)`` calls and
``task-X.Y`` cell tags, plus every task of the generated exercise of the same name (see ``_task_ids``). A cell that
raises does not stop the run (``allow_errors``); a cell that runs past ``--timeout`` is interrupted and
recorded as an error, and execution continues with the next cell, so a task whose check never ran fails
("no result") while the others are still graded; each cell's output is truncated at ``--max-output``
characters so a flood of prints cannot exhaust memory.

Prints a per-task table and the total; exit code 0 only when every task of every notebook passed.
``--json FILE`` and ``--csv FILE`` write the same rows for instructors.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import nbformat
from nbclient import NotebookClient
from tqdm.auto import tqdm

from .grading.checker import RESULTS_ENV
from .grading.registry import TASK_ID_PATTERN, get_task, task_order

__all__ = ["TaskRow", "grade_notebook", "main"]

_CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](""" + TASK_ID_PATTERN + r""")["']""")


@dataclass
class TaskRow:
    """One graded task of one notebook."""

    notebook: str
    task: str
    title: str
    points: int
    max_points: int
    status: str  # "pass", "fail", "not implemented", "no result"
    message: str
    hint: str = ""  # one line for a task that did not pass: the concept to revisit


class _BoundedClient(NotebookClient):
    """An nbclient client that keeps at most ``max_output_chars`` characters of output per cell."""

    def __init__(self, nb, max_output_chars: int, **kwargs):
        super().__init__(nb, **kwargs)
        self._max_output_chars = max_output_chars
        self._output_chars: dict[int, int] = {}

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        size = len(str(content.get("text", ""))) + len(json.dumps(content.get("data", {}), default=str))
        used = self._output_chars.get(cell_index, 0)
        self._output_chars[cell_index] = used + size
        if used + size <= self._max_output_chars:
            return super().output(outs, msg, display_id, cell_index)
        if used <= self._max_output_chars:  # first message over the limit: leave a note, then drop the rest
            outs.append(nbformat.v4.new_output("stream", name="stderr", text="[output truncated by the grader]\n"))
        return None


def _task_ids(nb: nbformat.NotebookNode, path: Path) -> list[str]:
    """The tasks a notebook is graded on: its check calls, its tagged task cells, and, for a notebook named
    like a generated exercise of this checkout, every task of that exercise (deleting a cell hides nothing)."""
    sources = [nb]
    pristine = Path(__file__).resolve().parent.parent / "exercises" / path.name
    if pristine.exists():
        sources.append(nbformat.read(pristine, as_version=4))
    found: set[str] = set()
    for notebook in sources:
        for cell in notebook.cells:
            if cell.cell_type == "code":
                found.update(_CHECK_CALL.findall(cell.source))
            found.update(t[len("task-"):] for t in cell.metadata.get("tags", []) if re.fullmatch("task-" + TASK_ID_PATTERN, t))
    return sorted(found, key=task_order)


def _title_and_points(task_id: str) -> tuple[str, int]:
    try:
        task = get_task(task_id)
    except KeyError:
        return "(unknown task)", 0
    return task.title, task.points


def grade_notebook(path: Path, timeout: int = 120, max_output_chars: int = 100_000, kernel_name: str = "python3") -> tuple[list[TaskRow], int]:
    """Execute a copy of the notebook at ``path``; return its task rows and the number of cells that errored."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    task_ids = _task_ids(nb, path)
    with tempfile.TemporaryDirectory(prefix="logattn-grade-") as scratch:
        copy_path = Path(scratch) / path.name
        nbformat.write(nb, copy_path)  # the copy that runs; the learner's file is only read
        results_path = Path(scratch) / "results.jsonl"
        results_path.touch()
        client = _BoundedClient(
            nbformat.read(copy_path, as_version=4),
            max_output_chars,
            timeout=timeout,
            kernel_name=kernel_name,
            allow_errors=True,
            interrupt_on_timeout=True,
            shutdown_kernel="immediate",  # the copy is thrown away: no need to wait for a graceful exit
            error_on_timeout={
                "ename": "CellTimeoutError",
                "evalue": f"the cell ran longer than {timeout} s and was interrupted by the grader",
                "traceback": [],
            },
            resources={"metadata": {"path": str(path.parent.resolve())}},
        )
        previous = os.environ.get(RESULTS_ENV)
        os.environ[RESULTS_ENV] = str(results_path)
        kernel_log = Path(scratch) / "kernel.log"
        try:
            # The kernel process's own stdout/stderr (not the cells' output, which comes over its channels) go to
            # a log: its start-up warnings would otherwise land in the learner's terminal and progress bar.
            with open(kernel_log, "w", encoding="utf-8") as log:
                executed = client.execute(stdout=log, stderr=log)
        except Exception:
            tail = kernel_log.read_text(encoding="utf-8", errors="replace")[-2000:] if kernel_log.exists() else ""
            if tail.strip():
                print(f"the kernel's own output, for {path}:\n{tail}", file=sys.stderr)
            raise
        finally:
            if previous is None:
                os.environ.pop(RESULTS_ENV, None)
            else:
                os.environ[RESULTS_ENV] = previous
        results: dict[str, dict] = {}
        for line in results_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a learner's print into the file is not a result
            results[str(record.get("task_id"))] = record  # the last check of a task counts
    errors = sum(
        1 for cell in executed.cells if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", []))
    )
    rows = []
    for task_id in task_ids:
        title, max_points = _title_and_points(task_id)
        record = results.get(task_id)
        if record is None:
            rows.append(TaskRow(str(path), task_id, title, 0, max_points, "no result",
                                "its check did not run (a cell raised or timed out)",
                                "a cell before its check raised or timed out: run the notebook and fix the first error"))
        else:
            passed = bool(record.get("passed"))
            rows.append(
                TaskRow(str(path), task_id, title, max_points if passed else 0, max_points, str(record.get("status")),
                        str(record.get("message", ""))[:2000], "" if passed else _one_line(record.get("hint", "")))
            )
    return rows, errors


def _one_line(text, limit: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _collect(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and ".backup-" not in p.name
            )
        elif path.suffix == ".ipynb" and path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"PATH must be a notebook (.ipynb) or a folder, got {str(path)!r}")
    return found


def _print_table(rows: list[TaskRow], errors: dict[str, int]) -> None:
    by_notebook: dict[str, list[TaskRow]] = {}
    for row in rows:
        by_notebook.setdefault(row.notebook, []).append(row)
    for notebook in errors:
        print(f"\n{notebook}" + (f"  ({errors[notebook]} cell(s) raised or timed out)" if errors[notebook] else ""))
        notebook_rows = by_notebook.get(notebook, [])
        if not notebook_rows:
            print("  no graded tasks (no check(...) calls)")
            continue
        width = max(len(r.title) for r in notebook_rows)
        print(f"  {'task':<6} {'title':<{width}} {'points':>7}  status")
        for r in notebook_rows:
            print(f"  {r.task:<6} {r.title:<{width}} {f'{r.points}/{r.max_points}':>7}  {r.status}")
            if r.status != "pass" and r.hint:
                print(f"  {'':<6} hint: {r.hint}")
    earned = sum(r.points for r in rows)
    possible = sum(r.max_points for r in rows)
    passed = sum(r.status == "pass" for r in rows)
    print(f"\nTotal: {earned}/{possible} points, {passed}/{len(rows)} tasks passed")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logattn_ref.grade", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="notebooks or folders of notebooks")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per cell before it is interrupted (default 120)")
    parser.add_argument("--max-output", type=int, default=100_000, help="characters of output kept per cell")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument("--json", type=Path, help="write the per-task rows and totals as JSON")
    parser.add_argument("--csv", type=Path, help="write the per-task rows as CSV")
    args = parser.parse_args(argv)
    if args.timeout < 1:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    try:
        notebooks = _collect(args.paths)
    except FileNotFoundError as err:
        parser.error(str(err))
    rows: list[TaskRow] = []
    errors: dict[str, int] = {}
    for path in tqdm(notebooks, desc="grading", unit="notebook"):
        notebook_rows, errors[str(path)] = grade_notebook(path, args.timeout, args.max_output, args.kernel)
        rows += notebook_rows
    _print_table(rows, errors)
    if args.json:
        summary = {
            "rows": [asdict(r) for r in rows],
            "points": sum(r.points for r in rows),
            "max_points": sum(r.max_points for r in rows),
            "cell_errors": errors,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(TaskRow.__dataclass_fields__))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
    return 0 if rows and all(r.status == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
