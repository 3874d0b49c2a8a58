"""Graded tasks of lesson 2 (the log of exponentials): the similarity, the weights through the feature map
exp, the constant-size state (exp(H^(S)), exp(H^(Z)) in linear space), and the paper's causal log-space form
(eq. 4). Symbols follow :mod:`logattn_ref.notation`: S and Z are the numerator and denominator, never the state.

Expected values come from the float64 oracle :mod:`logattn_ref.numpy_ref`. Fixed corner cases run first: for
2.1 and 2.4, magnitudes just past exp's range and maxima hundreds apart (the log-space tasks must be stable); for
2.2 and 2.3, whose linear-space forms the lesson asks for at moderate sizes, only magnitudes where those forms are
exact. Task 2.3 also checks the method (the constant-size state, not the n_q x n_k weights) by peak memory.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from .. import numpy_ref
from .registry import Case, Mistake, task


def _tr(x):
    return np.swapaxes(x, -1, -2)


def _qk(rng, batch, n_q, n_k, d_k, size=1.0, offset=0.0):
    return (
        rng.normal(size=batch + (n_q, d_k)) * size + offset,
        rng.normal(size=batch + (n_k, d_k)) * size + offset,
    )


def _tril(n_q, n_k, k=0):
    return np.tril(np.ones((n_q, n_k), dtype=bool), k=k)


# ------------------------------------------------------------------------------------------------ 2.1 similarity


def _oracle_similarity(q, k):
    return numpy_ref.logsumexp(q[..., :, None, :] + k[..., None, :, :], axis=-1)


def _wrong_similarity_own_max(q, k):
    # Factor each vector by its own max: exact algebra, but exp(q - m_q) . exp(k - m_k) underflows to 0 when q_i
    # and k_j peak at different features.
    m_q, m_k = q.max(-1, keepdims=True), k.max(-1, keepdims=True)
    return np.log(np.exp(q - m_q) @ _tr(np.exp(k - m_k))) + m_q + _tr(m_k)


def _wrong_similarity_global_max(q, k):
    m_q, m_k = q.max((-2, -1), keepdims=True), k.max((-2, -1), keepdims=True)
    return np.log(np.exp(q - m_q) @ _tr(np.exp(k - m_k))) + m_q + m_k


def _wrong_similarity_mean(q, k):
    return _oracle_similarity(q, k) - np.log(q.shape[-1])


def _similarity_corners():
    fixed = np.random.default_rng(21)
    d_k = 3
    past = _qk(fixed, (), 4, 5, d_k, 2.0, 360.0)  # q_if + k_jf ~ +720: exp(q) . exp(k) overflows
    below = _qk(fixed, (), 4, 5, d_k, 2.0, -380.0)  # ~ -760: it underflows to 0
    q_rows, k_rows = _qk(fixed, (), 3, 4, d_k)
    q_rows += np.array([0.0, -500.0, 300.0])[:, None]  # per-vector maxima hundreds apart
    k_rows += np.array([0.0, 350.0, -300.0, 10.0])[:, None]
    # q_i and k_j peak at different features: each vector's own max leaves exp(q - m_q) . exp(k - m_k) = 0.
    q_apart = np.array([[0.0, -800.0, -500.0], [-800.0, 0.0, -500.0], [1.0, 2.0, 3.0]])
    k_apart = np.array([[-800.0, 0.0, -500.0], [0.0, -800.0, -500.0], [2.0, 1.0, 0.5], [-500.0, -500.0, 0.0]])
    first = _qk(fixed, (), 4, 4, d_k)
    first[0][0], first[1][0] = 300.0, 300.0  # a huge entry at index 0 of q and of k
    batch = _qk(fixed, (2, 3), 4, 5, d_k)
    batch[0][1] -= 40.0  # the rows of the batch differ
    return [
        Case("q + k just past exp's range (~ +720)", past, corner=True),
        Case("q + k just below exp's range (~ -760)", below, corner=True),
        Case("vectors whose maxima differ by hundreds", (q_rows, k_rows), corner=True),
        Case("q_i and k_j peak at different features (entries spanning 800)", (q_apart, k_apart), corner=True),
        Case("a huge entry at index 0 (q and k)", first, corner=True),
        Case("batch and head dims [2, 3] whose rows differ", batch, corner=True,
             hint="broadcast over the leading dims: index with [..., :, None, :]"),
        Case("d_k = 1, n = 1", _qk(fixed, (), 1, 1, 1), corner=True),
    ]


@task(
    "2.1",
    "The similarity s_ij = LSE_f(q_if + k_jf)",
    points=1,
    concept="s_ij = log(exp(q_i) . exp(k_j)) = LSE_f(q_if + k_jf): a log-sum-exp over the feature axis (eq. 1)",
    hints=[
        "exp(q_i) . exp(k_j) = sum_f exp(q_if + k_jf). Its log is a logsumexp over f.",
        "Broadcast q[..., :, None, :] + k[..., None, :, :] to [..., n_q, n_k, d_k], then reduce the last axis.",
        "return logsumexp(q[..., :, None, :] + k[..., None, :, :], axis=-1)  (the stable one from lesson 1)",
    ],
    reference=_oracle_similarity,
    mistakes=[
        Mistake(
            _wrong_similarity_own_max,
            "factoring out each vector's own max underflows when q_i and k_j peak at different features "
            "(exp(q - max q) . exp(k - max k) = 0): shift by the max over f of the SUM q_if + k_jf, one per pair",
        ),
        Mistake(
            _wrong_similarity_global_max,
            "one shift for all of q (and one for all of k) underflows the rows far below it: the log-sum-exp over f "
            "needs the max of q_if + k_jf for each pair (i, j)",
        ),
        Mistake(
            _wrong_similarity_mean,
            "the similarity is the log of a SUM over features, not a mean: no division by d_k (no - log d_k)",
        ),
        Mistake(
            lambda q, k: _oracle_similarity(q, k) / np.sqrt(q.shape[-1]),
            "the paper's similarity has no 1/sqrt(d_k): s_ij = LSE_f(q_if + k_jf) as it is (eq. 1)",
        ),
        Mistake(lambda q, k: q @ _tr(k), "that is the dot product q . k of ordinary attention; the paper's similarity is log(exp(q_i) . exp(k_j)) = LSE_f(q_if + k_jf)"),
        Mistake(lambda q, k: np.log(np.exp(q) @ _tr(np.exp(k))), "exp(q) . exp(k) overflows (or underflows) at large |q|, |k|: compute the log-sum-exp over f of q_if + k_jf with a max shift"),
        Mistake(lambda q, k: (q[..., :, None, :] + k[..., None, :, :]).sum(-1), "that is sum_f (q_if + k_jf); take the log-SUM-EXP over f, not the sum"),
        Mistake(lambda q, k: (q[..., :, None, :] + k[..., None, :, :]).max(-1), "max_f (q_if + k_jf) is only the largest term: the log-sum-exp adds log(sum exp(others - max))"),
    ],
    rtol=1e-10,
    atol=1e-10,
)
def _similarity_cases(rng):
    n, d_k = int(rng.integers(2, 6)) * 2 + 1, int(rng.integers(2, 7))
    return _similarity_corners() + [
        Case(f"n_q = n_k = {n}", _qk(rng, (), n, n, d_k)),
        Case("n = 1", _qk(rng, (), 1, 1, d_k)),
        Case("n_q != n_k", _qk(rng, (), 3, n + 2, d_k)),
        Case("batch and head dims", _qk(rng, (2, 3), n, n, d_k), hint="broadcast over the leading dims: index with [..., :, None, :]"),
        Case("d_k = 1", _qk(rng, (), n, n, 1)),
        Case("large magnitudes (q, k ~ +400)", _qk(rng, (), n, n, d_k, 3.0, 400.0)),
        Case("very negative (q, k ~ -400)", _qk(rng, (), n, n, d_k, 3.0, -400.0)),
    ]


# ------------------------------------------------------------------------------------------------ 2.2 weights


def _weights(q, k, causal=True, *, normalise=True, mask_k=0, axis=-1, mask_after=False, inverted=False,
             transposed=False):
    w = np.exp(q) @ _tr(np.exp(k))  # [..., n_q, n_k]: phi(q_i) . phi(k_j)
    if causal and mask_after:
        w = w / w.sum(axis, keepdims=True)
    if causal:
        visible = _tril(*w.shape[-2:], k=mask_k)
        visible = _tr(visible) if transposed else visible
        w = np.where(~visible if inverted else visible, w, 0.0)
    if normalise and not mask_after:
        w = w / w.sum(axis, keepdims=True)
    return w


def _oracle_weights(q, k, causal=True):
    s = _oracle_similarity(q, k)
    if causal:
        s = np.where(_tril(*s.shape[-2:]), s, -np.inf)
    return numpy_ref.softmax(s, axis=-1)


def _moderate_corners(seed, with_v):
    """Fixed inputs of moderate size (the linear-space forms of tasks 2.2-2.3 are exact there): d_v != d_k with
    n_k = d_k, the rows of a batch that differ, a visible key whose weight underflows to exactly 0, a dominant key at
    index 0, non-causal n_q != n_k, n = 1."""
    fixed = np.random.default_rng(seed)

    def make(batch, n_q, n_k, d_k, d_v=2):
        q, k = _qk(fixed, batch, n_q, n_k, d_k)
        return (q, k, fixed.normal(size=batch + (n_k, d_v))) if with_v else (q, k)

    square = make((), 4, 4, 4, 3)  # n_k = d_k, d_v != d_k
    batch = make((2, 3), 5, 5, 3)
    batch[0][1] += 1.5  # the rows of the batch differ
    tiny = make((), 5, 5, 3)
    tiny[1][2] -= 760.0  # exp(q_i) . exp(k_2) underflows to exactly 0 (key 2 stays visible from query 2 on)
    first = make((), 5, 5, 3)
    first[1][0] += 300.0  # a dominant key at index 0 (exp(300) ~ 2e130: still finite)
    cases = [
        ("causal, n = d_k = 4, d_v = 3" if with_v else "causal, n = d_k = 4", square, {}),
        ("batch and head dims [2, 3] whose rows differ", batch, {}),
        ("a visible key whose weight underflows to exactly 0", tiny, {}),
        ("a dominant key at index 0 (k_0 ~ +300)", first, {}),
        ("non-causal, n_q = 3, n_k = 7", make((), 3, 7, 3), {"causal": False}),
        ("n = 1", make((), 1, 1, 3), {}),
    ]
    if with_v:  # task 2.3 is non-causal by definition: no causal flag
        cases = [(name.replace("causal, ", "").replace("non-", ""), args, {}) for name, args, _ in cases]
    return [Case(name, args, kwargs, corner=True, scale=args[2] if with_v else None) for name, args, kwargs in cases]


@task(
    "2.2",
    "Attention weights through the feature map exp",
    points=2,
    concept="w_ij = exp(q_i) . exp(k_j) / sum_j' exp(q_i) . exp(k_j'): linear attention with phi = exp, rows sum to 1 over visible keys",
    hints=[
        "phi(x) = exp(x) elementwise. The unnormalised weight of key j for query i is phi(q_i) . phi(k_j).",
        "Zero the weights of keys j > i when causal, THEN divide each row by its sum (the normaliser Z_i).",
        "w = np.exp(q) @ np.swapaxes(np.exp(k), -1, -2); w = np.where(mask, w, 0); return w / w.sum(-1, keepdims=True)",
    ],
    reference=_oracle_weights,
    mistakes=[
        Mistake(lambda q, k, causal=True: _weights(q, k, causal, normalise=False), "you forgot the normaliser Z: divide each row by its sum over the visible keys so the weights sum to 1"),
        Mistake(lambda q, k, causal=True: _weights(q, k, causal, mask_k=0, inverted=True), "the causal mask is inverted: keys j <= i are the visible ones; it is keys j > i that get weight 0"),
        Mistake(lambda q, k, causal=True: _weights(q, k, causal, mask_k=-1), "the causal mask is off by one: token i must see itself"),
        Mistake(lambda q, k, causal=True: _weights(q, k, causal, transposed=True), "the causal mask is transposed: row i is the query and sees keys j <= i (the lower triangle), not keys j >= i"),
        Mistake(lambda q, k, causal=True: _weights(q, k, False), "the causal mask is missing: with causal=True, keys j > i get weight 0"),
        Mistake(lambda q, k, causal=True: _weights(q, k, True), "with causal=False nothing is masked: every query sees every key (mask only when causal is True)"),
        Mistake(lambda q, k, causal=True: _weights(q, k, causal, axis=-2), "normalise over the keys (the last axis), not over the queries"),
        Mistake(lambda q, k, causal=True: _weights(q, k, causal, mask_after=True), "apply the causal mask BEFORE normalising, so each row's visible weights sum to 1"),
        Mistake(
            lambda q, k, causal=True: numpy_ref.softmax(np.where(_tril(q.shape[-2], k.shape[-2]) | (not causal), q @ _tr(k), -np.inf), axis=-1),
            "that is softmax(q . k), ordinary attention; here the weight uses the feature map exp: exp(q_i) . exp(k_j)",
        ),
    ],
    rtol=1e-9,
    atol=1e-12,
)
def _weights_cases(rng):
    n, d_k = int(rng.integers(2, 6)) * 2 + 1, int(rng.integers(2, 6))
    return _moderate_corners(22, with_v=False) + [
        Case(f"causal, n = {n}", _qk(rng, (), n, n, d_k)),
        Case("n = 1", _qk(rng, (), 1, 1, d_k)),
        Case("batch and head dims", _qk(rng, (2, 3), n, n, d_k)),
        Case("non-causal, n_q != n_k", _qk(rng, (), 3, n + 2, d_k), {"causal": False}),
    ]


# ------------------------------------------------------------------------------------------------ 2.3 state


def _state_attention(q, k, v, *, with_z=True, z_axis=-2, causal=False, key_map=np.exp, z_by_count=False,
                     z_without_q=False, z_from_q=False):
    if causal:
        return _weights(q, k, True) @ v
    s_state = _tr(key_map(k)) @ v  # [..., d_k, d_v]
    z_state = key_map(k).sum(z_axis)
    num = np.exp(q) @ s_state
    if not with_z:
        return num
    if z_by_count:
        return num / k.shape[-2]
    if z_without_q:
        return num / z_state.sum(-1)[..., None, None]
    if z_from_q:
        return num / np.exp(q).sum(-1, keepdims=True)
    return num / (np.exp(q) @ z_state[..., :, None])


#: The method probe's size: the n_q x n_k weights (float64) alone would take 8 MiB, four times the budget, while the
#: constant-size state method needs about 0.2 MiB at most (exp(k) [n_k, d_k], exp(k_j) v_j^T [n_k, d_k, d_v]).
_PROBE_N_Q, _PROBE_N_K, _PROBE_BUDGET = 256, 4096, 2 * 2**20


def _state_method(fn, rng):
    """None when ``fn`` summed over the keys into the state, else a message: its peak memory at n_q = 256,
    n_k = 4096 exceeds what the state method needs by far, so it built an n_q x n_k matrix."""
    q, k = _qk(rng, (), _PROBE_N_Q, _PROBE_N_K, 2)
    v = rng.normal(size=(_PROBE_N_K, 3))
    already = tracemalloc.is_tracing()
    if already:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        with np.errstate(all="ignore"):
            fn(q, k, v)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        if not already:
            tracemalloc.stop()
    if peak <= _PROBE_BUDGET:
        return None
    matrix = _PROBE_N_Q * _PROBE_N_K * 8 / 2**20
    return (f"at n_q = {_PROBE_N_Q}, n_k = {_PROBE_N_K} your function's peak memory was {peak / 2**20:.1f} MiB (an "
            f"n_q x n_k matrix of float64 is {matrix:.0f} MiB; the constant-size state needs < 1 MiB): it built the "
            "n_q x n_k weights. Sum over the keys first into the constant-size state exp(H^(S)) [d_k, d_v] and "
            "exp(H^(Z)) [d_k], then let each query read it")


@task(
    "2.3",
    "Non-causal attention through the constant-size state",
    points=2,
    concept="sum over keys first: the state exp(H^(S)) = sum_j exp(k_j) v_j^T [d_k, d_v] and exp(H^(Z)) = sum_j exp(k_j) "
    "[d_k]; then y_i = S_i / Z_i = exp(q_i) exp(H^(S)) / exp(q_i) . exp(H^(Z))",
    hints=[
        "The weights factor: w_ij is proportional to sum_f exp(q_if) exp(k_jf). Sum over the keys j before touching the queries.",
        "sum_kv = np.swapaxes(np.exp(k), -1, -2) @ v (the state exp(H^(S))) has shape [..., d_k, d_v] and "
        "sum_k = np.exp(k).sum(-2) (exp(H^(Z))) has [..., d_k], whatever n_k is.",
        "return (np.exp(q) @ sum_kv) / (np.exp(q) @ sum_k[..., :, None])",
    ],
    reference=lambda q, k, v: numpy_ref.log_attention(q, k, v, causal=False),
    mistakes=[
        Mistake(lambda q, k, v: _state_attention(q, k, v, with_z=False), "you forgot the normaliser Z: divide the numerator S_i = exp(q_i) sum_kv by Z_i = exp(q_i) . sum_k, sum_k = sum_j exp(k_j)"),
        Mistake(lambda q, k, v: _state_attention(q, k, v, z_axis=-1), "sum_k = exp(H^(Z)) sums over the keys (axis -2 of k), giving one entry per feature: shape [..., d_k]"),
        Mistake(lambda q, k, v: _state_attention(q, k, v, z_by_count=True), "divide by the normaliser Z_i = exp(q_i) . exp(H^(Z)), not by the number of keys"),
        Mistake(lambda q, k, v: _state_attention(q, k, v, z_without_q=True), "Z_i depends on the query: Z_i = exp(q_i) . exp(H^(Z)) (a dot product with exp(q_i)), not the sum of the state exp(H^(Z))"),
        Mistake(lambda q, k, v: _state_attention(q, k, v, z_from_q=True), "Z_i = exp(q_i) . exp(H^(Z)) needs the keys' normaliser state exp(H^(Z)) = sum_j exp(k_j), not the sum of exp(q_i) alone"),
        Mistake(lambda q, k, v: _state_attention(q, k, v, key_map=lambda x: x), "apply the feature map exp to the keys too: exp(H^(S)) = sum_j exp(k_j) v_j^T and exp(H^(Z)) = sum_j exp(k_j)"),
        Mistake(lambda q, k, v: _state_attention(q, k, v, causal=True), "this task is non-causal: every query sees every key"),
        Mistake(lambda q, k, v: numpy_ref.softmax_attention(q, k, v, causal=False), "that is ordinary softmax attention; use the feature map exp on q and k"),
    ],
    rtol=1e-9,
    atol=1e-12,
    method=_state_method,
)
def _state_cases(rng):
    n, d_k, d_v = int(rng.integers(2, 6)) * 2 + 1, int(rng.integers(2, 6)), int(rng.integers(1, 5))

    def qkv(batch, n_q, n_k):
        q, k = _qk(rng, batch, n_q, n_k, d_k)
        return q, k, rng.normal(size=batch + (n_k, d_v))

    cases = [("n_q = n_k = " + str(n), qkv((), n, n)), ("n = 1", qkv((), 1, 1)), ("n_q = 1, many keys", qkv((), 1, n)),
             ("n_q != n_k", qkv((), 3, n + 2)), ("batch and head dims", qkv((2, 3), n, n))]
    return _moderate_corners(23, with_v=True) + [Case(name, args, scale=args[2]) for name, args in cases]


# ------------------------------------------------------------------------------------------------ 2.4 log space


def _log_causal(q, k, log_v, *, causal=True, exclusive=False, with_z=True, naive=False, linear=False,
                sequence_max=False, token_axis=True, exponentiate=False, sum_features=False):
    kv = k[..., :, :, None] + log_v[..., :, None, :]  # [..., n, d_k, d_v]
    if linear:  # everything in linear space: exp(q) . sum_j exp(k_j) v_j
        s_state = np.cumsum(np.exp(kv), axis=-3)
        z_state = np.cumsum(np.exp(k), axis=-2)
        num = np.einsum("...if,...ifd->...id", np.exp(q), s_state)
        return np.log(num) - np.log(np.einsum("...if,...if->...i", np.exp(q), z_state))[..., None]
    if naive:
        s_state = np.log(np.cumsum(np.exp(kv), axis=-3))
        z_state = np.log(np.cumsum(np.exp(k), axis=-2))
    elif sequence_max:  # stabilised by the max over the WHOLE sequence, not the running max
        top_s, top_z = kv.max(-3, keepdims=True), k.max(-2, keepdims=True)
        s_state = np.log(np.cumsum(np.exp(kv - top_s), axis=-3)) + top_s
        z_state = np.log(np.cumsum(np.exp(k - top_z), axis=-2)) + top_z
    elif not token_axis:  # cumulative along the features instead of the tokens
        s_state = np.logaddexp.accumulate(kv, axis=-2)
        z_state = np.logaddexp.accumulate(k, axis=-1)
    elif causal:
        s_state = np.logaddexp.accumulate(kv, axis=-3)
        z_state = np.logaddexp.accumulate(k, axis=-2)
        if exclusive:
            s_state = np.concatenate([np.full_like(s_state[..., :1, :, :], -np.inf), s_state[..., :-1, :, :]], axis=-3)
            z_state = np.concatenate([np.full_like(z_state[..., :1, :], -np.inf), z_state[..., :-1, :]], axis=-2)
    else:
        s_state = np.broadcast_to(numpy_ref.logsumexp(kv, axis=-3)[..., None, :, :], kv.shape)
        z_state = np.broadcast_to(numpy_ref.logsumexp(k, axis=-2)[..., None, :], k.shape)
    if sum_features:  # a plain sum over f where the log-sum-exp belongs
        log_s, log_z = (q[..., :, :, None] + s_state).sum(-2), (q + z_state).sum(-1)
    else:
        # The unchecked oracle helper: a known mistake's inf/NaN passes through, as a learner's overflow would.
        log_s = numpy_ref._logsumexp(q[..., :, :, None] + s_state, axis=-2)
        log_z = numpy_ref._logsumexp(q + z_state, axis=-1)
    out = log_s - log_z[..., None] if with_z else log_s
    return np.exp(out) if exponentiate else out


def _logspace_corners():
    fixed = np.random.default_rng(24)

    def inputs(batch, n, d_k=3, d_v=2, size=1.0, offset=0.0):
        q, k = _qk(fixed, batch, n, n, d_k, size, offset)
        return q, k, fixed.normal(size=batch + (n, d_v))

    past, below, keys_past = inputs((), 5, size=2.0, offset=360.0), inputs((), 5, size=2.0, offset=-380.0), inputs((), 5)
    keys_past[1][:] += 800.0  # the keys alone pass exp's range; q stays small
    rising = inputs((), 5)
    rising[1][:] += 300.0 * np.arange(5)[:, None]  # keys rise by hundreds: the max so far is always the newest key
    first = inputs((), 6)
    first[1][0, 0] = 800.0  # a huge key at index 0, in feature 0 only, followed by small ones...
    first[0][:, 1] += 900.0  # ...while the queries read feature 1: its small keys must not be flushed to 0
    zero_v = inputs((), 5, d_k=2, d_v=4)
    zero_v[2][2, 0] = -np.inf  # v = 0 at token 2: a visible weight that is exactly 0
    batch = inputs((2, 3), 4)
    batch[1][1] += 50.0  # the rows of the batch differ
    cases = [
        ("q + k just past exp's range (~ +720)", past),
        ("q + k just below exp's range (~ -760)", below),
        ("keys past exp's range (k ~ +800, q ~ 0)", keys_past),
        ("keys rising by hundreds across the sequence", rising),
        ("a huge key at index 0 followed by small ones", first),
        ("d_v != d_k with v = 0 at one token (log v = -inf)", zero_v),
        ("batch and head dims [2, 3] whose rows differ", batch),
        ("n = 1", inputs((), 1)),
    ]
    return [Case(name, args, corner=True) for name, args in cases]


@task(
    "2.4",
    "Causal attention in log space (eq. 4, V > 0)",
    points=3,
    concept="log S_i = LSE_f(q_if + LSE_{j<=i}(k_jf + log v_j)), log Z_i = LSE_f(q_if + LSE_{j<=i} k_jf), log Y = log S - log Z; "
    "the inner cumulative LSEs are the states H^(S)_i, H^(Z)_i",
    hints=[
        "Everything stays a log: products become sums, sums become log-sum-exps. log(exp(k_jf) v_jd) = k_jf + log v_jd.",
        "Causal: the LSE over keys becomes a cumulative LSE over j <= i: np.logaddexp.accumulate along the token axis.",
        "kv = k[..., :, :, None] + log_v[..., :, None, :]; H^(S) = logaddexp.accumulate(kv, axis=-3); "
        "log S = logsumexp(q[..., :, :, None] + H^(S), axis=-2); same for H^(Z) and log Z with k",
    ],
    reference=lambda q, k, log_v: numpy_ref.log_attention_logspace(q, k, log_v, causal=True),
    mistakes=[
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, sequence_max=True), "stabilise the cumulative sum by the RUNNING max over j <= i (or use np.logaddexp.accumulate), not by the max over the whole sequence: with rising keys the early prefixes underflow to log(0) = -inf"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, causal=False), "causal: the LSE over keys must be cumulative over j <= i (LCSE, eq. 4), not over all keys"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, exclusive=True), "the cumulative LSE is off by one: token i must see itself (include key i)"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, with_z=False), "you forgot the normaliser: log Y = log S - log Z (eq. 2)"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, naive=True), "stay in log space: exp(k) overflows at |k| ~ 800; use np.logaddexp.accumulate and logsumexp, never exp then log"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, linear=True), "stay in log space all the way: exp(q) . sum_j exp(k_j) v_j overflows (or underflows) once q + k passes exp's range (~ +-709): keep log S and log Z as log-sum-exps over f of q + H (eq. 4), never multiply exp(q) by exp(k)"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, token_axis=False), "accumulate along the token axis (keys j <= i: axis -3 of k + log v, axis -2 of k), not along the features"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, sum_features=True), "read the state with a log-sum-exp over the features, log S_i = LSE_f(q_if + H^(S)_if), not a plain sum over f"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, exponentiate=True), "return log Y = log S - log Z itself, not exp(log Y): the task's output stays in log space"),
    ],
    rtol=1e-9,
    atol=1e-8,
)
def _logspace_cases(rng):
    n, d_k, d_v = int(rng.integers(2, 6)) * 2 + 1, int(rng.integers(2, 6)), int(rng.integers(1, 4))

    def inputs(batch, n, size=1.0, offset=0.0):
        q, k = _qk(rng, batch, n, n, d_k, size, offset)
        return q, k, rng.normal(size=batch + (n, d_v))

    return _logspace_corners() + [
        Case(f"n = {n}", inputs((), n)),
        Case("n = 1", inputs((), 1)),
        Case("batch and head dims", inputs((2, 3), n)),
        Case("large magnitudes (q, k ~ 800)", inputs((), n, 5.0, 800.0)),
        Case("very negative (q, k ~ -800)", inputs((), n, 5.0, -800.0)),
    ]
