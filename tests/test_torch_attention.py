"""The PyTorch implementations against the float64 NumPy oracle.

Error measure: numpy_ref.scaled_error = max|y - y_ref| / max|v|. Tolerances: 1e-5 in float32 for |q|, |k| <= 10;
2e-2 in bfloat16/float16 against the oracle fed the same rounded inputs; for |q|, |k| up to 1e3 the error stays
within 5 x (1e-7 * max|q + k|), the size of the inputs' own float32 rounding carried through exp.
"""

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from logattn_ref import numpy_ref as ref
from logattn_ref import recurrent as rec
from logattn_ref import torch_attention as ta

CPU_METHODS = ("chunked", "logcumsumexp")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs(rng, batch, n, d_k, d_v, scale=3.0):
    q = rng.uniform(-scale, scale, size=batch + (n, d_k))
    k = rng.uniform(-scale, scale, size=batch + (n, d_k))
    v = rng.normal(size=batch + (n, d_v))
    return q, k, v


def _t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.sampled_from([(), (1,), (2,), (2, 3)]),
    n=st.integers(1, 70),
    d_k=st.integers(1, 9),
    d_v=st.integers(1, 6),
    scale=st.sampled_from([0.1, 3.0, 10.0]),
    chunk_size=st.sampled_from([1, 4, 16, 64]),
    method=st.sampled_from(CPU_METHODS),
)
def test_matches_oracle_fp32(seed, batch, n, d_k, d_v, scale, chunk_size, method):
    rng = np.random.default_rng(seed)
    q, k, v = _inputs(rng, batch, n, d_k, d_v, scale)
    for causal in (True, False):
        y = ta.log_attention(_t(q), _t(k), _t(v), causal=causal, method=method, chunk_size=chunk_size)
        assert y.dtype == torch.float32 and y.shape == batch + (n, d_v)
        err = ref.scaled_error(y.numpy(), ref.log_attention(q, k, v, causal=causal), v)
        assert err <= 1e-5, (method, causal, err)


def test_broadcast_leading_dims_and_cross_attention():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 1, 7, 4))
    k = rng.normal(size=(1, 3, 7, 4))
    v = rng.normal(size=(2, 3, 7, 5))
    for method in CPU_METHODS:
        y = ta.log_attention(_t(q), _t(k), _t(v), method=method)
        assert ref.scaled_error(y.numpy(), ref.log_attention(q, k, v), v) <= 1e-5
    kx, vx = rng.normal(size=(2, 3, 11, 4)), rng.normal(size=(2, 3, 11, 5))  # n_q != n_k, non-causal
    for method in CPU_METHODS:
        y = ta.log_attention(_t(q), _t(kx), _t(vx), causal=False, method=method)
        assert ref.scaled_error(y.numpy(), ref.log_attention(q, kx, vx, causal=False), vx) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", CPU_METHODS)
def test_low_precision_inputs(dtype, method):
    rng = np.random.default_rng(2)
    q, k, v = _inputs(rng, (2,), 37, 8, 6, 4.0)
    qt, kt, vt = _t(q, dtype), _t(k, dtype), _t(v, dtype)
    y = ta.log_attention(qt, kt, vt, method=method)
    assert y.dtype == dtype
    rounded = [x.double().numpy() for x in (qt, kt, vt)]  # the oracle sees the same rounded inputs
    assert ref.scaled_error(y.double().numpy(), ref.log_attention(*rounded), rounded[2]) <= 2e-2


@pytest.mark.parametrize("method", CPU_METHODS)
def test_extreme_magnitudes_stay_finite_and_accurate(method):
    rng = np.random.default_rng(3)
    q, k, v = _inputs(rng, (2,), 45, 6, 4, 1e3)
    y = ta.log_attention(_t(q), _t(k), _t(v), method=method, chunk_size=16)
    assert torch.isfinite(y).all()
    qr, kr = (_t(x).double().numpy() for x in (q, k))  # float32-rounded inputs, as the function sees them
    implied = 1e-7 * np.max(np.abs(qr[..., :, None, :] + kr[..., None, :, :]))
    assert ref.scaled_error(y.numpy(), ref.log_attention(qr, kr, v), v) <= 5 * implied


