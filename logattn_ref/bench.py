"""Benchmark of causal log-of-exponentials attention against softmax attention: time, peak memory, decode latency.

    python -m logattn_ref.bench [--out benchmarks/results/] [--quick] [--lengths 1024 4096 ...]

Prefill: causal attention at B=2, H=8, d_k = d_v = 64, bf16 inputs, n in {1K, 4K, 16K, 64K, 256K}; for each
method, the forward and the forward+backward time (CUDA events around each call after warm-up; the median of
many calls, every call on the same fresh random inputs, never zeros) and the peak memory of forward+backward
(``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before the call: the inputs are
not counted). Methods: the paper's ``"logcumsumexp"`` scan (an out-of-memory error is caught and recorded as
``"oom"``), ``"chunked"`` (pure PyTorch), ``"triton"`` (the fused kernels), SDPA (causal, PyTorch's default
backend selection; which backend ran is not recorded), and flash-linear-attention's ``chunk_linear_attn``
when it imports (an optional peer, run in its own [B, n, H, d] layout on the features exp(q), exp(k) with its
normaliser: the same weights as ours, without our stabilisers).

Decode: the per-token latency of the streaming :class:`~logattn_ref.recurrent.Decoder` (eager and
CUDA-graph replay) after a prefill of L tokens, against softmax attention over a bf16 KV cache of L tokens
(SDPA of one query plus writing the new key/value), L from 1K to 1M.

Writes ``bench_<gpu>.json`` (GPU name, torch/triton/CUDA versions, date, every figure) and PNG plots into
``--out``.

    python -m logattn_ref.bench --torch-methods [--out benchmarks/results/] [--quick]

measures the PyTorch methods alone instead, in float32 at B = 1 (:func:`bench_torch_methods`), into
``torch_methods_<gpu>.json`` (lesson 4b reads ``torch_methods_h200.json``).

``--quick`` is a CPU smoke test of either (tiny sizes, wall-clock timers, no memory figures) that the unit tests
run: the same code path, only the sizes and the timer differ.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import torch_attention as ta
from .recurrent import Decoder, initial_state, prefill
from .runio import moved_names, run_environment, write_json

__all__ = ["time_call", "peak_memory", "capture_graph", "prefill_inputs", "bench_prefill", "bench_decode",
           "bench_torch_methods", "plot", "markdown_tables", "main"]


#: ``environment`` moved to :func:`logattn_ref.runio.run_environment`; the old name warns, for one release.
__getattr__ = moved_names(__name__, {"environment": f"{__package__}.runio:run_environment"})

DEFAULT_LENGTHS = (1024, 4096, 16384, 65536, 262144)
DEFAULT_CONTEXTS = (1024, 4096, 16384, 65536, 262144, 1048576)
#: The PyTorch-methods run (``--torch-methods``): float32, B = 1, H = 8, d = 64 (torch_methods_h200.json).
TORCH_METHODS_LENGTHS = (1024, 4096, 16384, 65536)
TORCH_METHODS_CONTEXTS = (256, 4096, 65536)


def time_call(fn: Callable[[], object], device: torch.device, budget_s: float = 0.3, min_reps: int = 5,
              max_reps: int = 50, warmup: int = 2) -> Dict[str, float]:
    """Median / min milliseconds of ``fn()`` after ``warmup`` calls; reps chosen to fill ``budget_s``.

    CUDA: a pair of CUDA events around each call (the device time of everything the call queues). CPU: wall
    clock. Returns ``{"median_ms", "min_ms", "reps"}``.
    """
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    times: List[float] = []
    start_all = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start_all < budget_s):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "reps": len(times)}


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes allocated at the peak of ``fn()`` beyond what was allocated before it (None off CUDA)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _fla_linear_attn():
    try:
        from fla.ops.linear_attn import chunk_linear_attn  # optional peer
    except Exception:
        return None
    return chunk_linear_attn


def _methods(device: torch.device, quick: bool) -> Dict[str, Callable]:
    """name -> attention(q, k, v) on [B, H, n, d] tensors."""
    methods: Dict[str, Callable] = {
        "logcumsumexp": lambda q, k, v: ta.log_attention(q, k, v, method="logcumsumexp"),
        "chunked": lambda q, k, v: ta.log_attention(q, k, v, method="chunked"),
    }
    probe = torch.zeros(1, 1, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    # Off CUDA the kernels could only run under the (slow) interpreter: not a benchmark.
    if device.type == "cuda" and "triton" in ta.available_methods(probe):
        methods["triton"] = lambda q, k, v: ta.log_attention(q, k, v, method="triton")
    methods["sdpa"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    fla = _fla_linear_attn()
    if fla is not None and device.type == "cuda":
        # The same weights computed the textbook way: features exp(q), exp(k) (shifted by one global max so
        # they stay finite on these inputs; no per-position stabiliser, so unlike ours it overflows or
        # underflows once q + k spans ~88 nats) and normalize=True for the denominator; scale 1 (no 1/sqrt(d)).
        # fla takes [B, T, H, d]: bench_prefill hands it tensors laid out so (prefill_inputs), so the transposes
        # here are views and fla runs in its own layout, as a model built on it would call it.
        def fla_attn(q, k, v):
            fq = torch.exp(q - q.detach().amax()).transpose(1, 2)
            fk = torch.exp(k - k.detach().amax()).transpose(1, 2)
            out = fla(fq, fk, v.transpose(1, 2), scale=1.0, normalize=True)
            out = out[0] if isinstance(out, tuple) else out
            return out.transpose(1, 2)
        methods["fla_chunk_linear_attn"] = fla_attn
    return methods


#: Methods whose inputs are laid out [B, n, H, d] in memory (their own layout), viewed as [B, H, n, d].
TOKEN_MAJOR = ("fla_chunk_linear_attn",)


def prefill_inputs(name: str, batch: int, heads: int, n: int, d: int, device: torch.device, dtype: torch.dtype,
                   generator: torch.Generator):
    """q, k, v (requiring grad) and dy for method ``name``, all shaped [B, H, n, d]: contiguous, or for the methods
    of :data:`TOKEN_MAJOR` transposed views of [B, n, H, d] tensors, so that each method reads its own layout."""
    shape = (batch, n, heads, d) if name in TOKEN_MAJOR else (batch, heads, n, d)
    q, k, v, dy = (torch.randn(shape, device=device, dtype=dtype, generator=generator) for _ in range(4))
    if name in TOKEN_MAJOR:
        q, k, v, dy = (x.transpose(1, 2) for x in (q, k, v, dy))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), dy


def bench_prefill(lengths, batch: int, heads: int, d: int, device: torch.device, dtype: torch.dtype,
                  quick: bool = False, seed: int = 0) -> List[dict]:
    """One row per (method, n): forward and forward+backward time, peak memory, or the error that stopped it."""
    timing = dict(budget_s=0.0, min_reps=2, max_reps=2, warmup=1) if quick else {}
    rows = []
    methods = _methods(device, quick)
    gen = torch.Generator(device=device).manual_seed(seed)
    cases = [(n, name) for n in lengths for name in methods]
    for n, name in tqdm(cases, desc="prefill", disable=None):
        attn = methods[name]
        row = {"method": name, "n": n, "batch": batch, "heads": heads, "d": d, "dtype": str(dtype)}
        q, k, v, dy = prefill_inputs(name, batch, heads, n, d, device, dtype, gen)

        def forward():
            with torch.no_grad():
                return attn(q, k, v)

        def forward_backward():
            y = attn(q, k, v)
            return torch.autograd.grad(y, (q, k, v), dy)

        try:
            row["forward"] = time_call(forward, device, **timing)
            row["forward_backward"] = time_call(forward_backward, device, **timing)
            row["peak_bytes_forward_backward"] = peak_memory(forward_backward, device)
            row["peak_bytes_forward"] = peak_memory(forward, device)
        except torch.OutOfMemoryError:
            row["error"] = "oom"
        except Exception as exc:  # recorded, so one failing peer does not lose the whole run
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        del q, k, v, dy
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_decode(contexts, batch: int, heads: int, d: int, device: torch.device, steps: int = 200,
                 seed: int = 0, quick: bool = False) -> List[dict]:
    """Per-token latency (microseconds) after a context of L tokens: streaming state vs a softmax KV cache."""
    reps = dict(budget_s=0.0, min_reps=2, max_reps=2, warmup=1) if quick else dict(min_reps=3, max_reps=10)
    rows = []
    gen = torch.Generator(device=device).manual_seed(seed)
    kv_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for L in tqdm(contexts, desc="decode", disable=None):
        row = {"context": L, "batch": batch, "heads": heads, "d": d, "steps_per_timing": steps}
        try:
            # The decoder's state after a real prefill of L random tokens (values do not change the cost, but
            # the state is the one a model would hold).
            q, k, v = (torch.randn(batch, heads, L, d, device=device, generator=gen) for _ in range(3))
            state = initial_state((batch, heads), d, d, device=device)
            _, state = prefill(state, q, k, v, chunk_size=256)
            del q
            eager = Decoder.from_state(state)
            qt, kt, vt = (torch.randn(batch, heads, d, device=device, generator=gen) for _ in range(3))

            def many(fn):
                def run():
                    for _ in range(steps):
                        fn()
                return run
            many.steps = steps

            row["decoder_eager_us"] = time_call(many(lambda: eager.step(qt, kt, vt)), device,
                                                **reps)["median_ms"] * 1e3 / steps
            if device.type == "cuda":
                graphed = Decoder.from_state(state)
                graphed.capture_cuda_graph()
                row["decoder_cuda_graph_us"] = time_call(many(lambda: graphed.step(qt, kt, vt)), device,
                                                         **reps)["median_ms"] * 1e3 / steps
            probe = torch.zeros(1, device=device)
            if device.type == "cuda" and "triton" in ta.available_methods(probe):
                row.update(_triton_decode(state, qt, kt, vt, many, device, reps))
            row["state_bytes"] = eager.nbytes()
            # Softmax: a KV cache of L + 1 slots; each step writes the new key/value and attends over all.
            keys = torch.empty(batch, heads, L + 1, d, device=device, dtype=kv_dtype)
            values = torch.empty_like(keys)
            keys[:, :, :L] = k.to(kv_dtype)
            values[:, :, :L] = v.to(kv_dtype)
            del k, v
            qs, ks, vs = (x.to(kv_dtype)[:, :, None] for x in (qt, kt, vt))

            def kv_step():
                keys[:, :, L:] = ks
                values[:, :, L:] = vs
                return F.scaled_dot_product_attention(qs, keys, values)

            row["softmax_kv_cache_us"] = time_call(many(kv_step), device,
                                                   **reps)["median_ms"] * 1e3 / steps
            row["kv_cache_bytes"] = keys.numel() * keys.element_size() * 2
            del keys, values
        except torch.OutOfMemoryError:
            row["error"] = "oom"
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def capture_graph(fn) -> "torch.cuda.CUDAGraph":
    """Run ``fn`` once on a side stream (it compiles and allocates there, outside any capture), then record it
    into a ``torch.cuda.CUDAGraph`` on the same buffers; returns the graph (``.replay()`` reruns the launches)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def _triton_decode(state, qt, kt, vt, many, device, reps) -> dict:
    """The fused one-kernel decode step: eager launches, and a CUDA graph replay (inputs copied in, as the
    Decoder's graph mode does)."""
    from . import triton_kernels as tk

    fields = [x.contiguous().clone() for x in (state.sum_kv, state.sum_k, state.key_max)]
    steps = many.steps
    res = {}
    res["triton_step_eager_us"] = time_call(many(lambda: tk.decode_step_triton(*fields, qt, kt, vt)), device,
                                            **reps)["median_ms"] * 1e3 / steps
    static = [x.clone() for x in (qt, kt, vt)]
    out = torch.empty_like(vt)
    graph = capture_graph(lambda: tk.decode_step_triton(*fields, *static, out=out))

    def graphed():
        for dst, src in zip(static, (qt, kt, vt)):
            dst.copy_(src)
        graph.replay()
        return out

    res["triton_step_cuda_graph_us"] = time_call(many(graphed), device, **reps)["median_ms"] * 1e3 / steps

    # The same kernel fed from one packed [q | k | v] buffer, the layout of a fused q/k/v projection: one copy
    # and one replay per token (two host launches instead of four). Kept as raw calls, not the library's
    # Decoder(fused=True) + step_packed (same device work), so the committed H200 figures stay what this measures.
    d_k, d_v = qt.shape[-1], vt.shape[-1]
    packed_in = torch.cat([qt, kt, vt], dim=-1)
    packed = packed_in.clone()
    views = packed.split([d_k, d_k, d_v], dim=-1)
    graph_packed = capture_graph(lambda: tk.decode_step_triton(*fields, *views, out=out))

    def graphed_packed():
        packed.copy_(packed_in)
        graph_packed.replay()
        return out

    res["triton_step_cuda_graph_packed_us"] = time_call(many(graphed_packed), device,
                                                        **reps)["median_ms"] * 1e3 / steps
    # Replay alone: the floor when the producer writes q/k/v straight into the graph's buffers.
    res["triton_step_cuda_graph_replay_us"] = time_call(many(graph_packed.replay), device,
                                                        **reps)["median_ms"] * 1e3 / steps
    return res


