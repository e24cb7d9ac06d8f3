"""A minimal W3C WebDriver client for Debian's chromium + chromium-driver (standard library only).

Why not selenium/playwright: the browser tests need a dozen WebDriver calls (open a page, run
JavaScript, take screenshots, resize the window); this keeps them free of extra Python or npm
packages, so nothing besides ``apt-get install chromium chromium-driver`` is needed.

Usage::

    with Chromium() as browser:                  # starts chromedriver + a headless chromium
        browser.get("http://127.0.0.1:8188/")
        title = browser.execute("return document.title")
        png = browser.screenshot()

Everything is loopback only: chromedriver listens on 127.0.0.1, chromium runs with the flags in
``CHROMIUM_FLAGS`` (no background networking, no component updates, no sync, no QUIC) and a fresh
``--user-data-dir`` that is deleted at the end. Only the processes started here are stopped, by
their pid (also at interpreter exit, if a caller forgot).
"""
from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("DOODL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DOODL_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                  "--disable-features=Translate,MediaRouter,OptimizationHints"]


class WebDriverError(RuntimeError):
    """A WebDriver command failed (the message has chromedriver's error and the command)."""


def available() -> str | None:
    """None if chromium and chromedriver are installed, else the reason they cannot be used."""
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not (Path(exe).is_file() and os.access(exe, os.X_OK)):
            return (f"{exe} not found: install Debian's chromium and chromium-driver "
                    f"(apt-get install chromium chromium-driver) to run the browser tests")
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """One chromedriver process and one headless chromium session."""

    def __init__(self, width: int = 1600, height: int = 1000, extra_flags=(), log_path: Path | None = None):
        self.width, self.height = width, height
        self.extra_flags = list(extra_flags)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="doodl_chromium_"))  # profile + log, removed by quit()
        self.profile = self.tmp / "profile"
        self.log_path = log_path or (self.tmp / "chromedriver.log")
        self.driver: subprocess.Popen | None = None
        self.session: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Chromium":
        log = open(self.log_path, "ab")
        try:
            self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}", "--allowed-ips=127.0.0.1"],
                                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._call("GET", "/status", timeout=2.0).get("ready"):
                    break
            except (urllib.error.URLError, ConnectionError, OSError, WebDriverError):
                pass
            if self.driver.poll() is not None or time.monotonic() > deadline:
                tail = self._log_tail()
                self.quit()
                raise WebDriverError(f"chromedriver did not start:\n{tail}")
            time.sleep(0.05)
        args = CHROMIUM_FLAGS + [f"--user-data-dir={self.profile}",
                                 f"--window-size={self.width},{self.height}"] + self.extra_flags
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}}
        try:
            self.session = self._call("POST", "/session", caps, timeout=timeout)["sessionId"]
        except Exception as exc:
            tail = self._log_tail()
            self.quit()
            raise WebDriverError(f"chromium did not start: {exc}\n{tail}") from None
        atexit.register(self.quit)
        self._cmd("POST", "/timeouts", {"script": 60_000, "pageLoad": 60_000, "implicit": 0})
        return self

    def quit(self) -> None:
        """End the session and stop chromedriver (it closes the chromium it started)."""
        if self.session is not None:
            try:
                self._call("DELETE", f"/session/{self.session}", timeout=10.0)
            except Exception:
                pass
            self.session = None
        proc, self.driver = self.driver, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.quit()

    # -- protocol --------------------------------------------------------------------------------
    def _call(self, method: str, path: str, payload=None, timeout: float = 90.0):
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                value = json.loads(body).get("value", {})
            except ValueError:
                value = {"message": body.decode("utf-8", "replace")}
            msg = value.get("message", "") if isinstance(value, dict) else str(value)
            kind = value.get("error", e.code) if isinstance(value, dict) else e.code
            raise WebDriverError(f"{method} {path}: {kind}: {msg[:3000]}") from None
        return json.loads(body).get("value") if body else None

    def _cmd(self, method: str, path: str, payload=None, timeout: float = 90.0):
        if self.session is None:
            raise WebDriverError("no session (call start() first)")
        return self._call(method, f"/session/{self.session}{path}", payload, timeout=timeout)

    # -- commands --------------------------------------------------------------------------------
    def get(self, url: str) -> None:
        self._cmd("POST", "/url", {"url": url})

    def execute(self, script: str, *args, timeout: float = 90.0):
        """Run ``script`` as a function body (``return`` gives the result; ``arguments`` the args)."""
        return self._cmd("POST", "/execute/sync", {"script": script, "args": list(args)}, timeout=timeout)

    def execute_async(self, script: str, *args, timeout: float = 90.0):
        """Run ``script``; it must call ``arguments[arguments.length - 1](result)`` to finish.

        Rejections and exceptions come back as ``WebDriverError``."""
        return self._cmd("POST", "/execute/async", {"script": script, "args": list(args)}, timeout=timeout)

    def run_async(self, body: str, *args, timeout: float = 90.0):
        """Run an ``async`` function body (may ``await``); its return value, or its error re-raised."""
        wrapped = ("const done = arguments[arguments.length - 1];"
                   "const args = Array.prototype.slice.call(arguments, 0, -1);"
                   f"(async (...arguments) => {{ {body} }})(...args)"
                   ".then(v => done({ok: true, value: v === undefined ? null : v}),"
                   " e => done({ok: false, error: String(e && e.stack || e)}));")
        out = self.execute_async(wrapped, *args, timeout=timeout)
        if not out.get("ok"):
            raise WebDriverError("script failed: " + out.get("error", "?"))
        return out["value"]

    def wait_for(self, script: str, *args, timeout: float = 30.0, poll: float = 0.1, what: str = ""):
        """Poll a JavaScript expression body (``return ...``) until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.execute(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or script[:200]}")
            time.sleep(poll)

    def screenshot(self) -> bytes:
        """PNG of the viewport."""
        return base64.b64decode(self._cmd("GET", "/screenshot"))

    def cdp(self, cmd: str, params: dict | None = None):
        """A Chrome DevTools Protocol command through chromedriver (``goog/cdp/execute``)."""
        return self._cmd("POST", "/goog/cdp/execute", {"cmd": cmd, "params": params or {}})

    def add_init_script(self, source: str) -> None:
        """Run ``source`` in every new document before the page's own scripts."""
        self.cdp("Page.addScriptToEvaluateOnNewDocument", {"source": source})

    def set_window_size(self, width: int, height: int) -> None:
        self._cmd("POST", "/window/rect", {"width": width, "height": height})
