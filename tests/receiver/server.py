"""The receiver served over real HTTP for tests and benchmarks.

- ``ThreadedReceiver``: the app behind the production front in a thread of the test process (fast; lets a
  test hand the app its own store).
- ``ReceiverProcess``: the receiver under gunicorn, as production runs it, in its own process group
  (for SIGTERM, SIGKILL and start-up tests).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import requests
from flask import Flask

from pull_events.landing import LandingStore
from pull_events.settings import Settings, load_settings
from receiver import create_app, shutdown
from receiver.front import Front, FrontLimits
from tests.receiver.oidc import DEFAULT_GROUP, LocalIssuer
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
# More than any test keeps in flight at once (up to 500 deliveries waiting for their commit together).
APP_THREADS = 512


def receiver_env(
    landing: str | Path, issuer: LocalIssuer | None, group: str = DEFAULT_GROUP, **extra: str
) -> dict[str, str]:
    """The receiver's environment variables: landing zone, issuer and group (auth off without an issuer)."""
    env = {"PULL_EVENTS_LANDING": str(landing), "PULL_EVENTS_HOST": "127.0.0.1"}
    if issuer is not None:
        env.update(CHAINGUARD_ISSUER=issuer.url, CHAINGUARD_GROUP=group, PULL_EVENTS_AUTH="chainguard")
    else:
        env["PULL_EVENTS_AUTH"] = "off"
    env.update(extra)
    return env


def receiver_settings(
    landing: str | Path, issuer: LocalIssuer | None, group: str = DEFAULT_GROUP, **extra: str
) -> Settings:
    """Settings read exactly as the receiver reads them, from ``receiver_env(...)``."""
    return load_settings(receiver_env(landing, issuer, group, **extra))


class ThreadedReceiver:
    """``create_app(settings, store)`` behind the production front (``receiver.front.Front``, real HTTP on
    loopback), its event loop in a thread of the test process."""

    def __init__(self, settings: Settings, store: LandingStore | None = None) -> None:
        self.app: Flask = create_app(settings, store)
        options = settings.receiver
        self.front = Front(
            self.app,
            FrontLimits(
                header_timeout=options.header_timeout_seconds,
                body_timeout=options.body_timeout_seconds,
                threads=APP_THREADS,
            ),
        )
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=2048)
        self._stopping = False
        self._thread = threading.Thread(
            target=self.front.serve, args=(self._socket, lambda: self._stopping), name="receiver-http", daemon=True
        )
        self.session = requests.Session()

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(30)
        self._socket.close()
        shutdown(self.app, timeout=10)
        self.session.close()

    def __enter__(self) -> ThreadedReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def post(self, headers: Mapping[str, str], body: bytes | object, timeout: float = 30) -> requests.Response:
        return self.session.post(self.url + "/", headers=dict(headers), data=body, timeout=timeout)


class ReceiverProcess:
    """The receiver under gunicorn (``python:receiver.gunicorn_conf``) as a subprocess; logs go to ``log_path``.
    ``python`` is the interpreter of the environment it runs in (default: the tests' own)."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, port: int | None = None, python: str | Path = sys.executable
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.python = python
        self.env = {**os.environ, **env, "PORT": str(self.port)}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> ReceiverProcess:
        command = [self.python, "-m", "gunicorn", "-c", "python:receiver.gunicorn_conf", "receiver:create_app()"]
        with self.log_path.open("ab") as log:
            # Own process group: a SIGKILL test can kill master and worker at once, like a crash.
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/readyz`` answers 200; fail if the process exits first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                # Not listening yet, or too slow to answer on a busy machine (readiness writes a probe to the
                # landing zone): ask again until the deadline.
                pass
            time.sleep(0.05)
        raise TimeoutError(f"receiver not ready after {timeout}s:\n{self.logs()}")

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit and return its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown) and return the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (master and workers): a crash, nothing gets to clean up."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.terminate(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
