"""Deliberately wrong answers to the graded tasks of lesson 3, written the way a learner would write them.

Same protocol as ``wrong_answers.py`` (which adds these lists to its own): ``(task_id, wrong_function, words)``,
the check must reject the function with ``words`` in its message; every entry of ``CORRECT_ANSWERS`` must pass.
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
    "3.1": lambda x, axis=-1: np.logaddexp.accumulate(x, axis=axis),
    "3.2": _log_step_correct,
    "3.3": _signed_correct,
    "3.4": lambda state, q_t, k_t, v_t: numpy_ref.step(state, q_t, k_t, v_t),
    "3.5": lambda state, q, k, v: numpy_ref.prefill(state, q, k, v, chunk_size=2),
}
