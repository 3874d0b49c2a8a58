"""Fused Triton kernels for causal log-of-exponentials attention (forward and backward), any-sign V.

Heinsen, "Softmax Attention with Constant Cost per Token", arXiv:2404.05843v1: the definition (eq. 1) with a
causal mask,

    y_i = sum_{j<=i} A_ij v_j / sum_{j<=i} A_ij,      A_ij = sum_f exp(q_if + k_jf)

(the softmax over keys of s_ij = LSE_f(q_if + k_jf)). Public API: :func:`log_attention_triton` (an autograd
function) and :func:`is_supported`. ``logattn_ref.torch_attention.log_attention(..., method="triton")`` calls
it. The float64 oracle is :func:`logattn_ref.numpy_ref.log_attention`; ``tests/test_triton_kernels.py``
compares the two (forward and gradients) under the Triton interpreter.

Derivation of the stable, matmul-shaped forward
-----------------------------------------------
Any shift common to a row's numerator and denominator cancels, so every stabiliser below is free to choose;
they carry no gradient (the result does not depend on them).

Tokens are grouped into chunks of ``C`` positions, each chunk into ``C / BS`` sub-blocks of ``BS`` rows.
Let ``m^(c)_f`` be the running key max of feature f over all keys BEFORE chunk c (``-inf`` for c = 0), and
for a position i in chunk c let ``r_if = max(m^(c)_f, max_{j<=i, j in c} k_jf)`` (non-decreasing in i).
Row stabiliser: ``M_i = max_f (q_if + r_if)``. Then for every j <= i, ``q_if + k_jf - M_i <= 0`` (since
``k_jf <= r_if``), so no term exceeds 1, and the feature attaining ``M_i`` contributes a term exactly 1
(from the key attaining r, or through the state below), so the denominator is >= 1: no overflow, no 0/0.

A matmul needs each term split as (row factor) x (column factor). For ANY reference position p with
``j <= p <= i``:  ``exp(q_if + k_jf - M_i) = exp(q_if + r_pf - M_i) * exp(k_jf - r_pf)`` and BOTH factors are
<= 1 (``r_pf <= r_if`` and ``k_jf <= r_pf``, r being monotone). If a factor underflows, the true term is
below it, i.e. negligible against a denominator >= 1. This gives three kinds of blocks:

* sub-block pairs (I, J), J < I, inside a chunk: reference p = the last row of J, ``ref_J = max(m^(c),
  max of k over sub-blocks 0..J)`` (it depends on J only, so it is shared by every later row block):
  ``A_IJ = exp(q_I + ref_J - M_I) @ exp(k_J - ref_J)^T``, one ``tl.dot`` each;
* the diagonal sub-block (I, I): no single reference fits every pair of a block, so its BS x BS weights are
  formed elementwise, ``sum_f exp(q_if + k_jf - M_i)`` over a [BS, BS, d_k] tile, masked to j <= i
  (a chunk-wide key max would sit in some row's future: that is the 0/0 trap this avoids);
  Fast path: when no key of the block exceeds ``ref0 = r`` at the block's first row by more than
  ``FAST_SPAN`` = 40 nats (checked per block in the kernel, true for ordinary data), one reference serves the
  whole block: ``exp(q_i + ref0 - M_i) <= 1`` and ``exp(k_j - ref0) <= exp(40)``, so the block is one
  ``tl.dot`` masked to j <= i; every kept product is still ``exp(q_if + k_jf - M_i) <= 1``, and a factor lost
  to underflow only drops terms below ``exp(40 - 87)`` of a denominator >= 1. An adversarial key (say 1e3
  above the rest) takes the elementwise path;
* earlier chunks, reference p = the chunk start: ``exp(q_i + m^(c) - M_i) @ KV^(c)`` with the state in
  linear space ``KV^(c) = sum_{j before c} exp(k_j - m^(c)) v_j^T = exp(H^(S) - m^(c))`` (d_k x d_v, the
  field ``sum_kv``) and ``KZ^(c) = sum_j exp(k_j - m^(c)) = exp(H^(Z) - m^(c))`` (``sum_k``). The states
  follow a recurrence of gated linear attention's shape, but ungated: ``diag(exp(m^(c) - m^(c+1)))`` only
  moves the sum to the new running maximum (the query side undoes it), it forgets nothing:
  ``KV^(c+1) = diag(exp(m^(c) - m^(c+1))) KV^(c) + diag(exp(a_c - m^(c+1))) sum_{j in c} exp(k_j - a_c) v_j^T``
  with ``a_c`` the chunk's own key max (every factor <= 1). No per-chunk sum is stored: the state passes read
  the keys and values themselves. ``_state_pass_kernel`` walks the chunks and stores the state before each (one
  ``tl.dot`` per chunk folds its keys in, ``exp(k_j - m^(c+1))`` with ``m^(c+1) = max(m^(c), a_c)``), and the
  outputs follow in parallel (``_forward_kernel``). A walk over all n / C chunks would be long and have few
  programs, so with ``SCAN_GROUP`` set it runs in two levels: each group of chunks first forms its own sums in
  parallel (``_group_total_kernel``, reference its own key max), a short walk over the groups turns those into the
  state before each group (``_group_carry_kernel``), and the state pass then starts every group from its carry,
  all groups in parallel.

The forward stores ``M_i`` and the denominator ``den_i``, the states ``KV^(c), KZ^(c)`` and the maxima ``m^(c)``:
O(n (d_k + d_v) + (n / C) d_k d_v) memory in all.

Backward
--------
With ``g_i = dy_i / den_i`` and ``delta_i = dy_i . y_i / den_i``:  ``dA_ij = g_i . v_j - delta_i`` and, since
``dA_ij`` multiplies ``exp(q_if + k_jf - M_i)`` (stabilised form, same M as den),

    dq_if = sum_{j<=i} dA_ij exp(q_if + k_jf - M_i),   dk_jf = sum_{i>=j} dA_ij exp(q_if + k_jf - M_i),
    dv_j  = sum_{i>=j} A_ij g_i.

Block by block with the same factors: an off-diagonal pair gives ``dq_I += R ∘ (dA @ K)``,
``dk_J += K ∘ (dA^T @ R)``, ``dv_J += A^T @ g_I``; the diagonal block is elementwise again; earlier chunks give
``dq_i += exp(q_i + m^(c) - M_i) ∘ (KV^(c) g_i - delta_i KZ^(c))``. Later chunks reach a key of chunk c through
a reverse state with reference ``m^(c+1)`` (>= every key of chunk c, <= the reference of every later chunk):
``dKV^(c) = sum_{c' > c} diag(exp(m^(c+1) - m^(c'))) sum_{i in c'} exp(q_i + m^(c') - M_i) g_i^T``, run backwards
as ``dKV^(c-1) = U_c + diag(exp(m^(c) - m^(c+1))) dKV^(c)`` (``_dstate_pass_kernel``, in two levels as in the
forward: ``_dgroup_total_kernel`` and ``_dgroup_carry_kernel``; U_c is formed from q, dy and the stored M_i, den_i
as the passes walk, and the first pass stores delta_i), and ``dk_j += exp(k_j - m^(c+1)) ∘ (dKV^(c) v_j -
dKZ^(c))``, ``dv_j += exp(k_j - m^(c+1))^T dKV^(c)``. Nothing of size n x n or n x d_k x d_v is stored: the
backward recomputes the factors from q, k, M (cheaper than storing them).

Precision: all exponentials, accumulators and states are float32; matmuls of float32 inputs use IEEE
precision (``input_precision="ieee"``), of bfloat16/float16 inputs TF32 (their own rounding dominates).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["log_attention_triton", "decode_step_triton", "decode_tokens_triton", "softmax_decode_triton",
           "is_supported", "interpreter_runs", "CHUNK_SIZE", "SUB_BLOCK", "MAX_HEAD_DIM"]

#: Tokens per chunk (one state per chunk) and rows per sub-block (one tl.dot tile); C a multiple of BS.
#: The kernels' own launch, tuned on an H200 at B = 2, H = 8, d = 64 in bf16. The second run (benchmarks/results/
#: tune_kernels_h200_two_level.json) chose C = BS = 64 with 4 warps and the looped diagonal fallback (five choices
#: changed at once, so their gains are not separated). The fourth (tune_kernels_h200_passes.json), with the state
#: passes below, timed C = BS = 64 at 0.44 / 1.38 ms forward and 1.04 / 3.61 ms forward+backward at 16K / 64K; C =
#: 128, BS = 64 took 0.50 / 1.43 and 1.84 / 5.20 ms but peaked lower at 64K (1.44 GB against 1.72 GB: half the
#: chunk states). Only at d = 64. One sub-block a chunk: no earlier sub-block to reload. Not the PyTorch forms'
#: ``torch_attention.DEFAULT_CHUNK_SIZE`` by coincidence only. Its rule is theirs (a power of two,
#: ``torch_attention.check_chunk_size``) plus the tile's: at least, hence a multiple of, ``sub_block``; the
#: kernels import only torch and triton, so the rule is restated in :func:`log_attention_triton`.
CHUNK_SIZE = 64
SUB_BLOCK = 64
#: Warps per program of the forward's chunk kernels and of the backward's: 4 and 4. In tune_kernels_h200_passes.json
#: 8 warps for both took 0.49 / 1.54 ms forward and 1.21 / 4.03 ms forward+backward at 16K / 64K, against 0.44 /
#: 1.38 and 1.04 / 3.61. (At C = 128, BS = 32, tune_kernels_h200.json found 2 faster for the forward and 4 for the
#: backward.) ``num_warps=`` sets both.
NUM_WARPS = 4
BACKWARD_NUM_WARPS = 4
#: Largest d_k / d_v the kernels hold in registers.
MAX_HEAD_DIM = 128
#: Diagonal-block fast path: taken when no key of a sub-block exceeds the reference (r at the block's first
#: row) by more than this many nats. exp(40) ~ 2e17 is far from float32 overflow; a product of factors lost to
#: underflow is then below exp(40 - 87) ~ 4e-21 of a denominator >= 1.
FAST_SPAN = tl.constexpr(40.0)

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


#: The oldest triton whose interpreter runs these kernels. Checked on a CPU with tests/test_triton_kernels.py:
#: triton 3.7.0, 3.8.0 and 3.9.0 pass every test; under 3.6.0 most fail (loops whose bound is a kernel argument
#: stop with "only 0-dimensional arrays can be converted to Python scalars"). Compiled on a GPU, 3.6.0 runs them.
INTERPRETER_MIN_TRITON = (3, 7)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreter_runs(version: str = None) -> bool:
    """Whether this triton's interpreter can run the kernels (triton >= 3.7, :data:`INTERPRETER_MIN_TRITON`)."""
    parts = (version or triton.__version__).split("+")[0].split(".")[:2]
    try:
        return tuple(int(p) for p in parts) >= INTERPRETER_MIN_TRITON
    except ValueError:  # an unusual version string: let the kernels try
        return True


