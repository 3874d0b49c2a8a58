"""Graded tasks of lesson 1 (softmax attention): stable softmax, logsumexp, the causal mask, attention.

Expected values come from the float64 oracle :mod:`logattn_ref.numpy_ref`. Each ``_wrong_*`` function is a
known mistake; when a learner's output equals one, the check prints the concept that mistake misses. Mistakes are
listed most specific first, and the fixed corner cases (run first, in order) are arranged so that each mistake
first fails on a case where no mistake listed before it gives the same output (tests/test_grading_coverage.py).
"""

from __future__ import annotations

import numpy as np

from .. import numpy_ref
from .registry import Case, Mistake, task

# ------------------------------------------------------------------------------------------------ 1.1 softmax


def _wrong_softmax_mean_shift(x):
    e = np.exp(x - x.mean(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _wrong_softmax_max_from_zero(x):
    # A running max started at 0 instead of at the first score: right unless every score of a row is negative.
    e = np.exp(x - np.maximum(x.max(-1, keepdims=True), 0.0))
    return e / e.sum(-1, keepdims=True)


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


def _rows(*rows):
    return np.array(rows, dtype=np.float64)


def _shift_corners(seed: int):
    """Fixed rows that tell the shifts apart (shared by 1.1 and 1.2): no shift, the mean, one max for everything,
    a max started at 0 each fail on one of them, first on a row where the others are still right."""
    fixed = np.random.default_rng(seed)
    span = _rows([3.0, 1000.0, -2.0, 0.5, 1.0, 0.0, -1.5], [-1.0, 2.0, 0.0, 4.0, 999.0, -3.0, 1.5])
    scales = np.array([0.0, -2000.0, 1500.0])[:, None] + fixed.normal(size=(3, 5))
    first = _rows([800.0, 1.0, 2.0, 3.0, -1.0], [-2.0, 0.0, 1.0, 3.0, 900.0])
    underflow = _rows([0.0, -800.0, 1.0, 2.0], [-760.0, 5.0, 4.0, 3.0])
    return [
        Case("scores near +1000 (exp overflows without a shift)", (fixed.uniform(990, 1010, size=(3, 7)),), corner=True),
        Case("a row spanning ~1e3 (its max far above its mean)", (span,), corner=True),
        Case("rows of a batch on very different scales (offsets 0, -2000, +1500)", (scales,), corner=True),
        Case("scores near -1000 (every exp underflows without a shift)", (fixed.uniform(-1010, -990, size=(3, 6)),),
             corner=True),
        Case("a huge score at index 0 (and one at the end)", (first,), corner=True),
        Case("a visible weight that underflows to exactly 0", (underflow,), corner=True),
        Case("one score per row, batch and head dims [2, 3, 1]", (fixed.normal(size=(2, 3, 1)) * 50,), corner=True,
             hint="a single score has weight 1"),
    ]


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
        Mistake(
            _wrong_softmax_mean_shift,
            "shift each row by its MAX (not its mean, min or any other value): in a row spanning ~1000 the largest "
            "score still sits hundreds above the mean, and exp of it overflows",
        ),
        Mistake(
            _wrong_softmax_max_from_zero,
            "shift by the row's max even when every score is negative (do not start the max at 0): a row of -1000s "
            "underflows to 0/0",
        ),
        Mistake(_wrong_softmax_no_shift, "did you subtract the row max before exp? exp of large scores overflows to inf"),
        Mistake(
            _wrong_softmax_global_shift,
            "subtract each ROW's max (axis=-1, keepdims=True), not the global max: a row far below it underflows to 0/0",
        ),
        Mistake(_wrong_softmax_axis0, "wrong axis: each row (the last axis, axis=-1) is one distribution, not each column"),
        Mistake(_wrong_softmax_sum_all, "normalise each row by ITS sum (axis=-1, keepdims=True), not by the sum of everything"),
        Mistake(
            lambda x: x - numpy_ref.logsumexp(x, axis=-1, keepdims=True),
            "that is log-softmax, the LOG of the weights: return the weights themselves, exp(x - max) / sum(exp(x - max))",
        ),
        Mistake(
            lambda x: x / x.sum(-1, keepdims=True),
            "apply exp before normalising: softmax(x) = exp(x - max) / sum(exp(x - max)); the scores divided by their "
            "sum are not weights (negative scores give negative weights)",
        ),
    ],
    rtol=1e-9,
    atol=1e-12,
)
def _softmax_cases(rng):
    n = int(rng.integers(3, 8)) * 2 + 1  # odd length
    rows = np.array([0.0, -2000.0, 1500.0])[:, None] + rng.normal(size=(3, n))
    return _shift_corners(11) + [
        Case("a vector of 5 scores", (rng.normal(size=5) * 3,)),
        Case("n = 1", (rng.normal(size=(1,)),), hint="a single score has weight 1"),
        Case(f"rows of odd length {n}", (rng.normal(size=(4, n)) * 2,)),
        Case("batch and head dims", (rng.normal(size=(2, 3, n)),)),
        Case("large scores (~1000)", (rng.uniform(900, 1100, size=(4, n)),)),
        Case("rows on very different scales", (rows,)),
    ]


