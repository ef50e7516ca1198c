"""The servers under test, each under gunicorn in its own process group, bound to 127.0.0.1 only.

- the receiver: ``gunicorn -c python:receiver.gunicorn_conf 'receiver:create_app()'`` (``ReceiverProcess``
  from the receiver tests, as production runs it);
- the bare endpoint: ``gunicorn -c python:benchmarks.bare_gunicorn_conf benchmarks.bare_app:app`` (the
  same server settings).

Both get ``--bind 127.0.0.1:<port>`` on the command line, which gunicorn applies over the config file's
``0.0.0.0`` bind. With ``cpus`` a server runs under ``taskset`` on those cores only. ``close()`` stops
the server with SIGTERM (the receiver then commits what is pending) and SIGKILLs whatever is left of
its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.receiver.server import ROOT, ReceiverProcess
from tests.services import free_port


class GunicornServer(ReceiverProcess):
    """``ReceiverProcess`` with a choice of app and config, bound to loopback only."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        app: str = "receiver:create_app()",
        config: str = "python:receiver.gunicorn_conf",
        cpus: Sequence[int] | None = None,
    ) -> None:
        super().__init__(env, log_path, port=free_port())
        self.app = app
        self.config = config
        self.cpus = cpus

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> GunicornServer:
        command = [
            sys.executable, "-m", "gunicorn", "-c", self.config, "--bind", f"127.0.0.1:{self.port}", self.app,
        ]  # fmt: skip
        if self.cpus:
            # taskset execs gunicorn in place (same pid and process group); every thread inherits the mask.
            command = ["taskset", "--cpu-list", ",".join(map(str, self.cpus)), *command]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait_ready:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        """SIGTERM (graceful: the receiver drains its batcher), then SIGKILL anything left in the group."""
        if self.process is None:
            return
        self.stop()
        with contextlib.suppress(ProcessLookupError):  # raised when the whole group is gone, as it should be
            os.killpg(self.process.pid, signal.SIGKILL)

    def metric(self, name: str) -> float:
        """The value of one unlabelled sample of the receiver's ``/metrics`` (e.g. a histogram's ``_count``)."""
        text = requests.get(self.url + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return sample.value
        raise KeyError(f"{name} is not in /metrics")
