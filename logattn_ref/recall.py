"""Multi-query associative recall (MQAR): what a constant-size state costs, measured.

The task (its data lives in :mod:`logattn_ref.mqar`): a sequence lists key-value pairs, then asks some of the
keys again; the model is scored where it must predict the value paired with a queried key, possibly hundreds
of tokens back. Softmax attention keeps every token and can look the pair up; the log-of-exponentials
attention of Heinsen (arXiv:2404.05843v1) carries a ``d_k x d_v`` state, in linear space
``exp(H^(S)) = sum_j exp(k_j) v_j^T`` (the paper's recurrence, eqs. 5-6), and because ``exp(k)`` is entrywise
positive no two keys are orthogonal: every stored pair leaks into every read.

What is here:

- :func:`recall_accuracy`, :func:`state_bytes`, :func:`kv_cache_bytes`, :func:`linear_memory_readout`.
- The sweep: softmax vs "log" vs "log-signed", 2-layer models, over pairs x head dimension, and a CLI::

      python -m logattn_ref.recall --out DIR [--quick] [--preset gpu|cpu] [--workers N]

  writing ``DIR/mqar_sweep.json`` (rewritten after every finished cell, so a killed run leaves partial
  results) and ``DIR/mqar_sweep.png``.

The task's names (``FILLER``, ``MQARBatch``, ``key_value_ranges``, ``mqar_layout``, ``mqar_batch``,
``MQARData``) were importable from here before they moved to :mod:`logattn_ref.mqar`; they still are, with a
``DeprecationWarning``, for one release.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import mqar
from .model import ATTENTIONS
from .mqar import _check_int
from .runio import moved_names, recorded_date, run_environment, write_json

__all__ = [
    "recall_accuracy",
    "state_bytes",
    "kv_cache_bytes",
    "linear_memory_readout",
    "SweepConfig",
    "SWEEP_PRESETS",
    "markdown_table",
    "train_cell",
    "run_sweep",
    "plot_sweep",
    "main",
]

#: Names that moved to :mod:`logattn_ref.mqar`; importing them from here warns, for one release.
__getattr__ = moved_names(__name__, {name: mqar.__name__ for name in
                                     ("FILLER", "MQARBatch", "key_value_ranges", "mqar_layout", "mqar_batch",
                                      "MQARData")})


@torch.no_grad()
def recall_accuracy(model: torch.nn.Module, batch: mqar.MQARBatch, chunk: int = 64) -> float:
    """Fraction of scored positions where ``model``'s argmax equals the target (``model(x)`` -> ``(logits, _)``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for start in range(0, batch.inputs.shape[0], chunk):
        x = batch.inputs[start : start + chunk].to(device)
        logits, _ = model(x)
        mask = batch.mask[start : start + chunk].to(device)
        hit = logits.argmax(dim=-1) == batch.targets[start : start + chunk].to(device)
        correct += int((hit & mask).sum())
        total += int(mask.sum())
    model.train(was_training)
    return correct / total


def state_bytes(n_layer: int, n_head: int, head_dim: int, bytes_per_number: int = 4) -> int:
    """Bytes of the paper's recurrent state for a whole model: per layer and head ``H^(S) [d_k, d_v]`` and
    ``H^(Z) [d_k]`` (the states of eq. 6), with ``d_k = d_v = head_dim``. Independent of the context length n."""
    for name, value in (("n_layer", n_layer), ("n_head", n_head), ("head_dim", head_dim), ("bytes_per_number", bytes_per_number)):
        _check_int(name, value, 1)
    return n_layer * n_head * (head_dim * head_dim + head_dim) * bytes_per_number


def kv_cache_bytes(n_layer: int, n_head: int, head_dim: int, n_ctx: int, bytes_per_number: int = 4) -> int:
    """Bytes of softmax attention's KV cache at context ``n_ctx``: per layer and head, keys and values ``[n, d]``."""
    for name, value in (("n_layer", n_layer), ("n_head", n_head), ("head_dim", head_dim), ("bytes_per_number", bytes_per_number)):
        _check_int(name, value, 1)
    _check_int("n_ctx", n_ctx, 0)
    return n_layer * n_head * 2 * n_ctx * head_dim * bytes_per_number


