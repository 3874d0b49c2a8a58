"""Graded tasks of lesson 4b (kernels): the learner writes Triton kernels (``@triton.jit``).

- 4b.1 the per-chunk state update: fold one chunk of keys and values into the carried state (sum_kv, sum_k,
  key_max), in place, with the running max updated and the carried sums rescaled to it;
- 4b.2 one chunk's causal output with per-position stabilisers: the intra-chunk triangle plus the carried
  state's contribution, one program per (batch·head, chunk).

The learner writes only the kernel body; the host-side launchers here (:func:`run_state_update`,
:func:`run_chunk_output`) allocate the buffers, launch the grid and hand the results to the check. On a CUDA GPU
the kernel is compiled; without one it runs under Triton's interpreter (the exercise notebook sets
``TRITON_INTERPRET=1`` before the kernels are defined; a kernel defined without it is re-wrapped for the
interpreter here). Shapes stay tiny (C = 16, d_k = 16) so that a check takes seconds on a CPU.

Inputs are float32 (what a kernel computes in); the expected values come from the float64 oracle
(:mod:`logattn_ref.numpy_ref`) on the same float32-rounded inputs, so the tolerance measures float32
rounding, not the algorithm. Memory past the last token of each batch·head (the rows that pad the ragged last
chunk to C) holds NaN: a kernel that reads it without a mask gets NaN, as it could on a GPU, where that
memory holds whatever was there.

The known mistakes are kernels too (one kernel per task with ``tl.constexpr`` switches), run by the same
launcher as the learner's kernel. Triton is optional (Linux only): without it the tasks are registered and
their checks report the missing package.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .. import numpy_ref
from .registry import Case, Mistake, task

if not torch.cuda.is_available():
    # Triton decides at import (its own library) and at each @triton.jit whether kernels are interpreted: without
    # a GPU the variable must be set before triton is first imported (as tests/test_triton_kernels.py does).
    os.environ.setdefault("TRITON_INTERPRET", "1")
try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a Linux-only extra
    triton = None
    tl = None

__all__ = ["CHUNK_SIZE", "run_state_update", "run_chunk_output", "device"]

#: Tokens per chunk in the checks: the smallest tile ``tl.dot`` accepts on a GPU.
CHUNK_SIZE = 16

# A tolerance for float32 kernels against the float64 oracle: rounding of q + k near 1e3 (ulp 6e-5) moves a
# weight by ~1e-4 relative; every known mistake is off by far more (NaN, or errors of order 1).
_RTOL = 1e-3
_ATOL = 1e-4


def device() -> str:
    """Where the kernels run: ``"cuda"`` when a CUDA GPU is available, else ``"cpu"`` (Triton's interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _require_triton() -> None:
    if triton is None:
        raise ModuleNotFoundError("the kernel tasks need Triton (pip install triton, Linux only)")


_COMPILED: dict = {}


def _runnable(kernel):
    """``kernel`` as it can run here: compiled on a GPU, interpreted on a CPU.

    A ``@triton.jit`` kernel defined while ``TRITON_INTERPRET`` was unset cannot run on a CPU; it is re-wrapped
    for the interpreter (kernels that call other ``@triton.jit`` helpers need the variable set before they are
    defined, as the notebook's setup cell does). Any other object launched as ``kernel[grid](...)`` (a known
    mistake here, or a wrapper binding some constexpr arguments) is used as it is.
    """
    _require_triton()
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    if device() == "cpu" and not isinstance(tl.max, InterpretedFunction):
        raise RuntimeError("Triton was imported before TRITON_INTERPRET=1 was set, so it cannot interpret kernels "
                           "on this CPU: restart the kernel and run the notebook's setup cells first")
    if isinstance(kernel, InterpretedFunction):
        return kernel
    if isinstance(kernel, JITFunction):
        return kernel if device() == "cuda" else _jit(kernel.fn)
    if hasattr(type(kernel), "__getitem__"):
        return kernel
    raise TypeError(f"pass the kernel you wrote, decorated with @triton.jit; got {type(kernel).__name__}")


def _jit(source):
    """A plain Python kernel function, compiled (GPU) or interpreted (CPU); one wrapper per function."""
    _require_triton()
    from triton.runtime.interpreter import InterpretedFunction

    if source not in _COMPILED:
        _COMPILED[source] = InterpretedFunction(source) if device() == "cpu" else triton.jit(source)
    return _COMPILED[source]


def _unfinished(err: BaseException):
    """The ``NotImplementedError`` behind a launch error (the interpreter wraps it; the compiler reports the
    ``raise`` as an unsupported statement, quoting its source), or None."""
    seen = err
    while seen is not None:
        if isinstance(seen, NotImplementedError):
            return NotImplementedError(*seen.args)
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    if "NotImplementedError(" in text and "Task 4b." in text:
        start = text.index("Task 4b.")
        return NotImplementedError(text[start:].split('"')[0].split("'")[0])
    return None


def _launch(kernel, grid, *args, **kwargs) -> None:
    runnable = _runnable(kernel)
    try:
        runnable[grid](*args, **kwargs)
    except Exception as err:
        unfinished = _unfinished(err)
        if unfinished is not None:
            raise unfinished from None
        raise


class _Variant:
    """A known-wrong (or the right) kernel: one Python kernel function and the constexpr switches that pick the
    variant. Indexed by a grid like a ``@triton.jit`` kernel, so the launchers run it like the learner's."""

    def __init__(self, source, name: str, **switches):
        self.source, self.switches, self.__name__ = source, switches, name

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.__name__} is a kernel: launch it as kernel[grid](...)")

    def __getitem__(self, grid):
        kernel = _jit(self.source)
        return lambda *args, **kwargs: kernel[grid](*args, **kwargs, **self.switches)


