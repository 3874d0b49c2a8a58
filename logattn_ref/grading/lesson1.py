"""Graded tasks of lesson 1 (softmax attention): stable softmax, logsumexp, the causal mask, attention.

Expected values come from the float64 oracle :mod:`logattn_ref.numpy_ref`. Each ``_wrong_*`` function is a
known mistake; when a learner's output equals one, the check prints the concept that mistake misses.
"""

from __future__ import annotations

import numpy as np

from .. import numpy_ref
from .registry import Case, Mistake, task

# ------------------------------------------------------------------------------------------------ 1.1 softmax


def _wrong_softmax_no_shift(x):
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _wrong_softmax_global_shift(x):
    e = np.exp(x - np.max(x))
    return e / e.sum(-1, keepdims=True)


def _wrong_softmax_axis0(x):
    e = np.exp(x - x.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def _wrong_softmax_sum_all(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum()


@task(
    "1.1",
    "Stable softmax",
    points=1,
    concept="softmax(x) = exp(x - max) / sum(exp(x - max)) along the last axis; the shift keeps exp from overflowing",
    hints=[
        "exp(1000) is inf in float64, and inf/inf is NaN. Softmax does not change when you add a constant to a row.",
        "Subtract each row's maximum, x.max(axis=-1, keepdims=True), before np.exp.",
        "e = np.exp(x - x.max(axis=-1, keepdims=True)); return e / e.sum(axis=-1, keepdims=True)",
    ],
    reference=lambda x: numpy_ref.softmax(x, axis=-1),
    mistakes=[
        Mistake(_wrong_softmax_no_shift, "did you subtract the row max before exp? exp of large scores overflows to inf"),
        Mistake(
            _wrong_softmax_global_shift,
            "subtract each ROW's max (axis=-1, keepdims=True), not the global max: a row far below it underflows to 0/0",
        ),
        Mistake(_wrong_softmax_axis0, "wrong axis: each row (the last axis, axis=-1) is one distribution, not each column"),
        Mistake(_wrong_softmax_sum_all, "normalise each row by ITS sum (axis=-1, keepdims=True), not by the sum of everything"),
    ],
    rtol=1e-9,
    atol=1e-12,
)
def _softmax_cases(rng):
    n = int(rng.integers(3, 8)) * 2 + 1  # odd length
    rows = np.array([0.0, -2000.0, 1500.0])[:, None] + rng.normal(size=(3, n))
    return [
        Case("a vector of 5 scores", (rng.normal(size=5) * 3,)),
        Case("n = 1", (rng.normal(size=(1,)),), hint="a single score has weight 1"),
        Case(f"rows of odd length {n}", (rng.normal(size=(4, n)) * 2,)),
        Case("batch and head dims", (rng.normal(size=(2, 3, n)),)),
        Case("large scores (~1000)", (rng.uniform(900, 1100, size=(4, n)),)),
        Case("rows on very different scales", (rows,)),
    ]


# ------------------------------------------------------------------------------------------------ 1.2 logsumexp


def _wrong_lse_no_shift(x):
    return np.log(np.exp(x).sum(-1))


def _wrong_lse_no_inf_guard(x):
    top = x.max(-1, keepdims=True)
    return (np.log(np.exp(x - top).sum(-1, keepdims=True)) + top)[..., 0]


def _wrong_lse_no_add_back(x):
    top = x.max(-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.log(np.exp(x - top).sum(-1))


def _wrong_lse_axis0(x):
    return numpy_ref.logsumexp(x, axis=0)


@task(
    "1.2",
    "logsumexp that handles -inf rows",
    points=1,
    concept="LSE(x) = m + log(sum(exp(x - m))) with m the row max; a row that is all -inf (everything masked) gives -inf",
    hints=[
        "Like softmax: shift by the row max m so the largest term is exp(0) = 1, and add m back after the log.",
        "A row that is entirely -inf has m = -inf, and -inf - (-inf) is NaN. The log of an empty sum is -inf.",
        "m = x.max(-1, keepdims=True); m = np.where(np.isfinite(m), m, 0.0); then np.log(np.exp(x - m).sum(-1)) + m[..., 0]",
    ],
    reference=lambda x: numpy_ref.logsumexp(x, axis=-1),
    mistakes=[
        Mistake(_wrong_lse_no_shift, "did you subtract the max before exp (and add it back after the log)? exp overflows"),
        Mistake(
            _wrong_lse_no_inf_guard,
            "a row that is all -inf has max -inf, and -inf - (-inf) is NaN: shift such rows by 0 "
            "(np.where(np.isfinite(m), m, 0)) so the answer is -inf, the log of an empty sum",
        ),
        Mistake(_wrong_lse_no_add_back, "after the log, add the max back: LSE(x) = m + log(sum(exp(x - m)))"),
        Mistake(_wrong_lse_axis0, "wrong axis: reduce over the last axis (axis=-1)"),
    ],
    rtol=1e-10,
    atol=1e-10,
)
def _logsumexp_cases(rng):
    n = int(rng.integers(2, 6)) * 2 + 1
    masked = rng.normal(size=(5, n))
    masked[rng.random(size=masked.shape) < 0.4] = -np.inf
    masked[int(rng.integers(0, 5))] = -np.inf  # one row with everything masked
    return [
        Case("a vector of 6", (rng.normal(size=6) * 3,)),
        Case("n = 1", (rng.normal(size=(1,)),)),
        Case(f"rows of odd length {n}", (rng.normal(size=(4, n)) * 5,)),
        Case("batch and head dims", (rng.normal(size=(2, 3, n)),)),
        Case("large values (~ +1000)", (rng.uniform(900, 1100, size=(3, n)),)),
        Case("very negative values (~ -1000)", (rng.uniform(-1100, -900, size=(3, n)),)),
        Case("masked entries and an all -inf row", (masked,)),
    ]


# ------------------------------------------------------------------------------------------------ 1.3 causal mask


@task(
    "1.3",
    "The causal mask",
    points=1,
    concept="the causal mask is True where key j is at or before query i (j <= i): row i = query, column j = key",
    hints=[
        "Row i is the query, column j the key. Token i may look at tokens 0, 1, ..., i: itself included.",
        "That is the lower triangle of an n x n matrix, diagonal included.",
        "np.tril(np.ones((n, n), dtype=bool))",
    ],
    reference=lambda n: np.tril(np.ones((n, n), dtype=bool)),
    mistakes=[
        Mistake(lambda n: np.tril(np.ones((n, n), dtype=bool), k=-1), "the causal mask is off by one: token i must see itself (j <= i, diagonal included)"),
        Mistake(lambda n: np.triu(np.ones((n, n), dtype=bool)), "the mask is transposed: row i is the query and may see keys j <= i (lower triangle)"),
        Mistake(lambda n: np.ones((n, n), dtype=bool), "nothing is masked: keys after the query (j > i) must be False"),
    ],
    exact=True,
)
def _mask_cases(rng):
    return [
        Case("n = 1", (1,)),
        Case("n = 2", (2,)),
        Case("odd n", (int(rng.integers(2, 8)) * 2 + 1,)),
        Case("even n", (int(rng.integers(4, 10)) * 2,)),
    ]


# ------------------------------------------------------------------------------------------------ 1.4 attention


def _scores(q, k, scale=True):
    s = q @ np.swapaxes(k, -1, -2)
    return s / np.sqrt(q.shape[-1]) if scale else s


def _tril_or_all(q, causal):
    n = q.shape[-2]
    return np.tril(np.ones((n, n), dtype=bool)) if causal else True


def _masked_softmax(s, causal, *, off_by_one=False, fill=-np.inf):
    if causal:
        n = s.shape[-1]
        allowed = np.tril(np.ones((n, n), dtype=bool), k=-1 if off_by_one else 0)
        s = np.where(allowed, s, fill)
    top = np.max(s, -1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(s - top)
    return e / e.sum(-1, keepdims=True)


@task(
    "1.4",
    "Softmax attention",
    points=2,
    concept="y_i = sum_j softmax_j(q_i . k_j / sqrt(d_k)) v_j, keys j <= i when causal, softmax over the keys",
    hints=[
        "Scores q @ k^T have shape [..., n_q, n_k]; use np.swapaxes(k, -1, -2) (k.T would reverse batch dims too).",
        "Scale the scores by 1/sqrt(d_k); when causal, set scores with j > i to -inf; softmax over the last axis.",
        "s = q @ np.swapaxes(k, -1, -2) / np.sqrt(d_k); s = np.where(mask, s, -np.inf); return softmax(s) @ v",
    ],
    reference=lambda q, k, v, causal=True: numpy_ref.softmax_attention(q, k, v, causal=causal),
    mistakes=[
        Mistake(lambda q, k, v, causal=True: _masked_softmax(_scores(q, k, False), causal) @ v, "scale the scores by 1/sqrt(d_k)"),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), causal, off_by_one=True) @ v,
            "the causal mask is off by one: token i must see itself",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), False) @ v,
            "the causal mask is missing: with causal=True query i must not see keys j > i",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), causal, fill=0.0) @ v,
            "masked scores must be -inf (weight exactly 0), not 0 (weight exp(0) = 1)",
        ),
        Mistake(
            lambda q, k, v, causal=True: np.where(_tril_or_all(q, causal), _scores(q, k), 0.0) @ v,
            "the scores are not weights yet: apply softmax over the keys so each row is positive and sums to 1",
        ),
        Mistake(
            lambda q, k, v, causal=True: np.swapaxes(numpy_ref.softmax(np.where(np.tril(np.ones((q.shape[-2],) * 2, bool)) | (not causal), _scores(q, k), -np.inf), axis=-2), -1, -2) @ v,
            "softmax over the keys (the last axis of the scores), not over the queries",
        ),
    ],
    rtol=1e-8,
    atol=1e-10,
)
def _attention_cases(rng):
    n = int(rng.integers(2, 6)) * 2 + 1
    d_k, d_v = int(rng.integers(2, 7)), int(rng.integers(1, 5))

    def qkv(batch, n_q, n_k, size=1.0):
        q = rng.normal(size=batch + (n_q, d_k)) * size
        k = rng.normal(size=batch + (n_k, d_k)) * size
        v = rng.normal(size=batch + (n_k, d_v))
        return q, k, v

    cases = [
        (f"causal, n = {n}", qkv((), n, n), {}),
        ("n = 1", qkv((), 1, 1), {}),
        ("batch and head dims [2, 3, n, d]", qkv((2, 3), n, n), {}),
        ("cross-attention (causal=False, n_q != n_k)", qkv((), 3, n + 2), {"causal": False}),
        ("large scores (|q|, |k| ~ 30)", qkv((), n, n, 30.0), {}),
    ]
    return [
        Case(name, args, kwargs, scale=args[2], hint="batch dims: transpose only the last two axes" if "batch" in name else None)
        for name, args, kwargs in cases
    ]
