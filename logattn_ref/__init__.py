"""logattn_ref: the reference library of the logattn course.

Log-of-exponentials attention (Heinsen, "Softmax Attention with Constant Cost per Token", arXiv:2404.05843v1):
a float64 NumPy oracle (:mod:`logattn_ref.numpy_ref`), PyTorch implementations, grading for the course's
exercises, and the small model the course trains. Equation numbers and symbols everywhere follow
:mod:`logattn_ref.notation`.
"""

from . import numpy_ref
from .numpy_ref import (
    LogAttentionState,
    initial_state,
    log_attention,
    log_attention_logspace,
    log_attention_quadratic,
    logsumexp,
    prefill,
    scaled_error,
    softmax,
    softmax_attention,
    step,
)

__version__ = "0.1.0"

__all__ = [
    "numpy_ref",
    "LogAttentionState",
    "initial_state",
    "log_attention",
    "log_attention_logspace",
    "log_attention_quadratic",
    "logsumexp",
    "prefill",
    "scaled_error",
    "softmax",
    "softmax_attention",
    "step",
    "__version__",
]