# ------------------------------------------------------------------------------------------------ buffers


def _padded(x, n_rows: int) -> torch.Tensor:
    """[BH, n, d] -> float32 [BH, n_rows, d] on the device, rows n.. filled with NaN (memory past the end)."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach().cpu())
    if x.ndim != 3:
        raise ValueError(f"expected a [batch*heads, n, d] array, got shape {tuple(x.shape)}")
    out = torch.full((x.shape[0], n_rows, x.shape[2]), float("nan"), dtype=torch.float32)
    out[:, : x.shape[1]] = x.to(torch.float32)
    return out.to(device()).contiguous()


def _check_sizes(k, v, chunk_size: int) -> tuple[int, int, int, int, int]:
    bh, n, d_k = k.shape
    d_v = v.shape[-1]
    if tuple(v.shape[:2]) != (bh, n):
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must share [batch*heads, n]")
    for name, size in (("chunk_size", chunk_size), ("d_k", d_k), ("d_v", d_v)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (a tl.arange and tl.dot size), got {size}")
    if n < 1:
        raise ValueError("n must be at least 1")
    n_chunks = -(-n // chunk_size)
    return bh, n, d_k, d_v, n_chunks


# ------------------------------------------------------------------------------------------------ 4b.1


def run_state_update(kernel, k, v, chunk_size: int = CHUNK_SIZE):
    """Launch a Task 4b.1 kernel over a sequence, chunk after chunk, from the empty state.

    Args:
        kernel: ``kernel(k_ptr, v_ptr, sum_kv_ptr, sum_k_ptr, key_max_ptr, n, n_rows, start, C, D_K, D_V)``,
            one program per batch·head (grid ``(BH,)``), folding tokens ``start .. start + C - 1`` (those < n)
            into the state in place.
        k: ``[BH, n, d_k]``, v: ``[BH, n, d_v]`` (NumPy or torch; run in float32); d_k, d_v, chunk_size powers
            of two >= 16.

    Returns:
        ``(sum_kv [BH, N, d_k, d_v], sum_k [BH, N, d_k], key_max [BH, N, d_k])``: the state after each of the
        N = ceil(n / C) chunks (float32 tensors on the CPU).
    """
    bh, n, d_k, d_v, n_chunks = _check_sizes(torch.as_tensor(np.asarray(k)) if not isinstance(k, torch.Tensor) else k,
                                             torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v,
                                             chunk_size)
    n_rows = n_chunks * chunk_size
    k_buf, v_buf = _padded(k, n_rows), _padded(v, n_rows)
    sum_kv = torch.zeros(bh, d_k, d_v, dtype=torch.float32, device=device())
    sum_k = torch.zeros(bh, d_k, dtype=torch.float32, device=device())
    key_max = torch.full((bh, d_k), float("-inf"), dtype=torch.float32, device=device())
    after = []
    for c in range(n_chunks):
        _launch(kernel, (bh,), k_buf, v_buf, sum_kv, sum_k, key_max, n, n_rows, c * chunk_size,
                C=chunk_size, D_K=d_k, D_V=d_v)
        after.append((sum_kv.cpu().clone(), sum_k.cpu().clone(), key_max.cpu().clone()))
    return tuple(torch.stack(field, dim=1) for field in zip(*after))


def _state_update_source(k_ptr, v_ptr, sum_kv_ptr, sum_k_ptr, key_max_ptr, n, n_rows, start,
                         C: tl.constexpr, D_K: tl.constexpr, D_V: tl.constexpr,
                         MASK: tl.constexpr = True, PAD_KEY_ZERO: tl.constexpr = False,
                         RESCALE: tl.constexpr = True, FLIPPED: tl.constexpr = False,
                         CHUNK_MAX_ONLY: tl.constexpr = False, OLD_MAX_WEIGHTS: tl.constexpr = False,
                         STORE_MAX: tl.constexpr = True):
    """The state update (the right one with the default switches; each switch is a known mistake)."""
    bh = tl.program_id(0)
    rows = start + tl.arange(0, C)
    fk = tl.arange(0, D_K)
    fv = tl.arange(0, D_V)
    k_ptrs = k_ptr + (bh * n_rows + rows[:, None]) * D_K + fk[None, :]
    v_ptrs = v_ptr + (bh * n_rows + rows[:, None]) * D_V + fv[None, :]
    if MASK:
        inside = (rows < n)[:, None]
        k = tl.load(k_ptrs, mask=inside, other=0.0 if PAD_KEY_ZERO else float("-inf"))
        v = tl.load(v_ptrs, mask=inside, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    kv_ptrs = sum_kv_ptr + bh * D_K * D_V + fk[:, None] * D_V + fv[None, :]
    m = tl.load(key_max_ptr + bh * D_K + fk)
    sum_kv = tl.load(kv_ptrs)
    sum_k = tl.load(sum_k_ptr + bh * D_K + fk)
    new_max = tl.maximum(m, tl.max(k, axis=0))
    if CHUNK_MAX_ONLY:
        new_max = tl.max(k, axis=0)
    decay = tl.exp(m - new_max)
    if FLIPPED:
        decay = tl.exp(new_max - m)
    if not RESCALE:
        decay = tl.full([D_K], 1.0, tl.float32)
    weight = tl.exp(k - new_max[None, :])
    if OLD_MAX_WEIGHTS:
        weight = tl.exp(k - m[None, :])
    sum_kv = decay[:, None] * sum_kv + tl.dot(tl.trans(weight), v, input_precision="ieee")
    sum_k = decay * sum_k + tl.sum(weight, axis=0)
    tl.store(kv_ptrs, sum_kv)
    tl.store(sum_k_ptr + bh * D_K + fk, sum_k)
    if STORE_MAX:
        tl.store(key_max_ptr + bh * D_K + fk, new_max)


def _state_variant(name: str, **switches) -> _Variant:
    return _Variant(_state_update_source, name, **switches)


def _drive_state_update(fn, case):
    return run_state_update(fn, *case.args, chunk_size=case.kwargs["chunk_size"])


def _oracle_states(case):
    k, v = case.args
    size = case.kwargs["chunk_size"]
    state = numpy_ref.initial_state((k.shape[0],), k.shape[-1], v.shape[-1])
    after = []
    for start in range(0, k.shape[1], size):
        piece = slice(start, start + size)
        _, state = numpy_ref.prefill(state, k[:, piece], k[:, piece], v[:, piece], chunk_size=size)
        after.append((state.sum_kv, state.sum_k, state.key_max))
    return tuple(np.stack(field, axis=1) for field in zip(*after))


def _f32(x) -> np.ndarray:
    """Round to float32 and back: the oracle sees exactly the numbers the kernel loads."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def _kv(rng, bh, n, d_k=16, d_v=16, scale=2.0):
    return (_f32(rng.uniform(-scale, scale, size=(bh, n, d_k))), _f32(rng.normal(size=(bh, n, d_v))))


