"""The warehouse boundary: what the pipeline needs from DuckDB or BigQuery.

Two small implementations (``duckdb.py``, ``bigquery.py``) sit behind this one interface; the Dagster
assets and checks only ever talk to it. Every method is idempotent: running it twice, or after a crash
half-way, leaves the same tables as running it once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, get_origin, get_type_hints

from pull_events.landing import LandedObject, LandingStore
from pull_events.settings import MAX_TOKEN_LIFETIME_SECONDS

log = logging.getLogger(__name__)

DATASET = "cloudevents_pull_event_recorder"
PULL_TYPE = "dev.chainguard.registry.pull.v1"

# Table names inside DATASET (a DuckDB schema or a BigQuery dataset).
PULLS = "dev_chainguard_registry_pull_v1"
EVENTS = "events"  # every event type other than pulls: envelope columns + data as JSON
REJECTED = "rejected_events"  # lines that could not be loaded, with the reason
LOADED_OBJECTS = "loaded_objects"  # ledger: one row per landing object loaded (exactly-once per object)
# How far back (by received_at) a load looks for an earlier event carrying the same token. It must exceed the
# longest token lifetime the receivers accept (Chainguard's tokens live minutes; receivers bound them to hours).
TOKEN_REPLAY_WINDOW = timedelta(seconds=MAX_TOKEN_LIFETIME_SECONDS)
TOKEN_REPLAYED = "token_replayed"
QUARANTINED = "quarantined_objects"  # landing objects that could not be read at all, until one load reads them
DAILY_PULLS = "daily_pulls"
REPOSITORY_SUMMARY = "repository_pull_summary"
# The repository summary's incremental state (see schema.py), written with daily_pulls.
DAILY_VALUES = "daily_repository_values"
REPOSITORY_VALUES = "repository_values"
SUMMARY_PENDING = "summary_pending"
# The tables the derived layer's SQL files name, by their ``{{placeholder}}`` (warehouse/sql/<dialect>/*.sql).
SQL_TABLES = {
    "pulls": PULLS,
    "events": EVENTS,
    "daily": DAILY_PULLS,
    "daily_values": DAILY_VALUES,
    "repository_values": REPOSITORY_VALUES,
    "pending": SUMMARY_PENDING,
    "summary": REPOSITORY_SUMMARY,
}
# Tables of earlier versions that nothing reads any more; ensure_tables drops them.
RETIRED_TABLES = ("refresh_state",)

# A rebuild fills the schema/dataset ``<name>__rebuild`` and then swaps its tables in; it is dropped afterwards.
SHADOW_SUFFIX = "__rebuild"
# How far past the warehouse's clock a body.when may be and still count (PULL_EVENTS_FUTURE_TOLERANCE_S).
FUTURE_TOLERANCE = timedelta(hours=1)
# How many of the pulls dated beyond that the check names.
FUTURE_DATED_EXAMPLES = 5
# How many of the repositories whose summary row differs from a full recompute the audit names.
SUMMARY_AUDIT_EXAMPLES = 5
# The summary's longest time window, in days (image_pulls_last_30d).
LONGEST_WINDOW_DAYS = 30
# How many rejection reasons the rejected-rate audit names (the most frequent).
REJECTED_REASON_EXAMPLES = 10
# How many repositories a materialization's preview names.
PREVIEW_REPOSITORIES = 5


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
    # The run's own rows, judged against the table in their day partitions (the per-load checks):
    loaded_duplicate_keys: int = 0  # (source, id) of a row this load wrote that has more than one row
    loaded_missing_required: int = 0  # rows this load wrote lacking id, source, repository or when
    # Objects that could not be read at all (gone, or not readable): recorded in QUARANTINED, not in the ledger.
    quarantined: dict[str, str] = field(default_factory=dict)  # key -> reason


def combined(results: Sequence[LoadResult]) -> LoadResult:
    """The results of several loads as one: counts added, days and quarantined objects merged."""
    merged: dict[str, object] = {}
    for name, hint in get_type_hints(LoadResult).items():
        values = [getattr(result, name) for result in results]
        kind = get_origin(hint) or hint
        if kind is int:
            merged[name] = sum(values)
        elif kind is list:
            merged[name] = sorted({item for value in values for item in value})
        elif kind is dict:
            merged[name] = {key: item for value in values for key, item in value.items()}
        else:
            raise TypeError(f"LoadResult.{name}: no rule to combine a {hint}")
    return LoadResult(**merged)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DailyRefresh:
    """What recomputing some days of ``daily_pulls`` (and the summary's state for them) did."""

    days: list[date]
    rows_per_day: dict[date, int]  # daily_pulls rows of each day recomputed (0 for a day without pulls)
    repositories_marked: int  # repositories whose figures changed, for the summary to recompute
    table_rows: int


@dataclass(frozen=True)
class SummaryRefresh:
    """What a refresh of ``repository_pull_summary`` recomputed."""

    repositories_recomputed: int  # marked by daily refreshes, plus the time windows' when the day turned
    day_turned: bool  # the clock's day (or horizon day) changed since the last refresh: windows moved
    table_rows: int
    computed_at: datetime | None


@dataclass(frozen=True)
class RepositoryPulls:
    """One repository's figures in a preview."""

    repository: str
    image_pulls: int
    events: int
    errors: int


@dataclass(frozen=True)
class DayTotals:
    """One day's figures over every repository, from its ``daily_pulls`` rows."""

    day: date
    image_pulls: int
    events: int
    errors: int
    repositories: int  # repositories with pulls that day


@dataclass(frozen=True)
class DailyPreview:
    """What some days of ``daily_pulls`` hold, for a materialization's metadata: read from those days' rows only."""

    days: list[DayTotals]  # every day asked for, in order; zeros for a day without pulls
    top_repositories: list[RepositoryPulls]  # over those days, most image pulls first (then by name)


@dataclass(frozen=True)
class SummaryPreview:
    """What ``repository_pull_summary`` holds, for its materialization's metadata (one row per repository read)."""

    repositories: int
    image_pulls: int
    events: int
    errors: int
    top_repositories: list[RepositoryPulls]  # most image pulls over all days first (then by name)


def ranked_repositories(rows: Iterable[Sequence[Any]]) -> list[RepositoryPulls]:
    """A preview's ranking from its query's rows: (repository, image pulls, events, errors)."""
    return [RepositoryPulls(str(repository), *(int(n) for n in figures)) for repository, *figures in rows]


def daily_preview_from_rows(
    days: Sequence[date], totals: Iterable[Sequence[Any]], ranked: Iterable[Sequence[Any]]
) -> DailyPreview:
    """A preview from its two queries' rows: every day asked for (zeros for a day without rows), and the ranking."""
    found = {row[0]: row for row in totals}
    return DailyPreview(
        days=[
            DayTotals(day, *(int(n) for n in found[day][1:])) if day in found else DayTotals(day, 0, 0, 0, 0)
            for day in sorted(set(days))
        ],
        top_repositories=ranked_repositories(ranked),
    )


def error_rate_pct(errors: int, events: int) -> float:
    """Errors as a percentage of events, rounded to 2 decimals; 0 without events (nothing failed)."""
    return round(100 * errors / events, 2) if events else 0.0


@dataclass(frozen=True)
class SummaryAudit:
    """``repository_pull_summary`` compared with a full recompute from the pull table, as of its last refresh."""

    rows_compared: int
    rows_differing: int  # repositories whose row differs (or exists on one side only)
    examples: list[str] = field(default_factory=list)  # a few of those repositories
    as_of: datetime | None = None  # the clock both sides used: the table's latest computed_at


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
    # Pull rows dated (body.when) beyond the warehouse's clock plus the future tolerance, and a few of them.
    future_dated_pulls: int = 0
    future_dated_examples: list[FutureDatedPull] = field(default_factory=list)
    # The most frequent reasons in the rejected table, with their lines, most first (then by reason).
    rejected_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FutureDatedPull:
    """A pull row whose body.when is implausibly far ahead of the warehouse's clock."""

    event_source: str
    event_id: str
    repository: str
    when: datetime  # body.when, UTC civil time


@dataclass(frozen=True)
class SummaryWindow:
    """The days a summary refresh counts in its time windows, and whether they moved since the last refresh."""

    today: date  # the UTC day of the refresh's clock (computed_at)
    horizon_day: date  # the UTC day of the clock plus the future tolerance: later days count in no window
    day_turned: bool  # today or the horizon day differs from the last refresh's: every window moved
    # When the day turned: the days whose repositories are recomputed (the old and new windows, every day that
    # came within the horizon since).
    first: date
    last: date

    def parameters(self) -> dict[str, object]:
        return {
            "today": self.today,
            "horizon_day": self.horizon_day,
            "day_turned": self.day_turned,
            "window_first": self.first,
            "window_last": self.last,
        }


def summary_window(clock: datetime, last_refresh: datetime | None, tolerance: timedelta) -> SummaryWindow:
    """The windows of a refresh at ``clock`` after one at ``last_refresh`` (the summary's latest computed_at)."""
    clock = clock.astimezone(UTC)
    today, horizon_day = clock.date(), (clock + tolerance).date()
    if last_refresh is None:  # an empty summary: no row has windows to move
        return SummaryWindow(today, horizon_day, False, today, horizon_day)
    last_refresh = last_refresh.astimezone(UTC)
    last_today, last_horizon = last_refresh.date(), (last_refresh + tolerance).date()
    return SummaryWindow(
        today=today,
        horizon_day=horizon_day,
        day_turned=(last_today, last_horizon) != (today, horizon_day),
        first=min(last_today, today) - timedelta(days=LONGEST_WINDOW_DAYS - 1),
        last=max(last_horizon, horizon_day),
    )


class RebuildIncomplete(RuntimeError):
    """A rebuild could not read objects whose rows the current tables hold: swapping it in would lose them."""


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
    def pull_days(self) -> list[date]:
        """Every day the pull table has pulls on (a scan of the whole table: for rebuilds and backfills only)."""

    @abstractmethod
    def refresh_daily_pulls(self, days: Sequence[date]) -> DailyRefresh:
        """Recompute ``days`` of ``daily_pulls`` and of the summary's state from the pull table, in one transaction.

        Delete-then-insert per day: idempotent, and reading only those days' partitions of the pull table. The
        repositories whose figures changed are marked for ``refresh_repository_summary``.
        """

    @abstractmethod
    def refresh_repository_summary(self) -> SummaryRefresh:
        """Recompute the summary rows of the repositories marked by daily refreshes, from the daily state.

        Time windows are whole UTC days counted back from the warehouse's clock (``computed_at``); when its
        day has turned since the last refresh, every repository with pulls in the old or new windows is
        recomputed too. Pulls dated after the horizon day (the day of the clock plus the future tolerance)
        count in no time-based figure (the checks flag them).
        """

    @abstractmethod
    def daily_preview(self, days: Sequence[date], top: int = PREVIEW_REPOSITORIES) -> DailyPreview:
        """Per-day totals of ``days`` and their ``top`` repositories by image pulls, from those days' ``daily_pulls``
        rows only (never the pull table): the cost of a run's preview does not grow with history."""

    @abstractmethod
    def summary_preview(self, top: int = PREVIEW_REPOSITORIES) -> SummaryPreview:
        """The summary's totals and its ``top`` repositories by image pulls (one row per repository: no pull table)."""

    @abstractmethod
    def summary_audit(self) -> SummaryAudit:
        """Compare the summary with a recompute from the whole pull table (a scan: for the scheduled audit)."""

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
        """Drop every table of the dataset (a rebuild does not: see ``rebuild``)."""

    # -- a rebuild from the landing zone: filled beside the tables, swapped in only once complete --------------

    @abstractmethod
    def shadow(self) -> Warehouse:
        """This warehouse on the schema/dataset ``<name>__rebuild``, emptied first of a failed rebuild's leftovers."""

    @abstractmethod
    def swap_in(self, shadow: Warehouse) -> None:
        """Replace every table's rows by ``shadow``'s in one transaction (creating missing tables): all or nothing."""

    @abstractmethod
    def drop_shadow(self) -> None:
        """Drop the ``<name>__rebuild`` schema/dataset and everything in it, if there is one."""

    def rebuild(
        self, store: LandingStore, objects: Sequence[LandedObject], run_id: str, batch_size: int
    ) -> tuple[LoadResult, DailyRefresh]:
        """Rebuild every table from ``objects``, leaving the current tables as they are until the new ones are complete.

        The objects are loaded ``batch_size`` at a time into a shadow copy, whose derived tables are then computed;
        only then does one transaction replace every table's rows by the shadow's. A failure before that leaves
        the current tables untouched. The shadow is dropped afterwards (or, if that fails too, by the next rebuild).
        """
        shadow = self.shadow()
        try:
            shadow.ensure_tables()
            total = combined(
                [
                    shadow.load_objects(store, objects[start : start + batch_size], run_id)
                    for start in range(0, len(objects), batch_size)
                ]
            )
            # An object quarantined now but loaded before holds rows that the new tables would lack.
            lost = sorted(self.loaded_object_keys(sorted(total.quarantined)))
            if lost:
                raise RebuildIncomplete(
                    f"{len(lost)} landing objects whose rows the tables hold could not be read, e.g. {lost[0]} "
                    f"({total.quarantined[lost[0]]}); the tables are left as they were"
                )
            daily = shadow.refresh_daily_pulls(shadow.pull_days())
            shadow.refresh_repository_summary()
            self.swap_in(shadow)
        finally:
            try:
                self.drop_shadow()
            except Exception:
                # The rebuild's own outcome matters more; the next rebuild drops the leftover first.
                log.warning("could not drop the rebuild's shadow copy", exc_info=True)
        return total, daily
