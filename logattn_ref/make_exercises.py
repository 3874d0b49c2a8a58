"""Generate the exercise notebooks from the solution notebooks: one source, no drift.

For every ``solutions/NN_<name>.ipynb`` this writes ``exercises/NN_<name>.ipynb``: the answers between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` replaced by a ``raise NotImplementedError("Task X.Y: <title>")``
stub and the cell tagged ``task-X.Y`` (the stripping lives in :mod:`logattn_ref.grading.assign`, which the resets
of :func:`logattn_ref.grading.reset_task` use too), the exercise's own Colab badge and setup cell, stored clean
(:mod:`logattn_ref.notebooks`).

    python -m logattn_ref.make_exercises            # (re)write exercises/
    python -m logattn_ref.make_exercises --check    # exit 1 and list files when exercises/ is out of date
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import nbformat

from . import colab
from .grading import assign
from .notebooks import repo_root

__all__ = ["expected_exercises", "main"]

# Names that moved to grading.assign (the stripping is shared with the resets); kept here for one release.
_MOVED = ("BEGIN", "END", "MarkerError", "exercise_from_solution", "stub_cells", "task_tag")


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(
            f"logattn_ref.make_exercises.{name} moved to logattn_ref.grading.assign.{name}; "
            "the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(assign, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def expected_exercises(root: Path) -> dict[Path, str]:
    """Exercise path -> the text it must have, for every notebook in ``root/solutions``."""
    out = {}
    # A folder outside a checkout (no pyproject.toml) has no repository setting: no badge, like an empty one.
    repository = colab.read_repository(root) if (root / "pyproject.toml").exists() else ""
    for solution in sorted((root / "solutions").glob("*.ipynb")):
        nb = nbformat.read(solution, as_version=4)
        exercise = assign.exercise_from_solution(nb, where=str(solution.relative_to(root)))
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
    except assign.MarkerError as err:
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
