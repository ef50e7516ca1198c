"""The warehouse boundary: what the pipeline needs from DuckDB or BigQuery.

Two small implementations (``duckdb.py``, ``bigquery.py``) sit behind this one interface; the Dagster
assets and checks only ever talk to it. Every method is idempotent: running it twice, or after a crash
half-way, leaves the same tables as running it once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from pull_events.landing import LandedObject, LandingStore

DATASET = "cloudevents_pull_event_recorder"
PULL_TYPE = "dev.chainguard.registry.pull.v1"

# Table names inside DATASET (a DuckDB schema or a BigQuery dataset).
PULLS = "dev_chainguard_registry_pull_v1"
EVENTS = "events"  # every event type other than pulls: envelope columns + data as JSON
REJECTED = "rejected_events"  # lines that could not be loaded, with the reason
LOADED_OBJECTS = "loaded_objects"  # ledger: one row per landing object loaded (exactly-once per object)
DAILY_PULLS = "daily_pulls"
REPOSITORY_SUMMARY = "repository_pull_summary"
REFRESH_STATE = "refresh_state"  # watermark of loaded_at each derived table has consumed


@dataclass(frozen=True)
class LoadResult:
    """What one load did; becomes the materialization's metadata."""

    objects_loaded: int
    objects_skipped: int  # already in the ledger (rerun / redelivery of the same object)
    lines_read: int
    pulls_inserted: int
    events_inserted: int  # other event types
    duplicates_skipped: int  # lines whose (source, id) was already loaded or repeated in the batch
    lines_rejected: int
    affected_days: list[date] = field(default_factory=list)  # UTC days of body.when touched by new pulls


@dataclass(frozen=True)
class RefreshResult:
    """What a derived-table refresh recomputed."""

    days_recomputed: list[date]
    rows_written: int
    table_rows: int


@dataclass(frozen=True)
class CheckFigures:
    """The numbers the asset checks judge."""

    duplicate_keys: int  # (source, id) pairs with more than one row in the pull table
    missing_required: int  # pull rows lacking id, source, repository or when
    landed_lines: int  # lines in loaded objects, per the ledger
    accounted_lines: int  # rows loaded + duplicates skipped + rejected, per the ledger
    rejected_lines: int
    total_lines: int
    pull_rows: int = 0
    rows_with_raw_event: int = 0  # pull rows whose line holds something no column does
    # Top-level keys without a column in the latest such rows, with how many of them carry each.
    keys_without_column: dict[str, int] = field(default_factory=dict)


class Warehouse(ABC):
    """Tables in DuckDB or BigQuery, loaded from landing objects exactly once."""

    @abstractmethod
    def ensure_tables(self) -> None:
        """Create the dataset/schema and every table if missing (idempotent DDL)."""

    @abstractmethod
    def loaded_object_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are already recorded in the ledger."""

    @abstractmethod
    def load_objects(self, store: LandingStore, objects: Sequence[LandedObject], run_id: str) -> LoadResult:
        """Load landing objects set-based, exactly once per (source, id).

        BigQuery runs a load job on the objects' gs:// URIs (data never passes through Python); DuckDB reads
        local files directly (objects in GCS are first fetched through ``store``). Objects already in the ledger
        are skipped. Bad lines go to the rejected table; the rest loads.
        """

    @abstractmethod
    def refresh_daily_pulls(self) -> RefreshResult:
        """Recompute the days of ``daily_pulls`` touched by pulls loaded since the last refresh."""

    @abstractmethod
    def refresh_repository_summary(self) -> RefreshResult:
        """Rebuild ``repository_pull_summary`` from the pull table."""

    @abstractmethod
    def check_figures(self) -> CheckFigures:
        """Figures for the asset checks."""

    @abstractmethod
    def row_count(self, table: str) -> int:
        """Rows in one table of the dataset."""

    @abstractmethod
    def column_schema(self, table: str) -> list[tuple[str, str]]:
        """(column name, type) pairs of one table, for materialization metadata."""

    @abstractmethod
    def drop_all(self) -> None:
        """Drop every table of the dataset (the first step of a rebuild from the landing zone)."""
