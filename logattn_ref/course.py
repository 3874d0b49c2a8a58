"""What every notebook of the course does first: fast mode, seeds, reproducible output, honest warnings.

A lesson's setup cell runs ``from logattn_ref.course import FAST, setup; setup()``. ``FAST`` is true when the
environment variable ``CI`` is set (to anything but "", "0" or "false"): notebooks then use tiny sizes and
few steps, on the same code path as a full run, so that each one executes in seconds on a CPU.
"""

from __future__ import annotations

import os
import random
import warnings
from typing import NamedTuple

import numpy as np


def fast_mode() -> bool:
    """True when ``CI`` is set to a true-ish value (the test suite and CI set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


FAST: bool = fast_mode()


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and (if installed) PyTorch so that every run draws the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but lesson 0 checks for it
        return
    torch.manual_seed(seed)


class HarmlessWarning(NamedTuple):
    """A warning :func:`setup` silences: matched by category, message (a regex matched at the start) and the
    module it is attributed to (a regex; "" for any), with the reason it tells a learner nothing."""

    category: type
    message: str
    module: str
    why: str


#: The only warnings a lesson's setup silences. Everything else is shown, above all NumPy's RuntimeWarnings
#: ("overflow encountered in exp", "invalid value encountered in divide") raised by a lesson's own code: where a
#: lesson shows an overflow, the learner should see NumPy say so. Measured: executing every code cell of
#: notebooks 00-06 in fast mode with all warnings recorded, on this CPU machine and on an H200, the lessons'
#: own code raises no warning other than ResourceWarning (unclosed result files, hidden by Python's default
#: filters anyway); a cell that demonstrates an overflow catches or silences it with ``np.errstate`` itself.
HARMLESS_WARNINGS: tuple[HarmlessWarning, ...] = (
    HarmlessWarning(
        RuntimeWarning, "overflow encountered in exp", r"triton\.",
        "Triton's CPU interpreter (TRITON_INTERPRET=1) evaluates exp on masked-off lanes too; the kernel never "
        "uses those values (tests/test_triton_kernels.py filters the same warning)",
    ),
    HarmlessWarning(
        Warning, "IProgress not found", r"tqdm\.",
        "tqdm without ipywidgets falls back to a text progress bar; lesson 0's environment check already "
        "reports the missing ipywidgets",
    ),
)


def silence_harmless_warnings() -> None:
    """Install an ``ignore`` filter for each entry of :data:`HARMLESS_WARNINGS`, and nothing wider."""
    for entry in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=entry.message, category=entry.category, module=entry.module)


def setup(seed: int = 0) -> bool:
    """Seed everything, silence the known-harmless warnings (only those), draw plots as PNG.

    Warnings are filtered by category, message and module (:data:`HARMLESS_WARNINGS`, each with why it is
    harmless), never wholesale: NumPy's overflow and invalid-value warnings from a lesson's code still show.
    Returns ``FAST`` so a cell can write ``FAST = setup()``.
    """
    seed_everything(seed)
    silence_harmless_warnings()
    try:
        import matplotlib

        matplotlib.rcParams["figure.dpi"] = 100
        matplotlib.rcParams["figure.figsize"] = (6.4, 3.6)
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except Exception:  # outside IPython there is no inline backend to configure
        pass
    return FAST
