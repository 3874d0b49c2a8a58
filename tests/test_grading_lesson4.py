"""Lesson 4's checks accept right answers (including the library's own) and reject wrong ones with their concept.

The wrong answers here are written the way a learner would write them, independently of the mistake variants
inside logattn_ref/grading/lesson4.py, so a test passes only when the diagnosis recognises the mistake itself.
"""

import pytest
import torch

from logattn_ref import torch_attention
from logattn_ref.grading import check
from logattn_ref.grading import lesson4


# ------------------------------------------------------------------------------------------- right answers


def good_combine(m1, s1, m2, s2):
    m = torch.maximum(m1, m2)
    w1 = torch.where(torch.isneginf(m1), torch.zeros_like(m1), torch.exp(m1 - m))
    w2 = torch.where(torch.isneginf(m2), torch.zeros_like(m2), torch.exp(m2 - m))
    return m, s1 * w1 + s2 * w2


def good_decode(state, q_t, k_t, v_t):
    new_max = torch.maximum(state.key_max, k_t)
    decay = torch.exp(state.key_max - new_max)
    w = torch.exp(k_t - new_max)
    state.sum_kv.mul_(decay[..., None]).add_(w[..., :, None] * v_t[..., None, :])
    state.sum_k.mul_(decay).add_(w)
    state.key_max.copy_(new_max)
    logit = q_t + new_max
    a = torch.exp(logit - logit.amax(-1, keepdim=True))
    return torch.einsum("...f,...fd->...d", a, state.sum_kv) / (a * state.sum_k).sum(-1, keepdim=True)


@pytest.mark.parametrize("task_id, fn", [
    ("4.1", good_combine),
    ("4.2", lambda state, q, k, v: torch_attention.prefill(state, q, k, v)),  # the library is a right answer
    ("4.2", lesson4._chunk_step_variant),
    ("4.3", good_decode),
])
def test_right_answers_pass(task_id, fn):
    for seed in range(3):
        assert check(task_id, fn, seed=seed).passed


def test_stub_is_not_implemented():
    def stub(*args):
        raise NotImplementedError("Task 4.1: the combine")

    result = check("4.1", stub)
    assert not result.passed and "not implemented" in result.message


# ------------------------------------------------------------------------------------------- wrong answers


def combine_plain_sum(m1, s1, m2, s2):  # forgets that the sums are relative to different maxima
    return torch.max(m1, m2), s1 + s2


def combine_naive(m1, s1, m2, s2):  # right on finite pairs, NaN for two empty pairs
    m = torch.max(m1, m2)
    return m, s1 * (m1 - m).exp() + s2 * (m2 - m).exp()


def combine_linear(m1, s1, m2, s2):  # goes through linear space: overflows at m ~ 1000
    total = s1 * torch.exp(m1) + s2 * torch.exp(m2)
    m = torch.max(m1, m2)
    return m, total / torch.exp(m)


def chunk_global_reference(state, q, k, v):
    """The chunk's own key max as the one reference: the 0/0 trap."""
    m = state.key_max
    top = torch.maximum(k.max(dim=-2).values, m)
    row = (q + top[..., None, :]).max(dim=-1, keepdim=True).values
    a = torch.exp(q + top[..., None, :] - row)
    b = torch.exp(k - top[..., None, :])
    c = q.shape[-2]
    scores = (a @ b.transpose(-1, -2)).tril()
    past = torch.exp(q + m[..., None, :] - row)
    y = (scores @ v + past @ state.sum_kv) / (scores.sum(-1, keepdim=True) + past @ state.sum_k[..., None])
    decay = torch.exp(m - top)
    sum_kv = decay[..., None] * state.sum_kv + b.transpose(-1, -2) @ v
    sum_k = decay * state.sum_k + b.sum(-2)
    return y, (sum_kv, sum_k, top)


def chunk_without_self(state, q, k, v):
    """Per-position stabilised, but the mask leaves out the diagonal (token i does not see itself)."""
    m = state.key_max
    c = q.shape[-2]
    r = torch.maximum(torch.cummax(k, -2).values, m[..., None, :])
    row = (q + r).amax(-1, keepdim=True)
    logits = q.unsqueeze(-2) + k.unsqueeze(-3) - row.unsqueeze(-1)
    keep = torch.tril(torch.ones(c, c, dtype=torch.bool), diagonal=-1)
    w = torch.where(keep[..., None], logits, torch.tensor(float("-inf"), dtype=q.dtype)).exp().sum(-1)
    past = torch.exp(q + m[..., None, :] - row)
    y = (w @ v + past @ state.sum_kv) / (w.sum(-1, keepdim=True) + past @ state.sum_k[..., None])
    new_max = torch.maximum(m, k.amax(-2))
    kw = torch.exp(k - new_max[..., None, :])
    decay = torch.exp(m - new_max)
    return y, (decay[..., None] * state.sum_kv + kw.transpose(-1, -2) @ v, decay * state.sum_k + kw.sum(-2), new_max)


def chunk_no_rescale(state, q, k, v):
    """Right outputs inside the chunk, but the old state is added without rescaling to the new max."""
    y, (sum_kv, sum_k, new_max) = _good_chunk(state, q, k, v)
    kw = torch.exp(k - new_max[..., None, :])
    return y, (state.sum_kv + kw.transpose(-1, -2) @ v, state.sum_k + kw.sum(-2), new_max)


def _good_chunk(state, q, k, v):
    y, st = torch_attention.prefill(state, q, k, v)
    return y, (st.sum_kv, st.sum_k, st.key_max)


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


WRONG = [
    ("4.1", combine_plain_sum, "rescale each"),
    ("4.1", combine_naive, "empty pairs"),
    ("4.1", combine_linear, None),  # overflow: rejected (inf/NaN), whatever the diagnosis
    ("4.2", chunk_global_reference, "per-position"),
    ("4.2", chunk_without_self, "includes the diagonal"),
    ("4.2", chunk_no_rescale, "rescale the old state"),
    ("4.3", decode_returns_new_tensors, "IN PLACE"),
    ("4.3", decode_reads_first, "BEFORE reading"),
]


@pytest.mark.parametrize("task_id, wrong, phrase", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_wrong_answer_is_rejected_with_its_concept(task_id, wrong, phrase):
    result = check(task_id, wrong, seed=3)
    assert not result.passed
    if phrase is not None:
        assert phrase in result.message, result.message
