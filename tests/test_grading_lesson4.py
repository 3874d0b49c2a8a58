"""Lesson 4's checks accept right answers (including the library's own) and reject wrong ones with their concept.

The wrong answers here are written the way a learner would write them, independently of the mistake variants
inside logattn_ref/grading/lesson4.py, so a test passes only when the diagnosis recognises the mistake itself.
Every verdict is asserted on five seeds: the corner cases are fixed, the random draws are not.
"""

import pytest
import torch

from grading_verdicts import (
    assert_passes_on_every_seed,
    assert_rejected_with_concept,
    assert_stub_is_not_implemented,
    case_ids,
)
from logattn_ref.grading import get_task
from logattn_ref.grading import lesson4
from logattn_ref import recurrent
from logattn_ref.recurrent import LogAttentionState

# ------------------------------------------------------------------------------------------- right answers


def good_combine(m1, s1, m2, s2):
    m = torch.maximum(m1, m2)
    w1 = torch.where(torch.isneginf(m1), torch.zeros_like(m1), torch.exp(m1 - m))
    w2 = torch.where(torch.isneginf(m2), torch.zeros_like(m2), torch.exp(m2 - m))
    return m, s1 * w1 + s2 * w2


def combine_nan_to_num(m1, s1, m2, s2):  # NaN weights (two empty sides) replaced by 0 afterwards
    m = torch.max(m1, m2)
    return m, s1 * torch.nan_to_num((m1 - m).exp(), nan=0.0) + s2 * torch.nan_to_num((m2 - m).exp(), nan=0.0)


def combine_larger_first(m1, s1, m2, s2):  # order the pairs, then add the smaller one to the larger
    left_big = m1 >= m2
    hi_m, lo_m = torch.where(left_big, m1, m2), torch.where(left_big, m2, m1)
    hi_s, lo_s = torch.where(left_big, s1, s2), torch.where(left_big, s2, s1)
    gap = torch.where(torch.isneginf(hi_m), torch.full_like(hi_m, float("-inf")), lo_m - hi_m)
    return hi_m, hi_s + lo_s * torch.exp(gap)


def combine_loop(m1, s1, m2, s2):  # element by element, with Python floats
    import math

    m_out, s_out = torch.empty_like(m1), torch.empty_like(s1)
    for i in range(m1.numel()):
        a, b = float(m1.reshape(-1)[i]), float(m2.reshape(-1)[i])
        m = max(a, b)
        wa = 0.0 if a == float("-inf") else math.exp(a - m)
        wb = 0.0 if b == float("-inf") else math.exp(b - m)
        m_out.reshape(-1)[i] = m
        s_out.reshape(-1)[i] = float(s1.reshape(-1)[i]) * wa + float(s2.reshape(-1)[i]) * wb
    return m_out, s_out


def chunk_sentinel_mask(state, q, k, v):
    """A [c, c, d_k] form masked with -1e30 instead of -inf, the past folded in through the state."""
    c = q.shape[-2]
    m = state.key_max
    r = torch.maximum(torch.cummax(k, -2).values, m.unsqueeze(-2))
    top = (q + r).max(-1, keepdim=True).values
    logits = q.unsqueeze(-2) + k.unsqueeze(-3) - top.unsqueeze(-1)
    keep = torch.tril(torch.ones(c, c, dtype=torch.bool)).unsqueeze(-1)
    w = torch.exp(torch.where(keep, logits, torch.tensor(-1e30, dtype=q.dtype))).sum(-1)
    past = torch.exp(q + m.unsqueeze(-2) - top)
    y = (torch.einsum("...ij,...jd->...id", w, v) + torch.einsum("...if,...fd->...id", past, state.sum_kv)) / (
        w.sum(-1, keepdim=True) + torch.einsum("...if,...f->...i", past, state.sum_k).unsqueeze(-1))
    new_max = torch.maximum(m, k.max(-2).values)
    kw = torch.exp(k - new_max.unsqueeze(-2))
    decay = torch.exp(m - new_max)
    sum_kv = decay.unsqueeze(-1) * state.sum_kv + torch.einsum("...jf,...jd->...fd", kw, v)
    return y, (sum_kv, decay * state.sum_k + kw.sum(-2), new_max, state.count + c)


