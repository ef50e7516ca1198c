"""``scripts/stack`` as a developer runs it: the development issuer and a receiver verifying its tokens;
``PULL_EVENTS_AUTH=off`` still possible, on loopback only; the full stack with Dagster stopped by Ctrl-C, leaving no
process behind and its tables intact."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pull_events.landing import LocalLandingStore
from tests.devstack.stack import warehouse_rows
from tests.receiver.deliveries import landed_records
from tests.receiver.server import ROOT
from tests.services import as_from_a_terminal, free_port

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
            preexec_fn=as_from_a_terminal,
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


def marked_processes(marker: str) -> list[str]:
    """Every live process whose environment or command line carries ``marker``: whatever the stack started
    inherits its environment, whichever process group or session it ends up in."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            carried = (proc / "environ").read_bytes() + (proc / "cmdline").read_bytes()
            state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile, or not ours to read
        if marker.encode() in carried and "zombie" not in state:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {command}")
    return found


def pull_rows(warehouse: Path) -> int | None:
    """Rows in the pull table, read-only; None while the file is missing or a load holds its lock."""
    rows = warehouse_rows(
        warehouse, "SELECT count(*) FROM cloudevents_pull_event_recorder.dev_chainguard_registry_pull_v1"
    )
    return None if rows is None else int(rows[0][0])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    # Generous: a loaded machine may be slow; how fast it is belongs to benchmarks/stack_latency.py.
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def start_full_stack(env: dict[str, str], log: Path, root: Path = ROOT) -> subprocess.Popen[bytes]:
    """Run ``scripts/stack`` from ``root`` (the project, or a copy of it) until Dagster answers."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["scripts/stack"], cwd=root, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=as_from_a_terminal,
        )  # fmt: skip
    wait_until(lambda: process.poll() is not None or "dagster: " in log.read_text(), "the stack never got ready")
    assert process.poll() is None, f"scripts/stack exited with {process.returncode}:\n{log.read_text()}"
    return process


def test_ctrl_c_stops_the_full_stack_and_leaves_nothing_and_its_tables_survive(tmp_path: Path) -> None:
    marker = f"stack-test-{uuid.uuid4()}"
    warehouse = tmp_path / "warehouse.duckdb"
    env = stack_env(
        tmp_path, DAGSTER_PORT=str(free_port()), DAGSTER_HOME=str(tmp_path / "dagster"),
        PULL_EVENTS_WAREHOUSE=str(warehouse), PULL_EVENTS_STACK_TEST_MARKER=marker,
    )  # fmt: skip
    log = tmp_path / "stack.log"
    dagster = f"http://127.0.0.1:{env['DAGSTER_PORT']}/server_info"

    started: list[subprocess.Popen[bytes]] = []
    try:
        _stop_and_restart(env, log, marker, warehouse, dagster, started)
    finally:  # a failed assertion still stops the stack
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(120)


def _stop_and_restart(
    env: dict[str, str], log: Path, marker: str, warehouse: Path, dagster: str, started: list[subprocess.Popen[bytes]]
) -> None:
    process = start_full_stack(env, log)
    started.append(process)
    assert urllib.request.urlopen(dagster, timeout=10).status == 200
    sent = send_samples(f"http://127.0.0.1:{env['PORT']}/", 1, env=env)
    assert (sent.returncode, sent.stdout.split()[0]) == (0, "202")
    wait_until(lambda: pull_rows(warehouse) == 1, f"the event never reached the pull table:\n{log.read_text()}")
    assert len(marked_processes(marker)) >= 5  # the marker does reach the servers and their children
    process.send_signal(signal.SIGINT)  # one Ctrl-C
    assert process.wait(120) == 130
    assert marked_processes(marker) == []

    # Restarted on the same files: the row is still there, and the instance took dagster.yaml as it is now.
    process = start_full_stack(env, log.with_suffix(".restart.log"))
    started.append(process)
    assert pull_rows(warehouse) == 1
    assert (Path(env["DAGSTER_HOME"]) / "dagster.yaml").read_bytes() == (ROOT / "dagster.yaml").read_bytes()
    process.send_signal(signal.SIGINT)  # Ctrl-C twice, the second while the first is still stopping
    process.send_signal(signal.SIGINT)
    assert process.wait(120) == 130
    assert marked_processes(marker) == []
    assert pull_rows(warehouse) == 1