def test_later_key_in_the_same_chunk_larger_by_1e3():
    """A chunk-wide key max lying in a row's future would give 0/0 for that row; per-position r must not."""
    rng = np.random.default_rng(4)
    q, k, v = _inputs(rng, (), 32, 4, 3, 1.0)
    k[20, :] += 1e3  # every feature: rows 0..19 see none of it
    k[27, 1] += 1e3
    q[3, 2] += 1e3  # a huge query before the huge keys
    qr, kr = (_t(x).double().numpy() for x in (q, k))  # the float32-rounded inputs the function sees
    implied = 1e-7 * np.max(np.abs(qr[..., :, None, :] + kr[..., None, :, :]))
    expected = ref.log_attention(qr, kr, v)
    for method in CPU_METHODS:
        y = ta.log_attention(_t(q), _t(k), _t(v), method=method, chunk_size=32)
        assert torch.isfinite(y).all()
        assert ref.scaled_error(y.numpy(), expected, v) <= 5 * implied, method


def test_gradcheck_float64_chunked():
    rng = np.random.default_rng(5)
    q, k, v = (_t(x, torch.float64).requires_grad_() for x in _inputs(rng, (2,), 11, 3, 2, 2.0))
    assert torch.autograd.gradcheck(lambda a, b, c: ta.log_attention(a, b, c, chunk_size=4), (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: ta.log_attention(a, b, c, causal=False), (q, k, v))


def _quadratic_torch(q, k, v):
    """eq. 1 literally in torch float64: the gradient reference."""
    sim = torch.logsumexp(q[..., :, None, :] + k[..., None, :, :], dim=-1)
    n = q.shape[-2]
    sim = sim.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(sim, dim=-1) @ v


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_fp32_gradients_match_float64_autograd(scale):
    rng = np.random.default_rng(6)
    q, k, v = _inputs(rng, (2,), 23, 5, 4, scale)
    w = rng.normal(size=(2, 23, 4))
    grads = {}
    for dtype, fn in ((torch.float64, _quadratic_torch), (torch.float32, lambda a, b, c: ta.log_attention(a, b, c, chunk_size=8))):
        xs = [_t(x, dtype).requires_grad_() for x in (q, k, v)]
        (fn(*xs) * _t(w, dtype)).sum().backward()
        grads[dtype] = [x.grad.double() for x in xs]
    for name, g32, g64 in zip("qkv", grads[torch.float32], grads[torch.float64]):
        assert torch.isfinite(g32).all()
        err = (g32 - g64).abs().max() / g64.abs().max().clamp_min(1e-30)
        assert err <= 1e-4, (name, err.item())


@pytest.mark.parametrize("n, chunk_size", [(300, 64), (71, 8), (45, 4)])
def test_gradients_stay_finite_with_a_huge_key_and_padded_chunk_groups(n, chunk_size):
    """A key 1e3 above the rest, with a chunk count that leaves the two-level state scan padded: the padded
    chunks' weights must not overflow (inf * 0 would turn their zero gradient into NaN)."""
    rng = np.random.default_rng(11)
    q, k, v = _inputs(rng, (2,), n, 4, 3, 1.0)
    k[:, n // 2] += 1e3
    w = rng.normal(size=(2, n, 3))
    grads = {}
    for method, fn in (("reference", _quadratic_torch),
                       ("chunked", lambda a, b, c: ta.log_attention(a, b, c, chunk_size=chunk_size))):
        xs = [_t(x, torch.float64).requires_grad_() for x in (q, k, v)]
        (fn(*xs) * _t(w, torch.float64)).sum().backward()
        grads[method] = [x.grad for x in xs]
    for name, got, want in zip("qkv", grads["chunked"], grads["reference"]):
        assert torch.isfinite(got).all(), name
        assert (got - want).abs().max() <= 1e-8 * want.abs().max().clamp_min(1.0), name


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), span=st.sampled_from([1.0, 45.0, 200.0]),
       method=st.sampled_from(CPU_METHODS + ("shifted", "auto")), causal=st.booleans())
