"""GPU check and block-size sweep of logattn_ref.triton_kernels (one device call): correctness against the
float64 chunked method on the GPU, then forward / forward+backward medians (triton.testing.do_bench) for
chunk sizes and warp counts at B=2, H=8, d=64, bf16. Writes JSON to --out."""

from __future__ import annotations

import argparse
import time

import torch
import triton
import torch.nn.functional as F

from logattn_ref import torch_attention as ta
from logattn_ref import triton_kernels as tk
from logattn_ref.runio import run_environment, write_json


def correctness():
    rows = []
    torch.manual_seed(0)
    for (n, scale, dtype) in [(1, 1, torch.float32), (37, 1, torch.float32), (1000, 3, torch.float32),
                              (4099, 10, torch.float32), (777, 1000, torch.float32), (2048, 1, torch.bfloat16)]:
        q, k = (torch.randn(2, 3, n, 64, device="cuda", dtype=torch.float64) * scale for _ in range(2))
        v = torch.randn(2, 3, n, 64, device="cuda", dtype=torch.float64)
        if n > 5:
            k[..., n // 2 + 3, :] += 1e3 if scale <= 10 else 0  # the later-larger key inside a chunk
        dy = torch.randn_like(v)
        q, k, v = (x.to(dtype).double() for x in (q, k, v))  # the reference sees the rounded inputs
        ref = [x.clone().requires_grad_() for x in (q, k, v)]
        y_ref = ta.log_attention(*ref, method="chunked")
        y_ref.backward(dy)
        ins = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        y = tk.log_attention_triton(*ins)
        y.backward(dy.to(dtype))
        vmax = v.abs().max()
        row = dict(n=n, scale=scale, dtype=str(dtype), fwd=((y.double() - y_ref).abs().max() / vmax).item())
        for name, a, b in zip("qkv", ins, ref):
            row["d" + name] = ((a.grad.double() - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-3)).item()
        print(row, flush=True)
        rows.append(row)
    return rows


def sweep(lengths):
    rows = []
    for n in lengths:
        q, k, v = (torch.randn(2, 8, n, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        dy = torch.randn_like(v)
        for C in (64, 128):
            for warps in (2, 4):
                try:
                    fwd = triton.testing.do_bench(lambda: tk.log_attention_triton(q, k, v, chunk_size=C, num_warps=warps))
                    def fb():
                        y = tk.log_attention_triton(q, k, v, chunk_size=C, num_warps=warps)
                        torch.autograd.grad(y, (q, k, v), dy)
                    both = triton.testing.do_bench(fb)
                except Exception as exc:  # a configuration that does not compile is recorded, not fatal
                    fwd = both = repr(exc)[:200]
                row = dict(n=n, C=C, warps=warps, fwd_ms=fwd, fwd_bwd_ms=both)
                print(row, flush=True)
                rows.append(row)
        def sd():
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(y, (q, k, v), dy)
        rows.append(dict(n=n, method="sdpa", fwd_bwd_ms=triton.testing.do_bench(sd)))
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="tune.json")
    a = p.parse_args()
    t = time.time()
    res = dict(run_environment("cuda"), correctness=correctness())  # gpu, torch, triton, date_utc, ...
    res["sweep"] = sweep([16384, 65536])
    res["seconds"] = time.time() - t
    write_json(a.out, res)
