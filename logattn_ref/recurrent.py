"""The recurrent form of log-of-exponentials attention in PyTorch: a constant-size state, and streaming decoding.

Heinsen, "Softmax Attention with Constant Cost per Token", arXiv:2404.05843v1: the sequential form (eq. 5)
reads states H^(S), H^(Z) that the recurrence (eq. 6) extends one token at a time. Here they are kept in linear
space relative to a running key maximum m, as in :mod:`logattn_ref.numpy_ref`: ``sum_kv = exp(H^(S) - m)``,
``sum_k = exp(H^(Z) - m)``, ``key_max = m``, so V may have any sign.

:class:`LogAttentionState`, :func:`initial_state`, :func:`step` and :func:`prefill` follow the oracle's
protocol exactly (prefill runs :mod:`logattn_ref.torch_attention`'s chunked forward from the state);
:class:`Decoder` is the streaming form, updating its state in place with a cost per token that does not
depend on the context length and without ever synchronising with the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import numpy_ref
from .torch_attention import (
    DEFAULT_CHUNK_SIZE,
    _check_qkv,
    _check_tensor,
    _chunked_forward,
    _empty_sums,
    _triton_module,
    check_chunk_size,
)

__all__ = ["LogAttentionState", "initial_state", "step", "prefill", "Decoder"]


@dataclass(frozen=True)
class LogAttentionState(numpy_ref.StateShape):
    """The constant-size latent state, as in :class:`logattn_ref.numpy_ref.LogAttentionState`.

    ``sum_kv[f, d] = sum_j exp(k_jf - m_f) v_jd``, ``sum_k[f] = sum_j exp(k_jf - m_f)``, ``key_max`` = m, the
    running per-feature key maximum (-inf before any token), ``count`` the tokens consumed. The paper's state
    (eq. 6) is already the log: ``H^(S) = log(sum_kv) + m`` (V > 0) and ``H^(Z) = log(sum_k) + m``. Shapes
    ``[..., d_k, d_v]``, ``[..., d_k]``, ``[..., d_k]``; float32 (float64 for float64 inputs).
    """

    sum_kv: torch.Tensor
    sum_k: torch.Tensor
    key_max: torch.Tensor
    count: int = 0

    def nbytes(self) -> int:
        """Bytes the state occupies: the same after 1 token or 1 million."""
        return sum(t.numel() * t.element_size() for t in (self.sum_kv, self.sum_k, self.key_max))


def initial_state(batch_shape: tuple, d_k: int, d_v: int, device=None,
                  dtype: torch.dtype = torch.float32) -> LogAttentionState:
    """The empty state: sums 0, running key maximum -inf (exp(0) would add a phantom token).

    Args:
        batch_shape: leading (batch, head) dims, e.g. ``(B, H)`` or ``()``. d_k, d_v: positive integers.
        device: where the state lives. dtype: float32 (default) or float64.
    """
    batch_shape = tuple(batch_shape)
    for name, size in (("d_k", d_k), ("d_v", d_v)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive integer, got {size!r}")
    if any(not isinstance(s, int) or s < 0 for s in batch_shape):
        raise ValueError(f"batch_shape must be a tuple of non-negative integers, got {batch_shape!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the state is accumulated in float32 or float64, got dtype {dtype}")
    return LogAttentionState(*_empty_sums(batch_shape, d_k, d_v, device, dtype), count=0)


def _check_state(state, q, v) -> None:
    if not isinstance(state, LogAttentionState):
        raise TypeError(f"state must be a LogAttentionState (see initial_state), got {type(state).__name__}")
    numpy_ref.check_state_shapes(state, q.shape, v.shape)
    if state.sum_k.device != q.device:
        raise ValueError(f"state is on {state.sum_k.device} but q is on {q.device}")


def prefill(state: LogAttentionState, q, k, v, chunk_size: int = DEFAULT_CHUNK_SIZE,
            check_values: Optional[bool] = None, log_gate=None):
    """Consume a block of tokens causally, continuing from ``state``; return ``(y, new_state)``.

    Token i of the block attends to everything in the state and to tokens 0..i of the block (the chunked
    method, see :func:`logattn_ref.torch_attention._chunked_forward`). One call, any chunking, or one token at a time give the same result.

    Args:
        state: from :func:`initial_state` or an earlier call (not modified).
        q, k: ``[..., c, d_k]``; v: ``[..., c, d_v]`` (any sign), c >= 0.
        log_gate: None (the paper's mechanism), or the log of a decay gate ``[..., c, 1]`` or ``[..., c, d_k]``
            (lesson 7's family; :func:`logattn_ref.family.exp_decay_chunked` checks it and calls this).

    Returns:
        ``y: [..., c, d_v]`` in the input dtype, and the new state (in the state's dtype).
    """
    q, k, v = _check_qkv(q, k, v, causal=True, check_values=check_values)
    _check_state(state, q, v)
    chunk_size = check_chunk_size(chunk_size)
    batch = tuple(torch.broadcast_shapes(state.batch_shape, q.shape[:-2]))
    n, d_k, d_v = q.shape[-2], state.d_k, state.d_v
    dt, out_dtype = state.sum_k.dtype, q.dtype
    B = math.prod(batch)
    sum_kv = state.sum_kv.expand(batch + (d_k, d_v)).reshape(B, d_k, d_v)
    sum_k = state.sum_k.expand(batch + (d_k,)).reshape(B, d_k)
    key_max = state.key_max.expand(batch + (d_k,)).reshape(B, d_k)
    if n == 0:
        y = q.new_zeros(batch + (0, d_v))
    else:
        q, k, v = (x.to(dt).expand(batch + tuple(x.shape[-2:])).reshape(B, n, x.shape[-1]) for x in (q, k, v))
        if log_gate is not None:
            log_gate = log_gate.to(dt).expand(batch + tuple(log_gate.shape[-2:])).reshape(B, n, log_gate.shape[-1])
        y, sum_kv, sum_k, key_max = _chunked_forward(q, k, v, sum_kv, sum_k, key_max, chunk_size, log_gate)
        y = y.reshape(batch + (n, d_v)).to(out_dtype)
    new_state = LogAttentionState(
        sum_kv=sum_kv.reshape(batch + (d_k, d_v)),
        sum_k=sum_k.reshape(batch + (d_k,)),
        key_max=key_max.reshape(batch + (d_k,)),
        count=state.count + n,
    )
    return y, new_state


def step(state: LogAttentionState, q_t, k_t, v_t, check_values: Optional[bool] = None):
    """Consume one token (the recurrent form, eqs. 5-6): constant work and memory whatever came before.

    Args:
        state: the state after tokens 0..t-1 (not modified).
        q_t, k_t: ``[..., d_k]``; v_t: ``[..., d_v]``.

    Returns:
        ``(y_t [..., d_v], new_state)``.
    """
    q_t = _check_tensor(q_t, "q_t", 1)
    k_t = _check_tensor(k_t, "k_t", 1)
    v_t = _check_tensor(v_t, "v_t", 1)
    y, new_state = prefill(state, q_t[..., None, :], k_t[..., None, :], v_t[..., None, :], chunk_size=1,
                           check_values=check_values)
    return y[..., 0, :], new_state


class Decoder:
    """Streaming decoding with the constant-size state, updated IN PLACE.

    ``Decoder(batch_shape, d_k, d_v, device=..., dtype=...)``; each :meth:`step` takes one token's
    ``q_t, k_t: [*batch_shape, d_k]``, ``v_t: [*batch_shape, d_v]`` and returns ``y_t: [*batch_shape, d_v]``.
    Work and memory per step are O(d_k * d_v) whatever the context length; no value is read back to the host
    (no ``.item()``, no data-dependent branch), so on CUDA the steps queue asynchronously, and
    :meth:`capture_cuda_graph` can record one step into a CUDA graph that is then replayed per token.
    The update is the oracle's: with m' = max(m, k_t),
    ``sum_kv <- exp(m - m') sum_kv + exp(k_t - m') v_t^T``, ``sum_k <- exp(m - m') sum_k + exp(k_t - m')``
    (eq. 6 in linear space, rescaled), ``y_t = sum_f exp(q_tf + m'_f - M) sum_kv_f / sum_f exp(q_tf + m'_f - M)
    sum_k_f`` with ``M = max_f(q_t + m')``.

    ``fused=True`` runs each step as the one-kernel :func:`logattn_ref.triton_kernels.decode_step_triton`
    (float32 state; a CUDA device, or the Triton interpreter) instead of a dozen PyTorch ops. The fastest
    decode path measured (``python -m logattn_ref.bench``) is ``fused=True`` + :meth:`capture_cuda_graph` +
    :meth:`step_packed`: one input copy and one graph replay per token.
    """

    def __init__(self, batch_shape: tuple, d_k: int, d_v: int, device=None, dtype: torch.dtype = torch.float32,
                 fused: bool = False):
        self.state = initial_state(batch_shape, d_k, d_v, device=device, dtype=dtype)
        self.count = 0
        self._graph = None
        self._static_packed = None
        self._fused = None
        if fused:
            module, exc = _triton_module()
            if module is None:
                raise RuntimeError(f"fused=True needs logattn_ref.triton_kernels, which failed to import ({exc})")
            if self.state.sum_k.dtype != torch.float32 or not module.is_supported(self.state.sum_k):
                raise ValueError(f"fused=True needs a float32 state where the Triton kernels run; got dtype "
                                 f"{self.state.sum_k.dtype} on {self.state.sum_k.device}")
            self._fused = module.decode_step_triton
            self._fused_tokens = module.decode_tokens_triton

    @classmethod
    def from_state(cls, state: LogAttentionState, fused: bool = False) -> "Decoder":
        """Continue from a state (e.g. after :func:`prefill` of a prompt); the tensors are copied."""
        if not isinstance(state, LogAttentionState):
            raise TypeError(f"state must be a LogAttentionState, got {type(state).__name__}")
        dec = cls(state.batch_shape, state.d_k, state.d_v, device=state.sum_k.device, dtype=state.sum_k.dtype,
                  fused=fused)
        dec.state.sum_kv.copy_(state.sum_kv)
        dec.state.sum_k.copy_(state.sum_k)
        dec.state.key_max.copy_(state.key_max)
        dec.count = state.count
        return dec

    def _check(self, q_t, k_t, v_t):
        s = self.state
        for name, x, size in (("q_t", q_t, s.d_k), ("k_t", k_t, s.d_k), ("v_t", v_t, s.d_v)):
            _check_tensor(x, name, 1)
            if tuple(x.shape) != s.batch_shape + (size,):
                raise ValueError(f"{name} must have shape {s.batch_shape + (size,)}, got {tuple(x.shape)}")
            if x.device != s.sum_k.device:
                raise ValueError(f"{name} is on {x.device} but the decoder state is on {s.sum_k.device}")

    def _update(self, q_t, k_t, v_t) -> torch.Tensor:
        s = self.state
        q, k, v = q_t.to(s.sum_k.dtype), k_t.to(s.sum_k.dtype), v_t.to(s.sum_k.dtype)
        if self._fused is not None:
            return self._fused(s.sum_kv, s.sum_k, s.key_max, q, k, v)
        new_max = torch.maximum(s.key_max, k)  # [..., d_k]
        decay = torch.exp(s.key_max - new_max)  # 0 for an empty state (-inf - finite)
        key_weight = torch.exp(k - new_max)  # <= 1
        s.sum_kv.mul_(decay[..., None]).add_(key_weight[..., :, None] * v[..., None, :])
        s.sum_k.mul_(decay).add_(key_weight)
        s.key_max.copy_(new_max)
        logit = q + new_max
        query_weight = torch.exp(logit - logit.amax(dim=-1, keepdim=True))  # <= 1, one entry exp(0)
        num = (query_weight[..., None, :] @ s.sum_kv)[..., 0, :]
        den = (query_weight * s.sum_k).sum(-1, keepdim=True)  # >= 1
        return num / den

    @torch.no_grad()
    def step(self, q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        """Consume one token; returns ``y_t`` in ``q_t``'s dtype. Shapes are checked (host-side metadata only)."""
        self._check(q_t, k_t, v_t)
        self.count += 1
        if self._graph is not None:
            self._static_in[0].copy_(q_t)
            self._static_in[1].copy_(k_t)
            self._static_in[2].copy_(v_t)
            self._graph.replay()
            return self._static_out.to(q_t.dtype)
        return self._update(q_t, k_t, v_t).to(q_t.dtype)

    @torch.no_grad()
    def step_packed(self, qkv_t: torch.Tensor) -> torch.Tensor:
        """:meth:`step` for one token given as ``[*batch_shape, 2 * d_k + d_v]`` = ``[q_t | k_t | v_t]``, the
        layout a fused q/k/v projection produces. In CUDA-graph mode that is one copy and one replay per
        token instead of three copies: the host launches are what a decode step of this size costs."""
        s = self.state
        width = 2 * s.d_k + s.d_v
        qkv_t = _check_tensor(qkv_t, "qkv_t", 1)
        if tuple(qkv_t.shape) != s.batch_shape + (width,):
            raise ValueError(f"qkv_t must have shape {s.batch_shape + (width,)}, got {tuple(qkv_t.shape)}")
        if self._graph is not None:
            self.count += 1
            self._static_packed.copy_(qkv_t)
            self._graph.replay()
            return self._static_out.to(qkv_t.dtype)
        q_t, k_t, v_t = qkv_t.split([s.d_k, s.d_k, s.d_v], dim=-1)
        return self.step(q_t, k_t, v_t)

    @torch.no_grad()
    def step_tokens(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Consume T known tokens at once (a prompt's tail, draft tokens to verify, teacher forcing): the same
        outputs and state as T calls of :meth:`step`. ``q, k: [*batch_shape, T, d_k]``, ``v: [*batch_shape, T,
        d_v]``; returns ``y: [*batch_shape, T, d_v]`` in q's dtype. With ``fused=True`` it is one kernel launch
        (:func:`logattn_ref.triton_kernels.decode_tokens_triton`) that reads and writes the state once; otherwise
        the chunked PyTorch form (:func:`prefill`) continued from the state. Not part of a captured graph."""
        s = self.state
        for name, x, size in (("q", q, s.d_k), ("k", k, s.d_k), ("v", v, s.d_v)):
            _check_tensor(x, name, 2)
            if tuple(x.shape) != s.batch_shape + (q.shape[-2], size) or q.shape[-2] < 1:
                raise ValueError(f"{name} must have shape {s.batch_shape + ('T', size)} with T >= 1 (T from q), "
                                 f"got {tuple(x.shape)}")
            if x.device != s.sum_k.device:
                raise ValueError(f"{name} is on {x.device} but the decoder state is on {s.sum_k.device}")
        self.count += q.shape[-2]
        dt = s.sum_k.dtype
        if self._fused is not None:
            return self._fused_tokens(s.sum_kv, s.sum_k, s.key_max, q.to(dt), k.to(dt), v.to(dt)).to(q.dtype)
        y, new = prefill(LogAttentionState(sum_kv=s.sum_kv, sum_k=s.sum_k, key_max=s.key_max, count=0), q, k, v)
        for dst, src in ((s.sum_kv, new.sum_kv), (s.sum_k, new.sum_k), (s.key_max, new.key_max)):
            dst.copy_(src)
        return y

    @torch.no_grad()
    def capture_cuda_graph(self) -> None:
        """Record one step into a ``torch.cuda.CUDAGraph``; later steps copy inputs in and replay it.

        Warm-up and capture run the update on the live buffers, so the state is saved first and restored
        afterwards: capturing leaves the decoder's contents unchanged.
        """
        s = self.state
        if not s.sum_k.is_cuda:
            raise RuntimeError("capture_cuda_graph needs the decoder state on a CUDA device")
        saved = (s.sum_kv.clone(), s.sum_k.clone(), s.key_max.clone())
        dtype = s.sum_k.dtype
        # One packed buffer [q | k | v] (for step_packed); step() copies into its three views.
        self._static_packed = torch.zeros(s.batch_shape + (2 * s.d_k + s.d_v,), device=s.sum_k.device, dtype=dtype)
        self._static_in = tuple(self._static_packed.split([s.d_k, s.d_k, s.d_v], dim=-1))
        # Warm up on a side stream (the recommended pattern before capture), then capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._update(*self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._update(*self._static_in)
        for dst, src in zip((s.sum_kv, s.sum_k, s.key_max), saved):
            dst.copy_(src)
        self._graph = graph

    def nbytes(self) -> int:
        """Bytes of state: independent of how many tokens have been decoded."""
        return self.state.nbytes()
