"""The corpus loader (checksum, atomic cache, offline message) and the tokenizer/batches. No network: every
download goes through a stub opener."""

import io
import os
import urllib.error

import pytest
import torch

from logattn_ref import data
from logattn_ref.data import CharDataset, CharTokenizer, DataError


@pytest.fixture(scope="module")
def corpus_bytes():
    """The real corpus, from the local copy CI points LOGATTN_DATA_DIR at (skips if there is none)."""
    path = data.data_dir() / data.FILENAME
    if not path.exists():
        pytest.skip(f"no local copy of tiny Shakespeare at {path} (set LOGATTN_DATA_DIR)")
    return path.read_bytes()


class _Response(io.BytesIO):
    pass


def _opener_returning(payload: bytes, calls: list):
    def opener(url, timeout=None):
        calls.append(url)
        return _Response(payload)

    return opener


def test_local_copy_is_the_corpus(corpus_bytes):
    assert len(corpus_bytes) == data.SHAKESPEARE_BYTES
    assert data._sha256(corpus_bytes) == data.SHAKESPEARE_SHA256


def test_download_is_verified_and_cached(tmp_path, corpus_bytes):
    calls = []
    path = data.fetch_shakespeare(tmp_path, opener=_opener_returning(corpus_bytes, calls))
    assert path == tmp_path / data.FILENAME and path.read_bytes() == corpus_bytes
    assert calls == [data.SHAKESPEARE_URL]
    # A second call reads the cache and does not download again.
    data.fetch_shakespeare(tmp_path, opener=_opener_returning(b"never used", calls))
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [data.FILENAME]


def test_corrupt_download_is_rejected_and_not_cached(tmp_path):
    with pytest.raises(DataError, match=data.SHAKESPEARE_SHA256):
        data.fetch_shakespeare(tmp_path, opener=_opener_returning(b"First Citizen:\nnot the corpus", []))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_file_is_rejected(tmp_path):
    (tmp_path / data.FILENAME).write_text("truncated")
    with pytest.raises(DataError, match=f"expected {data.SHAKESPEARE_SHA256}"):
        data.fetch_shakespeare(tmp_path, opener=_opener_returning(b"", []))


def test_download_failing_midway_leaves_no_file(tmp_path):
    class Broken(io.BytesIO):
        def read(self, *args):
            raise ConnectionResetError("connection reset by peer")

    with pytest.raises(DataError, match="could not download"):
        data.fetch_shakespeare(tmp_path, opener=lambda url, timeout=None: Broken())
    assert list(tmp_path.iterdir()) == []


def test_failing_write_leaves_no_partial_file(tmp_path, corpus_bytes, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(data.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        data.fetch_shakespeare(tmp_path, opener=_opener_returning(corpus_bytes, []))
    assert list(tmp_path.iterdir()) == []


def test_offline_error_says_where_to_put_the_file(tmp_path):
    def offline(url, timeout=None):
        raise urllib.error.URLError("Temporary failure in name resolution")

    with pytest.raises(DataError) as info:
        data.fetch_shakespeare(tmp_path, opener=offline)
    message = str(info.value)
    assert str(tmp_path / data.FILENAME) in message and "LOGATTN_DATA_DIR" in message
    assert data.SHAKESPEARE_SHA256 in message


def test_env_var_points_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGATTN_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path


def test_tokenizer_round_trip_and_errors():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == len(set("hello world"))
    assert tok.decode(tok.encode("world hello")) == "world hello"
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("zebra")
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        tok.decode([99])


def test_batches_are_shifted_windows_and_reproducible():
    text = "".join(chr(ord("a") + i % 26) for i in range(2000))
    ds = CharDataset(text, val_fraction=0.2)
    x, y = ds.get_batch("train", 5, 17, generator=torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (5, 17) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = ds.get_batch("train", 5, 17, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    with pytest.raises(KeyError, match="'test'"):
        ds.get_batch("test", 1, 4)
    with pytest.raises(ValueError, match="block_size=1000"):
        ds.get_batch("val", 1, 1000)


def test_shakespeare_split(corpus_bytes):
    ds = data.shakespeare_dataset()
    assert ds.vocab_size == 65
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == len(corpus_bytes.decode("utf-8"))
