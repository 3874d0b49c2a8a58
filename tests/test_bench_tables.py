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


@pytest.mark.skipif(not (RESULTS / "mqar_sweep_h200.json").exists(), reason="no committed MQAR sweep")
def test_mqar_table_has_every_cell_and_the_best_row():
    from logattn_ref.recall import markdown_table

    payload = json.loads((RESULTS / "mqar_sweep_h200.json").read_text())
    text = markdown_table(payload)
    cfg = payload["config"]
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    assert len(rows) == len(cfg["arms"]) * (len(cfg["head_dims"]) + 1)
    for r in payload["results"]:
        row = next(line for line in rows if line.startswith(f"| {r['attention']} | {r['head_dim']} |"))
        assert f"{r['accuracy']:.2f}" in row
    assert payload["environment"]["gpu"] in text.splitlines()[0]
    assert text in (RESULTS.parent.parent / "README.md").read_text(), "README's MQAR table is stale"


def test_training_table_is_written_from_the_json():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_shakespeare", RESULTS.parent / "train_shakespeare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = json.loads((RESULTS / "train_shakespeare.json").read_text())
    text = module.markdown_table(report)
    for arm, entry in report["arms"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {arm} |"))
        assert f"{entry['best_val_loss']:.3f}" in row
    assert report["gpu"] in text.splitlines()[0]
    readme = (RESULTS.parent.parent / "README.md").read_text()
    assert text in readme, "README's training table is stale: paste `train_shakespeare.py --markdown`"