def linear_memory_readout(keys: np.ndarray, values: np.ndarray, queries: np.ndarray, feature: str = "exp") -> np.ndarray:
    """Store pairs in a linear state and read them back: ``y = S / Z`` with the numerator
    ``S = phi(q) . sum_j phi(k_j) v_j^T`` and the denominator ``Z = phi(q) . sum_j phi(k_j)`` (float64). The
    state is the pair of sums; for ``phi = exp`` it is ``exp(H^(S)), exp(H^(Z))``.

    ``feature="exp"``: the paper's ``phi = exp`` (computed in log space, so any magnitude is safe; identical to
    :func:`logattn_ref.numpy_ref.log_attention_quadratic` with ``causal=False``). ``feature="identity"``:
    ``phi(x) = x`` *without* the normaliser Z (signed features; exact for orthonormal keys).

    Shapes: keys ``[..., m, d_k]``, values ``[..., m, d_v]``, queries ``[..., n, d_k]`` -> ``[..., n, d_v]``.

    Raises:
        ValueError: unknown ``feature`` or mismatched shapes.
    """
    keys, values, queries = (np.asarray(a, dtype=np.float64) for a in (keys, values, queries))
    if keys.shape[-1] != queries.shape[-1] or keys.shape[-2] != values.shape[-2]:
        raise ValueError(f"shapes do not fit: keys {keys.shape}, values {values.shape}, queries {queries.shape}")
    if feature == "exp":
        from . import numpy_ref

        return numpy_ref.log_attention_quadratic(queries, keys, values, causal=False)
    if feature == "identity":
        state = np.swapaxes(keys, -1, -2) @ values  # sum_j k_j v_j^T = K^T V: [..., d_k, d_v]
        return queries @ state
    raise ValueError(f"feature must be 'exp' or 'identity', got {feature!r}")


# ------------------------------------------------------------------------------------------------------------
# The sweep
# ------------------------------------------------------------------------------------------------------------


@dataclass
class SweepConfig:
    """One grid of MQAR trainings. Every cell trains a fresh 2-layer model of width ``n_embd`` whose heads have
    ``head_dim`` features each (so ``n_head = n_embd // head_dim``); the state per layer is ``n_head`` matrices
    of ``head_dim x head_dim``."""

    name: str
    arms: Sequence[str] = ("softmax", "log", "log-signed")
    pairs: Sequence[int] = (4, 8, 16, 32, 64, 128)
    head_dims: Sequence[int] = (16, 32, 64)
    n_embd: int = 64
    n_layer: int = 2
    vocab_size: int = 512
    seq_len: int = 512
    max_queries: int = 64
    # Ask max_queries keys (with repetition) whatever the number of pairs: every cell then trains on the same
    # number of scored answers per sequence, so fewer pairs never means less training signal.
    fixed_queries: bool = True
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-2
    warmup_steps: int = 100
    eval_sequences: int = 512
    seed: int = 0
    device: str = "auto"
    note: str = ""

    def cells(self) -> List[dict]:
        # Most pairs first: if a deadline cuts the sweep, the cells lost are the easy ones.
        return [dict(attention=a, num_pairs=p, head_dim=d)
                for p in sorted(self.pairs, reverse=True) for d in self.head_dims for a in self.arms]

    def num_queries(self, num_pairs: int) -> int:
        return self.max_queries if self.fixed_queries else min(num_pairs, self.max_queries)


SWEEP_PRESETS: Dict[str, SweepConfig] = {
    # One H200: ~12 minutes with 18 worker processes (benchmarks/results/mqar_sweep_h200.json). Width 128 gives
    # 8 / 4 / 2 heads for head dims 16 / 32 / 64; at width 64 and lr <= 3e-3 most softmax cells never learned
    # the lookup within 2000 steps (benchmarks/results/mqar_calibration_h200.json).
    "gpu": SweepConfig(name="gpu", n_embd=128, steps=2500),
    # This project's 2-core CPU: a reduced grid of tiny models, ~15 minutes on one thread.
    "cpu": SweepConfig(name="cpu", arms=("softmax", "log-signed"), pairs=(2, 4, 8), head_dims=(16, 32), n_embd=64,
                       vocab_size=64, seq_len=32, max_queries=8, steps=800, batch_size=32, lr=1e-2, warmup_steps=50,
                       eval_sequences=512, device="cpu",
                       note="REDUCED grid on a shared 2-core CPU, 1 thread (no GPU budget left): softmax and log-signed "
                            "only (the 'log' arm's CPU path is ~3x slower), pairs 2-8, head dim 16-32, seq_len 32, "
                            "800 steps, 8 queries per sequence for every number of pairs"),
    # CI / fast mode: seconds, same code path.
    "quick": SweepConfig(name="quick", arms=("softmax", "log-signed"), pairs=(2, 4), head_dims=(8,), n_embd=16,
                         vocab_size=16, seq_len=16, max_queries=4, steps=15, batch_size=16, warmup_steps=5,
                         eval_sequences=32, device="cpu", note="tiny CPU run for CI: shows the code path, not a result"),
}


