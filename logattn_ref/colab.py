"""Colab readiness: every course notebook opens with an "Open in Colab" badge and a setup cell, stamped from ONE
setting, ``[tool.logattn] repository`` in ``pyproject.toml`` (e.g. ``"github.com/OWNER/logattn"``).

While the setting is empty the course has no public home, so no badge is stamped (a badge needs a real URL);
the setup cell is stamped either way. A fork owner sets that one line and runs::

    python -m logattn_ref.colab --fix      # stamp every notebook (idempotent)
    python -m logattn_ref.colab --check    # exit 1 and list notebooks that disagree with the setting

The stamped cells are recognisable by their tags (:data:`BADGE_TAG`, :data:`SETUP_TAG`) and fixed cell ids, so
stamping again replaces them instead of adding more. Lessons that want a GPU (:data:`GPU_LESSONS`) also get
the notebook metadata with which Colab opens them on a GPU runtime (``accelerator: GPU``, ``colab.gpuType``).

What the setup cell does on Colab (``"google.colab" in sys.modules``): installs the course package with pip
from the repository, constrained to the torch that Colab already has (torch is never reinstalled); says
whether a GPU is there and how to get one when the lesson wants it; sets ``LOGATTN_CHECKPOINT_DIR`` (the
learner may point it at Google Drive). Outside Colab it only says so. ``LOGATTN_PIP_SOURCE`` (what to install
instead of the repository: a wheel, a folder, a fork's URL) and ``LOGATTN_PIP_ARGS`` (extra pip arguments)
override the install; the tests use them to install a wheel built from the checkout.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tomllib
from pathlib import Path
from typing import List, Optional

import nbformat

from .notebooks import clean, notebook_paths, repo_root

BADGE_TAG = "logattn-colab-badge"
SETUP_TAG = "logattn-setup"
GPU_LESSONS = ("04", "04b", "05", "06")  # lesson number = the notebook's file name up to its first "_"
COLAB_GPU_TYPE = "T4"
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
_REPOSITORY = re.compile(r"github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def read_repository(root: Optional[Path] = None) -> str:
    """The ``[tool.logattn] repository`` setting, normalised to ``github.com/OWNER/NAME`` ("" when unset).

    Raises:
        ValueError: the setting is missing from pyproject.toml, or is not a GitHub repository.
    """
    pyproject = (root or repo_root()) / "pyproject.toml"
    tool = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("logattn", {})
    if "repository" not in tool:
        raise ValueError(f"{pyproject} has no [tool.logattn] repository setting (set it to \"\" if there is none)")
    return normalise_repository(tool["repository"])


def normalise_repository(value: str) -> str:
    """``"https://github.com/o/n.git"`` -> ``"github.com/o/n"``; "" stays "".

    Raises:
        ValueError: ``value`` is not a string naming a GitHub repository (Colab opens notebooks from GitHub).
    """
    if not isinstance(value, str):
        raise ValueError(f"repository must be a string like 'github.com/OWNER/NAME', got {value!r}")
    text = value.strip().removeprefix("https://").removeprefix("http://").removesuffix("/").removesuffix(".git")
    if text and not _REPOSITORY.fullmatch(text):
        raise ValueError(f"repository must look like 'github.com/OWNER/NAME', got {value!r}")
    return text


def wants_gpu(relpath: str) -> bool:
    """Whether the lesson at ``relpath`` (e.g. ``notebooks/05_train.ipynb``) asks Colab for a GPU runtime."""
    return lesson_number(relpath) in GPU_LESSONS


def lesson_number(relpath: str) -> str:
    """The lesson number in a notebook's file name, the part before the first ``_``: ``"05"`` for
    ``notebooks/05_train.ipynb``, ``"04b"`` for ``notebooks/04b_kernels.ipynb``."""
    return Path(relpath).name.split("_", 1)[0]


def colab_url(repository: str, relpath: str) -> str:
    """The Colab address that opens ``relpath`` of ``repository`` (``github.com/OWNER/NAME``)."""
    owner_name = repository.removeprefix("github.com/")
    return f"https://colab.research.google.com/github/{owner_name}/blob/{BRANCH}/{Path(relpath).as_posix()}"


def badge_source(repository: str, relpath: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(repository, relpath)})"


def setup_source(repository: str, gpu: bool) -> str:
    """The setup cell's code. It must run on a bare Colab runtime: standard library, pip and torch only."""
    return f'''\
# Course setup, stamped by `python -m logattn_ref.colab --fix` from pyproject.toml (edit the setting there).
# On Colab: install the course package (keeping Colab's torch), check the GPU, choose a checkpoint folder.
# Anywhere else this cell does nothing: your environment already has the package (see README.md).
import os
import subprocess
import sys

LOGATTN_REPOSITORY = {repository!r}  # [tool.logattn] repository; "" until the course has a public home
LESSON_WANTS_GPU = {gpu!r}

if "google.colab" in sys.modules:
    import importlib.metadata
    import importlib.util

    source = os.environ.get("LOGATTN_PIP_SOURCE") or (
        f"logattn-ref @ git+https://{{LOGATTN_REPOSITORY}}" if LOGATTN_REPOSITORY else "")
    if importlib.util.find_spec("logattn_ref") is not None and not os.environ.get("LOGATTN_PIP_SOURCE"):
        print("logattn_ref is already installed")
    elif not source:
        raise RuntimeError("This copy of the course names no repository to install from: set LOGATTN_PIP_SOURCE "
                           "to a pip source of the course (e.g. git+https://github.com/OWNER/logattn) and rerun.")
    else:
        # Pin torch to the version Colab ships: pip then never replaces it (a reinstall is GBs and breaks CUDA).
        with open("/tmp/logattn-constraints.txt", "w") as constraints:
            constraints.write(f"torch=={{importlib.metadata.version('torch')}}\\n")
        command = [sys.executable, "-m", "pip", "install", "-q", "-c", "/tmp/logattn-constraints.txt", source]
        command += os.environ.get("LOGATTN_PIP_ARGS", "").split()
        print("installing the course:", " ".join(command[3:]))
        subprocess.run(command, check=True)
        importlib.invalidate_caches()
    import torch

    if torch.cuda.is_available():
        print("GPU:", torch.cuda.get_device_name(0))
    elif LESSON_WANTS_GPU:
        print("No GPU. This lesson wants one: Runtime > Change runtime type > Hardware accelerator: T4 GPU, "
              "then run the notebook again. Without it the lesson runs on the CPU at small sizes.")
    # Checkpoints survive a disconnect only on Drive. To keep them, run:
    #   from google.colab import drive; drive.mount("/content/drive")
    #   os.environ["LOGATTN_CHECKPOINT_DIR"] = "/content/drive/MyDrive/logattn-checkpoints"
    os.environ.setdefault("LOGATTN_CHECKPOINT_DIR", "/content/logattn-checkpoints")
    os.makedirs(os.environ["LOGATTN_CHECKPOINT_DIR"], exist_ok=True)
    print("checkpoints go to", os.environ["LOGATTN_CHECKPOINT_DIR"])
else:
    print("Not running on Colab: nothing to set up.")
'''


