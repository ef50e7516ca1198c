"""With the real Dagster daemon running on dagster.yaml and workspace.yaml, landed events reach both
derived tables with no manual step: sensors start by themselves, load runs queue through the warehouse
pool, and the automation sensor refreshes the derived tables after the load."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster_duckdb import DuckDBResource

from pull_events.landing import LocalLandingStore
from pull_events_dagster.defs.assets import DAILY_PULLS_KEY, PULLS_KEY, SUMMARY_KEY
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from tests.pipeline.conftest import rows
from tests.pipeline.factories import LandingSpec, synthetic_landing
from tests.pipeline.test_duckdb_warehouse import DAILY, PULLS, SUMMARY, expected_daily

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 150
DERIVED = (DAILY_PULLS_KEY, SUMMARY_KEY)


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # dagster.yaml keeps the instance's files there
    return home


@pytest.fixture
def daemon(dagster_home: Path, landing_dir: Path, duckdb_path: Path) -> Iterator[subprocess.Popen]:
    log = dagster_home / "daemon.log"  # a file, not a pipe: an unread pipe fills up and stalls the daemon
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "PULL_EVENTS_AUTH": "off",
        "PULL_EVENTS_LANDING": str(landing_dir),
        "PULL_EVENTS_WAREHOUSE": str(duckdb_path),
        "PULL_EVENTS_MAX_OBJECTS_PER_RUN": "4",
    }
    process = subprocess.Popen(
        [Path(sys.executable).parent / "dagster-daemon", "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its code server and run workers go with it
    )
    yield process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def progress(instance: dg.DagsterInstance) -> str:
    runs = [(r.dagster_run.job_name, r.dagster_run.status.value, r.start_time) for r in instance.get_run_records()]
    latest = {k.to_user_string(): instance.get_latest_materialization_event(k) for k in (PULLS_KEY, *DERIVED)}
    ticks = [
        (
            state.instigator_name,
            [
                (t.status.value, t.error and t.error.message[:400])
                for t in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=3)
            ],
        )
        for state in instance.all_instigator_state()
    ]
    return f"runs {runs}; materialized {[(k, e and e.timestamp) for k, e in latest.items()]}; ticks {ticks}"


def settled(instance: dg.DagsterInstance, expected_load_runs: int) -> bool:
    """Every load run succeeded, and both derived tables were refreshed after the last load."""
    loads = [r for r in instance.get_run_records() if r.dagster_run.job_name == "load_landing"]
    assert not [r for r in loads if r.dagster_run.status == dg.DagsterRunStatus.FAILURE]
    if sum(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in loads) < expected_load_runs:
        return False
    assert len(loads) == expected_load_runs
    loaded = instance.get_latest_materialization_event(PULLS_KEY)
    derived = [instance.get_latest_materialization_event(k) for k in (DAILY_PULLS_KEY, SUMMARY_KEY)]
    return loaded is not None and all(d is not None and d.timestamp > loaded.timestamp for d in derived)


def test_landed_events_reach_both_derived_tables_with_the_daemon_running(
    daemon: subprocess.Popen, dagster_home: Path, landing_dir: Path, duckdb_path: Path
) -> None:
    spec = LandingSpec(
        events=300,
        repositories=3,
        days=3,
        events_per_object=40,
        duplicate_rate=0.05,
        committed_from=datetime.now(UTC) - timedelta(minutes=2),
    )
    landed = synthetic_landing(LocalLandingStore(landing_dir), spec)

    expected_runs = -(-len(landed.keys) // 4)  # at most 4 objects per run
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not settled(instance, expected_runs):
            assert daemon.poll() is None, (dagster_home / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"not settled within {DEADLINE_SECONDS}s: {progress(instance)}"
            time.sleep(2)
        # The warehouse pool let one run at a time touch the DuckDB file.
        spans = sorted((r.start_time, r.end_time) for r in instance.get_run_records())
        assert len(spans) >= expected_runs + 1
        assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))

    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait(timeout=30)
    warehouse = DuckDBWarehouse(DuckDBResource(database=str(duckdb_path)).get_connection)
    assert rows(warehouse, f"SELECT count(*) FROM {PULLS}") == [(landed.pull_count,)]
    assert rows(
        warehouse,
        f"""SELECT day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors,
            unique_clients FROM {DAILY} ORDER BY day, repository""",
    ) == expected_daily(landed.pulls)
    assert rows(warehouse, f"SELECT count(*), sum(events) FROM {SUMMARY}") == [(3, landed.pull_count)]
