"""What every notebook of the course does first: fast mode, seeds, quiet and reproducible output.

A lesson's setup cell runs ``from logattn_ref.course import FAST, setup; setup()``. ``FAST`` is true when the
environment variable ``CI`` is set (to anything but "", "0" or "false"): notebooks then use tiny sizes and
few steps, on the same code path as a full run, so that each one executes in seconds on a CPU.
"""

from __future__ import annotations

import os
import random
import warnings

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


def setup(seed: int = 0) -> bool:
    """Seed everything, silence warnings that would clutter cell output, draw plots as PNG.

    Returns ``FAST`` so a cell can write ``FAST = setup()``.
    """
    seed_everything(seed)
    warnings.filterwarnings("ignore")
    try:
        import matplotlib

        matplotlib.rcParams["figure.dpi"] = 100
        matplotlib.rcParams["figure.figsize"] = (6.4, 3.6)
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except Exception:  # outside IPython there is no inline backend to configure
        pass
    return FAST