def _unsupported(name: str, x: torch.Tensor) -> RuntimeError:
    why = ""
    if _interpreting() and not interpreter_runs():
        why = (f": the interpreter of triton {triton.__version__} cannot run these kernels (triton >= "
               f"{'.'.join(map(str, INTERPRETER_MIN_TRITON))} can: pip install -U triton)")
    return RuntimeError(f"{name} does not run on a {x.dtype} tensor on {x.device} here{why}")


def is_supported(x: torch.Tensor) -> bool:
    """Whether the fused kernels can run on ``x``'s device and dtype.

    True for a CUDA tensor of dtype float32 or float16, or bfloat16 where the GPU supports it (compute
    capability >= 8; a T4 does not), and under the Triton interpreter (``TRITON_INTERPRET=1``) for CPU tensors
    when this triton's interpreter can run them (:func:`interpreter_runs`). Never raises: callers use it to fall
    back to the PyTorch methods.
    """
    if not isinstance(x, torch.Tensor) or x.dtype not in _SUPPORTED_DTYPES:
        return False
    if _interpreting():
        return interpreter_runs()
    if not x.is_cuda or not torch.cuda.is_available():
        return False
    if x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] < 8:
        return False
    return True


# --------------------------------------------------------------------------------------------------------
# Loads. Padding is chosen so that padded entries contribute exp(-inf) = 0 and never form -inf - (-inf):
# padded features have q = -inf, k = 0 (any query factor of them is 0); padded rows have k = -inf, q = 0, v = 0.
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _load_cols(ptr, row0, col0, n, d, ROWS: tl.constexpr, COLS: tl.constexpr):
    """A [ROWS, COLS] tile of rows row0.. and columns col0.. of a [n, d] matrix in float32, 0 outside it."""
    rows = row0 + tl.arange(0, ROWS)
    cols = col0 + tl.arange(0, COLS)
    return tl.load(ptr + rows[:, None] * d + cols[None, :], mask=(rows[:, None] < n) & (cols[None, :] < d),
                   other=0.0).to(tl.float32)


@triton.jit
def _load_v(ptr, row0, n, d_v, BS: tl.constexpr, BV: tl.constexpr):
    """A [BS, BV] tile of rows row0.. of a [n, d_v] matrix in float32; entries outside it are 0."""
    return _load_cols(ptr, row0, 0, n, d_v, BS, BV)


@triton.jit
def _load_q(ptr, row0, n, d_k, BS: tl.constexpr, BK: tl.constexpr):
    x = _load_v(ptr, row0, n, d_k, BS, BK)
    cols = tl.arange(0, BK)
    return tl.where(cols[None, :] < d_k, x, float("-inf"))  # padded features: -inf


@triton.jit
def _load_k(ptr, row0, n, d_k, BS: tl.constexpr, BK: tl.constexpr):
    x = _load_v(ptr, row0, n, d_k, BS, BK)
    rows = row0 + tl.arange(0, BS)
    return tl.where(rows[:, None] < n, x, float("-inf"))  # padded rows: -inf


# --------------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _chunk_keys(k_ptr, v_ptr, bh, c, col_k, col_v, n, d_k, d_v, C: tl.constexpr, BKS: tl.constexpr,
                BVS: tl.constexpr):
    """Chunk c's keys (features col_k.., padded rows -inf) and values (columns col_v..), and its key max."""
    k = _load_cols(k_ptr + bh * n * d_k, c * C, col_k, n, d_k, C, BKS)
    rows = c * C + tl.arange(0, C)
    k = tl.where(rows[:, None] < n, k, float("-inf"))
    v = _load_cols(v_ptr + bh * n * d_v, c * C, col_v, n, d_v, C, BVS)
    return k, v, tl.max(k, axis=0)  # the max is finite: every chunk holds a real row


@triton.jit
def _absorb(s, z, m, k, v, a, PREC: tl.constexpr):
    """The state (s, z) with reference m, moved to m' = max(m, a) and given a chunk's keys k (max a) and values v:
    s' = exp(m - m') s + exp(k - m')^T v, z' = exp(m - m') z + sum_j exp(k_j - m'). Every factor is <= 1."""
    m_new = tl.maximum(m, a)
    decay = tl.exp(m - m_new)  # 0 while the state is empty (m = -inf)
    w = tl.exp(k - m_new[None, :])  # padded rows 0
    s = decay[:, None] * s + tl.dot(tl.trans(w), v, input_precision=PREC)
    z = decay * z + tl.sum(w, axis=0)
    return s, z, m_new


@triton.jit
def _group_origin(N, L, G, BKS: tl.constexpr, BVS: tl.constexpr):
    """A group program's batch-head, group, state rows and columns, and its chunks [start, stop)."""
    g = tl.program_id(0) % G
    start = g * L
    return (tl.program_id(0) // G, g, tl.program_id(1) * BKS + tl.arange(0, BKS),
            tl.program_id(2) * BVS + tl.arange(0, BVS), start, tl.minimum(start + L, N))


@triton.jit
def _group_total_kernel(k_ptr, v_ptr, total_kv_ptr, total_k_ptr, group_max_ptr, n, d_k, d_v, N, L, G,
                        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKS: tl.constexpr, BVS: tl.constexpr,
                        PREC: tl.constexpr, STAGES: tl.constexpr):
    """Group g's own sums, chunk by chunk with a running max and nothing stored per chunk: its key max A_g and
    sum_{j in g} exp(k_j - A_g) v_j^T, sum_{j in g} exp(k_j - A_g)."""
    bh, g, fk, fv, start, stop = _group_origin(N, L, G, BKS, BVS)
    s = tl.zeros([BKS, BVS], tl.float32)
    z = tl.zeros([BKS], tl.float32)
    m = tl.full([BKS], float("-inf"), tl.float32)
    for c in tl.range(start, stop, num_stages=STAGES):
        k, v, a = _chunk_keys(k_ptr, v_ptr, bh, c, tl.program_id(1) * BKS, tl.program_id(2) * BVS, n, d_k, d_v,
                              C, BKS, BVS)
        s, z, m = _absorb(s, z, m, k, v, a, PREC)
    slot = bh * G + g
    tl.store(total_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :], s)
    if tl.program_id(2) == 0:
        tl.store(total_k_ptr + slot * BK + fk, z)
        tl.store(group_max_ptr + slot * BK + fk, m)


