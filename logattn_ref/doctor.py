"""Is this machine ready for the course? ``python -m logattn_ref.doctor`` checks and says how to fix it.

Each check is a function that returns a :class:`Check` record (name, status, what it found, the fix), so that
lesson 0 can call :func:`run_checks` and show the same table inside a notebook. Statuses:

- ``OK``: present and usable;
- ``WARN``: the course still runs, but a part of it is slower or unavailable (no GPU, no Triton, ...);
- ``MISSING``: something *required* is absent or too old. The command exits with code 1 only then.

The minimum versions are the lower bounds of ``pyproject.toml`` (a test keeps the two in agreement).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import io
import os
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional

OK, WARN, MISSING = "OK", "WARN", "MISSING"
STATUSES = (OK, WARN, MISSING)

PYTHON_MIN = (3, 10)
# Lower bounds of [project] dependencies in pyproject.toml (tests/test_doctor.py compares them).
MINIMUM_VERSIONS = {"numpy": "1.24", "torch": "2.1", "matplotlib": "3.7", "ipywidgets": "8.0", "nbval": "0.10",
                    "triton": "3.0", "jupyterlab_widgets": "3.0"}
PIP_INSTALL = 'python -m pip install -e ".[lab,test]"  (from the course checkout)'
# The clone this module lives in (for an editable install or `python -m` from the repository root).
REPO_ROOT = Path(__file__).resolve().parents[1]
ENABLE_GPU_COLAB = "on Colab: Runtime > Change runtime type > Hardware accelerator: T4 GPU, then rerun"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report.

    Attributes:
        name: what was checked ("torch", "CUDA", ...).
        status: ``"OK"``, ``"WARN"`` or ``"MISSING"``.
        detail: what was found (a version, a device, a path).
        fix: what to do about it ("" when OK).
        required: whether the course cannot run without it (a MISSING required check fails the command).
    """

    name: str
    status: str
    detail: str
    fix: str = ""
    required: bool = True

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.status != OK and not self.fix:
            raise ValueError(f"check {self.name!r} has status {self.status} but no fix")

    def line(self) -> str:
        """``STATUS   name: detail`` and, when not OK, `` -> fix``."""
        text = f"{self.status:<8}{self.name}: {self.detail}"
        return text + (f"\n{'':8}fix: {self.fix}" if self.fix else "")


def _version_tuple(version: str) -> tuple:
    from packaging.version import Version  # matplotlib depends on packaging, so it is always there

    return Version(version).release


