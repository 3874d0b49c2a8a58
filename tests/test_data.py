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
    """The real corpus, from the copy shipped in the package (a clone always has it)."""
    path = data.packaged_copy()
    assert path.is_file(), f"the package should ship {path}"
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


def _no_network(url, timeout=None):
    raise AssertionError(f"the loader tried the network ({url}) although a copy ships with the package")


def test_packaged_copy_is_used_offline_without_env(monkeypatch, tmp_path):
    """A fresh clone, no LOGATTN_DATA_DIR, no network: lesson 5's corpus loads from the package."""
    monkeypatch.delenv("LOGATTN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = data.fetch_shakespeare(opener=_no_network)
    assert path == data.packaged_copy()
    assert not (tmp_path / "cache").exists()  # nothing downloaded or cached
    assert data.shakespeare_dataset().vocab_size == 65


def test_env_var_wins_over_the_packaged_copy(monkeypatch, tmp_path, corpus_bytes):
    monkeypatch.setenv("LOGATTN_DATA_DIR", str(tmp_path))
    calls = []
    path = data.fetch_shakespeare(opener=_opener_returning(corpus_bytes, calls))
    assert path == tmp_path / data.FILENAME and calls == [data.SHAKESPEARE_URL]


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_damaged_packaged_copy_is_never_used(monkeypatch, tmp_path, corpus_bytes, damage):
    """A partial or altered shipped copy is skipped with a warning and the verified download path takes over."""
    bad = tmp_path / "pkg" / data.FILENAME
    bad.parent.mkdir()
    bad.write_bytes(corpus_bytes[:1000] if damage == "truncated" else corpus_bytes.replace(b"ROMEO", b"ROMEA", 1))
    monkeypatch.setattr(data, "packaged_copy", lambda: bad)
    monkeypatch.delenv("LOGATTN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    with pytest.warns(RuntimeWarning, match="not using the packaged corpus"):
        path = data.fetch_shakespeare(opener=_opener_returning(corpus_bytes, calls))
    assert path == tmp_path / "cache" / "logattn" / data.FILENAME and calls == [data.SHAKESPEARE_URL]
    # Offline and with no cache either: a clear error, still never the damaged copy.
    path.unlink()

    def offline(url, timeout=None):
        raise urllib.error.URLError("offline")

    with pytest.warns(RuntimeWarning), pytest.raises(DataError, match="could not download"):
        data.fetch_shakespeare(opener=offline)
