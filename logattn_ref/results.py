"""Find the committed measurements (``benchmarks/results/*.json``) that the lessons read their numbers from.

A notebook may run from ``notebooks/``, ``exercises/``, ``solutions/`` or the repository root, so the file is looked
for in ``benchmarks/results/`` of the working directory and of each folder above it. This module imports nothing
from the package: any lesson or module may use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["RESULTS_DIR", "find_results"]

RESULTS_DIR = Path("benchmarks") / "results"


def find_results(name: str, start: Optional[Path] = None) -> Optional[Path]:
    """The path of ``benchmarks/results/<name>`` in ``start`` (default: the working directory) or the nearest
    folder above it that has one; ``None`` when there is none (a lesson then skips its recorded section)."""
    start = Path.cwd() if start is None else Path(start)
    for base in (start, *start.parents):
        path = base / RESULTS_DIR / name
        if path.exists():
            return path
    return None
