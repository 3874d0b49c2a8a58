"""Training the small model: one reusable function, :func:`train`, and a command line around it.

    python -m logattn_ref.train --attention log --preset shakespeare --out runs/log
    torchrun --nproc_per_node 2 -m logattn_ref.train --attention softmax --preset shakespeare --out runs/sm

What it does, and why:

- AdamW with a linear warm-up then a cosine decay to ``min_lr`` (a LambdaLR scheduler, so its state is
  checkpointed like everything else), gradient-norm clipping.
- Mixed precision where the GPU has it: bf16 autocast if supported, else fp16 autocast with a GradScaler
  (a T4 has no bf16). CPU runs in float32.
- Validation every ``eval_interval`` steps on ``eval_iters`` batches; the best model is kept in
  ``best.pt``. Metrics go to ``metrics.jsonl`` (one JSON object a line) and a ``tqdm.auto`` bar shows loss and
  tokens/s.
- Checkpoints (model, optimizer, scheduler, scaler, RNG states, step, the data generator's state) are written
  atomically (temp file + ``os.replace``) and read back with ``torch.load(weights_only=True)``. A run that
  was killed resumes from ``last.pt`` and continues *exactly*: the data batches and the dropout masks come
  from checkpointed generators, so the losses after resuming equal those of an uninterrupted run.
- Several processes through ``torchrun`` train with DistributedDataParallel (NCCL on GPUs, gloo on CPUs);
  each rank draws its own batches, rank 0 writes files.

The data source is anything with ``vocab_size`` and ``get_batch(split, batch_size, block_size, generator,
device)`` (see :mod:`logattn_ref.data`), so other experiments reuse :func:`train` unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .model import ATTENTIONS, GPT, POSITIONS, ModelConfig
from .runio import atomic_open, write_json
from .torch_attention import LOGSPACE_METHODS, METHODS

__all__ = ["TrainConfig", "PRESETS", "preset", "train", "evaluate", "load_model", "lr_at", "atomic_save"]

#: What --attention-method accepts: the methods of either log arm (ModelConfig checks the one the arm takes).
_ATTENTION_METHODS = tuple(dict.fromkeys(LOGSPACE_METHODS + METHODS))

CHECKPOINT_LAST = "last.pt"
CHECKPOINT_BEST = "best.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """The optimisation recipe. ``batch_size`` is per process."""

    max_steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 500
    eval_iters: int = 40
    checkpoint_interval: int = 500
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16"

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "eval_interval", "eval_iters", "checkpoint_interval", "log_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")


# Presets: (model sizes, recipe). "shakespeare" is the README's baseline. "tiny" is for CI.
# "colab" takes about 20 minutes for the lesson's three arms (softmax with the token shift, log, log-signed) on a
#   T4. Not measured on a T4: estimated from the H200 run (benchmarks/results/train_shakespeare.json,
#   "colab_preset_tokens_per_s_alone": this preset's own throughput alone on the H200, log arms through the fused
#   kernels): softmax 235k, log 142k, log-signed 185k tokens/s. 1200 steps x 4096 tokens take 21 / 35 / 27 s
#   there; x15 for a T4 (its memory bandwidth and fp16 tensor throughput are both ~1/15 of an H200's; at these
#   sizes both GPUs are partly launch-bound, so this errs long) gives ~5 / 9 / 7 min: ~20 min in all, plus
#   evaluation.
# "cpu" is sized for ~10 minutes for all arms on a laptop CPU: estimated from component timings here (a
#   2-core machine shared with other jobs, so end-to-end timings were not trustworthy): softmax ~1 min, the
#   log arm ~5 min (its log-space scan dominates: ~0.5 s/step), log-signed ~2-3 min.
PRESETS: Dict[str, Dict[str, dict]] = {
    # nanoGPT's shakespeare-char model and optimiser, with the cosine schedule ending at 2000 steps instead of
    # 5000: at 5000 every arm overfitted from about step 2000 on (the earlier one-seed run, in git history as
    # benchmarks/results/train_shakespeare.json at commit c117736: softmax's validation loss rose from 1.54 at
    # step 2000 to 1.84 at 5000 while its training loss fell to 0.62), so the runs end where the learning rate has
    # decayed and report the final validation loss.
    "shakespeare": {
        "model": dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
        "train": dict(max_steps=2000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                      eval_interval=250, eval_iters=40, checkpoint_interval=250),
    },
    "colab": {
        "model": dict(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.1),
        "train": dict(max_steps=1200, batch_size=32, lr=2e-3, min_lr=2e-4, warmup_steps=100,
                      eval_interval=200, eval_iters=10, checkpoint_interval=200),
    },
    "cpu": {
        "model": dict(block_size=64, n_layer=3, n_head=6, n_embd=96, dropout=0.0),
        "train": dict(max_steps=600, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=50,
                      eval_interval=100, eval_iters=10, checkpoint_interval=100),
    },
    "tiny": {
        "model": dict(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
        "train": dict(max_steps=30, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                      eval_interval=10, eval_iters=2, checkpoint_interval=10, log_interval=1),
    },
}


def preset(name: str, attention: str = "softmax", vocab_size: int = 65, **overrides):
    """``(ModelConfig, TrainConfig)`` of a preset; ``overrides`` replace fields of either (by name)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    model_kw = dict(PRESETS[name]["model"], attention=attention, vocab_size=vocab_size)
    train_kw = dict(PRESETS[name]["train"])
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in overrides.items():
        if key in model_fields:
            model_kw[key] = value
        elif key in train_fields:
            train_kw[key] = value
        else:
            raise ValueError(f"unknown setting {key!r}: not a field of ModelConfig or TrainConfig")
    return ModelConfig(**model_kw), TrainConfig(**train_kw)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate after ``step`` optimizer steps: linear warm-up, then cosine from ``lr`` to ``min_lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def atomic_save(obj, path: os.PathLike) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename: a kill mid-write never leaves a torn file."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _precision(config: TrainConfig, device: torch.device) -> str:
    if config.precision != "auto":
        return config.precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model, data, model_config: ModelConfig, train_config: TrainConfig, device, precision, step: int):
    """Mean loss on ``eval_iters`` batches of each split. Batches come from a generator seeded by the step
    (not the training generator), so evaluating never changes what training sees next."""
    was_training = model.training
    model.eval()
    out = {}
    for split in ("train", "val"):
        gen = torch.Generator().manual_seed(train_config.seed * 1_000_003 + step)
        total = 0.0
        for _ in range(train_config.eval_iters):
            x, y = data.get_batch(split, train_config.batch_size, model_config.block_size, gen, device)
            with _autocast(device, precision):
                _, loss = model(x, y)
            total += float(loss)
        out[split] = total / train_config.eval_iters
    model.train(was_training)
    return out


