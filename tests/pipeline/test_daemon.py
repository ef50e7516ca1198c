"""With the real Dagster daemon running on dagster.yaml and workspace.yaml, landed events reach both
derived tables with no manual step: sensors start by themselves, load runs queue through the warehouse
pool, and the automation sensor refreshes the derived tables after the load; on the production instance
(deploy/dagster/dagster.yaml) too, with runs and events in a real PostgreSQL server. A daemon stopped for longer
than the lateness window, while objects keep landing, loads every one of them once it is back."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster_duckdb import DuckDBResource

from pull_events.landing import LocalLandingStore, key_committed_at
from pull_events_dagster.defs.assets import DAILY_PULLS_KEY, LOADER, PULLS_KEY, SUMMARY_KEY
from pull_events_dagster.defs.jobs import LOAD_JOB
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from tests.pipeline.conftest import rows
from tests.pipeline.factories import LandingSpec, SyntheticLanding, synthetic_landing
from tests.pipeline.test_duckdb_warehouse import DAILY, PULLS, SUMMARY, expected_daily
from tests.postgres_server import PostgresServer
from tests.services import as_from_a_terminal

ROOT = Path(__file__).resolve().parents[2]
# How long a test waits for the daemon before it fails (a guard against a hang, not a measurement): generous,
# because every run is a new Python process that imports Dagster, slow on two busy cores.
DEADLINE_SECONDS = 240
DERIVED = (DAILY_PULLS_KEY, SUMMARY_KEY)
LEDGER = f"{base.DATASET}.{base.LOADED_OBJECTS}"
LIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


INSTANCES = {"sqlite": ROOT / "dagster.yaml", "postgres": ROOT / "deploy/dagster/dagster.yaml"}


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """$DAGSTER_HOME with the local stack's instance (SQLite), or with the production one (PostgreSQL) when a test
    parametrizes this fixture with "postgres": then on a new database of the test server, whose connection the
    daemon reads from the environment as production does."""
    storage = getattr(request, "param", "sqlite")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCES[storage], home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # dagster.yaml keeps the instance's files there
    if storage == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        for variable, value in server.dagster_env(request.getfixturevalue("postgres_database")).items():
            monkeypatch.setenv(variable, value)
    # Create the instance's SQLite stores now: the daemon, its code server and the test opening them all at once
    # for the first time can each stamp a schema version, which leaves them unopenable ("more than one head").
    with dg.DagsterInstance.from_config(str(home)):
        pass
    return home


def start_daemon(dagster_home: Path, landing_dir: Path, duckdb_path: Path, **knobs: str) -> subprocess.Popen:
    """``dagster-daemon run`` on the project's workspace, in a process group of its own; ``knobs``: settings."""
    log = dagster_home / "daemon.log"  # a file, not a pipe: an unread pipe fills up and stalls the daemon
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "PULL_EVENTS_AUTH": "off",
        "PULL_EVENTS_LANDING": str(landing_dir),
        "PULL_EVENTS_WAREHOUSE": str(duckdb_path),
        "PULL_EVENTS_MAX_OBJECTS_PER_RUN": "4",
        **knobs,
    }
    return subprocess.Popen(
        [Path(sys.executable).parent / "dagster-daemon", "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),  # appended: a restarted daemon logs after the first one
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its code server and run workers go with it
        preexec_fn=as_from_a_terminal,  # Dagster handles SIGTERM as SIGINT: neither may be inherited ignored
    )


def stop_daemon(process: subprocess.Popen) -> None:
    """SIGTERM to the daemon's process group, and wait for the whole group (SIGKILL if some of it lingers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    # Its code server and run workers can outlive it by a moment: waiting for the group means none of them is
    # still talking to a test server (PostgreSQL) that a later fixture stops. poll() reaps the daemon itself.
    deadline = time.monotonic() + 30
    while (process.poll() is None or group_alive(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def daemon(dagster_home: Path, landing_dir: Path, duckdb_path: Path) -> Iterator[subprocess.Popen]:
    process = start_daemon(dagster_home, landing_dir, duckdb_path)
    yield process
    stop_daemon(process)


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


def finished_runs(instance: dg.DagsterInstance) -> list[tuple[float, float]]:
    """(start, end) of every run that has ended, in start order."""
    return sorted((r.start_time, r.end_time) for r in instance.get_run_records() if r.end_time)


@pytest.mark.parametrize("dagster_home", ["sqlite", "postgres"], indirect=True)
@pytest.mark.timeout(DEADLINE_SECONDS + 120)
def test_landed_events_reach_both_derived_tables_with_the_daemon_running(
    daemon: subprocess.Popen, dagster_home: Path, landing_dir: Path, duckdb_path: Path, request: pytest.FixtureRequest
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
        # Settled, and the refresh runs ended too: a run's materializations are recorded before its end.
        while not (settled(instance, expected_runs) and len(finished_runs(instance)) >= expected_runs + 1):
            assert daemon.poll() is None, (dagster_home / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"not settled within {DEADLINE_SECONDS}s: {progress(instance)}"
            time.sleep(2)
        # The warehouse pool let one run at a time touch the DuckDB file.
        # (A reconciliation pass the schedule started meanwhile may still be running: finished runs only.)
        spans = finished_runs(instance)
        assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))
        load_runs = {r.dagster_run.run_id for r in instance.get_run_records(filters=dg.RunsFilter(job_name=LOAD_JOB))}
        assert len(load_runs) == expected_runs

    stop_daemon(daemon)
    warehouse = DuckDBWarehouse(DuckDBResource(database=str(duckdb_path)).get_connection)
    assert rows(warehouse, f"SELECT count(*) FROM {PULLS}") == [(landed.pull_count,)]
    assert rows(
        warehouse,
        f"""SELECT day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors,
            unique_clients FROM {DAILY} ORDER BY day, repository""",
    ) == expected_daily(landed.pulls)
    assert rows(warehouse, f"SELECT count(*), sum(events) FROM {SUMMARY}") == [(3, landed.pull_count)]
    if request.node.callspec.params["dagster_home"] == "postgres":
        assert_kept_in_postgres(request, dagster_home, load_runs)


def assert_kept_in_postgres(request: pytest.FixtureRequest, dagster_home: Path, load_runs: set[str]) -> None:
    """The runs and their events are rows of the test database, and no SQLite store was made under $DAGSTER_HOME."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    connection = server.connect(request.getfixturevalue("postgres_database"))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_id, status FROM runs WHERE pipeline_name = %s", (LOAD_JOB,))
            assert sorted(cursor.fetchall()) == sorted((run_id, "SUCCESS") for run_id in load_runs)
            # Each load run materialized the pull table once.
            cursor.execute(
                """SELECT e.run_id, count(*) FROM event_logs e JOIN runs r ON r.run_id = e.run_id
                WHERE r.pipeline_name = %s AND e.dagster_event_type = %s AND e.asset_key = %s GROUP BY e.run_id""",
                (LOAD_JOB, dg.DagsterEventType.ASSET_MATERIALIZATION.value, PULLS_KEY.to_string()),
            )
            assert sorted(cursor.fetchall()) == sorted((run_id, 1) for run_id in load_runs)
            cursor.execute(
                "SELECT DISTINCT asset_key FROM event_logs WHERE dagster_event_type = %s AND asset_key = ANY(%s)",
                (dg.DagsterEventType.ASSET_MATERIALIZATION.value, [key.to_string() for key in DERIVED]),
            )
            assert sorted(key for (key,) in cursor.fetchall()) == sorted(key.to_string() for key in DERIVED)
    finally:
        connection.close()
    assert not list(dagster_home.rglob("*.db"))