@task(
    "4b.1",
    "The per-chunk state update, as a Triton kernel",
    points=2,
    concept="the new running max is max(m, max_j k_j) over the chunk's real rows; the carried sums are rescaled "
    "by exp(m - new_max) <= 1 and the chunk adds exp(k_j - new_max)^T v_j; rows past n are masked on load (keys "
    "-inf, values 0)",
    hints=[
        "Load the chunk as [C, D_K] and [C, D_V] tiles (rows start + tl.arange(0, C)), and the state's three "
        "fields of this batch·head; compute the new state; store it over the old one.",
        "Rows >= n lie past the last token: tl.load(..., mask=(rows < n)[:, None], other=float('-inf')) for keys "
        "(exp(-inf) = 0: they add nothing) and other=0.0 for values.",
        "new_max = tl.maximum(m, tl.max(k, axis=0)); decay = tl.exp(m - new_max); w = tl.exp(k - new_max[None, :]); "
        "sum_kv = decay[:, None] * sum_kv + tl.dot(tl.trans(w), v, input_precision='ieee'); "
        "sum_k = decay * sum_k + tl.sum(w, axis=0).",
    ],
    reference=None,
    expected=_oracle_states,
    call=_drive_state_update,
    output_names=("sum_kv", "sum_k", "key_max"),
    mistakes=[
        Mistake(_state_variant("unmasked", MASK=False), "mask the loads: the ragged last chunk has rows past n, and "
                "the memory there is not yours (here it holds NaN); load with mask=(rows < n)[:, None]"),
        Mistake(_state_variant("pad_zero", PAD_KEY_ZERO=True), "a masked key must load as -inf "
                "(other=float('-inf')), not 0: exp(0 - new_max) counts a padded row as a token, and 0 can raise "
                "the running max"),
        Mistake(_state_variant("no_rescale", RESCALE=False), "when the running max grows, rescale the carried "
                "state: multiply sum_kv and sum_k by exp(m - new_max) before adding the chunk"),
        Mistake(_state_variant("flipped", FLIPPED=True), "the rescaling factor is exp(m - new_max) <= 1 (old max "
                "minus new); exp(new_max - m) goes the wrong way and is inf for the empty state"),
        Mistake(_state_variant("chunk_max", CHUNK_MAX_ONLY=True), "the new running max is max(m, max_j k_j): "
                "the carried max m must stay when the chunk's keys are smaller"),
        Mistake(_state_variant("old_max", OLD_MAX_WEIGHTS=True), "weigh the chunk's keys by exp(k_j - new_max), "
                "relative to the NEW max, like the rescaled state; exp(k_j - m) overflows (and is inf while m = -inf)"),
        Mistake(_state_variant("no_store_max", STORE_MAX=False), "store the new running max in key_max: the "
                "sums are now relative to it, and the next chunk starts from it"),
    ],
    rtol=_RTOL,
    atol=_ATOL,
)
def _cases_4b_1(rng):
    fixed = np.random.default_rng(4_21)  # corner cases: the same numbers on every check
    corners = []
    k, v = _kv(fixed, 2, 40)
    k = _f32(k + np.linspace(0.0, 900.0, 40)[None, :, None])  # every chunk raises the running max by ~350
    corners.append(("keys rising by 900 over 40 tokens (chunks 16, 16, 8)", (k, v)))
    k, v = _kv(fixed, 1, 37)
    k[0, 0] += 900.0  # the first chunk's max stays the running max for the later, smaller chunks
    corners.append(("a key larger by 900 at index 0, small keys after (37 tokens)", (_f32(k), v)))
    k, v = _kv(fixed, 2, 21, d_v=32)
    corners.append(("negative keys, d_v = 32, a ragged last chunk of 5", (_f32(k - 3.0), v)))
    n = int(rng.integers(17, 60))
    draws = [
        (f"n = {n}, 3 batch·heads", _kv(rng, 3, n)),
        ("n = 1: one token in a chunk of 16", _kv(rng, 1, 1)),
        ("d_k = 32, d_v = 16, n = 33", _kv(rng, 2, 33, d_k=32)),
        ("keys of +-1000", _kv(rng, 1, n, scale=1000.0)),
    ]
    return ([Case(name, args, {"chunk_size": CHUNK_SIZE}, scale=args[1], corner=True) for name, args in corners]
            + [Case(name, args, {"chunk_size": CHUNK_SIZE}, scale=args[1]) for name, args in draws])


