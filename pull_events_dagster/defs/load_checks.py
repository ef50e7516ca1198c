"""Checks on what one load wrote, evaluated in the load's own run and returned with its materializations.

They judge the run's rows against the tables, reading only the day partitions the run touched, so their cost
does not grow with the tables' history. The same questions over the whole tables are the scheduled audits
(``checks.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Set

import dagster as dg

from pull_events.settings import Settings
from pull_events_dagster.defs.markdown import table
from pull_events_dagster.warehouse import base

LOADED_UNIQUE = "loaded_rows_unique"
LOADED_COMPLETE = "loaded_rows_complete"
LOADED_DATED = "loaded_pulls_dated_within_partitions"


def load_check_specs(settings: Settings, pulls_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    """The checks every load run evaluates on its own rows."""
    return [
        dg.AssetCheckSpec(
            LOADED_UNIQUE,
            asset=pulls_key,
            description="Exactly once: no (event_source, event_id) this run wrote has another row in the days it "
            "touched (pulls) or in the events table.",
        ),
        dg.AssetCheckSpec(
            LOADED_COMPLETE,
            asset=pulls_key,
            description="Every pull row this run wrote has event_id, event_source, repository, body.when and day.",
        ),
        dg.AssetCheckSpec(
            LOADED_DATED,
            asset=pulls_key,
            description=f"Every pull this run wrote is dated on or after the first day partition of daily_pulls "
            f"({settings.pipeline.first_day}, PULL_EVENTS_FIRST_DAY); earlier ones are counted in no day.",
        ),
    ]


def load_check_results(
    total: base.LoadResult, settings: Settings, pulls_key: dg.AssetKey, selected: Set[dg.AssetCheckKey]
) -> Iterator[dg.AssetCheckResult]:
    """The results of the selected load checks for a run that wrote ``total``."""
    first_day = settings.pipeline.first_day
    early = [day for day in total.affected_days if day < first_day]
    # Objects of the run that could not be read: none of their lines is among the rows judged here.
    quarantined = dg.MetadataValue.md(table(("object", "reason"), sorted(total.quarantined.items())))
    results = [
        dg.AssetCheckResult(
            check_name=LOADED_UNIQUE,
            asset_key=pulls_key,
            passed=total.loaded_duplicate_keys == 0,
            metadata={
                "duplicate_keys": total.loaded_duplicate_keys,
                "rows_written": _rows(total),
                "objects_quarantined": quarantined,
            },
        ),
        dg.AssetCheckResult(
            check_name=LOADED_COMPLETE,
            asset_key=pulls_key,
            passed=total.loaded_missing_required == 0,
            metadata={
                "rows_missing_required_fields": total.loaded_missing_required,
                "rows_written": _rows(total),
                "objects_quarantined": quarantined,
            },
        ),
        dg.AssetCheckResult(
            check_name=LOADED_DATED,
            asset_key=pulls_key,
            passed=not early,
            # The rows are kept and every other figure counts them: a source to look at, not a halt.
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "days_before_first_day": [day.isoformat() for day in early],
                "days_before_first_day_table": dg.MetadataValue.md(
                    table(("day counted in no partition",), ((day.isoformat(),) for day in early))
                ),
                "first_day": first_day.isoformat(),
            },
        ),
    ]
    for result in results:
        if dg.AssetCheckKey(pulls_key, result.check_name) in selected:
            yield result


def _rows(total: base.LoadResult) -> int:
    return total.pulls_inserted + total.events_inserted