def _tagged(cell: nbformat.NotebookNode, tag: str) -> bool:
    return tag in cell.get("metadata", {}).get("tags", [])


def stamp(nb: nbformat.NotebookNode, relpath: str, repository: str) -> nbformat.NotebookNode:
    """Put the badge (when ``repository`` is set) and the setup cell into ``nb``; modifies and returns it.

    Idempotent: cells tagged :data:`BADGE_TAG` / :data:`SETUP_TAG` are removed first. The badge becomes the
    first cell; the setup cell goes right before the first code cell, so it runs before anything imports
    the course package.

    Args:
        nb: a version-4 notebook. relpath: its path inside the repository (the badge links to it).
        repository: ``github.com/OWNER/NAME`` or "".
    """
    repository = normalise_repository(repository)
    nb.cells = [c for c in nb.cells if not (_tagged(c, BADGE_TAG) or _tagged(c, SETUP_TAG))]
    gpu = wants_gpu(relpath)
    setup = nbformat.v4.new_code_cell(setup_source(repository, gpu), metadata={"tags": [SETUP_TAG]})
    setup.id = SETUP_TAG  # fixed ids: stamping twice gives the same bytes
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    nb.cells.insert(first_code, setup)
    if repository:
        badge = nbformat.v4.new_markdown_cell(badge_source(repository, relpath), metadata={"tags": [BADGE_TAG]})
        badge.id = BADGE_TAG
        nb.cells.insert(0, badge)
    colab_meta = dict(nb.metadata.get("colab", {}))
    if gpu:
        nb.metadata["accelerator"] = "GPU"
        colab_meta["gpuType"] = COLAB_GPU_TYPE
    else:
        nb.metadata.pop("accelerator", None)
        colab_meta.pop("gpuType", None)
    if colab_meta:
        nb.metadata["colab"] = colab_meta
    else:
        nb.metadata.pop("colab", None)
    return nb


