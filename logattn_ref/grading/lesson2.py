"""Graded tasks of lesson 2 (the log of exponentials): the similarity, the weights through the feature map
exp, the constant-size state (exp(H^(S)), exp(H^(Z)) in linear space), and the paper's causal log-space form
(eq. 4). Symbols follow :mod:`logattn_ref.notation`: S and Z are the numerator and denominator, never the state.

Expected values come from the float64 oracle :mod:`logattn_ref.numpy_ref`.
"""

from __future__ import annotations

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
    return [
        Case(f"n_q = n_k = {n}", _qk(rng, (), n, n, d_k)),
        Case("n = 1", _qk(rng, (), 1, 1, d_k)),
        Case("n_q != n_k", _qk(rng, (), 3, n + 2, d_k)),
        Case("batch and head dims", _qk(rng, (2, 3), n, n, d_k), hint="broadcast over the leading dims: index with [..., :, None, :]"),
        Case("d_k = 1", _qk(rng, (), n, n, 1)),
        Case("large magnitudes (q, k ~ +400)", _qk(rng, (), n, n, d_k, 3.0, 400.0)),
        Case("very negative (q, k ~ -400)", _qk(rng, (), n, n, d_k, 3.0, -400.0)),
    ]


# ------------------------------------------------------------------------------------------------ 2.2 weights


def _weights(q, k, causal=True, *, normalise=True, mask_k=0, axis=-1, mask_after=False):
    w = np.exp(q) @ _tr(np.exp(k))  # [..., n_q, n_k]: phi(q_i) . phi(k_j)
    if causal and mask_after:
        w = w / w.sum(axis, keepdims=True)
    if causal:
        w = np.where(_tril(*w.shape[-2:], k=mask_k), w, 0.0)
    if normalise and not mask_after:
        w = w / w.sum(axis, keepdims=True)
    return w


def _oracle_weights(q, k, causal=True):
    s = _oracle_similarity(q, k)
    if causal:
        s = np.where(_tril(*s.shape[-2:]), s, -np.inf)
    return numpy_ref.softmax(s, axis=-1)


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
        Mistake(lambda q, k, causal=True: _weights(q, k, causal, mask_k=-1), "the causal mask is off by one: token i must see itself"),
        Mistake(lambda q, k, causal=True: _weights(q, k, False), "the causal mask is missing: with causal=True, keys j > i get weight 0"),
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
    return [
        Case(f"causal, n = {n}", _qk(rng, (), n, n, d_k)),
        Case("n = 1", _qk(rng, (), 1, 1, d_k)),
        Case("batch and head dims", _qk(rng, (2, 3), n, n, d_k)),
        Case("non-causal, n_q != n_k", _qk(rng, (), 3, n + 2, d_k), {"causal": False}),
    ]


# ------------------------------------------------------------------------------------------------ 2.3 state


def _state_attention(q, k, v, *, with_z=True, z_axis=-2, causal=False):
    if causal:
        return _weights(q, k, True) @ v
    s_state = _tr(np.exp(k)) @ v  # [..., d_k, d_v]
    z_state = np.exp(k).sum(z_axis)
    num = np.exp(q) @ s_state
    if not with_z:
        return num
    return num / (np.exp(q) @ z_state[..., :, None])


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
        Mistake(lambda q, k, v: _state_attention(q, k, v, causal=True), "this task is non-causal: every query sees every key"),
        Mistake(lambda q, k, v: numpy_ref.softmax_attention(q, k, v, causal=False), "that is ordinary softmax attention; use the feature map exp on q and k"),
    ],
    rtol=1e-9,
    atol=1e-12,
)
def _state_cases(rng):
    n, d_k, d_v = int(rng.integers(2, 6)) * 2 + 1, int(rng.integers(2, 6)), int(rng.integers(1, 5))

    def qkv(batch, n_q, n_k):
        q, k = _qk(rng, batch, n_q, n_k, d_k)
        return q, k, rng.normal(size=batch + (n_k, d_v))

    cases = [("n_q = n_k = " + str(n), qkv((), n, n)), ("n = 1", qkv((), 1, 1)), ("n_q = 1, many keys", qkv((), 1, n)),
             ("n_q != n_k", qkv((), 3, n + 2)), ("batch and head dims", qkv((2, 3), n, n))]
    return [Case(name, args, scale=args[2]) for name, args in cases]


# ------------------------------------------------------------------------------------------------ 2.4 log space


def _log_causal(q, k, log_v, *, causal=True, exclusive=False, with_z=True, naive=False):
    kv = k[..., :, :, None] + log_v[..., :, None, :]  # [..., n, d_k, d_v]
    if naive:
        s_state = np.log(np.cumsum(np.exp(kv), axis=-3))
        z_state = np.log(np.cumsum(np.exp(k), axis=-2))
    elif causal:
        s_state = np.logaddexp.accumulate(kv, axis=-3)
        z_state = np.logaddexp.accumulate(k, axis=-2)
        if exclusive:
            s_state = np.concatenate([np.full_like(s_state[..., :1, :, :], -np.inf), s_state[..., :-1, :, :]], axis=-3)
            z_state = np.concatenate([np.full_like(z_state[..., :1, :], -np.inf), z_state[..., :-1, :]], axis=-2)
    else:
        s_state = np.broadcast_to(numpy_ref.logsumexp(kv, axis=-3)[..., None, :, :], kv.shape)
        z_state = np.broadcast_to(numpy_ref.logsumexp(k, axis=-2)[..., None, :], k.shape)
    log_s = _lse_any(q[..., :, :, None] + s_state, axis=-2)
    log_z = _lse_any(q + z_state, axis=-1)
    return log_s - log_z[..., None] if with_z else log_s


def _lse_any(x, axis):
    # Like the oracle's logsumexp, but lets inf/NaN through, as a learner's overflowing code would.
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top, axis=axis)


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
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, causal=False), "causal: the LSE over keys must be cumulative over j <= i (LCSE, eq. 4), not over all keys"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, exclusive=True), "the cumulative LSE is off by one: token i must see itself (include key i)"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, with_z=False), "you forgot the normaliser: log Y = log S - log Z (eq. 2)"),
        Mistake(lambda q, k, log_v: _log_causal(q, k, log_v, naive=True), "stay in log space: exp(k) overflows at |k| ~ 800; use np.logaddexp.accumulate and logsumexp, never exp then log"),
    ],
    rtol=1e-9,
    atol=1e-8,
)
def _logspace_cases(rng):
    n, d_k, d_v = int(rng.integers(2, 6)) * 2 + 1, int(rng.integers(2, 6)), int(rng.integers(1, 4))

    def inputs(batch, n, size=1.0, offset=0.0):
        q, k = _qk(rng, batch, n, n, d_k, size, offset)
        return q, k, rng.normal(size=batch + (n, d_v))

    return [
        Case(f"n = {n}", inputs((), n)),
        Case("n = 1", inputs((), 1)),
        Case("batch and head dims", inputs((2, 3), n)),
        Case("large magnitudes (q, k ~ 800)", inputs((), n, 5.0, 800.0)),
        Case("very negative (q, k ~ -800)", inputs((), n, 5.0, -800.0)),
    ]