def chunk_token_loop(state, q, k, v):
    """One token at a time through the library's step: a correct (if slow) chunk step."""
    ys = []
    for t in range(q.shape[-2]):
        y_t, state = recurrent.step(state, q[..., t, :], k[..., t, :], v[..., t, :])
        ys.append(y_t)
    return torch.stack(ys, -2), state


def _fold_in_place(state, k_t, v_t):
    """The decode step's state update, in place (the task's prescribed method); returns the new running max."""
    new_max = torch.maximum(state.key_max, k_t)
    decay = torch.exp(state.key_max - new_max)
    w = torch.exp(k_t - new_max)
    state.sum_kv.mul_(decay[..., None]).add_(w[..., :, None] * v_t[..., None, :])
    state.sum_k.mul_(decay).add_(w)
    state.key_max.copy_(new_max)
    return new_max


def good_decode(state, q_t, k_t, v_t):
    new_max = _fold_in_place(state, k_t, v_t)
    logit = q_t + new_max
    a = torch.exp(logit - logit.amax(-1, keepdim=True))
    return torch.einsum("...f,...fd->...d", a, state.sum_kv) / (a * state.sum_k).sum(-1, keepdim=True)


def decode_slice_assign(state, q_t, k_t, v_t):  # x[...] = new writes into the same memory: in place too
    new_max = torch.max(state.key_max, k_t)
    decay = (state.key_max - new_max).exp()
    w = (k_t - new_max).exp()
    state.sum_kv[...] = decay.unsqueeze(-1) * state.sum_kv + w.unsqueeze(-1) * v_t.unsqueeze(-2)
    state.sum_k[...] = decay * state.sum_k + w
    state.key_max[...] = new_max
    a = torch.softmax(q_t + state.key_max, dim=-1)  # softmax subtracts the max; the sum cancels in the ratio
    return (a.unsqueeze(-1) * state.sum_kv).sum(-2) / (a * state.sum_k).sum(-1, keepdim=True)


def decode_out_arguments(state, q_t, k_t, v_t):  # torch ops with out= onto the state's tensors
    new_max = torch.maximum(state.key_max, k_t)
    decay = torch.exp(state.key_max - new_max)
    w = torch.exp(k_t - new_max)
    torch.addcmul(decay[..., None] * state.sum_kv, w[..., :, None], v_t[..., None, :], out=state.sum_kv)
    torch.add(decay * state.sum_k, w, out=state.sum_k)
    torch.maximum(state.key_max, k_t, out=state.key_max)
    logit = q_t + state.key_max
    a = torch.exp(logit - logit.logsumexp(-1, keepdim=True))
    return (a[..., None, :] @ state.sum_kv).squeeze(-2) / (a * state.sum_k).sum(-1, keepdim=True)


def cumsum_backward_chunks(grad_y, chunk_size):  # the reverse scan over chunks, as the solution writes it
    n = grad_y.shape[-2]
    out = torch.empty_like(grad_y)
    carry = torch.zeros_like(grad_y[..., 0, :])
    for start in reversed(range(0, n, chunk_size)):
        block = grad_y[..., start:start + chunk_size, :]
        out[..., start:start + chunk_size, :] = block.flip(-2).cumsum(-2).flip(-2) + carry[..., None, :]
        carry = carry + block.sum(-2)
    return out


def cumsum_backward_autograd(grad_y, chunk_size):  # ask autograd for the vector-Jacobian product of cumsum
    x = torch.zeros_like(grad_y, requires_grad=True)
    (grad_x,) = torch.autograd.grad(x.cumsum(-2), x, grad_outputs=grad_y)
    return grad_x


