"""Every lesson as a learner meets it: JupyterLab in Chromium, run all cells, no error (or stderr) output in any
cell, and each explorer widget a lesson displays answers one interaction by redrawing its figure.

JupyterLab runs headless on a free loopback port with a token and throwaway config/runtime/settings/workspace
folders, on *copies* of the lessons (autosave must not touch the committed notebooks). Its kernels inherit
``CI`` (set to "true" when the caller has not set it), so every lesson runs in fast mode. Chromium is Debian's
(``apt-get install chromium``), driven by Playwright through ``executable_path``: no browser is downloaded.
Screenshots go to ``test-artifacts/`` (gitignored); ``LOGATTN_UPDATE_DOCS=1`` also refreshes the README's
screenshot in ``docs/``.

Which widgets a lesson must show is read from its code: each call ``widgets.<name>_explorer(`` promises a live
widget whose box carries the CSS class ``logattn-<name>-explorer`` (see ``logattn_ref/widgets.py``); the
interaction for each class is in ``INTERACTIONS`` below. A lesson that gains an explorer without an entry there
fails with a message that says so.
"""

import json
import os
import re
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
LESSONS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
LESSON = ROOT / "notebooks" / "01_softmax_attention.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "lesson1_jupyterlab.png"
CHROMIUM = os.environ.get("LOGATTN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-default-apps", "--disable-extensions", "--metrics-recording-only"]
KERNEL_START_S = 120  # a kernel on two busy cores can take a while to import numpy/torch
RUN_ALL_S = 300  # per lesson; fast mode keeps each to seconds, this only bounds a hang
REDRAW_S = 60

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


class Lab:
    """A running JupyterLab: its base URL, token, served folder and log file."""

    def __init__(self, base: str, token: str, served: Path, log_path: Path):
        self.base, self.token, self.served, self.log_path = base, token, served, log_path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        """Delete every session (and so its kernel): a lesson's kernel must not eat the next lesson's CPU."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """A JupyterLab serving a folder that holds a copy of every lesson; shut down at the end."""
    if not LESSON.is_file():
        pytest.skip(f"{LESSON} does not exist yet")
    home = tmp_path_factory.mktemp("jupyter")
    served = home / "served"
    served.mkdir()
    for lesson in LESSONS:
        shutil.copy(lesson, served / lesson.name)
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
    log_path = home / "jupyter.log"
    log = open(log_path, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={served}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, cwd=served, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, served, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{lab.base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{lab.log_tail()}")
                time.sleep(0.5)
        yield lab
    finally:
        stop_process_group(server)  # its session holds only what it started
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / "jupyter.log")


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        page = context.pages[0] if context.pages else context.new_page()
        # Leaving a notebook with unsaved outputs asks "leave the page?": yes (the copies are throwaway).
        page.on("dialog", lambda dialog: dialog.accept() if dialog.type == "beforeunload" else dialog.dismiss())
        try:
            yield page
        finally:
            context.close()


# The notebook model in the page (window.jupyterapp exists because of --LabApp.expose_app_in_browser). Cells
# are numbered as in the notebook file (markdown included), the numbering the course's tools print.
CELL_STATES = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.content || !panel.content.model) return null;
    const cells = [];
    let index = 0;
    for (const cell of panel.content.model.cells) {
        const json = cell.toJSON();
        if (json.cell_type === 'code') {
            const source = Array.isArray(json.source) ? json.source.join('') : json.source;
            cells.push({index, count: json.execution_count, outputs: json.outputs,
                        first_line: source.split('\\n')[0].slice(0, 100)});
        }
        index += 1;
    }
    return {kernel: panel.sessionContext.session?.kernel?.status ?? 'none', cells};
}"""


def problems(states: dict) -> list:
    """One line per error output or stderr stream, naming the notebook cell index and the text."""
    found = []
    for cell in states["cells"]:
        for output in cell["outputs"]:
            if output["output_type"] == "error":
                found.append(f"cell {cell['index']} ({cell['first_line']!r}): {output['ename']}: {output['evalue']}")
            elif output["output_type"] == "stream" and output.get("name") == "stderr":
                text = "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
                found.append(f"cell {cell['index']} ({cell['first_line']!r}) wrote to stderr: {text.strip()[:500]}")
    return found


def open_lesson(page, lab: Lab, name: str) -> None:
    """Open ``name`` alone (``?reset`` drops any earlier layout) and wait until its kernel is idle."""
    page.goto(f"{lab.base}/lab/tree/{name}?token={lab.token}&reset", wait_until="domcontentloaded")
    try:
        page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                               " return w && w.context && w.context.path === name"
                               " && w.sessionContext?.session?.kernel?.status === 'idle'; }",
                               arg=name, timeout=KERNEL_START_S * 1000, polling=500)
    except Exception as err:
        pytest.fail(f"{name}: no idle kernel within {KERNEL_START_S} s ({str(err).splitlines()[0]}).\n"
                    f"JupyterLab log:\n{lab.log_tail()}")


