"""Deliberately wrong answers to the graded tasks of lesson 3, written the way a learner would write them.

Same protocol as ``wrong_answers.py`` (which adds these lists to its own): ``(task_id, wrong_function, words)``,
the check must reject the function with ``words`` in its message; every entry of ``CORRECT_ANSWERS`` must pass.
"""

from __future__ import annotations

import numpy as np

from logattn_ref import numpy_ref
from logattn_ref.numpy_ref import LogAttentionState

from answer_lists import registers  # noqa: E402

WRONG_ANSWERS, wrong, CORRECT_REWRITES, right = registers()


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
    return y, LogAttentionState(sum_kv, sum_k, new_max, state.count + 1)


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



# ------------------------------------------------- issue 13: the edge kinds the random draws used to miss
# Each of these is wrong only at an edge (a span of ~1e3, maxima hundreds apart, +-400, an all -inf prefix, a
# state field, an in-place edit): the fixed corner cases must catch it on every seed, with the concept named.


@wrong("3.1", "mean")
def lcse_mean_shift(x, axis=-1):
    centre = x.mean(axis=axis, keepdims=True)  # a shift, but not by the max
    return centre + np.log(np.cumsum(np.exp(x - centre), axis=axis))


@wrong("3.1", "empty prefix")
def lcse_loop_without_guard(x, axis=-1):
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    out = x.copy()
    for i in range(1, x.shape[-1]):
        a, b = out[..., i - 1], x[..., i]
        big = np.maximum(a, b)
        out[..., i] = big + np.log1p(np.exp(-np.abs(a - b)))  # NaN when a = b = -inf
    return np.moveaxis(out, -1, axis)


@wrong("3.1", "whole array")
def lcse_one_max_for_everything(x, axis=-1):
    top = x[np.isfinite(x)].max()
    return np.log(np.cumsum(np.exp(x - top), axis=axis)) + top


@wrong("3.1", "first entry")
def lcse_shift_by_first(x, axis=-1):
    first = np.take(x, [0], axis=axis)
    return first + np.log(np.cumsum(np.exp(x - first), axis=axis))


@wrong("3.1", "row's max")
def lcse_shift_by_row_max(x, axis=-1):
    top = x.max(axis=axis, keepdims=True)
    return top + np.log(np.cumsum(np.exp(x - top), axis=axis))


@wrong("3.1", "in place")
def lcse_in_place(x, axis=-1):
    np.logaddexp.accumulate(x, axis=axis, out=x)  # right values, but the caller's x is gone
    return x


@wrong("3.1", "off by one")
def lcse_exclusive_loop(x, axis=-1):
    x = np.moveaxis(x, axis, -1)
    out = np.full_like(x, -np.inf)
    for i in range(1, x.shape[-1]):
        out[..., i] = np.logaddexp(out[..., i - 1], x[..., i - 1])
    return np.moveaxis(out, -1, axis)


def _empty(q_t, log_v_t):
    return np.full(q_t.shape + log_v_t.shape[-1:], -np.inf), np.full(q_t.shape, -np.inf)


@wrong("3.2", "subtract its max")
def log_step_exp_then_log(state, q_t, k_t, log_v_t):
    h_s, h_z = _empty(q_t, log_v_t) if state is None else state
    h_s = np.logaddexp(h_s, k_t[..., :, None] + log_v_t[..., None, :])
    h_z = np.logaddexp(h_z, k_t)
    log_s = np.log(np.exp(q_t[..., :, None] + h_s).sum(-2))
    log_z = np.log(np.exp(q_t + h_z).sum(-1))
    return log_s - log_z[..., None], (h_s, h_z)