def cumsum_backward_matrix(grad_y, chunk_size):  # dL/dx = U dL/dy with U[j, i] = 1 for i >= j
    n = grad_y.shape[-2]
    upper = torch.triu(torch.ones(n, n, dtype=grad_y.dtype))
    return upper @ grad_y


def cumsum_backward_total_minus_before(grad_y, chunk_size):  # total minus what came strictly before
    total = grad_y.sum(-2, keepdim=True)
    return total - grad_y.cumsum(-2) + grad_y


def cumsum_backward_token_loop(grad_y, chunk_size):  # one token at a time, from the end
    out = torch.zeros_like(grad_y)
    running = torch.zeros_like(grad_y[..., 0, :])
    for j in range(grad_y.shape[-2] - 1, -1, -1):
        running = running + grad_y[..., j, :]
        out[..., j, :] = running
    return out


RIGHT = [
    ("4.1", good_combine),
    ("4.1", combine_nan_to_num),
    ("4.1", combine_larger_first),
    ("4.1", combine_loop),
    ("4.2", lambda state, q, k, v: recurrent.prefill(state, q, k, v)),  # the library is a right answer
    ("4.2", lambda state, q, k, v: recurrent.prefill(state, q, k, v, chunk_size=2)),
    ("4.2", lesson4._chunk_step_variant),
    ("4.2", chunk_sentinel_mask),
    ("4.2", chunk_token_loop),
    ("4.3", good_decode),
    ("4.3", decode_slice_assign),
    ("4.3", decode_out_arguments),
    ("4.4", cumsum_backward_chunks),
    ("4.4", cumsum_backward_autograd),
    ("4.4", cumsum_backward_matrix),
    ("4.4", cumsum_backward_total_minus_before),
    ("4.4", cumsum_backward_token_loop),
]


@pytest.mark.parametrize("task_id, fn", RIGHT, ids=case_ids(RIGHT))
def test_right_answers_pass(task_id, fn):
    assert_passes_on_every_seed(task_id, fn)


def test_stub_is_not_implemented():
    assert_stub_is_not_implemented("4.1", "the combine")


# ------------------------------------------------------------------------------------------- wrong answers


def combine_plain_sum(m1, s1, m2, s2):  # forgets that the sums are relative to different maxima
    return torch.max(m1, m2), s1 + s2


def combine_naive(m1, s1, m2, s2):  # right on finite pairs, NaN for two empty pairs
    m = torch.max(m1, m2)
    return m, s1 * (m1 - m).exp() + s2 * (m2 - m).exp()


def combine_linear(m1, s1, m2, s2):  # goes through linear space: overflows past m ~ 709
    total = s1 * torch.exp(m1) + s2 * torch.exp(m2)
    m = torch.max(m1, m2)
    return m, total / torch.exp(m)


def combine_mean_reference(m1, s1, m2, s2):  # the mean of the two maxima as the reference
    m = (m1 + m2) / 2
    return m, s1 * torch.exp(m1 - m) + s2 * torch.exp(m2 - m)


def combine_left_as_reference(m1, s1, m2, s2):  # the left pair's own max, the right pair rescaled to it
    return m1.clone(), s1 + s2 * (m2 - m1).exp()


def combine_into_left(m1, s1, m2, s2):  # right values, written into the caller's s1
    m = torch.maximum(m1, m2)
    w1 = torch.where(torch.isneginf(m1), torch.zeros_like(m1), torch.exp(m1 - m))
    w2 = torch.where(torch.isneginf(m2), torch.zeros_like(m2), torch.exp(m2 - m))
    s1.mul_(w1).add_(s2 * w2)
    return m, s1


