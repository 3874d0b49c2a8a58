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

from answer_lists import registers  # noqa: E402

WRONG_ANSWERS, wrong, CORRECT_REWRITES, rewrite = registers()


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


# Issue 13: the edges (shifts that are not the row max, masked rows, inverted masks, inputs changed in place).


@wrong("1.1", "shift each row by its MAX")
def softmax_centred_on_the_mean(x):
    centred = x - np.mean(x, axis=-1, keepdims=True)
    return np.exp(centred) / np.exp(centred).sum(axis=-1, keepdims=True)


@wrong("1.1", "shift each row by its MAX")
def softmax_shift_by_min(x):
    e = np.exp(x - x.min(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@wrong("1.1", "shift each row by its MAX")
def softmax_shift_by_first_score(x):
    e = np.exp(x - x[..., :1])
    return e / e.sum(-1, keepdims=True)


@wrong("1.1", "apply exp before normalising")
def softmax_without_exp(x):
    return x / np.sum(x, axis=-1, keepdims=True)


@wrong("1.2", "not 0")
def logsumexp_empty_row_is_zero(x):
    m = np.max(x, axis=-1, keepdims=True)
    ok = np.isfinite(m)
    out = np.log(np.sum(np.exp(x - np.where(ok, m, 0.0)), axis=-1)) + np.where(ok, m, 0.0)[..., 0]
    return np.where(ok[..., 0], out, 0.0)  # "nothing to sum: 0"


@wrong("1.4", "not one max over all rows")
def attention_one_shift_for_all_rows(q, k, v, causal=True):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tri(s.shape[-1], dtype=bool), s, -np.inf)
    e = np.exp(s - s.max())
    return e / e.sum(-1, keepdims=True) @ v


@wrong("1.1", "log-softmax")
def softmax_returns_logs(x):
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


@wrong("1.4", "with causal=False nothing is masked")
def attention_always_causal(q, k, v, causal=True):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    s = np.where(np.tri(*s.shape[-2:], dtype=bool), s, -np.inf)  # masks whatever causal says
    return numpy_ref.softmax(s) @ v


@wrong("1.1", "even when every score is negative")
def softmax_running_max_from_zero(x):
    biggest = np.zeros(x.shape[:-1] + (1,))
    for j in range(x.shape[-1]):
        biggest = np.maximum(biggest, x[..., j : j + 1])
    e = np.exp(x - biggest)
    return e / e.sum(axis=-1, keepdims=True)


@wrong("1.1", "row max")
def softmax_max_skips_index_0(x):
    top = x[..., 1:].max(axis=-1, keepdims=True) if x.shape[-1] > 1 else x
    e = np.exp(x - top)
    return e / e.sum(axis=-1, keepdims=True)


@wrong("1.1", "changed its input `x` in place")
def softmax_overwrites_x(x):
    x -= x.max(axis=-1, keepdims=True)
    return np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)


@wrong("1.2", "shift each row by its MAX")
def logsumexp_centred_on_the_mean(x):
    c = np.mean(x, axis=-1)
    return c + np.log(np.exp(x - c[..., None]).sum(-1))


@wrong("1.2", "add the max back")
def logsumexp_forgets_the_shift(x):
    m = np.max(x, axis=-1, keepdims=True)
    m[~np.isfinite(m)] = 0
    return np.log(np.sum(np.exp(x - m), axis=-1))


@wrong("1.2", "not by one max over everything")
def logsumexp_one_shift_for_all(x):
    finite = x[np.isfinite(x)]
    m = finite.max() if finite.size else 0.0
    return m + np.log(np.sum(np.exp(x - m), axis=-1))


@wrong("1.2", "all -inf")
def logsumexp_guard_forgotten_loop(x):
    out = np.empty(x.shape[:-1])
    for index in np.ndindex(x.shape[:-1]):
        row = x[index]
        out[index] = row.max() + np.log(np.sum(np.exp(row - row.max())))
    return out


@wrong("1.3", "inverted")
def mask_of_the_future(n):
    rows, cols = np.indices((n, n))
    return cols > rows  # True where the key must be hidden


@wrong("1.3", "one step into the future")
def mask_next_token_too(n):
    rows, cols = np.indices((n, n))
    return cols <= rows + 1


@wrong("1.3", "boolean")
def mask_of_ones(n):
    return np.tril(np.ones((n, n)))


@wrong("1.4", "inverted")
def attention_hides_the_past(q, k, v, causal=True):
    s = np.einsum("...id,...jd->...ij", q, k) / np.sqrt(q.shape[-1])
    if causal:
        n = s.shape[-1]
        s = np.where(np.tril(np.ones((n, n), dtype=bool)), -np.inf, s)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True) @ v


