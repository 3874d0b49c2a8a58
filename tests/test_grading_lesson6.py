"""Lesson 6's checks accept right answers written several ways and reject wrong ones with their concept.

The wrong answers below are written the way a learner would write them, independently of the mistake variants
inside logattn_ref/grading/lesson6.py, so a test passes only when the diagnosis recognises the mistake itself.
Every verdict is asserted on five seeds: the corner cases are fixed, the random draws are not.
"""

import numpy as np
import pytest
import torch

from grading_verdicts import (
    assert_passes_on_every_seed,
    assert_reference_passes,
    assert_rejected_with_concept,
    assert_stub_is_not_implemented,
    case_ids,
)
from logattn_ref import numpy_ref

# ------------------------------------------------------------------------------------------- right answers


def layout_numpy(keys, values, query_index, seq_len):
    b, p = keys.shape
    q = query_index.shape[1]
    tokens = np.zeros((b, seq_len + 1), dtype=np.int64)
    tokens[:, 0 : 2 * p : 2], tokens[:, 1 : 2 * p : 2] = keys, values
    start = seq_len + 1 - 2 * q
    tokens[:, start::2] = np.take_along_axis(keys, query_index, 1)
    tokens[:, start + 1 :: 2] = np.take_along_axis(values, query_index, 1)
    mask = np.zeros((b, seq_len), dtype=bool)
    mask[:, start::2] = True
    return tokens[:, :-1], tokens[:, 1:], mask


def layout_lists(keys, values, query_index, seq_len):  # one Python list per sequence, then tensors
    rows = []
    for key_row, value_row, asked in zip(keys.tolist(), values.tolist(), query_index.tolist()):
        pairs = [t for kv in zip(key_row, value_row) for t in kv]
        queries = [t for i in asked for t in (key_row[i], value_row[i])]
        rows.append(pairs + [0] * (seq_len + 1 - len(pairs) - len(queries)) + queries)
    tokens = torch.tensor(rows)
    q = query_index.shape[1]
    mask = torch.zeros(len(rows), seq_len, dtype=torch.bool)
    mask[:, seq_len + 1 - 2 * q :: 2] = True
    return tokens[:, :-1], tokens[:, 1:], mask


def bytes_formula(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    per_head_state = head_dim * head_dim + head_dim
    return (n_layer * n_head * per_head_state * bytes_per_number,
            n_layer * n_head * 2 * n_ctx * head_dim * bytes_per_number)


def bytes_loops(n_layer, n_head, head_dim, n_ctx, bytes_per_number):  # counted layer by layer, head by head
    state = cache = 0
    for _ in range(n_layer):
        for _ in range(n_head):
            state += (head_dim * head_dim + head_dim) * bytes_per_number
            cache += (n_ctx * head_dim + n_ctx * head_dim) * bytes_per_number
    return state, cache


def weight_sigmoid(q, k1, k2):
    s1, s2 = numpy_ref.logsumexp(q + k1, axis=-1), numpy_ref.logsumexp(q + k2, axis=-1)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(s1 - s2))


def weight_torch(q, k1, k2):
    q, k1, k2 = (torch.as_tensor(a) for a in (q, k1, k2))
    s = torch.stack([torch.logsumexp(q + k1, -1), torch.logsumexp(q + k2, -1)], -1)
    return torch.softmax(s, -1)[..., 1].numpy()


def weight_shared_max(q, k1, k2):  # linear space, with ONE shared max factored out of every term
    x1, x2 = q + k1, q + k2
    top = np.maximum(x1.max(-1, keepdims=True), x2.max(-1, keepdims=True))
    a, b = np.exp(x1 - top).sum(-1), np.exp(x2 - top).sum(-1)
    return b / (a + b)


RIGHT = [
    ("6.1", layout_numpy),
    ("6.1", layout_lists),
    ("6.2", bytes_formula),
    ("6.2", bytes_loops),
    ("6.3", weight_sigmoid),
    ("6.3", weight_torch),
    ("6.3", weight_shared_max),
]


@pytest.mark.parametrize("task_id", ["6.1", "6.2", "6.3"])
def test_reference_passes(task_id):
    assert_reference_passes(task_id)


@pytest.mark.parametrize("task_id, fn", RIGHT, ids=case_ids(RIGHT))
def test_right_answers_pass(task_id, fn):
    assert_passes_on_every_seed(task_id, fn)


def test_stub_is_not_implemented():
    assert_stub_is_not_implemented("6.3", "interference")


# ------------------------------------------------------------------------------------------- wrong answers


def _layout(keys, values, query_index, seq_len, *, start_shift=0, mask_shift=0, answers=None, swap=False,
            gap_after_pairs=False, shift_targets=True):
    b, p = keys.shape
    q = query_index.shape[1]
    tokens = np.zeros((b, seq_len + 1), dtype=np.int64)
    first, second = (values, keys) if swap else (keys, values)
    tokens[:, 0 : 2 * p : 2], tokens[:, 1 : 2 * p : 2] = first, second
    start = 2 * p if gap_after_pairs else seq_len + 1 - 2 * q + start_shift
    asked = np.take_along_axis(keys, query_index, 1)
    tokens[:, start : start + 2 * q : 2] = asked
    tokens[:, start + 1 : start + 2 * q : 2] = np.take_along_axis(values, query_index, 1) if answers is None else answers
    mask = np.zeros((b, seq_len), dtype=bool)
    mask[:, start + mask_shift : start + 2 * q : 2] = True
    inputs = tokens[:, :-1]
    return inputs, (tokens[:, 1:] if shift_targets else inputs.copy()), mask


def layout_scores_values(keys, values, query_index, seq_len):
    return _layout(keys, values, query_index, seq_len, mask_shift=1)