def _relpath(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError as err:
        raise ValueError(f"notebook {path} is outside the repository {root}; the badge needs its path there") from err


def problems(path: Path, repository: str, root: Optional[Path] = None) -> List[str]:
    """How the notebook at ``path`` disagrees with the stamp for ``repository`` (empty when it agrees)."""
    root = root or repo_root()
    relpath = _relpath(path, root)
    nb = nbformat.read(path, as_version=4)
    expected = stamp(copy.deepcopy(nb), relpath, repository)
    found = []
    badges = [c for c in nb.cells if _tagged(c, BADGE_TAG)]
    want_badge = [c for c in expected.cells if _tagged(c, BADGE_TAG)]
    if want_badge and not badges:
        found.append(f"no Colab badge (expected one linking to {colab_url(repository, relpath)})")
    elif badges and not want_badge:
        found.append("has a Colab badge, but [tool.logattn] repository is empty")
    elif badges and (len(badges) > 1 or badges[0].source != want_badge[0].source or nb.cells[0] is not badges[0]):
        found.append(f"the Colab badge is not the first cell or does not link to {colab_url(repository, relpath)}")
    setups = [c for c in nb.cells if _tagged(c, SETUP_TAG)]
    want_setup = next(c for c in expected.cells if _tagged(c, SETUP_TAG))
    if not setups:
        found.append("no setup cell (tagged logattn-setup)")
    elif len(setups) > 1 or setups[0].source != want_setup.source:
        found.append(f"the setup cell differs from the one stamped for repository {repository!r}")
    elif [c.source for c in nb.cells] != [c.source for c in expected.cells]:
        found.append("the setup cell is not right before the first code cell")
    for key in ("accelerator", "colab"):
        if nb.metadata.get(key) != expected.metadata.get(key):
            found.append(f"notebook metadata {key} is {nb.metadata.get(key)!r}, expected {expected.metadata.get(key)!r}")
    return found


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logattn_ref.colab", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="list notebooks whose badge/setup disagree (exit 1)")
    mode.add_argument("--fix", action="store_true", help="stamp badge and setup cell into the notebooks")
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every course notebook)")
    args = parser.parse_args(argv)
    root = args.root or repo_root()
    repository = read_repository(root)
    paths = args.paths or notebook_paths(root)
    bad = 0
    for path in paths:
        if args.fix:
            nb = nbformat.read(path, as_version=4)
            nbformat.write(clean(stamp(nb, _relpath(path, root), repository)), path)
        else:
            for problem in problems(path, repository, root):
                print(f"{path}: {problem}")
                bad += 1
    if args.fix:
        print(f"stamped {len(paths)} notebook(s) for repository {repository or '(none: no badge)'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