def _chunk_parts(state, q, k, v, *, diagonal=0, inverted=False, row_shift="max", past=True, after_exp=False):
    """A learner's chunk step (their own code), with the choices they might get wrong."""
    m = state.key_max
    c = q.shape[-2]
    r = torch.maximum(torch.cummax(k, -2).values, m[..., None, :])
    scores = q + r
    row = scores.amax(-1, keepdim=True) if row_shift == "max" else scores.mean(-1, keepdim=True)
    logits = q.unsqueeze(-2) + k.unsqueeze(-3) - row.unsqueeze(-1)
    keep = torch.tril(torch.ones(c, c, dtype=torch.bool), diagonal=diagonal)
    if inverted:
        keep = torch.triu(torch.ones(c, c, dtype=torch.bool), diagonal=1)
    if after_exp:
        w = logits.exp().sum(-1) * keep
    else:
        w = torch.where(keep[..., None], logits, torch.tensor(float("-inf"), dtype=q.dtype)).exp().sum(-1)
    p = torch.exp(q + m[..., None, :] - row) if past else torch.zeros_like(q)
    y = (w @ v + p @ state.sum_kv) / (w.sum(-1, keepdim=True) + p @ state.sum_k[..., None])
    new_max = torch.maximum(m, k.amax(-2))
    kw = torch.exp(k - new_max[..., None, :])
    decay = torch.exp(m - new_max)
    sums = (decay[..., None] * state.sum_kv + kw.transpose(-1, -2) @ v, decay * state.sum_k + kw.sum(-2))
    return y, sums, new_max


def chunk_global_reference(state, q, k, v):
    """The chunk's own key max as the one reference: the 0/0 trap."""
    m = state.key_max
    top = torch.maximum(k.max(dim=-2).values, m)
    row = (q + top[..., None, :]).max(dim=-1, keepdim=True).values
    a = torch.exp(q + top[..., None, :] - row)
    b = torch.exp(k - top[..., None, :])
    scores = (a @ b.transpose(-1, -2)).tril()
    past = torch.exp(q + m[..., None, :] - row)
    y = (scores @ v + past @ state.sum_kv) / (scores.sum(-1, keepdim=True) + past @ state.sum_k[..., None])
    decay = torch.exp(m - top)
    sum_kv = decay[..., None] * state.sum_kv + b.transpose(-1, -2) @ v
    sum_k = decay * state.sum_k + b.sum(-2)
    return y, LogAttentionState(sum_kv, sum_k, top, state.count + q.shape[-2])


def chunk_without_self(state, q, k, v):
    y, (sum_kv, sum_k), new_max = _chunk_parts(state, q, k, v, diagonal=-1)
    return y, LogAttentionState(sum_kv, sum_k, new_max, state.count + q.shape[-2])


def chunk_inverted_mask(state, q, k, v):
    y, (sum_kv, sum_k), new_max = _chunk_parts(state, q, k, v, inverted=True)
    return y, LogAttentionState(sum_kv, sum_k, new_max, state.count + q.shape[-2])


def chunk_mean_shift(state, q, k, v):
    y, (sum_kv, sum_k), new_max = _chunk_parts(state, q, k, v, row_shift="mean")
    return y, LogAttentionState(sum_kv, sum_k, new_max, state.count + q.shape[-2])


def chunk_mask_after_exp(state, q, k, v):
    y, (sum_kv, sum_k), new_max = _chunk_parts(state, q, k, v, after_exp=True)
    return y, LogAttentionState(sum_kv, sum_k, new_max, state.count + q.shape[-2])


def chunk_ignores_earlier_chunks(state, q, k, v):
    y, (sum_kv, sum_k), new_max = _chunk_parts(state, q, k, v, past=False)
    return y, LogAttentionState(sum_kv, sum_k, new_max, state.count + q.shape[-2])


def chunk_no_rescale(state, q, k, v):
    """Right outputs inside the chunk, but the old state is added without rescaling to the new max."""
    y, _, new_max = _chunk_parts(state, q, k, v)
    kw = torch.exp(k - new_max[..., None, :])
    return y, (state.sum_kv + kw.transpose(-1, -2) @ v, state.sum_k + kw.sum(-2), new_max, state.count + q.shape[-2])


