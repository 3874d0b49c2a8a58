"""Lesson 6's checks accept the reference solutions and reject each known-wrong answer with its concept."""

import numpy as np
import pytest

from logattn_ref import numpy_ref
from logattn_ref.grading import check, get_task
from logattn_ref.grading import lesson6

WRONG = [
    ("6.1", lesson6._layout_mask_on_values, "queried KEY"),
    ("6.1", lesson6._layout_targets_not_shifted, "NEXT token"),
    ("6.1", lesson6._layout_answer_in_query_order, "paired with the queried key"),
    ("6.1", lesson6._layout_queries_after_pairs, "ends the sequence"),
    ("6.2", lesson6._bytes_no_z, "normaliser Z"),
    ("6.2", lesson6._bytes_keys_only, "keys AND the values"),
    ("6.2", lesson6._bytes_one_layer, "n_layer"),
    ("6.2", lesson6._bytes_numbers_not_bytes, "bytes_per_number"),
    ("6.2", lesson6._bytes_state_grows, "does not grow"),
    ("6.3", lesson6._other_weight_naive, "overflows"),
    ("6.3", lesson6._other_weight_dot, "not the dot"),
    ("6.3", lesson6._other_weight_own, "OTHER pair"),
]


def _numpy_layout(keys, values, query_index, seq_len):
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


def _bytes(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    per_head_state = head_dim * head_dim + head_dim
    return (n_layer * n_head * per_head_state * bytes_per_number,
            n_layer * n_head * 2 * n_ctx * head_dim * bytes_per_number)


def _other_weight(q, k1, k2):
    s1, s2 = numpy_ref.logsumexp(q + k1, axis=-1), numpy_ref.logsumexp(q + k2, axis=-1)
    return 1.0 / (1.0 + np.exp(s1 - s2))


@pytest.mark.parametrize("task_id", ["6.1", "6.2", "6.3"])
def test_reference_passes(task_id):
    assert check(task_id, get_task(task_id).reference, seed=1).passed


@pytest.mark.parametrize("task_id, fn", [("6.1", _numpy_layout), ("6.2", _bytes), ("6.3", _other_weight)])
def test_independent_solutions_pass(task_id, fn):
    for seed in range(3):
        assert check(task_id, fn, seed=seed).passed


@pytest.mark.parametrize("task_id, wrong, phrase", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_wrong_answer_is_rejected_with_its_concept(task_id, wrong, phrase):
    result = check(task_id, wrong, seed=2)
    assert not result.passed
    assert phrase in result.message, result.message


def test_stub_is_not_implemented():
    def stub(*args):
        raise NotImplementedError("Task 6.3: interference")

    result = check("6.3", stub)
    assert result.status == "not implemented" and not result.passed
