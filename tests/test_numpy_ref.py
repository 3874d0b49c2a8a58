"""The float64 oracle: every form agrees with the definition, at any magnitude, for any sign of V.

Accuracy is ``scaled_error = max|y - y_ref| / max|v|``; the bound for every form is 1e-10 (float64 carries
about 1e-16 relative precision; differences of |q + k| up to 2e3 cost at most a few hundred ulps of that).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from logattn_ref import numpy_ref as ref

TOL = 1e-10


@st.composite
def attention_inputs(draw, max_n=40, signed=True):
    """Random q, k, v: batch/head dims, any length (odd lengths, n = 1), magnitudes up to 1e3."""
    seed = draw(st.integers(0, 2**32 - 1))
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    n = draw(st.integers(1, max_n))
    d_k = draw(st.integers(1, 9))
    d_v = draw(st.integers(1, 7))
    magnitude = draw(st.sampled_from([0.1, 1.0, 10.0, 100.0, 1000.0]))
    rng = np.random.default_rng(seed)
    q = rng.normal(size=batch + (n, d_k)) * magnitude
    k = rng.normal(size=batch + (n, d_k)) * magnitude
    v = rng.normal(size=batch + (n, d_v))
    if not signed:
        v = np.abs(v) + 1e-3
    return q, k, v


@given(attention_inputs(), st.booleans())
def test_any_sign_form_matches_definition(inputs, causal):
    q, k, v = inputs
    expected = ref.log_attention_quadratic(q, k, v, causal=causal)
    assert np.isfinite(expected).all()
    assert ref.scaled_error(ref.log_attention(q, k, v, causal=causal), expected, v) <= TOL


@given(attention_inputs(signed=False), st.booleans())
def test_paper_logspace_form_matches_definition(inputs, causal):
    q, k, v = inputs
    log_y = ref.log_attention_logspace(q, k, np.log(v), causal=causal)
    expected = ref.log_attention_quadratic(q, k, v, causal=causal)
    assert ref.scaled_error(np.exp(log_y), expected, v) <= TOL


@given(attention_inputs(max_n=25), st.integers(1, 9))
def test_token_by_token_and_chunks_equal_causal(inputs, chunk_size):
    q, k, v = inputs
    expected = ref.log_attention_quadratic(q, k, v, causal=True)
    state = ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1])
    outputs = []
    for t in range(q.shape[-2]):
        y_t, state = ref.step(state, q[..., t, :], k[..., t, :], v[..., t, :])
        outputs.append(y_t)
    assert ref.scaled_error(np.stack(outputs, axis=-2), expected, v) <= TOL
    assert state.count == q.shape[-2]

    # Two prefill calls of uneven length continue from each other.
    split = q.shape[-2] // 3
    state = ref.initial_state(q.shape[:-2], q.shape[-1], v.shape[-1])
    y_head, state = ref.prefill(state, q[..., :split, :], k[..., :split, :], v[..., :split, :], chunk_size)
    y_tail, state = ref.prefill(state, q[..., split:, :], k[..., split:, :], v[..., split:, :], chunk_size)
    assert ref.scaled_error(np.concatenate([y_head, y_tail], axis=-2), expected, v) <= TOL


@given(attention_inputs(max_n=20), st.floats(-500, 500), st.booleans())
def test_invariant_to_a_constant_added_to_all_keys(inputs, shift, causal):
    q, k, v = inputs
    base = ref.log_attention(q, k, v, causal=causal)
    assert ref.scaled_error(ref.log_attention(q, k + shift, v, causal=causal), base, v) <= TOL


@given(attention_inputs(max_n=20), st.floats(-500, 500), st.booleans())
def test_invariant_to_a_constant_added_to_one_query_row(inputs, shift, causal):
    q, k, v = inputs
    row = q.shape[-2] // 2
    shifted = q.copy()
    shifted[..., row, :] += shift
    base = ref.log_attention_quadratic(q, k, v, causal=causal)
    assert ref.scaled_error(ref.log_attention_quadratic(shifted, k, v, causal=causal), base, v) <= TOL
    assert ref.scaled_error(ref.log_attention(shifted, k, v, causal=causal), base, v) <= TOL


def test_is_linear_attention_with_exp_feature_map():
    """w_ij = exp(q_i).exp(k_j) / sum_j' exp(q_i).exp(k_j'): the definition with small inputs, no stabiliser."""
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(11, 4)), rng.normal(size=(11, 4)), rng.normal(size=(11, 3))
    kernel = np.exp(q) @ np.exp(k).T
    kernel = np.tril(kernel)
    expected = (kernel / kernel.sum(-1, keepdims=True)) @ v
    assert ref.scaled_error(ref.log_attention_quadratic(q, k, v), expected, v) <= 1e-13


def test_broadcasts_leading_dims():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(2, 1, 9, 4))
    k = rng.normal(size=(1, 3, 9, 4))
    v = rng.normal(size=(9, 5))[None, None]
    y = ref.log_attention(q, k, v)
    assert y.shape == (2, 3, 9, 5)
    expected = ref.log_attention_quadratic(np.broadcast_to(q, (2, 3, 9, 4)), np.broadcast_to(k, (2, 3, 9, 4)), v)
    assert ref.scaled_error(y, expected, v) <= TOL


def test_extreme_magnitudes_do_not_overflow():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(33, 8)) * 1e3
    k = rng.normal(size=(33, 8)) * 1e3
    v = rng.normal(size=(33, 6))
    with np.errstate(over="ignore", invalid="ignore"):  # show that the naive formula fails here
        naive = np.tril(np.exp(q) @ np.exp(k).T)
        naive = (naive / naive.sum(-1, keepdims=True)) @ v
    assert not np.isfinite(naive).all()
    for causal in (True, False):
        y = ref.log_attention(q, k, v, causal=causal)
        assert np.isfinite(y).all()
        assert ref.scaled_error(y, ref.log_attention_quadratic(q, k, v, causal=causal), v) <= TOL


def test_later_huge_key_inside_a_chunk_does_not_poison_earlier_rows():
    """A key 1e3 larger later in the same chunk must not enter an earlier row's stabiliser (0/0)."""
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(16, 4)), rng.normal(size=(16, 4)), rng.normal(size=(16, 3))
    k[10] += 1e3
    y = ref.log_attention(q, k, v, chunk_size=16)
    assert np.isfinite(y).all()
    assert ref.scaled_error(y, ref.log_attention_quadratic(q, k, v), v) <= TOL