@triton.jit
def _group_carry_kernel(total_kv_ptr, total_k_ptr, group_max_ptr, start_max_ptr, G,
                        BK: tl.constexpr, BV: tl.constexpr, BKS: tl.constexpr, BVS: tl.constexpr,
                        STAGES: tl.constexpr):
    """Over the groups in order: replaces group g's own sums by the state before it, S^(a_g), and writes its
    reference m^(a_g) (the running max before the group) to start_max."""
    bh = tl.program_id(0)
    fk = tl.program_id(1) * BKS + tl.arange(0, BKS)
    fv = tl.program_id(2) * BVS + tl.arange(0, BVS)
    s = tl.zeros([BKS, BVS], tl.float32)
    z = tl.zeros([BKS], tl.float32)
    m = tl.full([BKS], float("-inf"), tl.float32)
    for g in tl.range(0, G, num_stages=STAGES):
        slot = bh * G + g
        ptrs = total_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :]
        total = tl.load(ptrs)
        a = tl.load(group_max_ptr + slot * BK + fk)
        tl.store(ptrs, s)
        m_new = tl.maximum(m, a)
        old = tl.exp(m - m_new)
        new = tl.exp(a - m_new)
        s = old[:, None] * s + new[:, None] * total
        if tl.program_id(2) == 0:
            total_k = tl.load(total_k_ptr + slot * BK + fk)
            tl.store(total_k_ptr + slot * BK + fk, z)
            tl.store(start_max_ptr + slot * BK + fk, m)
            z = old * z + new * total_k
        m = m_new


@triton.jit
def _state_pass_kernel(k_ptr, v_ptr, state_kv_ptr, state_k_ptr, key_max_ptr, carry_kv_ptr, carry_k_ptr,
                       start_max_ptr, n, d_k, d_v, N, L, G,
                       C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKS: tl.constexpr, BVS: tl.constexpr,
                       PREC: tl.constexpr, STAGES: tl.constexpr, CARRY: tl.constexpr):
    """From the state before group g (the carry, or empty when CARRY is off: one group of all chunks), walks the
    group's chunks and stores the state before each, KV^(c) and KZ^(c), and its reference m^(c); the last
    group also stores m^(N)."""
    bh, g, fk, fv, start, stop = _group_origin(N, L, G, BKS, BVS)
    if CARRY:
        slot = bh * G + g
        s = tl.load(carry_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :])
        z = tl.load(carry_k_ptr + slot * BK + fk)
        m = tl.load(start_max_ptr + slot * BK + fk)
    else:
        s = tl.zeros([BKS, BVS], tl.float32)
        z = tl.zeros([BKS], tl.float32)
        m = tl.full([BKS], float("-inf"), tl.float32)
    for c in tl.range(start, stop, num_stages=STAGES):
        slot = bh * N + c
        tl.store(state_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :], s)
        if tl.program_id(2) == 0:
            tl.store(state_k_ptr + slot * BK + fk, z)
            tl.store(key_max_ptr + (bh * (N + 1) + c) * BK + fk, m)
        k, v, a = _chunk_keys(k_ptr, v_ptr, bh, c, tl.program_id(1) * BKS, tl.program_id(2) * BVS, n, d_k, d_v,
                              C, BKS, BVS)
        s, z, m = _absorb(s, z, m, k, v, a, PREC)
    if (tl.program_id(2) == 0) & (stop == N):
        tl.store(key_max_ptr + (bh * (N + 1) + N) * BK + fk, m)


@triton.jit
def _diag_weights(q, k, row_max, BS: tl.constexpr):
    """[BS, BS, BK] tile exp(q_if + k_jf - M_i), zero above the diagonal (j > i)."""
    ii = tl.arange(0, BS)
    causal = (ii[None, :] <= ii[:, None])[:, :, None]  # [BS, BS, 1]
    e = tl.exp(q[:, None, :] + k[None, :, :] - row_max[:, None, None])
    return tl.where(causal, e, 0.0)


@triton.jit
def _diag_feature(q_base, k_base, row0, n, d_k, f, row_max, causal, BS: tl.constexpr):
    """[BS, BS] tile exp(q_if + k_jf - M_i) of ONE feature f, zero above the diagonal, loaded from memory: the
    looped fallback holds [BS, BS] at a time instead of the [BS, BS, BK] tile. Padded rows: k = -inf."""
    rows = row0 + tl.arange(0, BS)
    qf = tl.load(q_base + rows * d_k + f, mask=rows < n, other=0.0).to(tl.float32)
    kf = tl.load(k_base + rows * d_k + f, mask=rows < n, other=float("-inf")).to(tl.float32)
    return tl.where(causal, tl.exp(qf[:, None] + kf[None, :] - row_max[:, None]), 0.0)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _row_stabiliser(q, k, prefix):
    """M_i = max_f (q_if + r_if), r the running key max (prefix = max of everything before this block)."""
    running = tl.associative_scan(k, 0, _max_combine)  # [BS, BK] in-block cumulative max
    running = tl.maximum(running, prefix[None, :])
    return tl.max(q + running, axis=1)  # [BS], finite


@triton.jit
def _diag_reference(k, prefix, BS: tl.constexpr):
    """Reference of the diagonal block's fast path: r at its first row, and whether every key of the block
    stays within FAST_SPAN of it (then exp(k - ref) <= exp(FAST_SPAN) cannot overflow)."""
    ii = tl.arange(0, BS)
    ref = tl.maximum(prefix, tl.max(tl.where(ii[:, None] == 0, k, float("-inf")), axis=0))  # [BK], finite
    span = tl.max(tl.max(k - ref[None, :], axis=1), axis=0)
    return ref, span


@triton.jit
def _block_origin(q_ptr, k_ptr, v_ptr, n, d_k, d_v, C: tl.constexpr, BS: tl.constexpr):
    """Which sub-block this program owns (forward and backward share the grid): batch-head ``bh``, chunk ``c``,
    sub-block ``x`` of the chunk, its first row, and the batch-head's base pointers of q, k and v."""
    NS: tl.constexpr = C // BS
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    c = pid // NS
    x = pid % NS
    return bh, c, x, c * C + x * BS, q_ptr + bh * n * d_k, k_ptr + bh * n * d_k, v_ptr + bh * n * d_v


