"""Graded tasks of lesson 4 (scans and the chunked form), written in PyTorch on float64 tensors.

- 4.1 the associative combine of two (max, sum) pairs, the stable log-space "+" that a parallel scan needs;
- 4.2 one chunk of causal attention continuing from the state, and the state update after it;
- 4.3 the decode step, updating the state in place;
- 4.4 the backward of a causal cumulative sum, chunk by chunk: a reverse scan that carries the gradient of the
  state from later chunks to earlier ones.

Expected values come from the float64 oracle (:mod:`logattn_ref.numpy_ref`). The tasks use float64 tensors so
that the tolerances measure the algorithm, not float32 rounding (the library runs the same code in float32).
Every check runs fixed corner cases first (built from constants, identical on every check: maxima past
float64's exp range, a huge key in an earlier chunk, keys rising by hundreds, d_v != d_k, batch rows that
differ, a visible weight that underflows to 0), then fresh random draws.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .. import numpy_ref, recurrent
from .registry import Case, InputModified, Mistake, task


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


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _unchanged(before: dict, after: dict) -> None:
    """Raise InputModified naming the first input (a tensor, or a state's field) that the call changed."""
    for name, old in before.items():
        new = after[name]
        if isinstance(old, recurrent.LogAttentionState):
            same = all(_same_tensor(getattr(old, f), getattr(new, f)) for f in ("sum_kv", "sum_k", "key_max"))
        else:
            same = _same_tensor(old, new)
        if not same:
            raise InputModified(f"your function changed its input `{name}` in place")


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


def _combine_left_max(m1, s1, m2, s2):
    return m1, s1 + s2 * torch.exp(m2 - m1)  # the left pair's own max as the reference


def _combine_logaddexp_exponent(m1, s1, m2, s2):
    m = torch.logaddexp(m1, m2)  # the same number, but not the pair (max, sum) the scan carries
    return m, s1 * torch.exp(m1 - m) + s2 * torch.exp(m2 - m)


def _combine_nan_on_empty(m1, s1, m2, s2):
    m = torch.maximum(m1, m2)
    return m, s1 * torch.exp(m1 - m) + s2 * torch.exp(m2 - m)  # exp(-inf - (-inf)) = NaN for two empties


def _combine_linear(m1, s1, m2, s2):
    m = torch.maximum(m1, m2)
    return m, (s1 * torch.exp(m1) + s2 * torch.exp(m2)) / torch.exp(m)  # linear space: overflows past ~709


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
        Mistake(_combine_nan_on_empty, "two empty pairs (-inf, 0) must combine to (-inf, 0): exp(-inf - (-inf)) is NaN, "
                "so treat an empty side's weight as 0 explicitly (torch.where)"),
        Mistake(_combine_logaddexp_exponent, "the new exponent is m = max(m1, m2), the larger of the two maxima; "
                "logaddexp(m1, m2) gives the same number but not the (max, sum) pair the scan carries"),
        Mistake(_combine_left_max, "rescale both sums to the LARGER max: taking the left pair's own max as the "
                "reference makes exp(m2 - m1) overflow when the right max is larger"),
        Mistake(_combine_no_rescale, "the two sums are relative to different maxima: rescale each by exp(m_i - m) before adding"),
        Mistake(_combine_flipped, "the rescaling factor is exp(m_i - m), which is <= 1; exp(m - m_i) goes the wrong way"),
        Mistake(_combine_min, "take the LARGER max, m = max(m1, m2), so that no exponential exceeds 1"),
        Mistake(_combine_linear, "going through linear space (s * exp(m)) overflows for maxima past ~709: stay "
                "relative to the max, multiply each sum by exp(m_i - m) <= 1"),
    ],
    rtol=1e-12,
    atol=1e-12,
)
def _cases_4_1(rng):
    def case(name, shape, scale=1.0, empty_left=None, empty_right=None):
        m1, s1 = _t(rng.normal(scale=scale, size=shape)), _t(rng.normal(size=shape))
        m2, s2 = _t(rng.normal(scale=scale, size=shape)), _t(rng.normal(size=shape))
        for mask, (m, s) in ((empty_left, (m1, s1)), (empty_right, (m2, s2))):
            if mask is not None:
                m[mask] = float("-inf")
                s[mask] = 0.0
        return Case(name, (m1, s1, m2, s2))

    inf = float("-inf")
    corners = [
        # Maxima past float64's exp range (~709), the larger one on either side, signed sums; entry 0 is huge.
        Case("maxima of -900..1000, the larger on either side (exp(m) overflows)", (
            _t([1000.0, -800.0, 420.0, 3.0, 705.0, -5.0]), _t([1.5, -2.0, 0.5, 1.0, -0.25, 2.0]),
            _t([990.0, -600.0, 450.0, 712.0, 2.0, -900.0]), _t([-0.5, 1.0, 3.0, -1.5, 4.0, 0.75])), corner=True),
        Case("maxima 1000 apart: one side's weight underflows to exactly 0", (
            _t([[500.0, -500.0], [0.0, 2.0]]), _t([[2.0, 1.0], [-1.0, 0.5]]),
            _t([[-500.0, 500.0], [1.0, -998.0]]), _t([[3.0, -4.0], [2.0, 7.0]])), corner=True),
        Case("empty pairs (-inf, 0) on one side", (
            _t([inf, 1.0, 300.0]), _t([0.0, -2.0, 1.0]), _t([2.0, inf, 310.0]), _t([1.5, 0.0, -1.0])), corner=True),
        Case("pairs empty on BOTH sides", (
            _t([inf, inf, 0.5]), _t([0.0, 0.0, 2.0]), _t([inf, 4.0, inf]), _t([0.0, -1.0, 0.0])), corner=True),
    ]
    shape = (3, int(rng.integers(2, 7)))
    some = torch.tensor(rng.random(size=shape) < 0.4)
    both = torch.zeros(shape, dtype=torch.bool)
    both[0] = True
    return corners + [
        case("signed sums, shape " + str(shape), shape),
        case("one element", (1,)),
        case("maxima of +-1000 (exp would overflow)", shape, scale=1000.0),
        case("some empty pairs (-inf, 0) on the left", shape, empty_left=some),
        case("pairs empty on BOTH sides", shape, empty_left=both, empty_right=both),
    ]


