"""Lesson 5's checks accept the reference solutions and reject each known-wrong answer with its concept."""

import pytest

from logattn_ref.grading import check, get_task
from logattn_ref.grading import lesson5

WRONG = [
    ("5.1", lesson5._heads_no_transpose, "wrong axis"),
    ("5.1", lesson5._heads_merge_without_transpose, "undo the split"),
    ("5.1", lesson5._heads_not_causal, "causal"),
    ("5.1", lesson5._heads_linear_y, "log Y"),
    ("5.1", lesson5._heads_one_head, "single head"),
    ("5.2", lesson5._lm_no_shift, "shifted by one"),
    ("5.2", lesson5._lm_wrong_direction, "other way"),
    ("5.2", lesson5._lm_sum, "not the sum"),
    ("5.2", lesson5._lm_raw_logits, "log_softmax"),
    ("5.3", lesson5._generate_recompute, "re-ran the whole context"),
    ("5.3", lesson5._generate_first_position, "LAST position"),
    ("5.3", lesson5._generate_last_prompt_token_only, "WHOLE prompt"),
]


def _torch_solution_5_1(q, k, log_v, n_head):
    from logattn_ref import torch_attention

    b, n, c = q.shape
    split = lambda t: t.view(b, n, n_head, c // n_head).transpose(1, 2)
    log_y = torch_attention.log_attention_logspace(split(q), split(k), split(log_v), causal=True)
    return log_y.transpose(1, 2).reshape(b, n, c)


def _torch_solution_5_2(logits, idx):
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


@pytest.mark.parametrize("task_id", ["5.1", "5.2", "5.3"])
def test_reference_passes(task_id):
    assert check(task_id, get_task(task_id).reference, seed=1).passed


@pytest.mark.parametrize("task_id, fn", [("5.1", _torch_solution_5_1), ("5.2", _torch_solution_5_2)])
def test_torch_solutions_pass(task_id, fn):
    for seed in range(3):
        assert check(task_id, fn, seed=seed).passed


@pytest.mark.parametrize("task_id, wrong, phrase", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_wrong_answer_is_rejected_with_its_concept(task_id, wrong, phrase, capsys):
    result = check(task_id, wrong, seed=2)
    assert not result.passed
    assert phrase in result.message, result.message


def test_stub_is_not_implemented():
    def stub(*args):
        raise NotImplementedError("Task 5.2: the causal LM loss")

    result = check("5.2", stub)
    assert result.status == "not implemented" and not result.passed