def test_logspace_matches_oracle(seed, n, span, method, causal):
    rng = np.random.default_rng(seed)
    q, k, _ = _inputs(rng, (2,), n, 5, 3, 5.0)
    log_v = rng.uniform(-span, 1.0, size=(2, n, 3))  # log V spanning 200 nats: linear space would underflow
    log_v[0, 0, 0] = -np.inf  # v = 0 is allowed
    out = ta.log_attention_logspace(_t(q), _t(k), _t(log_v), causal=causal, method=method, chunk_size=8)
    expected = ref.log_attention_logspace(q, k, log_v, causal=causal)
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(out.numpy()), finite)
    # log Y is compared in absolute terms: an error of 1e-5 in log Y is a relative error of 1e-5 in Y.
    assert np.max(np.abs(out.numpy()[finite] - expected[finite]), initial=0.0) <= 1e-4 * max(1.0, span / 10)


def test_recurrent_forms_equal_the_full_causal_result():
    rng = np.random.default_rng(7)
    q, k, v = _inputs(rng, (2, 3), 29, 6, 4, 8.0)
    full = ref.log_attention(q, k, v)
    state = rec.initial_state((2, 3), 6, 4)
    outs = []
    for t in range(29):
        y_t, state = rec.step(state, _t(q[..., t, :]), _t(k[..., t, :]), _t(v[..., t, :]))
        outs.append(y_t)
    assert state.count == 29
    assert ref.scaled_error(torch.stack(outs, dim=-2).numpy(), full, v) <= 1e-5
    # Prefill in uneven blocks, continuing the state; the final states agree with the oracle's.
    state, ref_state, outs = rec.initial_state((2, 3), 6, 4), ref.initial_state((2, 3), 6, 4), []
    for start, stop in ((0, 1), (1, 12), (12, 13), (13, 29)):
        sl = slice(start, stop)
        y, state = rec.prefill(state, _t(q[..., sl, :]), _t(k[..., sl, :]), _t(v[..., sl, :]), chunk_size=4)
        _, ref_state = ref.prefill(ref_state, q[..., sl, :], k[..., sl, :], v[..., sl, :])
        outs.append(y)
    assert ref.scaled_error(torch.cat(outs, dim=-2).numpy(), full, v) <= 1e-5
    np.testing.assert_allclose(state.key_max.numpy(), ref_state.key_max, rtol=1e-6)
    np.testing.assert_allclose(state.sum_k.numpy(), ref_state.sum_k, rtol=1e-5)
    np.testing.assert_allclose(state.sum_kv.numpy(), ref_state.sum_kv, rtol=1e-4, atol=1e-5)
    # The streaming decoder, continuing a prefilled prompt, in place with a constant-size state.
    _, prompt_state = rec.prefill(rec.initial_state((2, 3), 6, 4), _t(q[..., :10, :]), _t(k[..., :10, :]), _t(v[..., :10, :]))
    decoder = rec.Decoder.from_state(prompt_state)
    size = decoder.nbytes()
    outs = [decoder.step(_t(q[..., t, :]), _t(k[..., t, :]), _t(v[..., t, :])) for t in range(10, 29)]
    assert decoder.nbytes() == size and decoder.count == 29
    assert ref.scaled_error(torch.stack(outs, dim=-2).numpy(), full[..., 10:, :], v) <= 1e-5


def test_softmax_attention_matches_oracle():
    rng = np.random.default_rng(8)
    q, k, v = _inputs(rng, (2,), 13, 4, 3)
    for causal in (True, False):
        y = ta.softmax_attention(_t(q), _t(k), _t(v), causal=causal, scale=0.7)
        assert ref.scaled_error(y.numpy(), ref.softmax_attention(q, k, v, causal=causal, scale=0.7), v) <= 1e-5


