"""Warehouse implementations behind one interface (``base.Warehouse``): DuckDB and BigQuery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pull_events_dagster.warehouse.base import (
    DATASET,
    PULL_TYPE,
    CheckFigures,
    DailyRefresh,
    LoadResult,
    SummaryAudit,
    SummaryRefresh,
    Warehouse,
)
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse, WarehouseLocked

if TYPE_CHECKING:
    from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse


def __getattr__(name: str) -> Any:
    # BigQuery's client library is only imported by deployments (and tests) that use it.
    if name == "BigQueryWarehouse":
        from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse

        return BigQueryWarehouse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASET",
    "PULL_TYPE",
    "BigQueryWarehouse",
    "CheckFigures",
    "DailyRefresh",
    "DuckDBWarehouse",
    "LoadResult",
    "SummaryAudit",
    "SummaryRefresh",
    "Warehouse",
    "WarehouseLocked",
]
