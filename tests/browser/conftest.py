"""Browser tests: the notebooks as a person runs them, in JupyterLab in headless Chromium.

Papermill and nbval prove that the notebooks *execute*; they cannot see a widget that does not react or an
image the browser cannot load. These tests start JupyterLab on 127.0.0.1 (a free port, a random token,
through ``tools/lab.sh`` as ``make lab`` does), drive Debian's ``chromium`` with Selenium, and run the
notebooks against a smoke run directory.

They run only under ``make browser-test`` (which installs chromium, chromium-driver and selenium through
``tools/browser_setup.sh`` and sets ``GLMD_BROWSER_TEST=1``); a plain ``pytest tests`` reports them skipped.

Settings (environment):
* ``GLMD_BROWSER_RUN_DIR``: the run directory, inside the repository so the server can serve it
  (default ``runs/ci-smoke``, the one ``make notebooks-test`` leaves). Missing stages are produced first by
  ``glmd run --profile smoke`` (finished ones are skipped).
* ``GLMD_BROWSER_NOTEBOOK_TIMEOUT``: seconds one notebook's Run All may take (default 300).
* ``GLMD_BROWSER_PIPELINE=0``: take the run directory as it is (no ``glmd run`` first), e.g. to look at one
  notebook with ``-k 03_stage1`` on a run whose later stages you removed.

Screenshots, the server's log and ``summary.json`` go to ``<run_dir>/browser/``.
"""
from __future__ import annotations

import json
import os
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

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("GLMD_BROWSER_TEST") == "1"
NOTEBOOK_TIMEOUT = float(os.environ.get("GLMD_BROWSER_NOTEBOOK_TIMEOUT", "300"))

# JupyterLab settings for the test server (its own settings folder; a person's are untouched):
# * windowingMode none: every cell is in the DOM (the default renders only what is near the viewport);
# * autosave off: running notebooks/ in the browser must never write outputs into the committed notebooks;
# * markdown opens rendered (report.md is checked in the Markdown Preview a person would use to read it);
# * no news or update checks: they would reach the network and pop up over the page.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False,
                                                 "defaultViewers": {"markdown": "Markdown Preview"}},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="browser test: run it with `make browser-test` (sets GLMD_BROWSER_TEST=1)")
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture(scope="session")
def run_dir() -> Path:
    """The smoke run the notebooks read and write; produced or completed first by the pipeline."""
    d = (ROOT / os.environ.get("GLMD_BROWSER_RUN_DIR", "runs/ci-smoke")).resolve()
    if ROOT not in d.parents:
        pytest.fail(f"GLMD_BROWSER_RUN_DIR={d} is outside the repository {ROOT}: JupyterLab serves the repository")
    if os.environ.get("GLMD_BROWSER_PIPELINE") == "0":
        return d
    glmd = Path(sys.executable).parent / "glmd"
    cmd = [str(glmd), "run", "--profile", "smoke", "--run-dir", str(d), "--cell-timeout", "600"]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(cmd)}` took over 1500 s")
    if done.returncode:
        pytest.fail(f"the smoke pipeline failed, so there is nothing to look at:\n{done.stdout[-2000:]}"
                    f"{done.stderr[-3000:]}")
    return d


@pytest.fixture(scope="session")
def shots(run_dir) -> Path:
    """``<run_dir>/browser/``: screenshots, the server's log, summary.json (emptied at the start)."""
    d = run_dir / "browser"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


@pytest.fixture(scope="session")
def lab_server(run_dir, shots):
    """JupyterLab on 127.0.0.1:<free port> with a random token; yields its base URL and token.

    Kernels inherit GLMD_PROFILE=smoke and GLMD_RUN_DIR, so notebooks/NN.ipynb opened as they are committed
    work on the test's run directory. The server runs in its own process group, ended as a whole."""
    port, token = _free_port(), secrets.token_hex(16)
    home = Path(tempfile.mkdtemp(prefix="glmd-lab-"))
    for name, values in LAB_SETTINGS.items():
        f = home / "settings" / f"{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    env = dict(os.environ, GLMD_PROFILE="smoke", GLMD_RUN_DIR=str(run_dir), VENV=sys.prefix,
               JUPYTER_CONFIG_DIR=str(home / "config"))  # no personal jupyter config (passwords, ...)
    cmd = ["bash", str(ROOT / "tools" / "lab.sh"), "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--LabApp.user_settings_dir={home / 'settings'}",
           f"--LabApp.workspaces_dir={home / 'workspaces'}", "--LabApp.expose_app_in_browser=True",
           # opening a notebook writes a checkpoint copy; keep those out of the repository's folders
           f"--FileCheckpoints.checkpoint_dir={home / 'checkpoints'}"]
    log = shots / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} within 120 s:\n{_tail(log)}")
            time.sleep(1)
        yield base, token
    finally:
        _stop(proc)
        shutil.rmtree(home, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server shuts its kernels down), then SIGKILL for whatever of its group is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def driver(shots):
    """Headless Debian chromium through Debian's chromedriver (never a driver Selenium would download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("chromium or chromedriver is missing: run `bash tools/browser_setup.sh` (make browser-test does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--hide-scrollbars", "--no-first-run"):
        opts.add_argument(arg)  # --no-sandbox: chromium refuses to run as root (CI) with its sandbox
    drv = webdriver.Chrome(options=opts, service=Service(chromedriver, log_output=str(shots / "chromedriver.log")))
    drv.set_page_load_timeout(120)
    drv.set_script_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="session")
def lab(driver, lab_server, shots):
    from lab_page import LabPage

    base, token = lab_server
    return LabPage(driver, base, token, shots)


SUMMARY: dict[str, dict] = {}  # notebook -> what its run showed; printed at the end and saved as summary.json


class NotebookRunner:
    """Runs each notebook once, in the order asked, and keeps the last one open (its widgets alive) for the
    checks that follow it; the previous notebook's kernel is shut down first, through the Kernel menu."""

    def __init__(self, lab, shots: Path):
        self.lab, self.shots, self.runs = lab, shots, {}
        self.open: str | None = None

    def run(self, notebook: str):
        if notebook in self.runs:
            if self.open != notebook:
                pytest.fail(f"{notebook} ran earlier and is closed now: put its checks right after its run")
            return self.runs[notebook]
        if self.open is not None:
            self.lab.shutdown_kernel()
        path = f"notebooks/{notebook}.ipynb"
        self.open = notebook
        run = self.runs[notebook] = self.lab.run_all(path, NOTEBOOK_TIMEOUT)
        self.lab.images(timeout=10)  # figures loaded before the screenshots (broken ones: the checks' business)
        shots = self.lab.cell_screenshots(notebook)
        SUMMARY[notebook] = {"seconds": round(run.seconds, 1), "problem": run.problem, "errors": run.errors,
                             "stderr": run.stderr, "screenshots": str(self.shots / notebook),
                             "cells_with_output": len(shots)}
        return run


@pytest.fixture(scope="session")
def notebooks(lab, shots):
    runner = NotebookRunner(lab, shots)
    yield runner
    (shots / "summary.json").write_text(json.dumps(SUMMARY, indent=1))


def pytest_terminal_summary(terminalreporter):
    if not SUMMARY:
        return
    terminalreporter.section("notebooks in JupyterLab (headless chromium)")
    for name, s in SUMMARY.items():
        state = s["problem"] or (f"{len(s['errors'])} error(s)" if s["errors"] else "ok")
        terminalreporter.write_line(f"{name:28s} {s['seconds']:6.1f} s  {state}  "
                                    f"({s['cells_with_output']} cell screenshots in {s['screenshots']})")
