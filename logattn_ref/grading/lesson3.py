"""Graded tasks of lesson 3 (the NumPy reference): log-cumsum-exp, the recurrent log-space step, signed V by
splitting, the stable any-sign step with running maxima, and chunked prefill.

The step and prefill tasks are *driven*: the check feeds the learner's function a whole sequence, token by
token (or chunk by chunk), passing back the state it returned, and compares every output and the final state
(every field, the token count included) with the float64 oracle :mod:`logattn_ref.numpy_ref`. The drivers give
the learner's function its own copies of the token's inputs and fail, naming the input, when it changes one in
place (the state it was passed included).

Every task runs fixed corner cases first (built from constant seeds, so they are the same on every check), each
named by what it probes, then fresh random draws.
"""

from __future__ import annotations

import copy

import numpy as np

from .. import numpy_ref
from .checker import _same_value
from .registry import Case, InputModified, Mistake, task


def _inputs(rng, batch, n, d_k, d_v, size=1.0, offset=0.0, signed=True):
    q = rng.normal(size=batch + (n, d_k)) * size + offset
    k = rng.normal(size=batch + (n, d_k)) * size + offset
    v = rng.normal(size=batch + (n, d_v))
    return q, k, (v if signed else np.abs(v) + 0.1)


def _fixed(seed, batch, n, d_k, d_v, size=1.0, offset=0.0, signed=True):
    """Inputs from a constant seed: a corner case is the same on every check."""
    return _inputs(np.random.default_rng(seed), batch, n, d_k, d_v, size, offset, signed)


def _sizes(rng):
    return int(rng.integers(2, 6)) * 2 + 1, int(rng.integers(2, 6)), int(rng.integers(1, 4))


def _call_unmodified(fn, args, names):
    """``fn(*args)`` on copies of ``args``; raise InputModified naming the first argument it changed in place."""
    given = copy.deepcopy(args)
    result = fn(*given)
    for name, after, before in zip(names, given, args):
        if not _same_value(after, before):
            raise InputModified(f"your function changed its input `{name}` in place")
    return result


def _lse_unshifted(x, axis):
    with np.errstate(all="ignore"):
        return np.log(np.sum(np.exp(x), axis=axis))


def _lse_unguarded(x, axis):
    top = np.max(x, axis=axis, keepdims=True)
    with np.errstate(all="ignore"):
        return np.squeeze(np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top, axis=axis)


def _lse_one_max(x, axis):
    top = np.max(x[np.isfinite(x)]) if np.isfinite(x).any() else 0.0
    with np.errstate(all="ignore"):
        return np.log(np.sum(np.exp(x - top), axis=axis)) + top


_SHAPES = ("d_v != d_k here: the state H^(S) / sum_kv is [..., d_k, d_v], summed over the key features f (axis -2); "
           "the output is [..., d_v]")

# ------------------------------------------------------------------------------------------------ 3.1


def _oracle_log_cumsum_exp(x, axis=-1):
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    prefixes = [numpy_ref.logsumexp(x[..., : i + 1], axis=-1) for i in range(x.shape[-1])]
    return np.moveaxis(np.stack(prefixes, axis=-1), -1, axis)


def _wrong_lcse_naive(x, axis=-1):
    return np.log(np.cumsum(np.exp(x), axis=axis))


def _wrong_lcse_shift(x, axis=-1, *, how):
    finite = np.where(np.isfinite(x), x, np.nan)
    if how == "array max":
        shift = np.nanmax(finite)
    elif how == "row max":
        shift = np.max(x, axis=axis, keepdims=True)
    elif how == "mean":
        seen = np.isfinite(x)
        shift = np.sum(np.where(seen, x, 0.0), axis=axis, keepdims=True) / np.maximum(np.sum(seen, axis=axis, keepdims=True), 1)
    else:  # the first entry
        shift = np.take(x, [0], axis=axis)
    return np.log(np.cumsum(np.exp(x - shift), axis=axis)) + shift


