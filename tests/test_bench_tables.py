"""The README's benchmark tables are written from the committed H200 JSON, never typed by hand."""

import json
from pathlib import Path

import pytest

from logattn_ref.bench import markdown_tables

RESULT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "bench_h200.json"


@pytest.mark.skipif(not RESULT.exists(), reason="no committed H200 benchmark")
def test_tables_cover_every_measurement_and_name_the_gpu():
    result = json.loads(RESULT.read_text())
    text = markdown_tables(result)
    assert result["environment"]["device"] in text.splitlines()[0]
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| n ")
            and not line.startswith("| context")]
    assert len(rows) == len(result["prefill"]) + len(result["decode"])
    oom = [r for r in result["prefill"] if r.get("error") == "oom"]
    assert text.count("oom") >= len(oom)
    assert text in (RESULT.parents[2] / "README.md").read_text(), "README's benchmark tables are stale"


RESULTS = RESULT.parent


@pytest.mark.skipif(not (RESULTS / "mqar_protocol_h200.json").exists(), reason="no committed MQAR protocol run")
def test_family_protocol_table_is_in_the_readme():
    from logattn_ref.recall import protocol_markdown

    payload = json.loads((RESULTS / "mqar_protocol_family_h200.json").read_text())
    readme = (RESULTS.parent.parent / "README.md").read_text()
    assert protocol_markdown(payload) in readme, (
        "README's family table is stale: paste `python -m logattn_ref.recall --protocol-markdown "
        "benchmarks/results/mqar_protocol_family_h200.json`")
    section = readme[readme.index("**The family on the same task (lesson 7).**"):readme.index("## Repository layout")]
    section = " ".join(section.split())  # prose wraps anywhere
    for part in payload.get("parts", [payload]):  # a merged grid: each part's wall time and probe as recorded
        assert f"{part['wall_s']:.0f} s, {part['workers']} workers" in section, (part["wall_s"], part["workers"])
        probe = {arm.split("/")[0]: s * 1e3 for arm, s in part["probe"]["seconds_per_step"].items()}
        others = {arm: ms for arm, ms in probe.items() if arm != "log-decay"}
        against = (f"{min(others.values()):.0f}–{max(others.values()):.0f} ms for the other family arms"
                   if len(others) > 1 else "".join(f"{arm}'s {ms:.0f} ms" for arm, ms in others.items()))
        assert f"{probe['log-decay']:.0f} ms a training step against {against}" in section, against
    if not payload["not_run"]:  # a complete grid: the prose no longer calls any cell unmeasured
        assert "unmeasured" not in section and "did not fit" not in section


def test_mqar_protocol_table_is_in_the_readme_with_every_reported_cell():
    from logattn_ref.recall import protocol_markdown

    payload = json.loads((RESULTS / "mqar_protocol_h200.json").read_text())
    text = protocol_markdown(payload)
    cfg = payload["config"]
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    assert len(rows) == len(cfg["arms"]) * len(cfg["head_dims"])
    for c in payload["cells"]:  # every reported cell's mean, best and failures, in its arm's and d_k's row
        row = next(line for line in rows if line.startswith(f"| {c['attention']} | {c['head_dim']} |"))
        assert f"{c['mean']:.2f} ± {c['std']:.2f}, best {c['best']:.2f}, {c['failures']}/" in row
    for c in payload["not_run"]:  # and the cells that did not fit the budget are named, not left out silently
        assert f"{c['attention']} {c['num_pairs']} pairs d_k {c['head_dim']}" in text
    assert payload["environment"]["gpu"] in text.splitlines()[0]
    readme = (RESULTS.parent.parent / "README.md").read_text()
    assert text in readme, "README's MQAR table is stale: paste `python -m logattn_ref.recall --protocol-markdown`"
    assert "mqar_sweep_h200" not in readme, "the old one-seed sweep is replaced by the protocol run, not kept beside"
    section = readme[readme.index("associative recall (lesson 6)"):readme.index("## Repository layout")]
    assert f"What the {len(payload['cells'])} cells show" in section, "the README's MQAR prose counts stale cells"
    for part in payload.get("parts", []):  # a merged grid: each part's wall time as its JSON records it
        pairs = sorted({c["num_pairs"] for c in part["cells"]})
        assert f"{'/'.join(map(str, pairs))} pairs: {part['wall_s']:.0f} s" in section, (pairs, part["wall_s"])


