"""The float64 NumPy reference (the "oracle") for log-of-exponentials attention.

Heinsen, "Softmax Attention with Constant Cost per Token", arXiv:2404.05843v1 (equation numbers follow v1).

Ordinary softmax attention scores a query ``q_i`` against a key ``k_j`` with the dot product ``q_i . k_j``.
The paper replaces that similarity with

    s_ij = log( exp(q_i) . exp(k_j) ) = log sum_f exp(q_if + k_jf) = LSE_f(q_i + k_j)          (eq. 1)

and normalises it with a softmax over the keys ``j``. Because exp(s_ij) = sum_f exp(q_if) exp(k_jf), the
attention weights are

    w_ij = sum_f exp(q_if) exp(k_jf) / sum_j' sum_f exp(q_if) exp(k_j'f)

which is *linear* attention with the elementwise feature map phi(x) = exp(x). Its feature space has d_k
dimensions (the infinite-dimensional feature space of an exponential kernel belongs to exp(q . k), the
kernel of ordinary softmax attention, not to this one). The paper's constant c divides exp(q_i) . exp(k_j) by
exp(c), which shifts every s_ij by -c, and a shift cancels in the softmax (eq. 1). A temperature such as
1/sqrt(d_k), a factor on s_ij, would not cancel; the paper has none.

Since the weights factor through the features, the sums over keys can be taken first:

    exp(H^(S))_fd = sum_j exp(k_jf) v_jd        exp(H^(Z))_f = sum_j exp(k_jf)
    y_id = S_id / Z_i = sum_f exp(q_if) exp(H^(S))_fd / sum_f exp(q_if) exp(H^(Z))_f

The numerator S_i and the denominator Z_i (eq. 13) read a state (H^(S), H^(Z)) of constant size
d_k x (d_v + 1), whatever the number of keys. In log space, for V >= 0 (the paper's setting; log 0 = -inf
contributes nothing), the non-causal form is

    log S = LSE_f(Q + LSE_j(K^T + log V))       log Z = LSE_f(Q + LSE_j(K^T))                   (eq. 3)

and y = exp(log S - log Z) (eq. 2). In the causal form the inner LSE over j becomes a log-cumulative-sum-exp
(LCSE) over j <= i (eq. 4). Read one token at a time, that is a recurrence on the state H^(S), H^(Z) updated
with ``logaddexp`` (eqs. 5-6): constant memory and constant work per token. The state starts empty, at -inf
(the paper's initial state, eq. 7, is 0 = log 1, which counts a phantom token with k = 0 and v = 1).

The paper's log-space form needs V >= 0 (a real log V). This module also computes the mechanism for V of
any sign, in linear space with running maxima as stabilisers (:func:`log_attention` and the recurrent
state), so that no exponential overflows, however large q and k are (as long as q + k is finite in float64).

Every function here computes in float64 and is written to be obviously right rather than fast; the PyTorch
and Triton implementations of the package are tested against it.

Public API (kept stable; the PyTorch implementations use the same names, argument order and shapes):

- :func:`logsumexp`, :func:`softmax`, :func:`softmax_attention`
- :func:`log_attention_quadratic` (eq. 1, O(n^2)), :func:`log_attention_logspace` (eqs. 3-4, V >= 0),
  :func:`log_attention` (any-sign V, stable)
- recurrent form: :class:`LogAttentionState`, :func:`initial_state`, :func:`step`, :func:`prefill`
- :func:`scaled_error`, the accuracy measure max|y - y_ref| / max|v| used throughout the tests.

Shapes: ``q: [..., n_q, d_k]``, ``k: [..., n_k, d_k]``, ``v: [..., n_k, d_v]``; the leading (batch, head)
dimensions broadcast against each other. Causal attention needs ``n_q == n_k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = [
    "logsumexp",
    "softmax",
    "softmax_attention",
    "log_attention_quadratic",
    "log_attention_logspace",
    "log_attention",
    "LogAttentionState",
    "initial_state",
    "step",
    "prefill",
    "scaled_error",
    "DEFAULT_CHUNK_SIZE",
    "check_qkv_shapes",
]

#: Tokens per chunk in the causal :func:`log_attention` and :func:`prefill`. Any value gives the same result up
#: to float64 rounding.
DEFAULT_CHUNK_SIZE = 64

# Row blocks of the quadratic forms are sized so that one [rows, n_k, d_k] temporary holds at most this many
# float64 entries (128 MiB), whatever n is.
_QUADRATIC_BLOCK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------------------
# Argument checking (done once, at the public boundary)
# --------------------------------------------------------------------------------------------------------


def _as_float64(x, name: str, *, min_ndim: int = 1, allow_neg_inf: bool = False) -> np.ndarray:
    """Return ``x`` as a float64 array, or raise an error that names the argument and what it got."""
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name} must be a real floating-point array, got an array of Python objects")
    if not (np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(
            f"{name} must be a real floating-point array (float16/32/64), got dtype {arr.dtype}; "
            f"convert it with {name}.astype(np.float64)"
        )
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN (shape {arr.shape}); attention of NaN is undefined")
    if np.isposinf(arr).any():
        raise ValueError(f"{name} contains +inf (shape {arr.shape})")
    if not allow_neg_inf and np.isneginf(arr).any():
        raise ValueError(f"{name} contains -inf (shape {arr.shape}); only log_v may hold -inf (meaning v = 0)")
    return arr


def check_qkv_shapes(q_shape: tuple, k_shape: tuple, v_shape: tuple, *, causal: bool, v_name: str = "v") -> tuple:
    """The shape rules of attention's inputs, in one place for the NumPy oracle and the PyTorch implementations.

    Takes the shapes (tuples) of ``q: [..., n_q, d_k]``, ``k: [..., n_k, d_k]`` and ``v: [..., n_k, d_v]`` and
    returns the broadcast batch shape.

    Raises:
        ValueError: naming the argument and the shapes it got, when d_k differs between q and k, k and v hold
            different numbers of tokens, causal attention has n_q != n_k, queries have no keys (n_k = 0 < n_q), or
            the leading dimensions do not broadcast.
    """
    q_shape, k_shape, v_shape = tuple(q_shape), tuple(k_shape), tuple(v_shape)
    if q_shape[-1] != k_shape[-1]:
        raise ValueError(
            f"q and k must have the same feature size d_k (last dimension), got q.shape={q_shape} "
            f"and k.shape={k_shape}"
        )
    if k_shape[-2] != v_shape[-2]:
        raise ValueError(
            f"k and {v_name} must have the same number of tokens (dimension -2), got k.shape={k_shape} "
            f"and {v_name}.shape={v_shape}"
        )
    if causal and q_shape[-2] != k_shape[-2]:
        raise ValueError(
            f"causal attention needs as many queries as keys, got q.shape={q_shape} and k.shape={k_shape}; "
            "pass causal=False for cross-attention"
        )
    if k_shape[-2] == 0 and q_shape[-2] > 0:
        # Each query's weights would be a softmax over an empty set of keys (0/0), like a softmax over an
        # all-masked row: there is no right answer to return, so say so instead of returning zeros or -inf.
        raise ValueError(
            f"attention needs at least one key for its queries, got k.shape={k_shape} (n_k = 0) and "
            f"q.shape={q_shape} (n_q = {q_shape[-2]}): each query's softmax over no keys is 0/0"
        )
    try:
        return tuple(np.broadcast_shapes(q_shape[:-2], k_shape[:-2], v_shape[:-2]))
    except ValueError:
        raise ValueError(
            f"the leading (batch/head) dimensions of q, k and {v_name} do not broadcast: q.shape={q_shape}, "
            f"k.shape={k_shape}, {v_name}.shape={v_shape}"
        ) from None


def _check_qkv(q, k, v, *, causal: bool, v_name: str = "v", v_may_be_neg_inf: bool = False):
    q = _as_float64(q, "q", min_ndim=2)
    k = _as_float64(k, "k", min_ndim=2)
    v = _as_float64(v, v_name, min_ndim=2, allow_neg_inf=v_may_be_neg_inf)
    batch = check_qkv_shapes(q.shape, k.shape, v.shape, causal=causal, v_name=v_name)
    q = np.broadcast_to(q, batch + q.shape[-2:])
    k = np.broadcast_to(k, batch + k.shape[-2:])
    v = np.broadcast_to(v, batch + v.shape[-2:])
    return q, k, v


# --------------------------------------------------------------------------------------------------------
# Softmax and ordinary attention
# --------------------------------------------------------------------------------------------------------


def _logsumexp(x: np.ndarray, axis, keepdims: bool = False) -> np.ndarray:
    # Shift by the maximum so that the largest term is exp(0) = 1: nothing overflows and the sum is >= 1.
    # A slice that is all -inf has no finite maximum; shifting it by 0 keeps it at -inf instead of NaN.
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):  # log(0) = -inf for all -inf slices is the right answer
        out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axis)


def logsumexp(x, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """``log(sum(exp(x), axis))`` without overflow or underflow, in float64.

    A slice whose entries are all -inf gives -inf (the log of an empty sum); +inf and NaN are refused.

    Raises:
        TypeError: ``x`` is not a floating-point array.
        ValueError: ``x`` contains NaN or +inf.
    """
    x = _as_float64(x, "x", min_ndim=0, allow_neg_inf=True)
    return _logsumexp(x, axis=axis, keepdims=keepdims)


def softmax(x, axis: int = -1) -> np.ndarray:
    """``exp(x) / sum(exp(x), axis)``, computed as ``exp(x - logsumexp(x))`` so that it never overflows.

    Entries of -inf get weight 0 (that is how a mask is written). A slice that is entirely -inf has no
    softmax (0/0) and raises ``ValueError`` rather than returning NaN.
    """
    x = _as_float64(x, "x", min_ndim=1, allow_neg_inf=True)
    lse = _logsumexp(x, axis=axis, keepdims=True)
    if np.isneginf(lse).any():
        raise ValueError(
            f"softmax of x (shape {x.shape}) along axis {axis} is undefined: some slice is entirely -inf"
        )
    return np.exp(x - lse)


def _causal_mask(n: int) -> np.ndarray:
    """``mask[i, j]`` is True where key j is in query i's past or present (j <= i)."""
    return np.tril(np.ones((n, n), dtype=bool))


