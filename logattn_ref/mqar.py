"""Multi-query associative recall (MQAR): the synthetic task of lesson 6, as a data source.

A sequence first lists ``num_pairs`` key-value pairs ``k1 v1 k2 v2 ...``, then filler, then asks
``num_queries`` of the keys again, each followed by its value. A model is scored only where the input is a
queried key: there it must predict the value that key was paired with, possibly hundreds of tokens back. The
experiment that trains on it (softmax against the log-of-exponentials attention of Heinsen, arXiv:2404.05843v1)
is :mod:`logattn_ref.recall`.

Layout of one sequence (``seq_len`` inputs, ids; token 0 is filler; keys and values use disjoint id ranges)::

    position: 0  1  2  3  ...  2P-1 | filler ... | seq_len+1-2Q ...                    seq_len
    tokens:   k1 v1 k2 v2 ...  vP   | 0 0 ... 0  | k_a v_a  k_b v_b ...  (the last value is only a target)

``inputs = tokens[:seq_len]`` and ``targets = tokens[1:]`` (next-token prediction, like the course's language
model); ``mask`` is True exactly at the queried keys in the query section, where ``targets`` is the value.

What is here: :func:`mqar_layout` (the deterministic layout), :func:`mqar_batch` (random pairs and queries,
seeded) and :class:`MQARData`, the task as a data source for :func:`logattn_ref.train.train` (like
:class:`logattn_ref.data.CharDataset`: ``vocab_size`` and ``get_batch``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

__all__ = ["FILLER", "IGNORE_INDEX", "MQARBatch", "key_value_ranges", "mqar_layout", "mqar_batch", "MQARData"]

#: Token id of the filler between the pairs and the queries.
FILLER = 0
#: Targets at unscored positions in :class:`MQARData` batches (``F.cross_entropy``'s default ignore index).
IGNORE_INDEX = -100


class MQARBatch(NamedTuple):
    """``inputs``, ``targets``: int64 ``[batch, seq_len]``; ``mask``: bool ``[batch, seq_len]``, True where scored."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


def key_value_ranges(vocab_size: int) -> tuple:
    """``(keys, values)``: the two disjoint ``range`` s of token ids used for keys and for values.

    Id 0 is the filler; the remaining ``vocab_size - 1`` ids are split in half, keys first.
    """
    n_keys = (vocab_size - 1) // 2
    return range(1, 1 + n_keys), range(1 + n_keys, vocab_size)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_sizes(vocab_size, num_pairs, seq_len, num_queries, repeat_queries=False) -> None:
    _check_int("vocab_size", vocab_size, 3)
    _check_int("num_pairs", num_pairs, 1)
    _check_int("seq_len", seq_len, 2)
    _check_int("num_queries", num_queries, 1)
    n_keys = len(key_value_ranges(vocab_size)[0])
    if num_pairs > n_keys:
        raise ValueError(
            f"num_pairs={num_pairs} needs {num_pairs} distinct keys, but vocab_size={vocab_size} has only "
            f"{n_keys} key ids (ids 1..{n_keys}; the rest are values and the filler 0): use vocab_size >= "
            f"{2 * num_pairs + 1}"
        )
    if num_queries > num_pairs and not repeat_queries:
        raise ValueError(f"num_queries={num_queries} asks more distinct keys than num_pairs={num_pairs} stores "
                         f"(pass repeat_queries=True to ask keys more than once)")
    if 2 * num_pairs + 2 * num_queries > seq_len:
        raise ValueError(
            f"seq_len={seq_len} is too short for {num_pairs} pairs and {num_queries} queries: "
            f"need seq_len >= 2*num_pairs + 2*num_queries = {2 * num_pairs + 2 * num_queries}"
        )


def mqar_layout(keys: torch.Tensor, values: torch.Tensor, query_index: torch.Tensor, seq_len: int) -> MQARBatch:
    """Lay out given pairs and queries as an MQAR batch (see the module docstring for the layout).

    Args:
        keys, values: int ``[B, P]``: pair p of sequence b is ``(keys[b, p], values[b, p])``; keys of one row
            distinct.
        query_index: int ``[B, Q]``: the pairs asked, in order (``0 <= query_index < P``).
        seq_len: number of inputs; ``2P + 2Q <= seq_len``.

    Returns:
        :class:`MQARBatch` with ``targets[b, t] == inputs[b, t + 1]`` for ``t < seq_len - 1`` and ``mask`` True at
        the Q query keys, where ``targets`` holds ``values[b, query_index[b, i]]``.

    Raises:
        ValueError: shapes disagree, or ``seq_len`` is too short.
    """
    keys, values, query_index = (torch.as_tensor(t) for t in (keys, values, query_index))
    if keys.dim() != 2 or values.shape != keys.shape:
        raise ValueError(f"keys and values must both be [batch, pairs], got {tuple(keys.shape)} and {tuple(values.shape)}")
    if query_index.dim() != 2 or query_index.shape[0] != keys.shape[0]:
        raise ValueError(f"query_index must be [batch={keys.shape[0]}, queries], got {tuple(query_index.shape)}")
    b, p = keys.shape
    q = query_index.shape[1]
    if (query_index < 0).any() or (query_index >= p).any():
        raise ValueError(f"query_index must lie in [0, {p}), got values from {int(query_index.min())} to {int(query_index.max())}")
    _check_int("seq_len", seq_len, 2)
    if 2 * p + 2 * q > seq_len:
        raise ValueError(f"seq_len={seq_len} is too short: need >= 2*pairs + 2*queries = {2 * p + 2 * q}")
    tokens = torch.full((b, seq_len + 1), FILLER, dtype=torch.int64)
    tokens[:, 0 : 2 * p : 2] = keys
    tokens[:, 1 : 2 * p : 2] = values
    start = seq_len + 1 - 2 * q  # the query section ends with the last target
    tokens[:, start::2] = torch.gather(keys, 1, query_index)
    tokens[:, start + 1 :: 2] = torch.gather(values, 1, query_index)
    mask = torch.zeros(b, seq_len, dtype=torch.bool)
    mask[:, start::2] = True
    return MQARBatch(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), mask)