@triton.jit
def _earlier_sub_block(q, row_max, k_base, v_base, ref, start, n, d_k, d_v,
                       BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """An earlier sub-block J of the chunk seen from this block's rows: its keys and values, the reference
    advanced to the end of J, and the factors exp(q_i + ref - M_i) (rows) and exp(k_j - ref) (columns), both <= 1."""
    kj = _load_k(k_base, start, n, d_k, BS, BK)
    vj = _load_v(v_base, start, n, d_v, BS, BV)
    ref = tl.maximum(ref, tl.max(kj, axis=0))
    row_f = tl.exp(q + ref[None, :] - row_max[:, None])  # [BS, BK] <= 1
    col_f = tl.exp(kj - ref[None, :])  # [BS, BK] <= 1
    return vj, ref, row_f, col_f


@triton.jit
def _diag_fast_factors(q, k, ref0, row_max, causal, PREC: tl.constexpr):
    """The diagonal block's fast path: row and column factors around one reference, and the causal weights."""
    row_f = tl.exp(q + ref0[None, :] - row_max[:, None])
    col_f = tl.exp(k - ref0[None, :])
    a = tl.where(causal, tl.dot(row_f, tl.trans(col_f), input_precision=PREC), 0.0)
    return row_f, col_f, a


@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, y_ptr, state_kv_ptr, state_k_ptr, key_max_ptr, row_max_ptr, den_ptr,
                    n, d_k, d_v, N,
                    C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                    LOOP_FALLBACK: tl.constexpr = False):
    bh, c, x, row0, q_base, k_base, v_base = _block_origin(q_ptr, k_ptr, v_ptr, n, d_k, d_v, C, BS)
    fk = tl.arange(0, BK)
    fv = tl.arange(0, BV)
    q = _load_q(q_base, row0, n, d_k, BS, BK)
    k = _load_k(k_base, row0, n, d_k, BS, BK)
    v = _load_v(v_base, row0, n, d_v, BS, BV)
    m_prev = tl.load(key_max_ptr + (bh * (N + 1) + c) * BK + fk)  # [BK]

    # Off-diagonal sub-blocks J < x, reference ref_J = max of everything up to the end of J.
    num = tl.zeros([BS, BV], tl.float32)
    den = tl.zeros([BS], tl.float32)
    ref = m_prev
    for j in range(0, x):
        ref = tl.maximum(ref, tl.max(_load_k(k_base, c * C + j * BS, n, d_k, BS, BK), axis=0))
    row_max = _row_stabiliser(q, k, ref)
    ref = m_prev
    for j in range(0, x):
        vj, ref, row_f, col_f = _earlier_sub_block(q, row_max, k_base, v_base, ref, c * C + j * BS, n, d_k, d_v,
                                                   BS, BK, BV)
        a = tl.dot(row_f, tl.trans(col_f), input_precision=PREC)  # [BS, BS]
        num += tl.dot(a, vj, input_precision=PREC)
        den += tl.sum(a, axis=1)

    # Diagonal sub-block. Fast path: one reference (r at the block's first row p0) for the whole block. The
    # row factor exp(q_i + r_p0 - M_i) <= 1 as before; the column factor exp(k_j - r_p0) may exceed 1 for a key
    # larger than everything before p0, but stays <= exp(FAST_SPAN) when the span check passes, and every
    # product kept (j <= i) is still exp(q_if + k_jf - M_i) <= 1. Else: the elementwise [BS, BS, BK] tile.
    ii = tl.arange(0, BS)
    causal = ii[None, :] <= ii[:, None]
    ref0, span = _diag_reference(k, ref, BS)
    if span <= FAST_SPAN:
        row_f, col_f, a = _diag_fast_factors(q, k, ref0, row_max, causal, PREC)
    else:
        if LOOP_FALLBACK:  # one feature at a time: [BS, BS] registers
            a = tl.zeros([BS, BS], tl.float32)
            for f in range(d_k):
                a += _diag_feature(q_base, k_base, row0, n, d_k, f, row_max, causal, BS)
        else:
            a = tl.sum(_diag_weights(q, k, row_max, BS), axis=2)  # [BS, BS]
    num += tl.dot(a, v, input_precision=PREC)
    den += tl.sum(a, axis=1)

    # Earlier chunks through the state.
    slot = bh * N + c
    s = tl.load(state_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :])
    z = tl.load(state_k_ptr + slot * BK + fk)
    past = tl.exp(q + m_prev[None, :] - row_max[:, None])  # [BS, BK], 0 for c = 0
    num += tl.dot(past, s, input_precision=PREC)
    den += tl.sum(past * z[None, :], axis=1)

    rows = row0 + tl.arange(0, BS)
    y = num / den[:, None]
    tl.store(y_ptr + bh * n * d_v + rows[:, None] * d_v + fv[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(rows[:, None] < n) & (fv[None, :] < d_v))
    # Padded rows are stored too (finite M, den >= 1) so that the backward loads them without masks.
    tl.store(row_max_ptr + bh * N * C + rows, row_max)
    tl.store(den_ptr + bh * N * C + rows, den)


# --------------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _chunk_pull(q_ptr, y_ptr, dy_ptr, row_max_ptr, den_ptr, delta_ptr, key_max_ptr, bh, c, col_k, n, d_k, d_v, N,
                C: tl.constexpr, BK: tl.constexpr, BKS: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                DELTA: tl.constexpr):
    """Chunk c's pull on the keys before it: U_c = sum_{i in c} exp(q_i + m^(c) - M_i) g_i^T (state rows col_k..,
    every value column), sum_i exp(q_i + m^(c) - M_i) delta_i, and the reverse recurrence's decay exp(m^(c) -
    m^(c+1)) (0 for c = 0). DELTA: forms delta_i = dy_i . y_i / den_i from y and stores it (the programs of the
    first row tile); else loads it."""
    rows = c * C + tl.arange(0, C)
    stat = bh * N * C
    fk = col_k + tl.arange(0, BKS)
    q = _load_cols(q_ptr + bh * n * d_k, c * C, col_k, n, d_k, C, BKS)
    q = tl.where(fk[None, :] < d_k, q, float("-inf"))  # padded features: no weight
    dy = _load_cols(dy_ptr + bh * n * d_v, c * C, 0, n, d_v, C, BV)
    den = tl.load(den_ptr + stat + rows)
    if DELTA:
        delta = tl.sum(dy * _load_cols(y_ptr + bh * n * d_v, c * C, 0, n, d_v, C, BV), axis=1) / den  # padded: 0
        if col_k == 0:
            tl.store(delta_ptr + stat + rows, delta)
    else:
        delta = tl.load(delta_ptr + stat + rows)
    m_prev = tl.load(key_max_ptr + (bh * (N + 1) + c) * BK + fk)
    m_next = tl.load(key_max_ptr + (bh * (N + 1) + c + 1) * BK + fk)
    past = tl.exp(q + m_prev[None, :] - tl.load(row_max_ptr + stat + rows)[:, None])  # [C, BKS] <= 1
    return (tl.dot(tl.trans(past), dy / den[:, None], input_precision=PREC), tl.sum(past * delta[:, None], axis=0),
            tl.exp(m_prev - m_next))


@triton.jit
def _dgroup_total_kernel(q_ptr, y_ptr, dy_ptr, row_max_ptr, den_ptr, delta_ptr, key_max_ptr, total_kv_ptr,
                         total_k_ptr, n, d_k, d_v, N, L, G,
                         C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKS: tl.constexpr, PREC: tl.constexpr,
                         STAGES: tl.constexpr):
    """Backwards over group g's chunks: delta_i for its rows, and the group's pull on the keys before it,
    sum_{c in g} exp(m^(a_g) - m^(c)) U_c (reference m^(a_g)); nothing stored per chunk."""
    bh, g, fk, fv, start, stop = _group_origin(N, L, G, BKS, BV)
    ds = tl.zeros([BKS, BV], tl.float32)
    dz = tl.zeros([BKS], tl.float32)
    for i in tl.range(0, stop - start, num_stages=STAGES):
        c = stop - 1 - i
        u, uz, decay = _chunk_pull(q_ptr, y_ptr, dy_ptr, row_max_ptr, den_ptr, delta_ptr, key_max_ptr, bh, c,
                                   tl.program_id(1) * BKS, n, d_k, d_v, N, C, BK, BKS, BV, PREC, True)
        ds = u + decay[:, None] * ds  # decay exp(m^(c) - m^(c+1)): 0 for c = 0
        dz = uz + decay * dz
    slot = bh * G + g
    tl.store(total_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :], ds)
    tl.store(total_k_ptr + slot * BK + fk, dz)


@triton.jit
def _dgroup_carry_kernel(total_kv_ptr, total_k_ptr, key_max_ptr, N, L, G,
                         BK: tl.constexpr, BV: tl.constexpr, BKS: tl.constexpr, STAGES: tl.constexpr):
    """Over the groups backwards: replaces each group's pull by the later groups' pull on it, D^(b_g - 1)
    (reference m^(b_g)): d <- exp(m^(a_g) - m^(b_g)) d + pull_g."""
    bh = tl.program_id(0)
    fk = tl.program_id(1) * BKS + tl.arange(0, BKS)
    fv = tl.arange(0, BV)
    s = tl.zeros([BKS, BV], tl.float32)
    z = tl.zeros([BKS], tl.float32)
    for i in tl.range(0, G, num_stages=STAGES):
        g = G - 1 - i
        slot = bh * G + g
        decay = tl.exp(tl.load(key_max_ptr + (bh * (N + 1) + g * L) * BK + fk)
                       - tl.load(key_max_ptr + (bh * (N + 1) + tl.minimum(g * L + L, N)) * BK + fk))  # 0 for g = 0
        ptrs = total_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :]
        total = tl.load(ptrs)
        total_k = tl.load(total_k_ptr + slot * BK + fk)
        tl.store(ptrs, s)
        tl.store(total_k_ptr + slot * BK + fk, z)
        s = decay[:, None] * s + total
        z = decay * z + total_k


@triton.jit
def _dstate_pass_kernel(q_ptr, y_ptr, dy_ptr, row_max_ptr, den_ptr, delta_ptr, key_max_ptr, dstate_kv_ptr,
                        dstate_k_ptr, carry_kv_ptr, carry_k_ptr, n, d_k, d_v, N, L, G,
                        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BKS: tl.constexpr, PREC: tl.constexpr,
                        STAGES: tl.constexpr, CARRY: tl.constexpr, DELTA: tl.constexpr):
    """From the later groups' pull on group g (the carry, or none when CARRY is off: one group of all chunks, which
    then forms delta too: DELTA), walks the group's chunks backwards and stores dKV^(c), dKZ^(c): the later chunks' pull
    on chunk c's keys (reference m^(c+1))."""
    bh, g, fk, fv, start, stop = _group_origin(N, L, G, BKS, BV)
    if CARRY:
        slot = bh * G + g
        ds = tl.load(carry_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :])
        dz = tl.load(carry_k_ptr + slot * BK + fk)
    else:
        ds = tl.zeros([BKS, BV], tl.float32)
        dz = tl.zeros([BKS], tl.float32)
    for i in tl.range(0, stop - start, num_stages=STAGES):
        c = stop - 1 - i
        slot = bh * N + c
        tl.store(dstate_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :], ds)
        tl.store(dstate_k_ptr + slot * BK + fk, dz)
        u, uz, decay = _chunk_pull(q_ptr, y_ptr, dy_ptr, row_max_ptr, den_ptr, delta_ptr, key_max_ptr, bh, c,
                                   tl.program_id(1) * BKS, n, d_k, d_v, N, C, BK, BKS, BV, PREC, DELTA)
        ds = u + decay[:, None] * ds
        dz = uz + decay * dz


