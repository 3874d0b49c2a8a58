"""PyTorch implementations of log-of-exponentials attention, with the API of :mod:`logattn_ref.numpy_ref`.

Heinsen, "Softmax Attention with Constant Cost per Token", arXiv:2404.05843v1 (equation numbers follow v1).
The similarity is ``s_ij = log(exp(q_i) . exp(k_j)) = LSE_f(q_if + k_jf)`` (eq. 1), normalised by a softmax
over keys j; that is linear attention with the feature map exp, whose latent state, in linear space
``exp(H^(S)) = sum_j exp(k_j) v_j^T`` and ``exp(H^(Z)) = sum_j exp(k_j)`` (the paper's H^(S), H^(Z) of eq. 6
are their logs), has the constant size d_k x (d_v + 1).

Methods of :func:`log_attention` / :func:`log_attention_logspace`:

``"logcumsumexp"``
    The paper's causal log-space form (eq. 4): ``torch.logcumsumexp`` over a ``[..., n, d_k, d_v]`` tensor. The
    teaching baseline: exact and simple, but its memory is O(n * d_k * d_v) per batch entry (the paper's
    Section 3 calls this scan "space-inefficient but easier to implement"; its footnote 3 notes that a more
    space-efficient evaluation exists). Here its forward+backward runs out of memory from n = 65,536 on an
    H200 at B = 2, H = 8, d = 64, bf16 (benchmarks/results/bench_h200.json). For V of any sign it splits
    V = V+ - V-.

``"chunked"``
    Pure PyTorch built on matmuls. Tokens are grouped into chunks of C; inside a chunk attention is quadratic
    (done as matmuls), and a d_k x d_v state is carried from chunk to chunk. Memory
    O(n * (d_k + d_v + C) + (n / C) * d_k * d_v), autograd through ordinary differentiable ops, any-sign V,
    stable for large q and k (no exponential overflows while q + k is finite). The derivation is in
    :func:`_chunked_forward`.

``"triton"``
    The fused kernels of :mod:`logattn_ref.triton_kernels` (causal only, imported lazily).

``"auto"`` picks ``"triton"`` for causal attention on a CUDA tensor when the kernels module imports and
reports support (``triton_kernels.is_supported(q)``), otherwise ``"chunked"``.

:func:`log_attention_logspace` (V > 0, given as log V) has one more method, ``"shifted"``, and its ``"auto"``
picks it on CUDA: log V is shifted per value channel by its maximum over the sequence, exponentiated into
(0, 1], and run through :func:`log_attention` (Triton on a GPU); ``log Y = log(attention(exp(log V - M))) + M``
exactly, because attention weights sum to one. It is fast, but linear space has a range: when some channel's
log V spans more than ``_LOGSPACE_SPAN_LIMIT`` nats it falls back to the exact blocked log-space scan.

Dtypes: inputs may be float16, bfloat16, float32 or float64; accumulation and the recurrent state are float32
(float64 for float64 inputs, which the gradient tests use); outputs come back in the input dtype.

The recurrent form (``LogAttentionState``, ``initial_state``, ``step``, ``prefill``) and its streaming
``Decoder`` live in :mod:`logattn_ref.recurrent`, built on this module's chunked forward. Importing them from
here still works for one release, with a DeprecationWarning. The log-space scan that carries the paper's
states H^(S), H^(Z) from call to call (the model's "log" arm while generating) is :func:`logspace_prefill`.

``chunk_size``: one default, :data:`DEFAULT_CHUNK_SIZE`, and one rule, :func:`check_chunk_size`, for every
PyTorch form here and in :mod:`logattn_ref.recurrent`. The Triton kernels tile by their own tuned
``triton_kernels.CHUNK_SIZE`` (same rule, plus a multiple of their sub-block); ``method="triton"`` uses it.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import numpy_ref

__all__ = [
    "METHODS",
    "LOGSPACE_METHODS",
    "DEFAULT_CHUNK_SIZE",
    "check_chunk_size",
    "softmax_attention",
    "log_attention",
    "log_attention_logspace",
    "logspace_prefill",
    "available_methods",
]

#: Names that moved to :mod:`logattn_ref.recurrent`; importing them from here warns (removed next release).
_MOVED_TO_RECURRENT = ("LogAttentionState", "initial_state", "step", "prefill", "Decoder")


def __getattr__(name):
    if name in _MOVED_TO_RECURRENT:
        import importlib
        import warnings

        warnings.warn(f"logattn_ref.torch_attention.{name} has moved to logattn_ref.recurrent.{name}; import it "
                      f"from there (the old name goes in the next release)", DeprecationWarning, stacklevel=2)
        # A deprecation shim, the one arrow from here up to recurrent: by name, so the layer test's reading of
        # import statements does not count it; it goes with the shim.
        return getattr(importlib.import_module(".recurrent", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: The methods of :func:`log_attention` (and of the model's ``attention_method`` for ``"log-signed"``).
METHODS = ("auto", "logcumsumexp", "chunked", "triton")
#: The methods of :func:`log_attention_logspace`.
LOGSPACE_METHODS = ("auto", "logcumsumexp", "chunked", "shifted")
#: The widest range of log V (nats, per value channel) that the ``"shifted"`` method runs in linear space.
#: exp(-87) is float32's smallest normal number; the margin keeps products of the kernels' stabilised
#: factors (each <= 1) with the smallest shifted values away from underflow.
_LOGSPACE_SPAN_LIMIT = 60.0
#: Tokens per chunk of the PyTorch methods (and per carried state of the scans): the oracle's default, one value
#: in one place. The rule for any chunk_size here is :func:`check_chunk_size`: a positive power of two (the
#: intra-chunk pass halves the chunk log2(C) times); the float64 oracle has no such pass and takes any positive
#: integer, which its property tests use to show that the chunk size changes nothing but rounding.
DEFAULT_CHUNK_SIZE = numpy_ref.DEFAULT_CHUNK_SIZE
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------------
# Argument checking (once, at the public boundary)
# --------------------------------------------------------------------------------------------------------


def _check_tensor(x, name: str, min_ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got dtype {x.dtype}; convert it with "
            f"{name}.float()"
        )
    if x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def _check_values(x: torch.Tensor, name: str, allow_neg_inf: bool = False) -> None:
    # Each check reads a flag back to the host: that is a synchronisation, hence behind check_values.
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN (shape {tuple(x.shape)}); attention of NaN is undefined")
    if torch.isposinf(x).any():
        raise ValueError(f"{name} contains +inf (shape {tuple(x.shape)})")
    if not allow_neg_inf and torch.isneginf(x).any():
        raise ValueError(f"{name} contains -inf (shape {tuple(x.shape)}); only log_v may hold -inf (v = 0)")


def _check_kind(q, k, v, v_name: str = "v", min_ndim: int = 2):
    """q, k, v are floating tensors of at least ``min_ndim`` dims, one dtype, one device (shapes are checked by
    the caller, whose rules differ); returns them."""
    q, k, v = _check_tensor(q, "q", min_ndim), _check_tensor(k, "k", min_ndim), _check_tensor(v, v_name, min_ndim)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and {v_name} must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k and {v_name} must be on one device, got {q.device}, {k.device} and {v.device}"
        )
    return q, k, v


def _check_finite(q, k, v, check_values: Optional[bool], v_name: str = "v", v_may_be_neg_inf: bool = False):
    """Refuse NaN/inf in q, k, v (``v`` may hold -inf when it is log V); ``check_values=None``: on CPU only, since
    on CUDA the check is a host sync."""
    if check_values is None:
        check_values = not q.is_cuda
    if check_values:
        _check_values(q, "q")
        _check_values(k, "k")
        _check_values(v, v_name, allow_neg_inf=v_may_be_neg_inf)


def _check_qkv(q, k, v, *, causal: bool, check_values: Optional[bool], v_name: str = "v",
               v_may_be_neg_inf: bool = False):
    q, k, v = _check_kind(q, k, v, v_name)
    batch = numpy_ref.check_qkv_shapes(q.shape, k.shape, v.shape, causal=causal, v_name=v_name)
    _check_finite(q, k, v, check_values, v_name, v_may_be_neg_inf)
    q, k, v = (x.expand(tuple(batch) + tuple(x.shape[-2:])) for x in (q, k, v))
    return q, k, v


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _empty_sums(batch_shape: tuple, d_k: int, d_v: int, device, dtype):
    """The empty state's tensors ``(sum_kv, sum_k, key_max)``: sums 0, running key maximum -inf."""
    return (torch.zeros(batch_shape + (d_k, d_v), device=device, dtype=dtype),
            torch.zeros(batch_shape + (d_k,), device=device, dtype=dtype),
            torch.full(batch_shape + (d_k,), float("-inf"), device=device, dtype=dtype))


