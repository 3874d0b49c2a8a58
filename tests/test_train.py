"""Training loop: schedule, checkpoints, exact resume after a stop, and two-process DDP on CPU (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from logattn_ref import train as tr
from logattn_ref.data import CharDataset

ROOT = Path(__file__).resolve().parent.parent

# A small synthetic corpus with structure (so losses move), independent of the Shakespeare file.
TEXT = "".join("the quick brown fox jumps over the lazy dog. "[i % 45] for i in range(20000))


def _configs(attention="softmax", **overrides):
    data = CharDataset(TEXT)
    settings = dict(dropout=0.1, max_steps=16, eval_interval=5, checkpoint_interval=4, log_interval=1)
    settings.update(overrides)
    model_config, train_config = tr.preset("tiny", attention, data.vocab_size, **settings)
    return data, model_config, train_config


def _losses(history):
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


def test_lr_schedule_warms_up_then_decays_to_min():
    _, _, cfg = _configs(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    lrs = [tr.lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert tr.lr_at(100, cfg) == pytest.approx(0.1)


def test_preset_rejects_unknown_settings():
    with pytest.raises(ValueError, match="'n_layers'"):
        tr.preset("tiny", n_layers=3)
    with pytest.raises(ValueError, match="preset must be one of"):
        tr.preset("huge")


def test_training_lowers_the_loss_and_writes_metrics(tmp_path):
    data, mc, tc = _configs(max_steps=40, lr=1e-2)
    result = tr.train(mc, tc, data, tmp_path, progress=False)
    losses = [loss for _, loss in _losses(result["history"])]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == result["history"]
    best = tr.load_model(tmp_path / "best.pt")
    assert best.config == mc
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] == 40 and set(ckpt) >= {"optimizer", "scheduler", "scaler", "rng", "data_generator"}


@pytest.mark.parametrize("stop", [7, 8])  # mid-interval and on a checkpoint boundary
def test_resume_after_stop_is_exact(tmp_path, stop):
    data, mc, tc = _configs()
    full = tr.train(mc, tc, data, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    tr.train(mc, tc, data, part, stop_at=stop, progress=False)
    # A killed run may have logged steps after its last checkpoint; resuming must drop and redo them.
    with open(part / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": stop + 1, "loss": 123.0, "lr": 0.0, "tokens_per_s": 0.0}) + "\n")
    resumed = tr.train(mc, tc, data, part, progress=False)
    assert _losses(resumed["history"]) == _losses(full["history"])  # bit-identical on CPU
    assert resumed["best_val_loss"] == full["best_val_loss"]
    for a, b in zip(full["model"].state_dict().values(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b)


def test_vocab_mismatch_is_refused():
    data, mc, tc = _configs()
    mc.vocab_size = data.vocab_size + 1
    with pytest.raises(ValueError, match="vocab_size"):
        tr.train(mc, tc, data, None, progress=False)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    """torchrun, 2 processes, gloo: runs, averages validation over ranks, writes one set of files (on the corpus
    shipped with the package)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "logattn_ref.train", "--preset", "tiny", "--steps", "12", "--device", "cpu",
           "--no-progress", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 12
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [10, 12]
    assert all(r["step"] == i + 1 for i, r in enumerate(r for r in records if "loss" in r))


def test_fp16_with_grad_scaler_runs_and_checkpoints(tmp_path):
    """The T4 path (fp16 autocast + GradScaler), exercised on the CPU: it trains and checkpoints the scaler."""
    data, mc, tc = _configs("log", precision="fp16", max_steps=6)
    result = tr.train(mc, tc, data, tmp_path, progress=False)
    assert result["precision"] == "fp16" and result["best_val_loss"] < 10
    assert torch.load(tmp_path / "last.pt", weights_only=True)["scaler"]["scale"] > 0
