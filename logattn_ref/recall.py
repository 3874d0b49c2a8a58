"""Multi-query associative recall (MQAR): what a constant-size state costs, measured.

The task (its data lives in :mod:`logattn_ref.mqar`): a sequence lists key-value pairs, then asks some of the
keys again; the model is scored where it must predict the value paired with a queried key, possibly hundreds
of tokens back. Softmax attention keeps every token and can look the pair up; the log-of-exponentials
attention of Heinsen (arXiv:2404.05843v1) carries a ``d_k x d_v`` state, in linear space
``exp(H^(S)) = sum_j exp(k_j) v_j^T`` (the paper's recurrence, eqs. 5-6), and because ``exp(k)`` is entrywise
positive no two keys are orthogonal: every stored pair leaks into every read.

What is here:

- :func:`recall_accuracy`, :func:`state_bytes`, :func:`kv_cache_bytes`, :func:`linear_memory_readout`.
- The protocol (Zoology-style): each cell (arm, pairs, head dim) trained at several learning rates with seed 0,
  then with more seeds at the best rate; every run recorded, each cell reported with best, mean and failures::

      python -m logattn_ref.recall --protocol gpu|cpu --out DIR [--workers N] [--budget-s S] [--family-arms ...]

  writing ``DIR/mqar_protocol_<slug>.json`` (rewritten after every finished run, so a killed run leaves partial
  results) and ``.png``; ``--skip-reported A.json`` leaves out the cells an earlier part reported, and
  ``--merge A.json B.json ...`` joins the parts of one recipe run separately (:func:`merge_protocol`). (An
  earlier one-run-a-cell sweep was removed: the protocol with one rate and one seed is the same measurement.)

The task's names (``FILLER``, ``MQARBatch``, ``key_value_ranges``, ``mqar_layout``, ``mqar_batch``,
``MQARData``) were importable from here before they moved to :mod:`logattn_ref.mqar`; they still are, with a
``DeprecationWarning``, for one release.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import heapq
import itertools
import json
import math
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
    "decode_memory_bytes",
    "linear_memory_readout",
    "ProtocolConfig",
    "PROTOCOL_PRESETS",
    "merge_protocol",
    "train_run",
    "choose_lr",
    "summarize_cell",
    "projected_finish",
    "probe_step_time",
    "protocol_path",
    "run_protocol",
    "plot_protocol",
    "protocol_markdown",
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


def decode_memory_bytes(attention: str, n_layer: int, n_head: int, head_dim: int, n_ctx: int,
                        bytes_per_number: int = 4) -> int:
    """What an arm keeps per sequence to decode at context ``n_ctx``: softmax its KV cache, ``hybrid`` one layer's
    KV cache (layer 0) and the other layers' states, every constant-state arm its states (:func:`state_bytes`, the
    exp member's count; the family's members differ from it by a ``d_k``-vector or so per head)."""
    if attention == "softmax":
        return kv_cache_bytes(n_layer, n_head, head_dim, n_ctx, bytes_per_number)
    if attention == "hybrid":
        cache = kv_cache_bytes(1, n_head, head_dim, n_ctx, bytes_per_number)
        return cache + (state_bytes(n_layer - 1, n_head, head_dim, bytes_per_number) if n_layer > 1 else 0)
    return state_bytes(n_layer, n_head, head_dim, bytes_per_number)


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


def _environment(device: str) -> dict:
    env = run_environment(device)
    if env["device"] == "cpu":
        env["threads_per_worker"] = 1  # _cell_worker's torch.set_num_threads(1)
    return env


ARM_STYLE = {"softmax": ("tab:blue", "o"), "log": ("tab:orange", "s"), "log-signed": ("tab:green", "^")}


def _median_step_seconds(model, opt, next_batch, device: torch.device, steps: int, warmup: int) -> float:
    """Median wall seconds of ``steps`` training steps (forward, backward, AdamW) after ``warmup`` untimed ones;
    ``next_batch()`` gives ``(x, y)`` (its time is counted); bfloat16 autocast on CUDA, synchronised per step."""
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else
                torch.autocast("cpu", enabled=False))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = next_batch()
        with autocast:
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ------------------------------------------------------------------------------------------------------------
# The protocol: a learning-rate sweep, then seeds at the chosen rate (as peers measure MQAR: Zoology)
# ------------------------------------------------------------------------------------------------------------

#: The cell fields, in the order a priority nesting names them.
CELL_FIELDS = ("attention", "num_pairs", "head_dim")


@dataclass
class ProtocolConfig:
    """One grid measured by the protocol. A *cell* is ``(attention, num_pairs, head_dim)``; each cell trains a
    fresh ``n_layer``-layer model of width ``n_embd`` with ``n_head`` heads of ``head_dim`` features each (``d_k =
    d_v = head_dim``, set apart from ``n_embd``), so at a fixed number of heads the state, ``n_layer * n_head *
    d_k * d_v`` numbers, grows with ``head_dim``.

    The rule per cell: train at every rate of ``lrs`` with the first seed of ``seeds``; choose the rate whose run
    has the highest held-out accuracy (ties: lower final training loss, then the lower rate); train the other
    seeds at that rate. A cell is reported only when all ``len(lrs) + len(seeds) - 1`` runs have finished.

    ``arms``, ``pairs`` and ``head_dims`` are listed in priority order; ``priority`` nests them (outermost first)
    to give the order in which cells are launched (see :meth:`cells`). ``fail_below``: a seed whose accuracy is
    below it counts as a failure; ``solved_at``: the accuracy that counts as solving the cell.
    """

    name: str
    arms: Sequence[str] = ("softmax", "log", "log-signed")
    pairs: Sequence[int] = (32, 8, 128)
    head_dims: Sequence[int] = (16, 64, 32)
    priority: Sequence[str] = ("num_pairs", "head_dim", "attention")
    n_head: int = 4
    n_embd: int = 128
    n_layer: int = 2
    vocab_size: int = 512
    seq_len: int = 512
    max_queries: int = 64
    steps: int = 2000
    batch_size: int = 64
    lrs: Sequence[float] = (1e-3, 3e-3, 1e-2)
    seeds: Sequence[int] = (0, 1, 2)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    eval_sequences: int = 512
    fail_below: float = 0.5
    solved_at: float = 0.99
    device: str = "auto"
    threads_per_worker: int = 1
    note: str = ""

    def __post_init__(self):
        if sorted(self.priority) != sorted(CELL_FIELDS):
            raise ValueError(f"priority must order the fields {CELL_FIELDS}, got {tuple(self.priority)}")
        if len(self.lrs) < 1 or len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"need at least one rate and distinct seeds, got lrs={self.lrs}, seeds={self.seeds}")
        for field in ("arms", "pairs", "head_dims", "lrs", "seeds"):
            values = getattr(self, field)
            if len(set(values)) != len(values) or not values:
                raise ValueError(f"{field} must be a non-empty list without repeats, got {values}")
        if not 0.0 < self.fail_below <= self.solved_at <= 1.0:
            raise ValueError(f"need 0 < fail_below <= solved_at <= 1, got {self.fail_below}, {self.solved_at}")
        if 2 * max(self.pairs) + 2 * self.max_queries > self.seq_len:
            raise ValueError(f"seq_len={self.seq_len} cannot hold {max(self.pairs)} pairs and {self.max_queries} "
                             f"queries (needs >= {2 * max(self.pairs) + 2 * self.max_queries})")

    def cells(self) -> List[dict]:
        """Every cell once, in launch order: the fields nested as ``priority`` says, each field's values in the
        order listed (so ``head_dims=(16, 64, 32)`` with ``head_dim`` outermost runs every head-dim-16 cell
        first)."""
        values = {"attention": self.arms, "num_pairs": self.pairs, "head_dim": self.head_dims}
        order = list(self.priority)
        cells = []
        for combo in itertools.product(*(values[field] for field in order)):
            cell = dict(zip(order, combo))
            cells.append({field: cell[field] for field in CELL_FIELDS})
        return cells

    def runs_per_cell(self) -> int:
        return len(self.lrs) + len(self.seeds) - 1


PROTOCOL_PRESETS: Dict[str, ProtocolConfig] = {
    # One H200 with 14 worker processes; how many cells fit ~8 minutes is decided by --budget-s (see
    # benchmarks/README.md, "MQAR protocol"). Four heads at width 128 for every head dim, so the state grows with
    # d_k. Why 2000 steps and 4 heads: a calibration run at 1000 steps with 2 heads (one H200, 2026-12-02, not
    # committed) left softmax at chance on 32 and 128 pairs at every rate of 1e-3..1e-2 (one run reached 0.90),
    # while the older sweep (2500 steps, 4 and 8 heads) solved 32 pairs.
    "gpu": ProtocolConfig(name="gpu"),
    # Issue 17's family members beside this course's arms, on the same recipe: arms come from the command
    # line (--family-arms), one head dim, two pair counts.
    "family": ProtocolConfig(name="family", arms=("softmax",), pairs=(8, 32), head_dims=(32,),
                             priority=("num_pairs", "attention", "head_dim")),
    # Tests and lesson 6's fast mode: seconds per cell on one CPU thread, the same code path.
    "cpu": ProtocolConfig(name="cpu", arms=("softmax", "log-signed"), pairs=(2, 4), head_dims=(8, 16), n_head=2,
                          n_embd=16, vocab_size=16, seq_len=16, max_queries=4, steps=12, batch_size=8,
                          lrs=(3e-3, 1e-2), warmup_steps=3, eval_sequences=16, device="cpu",
                          note="tiny CPU run (tests, fast mode): shows the code path, not a result"),
}

#: The family grid's (pairs, head dims) beside each main preset: two pair counts, one head dim.
FAMILY_GRIDS = {"gpu": ((8, 32), (32,)), "cpu": ((2, 4), (8,))}


def train_run(config: ProtocolConfig, attention: str, num_pairs: int, head_dim: int, lr: float, seed: int) -> dict:
    """Train one model of one cell at one learning rate and seed; measure its held-out recall accuracy.

    The held-out sequences depend only on the cell (the same for every rate and seed), drawn with a seed the
    training generator never uses. A run whose training loss becomes non-finite is recorded as ``diverged``
    (its ``accuracy`` None) rather than raising.

    Returns:
        a JSON-ready dict: the cell, ``lr``, ``seed``, ``accuracy``, ``final_loss`` (the last logged training
        loss), ``steps``, ``wall_s``, ``precision``; ``diverged`` when it diverged.

    Raises:
        ValueError: ``attention`` is not one of :data:`logattn_ref.model.ATTENTIONS` (from ModelConfig).
    """
    from .model import ModelConfig
    from .train import TrainConfig, train

    queries = config.max_queries
    data = mqar.MQARData(config.vocab_size, num_pairs, config.seq_len, queries, repeat_queries=True)
    model_config = ModelConfig(vocab_size=config.vocab_size, block_size=config.seq_len, n_layer=config.n_layer,
                               n_head=config.n_head, n_embd=config.n_embd, head_dim=head_dim, dropout=0.0,
                               attention=attention)
    train_config = TrainConfig(max_steps=config.steps, batch_size=config.batch_size, lr=lr,
                               min_lr=lr * config.min_lr_ratio, warmup_steps=config.warmup_steps,
                               eval_interval=config.steps, eval_iters=1, checkpoint_interval=config.steps,
                               log_interval=max(1, config.steps // 20), seed=seed, device=config.device)
    record = dict(attention=attention, num_pairs=num_pairs, head_dim=head_dim, lr=lr, seed=seed)
    t0 = time.perf_counter()
    try:
        result = train(model_config, train_config, data, None, progress=False)
    except FloatingPointError as err:
        return dict(record, accuracy=None, final_loss=None, steps=None, diverged=str(err),
                    wall_s=time.perf_counter() - t0)
    held_out = mqar.mqar_batch(config.eval_sequences, config.vocab_size, num_pairs, config.seq_len, queries,
                               seed=10_000_019, repeat_queries=True)
    accuracy = recall_accuracy(result["model"], held_out)
    losses = [h["loss"] for h in result["history"] if "loss" in h]
    return dict(record, accuracy=accuracy, final_loss=losses[-1] if losses else None, steps=result["steps"],
                wall_s=time.perf_counter() - t0, precision=result["precision"])


def _rank_key(run: dict):
    """Sort key, best first: higher accuracy, then lower final loss, then lower rate; a diverged run is last."""
    accuracy = run.get("accuracy")
    loss = run.get("final_loss")
    return (-(accuracy if accuracy is not None else -1.0), loss if loss is not None else math.inf, run["lr"])


def choose_lr(runs: Sequence[dict]) -> float:
    """The protocol's rate: of the learning-rate runs (one seed), the one with the highest accuracy; ties go to
    the lower final loss, then to the lower rate. Diverged runs rank last.

    Raises:
        ValueError: no runs.
    """
    if not runs:
        raise ValueError("choose_lr needs at least one run")
    return min(runs, key=_rank_key)["lr"]


def _same_cell(run: dict, cell: dict) -> bool:
    return all(run[field] == cell[field] for field in CELL_FIELDS)


def summarize_cell(config: ProtocolConfig, cell: dict, runs: Sequence[dict]) -> Optional[dict]:
    """The reported numbers of one cell from its runs, or None while any of its runs is missing or errored.

    Of the runs of ``cell`` in ``runs``: the learning-rate runs (first seed, every rate of ``config.lrs``) choose
    the rate (:func:`choose_lr`); the seeds at that rate (the first seed's run at it, and one run per other seed)
    give ``accuracies`` (in seed order), ``best`` (their maximum, which is also the best of every run of the cell),
    ``mean`` and ``std`` (sample standard deviation, ddof 1; 0 for one seed), ``failures`` (seeds below
    ``config.fail_below``) and ``solved`` (seeds at or above ``config.solved_at``). A diverged seed counts as a
    failure and as accuracy 0 in the mean: it recalled nothing that could be measured.
    """
    mine = [r for r in runs if _same_cell(r, cell) and "error" not in r]
    first = config.seeds[0]

    def find(lr, seed):
        return next((r for r in mine if r["lr"] == lr and r["seed"] == seed), None)

    lr_runs = [find(lr, first) for lr in config.lrs]
    if any(r is None for r in lr_runs):
        return None
    lr = choose_lr(lr_runs)
    seed_runs = [find(lr, seed) for seed in config.seeds]
    if any(r is None for r in seed_runs):
        return None
    accuracies = [r["accuracy"] if r.get("accuracy") is not None else 0.0 for r in seed_runs]
    n = len(accuracies)
    mean = sum(accuracies) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (n - 1)) if n > 1 else 0.0
    n_head = config.n_head
    return dict(cell, chosen_lr=lr, seeds=list(config.seeds), accuracies=accuracies, best=max(accuracies), mean=mean,
                std=std, failures=sum(a < config.fail_below for a in accuracies),
                solved=sum(a >= config.solved_at for a in accuracies),
                diverged=sum("diverged" in r for r in seed_runs),
                lr_accuracies={f"{r['lr']:g}": r.get("accuracy") for r in lr_runs},
                final_losses=[r.get("final_loss") for r in seed_runs], n_head=n_head,
                state_bytes=state_bytes(config.n_layer, n_head, cell["head_dim"]),
                kv_cache_bytes=kv_cache_bytes(config.n_layer, n_head, cell["head_dim"], config.seq_len),
                wall_s=sum(r["wall_s"] for r in mine))


def projected_finish(now: float, running_ends: Sequence[float], queued: Sequence[float], lr_runs: Sequence[float],
                     seed_runs: Sequence[float], workers: int) -> float:
    """When a cell launched now would finish, by list scheduling on ``workers`` slots.

    Slots free at ``running_ends`` (runs in flight; the others are free now); the ``queued`` durations go first,
    in order, then the cell's learning-rate runs, then its seed runs, which start only after the last
    learning-rate run has ended. Durations and times in seconds. Returns the cell's last end.
    """
    slots = [max(now, end) for end in running_ends][:workers]
    slots += [now] * (workers - len(slots))
    heapq.heapify(slots)
    for duration in queued:
        heapq.heappush(slots, heapq.heappop(slots) + duration)
    lr_ends = []
    for duration in lr_runs:
        lr_ends.append(heapq.heappop(slots) + duration)
        heapq.heappush(slots, lr_ends[-1])
    ready = max(lr_ends, default=now)
    last = ready
    for duration in seed_runs:
        end = max(heapq.heappop(slots), ready) + duration
        heapq.heappush(slots, end)
        last = max(last, end)
    return last


def probe_step_time(config: ProtocolConfig, attention: str, head_dim: int, steps: int = 20, warmup: int = 5) -> float:
    """Median seconds per training step of one arm and head dim at ``config``'s sizes (its most pairs), measured
    in this process after ``warmup`` steps (which also compile any kernels); CUDA-synchronised."""
    from .model import GPT, ModelConfig

    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if config.device == "auto" else config.device))
    data = mqar.MQARData(config.vocab_size, max(config.pairs), config.seq_len, config.max_queries,
                         repeat_queries=True)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=config.vocab_size, block_size=config.seq_len, n_layer=config.n_layer,
                            n_head=config.n_head, n_embd=config.n_embd, head_dim=head_dim, dropout=0.0,
                            attention=attention)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=min(config.lrs))
    generator = torch.Generator().manual_seed(0)
    return _median_step_seconds(
        model, opt, lambda: data.get_batch("train", config.batch_size, config.seq_len, generator, device),
        device, steps, warmup)


def _set_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _protocol_task(task: dict) -> dict:
    """One unit of work in a worker process: ``kind`` "probe" or "run". Never raises: an error is recorded."""
    config = ProtocolConfig(**task["config"])
    _set_threads(config.threads_per_worker)
    params = task["params"]
    try:
        if task["kind"] == "probe":
            return dict(params, seconds_per_step=probe_step_time(config, params["attention"], params["head_dim"],
                                                                 steps=task.get("steps", 20)))
        return train_run(config, **params)
    except Exception as err:  # recorded; the cell it belongs to is then not reported
        return dict(params, error=f"{type(err).__name__}: {err}")


class _InlineExecutor:
    """``submit`` runs the call at once in this process and returns a finished future (``workers <= 1``)."""

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait=True):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _cell_id(config_name: str, cell: dict) -> tuple:
    return (config_name,) + tuple(cell[field] for field in CELL_FIELDS)


def protocol_path(out_dir: os.PathLike, config: ProtocolConfig, slug: str, suffix: str = "json") -> Path:
    """``out_dir/mqar_protocol_<slug>.<suffix>``; the family grid adds its name: ``mqar_protocol_family_<slug>``."""
    stem = f"mqar_protocol_{slug}" if config.name in ("gpu", "cpu") else f"mqar_protocol_{config.name}_{slug}"
    return Path(out_dir) / f"{stem}.{suffix}"


def run_protocol(configs: Sequence[ProtocolConfig], out_dir: os.PathLike, slug: str, workers: int = 1,
                 budget_s: Optional[float] = None, safety: float = 2.5, probe_steps: int = 20,
                 plot: bool = True, log=None, skip: Sequence[tuple] = ()) -> Dict[str, dict]:
    """Measure every cell of ``configs`` by the protocol, sharing ``workers`` processes, within ``budget_s``.

    ``skip``: cells ``(attention, num_pairs, head_dim)`` reported elsewhere (an earlier part of the same grid):
    neither probed nor run, listed under ``skipped``, so this part's JSON merges with the others
    (:func:`merge_protocol`).

    1. A probe: each (arm, head dim) of every config trains ``probe_steps`` steps, all workers busy at once (the
       load the runs will see), giving seconds per step under load.
    2. Cells are launched in order (every cell of the first config, then of the next; within a config its
       :meth:`ProtocolConfig.cells`), each only when a worker is free and nothing admitted is waiting, and only if
       :func:`projected_finish` (durations: steps x the probe's seconds per step x ``safety`` until a run of that
       arm and head dim has finished, then the slowest such run's seconds per step)
       ends within ``budget_s`` of the start; cells never launched are listed in ``not_run``. A cell's seed
       runs are queued ahead of new cells as soon as its rate is chosen.
    3. After every finished run each config's JSON (:func:`protocol_path`) is rewritten: ``runs`` (every run),
       ``cells`` (the complete cells, :func:`summarize_cell`), ``in_progress``, ``not_run``, ``failed`` (cells
       with a run that raised), ``probe``, ``complete``.

    Returns ``{config name: payload}``. ``workers <= 1`` runs everything in this process (tests, fast mode).
    """
    log = log or (lambda message: print(message, flush=True))
    t_start = time.perf_counter()
    deadline = None if budget_s is None else t_start + budget_s
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_name = {c.name: c for c in configs}
    if len(by_name) != len(configs):
        raise ValueError("configs must have distinct names")
    _set_threads(max(c.threads_per_worker for c in configs))
    payloads = {c.name: {"environment": _environment(c.device), "config": dataclasses.asdict(c),
                         "rules": _rules(c), "budget_s": budget_s, "workers": max(1, workers), "probe": {},
                         "runs": [], "cells": [], "in_progress": [], "not_run": [], "failed": [],
                         "complete": False, "wall_s": 0.0} for c in configs}
    skip = {tuple(cell) for cell in skip}
    todo = {c.name: [cell for cell in c.cells() if tuple(cell[f] for f in CELL_FIELDS) not in skip] for c in configs}
    for c in configs:
        payloads[c.name]["skipped"] = [cell for cell in c.cells() if cell not in todo[c.name]]
    for payload in payloads.values():
        payload["environment"]["threads_per_worker"] = payload["config"]["threads_per_worker"]

    def save():
        for name, payload in payloads.items():
            payload["wall_s"] = time.perf_counter() - t_start
            write_json(protocol_path(out, by_name[name], slug), payload)

    context = __import__("multiprocessing").get_context("spawn")
    executor = (concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) if workers > 1
                else _InlineExecutor())
    with executor:
        # 1. the probe: every (config, arm, head dim), repeated to fill every worker
        combos = list(dict.fromkeys((c.name, cell["attention"], cell["head_dim"]) for c in configs
                                    for cell in todo[c.name]))
        jobs = [combos[i % len(combos)] for i in range(max(len(combos), workers))] if combos else []
        futures = [executor.submit(_protocol_task, dict(kind="probe", config=dataclasses.asdict(by_name[n]),
                                                        steps=probe_steps, params=dict(attention=a, head_dim=d)))
                   for n, a, d in jobs]
        probe: Dict[tuple, List[float]] = {}
        for (name, arm, d), future in zip(jobs, futures):
            result = future.result()
            if "error" in result:
                log(f"probe {arm} d={d}: {result['error']}")
                continue
            probe.setdefault((arm, d), []).append(result["seconds_per_step"])
        step_s = {key: max(values) for key, values in probe.items()}  # the slowest copy: runs see the same load
        for c in configs:
            payloads[c.name]["probe"] = {"seconds_per_step": {f"{a}/d{d}": step_s.get((a, d)) for a in c.arms
                                                              for d in c.head_dims},
                                         "steps": probe_steps, "copies": len(jobs), "s": time.perf_counter() - t_start}
        log(f"probe ({time.perf_counter() - t_start:.0f} s): " +
            ", ".join(f"{a}/d{d} {s * 1e3:.1f} ms/step" for (a, d), s in sorted(step_s.items())))
        observed: Dict[tuple, List[float]] = {}  # (arm, d) -> seconds per step of finished runs (wall / steps)

        def duration(config: ProtocolConfig, cell: dict) -> float:
            key = (cell["attention"], cell["head_dim"])
            seen = observed.get(key)
            # the slowest finished run of this arm and head dim (runs under the full load), else the probe x safety
            per_step = max(seen) if seen else step_s.get(key, max(step_s.values(), default=1.0)) * safety
            return config.steps * per_step

        # 2. scheduling
        waiting = [(c, cell) for c in configs for cell in todo[c.name]]  # not yet admitted, in launch order
        queue: List[dict] = []  # tasks of admitted cells not yet submitted; seed runs go first
        running: Dict[concurrent.futures.Future, dict] = {}
        ends: Dict[concurrent.futures.Future, float] = {}
        admitted: Dict[tuple, dict] = {}

        def submit(task):
            future = executor.submit(_protocol_task, task)
            running[future] = task
            ends[future] = time.perf_counter() + task["expected_s"]

        def admit() -> bool:
            now = time.perf_counter()
            queued = [t["expected_s"] for t in queue]
            for cfg_cell in list(waiting):
                config, cell = cfg_cell
                d = duration(config, cell)
                # seed runs of cells still sweeping rates will come too: count them as queued work
                pending_seeds = [duration(by_name[a["config"]], a["cell"]) for a in admitted.values()
                                 for _ in range(len(by_name[a["config"]].seeds) - 1) if a["lr"] is None]
                finish = projected_finish(now, list(ends.values()), queued + pending_seeds, [d] * len(config.lrs),
                                          [d] * (len(config.seeds) - 1), max(1, workers))
                if deadline is not None and finish > deadline:
                    continue
                waiting.remove(cfg_cell)
                admitted[_cell_id(config.name, cell)] = {"config": config.name, "cell": cell, "lr": None}
                payloads[config.name]["in_progress"].append(cell)
                for lr in config.lrs:
                    queue.append(dict(kind="run", config=dataclasses.asdict(config), expected_s=d,
                                      params=dict(cell, lr=lr, seed=config.seeds[0])))
                return True
            return False

        while True:
            while len(running) < max(1, workers) and (queue or admit()):
                submit(queue.pop(0))
            if not running:
                break
            done, _ = concurrent.futures.wait(list(running), return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                ends.pop(future)
                result = future.result()
                config = ProtocolConfig(**task["config"])
                payload = payloads[config.name]
                cell = {field: task["params"][field] for field in CELL_FIELDS}
                key = _cell_id(config.name, cell)
                result["wall_s"] = result.get("wall_s", 0.0)
                payload["runs"].append(result)
                log(f"{config.name}: {cell['attention']:>10} pairs={cell['num_pairs']:>3} d={cell['head_dim']:>2} "
                    f"lr={task['params']['lr']:g} seed={task['params']['seed']} acc={result.get('accuracy')} "
                    f"({result['wall_s']:.0f} s) {result.get('error', result.get('diverged', ''))}")
                if result.get("steps"):
                    observed.setdefault((cell["attention"], cell["head_dim"]), []).append(
                        result["wall_s"] / result["steps"])
                state = admitted[key]
                if "error" in result:
                    if cell in payload["in_progress"]:
                        payload["in_progress"].remove(cell)
                        payload["failed"].append(dict(cell, error=result["error"]))
                    queue[:] = [t for t in queue if _cell_id(t["config"]["name"], t["params"]) != key]
                    state["lr"] = "failed"
                    continue
                cell_runs = [r for r in payload["runs"] if _same_cell(r, cell)]
                if state["lr"] is None:
                    lr_runs = [r for r in cell_runs if r["seed"] == config.seeds[0] and "error" not in r]
                    if len(lr_runs) == len(config.lrs):
                        state["lr"] = choose_lr(lr_runs)
                        seed_tasks = [dict(kind="run", config=task["config"], expected_s=task["expected_s"],
                                           params=dict(cell, lr=state["lr"], seed=s)) for s in config.seeds[1:]]
                        queue[:0] = seed_tasks
                summary = summarize_cell(config, cell, payload["runs"]) if state["lr"] not in (None, "failed") else None
                if summary is not None:
                    payload["cells"].append(summary)
                    payload["in_progress"].remove(cell)
                    log(f"{config.name}: cell {cell} mean {summary['mean']:.3f} best {summary['best']:.3f} "
                        f"failures {summary['failures']}/{len(config.seeds)} at lr {summary['chosen_lr']:g}")
            save()
    for config, cell in waiting:
        payloads[config.name]["not_run"].append(dict(cell, reason=f"projected finish past the {budget_s} s budget"))
    for name, payload in payloads.items():
        payload["complete"] = not (payload["not_run"] or payload["failed"] or payload["in_progress"])
    save()
    if plot:
        for config in configs:
            if payloads[config.name]["cells"]:
                plot_protocol(payloads[config.name], protocol_path(out, config, slug, "png"))
    return payloads


#: Config fields that may differ between parts of one merged grid (they say which cells a part ran, and how).
_PART_FIELDS = ("arms", "pairs", "head_dims", "priority", "note")


def merge_protocol(parts: Sequence[dict]) -> dict:
    """One protocol payload from parts measured separately (e.g. in different sessions) with the same recipe.

    Every config field outside ``arms, pairs, head_dims, priority, note`` must agree (the rules then agree too),
    and no cell may be reported by two parts. The merged grid lists each part's arms, pairs and head dims in order
    of first appearance; ``cells`` and ``runs`` are the parts' (each run gains ``part``, its part's index);
    ``not_run``, ``in_progress`` and ``failed`` keep a part's entries only for cells no part reported. Each part's
    ``environment``, ``budget_s``, ``workers``, ``probe``, ``wall_s``, ``note`` and reported cells are kept under
    ``parts``; the top-level ``environment`` is the first part's, ``wall_s`` the parts' sum. A part that is itself
    a merge contributes its parts (so a merged grid can be extended by merging it with a new part).

    Raises:
        ValueError: no parts, recipes that differ (naming the field), or a cell reported twice.
    """
    if not parts:
        raise ValueError("merge_protocol needs at least one part")
    first = parts[0]["config"]
    for i, part in enumerate(parts[1:], 1):
        for field, value in part["config"].items():
            if field not in _PART_FIELDS and value != first.get(field):
                raise ValueError(f"part {i} differs from part 0 in config field {field!r}: "
                                 f"{value!r} against {first.get(field)!r}")
    merged_config = dict(first)
    for field in ("arms", "pairs", "head_dims"):
        merged_config[field] = list(dict.fromkeys(v for part in parts for v in part["config"][field]))
    merged_config["note"] = "; ".join(dict.fromkeys(p["config"]["note"] for p in parts if p["config"]["note"]))

    def key(cell):
        return tuple(cell[field] for field in CELL_FIELDS)

    cells, runs, reported, records, offset = [], [], {}, [], 0
    for i, part in enumerate(parts):
        for cell in part["cells"]:
            if key(cell) in reported:
                raise ValueError(f"cell {dict(zip(CELL_FIELDS, key(cell)))} is reported by parts "
                                 f"{reported[key(cell)]} and {i}")
            reported[key(cell)] = i
            cells.append(cell)
        if "parts" in part:  # an earlier merge: keep its parts, and its runs' part numbers shifted after ours
            runs += [dict(run, part=run["part"] + offset) for run in part["runs"]]
            records += part["parts"]
        else:
            runs += [dict(run, part=offset) for run in part["runs"]]
            records.append({"environment": part["environment"], "budget_s": part.get("budget_s"),
                            "workers": part.get("workers"), "probe": part.get("probe"), "wall_s": part.get("wall_s"),
                            "note": part["config"]["note"],
                            "cells": [dict(zip(CELL_FIELDS, key(c))) for c in part["cells"]]})
        offset = len(records)
    leftovers = {name: list({key(c): c for part in parts for c in part.get(name, [])
                             if key(c) not in reported}.values())
                 for name in ("not_run", "in_progress", "failed")}
    return {"environment": parts[0]["environment"], "config": merged_config, "rules": parts[0]["rules"],
            "parts": records,
            "runs": runs, "cells": cells, **leftovers,
            "complete": not any(leftovers.values()), "wall_s": sum(r.get("wall_s") or 0.0 for r in records)}


def _rules(config: ProtocolConfig) -> dict:
    return {
        "lr_choice": f"seed {config.seeds[0]} at every rate of {list(config.lrs)}; the rate with the highest held-out "
                     f"accuracy, ties to the lower final training loss, then the lower rate",
        "seeds": f"seeds {list(config.seeds)} at the chosen rate (seed {config.seeds[0]}'s run is the one from the sweep)",
        "best": "maximum accuracy over the seeds at the chosen rate (= over every run of the cell)",
        "mean_std": "mean and sample standard deviation (ddof 1) over the seeds at the chosen rate",
        "failure": f"a seed with accuracy < {config.fail_below}",
        "solved": f"a seed with accuracy >= {config.solved_at}",
        "diverged": "a run whose training loss became non-finite: a failure, counted as accuracy 0 in the mean",
        "reported": f"a cell is in 'cells' only when all {config.runs_per_cell()} of its runs finished",
        "held_out": f"{config.eval_sequences} sequences drawn once per cell (seed 10000019), the same for every run",
        "state_bytes": "fp32 bytes of the recurrent state H^(S) [d_k, d_v] and H^(Z) [d_k], summed over every layer "
                       "and head (the whole model)",
        "kv_cache_bytes": "fp32 bytes of softmax's keys and values at seq_len, summed over every layer and head",
    }


def plot_protocol(payload: dict, path: Optional[os.PathLike] = None):
    """Accuracy vs number of pairs, one panel per head dim, one colour per arm: the mean over seeds (solid line),
    the best (dotted), each seed a dot; a cell with failures is labelled with their count (e.g. ``2/3 fail``).
    Returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    config = payload["config"]
    cells = payload["cells"]
    head_dims = sorted(config["head_dims"])
    arms = list(config["arms"])
    measured_pairs = sorted({c["num_pairs"] for c in cells})
    fig, axes = plt.subplots(1, len(head_dims), figsize=(4.2 * len(head_dims), 3.6), sharey=True, squeeze=False)
    for ax, d in zip(axes[0], head_dims):
        for i, arm in enumerate(arms):
            rows = sorted((c for c in cells if c["attention"] == arm and c["head_dim"] == d), key=lambda c: c["num_pairs"])
            if not rows:
                continue
            color, marker = ARM_STYLE.get(arm, (f"C{3 + i}", "o"))
            x = [c["num_pairs"] for c in rows]
            ax.plot(x, [c["mean"] for c in rows], marker=marker, color=color, label=f"{arm} (mean)")
            ax.plot(x, [c["best"] for c in rows], linestyle=":", color=color, alpha=0.8)
            shift = 2 ** ((i - (len(arms) - 1) / 2) * 0.06)  # spread the arms' dots apart on the log axis
            for c in rows:
                ax.scatter([c["num_pairs"] * shift] * len(c["accuracies"]), c["accuracies"], s=12, color=color,
                           alpha=0.6, edgecolors="none")
                if c["failures"]:
                    ax.annotate(f"{c['failures']}/{len(c['accuracies'])} fail", (c["num_pairs"] * shift, c["mean"]),
                                textcoords="offset points", xytext=(3, 4), fontsize=7, color=color)
        ax.set_xscale("log", base=2)
        if measured_pairs:  # half an octave of margin: with one pair count, autoscaling zooms onto the arms' shifts
            ax.set_xlim(min(measured_pairs) / 2 ** 0.5, max(measured_pairs) * 2 ** 0.5)
        ax.set_title(f"d_k = d_v = {d} ({config['n_head']} heads)")
        ax.set_xlabel("key-value pairs")
        ax.set_ylim(-0.03, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out recall accuracy")
    axes[0][-1].legend(loc="lower left", fontsize=8)
    env = payload["environment"]
    where = env.get("gpu", env.get("cpu", env["device"]))
    fig.suptitle(f"MQAR, best rate of {len(config['lrs'])} then {len(config['seeds'])} seeds (dots; dotted: best); "
                 f"{config['n_layer']} layers, width {config['n_embd']}, seq_len {config['seq_len']}, "
                 f"{config['steps']} steps ({config['name']}, {where}, {recorded_date(env)[:10]})", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def protocol_markdown(payload: dict) -> str:
    """The protocol JSON as a Markdown table: per arm and head dim, for each number of pairs, ``mean ± std``, the
    best seed, the failures and the chosen rate; cells not reported show a dash. Nothing is typed by hand."""
    config = payload["config"]
    pairs = sorted(config["pairs"])
    by_cell = {(c["attention"], c["head_dim"], c["num_pairs"]): c for c in payload["cells"]}
    env = payload["environment"]
    n_seeds = len(config["seeds"])
    lines = [f"{env.get('gpu', env.get('cpu', env['device']))}, {recorded_date(env)[:10]}, torch {env['torch']}; "
             f"protocol '{config['name']}': {config['n_layer']} layers, width {config['n_embd']}, {config['n_head']} "
             f"heads, seq_len {config['seq_len']}, {config['steps']} steps x batch {config['batch_size']}; rates "
             f"{', '.join(f'{lr:g}' for lr in config['lrs'])} (seed {config['seeds'][0]}), then seeds "
             f"{', '.join(map(str, config['seeds']))} at the best rate. Each entry: mean ± std over {n_seeds} seeds, "
             f"best, failures (accuracy < {config['fail_below']:g}), chosen rate. Memory: what the arm keeps to "
             f"decode at {config['seq_len']} tokens (fp32, whole model): softmax its KV cache, hybrid one layer's cache "
             f"and the other layers' states, the others their states.", "",
             "| arm | d_k | memory (KiB) | " + " | ".join(f"{p} pairs" for p in pairs) + " |",
             "|---|---:|---:|" + "---:|" * len(pairs)]
    for arm in config["arms"]:
        for d in sorted(config["head_dims"]):
            entries = []
            for p in pairs:
                c = by_cell.get((arm, d, p))
                entries.append("–" if c is None else f"{c['mean']:.2f} ± {c['std']:.2f}, best {c['best']:.2f}, "
                                                     f"{c['failures']}/{n_seeds} fail, lr {c['chosen_lr']:g}")
            kib = decode_memory_bytes(arm, config["n_layer"], config["n_head"], d, config["seq_len"]) / 1024
            lines.append(f"| {arm} | {d} | {kib:.1f} | " + " | ".join(entries) + " |")
    if payload.get("not_run"):
        lines += ["", "Not run (did not fit the budget): " + "; ".join(
            f"{c['attention']} {c['num_pairs']} pairs d_k {c['head_dim']}" for c in payload["not_run"])]
    return "\n".join(lines)


def _protocol_main(args, parser) -> int:
    """``--protocol``: the grid of a preset (its fields overridden from the command line), then the family grid
    when ``--family-arms`` names arms, sharing one pool of workers and one budget."""
    from . import model as model_module

    known = model_module.ATTENTIONS  # read now: arms registered in model.ATTENTIONS are accepted
    for arm in (args.arms or []) + (args.family_arms or []):
        if arm not in known:
            parser.error(f"unknown arm {arm!r}: model.ATTENTIONS lists {', '.join(known)}")
    config = PROTOCOL_PRESETS[args.protocol]
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in
                 dict(arms=args.arms, pairs=args.pairs, head_dims=args.head_dims, lrs=args.lrs, steps=args.steps,
                      batch_size=args.batch_size, priority=args.priority).items() if v is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides,
                                     note=f"{config.note}; set on the command line: {overrides}".lstrip("; "))
    if args.note:
        config = dataclasses.replace(config, note=f"{config.note}; {args.note}".lstrip("; "))
    configs = [config]
    if args.family_arms:
        family = PROTOCOL_PRESETS["family"]
        # the family grid takes the main grid's recipe, so its cells compare with the main grid's
        recipe = {f.name: getattr(config, f.name) for f in dataclasses.fields(ProtocolConfig)
                  if f.name not in ("name", "arms", "pairs", "head_dims", "priority", "note")}
        pairs, head_dims = FAMILY_GRIDS[args.protocol]
        configs.append(dataclasses.replace(family, **recipe, arms=tuple(args.family_arms),
                                           pairs=tuple(args.family_pairs or pairs),
                                           head_dims=tuple(args.family_head_dims or head_dims),
                                           note=f"issue 17's family beside '{config.name}', the same recipe"
                                                + (f"; {args.note}" if args.note else "")))
        if args.family_first:  # launch order: the family's cells before the main grid's
            configs.reverse()
    skip = [tuple(c[f] for f in CELL_FIELDS) for path in (args.skip_reported or [])
            for c in json.loads(Path(path).read_text())["cells"]]
    payloads = run_protocol(configs, args.out, args.slug, workers=args.workers, budget_s=args.budget_s,
                            safety=args.safety, probe_steps=args.probe_steps, skip=skip)
    for config in configs:
        payload = payloads[config.name]
        print(f"wrote {protocol_path(args.out, config, args.slug)}: {len(payload['cells'])} cells reported, "
              f"{len(payload['not_run'])} not run, {len(payload['failed'])} failed, {len(payload['runs'])} runs, "
              f"{payload['wall_s']:.0f} s", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="MQAR as peers measure it: per cell a learning-rate sweep (seed 0), "
                                     "then more seeds at the best rate.")
    parser.add_argument("--out", help="folder for the JSON and the plot")
    parser.add_argument("--protocol-markdown", metavar="JSON", help="print the table of a protocol JSON and exit")
    parser.add_argument("--protocol", choices=sorted(p for p in PROTOCOL_PRESETS if p != "family"),
                        help="the preset grid (default: gpu if CUDA, else cpu)")
    parser.add_argument("--family-arms", nargs="+", metavar="ARM",
                        help="also the family grid (these arms, the same recipe, after the main grid)")
    parser.add_argument("--family-pairs", nargs="+", type=int, help="the family grid's pair counts")
    parser.add_argument("--family-head-dims", nargs="+", type=int, help="the family grid's head dims")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="merge protocol JSONs of one recipe (parts run "
                        "separately) into DIR/mqar_protocol_<slug>.json and .png, and exit")
    parser.add_argument("--skip-reported", nargs="+", metavar="JSON", help="skip the cells these protocol JSONs "
                        "report (earlier parts of the same grid), so this part runs only the rest and merges with them")
    parser.add_argument("--family-first", action="store_true",
                        help="launch the family grid's cells before the main grid's (the budget may not fit both)")
    parser.add_argument("--note", help="a sentence recorded in each grid's config note (e.g. how the GPU was shared)")
    parser.add_argument("--slug", default="run", help="output names mqar_protocol_<slug>.json/.png")
    parser.add_argument("--workers", type=int, default=1, help="training processes run at once")
    parser.add_argument("--steps", type=int, help="override training steps per run")
    parser.add_argument("--arms", nargs="+", help="override the arms (any of model.ATTENTIONS)")
    parser.add_argument("--pairs", nargs="+", type=int, help="override the pair counts (in priority order)")
    parser.add_argument("--head-dims", nargs="+", type=int, help="override the head dimensions (in priority order)")
    parser.add_argument("--batch-size", type=int, help="override the batch size")
    parser.add_argument("--lrs", nargs="+", type=float, help="override the learning rates")
    parser.add_argument("--priority", nargs=3, choices=CELL_FIELDS, help="nesting of the launch order, outermost "
                        "first (default head_dim num_pairs attention)")
    parser.add_argument("--budget-s", type=float, help="launch a cell only if its projected finish is within this "
                        "many seconds of the start")
    parser.add_argument("--safety", type=float, default=2.5, help="probe step times are multiplied by this until "
                        "runs have finished (on an H200 with 14 workers, runs took 2.5-6x the probe's step time)")
    parser.add_argument("--probe-steps", type=int, default=20, help="timed steps per probe")
    args = parser.parse_args(argv)
    if args.protocol_markdown:
        print(protocol_markdown(json.loads(Path(args.protocol_markdown).read_text())))
        return 0
    if not args.out:
        parser.error("--out is required (unless --protocol-markdown)")
    if args.merge:
        merged = merge_protocol([json.loads(Path(p).read_text()) for p in args.merge])
        config = ProtocolConfig(**{f.name: merged["config"][f.name] for f in dataclasses.fields(ProtocolConfig)})
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json(protocol_path(args.out, config, args.slug), merged)
        plot_protocol(merged, protocol_path(args.out, config, args.slug, "png"))
        print(f"wrote {protocol_path(args.out, config, args.slug)}: {len(merged['cells'])} cells from "
              f"{len(args.merge)} parts, {len(merged['not_run'])} not run", flush=True)
        return 0
    if args.protocol is None:
        args.protocol = "gpu" if torch.cuda.is_available() else "cpu"
    return _protocol_main(args, parser)


if __name__ == "__main__":
    sys.exit(main())
