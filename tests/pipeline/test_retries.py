"""Failed loads are retried by Dagster: the loader step with exponential backoff and jitter, load runs by the run
retries that dagster.yaml enables; what they never load is left to the reconciliation pass in time."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

# Dagster's own names and decision, checked against what this project relies on.
from dagster._core.events import DagsterEventType, RunFailureReason
from dagster._core.execution.retries import auto_reexecution_should_retry_run
from dagster._core.storage.tags import MAX_RETRIES_TAG, RETRY_ON_ASSET_OR_OP_FAILURE_TAG
from dagster_duckdb import DuckDBResource

from pull_events.landing import LocalLandingStore
from pull_events.settings import Settings
from pull_events_dagster.defs.assets import LOADED_KEYS, PULLS_KEY, build_assets
from pull_events_dagster.defs.jobs import LOAD_JOB
from pull_events_dagster.defs.reconcile import RECONCILE_JOB
from pull_events_dagster.defs.resources import landing_resource, warehouse_resource
from pull_events_dagster.defs.retries import (
    LOAD_RETRY_POLICY,
    LOAD_RUN_MAX_RETRIES,
    LOAD_RUN_RETRY_TAGS,
)
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from tests.pipeline.conftest import rows
from tests.pipeline.factories import PULL_TYPE, pull_event, write_object
from tests.pipeline.test_duckdb_warehouse import PULLS, facts
from tests.pipeline.test_sensor import tick

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def yaml_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    """An instance configured by the project's dagster.yaml."""
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance


def test_the_loader_step_retries_with_exponential_backoff_and_jitter(defs: dg.Definitions) -> None:
    for job in (LOAD_JOB, RECONCILE_JOB):
        [loader] = [node for node in defs.resolve_job_def(job).graph.node_defs if node.name == "load_landing_objects"]
        assert loader.retry_policy == LOAD_RETRY_POLICY
    assert (LOAD_RETRY_POLICY.backoff, LOAD_RETRY_POLICY.jitter) == (dg.Backoff.EXPONENTIAL, dg.Jitter.PLUS_MINUS)


def test_load_runs_carry_the_run_retry_tags_dagster_reads(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    assert {MAX_RETRIES_TAG: str(LOAD_RUN_MAX_RETRIES), RETRY_ON_ASSET_OR_OP_FAILURE_TAG: "true"} == LOAD_RUN_RETRY_TAGS
    write_object(store, PULL_TYPE, [pull_event(facts("t1"))], datetime.now(UTC))
    [request], _ = tick(defs, instance, None)
    assert request.tags.items() >= LOAD_RUN_RETRY_TAGS.items()


def test_the_instance_retries_a_failed_load_run_and_no_other_run(yaml_instance: dg.DagsterInstance) -> None:
    assert yaml_instance.run_retries_enabled
    assert yaml_instance.run_retries_max_retries == 0
    load = dg.DagsterRun(job_name=LOAD_JOB, tags=LOAD_RUN_RETRY_TAGS, status=dg.DagsterRunStatus.FAILURE)
    other = dg.DagsterRun(job_name=RECONCILE_JOB, status=dg.DagsterRunStatus.FAILURE)
    for run in (load, other):
        yaml_instance.add_run(run)
    # The run retry daemon's own decision, for a run whose loader step failed.
    assert auto_reexecution_should_retry_run(yaml_instance, load, RunFailureReason.STEP_FAILURE)
    assert not auto_reexecution_should_retry_run(yaml_instance, other, RunFailureReason.STEP_FAILURE)


def test_every_retry_is_spent_before_the_load_lag_check_calls_an_object_overdue(settings: Settings) -> None:
    policy = LOAD_RETRY_POLICY
    without_jitter = dg.RetryPolicy(max_retries=policy.max_retries, delay=policy.delay, backoff=policy.backoff)
    # The longest pause before each step retry: jitter adds at most the base delay.
    longest = sum(without_jitter.calculate_delay(n) + (policy.delay or 0) for n in range(1, policy.max_retries + 1))
    assert longest == 10 + 10 + 30 + 10 + 70 + 10
    # In every run (the first and its retries), well inside the lag after which the check names the object.
    assert longest * (1 + LOAD_RUN_MAX_RETRIES) < settings.pipeline.max_load_lag_seconds / 2


def test_a_load_that_fails_is_retried_in_its_run_and_loads(
    instance: dg.DagsterInstance, store: LocalLandingStore, duckdb_path: Path, settings: Settings
) -> None:
    key = write_object(store, PULL_TYPE, [pull_event(facts("r1"))], datetime.now(UTC))
    [loader] = [a for a in build_assets(settings, "duckdb") if PULLS_KEY in a.keys]
    resources = {"landing": landing_resource(settings), "warehouse": warehouse_resource(settings)}
    # The warehouse is unusable when the load starts: where its folder should be, there is a file (a disk not
    # mounted yet, say), so opening it fails at once.
    duckdb_path.parent.write_text("not a folder")
    outcome: list[dg.ExecuteInProcessResult] = []

    def load() -> None:
        config = {"ops": {"load_landing_objects": {"config": {"objects": [{"key": key}]}}}}
        outcome.append(dg.materialize([loader], config, instance, resources, selection=list(LOADED_KEYS)))

    loading = threading.Thread(target=load)
    loading.start()
    while not _retry_requested(instance):
        assert loading.is_alive(), "the load ended without asking for a retry"
        time.sleep(0.2)
    duckdb_path.parent.unlink()  # back: the step's next attempt finds it usable
    loading.join(timeout=300)

    [run] = outcome
    assert run.success
    assert any(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in run.all_events)
    warehouse = DuckDBWarehouse(DuckDBResource(database=str(duckdb_path)).get_connection)
    assert rows(warehouse, f"SELECT event_id FROM {PULLS}") == [("r1",)]


def _retry_requested(instance: dg.DagsterInstance) -> bool:
    """Whether the (one) run in ``instance`` has a step waiting to be retried."""
    runs = instance.get_run_records()
    retry = DagsterEventType.STEP_UP_FOR_RETRY
    return bool(runs) and bool(instance.get_records_for_run(runs[0].dagster_run.run_id, of_type=retry).records)