def run_all(page, lab: Lab, name: str) -> dict:
    """Run every cell; return the cell states once the kernel is idle and every code cell has run (or one
    raised: the run stops there). A kernel that dies or a run that hangs fails with the cell it was in."""
    # Not awaited: the command's promise settles only when the last cell has run, with no timeout of its own.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    deadline = time.monotonic() + RUN_ALL_S
    previous = None
    while True:
        time.sleep(0.5)
        states = page.evaluate(CELL_STATES)
        if states is None:
            pytest.fail(f"{name}: the notebook panel went away during run-all")
        if states["kernel"] in ("dead", "unknown") or (states["kernel"] == "none" and previous is not None):
            pytest.fail(f"{name}: the kernel is {states['kernel']} during run-all; problems so far: "
                        f"{problems(states)}\nJupyterLab log:\n{lab.log_tail()}")
        finished = all(c["count"] is not None for c in states["cells"])
        failed = any(o["output_type"] == "error" for c in states["cells"] for o in c["outputs"])
        settled = states["kernel"] == "idle" and (finished or failed)
        if settled and states == previous:  # the same settled state twice in a row: not a gap between cells
            return states
        if time.monotonic() > deadline:
            waiting = next((c for c in states["cells"] if c["count"] is None), None)
            where = f"cell {waiting['index']} ({waiting['first_line']!r})" if waiting else "the last cell"
            pytest.fail(f"{name}: run-all did not finish within {RUN_ALL_S} s; kernel {states['kernel']},"
                        f" stuck at or before {where}; problems so far: {problems(states)}")
        previous = states if settled else None


def assert_ran_cleanly(states: dict, name: str) -> None:
    found = problems(states)
    assert not found, f"{name}: cells raised or wrote to stderr in JupyterLab:\n" + "\n".join(found)
    not_run = [c["index"] for c in states["cells"] if c["count"] is None]
    assert not not_run, f"{name}: code cells {not_run} did not run"


def drag_slider(page, slider) -> None:
    """Drag the slider's handle to the end of its track farther from where it is (a real mouse drag)."""
    handle = slider.locator(".noUi-handle").first
    track = slider.locator(".noUi-target").first
    handle_box, track_box = handle.bounding_box(), track.bounding_box()
    x = handle_box["x"] + handle_box["width"] / 2
    y = handle_box["y"] + handle_box["height"] / 2
    go_right = x - track_box["x"] < track_box["width"] / 2
    target = track_box["x"] + track_box["width"] + 20 if go_right else track_box["x"] - 20
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(target, y, steps=8)
    page.mouse.up()


def move_slider(page, explorer, label: str) -> str:
    slider = explorer.locator(".widget-slider", has=page.locator(".widget-label", has_text=label))
    assert slider.count() == 1, f"no slider labelled {label!r} in the explorer"
    readout = slider.locator(".widget-readout")
    before = readout.inner_text()
    drag_slider(page, slider)
    page.wait_for_function("([el, old]) => el.innerText !== old", arg=[readout.element_handle(), before],
                           timeout=10_000)
    after = readout.inner_text()
    for _ in range(10):  # the readout follows the drag: report where it came to rest
        time.sleep(0.2)
        after, previous = readout.inner_text(), after
        if after == previous:
            break
    return f"slider {label!r}: {before} -> {after}"


