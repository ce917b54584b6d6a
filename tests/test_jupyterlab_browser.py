"""JupyterLab really renders the training panel: a real ``jupyter lab`` on loopback, a notebook
opened in headless Chromium (Debian's, driven by Playwright; nothing is downloaded), its cells
run, the panel's controls checked in the DOM, Train clicked and the result table awaited.

Screenshots: runs/screenshots/jupyterlab_panel.png (after the cells ran) and
runs/screenshots/jupyterlab_panel_trained.png (after training in the browser).
Outside CI the test skips without Chromium or Playwright; under CI=true it runs
.ci/system-deps.sh for Chromium and fails when something is still missing.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, sync_playwright_or_require

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The tiny run Train starts in the browser (the same panel(**defaults) a notebook calls).
PANEL_CELL = """from kdkit.ui.widgets import panel
p = panel(dataset="synthetic", epochs=1, precision="32-true", hidden=8, layers=1, heads=1, embedding_dim=4,
          patience=100, save_compat=False, warmup_steps=1)
p"""


def _ensure_kdkit_kernel() -> None:
    """Registers this interpreter as the Jupyter kernel ``kdkit`` (what the Makefile does)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().find_kernel_specs().get("kdkit")
    if spec and json.loads((Path(spec) / "kernel.json").read_text())["argv"][0] == sys.executable:
        return
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "kdkit",
                    "--display-name", "kdkit (.venv)"], check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer {url.split('?')[0]} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 rooted at a temp dir holding panel.ipynb; yields its URL."""
    import nbformat

    _ensure_kdkit_kernel()
    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "kdkit", "display_name": "kdkit (.venv)",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(PANEL_CELL)]
    nbformat.write(nb, root / "panel.ipynb")
    token, port = secrets.token_hex(16), _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               KDKIT_SYNTHETIC_ROOT=str(tmp_path / "synthetic-seed{seed}"), KDKIT_CACHE_DIR=str(tmp_path / "cache"),
               KDKIT_EPOCHS="1")
    # No "get Jupyter news?" pop-up over the panel (and no fetch of the news feed).
    (tmp_path / "config" / "labconfig").mkdir(parents=True)
    (tmp_path / "config" / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    log = tmp_path / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             f"--LabServerApp.workspaces_dir={tmp_path / 'workspaces'}"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(proc, f"{base}/api/status?token={token}", log)
        yield {"base": base, "token": token, "log": log}
    finally:
        proc.terminate()  # jupyter lab shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)


def test_jupyterlab_renders_and_runs_the_panel(jupyterlab):
    sync_playwright = sync_playwright_or_require()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            page.set_default_timeout(60_000)
            page.goto(f"{jupyterlab['base']}/lab/tree/panel.ipynb?token={jupyterlab['token']}&reset")
            page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext")
            page.evaluate("""async () => {
                const app = window.jupyterapp;
                app.shell.collapseLeft();
                const ctx = app.shell.currentWidget.sessionContext;
                await ctx.ready;
                if (ctx.session.kernel.name !== 'kdkit') throw new Error('kernel ' + ctx.session.kernel.name);
                await app.commands.execute('notebook:run-all-cells');
            }""")
            output = page.locator(".jp-OutputArea-output")
            # (a button's accessible name includes its icon glyph, so match the text instead)
            train = output.locator("button.jupyter-button", has_text=re.compile(r"^\s*Train\s*$"))
            train.wait_for(state="visible", timeout=90_000)
            for label in ("Optimize", "Submit to SLURM"):
                assert output.locator("button.jupyter-button", has_text=label).is_visible()
            # the dataset box: a combobox offering the keys (and declared names), a path may be typed
            dataset = output.locator(".widget-text input[list]").first
            assert dataset.input_value() == "synthetic"
            offered = page.locator(f"datalist[id='{dataset.get_attribute('list')}'] option")
            assert "hcrl_sa" in [o.get_attribute("value") for o in offered.all()]
            assert output.locator(".widget-inline-hbox .widget-label", has_text="Dataset").count() >= 1
            assert output.locator(".widget-text input[type=number]").first.input_value() == "1"  # epochs
            assert output.locator("img").first.get_attribute("src").startswith("blob:")  # the loss plot
            page.screenshot(path=str(SCREENSHOTS / "jupyterlab_panel.png"))

            train.click()  # the kernel trains in a thread and streams epochs to the browser
            table = output.get_by_text("F1 per scenario")
            table.wait_for(state="visible", timeout=180_000)
            assert output.locator(".widget-html-content table tr").count() >= 3  # header, scenarios, overall
            assert output.locator(".progress-bar-success").count() == 1
            assert output.get_by_text("Epoch 1/1").count() == 0  # replaced by "done"
            table.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / "jupyterlab_panel_trained.png"))
        except Exception:  # keep what the browser showed, and the server log, for the failure report
            page.screenshot(path=str(SCREENSHOTS / "jupyterlab_panel_failure.png"))
            print(jupyterlab["log"].read_text()[-4000:])
            raise
        finally:
            browser.close()
