"""Time and peak memory of the PyTorch methods of logattn_ref.torch_attention on a CUDA GPU; decode-step latency.

    python benchmarks/bench_torch_methods.py --out benchmarks/results/torch_methods_<gpu>.json

Forward (and forward+backward for "chunked") of causal attention at B*H = 8 heads, d_k = d_v = 64, fp32, for
growing n; SDPA (softmax) as the baseline. The paper's "logcumsumexp" scan is run only while its predicted
[B, H, n, d_k, d_v] tensor fits a budget. Then the streaming Decoder's step latency against context length
(eager and CUDA-graph replay) beside a softmax KV-cache step at the same context. CUDA events, warm-up, medians,
peak memory from torch.cuda.max_memory_allocated, fresh random inputs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics

import torch
import torch.nn.functional as F

from logattn_ref import torch_attention as ta


def _time_ms(fn, warmup: int = 3, reps: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench_prefill(lengths, heads=8, d=64, scan_budget=40 * 2**30):
    rows = []
    for n in lengths:
        q, k, v = (torch.randn(1, heads, n, d, device="cuda") for _ in range(3))
        cases = {
            "chunked_fwd": lambda: ta.log_attention(q, k, v, method="chunked"),
            "softmax_sdpa_fwd": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        }
        if heads * n * d * d * 4 * 3 <= scan_budget:  # the scan holds a few [B,H,n,d_k,d_v] fp32 tensors
            cases["logcumsumexp_fwd"] = lambda: ta.log_attention(q, k, v.abs() + 0.1, method="logcumsumexp")
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

        def fwd_bwd():
            ta.log_attention(qg, kg, vg, method="chunked").sum().backward()

        cases["chunked_fwd_bwd"] = fwd_bwd
        for name, fn in cases.items():
            try:
                ms = _time_ms(fn)
                peak = _peak_bytes(fn)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                ms, peak = None, None
            rows.append({"n": n, "case": name, "median_ms": ms, "peak_bytes": peak})
            print(rows[-1], flush=True)
    return rows


def bench_decode(contexts, heads=8, d=64, steps=200):
    rows = []
    for ctx in contexts:
        q, k, v = (torch.randn(1, heads, ctx, d, device="cuda") for _ in range(3))
        _, state = ta.prefill(ta.initial_state((1, heads), d, d, device="cuda"), q, k, v)
        qt, kt, vt = (torch.randn(1, heads, d, device="cuda") for _ in range(3))
        eager = ta.Decoder.from_state(state)
        graphed = ta.Decoder.from_state(state)
        graphed.capture_cuda_graph()
        keys = torch.cat([k, kt[:, :, None]], dim=2)
        values = torch.cat([v, vt[:, :, None]], dim=2)

        def run(fn):
            def many():
                for _ in range(steps):
                    fn()
            return _time_ms(many, warmup=1, reps=5) * 1000 / steps  # microseconds per step

        rows.append({
            "context": ctx,
            "decoder_eager_us": run(lambda: eager.step(qt, kt, vt)),
            "decoder_cuda_graph_us": run(lambda: graphed.step(qt, kt, vt)),
            "softmax_kv_cache_us": run(lambda: F.scaled_dot_product_attention(qt[:, :, None], keys, values)),
            "state_bytes": eager.nbytes(),
            "kv_cache_bytes": (keys.numel() + values.numel()) * 4,
        })
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 4096, 65536])
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "setup": "B=1, H=8, d_k=d_v=64, float32, causal; chunk_size=64",
        "prefill": bench_prefill(args.lengths),
        "decode": bench_decode(args.contexts),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
