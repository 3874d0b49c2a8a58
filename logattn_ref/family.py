"""The linear-attention family in the course's vocabulary: feature maps, decay gates, the delta rule.

This course's mechanism (Heinsen, arXiv:2404.05843v1) is linear attention with the elementwise feature map
phi(x) = exp(x): ``y_i = S_i / Z_i`` with numerator ``S_i = sum_{j<=i} (phi(q_i) . phi(k_j)) v_j`` and
denominator ``Z_i = sum_{j<=i} phi(q_i) . phi(k_j)`` (eq. 13), read from a constant-size state (eqs. 5-6). Its
relatives change one of three things, and each is built here in three forms that the tests check against each
other: a float64 quadratic definition in NumPy (``*_quadratic``, the oracle), a recurrent step in PyTorch
(``*_step``, one token, constant work) and a chunked PyTorch form (``*_chunked``, the training path, continuing
from a state).

1. **The feature map** phi (:data:`FEATURE_MAPS`, :func:`feature_map`, :func:`feature_dim`): the state is
   ``sum_j phi(k_j) v_j^T``, ``[feature_dim, d_v]``, so phi's output size *is* the state size.

   - ``"exp"``: this course's member, ``phi(x) = exp(x)``, ``d_k`` features. Overflows in linear space unless
     stabilised; here it always runs through the stabilised forms (:mod:`logattn_ref.recurrent`: the state is
     kept relative to a running key maximum m, ``sum_kv = exp(H^(S) - m)``).
   - ``"elu+1"``: ``phi(x) = elu(x) + 1``, ``d_k`` features (Katharopoulos et al., "Transformers are RNNs",
     ICML 2020, Section 3.2.1).
   - ``"random"``: positive random features, ``phi(x) = exp(W^T x - |x|^2 / 2) / sqrt(m)`` with a fixed
     seeded Gaussian projection ``W: [d_k, m]`` (:func:`random_projection`), m features. For w ~ N(0, I),
     ``E[exp(w.q - |q|^2/2) exp(w.k - |k|^2/2)] = exp(q . k)``, so ``phi(q) . phi(k)`` is an unbiased estimate
     of the softmax kernel exp(q . k) (Choromanski et al., "Rethinking Attention with Performers", ICLR 2021,
     positive random features of FAVOR+; they also orthogonalise W, which we do not).
   - ``"taylor"``: the second-order Taylor features of exp(q . k): ``phi(q) . phi(k) = 1 + q . k + (q . k)^2 / 2``
     (the feature map of Based: Arora et al., "Simple linear attention language models balance the
     recall-throughput tradeoff", arXiv:2402.18668, 2024). The second-order block uses the symmetry of
     ``x x^T``: ``x_f^2 / sqrt(2)`` and ``x_f x_g`` (f < g), so ``1 + d_k + d_k (d_k + 1) / 2`` features instead of
     ``1 + d_k + d_k^2``. The paper author's later work (Heinsen and Kozachkov, "Self-Attention at Constant Cost
     per Token via Symmetry-Aware Taylor Approximation", arXiv:2602.00294, 2026) decomposes the Taylor
     expansion of the conventional attention into symmetric tensor products to reach a minimal
     polynomial-kernel feature basis at any order; this module implements only the second-order case.
     The kernel is >= 1/2 for every q, k, so the normaliser never vanishes, although the features have signs
     (with a per-channel gate that bound is lost: signed features decayed channel by channel can nearly cancel).

2. **A decay gate** g in (0, 1] on the state (``log_gate`` = log g <= 0, finite): the state becomes
   ``state_t = g_t * state_{t-1} + phi(k_t) v_t^T`` (and ``g_t * z_{t-1} + phi(k_t)`` for the normaliser
   ``z = sum_j phi(k_j)``). A scalar per head (``log_gate: [..., n]``: RetNet, Sun et al. arXiv:2307.08621, a
   fixed gamma per head; Mamba-2, Dao and Gu arXiv:2405.21060, a data-dependent scalar) or one per feature
   channel (``log_gate: [..., n, feature_dim]``: gated linear attention, Yang et al. arXiv:2312.06635, whose
   chunk form Section 4 this module's follows). Token j then reaches query i with the weight
   ``exp(G_i - G_j)``, where ``G_i = sum_{s<=i} log g_s`` is the cumulative log-gate: the chunked forms absorb the
   gate by multiplying queries by ``exp(G_i)`` and keys by ``exp(-G_j)``, with G restarted at every chunk so
   that neither factor leaves float range. For the exp member this is an additive shift,
   ``q_i + G_i`` and ``k_j - G_j``, and in the stabilised state the decay of a whole chunk is one addition
   ``m <- m + G_last`` to the running key maximum (the sums stay as they are). With V > 0 the same member runs
   wholly in log space: ``H^(S)_t = logaddexp(H^(S)_{t-1} + log g_t, k_t + log v_t)`` (the paper's eq. 6 with
   the gate added), :func:`log_decay_step` / :func:`log_decay_chunked`.

3. **The delta rule** (DeltaNet: Schlag, Irie and Schmidhuber, "Linear Transformers Are Secretly Fast Weight
   Programmers", ICML 2021; its chunked training: Yang et al., "Parallelizing Linear Transformers with the
   Delta Rule over Sequence Length", NeurIPS 2024, arXiv:2406.06484): with unit keys, the state ``[d_k, d_v]``
   is a memory corrected by its own error,
   ``state_t = state_{t-1} + beta_t k_t (v_t - state_{t-1}^T k_t)^T``, read as ``y_t = state_t^T q_t`` (no
   normaliser). beta in [0, 1]: 0 leaves the memory unchanged, 1 overwrites what key k_t held by v_t. The
   chunked form (:func:`delta_chunked`) solves one unit-lower-triangular system per chunk (the UT form of Yang
   et al. 2024, Section 3), so the token-by-token part of the work is one matmul per chunk.

Naming: ``state`` is the linear-space state (``exp(H^(S))`` for the exp member); ``S`` is always the numerator,
never the state (Katharopoulos et al. write ``S_i`` for what is here the state). Shapes: ``q, k: [..., n, d_k]``,
``v: [..., n, d_v]``, leading (batch, head) dims shared. PyTorch forms accumulate in float32 (float64 for
float64 inputs) and return the input dtype.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import numpy_ref, recurrent
from .torch_attention import (DEFAULT_CHUNK_SIZE, _check_finite, _check_kind, _check_tensor, _compute_dtype,
                              check_chunk_size)

__all__ = [
    "FEATURE_MAPS",
    "feature_dim",
    "feature_map",
    "random_projection",
    "l2_normalize",
    "linear_attention_quadratic",
    "log_decay_attention_quadratic",
    "delta_rule_quadratic",
    "LinearState",
    "linear_initial_state",
    "linear_step",
    "linear_chunked",
    "exp_decay_step",
    "exp_decay_chunked",
    "log_decay_step",
    "log_decay_chunked",
    "delta_initial_state",
    "delta_step",
    "delta_chunked",
]

#: The feature maps of the family; "exp" is this course's.
FEATURE_MAPS = ("exp", "elu+1", "random", "taylor")

Array = Union[np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------------------------------------
# Feature maps
# --------------------------------------------------------------------------------------------------------


def _check_feature(feature: str, projection) -> None:
    if feature not in FEATURE_MAPS:
        raise ValueError(f"feature must be one of {FEATURE_MAPS}, got {feature!r}")
    if feature == "random" and projection is None:
        raise ValueError("feature='random' needs projection, a [d_k, num_features] matrix (see random_projection)")


def feature_dim(feature: str, d_k: int, num_features: Optional[int] = None) -> int:
    """The number of features phi(x) has for ``x`` of size ``d_k``: the state's first dimension.

    ``"exp"``, ``"elu+1"``: d_k. ``"random"``: ``num_features`` (the projection's width). ``"taylor"``:
    ``1 + d_k + d_k (d_k + 1) / 2``.

    Raises:
        ValueError: unknown feature, d_k not a positive integer, ``"random"`` without num_features.
    """
    if feature not in FEATURE_MAPS:
        raise ValueError(f"feature must be one of {FEATURE_MAPS}, got {feature!r}")
    if not isinstance(d_k, int) or isinstance(d_k, bool) or d_k < 1:
        raise ValueError(f"d_k must be a positive integer, got {d_k!r}")
    if feature == "random":
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"feature='random' needs num_features, a positive integer, got {num_features!r}")
        return num_features
    if feature == "taylor":
        return 1 + d_k + d_k * (d_k + 1) // 2
    return d_k


def random_projection(d_k: int, num_features: int, seed: int = 0, dtype: torch.dtype = torch.float64,
                      device=None) -> torch.Tensor:
    """The fixed Gaussian projection ``W: [d_k, num_features]`` of the ``"random"`` feature map, from ``seed``.

    The same seed gives the same W on every machine (drawn on the CPU in float64, then converted).
    """
    feature_dim("random", d_k, num_features)
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(d_k, num_features, generator=generator, dtype=torch.float64)
    return w.to(device=device, dtype=dtype)


def feature_map(x: Array, feature: str, projection: Optional[Array] = None) -> Array:
    """phi(x) for NumPy arrays (computed in float64) or tensors: ``x: [..., d_k]`` -> ``[..., feature_dim]``.

    See the module docstring for each map. ``projection``: ``[d_k, m]``, needed by ``"random"`` only.

    Raises:
        ValueError: unknown feature, ``"random"`` without a projection, or one whose rows are not d_k.
    """
    _check_feature(feature, projection)
    if isinstance(x, torch.Tensor):
        lib, cat, ones = torch, (lambda xs: torch.cat(xs, dim=-1)), (lambda shape: x.new_ones(shape))
    else:
        x = np.asarray(x, dtype=np.float64)
        lib, cat, ones = np, (lambda xs: np.concatenate(xs, axis=-1)), (lambda shape: np.ones(shape))
    if feature == "exp":
        return lib.exp(x)
    if feature == "elu+1":
        return lib.where(x > 0, x + 1, lib.exp(lib.minimum(x, 0 * x)))  # exp only where it is <= 1
    if feature == "random":
        w = projection.to(x) if isinstance(x, torch.Tensor) else np.asarray(projection, dtype=np.float64)
        if w.shape[0] != x.shape[-1]:
            raise ValueError(f"projection must have d_k = {x.shape[-1]} rows, got shape {tuple(w.shape)}")
        half_norm = 0.5 * (x * x).sum(-1, **({"keepdim": True} if lib is torch else {"keepdims": True}))
        return lib.exp(x @ w - half_norm) / math.sqrt(w.shape[-1])
    d_k = x.shape[-1]
    rows, cols = np.triu_indices(d_k, k=1)
    cross = x[..., rows] * x[..., cols]  # x_f x_g, f < g: the off-diagonal half of x x^T, counted once
    return cat([ones(x.shape[:-1] + (1,)), x, x * x / math.sqrt(2.0), cross])


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """``x / |x|`` over the last axis (|x| clamped at eps), for NumPy arrays or tensors."""
    if isinstance(x, torch.Tensor):
        return F.normalize(x, dim=-1, eps=eps)
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


# --------------------------------------------------------------------------------------------------------
# The float64 quadratic definitions (NumPy): every weight written out, O(n^2) memory
# --------------------------------------------------------------------------------------------------------


def _np_gate_logits(log_gate: Optional[np.ndarray], n: int, width: int, batch: tuple) -> np.ndarray:
    """``G_if - G_jf`` for j <= i (-inf above the diagonal): ``[..., n, n, width or 1]``."""
    mask = np.tril(np.ones((n, n), dtype=bool))[..., None]
    if log_gate is None:
        diff = np.zeros(batch + (n, n, 1))
    else:
        cum = np.cumsum(log_gate if log_gate.ndim == len(batch) + 2 else log_gate[..., None], axis=-2)
        diff = cum[..., :, None, :] - cum[..., None, :, :]
    return np.where(mask, diff, -np.inf)


def _np_check_gate(log_gate, q: np.ndarray, width: int) -> Optional[np.ndarray]:
    if log_gate is None:
        return None
    g = numpy_ref._as_float64(log_gate, "log_gate", min_ndim=1)
    scalar, channel = q.shape[:-1], q.shape[:-1] + (width,)
    if g.shape not in (scalar, channel):
        raise ValueError(f"log_gate must have shape {scalar} (one gate per head) or {channel} (one per feature), "
                         f"got {g.shape}")
    if (g > 0).any():
        raise ValueError("log_gate must be <= 0 (a gate g = exp(log_gate) in (0, 1])")
    return g


def linear_attention_quadratic(q, k, v, feature: str = "elu+1", log_gate=None, normalize: bool = True,
                               projection=None) -> np.ndarray:
    """Causal linear attention, every weight written out (float64): the definition the other forms must match.

    ``w_ij = sum_f phi(q_i)_f phi(k_j)_f exp(G_if - G_jf)`` for j <= i (G the cumulative log-gate, 0 without a
    gate); ``y_i = sum_j w_ij v_j / sum_j w_ij`` (``normalize``) or ``sum_j w_ij v_j``. For ``"exp"`` the
    weights are formed in log space, ``log w_ij = LSE_f(q_if + G_if + k_jf - G_jf)`` (eq. 1's similarity with
    the gate), and normalised by a softmax over j, so any magnitude of q and k is exact.

    Args:
        q, k: ``[..., n, d_k]``; v: ``[..., n, d_v]``. log_gate: None, ``[..., n]`` or ``[..., n, feature_dim]``
        (<= 0). projection: ``[d_k, m]`` for ``"random"``.

    Returns:
        ``y: [..., n, d_v]`` float64.

    Raises:
        ValueError: shapes, an unknown feature, a positive log_gate, ``normalize=False`` with ``"exp"``.
    """
    _check_feature(feature, projection)
    q, k, v = numpy_ref._check_qkv(q, k, v, causal=True)
    batch, n = q.shape[:-2], q.shape[-2]
    width = feature_dim(feature, q.shape[-1], None if projection is None else np.shape(projection)[-1])
    log_gate = _np_check_gate(log_gate, q, width)
    gate = _np_gate_logits(log_gate, n, width, batch)  # [..., n, n, width or 1]
    if feature == "exp":
        if not normalize:
            raise ValueError("feature='exp' is defined normalised only (unnormalised, exp(q) . exp(k) overflows)")
        logits = numpy_ref._logsumexp(q[..., :, None, :] + k[..., None, :, :] + gate, axis=-1)  # [..., n, n]
        return numpy_ref.softmax(logits, axis=-1) @ v
    phi_q, phi_k = feature_map(q, feature, projection), feature_map(k, feature, projection)
    weights = (phi_q[..., :, None, :] * phi_k[..., None, :, :] * np.exp(gate)).sum(-1)  # [..., n, n]
    y = weights @ v
    return y / weights.sum(-1, keepdims=True) if normalize else y


def log_decay_attention_quadratic(q, k, log_v, log_gate=None) -> np.ndarray:
    """The exp member with a decay gate for V > 0, in log space (float64): returns ``log Y``.

    ``log S_i = LSE_j(s_ij + log v_j)``, ``log Z_i = LSE_j(s_ij)``, ``log y_i = log S_i - log Z_i`` (eq. 2) with
    ``s_ij = LSE_f(q_if + G_if + k_jf - G_jf)`` over j <= i. Without a gate it is the paper's causal log-space
    form (eq. 4). ``log_v`` may hold -inf (v = 0).

    Args:
        q, k: ``[..., n, d_k]``; log_v: ``[..., n, d_v]``; log_gate: None, ``[..., n]`` or ``[..., n, d_k]``.

    Returns:
        ``log Y: [..., n, d_v]`` float64.
    """
    q, k, log_v = numpy_ref._check_qkv(q, k, log_v, causal=True, v_name="log_v", v_may_be_neg_inf=True)
    batch, n, d_k = q.shape[:-2], q.shape[-2], q.shape[-1]
    gate = _np_gate_logits(_np_check_gate(log_gate, q, d_k), n, d_k, batch)
    logits = numpy_ref._logsumexp(q[..., :, None, :] + k[..., None, :, :] + gate, axis=-1)  # s_ij [..., n, n]
    log_s = numpy_ref._logsumexp(logits[..., :, :, None] + log_v[..., None, :, :], axis=-2)  # [..., n, d_v]
    log_z = numpy_ref._logsumexp(logits, axis=-1)[..., None]
    return log_s - log_z


def delta_rule_quadratic(q, k, v, beta, normalize_keys: bool = True) -> np.ndarray:
    """The delta rule over a whole sequence at once (float64), from the empty state.

    Unrolled, ``state_i = sum_{j<=i} k_j u_j^T`` where the written values u solve
    ``u_i + beta_i sum_{j<i} (k_i . k_j) u_j = beta_i v_i``: one ``n x n`` unit-lower-triangular system
    ``(I + tril(diag(beta) K K^T, -1)) U = diag(beta) V``; then ``y_i = state_i^T q_i = sum_{j<=i} (q_i . k_j) u_j``.

    Args:
        q, k: ``[..., n, d_k]``; v: ``[..., n, d_v]``; beta: ``[..., n]`` in [0, 1]. normalize_keys: divide
        each key by its L2 norm first (DeltaNet's keys are unit vectors).

    Returns:
        ``y: [..., n, d_v]`` float64.
    """
    q, k, v = numpy_ref._check_qkv(q, k, v, causal=True)
    beta = numpy_ref._as_float64(beta, "beta", min_ndim=1)
    if beta.shape != q.shape[:-1]:
        raise ValueError(f"beta must have shape {q.shape[:-1]} (one per token), got {beta.shape}")
    if ((beta < 0) | (beta > 1)).any():
        raise ValueError("beta must lie in [0, 1]")
    if normalize_keys:
        k = l2_normalize(k)
    n = q.shape[-2]
    system = np.eye(n) + np.tril(beta[..., :, None] * (k @ np.swapaxes(k, -1, -2)), -1)
    written = np.linalg.solve(system, beta[..., None] * v)  # U: [..., n, d_v]
    return np.tril(q @ np.swapaxes(k, -1, -2)) @ written


# --------------------------------------------------------------------------------------------------------
# PyTorch: checks shared by the recurrent and chunked forms
# --------------------------------------------------------------------------------------------------------


def _check_tokens(q, k, v, v_name: str = "v", min_ndim: int = 2, check_values: Optional[bool] = None,
                  v_may_be_neg_inf: bool = False):
    """q, k, v of one dtype and device, with the same leading dims; returns them in the compute dtype."""
    q, k, v = _check_kind(q, k, v, v_name, min_ndim)
    if q.shape != k.shape:
        raise ValueError(f"q and k must have one shape [..., n, d_k], got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"{v_name} must have q's leading dims {tuple(q.shape[:-1])} (+ d_v), got {tuple(v.shape)}")
    _check_finite(q, k, v, check_values, v_name, v_may_be_neg_inf)
    dt = _compute_dtype(q.dtype)
    return q.to(dt), k.to(dt), v.to(dt)


def _check_log_gate(log_gate, q: torch.Tensor, width: int, check_values: Optional[bool],
                    name: str = "log_gate") -> Optional[torch.Tensor]:
    """None, or the gate as ``[..., n, 1]`` (scalar per head) or ``[..., n, width]`` (per channel).

    For a step, q is ``[..., d_k]`` and the gate ``[...]`` or ``[..., width]``; the same rule applies."""
    if log_gate is None:
        return None
    log_gate = _check_tensor(log_gate, name, 0)
    scalar, channel = tuple(q.shape[:-1]), tuple(q.shape[:-1]) + (width,)
    if tuple(log_gate.shape) not in (scalar, channel):
        raise ValueError(f"{name} must have shape {scalar} (one gate per head) or {channel} (one per feature), "
                         f"got {tuple(log_gate.shape)}")
    if log_gate.device != q.device:
        raise ValueError(f"{name} is on {log_gate.device} but q is on {q.device}")
    if (not q.is_cuda) if check_values is None else check_values:
        if not torch.isfinite(log_gate).all() or (log_gate > 0).any():
            raise ValueError(f"{name} must be finite and <= 0 (a gate g = exp({name}) in (0, 1])")
    log_gate = log_gate.to(_compute_dtype(q.dtype))  # cumulative sums in float32 at least, never bfloat16
    return log_gate[..., None] if tuple(log_gate.shape) == scalar else log_gate


def _chunks(n: int, chunk_size: int):
    return [slice(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


# --------------------------------------------------------------------------------------------------------
# Linear attention with any feature map, optionally gated
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearState:
    """The linear-space state of a non-exp member: ``kv = sum_j w_j phi(k_j) v_j^T`` ``[..., F, d_v]`` and the
    normaliser ``k_sum = sum_j w_j phi(k_j)`` ``[..., F]`` (F = feature_dim, w_j the decay since token j)."""

    kv: torch.Tensor
    k_sum: torch.Tensor

    @property
    def batch_shape(self) -> tuple:
        return tuple(self.k_sum.shape[:-1])

    def nbytes(self) -> int:
        """Bytes held: the same after 1 token or a million."""
        return sum(t.numel() * t.element_size() for t in (self.kv, self.k_sum))


def linear_initial_state(batch_shape: tuple, d_k: int, d_v: int, feature: str = "elu+1",
                         num_features: Optional[int] = None, device=None, dtype: torch.dtype = torch.float32):
    """The empty state for ``feature``: a :class:`LinearState` of zeros, or for ``"exp"`` the stabilised
    :class:`logattn_ref.recurrent.LogAttentionState` (sums 0, running key maximum -inf)."""
    width = feature_dim(feature, d_k, num_features)
    if feature == "exp":
        return recurrent.initial_state(tuple(batch_shape), d_k, d_v, device=device, dtype=dtype)
    batch_shape = tuple(batch_shape)
    return LinearState(torch.zeros(batch_shape + (width, d_v), device=device, dtype=dtype),
                       torch.zeros(batch_shape + (width,), device=device, dtype=dtype))


def _check_linear_state(state, batch: tuple, width: int, d_v: int, device) -> None:
    if not isinstance(state, LinearState):
        raise TypeError(f"state must be a LinearState (see linear_initial_state), got {type(state).__name__}")
    if tuple(state.kv.shape) != batch + (width, d_v) or tuple(state.k_sum.shape) != batch + (width,):
        raise ValueError(f"state must hold kv {batch + (width, d_v)} and k_sum {batch + (width,)}, got "
                         f"{tuple(state.kv.shape)} and {tuple(state.k_sum.shape)}")
    if state.kv.device != device:
        raise ValueError(f"state is on {state.kv.device} but q is on {device}")


def linear_step(state, q_t, k_t, v_t, feature: str = "elu+1", log_gate_t=None, projection=None,
                normalize: bool = True, check_values: Optional[bool] = None):
    """One token of (gated) linear attention: constant work whatever came before.

    ``state <- g_t * state + phi(k_t) v_t^T``, ``k_sum <- g_t * k_sum + phi(k_t)``, then
    ``y_t = phi(q_t)^T state / phi(q_t) . k_sum`` (Katharopoulos et al. 2020, Section 3.4, with the gate).
    ``"exp"`` goes to :func:`exp_decay_step` (its state is the stabilised LogAttentionState).

    Args:
        state: from :func:`linear_initial_state` or an earlier step (not modified).
        q_t, k_t: ``[..., d_k]``; v_t: ``[..., d_v]``. log_gate_t: None, ``[...]`` or ``[..., feature_dim]``.

    Returns:
        ``(y_t [..., d_v], new_state)``.
    """
    _check_feature(feature, projection)
    if feature == "exp":
        if not normalize:
            raise ValueError("feature='exp' is normalised only")
        return exp_decay_step(state, q_t, k_t, v_t, log_gate_t, check_values=check_values)
    out_dtype = q_t.dtype if isinstance(q_t, torch.Tensor) else None
    q_t, k_t, v_t = _check_tokens(q_t, k_t, v_t, "v_t", 1, check_values)
    phi_q, phi_k = feature_map(q_t, feature, projection), feature_map(k_t, feature, projection)
    width = phi_q.shape[-1]
    _check_linear_state(state, tuple(q_t.shape[:-1]), width, v_t.shape[-1], q_t.device)
    kv, k_sum = state.kv.to(q_t.dtype), state.k_sum.to(q_t.dtype)
    log_gate_t = _check_log_gate(log_gate_t, q_t, width, check_values, "log_gate_t")
    if log_gate_t is not None:
        g = torch.exp(log_gate_t)  # [..., 1] or [..., F]
        kv, k_sum = g[..., None] * kv, g * k_sum
    kv = kv + phi_k[..., :, None] * v_t[..., None, :]
    k_sum = k_sum + phi_k
    y = (phi_q[..., None, :] @ kv)[..., 0, :]
    if normalize:
        y = y / (phi_q * k_sum).sum(-1, keepdim=True)
    return y.to(out_dtype), LinearState(kv.to(state.kv.dtype), k_sum.to(state.k_sum.dtype))


def _masked_gate_decay(b: torch.Tensor) -> torch.Tensor:
    """``exp(b_i - b_j)`` for j <= i, 0 above the diagonal: ``b: [..., c, w]`` -> ``[..., c, c, w]``."""
    c = b.shape[-2]
    mask = torch.ones(c, c, dtype=torch.bool, device=b.device).tril()[..., None]
    diff = b[..., :, None, :] - b[..., None, :, :]
    return torch.exp(torch.where(mask, diff, torch.full_like(diff, float("-inf"))))


def linear_chunked(q, k, v, feature: str = "elu+1", log_gate=None, projection=None, normalize: bool = True,
                   state=None, chunk_size: int = DEFAULT_CHUNK_SIZE, check_values: Optional[bool] = None):
    """Causal (gated) linear attention in chunks, continuing from ``state``: returns ``(y, new_state)``.

    Inside a chunk of c tokens the weights are a ``c x c`` matrix ``(phi(q_i) . phi(k_j)) exp(b_i - b_j)``
    (b the cumulative log-gate restarted at the chunk: a matmul times a decay matrix for a scalar gate, a
    ``[c, c, F]`` product for a per-channel one, as in Yang et al. 2023, Section 4); earlier chunks enter
    through the state, read with ``phi(q_i) * exp(b_i)``; the state then moves on as
    ``exp(b_last) * state + sum_j (phi(k_j) exp(b_last - b_j)) v_j^T``. Every exponent is <= 0. ``"exp"`` goes to
    :func:`exp_decay_chunked`.

    Args:
        q, k: ``[..., n, d_k]``; v: ``[..., n, d_v]``; log_gate: None, ``[..., n]`` or ``[..., n, feature_dim]``,
        finite and <= 0. projection: ``[d_k, m]`` for ``"random"``. state: None (empty) or from
        :func:`linear_initial_state` / an earlier call. chunk_size: a power of two; the result does not depend
        on it.

    Returns:
        ``y: [..., n, d_v]`` in q's dtype, and the state after the n tokens (float32, or float64).

    Raises:
        TypeError / ValueError: naming the argument (shapes, dtypes, devices, a bad gate or feature).
    """
    _check_feature(feature, projection)
    if feature == "exp":
        if not normalize:
            raise ValueError("feature='exp' is normalised only")
        return exp_decay_chunked(q, k, v, log_gate, state=state, chunk_size=chunk_size, check_values=check_values)
    chunk_size = check_chunk_size(chunk_size)
    out_dtype = q.dtype if isinstance(q, torch.Tensor) else None
    q, k, v = _check_tokens(q, k, v, check_values=check_values)
    phi_q, phi_k = feature_map(q, feature, projection), feature_map(k, feature, projection)
    batch, n, width, d_v = tuple(q.shape[:-2]), q.shape[-2], phi_q.shape[-1], v.shape[-1]
    log_gate = _check_log_gate(log_gate, q, width, check_values)
    if state is None:
        state = linear_initial_state(batch, q.shape[-1], d_v, feature, width, device=q.device, dtype=q.dtype)
    _check_linear_state(state, batch, width, d_v, q.device)
    kv, k_sum = state.kv.to(q.dtype), state.k_sum.to(q.dtype)
    outputs = []
    for sl in _chunks(n, chunk_size):
        pq, pk, vc = phi_q[..., sl, :], phi_k[..., sl, :], v[..., sl, :]
        last = None
        if log_gate is None:
            scores = (pq @ pk.transpose(-1, -2)).tril()  # [..., c, c]
            read, write = pq, pk
        else:
            b = torch.cumsum(log_gate[..., sl, :], dim=-2)  # [..., c, 1 or F]
            if b.shape[-1] == 1:  # one gate per head: the decay is a c x c matrix beside the scores
                scores = (pq @ pk.transpose(-1, -2)) * _masked_gate_decay(b)[..., 0]
            else:  # one per channel: the decay differs per feature, so the product keeps F
                scores = (pq[..., :, None, :] * pk[..., None, :, :] * _masked_gate_decay(b)).sum(-1)
            read = pq * torch.exp(b)  # the state decayed to token i
            write = pk * torch.exp(b[..., -1:, :] - b)  # token j decayed to the chunk end
            last = torch.exp(b[..., -1, :])  # [..., 1 or F]
        num = scores @ vc + read @ kv  # [..., c, d_v]
        if normalize:
            den = scores.sum(-1) + (read * k_sum[..., None, :]).sum(-1)  # [..., c]
            num = num / den[..., None]
        outputs.append(num)
        if last is not None:
            kv, k_sum = last[..., None] * kv, last * k_sum
        kv = kv + write.transpose(-1, -2) @ vc
        k_sum = k_sum + write.sum(-2)
    y = torch.cat(outputs, dim=-2) if outputs else v.new_zeros(batch + (0, d_v))
    return y.to(out_dtype), LinearState(kv, k_sum)


# --------------------------------------------------------------------------------------------------------
# The exp member (this course's), gated, in the stabilised linear-space state or wholly in log space
# --------------------------------------------------------------------------------------------------------


def _decayed(state: "recurrent.LogAttentionState", log_decay: torch.Tensor) -> "recurrent.LogAttentionState":
    """The stabilised state decayed by ``log_decay`` (``[..., 1]`` or ``[..., d_k]``): H <- H + log g.

    ``sum_kv = exp(H^(S) - m)`` and ``sum_k = exp(H^(Z) - m)`` are unchanged when H and m move together, so
    the decay is one addition to the running key maximum m; an empty state (m = -inf) stays empty."""
    key_max = state.key_max + log_decay.to(state.key_max.dtype)
    return dataclasses.replace(state, key_max=key_max.expand(state.sum_k.shape))


def exp_decay_step(state, q_t, k_t, v_t, log_gate_t=None, check_values: Optional[bool] = None):
    """One token of the exp member with a decay gate, V of any sign, in the stabilised state.

    ``exp(H_t) = g_t exp(H_{t-1}) + exp(k_t) v_t^T`` (the paper's eq. 6 with a gate): decay the state
    (:func:`_decayed`: m <- m + log g_t), then the ungated step of :func:`logattn_ref.recurrent.step` (eq. 5
    reads it). Without a gate it *is* ``recurrent.step``.

    Args:
        state: a :class:`logattn_ref.recurrent.LogAttentionState` (not modified).
        q_t, k_t: ``[..., d_k]``; v_t: ``[..., d_v]``; log_gate_t: None, ``[...]`` or ``[..., d_k]``.

    Returns:
        ``(y_t [..., d_v], new_state)``.

    For decoding: the decay moves the stabiliser m, which the step treats as a constant, so no gradient reaches
    the gate through it; train with :func:`exp_decay_chunked`, whose scan carries the decays as factors.
    """
    if not isinstance(state, recurrent.LogAttentionState):
        raise TypeError(f"state must be a recurrent.LogAttentionState, got {type(state).__name__}")
    q_t = _check_tensor(q_t, "q_t", 1)
    log_gate_t = _check_log_gate(log_gate_t, q_t, q_t.shape[-1], check_values, "log_gate_t")
    if log_gate_t is not None:
        state = _decayed(state, log_gate_t)
    return recurrent.step(state, q_t, k_t, v_t, check_values=check_values)


def exp_decay_chunked(q, k, v, log_gate=None, state=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      check_values: Optional[bool] = None):
    """The exp member (V any sign) with a decay gate, in chunks from ``state``: returns ``(y, new_state)``.

    With b the cumulative log-gate inside a chunk, query i reads ``sum_f exp(q_if + b_if) exp(H_f)`` from the
    state and ``exp(q_if + b_if) exp(k_jf - b_jf)`` from chunk token j <= i: the ungated mechanism on the
    shifted rows ``q + b``, ``k - b`` (stabilised for any magnitude); after the chunk the state decays by
    ``b_last`` (m <- m + b_last). b restarts every chunk, so the shift stays within ``chunk_size * max|log g|``.
    All chunks run at once in one :func:`logattn_ref.recurrent.prefill` call, whose state scan carries the
    chunks' decays (``torch_attention._chunked_forward``).

    Args:
        q, k: ``[..., n, d_k]``; v: ``[..., n, d_v]``; log_gate: None, ``[..., n]`` or ``[..., n, d_k]`` (finite,
        <= 0). state: None (empty) or a ``recurrent.LogAttentionState``. chunk_size: a power of two.

    Returns:
        ``y: [..., n, d_v]`` in q's dtype, and the new state.
    """
    chunk_size = check_chunk_size(chunk_size)
    q = _check_tensor(q, "q", 2)
    log_gate = _check_log_gate(log_gate, q, q.shape[-1], check_values)
    if state is None:
        state = recurrent.initial_state(tuple(q.shape[:-2]), q.shape[-1], v.shape[-1], device=q.device,
                                        dtype=_compute_dtype(q.dtype))
    # One call: the chunked form shifts each chunk's rows by the cumulative gate and carries the chunks' decays
    # through its state scan (torch_attention._chunked_forward), all chunks at once.
    return recurrent.prefill(state, q, k, v, chunk_size=chunk_size, check_values=check_values, log_gate=log_gate)


def _empty_log_state(q: torch.Tensor, d_v: int):
    return (q.new_full(q.shape[:-2] + (q.shape[-1], d_v), float("-inf")),
            q.new_full(q.shape[:-2] + (q.shape[-1],), float("-inf")))


def log_decay_step(log_state, q_t, k_t, log_v_t, log_gate_t=None, check_values: Optional[bool] = None):
    """One token of the gated exp member for V > 0, wholly in log space: returns ``(log y_t, (H^(S), H^(Z)))``.

    ``H^(S)_t = logaddexp(H^(S)_{t-1} + log g_t, k_t + log v_t^T)``, ``H^(Z)_t = logaddexp(H^(Z)_{t-1} + log g_t,
    k_t)`` (eq. 6 with the gate: decay without leaving log space, so no stabiliser is needed), then
    ``log y_t = LSE_f(q_tf + H^(S)_t) - LSE_f(q_tf + H^(Z)_t)`` (eqs. 5 and 2).

    Args:
        log_state: None (empty, -inf) or ``(H^(S) [..., d_k, d_v], H^(Z) [..., d_k])``.
        q_t, k_t: ``[..., d_k]``; log_v_t: ``[..., d_v]`` (may hold -inf); log_gate_t: None, ``[...]`` or
        ``[..., d_k]``.
    """
    out_dtype = q_t.dtype if isinstance(q_t, torch.Tensor) else None
    q_t, k_t, log_v_t = _check_tokens(q_t, k_t, log_v_t, "log_v_t", 1, check_values, v_may_be_neg_inf=True)
    log_gate_t = _check_log_gate(log_gate_t, q_t, q_t.shape[-1], check_values, "log_gate_t")
    log_s, log_z = _check_log_state(log_state, q_t[..., None, :], log_v_t.shape[-1])
    if log_gate_t is not None:
        log_s, log_z = log_s + log_gate_t[..., None], log_z + log_gate_t
    log_s = torch.logaddexp(log_s, k_t[..., :, None] + log_v_t[..., None, :])
    log_z = torch.logaddexp(log_z, k_t)
    log_y = torch.logsumexp(q_t[..., :, None] + log_s, dim=-2) - torch.logsumexp(q_t + log_z, dim=-1)[..., None]
    return log_y.to(out_dtype), (log_s, log_z)


def _check_log_state(log_state, q: torch.Tensor, d_v: int):
    """``q: [..., n, d_k]``; returns the states in q's dtype (the empty ones for None)."""
    if log_state is None:
        return _empty_log_state(q, d_v)
    if not (isinstance(log_state, tuple) and len(log_state) == 2):
        raise TypeError("log_state must be None or the pair (H^(S), H^(Z))")
    log_s, log_z = log_state
    batch, d_k = tuple(q.shape[:-2]), q.shape[-1]
    if tuple(log_s.shape) != batch + (d_k, d_v) or tuple(log_z.shape) != batch + (d_k,):
        raise ValueError(f"log_state must hold H^(S) {batch + (d_k, d_v)} and H^(Z) {batch + (d_k,)}, got "
                         f"{tuple(log_s.shape)} and {tuple(log_z.shape)}")
    return log_s.to(q.dtype), log_z.to(q.dtype)


def log_decay_chunked(q, k, log_v, log_gate=None, log_state=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      check_values: Optional[bool] = None):
    """The gated exp member for V > 0 in log space, in chunks: returns ``(log Y, (H^(S), H^(Z)))``.

    In a chunk, with b the cumulative log-gate restarted there, token i's states are
    ``H_i = b_i + logaddexp(H_before, LCSE_{j<=i}(k_j - b_j + log v_j))`` (every term's decay exp(b_i - b_j)
    taken out of the cumulative LSE), read as in :func:`log_decay_step`. Without a gate this is
    :func:`logattn_ref.torch_attention.logspace_prefill` (eq. 4 in blocks). Working memory
    O(chunk_size * d_k * d_v).

    Args:
        q, k: ``[..., n, d_k]``; log_v: ``[..., n, d_v]`` (may hold -inf); log_gate: None, ``[..., n]`` or
        ``[..., n, d_k]``; log_state: None or ``(H^(S), H^(Z))``. chunk_size: a power of two.
    """
    chunk_size = check_chunk_size(chunk_size)
    out_dtype = q.dtype if isinstance(q, torch.Tensor) else None
    q, k, log_v = _check_tokens(q, k, log_v, "log_v", check_values=check_values, v_may_be_neg_inf=True)
    log_gate = _check_log_gate(log_gate, q, q.shape[-1], check_values)
    log_s, log_z = _check_log_state(log_state, q, log_v.shape[-1])
    outputs = []
    for sl in _chunks(q.shape[-2], chunk_size):
        qc, kc, vc = q[..., sl, :], k[..., sl, :], log_v[..., sl, :]
        b = torch.zeros_like(kc[..., :1]) if log_gate is None else torch.cumsum(log_gate[..., sl, :], dim=-2)
        shifted = kc - b  # [..., c, d_k]
        log_s_i = b[..., None] + torch.logaddexp(
            log_s[..., None, :, :], torch.logcumsumexp(shifted[..., :, :, None] + vc[..., :, None, :], dim=-3))
        log_z_i = b + torch.logaddexp(log_z[..., None, :], torch.logcumsumexp(shifted, dim=-2))
        num = torch.logsumexp(qc[..., :, :, None] + log_s_i, dim=-2)  # log S_i [..., c, d_v]
        den = torch.logsumexp(qc + log_z_i, dim=-1)  # log Z_i [..., c]
        outputs.append(num - den[..., None])
        log_s, log_z = log_s_i[..., -1, :, :], log_z_i[..., -1, :]
    log_y = torch.cat(outputs, dim=-2) if outputs else q.new_zeros(q.shape[:-1] + log_v.shape[-1:])
    return log_y.to(out_dtype), (log_s, log_z)


# --------------------------------------------------------------------------------------------------------
# The delta rule
# --------------------------------------------------------------------------------------------------------


def delta_initial_state(batch_shape: tuple, d_k: int, d_v: int, device=None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The empty delta-rule memory: zeros ``[*batch_shape, d_k, d_v]``."""
    for name, size in (("d_k", d_k), ("d_v", d_v)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive integer, got {size!r}")
    return torch.zeros(tuple(batch_shape) + (d_k, d_v), device=device, dtype=dtype)


def _check_beta(beta, q: torch.Tensor, check_values: Optional[bool], name: str = "beta") -> torch.Tensor:
    beta = _check_tensor(beta, name, 0)
    if tuple(beta.shape) != tuple(q.shape[:-1]):
        raise ValueError(f"{name} must have shape {tuple(q.shape[:-1])} (one per token), got {tuple(beta.shape)}")
    if (not q.is_cuda) if check_values is None else check_values:
        if not ((beta >= 0) & (beta <= 1)).all():
            raise ValueError(f"{name} must lie in [0, 1]")
    return beta.to(q.dtype)


def _check_delta_state(state, batch: tuple, d_k: int, d_v: int, device) -> None:
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"state must be a tensor [..., d_k, d_v] (see delta_initial_state), got {type(state).__name__}")
    if tuple(state.shape) != batch + (d_k, d_v):
        raise ValueError(f"state must have shape {batch + (d_k, d_v)}, got {tuple(state.shape)}")
    if state.device != device:
        raise ValueError(f"state is on {state.device} but q is on {device}")


def delta_step(state, q_t, k_t, v_t, beta_t, normalize_keys: bool = True, check_values: Optional[bool] = None):
    """One token of the delta rule: ``state <- state + beta_t k_t (v_t - state^T k_t)^T``, ``y_t = state^T q_t``.

    ``state^T k_t`` is what the memory returns for k_t now; the update moves it a fraction beta_t of the way to
    v_t (with a unit key, beta_t = 1 makes it exactly v_t) and leaves every direction orthogonal to k_t as it was.

    Args:
        state: ``[..., d_k, d_v]`` (not modified). q_t, k_t: ``[..., d_k]``; v_t: ``[..., d_v]``; beta_t:
        ``[...]`` in [0, 1]. normalize_keys: divide k_t by its L2 norm first.

    Returns:
        ``(y_t [..., d_v], new_state)``.
    """
    out_dtype = q_t.dtype if isinstance(q_t, torch.Tensor) else None
    q_t, k_t, v_t = _check_tokens(q_t, k_t, v_t, "v_t", 1, check_values)
    beta_t = _check_beta(beta_t, q_t, check_values, "beta_t")
    _check_delta_state(state, tuple(q_t.shape[:-1]), q_t.shape[-1], v_t.shape[-1], q_t.device)
    if normalize_keys:
        k_t = l2_normalize(k_t)
    memory = state.to(q_t.dtype)
    recalled = (k_t[..., None, :] @ memory)[..., 0, :]  # state^T k_t [..., d_v]
    memory = memory + beta_t[..., None, None] * k_t[..., :, None] * (v_t - recalled)[..., None, :]
    y = (q_t[..., None, :] @ memory)[..., 0, :]
    return y.to(out_dtype), memory.to(state.dtype)


def delta_chunked(q, k, v, beta, state=None, normalize_keys: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  check_values: Optional[bool] = None):
    """The delta rule in chunks, continuing from ``state``: returns ``(y, new_state)``.

    Within a chunk the writes are ``state_i = state_0 + sum_{j<=i} k_j u_j^T`` with u the solution of
    ``(I + tril(diag(beta) K K^T, -1)) U = diag(beta) (V - K state_0)`` (the step unrolled over the chunk:
    ``u_i = beta_i (v_i - state_{i-1}^T k_i)``). Splitting the right side, ``U = T V - (T K) state_0`` with
    ``T = (I + tril(diag(beta) K K^T, -1))^{-1} diag(beta)`` (the UT transform of Yang et al. 2024, Section 3):
    ``T V`` and ``T K`` come from one batched triangular solve for all chunks at once, and only
    ``u = TV - TK state``, ``y = Q state + tril(Q K^T) u``, ``state <- state + K^T u`` run chunk after chunk.

    Args:
        q, k: ``[..., n, d_k]``; v: ``[..., n, d_v]``; beta: ``[..., n]`` in [0, 1]; state: None (zeros) or
        ``[..., d_k, d_v]``. normalize_keys: L2-normalise keys first. chunk_size: a power of two.

    Returns:
        ``y: [..., n, d_v]`` in q's dtype, and the state (float32, or float64).
    """
    chunk_size = check_chunk_size(chunk_size)
    out_dtype = q.dtype if isinstance(q, torch.Tensor) else None
    q, k, v = _check_tokens(q, k, v, check_values=check_values)
    beta = _check_beta(beta, q, check_values)
    batch, (n, d_k), d_v = tuple(q.shape[:-2]), q.shape[-2:], v.shape[-1]
    if state is None:
        state = delta_initial_state(batch, d_k, d_v, device=q.device, dtype=q.dtype)
    _check_delta_state(state, batch, d_k, d_v, q.device)
    memory = state.to(q.dtype)
    if n == 0:
        return q.new_zeros(batch + (0, d_v)).to(out_dtype), memory
    if normalize_keys:
        k = l2_normalize(k)
    C = min(chunk_size, 1 << max(0, (n - 1).bit_length()))
    N = -(-n // C)
    pad = N * C - n  # padded tokens: k = 0 and beta = 0 write nothing; their outputs are dropped
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = F.pad(beta, (0, pad))
    qc, kc, vc = (x.reshape(batch + (N, C, x.shape[-1])) for x in (q, k, v))
    bc = beta.reshape(batch + (N, C, 1))
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    system = eye + (bc * (kc @ kc.transpose(-1, -2))).tril(-1)  # [..., N, C, C], unit lower triangular
    solved = torch.linalg.solve_triangular(system, torch.cat([bc * vc, bc * kc], dim=-1), upper=False,
                                           unitriangular=True)
    tv, tk = solved[..., :d_v], solved[..., d_v:]  # T V [..., N, C, d_v], T K [..., N, C, d_k]
    scores = (qc @ kc.transpose(-1, -2)).tril()  # [..., N, C, C], the diagonal included: y_i reads state_i
    outputs = []
    for c in range(N):
        written = tv[..., c, :, :] - tk[..., c, :, :] @ memory  # u [..., C, d_v]
        outputs.append(qc[..., c, :, :] @ memory + scores[..., c, :, :] @ written)
        memory = memory + kc[..., c, :, :].transpose(-1, -2) @ written
    y = torch.cat(outputs, dim=-2)[..., :n, :]
    return y.to(out_dtype), memory
