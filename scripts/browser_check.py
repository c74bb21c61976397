#!/usr/bin/env python3
"""Real-browser check: notebook 01 in JupyterLab, driven by headless Chromium through Playwright.

Called by ``scripts/browser_check.sh`` (``make browser-check``), which makes sure Debian's
``chromium`` and the ``playwright`` package are there; Playwright never downloads a browser here,
it drives ``/usr/bin/chromium`` (``--chromium``).

Steps: copy ``notebooks/01_one_linear_layer.ipynb`` into a temporary folder (so the browser's
autosave can never write outputs into the committed notebook); start JupyterLab on 127.0.0.1
with a random token, fast mode (``DSNOT_LITE_FAST=1``) and throw-away Jupyter config/data/runtime
folders; open the notebook in Chromium with a fresh profile; Run -> Run All Cells; wait until every
cell has run; then check that

* the notebook's own checks printed ``all checks passed`` and no cell raised an error,
* matplotlib plots rendered as images with real pixels,
* the ``LayerExplorer`` widget rendered (its sliders, dropdowns and its plot image),
* the widget is live: typing a new T into the slider's readout redraws its plot.

Screenshots go to ``figures/browser/`` (git-ignored). Exit code 0 when everything rendered, 1 when
the widgets or a plot did not, 2 for set-up problems (no browser, server did not start).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dsnot_lite.runs.io import atomic_write_text  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "01_one_linear_layer.ipynb"
CHROMIUM_FLAGS = [
    "--no-sandbox",  # we run as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def log(msg: str) -> None:
    print(f"browser-check: {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(workdir: Path, scratch: Path, port: int, token: str) -> subprocess.Popen:
    # Fresh user settings: no "get notified about Jupyter news?" toast over the screenshots.
    news = scratch / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    # Every cell in the DOM: JupyterLab 4 attaches only the cells near the viewport by default, so a
    # widget further down a long notebook would not be found.
    tracker = scratch / "lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    env = dict(os.environ)
    env.update(
        DSNOT_LITE_FAST="1",
        JUPYTER_CONFIG_DIR=str(scratch / "config"),
        JUPYTER_DATA_DIR=str(scratch / "data"),
        JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(scratch / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(scratch / "lab-workspaces"),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workdir}",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers run as root
    with open(scratch / "jupyterlab.log", "w") as log_file:  # the server keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_server(port: int, token: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group we started (server and its kernels)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')).map(e => e.textContent.trim())"""
IMAGES_JS = """(sel) => Array.from(document.querySelectorAll(sel)).map(i => ({w: i.naturalWidth, h: i.naturalHeight, src: (i.src || '').slice(0, 64)}))"""


def run_check(args) -> int:
    """Open notebook 01 in JupyterLab in headless Chromium, run every cell and check what renders."""
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="dsnot-browser-"))
    workdir = scratch / "work"
    workdir.mkdir()
    shutil.copy(NOTEBOOK, workdir / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    proc = start_lab(workdir, scratch, port, token)
    failures: list[str] = []
    report: dict = {}
    page = None
    try:
        wait_for_server(port, token, proc)
        log(f"JupyterLab up on 127.0.0.1:{port}")
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                user_data_dir=str(scratch / "chromium-profile"),  # fresh profile
                executable_path=args.chromium,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 1000},
            )
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            log("notebook open, kernel idle; Run -> Run All Cells")
            failures += run_all_cells(page, args.timeout)
            failures += check_outputs(page, out, report)
            failures += check_widget(page, out, report)
            context.close()
    except Exception as exc:
        log(f"set-up failed: {exc}")
        if page is not None:
            try:
                page.screenshot(path=str(out / "01_failure.png"))
                log(f"screenshot of the failure: {out / '01_failure.png'}")
            except Exception:
                pass
        log_text = (
            (scratch / "jupyterlab.log").read_text(errors="replace")[-3000:] if (scratch / "jupyterlab.log").exists() else ""
        )
        print(log_text)
        stop(proc)
        shutil.rmtree(scratch, ignore_errors=True)
        return 2
    stop(proc)
    shutil.rmtree(scratch, ignore_errors=True)
    atomic_write_text(out / "report.json", json.dumps({"failures": failures, **report}, indent=2) + "\n")
    log(json.dumps(report, indent=1))
    for f in failures:
        log(f"FAIL: {f}")
    log(f"screenshots in {out}")
    if failures:
        return 1
    log("OK: notebook 01 ran in JupyterLab, its plots and the LayerExplorer widget rendered and the widget redraws")
    return 0


def accept_kernel_dialog(page) -> bool:
    """JupyterLab may ask which kernel to start; its default choice is the notebook's."""
    dialog = page.locator(".jp-Dialog:has-text('Select Kernel')")
    if not dialog.count():
        return False
    log("JupyterLab asks for a kernel; accepting its default (Python 3)")
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    page.wait_for_timeout(3000)
    return True


def click_run_all(page) -> None:
    accept_kernel_dialog(page)
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item[data-command='runmenu:run-all']")


