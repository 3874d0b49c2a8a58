"""Byte counts and readout of logattn_ref.recall, and the protocol's code path (the MQAR data: tests/test_mqar.py)."""

import dataclasses
import json

import numpy as np
import pytest

from logattn_ref import numpy_ref
from logattn_ref.recall import kv_cache_bytes, linear_memory_readout, state_bytes


def test_bytes():
    # 2 layers x 4 heads x (16*16 + 16) numbers x 4 bytes; cache: 2 x 4 x 2 (K and V) x 1000 x 16 x 4.
    assert state_bytes(2, 4, 16) == 2 * 4 * 272 * 4
    assert kv_cache_bytes(2, 4, 16, 1000) == 2 * 4 * 2 * 1000 * 16 * 4
    assert kv_cache_bytes(2, 4, 16, 0) == 0
    with pytest.raises(ValueError, match="head_dim"):
        state_bytes(2, 4, 0)


def test_readout_exp_is_log_attention_and_never_exact():
    rng = np.random.default_rng(0)
    keys, values = rng.normal(size=(3, 5, 6)), rng.normal(size=(3, 5, 2))
    y = linear_memory_readout(keys, values, keys)
    y_ref = numpy_ref.log_attention_quadratic(keys, keys, values, causal=False)
    assert np.allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert numpy_ref.scaled_error(y, values, values) > 1e-3  # positive features: every pair leaks into every read
    basis = np.eye(6)[:5]  # orthonormal keys with signed (identity) features: exact recall
    exact = linear_memory_readout(basis, values[0], basis, feature="identity")
    assert np.allclose(exact, values[0], atol=1e-12)
    with pytest.raises(ValueError, match="feature"):
        linear_memory_readout(keys, values, keys, feature="relu")


# ---- the protocol: a learning-rate sweep, then seeds at the chosen rate ----------------------------------------

from logattn_ref.recall import (PROTOCOL_PRESETS, ProtocolConfig, choose_lr, main, projected_finish,  # noqa: E402
                                protocol_markdown, run_protocol, summarize_cell)


def _run(lr, seed, accuracy, loss=1.0, cell=None, **extra):
    cell = cell or dict(attention="softmax", num_pairs=8, head_dim=16)
    return dict(cell, lr=lr, seed=seed, accuracy=accuracy, final_loss=loss, steps=10, wall_s=1.0, **extra)


def test_choose_lr_takes_the_best_accuracy_then_the_lower_loss_then_the_lower_rate():
    assert choose_lr([_run(1e-3, 0, 0.2), _run(3e-3, 0, 0.9), _run(1e-2, 0, 0.5)]) == 3e-3
    assert choose_lr([_run(1e-3, 0, 1.0, loss=0.02), _run(3e-3, 0, 1.0, loss=0.01), _run(1e-2, 0, 0.3)]) == 3e-3
    assert choose_lr([_run(1e-2, 0, 1.0, loss=0.01), _run(1e-3, 0, 1.0, loss=0.01)]) == 1e-3
    # a diverged run (no accuracy, no loss) ranks below any measured one, even a run at chance
    assert choose_lr([_run(1e-2, 0, None, loss=None, diverged="nan"), _run(1e-3, 0, 0.0, loss=9.0)]) == 1e-3
    with pytest.raises(ValueError):
        choose_lr([])


def _config(**kw):
    return ProtocolConfig(**dict(dict(name="t", arms=("softmax",), pairs=(8,), head_dims=(16,), n_embd=32, seq_len=128,
                                      max_queries=4, lrs=(1e-3, 3e-3, 1e-2), seeds=(0, 1, 2), fail_below=0.5), **kw))