# ------------------------------------------------------------------------------------------------ 1.2 logsumexp


def _wrong_lse_empty_is_zero(x):
    out = numpy_ref.logsumexp(x, axis=-1)
    return np.where(np.isneginf(out), 0.0, out)


def _wrong_lse_mean_shift(x):
    centre = x.mean(-1, keepdims=True)
    return (np.log(np.exp(x - centre).sum(-1, keepdims=True)) + centre)[..., 0]


def _wrong_lse_max_from_zero(x):
    top = np.maximum(x.max(-1, keepdims=True), 0.0)
    return (np.log(np.exp(x - top).sum(-1, keepdims=True)) + top)[..., 0]


def _wrong_lse_global_shift(x):
    top = np.max(x[np.isfinite(x)]) if np.isfinite(x).any() else 0.0
    return np.log(np.exp(x - top).sum(-1)) + top


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


def _wrong_lse_max_only(x):
    return x.max(-1)


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
        Mistake(
            _wrong_lse_empty_is_zero,
            "a row that is all -inf is an empty sum: its LSE is -inf (the log of 0), not 0",
        ),
        Mistake(
            _wrong_lse_mean_shift,
            "shift each row by its MAX (not its mean, min or any other value): in a row spanning ~1000 the largest "
            "entry still sits hundreds above the mean and exp of it overflows (and one -inf entry makes the mean -inf)",
        ),
        Mistake(
            _wrong_lse_max_from_zero,
            "shift by the row's max even when every entry is negative (do not start the max at 0): a row of -1000s "
            "underflows to log(0) = -inf",
        ),
        Mistake(
            _wrong_lse_global_shift,
            "shift each ROW by its own max (axis=-1, keepdims=True), not by one max over everything: a row far below "
            "it underflows to log(0) = -inf",
        ),
        Mistake(
            _wrong_lse_no_inf_guard,
            "a row that is all -inf has max -inf, and -inf - (-inf) is NaN: shift such rows by 0 "
            "(np.where(np.isfinite(m), m, 0)) so the answer is -inf, the log of an empty sum",
        ),
        Mistake(_wrong_lse_no_shift, "did you subtract the max before exp (and add it back after the log)? exp overflows"),
        Mistake(_wrong_lse_no_add_back, "after the log, add the max back: LSE(x) = m + log(sum(exp(x - m)))"),
        Mistake(_wrong_lse_axis0, "wrong axis: reduce over the last axis (axis=-1)"),
        Mistake(
            _wrong_lse_max_only,
            "the max alone is only the largest term: LSE(x) = m + log(sum(exp(x - m))) adds the others' share",
        ),
    ],
    rtol=1e-10,
    atol=1e-10,
)
def _logsumexp_cases(rng):
    n = int(rng.integers(2, 6)) * 2 + 1
    masked = rng.normal(size=(5, n))
    masked[rng.random(size=masked.shape) < 0.4] = -np.inf
    masked[int(rng.integers(0, 5))] = -np.inf  # one row with everything masked
    inf = -np.inf
    all_masked = _rows([1.0, 2.0, 0.5], [inf, inf, inf], [0.5, inf, 3.0], [inf, -2.0, inf])
    return _shift_corners(12) + [
        Case("an all -inf row among rows with some -inf entries", (all_masked,), corner=True),
        Case("a vector of 6", (rng.normal(size=6) * 3,)),
        Case("n = 1", (rng.normal(size=(1,)),)),
        Case(f"rows of odd length {n}", (rng.normal(size=(4, n)) * 5,)),
        Case("batch and head dims", (rng.normal(size=(2, 3, n)),)),
        Case("large values (~ +1000)", (rng.uniform(900, 1100, size=(3, n)),)),
        Case("very negative values (~ -1000)", (rng.uniform(-1100, -900, size=(3, n)),)),
        Case("masked entries and an all -inf row", (masked,)),
    ]