def _my_lse(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


@wrong("3.2", "guard the max")
def log_step_lse_without_guard(state, q_t, k_t, log_v_t):
    h_s, h_z = _empty(q_t, log_v_t) if state is None else state
    h_s = np.logaddexp(h_s, k_t[..., :, None] + log_v_t[..., None, :])
    h_z = np.logaddexp(h_z, k_t)
    return _my_lse(q_t[..., :, None] + h_s, -2) - _my_lse(q_t + h_z, -1)[..., None], (h_s, h_z)


@wrong("3.2", "whole batch")
def log_step_one_max_for_the_batch(state, q_t, k_t, log_v_t):
    h_s, h_z = _empty(q_t, log_v_t) if state is None else state
    h_s = np.logaddexp(h_s, k_t[..., :, None] + log_v_t[..., None, :])
    h_z = np.logaddexp(h_z, k_t)
    a, b = q_t[..., :, None] + h_s, q_t + h_z
    m = np.max(b)  # the largest logit anywhere in the batch
    return np.log(np.exp(a - m).sum(-2)) - np.log(np.exp(b - m).sum(-1))[..., None], (h_s, h_z)


@wrong("3.2", "np.logaddexp")
def log_step_update_in_linear_space(state, q_t, k_t, log_v_t):
    h_s, h_z = _empty(q_t, log_v_t) if state is None else state
    h_s = np.log(np.exp(h_s) + np.exp(k_t)[..., :, None] * np.exp(log_v_t)[..., None, :])
    h_z = np.log(np.exp(h_z) + np.exp(k_t))
    log_s = numpy_ref.logsumexp(q_t[..., :, None] + h_s, axis=-2)
    return log_s - numpy_ref.logsumexp(q_t + h_z, axis=-1)[..., None], (h_s, h_z)


@wrong("3.2", "in place")
def log_step_updates_state_in_place(state, q_t, k_t, log_v_t):
    h_s, h_z = _empty(q_t, log_v_t) if state is None else state
    np.logaddexp(h_s, k_t[..., :, None] + log_v_t[..., None, :], out=h_s)
    np.logaddexp(h_z, k_t, out=h_z)
    log_s = numpy_ref.logsumexp(q_t[..., :, None] + h_s, axis=-2)
    return log_s - numpy_ref.logsumexp(q_t + h_z, axis=-1)[..., None], (h_s, h_z)


@wrong("3.2", "normaliser")
def log_step_numerator_only(state, q_t, k_t, log_v_t):
    h_s, h_z = _empty(q_t, log_v_t) if state is None else state
    h_s = np.logaddexp(h_s, k_t[..., :, None] + log_v_t[..., None, :])
    h_z = np.logaddexp(h_z, k_t)
    return numpy_ref.logsumexp(q_t[..., :, None] + h_s, axis=-2), (h_s, h_z)


def _causal_log(q, k, log_v):
    with np.errstate(divide="ignore", invalid="ignore"):
        return numpy_ref.log_attention_logspace(q, k, log_v)


@wrong("3.3", "magnitude of the negative")
def signed_negative_part_kept_negative(q, k, v):
    with np.errstate(divide="ignore", invalid="ignore"):
        plus = np.exp(_causal_log(q, k, np.log(np.where(v > 0, v, 0.0))))
        minus = np.exp(_logspace_any(q, k, np.log(np.where(v < 0, v, 0.0))))
    return plus - minus


def _logspace_any(q, k, log_v):  # the log-space form written out, so NaN in log_v flows through
    kv = np.logaddexp.accumulate(k[..., :, :, None] + log_v[..., :, None, :], axis=-3)
    z = np.logaddexp.accumulate(k, axis=-2)
    return np.logaddexp.reduce(q[..., :, :, None] + kv, axis=-2) - np.logaddexp.reduce(q + z, axis=-1)[..., None]


@wrong("3.3", "stay in log space")
def signed_in_linear_space(q, k, v):
    n = q.shape[-2]
    scores = np.einsum("...if,...jf->...ij", np.exp(q), np.exp(k)) * np.tri(n)
    return scores @ v / scores.sum(-1, keepdims=True)


@wrong("3.3", "causal")
def signed_not_causal(q, k, v):
    with np.errstate(divide="ignore"):
        pos = numpy_ref.log_attention_logspace(q, k, np.log(np.clip(v, 0, None)), causal=False)
        neg = numpy_ref.log_attention_logspace(q, k, np.log(np.clip(-v, 0, None)), causal=False)
    return np.exp(pos) - np.exp(neg)


@wrong("3.3", "a difference")
def signed_ratio(q, k, v):
    with np.errstate(divide="ignore"):
        return np.exp(_causal_log(q, k, np.log(np.clip(v, 0, None))) - _causal_log(q, k, np.log(np.clip(-v, 0, None))))


@wrong("3.3", "add the shift back")
def signed_shift_to_positive(q, k, v):
    return np.exp(_causal_log(q, k, np.log(v + abs(v.min()))))  # the smallest entry becomes 0


@wrong("3.3", "dropped V-")
def signed_positive_part_only(q, k, v):
    with np.errstate(divide="ignore"):
        return np.exp(_causal_log(q, k, np.log(np.clip(v, 0, None))))


@wrong("3.3", "in place")
def signed_clips_v_in_place(q, k, v):
    negative = np.clip(-v, 0, None)
    np.clip(v, 0, None, out=v)  # v now holds V+, but it was the caller's array
    with np.errstate(divide="ignore"):
        return np.exp(_causal_log(q, k, np.log(v))) - np.exp(_causal_log(q, k, np.log(negative)))


def _step_sums(state, k_t, v_t):
    m = np.maximum(state.key_max, k_t)
    r = np.exp(state.key_max - m)
    w = np.exp(k_t - m)
    return r[..., None] * state.sum_kv + w[..., :, None] * v_t[..., None, :], r * state.sum_k + w, m


def _read(weights, sum_kv, sum_k):
    return (weights[..., None] * sum_kv).sum(-2) / (weights * sum_k).sum(-1)[..., None]


@wrong("3.4", "count")
def stable_step_forgets_count(state, q_t, k_t, v_t):
    sum_kv, sum_k, m = _step_sums(state, k_t, v_t)
    logit = q_t + m
    return _read(np.exp(logit - logit.max(-1, keepdims=True)), sum_kv, sum_k), LogAttentionState(sum_kv, sum_k, m)


@wrong("3.4", "count")
def stable_step_returns_three_fields(state, q_t, k_t, v_t):
    sum_kv, sum_k, m = _step_sums(state, k_t, v_t)
    logit = q_t + m
    return _read(np.exp(logit - logit.max(-1, keepdims=True)), sum_kv, sum_k), (sum_kv, sum_k, m)


@wrong("3.4", "ONE max")
def stable_step_factors_each_vector(state, q_t, k_t, v_t):
    sum_kv, sum_k, m = _step_sums(state, k_t, v_t)
    weights = np.exp(q_t - q_t.max(-1, keepdims=True)) * np.exp(m - m.max(-1, keepdims=True))
    return _read(weights, sum_kv, sum_k), LogAttentionState(sum_kv, sum_k, m, state.count + 1)


@wrong("3.4", "over every token so far")
def stable_step_max_of_this_token(state, q_t, k_t, v_t):
    m = k_t  # measure everything against this token's key
    r = np.where(np.isneginf(state.key_max), 0.0, np.exp(state.key_max - m))
    sum_kv = r[..., None] * state.sum_kv + v_t[..., None, :]
    sum_k = r * state.sum_k + 1.0
    logit = q_t + m
    y = _read(np.exp(logit - logit.max(-1, keepdims=True)), sum_kv, sum_k)
    return y, LogAttentionState(sum_kv, sum_k, m, state.count + 1)


@wrong("3.4", "q + k passes")
def stable_step_unshifted_read(state, q_t, k_t, v_t):
    sum_kv, sum_k, m = _step_sums(state, k_t, v_t)
    return _read(np.exp(q_t + m), sum_kv, sum_k), LogAttentionState(sum_kv, sum_k, m, state.count + 1)


@wrong("3.4", "whole batch")
def stable_step_one_max_for_the_batch(state, q_t, k_t, v_t):
    sum_kv, sum_k, m = _step_sums(state, k_t, v_t)
    logit = q_t + m
    return _read(np.exp(logit - logit.max()), sum_kv, sum_k), LogAttentionState(sum_kv, sum_k, m, state.count + 1)


@wrong("3.4", "in place")
def stable_step_updates_in_place(state, q_t, k_t, v_t):
    m = np.maximum(state.key_max, k_t)
    r = np.exp(state.key_max - m)
    w = np.exp(k_t - m)
    state.sum_kv[...] = r[..., None] * state.sum_kv + w[..., :, None] * v_t[..., None, :]
    state.sum_k[...] = r * state.sum_k + w
    state.key_max[...] = m
    logit = q_t + m
    y = _read(np.exp(logit - logit.max(-1, keepdims=True)), state.sum_kv, state.sum_k)
    return y, LogAttentionState(state.sum_kv, state.sum_k, state.key_max, state.count + 1)


def _chunk(state, q, k, v, *, mask=None, chunk_alone=False, shift="row", count=True, sim=None):
    """A learner's prefill written from scratch, with one knob per way to get it wrong."""
    c = q.shape[-2]
    with np.errstate(invalid="ignore"):
        past = q + state.key_max[..., None, :]
    s = sim(q, k) if sim else numpy_ref.logsumexp(q[..., :, None, :] + k[..., None, :, :], axis=-1)
    s = np.where(np.tri(c, dtype=bool) if mask is None else mask(c), s, -np.inf)
    if shift == "row":
        top_p = top_s = np.maximum(past.max(-1), s.max(-1))
    elif shift == "chunk":
        top_p = top_s = np.maximum(past.max(-1), s.max(-1)).max(-1, keepdims=True)
    elif shift == "separate":
        top_p, top_s = np.nan_to_num(past.max(-1), neginf=0.0), s.max(-1)
    pw, sw = np.exp(past - top_p[..., None]), np.exp(s - top_s[..., None])
    with np.errstate(invalid="ignore", divide="ignore"):
        y = (pw @ state.sum_kv + sw @ v) / (pw @ state.sum_k[..., None] + sw.sum(-1, keepdims=True))
    m = k.max(-2) if chunk_alone else np.maximum(state.key_max, k.max(-2))
    r = np.exp(state.key_max - m)
    w = np.exp(k - m[..., None, :])
    new = LogAttentionState(r[..., None] * state.sum_kv + np.swapaxes(w, -1, -2) @ v, r * state.sum_k + w.sum(-2), m,
                            state.count + c if count else state.count)
    return y, new


@wrong("3.5", "from the chunk alone")
def prefill_max_of_this_chunk(state, q, k, v):
    return _chunk(state, q, k, v, chunk_alone=True)


@wrong("3.5", "count")
def prefill_forgets_count(state, q, k, v):
    return _chunk(state, q, k, v, count=False)


@wrong("3.5", "inverted")
def prefill_upper_triangle(state, q, k, v):
    return _chunk(state, q, k, v, mask=lambda c: np.triu(np.ones((c, c), dtype=bool)))


@wrong("3.5", "ONE per-row max")
def prefill_two_shifts(state, q, k, v):
    return _chunk(state, q, k, v, shift="separate")


@wrong("3.5", "its own max M_i")
def prefill_one_shift_per_chunk(state, q, k, v):
    return _chunk(state, q, k, v, shift="chunk")


@wrong("3.5", "not the dot product")
def prefill_dot_product_similarity(state, q, k, v):
    return _chunk(state, q, k, v, sim=lambda q, k: np.einsum("...if,...jf->...ij", q, k))


@wrong("3.5", "unshifted")
def prefill_in_linear_space(state, q, k, v):
    c = q.shape[-2]
    big_s = np.where(np.isneginf(state.key_max), 0.0, np.exp(state.key_max))  # exp(H) = exp(m) * sums
    eq = np.exp(q)
    a = np.exp(q) @ np.swapaxes(np.exp(k), -1, -2) * np.tri(c)
    y = (eq @ (big_s[..., None] * state.sum_kv) + a @ v) / (eq @ (big_s * state.sum_k)[..., None] + a.sum(-1, keepdims=True))
    _, new = numpy_ref.prefill(state, q, k, v)
    return y, new


@wrong("3.5", "in place")
def prefill_scales_state_in_place(state, q, k, v):
    y, new = numpy_ref.prefill(state, q, k, v)
    m = new.key_max
    state.sum_kv[...] = new.sum_kv  # "reuse the buffers"
    state.sum_k[...] = new.sum_k
    state.key_max[...] = m
    return y, LogAttentionState(state.sum_kv, state.sum_k, state.key_max, new.count)


@wrong("3.1", "running max is only")
def lcse_running_max_only(x, axis=-1):
    return np.fmax.accumulate(x, axis=axis)  # "LSE is about the max"


@wrong("3.4", "not exp(m_new - m_old)")
def stable_step_decay_upside_down(state, q_t, k_t, v_t):
    m = np.maximum(state.key_max, k_t)
    with np.errstate(invalid="ignore"):
        r = np.nan_to_num(np.exp(m - state.key_max), posinf=0.0)  # 0 for the empty state, as it should be
    w = np.exp(k_t - m)
    sum_kv, sum_k = r[..., None] * state.sum_kv + w[..., :, None] * v_t[..., None, :], r * state.sum_k + w
    logit = q_t + m
    y = _read(np.exp(logit - logit.max(-1, keepdims=True)), sum_kv, sum_k)
    return y, LogAttentionState(sum_kv, sum_k, m, state.count + 1)


@wrong("3.4", "NEW max")
def stable_step_reads_with_old_max(state, q_t, k_t, v_t):
    sum_kv, sum_k, m = _step_sums(state, k_t, v_t)
    logit = q_t + state.key_max  # the max from before this token
    top = np.nan_to_num(logit.max(-1, keepdims=True), neginf=0.0)
    with np.errstate(invalid="ignore"):
        y = _read(np.exp(logit - top), sum_kv, sum_k)
    return y, LogAttentionState(sum_kv, sum_k, m, state.count + 1)


@wrong("3.5", "one max over f")
def prefill_similarity_factored_by_own_maxima(state, q, k, v):
    def factored(q, k):  # exp(q_i - max q_i) . exp(k_j - max k_j), then the maxima added back
        qm, km = q.max(-1, keepdims=True), k.max(-1, keepdims=True)
        with np.errstate(divide="ignore"):
            return np.log(np.exp(q - qm) @ np.swapaxes(np.exp(k - km), -1, -2)) + qm + np.swapaxes(km, -1, -2)

    return _chunk(state, q, k, v, sim=factored)


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

#: Right answers written other ways (loops, einsum, sentinels for log 0, sigmoid forms, other orderings):
#: ``(task_id, fn)``, every one must pass its check on every seed.


@right("3.1")
def lcse_loop_softplus(x, axis=-1):
    # logaddexp(a, b) = max + softplus(-|a - b|), with softplus(u) = -log(sigmoid(-u)); -inf handled by hand.
    x = np.moveaxis(np.array(x, dtype=float), axis, -1)
    out = x.copy()
    for i in range(1, x.shape[-1]):
        a, b = out[..., i - 1], x[..., i]
        big = np.maximum(a, b)
        with np.errstate(invalid="ignore"):
            gap = np.where(np.isneginf(big), 0.0, -np.abs(a - b))
        sigmoid = 1.0 / (1.0 + np.exp(gap))  # sigmoid(-gap)
        out[..., i] = np.where(np.isneginf(big), -np.inf, big - np.log(sigmoid))
    return np.moveaxis(out, -1, axis)


@right("3.1")
def lcse_running_max(x, axis=-1):
    # Carry (running max, sum of exp(x - running max)), rescaling the sum when the max grows.
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    top = np.full(x.shape[:-1], -np.inf)
    total = np.zeros(x.shape[:-1])
    out = np.empty_like(x)
    for i in range(x.shape[-1]):
        new_top = np.maximum(top, x[..., i])
        safe = np.where(np.isneginf(new_top), 0.0, new_top)
        total = total * np.exp(top - safe) + np.exp(x[..., i] - safe)
        with np.errstate(divide="ignore"):
            out[..., i] = np.log(total) + safe
        top = new_top
    return np.moveaxis(out, -1, axis)


@right("3.2")
def log_step_sentinel_einsum(state, q_t, k_t, log_v_t):
    if state is None:  # -1e30 as log 0: exp(-1e30) is exactly 0, like exp(-inf)
        state = (np.full(q_t.shape + log_v_t.shape[-1:], -1e30), np.full(q_t.shape, -1e30))
    h_s, h_z = state
    h_s = np.logaddexp(h_s, np.einsum("...f,...d->...fd", k_t, np.ones_like(log_v_t)) + log_v_t[..., None, :])
    h_z = np.logaddexp(h_z, k_t)
    log_s = np.logaddexp.reduce(q_t[..., :, None] + h_s, axis=-2)
    log_z = np.logaddexp.reduce(q_t + h_z, axis=-1)
    return log_s - log_z[..., None], (h_s, h_z)


@right("3.2")
def log_step_loop_over_features(state, q_t, k_t, log_v_t):
    d_k = q_t.shape[-1]
    h_s, h_z = _empty(q_t, log_v_t) if state is None else (state[0].copy(), state[1].copy())
    log_s = np.full(q_t.shape[:-1] + log_v_t.shape[-1:], -np.inf)
    log_z = np.full(q_t.shape[:-1], -np.inf)
    for f in range(d_k):
        h_s[..., f, :] = np.logaddexp(h_s[..., f, :], k_t[..., f, None] + log_v_t)
        h_z[..., f] = np.logaddexp(h_z[..., f], k_t[..., f])
        log_s = np.logaddexp(log_s, q_t[..., f, None] + h_s[..., f, :])
        log_z = np.logaddexp(log_z, q_t[..., f] + h_z[..., f])
    return log_s - log_z[..., None], (h_s, h_z)


@right("3.3")
def signed_by_shifting(q, k, v):
    # The weights sum to 1, so attention(V) = attention(V - c) + c; V - c > 0 for c below every entry.
    c = v.min(axis=-2, keepdims=True) - 1.0
    return np.exp(numpy_ref.log_attention_logspace(q, k, np.log(v - c))) + c


@right("3.3")
def signed_column_loop(q, k, v):
    out = np.zeros(q.shape[:-1] + v.shape[-1:])
    for d in range(v.shape[-1]):
        for sign in (1.0, -1.0):
            part = np.maximum(sign * v[..., d:d + 1], 0.0)
            with np.errstate(divide="ignore"):
                out[..., d:d + 1] += sign * np.exp(numpy_ref.log_attention_logspace(q, k, np.log(part)))
    return out


@right("3.4")
def stable_step_tuple_and_softmax(state, q_t, k_t, v_t):
    # Returns the four fields as a tuple; reads with normalised weights (a softmax over features).
    m = np.maximum(state.key_max, k_t)
    r = np.where(np.isneginf(state.key_max), 0.0, np.exp(state.key_max - m))
    w = np.exp(k_t - m)
    sum_kv = np.einsum("...f,...fd->...fd", r, state.sum_kv) + np.einsum("...f,...d->...fd", w, v_t)
    sum_k = r * state.sum_k + w
    p = np.exp(q_t + m - numpy_ref.logsumexp(q_t + m, axis=-1)[..., None])
    y = np.einsum("...f,...fd->...d", p, sum_kv) / np.einsum("...f,...f->...", p, sum_k)[..., None]
    return y, (sum_kv, sum_k, m, state.count + 1)


@right("3.4")
def stable_step_feature_loop(state, q_t, k_t, v_t):
    sum_kv, sum_k, m = state.sum_kv.copy(), state.sum_k.copy(), state.key_max.copy()
    for f in range(k_t.shape[-1]):
        grow = k_t[..., f] > m[..., f]
        old = np.where(grow, np.exp(m[..., f] - k_t[..., f]), 1.0)  # rescale only when the max grows
        new = np.where(grow, 1.0, np.exp(k_t[..., f] - m[..., f]))
        sum_kv[..., f, :] = old[..., None] * sum_kv[..., f, :] + new[..., None] * v_t
        sum_k[..., f] = old * sum_k[..., f] + new
        m[..., f] = np.maximum(m[..., f], k_t[..., f])
    logit = q_t + m
    a = np.exp(logit - logit.max(-1, keepdims=True))
    return (a[..., None] * sum_kv).sum(-2) / (a * sum_k).sum(-1)[..., None], LogAttentionState(sum_kv, sum_k, m, state.count + 1)


@right("3.5")
def prefill_sentinel_mask(state, q, k, v):
    c = q.shape[-2]
    s = numpy_ref.logsumexp(q[..., :, None, :] + k[..., None, :, :], axis=-1)
    s = s + np.triu(np.full((c, c), -1e30), 1)  # a sentinel instead of -inf above the diagonal
    with np.errstate(invalid="ignore"):
        logits = np.concatenate([q + state.key_max[..., None, :], s], axis=-1)  # both sources in one row
    a = np.exp(logits - logits.max(-1, keepdims=True))
    kv = np.concatenate([np.broadcast_to(state.sum_kv, q.shape[:-2] + state.sum_kv.shape[-2:]), v], axis=-2)
    z = np.concatenate([np.broadcast_to(state.sum_k, q.shape[:-2] + state.sum_k.shape[-1:]), np.ones(q.shape[:-1])], -1)
    y = (a @ kv) / (a * z[..., None, :]).sum(-1, keepdims=True)
    _, new = numpy_ref.prefill(state, q, k, v)
    return y, new


@right("3.5")
def prefill_token_by_token(state, q, k, v):
    outputs = []
    for t in range(q.shape[-2]):
        y_t, state = stable_step_feature_loop(state, q[..., t, :], k[..., t, :], v[..., t, :])
        outputs.append(y_t)
    return np.stack(outputs, axis=-2), state
