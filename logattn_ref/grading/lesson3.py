"""Graded tasks of lesson 3 (the NumPy reference): log-cumsum-exp, the recurrent log-space step, signed V by
splitting, the stable any-sign step with running maxima, and chunked prefill.

The step and prefill tasks are *driven*: the check feeds the learner's function a whole sequence, token by
token (or chunk by chunk), passing back the state it returned, and compares every output and the final state
with the float64 oracle :mod:`logattn_ref.numpy_ref`.
"""

from __future__ import annotations

import numpy as np

from .. import numpy_ref
from .registry import Case, Mistake, task


def _inputs(rng, batch, n, d_k, d_v, size=1.0, offset=0.0, signed=True):
    q = rng.normal(size=batch + (n, d_k)) * size + offset
    k = rng.normal(size=batch + (n, d_k)) * size + offset
    v = rng.normal(size=batch + (n, d_v))
    return q, k, (v if signed else np.abs(v) + 0.1)


def _sizes(rng):
    return int(rng.integers(2, 6)) * 2 + 1, int(rng.integers(2, 6)), int(rng.integers(1, 4))


# ------------------------------------------------------------------------------------------------ 3.1


def _oracle_log_cumsum_exp(x, axis=-1):
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    prefixes = [numpy_ref.logsumexp(x[..., : i + 1], axis=-1) for i in range(x.shape[-1])]
    return np.moveaxis(np.stack(prefixes, axis=-1), -1, axis)


def _wrong_lcse_naive(x, axis=-1):
    return np.log(np.cumsum(np.exp(x), axis=axis))


def _wrong_lcse_global_shift(x, axis=-1):
    top = np.max(x)
    return np.log(np.cumsum(np.exp(x - top), axis=axis)) + top


def _wrong_lcse_exclusive(x, axis=-1):
    inclusive = np.moveaxis(np.logaddexp.accumulate(x, axis=axis), axis, -1)
    shifted = np.concatenate([np.full_like(inclusive[..., :1], -np.inf), inclusive[..., :-1]], axis=-1)
    return np.moveaxis(shifted, -1, axis)


@task(
    "3.1",
    "log-cumsum-exp",
    points=1,
    concept="out_i = LSE_{j<=i} x_j, accumulated in log space: out_i = logaddexp(out_{i-1}, x_i), never exp then log",
    hints=[
        "np.log(np.cumsum(np.exp(x))) is right on paper and overflows at x ~ 1000 (and gives log(0) at x ~ -1000).",
        "logaddexp(a, b) = log(exp(a) + exp(b)) computed stably; a running log-sum is a running logaddexp.",
        "return np.logaddexp.accumulate(x, axis=axis)",
    ],
    reference=_oracle_log_cumsum_exp,
    mistakes=[
        Mistake(_wrong_lcse_naive, "exp overflows at |x| ~ 1000: accumulate in log space with np.logaddexp.accumulate"),
        Mistake(_wrong_lcse_global_shift, "one global shift by max(x) underflows the early prefixes, which lie far below it: accumulate with np.logaddexp instead"),
        Mistake(_wrong_lcse_exclusive, "off by one: the prefix at position i includes x_i itself"),
        Mistake(lambda x, axis=-1: np.logaddexp.accumulate(x, axis=-1), "use the axis argument: accumulate along `axis`, not always the last one"),
    ],
    rtol=1e-10,
    atol=1e-10,
)
def _lcse_cases(rng):
    n = int(rng.integers(3, 8)) * 2 + 1
    spread = rng.normal(size=n) * 3
    spread[rng.integers(0, n)] = 1000.0  # one huge entry in the middle of small ones
    masked = rng.normal(size=(3, n))
    masked[:, :2] = -np.inf  # an empty prefix is -inf (the log of an empty sum)
    return [
        Case(f"a vector of {n}", (rng.normal(size=n) * 3,)),
        Case("n = 1", (rng.normal(size=1),)),
        Case("rows, axis=-1", (rng.normal(size=(4, n)),), {"axis": -1}),
        Case("the token axis of [batch, n, d] (axis=-2)", (rng.normal(size=(2, n, 3)),), {"axis": -2}, hint="use the axis argument"),
        Case("large values (~1000)", (rng.uniform(900, 1100, size=(2, n)),)),
        Case("one huge entry among small ones", (spread,)),
        Case("leading -inf entries", (masked,)),
    ]


# ------------------------------------------------------------------------------------------------ 3.2