@triton.jit
def _backward_kernel(q_ptr, k_ptr, v_ptr, dy_ptr, row_max_ptr, den_ptr, delta_ptr,
                     state_kv_ptr, state_k_ptr, dstate_kv_ptr, dstate_k_ptr, key_max_ptr,
                     dq_ptr, dk_ptr, dv_ptr, n, d_k, d_v, N,
                     C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                     LOOP_FALLBACK: tl.constexpr = False):
    NS: tl.constexpr = C // BS
    bh, c, x, row0, q_base, k_base, v_base = _block_origin(q_ptr, k_ptr, v_ptr, n, d_k, d_v, C, BS)
    dy_base = dy_ptr + bh * n * d_v
    stat = bh * N * C
    fk = tl.arange(0, BK)
    fv = tl.arange(0, BV)
    rows = row0 + tl.arange(0, BS)
    q = _load_q(q_base, row0, n, d_k, BS, BK)
    k = _load_k(k_base, row0, n, d_k, BS, BK)
    v = _load_v(v_base, row0, n, d_v, BS, BV)
    row_max = tl.load(row_max_ptr + stat + rows)
    g = _load_v(dy_base, row0, n, d_v, BS, BV) / tl.load(den_ptr + stat + rows)[:, None]
    delta = tl.load(delta_ptr + stat + rows)
    slot = bh * N + c
    m_prev = tl.load(key_max_ptr + (bh * (N + 1) + c) * BK + fk)
    m_next = tl.load(key_max_ptr + (bh * (N + 1) + c + 1) * BK + fk)

    # This block as queries: earlier chunks through the state.
    s = tl.load(state_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :])
    z = tl.load(state_k_ptr + slot * BK + fk)
    past = tl.exp(q + m_prev[None, :] - row_max[:, None])
    dq = past * (tl.dot(g, tl.trans(s), input_precision=PREC) - delta[:, None] * z[None, :])

    # This block as queries against earlier sub-blocks J of the chunk.
    ref = m_prev
    for j in range(0, x):
        vj, ref, row_f, col_f = _earlier_sub_block(q, row_max, k_base, v_base, ref, c * C + j * BS, n, d_k, d_v,
                                                   BS, BK, BV)
        da = tl.dot(g, tl.trans(vj), input_precision=PREC) - delta[:, None]  # [BS, BS]
        dq += row_f * tl.dot(da, col_f, input_precision=PREC)

    # Diagonal block: both roles (fast path and fallback as in the forward).
    ii = tl.arange(0, BS)
    causal = ii[None, :] <= ii[:, None]
    da = tl.dot(g, tl.trans(v), input_precision=PREC) - delta[:, None]
    da = tl.where(causal, da, 0.0)
    ref0, span = _diag_reference(k, ref, BS)
    if span <= FAST_SPAN:
        row_f, col_f, a = _diag_fast_factors(q, k, ref0, row_max, causal, PREC)
        dq += row_f * tl.dot(da, col_f, input_precision=PREC)
        dk = col_f * tl.dot(tl.trans(da), row_f, input_precision=PREC)
    else:
        if LOOP_FALLBACK:  # one feature at a time; column f of dq and dk placed by a mask
            a = tl.zeros([BS, BS], tl.float32)
            dk = tl.zeros([BS, BK], tl.float32)
            for f in range(d_k):
                e = _diag_feature(q_base, k_base, row0, n, d_k, f, row_max, causal, BS)
                a += e
                de = da * e
                column = (fk == f)[None, :]
                dq += tl.where(column, tl.sum(de, axis=1)[:, None], 0.0)
                dk += tl.where(column, tl.sum(de, axis=0)[:, None], 0.0)
        else:
            e = _diag_weights(q, k, row_max, BS)  # [BS, BS, BK]
            a = tl.sum(e, axis=2)
            de = da[:, :, None] * e
            dq += tl.sum(de, axis=1)
            dk = tl.sum(de, axis=0)
    dv = tl.dot(tl.trans(a), g, input_precision=PREC)

    # This block as keys for later sub-blocks I of the chunk, reference = max up to the end of this block.
    ref = tl.maximum(ref, tl.max(k, axis=0))
    col_f = tl.exp(k - ref[None, :])
    for i in range(x + 1, NS):
        rows_i = c * C + i * BS + tl.arange(0, BS)
        qi = _load_q(q_base, c * C + i * BS, n, d_k, BS, BK)
        gi = _load_v(dy_base, c * C + i * BS, n, d_v, BS, BV) / tl.load(den_ptr + stat + rows_i)[:, None]
        row_f = tl.exp(qi + ref[None, :] - tl.load(row_max_ptr + stat + rows_i)[:, None])
        ai = tl.dot(row_f, tl.trans(col_f), input_precision=PREC)  # [BS_i, BS]
        dai = tl.dot(gi, tl.trans(v), input_precision=PREC) - tl.load(delta_ptr + stat + rows_i)[:, None]
        dk += col_f * tl.dot(tl.trans(dai), row_f, input_precision=PREC)
        dv += tl.dot(tl.trans(ai), gi, input_precision=PREC)

    # This block as keys for later chunks through the reverse state.
    ds = tl.load(dstate_kv_ptr + slot * BK * BV + fk[:, None] * BV + fv[None, :])
    dz = tl.load(dstate_k_ptr + slot * BK + fk)
    key_f = tl.exp(k - m_next[None, :])  # <= 1; padded rows 0
    dk += key_f * (tl.dot(v, tl.trans(ds), input_precision=PREC) - dz[None, :])
    dv += tl.dot(key_f, ds, input_precision=PREC)

    row_ok = rows[:, None] < n
    tl.store(dq_ptr + bh * n * d_k + rows[:, None] * d_k + fk[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=row_ok & (fk[None, :] < d_k))
    tl.store(dk_ptr + bh * n * d_k + rows[:, None] * d_k + fk[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=row_ok & (fk[None, :] < d_k))
    tl.store(dv_ptr + bh * n * d_v + rows[:, None] * d_v + fv[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=row_ok & (fv[None, :] < d_v))


# --------------------------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------------------------


def _dims(d_k: int, d_v: int):
    return max(16, triton.next_power_of_2(d_k)), max(16, triton.next_power_of_2(d_v))


#: The state passes' launch: (rows of the state per program BKS, columns BVS, pipeline stages, warps); None: the
#: whole BK or BV. Rows and columns are at least 16 (each chunk's keys enter the state through one ``tl.dot``);
#: the backward's passes always hold every value column (delta_i needs the whole row). The passes that walk over
#: the groups (one step a group, no ``tl.dot``) use CARRY_ROWS-row tiles so that more programs share the walk. In
#: tune_kernels_h200_passes.json the whole state per program, 2 stages and 4 warps took the 64K forward+backward to
#: 3.61 ms, against 4.03 with 32-row tiles and 4.01 with 3 stages and 8 warps.
SCAN_LAUNCH = (None, None, 2, 4)
#: The diagonal block's fallback (keys more than FAST_SPAN above the block's reference): "tile" forms the
#: [BS, BS, BK] weights at once, "loop" one feature at a time, which holds [BS, BS] registers instead (at BS = 64,
#: BK = 64 the tile would be 262,144 values). "loop" with the 64-row tiles: tune_kernels_h200_two_level.json.
DIAG_FALLBACK = "loop"
#: Chunks per group of the two-level state passes (forward and backward): the sequential part shrinks from n / C
#: steps to SCAN_GROUP steps inside the groups (in parallel) plus n / (C SCAN_GROUP) over them, at the cost of one
#: more parallel pass over the inputs (each group's own sums). 0: one pass over all chunks. In
#: tune_kernels_h200_passes.json groups of 8 / 16 / 32 took the forward+backward to 1.29 / 1.04 / 1.17 ms at 16K
#: and 3.65 / 3.61 / 3.51 ms at 64K, and one pass over all chunks to 2.65 and 9.74 ms; 16 is the fastest over both
#: lengths (smallest geometric mean of the forward and forward+backward times at 16K and 64K), by 3% or less at 64K.
SCAN_GROUP = 16
#: Rows of the state per program of the walks over the groups (``_group_carry_kernel``, ``_dgroup_carry_kernel``):
#: 8, the rows the earlier one-level scans were tuned to; not varied since (at 64K the two walks took 0.05 and
#: 0.04 ms of the default's 3.6 ms forward+backward in tune_kernels_h200_passes.json's profile).
CARRY_ROWS = 8


def _loop_fallback() -> bool:
    if DIAG_FALLBACK not in ("tile", "loop"):
        raise ValueError(f"DIAG_FALLBACK must be 'tile' or 'loop', got {DIAG_FALLBACK!r}")
    return DIAG_FALLBACK == "loop"


def _scan_groups(N: int):
    """``(chunks per group L, groups G)`` of the state passes: one group of all N chunks for the one-level form."""
    if not isinstance(SCAN_GROUP, int) or SCAN_GROUP < 0:
        raise ValueError(f"SCAN_GROUP must be an int >= 0, got {SCAN_GROUP!r}")
    if SCAN_GROUP == 0 or N <= SCAN_GROUP:
        return N, 1
    return SCAN_GROUP, triton.cdiv(N, SCAN_GROUP)


def _scan_tiles(BK: int, BV: int):
    """``(BKS, BVS, stages, warps)`` of the state passes, from :data:`SCAN_LAUNCH`."""
    rows, cols, stages, warps = SCAN_LAUNCH
    return max(16, min(BK, rows or BK)), max(16, min(BV, cols or BV)), stages, warps


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch_sizes(q, v, chunk_size: int):
    """``(BH, n, d_k, d_v, N, BK, BV, precision)`` of a launch over q: [BH, n, d_k], v: [BH, n, d_v]."""
    BH, n, d_k = q.shape
    d_v = v.shape[-1]
    return (BH, n, d_k, d_v, triton.cdiv(n, chunk_size), *_dims(d_k, d_v), _precision(q.dtype))


#: Which launch each kernel fell back to, by kernel, device, dtype and first choice: see :func:`_launch`.
_FALLBACK: dict = {}


def _launch(kernel, choices, grid_of, args) -> dict:
    """Launch ``kernel`` with the first of ``choices`` (dicts of meta-parameters, largest first) that the GPU can
    hold, and return it. The defaults were tuned on an H200; a GPU with less shared memory or fewer registers can
    refuse a launch when it compiles (triton's OutOfResources, before anything runs), and then the next choice
    is tried: one pipeline stage, smaller tiles of the state, a smaller sub-block. Every choice computes the same
    result. The choice that compiled is remembered, so later calls start there."""
    key = (kernel, args[0].device, args[0].dtype, *choices[0].values())
    for i in range(_FALLBACK.get(key, 0), len(choices)):
        try:
            kernel[grid_of(choices[i])](*args, **choices[i])
        except triton.runtime.errors.OutOfResources:
            if i == len(choices) - 1:
                raise
            continue
        _FALLBACK[key] = i
        return choices[i]


def _state_choices(bks: int, bvs: int, stages: int) -> list:
    """The state passes' launch and what it falls back to: one stage, then 16-row tiles of the state."""
    choices = [dict(BKS=bks, BVS=bvs, STAGES=stages)]
    if stages > 1:
        choices.append(dict(BKS=bks, BVS=bvs, STAGES=1))
    if bks > 16:
        choices.append(dict(BKS=16, BVS=bvs, STAGES=1))
    return choices


def _block_choices(BS: int) -> list:
    """The output kernels' sub-block and what it falls back to: halves, down to 16 rows."""
    return [dict(BS=bs) for bs in (BS >> i for i in range(BS.bit_length())) if bs >= 16]


def _forward(q, k, v, chunk_size: int, sub_block: int, num_warps: int):
    """q, k: [BH, n, d_k], v: [BH, n, d_v] contiguous. Returns y and what the backward needs."""
    BH, n, d_k, d_v, N, BK, BV, prec = _launch_sizes(q, v, chunk_size)
    C, BS = chunk_size, sub_block
    f32 = dict(device=q.device, dtype=torch.float32)
    state_kv = torch.empty(BH, N, BK, BV, **f32)
    state_k = torch.empty(BH, N, BK, **f32)
    key_max = torch.empty(BH, N + 1, BK, **f32)
    row_max = torch.empty(BH, N * C, **f32)
    den = torch.empty(BH, N * C, **f32)
    y = torch.empty(BH, n, d_v, device=q.device, dtype=q.dtype)
    L, G = _scan_groups(N)
    bks, bvs, stages, warps = _scan_tiles(BK, BV)
    common = dict(C=C, BK=BK, BV=BV, PREC=prec, num_warps=warps)
    choices = [dict(common, **c) for c in _state_choices(bks, bvs, stages)]
    grid_of = lambda c: (BH * G, BK // c["BKS"], BV // c["BVS"])  # noqa: E731
    carry = [state_kv] * 3  # not read without groups
    if G > 1:
        carry = [torch.empty(BH, G, BK, BV, **f32), torch.empty(BH, G, BK, **f32), torch.empty(BH, G, BK, **f32)]
        group_max = torch.empty(BH, G, BK, **f32)
        _launch(_group_total_kernel, choices, grid_of, (k, v, carry[0], carry[1], group_max, n, d_k, d_v, N, L, G))
        rows = min(CARRY_ROWS, BK)
        _group_carry_kernel[(BH, BK // rows, 1)](carry[0], carry[1], group_max, carry[2], G, BK=BK, BV=BV,
                                                 BKS=rows, BVS=BV, STAGES=stages, num_warps=warps)
    _launch(_state_pass_kernel, [dict(c, CARRY=G > 1) for c in choices], grid_of,
            (k, v, state_kv, state_k, key_max, *carry, n, d_k, d_v, N, L, G))
    _launch(_forward_kernel, [dict(c, C=C, BK=BK, BV=BV, PREC=prec, LOOP_FALLBACK=_loop_fallback(),
                                   num_warps=num_warps) for c in _block_choices(BS)],
            lambda c: (N * (C // c["BS"]), BH), (q, k, v, y, state_kv, state_k, key_max, row_max, den, n, d_k, d_v, N))
    return y, (state_kv, state_k, key_max, row_max, den)


def _backward(q, k, v, y, dy, saved, chunk_size: int, sub_block: int, num_warps: int):
    state_kv, state_k, key_max, row_max, den = saved
    BH, n, d_k, d_v, N, BK, BV, prec = _launch_sizes(q, v, chunk_size)
    C, BS = chunk_size, sub_block
    f32 = dict(device=q.device, dtype=torch.float32)
    dstate_kv = torch.empty_like(state_kv)
    dstate_k = torch.empty_like(state_k)
    delta = torch.empty_like(den)
    L, G = _scan_groups(N)
    bks, _, stages, warps = _scan_tiles(BK, BV)
    common = dict(C=C, BK=BK, BV=BV, PREC=prec, num_warps=warps)
    choices = [dict(common, BKS=c["BKS"], STAGES=c["STAGES"]) for c in _state_choices(bks, BV, stages)]
    grid_of = lambda c: (BH * G, BK // c["BKS"], 1)  # noqa: E731
    carry = [dstate_kv, dstate_k]  # not read without groups
    if G > 1:
        carry = [torch.empty(BH, G, BK, BV, **f32), torch.empty(BH, G, BK, **f32)]
        _launch(_dgroup_total_kernel, choices, grid_of,
                (q, y, dy, row_max, den, delta, key_max, *carry, n, d_k, d_v, N, L, G))
        rows = min(CARRY_ROWS, BK)
        _dgroup_carry_kernel[(BH, BK // rows, 1)](*carry, key_max, N, L, G, BK=BK, BV=BV, BKS=rows, STAGES=stages,
                                                  num_warps=warps)
    _launch(_dstate_pass_kernel, [dict(c, CARRY=G > 1, DELTA=G == 1) for c in choices], grid_of,
            (q, y, dy, row_max, den, delta, key_max, dstate_kv, dstate_k, *carry, n, d_k, d_v, N, L, G))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _launch(_backward_kernel, [dict(c, C=C, BK=BK, BV=BV, PREC=prec, LOOP_FALLBACK=_loop_fallback(),
                                    num_warps=num_warps) for c in _block_choices(BS)],
            lambda c: (N * (C // c["BS"]), BH),
            (q, k, v, dy, row_max, den, delta, state_kv, state_k, dstate_kv, dstate_k, key_max, dq, dk, dv,
             n, d_k, d_v, N))
    return dq, dk, dv


class _LogAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, chunk_size, sub_block, num_warps):
        batch, (n, d_k), d_v = q.shape[:-2], q.shape[-2:], v.shape[-1]
        BH = math.prod(batch)
        q3, k3, v3 = (x.reshape(BH, n, x.shape[-1]).contiguous() for x in (q, k, v))
        y3, saved = _forward(q3, k3, v3, chunk_size, sub_block, num_warps or NUM_WARPS)
        ctx.save_for_backward(q3, k3, v3, y3, *saved)
        ctx.config = (batch, chunk_size, sub_block, num_warps)
        return y3.view(tuple(batch) + (n, d_v))

    @staticmethod
    def backward(ctx, dy):
        q3, k3, v3, y3, *saved = ctx.saved_tensors
        batch, chunk_size, sub_block, num_warps = ctx.config
        dy3 = dy.reshape(y3.shape).to(y3.dtype).contiguous()
        dq, dk, dv = _backward(q3, k3, v3, y3, dy3, saved, chunk_size, sub_block, num_warps or BACKWARD_NUM_WARPS)
        shape = lambda x: x.view(tuple(batch) + tuple(x.shape[-2:]))  # noqa: E731
        return shape(dq), shape(dk), shape(dv), None, None, None


def log_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, chunk_size: int = None,
                         sub_block: int = None, num_warps: int = None) -> torch.Tensor:
    """Causal log-of-exponentials attention (eq. 1), any-sign V, with fused Triton forward and backward.

    ``y_i = sum_{j<=i} sum_f exp(q_if + k_jf) v_j / sum_{j<=i} sum_f exp(q_if + k_jf)``, stable for any
    finite q, k (derivation in the module docstring). Differentiable in q, k and v.

    Args:
        q: ``[..., n, d_k]``; k: ``[..., n, d_k]``; v: ``[..., n, d_v]``, one shape of leading (batch/head)
            dims, one dtype (float32, float16 or bfloat16), one CUDA device (CPU only under
            ``TRITON_INTERPRET=1``). ``d_k, d_v <= 128``.
        chunk_size: tokens per carried state, a power of two and a multiple of ``sub_block``; None: the tuned
            :data:`CHUNK_SIZE`.
        sub_block: rows per tile, a power of two >= 16 (the smallest ``tl.dot``); None: the tuned
            :data:`SUB_BLOCK`, or ``chunk_size`` where that is smaller.
        num_warps: warps per program of the chunk kernels, forward and backward; None: the tuned
            :data:`NUM_WARPS` for the forward and :data:`BACKWARD_NUM_WARPS` for the backward.

    Returns:
        ``y``: ``[..., n, d_v]`` in the input dtype (accumulated in float32).

    Raises:
        TypeError: non-tensors, unsupported or mixed dtypes. ValueError: shapes, devices, block sizes.
        RuntimeError: the device or dtype is not supported here (see :func:`is_supported`).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got dtype {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dimensions [..., n, d], got shape {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"causal attention needs q, k of one shape [..., n, d_k] and v [..., n, d_v] with the same leading "
            f"dims, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM or q.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(f"d_k and d_v must be in 1..{MAX_HEAD_DIM}, got d_k={q.shape[-1]}, d_v={v.shape[-1]}")
    chunk_size = CHUNK_SIZE if chunk_size is None else chunk_size
    if sub_block is None and isinstance(chunk_size, int):
        sub_block = min(SUB_BLOCK, chunk_size)
    for name, val in (("chunk_size", chunk_size), ("sub_block", sub_block)):
        if not isinstance(val, int) or val < 16 or val & (val - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {val!r}")
    if chunk_size % sub_block:
        raise ValueError(f"chunk_size must be a multiple of sub_block, got {chunk_size} and {sub_block}")
    if num_warps is not None and (not isinstance(num_warps, int) or num_warps not in (1, 2, 4, 8, 16)):
        raise ValueError(f"num_warps must be None or one of 1, 2, 4, 8, 16, got {num_warps!r}")
    if not is_supported(q):
        raise _unsupported("log_attention_triton", q)
    if q.shape[-2] == 0:
        return q.new_zeros(v.shape)
    return _LogAttentionFunction.apply(q, k, v, chunk_size, sub_block, num_warps)


# --------------------------------------------------------------------------------------------------------
# Decoding: one fused kernel per token
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _decode_step_kernel(kv_ptr, ksum_ptr, max_ptr, q_ptr, k_ptr, v_ptr, y_ptr, T, d_k, d_v,
                        BK: tl.constexpr, BV: tl.constexpr):
    """One program per batch-head: T consecutive tokens through the state, which is read once before the first
    and written once after the last (the recurrence, eqs. 5-6, with the running-max stabiliser)."""
    b = tl.program_id(0)
    fk = tl.arange(0, BK)
    fv = tl.arange(0, BV)
    ok_k = fk < d_k
    ok_v = fv < d_v
    ptrs = kv_ptr + b * d_k * d_v + fk[:, None] * d_v + fv[None, :]
    mask = ok_k[:, None] & ok_v[None, :]
    # Padded features: k = m = 0 (no -inf - -inf), q = -inf (their query weight is 0).
    s = tl.load(ptrs, mask=mask, other=0.0)
    z = tl.load(ksum_ptr + b * d_k + fk, mask=ok_k, other=0.0)
    m = tl.load(max_ptr + b * d_k + fk, mask=ok_k, other=0.0)
    for t in range(T):
        row = b * T + t
        k = tl.load(k_ptr + row * d_k + fk, mask=ok_k, other=0.0).to(tl.float32)
        q = tl.load(q_ptr + row * d_k + fk, mask=ok_k, other=float("-inf")).to(tl.float32)
        v = tl.load(v_ptr + row * d_v + fv, mask=ok_v, other=0.0).to(tl.float32)
        m_new = tl.maximum(m, k)  # finite: k is
        decay = tl.exp(m - m_new)  # 0 for the empty state (m = -inf)
        w = tl.exp(k - m_new)  # <= 1
        s = s * decay[:, None] + w[:, None] * v[None, :]
        z = z * decay + w
        m = m_new
        logit = q + m
        qw = tl.exp(logit - tl.max(logit, axis=0))  # <= 1, one entry exp(0)
        y = tl.sum(qw[:, None] * s, axis=0) / tl.sum(qw * z, axis=0)  # den >= 1
        tl.store(y_ptr + row * d_v + fv, y.to(y_ptr.dtype.element_ty), mask=ok_v)
    tl.store(ptrs, s, mask=mask)
    tl.store(ksum_ptr + b * d_k + fk, z, mask=ok_k)
    tl.store(max_ptr + b * d_k + fk, m, mask=ok_k)


def _check_decode_state(sum_kv, sum_k, key_max):
    for name, x in (("sum_kv", sum_kv), ("sum_k", sum_k), ("key_max", key_max)):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or not x.is_contiguous():
            raise TypeError(f"{name} must be a contiguous float32 tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
    d_k, d_v = sum_kv.shape[-2:]
    if max(d_k, d_v) > MAX_HEAD_DIM:
        raise ValueError(f"d_k and d_v must be <= {MAX_HEAD_DIM}, got {d_k} and {d_v}")
    return tuple(sum_kv.shape[:-2]), d_k, d_v


#: Warps per program of the decode kernel (one program per batch-head). 2: on an H200 (benchmarks/results/
#: tune_kernels_h200_third.json, 8 heads, d = 64, per step inside a graph of 32 steps) 2 warps took 2.51 us at batch
#: 1 and 4.94 us at batch 64, against 2.58 / 5.04 for 1, 3.36 / 6.04 for 4 and 3.25 / 6.61 for 8. In the fourth run
#: (tune_kernels_h200_passes.json) 2 warps took 2.92 / 5.14 us, and 1 warp 2.85 / 5.34: close at batch 1, slower
#: at batch 64.
DECODE_NUM_WARPS = 2


def _launch_decode(sum_kv, sum_k, key_max, q, k, v, out, T: int):
    B = math.prod(sum_kv.shape[:-2])
    BK, BV = _dims(*sum_kv.shape[-2:])
    _decode_step_kernel[(B,)](sum_kv, sum_k, key_max, q.contiguous(), k.contiguous(), v.contiguous(), out,
                              T, sum_kv.shape[-2], sum_kv.shape[-1], BK=BK, BV=BV, num_warps=DECODE_NUM_WARPS)
    return out


def decode_step_triton(sum_kv: torch.Tensor, sum_k: torch.Tensor, key_max: torch.Tensor, q_t: torch.Tensor,
                       k_t: torch.Tensor, v_t: torch.Tensor, out: torch.Tensor = None) -> torch.Tensor:
    """One token of the recurrent form (the oracle's ``step``), fused into one kernel, state updated IN PLACE.

    With ``m' = max(m, k_t)``: ``sum_kv <- exp(m - m') sum_kv + exp(k_t - m') v_t^T``, ``sum_k <- exp(m - m')
    sum_k + exp(k_t - m')``, ``m <- m'``, and ``y_t = sum_f exp(q_tf + m'_f - M) sum_kv_f / sum_f exp(q_tf + m'_f
    - M) sum_k_f``, ``M = max_f(q_t + m')`` (the recurrence, eqs. 5-6, in linear space with the running-max
    stabiliser). No host synchronisation: it can be captured in a CUDA graph.

    Args:
        sum_kv: ``[..., d_k, d_v]`` float32 contiguous; sum_k, key_max: ``[..., d_k]`` float32 contiguous (the
            fields of ``LogAttentionState``; key_max ``-inf`` for the empty state).
        q_t, k_t: ``[..., d_k]``; v_t: ``[..., d_v]`` (any supported dtype, same leading dims).
        out: optional ``[..., d_v]`` output buffer (for graph capture); default a new tensor of v_t's dtype.

    Returns:
        ``y_t``: ``[..., d_v]``.

    Raises:
        TypeError: state not float32 / not contiguous. ValueError: shapes that do not match the state.
    """
    batch, d_k, d_v = _check_decode_state(sum_kv, sum_k, key_max)
    for name, x, d in (("q_t", q_t, d_k), ("k_t", k_t, d_k), ("v_t", v_t, d_v), ("sum_k", sum_k, d_k),
                       ("key_max", key_max, d_k)):
        if tuple(x.shape) != batch + (d,):
            raise ValueError(f"{name} must have shape {batch + (d,)}, got {tuple(x.shape)}")
    if out is None:
        out = torch.empty(v_t.shape, device=v_t.device, dtype=v_t.dtype)
    return _launch_decode(sum_kv, sum_k, key_max, q_t, k_t, v_t, out, 1)


def decode_tokens_triton(sum_kv: torch.Tensor, sum_k: torch.Tensor, key_max: torch.Tensor, q: torch.Tensor,
                         k: torch.Tensor, v: torch.Tensor, out: torch.Tensor = None) -> torch.Tensor:
    """T consecutive tokens of the recurrent form in ONE launch, state updated IN PLACE: the same result as T
    calls of :func:`decode_step_triton`, with the state read and written once instead of T times.

    For a batch of one (or a few) sequences a single step is launch-bound: its state is tens of KiB, far below
    what a launch costs. Feeding several known tokens per launch (a prompt's tail, speculative draft tokens to
    verify, teacher-forced scoring) divides that fixed cost by T.

    Args:
        sum_kv, sum_k, key_max: the state, as for :func:`decode_step_triton`.
        q, k: ``[..., T, d_k]``; v: ``[..., T, d_v]`` (same leading dims as the state, T >= 1).
        out: optional ``[..., T, d_v]`` output buffer; default a new tensor of v's dtype.

    Returns:
        ``y``: ``[..., T, d_v]``, token t attending to the state and tokens 0..t.

    Raises:
        TypeError: state not float32 / not contiguous. ValueError: shapes that do not match the state, T = 0.
    """
    batch, d_k, d_v = _check_decode_state(sum_kv, sum_k, key_max)
    T = q.shape[-2] if isinstance(q, torch.Tensor) and q.dim() >= 2 else 0
    for name, x, d in (("q", q, d_k), ("k", k, d_k), ("v", v, d_v)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != batch + (T, d) or T < 1:
            raise ValueError(f"{name} must have shape {batch + ('T', d)} with T >= 1 (T from q), got "
                             f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
    for name, x, d in (("sum_k", sum_k, d_k), ("key_max", key_max, d_k)):
        if tuple(x.shape) != batch + (d,):
            raise ValueError(f"{name} must have shape {batch + (d,)}, got {tuple(x.shape)}")
    if out is None:
        out = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    return _launch_decode(sum_kv, sum_k, key_max, q, k, v, out, T)


# --------------------------------------------------------------------------------------------------------
# The softmax baseline's decode step over a static KV cache, split over the cache (flash-decoding)
# --------------------------------------------------------------------------------------------------------
#: Cache slots per program of the split-KV softmax decode: a long cache is spread over many programs, so one
#: query of a small batch still fills the GPU (Dao et al.'s flash-decoding idea; written here from it, untuned).
SOFTMAX_DECODE_SPLIT = 512


@triton.jit
def _softmax_decode_split_kernel(q_ptr, k_ptr, v_ptr, last_ptr, acc_ptr, stat_ptr, capacity, d, scale,
                                 SPLIT: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """One (batch-head, slice of the cache): online softmax of q . k_j over the valid slots j <= last of the slice;
    writes its unnormalised sum of weights times values and its (max, sum of weights)."""
    bh = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    fd = tl.arange(0, BD)
    ok_d = fd < d
    q = tl.load(q_ptr + bh * d + fd, mask=ok_d, other=0.0).to(tl.float32) * scale
    last = tl.load(last_ptr)
    m = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    acc = tl.zeros([BD], tl.float32)
    for offset in range(0, SPLIT, BN):
        rows = split * SPLIT + offset + tl.arange(0, BN)
        ok = (rows <= last) & (rows < capacity)
        base = (bh * capacity + rows)[:, None] * d + fd[None, :]
        k = tl.load(k_ptr + base, mask=ok[:, None] & ok_d[None, :], other=0.0).to(tl.float32)
        scores = tl.where(ok, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no slot yet: keep every weight exp(-inf) = 0
        p = tl.exp(scores - ref)
        rescale = tl.exp(m - ref)
        v = tl.load(v_ptr + base, mask=ok[:, None] & ok_d[None, :], other=0.0).to(tl.float32)
        acc = acc * rescale + tl.sum(p[:, None] * v, axis=0)
        total = total * rescale + tl.sum(p, axis=0)
        m = m_new
    slot = bh * splits + split
    tl.store(acc_ptr + slot * BD + fd, acc)
    tl.store(stat_ptr + slot * 2, m)
    tl.store(stat_ptr + slot * 2 + 1, total)


@triton.jit
def _softmax_decode_combine_kernel(acc_ptr, stat_ptr, out_ptr, splits, d, BS: tl.constexpr, BD: tl.constexpr):
    """One batch-head: the slices' partial sums combined around their largest max (empty slices weigh 0)."""
    bh = tl.program_id(0)
    fd = tl.arange(0, BD)
    m = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    acc = tl.zeros([BD], tl.float32)
    for start in range(0, splits, BS):
        ids = start + tl.arange(0, BS)
        ok = ids < splits
        slot = bh * splits + ids
        ms = tl.load(stat_ptr + slot * 2, mask=ok, other=float("-inf"))
        sums = tl.load(stat_ptr + slot * 2 + 1, mask=ok, other=0.0)
        accs = tl.load(acc_ptr + slot[:, None] * BD + fd[None, :], mask=ok[:, None], other=0.0)
        m_new = tl.maximum(m, tl.max(ms, axis=0))
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.exp(ms - ref)
        rescale = tl.exp(m - ref)
        acc = acc * rescale + tl.sum(w[:, None] * accs, axis=0)
        total = total * rescale + tl.sum(w * sums, axis=0)
        m = m_new
    tl.store(out_ptr + bh * d + fd, (acc / total).to(out_ptr.dtype.element_ty), mask=fd < d)


def softmax_decode_triton(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, last: torch.Tensor,
                          scale: float = None, split: int = SOFTMAX_DECODE_SPLIT) -> torch.Tensor:
    """Softmax attention of one query per batch-head over a static KV cache's slots ``0..last``, split over the
    cache (flash-decoding): the softmax arm's decode step, for a fair comparison at small batches and long caches.

    ``y = softmax(scale * q . k_j, j <= last) @ v``. Slots after ``last`` are never read (they may hold anything).
    ``last`` is a one-element integer tensor on the device (no host synchronisation: it can be captured in a CUDA
    graph and advanced in place).

    Args:
        q: ``[..., d]``; keys, values: ``[..., capacity, d]`` contiguous, one dtype (float32, float16, bfloat16).
        last: one-element integer tensor, ``0 <= last < capacity``. scale: default ``d ** -0.5`` (as SDPA).
        split: cache slots per program, a power of two >= 16.

    Returns:
        ``[..., d]`` in q's dtype.

    Raises:
        TypeError / ValueError naming the argument; RuntimeError where the kernels do not run.
    """
    for name, x in (("q", q), ("keys", keys), ("values", values)):
        if not isinstance(x, torch.Tensor) or x.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be a float32, float16 or bfloat16 tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
    if keys.shape != values.shape or keys.dim() < 2 or tuple(q.shape) != tuple(keys.shape[:-2]) + (keys.shape[-1],):
        raise ValueError(f"keys and values must be [..., capacity, d] and q [..., d] with the same leading dims, "
                         f"got q {tuple(q.shape)}, keys {tuple(keys.shape)}, values {tuple(values.shape)}")
    if not (keys.is_contiguous() and values.is_contiguous()):
        raise ValueError("keys and values must be contiguous (the cache is read in place)")
    if not isinstance(last, torch.Tensor) or last.numel() != 1 or last.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"last must be a one-element integer tensor, got {getattr(last, 'dtype', type(last).__name__)}")
    if not isinstance(split, int) or split < 16 or split & (split - 1):
        raise ValueError(f"split must be a power of two >= 16, got {split!r}")
    if not is_supported(q):
        raise _unsupported("softmax_decode_triton", q)
    capacity, d = keys.shape[-2:]
    if d > MAX_HEAD_DIM:
        raise ValueError(f"d must be <= {MAX_HEAD_DIM}, got {d}")
    BH = math.prod(keys.shape[:-2])
    splits = triton.cdiv(capacity, split)
    BD = max(16, triton.next_power_of_2(d))
    acc = torch.empty(BH, splits, BD, device=q.device, dtype=torch.float32)
    stat = torch.empty(BH, splits, 2, device=q.device, dtype=torch.float32)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    scale = d ** -0.5 if scale is None else float(scale)
    _softmax_decode_split_kernel[(BH, splits)](q.contiguous(), keys, values, last, acc, stat, capacity, d, scale,
                                               SPLIT=split, BN=min(64, split), BD=BD, num_warps=4)
    _softmax_decode_combine_kernel[(BH,)](acc, stat, out, splits, d, BS=64, BD=BD, num_warps=4)
    return out
