"""Tiny Shakespeare, a character tokenizer, and random training batches for the course's small model.

The corpus is the "tiny Shakespeare" file of Karpathy's char-rnn (1,115,394 bytes; public-domain text, see
``logattn_ref/corpora/README.md`` for its provenance). It ships inside this package, so a clone works offline.
Where it is read from, in order:

1. ``$LOGATTN_DATA_DIR/tinyshakespeare.txt`` when that variable is set (a folder you chose; downloaded into it
   when absent);
2. the copy shipped in the package (``logattn_ref/corpora/``);
3. the user cache ``~/.cache/logattn`` (for a pip install built without the file), downloaded there on first use.

Every copy is checked against its SHA-256 before use, wherever it comes from. A download is cached
*atomically*: the bytes go to a temporary file in the cache folder and only a verified file is renamed into
place (``os.replace``), so an interrupted or corrupt download never stays in the cache, and a corrupt or partial
copy is never used.

Anything with ``vocab_size`` and ``get_batch(split, batch_size, block_size, generator, device)`` can be
trained on by :func:`logattn_ref.train.train`; :class:`CharDataset` is the one used for Shakespeare.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .runio import atomic_open, moved_names

__all__ = [
    "SHAKESPEARE_URL",
    "SHAKESPEARE_SHA256",
    "SHAKESPEARE_BYTES",
    "FILENAME",
    "DataError",
    "data_dir",
    "packaged_copy",
    "fetch_shakespeare",
    "load_shakespeare",
    "CharTokenizer",
    "CharDataset",
    "shakespeare_dataset",
]

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_BYTES = 1_115_394
FILENAME = "tinyshakespeare.txt"


class DataError(RuntimeError):
    """The corpus could not be found, downloaded or verified."""


def data_dir() -> Path:
    """Where a download is cached: ``$LOGATTN_DATA_DIR``, else ``~/.cache/logattn``.

    The copy shipped in the package is read before this folder unless ``LOGATTN_DATA_DIR`` is set
    (see :func:`fetch_shakespeare`)."""
    env = os.environ.get("LOGATTN_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "logattn"


def packaged_copy() -> Path:
    """Where the package keeps its own copy of the corpus (it may be absent in a build without it)."""
    return Path(__file__).resolve().parent / "corpora" / FILENAME


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify(data: bytes, source: str) -> None:
    digest = _sha256(data)
    if digest != SHAKESPEARE_SHA256:
        raise DataError(
            f"{source} is not tiny Shakespeare: its SHA-256 is {digest} ({len(data):,} bytes), expected "
            f"{SHAKESPEARE_SHA256} ({SHAKESPEARE_BYTES:,} bytes). Delete it and download the file again from "
            f"{SHAKESPEARE_URL}"
        )


def fetch_shakespeare(
    directory: Optional[os.PathLike] = None,
    *,
    opener: Callable = urllib.request.urlopen,
    url: str = SHAKESPEARE_URL,
    timeout: float = 30.0,
) -> Path:
    """Return the path of the verified corpus, downloading it into ``directory`` if it is not there.

    Args:
        directory: the cache folder (default :func:`data_dir`).
        opener: ``opener(url, timeout=...)`` returns a file-like response (``urllib.request.urlopen``; tests
            pass a stub so that they never touch the network).
        url: where to download from.

    With ``directory=None`` and no ``LOGATTN_DATA_DIR``, the copy shipped in the package is used when it is
    intact; a damaged one is skipped with a warning (never used) and the cache/download path takes over.

    Raises:
        DataError: offline (the message says where to put the file by hand), or the file in the cache or the
            downloaded bytes do not have the expected SHA-256 (the message names the expected checksum).
    """
    if directory is None and not os.environ.get("LOGATTN_DATA_DIR", "").strip():
        shipped = packaged_copy()
        if shipped.is_file():
            try:
                _verify(shipped.read_bytes(), str(shipped))
                return shipped
            except DataError as err:
                warnings.warn(f"not using the packaged corpus: {err}", RuntimeWarning, stacklevel=2)
    folder = Path(directory) if directory is not None else data_dir()
    path = folder / FILENAME
    if path.exists():
        _verify(path.read_bytes(), str(path))
        return path
    try:
        with opener(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DataError(
            f"could not download tiny Shakespeare from {url} ({err}). If this machine is offline, download "
            f"that file elsewhere and save it as {path} (or set LOGATTN_DATA_DIR to a folder that holds "
            f"{FILENAME}); its SHA-256 must be {SHAKESPEARE_SHA256}."
        ) from err
    _verify(data, f"the download from {url}")
    folder.mkdir(parents=True, exist_ok=True)
    # Written beside the target, then renamed: a crash leaves the cache without the file, never with a bad one.
    with atomic_open(path, "wb") as tmp:
        tmp.write(data)
    return path


def load_shakespeare(directory: Optional[os.PathLike] = None, **kwargs) -> str:
    """The text of tiny Shakespeare, verified by its SHA-256 (from the package, or see :func:`fetch_shakespeare`)."""
    return fetch_shakespeare(directory, **kwargs).read_text(encoding="utf-8")


class CharTokenizer:
    """Maps each distinct character of a text to an integer id (ids follow sorted character order)."""

    def __init__(self, alphabet: Sequence[str]):
        chars = sorted(set(alphabet))
        if not chars:
            raise ValueError("alphabet must contain at least one character, got an empty one")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """``text`` -> int64 tensor ``[len(text)]``. Raises ``ValueError`` naming an unknown character."""
        try:
            return torch.tensor([self._ids[c] for c in text], dtype=torch.long)
        except KeyError as err:
            raise ValueError(
                f"text contains the character {err.args[0]!r}, which is not in the tokenizer's alphabet of "
                f"{self.vocab_size} characters"
            ) from None

    def decode(self, ids) -> str:
        """int tensor or sequence of ids -> text. Raises ``ValueError`` for an id outside the vocabulary."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        return "".join(self.chars[int(i)] for i in ids)