def _drive_log_step(fn, case):
    q, k, log_v = case.args
    state, outputs = None, []
    for t in range(q.shape[-2]):
        result = fn(state, q[..., t, :], k[..., t, :], log_v[..., t, :])
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], tuple) and len(result[1]) == 2):
            raise TypeError("log_step must return (log_y_t, (log_s, log_z))")
        y_t, state = result
        outputs.append(np.asarray(y_t, dtype=np.float64))
    return (np.stack(outputs, axis=-2),) + tuple(np.asarray(s, dtype=np.float64) for s in state)


def _oracle_log_state(q, k, v):
    """(log Y, H^(S), H^(Z)) for V > 0 from the oracle: its state, H^(S) = log(sum_kv) + key_max (eq. 6)."""
    log_y = numpy_ref.log_attention_logspace(q, k, np.log(v), causal=True)
    _, state = numpy_ref.prefill(numpy_ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1]), q, k, v)
    log_s = np.log(state.sum_kv) + state.key_max[..., :, None]
    log_z = np.log(state.sum_k) + state.key_max
    return log_y, log_s, log_z


def _log_step(state, q_t, k_t, log_v_t, *, empty=-np.inf, before=False, plain_add=False, with_z=True):
    if state is None:
        shape = q_t.shape[:-1]
        state = (np.full(shape + (q_t.shape[-1], log_v_t.shape[-1]), empty), np.full(shape + (q_t.shape[-1],), empty))
    log_s, log_z = state
    if not before:
        log_s, log_z = _add_token(log_s, log_z, k_t, log_v_t, plain_add)
    with np.errstate(all="ignore"):
        num = _lse(q_t[..., :, None] + log_s, axis=-2)
        log_y = num - _lse(q_t + log_z, axis=-1)[..., None] if with_z else num
    if before:
        log_s, log_z = _add_token(log_s, log_z, k_t, log_v_t, plain_add)
    return log_y, (log_s, log_z)


def _add_token(log_s, log_z, k_t, log_v_t, plain_add):
    kv = k_t[..., :, None] + log_v_t[..., None, :]
    if plain_add:
        return log_s + kv, log_z + k_t
    return np.logaddexp(log_s, kv), np.logaddexp(log_z, k_t)


def _lse(x, axis):
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top, axis=axis)


@task(
    "3.2",
    "The recurrent step in log space (eqs. 5-6)",
    points=2,
    concept="the log-space state H^(S), H^(Z) starts EMPTY at -inf (log of an empty sum; the paper's eq. 7 starts at 0, "
    "a phantom token) and absorbs token t by logaddexp (eq. 6) before it is read (eq. 5)",
    hints=[
        "state is None before the first token: create log_s = H^(S) [..., d_k, d_v] and log_z = H^(Z) [..., d_k] "
        "filled with -inf, the log of 0.",
        "Add token t first: log_s = logaddexp(log_s, k_t[..., :, None] + log_v_t[..., None, :]), log_z = logaddexp(log_z, k_t).",
        "Then log y_t = log S_t - log Z_t = LSE_f(q_tf + log_s_f) - LSE_f(q_tf + log_z_f); return log_y_t, (log_s, log_z)",
    ],
    reference=None,
    expected=lambda case: _oracle_log_state(case.args[0], case.args[1], np.exp(case.args[2])),
    call=_drive_log_step,
    mistakes=[
        Mistake(lambda *a: _log_step(*a, empty=0.0), "the empty log-space state must be -inf (the log of an empty sum), not 0 (= log 1, a phantom token)"),
        Mistake(lambda *a: _log_step(*a, before=True), "update the state with token t BEFORE reading y_t: token t must see itself"),
        Mistake(lambda *a: _log_step(*a, plain_add=True), "adding a token to a log-space sum is np.logaddexp(log_s, k_t + log_v_t), not +"),
        Mistake(lambda *a: _log_step(*a, with_z=False), "you forgot the normaliser: log y_t = log S_t - log Z_t = LSE_f(q_t + H^(S)) - LSE_f(q_t + H^(Z))"),
    ],
    rtol=1e-9,
    atol=1e-8,
)
def _log_step_cases(rng):
    n, d_k, d_v = _sizes(rng)

    def inputs(batch, n, size=1.0, offset=0.0):
        q, k, v = _inputs(rng, batch, n, d_k, d_v, size, offset, signed=False)
        return q, k, np.log(v)

    return [
        Case(f"n = {n}", inputs((), n)),
        Case("n = 1 (the first token meets the empty state)", inputs((), 1)),
        Case("batch and head dims", inputs((2, 3), n)),
        Case("large magnitudes (q, k ~ 800)", inputs((), n, 5.0, 800.0)),
    ]


