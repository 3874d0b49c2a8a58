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
