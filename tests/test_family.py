"""logattn_ref.family: every member's chunked form and recurrent step against its float64 quadratic definition.

Tolerances: float64 forms agree with the NumPy definition to 1e-10 (absolute, values of order 1); float32 to
1e-4 relative to the largest |v|. Inputs are fresh random draws per case: odd lengths, n = 1, batch and head dims,
chunk sizes that do not divide n.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from logattn_ref import family, recurrent

SHAPES = [((), 1), ((2,), 7), ((2, 3), 13), ((1, 2), 37)]  # (batch dims, n)
CHUNKS = [1, 4, 16]
TOL64 = 1e-10


def _draw(batch, n, d_k=4, d_v=5, dtype=torch.float64, seed=None, scale=1.0):
    g = torch.Generator().manual_seed(np.random.SeedSequence().entropy % 2**63 if seed is None else seed)
    return [scale * torch.randn(batch + (n, d), generator=g, dtype=dtype) for d in (d_k, d_k, d_v)]


def _gate(batch, n, width, kind):
    if kind is None:
        return None
    shape = batch + (n,) if kind == "head" else batch + (n, width)
    return -torch.rand(shape, dtype=torch.float64) * 2.0  # g in (e^-2, 1]


def _steps(step, state, q, k, v, *per_token):
    outputs = []
    for t in range(q.shape[-2]):
        extra = [None if x is None else x[..., t] if x.dim() == q.dim() - 1 else x[..., t, :] for x in per_token]
        y, state = step(state, q[..., t, :], k[..., t, :], v[..., t, :], *extra)
        outputs.append(y)
    return torch.stack(outputs, dim=-2), state


@pytest.mark.parametrize("feature", family.FEATURE_MAPS)
@pytest.mark.parametrize("gate", [None, "head", "channel"])
@pytest.mark.parametrize("batch, n", SHAPES)
def test_linear_attention_chunked_and_step_match_the_definition(feature, gate, batch, n):
    q, k, v = _draw(batch, n)
    projection = family.random_projection(4, 6, seed=3)
    width = family.feature_dim(feature, 4, 6)
    log_gate = _gate(batch, n, width, gate)
    # Taylor features have signs: a per-channel decay can make the normaliser small (it is >= 1/2 only without
    # one), which amplifies rounding; the looser bound is for that case alone.
    tol = 1e-8 if (feature, gate) == ("taylor", "channel") else TOL64
    expected = family.linear_attention_quadratic(q.numpy(), k.numpy(), v.numpy(), feature,
                                                 None if log_gate is None else log_gate.numpy(), projection=projection)
    for chunk in CHUNKS:
        y, _ = family.linear_chunked(q, k, v, feature, log_gate, projection=projection, chunk_size=chunk)
        assert np.abs(y.numpy() - expected).max() < tol, f"{feature}, chunk {chunk}"
    state = family.linear_initial_state(batch, 4, 5, feature, 6, dtype=torch.float64)
    stepped, _ = _steps(lambda s, a, b, c, g: family.linear_step(s, a, b, c, feature, g, projection=projection),
                        state, q, k, v, log_gate)
    assert np.abs(stepped.numpy() - expected).max() < tol


def test_feature_dims_and_kernels():
    """The state size of each map, and what phi(q) . phi(k) computes."""
    d = 6
    assert [family.feature_dim(f, d, 11) for f in family.FEATURE_MAPS] == [6, 6, 11, 1 + 6 + 21]
    q, k = np.random.default_rng().normal(size=(2, d)) * 0.5
    taylor = family.feature_map(q, "taylor") @ family.feature_map(k, "taylor")
    assert abs(taylor - (1 + q @ k + (q @ k) ** 2 / 2)) < 1e-12
    assert abs(family.feature_map(q, "exp") @ family.feature_map(k, "exp") - np.exp(q).dot(np.exp(k))) < 1e-9
    w = family.random_projection(d, 200_000, seed=0).numpy()  # unbiased estimate of exp(q . k): close with many
    estimate = family.feature_map(q, "random", w) @ family.feature_map(k, "random", w)
    assert abs(estimate / np.exp(q @ k) - 1) < 0.05
    assert torch.equal(family.random_projection(d, 8, seed=1), family.random_projection(d, 8, seed=1))
    assert (family.feature_map(np.linspace(-30, 30, 13), "elu+1") > 0).all()


@pytest.mark.parametrize("feature", ["elu+1", "taylor", "exp"])
def test_gate_one_is_the_ungated_member(feature):
    q, k, v = _draw((2,), 11)
    ones = torch.zeros(2, 11, dtype=torch.float64)  # log g = 0: g = 1
    y_gated, _ = family.linear_chunked(q, k, v, feature, ones, chunk_size=4)
    y_plain, _ = family.linear_chunked(q, k, v, feature, chunk_size=4)
    assert (y_gated - y_plain).abs().max() < TOL64


@pytest.mark.parametrize("gate", [None, "head", "channel"])
@pytest.mark.parametrize("batch, n", SHAPES)
def test_log_decay_in_log_space_matches_the_definition(gate, batch, n):
    q, k, log_v = _draw(batch, n)
    log_gate = _gate(batch, n, 4, gate)
    expected = family.log_decay_attention_quadratic(q.numpy(), k.numpy(), log_v.numpy(),
                                                    None if log_gate is None else log_gate.numpy())
    for chunk in CHUNKS:
        log_y, _ = family.log_decay_chunked(q, k, log_v, log_gate, chunk_size=chunk)
        assert np.abs(log_y.numpy() - expected).max() < TOL64
    stepped, _ = _steps(family.log_decay_step, None, q, k, log_v, log_gate)
    assert np.abs(stepped.numpy() - expected).max() < TOL64
    # the linear-space gated exp member computes the same Y from V = exp(log V)
    y, _ = family.exp_decay_chunked(q, k, log_v.exp(), log_gate, chunk_size=4)
    assert np.abs(np.log(y.numpy()) - expected).max() < 1e-9


@pytest.mark.parametrize("scale", [30.0, 300.0])
def test_exp_member_with_a_gate_is_stable_at_extreme_magnitudes(scale):
    """|q|, |k| of hundreds: exp overflows float64 beyond ~709, yet the stabilised and log-space forms are exact
    (float32 to 1e-4 of max|v|), the gate included."""
    q, k, v = _draw((2,), 19, scale=scale)
    log_gate = _gate((2,), 19, 4, "channel")
    expected = family.linear_attention_quadratic(q.numpy(), k.numpy(), v.numpy(), "exp", log_gate.numpy())
    assert np.isfinite(expected).all()
    y32, _ = family.exp_decay_chunked(q.float(), k.float(), v.float(), log_gate.float(), chunk_size=8)
    assert np.abs(y32.double().numpy() - expected).max() < 1e-4 * np.abs(v.numpy()).max()
    stepped, _ = _steps(family.exp_decay_step, recurrent.initial_state((2,), 4, 5, dtype=torch.float64), q, k, v,
                        log_gate)
    assert np.abs(stepped.numpy() - expected).max() < 1e-8
    log_y, _ = family.log_decay_chunked(q, k, v.abs().log(), log_gate, chunk_size=8)
    expected_log = family.log_decay_attention_quadratic(q.numpy(), k.numpy(), np.log(np.abs(v.numpy())),
                                                        log_gate.numpy())
    assert np.isfinite(log_y.numpy()).all() and np.abs(log_y.numpy() - expected_log).max() < 1e-8


@pytest.mark.parametrize("batch, n", SHAPES)
def test_delta_rule_chunked_and_step_match_the_definition(batch, n):
    q, k, v = _draw(batch, n)
    beta = torch.rand(batch + (n,), dtype=torch.float64)
    expected = family.delta_rule_quadratic(q.numpy(), k.numpy(), v.numpy(), beta.numpy())
    final = None
    for chunk in CHUNKS:
        y, state = family.delta_chunked(q, k, v, beta, chunk_size=chunk)
        assert np.abs(y.numpy() - expected).max() < TOL64, f"chunk {chunk}"
        final = state if final is None else final
        assert (state - final).abs().max() < TOL64
    stepped, state = _steps(family.delta_step, family.delta_initial_state(batch, 4, 5, dtype=torch.float64),
                            q, k, v, beta)
    assert np.abs(stepped.numpy() - expected).max() < TOL64 and (state - final).abs().max() < TOL64


def test_delta_rule_beta_zero_keeps_and_beta_one_recalls():
    d = 6
    memory = torch.randn(3, d, 4, dtype=torch.float64)
    q, k, v = _draw((3,), 5, d_k=d, d_v=4)
    _, kept = family.delta_chunked(q, k, v, torch.zeros(3, 5, dtype=torch.float64), state=memory)
    assert torch.equal(kept, memory)
    keys = torch.linalg.qr(torch.randn(3, d, d, dtype=torch.float64)).Q.transpose(-1, -2)  # orthonormal rows
    values = torch.randn(3, d, 4, dtype=torch.float64)
    _, stored = family.delta_chunked(keys, keys, values, torch.ones(3, d, dtype=torch.float64), state=memory,
                                     chunk_size=4)
    recalled = keys @ stored  # state^T k for every stored key
    assert (recalled - values).abs().max() < 1e-12  # each key now returns exactly its value, the old memory overwritten


@settings(deadline=None, max_examples=15)
@given(n=st.integers(1, 40), chunk=st.sampled_from([1, 2, 8, 32]), split=st.integers(0, 40))
def test_chunked_forms_continue_from_a_state(n, chunk, split):
    """Two calls, the second from the first's state, equal one call: the state is all that carries over."""
    split = min(split, n)
    q, k, v = _draw((2,), n)
    log_gate, beta = _gate((2,), n, 4, "head"), torch.rand(2, n, dtype=torch.float64)
    cases = [
        (lambda a, b, c, g, s: family.linear_chunked(a, b, c, "elu+1", g, state=s, chunk_size=chunk), log_gate),
        (lambda a, b, c, g, s: family.exp_decay_chunked(a, b, c, g, state=s, chunk_size=chunk), log_gate),
        (lambda a, b, c, g, s: family.delta_chunked(a, b, c, g, state=s, chunk_size=chunk), beta),
    ]
    for run, extra in cases:
        whole, _ = run(q, k, v, extra, None)
        first, state = run(q[:, :split], k[:, :split], v[:, :split], extra[:, :split], None)
        second, _ = run(q[:, split:], k[:, split:], v[:, split:], extra[:, split:], state)
        assert (torch.cat([first, second], dim=1) - whole).abs().max() < TOL64


