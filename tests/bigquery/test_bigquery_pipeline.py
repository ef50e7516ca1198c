"""The Dagster definitions on GCS + BigQuery: the same sensor, jobs and assets as on a laptop, configured only
through ``PULL_EVENTS_LANDING=gs://...`` and ``PULL_EVENTS_WAREHOUSE=bigquery://...``: load runs as the landing
sensor requests them, then the day partitions of daily_pulls and the summary as the daily sensor requests them.

The clients find the servers the way deployments' clients find Google's: ``STORAGE_EMULATOR_HOST`` for
google-cloud-storage (dagster-gcp's GCSResource), ``BIGQUERY_EMULATOR_HOST`` for google-cloud-bigquery.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from google.cloud import bigquery

from pull_events.landing import GcsLandingStore
from pull_events_dagster.defs import build_definitions
from pull_events_dagster.defs.assets import PULLS_KEY, SUMMARY_KEY
from pull_events_dagster.defs.derived import RANGE_END_TAG, RANGE_START_TAG
from pull_events_dagster.defs.jobs import LOAD_JOB
from pull_events_dagster.defs.load_checks import LOADED_COMPLETE, LOADED_DATED, LOADED_UNIQUE
from pull_events_dagster.defs.sensors import LANDING_SENSOR
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse
from tests.bigquery.conftest import rows
from tests.pipeline.conftest import pipeline_settings
from tests.pipeline.factories import LandingSpec, synthetic_landing
from tests.pipeline.test_duckdb_warehouse import expected_daily
from tests.pipeline.test_pipeline_end_to_end import derive, metadata
from tests.services import TEST_PROJECT, BigQueryEmulator, FakeGcsServer


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def test_sensor_runs_load_gcs_objects_into_bigquery_and_the_derived_tables_follow(
    fake_gcs: FakeGcsServer,
    gcs_bucket: str,
    bigquery_emulator: BigQueryEmulator,
    bq_client: bigquery.Client,
    dataset: str,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bigquery_emulator.url)
    settings = pipeline_settings(
        f"gs://{gcs_bucket}/landing", f"bigquery://{TEST_PROJECT}/{dataset}", PULL_EVENTS_MAX_OBJECTS_PER_RUN="3"
    )
    defs = build_definitions(settings)
    landed = synthetic_landing(
        GcsLandingStore(gcs_bucket, "landing", client=fake_gcs.client()),
        LandingSpec(
            events=400,
            repositories=3,
            days=4,
            events_per_object=60,
            duplicate_rate=0.05,
            other_type_rate=0.05,
            committed_from=datetime.now(UTC) - timedelta(minutes=5),
            commit_spacing=timedelta(seconds=1),
        ),
    )

    with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        requests = list(defs.resolve_sensor_def(LANDING_SENSOR)(context).run_requests or [])
    job = defs.resolve_job_def(LOAD_JOB)
    runs = [
        job.execute_in_process(run_config=r.run_config, tags=r.tags, partition_key=r.partition_key, instance=instance)
        for r in requests
    ]
    # The daily sensor asks for the days the loads touched (four consecutive days: one run), the summary after them.
    day_requests, derived_runs, _ = derive(defs, instance, None)

    assert len(runs) == -(-len(landed.keys) // 3)  # batches of at most three objects
    assert all(run.success for run in runs)
    checks = [e for run in runs for e in run.get_asset_check_evaluations()]
    assert sorted({e.check_name for e in checks}) == sorted([LOADED_COMPLETE, LOADED_DATED, LOADED_UNIQUE])
    assert len(checks) == 3 * len(runs) and all(e.passed for e in checks)
    loaded = [metadata(run, PULLS_KEY) for run in runs]
    assert sum(m["events_loaded"] for m in loaded) == landed.pull_count
    assert sum(m["duplicates_skipped"] for m in loaded) == landed.duplicates
    assert loaded[-1]["dagster/row_count"] == landed.pull_count
    days = sorted({p.when.date().isoformat() for p in landed.pulls})
    assert [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in day_requests] == [(days[0], days[-1])]
    assert metadata(derived_runs[0], SUMMARY_KEY)["repositories_recomputed"] == 3

    warehouse = BigQueryWarehouse(bq_client, dataset)
    assert warehouse.row_count(base.PULLS) == landed.pull_count
    assert warehouse.row_count(base.EVENTS) == landed.other_events
    assert warehouse.row_count(base.LOADED_OBJECTS) == len(landed.keys)
    assert rows(
        warehouse,
        """SELECT day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors,
            unique_clients FROM {daily} ORDER BY day, repository""",
    ) == expected_daily(landed.pulls)
    assert warehouse.row_count(base.REPOSITORY_SUMMARY) == 3
    assert warehouse.summary_audit().rows_differing == 0
