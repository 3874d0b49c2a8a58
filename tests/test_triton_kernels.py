"""The fused Triton kernels against the float64 oracle (forward) and float64 autograd (gradients).

Without a GPU they run under the Triton interpreter (TRITON_INTERPRET=1, set here before triton is imported),
at small sizes with chunk_size=32, sub_block=16 so that a few tokens already span several chunks and
sub-blocks. Error measure: scaled_error = max|y - y_ref| / max|v| (gradients: relative to the largest
reference gradient entry). Tolerance 1e-5 for float32; the reference sees the same float32-rounded inputs.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (kernels decorated as interpreted)

triton = pytest.importorskip("triton")
from logattn_ref import numpy_ref, torch_attention  # noqa: E402
from logattn_ref import triton_kernels  # noqa: E402

if not CUDA:
    # Another test module may have imported the kernels module before the variable was set.
    triton_kernels = importlib.reload(triton_kernels)
    if not triton_kernels.interpreter_runs():
        pytest.skip(f"triton {triton.__version__}'s interpreter cannot run the kernels (triton >= 3.7 can)",
                    allow_module_level=True)

DEVICE = "cuda" if CUDA else "cpu"
# The interpreter evaluates exp on the masked-out (j > i) half of a diagonal tile too; those overflow to inf
# harmlessly (tl.where drops them) but numpy warns.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
SMALL = dict(chunk_size=32, sub_block=16)


def _inputs(shape_qk, d_v, scale, seed, adversarial=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_qk, generator=gen) * scale
    k = torch.randn(*shape_qk, generator=gen) * scale
    v = torch.randn(*shape_qk[:-1], d_v, generator=gen) * 3  # signed V
    n = shape_qk[-2]
    if adversarial and n > 3:
        # A key 1e3 larger than all others, late inside a chunk: a chunk-wide max would give rows before it 0/0,
        # and it defeats the diagonal block's single reference (forces the elementwise fallback).
        k[..., n - 3, :] += 1e3
    return q, k, v


def _check(shape_qk, d_v, scale=1.0, seed=0, adversarial=False, tol=1e-5, grad_tol=1e-5):
    q, k, v = _inputs(shape_qk, d_v, scale, seed, adversarial)
    ins = [x.to(DEVICE).clone().requires_grad_() for x in (q, k, v)]
    y = triton_kernels.log_attention_triton(*ins, **SMALL)
    assert y.dtype == torch.float32 and y.shape == v.shape
    assert torch.isfinite(y).all()
    y_ref = numpy_ref.log_attention(q.double().numpy(), k.double().numpy(), v.double().numpy())
    err = numpy_ref.scaled_error(y.detach().cpu().double().numpy(), y_ref, v.double().numpy())
    assert err <= tol, f"forward scaled error {err:.2e} > {tol:.0e}"

    dy = torch.randn(v.shape, generator=torch.Generator().manual_seed(seed + 1))
    y.backward(dy.to(DEVICE))
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    torch_attention.log_attention(*ref, method="chunked").backward(dy.double())
    # Gradients are relative to the largest reference entry, floored at 1e-2 * max|dy| * max|v| (the natural
    # scale of dq, dk: for n = 1 they are exactly 0 and float32 leaves ~1e-7 * |dy| |v|).
    floor = 1e-2 * dy.abs().max().item() * v.abs().max().item()
    for name, mine, theirs in zip("qkv", ins, ref):
        scale_g = max(theirs.grad.abs().max().item(), floor)
        g_err = (mine.grad.cpu().double() - theirs.grad).abs().max().item() / scale_g
        assert torch.isfinite(mine.grad).all()
        assert g_err <= grad_tol, f"d{name}: relative error {g_err:.2e} > {grad_tol:.0e}"


@pytest.mark.parametrize(
    "shape_qk, d_v",
    [
        ((1, 1, 4), 3),  # n = 1
        ((2, 13, 16), 5),  # n < sub_block < chunk, odd
        ((2, 1, 37, 20), 17),  # several chunks, odd n, d not a power of two, head dim
    ],
)
def test_matches_oracle(shape_qk, d_v):
    _check(shape_qk, d_v)


def test_magnitude_ten_multi_chunk():
    _check((1, 70, 16), 16, scale=10.0, seed=3)


@pytest.mark.parametrize("fallback", ["tile", "loop"])
def test_adversarial_later_larger_key(fallback, monkeypatch):
    """A key 1e3 above the rest forces the diagonal block's fallback, in either form (DIAG_FALLBACK)."""
    monkeypatch.setattr(triton_kernels, "DIAG_FALLBACK", fallback)
    _check((1, 45, 16), 16, seed=4, adversarial=True)
    _check((2, 77, 20), 9, seed=6, adversarial=True)  # odd d_k: the loop runs over the real features only


