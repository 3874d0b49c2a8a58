"""Graded tasks of lesson 4 (scans on the GPU, attention in chunks), written in PyTorch on float64 tensors.

- 4.1 the associative combine of two (max, sum) pairs, the stable log-space "+" that a parallel scan needs;
- 4.2 one chunk of causal attention continuing from the state, and the state update after it;
- 4.3 the decode step, updating the state in place.

Expected values come from the float64 oracle (:mod:`logattn_ref.numpy_ref`). The tasks use float64 tensors so
that the tolerances measure the algorithm, not float32 rounding (the library runs the same code in float32).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import numpy_ref, torch_attention
from .registry import Case, Mistake, task


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _t(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def _sizes(rng):
    return int(rng.choice([5, 7, 13, 19])), int(rng.integers(2, 6)), int(rng.integers(1, 5))


def _qkv(rng, batch, n, d_k, d_v, scale=2.0):
    q = rng.uniform(-scale, scale, size=batch + (n, d_k))
    k = rng.uniform(-scale, scale, size=batch + (n, d_k))
    v = rng.normal(size=batch + (n, d_v))
    return q, k, v


# ------------------------------------------------------------------------------------------------ 4.1


def _combine_reference(m1, s1, m2, s2):
    m1, s1, m2, s2 = (_np(x) for x in (m1, s1, m2, s2))
    m = np.maximum(m1, m2)
    with np.errstate(invalid="ignore"):
        # An empty side (m = -inf, s = 0) contributes nothing; two empty sides stay empty, not NaN.
        w1 = np.where(np.isneginf(m1), 0.0, np.exp(m1 - m))
        w2 = np.where(np.isneginf(m2), 0.0, np.exp(m2 - m))
    return m, s1 * w1 + s2 * w2


def _combine_no_rescale(m1, s1, m2, s2):
    return torch.maximum(m1, m2), s1 + s2


def _combine_flipped(m1, s1, m2, s2):
    m = torch.maximum(m1, m2)
    return m, s1 * torch.exp(m - m1) + s2 * torch.exp(m - m2)


def _combine_min(m1, s1, m2, s2):
    m = torch.minimum(m1, m2)
    return m, s1 * torch.exp(m1 - m) + s2 * torch.exp(m2 - m)


def _combine_nan_on_empty(m1, s1, m2, s2):
    m = torch.maximum(m1, m2)
    return m, s1 * torch.exp(m1 - m) + s2 * torch.exp(m2 - m)  # exp(-inf - (-inf)) = NaN for two empties


@task(
    "4.1",
    "The associative (max, sum) combine",
    points=1,
    concept="(m1, s1) + (m2, s2) = (m, s1 exp(m1 - m) + s2 exp(m2 - m)) with m = max(m1, m2): both sums are "
    "rescaled to the larger max, so every exponential is <= 1; the empty pair (-inf, 0) is the identity",
    hints=[
        "A pair (m, s) stands for the number s * exp(m). Adding two such numbers: bring both to the same exponent.",
        "Use the larger exponent m = torch.maximum(m1, m2): then exp(m1 - m) and exp(m2 - m) are both <= 1.",
        "When both sides are empty, m1 - m = -inf - (-inf) = NaN: use torch.where(torch.isneginf(m1), 0, exp(m1 - m)).",
    ],
    reference=_combine_reference,
    mistakes=[
        Mistake(_combine_no_rescale, "the two sums are relative to different maxima: rescale each by exp(m_i - m) before adding"),
        Mistake(_combine_flipped, "the rescaling factor is exp(m_i - m), which is <= 1; exp(m - m_i) goes the wrong way"),
        Mistake(_combine_min, "take the LARGER max, m = max(m1, m2), so that no exponential exceeds 1"),
        Mistake(_combine_nan_on_empty, "two empty pairs (-inf, 0) must combine to (-inf, 0): exp(-inf - (-inf)) is NaN, "
                "so treat an empty side's weight as 0 explicitly (torch.where)"),
    ],
    rtol=1e-12,
    atol=1e-12,
)
def _cases_4_1(rng):
    def pair(shape, scale):
        return _t(rng.normal(scale=scale, size=shape)), _t(rng.normal(size=shape))

    def case(name, shape, scale=1.0, empty_left=None, empty_right=None):
        m1, s1 = pair(shape, scale)
        m2, s2 = pair(shape, scale)
        for mask, (m, s) in ((empty_left, (m1, s1)), (empty_right, (m2, s2))):
            if mask is not None:
                m[mask] = float("-inf")
                s[mask] = 0.0
        return Case(name, (m1, s1, m2, s2))

    shape = (3, int(rng.integers(2, 7)))
    some = torch.tensor(rng.random(size=shape) < 0.4)
    both = torch.zeros(shape, dtype=torch.bool)
    both[0] = True
    return [
        case("signed sums, shape " + str(shape), shape),
        case("one element", (1,)),
        case("maxima of +-1000 (exp would overflow)", shape, scale=1000.0),
        case("some empty pairs (-inf, 0) on the left", shape, empty_left=some),
        case("pairs empty on BOTH sides", shape, empty_left=both, empty_right=both),
    ]


# ------------------------------------------------------------------------------------------------ 4.2


def _as_torch_state(returned, previous, consumed: int):
    if isinstance(returned, torch_attention.LogAttentionState):
        return returned
    if isinstance(returned, tuple) and len(returned) == 3:
        return torch_attention.LogAttentionState(*returned, count=previous.count + consumed)
    raise TypeError("the new state must be a torch_attention.LogAttentionState or a tuple (sum_kv, sum_k, key_max), "
                    f"got {type(returned).__name__}")


def _drive_chunks(fn, case):
    q, k, v = (_t(x) for x in case.args)
    state = torch_attention.initial_state(tuple(q.shape[:-2]), q.shape[-1], v.shape[-1], dtype=torch.float64)
    outputs, start = [], 0
    for size in case.kwargs["chunks"]:
        sl = slice(start, start + size)
        result = fn(state, q[..., sl, :], k[..., sl, :], v[..., sl, :])
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("chunk_step must return (y, new_state)")
        outputs.append(_np(result[0]))
        state = _as_torch_state(result[1], state, size)
        start += size
    return (np.concatenate(outputs, axis=-2), _np(state.sum_kv), _np(state.sum_k), _np(state.key_max))


def _oracle_run(case):
    q, k, v = case.args
    y = numpy_ref.log_attention(q, k, v, causal=True)
    _, state = numpy_ref.prefill(numpy_ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1]), q, k, v)
    return (y, state.sum_kv, state.sum_k, state.key_max)


def _chunk_step_variant(state, q, k, v, *, chunk_ref=False, decay=True, strict=False, old_max_update=False,
                        mask_after_exp=False):
    """The chunk step, with switches that reproduce the known mistakes."""
    c = q.shape[-2]
    m = state.key_max  # [..., d_k]
    running = torch.maximum(torch.cummax(k, dim=-2).values, m[..., None, :])  # r_i: per position
    if chunk_ref:
        running = torch.maximum(k.amax(dim=-2), m)[..., None, :].expand_as(k)  # one reference for the chunk
    row_max = (q + running).amax(dim=-1, keepdim=True)
    mask = torch.ones(c, c, dtype=torch.bool).tril(-1 if strict else 0)
    logits = q[..., :, None, :] + k[..., None, :, :] - row_max[..., None]  # [..., c, c, d_k]
    # Mask BEFORE exp: a future key may be huge, and exp(+1000) * 0 would be NaN.
    sim = torch.exp(logits.masked_fill(~mask[..., None], float("-inf"))).sum(-1)  # [..., c, c]
    if mask_after_exp:
        sim = torch.exp(logits).sum(-1) * mask
    if chunk_ref:  # the matmul form with a chunk-wide reference: overflow times underflow
        ref = running[..., :1, :]
        sim = (torch.exp(q + ref - row_max) @ torch.exp(k - ref).transpose(-1, -2)) * mask
    past = torch.exp(q + m[..., None, :] - row_max)  # [..., c, d_k]; 0 where m = -inf
    num = sim @ v + past @ state.sum_kv
    den = sim.sum(-1, keepdim=True) + past @ state.sum_k[..., None]
    y = num / den
    new_max = torch.maximum(m, k.amax(dim=-2))
    key_weight = torch.exp(k - (m if old_max_update else new_max)[..., None, :])
    factor = torch.exp(m - new_max) if decay else torch.ones_like(m)
    if old_max_update:
        factor = torch.ones_like(m)
        new_max = m
    sum_kv = factor[..., None] * state.sum_kv + key_weight.transpose(-1, -2) @ v
    sum_k = factor * state.sum_k + key_weight.sum(-2)
    return y, torch_attention.LogAttentionState(sum_kv, sum_k, new_max, state.count + c)


@task(
    "4.2",
    "One chunk of causal attention and its state update",
    points=3,
    concept="inside a chunk the stabiliser must be per position (r_i = max(m, max_{j<=i} k_j)): a chunk-wide key max "
    "in a row's future gives 0/0; after the chunk, rescale the state to the new running max",
    hints=[
        "Query i of the chunk sees the state (the past) and the chunk's keys j <= i. Shift both by one per-row "
        "maximum M_i so that every exponential is <= 1.",
        "r = torch.maximum(torch.cummax(k, dim=-2).values, state.key_max[..., None, :]); M_i = max_f(q_if + r_if). "
        "Intra-chunk weights: exp(q_i + k_j - M_i) summed over f (a [c, c, d_k] tensor is fine for one chunk), "
        "lower-triangular INCLUDING the diagonal; past weights: exp(q_i + m - M_i).",
        "New state: new_max = max(m, max_j k_j); sums = exp(m - new_max) * old sums + exp(k_j - new_max)^T @ v.",
    ],
    reference=None,
    expected=_oracle_run,
    call=_drive_chunks,
    mistakes=[
        Mistake(lambda *a: _chunk_step_variant(*a, chunk_ref=True), "a chunk-wide key max lies in the future of early rows: "
                "exp(q + max) overflows and exp(k - max) underflows (0/0); use the per-position running max r_i"),
        Mistake(lambda *a: _chunk_step_variant(*a, decay=False), "when the running max grows, rescale the old state by "
                "exp(old_max - new_max) before adding the chunk"),
        Mistake(lambda *a: _chunk_step_variant(*a, mask_after_exp=True), "mask BEFORE exp (fill future logits with -inf): "
                "a future key can be huge, exp overflows to inf, and inf * 0 = NaN"),
        Mistake(lambda *a: _chunk_step_variant(*a, strict=True), "the causal mask includes the diagonal: token i sees itself (j <= i)"),
        Mistake(lambda *a: _chunk_step_variant(*a, old_max_update=True), "update key_max to the new running max and store "
                "the chunk's keys relative to it (exp(k - new_max) <= 1)"),
    ],
    rtol=1e-9,
    atol=1e-10,
)
def _cases_4_2(rng):
    n, d_k, d_v = _sizes(rng)
    adversarial = _qkv(rng, (), 16, d_k, d_v)
    adversarial[1][11, :] += 1000.0  # a later key, in the same chunk, larger by 1e3 in every feature
    adversarial[0][2, 0] += 1000.0
    growing = _qkv(rng, (), n, d_k, d_v)
    growing = (growing[0], growing[1] + np.linspace(0.0, 500.0, n)[:, None], growing[2])
    cases = [
        (f"n = {n} in chunks of 4", _qkv(rng, (), n, d_k, d_v), [4] * (n // 4) + ([n % 4] if n % 4 else [])),
        ("n = 1", _qkv(rng, (), 1, d_k, d_v), [1]),
        ("batch and head dims, uneven chunks", _qkv(rng, (2, 3), n, d_k, d_v), [1, n - 3, 2]),
        ("a key larger by 1e3 late in the chunk", adversarial, [8, 8]),
        ("keys that keep growing (0 -> 500)", growing, [3] * (n // 3) + ([n % 3] if n % 3 else [])),
    ]
    return [Case(name, args, {"chunks": chunks}, scale=args[2]) for name, args, chunks in cases]


# ------------------------------------------------------------------------------------------------ 4.3


def _drive_decoder(fn, case):
    q, k, v = (_t(x) for x in case.args)
    state = torch_attention.initial_state(tuple(q.shape[:-2]), q.shape[-1], v.shape[-1], dtype=torch.float64)
    outputs = []
    for t in range(q.shape[-2]):
        y_t = fn(state, q[..., t, :], k[..., t, :], v[..., t, :])
        if isinstance(y_t, tuple):
            raise TypeError("decode_step returns only y_t: it updates the state's tensors in place")
        outputs.append(_np(y_t))
    return (np.stack(outputs, axis=-2), _np(state.sum_kv), _np(state.sum_k), _np(state.key_max))


def _decode_variant(state, q_t, k_t, v_t, *, in_place=True, before=False, decay=True):
    sum_kv, sum_k, key_max = state.sum_kv, state.sum_k, state.key_max
    if not in_place:
        sum_kv, sum_k, key_max = sum_kv.clone(), sum_k.clone(), key_max.clone()
    read = (sum_kv.clone(), sum_k.clone(), key_max.clone())
    new_max = torch.maximum(key_max, k_t)
    factor = torch.exp(key_max - new_max) if decay else torch.ones_like(k_t)
    weight = torch.exp(k_t - new_max)
    sum_kv.mul_(factor[..., None]).add_(weight[..., :, None] * v_t[..., None, :])
    sum_k.mul_(factor).add_(weight)
    key_max.copy_(new_max)
    if not before:
        read = (sum_kv, sum_k, key_max)
    logit = q_t + read[2]
    top = logit.amax(dim=-1, keepdim=True)
    w = torch.exp(logit - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    return (w[..., None, :] @ read[0])[..., 0, :] / (w * read[1]).sum(-1, keepdim=True)


@task(
    "4.3",
    "The in-place decode step",
    points=2,
    concept="one token costs O(d_k d_v) whatever the context: update (sum_kv, sum_k, key_max) IN PLACE (mul_, add_, copy_) "
    "with the rescaling to the new running max, then read y_t from the updated state",
    hints=[
        "The state's tensors are the memory of the decoder: change them with in-place operations (x.mul_(a).add_(b), "
        "x.copy_(y)); rebinding a name (x = x * a) leaves the caller's state unchanged.",
        "new_max = torch.maximum(state.key_max, k_t); factor = exp(key_max - new_max); sums = factor * sums + exp(k_t - new_max) * v_t.",
        "Read after the update: w = exp(q_t + new_max - max_f(q_t + new_max)); y_t = (w @ sum_kv) / (w . sum_k).",
    ],
    reference=None,
    expected=_oracle_run,
    call=_drive_decoder,
    mistakes=[
        Mistake(lambda *a: _decode_variant(*a, in_place=False), "the caller's state never changed: update its tensors IN PLACE "
                "(mul_, add_, copy_) instead of creating new ones"),
        Mistake(lambda *a: _decode_variant(*a, before=True), "update the state with token t BEFORE reading y_t: token t must see itself"),
        Mistake(lambda *a: _decode_variant(*a, decay=False), "when the running max grows, rescale the old sums by exp(old_max - new_max)"),
    ],
    rtol=1e-9,
    atol=1e-10,
)
def _cases_4_3(rng):
    n, d_k, d_v = _sizes(rng)
    growing = _qkv(rng, (), n, d_k, d_v)
    growing = (growing[0], growing[1] + np.linspace(0.0, 1000.0, n)[:, None], growing[2])
    cases = [
        (f"n = {n}", _qkv(rng, (), n, d_k, d_v)),
        ("n = 1", _qkv(rng, (), 1, d_k, d_v)),
        ("batch and head dims", _qkv(rng, (2, 3), n, d_k, d_v)),
        ("keys that keep growing (0 -> 1000)", growing),
        ("large magnitudes of both signs (~1000)", _qkv(rng, (), n, d_k, d_v, 1000.0)),
    ]
    return [Case(name, args, scale=args[2]) for name, args in cases]