def run_all_cells(page, timeout: float) -> list[str]:
    """Run -> Run All Cells, then wait until every cell has an execution count and the kernel is idle."""
    click_run_all(page)
    deadline = time.time() + timeout
    prompts: list[str] = []
    failures: list[str] = []
    started = False
    clicked_at = time.time()
    while time.time() < deadline:
        if accept_kernel_dialog(page) and not started:  # the kernel only starts now: run again
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            click_run_all(page)
            clicked_at = time.time()
        prompts = page.evaluate(PROMPTS_JS)
        numbered = [bool(re.fullmatch(r"\[\d+\]:", p)) for p in prompts]
        started = started or any(numbered) or any("*" in p for p in prompts)
        if not started and time.time() - clicked_at > 60:  # the click went nowhere: once more
            log("no cell started within 60 s; clicking Run All Cells again")
            click_run_all(page)
            clicked_at = time.time()
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if prompts and all(numbered) and idle:
            break
        time.sleep(2)
    else:
        failures.append(f"cells did not finish within {timeout} s: prompts {prompts}")
    n_run = sum(bool(re.fullmatch(r"\[\d+\]:", p)) for p in prompts)
    log(f"cells run: {n_run}/{len(prompts)}")
    page.wait_for_timeout(1500)
    return failures


def check_outputs(page, out: Path, report: dict) -> list[str]:
    """No traceback, the notebook's own checks passed, and its matplotlib plots have pixels."""
    failures: list[str] = []
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']:has-text('Traceback')").count()
    if errors:
        failures.append(f"{errors} cell(s) raised an error")
    if not page.locator(".jp-OutputArea-output:has-text('all checks passed')").count():
        failures.append("the notebook's checks did not print 'all checks passed'")
    plots = [i for i in page.evaluate(IMAGES_JS, ".jp-OutputArea-output:not(.jupyter-widgets) > img") if i["w"] > 0]
    report["plots"] = len(plots)
    if len(plots) < 5:
        failures.append(f"only {len(plots)} matplotlib plot(s) rendered with pixels (expected >= 5)")
    first_plot = page.locator(".jp-OutputArea-output > img").first
    first_plot.scroll_into_view_if_needed()
    first_plot.screenshot(path=str(out / "01_first_plot.png"))
    return failures


def check_widget(page, out: Path, report: dict) -> list[str]:
    """The LayerExplorer renders its controls and plot, and redraws after T is set to 5."""
    explorer = page.locator(".dsnot-layer-explorer")
    if not explorer.count():
        return ["the LayerExplorer widget did not render (no .dsnot-layer-explorer element)"]
    failures: list[str] = []
    explorer.scroll_into_view_if_needed()
    sliders = explorer.locator(".widget-slider, .jupyter-widget-slider").count()
    dropdowns = explorer.locator("select").count()
    image = explorer.locator("img")
    info = page.evaluate(IMAGES_JS, ".dsnot-layer-explorer img")
    report.update(sliders=sliders, dropdowns=dropdowns, widget_image=info)
    if sliders < 4 or dropdowns < 6:
        failures.append(f"widget controls missing: {sliders} sliders, {dropdowns} dropdowns")
    shown = page.evaluate(
        "() => Array.from(document.querySelectorAll('.dsnot-layer-explorer select'))"
        ".map(s => s.selectedIndex >= 0 ? s.options[s.selectedIndex].text : '')"
    )  # fmt: skip
    report["dropdown_values"] = shown
    if not all(shown):
        failures.append(f"a dropdown shows no value: {shown}")
    if not info or info[0]["w"] == 0:
        failures.append("the widget's plot image has no pixels")
    page.wait_for_timeout(500)
    explorer.screenshot(path=str(out / "01_widget.png"))
    page.screenshot(path=str(out / "01_page.png"))
    # live update: type T = 5 into the T slider's readout, wait for a new plot
    before = image.first.get_attribute("src")
    t_slider = explorer.locator(
        ".widget-slider:has-text('T (max swaps)'), .jupyter-widget-slider:has-text('T (max swaps)')"
    ).first
    readout = t_slider.locator(".widget-readout").first
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("5")
    page.keyboard.press("Enter")
    try:
        page.wait_for_function(
            "(before) => { const i = document.querySelector('.dsnot-layer-explorer img'); return i && i.src !== before; }",
            arg=before, timeout=60_000,
        )  # fmt: skip
        page.wait_for_timeout(800)
        report["live_update"] = True
        report["status_after_T5"] = explorer.locator(".widget-html").nth(1).inner_text()
        explorer.screenshot(path=str(out / "01_widget_after_T5.png"))
    except Exception as exc:
        report["live_update"] = False
        failures.append(f"the widget did not redraw after setting T = 5 ({type(exc).__name__})")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable (Debian package)")
    ap.add_argument("--out", default=str(ROOT / "figures" / "browser"), help="screenshot folder")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed for Run All Cells")
    args = ap.parse_args()
    if not Path(args.chromium).is_file():
        log(f"error: no Chromium at {args.chromium}; fix: apt-get install chromium (or pass --chromium PATH)")
        return 2
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
