from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from google.api_core.retry import Retry
from google.cloud import bigquery

from pull_events.landing import GcsLandingStore
from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse
from tests.services import BigQueryEmulator, FakeGcsServer


@pytest.fixture
def bq_client(bigquery_emulator: BigQueryEmulator) -> Iterator[bigquery.Client]:
    client = bigquery_emulator.client()
    yield client
    client.close()


@pytest.fixture
def dataset() -> str:
    """A dataset name of its own for each test: the emulator is shared by the session."""
    return f"pull_events_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def warehouse(bq_client: bigquery.Client, dataset: str) -> BigQueryWarehouse:
    # Short retries: an emulator error should fail the test quickly, not after the client's 10 minutes.
    return BigQueryWarehouse(bq_client, dataset, retry=Retry(timeout=20))


@pytest.fixture
def gcs_store(fake_gcs: FakeGcsServer, gcs_bucket: str) -> GcsLandingStore:
    """A landing zone in a fresh bucket, under a prefix as deployments may use."""
    return GcsLandingStore(gcs_bucket, "landing", client=fake_gcs.client())


def rows(warehouse: BigQueryWarehouse, sql: str) -> list[tuple]:
    """Rows of a query; ``{TABLE}`` placeholders name the warehouse's tables (``{pulls}``, ``{daily}``...)."""
    from pull_events_dagster.warehouse import base

    names = {
        "pulls": base.PULLS,
        "events": base.EVENTS,
        "rejected": base.REJECTED,
        "ledger": base.LOADED_OBJECTS,
        "quarantined": base.QUARANTINED,
        "daily": base.DAILY_PULLS,
        "daily_values": base.DAILY_VALUES,
        "repository_values": base.REPOSITORY_VALUES,
        "pending": base.SUMMARY_PENDING,
        "summary": base.REPOSITORY_SUMMARY,
    }
    resolved = sql.format(**{alias: f"`{warehouse.table_id(table)}`" for alias, table in names.items()})
    return [tuple(row.values()) for row in warehouse.query(resolved)]