def mqar_batch(
    batch_size: int,
    vocab_size: int,
    num_pairs: int,
    seq_len: int,
    num_queries: Optional[int] = None,
    seed: Optional[int] = None,
    *,
    generator: Optional[torch.Generator] = None,
    repeat_queries: bool = False,
) -> MQARBatch:
    """A random MQAR batch: distinct keys per sequence, values drawn with replacement, distinct queried keys.

    Args:
        batch_size: sequences B. vocab_size: token ids 0..vocab_size-1 (see :func:`key_value_ranges`).
        num_pairs: pairs P stored. seq_len: inputs per sequence. num_queries: keys asked Q (default P).
        seed: seeds a fresh generator (same seed, same batch). generator: use this one instead (it advances).
        repeat_queries: draw the asked pairs with replacement, so ``num_queries`` may exceed ``num_pairs`` (a sweep
            then scores the same number of answers per sequence for every number of pairs).

    Returns:
        :class:`MQARBatch` of ``[batch_size, seq_len]`` tensors (see :func:`mqar_layout`).

    Raises:
        ValueError: a size is not a positive integer, ``num_pairs`` exceeds the key ids of ``vocab_size``,
            ``num_queries > num_pairs`` without ``repeat_queries``, ``seq_len < 2*num_pairs + 2*num_queries``,
            or both seed and generator.
    """
    num_queries = num_pairs if num_queries is None else num_queries
    _check_int("batch_size", batch_size, 1)
    _check_sizes(vocab_size, num_pairs, seq_len, num_queries, repeat_queries)
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    key_ids, value_ids = key_value_ranges(vocab_size)
    # Distinct keys per row: the first P of a random permutation of the key ids (argsort of uniform noise).
    keys = torch.rand(batch_size, len(key_ids), generator=generator).argsort(dim=1)[:, :num_pairs] + key_ids.start
    values = torch.randint(value_ids.start, value_ids.stop, (batch_size, num_pairs), generator=generator)
    if repeat_queries:
        query_index = torch.randint(0, num_pairs, (batch_size, num_queries), generator=generator)
    else:
        query_index = torch.rand(batch_size, num_pairs, generator=generator).argsort(dim=1)[:, :num_queries]
    return mqar_layout(keys, values, query_index, seq_len)


class MQARData:
    """MQAR as a data source for :func:`logattn_ref.train.train`: ``vocab_size`` and ``get_batch``.

    Targets outside the scored positions are -100 (ignored by the model's cross-entropy), so training
    minimises the recall loss only. Both splits draw fresh random sequences; held-out accuracy uses
    :func:`mqar_batch` with a seed the training generator never produces (see :func:`logattn_ref.recall.train_run`).
    """

    def __init__(self, vocab_size: int, num_pairs: int, seq_len: int, num_queries: Optional[int] = None,
                 repeat_queries: bool = False):
        num_queries = num_pairs if num_queries is None else num_queries
        _check_sizes(vocab_size, num_pairs, seq_len, num_queries, repeat_queries)
        self.vocab_size, self.num_pairs, self.seq_len, self.num_queries = vocab_size, num_pairs, seq_len, num_queries
        self.repeat_queries = repeat_queries

    def get_batch(self, split: str, batch_size: int, block_size: int, generator=None, device="cpu"):
        """``(x, y)`` int64 ``[batch_size, seq_len]``; ``y`` is -100 where unscored.

        Raises:
            KeyError: split not "train"/"val". ValueError: ``block_size`` differs from ``seq_len``.
        """
        if split not in ("train", "val"):
            raise KeyError(f"split must be 'train' or 'val', got {split!r}")
        if block_size != self.seq_len:
            raise ValueError(f"block_size={block_size} must equal the task's seq_len={self.seq_len}")
        batch = mqar_batch(batch_size, self.vocab_size, self.num_pairs, self.seq_len, self.num_queries,
                           generator=generator, repeat_queries=self.repeat_queries)
        y = batch.targets.masked_fill(~batch.mask, IGNORE_INDEX)
        return batch.inputs.to(device), y.to(device)