def layout_targets_are_inputs(keys, values, query_index, seq_len):
    return _layout(keys, values, query_index, seq_len, shift_targets=False)


def layout_answers_in_order(keys, values, query_index, seq_len):
    return _layout(keys, values, query_index, seq_len, answers=values[:, : query_index.shape[1]])


def layout_queries_right_after_pairs(keys, values, query_index, seq_len):
    return _layout(keys, values, query_index, seq_len, gap_after_pairs=True)


def layout_value_first(keys, values, query_index, seq_len):
    return _layout(keys, values, query_index, seq_len, swap=True)


def layout_section_one_early(keys, values, query_index, seq_len):
    return _layout(keys, values, query_index, seq_len, start_shift=-1)


def layout_sorts_the_queries(keys, values, query_index, seq_len):
    """Sorts query_index in place (the caller's array), so the queries come in another order too."""
    query_index.sort(axis=1)
    return _layout(keys, values, query_index, seq_len)


def bytes_without_z(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    return (n_layer * n_head * head_dim * head_dim * bytes_per_number,
            n_layer * n_head * 2 * n_ctx * head_dim * bytes_per_number)


def bytes_cache_keys_only(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    return (n_layer * n_head * (head_dim + 1) * head_dim * bytes_per_number,
            n_layer * n_head * n_ctx * head_dim * bytes_per_number)


def bytes_forgets_layers(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    return n_head * (head_dim + 1) * head_dim * bytes_per_number, n_head * 2 * n_ctx * head_dim * bytes_per_number


def bytes_forgets_heads(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    return n_layer * (head_dim + 1) * head_dim * bytes_per_number, n_layer * 2 * n_ctx * head_dim * bytes_per_number


def bytes_counts_numbers(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    return n_layer * n_head * (head_dim + 1) * head_dim, n_layer * n_head * 2 * n_ctx * head_dim


def bytes_state_per_token(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    per_token = n_layer * n_head * (head_dim * head_dim + head_dim) * bytes_per_number
    return per_token * n_ctx, n_layer * n_head * 2 * n_ctx * head_dim * bytes_per_number


def weight_linear(q, k1, k2):
    a = np.sum(np.exp(q) * np.exp(k1), axis=-1)
    b = np.sum(np.exp(q) * np.exp(k2), axis=-1)
    return b / (a + b)


def weight_dot_product(q, k1, k2):
    s = np.stack([np.einsum("...f,...f->...", q, k1), np.einsum("...f,...f->...", q, k2)], -1)
    s = s - s.max(-1, keepdims=True)
    return np.exp(s[..., 1]) / np.exp(s).sum(-1)


def weight_of_own_pair(q, k1, k2):
    s1, s2 = numpy_ref.logsumexp(q + k1, axis=-1), numpy_ref.logsumexp(q + k2, axis=-1)
    return np.exp(s1 - np.logaddexp(s1, s2))


def weight_scores_back_to_linear(q, k1, k2):
    s1, s2 = numpy_ref.logsumexp(q + k1, axis=-1), numpy_ref.logsumexp(q + k2, axis=-1)
    return np.exp(s2) / (np.exp(s1) + np.exp(s2))


def weight_mean_shift(q, k1, k2):
    def lse(x):
        mid = np.mean(x, axis=-1, keepdims=True)
        return np.squeeze(mid, -1) + np.log(np.sum(np.exp(x - mid), axis=-1))

    s1, s2 = lse(q + k1), lse(q + k2)
    return np.exp(s2 - np.logaddexp(s1, s2))


def weight_each_vector_own_max(q, k1, k2):
    eq = np.exp(q - q.max(-1, keepdims=True))
    e1, e2 = np.exp(k1 - k1.max(-1, keepdims=True)), np.exp(k2 - k2.max(-1, keepdims=True))
    a, b = (eq * e1).sum(-1), (eq * e2).sum(-1)
    return b / (a + b)


def weight_shifts_q_in_place(q, k1, k2):
    q -= q.max(-1, keepdims=True)  # harmless for the weight (it cancels), not for the caller's q
    return weight_sigmoid(q, k1, k2)


WRONG = [
    ("6.1", layout_scores_values, "queried KEY"),
    ("6.1", layout_targets_are_inputs, "NEXT token"),
    ("6.1", layout_answers_in_order, "paired with the queried key"),
    ("6.1", layout_queries_right_after_pairs, "ends the sequence"),
    ("6.1", layout_value_first, "key first, then its value"),
    ("6.1", layout_section_one_early, "final query unanswered"),
    ("6.1", layout_sorts_the_queries, "changed its input `query_index` in place"),
    ("6.2", bytes_without_z, "normaliser Z"),
    ("6.2", bytes_cache_keys_only, "keys AND the values"),
    ("6.2", bytes_forgets_layers, "multiply by n_layer"),
    ("6.2", bytes_forgets_heads, "multiply by n_head"),
    ("6.2", bytes_counts_numbers, "bytes_per_number"),
    ("6.2", bytes_state_per_token, "does not grow"),
    ("6.3", weight_linear, "exp(q) * exp(k) overflows"),
    ("6.3", weight_dot_product, "not the dot"),
    ("6.3", weight_of_own_pair, "OTHER pair"),
    ("6.3", weight_scores_back_to_linear, "combine the two scores in log space"),
    ("6.3", weight_mean_shift, "not the mean"),
    ("6.3", weight_each_vector_own_max, "ONE shared max"),
    ("6.3", weight_shifts_q_in_place, "changed its input `q` in place"),
]


@pytest.mark.parametrize("task_id, wrong, phrase", WRONG, ids=case_ids(WRONG))
def test_wrong_answer_is_rejected_with_its_concept(task_id, wrong, phrase):
    assert_rejected_with_concept(task_id, wrong, phrase)