@wrong("1.4", "inverted")
def attention_hides_the_past_with_a_sentinel(q, k, v, causal=True):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = s - 1e9 * np.tril(np.ones(s.shape[-2:]))
    return numpy_ref.softmax(s) @ v


@wrong("1.4", "subtract each row's max")
def attention_own_softmax_unshifted(q, k, v, causal=True):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -np.inf)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True) @ v


@wrong("1.4", "MAX score (not its mean)")
def attention_own_softmax_mean_shift(q, k, v, causal=True):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    visible = np.tril(np.ones(s.shape[-2:], dtype=bool)) if causal else np.ones(s.shape[-2:], dtype=bool)
    centre = np.sum(np.where(visible, s, 0.0), -1, keepdims=True) / visible.sum(-1, keepdims=True)
    e = np.where(visible, np.exp(s - centre), 0.0)
    return e / e.sum(-1, keepdims=True) @ v


@wrong("1.4", "changed its input `q` in place")
def attention_scales_q_in_place(q, k, v, causal=True):
    q /= np.sqrt(q.shape[-1])
    return numpy_ref.softmax_attention(q, k, v, causal=causal, scale=1.0)


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


@wrong("2.1", "own max")
def similarity_factor_each_vector(q, k):
    q_top, k_top = q.max(-1), k.max(-1)
    dots = np.exp(q - q_top[..., None]) @ np.swapaxes(np.exp(k - k_top[..., None]), -1, -2)
    return np.log(dots) + q_top[..., :, None] + k_top[..., None, :]


@wrong("2.1", "one shift for all of q")
def similarity_one_shift(q, k):
    c = max(q.max(), k.max())
    return 2 * c + np.log(np.exp(q - c) @ np.swapaxes(np.exp(k - c), -1, -2))


@wrong("2.1", "not a mean")
def similarity_log_mean_exp(q, k):
    pairs = q[..., :, None, :] + k[..., None, :, :]
    top = pairs.max(-1, keepdims=True)
    return (top + np.log(np.mean(np.exp(pairs - top), axis=-1, keepdims=True)))[..., 0]


@wrong("2.2", "inverted")
def weights_keep_the_future(q, k, causal=True):
    w = np.einsum("...if,...jf->...ij", np.exp(q), np.exp(k))
    if causal:
        w = np.triu(w, 1)
    return w / w.sum(-1, keepdims=True)


@wrong("2.2", "with causal=False nothing is masked")
def weights_always_causal(q, k, causal=True):
    w = np.tril(np.einsum("...if,...jf->...ij", np.exp(q), np.exp(k)))
    return w / w.sum(-1, keepdims=True)


@wrong("2.2", "transposed")
def weights_upper_triangle(q, k, causal=True):
    w = np.exp(q) @ np.swapaxes(np.exp(k), -1, -2)
    if causal:
        w = w * np.triu(np.ones(w.shape[-2:]))
    return w / w.sum(-1, keepdims=True)


@wrong("2.2", "off by one")
def weights_strictly_past(q, k, causal=True):
    w = np.exp(q) @ np.swapaxes(np.exp(k), -1, -2)
    if causal:
        w = np.tril(w, -1)
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)  # guards the empty first row, still misses the diagonal
    return w


@wrong("2.3", "constant-size state")
def state_through_the_weights(q, k, v):
    weights = np.exp(q) @ np.swapaxes(np.exp(k), -1, -2)  # the n_q x n_k matrix the task asks to avoid
    return weights @ v / weights.sum(-1, keepdims=True)


@wrong("2.3", "feature map exp to the keys")
def state_without_feature_map_on_keys(q, k, v):
    s_state = np.einsum("...jf,...jd->...fd", k, v)
    z_state = k.sum(-2)
    return np.exp(q) @ s_state / (np.exp(q) @ z_state)[..., None]


@wrong("2.3", "changed its input `k` in place")
def state_exponentiates_k_in_place(q, k, v):
    np.exp(k, out=k)
    return (np.exp(q) @ (np.swapaxes(k, -1, -2) @ v)) / (np.exp(q) @ k.sum(-2)[..., :, None])


