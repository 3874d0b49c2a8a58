"""The kernels' launch defaults follow the committed tuning run, and benchmarks/README.md shows its table."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tune_kernels_h200.json"

triton_kernels = pytest.importorskip("logattn_ref.triton_kernels")


def _script():
    spec = importlib.util.spec_from_file_location("tune_kernels", ROOT / "benchmarks" / "tune_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_shows_the_tuning_table_written_from_the_json():
    text = _script().markdown_table(json.loads(RESULTS.read_text()))
    assert text in (ROOT / "benchmarks" / "README.md").read_text(), (
        "benchmarks/README.md's tuning table is stale: paste `python benchmarks/tune_kernels.py --markdown "
        "benchmarks/results/tune_kernels_h200.json`")


def test_defaults_are_the_measured_best_and_every_variant_passed_its_float64_check():
    payload = json.loads(RESULTS.read_text())
    rows = [r for r in payload["results"] if "error" not in r]
    assert rows and all(r["ok"] for r in rows)
    for r in rows:  # fp32 within 2e-6 of float64 (a 1000-larger key included), bf16 within 1e-2
        for c in r["check"]:
            assert max(c[x] for x in ("y", "dq", "dk", "dv")) < (2e-6 if c["dtype"].endswith("32") else 1e-2)
    best = min(rows, key=lambda r: r["65536"]["fwd_bwd_ms"])
    assert (best["chunk"], best["sub_block"]) == (triton_kernels.CHUNK_SIZE, triton_kernels.SUB_BLOCK)
    assert tuple(best["scan"]) == triton_kernels.SCAN_LAUNCH
    same_tiles = [r for r in rows if (r["chunk"], r["sub_block"], tuple(r["scan"])) ==
                  (best["chunk"], best["sub_block"], tuple(best["scan"]))]
    for n in ("16384", "65536"):  # forward warps: the faster forward; backward warps: the faster backward
        assert min(same_tiles, key=lambda r: r[n]["fwd_ms"])["warps"] == triton_kernels.NUM_WARPS
        backward = lambda r: r[n]["fwd_bwd_ms"] - r[n]["fwd_ms"]  # noqa: E731
        assert min(same_tiles, key=backward)["warps"] == triton_kernels.BACKWARD_NUM_WARPS
    base = payload["results"][0]  # the launch before the tuning, timed in the same run
    assert best["65536"]["fwd_bwd_ms"] < 0.85 * base["65536"]["fwd_bwd_ms"]