def chunk_max_of_chunk_only(state, q, k, v):
    """The new running max taken from this chunk's keys alone."""
    y, _, _ = _chunk_parts(state, q, k, v)
    chunk_max = k.max(-2).values
    kw = torch.exp(k - chunk_max.unsqueeze(-2))
    decay = torch.exp(state.key_max - chunk_max)
    sum_kv = decay.unsqueeze(-1) * state.sum_kv + kw.transpose(-1, -2) @ v
    return y, LogAttentionState(sum_kv, decay * state.sum_k + kw.sum(-2), chunk_max, state.count + q.shape[-2])


def chunk_forgets_count(state, q, k, v):
    y, (sum_kv, sum_k), new_max = _chunk_parts(state, q, k, v)
    return y, LogAttentionState(sum_kv, sum_k, new_max, state.count)


def chunk_count_is_chunk_length(state, q, k, v):
    y, (sum_kv, sum_k), new_max = _chunk_parts(state, q, k, v)
    return y, LogAttentionState(sum_kv, sum_k, new_max, q.shape[-2])


def chunk_tuple_without_count(state, q, k, v):
    y, (sum_kv, sum_k), new_max = _chunk_parts(state, q, k, v)
    return y, (sum_kv, sum_k, new_max)


def chunk_updates_state_in_place(state, q, k, v):
    """Right values, but the caller's state tensors are rescaled in place on the way."""
    y, _, new_max = _chunk_parts(state, q, k, v)
    kw = torch.exp(k - new_max[..., None, :])
    decay = torch.exp(state.key_max - new_max)
    state.sum_kv.mul_(decay[..., None]).add_(kw.transpose(-1, -2) @ v)
    state.sum_k.mul_(decay).add_(kw.sum(-2))
    return y, LogAttentionState(state.sum_kv, state.sum_k, new_max, state.count + q.shape[-2])


def chunk_linear_space(state, q, k, v):
    """No stabiliser: exp(q) @ exp(k)^T and linear-space sums (the key max kept at 0)."""
    c = q.shape[-2]
    past_kv = state.sum_kv * torch.exp(state.key_max).nan_to_num(0.0)[..., None]
    past_k = state.sum_k * torch.exp(state.key_max).nan_to_num(0.0)
    w = (torch.exp(q) @ torch.exp(k).transpose(-1, -2)).tril()
    y = (w @ v + torch.exp(q) @ past_kv) / (w.sum(-1, keepdim=True) + torch.exp(q) @ past_k[..., None])
    sum_kv = past_kv + torch.exp(k).transpose(-1, -2) @ v
    sum_k = past_k + torch.exp(k).sum(-2)
    return y, LogAttentionState(sum_kv, sum_k, torch.zeros_like(state.sum_k), state.count + c)


def decode_returns_new_tensors(state, q_t, k_t, v_t):
    """Computes the right update into NEW tensors: the caller's state never changes."""
    new_max = torch.maximum(state.key_max, k_t)
    decay = torch.exp(state.key_max - new_max)
    w = torch.exp(k_t - new_max)
    sum_kv = decay[..., None] * state.sum_kv + w[..., :, None] * v_t[..., None, :]
    sum_k = decay * state.sum_k + w
    logit = q_t + new_max
    a = torch.exp(logit - logit.amax(-1, keepdim=True))
    return torch.einsum("...f,...fd->...d", a, sum_kv) / (a * sum_k).sum(-1, keepdim=True)


def decode_reads_first(state, q_t, k_t, v_t):
    """Reads y_t from the state before adding token t."""
    logit = q_t + state.key_max
    top = logit.amax(-1, keepdim=True)
    a = torch.exp(logit - torch.nan_to_num(top, neginf=0.0))
    y = torch.einsum("...f,...fd->...d", a, state.sum_kv) / (a * state.sum_k).sum(-1, keepdim=True)
    good_decode(state, q_t, k_t, v_t)
    return y