def test_summarize_cell_uses_the_seeds_at_the_chosen_rate():
    config = _config()
    cell = dict(attention="softmax", num_pairs=8, head_dim=16)
    other = dict(attention="log", num_pairs=8, head_dim=16)
    runs = [_run(1e-3, 0, 0.1), _run(3e-3, 0, 0.9, loss=0.3), _run(1e-2, 0, 0.6),
            _run(3e-3, 1, 0.2), _run(1e-2, 1, 1.0),  # a seed at another rate is not the cell's
            _run(3e-3, 2, 1.0), _run(3e-3, 1, 0.0, cell=other)]
    # seed 1 at the chosen rate is missing: not reported yet
    assert summarize_cell(config, cell, [r for r in runs if not (r["seed"] == 1 and r["lr"] == 3e-3)]) is None
    summary = summarize_cell(config, cell, runs)
    assert summary["chosen_lr"] == 3e-3
    assert summary["accuracies"] == [0.9, 0.2, 1.0]
    assert summary["best"] == 1.0
    assert summary["mean"] == pytest.approx(0.7)
    assert summary["std"] == pytest.approx(np.std([0.9, 0.2, 1.0], ddof=1))
    assert summary["failures"] == 1 and summary["solved"] == 1  # 0.2 < 0.5 fails; only 1.0 >= 0.99 solves
    assert summary["state_bytes"] == state_bytes(config.n_layer, config.n_head, 16)
    assert summary["kv_cache_bytes"] == kv_cache_bytes(config.n_layer, config.n_head, 16, config.seq_len)
    # a run that raised makes the cell unreportable; a diverged seed is a failure at accuracy 0
    errored = [dict(r, error="boom") if r["seed"] == 2 else r for r in runs]
    assert summarize_cell(config, cell, errored) is None
    diverged = [dict(r, accuracy=None, final_loss=None, diverged="nan") if r["seed"] == 2 else r for r in runs]
    summary = summarize_cell(config, cell, diverged)
    assert summary["accuracies"] == [0.9, 0.2, 0.0] and summary["failures"] == 2 and summary["diverged"] == 1


def test_priority_orders_the_cells():
    config = _config(arms=("softmax", "log"), pairs=(32, 8), head_dims=(16, 64),
                     priority=("head_dim", "num_pairs", "attention"))
    cells = config.cells()
    assert len(cells) == 8 and len({tuple(c.values()) for c in cells}) == 8
    assert cells[:3] == [dict(attention="softmax", num_pairs=32, head_dim=16),
                         dict(attention="log", num_pairs=32, head_dim=16),
                         dict(attention="softmax", num_pairs=8, head_dim=16)]
    assert [c["head_dim"] for c in cells] == [16] * 4 + [64] * 4
    with pytest.raises(ValueError, match="priority"):
        _config(priority=("head_dim", "attention"))


def test_projected_finish_by_list_scheduling():
    # 2 workers, both free: lr runs of 10 s (3 of them) end at 10, 10, 20; the seed runs start at 20: end at 30
    assert projected_finish(0.0, [], [], [10, 10, 10], [10, 10], workers=2) == 30
    # one worker busy until 25: the lr runs end at 10, 20, 30 (on the free one) -> seeds start at 30 -> 40
    assert projected_finish(0.0, [25.0], [], [10, 10, 10], [10, 10], workers=2) == 40
    # queued work goes first
    assert projected_finish(0.0, [], [15, 15], [10], [10], workers=2) == 35
    # runs that should have ended already count as free now
    assert projected_finish(100.0, [50.0], [], [10], [], workers=1) == 110


def test_protocol_end_to_end_on_the_cpu_preset(tmp_path):
    config = dataclasses.replace(PROTOCOL_PRESETS["cpu"], arms=("softmax", "log-signed"), pairs=(4,), head_dims=(8,))
    payloads = run_protocol([config], tmp_path, "test", probe_steps=2, log=lambda message: None)
    saved = json.loads((tmp_path / "mqar_protocol_test.json").read_text())
    assert saved == json.loads(json.dumps(payloads["cpu"]))
    assert saved["complete"] and not saved["not_run"] and not saved["in_progress"]
    assert len(saved["runs"]) == 2 * config.runs_per_cell() == 2 * (len(config.lrs) + len(config.seeds) - 1)
    assert len(saved["cells"]) == 2
    for cell in saved["cells"]:
        runs = [r for r in saved["runs"] if r["attention"] == cell["attention"]]
        assert all({"lr", "seed", "accuracy", "final_loss", "steps", "wall_s"} <= set(r) for r in runs)
        lr_runs = [r for r in runs if r["seed"] == config.seeds[0]]
        assert sorted(r["lr"] for r in lr_runs) == sorted(config.lrs)
        assert cell["chosen_lr"] == choose_lr(lr_runs)
        at_rate = sorted((r for r in runs if r["lr"] == cell["chosen_lr"]), key=lambda r: r["seed"])
        assert [r["seed"] for r in at_rate] == list(config.seeds)
        assert cell["accuracies"] == [r["accuracy"] for r in at_rate]
        assert cell["mean"] == pytest.approx(np.mean(cell["accuracies"]))
        assert cell["failures"] == sum(a < config.fail_below for a in cell["accuracies"])
    assert saved["probe"]["seconds_per_step"]["softmax/d8"] > 0
    assert (tmp_path / "mqar_protocol_test.png").stat().st_size > 1000
    table = protocol_markdown(saved)
    assert "| softmax | 8 |" in table and "fail" in table


