"""Lesson 7's checks accept right answers written several ways and reject wrong ones with their concept.

The wrong answers below are written the way a learner would write them, independently of the mistake variants
inside logattn_ref/grading/lesson7.py, so a test passes only when the diagnosis recognises the mistake itself.
Every verdict is asserted on five seeds: the corner cases are fixed, the random draws are not.
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
from logattn_ref import family

# ------------------------------------------------------------------------------------------- right answers


def gated_numpy(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))
    g = np.exp(log_gate_t)
    kv = g[..., :, None] * kv + phi(k_t)[..., :, None] * v_t[..., None, :]
    k_sum = g * k_sum + phi(k_t)
    y = np.einsum("...f,...fv->...v", phi(q_t), kv) / np.einsum("...f,...f->...", phi(q_t), k_sum)[..., None]
    return y, kv, k_sum


def gated_torch(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    kv, k_sum, q, k, v, log_g = (torch.as_tensor(a) for a in (kv, k_sum, q_t, k_t, v_t, log_gate_t))
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    kv = kv * log_g.exp().unsqueeze(-1) + torch.einsum("...f,...v->...fv", phi_k, v)
    k_sum = k_sum * log_g.exp() + phi_k
    y = (phi_q.unsqueeze(-2) @ kv).squeeze(-2) / (phi_q * k_sum).sum(-1, keepdim=True)
    return y, kv, k_sum


def delta_numpy(state, q_t, k_t, v_t, beta_t):
    k = k_t / np.linalg.norm(k_t, axis=-1, keepdims=True)
    error = v_t - np.einsum("...f,...fv->...v", k, state)
    new = state + beta_t[..., None, None] * np.einsum("...f,...v->...fv", k, error)
    return np.einsum("...f,...fv->...v", q_t, new), new


def delta_torch(state, q_t, k_t, v_t, beta_t):  # the projection form: (I - beta k k^T) state + beta k v^T
    state, q, k, v, beta = (torch.as_tensor(a) for a in (state, q_t, k_t, v_t, beta_t))
    k = F.normalize(k, dim=-1)
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    b = beta[..., None, None]
    new = (eye - b * k[..., :, None] * k[..., None, :]) @ state + b * k[..., :, None] * v[..., None, :]
    return (q[..., None, :] @ new)[..., 0, :], new


def recall_numpy(keys, values):
    k = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    additive = np.swapaxes(k, -1, -2) @ values
    memory = np.zeros(keys.shape[:-2] + (keys.shape[-1], values.shape[-1]))
    for i in range(keys.shape[-2]):
        _, memory = delta_numpy(memory, k[..., i, :], k[..., i, :], values[..., i, :], np.ones(keys.shape[:-2]))
    err = lambda y: np.sqrt(((y - values) ** 2).sum((-2, -1)) / (values**2).sum((-2, -1)))
    return err(k @ additive), err(k @ memory)


def recall_library(keys, values):  # the library's delta step, token by token
    k = family.l2_normalize(torch.as_tensor(keys))
    v = torch.as_tensor(values)
    memory = family.delta_initial_state(k.shape[:-2], k.shape[-1], v.shape[-1], dtype=torch.float64)
    for i in range(k.shape[-2]):
        _, memory = family.delta_step(memory, k[..., i, :], k[..., i, :], v[..., i, :],
                                      torch.ones(k.shape[:-2], dtype=torch.float64))
    additive = k.transpose(-1, -2) @ v
    rel = lambda y: torch.linalg.matrix_norm(y - v) / torch.linalg.matrix_norm(v)
    return rel(k @ additive), rel(k @ memory)


RIGHT = [
    ("7.1", gated_numpy),
    ("7.1", gated_torch),
    ("7.2", delta_numpy),
    ("7.2", delta_torch),
    ("7.3", recall_numpy),
    ("7.3", recall_library),
]


@pytest.mark.parametrize("task_id", ["7.1", "7.2", "7.3"])
def test_reference_passes(task_id):
    assert_reference_passes(task_id)


@pytest.mark.parametrize("task_id, fn", RIGHT, ids=case_ids(RIGHT))
def test_right_answers_pass(task_id, fn):
    assert_passes_on_every_seed(task_id, fn)


@pytest.mark.parametrize("task_id", ["7.1", "7.2", "7.3"])
def test_stub_is_not_implemented(task_id):
    assert_stub_is_not_implemented(task_id, "the family")


# ------------------------------------------------------------------------------------------- wrong answers


def _phi(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def gated_write_then_decay(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    g = np.exp(log_gate_t)
    kv = (kv + np.einsum("...f,...v->...fv", _phi(k_t), v_t)) * g[..., :, None]
    k_sum = (k_sum + _phi(k_t)) * g
    return np.einsum("...f,...fv->...v", _phi(q_t), kv) / (_phi(q_t) * k_sum).sum(-1, keepdims=True), kv, k_sum


def gated_forgets_k_sum(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    kv = np.exp(log_gate_t)[..., :, None] * kv + np.einsum("...f,...v->...fv", _phi(k_t), v_t)
    k_sum = k_sum + _phi(k_t)
    return np.einsum("...f,...fv->...v", _phi(q_t), kv) / (_phi(q_t) * k_sum).sum(-1, keepdims=True), kv, k_sum


def gated_uses_log_gate(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    kv = log_gate_t[..., :, None] * kv + np.einsum("...f,...v->...fv", _phi(k_t), v_t)
    k_sum = log_gate_t * k_sum + _phi(k_t)
    return np.einsum("...f,...fv->...v", _phi(q_t), kv) / (_phi(q_t) * k_sum).sum(-1, keepdims=True), kv, k_sum


def gated_reads_old_state(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    y = np.einsum("...f,...fv->...v", _phi(q_t), kv) / (_phi(q_t) * k_sum).sum(-1, keepdims=True)
    g = np.exp(log_gate_t)
    return y, g[..., :, None] * kv + np.einsum("...f,...v->...fv", _phi(k_t), v_t), g * k_sum + _phi(k_t)


def gated_raw_q_k(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    g = np.exp(log_gate_t)
    kv = g[..., :, None] * kv + np.einsum("...f,...v->...fv", k_t, v_t)
    k_sum = g * k_sum + k_t
    return np.einsum("...f,...fv->...v", q_t, kv) / (q_t * k_sum).sum(-1, keepdims=True), kv, k_sum


def gated_no_denominator(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    g = np.exp(log_gate_t)
    kv = g[..., :, None] * kv + np.einsum("...f,...v->...fv", _phi(k_t), v_t)
    return np.einsum("...f,...fv->...v", _phi(q_t), kv), kv, g * k_sum + _phi(k_t)


def gated_in_place(kv, k_sum, q_t, k_t, v_t, log_gate_t):
    g = np.exp(log_gate_t)
    kv *= g[..., :, None]  # the caller's state changes too
    kv += np.einsum("...f,...v->...fv", _phi(k_t), v_t)
    k_sum *= g
    k_sum += _phi(k_t)
    return np.einsum("...f,...fv->...v", _phi(q_t), kv) / (_phi(q_t) * k_sum).sum(-1, keepdims=True), kv, k_sum


def _unit(k):
    return k / np.linalg.norm(k, axis=-1, keepdims=True)


def delta_beta_on_v_only(state, q_t, k_t, v_t, beta_t):
    k = _unit(k_t)
    error = beta_t[..., None] * v_t - np.einsum("...f,...fv->...v", k, state)
    new = state + np.einsum("...f,...v->...fv", k, error)
    return np.einsum("...f,...fv->...v", q_t, new), new


def delta_raw_key(state, q_t, k_t, v_t, beta_t):
    error = v_t - np.einsum("...f,...fv->...v", k_t, state)
    new = state + beta_t[..., None, None] * np.einsum("...f,...v->...fv", k_t, error)
    return np.einsum("...f,...fv->...v", q_t, new), new


def delta_wrong_sign(state, q_t, k_t, v_t, beta_t):
    k = _unit(k_t)
    error = np.einsum("...f,...fv->...v", k, state) - v_t
    new = state + beta_t[..., None, None] * np.einsum("...f,...v->...fv", k, error)
    return np.einsum("...f,...fv->...v", q_t, new), new


def delta_state_times_k(state, q_t, k_t, v_t, beta_t):
    k = _unit(k_t)
    error = v_t - state @ k[..., :, None][..., 0] if state.ndim == 2 else v_t - (state @ k[..., :, None])[..., 0]
    new = state + beta_t[..., None, None] * np.einsum("...f,...v->...fv", k, error)
    return np.einsum("...f,...fv->...v", q_t, new), new


def delta_only_adds(state, q_t, k_t, v_t, beta_t):
    k = _unit(k_t)
    new = state + beta_t[..., None, None] * np.einsum("...f,...v->...fv", k, v_t)
    return np.einsum("...f,...fv->...v", q_t, new), new


def delta_reads_before_update(state, q_t, k_t, v_t, beta_t):
    y = np.einsum("...f,...fv->...v", q_t, state)
    return y, delta_numpy(state, q_t, k_t, v_t, beta_t)[1]


def delta_in_place(state, q_t, k_t, v_t, beta_t):
    k = _unit(k_t)
    error = v_t - np.einsum("...f,...fv->...v", k, state)
    state += beta_t[..., None, None] * np.einsum("...f,...v->...fv", k, error)
    return np.einsum("...f,...fv->...v", q_t, state), state


def _memories(keys, values, unit=True):
    k = _unit(keys) if unit else keys
    memory = np.zeros(keys.shape[:-2] + (keys.shape[-1], values.shape[-1]))
    for i in range(keys.shape[-2]):
        _, memory = delta_raw_key(memory, k[..., i, :], k[..., i, :], values[..., i, :], np.ones(keys.shape[:-2]))
    return k, np.swapaxes(k, -1, -2) @ values, memory


def _rel(y, values):
    return np.linalg.norm(y - values, axis=(-2, -1)) / np.linalg.norm(values, axis=(-2, -1))


def recall_delta_first(keys, values):
    k, additive, delta = _memories(keys, values)
    return _rel(k @ delta, values), _rel(k @ additive, values)


def recall_each_right_after_its_write(keys, values):
    k = _unit(keys)
    memory = np.zeros(keys.shape[:-2] + (keys.shape[-1], values.shape[-1]))
    reads = []
    for i in range(keys.shape[-2]):
        y, memory = delta_numpy(memory, k[..., i, :], k[..., i, :], values[..., i, :], np.ones(keys.shape[:-2]))
        reads.append(y)
    return _rel(k @ (np.swapaxes(k, -1, -2) @ values), values), _rel(np.stack(reads, -2), values)


def recall_raw_keys(keys, values):
    k, additive, delta = _memories(keys, values, unit=False)
    return _rel(k @ additive, values), _rel(k @ delta, values)


def recall_stores_unit_reads_raw(keys, values):
    _, additive, delta = _memories(keys, values)
    return _rel(keys @ additive, values), _rel(keys @ delta, values)


def recall_absolute_error(keys, values):
    k, additive, delta = _memories(keys, values)
    return np.linalg.norm(k @ additive - values, axis=(-2, -1)), np.linalg.norm(k @ delta - values, axis=(-2, -1))


def recall_mean_of_pairs(keys, values):
    k, additive, delta = _memories(keys, values)
    per_pair = lambda y: (np.linalg.norm(y - values, axis=-1) / np.linalg.norm(values, axis=-1)).mean(-1)
    return per_pair(k @ additive), per_pair(k @ delta)


def recall_normalises_in_place(keys, values):
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    return recall_numpy(keys, values)


WRONG = [
    ("7.1", gated_write_then_decay, "decay the OLD state"),
    ("7.1", gated_forgets_k_sum, "normaliser k_sum decays"),
    ("7.1", gated_uses_log_gate, "g = exp(log_gate_t)"),
    ("7.1", gated_reads_old_state, "AFTER this token's write"),
    ("7.1", gated_raw_q_k, "feature map"),
    ("7.1", gated_no_denominator, "divide the read"),
    ("7.1", gated_in_place, "changed its input `kv` in place"),
    ("7.2", delta_beta_on_v_only, "beta scales the whole error"),
    ("7.2", delta_raw_key, "normalise the key"),
    ("7.2", delta_wrong_sign, "opposite sign"),
    ("7.2", delta_state_times_k, "not state k"),
    ("7.2", delta_only_adds, "additive rule"),
    ("7.2", delta_reads_before_update, "AFTER this token's update"),
    ("7.2", delta_in_place, "changed its input `state` in place"),
    ("7.3", recall_delta_first, "(additive, delta)"),
    ("7.3", recall_each_right_after_its_write, "FINAL memory"),
    ("7.3", recall_raw_keys, "normalise the keys"),
    ("7.3", recall_stores_unit_reads_raw, "same unit keys"),
    ("7.3", recall_absolute_error, "relative"),
    ("7.3", recall_mean_of_pairs, "all pairs at once"),
    ("7.3", recall_normalises_in_place, "changed its input `keys` in place"),
]


@pytest.mark.parametrize("task_id, wrong, phrase", WRONG, ids=case_ids(WRONG))
def test_wrong_answer_is_rejected_with_its_concept(task_id, wrong, phrase):
    assert_rejected_with_concept(task_id, wrong, phrase)


def test_the_delta_memory_recalls_correlated_keys_better_on_the_fixed_case():
    """What task 7.3 asks the learner to predict, on its first fixed case: 4 correlated keys in d_k = 6."""
    from logattn_ref.grading import get_task

    corner = [c for c in get_task("7.3").cases(np.random.default_rng(0)) if c.corner][0]
    additive, delta = recall_numpy(*corner.args)
    assert delta < 0.5 * additive