# ------------------------------------------------------------------------------------------------ 4.2


def _as_torch_state(returned) -> recurrent.LogAttentionState:
    if isinstance(returned, recurrent.LogAttentionState):
        return returned
    if isinstance(returned, tuple) and len(returned) == 4:
        return recurrent.LogAttentionState(*returned)
    if isinstance(returned, tuple) and len(returned) == 3:
        raise TypeError("the new state has no token count: return LogAttentionState(sum_kv, sum_k, key_max, "
                        "state.count + c) (or a tuple (sum_kv, sum_k, key_max, count)); count advances by the chunk "
                        "length c")
    raise TypeError("the new state must be a recurrent.LogAttentionState or a tuple (sum_kv, sum_k, key_max, "
                    f"count), got {type(returned).__name__}")


def _drive_chunks(fn, case):
    q, k, v = (_t(x) for x in case.args)
    state = recurrent.initial_state(tuple(q.shape[:-2]), q.shape[-1], v.shape[-1], dtype=torch.float64)
    outputs, start = [], 0
    for size in case.kwargs["chunks"]:
        sl = slice(start, start + size)
        inputs = {"state": state, "q": q[..., sl, :].clone(), "k": k[..., sl, :].clone(), "v": v[..., sl, :].clone()}
        before = copy.deepcopy(inputs)
        result = fn(*inputs.values())
        _unchanged(before, inputs)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("chunk_step must return (y, new_state)")
        outputs.append(_np(result[0]))
        state = _as_torch_state(result[1])
        start += size
    return (np.concatenate(outputs, axis=-2), _np(state.sum_kv), _np(state.sum_k), _np(state.key_max),
            np.asarray(state.count))