@pytest.mark.parametrize("fallback", ["tile", "loop"])
def test_magnitudes_up_to_1e3_stay_finite_and_accurate(fallback, monkeypatch):
    # The exponents span +-2000 nats: every factor must still be <= 1. Gradients at |q|, |k| ~ 1e3 are as
    # sensitive as float32 rounding of q + k (~1e-4 absolute): looser gradient tolerance.
    monkeypatch.setattr(triton_kernels, "DIAG_FALLBACK", fallback)
    _check((1, 40, 16), 16, scale=1e3, seed=5, grad_tol=1e-3)


def test_diag_fallback_is_checked_by_name(monkeypatch):
    monkeypatch.setattr(triton_kernels, "DIAG_FALLBACK", "loops")
    with pytest.raises(ValueError, match="DIAG_FALLBACK must be 'tile' or 'loop'"):
        _check((1, 5, 4), 4)


@pytest.mark.parametrize("group", [2, 3])
def test_two_level_scans_match_the_oracle(group, monkeypatch):
    """SCAN_GROUP chunks a group: the state scans (forward and backward) run inside the groups, then over them,
    then add each group's carry. Oracle's answer and gradients on ordinary inputs, with a key 1e3 above the rest,
    and at magnitude 1e3; 8, 6 and 7 chunks, so groups of 3 leave a partial last group."""
    monkeypatch.setattr(triton_kernels, "SCAN_GROUP", group)
    _check((1, 7 * 32 + 5, 16), 9, seed=11)
    _check((2, 5 * 32 + 3, 20), 16, seed=12, adversarial=True)
    _check((1, 6 * 32 + 1, 16), 16, scale=1e3, seed=13, grad_tol=1e-3)


@pytest.mark.parametrize("launch", [(16, 16, 1, 4), (16, None, 3, 2)])
def test_state_passes_split_over_tiles_match_the_oracle(launch, monkeypatch):
    """The state passes split the state into tiles (SCAN_LAUNCH rows and columns, at least 16 each), and the
    walks over the groups into CARRY_ROWS rows: d_k = d_v = 40 pads to 64, so 4 row tiles (the backward's
    delta is formed by the first only) and, forward, 4 column tiles; groups of 2 over 5 chunks."""
    monkeypatch.setattr(triton_kernels, "SCAN_LAUNCH", launch)
    monkeypatch.setattr(triton_kernels, "SCAN_GROUP", 2)
    monkeypatch.setattr(triton_kernels, "CARRY_ROWS", 16)
    _check((1, 4 * 32 + 7, 40), 40, seed=14, adversarial=True)


def test_interpreter_versions():
    assert triton_kernels.interpreter_runs("3.7.0") and triton_kernels.interpreter_runs("3.10.1+git1234")
    assert not triton_kernels.interpreter_runs("3.6.0") and not triton_kernels.interpreter_runs("2.3.1")


@pytest.mark.skipif(CUDA, reason="the interpreter is used only without a GPU, and this machine has a GPU")
def test_an_interpreter_too_old_for_the_kernels_is_refused_and_auto_falls_back(monkeypatch):
    """triton 3.6's interpreter stops inside these kernels: is_supported says no, the kernels name the version and
    the fix, and log_attention's "auto" takes the PyTorch form instead (the oracle's answer)."""
    monkeypatch.setattr(triton_kernels.triton, "__version__", "3.6.0")
    q, k, v = _inputs((1, 9, 8), 8, 1.0, seed=15)
    assert not triton_kernels.is_supported(q)
    with pytest.raises(RuntimeError, match=r"interpreter of triton 3\.6\.0 cannot run these kernels \(triton >= 3\.7"):
        triton_kernels.log_attention_triton(q, k, v)
    assert "triton" not in torch_attention.available_methods(q)
    y = torch_attention.log_attention(q, k, v, method="auto")
    y_ref = numpy_ref.log_attention(q.double().numpy(), k.double().numpy(), v.double().numpy())
    assert numpy_ref.scaled_error(y.double().numpy(), y_ref, v.double().numpy()) <= 1e-5


