"""`make lab`'s launcher (logattn_ref.lab): JupyterLab rooted at the clone, lesson 0 first, --allow-root only for
root, no browser without a display; and every link between the course's files resolves inside the clone, so that
the file browser (rooted at the clone) can open each one. The real server is started in test_fresh_clone.py."""

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from logattn_ref import lab

ROOT = Path(__file__).resolve().parent.parent


def test_command_is_rooted_at_the_clone_and_opens_lesson_0():
    cmd = lab.lab_command(ROOT, port=8890, token="t0k", as_root=False, headless=False)
    assert cmd[1:3] == ["-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={ROOT}" in cmd and str(ROOT / "notebooks" / "00_start_here.ipynb") in cmd
    assert "--port=8890" in cmd and "--IdentityProvider.token=t0k" in cmd
    assert "--allow-root" not in cmd and "--no-browser" not in cmd


def test_root_and_headless_get_what_jupyter_needs_and_nothing_more():
    cmd = lab.lab_command(ROOT, port=8890, token="t", as_root=True, headless=True)
    assert "--allow-root" in cmd and "--no-browser" in cmd
    # A learner's own flags win and are not doubled.
    cmd = lab.lab_command(ROOT, port=8890, token="t", as_root=True, headless=True,
                          extra=["--port", "9000", "--no-browser"])
    assert cmd.count("--no-browser") == 1 and "--port=8890" not in cmd and cmd[-2:] == ["9000", "--no-browser"]
    assert lab._port_given(["--port", "9000"]) == 9000 and lab._port_given(["--port=9001"]) == 9001


@pytest.mark.parametrize("env, platform, headless", [
    ({}, "linux", True),
    ({"DISPLAY": ":0"}, "linux", False),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", False),
    ({}, "darwin", False),
    ({}, "win32", False),
])
def test_headless_detection(env, platform, headless):
    assert lab.is_headless(env, platform) is headless


def test_banner_prints_the_url_with_token_and_what_to_do_headless():
    text = lab.banner(8891, "abc123", headless=True)
    assert "http://localhost:8891/lab/tree/notebooks/00_start_here.ipynb?token=abc123" in text
    assert "ssh -L 8891:localhost:8891" in text


def test_makefile_lab_target_uses_the_launcher():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lab: setup\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "-m logattn_ref.lab" in recipe.group(1)


LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|(?:href|src)=\"([^\"]+)\"")


def _links(text: str):
    for match in LINK.finditer(text):
        yield match.group(1) or match.group(2)


def _documents():
    for folder in ("notebooks", "solutions", "exercises"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "markdown":
                    yield path, f"cell {index}", cell.source
    for path in [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "logattn_ref" / "corpora" / "README.md"]:
        yield path, "", path.read_text()


def _check_links(documents, root=ROOT):
    """(number of relative links checked, list of those that do not resolve to a file inside ``root``)."""
    checked, broken = 0, []
    for path, where, text in documents:
        for target in _links(text):
            parsed = urlparse(target)
            if parsed.scheme or target.startswith(("#", "mailto:", "data:")):
                continue
            resolved = (path.parent / unquote(parsed.path)).resolve()
            checked += 1
            if not resolved.exists() or root.resolve() not in (resolved, *resolved.parents):
                broken.append(f"{path.relative_to(root)} {where}: {target}")
    return checked, broken


def test_every_relative_link_resolves_inside_the_clone():
    checked, broken = _check_links(_documents())
    assert checked >= 20, f"only {checked} relative links found: is the link pattern still right?"
    assert not broken, "links that do not resolve inside the clone:\n" + "\n".join(broken)


def test_link_check_catches_broken_and_outside_links():
    lesson = ROOT / "notebooks" / "01_softmax_attention.ipynb"
    text = ("[ok](../exercises/01_softmax_attention.ipynb) [gone](../exercises/99_missing.ipynb) "
            '<img src="../docs/none.png"> [outside](../../../etc/hostname) [web](https://example.org/x.ipynb)')
    checked, broken = _check_links([(lesson, "cell 0", text)])
    assert checked == 4
    assert [b.split(": ")[1] for b in broken] == ["../exercises/99_missing.ipynb", "../docs/none.png",
                                                  "../../../etc/hostname"]