def _wrong_lcse_unguarded(x, axis=-1):
    x = np.moveaxis(x, axis, -1)
    out = np.empty_like(x)
    out[..., 0] = x[..., 0]
    for i in range(1, x.shape[-1]):
        top = np.maximum(out[..., i - 1], x[..., i])  # -inf when both are -inf: -inf - -inf = NaN below
        out[..., i] = top + np.log(np.exp(out[..., i - 1] - top) + np.exp(x[..., i] - top))
    return np.moveaxis(out, -1, axis)


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
        Mistake(_wrong_lcse_exclusive, "off by one: the prefix at position i includes x_i itself"),
        Mistake(lambda x, axis=-1: np.logaddexp.accumulate(x, axis=-1), "use the axis argument: accumulate along `axis`, not always the last one"),
        Mistake(lambda x, axis=-1: np.logaddexp.accumulate(x), "np.logaddexp.accumulate runs along axis 0 unless told: "
                "pass axis=axis"),
        Mistake(lambda x, axis=-1: np.cumsum(x, axis=axis), "LSE is log(sum(exp(x))), not a sum of the x themselves: "
                "accumulate with np.logaddexp.accumulate"),
        Mistake(lambda x, axis=-1: np.maximum.accumulate(x, axis=axis), "a running max is only the largest term of a "
                "log-sum-exp; LSE adds log(sum exp(x - max)) >= 0 to it: accumulate with np.logaddexp"),
        Mistake(_wrong_lcse_unguarded, "an empty prefix (every entry so far -inf) must stay -inf: your running max is -inf "
                "there and -inf - (-inf) = NaN; guard it, or let np.logaddexp.accumulate do it"),
        Mistake(lambda x, axis=-1: _wrong_lcse_shift(x, axis, how="row max"), "one shift by the row's max underflows the early "
                "prefixes that lie ~1000 below it (log 0 = -inf): accumulate with np.logaddexp, which shifts every step by its own max"),
        Mistake(lambda x, axis=-1: _wrong_lcse_shift(x, axis, how="array max"), "one shift by the max of the whole array "
                "underflows a row whose entries lie far below it: each prefix needs its own shift, which np.logaddexp.accumulate applies"),
        Mistake(lambda x, axis=-1: _wrong_lcse_shift(x, axis, how="mean"), "shifting by the mean does not stabilise: entries "
                "~1000 above the mean overflow exp and those far below it underflow; accumulate in log space with np.logaddexp"),
        Mistake(lambda x, axis=-1: _wrong_lcse_shift(x, axis, how="first"), "shifting by the first entry fails when later entries "
                "rise ~1000 above it (exp overflows): each step of a running logaddexp shifts by its own max"),
        Mistake(_wrong_lcse_naive, "exp overflows at |x| ~ 1000: accumulate in log space with np.logaddexp.accumulate"),
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
    fixed = np.random.default_rng(31)
    rows_apart = fixed.normal(size=(2, 7))
    rows_apart[1] += 900.0
    rising = np.linspace(-300.0, 1200.0, 9) + fixed.normal(size=9)
    huge_first = fixed.normal(size=(2, 6))
    huge_first[:, 0] = 1000.0
    empty = fixed.normal(size=(2, 6))
    empty[0, :2] = -np.inf
    empty[1] = -np.inf
    token_axis = fixed.normal(size=(2, 5, 3)) * 300.0
    return [
        Case("rows whose maxima lie ~900 apart (one shift for the whole array underflows the lower row)", (rows_apart,),
             corner=True, hint="rows ~900 apart: one shift for the whole array underflows the lower row; "
             "np.logaddexp.accumulate shifts every prefix by its own max"),
        Case("a row whose entries span ~1500 (-300 ... 1200, rising)", (rising,), corner=True,
             hint="exp overflows past ~709 and underflows below ~-745, so no one shift fits every prefix of a row "
             "spanning 1500: accumulate in log space with np.logaddexp"),
        Case("a huge entry (1000) at index 0, then small ones", (huge_first,), corner=True,
             hint="exp(1000) overflows: accumulate in log space with np.logaddexp"),
        Case("leading -inf entries, and a row that is all -inf (empty prefixes stay -inf)", (empty,), corner=True,
             hint="an empty prefix stays -inf: -inf - (-inf) = NaN, so guard a max that is -inf, or use np.logaddexp.accumulate"),
        Case("the token axis of [batch, n, d] (axis=-2), entries ~300", (token_axis,), {"axis": -2}, corner=True,
             hint="use the axis argument"),
        Case("n = 1", (np.array([0.25]),), corner=True),
        Case(f"a vector of {n}", (rng.normal(size=n) * 3,)),
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
        result = _call_unmodified(fn, (state, q[..., t, :], k[..., t, :], log_v[..., t, :]), ("state", "q_t", "k_t", "log_v_t"))
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], tuple) and len(result[1]) == 2):
            raise TypeError("log_step must return (log_y_t, (log_s, log_z))")
        y_t, state = result
        outputs.append(np.asarray(y_t, dtype=np.float64))
    return tuple(_log_zero(x) for x in (np.stack(outputs, axis=-2),) + tuple(state))


