"""Fixtures for the browser tests: a JupyterLab server from the kit's .venv and a headless Chromium.

The server serves the repository, runs its kernels in the smoke profile, writes figures and
checkpoints to a temporary folder (so the committed figures stay as they are), has autosave off (so
the committed notebooks are never overwritten with smoke outputs) and is stopped at the end of the
session, kernels included, whatever happened. Chromium is Debian's (`/usr/bin/chromium`), driven by
Playwright's Python package.

Screenshots, the server's log and the browser console go to test-artifacts/browser/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent  # run under .venv/bin/pytest: the kit's own jupyter
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("PICOLLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# JupyterLab user settings: no news popup over the widgets, no update check, and no autosave,
# so running the lessons in the smoke profile never rewrites the committed notebooks.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}
SERVER_START_TIMEOUT_S = 120
RUN_ALL_TIMEOUT_S = float(os.environ.get("PICOLLM_BROWSER_RUN_TIMEOUT", 600))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class LabServer:
    """A `jupyter lab` process in its own session, with everything it writes in `home`."""

    def __init__(self, home: Path):
        self.home = home
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.runtime_dir = home / "runtime"
        self.log_path = ARTIFACTS / "jupyter-server.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        dirs = {name: self.home / sub for name, sub in [
            ("JUPYTER_CONFIG_DIR", "config"), ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
            ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"), ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("IPYTHONDIR", "ipython"), ("PICOLLM_FIGURES", "figures"), ("PICOLLM_RESULTS", "results"),
            ("MPLCONFIGDIR", "matplotlib")]}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        for name, value in LAB_SETTINGS.items():
            target = dirs["JUPYTERLAB_SETTINGS_DIR"] / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(value))
        env = dict(os.environ, **{k: str(v) for k, v in dirs.items()})
        env["PICOLLM_PROFILE"] = "smoke"  # kernels inherit the server's environment
        env.setdefault("PICOLLM_CACHE", str(REPO / ".cache"))
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def start(self) -> None:
        cmd = [str(VENV_BIN / "jupyter"), "lab", "--no-browser", f"--port={self.port}",
               "--ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={REPO}", f"--FileCheckpoints.checkpoint_dir={self.home / 'checkpoints'}",
               "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                _get(f"{self.url}/api/status?token={self.token}", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer within {SERVER_START_TIMEOUT_S} s; see {self.log_path}")

    def shutdown_kernels(self) -> None:
        """Shut down every kernel this server runs (each test's notebook gets a fresh one)."""
        try:
            kernels = json.loads(_get(f"{self.url}/api/kernels?token={self.token}"))
            for k in kernels:
                req = urllib.request.Request(f"{self.url}/api/kernels/{k['id']}?token={self.token}",
                                             method="DELETE")
                urllib.request.urlopen(req, timeout=10).close()
        except Exception:
            pass  # stop() kills whatever is left

    def _kernel_pids(self) -> list[int]:
        """Kernels are started in sessions of their own: find them by their connection file,
        which lies in this server's private runtime folder."""
        marker = str(self.runtime_dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids

    def stop(self) -> None:
        if self.proc is None:
            return
        kernels = self._kernel_pids()
        if self.proc.poll() is None:
            try:  # a clean shutdown also shuts down the kernels
                req = urllib.request.Request(f"{self.url}/api/shutdown?token={self.token}", method="POST")
                urllib.request.urlopen(req, timeout=5).close()
                self.proc.wait(timeout=15)
            except Exception:
                pass
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        for pid in kernels + self._kernel_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session")
def lab_server():
    if not (VENV_BIN / "jupyter").exists():
        pytest.fail(f"no jupyter in {VENV_BIN}: run the browser tests with the kit's .venv/bin/pytest")
    for old in ARTIFACTS.glob("*"):
        if old.is_file():
            old.unlink()
    with tempfile.TemporaryDirectory(prefix="picollm-lab-") as home:
        server = LabServer(Path(home))
        try:
            server.start()
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright's Python package is missing: run `make setup` (it is in the dev extra)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test-browser does it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Lab:
    """A JupyterLab tab, driven the way a student does it: open, Run All, look, click."""

    def __init__(self, page, server: LabServer, name: str):
        self.page, self.server, self.name = page, server, name
        self.console: list[str] = []
        self.shots = 0
        page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))

    @staticmethod
    def wait_until(fn, timeout_s: float, what: str, interval_s: float = 0.2):
        return wait_until(fn, timeout_s, what, interval_s)

    # -- looking --------------------------------------------------------------------------
    def screenshot(self, label: str, locator=None) -> Path:
        self.shots += 1
        path = ARTIFACTS / f"{self.name}-{self.shots:02d}-{label}.png"
        if locator is not None:
            locator.scroll_into_view_if_needed()
            locator.screenshot(path=str(path))
        else:
            self.page.screenshot(path=str(path))
        return path

    def notebook_text(self) -> str:
        return self.page.locator(".jp-NotebookPanel:visible .jp-Notebook").inner_text()

    def widget_console_errors(self) -> list[str]:
        """Errors the widget manager logged. A widget whose model class fails to load (a
        front-end/kernel version mismatch, a missing extension) is drawn as its text repr, e.g.
        "VBox(children=...)", with no message on the page: only the console says why."""
        return [m for m in self.console if m.startswith(("[error]", "[pageerror]"))
                and ("widget" in m.lower() or "No version of module" in m)]

    def assert_no_widget_errors(self) -> None:
        text = self.notebook_text()
        for bad in ("Error displaying widget", "Failed to load model class", "A Jupyter widget could not be displayed"):
            assert bad not in text, f"the notebook shows {bad!r}:\n" + _around(text, bad)
        errors = self.widget_console_errors()
        assert not errors, "the widget manager logged errors:\n" + "\n".join(e[:600] for e in errors)

    def find_widget(self, locator, what: str, timeout_s: float = 30):
        """Wait for a rendered widget; if it never shows, say what the page shows instead."""
        try:
            locator.wait_for(state="visible", timeout=timeout_s * 1000)
        except Exception:
            self.screenshot("widget-missing")
            errors = self.widget_console_errors()
            raise AssertionError(
                f"{what} was not drawn as a widget within {timeout_s:.0f} s."
                + ("\nThe widget manager logged:\n" + "\n".join(e[:600] for e in errors) if errors else "")
                + "\nThe notebook shows:\n" + self.notebook_text()[-3000:]) from None
        # JupyterLab draws only the cells near the view: a widget mid-lesson is read once it is in it
        locator.scroll_into_view_if_needed()
        return locator

    def open_and_run(self, path: str) -> None:
        """Open a lesson, check its committed widget outputs, Run All, and check no cell raised."""
        self.open(path)
        self.assert_no_widget_errors()  # the committed outputs, before anything runs
        self.screenshot("opened")
        self.run_all()
        self.assert_no_tracebacks()

    def assert_no_tracebacks(self) -> None:
        text = self.notebook_text()
        assert "Traceback (most recent call last)" not in text, (
            "a cell raised:\n" + _around(text, "Traceback (most recent call last)", 2500))

    # -- doing ----------------------------------------------------------------------------
    def open(self, path: str) -> None:
        self.page.goto(f"{self.server.url}/lab/tree/{path}?token={self.server.token}")
        self.wait_kernel_idle(timeout_s=180)

    def wait_kernel_idle(self, timeout_s: float) -> None:
        # The status bar, not the toolbar: the toolbar reads idle before a kernel is attached.
        self.page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(
            state="visible", timeout=timeout_s * 1000)

    def _busy_prompts(self) -> int:
        return self.page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputPrompt",
                                 has_text="[*]").count()

    def run_all(self, timeout_s: float = RUN_ALL_TIMEOUT_S) -> None:
        """Run > Run All Cells, then wait until every cell ran and the kernel is idle again."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        wait_until(lambda: self._busy_prompts() > 0, 30, "Run All to start (a cell showing [*])")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._busy_prompts() == 0:
                break
            time.sleep(0.5)
        else:
            self.screenshot("run-all-timeout")
            raise AssertionError(f"Run All did not finish within {timeout_s:.0f} s")
        self.wait_kernel_idle(timeout_s=120)


def _around(text: str, needle: str, width: int = 800) -> str:
    i = text.find(needle)
    return text[max(0, i - 200): i + width]


def wait_until(fn, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll `fn` until it returns something truthy; fail naming `what` (and the last value seen)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            last = fn()
        except AssertionError as exc:  # a check that is not met yet
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last seen: {last!r}")
        time.sleep(interval_s)


@pytest.fixture
def lab(request, lab_server, browser):
    """A fresh browser context on the server; its console log is saved whatever the outcome."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    name = re.sub(r"\W+", "_", request.node.name).strip("_")
    page = context.new_page()
    page.set_default_timeout(30_000)
    lab = Lab(page, lab_server, name)
    try:
        yield lab
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            try:
                lab.screenshot("failure")
            except Exception:
                pass
        (ARTIFACTS / f"{name}-console.log").write_text("\n".join(lab.console) + "\n")
        context.close()
        lab_server.shutdown_kernels()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