class _RefusesLarge:
    """Stands in for a kernel on a GPU smaller than the H200: a launch whose meta-parameters `refuse` names fails
    to compile with triton's OutOfResources (before anything runs); the others run the real kernel."""

    def __init__(self, real, refuse):
        self.fn, self.real, self.refuse, self.tried = real.fn, real, refuse, []

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.tried.append({k: meta[k] for k in ("BS", "BKS", "STAGES") if k in meta})
            if self.refuse(meta):
                raise triton.runtime.errors.OutOfResources(300_000, 232_448, "shared memory")
            return self.real[grid](*args, **meta)
        return launch


def test_a_launch_the_gpu_cannot_hold_falls_back_to_smaller_tiles(monkeypatch):
    """Every kernel with tiles refused at its default falls back (one pipeline stage, then 16-row state tiles; half
    the sub-block) and still gives the oracle's answer and gradients; later calls start from what compiled."""
    monkeypatch.setattr(triton_kernels, "_FALLBACK", {})
    monkeypatch.setattr(triton_kernels, "SCAN_GROUP", 2)
    monkeypatch.setattr(triton_kernels, "SCAN_LAUNCH", (None, None, 2, 4))
    proxies = {}
    for name in ("_forward_kernel", "_backward_kernel"):
        proxies[name] = _RefusesLarge(getattr(triton_kernels, name), lambda meta: meta["BS"] > 16)
    for name in ("_group_total_kernel", "_state_pass_kernel", "_dgroup_total_kernel", "_dstate_pass_kernel"):
        proxies[name] = _RefusesLarge(getattr(triton_kernels, name), lambda meta: meta["BKS"] > 16)
    for name, proxy in proxies.items():
        monkeypatch.setattr(triton_kernels, name, proxy)
    monkeypatch.setitem(SMALL, "sub_block", 32)  # one 32-row sub-block a chunk, refused: 16 rows instead
    _check((1, 5 * 32 + 3, 40), 24, seed=16)  # d_k = 40 pads to 64 (BKS from 64 down to 16), 6 chunks in groups of 2
    assert proxies["_forward_kernel"].tried == proxies["_backward_kernel"].tried == [{"BS": 32}, {"BS": 16}]
    assert proxies["_state_pass_kernel"].tried == [{"BKS": 64, "STAGES": 2}, {"BKS": 64, "STAGES": 1},
                                                   {"BKS": 16, "STAGES": 1}]
    for proxy in proxies.values():
        proxy.tried.clear()
    _check((1, 5 * 32 + 3, 40), 24, seed=17)
    assert proxies["_forward_kernel"].tried == [{"BS": 16}]
    assert all(proxy.tried[0].get("BKS", 16) == 16 and len(proxy.tried) == 1 for proxy in proxies.values())
    # nothing fits: the last refusal is the error, not a silent skip
    refuses_all = _RefusesLarge(proxies["_forward_kernel"].real, lambda meta: True)
    monkeypatch.setattr(triton_kernels, "_forward_kernel", refuses_all)
    with pytest.raises(triton.runtime.errors.OutOfResources):
        triton_kernels.log_attention_triton(*(x.to(DEVICE) for x in _inputs((1, 40, 8), 8, 1.0, seed=18)), **SMALL)


def test_scan_group_is_checked(monkeypatch):
    monkeypatch.setattr(triton_kernels, "SCAN_GROUP", -1)
    with pytest.raises(ValueError, match="SCAN_GROUP must be an int >= 0, got -1"):
        _check((1, 70, 16), 4)


def test_result_does_not_depend_on_blocking():
    q, k, v = (x.to(DEVICE) for x in _inputs((1, 50, 16), 16, 2.0, 6))
    a = triton_kernels.log_attention_triton(q, k, v, chunk_size=16, sub_block=16)
    b = triton_kernels.log_attention_triton(q, k, v, chunk_size=64, sub_block=16)
    assert (a - b).abs().max().item() <= 1e-5 * v.abs().max().item()