def train_cell(sweep: SweepConfig, attention: str, num_pairs: int, head_dim: int) -> dict:
    """Train one model of the grid on MQAR and measure its accuracy on held-out sequences.

    Returns a JSON-ready dict: the cell, ``accuracy`` (held-out, scored positions only), ``final_loss``,
    ``state_bytes`` / ``kv_cache_bytes`` at ``seq_len`` (fp32), ``parameters``, ``wall_s``.
    """
    from .model import ModelConfig
    from .train import TrainConfig, train

    if sweep.n_embd % head_dim:
        raise ValueError(f"head_dim={head_dim} must divide n_embd={sweep.n_embd}")
    n_head = sweep.n_embd // head_dim
    queries = sweep.num_queries(num_pairs)
    data = mqar.MQARData(sweep.vocab_size, num_pairs, sweep.seq_len, queries, repeat_queries=sweep.fixed_queries)
    model_config = ModelConfig(vocab_size=sweep.vocab_size, block_size=sweep.seq_len, n_layer=sweep.n_layer,
                               n_head=n_head, n_embd=sweep.n_embd, dropout=0.0, attention=attention)
    train_config = TrainConfig(max_steps=sweep.steps, batch_size=sweep.batch_size, lr=sweep.lr, min_lr=sweep.lr / 10,
                               warmup_steps=sweep.warmup_steps, eval_interval=sweep.steps, eval_iters=1,
                               checkpoint_interval=sweep.steps, log_interval=max(1, sweep.steps // 10),
                               seed=sweep.seed, device=sweep.device)
    t0 = time.perf_counter()
    result = train(model_config, train_config, data, None, progress=False)
    # Held-out: a seed far from the training generator's (seed), drawn once per cell.
    held_out = mqar.mqar_batch(sweep.eval_sequences, sweep.vocab_size, num_pairs, sweep.seq_len, queries,
                          seed=10_000_019 + sweep.seed, repeat_queries=sweep.fixed_queries)
    accuracy = recall_accuracy(result["model"], held_out)
    losses = [h["loss"] for h in result["history"] if "loss" in h]
    return {
        "attention": attention,
        "num_pairs": num_pairs,
        "num_queries": queries,
        "head_dim": head_dim,
        "n_head": n_head,
        "accuracy": accuracy,
        "final_loss": losses[-1] if losses else None,
        "steps": result["steps"],
        "parameters": result["model"].num_parameters(),
        "state_bytes": state_bytes(sweep.n_layer, n_head, head_dim),
        "kv_cache_bytes": kv_cache_bytes(sweep.n_layer, n_head, head_dim, sweep.seq_len),
        "wall_s": time.perf_counter() - t0,
        "precision": result["precision"],
    }


def _cell_worker(args) -> dict:
    sweep_dict, cell, deadline = args
    if deadline is not None and time.time() > deadline:
        return dict(cell, skipped="time limit reached before this cell started")
    torch.set_num_threads(1)
    sweep = SweepConfig(**sweep_dict)
    try:
        return train_cell(sweep, **cell)
    except Exception as err:  # one broken cell is recorded, the sweep goes on
        return dict(cell, error=f"{type(err).__name__}: {err}")


def _environment(device: str) -> dict:
    env = run_environment(device)
    if env["device"] == "cpu":
        env["threads_per_worker"] = 1  # _cell_worker's torch.set_num_threads(1)
    return env


def run_sweep(sweep: SweepConfig, out_dir: os.PathLike, workers: int = 1, plot: bool = True,
              time_limit_s: Optional[float] = None) -> dict:
    """Train every cell of ``sweep`` (``workers`` processes), write ``mqar_sweep.json`` after each and a plot.

    ``time_limit_s``: cells not started within this many seconds are recorded as skipped (``complete`` False).

    Returns the JSON payload: ``environment``, ``config``, ``results`` (one dict per cell, see
    :func:`train_cell`), ``complete`` (False while cells are missing), ``wall_s``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"environment": _environment(sweep.device), "config": dataclasses.asdict(sweep), "results": [],
               "complete": False, "wall_s": 0.0}
    path = out / "mqar_sweep.json"
    cells = sweep.cells()
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(cells), desc=f"MQAR sweep ({sweep.name})", unit="cell")

    def collect(result):
        payload["results"].append(result)
        payload["wall_s"] = time.perf_counter() - t0
        write_json(path, payload)
        acc = result.get("accuracy")
        bar.update()
        bar.write(f"[{len(payload['results'])}/{len(cells)}] {result['attention']:>10} pairs={result['num_pairs']:>3} "
                  f"d={result['head_dim']:>2} acc={acc if acc is None else round(acc, 3)} "
                  f"({result.get('wall_s', 0):.0f}s) {result.get('error', result.get('skipped', ''))}")

    deadline = None if time_limit_s is None else time.time() + time_limit_s
    jobs = [(dataclasses.asdict(sweep), cell, deadline) for cell in cells]
    if workers <= 1:
        for job in jobs:
            collect(_cell_worker(job))
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(_cell_worker, jobs):
                collect(result)
    bar.close()
    payload["complete"] = not any("skipped" in r or "error" in r for r in payload["results"])
    payload["wall_s"] = time.perf_counter() - t0
    write_json(path, payload)
    if plot:
        plot_sweep(payload, out / "mqar_sweep.png")
    return payload


ARM_STYLE = {"softmax": ("tab:blue", "o"), "log": ("tab:orange", "s"), "log-signed": ("tab:green", "^")}


def plot_sweep(payload: dict, path: Optional[os.PathLike] = None):
    """Accuracy vs number of pairs, one panel per head dimension, one line per arm; returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    config = payload["config"]
    results = [r for r in payload["results"] if "accuracy" in r]
    head_dims = list(config["head_dims"])
    fig, axes = plt.subplots(1, len(head_dims), figsize=(4.2 * len(head_dims), 3.4), sharey=True, squeeze=False)
    for ax, d in zip(axes[0], head_dims):
        for arm in config["arms"]:
            rows = sorted((r["num_pairs"], r["accuracy"]) for r in results if r["attention"] == arm and r["head_dim"] == d)
            if rows:
                color, marker = ARM_STYLE.get(arm, (None, "o"))
                ax.plot(*zip(*rows), marker=marker, color=color, label=arm)
        ax.set_xscale("log", base=2)
        ax.set_title(f"head dim {d} ({config['n_embd'] // d} heads)")
        ax.set_xlabel("key-value pairs")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out recall accuracy")
    axes[0][-1].legend(loc="lower left")
    env = payload["environment"]
    where = env.get("gpu", env.get("cpu", env["device"]))
    fig.suptitle(f"MQAR, {config['n_layer']}-layer models, width {config['n_embd']}, seq_len {config['seq_len']} "
                 f"({config['name']} sweep, {where}, {recorded_date(env)[:10]})", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def markdown_table(payload: dict) -> str:
    """Accuracy per arm, head dimension and number of pairs, as the README's Markdown table (from a sweep JSON,
    so no figure is typed by hand); the last row of each arm is its best over head dimensions."""
    config = payload["config"]
    pairs = sorted(config["pairs"])
    acc = {(r["attention"], r["head_dim"], r["num_pairs"]): r["accuracy"] for r in payload["results"] if "accuracy" in r}
    env = payload["environment"]
    lines = [f"{env.get('gpu', env.get('cpu', env['device']))}, {recorded_date(env)[:10]}, torch {env['torch']}; sweep "
             f"'{config['name']}': {config['n_layer']} layers, width {config['n_embd']}, seq_len {config['seq_len']}, "
             f"{config['steps']} steps x batch {config['batch_size']}, lr {config['lr']:g}, seed {config['seed']}.", "",
             "| arm | head dim | " + " | ".join(f"{p} pairs" for p in pairs) + " |",
             "|---|---:|" + "---:|" * len(pairs)]

    def cell(value):
        return f"{value:.2f}" if value is not None else "–"

    for arm in config["arms"]:
        for d in config["head_dims"]:
            lines.append(f"| {arm} | {d} | " + " | ".join(cell(acc.get((arm, d, p))) for p in pairs) + " |")
        best = [max((acc[(arm, d, p)] for d in config["head_dims"] if (arm, d, p) in acc), default=None) for p in pairs]
        lines.append(f"| **{arm}** | best | " + " | ".join(f"**{cell(b)}**" for b in best) + " |")
    return "\n".join(lines)


def probe_step_seconds(sweep: SweepConfig, steps: int = 12, warmup: int = 4) -> Dict[str, float]:
    """Seconds per training step of each (arm, head dim) of ``sweep``, measured in this process (median of
    ``steps`` after ``warmup``; CUDA-synchronised). Used to size a sweep to a time budget."""
    from .model import GPT, ModelConfig

    device = torch.device("cuda" if sweep.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if sweep.device == "auto" else sweep.device))
    data = mqar.MQARData(sweep.vocab_size, max(sweep.pairs), sweep.seq_len, sweep.num_queries(max(sweep.pairs)),
                    repeat_queries=sweep.fixed_queries)
    out = {}
    for arm in sweep.arms:
        for d in sweep.head_dims:
            torch.manual_seed(0)
            model = GPT(ModelConfig(vocab_size=sweep.vocab_size, block_size=sweep.seq_len, n_layer=sweep.n_layer,
                                    n_head=sweep.n_embd // d, n_embd=sweep.n_embd, dropout=0.0, attention=arm)).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=sweep.lr)
            x, y = data.get_batch("train", sweep.batch_size, sweep.seq_len, torch.Generator().manual_seed(0), device)
            autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else
                        torch.autocast("cpu", enabled=False))
            times = []
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                with autocast:
                    _, loss = model(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            out[f"{arm}/d{d}"] = float(np.median(times))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="MQAR sweep: softmax vs log vs log-signed attention.")
    parser.add_argument("--out", help="folder for mqar_sweep.json and mqar_sweep.png")
    parser.add_argument("--markdown", metavar="JSON", help="print the README table of a sweep JSON and exit")
    parser.add_argument("--quick", action="store_true", help="tiny CPU run (CI / fast mode)")
    parser.add_argument("--preset", choices=sorted(SWEEP_PRESETS), help="grid (default: gpu if CUDA, else cpu)")
    parser.add_argument("--workers", type=int, default=1, help="training processes run at once")
    parser.add_argument("--steps", type=int, help="override training steps per cell")
    parser.add_argument("--arms", nargs="+", choices=ATTENTIONS, help="override the arms")
    parser.add_argument("--head-dims", nargs="+", type=int, help="override the head dimensions")
    parser.add_argument("--time-limit-s", type=float, help="skip cells that would start after this many seconds")
    parser.add_argument("--budget-s", type=float, help="choose steps per cell from a probe of the step times so the "
                        "sweep fits this many seconds (assumes --speedup x throughput from the workers)")
    parser.add_argument("--speedup", type=float, default=3.0, help="throughput gain assumed from --workers processes")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(Path(args.markdown).read_text())))
        return 0
    if not args.out:
        parser.error("--out is required (unless --markdown)")
    name = "quick" if args.quick else args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    sweep = SWEEP_PRESETS[name]
    if args.steps is not None:
        sweep = dataclasses.replace(sweep, steps=args.steps)
    if args.arms or args.head_dims:
        sweep = dataclasses.replace(sweep, arms=tuple(args.arms or sweep.arms),
                                    head_dims=tuple(args.head_dims or sweep.head_dims),
                                    note=f"{sweep.note}; arms {args.arms or 'all'}, head dims {args.head_dims or 'all'}")
    if args.budget_s is not None:
        t0 = time.perf_counter()
        probe = probe_step_seconds(sweep)
        per_step = sum(probe[f"{c['attention']}/d{c['head_dim']}"] for c in sweep.cells())  # one step of every cell
        steps = int(max(100, min(4000, args.budget_s * args.speedup / per_step)))
        note = (f"{sweep.note}; steps={steps} chosen from a {time.perf_counter() - t0:.0f} s probe of step times "
                f"(s/step {json.dumps({k: round(v, 4) for k, v in probe.items()})}) for a {args.budget_s:.0f} s budget")
        sweep = dataclasses.replace(sweep, steps=steps, note=note.lstrip("; "))
        print(note, flush=True)
    payload = run_sweep(sweep, args.out, workers=args.workers, time_limit_s=args.time_limit_s)
    print(f"wrote {Path(args.out) / 'mqar_sweep.json'} ({len(payload['results'])} cells, {payload['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
