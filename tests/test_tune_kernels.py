"""The kernels' launch defaults follow the committed tuning run, and benchmarks/README.md shows its table."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tune_kernels_h200.json"  # the first tuning run
SECOND = ROOT / "benchmarks" / "results" / "tune_kernels_h200_two_level.json"  # two-level scans, 64-row tiles

triton_kernels = pytest.importorskip("logattn_ref.triton_kernels")


def _script():
    spec = importlib.util.spec_from_file_location("tune_kernels", ROOT / "benchmarks" / "tune_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_shows_the_tuning_tables_written_from_the_json():
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    for path in (RESULTS, SECOND):
        assert _script().markdown_table(json.loads(path.read_text())) in readme, (
            f"benchmarks/README.md's tuning table is stale: paste `python benchmarks/tune_kernels.py --markdown "
            f"benchmarks/results/{path.name}`")


def _rows_passing_their_checks(payload):
    rows = [r for r in payload["results"] if "error" not in r]
    assert rows and all(r["ok"] for r in rows)
    for r in rows:  # fp32 within 1e-5 of float64 (a 1000-larger key included), bf16 within 1e-2
        for c in r["check"]:
            assert max(c[x] for x in ("y", "dq", "dk", "dv")) < (1e-5 if c["dtype"].endswith("32") else 1e-2)
    return rows


def test_defaults_are_the_measured_best_and_every_variant_passed_its_float64_check():
    """The library's launch is the fastest 64K forward+backward of the latest run, which started from the first
    run's best tiles; every variant of both runs passed its float64 check on the GPU."""
    first = _rows_passing_their_checks(json.loads(RESULTS.read_text()))
    second_payload = json.loads(SECOND.read_text())
    rows = _rows_passing_their_checks(second_payload)
    first_best = min(first, key=lambda r: r["65536"]["fwd_bwd_ms"])
    start = second_payload["results"][0]
    assert (start["chunk"], start["sub_block"], start["scan"]) == (first_best["chunk"], first_best["sub_block"],
                                                                   first_best["scan"])
    best = min(rows, key=lambda r: r["65536"]["fwd_bwd_ms"])
    assert (best["chunk"], best["sub_block"]) == (triton_kernels.CHUNK_SIZE, triton_kernels.SUB_BLOCK)
    assert tuple(best["scan"]) == triton_kernels.SCAN_LAUNCH
    assert best["fallback"] == triton_kernels.DIAG_FALLBACK and best["group"] == triton_kernels.SCAN_GROUP
    assert tuple(best["warps_used"]) == (triton_kernels.NUM_WARPS, triton_kernels.BACKWARD_NUM_WARPS)
    # what the kernels' comments quote: the best is also the fastest forward at both lengths
    for n in ("16384", "65536"):
        assert min(rows, key=lambda r: r[n]["fwd_ms"]) is best and min(rows, key=lambda r: r[n]["fwd_bwd_ms"]) is best
    assert round(best["65536"]["fwd_bwd_ms"], 2) == 4.62 and round(start["65536"]["fwd_bwd_ms"], 2) == 6.31


def test_the_next_tuning_run_starts_from_the_library_defaults():
    """tune_kernels.py's first variant is the launch the library runs, so every run times today's default first."""
    chunk, sub_block, warps, scan, fallback, group = _script().BASE
    assert (chunk, sub_block, tuple(scan), fallback, group) == (
        triton_kernels.CHUNK_SIZE, triton_kernels.SUB_BLOCK, triton_kernels.SCAN_LAUNCH, triton_kernels.DIAG_FALLBACK,
        triton_kernels.SCAN_GROUP)
    assert warps is None  # the library's own NUM_WARPS / BACKWARD_NUM_WARPS
