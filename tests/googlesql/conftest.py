from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pull_events.landing import GcsLandingStore
from pull_events_dagster.warehouse import base
from tests.googlesql.analyzer import Analyzer, GoogleSqlServer
from tests.googlesql.capture import Captured, catalog_tables, exercise
from tests.services import BigQueryEmulator, FakeGcsServer


@pytest.fixture(scope="session")
def googlesql_server() -> Iterator[GoogleSqlServer]:
    with GoogleSqlServer() as server:
        yield server


@pytest.fixture(scope="session")
def captured(bigquery_emulator: BigQueryEmulator, fake_gcs: FakeGcsServer) -> Captured:
    """What a BigQuery warehouse sends while every operation of it runs against bqemulator."""
    bucket = f"landing-{uuid.uuid4().hex[:12]}"
    fake_gcs.client().create_bucket(bucket)
    store = GcsLandingStore(bucket, "landing", client=fake_gcs.client())
    client = bigquery_emulator.client()
    try:
        return exercise(client, store, f"pull_events_{uuid.uuid4().hex[:10]}")
    finally:
        client.close()


@pytest.fixture(scope="session")
def analyzer(
    googlesql_server: GoogleSqlServer, captured: Captured, bigquery_emulator: BigQueryEmulator
) -> Iterator[Analyzer]:
    """The analyzer with a catalog of the warehouse's tables, in its dataset and its rebuild's shadow dataset."""
    project = bigquery_emulator.client().project
    datasets = sorted({name.split(".")[1] for name in captured.created_tables})
    datasets = sorted({d.removesuffix(base.SHADOW_SUFFIX) for d in datasets} | set(datasets))
    analyzer = Analyzer(googlesql_server.port, catalog_tables(captured, project, datasets))
    yield analyzer
    analyzer.close()
