"""Restore the generated stub of one task, or a whole exercise notebook, after backing up the learner's file.

The pristine version is the committed generated notebook ``exercises/<name>.ipynb`` of this checkout, or,
where that is missing, one generated on the spot from ``solutions/<name>.ipynb``.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path


def repo_root() -> Path:
    # Not imported from logattn_ref.notebooks: that imports nbformat, which costs a second and a half at
    # every `from logattn_ref.grading import check` in a notebook.
    return Path(__file__).resolve().parents[2]

__all__ = ["reset_task", "reset_notebook", "backup"]


def backup(path: Path) -> Path:
    """Copy ``path`` to ``<stem>.backup-<UTC timestamp>.ipynb`` beside it and return the copy's path."""
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.stem}.backup-{stamp}{path.suffix}")
    shutil.copy2(path, target)
    return target


def _pristine(path: Path):
    import nbformat

    from .assign import exercise_from_solution  # lazy, like nbformat: `check` in a notebook needs neither

    root = repo_root()
    generated = root / "exercises" / path.name
    if generated.exists() and generated.resolve() != path.resolve():
        return nbformat.read(generated, as_version=4)
    solution = root / "solutions" / path.name
    if solution.exists():
        return exercise_from_solution(nbformat.read(solution, as_version=4), where=str(solution))
    raise FileNotFoundError(
        f"no generated exercise or solution named {path.name!r} under {root} to restore {path} from"
    )


def _check_path(path) -> Path:
    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"notebook_path must be an .ipynb file, got {str(path)!r}")
    if not path.exists():
        raise FileNotFoundError(f"no notebook at {path}")
    return path


def reset_notebook(path) -> Path:
    """Overwrite the exercise notebook at ``path`` with the generated one; return the backup's path."""
    import nbformat

    path = _check_path(path)
    fresh = _pristine(path)
    saved = backup(path)
    nbformat.write(fresh, path)
    print(f"Restored {path.name} to the generated exercise; your version is saved as {saved.name}")
    return saved


def reset_task(notebook_path, task_id: str) -> Path:
    """Restore the stub cell of task ``task_id`` in the notebook at ``notebook_path``; return the backup's path.

    The cell is found by its tag ``task-<id>`` (added by :mod:`.assign`), or else by the text ``Task <id>``.
    Save the notebook in JupyterLab first: this edits the file on disk; reload it afterwards.

    Raises:
        ValueError / FileNotFoundError: a bad path; KeyError: no cell of that task in either notebook.
    """
    import nbformat

    from .assign import stub_cells, task_tag

    path = _check_path(notebook_path)
    stubs = stub_cells(_pristine(path))
    if task_id not in stubs:
        raise KeyError(f"task {task_id!r} has no stub in {path.name}; its tasks are {sorted(stubs)}")
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if task_tag(task_id) in c.metadata.get("tags", [])]
    named = [c for c in nb.cells if c.cell_type == "code" and f"Task {task_id}" in c.source]
    cells = tagged or named[:1]
    if not cells:
        raise KeyError(f"no cell of task {task_id} in {path} (neither tagged {task_tag(task_id)!r} nor naming it)")
    saved = backup(path)
    for cell in cells:
        cell.source = stubs[task_id].source
        cell.outputs = []
        cell.execution_count = None
        tags = [t for t in cell.metadata.get("tags", []) if t != task_tag(task_id)]
        cell.metadata["tags"] = tags + [task_tag(task_id)]
    nbformat.write(nb, path)
    print(f"Restored the stub of task {task_id} in {path.name}; your version is saved as {saved.name}")
    return saved