# ------------------------------------------------------------------------------------------------ 1.3 causal mask


def _tri(n, k=0, upper=False, dtype=bool):
    ones = np.ones((n, n), dtype=dtype)
    return np.triu(ones, k=k) if upper else np.tril(ones, k=k)


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
        Mistake(
            lambda n: _tri(n, 1, upper=True),
            "the mask is inverted: True must mark the keys a query MAY see (j <= i), not the ones it must not see",
        ),
        Mistake(lambda n: _tri(n, -1), "the causal mask is off by one: token i must see itself (j <= i, diagonal included)"),
        Mistake(lambda n: _tri(n, 1), "the mask lets token i see token i + 1, one step into the future: keep j <= i (k=0)"),
        Mistake(lambda n: _tri(n, upper=True), "the mask is transposed: row i is the query and may see keys j <= i (lower triangle)"),
        Mistake(lambda n: np.ones((n, n), dtype=bool), "nothing is masked: keys after the query (j > i) must be False"),
        Mistake(
            lambda n: _tri(n, dtype=np.float64),
            "return a boolean mask (dtype=bool, True = visible), not numbers: np.tril(np.ones((n, n), dtype=bool))",
        ),
    ],
    exact=True,
)
def _mask_cases(rng):
    # n = 4 first: for n = 1 the inverted and the off-by-one mask are the same [[False]], so a larger n tells them apart.
    return [Case(f"n = {n}", (n,), corner=True) for n in (4, 1, 2, 7)] + [
        Case("odd n", (int(rng.integers(2, 8)) * 2 + 1,)),
        Case("even n", (int(rng.integers(4, 10)) * 2,)),
    ]


# ------------------------------------------------------------------------------------------------ 1.4 attention


def _scores(q, k, scale=True):
    s = q @ np.swapaxes(k, -1, -2)
    if scale == "d_k":
        return s / q.shape[-1]
    return s / np.sqrt(q.shape[-1]) if scale else s


def _tril_or_all(q, causal):
    n = q.shape[-2]
    return np.tril(np.ones((n, n), dtype=bool)) if causal else True