def click_toggle(page, explorer, label: str) -> str:
    button = explorer.locator("button.widget-toggle-button").filter(has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
    assert button.count() == 1, (f"no toggle button {label!r} in the explorer; buttons: "
                                 f"{explorer.locator('button.widget-toggle-button').all_inner_texts()}")
    assert "mod-active" not in (button.get_attribute("class") or ""), f"toggle {label!r} is already selected"
    button.click()
    page.wait_for_function("(el) => el.classList.contains('mod-active')", arg=button.element_handle(),
                           timeout=10_000)
    return f"toggle {label!r} selected"


# One interaction per explorer (CSS class of its box in logattn_ref/widgets.py): a control that changes the figure.
INTERACTIONS = {
    "logattn-attention-explorer": lambda page, explorer: move_slider(page, explorer, "temperature"),
    "logattn-derivation-explorer": lambda page, explorer: click_toggle(page, explorer, "2"),
    "logattn-cost-explorer": lambda page, explorer: move_slider(page, explorer, "n"),
    "logattn-scan-explorer": lambda page, explorer: click_toggle(page, explorer, "Blelloch"),
}


def explorers_in(lesson: Path) -> list:
    """CSS classes of the explorers the lesson's code displays, in order (``widgets.<name>_explorer(``)."""
    notebook = json.loads(lesson.read_text())
    classes = []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            classes += [f"logattn-{name}-explorer" for name in re.findall(r"\bwidgets\.(\w+?)_explorer\(", source)]
    return list(dict.fromkeys(classes))


def current_image(page, css_class: str):
    # The output area replaces its <img> on every redraw: always query the current one, never keep the element.
    return page.evaluate("(cls) => { const img = document.querySelector('.' + cls + ' img');"
                         " return img ? img.getAttribute('src') : null; }", css_class)


def interact_and_check_redraw(page, lab: Lab, name: str, css_class: str, artifact_stem: str) -> None:
    """Find the live widget, make its interaction, and wait for a different picture in its output."""
    assert css_class in INTERACTIONS, (f"{name} displays an explorer with class {css_class!r} but the browser test "
                                       f"has no interaction for it: add one to INTERACTIONS in {Path(__file__).name}")
    explorer = page.locator(f".{css_class}")
    try:
        explorer.wait_for(state="visible", timeout=30_000)
    except Exception:
        pytest.fail(f"{name}: no live widget with class {css_class!r} rendered (only its static fallback, or "
                    f"nothing: is the ipywidgets front end installed?)")
    assert explorer.count() == 1, f"{name}: {explorer.count()} widgets with class {css_class!r}, expected one"
    explorer.scroll_into_view_if_needed()
    explorer.locator("img").first.wait_for(state="visible", timeout=30_000)
    before = current_image(page, css_class)
    assert before and before.startswith(("data:image/png", "blob:")), \
        f"{name}: {css_class} shows no PNG: {before!r:.80}"
    explorer.screenshot(path=str(ARTIFACTS / f"{artifact_stem}_before.png"))
    what = INTERACTIONS[css_class](page, explorer)
    try:
        page.wait_for_function("([cls, old]) => { const img = document.querySelector('.' + cls + ' img');"
                               " return img && img.getAttribute('src') !== old; }", arg=[css_class, before],
                               timeout=REDRAW_S * 1000, polling=250)
    except Exception:
        explorer.screenshot(path=str(ARTIFACTS / f"{artifact_stem}_no_redraw.png"))
        pytest.fail(f"{name}: {css_class}: after {what}, the figure did not change within {REDRAW_S} s.\n"
                    f"JupyterLab log (the kernel's stderr shows a callback that raised):\n{lab.log_tail()}")
    explorer.screenshot(path=str(ARTIFACTS / f"{artifact_stem}_after.png"))
    after = current_image(page, css_class)
    assert after and after != before, f"{name}: {css_class}: after {what}, the figure did not change"


@pytest.fixture
def fresh_kernels(jupyter_lab, browser_page):
    """After each lesson: leave the page, then shut its kernel down (the next lesson gets the CPU)."""
    yield
    try:
        browser_page.goto("about:blank", timeout=30_000)
    finally:
        jupyter_lab.shut_down_kernels()


def test_lesson1_runs_in_jupyterlab_and_the_slider_redraws(jupyter_lab, browser_page, fresh_kernels):
    page = browser_page
    committed = LESSON.read_bytes()
    ARTIFACTS.mkdir(exist_ok=True)
    open_lesson(page, jupyter_lab, LESSON.name)
    states = run_all(page, jupyter_lab, LESSON.name)
    page.screenshot(path=str(ARTIFACTS / "lesson1_after_run_all.png"), full_page=True)
    assert_ran_cleanly(states, LESSON.name)
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0

    explorer = page.locator(".logattn-attention-explorer")
    explorer.wait_for(state="visible", timeout=30_000)  # the widget rendered (not its text fallback)
    explorer.scroll_into_view_if_needed()
    explorer.locator("img").first.wait_for(state="visible", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "lesson1_explorer.png"))
    if os.environ.get("LOGATTN_UPDATE_DOCS"):
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS_SCREENSHOT))
    # Drags the temperature slider, asserts its readout moved and the plot's PNG changed.
    interact_and_check_redraw(page, jupyter_lab, LESSON.name, "logattn-attention-explorer", "explorer")
    assert LESSON.read_bytes() == committed, "the committed lesson changed: the browser must only touch the copy"


@pytest.mark.parametrize("lesson", [p for p in LESSONS if p != LESSON], ids=lambda p: p.stem)
def test_lesson_runs_in_jupyterlab_and_its_widgets_respond(lesson, jupyter_lab, browser_page, fresh_kernels):
    page = browser_page
    committed = lesson.read_bytes()
    ARTIFACTS.mkdir(exist_ok=True)
    open_lesson(page, jupyter_lab, lesson.name)
    states = run_all(page, jupyter_lab, lesson.name)
    page.screenshot(path=str(ARTIFACTS / f"{lesson.stem}_after_run_all.png"))
    assert_ran_cleanly(states, lesson.name)

    expected = explorers_in(lesson)
    shown = page.evaluate("() => [...document.querySelectorAll('[class*=\"logattn-\"]')].flatMap("
                          "el => [...el.classList].filter(c => /^logattn-.*-explorer$/.test(c)))")
    unexpected = sorted(set(shown) - set(expected))
    assert not unexpected, f"{lesson.name}: widgets {unexpected} render but no widgets.*_explorer( call was found"
    for css_class in expected:
        interact_and_check_redraw(page, jupyter_lab, lesson.name, css_class, f"{lesson.stem}_{css_class}")
    states = page.evaluate(CELL_STATES)
    assert_ran_cleanly(states, lesson.name)  # nothing raised into a cell during the interactions
    assert lesson.read_bytes() == committed, \
        f"the committed {lesson.name} changed: the browser must only touch the copy"