def bench_torch_methods(lengths, contexts, device: torch.device, heads: int = 8, d: int = 64, seed: int = 0,
                        decode_steps: int = 200, scan_budget_bytes: int = 40 * 2**30,
                        quick: bool = False) -> dict:
    """The PyTorch methods alone, in float32 at B = 1: prefill time and peak memory, and decode-step latency.

    Prefill, per n: the forward of ``"chunked"`` and of SDPA (softmax), the forward+backward of ``"chunked"``,
    and the forward of the paper's ``"logcumsumexp"`` scan while its ``[B, H, n, d_k, d_v]`` fp32 tensors (about
    three of them) fit ``scan_budget_bytes`` (on values ``|v| + 0.1``); median of 10 calls after 3 warm-up
    calls. Decode, per context L: the streaming :class:`~logattn_ref.recurrent.Decoder` step after a
    prefill of L tokens (eager, and a CUDA-graph replay on a GPU) beside softmax over a float32 KV cache of
    L + 1 tokens; median of 5 timings of ``decode_steps`` steps after one warm-up.

    Returns:
        the JSON of ``benchmarks/results/torch_methods_*.json``: :func:`~logattn_ref.runio.run_environment`'s
        fields at the top level, ``setup``, ``prefill`` (rows ``{"n", "case", "median_ms", "peak_bytes"}``; both
        None after an out-of-memory error; ``peak_bytes`` None off CUDA) and ``decode`` (rows ``{"context",
        "decoder_eager_us", "decoder_cuda_graph_us" (CUDA only), "softmax_kv_cache_us", "state_bytes",
        "kv_cache_bytes"}``).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    prefill_timing = dict(budget_s=0.0, min_reps=10, max_reps=10, warmup=3)
    decode_timing = dict(budget_s=0.0, min_reps=5, max_reps=5, warmup=1)
    if quick:
        prefill_timing = decode_timing = dict(budget_s=0.0, min_reps=2, max_reps=2, warmup=1)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=gen)

    prefill_rows = []
    for n in tqdm(lengths, desc="prefill (PyTorch methods)", disable=None):
        q, k, v = (randn(1, heads, n, d) for _ in range(3))
        cases = {
            "chunked_fwd": lambda: ta.log_attention(q, k, v, method="chunked"),
            "softmax_sdpa_fwd": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        }
        if heads * n * d * d * 4 * 3 <= scan_budget_bytes:
            cases["logcumsumexp_fwd"] = lambda: ta.log_attention(q, k, v.abs() + 0.1, method="logcumsumexp")
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        cases["chunked_fwd_bwd"] = lambda: ta.log_attention(qg, kg, vg, method="chunked").sum().backward()
        for name, fn in cases.items():
            try:
                ms = time_call(fn, device, **prefill_timing)["median_ms"]
                peak = peak_memory(fn, device)
            except torch.OutOfMemoryError:
                ms = peak = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            prefill_rows.append({"n": n, "case": name, "median_ms": ms, "peak_bytes": peak})

    decode_rows = []
    for context in tqdm(contexts, desc="decode (PyTorch methods)", disable=None):
        q, k, v = (randn(1, heads, context, d) for _ in range(3))
        _, state = prefill(initial_state((1, heads), d, d, device=device), q, k, v)
        qt, kt, vt = (randn(1, heads, d) for _ in range(3))
        keys = torch.cat([k, kt[:, :, None]], dim=2)
        values = torch.cat([v, vt[:, :, None]], dim=2)

        def per_step_us(step) -> float:
            def many():
                for _ in range(decode_steps):
                    step()
            return time_call(many, device, **decode_timing)["median_ms"] * 1e3 / decode_steps

        eager = Decoder.from_state(state)
        row = {"context": context, "decoder_eager_us": per_step_us(lambda: eager.step(qt, kt, vt))}
        if device.type == "cuda":
            graphed = Decoder.from_state(state)
            graphed.capture_cuda_graph()
            row["decoder_cuda_graph_us"] = per_step_us(lambda: graphed.step(qt, kt, vt))
        row["softmax_kv_cache_us"] = per_step_us(lambda: F.scaled_dot_product_attention(qt[:, :, None], keys, values))
        row["state_bytes"] = eager.nbytes()
        row["kv_cache_bytes"] = (keys.numel() + values.numel()) * keys.element_size()
        decode_rows.append(row)
    return {
        **run_environment(device),
        "setup": f"B=1, H={heads}, d_k=d_v={d}, float32, causal; chunk_size={ta.DEFAULT_CHUNK_SIZE}",
        "prefill": prefill_rows,
        "decode": decode_rows,
    }


def plot(result: dict, out: Path, stem: str) -> List[Path]:
    """Time and memory against n, decode latency against context: three log-log PNGs; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    prefill = [r for r in result["prefill"] if "error" not in r]
    methods = sorted({r["method"] for r in result["prefill"]})
    for key, label, fname in (
        ("forward_backward", "forward + backward time (ms)", "time"),
        ("peak_bytes_forward_backward", "peak memory, forward + backward (GiB)", "memory"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in methods:
            pts = [(r["n"], r[key]["median_ms"] if key == "forward_backward" else (r[key] or 0) / 2**30)
                   for r in prefill if r["method"] == m and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
            for r in result["prefill"]:
                if r["method"] == m and r.get("error") == "oom":
                    ax.axvline(r["n"], ls=":", color="grey")
        ax.set(xscale="log", yscale="log", xlabel="tokens n", ylabel=label,
               title=f"causal, B={result['config']['batch']}, H={result['config']['heads']}, "
                     f"d={result['config']['d']} ({result['environment']['device']})")
        if ax.lines:
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / f"{stem}_{fname}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    dec = [r for r in result["decode"] if "error" not in r]
    for key in ("decoder_eager_us", "decoder_cuda_graph_us", "triton_step_eager_us", "triton_step_cuda_graph_us",
                "triton_step_cuda_graph_packed_us", "softmax_kv_cache_us"):
        pts = [(r["context"], r[key]) for r in dec if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=key[:-3])
    ax.set(xscale="log", yscale="log", xlabel="context length L", ylabel="time per decoded token (us)",
           title="decode step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / f"{stem}_decode.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _ms(entry: Optional[dict], key: str) -> str:
    timing = (entry or {}).get(key)
    return f"{timing['median_ms']:.2f}" if isinstance(timing, dict) else (entry or {}).get("error", "–")


def markdown_tables(result: dict) -> str:
    """The README's tables, written from a benchmark JSON (so no figure is typed by hand)."""
    env, cfg = result["environment"], result["config"]
    lines = [f"{env['device']}, torch {env['torch']}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
             f"{env['date_utc'][:10]}; causal, batch {cfg['batch']}, {cfg['heads']} heads, d = {cfg['d']}, "
             f"{cfg['dtype'].replace('torch.', '')}; {cfg['timing']}; memory: {cfg['memory']}.", "",
             "| n | method | forward (ms) | forward + backward (ms) | peak memory fwd+bwd (GiB) |",
             "|---:|---|---:|---:|---:|"]
    for entry in result["prefill"]:
        peak = entry.get("peak_bytes_forward_backward")
        memory = f"{peak / 2**30:.3f}" if isinstance(peak, (int, float)) else entry.get("error", "–")
        lines.append(f"| {entry['n']:,} | {entry['method']} | {_ms(entry, 'forward')} | "
                     f"{_ms(entry, 'forward_backward')} | {memory} |")
    lines += ["", "| context | fused step, CUDA graph, packed q/k/v (µs) | fused step, CUDA graph, 3 input copies (µs) "
              "| graph replay alone (µs) | Decoder, CUDA graph (µs) | Decoder, eager (µs) | "
              "softmax + KV cache (µs) | state (KiB) | KV cache (MiB) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def us(value) -> str:
        return f"{value:.1f}" if isinstance(value, (int, float)) else "–"

    for entry in result["decode"]:
        kv = entry.get("kv_cache_bytes")
        lines.append(f"| {entry['context']:,} | {us(entry.get('triton_step_cuda_graph_packed_us'))} | "
                     f"{us(entry.get('triton_step_cuda_graph_us'))} | "
                     f"{us(entry.get('triton_step_cuda_graph_replay_us'))} | "
                     f"{us(entry.get('decoder_cuda_graph_us'))} | {us(entry.get('decoder_eager_us'))} | "
                     f"{us(entry.get('softmax_kv_cache_us'))} | {entry['state_bytes'] / 1024:.0f} | "
                     f"{(kv / 2**20) if isinstance(kv, (int, float)) else float('nan'):.1f} |")
    return "\n".join(lines)


def _slug(device_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m logattn_ref.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", type=Path, default=None, metavar="JSON",
                        help="print the README tables of an existing benchmark JSON and exit")
    parser.add_argument("--torch-methods", action="store_true",
                        help="measure the PyTorch methods alone instead (float32, B = 1, H = 8, d = 64; see "
                             "bench_torch_methods): writes torch_methods_<gpu>.json")
    parser.add_argument("--out", default="benchmarks/results/", help="output folder for JSON and PNGs")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny sizes, wall-clock timers")
    parser.add_argument("--lengths", type=int, nargs="*", default=None)
    parser.add_argument("--contexts", type=int, nargs="*", default=None)
    args = parser.parse_args(argv)
    if args.markdown is not None:
        print(markdown_tables(json.loads(args.markdown.read_text())))
        return {}
    torch.manual_seed(0)
    if args.quick:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        parser.error("the full benchmark needs a CUDA GPU; use --quick for the CPU smoke test")
    else:
        device = torch.device("cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.torch_methods:
        if args.quick:
            result = bench_torch_methods(args.lengths or (33, 64), args.contexts or (32, 128), device, heads=2,
                                         d=16, decode_steps=5, quick=True)
        else:
            result = bench_torch_methods(args.lengths or TORCH_METHODS_LENGTHS,
                                         args.contexts or TORCH_METHODS_CONTEXTS, device)
        path = out / f"torch_methods_{'quick_cpu' if args.quick else _slug(result['device'])}.json"
        write_json(path, result)
        print(f"wrote {path}")
        return result
    if args.quick:
        batch, heads, d, dtype = 1, 2, 16, torch.float32
        lengths, contexts = args.lengths or (33, 64), args.contexts or (32, 128)
    else:
        batch, heads, d, dtype = 2, 8, 64, torch.bfloat16
        lengths, contexts = args.lengths or DEFAULT_LENGTHS, args.contexts or DEFAULT_CONTEXTS
    env = run_environment(device)
    result = {
        "environment": env,
        "config": {"batch": batch, "heads": heads, "d": d, "dtype": str(dtype), "causal": True,
                   "quick": args.quick,
                   "timing": "CUDA events per call, 2 warm-up calls, median of 5-50 calls" if device.type == "cuda"
                   else "wall clock per call, 2 warm-up calls, median of 5-50 calls",
                   "memory": "max_memory_allocated after reset minus allocated before the call (inputs excluded)"},
        "prefill": bench_prefill(lengths, batch, heads, d, device, dtype, quick=args.quick),
        "decode": bench_decode(contexts, batch, heads, d, device, steps=5 if args.quick else 200,
                               quick=args.quick),
    }
    stem = "bench_" + ("quick_cpu" if args.quick else _slug(env["device"]))
    write_json(out / f"{stem}.json", result)
    result["plots"] = [str(p) for p in plot(result, out, stem)]
    print(f"wrote {out / (stem + '.json')} and {len(result['plots'])} plots")
    return result


if __name__ == "__main__":
    main()