def test_argument_errors_name_the_argument():
    q = torch.randn(2, 5, 4)
    v = torch.randn(2, 5, 3)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        ta.log_attention(q.numpy(), q, v)
    with pytest.raises(TypeError, match="k must be float16.*int64"):
        ta.log_attention(q, q.long(), v)
    with pytest.raises(TypeError, match="share one dtype"):
        ta.log_attention(q, q.double(), v)
    with pytest.raises(ValueError, match="d_k"):
        ta.log_attention(q, torch.randn(2, 5, 3), v)
    with pytest.raises(ValueError, match="same number of tokens"):
        ta.log_attention(q, q, torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match="causal attention needs"):
        ta.log_attention(q, torch.randn(2, 6, 4), torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match="do not broadcast"):
        ta.log_attention(q, torch.randn(3, 5, 4), torch.randn(3, 5, 3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ta.log_attention(torch.randn(4), q, v)
    with pytest.raises(ValueError, match="NaN"):
        ta.log_attention(q, q, v.masked_fill(v > 0, float("nan")))
    with pytest.raises(ValueError, match=r"\+inf"):
        ta.log_attention(q.masked_fill(q > 0, float("inf")), q, v)
    with pytest.raises(ValueError, match="method must be one of"):
        ta.log_attention(q, q, v, method="fast")
    with pytest.raises(ValueError, match="power of two"):
        ta.log_attention(q, q, v, chunk_size=48)
    # Under the Triton interpreter (set by the kernel tests in the same process) "triton" does run on a CPU.
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="triton.*not available"):
            ta.log_attention(q, q, v, method="triton")
    state = rec.initial_state((2,), 4, 3)
    with pytest.raises(TypeError, match="LogAttentionState"):
        rec.prefill(ref.initial_state((2,), 4, 3), q, q, v)
    with pytest.raises(ValueError, match="state holds d_k=4, d_v=3"):
        rec.prefill(state, q, q, torch.randn(2, 5, 2))
    with pytest.raises(ValueError, match="d_v must be a positive integer"):
        rec.initial_state((2,), 4, 0)
    with pytest.raises(ValueError, match=r"v_t must have shape \(2, 3\)"):
        rec.Decoder((2,), 4, 3).step(q[:, 0], q[:, 0], torch.randn(3, 3))


def test_empty_sequences():
    q, v = torch.randn(2, 0, 4), torch.randn(2, 0, 3)
    assert ta.log_attention(q, q, v).shape == (2, 0, 3)
    y, state = rec.prefill(rec.initial_state((2,), 4, 3), q, q, v)
    assert y.shape == (2, 0, 3) and state.count == 0


@pytest.mark.parametrize("fn, method", [(ta.log_attention, m) for m in ("auto", "chunked", "logcumsumexp", "triton")]
                         + [(ta.log_attention_logspace, m) for m in ("auto", "chunked", "logcumsumexp", "shifted")]
                         + [(ta.softmax_attention, None)])
def test_queries_with_no_keys_raise_in_every_method(fn, method):
    """n_k = 0 with n_q > 0 (non-causal): a clear error like the oracle's, never zeros or -inf."""
    q, k, v = torch.ones(2, 3, 4), torch.zeros(2, 0, 4), torch.zeros(2, 0, 5)
    kwargs = {} if method is None else {"method": method}
    with pytest.raises(ValueError, match=r"at least one key.*n_k = 0.*n_q = 3"):
        fn(q, k, v, causal=False, **kwargs)


@pytest.mark.gpu
@cuda
def test_gpu_auto_matches_oracle_and_decoder_never_syncs():
    rng = np.random.default_rng(9)
    q, k, v = _inputs(rng, (2, 2), 257, 16, 16, 5.0)
    dev = "cuda"
    expected = ref.log_attention(q, k, v)
    for method in ("auto", "chunked", "logcumsumexp"):
        y = ta.log_attention(_t(q).to(dev), _t(k).to(dev), _t(v).to(dev), method=method)
        assert ref.scaled_error(y.cpu().numpy(), expected, v) <= 1e-5, method
    decoder = rec.Decoder((2, 2), 16, 16, device=dev)
    qs, ks, vs = (_t(x).to(dev) for x in (q, k, v))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation inside step() raises
    try:
        outs = [decoder.step(qs[..., t, :], ks[..., t, :], vs[..., t, :]) for t in range(20)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ref.scaled_error(torch.stack(outs, -2).cpu().numpy(), expected[..., :20, :], v) <= 1e-5


@pytest.mark.gpu
@cuda
def test_gpu_logspace_auto_matches_oracle_with_gradients():
    """The model's "log" arm on a GPU: "auto" = "shifted" through the fused kernels, fp32 and bf16."""
    rng = np.random.default_rng(11)
    q, k, _ = _inputs(rng, (2, 3), 301, 32, 32, 4.0)
    log_v = rng.uniform(-30.0, 3.0, size=(2, 3, 301, 32))
    expected = ref.log_attention_logspace(q, k, log_v)
    xs = [_t(x).cuda().requires_grad_() for x in (q, k, log_v)]
    out = ta.log_attention_logspace(*xs, method="auto")
    assert np.max(np.abs(out.detach().cpu().numpy() - expected)) <= 1e-4
    out.sum().backward()
    exact = [_t(x, torch.float64).requires_grad_() for x in (q, k, log_v)]
    ta.log_attention_logspace(*exact, method="chunked").sum().backward()
    for name, got, want in zip("qkv", xs, exact):
        scale = want.grad.abs().max().item()
        assert (got.grad.cpu().double() - want.grad).abs().max().item() <= 1e-3 * scale, name
    rounded = [_t(x).to(torch.bfloat16) for x in (q, k, log_v)]
    out16 = ta.log_attention_logspace(*(x.cuda() for x in rounded), method="auto")
    expected16 = ref.log_attention_logspace(*(x.double().numpy() for x in rounded))
    assert out16.dtype == torch.bfloat16
    # log Y is returned in bf16, whose spacing is 2^-7 |log Y|: compare relative to |log Y| (floor 1).
    got16 = out16.float().cpu().numpy()
    assert np.all(np.abs(got16 - expected16) <= 1e-2 * np.maximum(1.0, np.abs(expected16)))


@cuda
def test_gpu_cuda_graph_decoder():
    rng = np.random.default_rng(10)
    q, k, v = _inputs(rng, (3,), 40, 8, 8, 5.0)
    qs, ks, vs = (_t(x).cuda() for x in (q, k, v))
    decoder = rec.Decoder((3,), 8, 8, device="cuda")
    first = [decoder.step(qs[:, t], ks[:, t], vs[:, t]).clone() for t in range(5)]
    decoder.capture_cuda_graph()
    rest = [decoder.step(qs[:, t], ks[:, t], vs[:, t]).clone() for t in range(5, 30)]
    packed = torch.cat([qs, ks, vs], dim=-1)
    rest += [decoder.step_packed(packed[:, t]).clone() for t in range(30, 40)]
    assert decoder.count == 40
    y = torch.stack(first + rest, dim=1).cpu().numpy()
    assert ref.scaled_error(y, ref.log_attention(q, k, v), v) <= 1e-5


def test_decoder_step_packed_equals_step_and_checks_its_width():
    rng = np.random.default_rng(12)
    q, k, v = _inputs(rng, (2,), 9, 4, 3, 5.0)
    a, b = rec.Decoder((2,), 4, 3), rec.Decoder((2,), 4, 3)
    packed = torch.cat([_t(q), _t(k), _t(v)], dim=-1)
    for t in range(9):
        assert torch.equal(a.step(_t(q[:, t]), _t(k[:, t]), _t(v[:, t])), b.step_packed(packed[:, t]))
    assert b.count == 9
    with pytest.raises(ValueError, match=r"qkv_t must have shape \(2, 11\)"):
        b.step_packed(packed[:, 0, :10])


def test_many_chunks_with_growing_and_spiking_keys():
    """76 chunks: the two-level scan over chunk states (groups of 9, padded), with the running max rising
    steadily, jumping by 1e3 mid-sequence, and a non-empty incoming state."""
    rng = np.random.default_rng(11)
    q, k, v = _inputs(rng, (2,), 301, 5, 3, 2.0)
    k += np.linspace(0.0, 300.0, 301)[:, None]
    k[:, 150:, 2] += 1000.0
    qr, kr = (_t(x).double().numpy() for x in (q, k))
    expected = ref.log_attention(qr, kr, v)
    implied = 1e-7 * np.max(np.abs(qr[..., :, None, :] + kr[..., None, :, :]))
    y = ta.log_attention(_t(q), _t(k), _t(v), chunk_size=4)
    assert ref.scaled_error(y.numpy(), expected, v) <= max(1e-5, 5 * implied)
    _, state = rec.prefill(rec.initial_state((2,), 5, 3), _t(q[:, :7]), _t(k[:, :7]), _t(v[:, :7]))
    y_rest, final = rec.prefill(state, _t(q[:, 7:]), _t(k[:, 7:]), _t(v[:, 7:]), chunk_size=4)
    assert ref.scaled_error(y_rest.numpy(), expected[:, 7:], v) <= max(1e-5, 5 * implied)
    _, ref_state = ref.prefill(ref.initial_state((2,), 5, 3), qr, kr, v)
    np.testing.assert_allclose(final.key_max.numpy(), ref_state.key_max, rtol=1e-7)
    np.testing.assert_allclose(final.sum_k.numpy(), ref_state.sum_k, rtol=1e-4)


@pytest.mark.slow
def test_triton_dispatch_under_the_interpreter():
    """method="triton" reaches the kernels (run by Triton's CPU interpreter in a subprocess, where
    TRITON_INTERPRET=1 is set before triton is imported); "auto" never picks them for CPU tensors."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    from logattn_ref.triton_kernels import interpreter_runs

    if not interpreter_runs():
        pytest.skip("this triton's interpreter cannot run the kernels (triton >= 3.7 can)")
    script = (
        "import torch, numpy as np\n"
        "from logattn_ref import torch_attention as ta, numpy_ref as ref\n"
        "torch.manual_seed(0)\n"
        "q, k, v = torch.randn(1, 17, 4) * 3, torch.randn(1, 17, 4) * 3, torch.randn(1, 17, 3)\n"
        "assert 'triton' in ta.available_methods(q, v)\n"
        "y = ta.log_attention(q, k, v, method='triton')\n"
        "e = ref.scaled_error(y.numpy(), ref.log_attention(q.double().numpy(), k.double().numpy(), v.double().numpy()), v.numpy())\n"
        "assert e <= 1e-5, e\n"
        "print('ok', e)\n"
    )
    env = dict(__import__("os").environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
    q = torch.randn(2, 5, 4)
    assert ta._resolve_method("auto", q, q, causal=True) == "chunked"


def test_logspace_shifted_runs_in_linear_space_only_within_its_range(monkeypatch):
    """"shifted" uses exp(log V - M) while log V spans <= the limit, and the exact log-space scan beyond it."""
    calls = []
    blocked = ta.logspace_prefill
    monkeypatch.setattr(ta, "logspace_prefill", lambda *a: calls.append(1) or blocked(*a))
    rng = np.random.default_rng(3)
    q, k, _ = _inputs(rng, (2,), 33, 4, 2, 3.0)
    for span, falls_back in ((ta._LOGSPACE_SPAN_LIMIT - 1, False), (ta._LOGSPACE_SPAN_LIMIT + 1, True)):
        calls.clear()
        log_v = rng.uniform(0.0, 1.0, size=(2, 33, 2)) * span - 7.0
        log_v[1, 20, 1] = -np.inf  # an exact zero never counts towards the span
        log_v[0, :, 0] = np.array([-7.0, span - 7.0] * 17)[:33]  # this channel spans exactly `span`
        out = ta.log_attention_logspace(_t(q), _t(k), _t(log_v), method="shifted")
        assert bool(calls) == falls_back, span
        expected = ref.log_attention_logspace(q, k, log_v)
        assert np.max(np.abs(out.numpy() - expected)) <= 1e-4, span
    # A channel with V = 0 everywhere: log Y = -inf there, no NaN.
    log_v = np.zeros((2, 33, 2))
    log_v[:, :, 1] = -np.inf
    out = ta.log_attention_logspace(_t(q), _t(k), _t(log_v), method="shifted").numpy()
    assert np.all(out[..., 1] == -np.inf) and np.allclose(out[..., 0], 0.0, atol=1e-6)


def test_logspace_auto_is_the_exact_scan_on_cpu(monkeypatch):
    monkeypatch.setattr(ta, "_logspace_shifted", lambda *a: pytest.fail("shifted on a CPU tensor under auto"))
    q = torch.randn(1, 5, 3)
    ta.log_attention_logspace(q, q, q, method="auto")


@pytest.mark.parametrize("method", CPU_METHODS + ("shifted",))
def test_logspace_gradients(method):
    """The "log" model arm trains through log_attention_logspace: its gradients must be exact and finite."""
    rng = np.random.default_rng(12)
    q, k, log_v = (_t(rng.normal(size=(2, 9, 3)) * 2, torch.float64).requires_grad_() for _ in range(3))
    assert torch.autograd.gradcheck(
        lambda a, b, c: ta.log_attention_logspace(a, b, c, method=method, chunk_size=4), (q, k, log_v))


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 40), chunk_size=st.sampled_from([4, 8, 32]),
       spikes=st.integers(1, 4))
def test_random_spikes_of_1e3_anywhere(seed, n, chunk_size, spikes):
    """Keys and queries jumping by up to +-1e3 at random positions and features, inside or across chunks."""
    rng = np.random.default_rng(seed)
    q, k, v = _inputs(rng, (), n, 4, 3, 2.0)
    for _ in range(spikes):
        target = q if rng.random() < 0.3 else k
        target[rng.integers(n), rng.integers(4)] += rng.uniform(-1e3, 1e3)
    qr, kr = (_t(x).double().numpy() for x in (q, k))
    implied = 1e-7 * np.max(np.abs(qr[:, None, :] + kr[None, :, :]))
    y = ta.log_attention(_t(q), _t(k), _t(v), chunk_size=chunk_size)
    assert torch.isfinite(y).all()
    assert ref.scaled_error(y.numpy(), ref.log_attention(qr, kr, v), v) <= max(1e-5, 5 * implied)


@pytest.mark.parametrize("name", ["LogAttentionState", "initial_state", "step", "prefill", "Decoder"])
def test_moved_recurrent_names_still_import_from_torch_attention_with_a_warning(name):
    with pytest.warns(DeprecationWarning, match=f"logattn_ref.recurrent.{name}"):
        old = getattr(ta, name)
    assert old is getattr(rec, name)
    assert name not in ta.__all__ and name in rec.__all__
    with pytest.raises(AttributeError):
        ta.no_such_name


def test_logspace_prefill_continued_from_its_state_equals_one_call():
    rng = np.random.default_rng(11)
    q, k, log_v = (torch.from_numpy(rng.normal(size=(2, 19, s))) for s in (4, 4, 3))
    whole, (h_s, h_z) = ta.logspace_prefill(None, q, k, log_v, chunk_size=4)
    head, state = ta.logspace_prefill(None, q[:, :7], k[:, :7], log_v[:, :7], chunk_size=8)
    empty, same = ta.logspace_prefill(state, q[:, :0], k[:, :0], log_v[:, :0])
    assert empty.shape == (2, 0, 3) and all(a is b for a, b in zip(same, state))
    tail, (t_s, t_z) = ta.logspace_prefill(state, q[:, 7:], k[:, 7:], log_v[:, 7:], chunk_size=2)
    assert torch.allclose(torch.cat([head, tail], 1), whole) and torch.allclose(t_s, h_s) and torch.allclose(t_z, h_z)
    assert torch.allclose(whole, ta.log_attention_logspace(q, k, log_v, method="logcumsumexp"))
    with pytest.raises(ValueError, match="power of two"):
        ta.logspace_prefill(None, q, k, log_v, chunk_size=3)


@pytest.mark.parametrize("bad", [0, -4, 3, 48, 2.0, True, "64", None])
def test_one_chunk_size_rule_everywhere(bad):
    assert ta.check_chunk_size(ta.DEFAULT_CHUNK_SIZE) == ta.DEFAULT_CHUNK_SIZE
    q = torch.randn(1, 5, 4)
    calls = [lambda: ta.check_chunk_size(bad),
             lambda: ta.log_attention_logspace(q, q, q, chunk_size=bad),
             lambda: rec.prefill(rec.initial_state((1,), 4, 4), q, q, q, chunk_size=bad)]
    if bad is None:  # log_attention's None means "each method's default chunk size"
        assert torch.equal(ta.log_attention(q, q, q, chunk_size=None),
                           ta.log_attention(q, q, q, chunk_size=ta.DEFAULT_CHUNK_SIZE))
    else:
        calls.append(lambda: ta.log_attention(q, q, q, chunk_size=bad))
    for call in calls:
        with pytest.raises(ValueError, match="chunk_size must be a positive power of two"):
            call()
