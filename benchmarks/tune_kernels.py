"""Tune the fused Triton kernels' launch on one GPU (issue 15): each variant is checked against a float64
reference first (forward and gradients, ordinary and adversarial inputs), then timed (CUDA events, warm-up,
medians) at the issue's shapes, forward and forward+backward; a profiler breakdown per kernel follows for the
first and the fastest variants. Writes OUT/tune_kernels.json after every variant and prints a table last.

    python benchmarks/tune_kernels.py OUT_DIR [--quick] [--budget-s S]
    python benchmarks/tune_kernels.py --markdown results/tune_kernels_h200.json
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from logattn_ref import triton_kernels as tk
from logattn_ref.bench import capture_graph
from logattn_ref.runio import run_environment, write_json
from logattn_ref.torch_attention import log_attention

SHAPE = dict(batch=2, heads=8, d=64, dtype=torch.bfloat16)
#: (chunk C, sub-block BS, warps, state-pass launch (BKS, BVS, stages, warps), diagonal fallback, scan group); warps
#: None: the library's split (NUM_WARPS forward, BACKWARD_NUM_WARPS backward). The first row is the library's
#: default launch. The runs of 2026-12-02 (results/tune_kernels_h200.json, results/tune_kernels_h200_two_level.json,
#: results/tune_kernels_h200_third.json) tuned the tiles, warps and scans; the third run's profile showed the
#: forward's state scan, per-chunk sums and a torch.cummax taking half the forward, so the state is now built by
#: passes that read the keys and values themselves (no per-chunk sums stored, no cummax, no fix-up pass). The fourth
#: run (results/tune_kernels_h200_passes.json) timed that pipeline's own launch (group size, tiles, stages, warps),
#: C = 128 (half the states), 8 warps and the one-level form, as listed here; the first row stayed the default.
SCAN = (None, None, 2, 4)
BASE = (64, 64, None, SCAN, "loop", 16)
VARIANTS = [BASE, (64, 64, None, SCAN, "loop", 32), (64, 64, None, SCAN, "loop", 8),
            (64, 64, None, (32, None, 2, 4), "loop", 16), (64, 64, None, (None, None, 3, 8), "loop", 16),
            (64, 64, 8, SCAN, "loop", 16), (128, 64, 4, SCAN, "loop", 16), (64, 64, None, SCAN, "loop", 0)]


def _apply(variant):
    """Set the module-level launch choices a variant names; returns (C, BS, warps)."""
    tk.SCAN_LAUNCH = tuple(variant[3])
    tk.DIAG_FALLBACK = variant[4] if len(variant) > 4 else "tile"
    tk.SCAN_GROUP = variant[5] if len(variant) > 5 else 0
    return variant[0], variant[1], variant[2]


def _variant(row):
    return (row["chunk"], row["sub_block"], row["warps"], tuple(row["scan"]), row.get("fallback", "tile"),
            row.get("group", 0))


def rel(a, b):
    return float((a.double() - b).norm() / b.norm())


def check(variant, device):
    """Relative errors of y, dq, dk, dv against the float64 chunked form at odd n, fp32 and bf16, with one key
    1000 above the rest in the adversarial case."""
    C, BS, warps = _apply(variant)
    out = []
    for n, scale, dtype, spike in ((4099, 1.0, torch.float32, False), (777, 10.0, torch.float32, True),
                                   (2048, 1.0, torch.bfloat16, False)):
        g = torch.Generator(device=device).manual_seed(n)
        q, k, v = (torch.randn(1, 3, n, 64, device=device, generator=g, dtype=torch.float64) * scale
                   for _ in range(3))
        if spike:
            k[..., n // 3, 5] += 1000.0
        xs = [x.to(dtype).requires_grad_(True) for x in (q, k, v)]
        y = tk.log_attention_triton(*xs, chunk_size=C, sub_block=BS, num_warps=warps)
        dy = torch.randn(y.shape, device=device, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(y, xs, dy.to(dtype))
        refs = [x.detach().double().requires_grad_(True) for x in xs]
        y64 = log_attention(*refs, method="chunked")
        r = torch.autograd.grad(y64, refs, dy)
        out.append(dict(n=n, scale=scale, dtype=str(dtype), spike=spike, y=rel(y, y64),
                        **{f"d{name}": rel(a, b) for name, a, b in zip("qkv", grads, r)}))
    return out


def timed(fn, warmup=5, iters=25):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def inputs(n, device):
    g = torch.Generator(device=device).manual_seed(1)
    shape = (SHAPE["batch"], SHAPE["heads"], n, SHAPE["d"])
    return [torch.randn(shape, device=device, generator=g).to(SHAPE["dtype"]).requires_grad_(True) for _ in range(3)]


def measure(variant, n, device):
    C, BS, warps = _apply(variant)
    q, k, v = inputs(n, device)
    dy = torch.randn(q.shape[:-1] + (SHAPE["d"],), device=device).to(SHAPE["dtype"])
    run = lambda: tk.log_attention_triton(q, k, v, chunk_size=C, sub_block=BS, num_warps=warps)  # noqa: E731
    with torch.no_grad():
        fwd = timed(run)
    torch.cuda.reset_peak_memory_stats()
    both = timed(lambda: torch.autograd.grad(run(), (q, k, v), dy))
    return dict(fwd_ms=fwd, fwd_bwd_ms=both, peak_bytes=torch.cuda.max_memory_allocated())


def measure_peers(n, device):
    """The same timings for the peers of bench.py, each in its own layout (bench.prefill_inputs): fla's
    chunk_linear_attn (when installed) and SDPA."""
    from logattn_ref import bench

    methods = bench._methods(device, quick=False)
    rows = {}
    for name in ("fla_chunk_linear_attn", "sdpa"):
        if name not in methods:
            continue
        q, k, v, dy = bench.prefill_inputs(name, SHAPE["batch"], SHAPE["heads"], n, SHAPE["d"], device,
                                           SHAPE["dtype"], torch.Generator(device=device).manual_seed(1))
        fn = methods[name]
        try:
            with torch.no_grad():
                fwd = timed(lambda: fn(q, k, v))
            both = timed(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), dy))
            rows[name] = dict(fwd_ms=fwd, fwd_bwd_ms=both)
        except Exception as err:
            rows[name] = dict(error=f"{type(err).__name__}: {err}"[:200])
    return rows


def breakdown(variant, n, device):
    """CUDA time per kernel (ms per forward+backward) from torch.profiler."""
    C, BS, warps = _apply(variant)
    q, k, v = inputs(n, device)
    dy = torch.randn(q.shape[:-1] + (SHAPE["d"],), device=device).to(SHAPE["dtype"])
    step = lambda: torch.autograd.grad(tk.log_attention_triton(q, k, v, chunk_size=C, sub_block=BS,  # noqa: E731
                                                              num_warps=warps), (q, k, v), dy)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    iters = 10
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t:
            rows[e.key] = t / 1e3 / iters
    return dict(sorted(rows.items(), key=lambda kv: -kv[1])[:12])


def decode_probe(device):
    """Where a decode step's time goes at batch 1 and 64 (8 heads, d = 64): one step per graph replay, and the
    per-step time inside a graph of 32 captured steps (the kernel without the replay's launch)."""
    rows = []
    for batch in (1, 64):
        bh = batch * 8
        g = torch.Generator(device=device).manual_seed(batch)
        fields = [torch.randn(bh, 64, 64, device=device, generator=g), torch.rand(bh, 64, device=device, generator=g),
                  torch.randn(bh, 64, device=device, generator=g)]
        qkv = [torch.randn(bh, 64, device=device, generator=g).to(torch.bfloat16) for _ in range(3)]
        out = torch.empty_like(qkv[2])

        def steps_of(count):
            def run():
                for _ in range(count):
                    tk.decode_step_triton(*fields, *qkv, out=out)
            return run
        graphs = {steps: capture_graph(steps_of(steps)) for steps in (1, 32)}
        row = dict(batch=batch, heads=8, d=64, state_bytes=sum(f.numel() * 4 for f in fields),
                   replay_1_us=timed(graphs[1].replay) * 1e3,
                   in_graph_per_step_us=timed(graphs[32].replay) * 1e3 / 32,
                   eager_us=timed(lambda: tk.decode_step_triton(*fields, *qkv, out=out)) * 1e3)
        for warps in sorted({1, 2, 4, 8} - {tk.DECODE_NUM_WARPS}):  # the decode kernel's warps (above: the default)
            tk.DECODE_NUM_WARPS, default = warps, tk.DECODE_NUM_WARPS
            graph = capture_graph(steps_of(32))
            row[f"in_graph_per_step_us_{warps}_warps"] = timed(graph.replay) * 1e3 / 32
            tk.DECODE_NUM_WARPS = default
        for T in (4, 16, 64):  # T known tokens per launch (decode_tokens_triton), one graph replay each
            many = [torch.randn(bh, T, 64, device=device, generator=g).to(torch.bfloat16) for _ in range(3)]
            out_t = torch.empty_like(many[2])
            graph = capture_graph(lambda: tk.decode_tokens_triton(*fields, *many, out=out_t))
            row[f"tokens_{T}_replay_per_token_us"] = timed(graph.replay) * 1e3 / T
        rows.append(row)
    return rows


def markdown_table(payload: dict) -> str:
    """The timed variants as a Markdown table (what benchmarks/README.md shows; a test checks it is pasted)."""
    lengths = sorted({int(key) for r in payload["results"] for key in r if key.isdigit()})
    env = payload["environment"]
    lines = [f"{env['gpu']}, {env['date_utc'][:10]}, torch {env['torch']}, triton {env['triton']}; "
             f"{payload['shape']['dtype'].replace('torch.', '')}, B = {payload['shape']['batch']}, "
             f"H = {payload['shape']['heads']}, d = {payload['shape']['d']}; median ms of 25 calls.", "",
             "| C | BS | warps | scan (rows, columns, stages, warps) | scan group | float64 check | "
             + " | ".join(f"{n // 1024}K fwd | {n // 1024}K fwd+bwd" for n in lengths) + " |",
             "|---:|---:|---:|---|---:|---|" + "---:|---:|" * len(lengths)]
    for r in payload["results"]:
        scan = ", ".join("–" if x is None else str(x) for x in r["scan"])
        if r.get("fallback", "tile") != "tile":
            scan += f"; {r['fallback']} fallback"
        times = " | ".join(f"{r[str(n)]['fwd_ms']:.2f} | {r[str(n)]['fwd_bwd_ms']:.2f}" if str(n) in r else "– | –"
                           for n in lengths)
        check = "error" if "error" in r else ("passed" if r.get("ok") else "FAILED")
        used = r.get("warps_used")  # (forward, backward) as run; older rows name both in "warps"
        warps = r["warps"] if r["warps"] is not None else f"{used[0]} fwd, {used[1]} bwd"
        group = r.get("group", 0) or "one level"
        lines.append(f"| {r['chunk']} | {r['sub_block']} | {warps} | {scan} | {group} | {check} | {times} |")
    dash = any(x is None for r in payload["results"] for x in r["scan"])
    if payload.get("state_pipeline") == "passes":
        lines += ["", "State passes (the kernels since the third run): the group's own sums, a walk over the groups "
                  "and a pass storing each chunk's state, each reading the keys and values itself; scan group: "
                  "chunks a group (`SCAN_GROUP`), one level: one pass over all chunks."
                  + (" A – in the scan column: the whole BK or BV." if dash else "")]
    else:
        lines += ["", "Scan group: chunks a group of the two-level state scans (`SCAN_GROUP`); one level: the scan "
                  "over all chunks."
                  + (" A – in the scan column: the launch before the first tuning (BKS from `_dims`, 32 rows for "
                     "d = 64; all value columns)." if dash else "")]
    return "\n".join(lines)


def main(argv):
    if argv and argv[0] == "--markdown":
        print(markdown_table(json.loads(Path(argv[1]).read_text())))
        return 0
    out = Path(argv[0])
    quick = "--quick" in argv
    # --budget-s S: start no variant after S seconds, so the breakdown, peers and decode probe still run
    budget = float(argv[argv.index("--budget-s") + 1]) if "--budget-s" in argv else float("inf")
    device = torch.device("cuda")
    lengths = (1024,) if quick else (16384, 65536)
    variants = VARIANTS[:2] if quick else VARIANTS
    payload = dict(environment=run_environment(), shape={k: str(v) for k, v in SHAPE.items()}, results=[],
                   not_run=[], state_pipeline="passes")
    t0 = time.perf_counter()
    for variant in variants:
        if time.perf_counter() - t0 > budget:
            payload["not_run"].append([variant[0], variant[1], variant[2], list(variant[3])] + list(variant[4:]))
            write_json(out / "tune_kernels.json", payload)
            continue
        row = dict(chunk=variant[0], sub_block=variant[1], warps=variant[2], scan=list(variant[3]),
                   fallback=variant[4] if len(variant) > 4 else "tile", group=variant[5] if len(variant) > 5 else 0,
                   warps_used=[variant[2] or tk.NUM_WARPS, variant[2] or tk.BACKWARD_NUM_WARPS])
        try:
            t = time.perf_counter()
            row["check"] = check(variant, device)
            row["check_s"] = time.perf_counter() - t
            worst = max(max(c[x] for x in ("y", "dq", "dk", "dv")) for c in row["check"] if c["dtype"].endswith("32"))
            row["ok"] = bool(worst < 1e-4) and all(all(c[x] < 2e-2 for x in ("y", "dq", "dk", "dv"))
                                                     for c in row["check"])
            for n in lengths:
                row[str(n)] = measure(variant, n, device)
        except Exception as err:  # recorded, the next variant runs
            row["error"] = f"{type(err).__name__}: {err}"[:400]
        payload["results"].append(row)
        print(json.dumps(row)[:300], f"({time.perf_counter() - t0:.0f} s)", flush=True)
        write_json(out / "tune_kernels.json", payload)
    timed_rows = [r for r in payload["results"] if r.get("ok") and str(lengths[-1]) in r]
    best = min(timed_rows, key=lambda r: r[str(lengths[-1])]["fwd_bwd_ms"]) if timed_rows else None
    for name, r in (("first", payload["results"][0]), ("fastest", best)):
        if r is not None and "error" not in r:
            payload[f"breakdown_{name}"] = breakdown(_variant(r), lengths[-1], device)
    _apply(BASE)
    payload["peers"] = {str(n): measure_peers(n, device) for n in lengths}
    print("peers", payload["peers"], flush=True)
    try:
        payload["decode"] = decode_probe(device)
    except Exception as err:
        payload["decode"] = f"{type(err).__name__}: {err}"[:400]
    payload["seconds"] = time.perf_counter() - t0
    write_json(out / "tune_kernels.json", payload)
    print(f"{'C':>4} {'BS':>3} {'w':>2} {'scan':>18} {'ok':>3} " +
          " ".join(f"{n:>7}f {n:>7}fb" for n in lengths))
    for r in payload["results"]:
        cells = " ".join(f"{r[str(n)]['fwd_ms']:8.3f} {r[str(n)]['fwd_bwd_ms']:9.3f}" if str(n) in r else " " * 18
                         for n in lengths)
        print(f"{r['chunk']:>4} {r['sub_block']:>3} {str(r['warps']):>4} {str(r['scan']):>18} g{r.get('group', 0):<3} "
              f"{'y' if r.get('ok') else 'N':>3} {cells} {r.get('error', '')[:60]}")
    print("decode", payload["decode"])
    for name in ("breakdown_first", "breakdown_fastest"):
        if name in payload:
            print(name, {k[:40]: round(v, 3) for k, v in payload[name].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
