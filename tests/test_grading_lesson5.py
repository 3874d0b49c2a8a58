"""Lesson 5's checks accept right answers written several ways and reject wrong ones with their concept.

The wrong answers below are written the way a learner would write them (torch code), independently of the mistake
variants inside logattn_ref/grading/lesson5.py (NumPy), so a test passes only when the diagnosis recognises the
mistake itself. Every verdict is asserted on five seeds: the corner cases are fixed, the random draws are not.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grading_verdicts import (
    assert_passes_on_every_seed,
    assert_reference_passes,
    assert_rejected_with_concept,
    assert_stub_is_not_implemented,
    case_ids,
)
from logattn_ref import numpy_ref, torch_attention

# ------------------------------------------------------------------------------------------- right answers


def heads_view_transpose(q, k, log_v, n_head):
    b, n, c = q.shape
    split = lambda t: t.view(b, n, n_head, c // n_head).transpose(1, 2)
    log_y = torch_attention.log_attention_logspace(split(q), split(k), split(log_v), causal=True)
    return log_y.transpose(1, 2).reshape(b, n, c)


def heads_loop(q, k, log_v, n_head):  # one head at a time, features in contiguous blocks
    d = q.shape[-1] // n_head
    outs = []
    for h in range(n_head):
        part = slice(h * d, (h + 1) * d)
        outs.append(torch_attention.log_attention_logspace(q[..., part], k[..., part], log_v[..., part], causal=True))
    return torch.cat(outs, dim=-1)


def heads_unflatten_numpy(q, k, log_v, n_head):  # unflatten/permute, the NumPy oracle in float64
    split = lambda t: t.unflatten(-1, (n_head, -1)).permute(0, 2, 1, 3).double().numpy()
    y = numpy_ref.log_attention_logspace(split(q), split(k), split(log_v), causal=True)
    return torch.from_numpy(y).permute(0, 2, 1, 3).flatten(2)


def loss_cross_entropy(logits, idx):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


def loss_class_axis(logits, idx):  # cross_entropy with the classes on axis 1
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), idx[:, 1:])


def loss_manual(logits, idx):  # log_softmax and a gather, averaged by hand
    log_p = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    picked = log_p.gather(-1, idx[:, 1:].unsqueeze(-1)).squeeze(-1)
    return -picked.sum() / picked.numel()


def loss_loop(logits, idx):  # one position at a time, a stable log-sum-exp by hand
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            z = logits[b, t].double()
            top = z.max()
            total += float(top + torch.log(torch.exp(z - top).sum()) - z[idx[b, t + 1]])
            count += 1
    return torch.tensor(total / count)


def generate_reference_style(model, prompt, n_new):
    cache = model.new_cache()
    logits, _ = model(prompt, cache=cache)
    tokens = [prompt]
    for i in range(n_new):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(nxt)
        if i + 1 < n_new:
            logits, _ = model(nxt, cache=cache)
    return torch.cat(tokens, dim=1)


def generate_into_buffer(model, prompt, n_new):  # a preallocated output, one extra (harmless) forward at the end
    b, p = prompt.shape
    out = torch.zeros(b, p + n_new, dtype=torch.long)
    out[:, :p] = prompt
    cache = model.new_cache()
    logits, _ = model(prompt, cache=cache)
    for i in range(n_new):
        out[:, p + i] = logits[:, -1, :].argmax(dim=-1)
        logits, _ = model(out[:, p + i : p + i + 1], cache=cache)
    return out


RIGHT = [
    ("5.1", heads_view_transpose),
    ("5.1", heads_loop),
    ("5.1", heads_unflatten_numpy),
    ("5.2", loss_cross_entropy),
    ("5.2", loss_class_axis),
    ("5.2", loss_manual),
    ("5.2", loss_loop),
    ("5.3", generate_reference_style),
    ("5.3", generate_into_buffer),
]


@pytest.mark.parametrize("task_id", ["5.1", "5.2", "5.3"])
def test_reference_passes(task_id):
    assert_reference_passes(task_id)


@pytest.mark.parametrize("task_id, fn", RIGHT, ids=case_ids(RIGHT))
def test_right_answers_pass(task_id, fn):
    assert_passes_on_every_seed(task_id, fn)


def test_stub_is_not_implemented():
    assert_stub_is_not_implemented("5.2", "the causal LM loss")


# ------------------------------------------------------------------------------------------- wrong answers


def _heads(q, k, log_v, n_head, *, split, merge, causal=True):
    log_y = torch_attention.log_attention_logspace(split(q), split(k), split(log_v), causal=causal)
    return merge(log_y)


def heads_view_without_transpose(q, k, log_v, n_head):
    b, n, c = q.shape
    return _heads(q, k, log_v, n_head, split=lambda t: t.reshape(b, n_head, n, c // n_head),
                  merge=lambda y: y.reshape(b, n, c))


def heads_merge_reshape_only(q, k, log_v, n_head):
    b, n, c = q.shape
    return _heads(q, k, log_v, n_head, split=lambda t: t.view(b, n, n_head, -1).transpose(1, 2),
                  merge=lambda y: y.reshape(b, n, c))


def heads_not_causal(q, k, log_v, n_head):
    b, n, c = q.shape
    return _heads(q, k, log_v, n_head, split=lambda t: t.view(b, n, n_head, -1).transpose(1, 2),
                  merge=lambda y: y.transpose(1, 2).reshape(b, n, c), causal=False)


def heads_returns_y(q, k, log_v, n_head):
    return heads_view_transpose(q, k, log_v, n_head).exp()


def heads_one_head(q, k, log_v, n_head):
    return torch_attention.log_attention_logspace(q, k, log_v, causal=True)


def heads_interleaved(q, k, log_v, n_head):
    b, n, c = q.shape
    split = lambda t: t.view(b, n, c // n_head, n_head).permute(0, 3, 1, 2)
    return _heads(q, k, log_v, n_head, split=split, merge=lambda y: y.permute(0, 2, 3, 1).reshape(b, n, c))


def heads_shift_q_in_place(q, k, log_v, n_head):
    """Right values (a per-row shift of q cancels in the softmax), but the caller's q is overwritten."""
    q -= q.amax(-1, keepdim=True)
    return heads_view_transpose(q, k, log_v, n_head)