def test_a_cell_that_does_not_fit_the_budget_is_not_run(tmp_path):
    config = dataclasses.replace(PROTOCOL_PRESETS["cpu"], arms=("softmax",), pairs=(2,), head_dims=(8,))
    payloads = run_protocol([config], tmp_path, "tight", budget_s=1e-3, probe_steps=2, plot=False,
                            log=lambda message: None)
    payload = payloads["cpu"]
    assert payload["runs"] == [] and payload["cells"] == [] and not payload["complete"]
    assert payload["not_run"] == [dict(attention="softmax", num_pairs=2, head_dim=8, reason=payload["not_run"][0]["reason"])]


def test_cli_takes_arms_from_the_model_and_rejects_unknown_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--protocol", "cpu", "--out", str(tmp_path), "--arms", "no-such-arm"])
    assert "model.ATTENTIONS" in capsys.readouterr().err
    assert main(["--protocol", "cpu", "--out", str(tmp_path), "--slug", "cli", "--arms", "softmax", "--pairs", "2",
                 "--head-dims", "8", "--lrs", "1e-2", "--family-arms", "log-signed", "--probe-steps", "1"]) == 0
    main_grid = json.loads((tmp_path / "mqar_protocol_cli.json").read_text())
    family = json.loads((tmp_path / "mqar_protocol_family_cli.json").read_text())
    assert [c["attention"] for c in main_grid["cells"]] == ["softmax"]
    assert family["config"]["arms"] == ["log-signed"] and family["config"]["steps"] == main_grid["config"]["steps"]
    assert family["complete"] and len(family["cells"]) == len(family["config"]["pairs"])


def test_step_time_probe_times_real_steps():
    """The protocol's probe times full training steps: positive, finite seconds per step."""
    from logattn_ref.recall import probe_step_time

    assert 0 < probe_step_time(PROTOCOL_PRESETS["cpu"], "log-signed", 8, steps=2, warmup=1) < 60


def test_cli_family_first_launches_the_family_grid_first_and_records_the_note(tmp_path, capsys):
    assert main(["--protocol", "cpu", "--out", str(tmp_path), "--slug", "ff", "--arms", "softmax", "--pairs", "2",
                 "--head-dims", "8", "--lrs", "1e-2", "--family-arms", "linear-elu", "--family-pairs", "2",
                 "--family-first", "--note", "shared GPU", "--probe-steps", "1"]) == 0
    runs = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if "lr=" in line]
    assert runs and runs[0] == "family" and runs[-1] == "cpu", runs
    for name in ("mqar_protocol_ff.json", "mqar_protocol_family_ff.json"):
        assert json.loads((tmp_path / name).read_text())["config"]["note"].endswith("shared GPU")


