from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import dagster as dg
import pytest
from dagster_duckdb import DuckDBResource

from pull_events.landing import LocalLandingStore
from pull_events.settings import Settings, load_settings
from pull_events_dagster.defs import build_definitions
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse


def pipeline_settings(landing: str, warehouse: str, **knobs: str) -> Settings:
    """Settings as the code location reads them from its environment."""
    env = {"PULL_EVENTS_LANDING": landing, "PULL_EVENTS_WAREHOUSE": warehouse, **knobs}
    return load_settings(env, receiver=False)


@pytest.fixture
def store(landing_dir: Path) -> LocalLandingStore:
    return LocalLandingStore(landing_dir)


@pytest.fixture
def duckdb_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse" / "warehouse.duckdb"


@pytest.fixture
def warehouse(duckdb_path: Path) -> DuckDBWarehouse:
    """The DuckDB warehouse on a fresh file, connected the way the Dagster resource connects."""
    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    return DuckDBWarehouse(DuckDBResource(database=str(duckdb_path)).get_connection)


@pytest.fixture
def settings(landing_dir: Path, duckdb_path: Path) -> Settings:
    return pipeline_settings(str(landing_dir), str(duckdb_path), PULL_EVENTS_MAX_OBJECTS_PER_RUN="3")


@pytest.fixture
def defs(settings: Settings) -> dg.Definitions:
    return build_definitions(settings)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance (SQLite in a temp dir), as the daemon's, minus the daemon."""
    with dg.instance_for_test() as instance:
        yield instance


def rows(warehouse: DuckDBWarehouse, sql: str, parameters: Mapping[str, object] | None = None) -> list[tuple]:
    """Rows of a query against the warehouse file."""
    return warehouse.query(sql, dict(parameters or {}))