def test_argument_errors_name_the_argument():
    q = torch.randn(2, 5, 4, device=DEVICE)
    with pytest.raises(TypeError, match="q must be float32"):
        triton_kernels.log_attention_triton(q.double(), q, q)
    with pytest.raises(TypeError, match="share one dtype"):
        triton_kernels.log_attention_triton(q, q.half(), q)
    with pytest.raises(ValueError, match="q, k of one shape"):
        triton_kernels.log_attention_triton(q, q[:, :4], q)
    with pytest.raises(ValueError, match="d_k and d_v"):
        big = torch.randn(1, 3, 200, device=DEVICE)
        triton_kernels.log_attention_triton(big, big, big)
    with pytest.raises(ValueError, match="chunk_size"):
        triton_kernels.log_attention_triton(q, q, q, chunk_size=48)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        triton_kernels.log_attention_triton(q, [1.0], q)


def test_is_supported():
    assert not triton_kernels.is_supported(torch.zeros(2, dtype=torch.float64))
    assert not triton_kernels.is_supported(torch.zeros(2, dtype=torch.int32))
    assert not triton_kernels.is_supported("q")
    assert triton_kernels.is_supported(torch.zeros(2, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_on_gpu(dtype):
    if dtype == torch.bfloat16 and not triton_kernels.is_supported(torch.zeros(1, device="cuda", dtype=dtype)):
        pytest.skip("no bfloat16 on this GPU")
    q, k, v = (x.to(dtype) for x in _inputs((2, 3, 1000, 64), 64, 2.0, 7))
    ins = [x.cuda().requires_grad_() for x in (q, k, v)]
    y = triton_kernels.log_attention_triton(*ins)
    y_ref = numpy_ref.log_attention(*(x.double().numpy() for x in (q, k, v)))
    # bf16 output rounding alone is 2^-8 relative: 1e-2 of max|v|.
    assert numpy_ref.scaled_error(y.detach().float().cpu().double().numpy(), y_ref, v.double().numpy()) <= 1e-2
    y.float().pow(2).sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in ins)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_torch_attention_dispatches_to_triton_on_gpu():
    q, k, v = (x.cuda() for x in _inputs((2, 2, 300, 64), 64, 1.0, 8))
    y = torch_attention.log_attention(q, k, v, method="triton")
    y_ref = torch_attention.log_attention(q.double(), k.double(), v.double(), method="chunked")
    assert ((y.double() - y_ref).abs().max() / v.abs().max()).item() <= 1e-5


def test_decode_step_matches_oracle_step():
    gen = torch.Generator().manual_seed(9)
    batch, d_k, d_v = (2, 3), 20, 7
    state_ref = numpy_ref.initial_state(batch, d_k, d_v)
    sum_kv = torch.zeros(*batch, d_k, d_v, device=DEVICE)
    sum_k = torch.zeros(*batch, d_k, device=DEVICE)
    key_max = torch.full((*batch, d_k), float("-inf"), device=DEVICE)
    for t in range(5):
        q, k, v = (torch.randn(*batch, d, generator=gen) * s for d, s in ((d_k, 3.0), (d_k, 3.0 + 300 * (t == 3)),
                                                                          (d_v, 2.0)))
        y = triton_kernels.decode_step_triton(sum_kv, sum_k, key_max, q.to(DEVICE), k.to(DEVICE), v.to(DEVICE))
        y_ref, state_ref = numpy_ref.step(state_ref, q.double().numpy(), k.double().numpy(), v.double().numpy())
        assert numpy_ref.scaled_error(y.cpu().double().numpy(), y_ref, v.double().numpy()) <= 1e-5
    with pytest.raises(ValueError, match="q_t must have shape"):
        triton_kernels.decode_step_triton(sum_kv, sum_k, key_max, q[0].to(DEVICE), k.to(DEVICE), v.to(DEVICE))


@pytest.mark.parametrize("T", [1, 6])
def test_decode_tokens_matches_the_oracle_and_t_single_steps(T):
    """T tokens in one launch = T oracle steps from the same prefilled state (signed values, a key 300 above
    the rest among them); the state after it equals the state after T single-step launches."""
    gen = torch.Generator().manual_seed(11 + T)
    batch, d_k, d_v = (3,), 33, 10
    q0, k0, v0 = (torch.randn(*batch, 9, d, generator=gen) * 2 for d in (d_k, d_k, d_v))
    _, state0 = numpy_ref.prefill(numpy_ref.initial_state(batch, d_k, d_v), q0.double().numpy(),
                                  k0.double().numpy(), v0.double().numpy())
    q, k, v = (torch.randn(*batch, T, d, generator=gen) * 3 for d in (d_k, d_k, d_v))
    k[1, T // 2, 4] += 300.0
    fields = lambda: [torch.tensor(x, dtype=torch.float32, device=DEVICE).contiguous()  # noqa: E731
                      for x in (state0.sum_kv, state0.sum_k, state0.key_max)]
    many = fields()
    y = triton_kernels.decode_tokens_triton(*many, q.to(DEVICE), k.to(DEVICE), v.to(DEVICE))
    single = fields()
    state_ref = state0
    for t in range(T):
        y_t = triton_kernels.decode_step_triton(*single, q[:, t].to(DEVICE), k[:, t].to(DEVICE), v[:, t].to(DEVICE))
        y_ref, state_ref = numpy_ref.step(state_ref, q[:, t].double().numpy(), k[:, t].double().numpy(),
                                          v[:, t].double().numpy())
        assert numpy_ref.scaled_error(y[:, t].cpu().double().numpy(), y_ref, v.double().numpy()) <= 1e-5
        assert torch.allclose(y[:, t], y_t, rtol=1e-6, atol=1e-6)
    for a, b in zip(many, single):
        assert torch.allclose(a, b, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"v must have shape \(3, 'T', 10\)"):
        triton_kernels.decode_tokens_triton(*many, q.to(DEVICE), k.to(DEVICE), v[:, :1].to(DEVICE) if T > 1
                                            else v[..., :5].to(DEVICE))


def test_bench_quick_smoke(tmp_path):
    from logattn_ref import bench

    result = bench.main(["--quick", "--out", str(tmp_path)])
    names = {r["method"] for r in result["prefill"]}
    assert {"logcumsumexp", "chunked", "sdpa"} <= names
    assert all("error" not in r and r["forward"]["median_ms"] > 0 for r in result["prefill"])
    assert all(r["decoder_eager_us"] > 0 and r["softmax_kv_cache_us"] > 0 for r in result["decode"])
    # The streaming state does not grow with the context; the KV cache does.
    assert result["decode"][0]["state_bytes"] == result["decode"][-1]["state_bytes"]
    assert result["decode"][-1]["kv_cache_bytes"] > result["decode"][0]["kv_cache_bytes"]
    assert len(list(tmp_path.glob("*.png"))) == 3 and len(list(tmp_path.glob("*.json"))) == 1


def test_fused_decoder_matches_the_oracle_and_the_unfused_decoder():
    """Decoder(fused=True) runs each step as the one-kernel decode step (the benchmark's fastest path)."""
    from logattn_ref import numpy_ref as ref
    from logattn_ref import recurrent as rec

    rng = np.random.default_rng(21)
    n = 13
    q, k, v = (rng.uniform(-4, 4, size=(2, n, d)) for d in (8, 8, 5))
    k[1, 7, 3] += 900.0  # a late key far above the running max
    fused, plain = rec.Decoder((2,), 8, 5, device=DEVICE, fused=True), rec.Decoder((2,), 8, 5, device=DEVICE)
    packed = torch.tensor(np.concatenate([q, k, v], axis=-1), dtype=torch.float32, device=DEVICE)
    ys = []
    for t in range(n):
        qt, kt, vt = (torch.tensor(x[:, t], dtype=torch.float32, device=DEVICE) for x in (q, k, v))
        y = fused.step_packed(packed[:, t]) if t % 2 else fused.step(qt, kt, vt)
        assert torch.allclose(y, plain.step(qt, kt, vt), rtol=1e-5, atol=1e-6), t
        ys.append(y.cpu().numpy())
    qr, kr, vr = (torch.tensor(x, dtype=torch.float32).double().numpy() for x in (q, k, v))
    assert ref.scaled_error(np.stack(ys, axis=1), ref.log_attention(qr, kr, vr), vr) <= 1e-5
    assert fused.count == n


@pytest.mark.parametrize("fused", [True, False])
def test_decoder_step_tokens_equals_single_steps(fused):
    """Decoder.step_tokens (T known tokens at once: one launch when fused, the chunked form otherwise) gives the
    outputs, state and count of T single steps, here mixed with single steps around it."""
    from logattn_ref import recurrent as rec

    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 12, d, generator=gen) * 3 for d in (8, 8, 6))
    k[0, 1, 6, 2] += 500.0
    q, k, v = (x.to(DEVICE) for x in (q, k, v))
    one, many = rec.Decoder((2, 3), 8, 6, device=DEVICE, fused=fused), rec.Decoder((2, 3), 8, 6, device=DEVICE,
                                                                                   fused=fused)
    ys = [one.step(q[..., t, :], k[..., t, :], v[..., t, :]) for t in range(12)]
    got = torch.cat([many.step(q[..., 0, :], k[..., 0, :], v[..., 0, :])[..., None, :],
                     many.step_tokens(q[..., 1:8, :], k[..., 1:8, :], v[..., 1:8, :]),
                     many.step_tokens(q[..., 8:, :], k[..., 8:, :], v[..., 8:, :])], dim=-2)
    assert torch.allclose(got, torch.stack(ys, dim=-2), rtol=1e-5, atol=1e-6)
    for a, b in zip((one.state.sum_kv, one.state.sum_k, one.state.key_max),
                    (many.state.sum_kv, many.state.sum_k, many.state.key_max)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert many.count == one.count == 12
    with pytest.raises(ValueError, match=r"k must have shape \(2, 3, 'T', 8\)"):
        many.step_tokens(q[..., :2, :], k[..., :3, :], v[..., :2, :])


def _default_launch_matches_float64(q, k, v, seed):
    """The kernels at their defaults against float64 autograd of the chunked form: relative errors of y, dq, dk
    and dv at most 1e-5, every entry finite. Returns the leaf tensors for further calls."""
    q, k, v = (x.to(DEVICE).requires_grad_(True) for x in (q, k, v))
    y = triton_kernels.log_attention_triton(q, k, v)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    grads = torch.autograd.grad(y, (q, k, v), dy)
    refs = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    y64 = torch_attention.log_attention(*refs, method="chunked")
    for got, want in zip((y,) + grads, (y64,) + torch.autograd.grad(y64, refs, dy.double())):
        assert torch.isfinite(got).all() and ((got.double() - want).norm() / want.norm()).item() <= 1e-5
    return q, k, v


def test_default_launch_runs_the_tuned_tiles_and_warps_against_the_oracle():
    """The library's defaults (the H200-tuned tiles, scan launch, fallback and warp counts) give the oracle's answer
    and gradients on odd lengths spanning several chunks; num_warps is checked by name."""
    q, k, v = _default_launch_matches_float64(*_inputs((1, 2, 2 * triton_kernels.CHUNK_SIZE + 37, 24), 9, 4.0, seed=3),
                                              seed=4)
    with pytest.raises(ValueError, match="num_warps must be None or one of"):
        triton_kernels.log_attention_triton(q, k, v, num_warps=3)


def test_default_launch_takes_the_two_level_scan_past_one_group():
    """With the defaults, more chunks than SCAN_GROUP run the two-level scans (the test above stays in one group):
    the oracle's answer and gradients, with a key 1e3 above the rest in a later group."""
    assert triton_kernels.SCAN_GROUP > 0
    n = (triton_kernels.SCAN_GROUP + 2) * triton_kernels.CHUNK_SIZE + 5
    q, k, v = _inputs((1, 1, n, 8), 5, 2.0, seed=21)
    k[..., n - 70, 2] += 1e3
    _default_launch_matches_float64(q, k, v, seed=22)


def test_fused_decoder_refuses_a_float64_state():
    from logattn_ref import recurrent as rec

    with pytest.raises(ValueError, match="fused=True needs a float32 state"):
        rec.Decoder((1,), 4, 4, device=DEVICE, dtype=torch.float64, fused=True)


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_log_attention_hands_its_chunk_size_to_the_kernels(chunk_size, monkeypatch):
    """torch_attention.log_attention(method="triton", chunk_size=C) runs the kernels with C (it used to check C
    and then drop it), and the answer matches the oracle whatever C is."""
    seen = []
    real = triton_kernels.log_attention_triton

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_kernels, "log_attention_triton", spy)
    monkeypatch.setattr(torch_attention, "_triton_module", lambda: (triton_kernels, None))
    q, k, v = _inputs((2, 45, 8), 5, 3.0, seed=chunk_size)
    y = torch_attention.log_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), method="triton", chunk_size=chunk_size)
    assert seen == [{"chunk_size": chunk_size}]  # the kernels take min(SUB_BLOCK, chunk_size) rows a tile
    y_ref = numpy_ref.log_attention(*(x.double().numpy() for x in (q, k, v)))
    assert numpy_ref.scaled_error(y.cpu().double().numpy(), y_ref, v.double().numpy()) <= 1e-5
    torch_attention.log_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), method="triton")
    assert seen[-1] == {}  # no chunk_size given: the kernels' own tuned default


