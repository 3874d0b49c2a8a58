"""Deliberately wrong answers to the graded tasks of lessons 1-3, written the way a learner would write them.

Lessons 1 and 2 live here; lesson 3's are in ``wrong_answers_lesson3.py`` and are added to the lists at the end.

Each entry is ``(task_id, wrong_function, words)``: the check for ``task_id`` must reject the function and its
message must contain ``words``, the concept the mistake misses (tests/test_grading.py asserts both). They are
written independently of the known-mistake variants inside ``logattn_ref/grading/lesson*.py``, so a test
passes only when the diagnosis recognises the mistake itself, not a copy of its own code.
"""

from __future__ import annotations

import numpy as np

from logattn_ref import numpy_ref

WRONG_ANSWERS: list[tuple[str, object, str]] = []


def wrong(task_id: str, words: str):
    def register(fn):
        WRONG_ANSWERS.append((task_id, fn, words))
        return fn

    return register


# ---------------------------------------------------------------------------------------------- lesson 1


@wrong("1.1", "subtract the row max")
def softmax_without_max_shift(x):
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


@wrong("1.1", "ROW's max")
def softmax_global_max(x):
    e = np.exp(x - x.max())
    return e / e.sum(-1, keepdims=True)


@wrong("1.1", "wrong axis")
def softmax_wrong_axis(x):
    shifted = np.exp(x - np.max(x, axis=0))
    return shifted / np.sum(shifted, axis=0)


@wrong("1.2", "all -inf")
def logsumexp_nan_on_masked_rows(x):
    m = np.max(x, axis=-1)
    return m + np.log(np.sum(np.exp(x - m[..., None]), axis=-1))


@wrong("1.2", "subtract the max")
def logsumexp_naive(x):
    return np.log(np.sum(np.exp(x), axis=-1))


@wrong("1.3", "token i must see itself")
def mask_strict(n):
    i, j = np.indices((n, n))
    return j < i


@wrong("1.3", "transposed")
def mask_upper(n):
    i, j = np.indices((n, n))
    return j >= i


@wrong("1.3", "shape")
def mask_hard_coded_shape(n):
    return np.tril(np.ones((8, 8), dtype=bool))


@wrong("1.4", "1/sqrt(d_k)")
def attention_unscaled(q, k, v, causal=True):
    s = q @ np.swapaxes(k, -1, -2)
    if causal:
        s = s + np.triu(np.full(s.shape[-2:], -np.inf), 1)
    return numpy_ref.softmax(s) @ v


@wrong("1.4", "transpose only the last two axes")
def attention_ignores_batch_dims(q, k, v, causal=True):
    s = q @ k.T / np.sqrt(q.shape[-1])  # k.T reverses the batch dims too
    if causal:
        s = s + np.triu(np.full(s.shape[-2:], -np.inf), 1)
    return numpy_ref.softmax(s) @ v


@wrong("1.4", "token i must see itself")
def attention_mask_off_by_one(q, k, v, causal=True):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = s + np.triu(np.full(s.shape[-2:], -1e30), 0)  # masks the diagonal too
    return numpy_ref.softmax(s) @ v


@wrong("1.4", "-inf")
def attention_mask_with_zero(q, k, v, causal=True):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = s * np.tril(np.ones(s.shape[-2:]))
    return numpy_ref.softmax(s) @ v


@wrong("1.4", "apply softmax")
def attention_without_softmax(q, k, v, causal=True):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    return (np.tril(s) if causal else s) @ v


# ---------------------------------------------------------------------------------------------- lesson 2


@wrong("2.1", "dot product")
def similarity_dot(q, k):
    return np.einsum("...if,...jf->...ij", q, k)


@wrong("2.1", "overflows")
def similarity_naive(q, k):
    return np.log(np.einsum("...if,...jf->...ij", np.exp(q), np.exp(k)))


@wrong("2.2", "normaliser Z")
def weights_unnormalised(q, k, causal=True):
    w = np.einsum("...if,...jf->...ij", np.exp(q), np.exp(k))
    return np.tril(w) if causal else w


@wrong("2.2", "BEFORE normalising")
def weights_mask_after(q, k, causal=True):
    w = np.einsum("...if,...jf->...ij", np.exp(q), np.exp(k))
    w = w / w.sum(-1, keepdims=True)
    return np.tril(w) if causal else w


@wrong("2.3", "normaliser Z")
def state_without_z(q, k, v):
    s_state = np.einsum("...jf,...jd->...fd", np.exp(k), v)
    return np.exp(q) @ s_state


@wrong("2.4", "cumulative")
def logspace_not_causal(q, k, log_v):
    return numpy_ref.log_attention_logspace(q, k, log_v, causal=False)


@wrong("2.4", "stay in log space")
def logspace_through_linear(q, k, log_v):
    s_state = np.cumsum(np.exp(k)[..., :, :, None] * np.exp(log_v)[..., :, None, :], axis=-3)
    z_state = np.cumsum(np.exp(k), axis=-2)
    num = np.einsum("...if,...ifd->...id", np.exp(q), s_state)
    den = np.einsum("...if,...if->...i", np.exp(q), z_state)
    return np.log(num / den[..., None])


@wrong("2.4", "off by one")
def logspace_exclusive(q, k, log_v):
    out = numpy_ref.log_attention_logspace(q, k, log_v, causal=True)
    shifted = np.roll(out, 1, axis=-2)  # row i gets row i-1: keys j < i only
    shifted[..., 0, :] = np.nan
    return shifted


# ------------------------------------------------------------------------------------ correct answers


#: Oracle-based correct answers: every one must pass its check.
CORRECT_ANSWERS: dict[str, object] = {
    "1.1": lambda x: numpy_ref.softmax(x, axis=-1),
    "1.2": lambda x: numpy_ref.logsumexp(x, axis=-1),
    "1.3": lambda n: np.tril(np.ones((n, n), dtype=bool)),
    "1.4": lambda q, k, v, causal=True: numpy_ref.softmax_attention(q, k, v, causal=causal),
    "2.1": lambda q, k: numpy_ref.logsumexp(q[..., :, None, :] + k[..., None, :, :], axis=-1),
    "2.2": lambda q, k, causal=True: _weights_correct(q, k, causal),
    "2.3": lambda q, k, v: numpy_ref.log_attention_quadratic(q, k, v, causal=False),
    "2.4": lambda q, k, log_v: numpy_ref.log_attention_logspace(q, k, log_v, causal=True),
}


def _weights_correct(q, k, causal):
    # The weights of eq. 1 are what log-attention applies to V; with V = identity, the output IS the weights.
    n_k = k.shape[-2]
    eye = np.broadcast_to(np.eye(n_k), k.shape[:-2] + (n_k, n_k))
    return numpy_ref.log_attention_quadratic(q, k, eye, causal=causal)


from wrong_answers_lesson3 import CORRECT_ANSWERS as _CORRECT_3  # noqa: E402
from wrong_answers_lesson3 import WRONG_ANSWERS as _WRONG_3  # noqa: E402

WRONG_ANSWERS += _WRONG_3
CORRECT_ANSWERS.update(_CORRECT_3)