def test_mqar_diagnostic_is_reported_beside_the_grid_not_merged_into_it():
    """The 128-pair d_k = 16 cell at twice the steps is another recipe: merge_protocol refuses it (naming the
    field), the grid stays at 2,000 steps, and the README's MQAR section names the diagnostic's file."""
    from logattn_ref.recall import merge_protocol

    grid = json.loads((RESULTS / "mqar_protocol_h200.json").read_text())
    diagnostic = json.loads((RESULTS / "mqar_protocol_h200_128d16_4000steps.json").read_text())
    assert (grid["config"]["steps"], diagnostic["config"]["steps"]) == (2000, 4000)
    with pytest.raises(ValueError, match="'steps'"):
        merge_protocol([grid, diagnostic])
    readme = (RESULTS.parent.parent / "README.md").read_text()
    section = readme[readme.index("associative recall (lesson 6)"):readme.index("## Repository layout")]
    assert "benchmarks/results/mqar_protocol_h200_128d16_4000steps.json" in section


def _train_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_shakespeare", RESULTS.parent / "train_shakespeare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same_numbers(a, b) -> bool:
    """Nested dicts/lists equal, floats to 1e-12 relative (a sum's last bit depends on its order)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_numbers, a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1e-300)
    return a == b


def test_training_table_is_written_from_the_json():
    module = _train_script()
    report = json.loads((RESULTS / "train_shakespeare.json").read_text())
    assert len(report["seeds"]) >= 3 and set(report["arms"]) == set(module.ARMS)
    # equal but for the last bit: Python 3.12's sum() compensates rounding (the GPU run), 3.11's does not
    assert _same_numbers(report["summary"], module.summarise_arms(report)), "the JSON's summary is not its runs'"
    text = module.markdown_table(report)
    for arm in report["arms"]:
        stats = report["summary"]["arms"][arm]["final_val_loss"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {arm} |"))
        assert f"{stats['mean']:.3f} ± {stats['std']:.3f}" in row
    assert report["environment"]["gpu"] in text.splitlines()[0]
    readme = (RESULTS.parent.parent / "README.md").read_text()
    assert text in readme, "README's training table is stale: paste `train_shakespeare.py --markdown`"


@pytest.mark.skipif(not (RESULTS / "decode_nvidia_h200.json").exists(), reason="no committed H200 decode run")
def test_decode_table_is_written_from_the_json():
    from logattn_ref.decode import crossover_contexts, markdown_table

    result = json.loads((RESULTS / "decode_nvidia_h200.json").read_text())
    text = markdown_table(result)
    assert result["environment"]["gpu"] in text.splitlines()[0] and result["settings"]["dtype"] in text
    measured = [r for r in result["rows"] if "tokens_per_s" in r]
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| batch")]
    assert len(lines) == len({(r["batch"], r["context"]) for r in measured})
    for r in measured:
        row = next(line for line in lines if line.startswith(f"| {r['batch']} | {r['context']:,} |"))
        assert f" {r['tokens_per_s']:,.0f} " in row, (r["arm"], r["kernel"], r["batch"], r["context"])
    for batch, per_arm in result["crossover"].items():
        assert per_arm == crossover_contexts(result["rows"], int(batch)), "the JSON's crossover is not its rows'"
        line = next(line for line in text.splitlines() if line.startswith(f"- Crossover at batch {batch},"))
        for arm, c in per_arm.items():
            assert (f"`{arm}` never" if c["context"] is None else f"`{arm}` from context {c['context']:,} on") in line
    readme = (RESULTS.parent.parent / "README.md").read_text()
    assert text in readme, "README's decode table is stale: paste logattn_ref.decode.markdown_table of the JSON"


def _records(steps, vals):
    """metrics.jsonl-like records: a training loss every 10 steps, an evaluation at each (step, val) given."""
    recs = [{"step": s, "loss": 3.0 - s / 1000} for s in range(10, steps + 1, 10)]
    recs += [{"step": s, "train_loss": v - 0.1, "val_loss": v} for s, v in vals]
    return recs


def test_run_summary_reads_final_and_best_and_knows_an_unfinished_run():
    module = _train_script()
    done = module.run_summary(_records(40, [(20, 1.9), (40, 2.1)]), steps=40)
    assert done["finished"] and done["final_val_loss"] == 2.1 and done["best_val_loss"] == 1.9
    assert done["best_step"] == 20 and done["steps_done"] == 40 and len(done["train_curve"]) == 4
    cut = module.run_summary(_records(30, [(20, 1.9)]), steps=40)
    assert not cut["finished"] and cut["final_val_loss"] == 1.9
    empty = module.run_summary([], steps=40)
    assert not empty["finished"] and empty["final_val_loss"] is None


def test_arm_summary_uses_finished_seeds_and_the_strongest_softmax():
    module = _train_script()

    def run(final, finished=True):
        return {"finished": finished, "final_val_loss": final, "best_val_loss": final - 0.01}

    report = {"arms": {
        "softmax-pos": {"runs": [run(1.50), run(1.52), run(1.54)]},
        "softmax": {"runs": [run(1.55), run(1.57), run(1.59)]},
        "log": {"runs": [run(1.53), run(1.55), run(9.0, finished=False)]},
    }}
    summary = module.summarise_arms(report)
    assert summary["strongest_softmax"] == "softmax-pos"
    pos, log = summary["arms"]["softmax-pos"], summary["arms"]["log"]
    assert abs(pos["final_val_loss"]["mean"] - 1.52) < 1e-12 and abs(pos["final_val_loss"]["std"] - 0.02) < 1e-12
    assert log["finished_runs"] == 2 and log["unfinished_runs"] == 1  # the unfinished seed is left out
    assert abs(log["gap_to_strongest_softmax_pct"] - 100 * (1.54 / 1.52 - 1)) < 1e-9
    assert module.mean_std([2.0])["std"] is None
    with pytest.raises(ValueError, match="values must hold at least one number"):
        module.mean_std([])


def test_torch_methods_run_writes_what_lesson_4_reads(tmp_path):
    """`python -m logattn_ref.bench --torch-methods` (which replaced benchmarks/bench_torch_methods.py) writes
    the rows and fields that lesson 4 reads from the committed torch_methods_h200.json."""
    from logattn_ref.bench import main
    from logattn_ref.runio import recorded_date

    result = main(["--torch-methods", "--quick", "--out", str(tmp_path), "--lengths", "33", "--contexts", "32"])
    saved = json.loads((tmp_path / "torch_methods_quick_cpu.json").read_text())
    assert saved == result
    assert {"torch", "python", "setup", "prefill", "decode"} <= set(saved) and recorded_date(saved)
    assert "float32" in saved["setup"] and "B=1" in saved["setup"]
    assert {r["case"] for r in saved["prefill"]} == {"chunked_fwd", "softmax_sdpa_fwd", "logcumsumexp_fwd",
                                                     "chunked_fwd_bwd"}
    for row in saved["prefill"]:
        assert set(row) == {"n", "case", "median_ms", "peak_bytes"} and row["median_ms"] > 0
    [decode] = saved["decode"]
    assert decode["context"] == 32 and decode["decoder_eager_us"] > 0 and decode["softmax_kv_cache_us"] > 0
    assert decode["kv_cache_bytes"] == 2 * 33 * 2 * 16 * 4  # K and V, 33 slots, 2 heads, d = 16, float32
    committed = RESULTS / "torch_methods_h200.json"
    if committed.exists():  # the committed GPU run has the same rows (plus the CUDA-graph decode timing)
        old = json.loads(committed.read_text())
        assert {r["case"] for r in old["prefill"]} == {r["case"] for r in saved["prefill"]}
        assert set(old["prefill"][0]) == set(saved["prefill"][0])
        assert set(old["decode"][0]) == set(decode) | {"decoder_cuda_graph_us"}
        assert old["gpu"] and recorded_date(old)


def test_each_method_gets_inputs_in_its_own_layout():
    """fla reads [B, n, H, d]: its inputs are views of tensors laid out so, and its transposes cost nothing; the
    other methods get contiguous [B, H, n, d] tensors. Both shapes as seen by the methods are [B, H, n, d]."""
    import torch

    from logattn_ref.bench import TOKEN_MAJOR, prefill_inputs

    gen = torch.Generator().manual_seed(0)
    for name in ("triton", *TOKEN_MAJOR):
        q, k, v, dy = prefill_inputs(name, 2, 3, 5, 4, torch.device("cpu"), torch.float32, gen)
        assert all(x.shape == (2, 3, 5, 4) for x in (q, k, v, dy))
        assert all(x.requires_grad and x.is_leaf for x in (q, k, v)) and not dy.requires_grad
        token_major = name in TOKEN_MAJOR
        assert all(x.is_contiguous() is not token_major for x in (q, k, v, dy))
        assert all(x.transpose(1, 2).is_contiguous() is token_major for x in (q, k, v, dy))
