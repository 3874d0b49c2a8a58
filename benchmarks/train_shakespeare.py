"""The language-model comparison on one GPU: four arms x several seeds, same data, steps, batches and seeds.

    python benchmarks/train_shakespeare.py --out OUT --budget-s 540 [--seeds 0 1 2]

Arms (:data:`ARMS`), all on the ``shakespeare`` preset of :mod:`logattn_ref.train` (nanoGPT's shakespeare-char
model and optimiser, the schedule ending at 2000 steps):

- ``softmax-pos``: softmax attention with learned absolute positions and no token shift: nanoGPT's model, the
  strongest softmax baseline at the training context;
- ``softmax``: softmax with the token shift that the log arms use (no position table);
- ``log`` and ``log-signed``: the paper's attention (log space, V > 0) and the course's any-sign form.

Within a wall-clock budget on ONE GPU:

1. probe: every (arm, seed) run starts at once for a few steps; the slowest measured step time says whether the
   preset's steps fit the budget. If they do not, fewer steps are used for every run alike (recorded).
2. train: all runs concurrently (one process each on the one GPU), each writing metrics.jsonl; a run still
   going at the deadline is stopped and marked unfinished (its numbers are then not summarised).
3. measure, one arm at a time on the idle GPU: training tokens/s alone (a short run) for this preset and the
   ``colab`` preset (the basis of that preset's T4 estimate in train.py), and a text sample from seed 0's best
   checkpoint. Decoding speed is measured separately, by ``python -m logattn_ref.decode``.
4. write OUT/train_shakespeare.json: GPU name, versions, date, the recipe, every run's curves, and per arm the
   mean and standard deviation over seeds of the final and of the best validation loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from logattn_ref.runio import run_environment, write_json  # noqa: E402

#: arm name -> the model settings that make it (everything else is the preset's, identical across arms)
ARMS: Dict[str, dict] = {
    "softmax-pos": dict(attention="softmax", position="learned"),
    "softmax": dict(attention="softmax", position="shift"),
    "log": dict(attention="log", position="shift"),
    "log-signed": dict(attention="log-signed", position="shift"),
}
SOFTMAX_ARMS = ("softmax-pos", "softmax")


def _launch(arm: str, seed: int, steps: int, out: Path, log: Path, preset: str, method: str) -> subprocess.Popen:
    settings = ARMS[arm]
    cmd = [sys.executable, "-m", "logattn_ref.train", "--attention", settings["attention"], "--position",
           settings["position"], "--preset", preset, "--attention-method", method, "--steps", str(steps),
           "--seed", str(seed), "--out", str(out), "--no-progress", "--no-resume"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _records(path: Path) -> List[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait(procs: dict, deadline: float) -> bool:
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


def mean_std(values: List[float]) -> dict:
    """``{"mean", "std", "n"}`` of ``values``; ``std`` is the sample standard deviation (n - 1), None for n < 2."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values must hold at least one number, got none")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def run_summary(records: List[dict], steps: int) -> dict:
    """One run's numbers from its metrics.jsonl records: evaluations, a training curve, final and best loss.

    ``finished`` is True only if the run evaluated at its last step (``steps``): only then is ``final_val_loss``
    the end of the schedule.
    """
    evals = [r for r in records if "val_loss" in r]
    final = max(evals, key=lambda r: r["step"]) if evals else None
    best = min(evals, key=lambda r: r["val_loss"]) if evals else None
    return {
        "steps_done": max([r["step"] for r in records], default=0),
        "finished": bool(final and final["step"] == steps),
        "final_val_loss": final["val_loss"] if final else None,
        "final_train_loss": final["train_loss"] if final else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_step": best["step"] if best else None,
        "evals": [{k: r[k] for k in ("step", "train_loss", "val_loss")} for r in evals],
        "train_curve": [[r["step"], round(r["loss"], 5)] for r in records if "loss" in r],
    }