def _log_zero(x):
    """float64, with a sentinel for log 0 (-1e30, -1e9: its exp is exactly 0, as exp(-inf)) read as -inf."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x < -1e8, -np.inf, x)


def _oracle_log_state(q, k, log_v):
    """(log Y, H^(S), H^(Z)) for V >= 0 from the oracle: its state, H^(S) = log(sum_kv) + key_max (eq. 6)."""
    log_y = numpy_ref.log_attention_logspace(q, k, log_v, causal=True)
    _, state = numpy_ref.prefill(numpy_ref.initial_state(q.shape[:-2], q.shape[-1], log_v.shape[-1]), q, k, np.exp(log_v))
    with np.errstate(divide="ignore"):  # a value column that is 0 so far has H^(S) = log 0 = -inf
        log_s = np.log(state.sum_kv) + state.key_max[..., :, None]
    log_z = np.log(state.sum_k) + state.key_max
    return log_y, log_s, log_z


# numpy_ref._logsumexp, not the public one: a known mistake's overflow (inf, NaN) must pass through, not be refused.
def _log_step(state, q_t, k_t, log_v_t, *, empty=-np.inf, before=False, plain_add=False, with_z=True,
              linear_add=False, lse=numpy_ref._logsumexp):
    if state is None:
        shape = q_t.shape[:-1]
        state = (np.full(shape + (q_t.shape[-1], log_v_t.shape[-1]), empty), np.full(shape + (q_t.shape[-1],), empty))
    log_s, log_z = state
    if not before:
        log_s, log_z = _add_token(log_s, log_z, k_t, log_v_t, plain_add, linear_add)
    with np.errstate(all="ignore"):
        num = lse(q_t[..., :, None] + log_s, axis=-2)
        log_y = num - lse(q_t + log_z, axis=-1)[..., None] if with_z else num
    if before:
        log_s, log_z = _add_token(log_s, log_z, k_t, log_v_t, plain_add, linear_add)
    return log_y, (log_s, log_z)


def _add_token(log_s, log_z, k_t, log_v_t, plain_add, linear_add):
    kv = k_t[..., :, None] + log_v_t[..., None, :]
    if plain_add:
        return log_s + kv, log_z + k_t
    if linear_add:
        with np.errstate(all="ignore"):
            return np.log(np.exp(log_s) + np.exp(kv)), np.log(np.exp(log_z) + np.exp(k_t))
    return np.logaddexp(log_s, kv), np.logaddexp(log_z, k_t)


def _log_step_cases(rng):
    n, d_k, d_v = _sizes(rng)

    def inputs(batch, n, size=1.0, offset=0.0, dims=(d_k, d_v), source=rng):
        q, k, v = _inputs(source, batch, n, dims[0], dims[1], size, offset, signed=False)
        return q, k, np.log(v)

    def fixed(seed, batch, n, dims, size=1.0, offset=0.0):
        return inputs(batch, n, size, offset, dims, np.random.default_rng(seed))

    high, low = fixed(321, (), 5, (3, 2), offset=400.0), fixed(322, (), 5, (3, 2), offset=-400.0)
    apart = fixed(323, (2,), 5, (3, 2))
    apart = (apart[0] + np.array([0.0, 450.0])[:, None, None], apart[1] + np.array([0.0, 450.0])[:, None, None], apart[2])
    rising = fixed(324, (), 7, (3, 2))
    rising = (rising[0], rising[1] + np.linspace(0.0, 1000.0, 7)[:, None], rising[2])
    huge_first = fixed(325, (), 6, (3, 2))
    huge_first[1][0] += 1000.0
    zero_value = fixed(326, (), 6, (3, 2))
    zero_value[2][:3, 0] = -np.inf
    past_range = ("q + k + log v ~ +-800 lies past exp's range: subtract the max inside every log-sum-exp "
                  "(numpy_ref.logsumexp)")
    big_keys = "keys ~1000: exp(k) overflows; keep the state in log space and add each token with np.logaddexp"
    return [
        Case("d_v != d_k (d_k = 2, d_v = 5)", fixed(320, (), 6, (2, 5)), corner=True, hint=_SHAPES),
        Case("q, k ~ +400 (q + k + log v past exp's range)", high, corner=True, hint=past_range),
        Case("q, k ~ -400 (exp(q + k) underflows to 0)", low, corner=True, hint=past_range),
        Case("batch rows whose logits lie ~900 apart", apart, corner=True,
             hint="take each log-sum-exp's max per query, over the feature axis (keepdims), not over the whole batch"),
        Case("keys rising by ~1000 across the sequence", rising, corner=True, hint=big_keys),
        Case("a huge key (~1000) at index 0, then small ones", huge_first, corner=True, hint=big_keys),
        Case("a value column that is 0 for the first 3 tokens (log v = -inf: log y_t = -inf there)", zero_value,
             corner=True, hint="log v = -inf means v = 0: a log-sum-exp over entries that are all -inf is -inf, not NaN "
             "(guard the max)"),
        Case("n = 1 (the first token meets the empty state)", fixed(327, (), 1, (3, 2)), corner=True),
        Case(f"n = {n}", inputs((), n)),
        Case("n = 1", inputs((), 1)),
        Case("batch and head dims", inputs((2, 3), n)),
        Case("large magnitudes (q, k ~ 800)", inputs((), n, 5.0, 800.0)),
    ]


task(
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
    expected=lambda case: _oracle_log_state(*case.args),
    call=_drive_log_step,
    output_names=("log_y", "H^(S) (log_s)", "H^(Z) (log_z)"),
    mistakes=[
        Mistake(lambda *a: _log_step(*a, empty=0.0), "the empty log-space state must be -inf (the log of an empty sum), not 0 (= log 1, a phantom token)"),
        Mistake(lambda *a: _log_step(*a, before=True), "update the state with token t BEFORE reading y_t: token t must see itself"),
        Mistake(lambda *a: _log_step(*a, plain_add=True), "adding a token to a log-space sum is np.logaddexp(log_s, k_t + log_v_t), not +"),
        Mistake(lambda *a: _log_step(*a, with_z=False), "you forgot the normaliser: log y_t = log S_t - log Z_t = LSE_f(q_t + H^(S)) - LSE_f(q_t + H^(Z))"),
        Mistake(lambda *a: _log_step(*a, lse=_lse_unguarded), "a log-sum-exp over entries that are all -inf (a value that is "
                "0 so far) is -inf: guard the max (-inf - (-inf) = NaN), e.g. with numpy_ref.logsumexp"),
        Mistake(lambda *a: _log_step(*a, lse=_lse_one_max), "take the log-sum-exp's max per query, over the feature axis "
                "(keepdims): one max over the whole batch underflows the rows that lie far below it"),
        Mistake(lambda *a: _log_step(*a, linear_add=True), "add a token to the log-space state with np.logaddexp: "
                "log(exp(H) + exp(k_t + log v_t)) leaves log space and overflows for keys ~ 1000"),
        Mistake(lambda *a: _log_step(*a, lse=_lse_unshifted), "log S_t = LSE_f(q_t + H^(S)) must subtract its max before exp: "
                "q + k ~ 800 overflows exp (and ~ -800 underflows to log 0); use numpy_ref.logsumexp"),
    ],
    rtol=1e-9,
    atol=1e-8,
)(_log_step_cases)


# ------------------------------------------------------------------------------------------------ 3.3


def _split_attention(q, k, v, *, combine="difference", keep_negative=True, negative="magnitude", causal=True):
    def log_part(part):
        with np.errstate(divide="ignore", invalid="ignore"):
            return numpy_ref.log_attention_logspace(q, k, np.log(part), causal=causal)

    log_pos = log_part(np.maximum(v, 0.0))
    if not keep_negative:
        return np.exp(log_pos)
    if negative == "signed":  # V- = min(V, 0): the log of a negative number
        with np.errstate(all="ignore"):
            kv = np.log(np.minimum(v, 0.0))
        log_neg = _logspace_nan_ok(q, k, kv)
    else:
        log_neg = log_part(np.maximum(-v, 0.0))
    if combine == "ratio":
        return np.exp(log_pos - log_neg)
    return np.exp(log_pos) - np.exp(log_neg)


def _logspace_nan_ok(q, k, log_v):
    """The causal log-space form, letting NaN in log_v through (the oracle refuses NaN)."""
    kv = k[..., :, :, None] + log_v[..., :, None, :]
    with np.errstate(all="ignore"):
        log_s = numpy_ref._logsumexp(q[..., :, :, None] + np.logaddexp.accumulate(kv, axis=-3), axis=-2)
        log_z = numpy_ref._logsumexp(q + np.logaddexp.accumulate(k, axis=-2), axis=-1)
    return log_s - log_z[..., None]


def _shifted_without_undo(q, k, v):
    with np.errstate(divide="ignore"):  # the smallest entry becomes 0: log 0 = -inf, weight 0
        return np.exp(numpy_ref.log_attention_logspace(q, k, np.log(v - np.min(v)), causal=True))


def _linear_unstabilised(q, k, v):
    with np.errstate(all="ignore"):
        weights = np.tril(np.exp(q) @ np.swapaxes(np.exp(k), -1, -2))
        return (weights @ v) / weights.sum(-1, keepdims=True)


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
        Mistake(_linear_unstabilised, "stay in log space: exp(q) exp(k)^T overflows once q + k passes ~709 (q, k ~ 400) and "
                "underflows to 0/0 near -745; attend to V+ and V- with log_attention_logspace"),
        Mistake(lambda q, k, v: _split_attention(q, k, v, negative="signed"), "V- = max(-V, 0) is the magnitude of the negative "
                "part, >= 0: the log of min(V, 0) is NaN"),
        Mistake(lambda q, k, v: _split_attention(q, k, v, combine="ratio"), "Y = exp(log Y+) - exp(log Y-), a difference, not exp(log Y+ - log Y-)"),
        Mistake(lambda q, k, v: _split_attention(q, k, v, keep_negative=False), "you dropped V-: attend to V- = max(-V, 0) too and subtract it"),
        Mistake(lambda q, k, v: _split_attention(q, k, np.abs(v)), "the sign is lost: split V = V+ - V- (V+ = max(V, 0), V- = max(-V, 0)), attend to each, subtract"),
        Mistake(lambda q, k, v: _split_attention(q, k, v, causal=False), "causal attention: query i sees keys j <= i only (causal=True)"),
        Mistake(_shifted_without_undo, "shifting V to make it positive is fine only if you add the shift back: the weights "
                "sum to 1, so attention(V - c) = attention(V) - c"),
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
    fixed_zeros = _fixed(331, (), 7, 3, 4)
    fixed_v = fixed_zeros[2].copy()
    fixed_v[::3, 1:] = 0.0
    fixed_v[:, 0] = -np.abs(fixed_v[:, 0]) - 0.1
    fixed_v[:, 1] = np.abs(fixed_v[:, 1])  # never negative: V- is 0 there, log V- = -inf
    apart = _fixed(332, (2,), 5, 3, 2)
    shift = np.array([0.0, 450.0])[:, None, None]
    huge_first = _fixed(333, (), 6, 3, 2)
    huge_first[1][0] += 1000.0
    hints = {
        "q, k ~": "stay in log space (log_attention_logspace on log V+ and log V-): exp(q) exp(k)^T overflows at "
                  "q + k ~ 800 and underflows to 0/0 at -800",
        "d_v != d_k": _SHAPES,
        "zeros,": "V+ = max(V, 0) and V- = max(-V, 0) are both >= 0; log 0 = -inf is a valid log_v (weight 0)",
    }
    cases = [
        ("d_v != d_k (d_k = 2, d_v = 5)", _fixed(330, (), 6, 2, 5), True),
        ("zeros, an all-negative and an all-positive column in V", fixed_zeros[:2] + (fixed_v,), True),
        ("q, k ~ +400 (exp(q) exp(k) overflows)", _fixed(334, (), 5, 3, 2, offset=400.0), True),
        ("q, k ~ -400 (exp(q) exp(k) underflows to 0)", _fixed(335, (), 5, 3, 2, offset=-400.0), True),
        ("batch rows whose logits lie ~900 apart", (apart[0] + shift, apart[1] + shift, apart[2]), True),
        ("a huge key (~1000) at index 0, then small ones", huge_first, True),
        ("n = 1", _fixed(336, (), 1, 3, 2), True),
        (f"n = {n}", _inputs(rng, (), n, d_k, d_v), False),
        ("batch and head dims", _inputs(rng, (2, 3), n, d_k, d_v), False),
        ("zeros and an all-negative column in V", with_zeros[:2] + (v,), False),
        ("large magnitudes (q, k ~ 300)", _inputs(rng, (), n, d_k, d_v, 5.0, 300.0), False),
    ]
    return [Case(name, args, scale=args[2], corner=corner,
                 hint=next((h for key, h in hints.items() if corner and name.startswith(key)), None))
            for name, args, corner in cases]


# ------------------------------------------------------------------------------------------------ 3.4


_STATE_FIELDS = "LogAttentionState(sum_kv, sum_k, key_max, count)"


def _as_state(returned) -> numpy_ref.LogAttentionState:
    """The learner's new state as a LogAttentionState; a tuple must carry every field, the count included."""
    if isinstance(returned, numpy_ref.LogAttentionState):
        return returned
    if isinstance(returned, tuple) and len(returned) == 4:
        sum_kv, sum_k, key_max = (np.asarray(x, dtype=np.float64) for x in returned[:3])
        return numpy_ref.LogAttentionState(sum_kv, sum_k, key_max, returned[3])
    raise TypeError(
        f"return the new state as {_STATE_FIELDS} (or a tuple of all four fields): every field, the token count "
        f"included, which advances by the tokens consumed; got {type(returned).__name__}"
        + (f" of {len(returned)}" if isinstance(returned, tuple) else "")
    )