def test_errors_name_the_argument():
    q, k, v = _draw((2,), 5)
    with pytest.raises(ValueError, match="feature must be one of"):
        family.linear_chunked(q, k, v, "relu")
    with pytest.raises(ValueError, match="needs projection"):
        family.linear_chunked(q, k, v, "random")
    with pytest.raises(ValueError, match="log_gate must have shape"):
        family.linear_chunked(q, k, v, "elu+1", torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="log_gate must be finite and <= 0"):
        family.exp_decay_chunked(q, k, v, torch.ones(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta must lie in"):
        family.delta_chunked(q, k, v, torch.full((2, 5), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta must have shape"):
        family.delta_chunked(q, k, v, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="chunk_size"):
        family.delta_chunked(q, k, v, torch.zeros(2, 5, dtype=torch.float64), chunk_size=3)
    with pytest.raises(TypeError, match="state must be a LinearState"):
        family.linear_step(torch.zeros(2, 4, 5), q[:, 0], k[:, 0], v[:, 0])
    with pytest.raises(ValueError, match="q and k must have one shape"):
        family.linear_chunked(q, k[:, :4], v)
    with pytest.raises(ValueError, match="normalised only"):
        family.linear_attention_quadratic(q.numpy(), k.numpy(), v.numpy(), "exp", normalize=False)


def test_gradients_flow_through_the_chunked_forms():
    q, k, v = (x.requires_grad_() for x in _draw((2,), 9))
    gate = _gate((2,), 9, 4, "head").requires_grad_()
    beta = torch.rand(2, 9, dtype=torch.float64, requires_grad=True)
    loss = (family.linear_chunked(q, k, v, "elu+1", gate, chunk_size=4)[0].sum()
            + family.exp_decay_chunked(q, k, v, gate, chunk_size=4)[0].sum()
            + family.delta_chunked(q, k, v, beta, chunk_size=4)[0].sum())
    loss.backward()
    for x in (q, k, v, gate, beta):
        assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", ["head", "channel"])
def test_gated_exp_chunks_run_at_once_and_match_the_steps(kind):
    """exp_decay_chunked runs every chunk in one chunked call whose two-level state scan carries the chunks'
    decays (38 chunks: 6 groups of 7 with padding). From a carried-in state, with gates down to e^-6 a token and
    |q|, |k| up to ~60, it equals the token-by-token step in float64: outputs and final state; float32 within
    1e-4 of max|v|."""
    gen = torch.Generator().manual_seed(7)
    n, d_k, d_v = 301, 6, 5
    q0, k0, v0 = (torch.randn(2, 9, d, generator=gen, dtype=torch.float64) for d in (d_k, d_k, d_v))
    _, state = family.exp_decay_chunked(q0, k0, v0, None)
    q, k, v = (torch.randn(2, n, d, generator=gen, dtype=torch.float64) * s for d, s in ((d_k, 20), (d_k, 20), (d_v, 1)))
    gate = -6.0 * torch.rand((2, n) if kind == "head" else (2, n, d_k), generator=gen, dtype=torch.float64) ** 3
    y, final = family.exp_decay_chunked(q, k, v, gate, state=state, chunk_size=8)
    y_ref, final_ref = _steps(family.exp_decay_step, state, q, k, v, gate)
    assert (y - y_ref).abs().max() < 1e-9
    linear = lambda st: (st.sum_kv * st.key_max.exp()[..., None], st.sum_k * st.key_max.exp())  # noqa: E731
    for a, b in zip(linear(final), linear(final_ref)):  # the same linear-space state exp(H)
        assert ((a - b).abs() / b.abs()).max() < 1e-9
    y32, _ = family.exp_decay_chunked(*(x.float() for x in (q, k, v, gate)), state=state, chunk_size=8)
    assert (y32.double() - y_ref).abs().max() < 1e-4 * v.abs().max()


@pytest.mark.parametrize("kind", ["head", "channel"])
def test_gated_exp_chunks_give_the_definitions_gradients(kind):
    """The chunks' decays are real factors of the scan (they carry the gate's gradient), not stabilisers:
    the gradients of q, k, v and the gate equal those of a differentiable float64 definition,
    y_i = softmax_j(LSE_f(q_if + G_if + k_jf - G_jf)) v over j <= i, G the cumulative log-gate."""
    gen = torch.Generator().manual_seed(8)
    n, d_k, d_v = 150, 6, 5
    q, k, v = (torch.randn(2, n, d, generator=gen, dtype=torch.float64) * s for d, s in ((d_k, 5), (d_k, 5), (d_v, 1)))
    gate = -3.0 * torch.rand((2, n) if kind == "head" else (2, n, d_k), generator=gen, dtype=torch.float64) ** 3
    dy = torch.randn(2, n, d_v, generator=gen, dtype=torch.float64)

    def definition(q, k, v, gate):
        G = torch.cumsum(gate if kind == "channel" else gate[..., None], dim=1)  # [2, n, d_k or 1]
        s = torch.logsumexp((q + G)[:, :, None, :] + (k - G)[:, None, :, :], dim=-1)  # [2, n, n]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        return torch.softmax(s, dim=-1) @ v

    got = [x.clone().requires_grad_() for x in (q, k, v, gate)]
    want = [x.clone().requires_grad_() for x in (q, k, v, gate)]
    y = family.exp_decay_chunked(*got, chunk_size=8)[0]
    y_def = definition(*want)
    assert (y - y_def).abs().max() < 1e-10
    for name, a, b in zip(("q", "k", "v", "gate"), torch.autograd.grad(y, got, dy), torch.autograd.grad(y_def, want, dy)):
        assert (a - b).abs().max() <= 1e-9 * max(1.0, b.abs().max().item()), name