def _masked_softmax(s, causal, *, mask_k=0, upper=False, fill=-np.inf, shift=True):
    allowed = _tri(s.shape[-1], mask_k, upper=upper) if causal else np.ones(s.shape[-2:], dtype=bool)
    s = np.where(allowed, s, fill)
    if shift == "global":  # one max for every row of every batch
        top = np.max(np.where(allowed, s, -np.inf))
    elif shift == "mean":  # the mean of the visible scores
        top = np.sum(np.where(allowed, s, 0.0), -1, keepdims=True) / np.maximum(allowed.sum(-1, keepdims=True), 1)
    else:
        top = np.max(s, -1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0) if shift else 0.0
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
        Mistake(lambda q, k, v, causal=True: _masked_softmax(_scores(q, k, "d_k"), causal) @ v,
                "scale the scores by 1/sqrt(d_k), not 1/d_k"),
        Mistake(lambda q, k, v, causal=True: _masked_softmax(_scores(q, k, False), causal) @ v, "scale the scores by 1/sqrt(d_k)"),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), causal, mask_k=1, upper=True) @ v,
            "the causal mask is inverted: query i may see keys j <= i; it is the keys j > i that get -inf",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), causal, mask_k=-1) @ v,
            "the causal mask is off by one: token i must see itself",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), causal, upper=True) @ v,
            "the causal mask is transposed: row i is the query and sees keys j <= i (the lower triangle)",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), False) @ v,
            "the causal mask is missing: with causal=True query i must not see keys j > i",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(
                np.where(np.tril(np.ones(q.shape[-2:-1] + k.shape[-2:-1], dtype=bool)), _scores(q, k), -np.inf), False
            ) @ v,
            "with causal=False nothing is masked: every query sees every key (mask only when causal is True)",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), causal, fill=0.0) @ v,
            "masked scores must be -inf (weight exactly 0), not 0 (weight exp(0) = 1)",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), causal, shift="global") @ v,
            "subtract each ROW's max score (axis=-1, keepdims=True), not one max over all rows: a row whose scores lie "
            "hundreds below it underflows to 0/0",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), causal, shift="mean") @ v,
            "use a stable softmax: subtract each row's MAX score (not its mean) before exp: in a row of scores "
            "spanning ~1000 the max still sits hundreds above the mean, and exp of it overflows",
        ),
        Mistake(
            lambda q, k, v, causal=True: _masked_softmax(_scores(q, k), causal, shift=False) @ v,
            "use a stable softmax: subtract each row's max score before exp (scores past ~709 overflow to inf)",
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

    batch_hint = "batch dims: transpose only the last two axes"
    cases = [
        (f"causal, n = {n}", qkv((), n, n), {}),
        ("n = 1", qkv((), 1, 1), {}),
        ("batch and head dims [2, 3, n, d]", qkv((2, 3), n, n), {}),
        ("cross-attention (causal=False, n_q != n_k)", qkv((), 3, n + 2), {"causal": False}),
        ("large scores (|q|, |k| ~ 30)", qkv((), n, n, 30.0), {}),
    ]
    return _attention_corners() + [
        Case(name, args, kwargs, scale=args[2], hint=batch_hint if "batch" in name else None)
        for name, args, kwargs in cases
    ]


def _attention_corners():
    fixed = np.random.default_rng(14)
    q, k, v = fixed.normal(size=(6, 3)), fixed.normal(size=(6, 3)), fixed.normal(size=(6, 5))
    # Scores q_i . k_j / sqrt(4) = 25 k_j0 for q_i = (50, 0, 0, 0): key 0 scores 1000, the rest lie near 0, so every
    # row from the fourth on spans ~1e3 (its max sits > 709 above its mean) and a huge score sits at index 0.
    q_big = np.zeros((6, 4))
    q_big[:, 0] = 50.0
    k_big = np.zeros((6, 4))
    k_big[:, 0] = [40.0, 0.0, 1.0, -0.4, 0.0, 0.2]
    k_big[:, 1:] = fixed.normal(size=(6, 3))
    v_big = fixed.normal(size=(6, 2))
    # Key 1 scores -1000 below key 0 for every query: a visible weight that underflows to exactly 0.
    q_tiny, k_tiny = np.full((4, 2), 20.0), np.array([[1.0, 1.0], [-34.0, -37.0], [0.5, 0.0], [0.0, 0.3]])
    batch = (fixed.normal(size=(2, 3, 5, 3)), fixed.normal(size=(2, 3, 5, 3)), fixed.normal(size=(2, 3, 5, 2)))
    batch[0][1] += 2.0  # the rows of the batch differ in scale too
    cross = (fixed.normal(size=(2, 3)), fixed.normal(size=(7, 3)), fixed.normal(size=(7, 4)))
    # Non-causal rows whose max scores differ by hundreds: queries 0 and 1 peak near 850, query 2 near 7.
    q_rows = np.array([[40.0, 0.0], [-40.0, 0.0], [0.3, 0.2], [20.0, 1.0]])
    k_rows = np.column_stack([[30.0, -30.0, 5.0, 0.0, 10.0], fixed.normal(size=5)])
    cases = [
        ("causal, d_v != d_k (d_k = 3, d_v = 5)", (q, k, v), {}),
        ("scores spanning ~1e3 with a huge score at index 0", (q_big, k_big, v_big), {}),
        ("a visible weight that underflows to exactly 0", (q_tiny, k_tiny, fixed.normal(size=(4, 3))), {}),
        ("batch and head dims [2, 3, 5, d] whose rows differ", batch, {}),
        ("cross-attention (causal=False, n_q = 2, n_k = 7)", cross, {"causal": False}),
        ("rows whose max scores differ by hundreds (causal=False)", (q_rows, k_rows, fixed.normal(size=(5, 3))),
         {"causal": False}),
        ("n = 1", (fixed.normal(size=(1, 3)), fixed.normal(size=(1, 3)), fixed.normal(size=(1, 2))), {}),
    ]
    return [
        Case(name, args, kwargs, scale=args[2], corner=True,
             hint="batch dims: transpose only the last two axes" if "batch" in name else None)
        for name, args, kwargs in cases
    ]