def _state_fields(state: numpy_ref.LogAttentionState) -> tuple:
    return (np.asarray(state.sum_kv, dtype=np.float64), np.asarray(state.sum_k, dtype=np.float64),
            np.asarray(state.key_max, dtype=np.float64), np.asarray(state.count, dtype=np.float64))


def _drive_stable_step(fn, case):
    q, k, v = case.args
    state = numpy_ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1])
    outputs = []
    for t in range(q.shape[-2]):
        result = _call_unmodified(fn, (state, q[..., t, :], k[..., t, :], v[..., t, :]), ("state", "q_t", "k_t", "v_t"))
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("stable_step must return (y_t, new_state)")
        outputs.append(np.asarray(result[0], dtype=np.float64))
        state = _as_state(result[1])
    return (np.stack(outputs, axis=-2),) + _state_fields(state)


def _oracle_run(case):
    q, k, v = case.args
    y = numpy_ref.log_attention(q, k, v, causal=True)
    _, state = numpy_ref.prefill(numpy_ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1]), q, k, v)
    return (y,) + _state_fields(state)


def _stable_step(state, q_t, k_t, v_t, *, decay=True, use_max=True, before=False, with_z=True, count=True,
                 read="row max", token_max=False, inverted_decay=False, old_max_read=False):
    if not use_max:
        new_max = np.zeros_like(k_t)
    elif token_max:  # the running max taken from this token alone
        new_max = k_t
    else:
        new_max = np.maximum(state.key_max, k_t)
    with np.errstate(all="ignore"):
        factor = np.exp(state.key_max - new_max) if (decay and use_max) else np.ones_like(k_t)
        if inverted_decay:
            factor = np.where(np.isneginf(state.key_max), 0.0, np.exp(new_max - state.key_max))
        factor = np.where(np.isneginf(state.key_max), 0.0, factor) if token_max else factor
        key_weight = np.exp(k_t - new_max)
        sum_kv = factor[..., :, None] * state.sum_kv + key_weight[..., :, None] * v_t[..., None, :]
        sum_k = factor * state.sum_k + key_weight
        read_kv, read_k, read_max = (state.sum_kv, state.sum_k, state.key_max) if before else (sum_kv, sum_k, new_max)
        logit = q_t + (state.key_max if old_max_read else read_max)
        if read == "row max":
            top = np.max(logit, axis=-1, keepdims=True)
            weight = np.exp(logit - np.where(np.isfinite(top), top, 0.0))
        elif read == "batch max":
            weight = np.exp(logit - np.max(logit[np.isfinite(logit)]) if np.isfinite(logit).any() else logit)
        elif read == "own maxima":  # exp(q - max q) * exp(m - max m): each vector factored by its own max
            weight = np.exp(q_t - q_t.max(-1, keepdims=True)) * np.exp(read_max - read_max.max(-1, keepdims=True))
        else:  # unstabilised: exp(q) against sums of exp(k) (the stored sums times exp(m))
            weight = np.exp(q_t + read_max)
        num = np.einsum("...f,...fd->...d", weight, read_kv)
        y = num / np.einsum("...f,...f->...", weight, read_k)[..., None] if with_z else num
    return y, numpy_ref.LogAttentionState(sum_kv, sum_k, new_max, state.count + 1 if count else state.count)


