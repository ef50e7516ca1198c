"""The code location and the instance configuration load, validate, and say what they promise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from pull_events_dagster.defs import build_definitions
from pull_events_dagster.defs.assets import (
    DAILY_PULLS_KEY,
    EVENTS_KEY,
    PULLS_KEY,
    QUARANTINED_KEY,
    REJECTED_KEY,
    SUMMARY_KEY,
    WAREHOUSE_POOL,
)
from pull_events_dagster.defs.checks import AUDIT_CHECK_KEYS, AUDIT_JOB, AUDIT_SCHEDULE, SUMMARY_MATCHES
from pull_events_dagster.defs.cloud_resources import BigQueryWarehouseResource, GcsLandingResource
from pull_events_dagster.defs.derived import DAILY_SENSOR, DERIVED_JOB
from pull_events_dagster.defs.jobs import LOAD_JOB, REBUILD_JOB
from pull_events_dagster.defs.load_checks import LOADED_COMPLETE, LOADED_DATED, LOADED_UNIQUE
from pull_events_dagster.defs.reconcile import LOAD_LAG_CHECK_KEY, RECONCILE_JOB, RECONCILE_SCHEDULE
from pull_events_dagster.defs.resources import (
    DuckDBWarehouseResource,
    LocalLandingResource,
)
from pull_events_dagster.defs.sensors import AUTOMATION_SENSOR, LANDING_SENSOR
from tests.pipeline.conftest import pipeline_settings

ROOT = Path(__file__).resolve().parents[2]
ALL_KEYS = {PULLS_KEY, EVENTS_KEY, REJECTED_KEY, QUARANTINED_KEY, DAILY_PULLS_KEY, SUMMARY_KEY}
ALL_JOBS = (LOAD_JOB, RECONCILE_JOB, REBUILD_JOB)


def test_definitions_load_and_validate_for_a_directory_and_a_duckdb_file(defs: dg.Definitions, settings) -> None:
    dg.Definitions.validate_loadable(defs)
    assert isinstance(defs.resources["landing"], LocalLandingResource)
    assert isinstance(defs.resources["warehouse"], DuckDBWarehouseResource)
    graph = defs.resolve_asset_graph()
    assert set(graph.get_all_asset_keys()) == ALL_KEYS
    assert {node.key: node.kinds for node in graph.asset_nodes} == {key: {"duckdb"} for key in ALL_KEYS}
    # Every warehouse step is in the one pool dagster.yaml limits to a single run.
    steps = {node.name: node.pool for job in ALL_JOBS for node in defs.resolve_job_def(job).graph.node_defs}
    steps |= {node.name: node.pool for node in defs.resolve_job_def(AUDIT_JOB).graph.node_defs}
    steps |= {node.name: node.pool for node in defs.resolve_job_def(DERIVED_JOB).graph.node_defs}
    assert steps == {
        "load_landing_objects": WAREHOUSE_POOL,
        "warehouse_checks": WAREHOUSE_POOL,
        f"{SUMMARY_KEY.to_python_identifier()}_{SUMMARY_MATCHES}": WAREHOUSE_POOL,
        DAILY_PULLS_KEY.to_python_identifier(): WAREHOUSE_POOL,
        SUMMARY_KEY.to_python_identifier(): WAREHOUSE_POOL,
    }
    pulls = graph.get(PULLS_KEY)
    # No freshness policy: a quiet registry is not an incident. The load-lag check (an unloaded object is) runs in
    # the reconciliation job only, since it lists days of landing objects; loads and rebuilds leave it out.
    assert pulls.freshness_policy is None
    assert LOAD_LAG_CHECK_KEY in graph.asset_check_keys
    checks_of = {job: defs.resolve_job_def(job).asset_layer.asset_graph.asset_check_keys for job in ALL_JOBS}
    assert [job for job in ALL_JOBS if LOAD_LAG_CHECK_KEY in checks_of[job]] == [RECONCILE_JOB]
    # Loads judge their own rows; the whole-table audits run in their own job only.
    load_checks = {dg.AssetCheckKey(PULLS_KEY, name) for name in (LOADED_UNIQUE, LOADED_COMPLETE, LOADED_DATED)}
    for job in ALL_JOBS:
        assert load_checks <= checks_of[job]
        assert not set(AUDIT_CHECK_KEYS) & checks_of[job]
    assert set(defs.resolve_job_def(AUDIT_JOB).asset_layer.asset_graph.asset_check_keys) >= set(AUDIT_CHECK_KEYS)
    # A load recomputes its own day and the summary in its own run (one process start instead of two).
    load = defs.resolve_job_def(LOAD_JOB)
    assert {n.name for n in load.graph.node_defs} == {
        "load_landing_objects",
        "cloudevents_pull_event_recorder__daily_pulls",
        "cloudevents_pull_event_recorder__repository_pull_summary",
    }
    assert load.partitions_def == defs.resolve_assets_def(DAILY_PULLS_KEY).partitions_def


def test_daily_pulls_is_partitioned_by_day_and_the_summary_follows_it(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    daily, summary = graph.get(DAILY_PULLS_KEY), graph.get(SUMMARY_KEY)
    partitions = daily.partitions_def
    assert isinstance(partitions, dg.DailyPartitionsDefinition)
    assert partitions.get_first_partition_key() == "2024-01-01"
    assert partitions.get_partition_keys(current_time=datetime(2026, 12, 1, 13, tzinfo=UTC))[-1] == "2026-12-01"
    assert daily.backfill_policy == dg.BackfillPolicy.single_run()
    # Recomputed by the days each load touched (the daily sensor), never by a change of the whole pull table.
    assert daily.automation_condition is None
    assert daily.parent_keys == {PULLS_KEY}
    assert summary.partitions_def is None
    assert summary.parent_keys == {DAILY_PULLS_KEY}
    assert summary.automation_condition is not None


def test_sensors_start_running_without_a_click(defs: dg.Definitions) -> None:
    for name in (LANDING_SENSOR, DAILY_SENSOR, AUTOMATION_SENSOR):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING
    reconcile = defs.resolve_schedule_def(RECONCILE_SCHEDULE)
    assert reconcile.default_status == dg.DefaultScheduleStatus.RUNNING
    assert (reconcile.job_name, reconcile.cron_schedule) == (RECONCILE_JOB, "*/15 * * * *")
    audit = defs.resolve_schedule_def(AUDIT_SCHEDULE)
    assert audit.default_status == dg.DefaultScheduleStatus.RUNNING
    assert (audit.job_name, audit.cron_schedule, audit.execution_timezone) == (AUDIT_JOB, "17 3 * * *", "UTC")


def test_the_same_definitions_serve_a_bucket_and_bigquery() -> None:
    settings = pipeline_settings("gs://landing-bucket/events", "bigquery://my-project/cloudevents_pull_event_recorder")
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    landing, warehouse = defs.resources["landing"], defs.resources["warehouse"]
    assert isinstance(landing, GcsLandingResource)
    assert (landing.bucket, landing.prefix, landing.describe()) == (
        "landing-bucket",
        "events",
        "gs://landing-bucket/events",
    )
    assert isinstance(warehouse, BigQueryWarehouseResource)
    assert (warehouse.bigquery.project, warehouse.dataset) == ("my-project", "cloudevents_pull_event_recorder")
    kinds = {node.kinds.pop() for node in defs.resolve_asset_graph().asset_nodes}
    assert kinds == {"bigquery"}


def test_the_embedded_default_never_imports_the_cloud_clients(tmp_path: Path) -> None:
    """Every run of the local stack is a new process that loads the code location: dagster-gcp, pandas and the
    BigQuery client would add seconds to each one's start (benchmarks/stack_latency.py) for nothing."""
    probe = (
        "import sys, pull_events_dagster.definitions as d; "
        "print(sorted(m for m in ('dagster_gcp', 'google.cloud.bigquery', 'google.cloud.storage', 'pandas') "
        "if m in sys.modules)); print(type(d.defs.resources['warehouse']).__name__)"
    )
    env = {
        **os.environ,
        "PULL_EVENTS_LANDING": str(tmp_path / "landing"),
        "PULL_EVENTS_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
    }
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "DuckDBWarehouseResource"]


def test_workspace_yaml_loads_the_code_location(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "PULL_EVENTS_AUTH": "off",
        "PULL_EVENTS_LANDING": str(tmp_path / "landing"),
        "PULL_EVENTS_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
    }
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    result = subprocess.run(
        [Path(sys.executable).parent / "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pull_events" in result.stdout + result.stderr


def test_the_instance_lives_in_dagster_home_and_runs_one_warehouse_run_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.pool_granularity.value == "run"
        assert concurrency.pool_config.default_pool_limit == 1
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.auto_materialize_use_sensors
        assert instance.run_monitoring_enabled
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    assert (tmp_path / "history" / "runs.db").exists()
