"""The two resources every asset, check and sensor uses: the landing zone and the warehouse.

Each is one abstract resource with a local and a cloud implementation; ``build_resources`` picks them from
the shared settings (``PULL_EVENTS_LANDING``, ``PULL_EVENTS_WAREHOUSE``), so the same definitions serve
a laptop (directory + DuckDB file) and GCP (bucket + BigQuery dataset). The cloud ones live in
``cloud_resources`` and are imported only when the settings name them: dagster-gcp and the BigQuery client take
longer to import than Dagster itself, and every run of the embedded default starts a new process that would pay it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from pull_events.landing import LandingStore, LocalLandingStore
from pull_events.settings import DEFAULT_MAX_LINE_BYTES, Settings
from pull_events_dagster.warehouse.base import FUTURE_TOLERANCE, Warehouse
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse


class LandingResource(dg.ConfigurableResource, ABC):
    """The landing zone the receiver writes NDJSON objects to."""

    @abstractmethod
    def store(self) -> LandingStore:
        """A client for the landing zone."""

    @abstractmethod
    def describe(self) -> str:
        """Where it is, for logs and metadata."""


class LocalLandingResource(LandingResource):
    """A local directory (the embedded default)."""

    path: str = Field(description="directory the receiver lands objects in")

    def store(self) -> LandingStore:
        return LocalLandingStore(Path(self.path))

    def describe(self) -> str:
        return self.path


class WarehouseResource(dg.ConfigurableResource, ABC):
    """The warehouse the tables live in."""

    future_tolerance_seconds: int = Field(
        default=int(FUTURE_TOLERANCE.total_seconds()),
        description="how far past the warehouse's clock a pull's body.when may be and still count in time windows",
    )

    max_line_bytes: int = Field(
        default=DEFAULT_MAX_LINE_BYTES,
        description="the longest landed line a load parses; longer ones are rejected as line_too_large",
    )

    def options(self) -> dict[str, object]:
        """The keyword arguments both warehouses take from these settings."""
        return {
            "future_tolerance": timedelta(seconds=self.future_tolerance_seconds),
            "max_line_bytes": self.max_line_bytes,
        }

    @abstractmethod
    @contextmanager
    def open(self) -> Iterator[Warehouse]:
        """A warehouse client for the duration of the block."""

    @abstractmethod
    def kind(self) -> str:
        """``duckdb`` or ``bigquery``."""


class DuckDBWarehouseResource(WarehouseResource):
    """A DuckDB file, opened with dagster-duckdb's settings only while an asset or check works on it.

    The warehouse connects with the ``duckdb`` resource's database and connection_config, one attempt at a time,
    and waits for a locked file itself (``DuckDBWarehouse.session``): ``get_connection``'s own fixed back-off
    (about 102 s, on any IO error) would run under that wait and make ``lock_timeout_seconds`` meaningless.
    """

    duckdb: DuckDBResource
    lock_timeout_seconds: float = Field(
        default=600.0,
        ge=0,
        description="how long a load waits for another process (an analyst's session) to release the file before "
        "it fails (the sensor requests the batch again later); the wait is logged as a warning",
    )
    memory_limit: str = Field(default="512MB", description="DuckDB's memory cap while the pipeline works")
    chunk_megabytes: int = Field(default=64, description="how much of a remote batch a load downloads at a time")

    @contextmanager
    def open(self) -> Iterator[Warehouse]:
        if self.duckdb.database != ":memory:":
            Path(self.duckdb.database).parent.mkdir(parents=True, exist_ok=True)
        yield DuckDBWarehouse(
            self.duckdb,
            lock_timeout=self.lock_timeout_seconds,
            chunk_bytes=self.chunk_megabytes * 1024 * 1024,
            memory_limit=self.memory_limit,
            **self.options(),  # type: ignore[arg-type]
        )

    def kind(self) -> str:
        return "duckdb"


def landing_resource(settings: Settings) -> LandingResource:
    """The landing resource ``PULL_EVENTS_LANDING`` names."""
    location = settings.landing
    if location.kind == "gcs":
        from pull_events_dagster.defs.cloud_resources import gcs_landing_resource

        return gcs_landing_resource(location.bucket, location.prefix)
    return LocalLandingResource(path=str(location.path))


def warehouse_resource(settings: Settings) -> WarehouseResource:
    """The warehouse resource ``PULL_EVENTS_WAREHOUSE`` names."""
    location = settings.warehouse
    shared = {
        "future_tolerance_seconds": settings.pipeline.future_tolerance_seconds,
        "max_line_bytes": settings.pipeline.max_line_bytes,
    }
    if location.kind == "bigquery":
        from pull_events_dagster.defs.cloud_resources import bigquery_warehouse_resource

        return bigquery_warehouse_resource(location.project, location.dataset, **shared)
    return DuckDBWarehouseResource(duckdb=DuckDBResource(database=str(location.path)), **shared)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Every resource the definitions need, keyed by the parameter names assets and sensors use."""
    return {"landing": landing_resource(settings), "warehouse": warehouse_resource(settings)}