@wrong("2.4", "RUNNING max")
def logspace_shift_by_the_last_max(q, k, log_v):
    kv = k[..., :, :, None] + log_v[..., :, None, :]
    m_kv, m_k = np.max(kv, axis=-3, keepdims=True), np.max(k, axis=-2, keepdims=True)
    h_s = m_kv + np.log(np.cumsum(np.exp(kv - m_kv), axis=-3))
    h_z = m_k + np.log(np.cumsum(np.exp(k - m_k), axis=-2))
    return numpy_ref.logsumexp(q[..., :, :, None] + h_s, axis=-2) - numpy_ref.logsumexp(q + h_z, axis=-1)[..., None]


@wrong("2.4", "overflows")
def logspace_all_linear(q, k, log_v):
    num = np.einsum("...if,...ifd->...id", np.exp(q), np.cumsum(np.einsum("...jf,...jd->...jfd", np.exp(k), np.exp(log_v)), -3))
    den = np.einsum("...if,...if->...i", np.exp(q), np.cumsum(np.exp(k), -2))
    return np.log(num / den[..., None])


@wrong("2.4", "not exp(log Y)")
def logspace_returns_y(q, k, log_v):
    return np.exp(numpy_ref.log_attention_logspace(q, k, log_v, causal=True))


@wrong("2.4", "changed its input `log_v` in place")
def logspace_reuses_log_v(q, k, log_v):
    out = numpy_ref.log_attention_logspace(q, k, log_v, causal=True)
    log_v[...] = out  # reuses the buffer for the answer
    return log_v


@wrong("2.1", "no 1/sqrt(d_k)")
def similarity_scaled_like_lesson_1(q, k):
    pairs = q[..., :, None, :] + k[..., None, :, :]
    return numpy_ref.logsumexp(pairs, axis=-1) / np.sqrt(q.shape[-1])


@wrong("2.3", "not the sum of exp(q_i) alone")
def state_normalised_by_the_query(q, k, v):
    phi_q = np.exp(q)
    return phi_q @ (np.swapaxes(np.exp(k), -1, -2) @ v) / phi_q.sum(-1, keepdims=True)


@wrong("2.4", "not a plain sum over f")
def logspace_sums_over_features(q, k, log_v):
    h_s = np.logaddexp.accumulate(k[..., :, :, None] + log_v[..., :, None, :], axis=-3)
    h_z = np.logaddexp.accumulate(k, axis=-2)
    return np.sum(q[..., :, :, None] + h_s, axis=-2) - np.sum(q + h_z, axis=-1)[..., None]


@wrong("2.4", "RUNNING max")
def logspace_one_scalar_shift(q, k, log_v):
    kv = k[..., :, :, None] + log_v[..., :, None, :]
    big_s, big_z = kv.max(), k.max()
    h_s = np.log(np.cumsum(np.exp(kv - big_s), axis=-3)) + big_s
    h_z = np.log(np.cumsum(np.exp(k - big_z), axis=-2)) + big_z
    return numpy_ref.logsumexp(q[..., :, :, None] + h_s, axis=-2) - numpy_ref.logsumexp(q + h_z, axis=-1)[..., None]


# ------------------------------------------------------------------------------------ correct answers


#: Oracle-based correct answers: every one must pass its check.
CORRECT_ANSWERS: dict[str, object] = {
    "1.1": lambda x: numpy_ref.softmax(x, axis=-1),
    "1.2": lambda x: numpy_ref.logsumexp(x, axis=-1),
    "1.3": lambda n: np.tril(np.ones((n, n), dtype=bool)),
    "1.4": lambda q, k, v, causal=True: numpy_ref.softmax_attention(q, k, v, causal=causal),
    "2.1": lambda q, k: numpy_ref.logsumexp(q[..., :, None, :] + k[..., None, :, :], axis=-1),
    "2.2": lambda q, k, causal=True: _weights_correct(q, k, causal),
    "2.3": lambda q, k, v: numpy_ref.log_attention(q, k, v, causal=False),  # the state form (not the n x n one)
    "2.4": lambda q, k, log_v: numpy_ref.log_attention_logspace(q, k, log_v, causal=True),
}


def _weights_correct(q, k, causal):
    # The weights of eq. 1 are what log-attention applies to V; with V = identity, the output IS the weights.
    n_k = k.shape[-2]
    eye = np.broadcast_to(np.eye(n_k), k.shape[:-2] + (n_k, n_k))
    return numpy_ref.log_attention_quadratic(q, k, eye, causal=causal)


#: Correct rewrites, written the way learners write them (loops, einsum, sentinel masks, other orderings and
#: stabilisers): each must pass its check on every seed. (task_id, function).


@rewrite("1.1")
def softmax_row_by_row(x):
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        row = x[index]
        e = np.exp(row - row.max())
        out[index] = e / e.sum()
    return out


