from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer
from tests.services import BigQueryEmulator, FakeGcsServer


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    """One fake-gcs-server for the session; tests isolate themselves with their own bucket."""
    with FakeGcsServer(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield server


@pytest.fixture
def gcs_bucket(fake_gcs: FakeGcsServer) -> str:
    """A new, empty bucket on the fake GCS server."""
    name = f"landing-{uuid.uuid4().hex[:12]}"
    fake_gcs.client().create_bucket(name)
    return name


@pytest.fixture(scope="session")
def bigquery_emulator(fake_gcs: FakeGcsServer) -> Iterator[BigQueryEmulator]:
    """One bqemulator for the session, reading gs:// URIs from the fake GCS server's files."""
    with BigQueryEmulator(fake_gcs.root) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session; tests isolate themselves with their own database."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database on the test cluster, dropped after the test."""
    with postgres_server.database() as name:
        yield name


@pytest.fixture
def landing_dir(tmp_path: Path) -> Path:
    path = tmp_path / "landing"
    path.mkdir()
    return path
