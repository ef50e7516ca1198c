"""The local stack's commands of README.md, run as written on a fresh copy of the project (its own ``.data``):
``scripts/stack``, the sample and generated events, every documented ``scripts/query`` while the stack loads them,
the rebuild launched into the stack's instance (its daemon runs it), and a week of generated history. One stack for
all of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.devstack.documented import documented
from tests.devstack.stack import warehouse_rows
from tests.devstack.test_documented_commands import documented_queries
from tests.devstack.test_stack_script import marked_processes, start_full_stack, wait_until
from tests.receiver.server import ROOT
from tests.services import free_port

STACK = "scripts/stack"
SAMPLE = "scripts/send-sample-event"
SAMPLES = "scripts/send-sample-event 20"
SEEDED = "scripts/generate-events --events 500 --seed 42 --until 2026-03-10T00:00:00Z"
WEEK = "scripts/generate-events --events 10000 --days 7"
REBUILD = 'DAGSTER_HOME="$PWD/.data/dagster" uv run dagster job launch -j rebuild_from_landing -w workspace.yaml'
SCHEMA = "cloudevents_pull_event_recorder"
PULLS = f"{SCHEMA}.dev_chainguard_registry_pull_v1"
# What a fresh clone does not have: state, caches, the repository itself.
NOT_IN_A_CLONE = {".data", ".git", ".cache", ".artifacts", ".pytest_cache", ".ruff_cache", ".venv"}
# Variables of the developer's own shell that would change what the stack does.
STACK_VARIABLES = ("CHAINGUARD_ISSUER", "CHAINGUARD_GROUP", "PULL_EVENTS_AUTH", "PULL_EVENTS_HOST", "DAGSTER_HOME")


def fresh_copy(tmp_path: Path) -> Path:
    """The project as a fresh clone has it (its files linked, not copied; no ``.data``), sharing this checkout's
    environment (``.venv``), so ``$PWD/.data`` and the scripts' defaults are the copy's own."""
    copy = tmp_path / "pull-events"
    copy.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in NOT_IN_A_CLONE:
            (copy / entry.name).symlink_to(entry)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def copy_env(copy: Path, marker: str) -> dict[str, str]:
    """Free ports, and the copy's ``.data`` named outright: the Python side finds "the project" through the links,
    in this checkout, while the scripts find the copy."""
    env = {name: value for name, value in os.environ.items() if name not in STACK_VARIABLES}
    data = copy / ".data"
    env.update(
        PORT=str(free_port()), PULL_EVENTS_DEV_ISSUER_PORT=str(free_port()), DAGSTER_PORT=str(free_port()),
        PULL_EVENTS_DEV_ISSUER_DIR=str(data / "dev-issuer"), PULL_EVENTS_LANDING=str(data / "landing"),
        PULL_EVENTS_WAREHOUSE=str(data / "warehouse.duckdb"), PULL_EVENTS_STACK_TEST_MARKER=marker,
    )  # fmt: skip
    return env


def run(key: str, copy: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The documented command ``key``, as written, from the copy's directory."""
    command = documented(key).text
    done = subprocess.run(["bash", "-c", command], cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done


def generated(key: str, copy: Path, env: dict[str, str]) -> dict[str, Any]:
    report = json.loads(run(key, copy, env).stdout)
    sent = int(key.split("--events ")[1].split()[0])
    assert (report["sent"], report["accepted"], report["refused"], report["failed"]) == (sent, sent, 0, 0)
    return report


def read(warehouse: Path, sql: str) -> list[tuple[Any, ...]]:
    """``sql``'s rows, once no load holds the file (a load run may start at any time while the stack runs)."""
    rows: list[list[tuple[Any, ...]] | None] = [None]

    def readable() -> bool:
        rows[0] = warehouse_rows(warehouse, sql)
        return rows[0] is not None

    wait_until(readable, f"the warehouse stayed locked for {sql}", 300)
    assert rows[0] is not None
    return rows[0]


def loaded_events(warehouse: Path) -> int | None:
    rows = warehouse_rows(warehouse, f"SELECT (SELECT count(*) FROM {PULLS}) + (SELECT count(*) FROM {SCHEMA}.events)")
    return None if rows is None else int(rows[0][0])


def rebuild_statuses(dagster_port: str) -> list[str]:
    query = '{ runsOrError(filter: {pipelineName: "rebuild_from_landing"}) { ... on Runs { results { status } } } }'
    request = urllib.request.Request(
        f"http://127.0.0.1:{dagster_port}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        return [run["status"] for run in json.load(answer)["data"]["runsOrError"]["results"]]


@pytest.mark.timeout(1500)
def test_the_documented_stack_commands_work_on_a_fresh_copy(tmp_path: Path) -> None:
    copy = fresh_copy(tmp_path)
    marker = f"documented-stack-{uuid.uuid4()}"
    env = copy_env(copy, marker)
    log = tmp_path / "stack.log"
    assert documented(STACK).text == "scripts/stack"  # start_full_stack runs exactly that, from the copy
    process = start_full_stack(env, log, root=copy)
    try:
        _documented_commands_against(copy, env, log)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(120)
    assert process.returncode == 130
    assert marked_processes(marker) == []


def _documented_commands_against(copy: Path, env: dict[str, str], log: Path) -> None:
    one = run(SAMPLE, copy, env).stdout.splitlines()
    twenty = run(SAMPLES, copy, env).stdout.splitlines()
    assert [line.split()[0] for line in one + twenty] == ["202"] * 21
    seeded = generated(SEEDED, copy, env)

    # Every documented query, while the stack loads those 500 events: as soon as the first load made the file.
    warehouse = Path(env["PULL_EVENTS_WAREHOUSE"])
    wait_until(lambda: loaded_events(warehouse) is not None, f"nothing loaded:\n{log.read_text()[-3000:]}", 600)
    for name, argv in documented_queries():
        command = [copy / argv[0], *argv[1:]]
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=300)
        assert (done.returncode, done.stderr) == (0, ""), f"{name}: {argv}"

    expected = 21 + seeded["distinct_accepted"]
    wait_until(lambda: loaded_events(warehouse) == expected, f"not all events loaded:\n{log.read_text()[-3000:]}", 900)

    launched = datetime.now(UTC)
    run(REBUILD, copy, env)
    finished = {"SUCCESS", "FAILURE", "CANCELED"}
    wait_until(lambda: set(rebuild_statuses(env["DAGSTER_PORT"])) <= finished, "the rebuild never finished", 900)
    # The launch returned once the run was in the instance: it is the one run of the job, finished.
    assert rebuild_statuses(env["DAGSTER_PORT"]) == ["SUCCESS"], log.read_text()[-3000:]

    # Every row was loaded again by the rebuild, none lost or doubled, and the days recomputed from them.
    counted = f"SELECT (SELECT count(*) FROM {PULLS}) + (SELECT count(*) FROM {SCHEMA}.events)"
    assert read(warehouse, counted) == [(expected,)]
    [(first_loaded,)] = read(warehouse, f"SELECT min(loaded_at) FROM {PULLS}")
    assert first_loaded >= launched
    recomputed = f"SELECT day, body.repository, count(*) FROM {PULLS} GROUP BY ALL"
    daily = f"SELECT day, repository, events FROM {SCHEMA}.daily_pulls"
    assert sorted(read(warehouse, daily)) == sorted(read(warehouse, recomputed))

    # A week of history: the receiver takes all of it. Its loads (some 2,500 objects, many minutes on 2 busy cores)
    # are not waited for: Ctrl-C interrupts them, and what loading does is pinned by the pipeline's tests.
    generated(WEEK, copy, env)