def _decode_parts(state, q_t, k_t, v_t, *, rescale=True, store_max=True, shift="max", normalise=True):
    new_max = torch.max(state.key_max, k_t)
    w = (k_t - new_max).exp()
    if rescale:
        decay = (state.key_max - new_max).exp()
        state.sum_kv.mul_(decay.unsqueeze(-1))
        state.sum_k.mul_(decay)
    state.sum_kv.add_(w.unsqueeze(-1) * v_t.unsqueeze(-2))
    state.sum_k.add_(w)
    if store_max:
        state.key_max.copy_(new_max)
    logit = q_t + new_max
    if shift == "max":
        logit = logit - logit.max(-1, keepdim=True).values
    elif shift == "mean":
        logit = logit - logit.mean(-1, keepdim=True)
    a = logit.exp()
    num = (a.unsqueeze(-1) * state.sum_kv).sum(-2)
    return num / (a * state.sum_k).sum(-1, keepdim=True) if normalise else num


def decode_no_rescale(state, q_t, k_t, v_t):
    return _decode_parts(state, q_t, k_t, v_t, rescale=False)


def decode_forgets_key_max(state, q_t, k_t, v_t):
    return _decode_parts(state, q_t, k_t, v_t, store_max=False)


def decode_mean_shift(state, q_t, k_t, v_t):
    return _decode_parts(state, q_t, k_t, v_t, shift="mean")


def decode_unshifted_read(state, q_t, k_t, v_t):
    return _decode_parts(state, q_t, k_t, v_t, shift=None)


def decode_without_normaliser(state, q_t, k_t, v_t):
    return _decode_parts(state, q_t, k_t, v_t, normalise=False)


def decode_shifts_its_query(state, q_t, k_t, v_t):
    """Right values, but the token's query is overwritten in place (q_t += key_max)."""
    new_max = _fold_in_place(state, k_t, v_t)
    q_t.add_(new_max)
    a = torch.exp(q_t - q_t.amax(-1, keepdim=True))
    return torch.einsum("...f,...fd->...d", a, state.sum_kv) / (a * state.sum_k).sum(-1, keepdim=True)


def decode_replaces_the_memory(state, q_t, k_t, v_t):
    """Right values, but each field gets new memory (x.data = ...), not an in-place update."""
    new_max = torch.maximum(state.key_max, k_t)
    decay = torch.exp(state.key_max - new_max)
    w = torch.exp(k_t - new_max)
    state.sum_kv.data = decay[..., None] * state.sum_kv + w[..., :, None] * v_t[..., None, :]
    state.sum_k.data = decay * state.sum_k + w
    state.key_max.data = new_max
    logit = q_t + new_max
    a = torch.exp(logit - logit.amax(-1, keepdim=True))
    return torch.einsum("...f,...fd->...d", a, state.sum_kv) / (a * state.sum_k).sum(-1, keepdim=True)


def cumsum_backward_forward_cumsum(grad_y, chunk_size):  # the backward written like the forward
    return torch.cumsum(grad_y, dim=-2)


def cumsum_backward_not_flipped_back(grad_y, chunk_size):
    return torch.flip(grad_y, dims=(-2,)).cumsum(dim=-2)


def cumsum_backward_strictly_later(grad_y, chunk_size):  # sum over i > j: the token's own gradient left out
    total = grad_y.sum(-2, keepdim=True)
    return total - grad_y.cumsum(-2)


def _chunk_loop(grad_y, chunk_size, carry_first=False, from_the_start=False, use_carry=True):
    n = grad_y.shape[-2]
    starts = list(range(0, n, chunk_size))
    if not from_the_start:
        starts = starts[::-1]
    pieces, carry = {}, 0
    for start in starts:
        block = grad_y[..., start:start + chunk_size, :]
        if carry_first:
            carry = carry + block.sum(-2, keepdim=True)
        inside = torch.flip(torch.cumsum(torch.flip(block, (-2,)), -2), (-2,))
        pieces[start] = inside + carry if use_carry else inside
        if not carry_first:
            carry = carry + block.sum(-2, keepdim=True)
    return torch.cat([pieces[s] for s in sorted(pieces)], dim=-2)


