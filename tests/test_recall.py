"""Byte counts and readout of logattn_ref.recall, and the sweep's code path (the MQAR data: tests/test_mqar.py)."""

import json

import numpy as np
import pytest

from logattn_ref import numpy_ref
from logattn_ref.recall import SWEEP_PRESETS, kv_cache_bytes, linear_memory_readout, run_sweep, state_bytes


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


def test_quick_sweep_writes_json_and_plot(tmp_path):
    sweep = SWEEP_PRESETS["quick"]
    payload = run_sweep(sweep, tmp_path)
    saved = json.loads((tmp_path / "mqar_sweep.json").read_text())
    assert saved["complete"] and len(saved["results"]) == len(sweep.cells()) == len(payload["results"])
    for row in saved["results"]:
        assert "error" not in row, row
        assert 0.0 <= row["accuracy"] <= 1.0 and row["state_bytes"] > 0
    assert {"date_utc", "torch", "device"} <= set(saved["environment"])
    assert (tmp_path / "mqar_sweep.png").stat().st_size > 1000
