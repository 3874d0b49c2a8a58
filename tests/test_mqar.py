"""The MQAR task's data (logattn_ref.mqar): layout, seeded batches, argument errors, the training data source,
and the old homes of its names (logattn_ref.recall, logattn_ref.data), which still work but warn."""

import importlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from logattn_ref import mqar
from logattn_ref.mqar import FILLER, MQARData, key_value_ranges, mqar_batch, mqar_layout


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


@pytest.mark.parametrize("module, names", [
    ("logattn_ref.recall", ["FILLER", "MQARBatch", "key_value_ranges", "mqar_layout", "mqar_batch", "MQARData"]),
    ("logattn_ref.data", ["MQARBatch", "MQARData", "mqar_batch", "mqar_layout"]),
])
def test_old_homes_still_give_the_names_with_a_deprecation_warning(module, names):
    old = importlib.import_module(module)
    for name in names:
        with pytest.warns(DeprecationWarning, match=f"logattn_ref.mqar.{name}"):
            assert getattr(old, name) is getattr(mqar, name)
    with pytest.raises(AttributeError):
        getattr(old, "no_such_name")


def test_importing_the_package_modules_does_not_warn():
    """Nothing inside the package reaches the task through its old homes."""
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "import logattn_ref.data, logattn_ref.mqar, logattn_ref.recall, logattn_ref.train, logattn_ref.bench")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