@rewrite("1.1")
def softmax_as_exp_minus_logsumexp(x):
    return np.exp(x - numpy_ref.logsumexp(x, axis=-1, keepdims=True))


@rewrite("1.1")
def softmax_pairwise_sigmoid_form(x):
    # w_i = 1 / sum_j exp(x_j - x_i): for two scores this is the sigmoid; exp overflowing to inf gives weight 0.
    return 1.0 / np.exp(x[..., None, :] - x[..., :, None]).sum(-1)


@rewrite("1.2")
def logsumexp_reduce(x):
    return np.logaddexp.reduce(x, axis=-1)


@rewrite("1.2")
def logsumexp_nan_to_minus_inf(x):
    m = np.max(x, axis=-1, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=-1)) + m[..., 0]
    return np.where(np.isnan(out), -np.inf, out)  # only all -inf rows give NaN: their LSE is -inf


@rewrite("1.2")
def logsumexp_running_loop(x):
    total = np.full(x.shape[:-1], -np.inf)
    for j in range(x.shape[-1]):
        total = np.logaddexp(total, x[..., j])
    return total


@rewrite("1.3")
def mask_by_comparison(n):
    return np.arange(n)[:, None] >= np.arange(n)[None, :]


@rewrite("1.3")
def mask_by_loops(n):
    mask = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(i + 1):
            mask[i, j] = True
    return mask


@rewrite("1.4")
def attention_einsum_sentinel(q, k, v, causal=True):
    s = np.einsum("...id,...jd->...ij", q, k) / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -1e30)
    s = s - s.max(-1, keepdims=True)
    w = np.exp(s)
    return np.einsum("...ij,...jd->...id", w / w.sum(-1, keepdims=True), v)


@rewrite("1.4")
def attention_query_by_query(q, k, v, causal=True):
    out = np.zeros(q.shape[:-1] + v.shape[-1:])
    for i in range(q.shape[-2]):
        last = i + 1 if causal else k.shape[-2]
        scores = (k[..., :last, :] @ q[..., i, :, None])[..., 0] / np.sqrt(q.shape[-1])
        w = np.exp(scores - scores.max(-1, keepdims=True))
        out[..., i, :] = (w[..., None] * v[..., :last, :]).sum(-2) / w.sum(-1, keepdims=True)
    return out


@rewrite("2.1")
def similarity_pair_max(q, k):
    pairs = q[..., :, None, :] + k[..., None, :, :]
    top = pairs.max(-1)
    return top + np.log(np.exp(pairs - top[..., None]).sum(-1))


@rewrite("2.1")
def similarity_logaddexp_over_features(q, k):
    out = np.full(np.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (q.shape[-2], k.shape[-2]), -np.inf)
    for f in range(q.shape[-1]):
        out = np.logaddexp(out, q[..., :, None, f] + k[..., None, :, f])
    return out


@rewrite("2.2")
def weights_from_log_space(q, k, causal=True):
    s = numpy_ref.logsumexp(q[..., :, None, :] + k[..., None, :, :], axis=-1)
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -1e300)
    return numpy_ref.softmax(s, axis=-1)


@rewrite("2.2")
def weights_einsum_mask_by_multiplying(q, k, causal=True):
    w = np.einsum("...if,...jf->...ij", np.exp(q), np.exp(k))
    if causal:
        w = w * np.tril(np.ones(w.shape[-2:]))
    return w / w.sum(-1, keepdims=True)


@rewrite("2.3")
def state_einsum(q, k, v):
    s_state = np.einsum("...jf,...jd->...fd", np.exp(k), v)
    z_state = np.einsum("...jf->...f", np.exp(k))
    return np.einsum("...if,...fd->...id", np.exp(q), s_state) / np.einsum("...if,...f->...i", np.exp(q), z_state)[..., None]


@rewrite("2.3")
def state_key_by_key(q, k, v):
    s_state = np.zeros(k.shape[:-2] + (k.shape[-1], v.shape[-1]))
    z_state = np.zeros(k.shape[:-2] + k.shape[-1:])
    for j in range(k.shape[-2]):
        phi = np.exp(k[..., j, :])
        s_state = s_state + phi[..., :, None] * v[..., j, None, :]
        z_state = z_state + phi
    return (np.exp(q) @ s_state) / (np.exp(q) @ z_state[..., :, None])