def summarise_arms(report: dict) -> dict:
    """Per arm: mean/std over its finished seeds of the final and best validation loss; the strongest softmax
    arm (lowest mean final loss) and every arm's gap to it in percent. Unfinished runs are left out and counted."""
    summary = {}
    for arm, entry in report["arms"].items():
        done = [r for r in entry["runs"] if r["finished"]]
        summary[arm] = {"finished_runs": len(done), "unfinished_runs": len(entry["runs"]) - len(done)}
        if done:
            summary[arm]["final_val_loss"] = mean_std([r["final_val_loss"] for r in done])
            summary[arm]["best_val_loss"] = mean_std([r["best_val_loss"] for r in done])
    softmax = [a for a in SOFTMAX_ARMS if "final_val_loss" in summary.get(a, {})]
    if softmax:
        strongest = min(softmax, key=lambda a: summary[a]["final_val_loss"]["mean"])
        base = summary[strongest]["final_val_loss"]["mean"]
        for arm, s in summary.items():
            if "final_val_loss" in s:
                s["gap_to_strongest_softmax_pct"] = 100.0 * (s["final_val_loss"]["mean"] / base - 1.0)
        return {"arms": summary, "strongest_softmax": strongest}
    return {"arms": summary, "strongest_softmax": None}


def plot(report: dict, png: Path) -> None:
    """Validation loss over steps per arm (mean over seeds, a band of +- one std, each seed faint) and the final
    validation loss per arm with every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    names = list(report["arms"])
    for i, arm in enumerate(names):
        runs = [r for r in report["arms"][arm]["runs"] if r["finished"]]
        if not runs:
            continue
        color = f"C{i}"
        steps = [e["step"] for e in runs[0]["evals"]]
        table = np.array([[e["val_loss"] for e in r["evals"]] for r in runs])
        for row in table:
            axes[0].plot(steps, row, color=color, alpha=0.25, lw=0.8)
        mean = table.mean(axis=0)
        std = table.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
        axes[0].plot(steps, mean, color=color, lw=2, label=f"{arm} (mean of {len(runs)} seeds)")
        axes[0].fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
        finals = [r["final_val_loss"] for r in runs]
        axes[1].scatter([i] * len(finals), finals, color=color, zorder=3)
        axes[1].errorbar([i + 0.15], [np.mean(finals)], yerr=[np.std(finals, ddof=1) if len(finals) > 1 else 0],
                         fmt="s", color="k", capsize=4)
    axes[0].set(title="validation loss (band: +- one std over seeds)", xlabel="step", ylabel="nats / character")
    axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 2.2))
    axes[0].legend(fontsize=8)
    axes[1].set_xticks(range(len(names)), names)
    axes[1].set(title="final validation loss: seeds (dots), mean +- std (squares)", ylabel="nats / character")
    env = report["environment"]
    fig.suptitle(f"{env.get('gpu', env.get('device'))}, {env['date_utc'][:10]}, {report['steps']} steps, "
                 f"preset {report['preset']['name']}, seeds {report['seeds']}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def markdown_table(report: dict) -> str:
    """The README's table, written from a report (so no figure is typed by hand)."""
    cfg = report["preset"]
    model, train_cfg = cfg["model"], cfg["train"]
    env = report["environment"]
    summary = report["summary"]
    lines = [f"{env.get('gpu', env.get('device'))}, torch {env['torch']}, {env['date_utc'][:10]}; preset "
             f"`{cfg['name']}` ({model['n_layer']} layers, {model['n_head']} heads, {model['n_embd']} wide, context "
             f"{model['block_size']}, batch {train_cfg['batch_size']}, AdamW {train_cfg['lr']:g} cosine to "
             f"{train_cfg['min_lr']:g} over {report['steps']} steps, dropout {model['dropout']:g}); seeds "
             f"{', '.join(str(s) for s in report['seeds'])} for every arm; log arms' method "
             f"`{report['attention_method']}`; {report['concurrency']}.", "",
             "| arm | final val loss, mean ± std | best val loss, mean ± std | final loss vs strongest softmax "
             f"(`{summary['strongest_softmax']}`) | seeds finished | tokens/s alone |",
             "|---|---:|---:|---:|---:|---:|"]
    for arm, entry in report["arms"].items():
        s = summary["arms"][arm]
        if "final_val_loss" not in s:
            lines.append(f"| {arm} | – | – | – | 0 of {len(entry['runs'])} | – |")
            continue
        f, b = s["final_val_loss"], s["best_val_loss"]
        gap = "—" if arm == summary["strongest_softmax"] else f"{s['gap_to_strongest_softmax_pct']:+.1f}%"
        rate = entry.get("tokens_per_s_alone")
        lines.append(f"| {arm} | {f['mean']:.3f} ± {f['std'] or 0:.3f} | {b['mean']:.3f} ± {b['std'] or 0:.3f} | "
                     f"{gap} | {s['finished_runs']} of {len(entry['runs'])} | "
                     f"{'–' if rate is None else f'{rate / 1e3:.0f}k'} |")
    return "\n".join(lines)


