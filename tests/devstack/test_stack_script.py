"""``scripts/stack --receiver-only`` as a developer runs it: the development issuer and a receiver verifying its
tokens; ``PULL_EVENTS_AUTH=off`` still possible, on loopback only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pull_events.landing import LocalLandingStore
from tests.receiver.deliveries import landed_records
from tests.receiver.server import ROOT
from tests.services import free_port

# Variables of the developer's own shell that would change what the stack does.
_STACK_VARIABLES = ("CHAINGUARD_ISSUER", "CHAINGUARD_GROUP", "PULL_EVENTS_AUTH", "PULL_EVENTS_HOST", "DAGSTER_HOME")


def stack_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _STACK_VARIABLES}
    env.update(
        PORT=str(free_port()),
        PULL_EVENTS_DEV_ISSUER_PORT=str(free_port()),
        PULL_EVENTS_DEV_ISSUER_DIR=str(tmp_path / "dev-issuer"),
        PULL_EVENTS_LANDING=str(tmp_path / "landing"),
    )
    env.update(extra)
    return env


@contextmanager
def running_stack(env: dict[str, str], log: Path) -> Iterator[str]:
    """Run ``scripts/stack --receiver-only`` until its receiver is ready; yield the receiver URL; Ctrl-C it."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [ROOT / "scripts/stack", "--receiver-only"], env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches the script alone, as below
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "receiver: " not in log.read_text():
            assert process.poll() is None, f"scripts/stack exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"scripts/stack not ready:\n{log.read_text()}"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{env['PORT']}/"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) is not None
    for port in (env["PORT"], env["PULL_EVENTS_DEV_ISSUER_PORT"]):  # Ctrl-C stopped every server it started
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", int(port))) != 0


def send_samples(url: str, count: int, *options: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [ROOT / "scripts/send-sample-event", str(count), url, *options]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_the_stack_verifies_tokens_of_its_own_issuer_by_default(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    with running_stack(env, tmp_path / "stack.log") as url:
        signed = send_samples(url, 2, env=env)
        unsigned = send_samples(url, 1, "--unsigned", env=env)
        second = subprocess.run(
            [ROOT / "scripts/stack", "--receiver-only"], env=env, capture_output=True, text=True, timeout=120
        )
    assert (second.returncode, second.stderr) == (
        1, f"port {env['PORT']} is in use (another scripts/stack?): stop what listens there or set PORT\n"
    )  # fmt: skip
    log = (tmp_path / "stack.log").read_text()
    assert f"auth: tokens of the development issuer http://127.0.0.1:{env['PULL_EVENTS_DEV_ISSUER_PORT']}" in log
    assert (signed.returncode, [line.split()[0] for line in signed.stdout.splitlines()]) == (0, ["202", "202"])
    assert (unsigned.returncode, unsigned.stdout.split()[0]) == (1, "401")
    assert len(landed_records(LocalLandingStore(tmp_path / "landing"))) == 2
    assert (tmp_path / "dev-issuer" / "signing-key.pem").exists()


def test_auth_off_runs_on_loopback_only(tmp_path: Path) -> None:
    env = stack_env(tmp_path, PULL_EVENTS_AUTH="off")
    with running_stack(env, tmp_path / "stack.log") as url:
        unsigned = send_samples(url, 1, "--unsigned", env=env)
    assert (unsigned.returncode, unsigned.stdout.split()[0]) == (0, "202")
    assert not (tmp_path / "dev-issuer").exists()  # no issuer was started

    public = subprocess.run(
        [ROOT / "scripts/stack", "--receiver-only"], env={**env, "PULL_EVENTS_HOST": "0.0.0.0"},
        capture_output=True, text=True, timeout=120, start_new_session=True,
    )  # fmt: skip
    assert public.returncode != 0
    assert "PULL_EVENTS_AUTH=off lets anyone land events" in public.stderr + public.stdout