def loss_no_shift(logits, idx):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx.reshape(-1))


def loss_shift_backwards(logits, idx):
    return F.cross_entropy(logits[:, 1:].reshape(-1, logits.shape[-1]), idx[:, :-1].reshape(-1))


def loss_summed(logits, idx):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1), reduction="sum")


def loss_raw_logits(logits, idx):  # nll_loss expects log-probabilities, gets logits
    return F.nll_loss(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


def loss_rolled_targets(logits, idx):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.roll(idx, -1, dims=1).reshape(-1))


def loss_naive_log_softmax(logits, idx):
    log_p = logits - logits.exp().sum(-1, keepdim=True).log()
    return -log_p[:, :-1].gather(-1, idx[:, 1:, None]).mean()


def generate_recompute(model, prompt, n_new):
    out = prompt
    for _ in range(n_new):
        logits, _ = model(out)
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out


def generate_first_position(model, prompt, n_new):
    cache = model.new_cache()
    logits, _ = model(prompt, cache=cache)
    out = prompt
    for _ in range(n_new):
        nxt = logits[:, 0].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
        logits, _ = model(nxt, cache=cache)
    return out


def generate_from_last_token(model, prompt, n_new):
    cache = model.new_cache()
    logits, _ = model(prompt[:, -1:], cache=cache)
    out = prompt
    for _ in range(n_new):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
        logits, _ = model(nxt, cache=cache)
    return out


def generate_new_cache_each_step(model, prompt, n_new):
    logits, _ = model(prompt, cache=model.new_cache())
    out = prompt
    for _ in range(n_new):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
        logits, _ = model(nxt, cache=model.new_cache())
    return out


def generate_one_short(model, prompt, n_new):
    cache = model.new_cache()
    logits, _ = model(prompt, cache=cache)
    out = prompt
    for _ in range(n_new - 1):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
        logits, _ = model(nxt, cache=cache)
    return out


def generate_new_tokens_only(model, prompt, n_new):
    cache = model.new_cache()
    logits, _ = model(prompt, cache=cache)
    new = []
    for _ in range(n_new):
        new.append(logits[:, -1].argmax(-1, keepdim=True))
        logits, _ = model(new[-1], cache=cache)
    return torch.cat(new, 1)


def generate_reuses_prompt_buffer(model, prompt, n_new):
    """Right tokens, but the prompt tensor is used as scratch space for the token fed next."""
    cache = model.new_cache()
    logits, _ = model(prompt, cache=cache)
    tokens = [prompt.clone()]
    for _ in range(n_new):
        prompt[:, -1:] = logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(prompt[:, -1:].clone())
        logits, _ = model(prompt[:, -1:], cache=cache)
    return torch.cat(tokens, 1)


WRONG = [
    ("5.1", heads_view_without_transpose, "wrong axis"),
    ("5.1", heads_merge_reshape_only, "undo the split"),
    ("5.1", heads_not_causal, "causal"),
    ("5.1", heads_returns_y, "log Y"),
    ("5.1", heads_one_head, "single head"),
    ("5.1", heads_interleaved, "contiguous block"),
    ("5.1", heads_shift_q_in_place, "changed its input `q` in place"),
    ("5.2", loss_no_shift, "shifted by one"),
    ("5.2", loss_shift_backwards, "other way"),
    ("5.2", loss_summed, "not the sum"),
    ("5.2", loss_raw_logits, "log_softmax of the logits"),
    ("5.2", loss_rolled_targets, "wrapping"),
    ("5.2", loss_naive_log_softmax, "subtracts the max"),
    ("5.3", generate_recompute, "re-ran the whole context"),
    ("5.3", generate_first_position, "LAST position"),
    ("5.3", generate_from_last_token, "WHOLE prompt"),
    ("5.3", generate_new_cache_each_step, "ONE cache"),
    ("5.3", generate_one_short, "exactly n_new"),
    ("5.3", generate_new_tokens_only, "prompt followed by the new tokens"),
    ("5.3", generate_reuses_prompt_buffer, "changed its input `prompt` in place"),
]


@pytest.mark.parametrize("task_id, wrong, phrase", WRONG, ids=case_ids(WRONG))
def test_wrong_answer_is_rejected_with_its_concept(task_id, wrong, phrase):
    assert_rejected_with_concept(task_id, wrong, phrase)