def _capture_rng(device: torch.device) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _restore_rng(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def load_model(path: os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """A :class:`GPT` from a checkpoint written by :func:`train` (``best.pt`` or ``last.pt``)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = GPT(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def _check_vocab_size(data, model_config: ModelConfig) -> None:
    if getattr(data, "vocab_size", model_config.vocab_size) != model_config.vocab_size:
        raise ValueError(
            f"data has vocab_size={data.vocab_size} but model_config.vocab_size={model_config.vocab_size}"
        )


@dataclass
class _Process:
    """Where this process sits: alone (rank 0 of 1), or one rank of a ``torchrun`` job; and its device."""

    distributed: bool
    rank: int
    world: int
    device: torch.device

    @property
    def writes_files(self) -> bool:
        return self.rank == 0

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (``[obj]`` when not distributed)."""
        if not self.distributed:
            return [obj]
        objs = [None] * self.world
        dist.all_gather_object(objs, obj)
        return objs

    def mean(self, values: List[float]) -> List[float]:
        """The mean of ``values`` over the ranks (unchanged when not distributed)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, device=self.device)
        dist.all_reduce(t)
        return [float(x) / self.world for x in t]


def _this_process(device_name: str) -> _Process:
    distributed = dist.is_available() and dist.is_initialized()
    device = _resolve_device(device_name)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return _Process(distributed, dist.get_rank() if distributed else 0, dist.get_world_size() if distributed else 1,
                    device)


def _build_model_and_optimizer(model_config: ModelConfig, train_config: TrainConfig, device: torch.device,
                               precision: str):
    """The model (the same initial weights on every rank), AdamW (weight decay on matrices only), the warm-up +
    cosine schedule of :func:`lr_at`, and the GradScaler that fp16 needs (disabled otherwise)."""
    torch.manual_seed(train_config.seed)
    model = GPT(model_config).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train_config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train_config.lr,
        betas=(train_config.beta1, train_config.beta2),
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, train_config) / train_config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return model, optimizer, scheduler, scaler


class _Run:
    """One training run's parts (model, optimizer, schedule, scaler, generators) and its progress (``step``,
    ``best_val``, ``history``), with the four things :func:`train` does to them: resume, step, evaluate and
    checkpoint. Only rank 0 writes files, and only when there is an output folder."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, data, out: Optional[Path],
                 process: _Process, precision: str, on_eval: Optional[Callable[[dict], None]]):
        self.model_config, self.train_config, self.data = model_config, train_config, data
        self.out, self.process, self.precision, self.on_eval = out, process, precision, on_eval
        self.device = process.device
        self.model, self.optimizer, self.scheduler, self.scaler = _build_model_and_optimizer(
            model_config, train_config, self.device, precision)
        self.data_generator = torch.Generator().manual_seed(train_config.seed + 7919 * process.rank)  # own batches
        torch.manual_seed(train_config.seed + 104729 * process.rank)  # dropout masks differ across ranks
        self.step, self.best_val, self.history = 0, float("inf"), []
        self.train_model = self.model  # wrapped by DistributedDataParallel in a torchrun job

    # -- resuming ------------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from ``out/last.pt`` when it exists: every state, and the metrics logged up to it."""
        last_path = self.out / CHECKPOINT_LAST if self.out is not None else None
        if last_path is None or not last_path.exists():
            return
        rank = self.process.rank
        ckpt = torch.load(last_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best_val = ckpt["step"], ckpt["best_val_loss"]
        self.data_generator.set_state(ckpt["data_generator"][rank])
        _restore_rng(ckpt["rng"][rank], self.device)
        metrics_path = self.out / METRICS
        if self.process.writes_files and metrics_path.exists():
            # Records written after the checkpoint belong to the killed run's lost steps; they are redone.
            kept = [line for line in metrics_path.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line)["step"] <= self.step]
            with atomic_open(metrics_path, "w") as f:
                f.writelines(kept)
            self.history = [json.loads(line) for line in kept]

    def wrap_for_ddp(self) -> None:
        if self.process.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device = self.device
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    # -- one optimizer step ----------------------------------------------------------------------------------

    def train_step(self) -> Tuple[torch.Tensor, float]:
        """One batch, forward, backward, clipped update; returns the loss (on the device, not synced) and the
        learning rate that this step used."""
        tc = self.train_config
        x, y = self.data.get_batch("train", tc.batch_size, self.model_config.block_size, self.data_generator,
                                   self.device)
        with _autocast(self.device, self.precision):
            _, loss = self.train_model(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        lr_used = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return loss, lr_used

    # -- metrics, evaluation, checkpoints ----------------------------------------------------------------------

    def record(self, entry: dict) -> None:
        """Keep a metric record, and append it to ``metrics.jsonl`` (rank 0)."""
        self.history.append(entry)
        if self.out is not None and self.process.writes_files:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def evaluate(self) -> None:
        """Train and validation loss (averaged over ranks), recorded; a new best is checkpointed to ``best.pt``."""
        losses = evaluate(self.model, self.data, self.model_config, self.train_config, self.device, self.precision,
                          self.step)
        train_loss, val_loss = self.process.mean([losses["train"], losses["val"]])
        entry = {"step": self.step, "train_loss": train_loss, "val_loss": val_loss}
        self.record(entry)
        if val_loss < self.best_val:
            self.best_val = val_loss
            self.checkpoint(CHECKPOINT_BEST)
        if self.on_eval is not None and self.process.writes_files:
            self.on_eval(entry)

    def checkpoint(self, name: str) -> None:
        """Everything a resumed run needs (every rank's RNG and data-generator states), written atomically."""
        rngs = self.process.gather(_capture_rng(self.device))  # every rank takes part in the gathers
        generators = self.process.gather(self.data_generator.get_state())
        if self.out is None or not self.process.writes_files:
            return
        atomic_save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "best_val_loss": self.best_val,
                "data_generator": generators,
                "rng": [{k: v.cpu() for k, v in r.items()} for r in rngs],
                "model_config": dataclasses.asdict(self.model_config),
                "train_config": dataclasses.asdict(self.train_config),
            },
            self.out / name,
        )

    # -- the loop ------------------------------------------------------------------------------------------

    def run_until(self, end: int, progress: bool) -> float:
        """Step until ``end``: log every ``log_interval`` steps, evaluate every ``eval_interval`` (and at
        ``max_steps``), checkpoint every ``checkpoint_interval`` (and at ``end``). Returns the seconds taken."""
        tc = self.train_config
        from tqdm.auto import tqdm

        # Redrawn at most every 2 s: in a notebook each redraw is a few widget messages, and a runner that reads
        # them only when the cell ends (nbval) keeps about 1000 before it starts dropping them.
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not progress or not self.process.writes_files,
                   desc=self.model_config.attention, dynamic_ncols=True, mininterval=2.0)
        tokens_per_step = tc.batch_size * self.model_config.block_size * self.process.world
        self.model.train()
        t_start = time.perf_counter()
        t_last, steps_since = t_start, 0
        while self.step < end:
            loss, lr_used = self.train_step()
            steps_since += 1
            bar.update(1)
            if self.step % tc.log_interval == 0 or self.step == end:
                loss_value = float(loss.detach())  # one host sync per logged step, not per step
                now = time.perf_counter()
                rate = steps_since * tokens_per_step / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"training loss became {loss_value} at step {self.step}")
                self.record({"step": self.step, "loss": loss_value, "lr": lr_used, "tokens_per_s": rate})
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:,.0f}", refresh=False)  # at the next redraw
            if self.step % tc.eval_interval == 0 or self.step == tc.max_steps:
                self.evaluate()
            if self.step % tc.checkpoint_interval == 0 or self.step == end:
                self.checkpoint(CHECKPOINT_LAST)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - t_start
        bar.close()
        return wall


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data,
    out_dir: Optional[os.PathLike] = None,
    *,
    resume: bool = True,
    stop_at: Optional[int] = None,
    progress: bool = True,
    on_eval: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Train a :class:`GPT` on ``data``; return ``{"model", "history", "best_val_loss", ...}``.

    Args:
        model_config, train_config: the model and the recipe (see :func:`preset`).
        data: has ``vocab_size`` and ``get_batch(split, batch_size, block_size, generator, device)``.
        out_dir: where checkpoints and ``metrics.jsonl`` go (None: nothing is written, nothing resumed).
        resume: continue from ``out_dir/last.pt`` when it exists.
        stop_at: stop (after checkpointing) once this many steps are done, as if the run were killed there;
            a later call with the same arguments continues it.
        progress: show a tqdm bar (rank 0 only).
        on_eval: called with each evaluation record (e.g. to draw a live plot).

    Returns:
        ``model`` (unwrapped, on its device), ``history`` (list of metric records: ``{"step", "loss", "lr",
        "tokens_per_s"}`` per logged step and ``{"step", "train_loss", "val_loss"}`` per evaluation),
        ``best_val_loss``, ``steps``, ``wall_s`` (this call's training time), ``precision``, ``device``.

    Raises:
        ValueError: ``data.vocab_size`` differs from ``model_config.vocab_size``.
    """
    _check_vocab_size(data, model_config)
    process = _this_process(train_config.device)
    precision = _precision(train_config, process.device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and process.writes_files:
        out.mkdir(parents=True, exist_ok=True)

    run = _Run(model_config, train_config, data, out, process, precision, on_eval)
    if resume:
        run.resume()
    run.wrap_for_ddp()
    end = train_config.max_steps if stop_at is None else min(stop_at, train_config.max_steps)
    wall = run.run_until(end, progress)
    return {
        "model": run.model,
        "history": run.history,
        "best_val_loss": run.best_val,
        "steps": run.step,
        "wall_s": wall,
        "precision": precision,
        "device": str(process.device),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attention", choices=ATTENTIONS, default="softmax")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="shakespeare")
    parser.add_argument("--out", required=True, help="folder for checkpoints and metrics.jsonl")
    parser.add_argument("--attention-method", default="auto", choices=_ATTENTION_METHODS,
                        help=f"how the log arms compute: for 'log' one of {', '.join(LOGSPACE_METHODS)}; for "
                             f"'log-signed' one of {', '.join(METHODS)} (softmax does not use it)")
    parser.add_argument("--position", choices=POSITIONS, default="shift",
                        help="'shift' (token shift, every arm) or 'learned' (absolute table: the nanoGPT softmax)")
    parser.add_argument("--steps", type=int, help="override max_steps")
    parser.add_argument("--seed", type=int, help="override the seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--stop-at", type=int, help="stop after this step (checkpointed), as if killed")
    args = parser.parse_args(argv)

    from .data import shakespeare_dataset

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
    try:
        data = shakespeare_dataset()
        overrides = {"device": args.device, "precision": args.precision, "attention_method": args.attention_method,
                     "position": args.position}
        if args.steps is not None:
            overrides["max_steps"] = args.steps
        if args.seed is not None:
            overrides["seed"] = args.seed
        model_config, train_config = preset(args.preset, args.attention, data.vocab_size, **overrides)
        result = train(model_config, train_config, data, args.out, resume=not args.no_resume,
                       stop_at=args.stop_at, progress=not args.no_progress)
        if not distributed or dist.get_rank() == 0:
            summary = {k: result[k] for k in ("best_val_loss", "steps", "wall_s", "precision", "device")}
            summary["parameters"] = result["model"].num_parameters()
            summary["attention"] = args.attention
            summary["position"] = args.position
            summary["preset"] = args.preset
            summary["world_size"] = dist.get_world_size() if distributed else 1
            write_json(Path(args.out) / "summary.json", summary, indent=2)
            print(json.dumps(summary))
        if distributed:
            # Every rank finishes before any tears the group down. A CI trial under heavy load once saw rank 1 abort
            # at exit ("terminate called without an active exception"); that an early exit caused it is a guess.
            dist.barrier()
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