def softmax_attention(q, k, v, causal: bool = True, scale: Optional[float] = None) -> np.ndarray:
    """Ordinary scaled dot-product attention, the baseline the course compares against.

    ``y_i = sum_j softmax_j(scale * q_i . k_j) v_j``, over keys ``j <= i`` when causal.

    Args:
        q: ``[..., n_q, d_k]``; k: ``[..., n_k, d_k]``; v: ``[..., n_k, d_v]``.
        causal: mask out keys after the query (needs ``n_q == n_k``).
        scale: multiplies the scores; default ``1 / sqrt(d_k)``.

    Returns:
        ``[..., n_q, d_v]`` float64.
    """
    q, k, v = _check_qkv(q, k, v, causal=causal)
    d_k = q.shape[-1]
    if scale is None:
        scale = 1.0 / np.sqrt(d_k) if d_k > 0 else 1.0
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    n_q, n_k = q.shape[-2], k.shape[-2]
    if n_q == 0 or n_k == 0:
        return np.zeros(q.shape[:-1] + (v.shape[-1],))
    scores = scale * (q @ np.swapaxes(k, -1, -2))  # [..., n_q, n_k]
    if causal:
        scores = np.where(_causal_mask(n_q), scores, -np.inf)
    return softmax(scores, axis=-1) @ v