def _oracle_run(case):
    q, k, v = case.args
    y = numpy_ref.log_attention(q, k, v, causal=True)
    _, state = numpy_ref.prefill(numpy_ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1]), q, k, v)
    return (y, state.sum_kv, state.sum_k, state.key_max, np.asarray(state.count))


def _chunk_step_variant(state, q, k, v, *, chunk_ref=False, decay=True, strict=False, old_max_update=False,
                        mask_after_exp=False, mean_shift=False, forget_past=False, count=True, inverted=False):
    """The chunk step, with switches that reproduce the known mistakes."""
    c = q.shape[-2]
    m = state.key_max  # [..., d_k]
    running = torch.maximum(torch.cummax(k, dim=-2).values, m[..., None, :])  # r_i: per position
    if chunk_ref:
        running = torch.maximum(k.amax(dim=-2), m)[..., None, :].expand_as(k)  # one reference for the chunk
    row_max = (q + running).amax(dim=-1, keepdim=True)
    if mean_shift:
        row_max = (q + running).mean(dim=-1, keepdim=True)
    mask = torch.ones(c, c, dtype=torch.bool).tril(-1 if strict else 0)
    if inverted:
        mask = ~mask  # the future instead of the past
    logits = q[..., :, None, :] + k[..., None, :, :] - row_max[..., None]  # [..., c, c, d_k]
    # Mask BEFORE exp: a future key may be huge, and exp(+1000) * 0 would be NaN.
    sim = torch.exp(logits.masked_fill(~mask[..., None], float("-inf"))).sum(-1)  # [..., c, c]
    if mask_after_exp:
        sim = torch.exp(logits).sum(-1) * mask
    if chunk_ref:  # the matmul form with a chunk-wide reference: overflow times underflow
        ref = running[..., :1, :]
        sim = (torch.exp(q + ref - row_max) @ torch.exp(k - ref).transpose(-1, -2)) * mask
    past = torch.exp(q + m[..., None, :] - row_max)  # [..., c, d_k]; 0 where m = -inf
    if forget_past:
        past = torch.zeros_like(past)
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
    return y, recurrent.LogAttentionState(sum_kv, sum_k, new_max, state.count + (c if count else 0))


def _chunk_from_chunk_max(state, q, k, v):
    """Right outputs, but the new key_max is the chunk's own key max: the state's (larger) max is forgotten."""
    y, _ = _chunk_step_variant(state, q, k, v)
    chunk_max = k.amax(dim=-2)
    factor = torch.exp(state.key_max - chunk_max)  # overflows after a huge key in an earlier chunk
    key_weight = torch.exp(k - chunk_max[..., None, :])
    sum_kv = factor[..., None] * state.sum_kv + key_weight.transpose(-1, -2) @ v
    sum_k = factor * state.sum_k + key_weight.sum(-2)
    return y, recurrent.LogAttentionState(sum_kv, sum_k, chunk_max, state.count + q.shape[-2])


def _chunk_count_is_chunk_length(state, q, k, v):
    y, new_state = _chunk_step_variant(state, q, k, v)
    return y, recurrent.LogAttentionState(new_state.sum_kv, new_state.sum_k, new_state.key_max, q.shape[-2])


def _chunk_linear_space(state, q, k, v):
    """No stabiliser at all: exp(q) @ exp(k)^T, and the state kept as linear-space sums (key max 0)."""
    c = q.shape[-2]
    scale = torch.exp(state.key_max)  # 0 for the empty state
    past_kv, past_k = state.sum_kv * scale[..., None], state.sum_k * scale
    eq, ek = torch.exp(q), torch.exp(k)
    w = (eq @ ek.transpose(-1, -2)).tril()
    y = (w @ v + eq @ past_kv) / (w.sum(-1, keepdim=True) + eq @ past_k[..., None])
    sum_kv, sum_k = past_kv + ek.transpose(-1, -2) @ v, past_k + ek.sum(-2)
    return y, recurrent.LogAttentionState(sum_kv, sum_k, torch.zeros_like(sum_k), state.count + c)