def cumsum_backward_no_carry(grad_y, chunk_size):
    return _chunk_loop(grad_y, chunk_size, use_carry=False)


def cumsum_backward_carry_from_the_start(grad_y, chunk_size):
    return _chunk_loop(grad_y, chunk_size, from_the_start=True)


def cumsum_backward_carry_updated_first(grad_y, chunk_size):
    return _chunk_loop(grad_y, chunk_size, carry_first=True)


def cumsum_backward_everything(grad_y, chunk_size):  # every x_j gets the whole gradient
    return grad_y.sum(dim=-2, keepdim=True).repeat_interleave(grad_y.shape[-2], dim=-2)


def cumsum_backward_over_features(grad_y, chunk_size):
    return torch.flip(torch.cumsum(torch.flip(grad_y, (-1,)), -1), (-1,))


WRONG = [
    ("4.1", combine_plain_sum, "rescale each"),
    ("4.1", combine_naive, "empty pairs"),
    ("4.1", combine_linear, "linear space"),
    ("4.1", combine_mean_reference, "max(m1, m2)"),
    ("4.1", combine_left_as_reference, "LARGER max"),
    ("4.1", combine_into_left, "changed its input `s1` in place"),
    ("4.2", chunk_global_reference, "per-position"),
    ("4.2", chunk_without_self, "includes the diagonal"),
    ("4.2", chunk_inverted_mask, "inverted"),
    ("4.2", chunk_mean_shift, "not by the mean"),
    ("4.2", chunk_mask_after_exp, "mask BEFORE exp"),
    ("4.2", chunk_ignores_earlier_chunks, "EARLIER"),
    ("4.2", chunk_no_rescale, "rescale the old state"),
    ("4.2", chunk_max_of_chunk_only, "max(state.key_max, max_j k_j)"),
    ("4.2", chunk_forgets_count, "count"),
    ("4.2", chunk_count_is_chunk_length, "state.count + c"),
    ("4.2", chunk_tuple_without_count, "count"),
    ("4.2", chunk_updates_state_in_place, "changed its input `state` in place"),
    ("4.2", chunk_linear_space, "linear space"),
    ("4.3", decode_returns_new_tensors, "IN PLACE"),
    ("4.3", decode_reads_first, "BEFORE reading"),
    ("4.3", decode_no_rescale, "rescale the old sums"),
    ("4.3", decode_forgets_key_max, "key_max.copy_"),
    ("4.3", decode_mean_shift, "not their mean"),
    ("4.3", decode_unshifted_read, "subtract the max"),
    ("4.3", decode_without_normaliser, "normaliser Z"),
    ("4.3", decode_shifts_its_query, "changed its input `q_t` in place"),
    ("4.3", decode_replaces_the_memory, "IN PLACE"),
    ("4.4", cumsum_backward_forward_cumsum, "BACKWARDS"),
    ("4.4", cumsum_backward_not_flipped_back, "flip back"),
    ("4.4", cumsum_backward_strictly_later, "inclusive"),
    ("4.4", cumsum_backward_no_carry, "LATER chunks: inside"),
    ("4.4", cumsum_backward_carry_from_the_start, "not from the earlier ones"),
    ("4.4", cumsum_backward_carry_updated_first, "twice"),
    ("4.4", cumsum_backward_everything, "total over all positions"),
    ("4.4", cumsum_backward_over_features, "dim -1"),
]


@pytest.mark.parametrize("task_id, wrong, phrase", WRONG, ids=case_ids(WRONG))
def test_wrong_answer_is_rejected_with_its_concept(task_id, wrong, phrase):
    assert_rejected_with_concept(task_id, wrong, phrase)


def test_every_known_mistake_names_a_different_concept():
    for task_id in ("4.1", "4.2", "4.3", "4.4"):
        messages = [m.message for m in get_task(task_id).mistakes]
        assert len(messages) >= 5 and len(set(messages)) == len(messages)