_COUNT_MESSAGE = "advance the token count: the new state's count is state.count + (tokens consumed); every field of the state matters"


@task(
    "3.4",
    "The stable any-sign step with running maxima (linear space)",
    points=3,
    concept="keep m_f = max_j k_jf and store sums of exp(k - m) <= 1; when m grows, rescale the old sums by exp(m_old - m_new)",
    hints=[
        "state.key_max starts at -inf, state.sum_kv and state.sum_k at 0. Every stored exponential must be <= 1.",
        "new_max = max(key_max, k_t); decay = exp(key_max - new_max) (0 for the empty state); sums = decay * sums + exp(k_t - new_max) * v_t.",
        "Read y_t from the NEW state: w = exp(q_t + new_max - max_f(q_t + new_max)); y_t = (w @ sum_kv) / (w @ sum_k); "
        "return y_t, LogAttentionState(sum_kv, sum_k, new_max, state.count + 1)",
    ],
    reference=None,
    expected=_oracle_run,
    call=_drive_stable_step,
    output_names=("y", "sum_kv", "sum_k", "key_max", "count"),
    mistakes=[
        Mistake(lambda *a: _stable_step(*a, count=False), _COUNT_MESSAGE),
        Mistake(lambda *a: _stable_step(*a, before=True), "add token t to the state BEFORE reading y_t: token t must see itself"),
        Mistake(lambda *a: _stable_step(*a, with_z=False), "you forgot the normaliser Z: divide by w . sum_k"),
        Mistake(lambda *a: _stable_step(*a, decay=False), "when the running max grows, rescale the old sums by exp(old_max - new_max) before adding the new token"),
        Mistake(lambda *a: _stable_step(*a, inverted_decay=True), "the old sums shrink when the max grows: rescale them "
                "by exp(m_old - m_new) <= 1, not exp(m_new - m_old)"),
        Mistake(lambda *a: _stable_step(*a, old_max_read=True), "read y_t with the NEW max: the sums are measured "
                "against m_new, so the log-weights are q_t + m_new"),
        Mistake(lambda *a: _stable_step(*a, token_max=True), "the running max is max(m_old, k_t), over every token so far: a "
                "max from token t alone makes exp(m_old - m_new) overflow after a huge earlier key"),
        Mistake(lambda *a: _stable_step(*a, read="own maxima"), "shift the read's log-weights q_tf + m_f by ONE max over f: "
                "exp(q - max q) * exp(m - max m) underflows to 0/0 when q and m peak in different features"),
        Mistake(lambda *a: _stable_step(*a, read="batch max"), "shift each query's log-weights by its own max over f "
                "(axis=-1, keepdims): one max over the whole batch underflows the rows far below it (0/0)"),
        Mistake(lambda *a: _stable_step(*a, use_max=False), "keep a running max m_f = max(m_f, k_tf) and store exp(k - m): exp(k) overflows at k ~ 1000"),
        Mistake(lambda *a: _stable_step(*a, read="unstabilised"), "exp(q_t) . exp(m) overflows once q + k passes ~709 (q, k ~ 400) "
                "and underflows to 0/0 near -745: shift the read by the max of q_t + m over f"),
    ],
    rtol=1e-9,
    atol=1e-10,
)
def _stable_cases(rng):
    n, d_k, d_v = _sizes(rng)
    growing = _inputs(rng, (), n, d_k, d_v)
    growing = (growing[0], growing[1] + np.linspace(0.0, 1000.0, n)[:, None], growing[2])
    corners = [Case(name, args, scale=args[2], corner=True, hint=hint) for name, args, hint in _state_corners(341)]
    return corners + [Case(name, args, scale=args[2]) for name, args in [
        (f"n = {n}", _inputs(rng, (), n, d_k, d_v)),
        ("n = 1", _inputs(rng, (), 1, d_k, d_v)),
        ("batch and head dims", _inputs(rng, (2, 3), n, d_k, d_v)),
        ("keys that keep growing (0 -> 1000)", growing),
        ("large magnitudes of both signs (~1000)", _inputs(rng, (), n, d_k, d_v, 1000.0)),
    ]]


