"""Two small things every run that writes results needs: an atomic file write, and a record of where it ran.

- :func:`atomic_open`: write a file so that a reader (or a resumed run) never sees half of it. The bytes go to a
  temporary file in the target's folder, are flushed and ``fsync``-ed, and only then renamed over the target
  (``os.replace``, atomic on POSIX and Windows); if writing fails the temporary file is removed and the old
  target, if any, is untouched. :func:`write_json` is the common case.
- :func:`run_environment`: the GPU (or CPU), the library versions and the date, the context every committed
  measurement carries (``benchmarks/results/*.json``).

This module imports only the standard library and torch (lazily for the environment), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import IO, Callable, Dict, Iterator, Optional, Union

__all__ = ["atomic_open", "write_json", "run_environment", "recorded_date", "moved_names"]


@contextlib.contextmanager
def atomic_open(path: Union[str, os.PathLike], mode: str = "w", *, encoding: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit, move it onto ``path`` atomically.

    Args:
        path: the file to (re)write; its folder must exist.
        mode: ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise) or ``"wb"`` (bytes).

    Yields:
        the open temporary file. A crash or an exception inside the ``with`` block leaves ``path`` as it was
        and no temporary file behind (the exception propagates).

    Raises:
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode, encoding=None if "b" in mode else (encoding or "utf-8")) as tmp:
            yield tmp
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json(path: Union[str, os.PathLike], payload, indent: int = 1) -> None:
    """``payload`` as JSON (with a final newline) into ``path``, atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as f:
        json.dump(payload, f, indent=indent)
        f.write("\n")


def run_environment(device=None) -> dict:
    """Where and when a measurement ran: a JSON-ready dict.

    Args:
        device: the device the run used (``"cuda"``, ``"cuda:1"``, a ``torch.device``, ``"cpu"``); ``None`` or
            ``"auto"``: CUDA when it is available.

    Returns:
        ``date_utc`` (ISO 8601, seconds), ``python``, ``platform``, ``torch``, ``numpy``, ``triton`` (None when it
        does not import), ``cuda`` (torch's CUDA version, None in a CPU build) and ``device``: the GPU's name, with
        ``gpu`` (the same name), ``gpu_memory_bytes`` and ``multiprocessors``, on a GPU; ``"cpu"``, with ``cpu``
        (the processor), otherwise.
    """
    import numpy
    import torch

    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # absent, or failing to initialise on this machine
        env["triton"] = None
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        env["device"] = env["gpu"] = props.name
        env["gpu_memory_bytes"] = props.total_memory
        env["multiprocessors"] = props.multi_processor_count
    else:
        env["device"] = "cpu"
        env["cpu"] = platform.processor() or platform.machine()
    return env


def recorded_date(record: dict) -> str:
    """The date of a :func:`run_environment` record: ``date_utc``, or ``date`` in the records that the MQAR sweep
    and the PyTorch-methods benchmark committed before this helper existed.

    Raises:
        KeyError: the record has neither.
    """
    return record["date_utc"] if "date_utc" in record else record["date"]


def moved_names(old_module: str, moves: Dict[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``old_module`` that still gives names which moved elsewhere, for one
    release, with a ``DeprecationWarning`` naming the new home; the new module is imported only when asked.

    Args:
        old_module: the old home's ``__name__``.
        moves: ``{old name: "new.module.name"}`` or ``{old name: "new.module:new_name"}`` when renamed.
    """

    def __getattr__(name: str):
        if name not in moves:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, new_name = moves[name].partition(":")
        new_name = new_name or name
        warnings.warn(f"{old_module}.{name} moved to {module}.{new_name}; import it from there (the old name goes "
                      f"in the next release)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), new_name)

    return __getattr__
