"""Lesson 1 as a learner meets it: JupyterLab in Chromium, run all cells, no errors, the temperature slider
redraws the plot.

JupyterLab runs headless on a free loopback port with a token and throwaway config/runtime/settings/workspace
folders, on a *copy* of the lesson (autosave must not touch the committed notebook). Chromium is Debian's
(``apt-get install chromium``), driven by Playwright through ``executable_path``: no browser is downloaded.
Screenshots go to ``test-artifacts/`` (gitignored); ``LOGATTN_UPDATE_DOCS=1`` also refreshes the README's
screenshot in ``docs/``.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from processes import stop_process_group

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "notebooks" / "01_softmax_attention.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "lesson1_jupyterlab.png"
CHROMIUM = os.environ.get("LOGATTN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-default-apps", "--disable-extensions", "--metrics-recording-only"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                       reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (or set LOGATTN_CHROMIUM)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """(base URL, token) of a JupyterLab serving a folder that holds a copy of lesson 1; shut down at the end."""
    if not LESSON.is_file():
        pytest.skip(f"{LESSON} does not exist yet")
    home = tmp_path_factory.mktemp("jupyter")
    served = home / "served"
    served.mkdir()
    shutil.copy(LESSON, served / LESSON.name)
    settings = home / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (no windowing), so that every output is in the DOM for the checks below.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    # No "get notified about Jupyter news?" toast over the screenshots, and no network calls for it.
    apputils = home / "settings" / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)
    (apputils / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, CI=os.environ.get("CI") or "true",
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               JUPYTER_PLATFORM_DIRS="1", IPYTHONDIR=str(home / "ipython"))
    log = open(home / "jupyter.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={served}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, cwd=served, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(home / 'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token, served
    finally:
        stop_process_group(server)  # its session holds only what it started
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(home / "jupyter.log", ARTIFACTS / "jupyter.log")


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


# The notebook model in the page (window.jupyterapp exists because of --LabApp.expose_app_in_browser).
CELL_STATES = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.content || !panel.content.model) return null;
    const cells = [];
    for (const cell of panel.content.model.cells) {
        const json = cell.toJSON();
        if (json.cell_type === 'code') cells.push({count: json.execution_count, outputs: json.outputs});
    }
    return {kernel: panel.sessionContext.session?.kernel?.status ?? 'none', cells};
}"""


def test_lesson1_runs_in_jupyterlab_and_the_slider_redraws(jupyter_lab, browser_page):
    base, token, served = jupyter_lab
    page = browser_page
    committed = LESSON.read_bytes()
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(f"{base}/lab/tree/{LESSON.name}?token={token}&reset", wait_until="domcontentloaded")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status"
                           " === 'idle'", timeout=60_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # Done when every code cell has an execution count and the kernel is idle again.
    page.wait_for_function(f"() => {{ const s = ({CELL_STATES})(); return s && s.kernel === 'idle'"
                           " && s.cells.every(c => c.count !== null); }", timeout=90_000, polling=500)
    states = page.evaluate(CELL_STATES)
    errors = [f"cell {i}: {o['ename']}: {o['evalue']}" for i, c in enumerate(states["cells"])
              for o in c["outputs"] if o["output_type"] == "error"]
    page.screenshot(path=str(ARTIFACTS / "lesson1_after_run_all.png"), full_page=True)
    assert not errors, "cells raised in JupyterLab:\n" + "\n".join(errors)
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0

    explorer = page.locator(".logattn-attention-explorer")
    explorer.wait_for(state="visible", timeout=30_000)  # the widget rendered (not its text fallback)
    explorer.scroll_into_view_if_needed()
    image = explorer.locator("img").first
    image.wait_for(state="visible", timeout=30_000)
    before = image.get_attribute("src")
    assert before and before.startswith(("data:image/png", "blob:"))
    explorer.screenshot(path=str(ARTIFACTS / "explorer_before.png"))
    page.screenshot(path=str(ARTIFACTS / "lesson1_explorer.png"))
    if os.environ.get("LOGATTN_UPDATE_DOCS"):
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS_SCREENSHOT))

    slider = explorer.locator(".widget-slider", has=page.locator(".widget-label", has_text="temperature"))
    assert slider.count() == 1, "no slider labelled 'temperature' in the explorer"
    readout = slider.locator(".widget-readout")
    value_before = readout.inner_text()
    handle = slider.locator(".noUi-handle")
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    # The output area replaces its <img> on every redraw: query the current one, not the old element.
    page.wait_for_function("(old) => { const img = document.querySelector('.logattn-attention-explorer img');"
                           " return img && img.getAttribute('src') !== old; }", arg=before, timeout=30_000)
    explorer.screenshot(path=str(ARTIFACTS / "explorer_after.png"))
    assert readout.inner_text() != value_before, "the slider did not move"
    after = explorer.locator("img").first.get_attribute("src")
    assert after and after != before, "moving the temperature slider did not change the plot"
    assert LESSON.read_bytes() == committed, "the committed lesson changed: the browser must only touch the copy"