def test_softmax_attention_matches_direct_formula():
    rng = np.random.default_rng(5)
    q, k, v = rng.normal(size=(7, 4)), rng.normal(size=(7, 4)), rng.normal(size=(7, 3))
    scores = q @ k.T / 2.0
    scores[np.triu_indices(7, 1)] = -np.inf
    weights = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    assert np.allclose(ref.softmax_attention(q, k, v), weights @ v, rtol=1e-13, atol=1e-13)
    assert np.allclose(ref.softmax_attention(q, k, v, scale=0.5), weights @ v, rtol=1e-13, atol=1e-13)


def test_logsumexp_and_softmax_edge_cases():
    x = np.array([[1000.0, 1000.0], [-np.inf, -np.inf], [-np.inf, 0.0]])
    out = ref.logsumexp(x, axis=-1)
    assert out[0] == pytest.approx(1000.0 + np.log(2.0))
    assert out[1] == -np.inf
    assert out[2] == 0.0
    assert np.allclose(ref.softmax(x[[0, 2]]), [[0.5, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="entirely -inf"):
        ref.softmax(x)


def test_logspace_zero_values_give_minus_inf():
    """log_v = -inf means v = 0; a column that is 0 at every visible key has log y = -inf (y = 0)."""
    rng = np.random.default_rng(6)
    q, k = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    log_v = rng.normal(size=(5, 2))
    log_v[:3, 0] = -np.inf
    log_y = ref.log_attention_logspace(q, k, log_v)
    assert np.isneginf(log_y[:3, 0]).all()
    assert np.isfinite(log_y[3:, 0]).all() and np.isfinite(log_y[:, 1]).all()
    v = np.exp(log_v)
    assert ref.scaled_error(np.exp(log_y), ref.log_attention_quadratic(q, k, v), v) <= TOL


@pytest.mark.parametrize(
    "fn", [ref.log_attention, ref.log_attention_quadratic, ref.softmax_attention], ids=lambda f: f.__name__
)
def test_empty_and_single_token(fn):
    rng = np.random.default_rng(7)
    empty = fn(np.zeros((2, 0, 4)), np.zeros((2, 0, 4)), np.zeros((2, 0, 3)))
    assert empty.shape == (2, 0, 3)
    q, k, v = rng.normal(size=(1, 4)), rng.normal(size=(1, 4)), rng.normal(size=(1, 3))
    assert np.allclose(fn(q, k, v), v)  # one key: all the weight on it


def test_state_size_is_constant():
    rng = np.random.default_rng(8)
    state = ref.initial_state((2,), 4, 3)
    size = state.nbytes()
    for _ in range(50):
        _, state = ref.step(state, rng.normal(size=(2, 4)), rng.normal(size=(2, 4)), rng.normal(size=(2, 3)))
    assert state.nbytes() == size and state.count == 50


def test_empty_state_is_an_empty_sum():
    state = ref.initial_state((), 3, 2)
    assert np.all(state.sum_kv == 0) and np.all(state.sum_k == 0) and np.all(np.isneginf(state.key_max))


# ---------------------------------------------------------------------------------------------------
# Bad input: clear errors that name the argument and what it got
# ---------------------------------------------------------------------------------------------------

GOOD = dict(q=np.zeros((2, 5, 4)), k=np.zeros((2, 5, 4)), v=np.zeros((2, 5, 3)))


def _with(**changes):
    args = dict(GOOD)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "args, error, pattern",
    [
        (_with(k=np.zeros((2, 5, 6))), ValueError, r"q and k must have the same feature size.*\(2, 5, 6\)"),
        (_with(v=np.zeros((2, 4, 3))), ValueError, r"k and v must have the same number of tokens.*\(2, 4, 3\)"),
        (_with(q=np.zeros(4)), ValueError, r"q must have at least 2 dimensions, got shape \(4,\)"),
        (_with(k=np.zeros((3, 5, 4))), ValueError, r"do not broadcast.*k.shape=\(3, 5, 4\)"),
        (_with(q=np.zeros((2, 6, 4))), ValueError, r"causal attention needs as many queries as keys"),
        (_with(q=np.zeros((2, 5, 4), dtype=np.int64)), TypeError, r"q must be a real floating-point.*int64"),
        (_with(v=np.zeros((2, 5, 3), dtype=bool)), TypeError, r"v must be a real floating-point.*bool"),
        (_with(q=np.full((2, 5, 4), np.nan)), ValueError, r"q contains NaN"),
        (_with(k=np.full((2, 5, 4), np.inf)), ValueError, r"k contains \+inf"),
        (_with(v=np.full((2, 5, 3), -np.inf)), ValueError, r"v contains -inf"),
    ],
)
@pytest.mark.parametrize(
    "fn", [ref.log_attention, ref.log_attention_quadratic, ref.softmax_attention], ids=lambda f: f.__name__
)
def test_bad_input_raises_clear_errors(fn, args, error, pattern):
    with pytest.raises(error, match=pattern):
        fn(args["q"], args["k"], args["v"], causal=True)


def test_logspace_accepts_minus_inf_but_not_nan():
    q, k = np.zeros((3, 2)), np.zeros((3, 2))
    assert np.isneginf(ref.log_attention_logspace(q, k, np.full((3, 1), -np.inf))).all()
    with pytest.raises(ValueError, match="log_v contains NaN"):
        ref.log_attention_logspace(q, k, np.full((3, 1), np.nan))
    with pytest.raises(ValueError, match=r"log_v contains \+inf"):
        ref.log_attention_logspace(q, k, np.full((3, 1), np.inf))


def test_state_errors():
    state = ref.initial_state((2,), 4, 3)
    with pytest.raises(ValueError, match="d_k=4, d_v=3"):
        ref.step(state, np.zeros((2, 5)), np.zeros((2, 5)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="state must be a LogAttentionState"):
        ref.step({"sum_kv": 0}, np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="d_k must be a positive integer, got 0"):
        ref.initial_state((), 0, 3)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ref.prefill(state, np.zeros((2, 1, 4)), np.zeros((2, 1, 4)), np.zeros((2, 1, 3)), chunk_size=0)


@pytest.mark.parametrize(
    "fn", [ref.log_attention, ref.log_attention_quadratic, ref.softmax_attention, ref.log_attention_logspace],
    ids=lambda f: f.__name__,
)
def test_queries_with_no_keys_raise_instead_of_returning_zeros(fn):
    """Non-causal attention with n_k = 0 and n_q > 0: each query's softmax is over an empty set (0/0)."""
    q, k, v = np.ones((2, 3, 4)), np.zeros((2, 0, 4)), np.zeros((2, 0, 5))
    with pytest.raises(ValueError, match=r"at least one key.*n_k = 0.*n_q = 3"):
        fn(q, k, v, causal=False)
    assert fn(q[:, :0], k, v, causal=False).shape == (2, 0, 5)  # no queries, no keys: an empty answer is right