def _state_corners(seed):
    """Fixed corner cases shared by the step (3.4) and the chunked prefill (3.5): (name, (q, k, v), corner)."""
    peaks = _fixed(seed, (), 5, 3, 2)
    peaks[0][:, 0] += 800.0  # the queries peak in feature 0 ...
    peaks[1][:, 1] += 800.0  # ... the keys in feature 1
    apart = _fixed(seed + 1, (2,), 6, 3, 2)
    shift = np.array([0.0, 450.0])[:, None, None]
    rising = _fixed(seed + 2, (), 8, 3, 2)
    rising[1][:] += np.linspace(0.0, 1000.0, 8)[:, None]
    huge_first = _fixed(seed + 3, (), 8, 3, 2)
    huge_first[1][0] += 1000.0
    underflow = _fixed(seed + 4, (), 6, 3, 2)
    underflow[1][3] -= 1000.0  # a visible key whose weight is exactly 0 in float64
    return [
        ("d_v != d_k (d_k = 2, d_v = 5)", _fixed(seed + 5, (), 6, 2, 5), _SHAPES),
        ("q, k ~ +400 (exp(q) exp(k) overflows)", _fixed(seed + 6, (), 6, 3, 2, offset=400.0), _PAST_RANGE),
        ("q, k ~ -400 (exp(q) exp(k) underflows to 0)", _fixed(seed + 7, (), 6, 3, 2, offset=-400.0), _PAST_RANGE),
        ("queries and keys that peak ~800 high in different features", peaks,
         "shift the log-weights q_f + m_f by ONE max over f, not q and m each by their own max"),
        ("batch rows whose logits lie ~900 apart", (apart[0] + shift, apart[1] + shift, apart[2]),
         "every query row gets its own max (axis=-1, keepdims), not one max for the whole batch"),
        ("a huge key (~1000) at index 0, then small ones", huge_first,
         "the running max is max(m_old, k) over every token so far; exp(k - m) <= 1 always"),
        ("keys rising by ~1000 across the sequence", rising,
         "store exp(k - m) <= 1 with a running max m, and rescale the old sums by exp(m_old - m_new) when it grows"),
        ("a key ~1000 below the others (its weight underflows to exactly 0)", underflow,
         "a weight that underflows to exactly 0 is right: never take its log or divide by it"),
        ("n = 1", _fixed(seed + 8, (), 1, 3, 2), None),
    ]