# --------------------------------------------------------------------------------------------------------
# Log-of-exponentials attention: the definition, the paper's log-space form, and the any-sign form
# --------------------------------------------------------------------------------------------------------


def _similarity_block(q_rows: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``s_ij = LSE_f(q_if + k_jf)`` for a block of query rows: ``[..., r, d_k], [..., n, d_k] -> [..., r, n]``."""
    return _logsumexp(q_rows[..., :, None, :] + k[..., None, :, :], axis=-1)


def log_attention_quadratic(q, k, v, causal: bool = True) -> np.ndarray:
    """The definition (eq. 1): softmax over keys of the similarity ``s_ij = log(exp(q_i) . exp(k_j))``.

    ``y_i = sum_j softmax_j(s_ij) v_j`` with ``s_ij = LSE_f(q_if + k_jf)``; keys ``j <= i`` when causal.
    It materialises the n_q x n_k matrix of similarities (computed in row blocks so that the temporary stays
    bounded), costing O(n_q * n_k * (d_k + d_v)) time: the slow, obviously-right form every other one is
    checked against. V may have any sign.

    Args:
        q: ``[..., n_q, d_k]``; k: ``[..., n_k, d_k]``; v: ``[..., n_k, d_v]``, all finite.
        causal: each query sees only keys at or before its own position (needs ``n_q == n_k``).

    Returns:
        ``[..., n_q, d_v]`` float64.

    Raises:
        TypeError: a non-floating dtype. ValueError: mismatched or non-broadcastable shapes, NaN or inf.
    """
    q, k, v = _check_qkv(q, k, v, causal=causal)
    n_q, n_k, d_k = q.shape[-2], k.shape[-2], q.shape[-1]
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    if n_q == 0 or n_k == 0:
        return out
    batch_size = int(np.prod(q.shape[:-2], dtype=np.int64))
    rows = max(1, _QUADRATIC_BLOCK_ELEMENTS // max(1, batch_size * n_k * max(d_k, 1)))
    for start in range(0, n_q, rows):
        stop = min(n_q, start + rows)
        sim = _similarity_block(q[..., start:stop, :], k)  # [..., r, n_k]
        if causal:
            # only this block's rows of the mask: a full n x n mask would grow like n^2 past the cap
            visible = np.arange(start, stop)[:, None] >= np.arange(n_k)[None, :]  # [r, n_k]: j <= i
            sim = np.where(visible, sim, -np.inf)
        weights = np.exp(sim - _logsumexp(sim, axis=-1, keepdims=True))
        out[..., start:stop, :] = weights @ v
    return out


def _logcumsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    # logaddexp is exact for -inf operands (logaddexp(-inf, a) = a), so an empty prefix stays -inf.
    return np.logaddexp.accumulate(x, axis=axis)


def log_attention_logspace(q, k, log_v, causal: bool = True) -> np.ndarray:
    """The paper's log-space form, non-causal and causal (eqs. 3-4), for V >= 0: returns ``log Y``.

    Non-causal (eq. 3):  ``log S = LSE_f(Q + LSE_j(K^T + log V))``, ``log Z = LSE_f(Q + LSE_j(K^T))``.
    Causal (eq. 4): the inner ``LSE_j`` over all keys becomes a cumulative one (LCSE) over ``j <= i``, whose
    entries are the states ``H^(S)_i``, ``H^(Z)_i`` (eq. 6). The output is ``log Y = log S - log Z`` (eq. 2).
    An entry of ``log_v`` equal to -inf means v = 0; a column of V that is 0 at every visible key gives
    ``log Y = -inf`` there (Y = 0), which is correct, not an error.

    Memory: the causal form holds the cumulative LSE for every position, O(n * d_k * d_v), like the paper's
    parallel scan, which Section 3 of v1 calls space-inefficient (the course's PyTorch version of that scan,
    forward and backward, runs out of memory from n = 65,536 on an H200 at B = 2, H = 8, d = 64, bf16:
    benchmarks/results/bench_h200.json). Here it is the oracle, so clarity wins.

    Args:
        q: ``[..., n_q, d_k]``; k: ``[..., n_k, d_k]``; log_v: ``[..., n_k, d_v]`` (may hold -inf).
        causal: cumulative (causal) or full sums over the keys (needs ``n_q == n_k`` when causal).

    Returns:
        ``log Y``, ``[..., n_q, d_v]`` float64.
    """
    q, k, log_v = _check_qkv(q, k, log_v, causal=causal, v_name="log_v", v_may_be_neg_inf=True)
    n_q, n_k = q.shape[-2], k.shape[-2]
    if n_q == 0 or n_k == 0:
        return np.full(q.shape[:-1] + (log_v.shape[-1],), -np.inf)
    kv = k[..., :, :, None] + log_v[..., :, None, :]  # [..., n_k, d_k, d_v]: log(exp(k_jf) v_jd)
    if causal:
        log_s_state = _logcumsumexp(kv, axis=-3)  # [..., n, d_k, d_v]: LSE over j <= i
        log_z_state = _logcumsumexp(k, axis=-2)  # [..., n, d_k]
        log_s = _logsumexp(q[..., :, :, None] + log_s_state, axis=-2)  # [..., n, d_v]
        log_z = _logsumexp(q + log_z_state, axis=-1)  # [..., n]
    else:
        log_s_state = _logsumexp(kv, axis=-3)  # [..., d_k, d_v]: one constant-size state for all queries
        log_z_state = _logsumexp(k, axis=-2)  # [..., d_k]
        log_s = _logsumexp(q[..., :, :, None] + log_s_state[..., None, :, :], axis=-2)
        log_z = _logsumexp(q + log_z_state[..., None, :], axis=-1)
    return log_s - log_z[..., None]


# --------------------------------------------------------------------------------------------------------
# Any-sign V in linear space, stabilised by running maxima; the recurrent (constant-size state) form
# --------------------------------------------------------------------------------------------------------


class StateShape:
    """The shape properties every attention state shares, whatever holds its arrays (NumPy here, PyTorch in
    :mod:`logattn_ref.recurrent`): ``sum_kv: [..., d_k, d_v]``, ``sum_k: [..., d_k]``."""

    @property
    def d_k(self) -> int:
        return self.sum_k.shape[-1]

    @property
    def d_v(self) -> int:
        return self.sum_kv.shape[-1]

    @property
    def batch_shape(self) -> tuple:
        return tuple(self.sum_k.shape[:-1])


@dataclass(frozen=True)
class LogAttentionState(StateShape):
    """The constant-size latent state of causal log-of-exponentials attention, for V of any sign.

    With ``key_max`` m_f the largest key seen so far in feature f,

        sum_kv[f, d] = sum_j exp(k_jf - m_f) v_jd        (exp(H^(S)), the linear-space state, times exp(-m_f))
        sum_k[f]     = sum_j exp(k_jf - m_f)             (exp(H^(Z)), likewise)

    Every stored exponential is <= 1, and for each feature that has seen a token ``sum_k >= 1`` (the key
    that set the maximum contributes exp(0)), so neither overflows nor vanishes. The empty state is
    ``sum_kv = 0``, ``sum_k = 0`` and ``key_max = -inf`` (an empty sum; a state of exp(0) would add a phantom
    token). The paper's state (eq. 6) is already in log space: ``H^(S) = log(sum_kv) + m`` (for V >= 0) and
    ``H^(Z) = log(sum_k) + m``, and its empty value is -inf (the paper's initial state, eq. 7, is 0).

    Shapes: ``sum_kv: [..., d_k, d_v]``, ``sum_k: [..., d_k]``, ``key_max: [..., d_k]``; ``count`` is the
    number of tokens consumed. The size does not depend on ``count``.
    """

    sum_kv: np.ndarray
    sum_k: np.ndarray
    key_max: np.ndarray
    count: int = 0

    def nbytes(self) -> int:
        """Bytes the state occupies: the same after 1 token or 1 million."""
        return self.sum_kv.nbytes + self.sum_k.nbytes + self.key_max.nbytes


def initial_state(batch_shape: tuple, d_k: int, d_v: int) -> LogAttentionState:
    """The empty state (no tokens seen): sums 0, running key maximum -inf.

    Args:
        batch_shape: the leading (batch, head) dimensions, e.g. ``(B, H)`` or ``()``.
        d_k, d_v: key and value feature sizes (positive integers).
    """
    batch_shape = tuple(batch_shape)
    for name, size in (("d_k", d_k), ("d_v", d_v)):
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive integer, got {size!r}")
    if any((not isinstance(s, (int, np.integer))) or s < 0 for s in batch_shape):
        raise ValueError(f"batch_shape must be a tuple of non-negative integers, got {batch_shape!r}")
    return LogAttentionState(
        sum_kv=np.zeros(batch_shape + (d_k, d_v)),
        sum_k=np.zeros(batch_shape + (d_k,)),
        key_max=np.full(batch_shape + (d_k,), -np.inf),
        count=0,
    )


def _prefill_chunk(state: LogAttentionState, q: np.ndarray, k: np.ndarray, v: np.ndarray):
    """Outputs for one chunk of c tokens, and the state after it. Inputs are checked float64 arrays.

    For query i of the chunk the weights come from two places: the tokens already folded into the state,
    ``sum_f exp(q_if + m_f) sum_kv[f]``, and the chunk's own keys j <= i, ``exp(s_ij)`` with
    ``s_ij = LSE_f(q_if + k_jf)``. Both are shifted by the same per-row maximum M_i of their log-weights, so
    the largest term is exp(0) = 1 and the denominator is >= 1 (see LogAttentionState): no overflow, no 0/0.
    """
    c = q.shape[-2]
    with np.errstate(invalid="ignore"):
        past_logit = q + state.key_max[..., None, :]  # [..., c, d_k]; -inf where the feature is unseen
    intra = _similarity_block(q, k)  # [..., c, c]
    intra = np.where(_causal_mask(c), intra, -np.inf)
    row_max = np.maximum(np.max(past_logit, axis=-1), np.max(intra, axis=-1))  # [..., c], finite (diagonal)
    past_weight = np.exp(past_logit - row_max[..., None])  # [..., c, d_k], <= 1
    intra_weight = np.exp(intra - row_max[..., None])  # [..., c, c], <= 1
    numerator = past_weight @ state.sum_kv + intra_weight @ v  # [..., c, d_v]
    denominator = past_weight @ state.sum_k[..., :, None] + intra_weight.sum(-1, keepdims=True)  # [..., c, 1]
    out = numerator / denominator

    new_max = np.maximum(state.key_max, np.max(k, axis=-2))  # [..., d_k]
    decay = np.exp(state.key_max - new_max)  # rescales the old sums to the new maximum; 0 for an empty state
    key_weight = np.exp(k - new_max[..., None, :])  # [..., c, d_k], <= 1
    new_state = LogAttentionState(
        sum_kv=decay[..., :, None] * state.sum_kv + np.swapaxes(key_weight, -1, -2) @ v,
        sum_k=decay * state.sum_k + key_weight.sum(-2),
        key_max=new_max,
        count=state.count + c,
    )
    return out, new_state


def check_state_shapes(state, q_shape: tuple, v_shape: tuple) -> None:
    """The shape rules between a state (NumPy here, PyTorch in :mod:`logattn_ref.recurrent`) and new tokens.

    Raises:
        ValueError: naming the shapes, when d_k or d_v differ or the batch shapes do not broadcast.
    """
    q_shape, v_shape = tuple(q_shape), tuple(v_shape)
    if q_shape[-1] != state.d_k or v_shape[-1] != state.d_v:
        raise ValueError(
            f"state holds d_k={state.d_k}, d_v={state.d_v}, but q.shape={q_shape} and v.shape={v_shape}"
        )
    try:
        np.broadcast_shapes(tuple(state.batch_shape), q_shape[:-2])
    except ValueError:
        raise ValueError(
            f"state.batch_shape={tuple(state.batch_shape)} does not broadcast with q.shape={q_shape}"
        ) from None


def _check_state(state, q, k, v) -> None:
    if not isinstance(state, LogAttentionState):
        raise TypeError(f"state must be a LogAttentionState (see initial_state), got {type(state).__name__}")
    check_state_shapes(state, q.shape, v.shape)


def prefill(state: LogAttentionState, q, k, v, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Consume a block of tokens causally, continuing from ``state``; return ``(y, new_state)``.

    Token i of the block attends to every token already in the state and to tokens 0..i of the block.
    Feeding a sequence in one call, in chunks of any size, or one token at a time gives the same outputs up to
    float64 rounding.

    Args:
        state: from :func:`initial_state` or an earlier call (it is not modified).
        q, k: ``[..., c, d_k]``; v: ``[..., c, d_v]`` (any sign), c >= 0.
        chunk_size: tokens processed together (memory O(chunk_size^2 * d_k) per batch entry).

    Returns:
        ``y: [..., c, d_v]`` float64 and the state after the block.
    """
    q, k, v = _check_qkv(q, k, v, causal=True)
    _check_state(state, q, k, v)
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    batch = np.broadcast_shapes(state.batch_shape, q.shape[:-2])
    q, k, v = (np.broadcast_to(x, batch + x.shape[-2:]) for x in (q, k, v))
    state = LogAttentionState(
        sum_kv=np.broadcast_to(state.sum_kv, batch + state.sum_kv.shape[-2:]).copy(),
        sum_k=np.broadcast_to(state.sum_k, batch + state.sum_k.shape[-1:]).copy(),
        key_max=np.broadcast_to(state.key_max, batch + state.key_max.shape[-1:]).copy(),
        count=state.count,
    )
    n = q.shape[-2]
    out = np.zeros(batch + (n, v.shape[-1]))
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        out[..., start:stop, :], state = _prefill_chunk(
            state, q[..., start:stop, :], k[..., start:stop, :], v[..., start:stop, :]
        )
    return out, state


def step(state: LogAttentionState, q_t, k_t, v_t):
    """Consume one token (the recurrent form, eqs. 5-6): constant work and memory, whatever came before.

    Args:
        state: the state after tokens 0..t-1 (not modified).
        q_t, k_t: ``[..., d_k]``; v_t: ``[..., d_v]``.

    Returns:
        ``(y_t, new_state)`` with ``y_t: [..., d_v]``, the causal output for token t.
    """
    q_t = _as_float64(q_t, "q_t", min_ndim=1)
    k_t = _as_float64(k_t, "k_t", min_ndim=1)
    v_t = _as_float64(v_t, "v_t", min_ndim=1)
    y, new_state = prefill(state, q_t[..., None, :], k_t[..., None, :], v_t[..., None, :], chunk_size=1)
    return y[..., 0, :], new_state


def log_attention(q, k, v, causal: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Log-of-exponentials attention (eq. 1) for V of any sign, stable for large q and k.

    No exponential overflows, however large q and k are, as long as q + k is finite in float64.

    Non-causal, with m_f = max_j k_jf and M_i = max_f (q_if + m_f):

        y_i = sum_f exp(q_if + m_f - M_i) sum_kv_f / sum_f exp(q_if + m_f - M_i) sum_k_f,
        sum_kv_f = sum_j exp(k_jf - m_f) v_j = exp(H^(S)_f - m_f),
        sum_k_f = sum_j exp(k_jf - m_f) = exp(H^(Z)_f - m_f).

    Every exponential is <= 1 and the denominator is >= 1, so nothing overflows or divides by zero, and
    (sum_kv, sum_k) is the constant-size latent state. Causal attention runs :func:`prefill` from the empty
    state, which keeps the same stabilisers as running maxima.

    Args:
        q: ``[..., n_q, d_k]``; k: ``[..., n_k, d_k]``; v: ``[..., n_k, d_v]`` (any sign).
        causal: needs ``n_q == n_k``.
        chunk_size: tokens per chunk of the causal form (the result changes only by float64 rounding).

    Returns:
        ``[..., n_q, d_v]`` float64.
    """
    q, k, v = _check_qkv(q, k, v, causal=causal)
    n_q, n_k = q.shape[-2], k.shape[-2]
    batch = q.shape[:-2]
    if n_q == 0 or n_k == 0:
        return np.zeros(q.shape[:-1] + (v.shape[-1],))
    if causal:
        out, _ = prefill(initial_state(batch, q.shape[-1], v.shape[-1]), q, k, v, chunk_size=chunk_size)
        return out
    key_max = np.max(k, axis=-2)  # [..., d_k]
    key_weight = np.exp(k - key_max[..., None, :])  # [..., n_k, d_k]
    sum_kv = np.swapaxes(key_weight, -1, -2) @ v  # [..., d_k, d_v]
    sum_k = key_weight.sum(-2)  # [..., d_k]
    logit = q + key_max[..., None, :]  # [..., n_q, d_k]
    query_weight = np.exp(logit - np.max(logit, axis=-1, keepdims=True))
    return (query_weight @ sum_kv) / (query_weight @ sum_k[..., :, None])


def scaled_error(y, y_ref, v) -> float:
    """``max|y - y_ref| / max|v|``: the accuracy measure of the project.

    Attention outputs are weighted averages of the rows of v, so dividing by the largest |v| makes the error
    relative to the scale of the output, and it stays defined for signed V and for V = 0 (then the error is
    the plain max absolute error).
    """
    y = np.asarray(y, dtype=np.float64)
    y_ref = np.asarray(y_ref, dtype=np.float64)
    if y.shape != y_ref.shape:
        raise ValueError(f"y and y_ref must have the same shape, got {y.shape} and {y_ref.shape}")
    if y.size == 0:
        return 0.0
    scale = float(np.max(np.abs(np.asarray(v, dtype=np.float64)))) if np.size(v) else 0.0
    err = float(np.max(np.abs(y - y_ref)))
    return err / scale if scale > 0 else err
