"""Notebook 01's degradation explorer in a real browser: JupyterLab, headless Chromium, a slider drag.

tests/test_widgets.py drives the explorer from Python. This test checks the part those tests
cannot: that the widget renders in JupyterLab (the jupyterlab_widgets extension, the kernel comm)
and that a slider moved with the mouse reaches the kernel and comes back as a new preview.

It starts JupyterLab on localhost on a copy of notebooks/01_degradations.ipynb (outputs and saved
widget state stripped, so nothing on screen predates the run), opens it in headless Chromium driven
by playwright, runs the cells up to and including the one that shows the explorer, drags the upper
handle of the ``noise_level`` range slider (the ``old_photo`` preset draws the noise from a range)
to the far right and releases it, and checks that the degraded preview's PNG changed while the
clean one did not. Screenshots of the explorer before and after the drag go to the test's tmp_path.

It uses Debian's Chromium (``apt-get install chromium``; .ci/install_browser.sh), never a browser
downloaded by ``playwright install``. It skips only when playwright is missing or Chromium is not
installed or cannot start; every other problem is a failure.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_degradations.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
WIDGET_CELL_MARKER = "degradation_explorer("  # the code cell that creates and shows the explorer
SLIDER = "noise_level"
TOKEN = "kontext-browser-test"

SERVER_START_S = 60
PAGE_TIMEOUT_MS = 60_000  # page load, kernel start
RUN_TIMEOUT_MS = 180_000  # the cells up to the explorer on a slow shared CPU
UPDATE_TIMEOUT_MS = 30_000  # slider released -> new preview on screen

# JupyterLab user settings for the test: every cell in the DOM (no windowing), no news or update
# checks, no notification toasts over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": True,
    },
}


# ---------------------------------------------------------------------------------------------
# Fixtures: the browser (or a skip), the JupyterLab server
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def browser():
    """Headless Debian Chromium under playwright; skips only if either is missing or cannot start."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} "
                    "(apt-get install chromium; .ci/install_browser.sh)")
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        except sync_api.Error as error:
            pytest.skip(f"Chromium at {CHROMIUM} does not start under playwright: {error}")
        try:
            yield chromium
        finally:
            chromium.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _stripped_notebook(source: Path, target: Path) -> None:
    """A copy of the notebook without outputs, execution counts or saved widget state."""
    notebook = json.loads(source.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook["metadata"].pop("widgets", None)
    target.write_text(json.dumps(notebook, indent=1))


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on localhost serving a stripped copy of notebook 01; torn down whatever happens.

    Everything Jupyter reads or writes (config, runtime files, settings, workspaces) lives under
    tmp_path, and the ``python3`` kernel is this interpreter, so the test sees neither the user's
    Jupyter setup nor another environment's kernel.
    """
    work = tmp_path / "lab"
    root, data, settings = work / "root", work / "data", work / "settings"
    root.mkdir(parents=True)
    _stripped_notebook(NOTEBOOK, root / NOTEBOOK.name)
    kernel = data / "kernels" / "python3"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (browser test)",
        "language": "python",
    }))
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))

    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # CI sets Agg; the kernel should draw inline as in a course session
    env.update(
        JUPYTER_PATH=str(data),  # first on the data path: our python3 kernel spec wins
        JUPYTER_CONFIG_DIR=str(work / "config"),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = work / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
        "--ServerApp.disable_check_xsrf=True", "--LabApp.expose_app_in_browser=True",
    ]
    if os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {server.returncode}:\n"
                            f"{log_path.read_text()[-4000:]}")
            try:
                _get_json(f"{base}/api/status?token={TOKEN}")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n"
                                f"{log_path.read_text()[-4000:]}")
                time.sleep(0.25)
        yield {"base": base, "log": log_path, "notebook": NOTEBOOK.name}
    finally:
        _stop_server(server, base)


def _stop_server(server: subprocess.Popen, base: str) -> None:
    """Shut the kernels down, then the server; kill what does not stop in time."""
    if server.poll() is None:
        with contextlib.suppress(Exception):
            for kernel in _get_json(f"{base}/api/kernels?token={TOKEN}"):
                request = urllib.request.Request(
                    f"{base}/api/kernels/{kernel['id']}?token={TOKEN}", method="DELETE"
                )
                urllib.request.urlopen(request, timeout=10).close()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, 9)
            server.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# Helpers in the page
# ---------------------------------------------------------------------------------------------

# JupyterLab exposes its application object as window.jupyterapp (LabApp.expose_app_in_browser,
# as JupyterLab's own galata tests do); the notebook panel is the current widget.
KERNEL_IDLE_JS = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === "idle" && panel.context.isReady;
}"""

# Select cells 0..last and run them (Run > Run Selected Cell), as a reader would. Returns at once;
# window.__testRun says when the run is over and whether every cell succeeded.
RUN_CELLS_JS = """(last) => {
    const app = window.jupyterapp;
    const notebook = app.shell.currentWidget.content;
    notebook.activeCellIndex = 0;
    notebook.deselectAll();
    notebook.extendContiguousSelectionTo(last);
    window.__testRun = null;
    app.commands.execute("notebook:run-cell").then(
        (ok) => { window.__testRun = {done: true, ok: ok}; },
        (error) => { window.__testRun = {done: true, ok: false, error: String(error)}; },
    );
}"""

# The bytes behind an <img> (ipywidgets shows an Image widget's value through a blob: URL).
IMAGE_BYTES_JS = """async (img) => {
    const buffer = await (await fetch(img.src)).arrayBuffer();
    let text = "";
    for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
    return btoa(text);
}"""


SELECTED_TEXT_JS = "(select) => select.options[select.selectedIndex].textContent"


def _image_bytes(image) -> bytes:
    return base64.b64decode(image.evaluate(IMAGE_BYTES_JS))


def _widget_cell_index() -> int:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    matches = [i for i, cell in enumerate(cells)
               if cell["cell_type"] == "code" and WIDGET_CELL_MARKER in "".join(cell["source"])]
    assert len(matches) == 1, f"expected one cell calling {WIDGET_CELL_MARKER!r}, found cells {matches}"
    return matches[0]


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------


def test_explorer_slider_drag_updates_the_preview_in_jupyterlab(browser, lab, tmp_path):
    started = time.monotonic()
    widget_cell = _widget_cell_index()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page_errors: list[str] = []
    # Tall enough for the whole explorer (about 1400 px): element screenshots of something taller
    # than the notebook's scrolling area come out garbled.
    context = browser.new_context(viewport={"width": 1280, "height": 1700})
    page = context.new_page()
    page.on("pageerror", lambda error: page_errors.append(str(error)))

    def diagnosis() -> str:
        page.screenshot(path=str(shots / "failure.png"), full_page=True)
        return (f"\npage errors: {page_errors}\nscreenshot: {shots / 'failure.png'}\n"
                f"JupyterLab log (tail):\n{lab['log'].read_text()[-3000:]}")

    try:
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(f"{lab['base']}/lab/tree/{lab['notebook']}?reset&token={TOKEN}")
        page.wait_for_function(KERNEL_IDLE_JS, timeout=PAGE_TIMEOUT_MS)

        page.evaluate(RUN_CELLS_JS, widget_cell)
        cell = page.locator(".jp-Notebook .jp-Cell").nth(widget_cell)
        output = cell.locator(".jp-OutputArea-output")
        slider = output.locator(".widget-hslider", has=page.locator("label.widget-label", has_text=SLIDER))
        images = output.locator("img.widget-image")  # clean, clean zoom, degraded, degraded zoom
        try:
            run = page.wait_for_function("() => window.__testRun", timeout=RUN_TIMEOUT_MS).json_value()
        except Exception as error:
            raise AssertionError(f"cells 0-{widget_cell} did not finish: {error}{diagnosis()}") from error
        if not run.get("ok"):
            stderr = page.locator(".jp-Notebook .jp-OutputArea-output[data-mime-type*='stderr']")
            failed = "\n".join(stderr.all_inner_texts())[-4000:]
            raise AssertionError(f"running cells 0-{widget_cell} failed ({run}):\n{failed}{diagnosis()}")
        try:
            slider.wait_for(state="visible")
        except Exception as error:
            shown = output.all_inner_texts()
            raise AssertionError(
                f"the explorer did not render: {error}\ncell output: {shown}{diagnosis()}"
            ) from error
        page.wait_for_function(KERNEL_IDLE_JS)
        assert images.count() == 4, f"expected 4 preview images, found {images.count()}{diagnosis()}"
        clean, degraded = images.nth(0), images.nth(2)
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0",
                               arg=degraded.element_handle())
        readout = slider.locator(".widget-readout").inner_text()
        preset = output.locator(".widget-dropdown",
                                has=page.locator("label.widget-label", has_text="preset"))
        preset_before = preset.locator("select").evaluate(SELECTED_TEXT_JS)
        clean_before, degraded_before = _image_bytes(clean), _image_bytes(degraded)
        src_before = degraded.get_attribute("src")
        explorer = output.first
        explorer.evaluate("element => element.scrollIntoView({block: 'start'})")
        before_png = shots / "explorer_before.png"
        explorer.screenshot(path=str(before_png))
        print(f"\nscreenshot before the drag: {before_png}")
        ran_s = time.monotonic() - started

        # Drag the upper handle of the noise_level range to the end of the track and let go
        # (continuous_update=False: the kernel hears of it on release).
        handle = slider.locator(".noUi-handle-upper")
        track = slider.locator(".noUi-target")
        handle.scroll_into_view_if_needed()
        box, track_box = handle.bounding_box(), track.bounding_box()
        assert box and track_box, f"the {SLIDER} slider has no layout box{diagnosis()}"
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] / 2, y)
        page.mouse.down()
        page.mouse.move(track_box["x"] + track_box["width"] + 20, y, steps=12)
        page.mouse.up()

        try:
            page.wait_for_function("([img, before]) => img.src !== before",
                                   arg=[degraded.element_handle(), src_before], timeout=UPDATE_TIMEOUT_MS)
            page.wait_for_function(KERNEL_IDLE_JS, timeout=UPDATE_TIMEOUT_MS)
        except Exception as error:
            new_readout = slider.locator(".widget-readout").inner_text()
            raise AssertionError(f"no new preview after dragging {SLIDER} (readout {readout!r} -> "
                                 f"{new_readout!r}): {error}{diagnosis()}") from error
        after_png = shots / "explorer_after.png"
        explorer.screenshot(path=str(after_png))
        print(f"screenshot after the drag:  {after_png}")
        new_readout = slider.locator(".widget-readout").inner_text()
        preset_after = preset.locator("select").evaluate(SELECTED_TEXT_JS)
        clean_after, degraded_after = _image_bytes(clean), _image_bytes(degraded)

        print(f"{SLIDER} {readout} -> {new_readout}; page loaded and cells run in {ran_s:.1f} s, "
              f"whole test {time.monotonic() - started:.1f} s")
        assert new_readout != readout, f"the {SLIDER} readout did not move ({readout!r}){diagnosis()}"
        assert degraded_after != degraded_before, f"the degraded preview did not change{diagnosis()}"
        assert clean_after == clean_before, "the clean photo changed with a degradation slider"
        # The kernel saw the new value: the recipe no longer matches the preset the cell chose.
        assert (preset_before, preset_after) == ("old_photo", "custom")
        for png in (degraded_before, degraded_after):
            assert Image.open(io.BytesIO(png)).size == (256, 256)  # the notebook's resolution=256
        assert not page_errors, f"JavaScript errors in the page: {page_errors}"
    finally:
        context.close()