_PAST_RANGE = ("q + k ~ +-800 lies past exp's range: store exp(k - m) and shift the read's log-weights by their max, "
               "so every exponential is <= 1")


# ------------------------------------------------------------------------------------------------ 3.5


def _drive_prefill(fn, case):
    q, k, v = case.args
    state = numpy_ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1])
    outputs, start = [], 0
    for size in case.kwargs["chunks"]:
        stop = start + size
        result = _call_unmodified(fn, (state, q[..., start:stop, :], k[..., start:stop, :], v[..., start:stop, :]),
                                  ("state", "q", "k", "v"))
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("prefill_chunk must return (y, new_state)")
        outputs.append(np.asarray(result[0], dtype=np.float64))
        state = _as_state(result[1])
        start = stop
    return (np.concatenate(outputs, axis=-2),) + _state_fields(state)


def _prefill_chunk(state, q, k, v, *, use_past=True, mask="causal", decay=True, count=True, chunk_max=False,
                   shift="row", similarity="lse"):
    c = q.shape[-2]
    with np.errstate(all="ignore"):
        past_logit = q + state.key_max[..., None, :]  # -inf where a feature has seen no token
        if not use_past:
            past_logit = np.full_like(past_logit, -np.inf)
        if similarity == "dot":
            intra = q @ np.swapaxes(k, -1, -2)
        elif similarity == "factored":  # exp(q - max q) . exp(k - max k): each vector by its own max
            q_top, k_top = q.max(-1, keepdims=True), k.max(-1, keepdims=True)
            intra = np.log(np.exp(q - q_top) @ np.swapaxes(np.exp(k - k_top), -1, -2)) + q_top + np.swapaxes(k_top, -1, -2)
        else:
            intra = numpy_ref._logsumexp(q[..., :, None, :] + k[..., None, :, :], axis=-1)  # [..., c, c]
        visible = {"causal": np.tril(np.ones((c, c), dtype=bool)), "strict": np.tril(np.ones((c, c), dtype=bool), -1),
                   "none": np.ones((c, c), dtype=bool), "inverted": np.triu(np.ones((c, c), dtype=bool))}[mask]
        intra = np.where(visible, intra, -np.inf)
        past_top, intra_top = np.max(past_logit, axis=-1), np.max(intra, axis=-1)
        if shift == "separate":  # each source shifted by its own max, then simply added
            past_top = np.where(np.isfinite(past_top), past_top, 0.0)
            intra_top = np.where(np.isfinite(intra_top), intra_top, 0.0)
        else:
            row_max = np.maximum(past_top, intra_top)
            if shift == "chunk":  # one max for the whole chunk
                row_max = np.broadcast_to(np.max(row_max, axis=-1, keepdims=True), row_max.shape)
            elif shift == "none":
                row_max = np.zeros_like(row_max)
            past_top = intra_top = np.where(np.isfinite(row_max), row_max, 0.0)
        past_weight = np.exp(past_logit - past_top[..., None])
        intra_weight = np.exp(intra - intra_top[..., None])
        old_kv, old_k = state.sum_kv, state.sum_k
        if shift == "none":  # unstabilised: the linear-space sums exp(H) themselves
            old_kv, old_k = old_kv * np.exp(state.key_max)[..., :, None], old_k * np.exp(state.key_max)
            past_weight = np.where(np.isneginf(state.key_max)[..., None, :], 0.0, np.exp(q))
        num = past_weight @ old_kv + intra_weight @ v
        den = past_weight @ old_k[..., :, None] + intra_weight.sum(-1, keepdims=True)
        new_max = np.max(k, axis=-2) if chunk_max else np.maximum(state.key_max, np.max(k, axis=-2))
        factor = np.exp(state.key_max - new_max) if decay else np.ones_like(new_max)
        key_weight = np.exp(k - new_max[..., None, :])
        new_state = numpy_ref.LogAttentionState(
            factor[..., :, None] * state.sum_kv + np.swapaxes(key_weight, -1, -2) @ v,
            factor * state.sum_k + key_weight.sum(-2),
            new_max,
            state.count + c if count else state.count,
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
        "state as in task 3.4 with max over the chunk's keys, and count + c.",
    ],
    reference=None,
    expected=_oracle_run,
    call=_drive_prefill,
    output_names=("y", "sum_kv", "sum_k", "key_max", "count"),
    mistakes=[
        Mistake(lambda *a: _prefill_chunk(*a, count=False), _COUNT_MESSAGE),
        Mistake(lambda *a: _prefill_chunk(*a, mask="inverted"), "the intra-chunk mask is inverted: query i sees keys j <= i "
                "(np.tril), not j >= i"),
        Mistake(lambda *a: _prefill_chunk(*a, mask="strict"), "the intra-chunk causal mask is off by one: token i must see itself"),
        Mistake(lambda *a: _prefill_chunk(*a, mask="none"), "inside the chunk, query i must not see keys j > i: mask the intra-chunk similarities with -inf"),
        Mistake(lambda *a: _prefill_chunk(*a, use_past=False), "tokens of earlier chunks live in the state: add exp(q_i + m) . sum_kv to the numerator and exp(q_i + m) . sum_k to the denominator"),
        Mistake(lambda *a: _prefill_chunk(*a, similarity="dot"), "the similarity is s_ij = LSE_f(q_if + k_jf) = log(exp(q_i) . exp(k_j)), not the dot product q_i . k_j"),
        Mistake(lambda *a: _prefill_chunk(*a, similarity="factored"), "compute s_ij = LSE_f(q_if + k_jf) with one max "
                "over f of q_if + k_jf: exp(q - max q) . exp(k - max k) underflows to log 0 when q and k peak in different features"),
        Mistake(lambda *a: _prefill_chunk(*a, chunk_max=True), "the running max is max(m_old, max of the chunk's keys): a max "
                "from the chunk alone makes exp(m_old - m_new) overflow after a huge key in an earlier chunk"),
        Mistake(lambda *a: _prefill_chunk(*a, decay=False), "when the running max grows, rescale the old sums by exp(old_max - new_max)"),
        Mistake(lambda *a: _prefill_chunk(*a, shift="separate"), "the past and the chunk must share ONE per-row max M_i: "
                "shifting each by its own max and adding them weighs the two sources wrongly"),
        Mistake(lambda *a: _prefill_chunk(*a, shift="chunk"), "shift each query row by its own max M_i: one max for the "
                "whole chunk (or batch) underflows the rows far below it (0/0)"),
        Mistake(lambda *a: _prefill_chunk(*a, shift="none"), "unshifted exponentials overflow once q + k passes ~709 "
                "(q, k ~ 400) and underflow to 0/0 near -745: shift both sources by the row max M_i"),
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

    fixed_chunks = {1: [1], 5: [2, 3], 6: [2, 3, 1], 8: [1, 3, 4]}
    rows = _fixed(359, (), 6, 3, 2)
    rows[0][1::2] -= 900.0  # odd query rows lie ~900 below the even ones, in the same chunk
    corners = _state_corners(351) + [("query rows of one chunk ~900 apart", rows,
                                       "shift each query row by its own max M_i, not one max for the chunk")]
    growing = _inputs(rng, (), n, d_k, d_v)
    growing = (growing[0], growing[1] + np.linspace(0.0, 1000.0, n)[:, None], growing[2])
    corners.append(("one chunk of 6 (the quadratic form alone)", _fixed(360, (), 6, 3, 2), None))
    cases = []
    for name, args, hint in corners:
        sizes = [6] if name.startswith("one chunk of 6") else fixed_chunks[args[0].shape[-2]]
        cases.append(Case(f"{name}, chunks {sizes}", args, {"chunks": sizes}, scale=args[2], corner=True, hint=hint))
    for name, args, sizes in [
        (f"n = {n} in random chunks", _inputs(rng, (), n, d_k, d_v), chunks(n)),
        ("one chunk of n = 1", _inputs(rng, (), 1, d_k, d_v), [1]),
        ("the whole sequence as one chunk", _inputs(rng, (), n, d_k, d_v), [n]),
        ("chunks of 1 (the recurrent step)", _inputs(rng, (), 5, d_k, d_v), [1] * 5),
        ("batch and head dims", _inputs(rng, (2, 3), n, d_k, d_v), chunks(n)),
        ("keys that keep growing (0 -> 1000)", growing, chunks(n)),
        ("large magnitudes of both signs (~1000)", _inputs(rng, (), n, d_k, d_v, 1000.0), chunks(n)),
    ]:
        cases.append(Case(f"{name}, chunks {sizes}", args, {"chunks": sizes}, scale=args[2]))
    return cases