class CharDataset:
    """A character corpus split into train (first ``1 - val_fraction``) and validation (the rest).

    ``get_batch`` draws random windows; the randomness comes only from the ``generator`` passed in, so a
    training run that checkpoints that generator's state resumes on exactly the same batches.
    """

    def __init__(self, text: str, val_fraction: float = 0.1, tokenizer: Optional[CharTokenizer] = None):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        self.tokenizer = tokenizer or CharTokenizer.from_text(text)
        ids = self.tokenizer.encode(text)
        cut = int(len(ids) * (1.0 - val_fraction))
        self.splits = {"train": ids[:cut], "val": ids[cut:]}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: Optional[torch.Generator] = None,
        device: torch.device | str = "cpu",
    ):
        """Random windows: ``(x, y)``, both int64 ``[batch_size, block_size]``, ``y`` is ``x`` shifted by one.

        Raises:
            KeyError: ``split`` is not "train" or "val". ValueError: the split is shorter than a window.
        """
        if split not in self.splits:
            raise KeyError(f"split must be one of {sorted(self.splits)}, got {split!r}")
        data = self.splits[split]
        if len(data) <= block_size + 1:
            raise ValueError(f"the {split} split has {len(data)} tokens, too few for block_size={block_size}")
        starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        offsets = torch.arange(block_size + 1)
        windows = data[starts[:, None] + offsets]  # [batch, block + 1]
        x, y = windows[:, :-1], windows[:, 1:]
        if torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def shakespeare_dataset(directory: Optional[os.PathLike] = None, val_fraction: float = 0.1) -> CharDataset:
    """Tiny Shakespeare as a :class:`CharDataset` (65 characters; 90% train, 10% validation)."""
    return CharDataset(load_shakespeare(directory), val_fraction=val_fraction)


#: The synthetic task of lesson 6 (MQAR) was importable from here; it lives in :mod:`logattn_ref.mqar` now.
__getattr__ = moved_names(__name__, {name: f"{__package__}.mqar" for name in
                                     ("MQARBatch", "MQARData", "mqar_batch", "mqar_layout")})