def _module_check(name: str, *, dist: Optional[str] = None, required: bool = True, fix: str = "",
                  why: str = "") -> Check:
    """Import ``name``, read its installed version, compare with :data:`MINIMUM_VERSIONS`."""
    dist = dist or name
    absent = MISSING if required else WARN
    # Name this interpreter: a bare `python`/`pip` on the PATH is often another Python than the one checked.
    fix = fix or f"{sys.executable} -m pip install '{dist}>={MINIMUM_VERSIONS.get(name, '0')}'  (or {PIP_INSTALL})"
    try:
        importlib.import_module(name)
    except Exception as err:  # ImportError, or a broken install raising anything at import time
        return Check(name, absent, f"cannot import it ({type(err).__name__}: {err}){why}", fix, required)
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(sys.modules[name], "__version__", "unknown")
    minimum = MINIMUM_VERSIONS.get(name)
    if minimum and version != "unknown" and _version_tuple(version) < _version_tuple(minimum):
        return Check(name, absent, f"version {version} is older than the {minimum} the course needs", fix, required)
    return Check(name, OK, f"version {version}", "", required)


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_environment(prefix: Optional[str] = None, env: Optional[dict] = None,
                      repo_root: Optional[Path] = None) -> Check:
    """Is this Python the course's environment (the clone's .venv, the conda env ``logattn``, or Colab)?

    Run with another interpreter (e.g. the system ``python3`` while the course lives in ``.venv``), the
    doctor would report packages MISSING that the course's environment has, and suggest installing them into
    the wrong Python: this line says so first.
    """
    prefix = Path(prefix or sys.prefix)
    env = os.environ if env is None else env
    root = repo_root or REPO_ROOT
    venv = root / ".venv"
    if env.get("COLAB_RELEASE_TAG") or "google.colab" in sys.modules:
        return Check("environment", OK, f"Colab ({sys.executable})")
    if _is_inside(prefix, venv):
        return Check("environment", OK, f"the course's virtual environment {venv}")
    if env.get("CONDA_DEFAULT_ENV") == "logattn" or prefix.name == "logattn":
        return Check("environment", OK, f"the conda environment logattn ({prefix})")
    if (venv / "bin" / "python").exists():
        return Check("environment", WARN, f"{sys.executable} is not the course's environment {venv}; the lines "
                                          "below describe this interpreter, not the course's",
                     f"run `make doctor` in {root} (or `{venv / 'bin' / 'python'} -m logattn_ref.doctor`)",
                     required=False)
    if (root / "Makefile").exists():
        return Check("environment", WARN, f"{sys.executable} is not a course environment and {venv} does not "
                                          "exist yet", f"run `make lab` or `make test` in {root} to create it, "
                                                       "then `make doctor`", required=False)
    return Check("environment", OK, f"{sys.executable} (a pip install of logattn-ref, not a clone)")


def check_python() -> Check:
    found = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < PYTHON_MIN:
        need = ".".join(map(str, PYTHON_MIN))
        return Check("Python", MISSING, f"{found} at {sys.executable}, the course needs >= {need}",
                     f"install Python {need} or newer and create the environment with it (make setup PYTHON=...)")
    return Check("Python", OK, f"{found} at {sys.executable}")


def check_numpy() -> Check:
    return _module_check("numpy")


def check_torch() -> Check:
    return _module_check("torch", fix="install torch for your machine (https://pytorch.org/get-started/locally/); "
                                      "on Colab it is preinstalled: do not reinstall it")


def check_cuda() -> Check:
    """A CUDA device: lessons 4-6 want one; without it they run on the CPU at small sizes."""
    try:
        import torch
    except Exception:
        return Check("CUDA", WARN, "torch is not importable, so no GPU can be used", "fix the torch line first",
                     required=False)
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build of torch)"
        return Check("CUDA", WARN, f"no CUDA device visible (torch's CUDA: {built}); lessons 4-6 will run on the "
                                   f"CPU at small sizes", f"{ENABLE_GPU_COLAB}; locally install a CUDA build of "
                                                          f"torch and an NVIDIA driver", required=False)
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return Check("CUDA", OK, f"{torch.cuda.device_count()} device(s); cuda:{index} is {props.name} "
                             f"(compute capability {props.major}.{props.minor}, "
                             f"{props.total_memory / 2**30:.1f} GiB), CUDA {torch.version.cuda}", required=False)


def check_triton() -> Check:
    check = _module_check("triton", required=False, fix="python -m pip install 'triton>=3.0' (Linux only), or "
                                                        "pip install -e '.[kernels]'",
                          why="; the fused kernels of lesson 4b need it")
    if check.status != OK:
        return check
    try:
        import torch

        gpu = torch.cuda.is_available()
    except Exception:
        gpu = False
    if not gpu:
        import triton

        from .triton_kernels import INTERPRETER_MIN_TRITON, interpreter_runs

        if not interpreter_runs(triton.__version__):
            oldest = ".".join(map(str, INTERPRETER_MIN_TRITON))
            return Check("triton", WARN, f"{check.detail}; no GPU, and this triton's interpreter cannot run the "
                                         f"course's kernels (it needs triton >= {oldest})", required=False,
                         fix=f"python -m pip install -U 'triton>={oldest}'")
        return Check("triton", OK, f"{check.detail}; no GPU, so kernels run only under its interpreter "
                                   f"(TRITON_INTERPRET=1, slow)", required=False)
    return check


