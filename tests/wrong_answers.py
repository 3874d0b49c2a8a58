"""Deliberately wrong answers to the graded tasks of lessons 1-3, written the way a learner would write them.

Each entry is ``(task_id, wrong_function, words)``: the check for ``task_id`` must reject the function and its
message must contain ``words``, the concept the mistake misses (tests/test_grading.py asserts both). They are
written independently of the known-mistake variants inside ``logattn_ref/grading/lesson*.py``, so a test
passes only when the diagnosis recognises the mistake itself, not a copy of its own code.
"""

from __future__ import annotations

import numpy as np

from logattn_ref import numpy_ref
from logattn_ref.numpy_ref import LogAttentionState

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


# ---------------------------------------------------------------------------------------------- lesson 3


@wrong("3.1", "logaddexp")
def lcse_naive(x, axis=-1):
    return np.log(np.cumsum(np.exp(x), axis=axis))


@wrong("3.1", "axis")
def lcse_ignores_axis(x, axis=-1):
    return np.logaddexp.accumulate(x)


def _log_step(state, q_t, k_t, log_v_t, *, empty, read_first):
    if state is None:
        state = (np.full(q_t.shape + log_v_t.shape[-1:], empty), np.full(q_t.shape, empty))
    log_s, log_z = state

    def read(log_s, log_z):
        with np.errstate(invalid="ignore"):
            num = numpy_ref.logsumexp(q_t[..., :, None] + log_s, axis=-2)
            return num - numpy_ref.logsumexp(q_t + log_z, axis=-1)[..., None]

    y = read(log_s, log_z) if read_first else None
    log_s = np.logaddexp(log_s, k_t[..., :, None] + log_v_t[..., None, :])
    log_z = np.logaddexp(log_z, k_t)
    return (y if read_first else read(log_s, log_z)), (log_s, log_z)


@wrong("3.2", "must be -inf")
def log_step_zero_init(state, q_t, k_t, log_v_t):
    return _log_step(state, q_t, k_t, log_v_t, empty=0.0, read_first=False)


@wrong("3.2", "BEFORE reading")
def log_step_reads_old_state(state, q_t, k_t, log_v_t):
    return _log_step(state, q_t, k_t, log_v_t, empty=-np.inf, read_first=True)


@wrong("3.3", "sign is lost")
def signed_abs(q, k, v):
    return np.exp(numpy_ref.log_attention_logspace(q, k, np.log(np.abs(v) + 1e-300)))


@wrong("3.4", "rescale the old sums")
def stable_step_no_decay(state, q_t, k_t, v_t):
    new_max = np.maximum(state.key_max, k_t)
    w = np.exp(k_t - new_max)
    sum_kv = state.sum_kv + w[..., :, None] * v_t[..., None, :]
    sum_k = state.sum_k + w
    a = np.exp(q_t + new_max - np.max(q_t + new_max, -1, keepdims=True))
    y = np.einsum("...f,...fd->...d", a, sum_kv) / np.einsum("...f,...f->...", a, sum_k)[..., None]
    return y, (sum_kv, sum_k, new_max)


@wrong("3.4", "normaliser Z")
def stable_step_without_z(state, q_t, k_t, v_t):
    _, new_state = numpy_ref.step(state, q_t, k_t, v_t)
    a = np.exp(q_t + new_state.key_max - np.max(q_t + new_state.key_max, -1, keepdims=True))
    return np.einsum("...f,...fd->...d", a, new_state.sum_kv), new_state


@wrong("3.5", "earlier chunks")
def prefill_forgets_the_past(state, q, k, v):
    _, new_state = numpy_ref.prefill(state, q, k, v)
    fresh = numpy_ref.initial_state(state.batch_shape, state.d_k, state.d_v)
    y, _ = numpy_ref.prefill(fresh, q, k, v)  # attends within the chunk only
    return y, new_state


@wrong("3.5", "token i must see itself")
def prefill_mask_off_by_one(state, q, k, v):
    _, new_state = numpy_ref.prefill(state, q, k, v)
    c = q.shape[-2]
    past = q + state.key_max[..., None, :]
    s = numpy_ref.logsumexp(q[..., :, None, :] + k[..., None, :, :], axis=-1)
    s = np.where(np.tril(np.ones((c, c), dtype=bool), -1), s, -np.inf)
    top = np.maximum(np.max(past, -1), np.max(s, -1))
    top = np.where(np.isfinite(top), top, 0.0)
    pw, sw = np.exp(past - top[..., None]), np.exp(s - top[..., None])
    with np.errstate(invalid="ignore", divide="ignore"):
        y = (pw @ state.sum_kv + sw @ v) / (pw @ state.sum_k[..., :, None] + sw.sum(-1, keepdims=True))
    return y, new_state


# ------------------------------------------------------------------------------------ correct answers


def _log_step_correct(state, q_t, k_t, log_v_t):
    return _log_step(state, q_t, k_t, log_v_t, empty=-np.inf, read_first=False)


def _signed_correct(q, k, v):
    with np.errstate(divide="ignore"):
        pos = np.exp(numpy_ref.log_attention_logspace(q, k, np.log(np.maximum(v, 0))))
        neg = np.exp(numpy_ref.log_attention_logspace(q, k, np.log(np.maximum(-v, 0))))
    return pos - neg


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
    "3.1": lambda x, axis=-1: np.logaddexp.accumulate(x, axis=axis),
    "3.2": _log_step_correct,
    "3.3": _signed_correct,
    "3.4": lambda state, q_t, k_t, v_t: numpy_ref.step(state, q_t, k_t, v_t),
    "3.5": lambda state, q, k, v: numpy_ref.prefill(state, q, k, v, chunk_size=2),
}


def _weights_correct(q, k, causal):
    # The weights of eq. 1 are what log-attention applies to V; with V = identity, the output IS the weights.
    n_k = k.shape[-2]
    eye = np.broadcast_to(np.eye(n_k), k.shape[:-2] + (n_k, n_k))
    return numpy_ref.log_attention_quadratic(q, k, eye, causal=causal)