# ------------------------------------------------------------------------------------------------ 4b.2


def _states_before_chunks(k, v, chunk_size: int):
    """The state before each chunk ([BH, N, ...] float64), from the oracle: chunk c reads slot c."""
    state = numpy_ref.initial_state((k.shape[0],), k.shape[-1], v.shape[-1])
    before = []
    for start in range(0, k.shape[1], chunk_size):
        piece = slice(start, start + chunk_size)
        before.append((state.sum_kv, state.sum_k, state.key_max))
        _, state = numpy_ref.prefill(state, k[:, piece], k[:, piece], v[:, piece], chunk_size=chunk_size)
    return tuple(np.stack(field, axis=1) for field in zip(*before))


def run_chunk_output(kernel, q, k, v, chunk_size: int = CHUNK_SIZE) -> torch.Tensor:
    """Launch a Task 4b.2 kernel: every chunk's causal output, one program per (chunk, batch·head).

    The state before each chunk comes from the float64 oracle (rounded to float32), so this task does not
    depend on your Task 4b.1 kernel.

    Args:
        kernel: ``kernel(q_ptr, k_ptr, v_ptr, sum_kv_ptr, sum_k_ptr, key_max_ptr, y_ptr, n, n_rows, n_chunks,
            C, D_K, D_V)`` with grid ``(n_chunks, BH)``.
        q, k: ``[BH, n, d_k]``, v: ``[BH, n, d_v]`` (NumPy or torch; run in float32).

    Returns:
        ``y [BH, n, d_v]`` (float32, on the CPU).
    """
    q, k, v = (np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64) for x in (q, k, v))
    bh, n, d_k, d_v, n_chunks = _check_sizes(torch.as_tensor(k), torch.as_tensor(v), chunk_size)
    if q.shape != k.shape:
        raise ValueError(f"q {q.shape} and k {k.shape} must have one shape")
    n_rows = n_chunks * chunk_size
    sum_kv, sum_k, key_max = (torch.as_tensor(x, dtype=torch.float32).to(device()).contiguous()
                              for x in _states_before_chunks(_f32(k), _f32(v), chunk_size))
    y = torch.full((bh, n_rows, d_v), float("nan"), dtype=torch.float32, device=device())  # unwritten rows show
    _launch(kernel, (n_chunks, bh), _padded(q, n_rows), _padded(k, n_rows), _padded(v, n_rows), sum_kv, sum_k,
            key_max, y, n, n_rows, n_chunks, C=chunk_size, D_K=d_k, D_V=d_v)
    return y[:, :n].cpu()