def check_ipywidgets() -> Check:
    return _module_check("ipywidgets")


def check_jupyterlab_widgets() -> Check:
    """The JupyterLab front-end extension that draws ipywidgets (Colab brings its own; there it is optional)."""
    check = _module_check("jupyterlab_widgets", required=False,
                          fix="python -m pip install 'jupyterlab_widgets>=3.0' and restart JupyterLab "
                              "(not needed on Colab)", why="; sliders would show as text in JupyterLab")
    if check.status != OK:
        return check
    try:
        ipyw = importlib.metadata.version("ipywidgets")
        labw = importlib.metadata.version("jupyterlab_widgets")
    except importlib.metadata.PackageNotFoundError:
        return check
    # ipywidgets 8 talks protocol 2, drawn only by jupyterlab_widgets 3 (ipywidgets 7 pairs with 1.x).
    if _version_tuple(ipyw)[0] - 5 != _version_tuple(labw)[0]:
        return Check("jupyterlab_widgets", WARN, f"version {labw} does not match ipywidgets {ipyw}",
                     "python -m pip install -U ipywidgets jupyterlab_widgets, then restart JupyterLab",
                     required=False)
    return check


def check_matplotlib() -> Check:
    """matplotlib imports and can render a figure to PNG (how every lesson shows its plots)."""
    check = _module_check("matplotlib")
    if check.status != OK:
        return check
    try:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(1, 1))  # no pyplot: this must not open a window or change the backend
        figure.add_subplot().plot([0, 1], [1, 0])
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        if not buffer.getvalue().startswith(b"\x89PNG"):
            raise RuntimeError("savefig did not write a PNG")
    except Exception as err:
        return Check("matplotlib", MISSING, f"cannot render a PNG ({type(err).__name__}: {err})",
                     "python -m pip install --force-reinstall matplotlib")
    import matplotlib

    backend = matplotlib.get_backend()
    detail = f"{check.detail}, backend {backend}, renders PNG"
    in_kernel = "ipykernel" in sys.modules
    if in_kernel and not any(word in backend.lower() for word in ("inline", "widget", "agg")):
        return Check("matplotlib", WARN, f"{detail}; in a notebook plots may open windows instead of showing inline",
                     "run %matplotlib inline in the notebook (the course's setup() uses PNG output)",
                     required=False)
    return Check("matplotlib", OK, detail)


def check_nbval() -> Check:
    return _module_check("nbval", required=False, fix="python -m pip install 'nbval>=0.10' (only the test suite "
                                                      "needs it: pip install -e '.[test]')",
                         why="; only `make test` needs it")


def _data_location() -> tuple:
    """(cache folder, file name, url, sha256, size) from logattn_ref.data, or the documented defaults."""
    try:
        from . import data
    except Exception:  # data imports torch; the doctor must still report on the corpus without it
        env = os.environ.get("LOGATTN_DATA_DIR", "").strip()
        folder = Path(env).expanduser() if env else \
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "logattn"
        return folder, "tinyshakespeare.txt", None, None, None
    return data.data_dir(), data.FILENAME, data.SHAKESPEARE_URL, data.SHAKESPEARE_SHA256, data.SHAKESPEARE_BYTES