LATENESS_SECONDS = 2


def loaded_by_load_runs(instance: dg.DagsterInstance) -> set[str]:
    """The objects of every succeeded run of the load job (the runs the landing sensor requests)."""
    keys: set[str] = set()
    for record in instance.get_run_records(filters=dg.RunsFilter(job_name=LOAD_JOB)):
        run = record.dagster_run
        assert run.status != dg.DagsterRunStatus.FAILURE, f"load run {run.run_id} failed"
        if run.status == dg.DagsterRunStatus.SUCCESS:
            keys.update(o["key"] for o in run.run_config["ops"][LOADER]["config"]["objects"])
    return keys


def quiet(instance: dg.DagsterInstance, keys: Iterable[str]) -> bool:
    """Load runs took every one of ``keys``, the derived tables followed the last load, and no run is live."""
    if not set(keys) <= loaded_by_load_runs(instance):
        return False
    live = instance.get_run_records(filters=dg.RunsFilter(statuses=LIVE_STATUSES), limit=1)
    loaded = instance.get_latest_materialization_event(PULLS_KEY)
    derived = [instance.get_latest_materialization_event(k) for k in DERIVED]
    return not live and loaded is not None and all(d is not None and d.timestamp > loaded.timestamp for d in derived)


def wait_until_quiet(
    daemon: subprocess.Popen, dagster_home: Path, instance: dg.DagsterInstance, keys: Iterable[str]
) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not quiet(instance, keys):
        assert daemon.poll() is None, (dagster_home / "daemon.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"not loaded within {DEADLINE_SECONDS}s: {progress(instance)}"
        time.sleep(1)


def test_objects_landed_while_the_daemon_was_down_longer_than_the_lateness_window_are_all_loaded(
    dagster_home: Path, landing_dir: Path, duckdb_path: Path
) -> None:
    store = LocalLandingStore(landing_dir)
    knobs = {"PULL_EVENTS_LATENESS_S": str(LATENESS_SECONDS), "PULL_EVENTS_MAX_OBJECTS_PER_RUN": "10"}

    def wave(seed: int, name: str) -> SyntheticLanding:
        spec = LandingSpec(
            events=40,
            repositories=2,
            days=2,
            events_per_object=5,
            duplicate_rate=0.1,
            seed=seed,
            instance=name,
            committed_from=datetime.now(UTC),
        )
        return synthetic_landing(store, spec)

    daemon = start_daemon(dagster_home, landing_dir, duckdb_path, **knobs)
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            before = wave(1, "before")
            wait_until_quiet(daemon, dagster_home, instance, before.keys)
            stop_daemon(daemon)

            # The receiver keeps acknowledging while the pipeline is down: three waves of objects land.
            during = []
            for n in range(3):
                during.append(wave(2 + n, f"outage-{n}"))
                time.sleep(LATENESS_SECONDS / 2)
            outage_keys = [key for landed in during for key in landed.keys]
            newest = max(key_committed_at(key) for key in outage_keys)
            while datetime.now(UTC) - timedelta(seconds=LATENESS_SECONDS) <= newest:
                time.sleep(0.5)
            # By construction the outage outlasted the window: a sensor listing "now minus lateness" from here on
            # would find none of these objects.
            assert all(
                key_committed_at(key) < datetime.now(UTC) - timedelta(seconds=LATENESS_SECONDS) for key in outage_keys
            )
            assert not set(outage_keys) & loaded_by_load_runs(instance)

            daemon = start_daemon(dagster_home, landing_dir, duckdb_path, **knobs)
            wait_until_quiet(daemon, dagster_home, instance, before.keys + outage_keys)
            # The sensor's own load runs took them (not a reconciliation pass: they are younger than its lag).
            assert set(outage_keys) <= loaded_by_load_runs(instance)
    finally:
        stop_daemon(daemon)

    warehouse = DuckDBWarehouse(DuckDBResource(database=str(duckdb_path)).get_connection)
    pulls = before.pull_count + sum(landed.pull_count for landed in during)
    assert sum(landed.duplicates for landed in during) > 0  # redeliveries are in there, and count once
    assert rows(warehouse, f"SELECT count(*) FROM {PULLS}") == [(pulls,)]
    assert rows(warehouse, f"SELECT count(*) FROM {LEDGER}") == [(len(before.keys) + len(outage_keys),)]
    assert rows(warehouse, f"SELECT sum(events) FROM {SUMMARY}") == [(pulls,)]