def _chunk_output_source(q_ptr, k_ptr, v_ptr, sum_kv_ptr, sum_k_ptr, key_max_ptr, y_ptr, n, n_rows, n_chunks,
                         C: tl.constexpr, D_K: tl.constexpr, D_V: tl.constexpr,
                         MASK: tl.constexpr = True, STRICT: tl.constexpr = False, CHUNK_WIDE: tl.constexpr = False,
                         STATE_MAX: tl.constexpr = True, PAST: tl.constexpr = True, NORMALISE: tl.constexpr = True):
    """One chunk's causal output (the right one with the default switches; each switch is a known mistake)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    rows = c * C + tl.arange(0, C)
    fk = tl.arange(0, D_K)
    fv = tl.arange(0, D_V)
    q_ptrs = q_ptr + (bh * n_rows + rows[:, None]) * D_K + fk[None, :]
    k_ptrs = k_ptr + (bh * n_rows + rows[:, None]) * D_K + fk[None, :]
    v_ptrs = v_ptr + (bh * n_rows + rows[:, None]) * D_V + fv[None, :]
    if MASK:
        inside = (rows < n)[:, None]
        q = tl.load(q_ptrs, mask=inside, other=0.0)
        k = tl.load(k_ptrs, mask=inside, other=float("-inf"))
        v = tl.load(v_ptrs, mask=inside, other=0.0)
    else:
        q = tl.load(q_ptrs)
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    slot = bh * n_chunks + c
    m = tl.load(key_max_ptr + slot * D_K + fk)  # [D_K], -inf before the first token
    sum_kv = tl.load(sum_kv_ptr + slot * D_K * D_V + fk[:, None] * D_V + fv[None, :])
    sum_k = tl.load(sum_k_ptr + slot * D_K + fk)

    ii = tl.arange(0, C)
    if STRICT:
        causal = ii[None, :] < ii[:, None]
    else:
        causal = ii[None, :] <= ii[:, None]  # [C, C]: key j visible to query i
    logits = q[:, None, :] + k[None, :, :]  # [C, C, D_K]
    visible = tl.where(causal[:, :, None], logits, float("-inf"))
    if CHUNK_WIDE:
        visible = logits  # the row's future keys too
    row_max = tl.max(tl.max(visible, axis=2), axis=1)  # [C]: max over j <= i and f of q_if + k_jf
    if STATE_MAX:
        row_max = tl.maximum(row_max, tl.max(q + m[None, :], axis=1))  # M_i = max_f (q_if + r_if)
    weights = tl.sum(tl.where(causal[:, :, None], tl.exp(logits - row_max[:, None, None]), 0.0), axis=2)  # [C, C]
    past = tl.exp(q + m[None, :] - row_max[:, None])  # [C, D_K], 0 where m = -inf
    if not PAST:
        past = past * 0.0
    numerator = tl.dot(weights, v, input_precision="ieee") + tl.dot(past, sum_kv, input_precision="ieee")
    denominator = tl.sum(weights, axis=1) + tl.sum(past * sum_k[None, :], axis=1)
    y = numerator / denominator[:, None]
    if not NORMALISE:
        y = numerator
    tl.store(y_ptr + (bh * n_rows + rows[:, None]) * D_V + fv[None, :], y, mask=(rows < n)[:, None])


def _output_variant(name: str, **switches) -> _Variant:
    return _Variant(_chunk_output_source, name, **switches)


def _drive_chunk_output(fn, case):
    return run_chunk_output(fn, *case.args, chunk_size=case.kwargs["chunk_size"])


def _oracle_output(case):
    q, k, v = case.args
    return numpy_ref.log_attention(q, k, v, causal=True)


def _qkv(rng, bh, n, d_k=16, d_v=16, scale=2.0):
    q = rng.uniform(-scale, scale, size=(bh, n, d_k))
    return (_f32(q),) + _kv(rng, bh, n, d_k, d_v, scale)


@task(
    "4b.2",
    "One chunk's causal output with per-position stabilisers, as a Triton kernel",
    points=3,
    concept="query i of a chunk sees the carried state and the chunk's keys j <= i; its stabiliser M_i = max_f "
    "(q_if + r_if) with r_i = max(m, max_{j<=i} k_j) is per position (a key in the row's future must not set it), "
    "and y_i = (A_i v + past_i sum_kv) / (sum_j A_ij + past_i . sum_k)",
    hints=[
        "Build the [C, C, D_K] tile of logits q_if + k_jf (q[:, None, :] + k[None, :, :]) and the causal mask "
        "j <= i (tl.arange(0, C)[None, :] <= tl.arange(0, C)[:, None]).",
        "M_i = max of the masked tile over j and f, and of q_if + m_f over f (the state's keys). Then "
        "A_ij = sum_f exp(logit - M_i) where visible (tl.where, before the sum), past_if = exp(q_if + m_f - M_i).",
        "numerator = tl.dot(A, v) + tl.dot(past, sum_kv) (input_precision='ieee'); denominator = tl.sum(A, 1) + "
        "tl.sum(past * sum_k[None, :], 1); store numerator / denominator[:, None] for rows < n only.",
    ],
    reference=None,
    expected=_oracle_output,
    call=_drive_chunk_output,
    mistakes=[
        Mistake(_output_variant("unmasked", MASK=False), "mask the loads: the ragged last chunk has rows past n, and "
                "the memory there is not yours (here NaN); a value row times a weight 0 is still NaN in tl.dot"),
        Mistake(_output_variant("strict", STRICT=True), "the causal mask is off by one: query i sees key j for "
                "j <= i, itself included (ii[None, :] <= ii[:, None], not <)"),
        Mistake(_output_variant("chunk_wide", CHUNK_WIDE=True), "the stabiliser must be per position: M_i from "
                "the keys j <= i only; a max over the whole chunk takes a key in row i's future, and when that key "
                "is huge every weight row i can see underflows to 0 (0/0)"),
        Mistake(_output_variant("no_state_max", STATE_MAX=False), "include the carried state in the stabiliser: "
                "M_i = max_f (q_if + r_if) with r_i = max(m, max_{j<=i} k_j); without m, exp(q + m - M_i) "
                "overflows after a huge key in an earlier chunk"),
        Mistake(_output_variant("no_past", PAST=False), "add the carried state's contribution: the tokens of "
                "EARLIER chunks reach query i through exp(q_i + m - M_i) @ sum_kv (and . sum_k below)"),
        Mistake(_output_variant("no_normaliser", NORMALISE=False), "divide by the normaliser Z_i = sum_j A_ij "
                "+ past_i . sum_k: y_i = numerator / denominator"),
    ],
    rtol=_RTOL,
    atol=_ATOL,
)
def _cases_4b_2(rng):
    fixed = np.random.default_rng(4_22)  # corner cases: the same numbers on every check
    # Ordinary numbers first: a mistake that only breaks at extreme magnitudes must not hide one that breaks on
    # any data (forgetting the state and a stabiliser without m both give 0/0 after a huge earlier key).
    corners = [("2 batch·heads, d_v = 32, a ragged last chunk of 5 (n = 21)", _qkv(fixed, 2, 21, d_v=32))]
    q, k, v = _qkv(fixed, 1, 32)
    k[0, 11] += 1000.0  # in the future of rows 0..10: a chunk-wide max leaves them 0/0
    corners.append(("a key larger by 1e3 at index 11 of the first chunk (n = 32)", (q, _f32(k), v)))
    q, k, v = _qkv(fixed, 1, 37)
    k[0, 0] += 900.0  # the carried max of the later chunks
    corners.append(("a key larger by 900 at index 0, in an EARLIER chunk (n = 37)", (q, _f32(k), v)))
    n = int(rng.integers(17, 60))
    draws = [
        (f"n = {n}, 3 batch·heads", _qkv(rng, 3, n)),
        ("n = 1", _qkv(rng, 1, 1)),
        ("d_k = 32, d_v = 16, n = 33", _qkv(rng, 2, 33, d_k=32)),
    ]
    return ([Case(name, args, {"chunk_size": CHUNK_SIZE}, scale=args[2], corner=True) for name, args in corners]
            + [Case(name, args, {"chunk_size": CHUNK_SIZE}, scale=args[2]) for name, args in draws])
