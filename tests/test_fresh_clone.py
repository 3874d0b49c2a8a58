"""The README's two commands on a fresh clone, offline, as the user running the tests and (as root) as an
unprivileged user too.

A throwaway copy of the clone (the files git tracks or would track) gets the README's setup, `make setup`, run for
real: venv, pip, the torch check, the editable install, the kernel. To keep it to seconds and offline, the new
venv sees this test environment's installed packages through a .pth file, so pip finds every dependency already
there; the course package itself is installed from the copy.

Then: lesson 5's corpus loads with the network blocked and no LOGATTN_DATA_DIR (it ships with the package), and
`make lab` starts a server rooted at the clone that serves lesson 0 and lists exercises/ and solutions/.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from processes import stop_process_group

from logattn_ref.lab import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

NO_NETWORK = textwrap.dedent("""\
    import socket
    def _blocked(*args, **kwargs):
        raise OSError("network blocked by the test")
    socket.socket.connect = _blocked
    socket.create_connection = _blocked
    socket.getaddrinfo = _blocked
    """)


def _clean_env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LOGATTN_DATA_DIR", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "cache"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    env.update(extra)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


@pytest.fixture(scope="module")
def fresh_clone() -> Path:
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("needs make and git (the README's commands use make)")
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True)
    if listing.returncode != 0:
        pytest.skip("not a git checkout: no way to tell which files a clone has")
    # Not pytest's tmp_path: that folder is private to the user running the tests, and an unprivileged user must
    # be able to read the clone too (test_make_lab_as_an_unprivileged_user).
    tmp = Path(tempfile.mkdtemp(prefix="logattn-fresh-clone-"))
    os.chmod(tmp, 0o755)
    clone = tmp / "clone"
    for name in filter(None, listing.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    assert not (clone / ".venv").exists() and (clone / "logattn_ref" / "corpora" / "tinyshakespeare.txt").is_file()
    subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
    (purelib,) = (clone / ".venv" / "lib").glob("python3*/site-packages")
    (purelib / "_test_env_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    (tmp / "home").mkdir()
    setup = subprocess.run(["make", "setup"], cwd=clone, env=_clean_env(tmp), capture_output=True, text=True,
                           timeout=600)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    assert (clone / ".venv" / ".installed").exists()
    yield clone
    shutil.rmtree(tmp, ignore_errors=True)


def test_lesson5_corpus_loads_offline_without_data_dir(fresh_clone):
    tmp = fresh_clone.parent
    code = NO_NETWORK + textwrap.dedent("""\
        import json, logattn_ref
        from logattn_ref.data import fetch_shakespeare, shakespeare_dataset
        dataset = shakespeare_dataset()
        print(json.dumps({"package": logattn_ref.__file__, "path": str(fetch_shakespeare()),
                          "vocab": dataset.vocab_size, "chars": sum(len(s) for s in dataset.splits.values())}))
        """)
    result = subprocess.run([str(fresh_clone / ".venv" / "bin" / "python"), "-c", code], cwd=fresh_clone,
                            env=_clean_env(tmp), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(fresh_clone)  # the clone's package, not this checkout's
    assert Path(found["path"]) == fresh_clone / "logattn_ref" / "corpora" / "tinyshakespeare.txt"
    assert found["vocab"] == 65 and found["chars"] == 1_115_394
    assert not (tmp / "cache" / "logattn").exists()  # nothing was downloaded or cached


def test_loader_reaches_for_the_network_only_without_a_shipped_copy(fresh_clone):
    """The same offline run with the shipped file removed fails with the message that says what to do, so the
    test above passes because of the shipped copy, not because the network block leaked."""
    tmp = fresh_clone.parent
    corpus = fresh_clone / "logattn_ref" / "corpora" / "tinyshakespeare.txt"
    hidden = corpus.with_suffix(".hidden")
    corpus.rename(hidden)
    try:
        code = NO_NETWORK + "from logattn_ref.data import shakespeare_dataset\nshakespeare_dataset()\n"
        result = subprocess.run([str(fresh_clone / ".venv" / "bin" / "python"), "-c", code], cwd=fresh_clone,
                                env=_clean_env(tmp), capture_output=True, text=True, timeout=120)
    finally:
        hidden.rename(corpus)
    assert result.returncode != 0 and "could not download tiny Shakespeare" in result.stderr
    assert "LOGATTN_DATA_DIR" in result.stderr


def _serve(command: list, cwd: Path, env: dict, port: int, token: str):
    """Start ``command`` (a `make lab`), wait until lesson 0 is served, return (process, contents API getter)."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)

    def get(path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}?token={token}", timeout=10) as response:
            body = response.read()
            return response.status, body

    deadline = time.monotonic() + 120
    while True:
        try:
            status, _ = get("/api/contents/notebooks/00_start_here.ipynb")
            if status == 200:
                return proc, get
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            output = _stop(proc)
            pytest.fail(f"`make lab` did not serve lesson 0 (exit {proc.returncode}):\n{output[-4000:]}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> str:
    stop_process_group(proc)
    return proc.stdout.read() if proc.stdout else ""


def _check_lab(fresh_clone: Path, command_prefix: list, env: dict):
    port, token = free_port(8900), "course-test-token"
    env = dict(env, LOGATTN_LAB_TOKEN=token)
    proc, get = _serve(command_prefix + ["make", "lab", f"LAB_ARGS=--port={port}"], fresh_clone, env, port, token)
    try:
        status, body = get("/api/contents/notebooks/00_start_here.ipynb")
        lesson0 = json.loads(body)
        assert status == 200 and lesson0["type"] == "notebook" and lesson0["content"]["cells"]
        for folder in ("exercises", "solutions", "notebooks"):
            listing = json.loads(get(f"/api/contents/{folder}")[1])
            names = {item["name"] for item in listing["content"]}
            expected = {p.name for p in (fresh_clone / folder).glob("*.ipynb")}
            assert expected and expected <= names, (folder, names)
        status, page = get("/lab/tree/notebooks/00_start_here.ipynb")
        assert status == 200 and b"JupyterLab" in page
    finally:
        output = _stop(proc)
    assert f"http://localhost:{port}/lab/tree/notebooks/00_start_here.ipynb?token={token}" in output
    assert "Running as root is not recommended" not in output
    return output


def test_make_lab_serves_lesson_0_with_exercises_and_solutions(fresh_clone):
    """As whoever runs the tests: root in CI and in most containers (Jupyter then needs --allow-root)."""
    output = _check_lab(fresh_clone, [], _clean_env(fresh_clone.parent))
    assert "No display here" in output  # headless is said, not an error


def test_make_lab_as_an_unprivileged_user(fresh_clone):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("the suite runs as an unprivileged user: the test above covers that case")
    runuser = shutil.which("runuser")
    python = fresh_clone / ".venv" / "bin" / "python"
    if runuser is None:
        pytest.skip("no runuser to switch to an unprivileged user")
    probe = subprocess.run([runuser, "-u", "nobody", "--", str(python), "-c", "import torch, jupyterlab"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"user 'nobody' cannot run this environment's Python ({probe.stderr.strip()[-200:]}); on this "
                    "machine the interpreter lives in a folder only root can enter")
    home = fresh_clone.parent / "home-nobody"
    home.mkdir(exist_ok=True)
    shutil.chown(home, "nobody")
    env = _clean_env(fresh_clone.parent, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
                     JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    # runuser sets HOME to the user's own (/nonexistent for nobody); Jupyter needs a writable one.
    _check_lab(fresh_clone, [runuser, "-u", "nobody", "--", "env", f"HOME={home}",
                             f"JUPYTER_RUNTIME_DIR={home / 'runtime'}"], env)