# ------------------------------------------------------------------------------------------------ 3.3


def _split_attention(q, k, v, *, combine="difference", keep_negative=True):
    def log_part(part):
        with np.errstate(divide="ignore"):
            return numpy_ref.log_attention_logspace(q, k, np.log(part), causal=True)

    log_pos = log_part(np.maximum(v, 0.0))
    log_neg = log_part(np.maximum(-v, 0.0))
    if not keep_negative:
        return np.exp(log_pos)
    if combine == "ratio":
        return np.exp(log_pos - log_neg)
    return np.exp(log_pos) - np.exp(log_neg)


@task(
    "3.3",
    "Signed V by splitting V = V+ - V-",
    points=2,
    concept="log needs V > 0: attend to V+ = max(V, 0) and V- = max(-V, 0) separately in log space, then Y = exp(log Y+) - exp(log Y-)",
    hints=[
        "Attention is linear in V: attention(V+ - V-) = attention(V+) - attention(V-), and both parts are >= 0.",
        "np.log(0) = -inf is a valid log_v: it means v = 0 and gets weight 0 (silence the divide warning with np.errstate).",
        "y = exp(log_attention_logspace(q, k, log(max(v, 0)))) - exp(log_attention_logspace(q, k, log(max(-v, 0))))",
    ],
    reference=lambda q, k, v: numpy_ref.log_attention(q, k, v, causal=True),
    mistakes=[
        Mistake(lambda q, k, v: _split_attention(q, k, np.abs(v)), "the sign is lost: split V = V+ - V- (V+ = max(V, 0), V- = max(-V, 0)), attend to each, subtract"),
        Mistake(lambda q, k, v: _split_attention(q, k, v, keep_negative=False), "you dropped V-: attend to V- = max(-V, 0) too and subtract it"),
        Mistake(lambda q, k, v: _split_attention(q, k, v, combine="ratio"), "Y = exp(log Y+) - exp(log Y-), a difference, not exp(log Y+ - log Y-)"),
    ],
    rtol=1e-8,
    atol=1e-10,
)
def _signed_cases(rng):
    n, d_k, d_v = _sizes(rng)
    d_v = max(d_v, 2)
    with_zeros = _inputs(rng, (), n, d_k, d_v)
    v = with_zeros[2].copy()
    v[rng.random(size=v.shape) < 0.3] = 0.0
    v[:, 0] = -np.abs(v[:, 0])  # a column that is never positive: V+ is 0 there, log V+ = -inf
    cases = [
        (f"n = {n}", _inputs(rng, (), n, d_k, d_v)),
        ("n = 1", _inputs(rng, (), 1, d_k, d_v)),
        ("batch and head dims", _inputs(rng, (2, 3), n, d_k, d_v)),
        ("zeros and an all-negative column in V", with_zeros[:2] + (v,)),
        ("large magnitudes (q, k ~ 300)", _inputs(rng, (), n, d_k, d_v, 5.0, 300.0)),
    ]
    return [Case(name, args, scale=args[2]) for name, args in cases]


# ------------------------------------------------------------------------------------------------ 3.4


def _as_state(returned, previous: numpy_ref.LogAttentionState, consumed: int) -> numpy_ref.LogAttentionState:
    if isinstance(returned, numpy_ref.LogAttentionState):
        return returned
    if isinstance(returned, tuple) and len(returned) == 3:
        sum_kv, sum_k, key_max = (np.asarray(x, dtype=np.float64) for x in returned)
        return numpy_ref.LogAttentionState(sum_kv, sum_k, key_max, previous.count + consumed)
    raise TypeError(
        "the new state must be a LogAttentionState or a tuple (sum_kv, sum_k, key_max), "
        f"got {type(returned).__name__}"
    )


def _drive_stable_step(fn, case):
    q, k, v = case.args
    state = numpy_ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1])
    outputs = []
    for t in range(q.shape[-2]):
        result = fn(state, q[..., t, :], k[..., t, :], v[..., t, :])
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("stable_step must return (y_t, new_state)")
        outputs.append(np.asarray(result[0], dtype=np.float64))
        state = _as_state(result[1], state, 1)
    return (np.stack(outputs, axis=-2), state.sum_kv, state.sum_k, state.key_max)


