"""course.setup(): seeds, and silences only the listed harmless warnings, never a lesson's own overflow."""

import warnings

import numpy as np

from logattn_ref import course


def test_setup_lets_numpy_overflow_warnings_through_and_silences_only_the_listed_ones():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        course.setup()
        np.exp(np.array([1000.0]))  # a lesson that shows overflow: the learner must see NumPy say so
        warnings.warn_explicit("IProgress not found. Please update jupyter and ipywidgets.", Warning,
                               "tqdm/notebook.py", 1, module="tqdm.notebook")
        warnings.warn_explicit("overflow encountered in exp", RuntimeWarning, "interpreter.py", 1,
                               module="triton.runtime.interpreter")
    messages = [str(w.message) for w in caught]
    assert any("overflow encountered in exp" in m for m in messages) and len(messages) == 1
    for entry in course.HARMLESS_WARNINGS:
        assert entry.why and entry.module  # each silenced warning says why, and where it comes from


def test_setup_seeds_numpy_and_torch():
    import torch

    course.setup(seed=3)
    a, ta = np.random.rand(3), torch.rand(3)
    course.setup(seed=3)
    assert np.array_equal(a, np.random.rand(3)) and torch.equal(ta, torch.rand(3))
