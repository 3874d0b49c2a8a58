"""The notebook policy of the repository, in one place, and a command that checks or applies it.

Committed notebooks (``notebooks/``, ``solutions/``, ``exercises/``) are stored *clean*:

- no outputs and no execution counts (nbval then compares nothing it could not reproduce, and diffs stay
  readable; correctness lives in ``assert`` statements inside the cells);
- notebook metadata holds only the ``python3`` kernelspec, the language info, and the keys the course
  itself sets (``colab`` for GPU lessons);
- cell metadata holds only the tags and nbval markers the course uses.

``python -m logattn_ref.notebooks --check`` lists the notebooks that break the policy (exit code 1), and
``--fix`` rewrites them in place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOK_DIRS = ("notebooks", "solutions", "exercises")
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
ALLOWED_NOTEBOOK_METADATA = {"kernelspec", "language_info", "colab", "accelerator", "logattn"}
ALLOWED_CELL_METADATA = {"tags", "nbval-ignore-output", "nbval-skip", "id"}


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def notebook_paths(root: Path | None = None) -> list[Path]:
    root = root or repo_root()
    return sorted(p for d in NOTEBOOK_DIRS for p in (root / d).glob("*.ipynb"))


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return ``nb`` cleaned to the policy (modifies and returns the same object)."""
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in ALLOWED_NOTEBOOK_METADATA}
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in ALLOWED_CELL_METADATA}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.pop("attachments", None) if cell.cell_type != "markdown" else None
    return nb


def problems(path: Path) -> list[str]:
    """What in the notebook at ``path`` breaks the policy (an empty list when it is clean)."""
    nb = nbformat.read(path, as_version=4)
    found = []
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as err:
        found.append(f"invalid notebook: {err.message}")
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        found.append(f"kernelspec is {nb.metadata.get('kernelspec')!r}, not python3")
    extra = set(nb.metadata) - ALLOWED_NOTEBOOK_METADATA
    if extra:
        found.append(f"notebook metadata has keys outside the policy: {sorted(extra)}")
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            found.append(f"cell {index} has stored outputs or an execution count")
        extra = set(cell.metadata) - ALLOWED_CELL_METADATA
        if extra:
            found.append(f"cell {index} metadata has keys outside the policy: {sorted(extra)}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logattn_ref.notebooks", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="list notebooks that break the policy")
    mode.add_argument("--fix", action="store_true", help="clean notebooks in place")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every course notebook)")
    args = parser.parse_args(argv)
    paths = args.paths or notebook_paths()
    bad = 0
    for path in paths:
        if args.fix:
            nb = nbformat.read(path, as_version=4)
            nbformat.write(clean(nb), path)
        else:
            for problem in problems(path):
                print(f"{path}: {problem}")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