def test_triton_refuses_a_chunk_below_its_smallest_tile_and_auto_takes_the_pytorch_form():
    q, k, v = (x.to(DEVICE) for x in _inputs((1, 20, 4), 3, 1.0, seed=3))
    with pytest.raises(ValueError, match="chunk_size must be at least 16 with method='triton'"):
        torch_attention.log_attention(q, k, v, method="triton", chunk_size=8)
    y = torch_attention.log_attention(q, k, v, method="auto", chunk_size=8)  # "chunked" on any device
    y_ref = numpy_ref.log_attention(*(x.double().cpu().numpy() for x in (q, k, v)))
    assert numpy_ref.scaled_error(y.cpu().double().numpy(), y_ref, v.cpu().double().numpy()) <= 1e-5


@pytest.mark.parametrize("last", [0, 31, 32, 100, 299])
def test_split_kv_softmax_decode_matches_softmax_over_the_filled_slots(last):
    """The softmax baseline's split-KV decode step: softmax over slots 0..last only, across slices of the cache
    (here 32 slots a program, so up to 10 slices, the last one ragged); unfilled slots hold NaN and are never read."""
    gen = torch.Generator().manual_seed(last)
    q = torch.randn(2, 3, 20, generator=gen)
    keys, values = (torch.randn(2, 3, 300, 20, generator=gen) * s for s in (3.0, 1.0))
    want = torch.softmax((q[..., None, :] * keys[..., :last + 1, :]).sum(-1) * 20 ** -0.5, dim=-1)
    want = (want[..., None] * values[..., :last + 1, :]).sum(-2)
    keys[..., last + 1:, :] = float("nan")
    values[..., last + 1:, :] = float("nan")
    got = triton_kernels.softmax_decode_triton(q.to(DEVICE), keys.to(DEVICE), values.to(DEVICE),
                                               torch.tensor([last], device=DEVICE), split=32)
    assert torch.allclose(got.cpu(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="last must be a one-element integer tensor"):
        triton_kernels.softmax_decode_triton(q.to(DEVICE), keys.to(DEVICE), values.to(DEVICE), last)
    with pytest.raises(ValueError, match="split must be a power of two"):
        triton_kernels.softmax_decode_triton(q.to(DEVICE), keys.to(DEVICE), values.to(DEVICE),
                                             torch.tensor([last], device=DEVICE), split=24)


def test_static_decoder_with_the_split_kv_softmax_kernel_gives_the_full_forward_tokens():
    from logattn_ref.decode import StaticDecoder, available_softmax_kernels
    from logattn_ref.model import GPT, ModelConfig

    assert "splitkv" in available_softmax_kernels(DEVICE)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=17, block_size=64, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                            attention="softmax")).to(DEVICE)
    prompt = torch.randint(0, 17, (2, 9), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    tokens = {}
    for kernel in ("sdpa", "splitkv"):
        dec = StaticDecoder(model, batch=2, capacity=20, softmax_kernel=kernel)
        dec.prefill(prompt, block=4)
        tokens[kernel] = dec.generate(8)
    full, _ = model(torch.cat([prompt, tokens["splitkv"]], dim=1))
    assert torch.equal(full[:, 8:-1].argmax(-1), tokens["splitkv"]) and torch.equal(tokens["sdpa"], tokens["splitkv"])
