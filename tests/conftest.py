from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pull_events.landing import GcsLandingStore, LandingStore, LocalLandingStore
from tests.postgres_server import PostgresServer
from tests.services import TEST_PROJECT, BigQueryEmulator, FakeGcsServer

# A landing zone as a receiver's environment names it (PULL_EVENTS_LANDING), a store to read it back, extra variables.
ReceiverLanding = tuple[str, LandingStore, dict[str, str]]


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


@pytest.fixture(params=["local", "gcs"])
def landing(request: pytest.FixtureRequest, tmp_path: Path) -> ReceiverLanding:
    """Each landing zone a receiver process can write to: a local directory, and a bucket on fake-gcs-server."""
    if request.param == "local":
        return str(tmp_path / "landing"), LocalLandingStore(tmp_path / "landing"), {}
    fake_gcs: FakeGcsServer = request.getfixturevalue("fake_gcs")
    bucket: str = request.getfixturevalue("gcs_bucket")
    # The production code path: the receiver builds its own client, pointed at the fake by this variable.
    env = {"STORAGE_EMULATOR_HOST": fake_gcs.url, "GOOGLE_CLOUD_PROJECT": TEST_PROJECT}
    return f"gs://{bucket}/events", GcsLandingStore(bucket, "events", client=fake_gcs.client()), env