#: The fused kernels' smallest chunk: one ``tl.dot`` tile of 16 rows (``triton_kernels`` checks the same).
TRITON_MIN_CHUNK_SIZE = 16


def check_chunk_size(chunk_size) -> int:
    """The one rule for a ``chunk_size``: a positive power of two (an ``int``, not a ``bool``); returns it.

    Raises:
        ValueError: anything else.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1 \
            or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size!r}")
    return chunk_size


def _triton_module():
    try:
        from . import triton_kernels  # lazily: triton is optional and slow to import
    except Exception as exc:  # ImportError, or triton failing to initialise
        return None, exc
    return triton_kernels, None


def _triton_fits(module, q: torch.Tensor, v: torch.Tensor) -> bool:
    """The kernels module supports this device/dtype (never raises) and the head sizes fit its tiles."""
    limit = getattr(module, "MAX_HEAD_DIM", None)
    fits = limit is None or (q.shape[-1] <= limit and v.shape[-1] <= limit)
    return bool(module.is_supported(q)) and fits


def available_methods(q: torch.Tensor, v: Optional[torch.Tensor] = None) -> Tuple[str, ...]:
    """The causal methods that can run on ``q`` (and ``v``'s head size) here; ``"auto"`` always can."""
    methods = ["auto", "logcumsumexp", "chunked"]
    module, _ = _triton_module()
    if module is not None and _triton_fits(module, q, q if v is None else v):
        methods.append("triton")
    return tuple(methods)


def _resolve_method(method, q: torch.Tensor, v: torch.Tensor, causal: bool) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        # Triton only on a GPU: under its CPU interpreter the kernels are correct but far slower than "chunked".
        if causal and q.is_cuda:
            module, _ = _triton_module()
            if module is not None and _triton_fits(module, q, v):
                return "triton"
        return "chunked"
    if method == "triton":
        if not causal:
            raise ValueError("method='triton' computes causal attention only; pass causal=True or another method")
        module, exc = _triton_module()
        if module is None:
            raise RuntimeError(f"method='triton' is not available: importing logattn_ref.triton_kernels failed ({exc})")
        if not _triton_fits(module, q, v):
            raise RuntimeError(
                f"method='triton' is not available for a {q.dtype} tensor on {q.device} with d_k={q.shape[-1]}, "
                f"d_v={v.shape[-1]} (see triton_kernels.is_supported); use method='chunked'"
            )
    return method


# --------------------------------------------------------------------------------------------------------
# Ordinary attention
# --------------------------------------------------------------------------------------------------------


def softmax_attention(q, k, v, causal: bool = True, scale: Optional[float] = None,
                      check_values: Optional[bool] = None) -> torch.Tensor:
    """Ordinary scaled dot-product attention (the baseline), through ``F.scaled_dot_product_attention``.

    ``y_i = sum_j softmax_j(scale * q_i . k_j) v_j`` over keys ``j <= i`` when causal.

    Args:
        q: ``[..., n_q, d_k]``; k: ``[..., n_k, d_k]``; v: ``[..., n_k, d_v]`` (leading dims broadcast).
        causal: needs ``n_q == n_k``. scale: default ``1 / sqrt(d_k)``.

    Returns:
        ``[..., n_q, d_v]`` in the input dtype.

    Raises:
        TypeError / ValueError: wrong types, dtypes, devices or shapes; NaN/inf when ``check_values``.
    """
    q, k, v = _check_qkv(q, k, v, causal=causal, check_values=check_values)
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        return q.new_zeros(q.shape[:-1] + v.shape[-1:])
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


# --------------------------------------------------------------------------------------------------------
# The paper's log-space scan (teaching baseline)
# --------------------------------------------------------------------------------------------------------


def _logspace_scan(q, k, log_v, causal: bool):
    """The log-space form, non-causal and causal (eqs. 3-4), on compute-dtype tensors: ``log Y [..., n, d_v]``.

    Memory O(n * d_k * d_v) when causal: the LCSE keeps every state H^(S)_i."""
    kv = k[..., :, :, None] + log_v[..., :, None, :]  # [..., n, d_k, d_v]: log(exp(k_jf) v_jd)
    if causal:
        log_s_state = torch.logcumsumexp(kv, dim=-3)  # [..., n, d_k, d_v]
        log_z_state = torch.logcumsumexp(k, dim=-2)  # [..., n, d_k]
        log_s = torch.logsumexp(q[..., :, :, None] + log_s_state, dim=-2)  # [..., n, d_v]
        log_z = torch.logsumexp(q + log_z_state, dim=-1)
    else:
        log_s_state = torch.logsumexp(kv, dim=-3)  # [..., d_k, d_v]
        log_z_state = torch.logsumexp(k, dim=-2)
        log_s = torch.logsumexp(q[..., :, :, None] + log_s_state[..., None, :, :], dim=-2)
        log_z = torch.logsumexp(q + log_z_state[..., None, :], dim=-1)
    return log_s - log_z[..., None]


def logspace_prefill(log_state, q, k, log_v, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """The causal log-space scan (eqs. 4-6) continued from carried states: returns ``(log Y, (H^(S), H^(Z)))``.

    ``log_state`` is ``(H^(S) [..., d_k, d_v], H^(Z) [..., d_k])`` after the tokens so far, or None for the
    empty state (-inf: no tokens; the paper's eq. 7 starts at 0, a phantom token). Tokens are taken in blocks
    of ``chunk_size``: block tokens i extend the states with a cumulative LSE,
    ``H_i = LSE(H_before, LCSE_{j<=i}(k_j + log v_j))``, and read ``log y_i = LSE_f(q_if + H^(S)_i) -
    LSE_f(q_if + H^(Z)_i)`` (eqs. 5 and 2). Working memory O(chunk_size * d_k * d_v), O(d_k * d_v) between
    calls. Everything stays in log space, so log V may span any range.

    Args:
        q, k: ``[..., n, d_k]``; log_v: ``[..., n, d_v]`` (may hold -inf), one dtype (used for the states).
        chunk_size: see :func:`check_chunk_size`; the result does not depend on it.

    Returns:
        ``log Y [..., n, d_v]`` and the new ``(H^(S), H^(Z))``; with n = 0, an empty ``log Y`` and the states
        unchanged.
    """
    chunk_size = check_chunk_size(chunk_size)
    if log_state is None:
        log_s = q.new_full(q.shape[:-2] + (q.shape[-1], log_v.shape[-1]), float("-inf"))
        log_z = q.new_full(q.shape[:-2] + (q.shape[-1],), float("-inf"))
    else:
        log_s, log_z = log_state
    outputs = []
    for start in range(0, q.shape[-2], chunk_size):
        sl = slice(start, start + chunk_size)
        qb, kb, vb = q[..., sl, :], k[..., sl, :], log_v[..., sl, :]
        kv = kb[..., :, :, None] + vb[..., :, None, :]  # [..., c, d_k, d_v]
        log_s_i = torch.logaddexp(log_s[..., None, :, :], torch.logcumsumexp(kv, dim=-3))
        log_z_i = torch.logaddexp(log_z[..., None, :], torch.logcumsumexp(kb, dim=-2))
        num = torch.logsumexp(qb[..., :, :, None] + log_s_i, dim=-2)  # log S_i
        den = torch.logsumexp(qb + log_z_i, dim=-1)  # log Z_i
        outputs.append(num - den[..., None])
        log_s, log_z = log_s_i[..., -1, :, :], log_z_i[..., -1, :]
    log_y = torch.cat(outputs, dim=-2) if outputs else q.new_empty(q.shape[:-1] + log_v.shape[-1:])
    return log_y, (log_s, log_z)


def log_attention_logspace(q, k, log_v, causal: bool = True, method: str = "auto",
                           chunk_size: int = DEFAULT_CHUNK_SIZE,
                           check_values: Optional[bool] = None) -> torch.Tensor:
    """The paper's log-space form, non-causal and causal (eqs. 3-4), for V > 0: returns ``log Y``.

    Non-causal (eq. 3): ``log S = LSE_f(Q + LSE_j(K^T + log V))``, ``log Z = LSE_f(Q + LSE_j(K^T))``, and
    ``log Y = log S - log Z`` (eq. 2); causal (eq. 4): the inner LSE runs over ``j <= i`` (LCSE, a cumulative
    LSE). An entry -inf of ``log_v`` means v = 0.

    Methods: ``"logcumsumexp"`` holds the cumulative LSE for every token, O(n * d_k * d_v) memory;
    ``"chunked"`` runs the same scan in blocks of ``chunk_size`` tokens carrying the
    constant-size states ``H^(S), H^(Z)``, O(chunk_size * d_k * d_v) working memory in inference (under autograd
    each block's cumulative LSE is saved for backward, so training still keeps O(n * d_k * d_v)). Both stay in
    log space, so log V may span any range (in a linear-space form, values more than ~87 nats
    below the largest would become subnormal in float32, and 0 beyond ~104).
    ``"shifted"`` computes ``M = max_j log V_j`` per batch entry and value channel, runs
    :func:`log_attention` (``"auto"``: Triton on a GPU, else ``"chunked"``) on ``exp(log V - M)`` in (0, 1]
    and returns ``log(Y') + M``: exact, since attention weights sum to one, and as fast as the linear-space
    kernels; where a channel's finite log V spans more than ``_LOGSPACE_SPAN_LIMIT`` nats (a host sync
    decides) it falls back to ``"chunked"``. ``"auto"``: ``"shifted"`` for causal CUDA tensors, else
    ``"chunked"`` (causal) or ``"logcumsumexp"`` (non-causal, which needs no per-token state).

    Args:
        q: ``[..., n_q, d_k]``; k: ``[..., n_k, d_k]``; log_v: ``[..., n_k, d_v]`` (may hold -inf).

    Returns:
        ``log Y``: ``[..., n_q, d_v]`` in the input dtype.

    Raises:
        TypeError / ValueError: wrong types, dtypes, devices or shapes, an unknown method, NaN/+inf.
    """
    q, k, log_v = _check_qkv(q, k, log_v, causal=causal, check_values=check_values, v_name="log_v",
                             v_may_be_neg_inf=True)
    if method not in LOGSPACE_METHODS:
        raise ValueError(f"log_attention_logspace: method must be one of {LOGSPACE_METHODS}, got {method!r}")
    chunk_size = check_chunk_size(chunk_size)
    out_dtype, dt = q.dtype, _compute_dtype(q.dtype)
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        return q.new_full(q.shape[:-1] + log_v.shape[-1:], float("-inf"))
    if method == "auto":
        method = "shifted" if causal and q.is_cuda else "chunked"
    if method == "shifted":
        log_y = _logspace_shifted(q, k, log_v, causal, chunk_size)
        if log_y is not None:
            return log_y.to(out_dtype)
        method = "chunked"
    q, k, log_v = q.to(dt), k.to(dt), log_v.to(dt)
    if causal and method != "logcumsumexp":
        return logspace_prefill(None, q, k, log_v, chunk_size)[0].to(out_dtype)
    return _logspace_scan(q, k, log_v, causal).to(out_dtype)


def _logspace_shifted(q, k, log_v, causal: bool, chunk_size: int) -> Optional[torch.Tensor]:
    """``log Y`` through linear space (see :func:`log_attention_logspace`), or None when log V's range is
    too wide for it. Computed in float32 (float64 for float64 inputs); bfloat16 inputs keep bfloat16 values
    on the kernels' inputs (as the signed form does), float16 inputs are widened (its range is too short)."""
    dt = _compute_dtype(q.dtype)
    lv = log_v.to(dt)
    with torch.no_grad():
        shift = lv.amax(dim=-2, keepdim=True)  # [..., 1, d_v]: M, -inf for an all-zero channel
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        finite = torch.isfinite(lv)
        low = torch.where(finite, lv, shift).amin(dim=-2, keepdim=True)
        if float((shift - low).max()) > _LOGSPACE_SPAN_LIMIT:
            return None
    v_shifted = torch.exp(lv - shift)  # (0, 1], exactly 0 where log V = -inf
    run_dtype = q.dtype if q.dtype in (torch.bfloat16, torch.float32, torch.float64) else dt
    y = log_attention(q.to(run_dtype), k.to(run_dtype), v_shifted.to(run_dtype), causal=causal,
                      chunk_size=chunk_size, check_values=False)
    return torch.log(y.to(dt)) + shift


def _signed_logspace(q, k, v, causal: bool):
    """Any-sign V through the log-space scan: Y = exp(log Y+) - exp(log Y-) with V = V+ - V-."""
    neg_inf = torch.tensor(float("-inf"), dtype=v.dtype, device=v.device)
    tiny = torch.finfo(v.dtype).tiny
    # where() keeps the gradient finite: log is evaluated on a clamped copy, -inf marks v <= 0.
    log_pos = torch.where(v > 0, torch.log(v.clamp_min(tiny)), neg_inf)
    log_neg = torch.where(v < 0, torch.log((-v).clamp_min(tiny)), neg_inf)
    return torch.exp(_logspace_scan(q, k, log_pos, causal)) - torch.exp(_logspace_scan(q, k, log_neg, causal))


# --------------------------------------------------------------------------------------------------------
# The chunked, matmul-based form
# --------------------------------------------------------------------------------------------------------


def _chunked_forward(q, k, v, sum_kv, sum_k, key_max, chunk_size: int, log_gate=None):
    """Causal attention continuing from a state: flattened batch, compute dtype.

    Shapes: ``q, k: [B, n, d_k]``, ``v: [B, n, d_v]``, state ``sum_kv: [B, d_k, d_v]``, ``sum_k, key_max:
    [B, d_k]`` (the oracle's LogAttentionState: sums relative to the running key max ``key_max``).
    ``log_gate``: None (the paper's mechanism), or a decay gate ``[B, n, 1]`` or ``[B, n, d_k]`` (finite, <= 0;
    lesson 7's family: the state is multiplied by ``g_t = exp(log_gate_t)`` before token t is written).
    Returns ``(y [B, n, d_v], sum_kv, sum_k, key_max)`` after the n tokens.

    Derivation. Query i's output is a ratio whose terms are ``exp(q_if + k_jf)`` (j <= i), summed over f and j.
    Any shift common to numerator and denominator cancels, so we are free to choose stabilisers; they are
    computed without gradient (the result does not depend on them, so their derivative contributes nothing).

    * Per position, per feature: ``r_if = max(m_f, max_{j<=i in chunk} k_jf)`` with ``m`` the key max before
      the chunk. ``r`` is non-decreasing in i. Per row: ``M_i = max_f (q_if + r_if)``. Then every term
      ``exp(q_if + k_jf - M_i) <= 1`` and the denominator is >= 1 (the feature attaining M_i contributes
      exp(0) from a key in the chunk, or >= 1 from the state), so nothing overflows and there is no 0/0.
    * A matmul needs the term split as (row factor) x (column factor). For any reference position p with
      ``j <= p <= i``:  ``exp(q_if + k_jf - M_i) = exp(q_if + r_pf - M_i) * exp(k_jf - r_pf)``, and BOTH
      factors are <= 1, because ``r_pf <= r_if`` and ``k_jf <= r_jf <= r_pf`` (r is monotone). A chunk-wide
      reference (p = chunk end) breaks the first bound for rows before a large key: with M_i as the shift
      the row factor overflows and the row is inf * 0 = NaN; shifting rows by the chunk-wide reference
      instead keeps row factors <= 1, but every visible column factor underflows and the row is 0/0.
    * So the strictly-lower triangle of a chunk is split recursively: the block (second half rows) x (first
      half columns) has every j < p <= i with p the first position of the second half, one matmul with that
      reference; then each half is split again. log2(C) levels, each a batched matmul with
      n * (C / 2) scores in all. The diagonal (j = i) is the elementwise ``sum_f exp(q_if + k_if - M_i)``.
    * Earlier chunks enter through the state, reference p = the chunk start (r_p >= m): row factor
      ``exp(q_if + m_f - M_i) <= 1`` times ``sum_kv_f = sum_j exp(k_jf - m_f) v_j = exp(H^(S)_f - m_f)``.
    * The state ``sum_kv`` is carried across chunks with a recurrence of the same shape as gated linear
      attention's, but ungated: ``sum_kv_c = diag(exp(m_{c-1} - m_c)) sum_kv_{c-1} + sum_{j in c} exp(k_j - m_c)
      v_j^T`` only rescales the old sum to the new running maximum (an online-softmax rescale, undone on the
      query side), it forgets nothing. Each chunk's own sum is
      formed in parallel relative to its chunk max a_c, then :func:`_scan_chunk_states` combines them in two
      levels of ~sqrt(n / C) steps (``exp(m_{c-1} - m_c)`` acts as the "decay"; on the query side
      exp(q + m_c - M) undoes it).

    With a gate: token j reaches query i (j <= i) with the weight ``exp(G_i - G_j)``, G the cumulative log-gate.
    Inside a chunk, with b the cumulative log-gate restarted at the chunk start, that is the ungated term of the
    shifted rows ``q_i + b_i`` and ``k_j - b_j``, so everything above runs on them unchanged (b restarts every
    chunk, so the shift stays within ``C * max |log g|``). Across chunks the state is multiplied by
    ``exp(b_last)`` after each chunk: in the stabilised state that adds ``b_last`` to the running maximum, so the
    maxima follow ``m_c = b_last_c + max(m_{c-1}, a_c)`` instead of a running max, and the scan carries the
    decay (:func:`_scan_chunk_states`).

    Memory: O(n * (d_k + d_v + C)) for the chunk tensors plus O((n / C) * d_k * d_v) for the chunk states.
    """
    B, n, d_k = q.shape
    d_v = v.shape[-1]
    # A short sequence does not need a full chunk: the next power of two >= n is enough.
    C = min(chunk_size, 1 << max(0, (n - 1).bit_length()))
    N = -(-n // C)
    pad = N * C - n
    if pad:
        # Padded keys are -inf: weight exp(-inf) = 0, so they reach neither a real row nor the final state.
        q = F.pad(q, (0, 0, 0, pad))
        k = F.pad(k, (0, 0, 0, pad), value=float("-inf"))
        v = F.pad(v, (0, 0, 0, pad))
        if log_gate is not None:
            log_gate = F.pad(log_gate, (0, 0, 0, pad))  # padded tokens: g = 1, they write nothing
    qc, kc, vc = q.view(B, N, C, d_k), k.view(B, N, C, d_k), v.view(B, N, C, d_v)
    chunk_decay = None
    if log_gate is not None:
        b = torch.cumsum(log_gate.view(B, N, C, log_gate.shape[-1]), dim=2)  # restarted every chunk
        qc, kc = qc + b, kc - b
        chunk_decay = b[:, :, -1, :].expand(B, N, d_k)  # log of the chunk's whole decay, per feature

    with torch.no_grad():
        chunk_max = kc.amax(dim=-2)  # [B, N, d_k], finite: every chunk holds a real key
        if chunk_decay is None:
            max_after = torch.cummax(torch.maximum(chunk_max, key_max[:, None, :]), dim=1).values  # m_c
        else:
            max_after = _decayed_running_max(key_max, chunk_max, chunk_decay)
        max_before = torch.cat([key_max[:, None, :], max_after[:, :-1]], dim=1)  # m_{c-1}
        running = torch.maximum(torch.cummax(kc, dim=-2).values, max_before[:, :, None, :])  # r [B,N,C,d_k]
        row_max = (qc + running).amax(dim=-1, keepdim=True)  # M [B, N, C, 1]

    # Diagonal terms j = i.
    diag = torch.exp(qc + kc - row_max).sum(-1)  # [B, N, C]
    num = diag[..., None] * vc
    den = diag

    # Strictly-lower triangle, level by level: blocks of 2h positions, rows of the second half against the
    # columns of the first half, reference = the first position of the second half.
    h = C // 2
    while h >= 1:
        G = C // (2 * h)
        q2 = qc.view(B, N, G, 2, h, d_k)[:, :, :, 1]
        k1 = kc.view(B, N, G, 2, h, d_k)[:, :, :, 0]
        v1 = vc.view(B, N, G, 2, h, d_v)[:, :, :, 0]
        ref = running.view(B, N, G, 2, h, d_k)[:, :, :, 1, :1]  # [B, N, G, 1, d_k]
        m2 = row_max.view(B, N, G, 2, h, 1)[:, :, :, 1]
        row_factor = torch.exp(q2 + ref - m2)  # [B, N, G, h, d_k], <= 1
        col_factor = torch.exp(k1 - ref)  # [B, N, G, h, d_k], <= 1
        scores = row_factor @ col_factor.transpose(-1, -2)  # [B, N, G, h, h]
        zeros_v = vc.new_zeros(B, N, G, h, d_v)
        num = num + torch.stack((zeros_v, scores @ v1), dim=3).view(B, N, C, d_v)
        den = den + torch.stack((zeros_v[..., 0], scores.sum(-1)), dim=3).view(B, N, C)
        h //= 2

    # Each chunk's own key sums relative to its chunk max, in parallel.
    key_weight = torch.exp(kc - chunk_max[:, :, None, :])  # [B, N, C, d_k], <= 1
    local_kv = key_weight.transpose(-1, -2) @ vc  # [B, N, d_k, d_v]
    local_k = key_weight.sum(-2)  # [B, N, d_k]
    prev_kv, prev_k, sum_kv, sum_k, final_max = _scan_chunk_states(sum_kv, sum_k, key_max, local_kv, local_k,
                                                                   chunk_max, max_before, chunk_decay)

    past_factor = torch.exp(qc + max_before[:, :, None, :] - row_max)  # [B, N, C, d_k]; 0 where m = -inf
    num = num + past_factor @ prev_kv
    den = den + (past_factor @ prev_k[..., None])[..., 0]
    y = (num / den[..., None]).view(B, N * C, d_v)[:, :n]
    return y, sum_kv, sum_k, (max_after[:, -1] if chunk_decay is None else final_max)


def _decayed_running_max(key_max, chunk_max, chunk_decay):
    """The gated running maxima ``m_c = decay_c + max(m_{c-1}, a_c)`` (``m_{-1}`` = key_max), ``[B, N, d_k]``.

    Unrolled with the cumulative decay P: ``m_c - P_c = max(m_{c-1} - P_{c-1}, a_c - P_{c-1})``, a running max.
    P grows with the sequence, so the unrolled form runs in float64 and only its result is rounded: these
    maxima are stabilisers, and the scan's factors are differences of them (moderate numbers), not of P."""
    decay = chunk_decay.double()
    total = torch.cumsum(decay, dim=1)  # P_c
    shifted = chunk_max.double() - (total - decay)  # a_c - P_{c-1}
    unrolled = torch.cummax(torch.maximum(shifted, key_max.double()[:, None, :]), dim=1).values
    return (unrolled + total).to(chunk_max.dtype)


def _exp_diff(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``exp(x - ref)``, with 0 where x = -inf even if ref = -inf too (an empty sum contributes nothing)."""
    return torch.exp(x - torch.where(torch.isfinite(ref), ref, torch.zeros_like(ref)))


def _scan_chunk_states(sum_kv, sum_k, key_max, local_kv, local_k, chunk_max, max_before, chunk_decay=None):
    """The state entering each chunk, and after the last: a recurrence over the n / C chunk states.

    ``sum_kv_c = diag(exp(m_{c-1} - m_c)) sum_kv_{c-1} + diag(exp(a_c - m_c)) L_c`` (the linear-space state
    exp(H^(S)) rescaled by exp(-m_c); the factors only move it to the new maximum) where ``L_c`` is chunk c's own sum
    relative to its key max ``a_c`` and ``m_c`` the running max. Run one chunk at a time this is N sequential
    steps (N kernel launches each, slow on a GPU for long sequences); here it runs in two levels of about
    sqrt(N) steps each: inside groups of g chunks (all groups at once), then across the N / g group totals,
    then one vectorised combine. Every step is the (max, sum) combine of lesson 4, so all exponentials are
    <= 1; the memory kept for autograd stays O(N * d_k * d_v).

    With ``chunk_decay`` (``[B, N, d_k]``, the log of each chunk's whole decay ``D_c <= 0``, see
    :func:`_chunked_forward`) the state is multiplied by ``exp(D_c)`` after chunk c: ``m_c = D_c + max(m_{c-1},
    a_c)`` and both factors gain ``D_c``; a group's total decay and the decay of a group's first t chunks enter
    the two levels the same way.

    Shapes: ``sum_kv [B, d_k, d_v]``, ``sum_k, key_max [B, d_k]`` (the incoming state), ``local_kv [B, N, d_k,
    d_v]``, ``local_k, chunk_max, max_before [B, N, d_k]``. Returns ``(prev_kv [B, N, d_k, d_v], prev_k
    [B, N, d_k])`` relative to ``max_before``, the final ``(sum_kv, sum_k)`` and the final max they are relative to.
    """
    B, N, d_k = local_k.shape
    g = max(1, math.isqrt(N - 1) + 1) if N > 1 else 1
    G = -(-N // g)
    pad = G * g - N
    if pad:  # empty chunks at the end: sum 0, max -inf, no decay; they change nothing
        local_kv = F.pad(local_kv, (0, 0, 0, 0, 0, pad))
        local_k = F.pad(local_k, (0, 0, 0, pad))
        chunk_max = F.pad(chunk_max, (0, 0, 0, pad), value=float("-inf"))
        if chunk_decay is not None:
            chunk_decay = F.pad(chunk_decay, (0, 0, 0, pad))
    lkv = local_kv.view(B, G, g, d_k, -1)
    lk = local_k.view(B, G, g, d_k)
    with torch.no_grad():
        a = chunk_max.view(B, G, g, d_k)
        if chunk_decay is None:
            group_running = torch.cummax(a, dim=2).values  # [B, G, g, d_k], finite: each group starts with a real chunk
        else:
            dec = chunk_decay.view(B, G, g, d_k)
            running = [dec[:, :, 0] + a[:, :, 0]]
            for t in range(1, g):
                running.append(dec[:, :, t] + torch.maximum(running[-1], a[:, :, t]))
            group_running = torch.stack(running, dim=2)
    if chunk_decay is not None:
        # The decays are real factors (they carry the gate's gradient); only the maxima are stabilisers.
        dec = chunk_decay.view(B, G, g, d_k)
        dec_before = torch.cumsum(dec, dim=2) - dec  # decay of a group's first t chunks
        group_decay = dec.sum(dim=2)  # [B, G, d_k], of the whole group
    # Level 1: inclusive prefix sums inside every group at once, relative to the group's own running max.
    inner_kv, inner_k = [], []
    acc_kv, acc_k = torch.zeros_like(lkv[:, :, 0]), torch.zeros_like(lk[:, :, 0])
    for t in range(g):
        if chunk_decay is None:
            with torch.no_grad():
                old = _exp_diff(group_running[:, :, t - 1], group_running[:, :, t]) if t else torch.zeros_like(a[:, :, 0])
                new = _exp_diff(a[:, :, t], group_running[:, :, t])
        else:
            old = (_exp_diff(group_running[:, :, t - 1] + dec[:, :, t], group_running[:, :, t]) if t
                   else torch.zeros_like(a[:, :, 0]))
            new = _exp_diff(a[:, :, t] + dec[:, :, t], group_running[:, :, t])
        acc_kv = old[..., None] * acc_kv + new[..., None] * lkv[:, :, t]
        acc_k = old * acc_k + new * lk[:, :, t]
        inner_kv.append(acc_kv)
        inner_k.append(acc_k)
    # Level 2: the state entering each group, across groups, relative to the running max at the group start.
    group_max = group_running[:, :, -1]  # [B, G, d_k]
    enter_kv, enter_k, enter_max = [], [], []
    state_kv, state_k, state_max = sum_kv, sum_k, key_max
    for gamma in range(G):
        enter_kv.append(state_kv)
        enter_k.append(state_k)
        enter_max.append(state_max)
        carried = state_max if chunk_decay is None else state_max + group_decay[:, gamma]
        with torch.no_grad():
            top = torch.maximum(carried, group_max[:, gamma])
            new = _exp_diff(group_max[:, gamma], top)
            if chunk_decay is None:
                old = _exp_diff(carried, top)
        if chunk_decay is not None:
            old = _exp_diff(carried, top)  # exp(m + D - top): the group's decay, with its gradient
        state_kv = old[..., None] * state_kv + new[..., None] * inner_kv[-1][:, gamma]
        state_k = old * state_k + new * inner_k[-1][:, gamma]
        state_max = top
    # Combine: entering chunk (gamma, t) = entering group gamma (+) chunks 0..t-1 of the group.
    enter_kv, enter_k = torch.stack(enter_kv, 1), torch.stack(enter_k, 1)  # [B, G, ...]
    zeros_kv, zeros_k = torch.zeros_like(inner_kv[0]), torch.zeros_like(inner_k[0])
    before_kv = torch.stack([zeros_kv] + inner_kv[:-1], dim=2)  # [B, G, g, d_k, d_v]: exclusive prefix
    before_k = torch.stack([zeros_k] + inner_k[:-1], dim=2)
    with torch.no_grad():
        before_max = torch.cat([torch.full_like(group_running[:, :, :1], float("-inf")), group_running[:, :, :-1]], 2)
        # The padded (empty) chunks at the end take the final running max as their reference: every weight
        # relative to it is <= 1. A reference of 0 would give exp(m - 0) = inf for large keys, and even though
        # those rows are dropped, inf * 0 turns their zero gradient into NaN.
        if pad:
            ref = torch.cat([max_before, state_max[:, None, :].expand(B, pad, d_k)], dim=1).view(B, G, g, d_k)
        else:
            ref = max_before.view(B, G, g, d_k)
        w_inner = _exp_diff(before_max, ref)
        entering = torch.stack([m.detach() for m in enter_max], 1)[:, :, None]  # [B, G, 1, d_k]
        if chunk_decay is None:
            w_group = _exp_diff(entering, ref)  # [B, G, g, d_k]
    if chunk_decay is not None:
        w_group = _exp_diff(entering + dec_before, ref)  # the decay of the group's first t chunks, with its gradient
    prev_kv = w_group[..., None] * enter_kv[:, :, None] + w_inner[..., None] * before_kv
    prev_k = w_group * enter_k[:, :, None] + w_inner * before_k
    prev_kv = prev_kv.reshape(B, G * g, d_k, -1)[:, :N]
    prev_k = prev_k.reshape(B, G * g, d_k)[:, :N]
    return prev_kv, prev_k, state_kv, state_k, state_max


def _noncausal(q, k, v):
    """Non-causal attention through the constant-size state (the oracle's formula), compute dtype."""
    with torch.no_grad():
        key_max = k.amax(dim=-2, keepdim=True)  # [..., 1, d_k]
        row_max = (q + key_max).amax(dim=-1, keepdim=True)  # [..., n_q, 1]
    key_weight = torch.exp(k - key_max)  # [..., n_k, d_k]
    sum_kv = key_weight.transpose(-1, -2) @ v  # [..., d_k, d_v]
    sum_k = key_weight.sum(-2)  # [..., d_k]
    query_weight = torch.exp(q + key_max - row_max)  # [..., n_q, d_k]
    return (query_weight @ sum_kv) / (query_weight @ sum_k[..., None])


def log_attention(q, k, v, causal: bool = True, method: str = "auto", chunk_size: Optional[int] = None,
                  check_values: Optional[bool] = None) -> torch.Tensor:
    """Log-of-exponentials attention (eq. 1) for V of any sign, stable for large q and k (while q + k is finite).

    ``y_i = sum_j softmax_j(s_ij) v_j`` with ``s_ij = LSE_f(q_if + k_jf)``, keys ``j <= i`` when causal.

    Args:
        q: ``[..., n_q, d_k]``; k: ``[..., n_k, d_k]``; v: ``[..., n_k, d_v]`` (leading dims broadcast).
        causal: needs ``n_q == n_k``.
        method: ``"auto"``, ``"logcumsumexp"`` (O(n d_k d_v) memory), ``"chunked"`` or ``"triton"``
            (see the module docstring).
        chunk_size: tokens per carried state (a power of two); the result does not depend on it. ``None``: each
            method's own default (:data:`DEFAULT_CHUNK_SIZE` for ``"chunked"``, the kernels' tuned
            ``triton_kernels.CHUNK_SIZE`` for ``"triton"``). Given, it is honoured by ``"chunked"`` and
            ``"triton"`` alike; the kernels need at least 16 (their smallest tile), so ``"triton"`` refuses less
            and ``"auto"`` then takes ``"chunked"``. ``"logcumsumexp"`` has no chunks.
        check_values: refuse NaN/inf inputs (a host sync); default True on CPU, False on CUDA.

    Returns:
        ``[..., n_q, d_v]`` in the input dtype (computed in float32, or float64 for float64 inputs).

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes. ValueError: shapes, devices, bad
        chunk_size (also one below the kernels' 16 with ``method="triton"``), unknown method, NaN/inf values.
        RuntimeError: ``"triton"`` unavailable here.
    """
    q, k, v = _check_qkv(q, k, v, causal=causal, check_values=check_values)
    if chunk_size is not None:
        chunk_size = check_chunk_size(chunk_size)
    requested, method = method, _resolve_method(method, q, v, causal)
    if method == "triton" and chunk_size is not None and chunk_size < TRITON_MIN_CHUNK_SIZE:
        if requested != "triton":  # "auto": the PyTorch form honours any chunk size
            method = "chunked"
        else:
            raise ValueError(
                f"chunk_size must be at least {TRITON_MIN_CHUNK_SIZE} with method='triton' (the kernels' smallest "
                f"tile), got {chunk_size}; method='chunked' takes any power of two"
            )
    out_dtype, dt = q.dtype, _compute_dtype(q.dtype)
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        return q.new_zeros(q.shape[:-1] + v.shape[-1:])
    if method == "triton":
        module, _ = _triton_module()
        # The kernels index dense [..., n, d] memory: materialise broadcast views.
        tiles = {} if chunk_size is None else {"chunk_size": chunk_size}  # the kernels fit their sub-block to it
        return module.log_attention_triton(q.contiguous(), k.contiguous(), v.contiguous(), **tiles)
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    qf, kf, vf = q.to(dt), k.to(dt), v.to(dt)
    if method == "logcumsumexp":
        return _signed_logspace(qf, kf, vf, causal).to(out_dtype)
    if not causal:
        return _noncausal(qf, kf, vf).to(out_dtype)
    batch, (n, d_k), d_v = q.shape[:-2], q.shape[-2:], v.shape[-1]
    B = math.prod(batch)
    y, *_ = _chunked_forward(qf.reshape(B, n, d_k), kf.reshape(B, n, d_k), vf.reshape(B, n, d_v),
                             *_empty_sums((B,), d_k, d_v, q.device, dt), chunk_size)
    return y.reshape(tuple(batch) + (n, d_v)).to(out_dtype)
