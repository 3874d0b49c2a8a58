"""The three-arm GPU run: softmax, log and log-signed on the ``shakespeare`` preset, same seed/steps/tokens.

    python benchmarks/train_shakespeare.py --out OUT --budget-s 480

Within a wall-clock budget on ONE GPU:

1. probe: the three arms train concurrently for a few steps; their measured step times give the number of
   steps that fits the budget (capped at the preset's 5000). The cosine schedule needs the step count up
   front, so it is fixed here, once, for all arms.
2. train: the three arms run concurrently (three processes on the one GPU), each writing metrics.jsonl;
   if the budget runs out they are stopped and what they logged is kept.
3. measure, one arm at a time on the idle GPU: training tokens/s alone (a short run), and decode latency
   (median per token, batch 1) after 256, 4096 and 65536 tokens of context, from each arm's best checkpoint.
4. write OUT/train_shakespeare.json: GPU name, versions, date, the settings, per-arm curves and numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from logattn_ref.model import ATTENTIONS  # noqa: E402
from logattn_ref.runio import run_environment, write_json  # noqa: E402

def _launch(arm: str, steps: int, out: Path, log: Path, seed: int, preset: str, method: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "logattn_ref.train", "--attention", arm, "--preset", preset,
           "--attention-method", method,
           "--steps", str(steps), "--seed", str(seed), "--out", str(out), "--no-progress", "--no-resume"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _records(path: Path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait(procs, deadline: float) -> bool:
    """Wait for all; kill the rest at the deadline. True if all finished on their own."""
    while time.time() < deadline:
        if all(p.poll() is not None for p in procs.values()):
            return True
        time.sleep(1.0)
    for p in procs.values():
        if p.poll() is None:
            p.kill()
    for p in procs.values():
        p.wait()
    return False


def plot(report: dict, png: Path) -> None:
    """Validation curves, training curves and decode latency of a report, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arm, entry in report["arms"].items():
        curve = entry["train_curve"]
        axes[0].plot([c[0] for c in curve], [c[1] for c in curve], lw=0.8, label=arm)
        evals = entry["evals"]
        axes[1].plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", label=arm)
        rows = entry.get("decode_latency") or []
        if rows:
            axes[2].plot([r["context"] for r in rows], [r["median_s"] * 1e3 for r in rows], "o-", label=arm)
    axes[0].set(title="training loss", xlabel="step", ylabel="nats")
    axes[1].set(title="validation loss", xlabel="step", ylabel="nats")
    axes[2].set(title="decode latency, batch 1", xlabel="tokens in context", ylabel="ms / token (median)",
                xscale="log")
    for ax in axes:
        ax.legend()
    fig.suptitle(f"{report.get('gpu', 'cpu')}, {report['date_utc']}, {report['steps']} steps, preset "
                 f"{report.get('preset', {}).get('name', 'shakespeare')}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def markdown_table(report: dict) -> str:
    """The README's table, written from a report (so no figure is typed by hand)."""
    cfg = report["preset"]
    model, train_cfg = cfg["model"], cfg["train"]
    lines = [f"{report.get('gpu', 'cpu')}, torch {report['torch']}, {report['date_utc'][:10]}; preset `{cfg['name']}` "
             f"({model['n_layer']} layers, {model['n_head']} heads, {model['n_embd']} wide, context "
             f"{model['block_size']}, batch {train_cfg['batch_size']}, AdamW {train_cfg['lr']:g}, dropout "
             f"{model['dropout']:g}), seed {report['seed']}, {report['steps']} steps for every arm, log arms' "
             f"method `{report['attention_method']}`; {report['concurrency']}.", "",
             "| arm | best val loss (step) | vs softmax | tokens/s alone | wall time (shared GPU) | "
             "decode ms/token at " + " / ".join(f"{r['context']:,}" for r in
                                                 report["arms"]["softmax"].get("decode_latency", [])) +
             " context | peak memory at the longest |", "|---|---:|---:|---:|---:|---:|---:|"]
    base = report["arms"]["softmax"]["best_val_loss"]
    for arm, e in report["arms"].items():
        best = min(e["evals"], key=lambda r: r["val_loss"])
        rel = "—" if arm == "softmax" else f"{100 * (e['best_val_loss'] / base - 1):+.1f}%"
        lat = e.get("decode_latency") or []
        lines.append(f"| {arm} | {e['best_val_loss']:.3f} ({best['step']}) | {rel} | "
                     f"{e.get('tokens_per_s_alone', 0) / 1e3:.0f}k | {e['wall_s']:.0f} s | "
                     + " / ".join(f"{r['median_s'] * 1e3:.1f}" for r in lat)
                     + f" | {lat[-1]['peak_bytes'] / 2**30:.2f} GiB |" if lat else " – | – |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--plot-only", action="store_true", help="redraw OUT/train_shakespeare.png from its JSON")
    parser.add_argument("--markdown", action="store_true", help="print the README table of OUT's JSON and exit")
    parser.add_argument("--work", default="/tmp/logattn_runs", help="checkpoints (too big to bring back)")
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--measure-s", type=float, default=75.0, help="reserved for step 3")
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--probe-deadline-s", type=float, default=120.0)
    parser.add_argument("--min-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--preset", default="shakespeare", help="another preset only to try the script out")
    parser.add_argument("--contexts", default="256,4096,65536")
    parser.add_argument("--attention-method", default="chunked",
                        help="the log arms' method; chunked (pure PyTorch) by default: tested, autograd")
    args = parser.parse_args()
    t0 = time.time()
    out, work = Path(args.out), Path(args.work)
    if args.markdown:
        print(markdown_table(json.loads((out / "train_shakespeare.json").read_text())))
        return 0
    if args.plot_only:
        plot(json.loads((out / "train_shakespeare.json").read_text()), out / "train_shakespeare.png")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    report = {
        "what": "three-arm char-level Shakespeare run (logattn_ref.train, preset 'shakespeare')",
        **run_environment(),  # gpu (on a GPU), device, torch, triton, python, date_utc, ...
        "seed": args.seed,
        "attention_method": args.attention_method,
        "concurrency": "the three arms trained at the same time as three processes on the one GPU",
        "arms": {},
    }
    # 1. probe
    procs = {a: _launch(a, args.probe_steps, work / f"probe_{a}", out / f"probe_{a}.log", args.seed, args.preset, args.attention_method) for a in ATTENTIONS}
    _wait(procs, t0 + args.probe_deadline_s)
    from logattn_ref.train import preset as preset_config

    probe_model, probe_train = preset_config(args.preset)
    tokens_per_step = probe_train.batch_size * probe_model.block_size
    report["preset"] = {"name": args.preset, "model": dataclasses.asdict(probe_model),
                        "train": dataclasses.asdict(probe_train)}
    step_s = {}
    for arm in ATTENTIONS:
        recs = [r for r in _records(work / f"probe_{arm}" / "metrics.jsonl") if "tokens_per_s" in r]
        recs = recs[1:] or recs  # the first logged interval holds the warm-up (CUDA context, autotuning)
        if not recs:
            print((out / f"probe_{arm}.log").read_text()[-3000:])
            raise SystemExit(f"probe of {arm} logged nothing")
        step_s[arm] = max(tokens_per_step / r["tokens_per_s"] for r in recs)
    train_s = args.budget_s - (time.time() - t0) - args.measure_s
    slowest = max(step_s.values())
    steps = max(args.min_steps, int(min(args.max_steps, 0.88 * train_s / slowest) // 100 * 100))
    report["probe_step_s_concurrent"] = step_s
    report["steps"] = steps
    report["steps_note"] = (f"{steps} steps: the most that fit the device-time budget at the probed concurrent step "
                            f"time of the slowest arm ({slowest * 1e3:.1f} ms)" if steps < args.max_steps else
                            "the preset's full 5000 steps")
    print(json.dumps({"probe_step_s": step_s, "steps": steps, "train_s": train_s}), flush=True)

    # 2. train
    t_train = time.time()
    procs = {a: _launch(a, steps, work / a, out / f"train_{a}.log", args.seed, args.preset, args.attention_method) for a in ATTENTIONS}
    finished = _wait(procs, t0 + args.budget_s - args.measure_s + 20)
    report["all_finished"] = finished
    for arm in ATTENTIONS:
        recs = _records(work / arm / "metrics.jsonl")
        summary_path = work / arm / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        evals = [r for r in recs if "val_loss" in r]
        rates = [r["tokens_per_s"] for r in recs if "tokens_per_s" in r and r["step"] > 20]
        report["arms"][arm] = {
            "wall_s": summary.get("wall_s", time.time() - t_train),
            "steps_done": max([r["step"] for r in recs], default=0),
            "parameters": summary.get("parameters"),
            "precision": summary.get("precision"),
            "best_val_loss": min([r["val_loss"] for r in evals], default=None),
            "tokens_per_s_concurrent_median": sorted(rates)[len(rates) // 2] if rates else None,
            "evals": evals,
            "train_curve": [[r["step"], r["loss"]] for r in recs if "loss" in r],
        }
    print(json.dumps({a: {k: v for k, v in r.items() if k not in ("evals", "train_curve")}
                      for a, r in report["arms"].items()}), flush=True)
    write_json(out / "train_shakespeare.json", report)

    # 3. measure, one arm at a time
    from logattn_ref.data import shakespeare_dataset
    from logattn_ref.generate import decode_latency, sample_text
    from logattn_ref.train import load_model, preset, train

    data = shakespeare_dataset()
    for arm in ATTENTIONS:
        entry = report["arms"][arm]
        try:
            mc, tc = preset(args.preset, arm, data.vocab_size, max_steps=30, attention_method=args.attention_method, log_interval=10, eval_interval=1000,
                            eval_iters=1, checkpoint_interval=1000, seed=args.seed)
            solo = train(mc, tc, data, None, progress=False)
            entry["tokens_per_s_alone"] = [r["tokens_per_s"] for r in solo["history"] if "tokens_per_s" in r][-1]
            del solo
            # The colab preset's throughput here, alone: the basis of its T4 time estimate.
            mc, tc = preset("colab", arm, data.vocab_size, max_steps=30, attention_method=args.attention_method, log_interval=10, eval_interval=1000,
                            eval_iters=1, checkpoint_interval=1000, seed=args.seed)
            solo = train(mc, tc, data, None, progress=False)
            entry["colab_preset_tokens_per_s_alone"] = [
                r["tokens_per_s"] for r in solo["history"] if "tokens_per_s" in r][-1]
            del solo
            best = work / arm / "best.pt"
            if best.exists():
                device = "cuda" if torch.cuda.is_available() else "cpu"
                model = load_model(best, device)
                contexts = [int(c) for c in args.contexts.split(",")]
                entry["decode_latency"] = decode_latency(model, contexts, steps=48, warmup=8,
                                                         autocast_dtype=torch.bfloat16 if device == "cuda" else None)
                entry["sample"] = sample_text(model, data.tokenizer, "ROMEO:\n", 300, seed=args.seed)
                del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as err:  # keep what was measured for the other arms
            entry["measure_error"] = f"{type(err).__name__}: {err}"
        print(arm, json.dumps({k: entry.get(k) for k in ("tokens_per_s_alone", "colab_preset_tokens_per_s_alone", "decode_latency")}), flush=True)
        write_json(out / "train_shakespeare.json", report)
    report["total_s"] = time.time() - t0
    write_json(out / "train_shakespeare.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