@task(
    "4.2",
    "One chunk of causal attention and its state update",
    points=3,
    concept="inside a chunk the stabiliser must be per position (r_i = max(m, max_{j<=i} k_j)): a chunk-wide key max "
    "in a row's future gives 0/0; after the chunk, rescale the state to the new running max max(m, max_j k_j) and "
    "advance the token count by c",
    hints=[
        "Query i of the chunk sees the state (the past) and the chunk's keys j <= i. Shift both by one per-row "
        "maximum M_i so that every exponential is <= 1.",
        "r = torch.maximum(torch.cummax(k, dim=-2).values, state.key_max[..., None, :]); M_i = max_f(q_if + r_if). "
        "Intra-chunk weights: exp(q_i + k_j - M_i) summed over f (a [c, c, d_k] tensor is fine for one chunk), "
        "lower-triangular INCLUDING the diagonal; past weights: exp(q_i + m - M_i).",
        "New state: new_max = max(m, max_j k_j); sums = exp(m - new_max) * old sums + exp(k_j - new_max)^T @ v; "
        "count = state.count + c.",
    ],
    reference=None,
    expected=_oracle_run,
    call=_drive_chunks,
    output_names=("y", "sum_kv", "sum_k", "key_max", "count"),
    mistakes=[
        Mistake(lambda *a: _chunk_step_variant(*a, count=False), "the values are right but the state's token count "
                "did not advance: count = state.count + c"),
        Mistake(_chunk_count_is_chunk_length, "count is the number of tokens consumed so far, state.count + c, "
                "not the length c of this chunk"),
        Mistake(_chunk_from_chunk_max, "the running max is max(state.key_max, max_j k_j): a max over the chunk alone "
                "forgets a huge key of an EARLIER chunk, and exp(m - chunk max) overflows"),
        Mistake(_chunk_linear_space, "no stabiliser: exp(q) and exp(k) in linear space overflow once q + k passes "
                "~709; shift by the running key max and the per-row max M_i"),
        Mistake(lambda *a: _chunk_step_variant(*a, chunk_ref=True), "a chunk-wide key max lies in the future of early rows: "
                "exp(q + max) overflows and exp(k - max) underflows (0/0); use the per-position running max r_i"),
        Mistake(lambda *a: _chunk_step_variant(*a, mean_shift=True), "shift each row by its MAX over features, "
                "M_i = max_f(q_if + r_if), not by the mean: with logits spanning ~1e3 a mean shift overflows"),
        Mistake(lambda *a: _chunk_step_variant(*a, forget_past=True), "query i also sees every token of the EARLIER "
                "chunks, through the state: add exp(q_i + m - M_i) @ sum_kv (and @ sum_k below)"),
        Mistake(lambda *a: _chunk_step_variant(*a, decay=False), "when the running max grows, rescale the old state by "
                "exp(old_max - new_max) before adding the chunk"),
        Mistake(lambda *a: _chunk_step_variant(*a, mask_after_exp=True), "mask BEFORE exp (fill future logits with -inf): "
                "a future key can be huge, exp overflows to inf, and inf * 0 = NaN"),
        Mistake(lambda *a: _chunk_step_variant(*a, inverted=True), "the causal mask is inverted: token i sees the "
                "chunk's keys j <= i (the lower triangle, torch.tril), not the future ones"),
        Mistake(lambda *a: _chunk_step_variant(*a, strict=True), "the causal mask includes the diagonal: token i sees itself (j <= i)"),
        Mistake(lambda *a: _chunk_step_variant(*a, old_max_update=True), "update key_max to the new running max and store "
                "the chunk's keys relative to it (exp(k - new_max) <= 1)"),
    ],
    rtol=1e-9,
    atol=1e-10,
)
def _cases_4_2(rng):
    fixed = np.random.default_rng(4_2)  # corner cases: the same numbers on every check

    def chunked(n, size):
        return [size] * (n // size) + ([n % size] if n % size else [])

    corners = []
    # A future key larger by 720 in one feature: exp of its logit overflows (masking after exp gives inf * 0 = NaN),
    # while a chunk-wide reference still works here (its exp(-720) is tiny but not 0).
    q, k, v = _qkv(fixed, (), 8, 2, 3)
    k[5, 0] += 720.0
    q[:, 1] -= 50.0
    corners.append(("a future key larger by 720 in one feature (exp overflows past ~709)", (q, k, v), [8]))
    # A key 1000 larger than the rest, late in the first chunk (the 0/0 trap of a chunk-wide max); d_v != d_k.
    q, k, v = _qkv(fixed, (), 16, 3, 5)
    k[11, :] += 1000.0
    q[2, 0] += 1000.0
    corners.append(("a key larger by 1e3 late in the chunk, d_k = 3, d_v = 5", (q, k, v), [8, 8]))
    # A huge key at index 0 of the FIRST chunk, small keys after: the later chunks must keep its max.
    q, k, v = _qkv(fixed, (), 9, 4, 2)
    k[0, :] += 900.0
    corners.append(("a huge key at index 0 in an EARLIER chunk, small keys after", (q, k, v), [3, 3, 3]))
    # Keys rising by hundreds across the sequence: every chunk raises the running max (rescale the state).
    q, k, v = _qkv(fixed, (), 10, 3, 4)
    k += np.linspace(0.0, 900.0, 10)[:, None]
    corners.append(("keys rising by 900 across the sequence", (q, k, v), [4, 4, 2]))
    # Logits q + k past float64's exp range and spanning ~1e3 within a row (a mean shift overflows);
    # rows of the batch that differ (one row huge, one ordinary); some visible weights underflow to 0.
    q, k, v = _qkv(fixed, (2,), 7, 3, 2)
    q[0] += np.array([450.0, -500.0, 0.0])
    k[0] += np.array([300.0, -450.0, 20.0])
    corners.append(("logits of +750..-950 in one batch row, ordinary in the other", (q, k, v), [2, 5]))

    n, d_k, d_v = _sizes(rng)
    adversarial = _qkv(rng, (), 16, d_k, d_v)
    adversarial[1][11, :] += 1000.0  # a later key, in the same chunk, larger by 1e3 in every feature
    adversarial[0][2, 0] += 1000.0
    growing = _qkv(rng, (), n, d_k, d_v)
    growing = (growing[0], growing[1] + np.linspace(0.0, 500.0, n)[:, None], growing[2])
    draws = [
        (f"n = {n} in chunks of 4", _qkv(rng, (), n, d_k, d_v), chunked(n, 4)),
        ("n = 1", _qkv(rng, (), 1, d_k, d_v), [1]),
        ("batch and head dims, uneven chunks", _qkv(rng, (2, 3), n, d_k, d_v), [1, n - 3, 2]),
        ("a key larger by 1e3 late in the chunk", adversarial, [8, 8]),
        ("keys that keep growing (0 -> 500)", growing, chunked(n, 3)),
    ]
    return ([Case(name, args, {"chunks": chunks}, scale=args[2], corner=True) for name, args, chunks in corners]
            + [Case(name, args, {"chunks": chunks}, scale=args[2]) for name, args, chunks in draws])


# ------------------------------------------------------------------------------------------------ 4.3


def _drive_decoder(fn, case):
    q, k, v = (_t(x) for x in case.args)
    state = recurrent.initial_state(tuple(q.shape[:-2]), q.shape[-1], v.shape[-1], dtype=torch.float64)
    outputs = []
    for t in range(q.shape[-2]):
        # The state is updated in place: that is the task. The token's q, k, v must stay as they were.
        inputs = {"q_t": q[..., t, :].clone(), "k_t": k[..., t, :].clone(), "v_t": v[..., t, :].clone()}
        before = copy.deepcopy(inputs)
        y_t = fn(state, *inputs.values())
        _unchanged(before, inputs)
        if isinstance(y_t, tuple):
            raise TypeError("decode_step returns only y_t: it updates the state's tensors in place")
        outputs.append(_np(y_t))
    # The state is frozen (its tensors are not): the in-place step cannot advance `count`, so it is not compared.
    return (np.stack(outputs, axis=-2), _np(state.sum_kv), _np(state.sum_k), _np(state.key_max))


def _oracle_decode(case):
    return _oracle_run(case)[:4]


def _decode_variant(state, q_t, k_t, v_t, *, in_place=True, before=False, decay=True, keep_max=False,
                    shift="max", normalise=True):
    sum_kv, sum_k, key_max = state.sum_kv, state.sum_k, state.key_max
    if not in_place:
        sum_kv, sum_k, key_max = sum_kv.clone(), sum_k.clone(), key_max.clone()
    read = (sum_kv.clone(), sum_k.clone(), key_max.clone())
    new_max = torch.maximum(key_max, k_t)
    factor = torch.exp(key_max - new_max) if decay else torch.ones_like(k_t)
    weight = torch.exp(k_t - new_max)
    sum_kv.mul_(factor[..., None]).add_(weight[..., :, None] * v_t[..., None, :])
    sum_k.mul_(factor).add_(weight)
    if not keep_max:
        key_max.copy_(new_max)
    if not before:
        read = (sum_kv, sum_k, new_max)
    logit = q_t + read[2]
    top = logit.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    if shift == "mean":
        top = logit.mean(dim=-1, keepdim=True)
    elif shift == "none":
        top = torch.zeros_like(top)
    w = torch.exp(logit - top)
    numerator = (w[..., None, :] @ read[0])[..., 0, :]
    return numerator / (w * read[1]).sum(-1, keepdim=True) if normalise else numerator


def _decode_rebinds(state, q_t, k_t, v_t):
    """Right values, but the state's fields are replaced by new tensors (object.__setattr__), not updated in place."""
    new_max = torch.maximum(state.key_max, k_t)
    factor = torch.exp(state.key_max - new_max)
    weight = torch.exp(k_t - new_max)
    object.__setattr__(state, "sum_kv", factor[..., None] * state.sum_kv + weight[..., :, None] * v_t[..., None, :])
    object.__setattr__(state, "sum_k", factor * state.sum_k + weight)
    object.__setattr__(state, "key_max", new_max)
    return _decode_variant(state, q_t, k_t, v_t, in_place=False, before=True)


def _decode_method(fn, rng) -> str | None:
    """The prescribed method: the state's own tensors change (mul_, add_, copy_); they are not replaced."""
    state = recurrent.initial_state((2,), 3, 4, dtype=torch.float64)
    tensors = (state.sum_kv, state.sum_k, state.key_max)
    pointers = [t.data_ptr() for t in tensors]  # x.data = new or x.set_(new) keeps the object, not its memory
    for _ in range(2):
        q_t, k_t, v_t = (torch.tensor(rng.normal(size=(2, d)), dtype=torch.float64) for d in (3, 3, 4))
        fn(state, q_t, k_t, v_t)
    replaced = any(now is not then or now.data_ptr() != pointer
                   for now, then, pointer in zip((state.sum_kv, state.sum_k, state.key_max), tensors, pointers))
    if replaced:
        return ("the state's tensors were replaced by new ones (new memory): update the tensors it already holds IN PLACE "
                "(sum_kv.mul_(...).add_(...), key_max.copy_(...)), so that the caller's (and a CUDA graph's) "
                "references stay valid")
    return None


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
    expected=_oracle_decode,
    call=_drive_decoder,
    output_names=("y", "sum_kv", "sum_k", "key_max"),
    mistakes=[
        Mistake(lambda *a: _decode_variant(*a, in_place=False), "the caller's state never changed: update its tensors IN PLACE "
                "(mul_, add_, copy_) instead of creating new ones"),
        Mistake(lambda *a: _decode_variant(*a, keep_max=True), "store the new running max in the state: "
                "state.key_max.copy_(new_max), or the next token's rescaling starts from a stale max"),
        Mistake(lambda *a: _decode_variant(*a, before=True), "update the state with token t BEFORE reading y_t: token t must see itself"),
        Mistake(lambda *a: _decode_variant(*a, shift="mean"), "shift the read-out logits q_t + key_max by their MAX "
                "over features, not their mean: with logits spanning ~1e3 a mean shift overflows"),
        Mistake(lambda *a: _decode_variant(*a, shift="none"), "subtract the max of q_t + key_max before exp when "
                "reading y_t: unshifted logits past ~709 overflow"),
        Mistake(lambda *a: _decode_variant(*a, normalise=False), "divide by the normaliser Z = w . sum_k: "
                "y_t = (w @ sum_kv) / (w . sum_k)"),
        Mistake(lambda *a: _decode_variant(*a, decay=False), "when the running max grows, rescale the old sums by exp(old_max - new_max)"),
    ],
    rtol=1e-9,
    atol=1e-10,
    method=_decode_method,
)
def _cases_4_3(rng):
    fixed = np.random.default_rng(4_3)  # corner cases: the same numbers on every check
    corners = []
    # Logits q_t + key_max near +750 in every feature (tight span): an unshifted exp overflows, a mean shift not.
    q, k, v = _qkv(fixed, (), 4, 3, 5, scale=1.0)
    corners.append(("logits near +750 in every feature, d_k = 3, d_v = 5", (q + 375.0, k + 375.0, v)))
    # Logits spanning ~1e3 within a row: a mean shift overflows; a huge key at index 0, small keys after.
    q, k, v = _qkv(fixed, (), 5, 3, 2)
    q += np.array([400.0, -500.0, -500.0])
    k[0] += np.array([450.0, 0.0, 0.0])
    corners.append(("logits spanning ~1e3, a huge key at index 0 then small ones", (q, k, v)))
    # Keys rising by 900 across the sequence (the max grows at every token); the batch rows differ (one is shifted).
    q, k, v = _qkv(fixed, (2,), 6, 4, 3)
    k[0] += np.linspace(0.0, 900.0, 6)[:, None]
    k[1] -= 300.0
    corners.append(("keys rising by 900 in one batch row, -300 in the other", (q, k, v)))
    n, d_k, d_v = _sizes(rng)
    growing = _qkv(rng, (), n, d_k, d_v)
    growing = (growing[0], growing[1] + np.linspace(0.0, 1000.0, n)[:, None], growing[2])
    draws = [
        (f"n = {n}", _qkv(rng, (), n, d_k, d_v)),
        ("n = 1", _qkv(rng, (), 1, d_k, d_v)),
        ("batch and head dims", _qkv(rng, (2, 3), n, d_k, d_v)),
        ("keys that keep growing (0 -> 1000)", growing),
        ("large magnitudes of both signs (~1000)", _qkv(rng, (), n, d_k, d_v, 1000.0)),
    ]
    return ([Case(name, args, scale=args[2], corner=True) for name, args in corners]
            + [Case(name, args, scale=args[2]) for name, args in draws])