def check_data(directory: Optional[os.PathLike] = None, *, probe: bool = True,
               opener: Callable = urllib.request.urlopen, timeout: float = 3.0) -> Check:
    """Tiny Shakespeare (lesson 5's corpus): shipped with the package, or cached, intact, or downloadable.

    Args:
        directory: the folder to look in (default: the copy shipped in the package, unless
            ``$LOGATTN_DATA_DIR`` is set; then that folder, or the data module's cache folder).
        probe: whether to try reaching the download URL when the file is absent.
        opener: ``opener(request, timeout=...)`` like ``urllib.request.urlopen`` (tests pass a stand-in).
    """
    folder, filename, url, sha256, size = _data_location()
    shipped = Path(__file__).resolve().parent / "corpora" / filename
    if directory is None and not os.environ.get("LOGATTN_DATA_DIR", "").strip() and shipped.is_file():
        content = shipped.read_bytes()
        if sha256 is None or hashlib.sha256(content).hexdigest() == sha256:
            return Check("data", OK, f"tiny Shakespeare shipped with the package at {shipped}", required=False)
        # A damaged shipped copy is skipped by the loader; report it, then look at the cache as the loader does.
        damaged = f"{shipped} is damaged ({len(content):,} bytes, SHA-256 mismatch; the loader skips it)"
        cached = check_data(folder, probe=probe, opener=opener, timeout=timeout)
        return Check("data", WARN, f"{damaged}; {cached.detail}",
                     cached.fix or f"reinstall the course (git checkout -- {shipped.name} in a clone)",
                     required=False)
    folder = Path(directory) if directory is not None else folder
    path = folder / filename
    where = f"put {filename} into {folder} by hand (or set LOGATTN_DATA_DIR to a folder holding it)"
    if path.is_file():
        if sha256 is not None:
            content = path.read_bytes()
            if hashlib.sha256(content).hexdigest() != sha256:
                return Check("data", WARN, f"{path} is not the expected file ({len(content):,} bytes, expected "
                                           f"{size:,}, SHA-256 mismatch)",
                             f"delete {path}; lesson 5 downloads it again from {url}", required=False)
        return Check("data", OK, f"tiny Shakespeare at {path}", required=False)
    if url is None:
        return Check("data", WARN, f"{path} is absent (and logattn_ref.data is not importable to download it)",
                     where, required=False)
    if probe:
        try:
            with opener(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                pass
            return Check("data", OK, f"not cached yet; {url} is reachable, lesson 5 downloads it to {path}",
                         required=False)
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as err:
            reason = f"{url} is not reachable ({getattr(err, 'reason', err)})"
    else:
        reason = "network probe skipped"
    return Check("data", WARN, f"{path} is absent and {reason}; lesson 5 needs it",
                 f"download {url} elsewhere and {where}", required=False)


CHECKS: List[Callable[[], Check]] = [check_environment, check_python, check_numpy, check_torch, check_cuda, check_triton,
                                     check_ipywidgets, check_jupyterlab_widgets, check_matplotlib, check_nbval,
                                     check_data]


def run_checks(checks: Optional[List[Callable[[], Check]]] = None) -> List[Check]:
    """Run every check (default :data:`CHECKS`); a check that crashes is reported, never raised."""
    results = []
    for check in checks or CHECKS:
        try:
            results.append(check())
        except Exception as err:  # a doctor that crashes helps nobody: report the crash as a finding
            name = getattr(check, "__name__", "check").removeprefix("check_").removesuffix("_cli")
            results.append(Check(name, WARN, f"the check itself failed ({type(err).__name__}: {err})",
                                 "report this at the course's issue tracker, with the output above",
                                 required=False))
    return results


def exit_code(results: List[Check]) -> int:
    """1 when a required check is MISSING, else 0 (WARN never fails)."""
    return int(any(r.status == MISSING and r.required for r in results))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logattn_ref.doctor", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument("--offline", action="store_true", help="do not probe the data download URL")
    args = parser.parse_args(argv)

    def check_data_cli() -> Check:
        return check_data(probe=not args.offline)

    checks = [check_data_cli if c is check_data else c for c in CHECKS]
    results = run_checks(checks)
    if args.json:
        import json

        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for result in results:
            print(result.line())
        failed = [r.name for r in results if r.status == MISSING and r.required]
        print(f"\n{'not ready: fix ' + ', '.join(failed) if failed else 'ready for the course'}"
              f" ({sum(r.status == WARN for r in results)} warning(s))")
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