def _oracle_run(case):
    q, k, v = case.args
    y = numpy_ref.log_attention(q, k, v, causal=True)
    _, state = numpy_ref.prefill(numpy_ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1]), q, k, v)
    return (y, state.sum_kv, state.sum_k, state.key_max)


def _stable_step(state, q_t, k_t, v_t, *, decay=True, use_max=True, before=False, with_z=True):
    if use_max:
        new_max = np.maximum(state.key_max, k_t)
    else:
        new_max = np.zeros_like(k_t)
    factor = np.exp(state.key_max - new_max) if (decay and use_max) else np.ones_like(k_t)
    key_weight = np.exp(k_t - new_max)
    sum_kv = factor[..., :, None] * state.sum_kv + key_weight[..., :, None] * v_t[..., None, :]
    sum_k = factor * state.sum_k + key_weight
    read_kv, read_k, read_max = (state.sum_kv, state.sum_k, state.key_max) if before else (sum_kv, sum_k, new_max)
    logit = q_t + read_max
    top = np.max(logit, axis=-1, keepdims=True)
    weight = np.exp(logit - np.where(np.isfinite(top), top, 0.0))
    num = np.einsum("...f,...fd->...d", weight, read_kv)
    y = num / np.einsum("...f,...f->...", weight, read_k)[..., None] if with_z else num
    return y, numpy_ref.LogAttentionState(sum_kv, sum_k, new_max, state.count + 1)


@task(
    "3.4",
    "The stable any-sign step with running maxima (linear space)",
    points=3,
    concept="keep m_f = max_j k_jf and store sums of exp(k - m) <= 1; when m grows, rescale the old sums by exp(m_old - m_new)",
    hints=[
        "state.key_max starts at -inf, state.sum_kv and state.sum_k at 0. Every stored exponential must be <= 1.",
        "new_max = max(key_max, k_t); decay = exp(key_max - new_max) (0 for the empty state); sums = decay * sums + exp(k_t - new_max) * v_t.",
        "Read y_t from the NEW state: w = exp(q_t + new_max - max_f(q_t + new_max)); y_t = (w @ sum_kv) / (w @ sum_k)",
    ],
    reference=None,
    expected=_oracle_run,
    call=_drive_stable_step,
    mistakes=[
        Mistake(lambda *a: _stable_step(*a, decay=False), "when the running max grows, rescale the old sums by exp(old_max - new_max) before adding the new token"),
        Mistake(lambda *a: _stable_step(*a, use_max=False), "keep a running max m_f = max(m_f, k_tf) and store exp(k - m): exp(k) overflows at k ~ 1000"),
        Mistake(lambda *a: _stable_step(*a, before=True), "add token t to the state BEFORE reading y_t: token t must see itself"),
        Mistake(lambda *a: _stable_step(*a, with_z=False), "you forgot the normaliser Z: divide by w . sum_k"),
    ],
    rtol=1e-9,
    atol=1e-10,
)
def _stable_cases(rng):
    n, d_k, d_v = _sizes(rng)
    growing = _inputs(rng, (), n, d_k, d_v)
    growing = (growing[0], growing[1] + np.linspace(0.0, 1000.0, n)[:, None], growing[2])
    cases = [
        (f"n = {n}", _inputs(rng, (), n, d_k, d_v)),
        ("n = 1", _inputs(rng, (), 1, d_k, d_v)),
        ("batch and head dims", _inputs(rng, (2, 3), n, d_k, d_v)),
        ("keys that keep growing (0 -> 1000)", growing),
        ("large magnitudes of both signs (~1000)", _inputs(rng, (), n, d_k, d_v, 1000.0)),
    ]
    return [Case(name, args, scale=args[2]) for name, args in cases]


# ------------------------------------------------------------------------------------------------ 3.5


def _drive_prefill(fn, case):
    q, k, v = case.args
    state = numpy_ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1])
    outputs, start = [], 0
    for size in case.kwargs["chunks"]:
        stop = start + size
        result = fn(state, q[..., start:stop, :], k[..., start:stop, :], v[..., start:stop, :])
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("prefill_chunk must return (y, new_state)")
        outputs.append(np.asarray(result[0], dtype=np.float64))
        state = _as_state(result[1], state, size)
        start = stop
    return (np.concatenate(outputs, axis=-2), state.sum_kv, state.sum_k, state.key_max)