def test_merge_joins_parts_of_one_recipe_and_refuses_mixed_recipes(tmp_path):
    """Two parts of the cpu grid run separately merge into one payload whose cells are both parts' cells; the
    first part's not-run cells that the second measured are no longer listed; recipes that differ are refused."""
    from logattn_ref.recall import merge_protocol

    common = ["--protocol", "cpu", "--arms", "softmax", "--head-dims", "8", "--lrs", "1e-2", "--probe-steps", "1"]
    assert main(common + ["--out", str(tmp_path), "--slug", "a", "--pairs", "2"]) == 0
    assert main(common + ["--out", str(tmp_path), "--slug", "b", "--pairs", "4"]) == 0
    a, b = (json.loads((tmp_path / f"mqar_protocol_{s}.json").read_text()) for s in "ab")
    a["not_run"] = [dict(attention="softmax", num_pairs=4, head_dim=8, reason="budget")]  # as a budgeted part 1
    merged = merge_protocol([a, b])
    assert [(c["num_pairs"], c["mean"]) for c in merged["cells"]] == [(2, a["cells"][0]["mean"]),
                                                                      (4, b["cells"][0]["mean"])]
    assert merged["config"]["pairs"] == [2, 4] and merged["not_run"] == [] and merged["complete"]
    assert [r["part"] for r in merged["runs"]] == [0] * len(a["runs"]) + [1] * len(b["runs"])
    assert [p["cells"] for p in merged["parts"]] == [[dict(attention="softmax", num_pairs=2, head_dim=8)],
                                                     [dict(attention="softmax", num_pairs=4, head_dim=8)]]
    with pytest.raises(ValueError, match="reported by parts 0 and 1"):
        merge_protocol([a, a])
    b["config"]["steps"] += 1
    with pytest.raises(ValueError, match="'steps'"):
        merge_protocol([a, b])
    b["config"]["steps"] -= 1
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["--merge", str(tmp_path / "mqar_protocol_a.json"), str(tmp_path / "b.json"), "--out",
                 str(tmp_path / "m"), "--slug", "ab"]) == 0
    written = json.loads((tmp_path / "m" / "mqar_protocol_ab.json").read_text())
    assert len(written["cells"]) == 2 and (tmp_path / "m" / "mqar_protocol_ab.png").exists()


def test_decode_memory_counts_each_arm_by_what_it_keeps():
    from logattn_ref.recall import decode_memory_bytes, kv_cache_bytes, state_bytes

    assert decode_memory_bytes("softmax", 2, 4, 32, 512) == kv_cache_bytes(2, 4, 32, 512) == 2 * 4 * 2 * 512 * 32 * 4
    assert decode_memory_bytes("log-signed", 2, 4, 32, 512) == state_bytes(2, 4, 32) == 2 * 4 * (32 * 32 + 32) * 4
    assert decode_memory_bytes("hybrid", 2, 4, 32, 512) == kv_cache_bytes(1, 4, 32, 512) + state_bytes(1, 4, 32)
    assert decode_memory_bytes("hybrid", 1, 4, 32, 512) == kv_cache_bytes(1, 4, 32, 512)
    assert decode_memory_bytes("delta", 2, 4, 32, 10**6) == decode_memory_bytes("delta", 2, 4, 32, 1)


def test_skip_reported_runs_only_the_missing_cells_and_the_parts_merge(tmp_path):
    """--skip-reported: a second part of a grid neither probes nor trains the cells the first part reported, lists
    them under skipped, and merges with the first into the whole grid."""
    from logattn_ref.recall import merge_protocol

    common = ["--protocol", "cpu", "--arms", "softmax", "--head-dims", "8", "--lrs", "1e-2", "--probe-steps", "1",
              "--out", str(tmp_path)]
    assert main(common + ["--slug", "a", "--pairs", "2"]) == 0
    first = tmp_path / "mqar_protocol_a.json"
    assert main(common + ["--slug", "b", "--pairs", "2", "4", "--skip-reported", str(first)]) == 0
    a, b = (json.loads((tmp_path / f"mqar_protocol_{s}.json").read_text()) for s in "ab")
    assert [c["num_pairs"] for c in b["cells"]] == [4] and {r["num_pairs"] for r in b["runs"]} == {4}
    assert b["skipped"] == [dict(attention="softmax", num_pairs=2, head_dim=8)] and b["complete"]
    merged = merge_protocol([a, b])
    assert sorted(c["num_pairs"] for c in merged["cells"]) == [2, 4] and merged["complete"]
    # a merged grid extends by merging it with a new part: its parts and their runs' part numbers are kept
    assert main(common + ["--slug", "c", "--pairs", "2", "4", "3", "--skip-reported", str(first),
                          str(tmp_path / "mqar_protocol_b.json")]) == 0
    c = json.loads((tmp_path / "mqar_protocol_c.json").read_text())
    extended = merge_protocol([merged, c])
    assert len(extended["parts"]) == 3 and [p["cells"][0]["num_pairs"] for p in extended["parts"]] == [2, 4, 3]
    assert sorted({(r["part"], r["num_pairs"]) for r in extended["runs"]}) == [(0, 2), (1, 4), (2, 3)]
    assert extended["wall_s"] == pytest.approx(a["wall_s"] + b["wall_s"] + c["wall_s"])
