"""Graded tasks of lesson 6 (recall and state size): the MQAR layout, a model's state bytes against a KV cache,
and the interference of two pairs stored in an exp-feature state.

Expected values come from :mod:`logattn_ref.recall` (6.1, 6.2; the layout is checked exactly) and from the
float64 oracle's log-sum-exp (6.3).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import mqar, numpy_ref, recall
from .registry import Case, Mistake, task

# --------------------------------------------------------------------------------------------------------
# 6.1 the MQAR layout: pairs, filler, queries; next-token targets; the mask of scored positions
# --------------------------------------------------------------------------------------------------------


def _layout_reference(keys, values, query_index, seq_len):
    return tuple(mqar.mqar_layout(torch.as_tensor(keys), torch.as_tensor(values), torch.as_tensor(query_index), seq_len))


def _tokens(keys, values, query_index, seq_len, answers=None, start=None):
    """A row of ``seq_len + 1`` tokens: pairs, filler, and the query section from ``start`` (default: at the end)."""
    keys, values, query_index = (np.asarray(a) for a in (keys, values, query_index))
    b, p = keys.shape
    q = query_index.shape[1]
    tokens = np.full((b, seq_len + 1), mqar.FILLER, dtype=np.int64)
    tokens[:, 0 : 2 * p : 2], tokens[:, 1 : 2 * p : 2] = keys, values
    start = seq_len + 1 - 2 * q if start is None else start
    tokens[:, start : start + 2 * q : 2] = np.take_along_axis(keys, query_index, axis=1)
    tokens[:, start + 1 : start + 2 * q : 2] = np.take_along_axis(values, query_index, axis=1) if answers is None else answers
    return tokens, start


def _next_token_split(tokens, first_scored, n_scored):
    """(inputs, targets, mask) of a token row, scoring every other position from ``first_scored`` on."""
    mask = np.zeros((tokens.shape[0], tokens.shape[1] - 1), dtype=bool)
    mask[:, first_scored : first_scored + 2 * n_scored : 2] = True
    return tokens[:, :-1], tokens[:, 1:], mask


def _layout_mask_on_values(keys, values, query_index, seq_len):
    tokens, start = _tokens(keys, values, query_index, seq_len)
    return _next_token_split(tokens, start + 1, np.asarray(query_index).shape[1])


def _layout_targets_not_shifted(keys, values, query_index, seq_len):
    inputs, targets, mask = _layout_reference(keys, values, query_index, seq_len)
    return inputs, inputs.clone(), mask


def _layout_answer_in_query_order(keys, values, query_index, seq_len):
    q = np.asarray(query_index).shape[1]
    tokens, start = _tokens(keys, values, query_index, seq_len, answers=np.asarray(values)[:, :q])
    return _next_token_split(tokens, start, q)


def _layout_queries_after_pairs(keys, values, query_index, seq_len):
    start = 2 * np.asarray(keys).shape[1]  # right after the pairs, instead of at the end
    tokens, start = _tokens(keys, values, query_index, seq_len, start=start)
    return _next_token_split(tokens, start, np.asarray(query_index).shape[1])


def _layout_section_one_early(keys, values, query_index, seq_len):
    q = np.asarray(query_index).shape[1]
    # one position too early: the last token is filler instead of the last answer
    tokens, start = _tokens(keys, values, query_index, seq_len, start=seq_len - 2 * q)
    return _next_token_split(tokens, start, q)


def _layout_value_before_key(keys, values, query_index, seq_len):
    inputs, targets, mask = (np.asarray(a) for a in _layout_reference(keys, values, query_index, seq_len))
    tokens = np.concatenate([inputs, targets[:, -1:]], axis=1)
    p = np.asarray(keys).shape[1]
    tokens[:, 0 : 2 * p : 2], tokens[:, 1 : 2 * p : 2] = values, keys  # each pair written value first
    return tokens[:, :-1], tokens[:, 1:], mask


@task(
    "6.1",
    "The MQAR layout",
    points=2,
    concept="pairs k v first, filler, then the queries at the END (each queried key followed by its value); "
    "targets are the next token, and only the queried keys are scored",
    hints=[
        "Build one row of seq_len + 1 tokens filled with FILLER, then inputs = tokens[:, :-1], targets = tokens[:, 1:].",
        "Pairs go to positions 0, 2, 4, ... (keys) and 1, 3, 5, ... (values); the query section starts at "
        "seq_len + 1 - 2*Q, keys at its even offsets, their values right after.",
        "The queried keys are np.take_along_axis(keys, query_index, axis=1), their answers the same gather on "
        "values; the mask is True at the positions of the queried keys in the inputs.",
    ],
    reference=_layout_reference,
    mistakes=[
        Mistake(_layout_value_before_key, "each pair is written key first, then its value (k1 v1 k2 v2 ...): "
                "keys at even positions, values at odd ones"),
        Mistake(_layout_section_one_early, "the query section starts at seq_len + 1 - 2*Q (the last value exists "
                "only as a target): starting at seq_len - 2*Q leaves the final query unanswered"),
        Mistake(_layout_mask_on_values, "score the position of the queried KEY: that is where the model must "
                "predict the value (the value itself sits one position later, as a target)"),
        Mistake(_layout_targets_not_shifted, "targets are the NEXT token: targets[:, t] = tokens[:, t + 1]"),
        Mistake(_layout_answer_in_query_order, "the answer to a query is the value paired with the queried key "
                "(values gathered with query_index), not the i-th value"),
        Mistake(_layout_queries_after_pairs, "the query section ends the sequence (it starts at seq_len + 1 - 2*Q); "
                "the filler sits between the pairs and the queries"),
    ],
    exact=True,
)
def _cases_6_1(rng):
    def case(name, b, p, q, slack, vocab=97):
        keys = np.stack([rng.permutation(np.arange(1, 1 + (vocab - 1) // 2))[:p] for _ in range(b)])
        values = rng.integers(1 + (vocab - 1) // 2, vocab, size=(b, p))
        query_index = np.stack([rng.permutation(p)[:q] for _ in range(b)])
        return Case(name, (keys, values, query_index, 2 * p + 2 * q + slack))

    corners = [  # fixed numbers: the same layouts on every check
        Case("2 sequences that differ, 4 pairs, queries out of order, 3 filler",
             (np.array([[5, 9, 2, 7], [11, 3, 8, 1]]), np.array([[60, 52, 71, 49], [55, 90, 67, 58]]),
              np.array([[2, 0, 3], [1, 3, 0]]), 2 * 4 + 2 * 3 + 3), corner=True),
        Case("1 pair, 1 query, no filler", (np.array([[4]]), np.array([[70]]), np.array([[0]]), 4), corner=True),
    ]
    return corners + [
        case("3 sequences, 5 pairs, 3 queries, 7 filler", 3, 5, 3, 7),
        case("1 pair, 1 query, no filler", 1, 1, 1, 0),
        case("8 pairs all asked, 1 filler", 2, 8, 8, 1),
    ]


# --------------------------------------------------------------------------------------------------------
# 6.2 state bytes vs KV-cache bytes
# --------------------------------------------------------------------------------------------------------


def _bytes_reference(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    return (recall.state_bytes(n_layer, n_head, head_dim, bytes_per_number),
            recall.kv_cache_bytes(n_layer, n_head, head_dim, n_ctx, bytes_per_number))


def _bytes_no_z(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    state, cache = _bytes_reference(n_layer, n_head, head_dim, n_ctx, bytes_per_number)
    return state - n_layer * n_head * head_dim * bytes_per_number, cache


def _bytes_keys_only(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    state, cache = _bytes_reference(n_layer, n_head, head_dim, n_ctx, bytes_per_number)
    return state, cache // 2


def _bytes_one_layer(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    return _bytes_reference(1, n_head, head_dim, n_ctx, bytes_per_number)


def _bytes_numbers_not_bytes(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    return _bytes_reference(n_layer, n_head, head_dim, n_ctx, 1)


def _bytes_one_head(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    return _bytes_reference(n_layer, 1, head_dim, n_ctx, bytes_per_number)


def _bytes_state_grows(n_layer, n_head, head_dim, n_ctx, bytes_per_number):
    state, cache = _bytes_reference(n_layer, n_head, head_dim, n_ctx, bytes_per_number)
    return state * max(n_ctx, 1), cache


@task(
    "6.2",
    "State bytes vs KV-cache bytes",
    points=1,
    concept="per layer and head the state is H^(S) [d_k, d_v] plus H^(Z) [d_k], whatever the context; a KV cache holds "
    "keys AND values, [n, d] each",
    hints=[
        "Count numbers first, then multiply by bytes_per_number; both counts are per layer per head times "
        "n_layer * n_head.",
        "State: head_dim * head_dim (H^(S)) + head_dim (H^(Z)). Cache: 2 * n_ctx * head_dim.",
    ],
    reference=_bytes_reference,
    mistakes=[
        Mistake(_bytes_no_z, "the state also holds what the normaliser Z reads, H^(Z) = log sum_j exp(k_j) (d_k numbers per head)"),
        Mistake(_bytes_keys_only, "a KV cache stores the keys AND the values: 2 * n_ctx * head_dim per head"),
        Mistake(_bytes_one_layer, "every layer has its own state and its own cache: multiply by n_layer"),
        Mistake(_bytes_one_head, "every head has its own state and its own cache: multiply by n_head"),
        Mistake(_bytes_numbers_not_bytes, "multiply the count of numbers by bytes_per_number"),
        Mistake(_bytes_state_grows, "the state does not grow with the context: that is its whole point"),
    ],
    exact=True,
)
def _cases_6_2(rng):
    def case(name, n_ctx=None):
        args = (int(rng.integers(2, 13)), int(rng.integers(2, 17)), int(rng.choice([16, 32, 64, 128])),
                int(rng.integers(2, 100_000)) if n_ctx is None else n_ctx, int(rng.choice([2, 4])))
        return Case(name, args)

    corners = [  # fixed numbers in which every factor differs (so no two counting mistakes agree)
        Case("3 layers, 5 heads of 16, a context of 1000, 2-byte numbers", (3, 5, 16, 1000, 2), corner=True),
        Case("1 layer, 1 head of 8, a context of 1, 4-byte numbers", (1, 1, 8, 1, 4), corner=True),
    ]
    return corners + [case("a random model and context"), case("another one"), case("context n = 1", n_ctx=1)]


# --------------------------------------------------------------------------------------------------------
# 6.3 interference: the weight a read with q puts on the OTHER stored pair
# --------------------------------------------------------------------------------------------------------


def _other_weight_reference(q, k1, k2):
    q, k1, k2 = (np.asarray(a, dtype=np.float64) for a in (q, k1, k2))
    s1 = numpy_ref.logsumexp(q + k1, axis=-1)  # log(exp(q) . exp(k1))
    s2 = numpy_ref.logsumexp(q + k2, axis=-1)
    return np.exp(s2 - np.logaddexp(s1, s2))


def _other_weight_naive(q, k1, k2):
    q, k1, k2 = (np.asarray(a, dtype=np.float64) for a in (q, k1, k2))
    a, b = (np.exp(q) * np.exp(k1)).sum(-1), (np.exp(q) * np.exp(k2)).sum(-1)
    return b / (a + b)


def _other_weight_dot(q, k1, k2):
    q, k1, k2 = (np.asarray(a, dtype=np.float64) for a in (q, k1, k2))
    s1, s2 = (q * k1).sum(-1), (q * k2).sum(-1)
    return np.exp(s2 - np.logaddexp(s1, s2))


def _other_weight_linear_pair_weights(q, k1, k2):
    s1, s2 = (numpy_ref.logsumexp(np.asarray(q, dtype=np.float64) + np.asarray(k, dtype=np.float64), axis=-1)
              for k in (k1, k2))
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(s2) / (np.exp(s1) + np.exp(s2))  # the log-space scores taken back to linear space


def _mean_shift_lse(x):
    centre = x.mean(-1, keepdims=True)
    with np.errstate(over="ignore", divide="ignore"):
        return np.log(np.exp(x - centre).sum(-1)) + centre[..., 0]


def _other_weight_mean_shift(q, k1, k2):
    q, k1, k2 = (np.asarray(a, dtype=np.float64) for a in (q, k1, k2))
    s1, s2 = _mean_shift_lse(q + k1), _mean_shift_lse(q + k2)
    with np.errstate(invalid="ignore"):
        return np.exp(s2 - np.logaddexp(s1, s2))


def _other_weight_own_max_factors(q, k1, k2):
    q, k1, k2 = (np.asarray(a, dtype=np.float64) for a in (q, k1, k2))
    unit = lambda x: np.exp(x - x.max(-1, keepdims=True))  # each vector factored by its OWN max, then forgotten
    a, b = (unit(q) * unit(k1)).sum(-1), (unit(q) * unit(k2)).sum(-1)
    return b / (a + b)


def _other_weight_own(q, k1, k2):
    return 1.0 - _other_weight_reference(q, k1, k2)


@task(
    "6.3",
    "Interference of two stored pairs",
    points=2,
    concept="with exp features the read-out weight of pair j is exp(q).exp(k_j) / sum_i exp(q).exp(k_i), where "
    "log(exp(q).exp(k)) = LSE_f(q_f + k_f); all terms are positive, so the other pair's weight is never 0",
    hints=[
        "Work in log space: s_j = logsumexp(q + k_j) over the feature axis is log(exp(q) . exp(k_j)).",
        "The weight of pair 2 is exp(s2) / (exp(s1) + exp(s2)) = exp(s2 - logaddexp(s1, s2)).",
        "Use numpy_ref.logsumexp(q + k2, axis=-1) and np.logaddexp: nothing overflows even for |q| ~ 500.",
    ],
    reference=_other_weight_reference,
    mistakes=[
        Mistake(_other_weight_own_max_factors, "factor every term by ONE shared max: scaling each vector by its own "
                "max changes the ratio between exp(q).exp(k1) and exp(q).exp(k2) (their maxima may differ by hundreds)"),
        Mistake(_other_weight_mean_shift, "shift the log-sum-exp by the MAX of q + k, not the mean: with entries "
                "spanning ~1e3 a mean shift overflows"),
        Mistake(_other_weight_linear_pair_weights, "combine the two scores in log space (exp(s2 - logaddexp(s1, s2)), "
                "or a sigmoid of s2 - s1): exp(s) overflows once s = log(exp(q).exp(k)) passes ~709"),
        Mistake(_other_weight_naive, "exp(q) * exp(k) overflows for large entries: compute log(exp(q).exp(k)) "
                "as a log-sum-exp of q + k and combine in log space"),
        Mistake(_other_weight_dot, "the similarity is log(exp(q).exp(k)) = LSE_f(q_f + k_f), not the dot "
                "product q.k"),
        Mistake(_other_weight_own, "return the weight of the OTHER pair (k2), the one that leaks into the read"),
    ],
    rtol=1e-9,
    atol=1e-12,
)
def _cases_6_3(rng):
    def case(name, shape, scale=1.0, self_query=False):
        k1, k2 = scale * rng.normal(size=shape), scale * rng.normal(size=shape)
        q = k1.copy() if self_query else scale * rng.normal(size=shape)
        return Case(name, (q, k1, k2))

    fixed = np.random.default_rng(6_3)  # corner cases: the same numbers on every check
    q, k1, k2 = (fixed.normal(size=(4, 3)) for _ in range(3))
    q[0] += 800.0  # exp(q) alone overflows, q + k does not
    k1[0] -= 150.0
    k2[0] -= 150.0
    q[1] += np.array([400.0, 0.0, 0.0])  # q + k ~ 1000 (beyond exp's range) in one feature
    k1[1] += np.array([600.0, 0.0, 0.0])
    k2[1] += np.array([590.0, 0.0, 0.0])
    k1[2] += np.array([500.0, -500.0, 0.0])  # a row spanning ~1e3
    k2[2] += np.array([490.0, -500.0, 0.0])
    k2[3] -= 400.0  # the other pair's weight underflows to exactly 0
    spread = [fixed.normal(size=(3, 4)) for _ in range(3)]
    spread[1][:, 0] += 300.0  # the keys' maxima differ by hundreds: own-max factoring gets the ratio wrong
    spread[2][:, 1] -= 200.0
    spread[2][:, 2] += 40.0
    corners = [
        Case("exp(q) alone overflows (q ~ 800, k ~ -150)", (q[:1], k1[:1], k2[:1]), corner=True),
        Case("q + k ~ 1000 in one feature", (q[1:2], k1[1:2], k2[1:2]), corner=True),
        Case("rows spanning ~1e3; a weight that underflows to 0; batch rows that differ", (q, k1, k2), corner=True),
        Case("keys whose maxima differ by hundreds", tuple(spread), corner=True),
    ]
    return corners + [
        case("a batch of 5 reads, d = 7", (5, 7)),
        case("q = k1: reading the stored key itself", (4, 3, 9), self_query=True),
        case("one read, d = 1", (1,)),
        case("|q|, |k| ~ 500", (6, 4), scale=500.0, self_query=False),
    ]