@rewrite("2.3")
def state_stabilised_by_feature_max(q, k, v):
    m = k.max(-2, keepdims=True)  # [..., 1, d_k]: per feature, over the keys; the queries carry it back
    phi_k = np.exp(k - m)
    logits = q + m  # q_if + m_f
    phi_q = np.exp(logits - logits.max(-1, keepdims=True))  # a per-query factor: cancels between S and Z
    return (phi_q @ (np.swapaxes(phi_k, -1, -2) @ v)) / (phi_q @ phi_k.sum(-2)[..., :, None])


@rewrite("2.4")
def logspace_token_by_token(q, k, log_v):
    h_s = np.full(k.shape[:-2] + (k.shape[-1], log_v.shape[-1]), -np.inf)
    h_z = np.full(k.shape[:-2] + k.shape[-1:], -np.inf)
    out = np.empty(q.shape[:-1] + log_v.shape[-1:])
    for i in range(q.shape[-2]):
        h_s = np.logaddexp(h_s, k[..., i, :, None] + log_v[..., i, None, :])
        h_z = np.logaddexp(h_z, k[..., i, :])
        log_s = numpy_ref.logsumexp(q[..., i, :, None] + h_s, axis=-2)
        out[..., i, :] = log_s - numpy_ref.logsumexp(q[..., i, :] + h_z, axis=-1)[..., None]
    return out


@rewrite("2.4")
def logspace_running_max_linear_states(q, k, log_v):
    # The stabilised linear form: states scaled by the running max of the keys, rescaled when it grows.
    out = np.empty(q.shape[:-1] + log_v.shape[-1:])
    m = np.full(k.shape[:-2] + k.shape[-1:], -np.inf)
    s_state = np.zeros(k.shape[:-2] + (k.shape[-1], log_v.shape[-1]))
    z_state = np.zeros(k.shape[:-2] + k.shape[-1:])
    for i in range(q.shape[-2]):
        new_m = np.maximum(m, k[..., i, :])
        scale = np.exp(m - new_m)
        phi = np.exp(k[..., i, :] - new_m)
        s_state = s_state * scale[..., None] + phi[..., :, None] * np.exp(log_v[..., i, None, :])
        z_state = z_state * scale + phi
        m = new_m
        log_s = numpy_ref.logsumexp(q[..., i, :, None] + m[..., :, None] + np.log(s_state), axis=-2)
        log_z = numpy_ref.logsumexp(q[..., i, :] + m + np.log(z_state), axis=-1)
        out[..., i, :] = log_s - log_z[..., None]
    return out


@rewrite("1.2")
def logsumexp_sorted_log1p(x):
    ordered = np.sort(x, axis=-1)[..., ::-1]
    top = ordered[..., 0]
    shift = np.where(np.isfinite(top), top, 0.0)
    return shift + np.log(np.exp(top - shift) + np.exp(ordered[..., 1:] - shift[..., None]).sum(-1))


@rewrite("2.2")
def weights_query_by_query(q, k, causal=True):
    out = np.zeros(q.shape[:-1] + k.shape[-2:-1])
    for i in range(q.shape[-2]):
        last = i + 1 if causal else k.shape[-2]
        s = numpy_ref.logsumexp(q[..., i, None, :] + k[..., :last, :], axis=-1)
        out[..., i, :last] = np.exp(s - numpy_ref.logsumexp(s, axis=-1)[..., None])
    return out


@rewrite("2.4")
def logspace_masked_quadratic(q, k, log_v):
    # All pairs (i, j) in log space with j > i masked: O(n^2) memory, but the same values.
    n = q.shape[-2]
    future = ~np.tril(np.ones((n, n), dtype=bool))
    pair = q[..., :, None, :] + k[..., None, :, :]  # [..., i, j, f]
    pair = np.where(future[:, :, None], -np.inf, pair)
    log_z = numpy_ref.logsumexp(pair.reshape(pair.shape[:-2] + (-1,)), axis=-1)
    terms = pair[..., :, :, :, None] + log_v[..., None, :, None, :]  # [..., i, j, f, d]
    log_s = numpy_ref.logsumexp(terms.reshape(terms.shape[:-3] + (-1, terms.shape[-1])), axis=-2)
    return log_s - log_z[..., None]


# Lesson 3's lists (its own file): getattr, so that a list it does not define yet is simply empty here (the test that
# every task of lessons 1-3 has a wrong and a correct answer still says when one is missing).
import wrong_answers_lesson3 as _lesson3  # noqa: E402

WRONG_ANSWERS += getattr(_lesson3, "WRONG_ANSWERS", [])
CORRECT_ANSWERS.update(getattr(_lesson3, "CORRECT_ANSWERS", {}))
CORRECT_REWRITES += getattr(_lesson3, "CORRECT_REWRITES", [])