# ------------------------------------------------------------------------------------------------ 4.4


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2).cumsum(-2).flip(-2)


def _cumsum_backward_reference(grad_y, chunk_size):
    g = _np(grad_y)
    return np.flip(np.cumsum(np.flip(g, axis=-2), axis=-2), axis=-2)  # dL/dx_j = sum_{i >= j} dL/dy_i


def _by_chunks(grad_y, chunk_size, *, carry_from="later", count_own_chunk_twice=False):
    """The chunked reverse scan, with switches that reproduce the known mistakes about the carry."""
    n = grad_y.shape[-2]
    starts = list(range(0, n, int(chunk_size)))
    order = reversed(starts) if carry_from == "later" else starts
    out = torch.empty_like(grad_y)
    carry = torch.zeros_like(grad_y[..., 0, :])
    for start in order:
        block = grad_y[..., start:start + int(chunk_size), :]
        if count_own_chunk_twice:
            carry = carry + block.sum(-2)
        out[..., start:start + int(chunk_size), :] = _reverse_cumsum(block) + (
            carry[..., None, :] if carry_from is not None else 0.0)
        if not count_own_chunk_twice:
            carry = carry + block.sum(-2)
    return out


@task(
    "4.4",
    "The backward of a causal cumulative sum, chunk by chunk",
    points=2,
    concept="y_i = sum_{j<=i} x_j, so x_j reaches every y_i with i >= j: dL/dx_j = sum_{i>=j} dL/dy_i, a REVERSE "
    "cumulative sum; chunk by chunk it is a reverse cumsum inside each chunk plus a carry, the summed gradient of "
    "every LATER chunk, scanned from the last chunk to the first",
    hints=[
        "Write the forward for n = 3: y_0 = x_0, y_1 = x_0 + x_1, y_2 = x_0 + x_1 + x_2. Which y's does x_0 reach? "
        "Its gradient is the sum of their gradients.",
        "Without chunks: grad_y.flip(-2).cumsum(-2).flip(-2). With chunks: walk the chunks from the LAST to the "
        "first, keeping carry = the sum of grad_y over the chunks already visited (shape [..., d]).",
        "For each chunk: out[chunk] = reverse cumsum of grad_y[chunk] + carry[..., None, :]; THEN "
        "carry = carry + grad_y[chunk].sum(-2).",
    ],
    reference=_cumsum_backward_reference,
    mistakes=[
        Mistake(lambda g, c: g.cumsum(-2), "the gradient flows BACKWARDS: x_j reaches y_i for every i >= j, so "
                "dL/dx_j = sum_{i>=j} dL/dy_i, a reverse cumulative sum, not a forward one"),
        Mistake(lambda g, c: g.flip(-2).cumsum(-2), "flip back after the cumsum: g.flip(-2).cumsum(-2) is indexed "
                "from the end; .flip(-2) again puts dL/dx_j at position j"),
        Mistake(lambda g, c: _reverse_cumsum(g) - g, "x_j reaches y_j itself (the sum is inclusive, j <= i): "
                "include dL/dy_j in dL/dx_j, not only the later positions i > j"),
        Mistake(lambda g, c: _by_chunks(g, c, carry_from=None), "carry the gradient from LATER chunks: inside a "
                "chunk the reverse cumsum is only part of it, add the summed gradient of every later chunk (a "
                "reverse scan over chunks)"),
        Mistake(lambda g, c: _by_chunks(g, c, carry_from="earlier"), "the carry comes from the LATER chunks "
                "(the backward scan runs from the last chunk to the first), not from the earlier ones"),
        Mistake(lambda g, c: _by_chunks(g, c, count_own_chunk_twice=True), "add the chunk's own sum to the "
                "carry AFTER using it: a carry that already holds this chunk counts its gradient twice"),
        Mistake(lambda g, c: g.sum(-2, keepdim=True).expand_as(g).clone(), "only the positions i >= j depend on "
                "x_j: the total over all positions also counts the earlier ones"),
        Mistake(lambda g, c: g.flip(-1).cumsum(-1).flip(-1), "the cumulative sum runs over positions (dim -2), "
                "not over features (dim -1)"),
    ],
    rtol=1e-10,
    atol=1e-12,
)
def _cases_4_4(rng):
    fixed = np.random.default_rng(4_4)  # corner cases: the same numbers on every check
    corners = [
        Case("n = 1, one chunk", (_t(fixed.normal(size=(1, 3))), 4), corner=True),
        Case("n = 7 in chunks of 3 (a short last chunk)", (_t(fixed.normal(size=(7, 2))), 3), corner=True),
        Case("chunk size 1: a reverse scan over tokens", (_t(fixed.normal(size=(5, 2))), 1), corner=True),
        Case("chunk size 8 > n = 5: one chunk", (_t(fixed.normal(size=(5, 3))), 8), corner=True),
        Case("batch dims (2, 3), n = 9 in chunks of 4, integer gradients",
             (_t(fixed.integers(-5, 6, size=(2, 3, 9, 2)).astype(float)), 4), corner=True),
    ]
    n, d, _ = _sizes(rng)
    chunk = int(rng.integers(2, 5))
    return corners + [
        Case(f"n = {n}, d = {d}, chunks of {chunk}", (_t(rng.normal(size=(n, d))), chunk)),
        Case("batch and head dims", (_t(rng.normal(size=(2, 3, n, d))), chunk)),
        Case("gradients of size ~1e3, chunks of 2", (_t(rng.normal(scale=1e3, size=(n, d))), 2)),
    ]