def _prefill_chunk(state, q, k, v, *, use_past=True, mask_k=0, decay=True):
    c = q.shape[-2]
    with np.errstate(invalid="ignore"):
        past_logit = q + state.key_max[..., None, :]  # -inf where a feature has seen no token
    if not use_past:
        past_logit = np.full_like(past_logit, -np.inf)
    intra = _lse(q[..., :, None, :] + k[..., None, :, :], axis=-1)  # [..., c, c]
    intra = np.where(np.tril(np.ones((c, c), dtype=bool), k=mask_k), intra, -np.inf)
    row_max = np.maximum(np.max(past_logit, axis=-1), np.max(intra, axis=-1))
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    past_weight = np.exp(past_logit - row_max[..., None])
    intra_weight = np.exp(intra - row_max[..., None])
    num = past_weight @ state.sum_kv + intra_weight @ v
    den = past_weight @ state.sum_k[..., :, None] + intra_weight.sum(-1, keepdims=True)
    new_max = np.maximum(state.key_max, np.max(k, axis=-2))
    factor = np.exp(state.key_max - new_max) if decay else np.ones_like(new_max)
    key_weight = np.exp(k - new_max[..., None, :])
    new_state = numpy_ref.LogAttentionState(
        factor[..., :, None] * state.sum_kv + np.swapaxes(key_weight, -1, -2) @ v,
        factor * state.sum_k + key_weight.sum(-2),
        new_max,
        state.count + c,
    )
    return num / den, new_state


@task(
    "3.5",
    "Chunked prefill: the past from the state, the chunk quadratically",
    points=3,
    concept="query i of a chunk attends to the past through the state (exp(q_i + m) . sum_kv) and to keys j <= i of its own chunk "
    "through exp(s_ij); both terms share one per-row max shift",
    hints=[
        "Two sources of weight: the tokens already in the state, weight exp(q_if + m_f) per feature, and the chunk's keys j <= i, "
        "weight exp(s_ij) with s_ij = LSE_f(q_if + k_jf).",
        "Shift both logits by the same row max M_i = max(max_f(q_if + m_f), max_{j<=i} s_ij) so the largest weight is 1 "
        "(q + key_max is -inf for an empty state: that is fine, it gives weight 0).",
        "y = (exp(past - M) @ sum_kv + exp(intra - M) @ v) / (exp(past - M) @ sum_k + exp(intra - M).sum(-1)); then update the "
        "state as in task 3.4 with max over the chunk's keys.",
    ],
    reference=None,
    expected=_oracle_run,
    call=_drive_prefill,
    mistakes=[
        Mistake(lambda *a: _prefill_chunk(*a, use_past=False), "tokens of earlier chunks live in the state: add exp(q_i + m) . sum_kv to the numerator and exp(q_i + m) . sum_k to the denominator"),
        Mistake(lambda *a: _prefill_chunk(*a, mask_k=-1), "the intra-chunk causal mask is off by one: token i must see itself"),
        Mistake(lambda *a: _prefill_chunk(*a, mask_k=10**9), "inside the chunk, query i must not see keys j > i: mask the intra-chunk similarities with -inf"),
        Mistake(lambda *a: _prefill_chunk(*a, decay=False), "when the running max grows, rescale the old sums by exp(old_max - new_max)"),
    ],
    rtol=1e-9,
    atol=1e-10,
)
def _prefill_cases(rng):
    n, d_k, d_v = _sizes(rng)
    n += 6

    def chunks(total):
        sizes = []
        while total > 0:
            sizes.append(int(min(total, rng.integers(1, 6))))
            total -= sizes[-1]
        return sizes

    growing = _inputs(rng, (), n, d_k, d_v)
    growing = (growing[0], growing[1] + np.linspace(0.0, 1000.0, n)[:, None], growing[2])
    cases = [
        (f"n = {n} in random chunks", _inputs(rng, (), n, d_k, d_v), chunks(n)),
        ("one chunk of n = 1", _inputs(rng, (), 1, d_k, d_v), [1]),
        ("the whole sequence as one chunk", _inputs(rng, (), n, d_k, d_v), [n]),
        ("chunks of 1 (the recurrent step)", _inputs(rng, (), 5, d_k, d_v), [1] * 5),
        ("batch and head dims", _inputs(rng, (2, 3), n, d_k, d_v), chunks(n)),
        ("keys that keep growing (0 -> 1000)", growing, chunks(n)),
        ("large magnitudes of both signs (~1000)", _inputs(rng, (), n, d_k, d_v, 1000.0), chunks(n)),
    ]
    return [Case(name, args, {"chunks": sizes}, scale=args[2]) for name, args, sizes in cases]
