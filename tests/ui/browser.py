"""Headless Chromium driven over the Chrome DevTools Protocol: a page to load, poll and photograph.

Debian's ``chromium`` (``scripts/setup-browser`` installs it) is started with ``--remote-debugging-port=0``; the
port it picked is in ``DevToolsActivePort`` in its profile directory. The protocol is JSON over one websocket
(``websockets``, which Dagster's webserver already brings), so no browser-automation package is needed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.services import stop_process

# How long a page may take to show what a test waits for: the UI's first load compiles nothing, but on two busy
# cores its GraphQL queries and the code location's answers take seconds.
PAGE_TIMEOUT_S = 120.0
POLL_S = 0.5


def chromium_path() -> str | None:
    """Debian's chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    """The browser did not start, or a DevTools call failed."""


class Page:
    """One tab, spoken to over its DevTools websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result; the events the browser sends meanwhile are not needed here."""
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._socket.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message.get("id") != call_id:
                continue
            if "error" in message:
                raise BrowserError(f"{method}: {message['error']}")
            return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """What the page shows as text (its rendered DOM's innerText)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, expected: Sequence[str], timeout: float = PAGE_TIMEOUT_S) -> str:
        """Poll until the page's text contains every one of ``expected``; the text then, or AssertionError naming
        what never showed up and what the page showed instead."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(item in text for item in expected):
                return text
            time.sleep(POLL_S)
        missing = [item for item in expected if item not in text]
        raise AssertionError(f"after {timeout:.0f} s the page still lacks {missing}; it shows:\n{text[:4000]}")

    def click_text(self, label: str) -> bool:
        """Click the first button or link whose text is ``label``; whether there was one."""
        return bool(
            self.evaluate(
                "(() => { const el = [...document.querySelectorAll('button, a')]"
                f".find(e => e.innerText.trim() === {json.dumps(label)});"
                " if (el) { el.click(); return true; } return false; })()"
            )
        )

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def chromium(profile: Path, width: int = 1600, height: int = 1100) -> Iterator[Page]:
    """Headless Chromium with a fresh profile, and its first tab; stopped (by its own pid) afterwards."""
    executable = chromium_path()
    if executable is None:
        raise BrowserError("chromium is not installed (scripts/setup-browser installs it)")
    profile.mkdir(parents=True, exist_ok=True)
    arguments = [
        executable,
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB: too little for a page of this size
        "--no-first-run",
        "--no-default-browser-check",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "about:blank",
    ]
    if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox
        arguments.insert(1, "--no-sandbox")
    log = (profile / "chromium.log").open("wb")
    process = subprocess.Popen(arguments, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = _devtools_port(profile, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            targets = json.load(response)
        [target] = [t for t in targets if t.get("type") == "page"][:1]
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as socket:
            page = Page(socket)
            page.call("Page.enable")
            page.call(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
            yield page
    finally:
        stop_process(process)
        log.close()


def _devtools_port(profile: Path, process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """The port Chromium chose, from the file it writes once DevTools listens."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError(f"chromium exited with {process.returncode}: see {profile / 'chromium.log'}")
        if marker.exists():
            first = marker.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        time.sleep(0.2)
    raise BrowserError(f"chromium opened no DevTools port within {timeout:.0f} s: see {profile / 'chromium.log'}")