def _measure_alone(arm: str, preset_name: str, data, method: str, seed: int) -> float:
    """Training tokens/s of one arm alone on the device: 30 steps, the last logged interval."""
    from logattn_ref.train import preset, train

    mc, tc = preset(preset_name, vocab_size=data.vocab_size, max_steps=30, attention_method=method,
                    log_interval=10, eval_interval=1000, eval_iters=1, checkpoint_interval=1000, seed=seed,
                    **ARMS[arm])
    solo = train(mc, tc, data, None, progress=False)
    return [r["tokens_per_s"] for r in solo["history"] if "tokens_per_s" in r][-1]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--plot-only", action="store_true", help="redraw OUT/train_shakespeare.png from its JSON")
    parser.add_argument("--markdown", action="store_true", help="print the README table of OUT's JSON and exit")
    parser.add_argument("--work", default="/tmp/logattn_runs", help="checkpoints (too big to bring back)")
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument("--measure-s", type=float, default=45.0, help="reserved for step 3")
    parser.add_argument("--probe-steps", type=int, default=30)
    parser.add_argument("--probe-deadline-s", type=float, default=90.0)
    parser.add_argument("--min-steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--preset", default="shakespeare", help="another preset only to try the script out")
    parser.add_argument("--attention-method", default="auto",
                        help="the log arms' method (auto: the fused Triton kernels on a GPU)")
    args = parser.parse_args(argv)
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
    from logattn_ref.train import preset as preset_config

    probe_model, probe_train = preset_config(args.preset)
    runs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    report = {
        "what": f"{len(args.arms)} arms x {len(args.seeds)} seeds, char-level tiny Shakespeare "
                f"(logattn_ref.train, preset {args.preset!r})",
        "environment": run_environment(),
        "seeds": args.seeds,
        "arm_settings": {a: ARMS[a] for a in args.arms},
        "attention_method": args.attention_method,
        "concurrency": f"all {len(runs)} runs trained at the same time, one process each, on the one device",
        "preset": {"name": args.preset, "model": dataclasses.asdict(probe_model),
                   "train": dataclasses.asdict(probe_train)},
        "notes": [
            "Same data, steps, batch size, schedule and seeds for every arm; a seed fixes the initial weights, the "
            "batches and dropout (through logattn_ref.train's seeded generators); validation batches are drawn "
            "from a generator seeded by the seed and the step, so every arm of one seed is evaluated on the same "
            "batches.",
            "final_val_loss is the evaluation at the last step (the end of the cosine schedule); best_val_loss is "
            "the lowest evaluation of the run, kept for comparison with earlier reports.",
            "Not shown here: decoding speed (benchmarks/results/decode_*.json) and behaviour beyond the training "
            "context of 256 characters (softmax-pos cannot run there at all).",
        ],
        "arms": {a: {"runs": []} for a in args.arms},
    }

    # 1. probe
    tokens_per_step = probe_train.batch_size * probe_model.block_size
    procs = {(a, s): _launch(a, s, args.probe_steps, work / f"probe_{a}_s{s}", out / f"probe_{a}_s{s}.log",
                             args.preset, args.attention_method) for a, s in runs}
    _wait(procs, t0 + args.probe_deadline_s)
    step_s = {}
    for arm, seed in runs:
        recs = [r for r in _records(work / f"probe_{arm}_s{seed}" / "metrics.jsonl") if "tokens_per_s" in r]
        recs = recs[1:] or recs  # the first logged interval holds the warm-up (CUDA context, autotuning)
        if not recs:
            print((out / f"probe_{arm}_s{seed}.log").read_text()[-3000:])
            raise SystemExit(f"probe of {arm} seed {seed} logged nothing")
        step_s[f"{arm}/s{seed}"] = max(tokens_per_step / r["tokens_per_s"] for r in recs)
    train_s = args.budget_s - (time.time() - t0) - args.measure_s
    slowest = max(step_s.values())
    # Evaluations cost about eval_iters * 2 forward passes per eval_interval steps (a forward ~ 1/3 of a step).
    eval_overhead = 1.0 + (2 * probe_train.eval_iters / 3) / probe_train.eval_interval
    fit = int(0.9 * train_s / (slowest * eval_overhead))
    steps = probe_train.max_steps if fit >= probe_train.max_steps else max(args.min_steps, fit // 100 * 100)
    report["probe_step_s_concurrent"] = step_s
    report["steps"] = steps
    report["steps_note"] = (f"the preset's {steps} steps" if steps == probe_train.max_steps else
                            f"{steps} steps for every run: the most that fit the budget at the probed concurrent "
                            f"step time of the slowest run ({slowest * 1e3:.1f} ms)")
    print(json.dumps({"slowest_step_s": slowest, "steps": steps, "train_s": train_s}), flush=True)

    # 2. train
    t_train = time.time()
    procs = {(a, s): _launch(a, s, steps, work / f"{a}_s{s}", out / f"train_{a}_s{s}.log", args.preset,
                             args.attention_method) for a, s in runs}
    report["all_finished"] = _wait(procs, t0 + args.budget_s - args.measure_s + 15)
    for arm, seed in runs:
        run_dir = work / f"{arm}_s{seed}"
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        entry = {"seed": seed, **run_summary(_records(run_dir / "metrics.jsonl"), steps),
                 "wall_s": summary.get("wall_s", time.time() - t_train), "parameters": summary.get("parameters"),
                 "precision": summary.get("precision")}
        report["arms"][arm]["runs"].append(entry)
    report["summary"] = summarise_arms(report)
    print(json.dumps(report["summary"]), flush=True)
    write_json(out / "train_shakespeare.json", report)

    # 3. measure, one arm at a time, on the idle device
    from logattn_ref.data import shakespeare_dataset
    from logattn_ref.generate import sample_text
    from logattn_ref.train import load_model

    data = shakespeare_dataset()
    for arm in args.arms:
        entry = report["arms"][arm]
        try:
            entry["tokens_per_s_alone"] = _measure_alone(arm, args.preset, data, args.attention_method, args.seeds[0])
            entry["colab_preset_tokens_per_s_alone"] = _measure_alone(arm, "colab", data, args.attention_method,
                                                                      args.seeds[0])
            best = work / f"{arm}_s{args.seeds[0]}" / "best.pt"
            if best.exists():
                device = "cuda" if torch.cuda.is_available() else "cpu"
                model = load_model(best, device)
                # within the training context: softmax-pos has no positions past it
                length = min(200, model.config.block_size - len("ROMEO:\n"))
                entry["sample"] = sample_text(model, data.tokenizer, "ROMEO:\n", length, seed=args.seeds[0])
                del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as err:  # keep what was measured for the other arms
            entry["measure_error"] = f"{type(err).__name__}: {err}"
        write_json(out / "train_shakespeare.json", report)
    report["total_s"] = time.time() - t0
    write_json(out / "train_shakespeare.json", report)
    plot(report, out / "train_shakespeare.png")
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
