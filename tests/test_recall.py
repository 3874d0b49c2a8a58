"""MQAR generator, data source, byte counts and readout of logattn_ref.recall, and the sweep's code path."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from logattn_ref import numpy_ref
from logattn_ref.recall import (
    FILLER,
    MQARData,
    SWEEP_PRESETS,
    key_value_ranges,
    kv_cache_bytes,
    linear_memory_readout,
    mqar_batch,
    mqar_layout,
    run_sweep,
    state_bytes,
)


@st.composite
def sizes(draw):
    vocab = draw(st.integers(3, 80))
    n_keys = (vocab - 1) // 2
    pairs = draw(st.integers(1, n_keys))
    queries = draw(st.integers(1, pairs))
    seq_len = draw(st.integers(2 * pairs + 2 * queries, 2 * pairs + 2 * queries + 9))
    return dict(vocab_size=vocab, num_pairs=pairs, seq_len=seq_len, num_queries=queries)


@given(sizes(), st.integers(1, 4), st.integers(0, 2**31))
def test_batch_answers_each_query_with_its_value(size, batch, seed):
    b = mqar_batch(batch, seed=seed, **size)
    p, q, n = size["num_pairs"], size["num_queries"], size["seq_len"]
    assert b.inputs.shape == b.targets.shape == b.mask.shape == (batch, n)
    assert b.inputs.dtype == b.targets.dtype == torch.int64 and b.mask.dtype == torch.bool
    assert torch.equal(b.targets[:, :-1], b.inputs[:, 1:])  # next-token targets
    keys_range, values_range = key_value_ranges(size["vocab_size"])
    assert int(b.mask.sum()) == batch * q
    for row in range(batch):
        inputs, targets, mask = b.inputs[row].tolist(), b.targets[row].tolist(), b.mask[row].tolist()
        keys, values = inputs[0 : 2 * p : 2], (inputs + [targets[-1]])[1 : 2 * p : 2]
        assert len(set(keys)) == p and all(k in keys_range for k in keys)
        assert all(v in values_range for v in values)
        lookup = dict(zip(keys, values))
        scored = [t for t in range(n) if mask[t]]
        assert scored == list(range(n + 1 - 2 * q, n, 2))  # exactly the query keys of the query section
        asked = [inputs[t] for t in scored]
        assert len(set(asked)) == q and all(k in lookup for k in asked)
        assert [targets[t] for t in scored] == [lookup[k] for k in asked]
        assert all(tok == FILLER for tok in inputs[2 * p : n + 1 - 2 * q])


def test_seeding():
    a, b = mqar_batch(8, 64, 8, 40, seed=3), mqar_batch(8, 64, 8, 40, seed=3)
    c = mqar_batch(8, 64, 8, 40, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.inputs, c.inputs)
    gen = torch.Generator().manual_seed(5)
    first, second = mqar_batch(4, 64, 8, 40, generator=gen), mqar_batch(4, 64, 8, 40, generator=gen)
    assert not torch.equal(first.inputs, second.inputs)  # a generator advances


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        (dict(vocab_size=9, num_pairs=5, seq_len=40), "num_pairs=5"),
        (dict(vocab_size=64, num_pairs=8, seq_len=20), "seq_len=20"),
        (dict(vocab_size=64, num_pairs=4, seq_len=40, num_queries=5), "num_queries=5"),
        (dict(vocab_size=2, num_pairs=1, seq_len=4), "vocab_size"),
        (dict(vocab_size=64, num_pairs=0, seq_len=4), "num_pairs"),
        (dict(vocab_size=64, num_pairs=2.0, seq_len=40), "num_pairs"),
        (dict(vocab_size=64, num_pairs=2, seq_len=40, seed=1, generator=torch.Generator()), "not both"),
    ],
)
def test_argument_errors(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        mqar_batch(2, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        mqar_batch(0, 64, 2, 40)


def test_layout_errors():
    keys, values = torch.tensor([[1, 2]]), torch.tensor([[5, 6]])
    with pytest.raises(ValueError, match="query_index"):
        mqar_layout(keys, values, torch.tensor([[2]]), 8)
    with pytest.raises(ValueError, match="keys and values"):
        mqar_layout(keys, values[:, :1], torch.tensor([[0]]), 8)


def test_data_source_ignores_unscored_targets():
    data = MQARData(64, 6, 40, 3)
    x, y = data.get_batch("train", 5, 40, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 40)
    assert int((y != -100).sum()) == 5 * 3
    with pytest.raises(ValueError, match="block_size=32"):
        data.get_batch("val", 2, 32)
    with pytest.raises(KeyError, match="split"):
        data.get_batch("test", 2, 40)


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
    assert {"date", "torch", "device"} <= set(saved["environment"])
    assert (tmp_path / "mqar_sweep.png").stat().st_size > 1000


def test_repeated_queries_keep_the_answers_right():
    b = mqar_batch(16, 40, 2, 24, num_queries=8, seed=7, repeat_queries=True)
    assert int(b.mask.sum()) == 16 * 8
    for row in range(16):
        inputs, targets = b.inputs[row].tolist(), b.targets[row].tolist()
        lookup = dict(zip(inputs[0:4:2], inputs[1:4:2]))
        for t in torch.nonzero(b.mask[row]).flatten().tolist():
            assert targets[t] == lookup[inputs[t]]
    with pytest.raises(ValueError, match="repeat_queries"):
        mqar_batch(2, 40, 2, 24, num_queries=8)
