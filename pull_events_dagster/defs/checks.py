"""Whole-table audits of the warehouse, judged from one set of figures (``Warehouse.check_figures``) and from a
recompute of the repository summary from the pull table (``Warehouse.summary_audit``).

They scan whole tables, so they run on a schedule (``PULL_EVENTS_AUDIT_CRON``, daily by default) and from the UI,
never in a load: each load judges its own rows (``load_checks.py``).
"""

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import dagster as dg

from pull_events.settings import Settings
from pull_events_dagster.defs.assets import PULLS_KEY, REJECTED_KEY, SUMMARY_KEY, WAREHOUSE_POOL, WAREHOUSE_RUN_TAGS
from pull_events_dagster.defs.markdown import table
from pull_events_dagster.defs.resources import WarehouseResource
from pull_events_dagster.warehouse.base import FutureDatedPull

if TYPE_CHECKING:  # the type define_asset_job returns is not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

UNIQUE = "source_id_unique"
REQUIRED = "required_fields_present"
RECONCILED = "landed_lines_reconciled"
REJECTED_RATE = "rejected_rate_below_threshold"
RAW_EVENT_RATE = "fields_without_columns_rare"
FUTURE_DATED = "no_pulls_dated_in_future"
SUMMARY_MATCHES = "summary_matches_pull_table"
AUDIT_JOB = "warehouse_audit"
AUDIT_SCHEDULE = "warehouse_audit_schedule"
AUDIT_CHECK_KEYS = (
    *(dg.AssetCheckKey(PULLS_KEY, name) for name in (UNIQUE, REQUIRED, RECONCILED, RAW_EVENT_RATE, FUTURE_DATED)),
    dg.AssetCheckKey(REJECTED_KEY, REJECTED_RATE),
    dg.AssetCheckKey(SUMMARY_KEY, SUMMARY_MATCHES),
)
AUDITS = dg.AssetSelection.checks(*AUDIT_CHECK_KEYS)


def build_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    """The warehouse checks, with the rejected-line and raw_event rate thresholds from the settings."""
    threshold = settings.pipeline.rejected_rate_threshold
    raw_threshold = settings.pipeline.raw_event_rate_threshold
    future_tolerance = settings.pipeline.future_tolerance_seconds

    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(
                UNIQUE,
                asset=PULLS_KEY,
                description="Exactly once: no (event_source, event_id) has more than one row (pulls and events).",
            ),
            dg.AssetCheckSpec(
                REQUIRED,
                asset=PULLS_KEY,
                description="Every pull row has event_id, event_source, body.repository and body.when.",
            ),
            dg.AssetCheckSpec(
                RECONCILED,
                asset=PULLS_KEY,
                description="Every line of every loaded object is accounted for: loaded, a duplicate, or rejected.",
            ),
            dg.AssetCheckSpec(
                REJECTED_RATE,
                asset=REJECTED_KEY,
                description=f"Rejected lines are at most {threshold:.2%} of all landed lines.",
            ),
            dg.AssetCheckSpec(
                RAW_EVENT_RATE,
                asset=PULLS_KEY,
                description=(
                    f"At most {raw_threshold:.0%} of pull rows keep raw_event, i.e. carry fields no column holds. "
                    "More means Chainguard sends a field routinely that deserves a column (see its metadata)."
                ),
            ),
            dg.AssetCheckSpec(
                FUTURE_DATED,
                asset=PULLS_KEY,
                description=(
                    f"No pull is dated (body.when) more than {future_tolerance} s after the warehouse's clock. "
                    "Such pulls count in no time window of the repository summary; the metadata names a few."
                ),
            ),
        ],
        pool=WAREHOUSE_POOL,
    )
    def warehouse_checks(warehouse: WarehouseResource) -> Iterable[dg.AssetCheckResult]:
        with warehouse.open() as wh:
            figures = wh.check_figures()
        yield dg.AssetCheckResult(
            check_name=UNIQUE,
            asset_key=PULLS_KEY,
            passed=figures.duplicate_keys == 0,
            metadata={"duplicate_keys": figures.duplicate_keys},
        )
        yield dg.AssetCheckResult(
            check_name=REQUIRED,
            asset_key=PULLS_KEY,
            passed=figures.missing_required == 0,
            metadata={"rows_missing_required_fields": figures.missing_required},
        )
        yield dg.AssetCheckResult(
            check_name=RECONCILED,
            asset_key=PULLS_KEY,
            passed=figures.landed_lines == figures.accounted_lines,
            metadata={"landed_lines": figures.landed_lines, "accounted_lines": figures.accounted_lines},
        )
        rate = figures.rejected_lines / figures.total_lines if figures.total_lines else 0.0
        yield dg.AssetCheckResult(
            check_name=REJECTED_RATE,
            asset_key=REJECTED_KEY,
            passed=rate <= threshold,
            # Rejected lines are kept and the rest loads: a high rate needs a look, not a halt.
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "rejected_lines": figures.rejected_lines,
                "total_lines": figures.total_lines,
                "rejected_rate": rate,
                "threshold": threshold,
                # Which rules the lines broke, most frequent first: what to look at when the rate is high.
                "top_reasons": dg.MetadataValue.md(
                    table(("reason", "lines"), sorted(figures.rejected_reasons.items(), key=lambda r: (-r[1], r[0])))
                ),
            },
        )
        raw_rate = figures.rows_with_raw_event / figures.pull_rows if figures.pull_rows else 0.0
        yield dg.AssetCheckResult(
            check_name=RAW_EVENT_RATE,
            asset_key=PULLS_KEY,
            passed=raw_rate <= raw_threshold,
            # Nothing is lost (the fields are in raw_event): a schema to extend, not a halt.
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "rows_with_raw_event": figures.rows_with_raw_event,
                "pull_rows": figures.pull_rows,
                "raw_event_rate": raw_rate,
                "threshold": raw_threshold,
                "keys_without_column": dg.MetadataValue.json(figures.keys_without_column),
                "keys_without_column_table": dg.MetadataValue.md(
                    table(("key", "rows"), figures.keys_without_column.items())
                ),
            },
        )
        yield dg.AssetCheckResult(
            check_name=FUTURE_DATED,
            asset_key=PULLS_KEY,
            passed=figures.future_dated_pulls == 0,
            # The rows stay (they are what Chainguard sent) and no one's windows move: a source to look at.
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "future_dated_pulls": figures.future_dated_pulls,
                "tolerance_seconds": future_tolerance,
                "examples": dg.MetadataValue.md(_future_dated_table(figures.future_dated_examples)),
            },
        )

    @dg.asset_check(
        asset=SUMMARY_KEY,
        name=SUMMARY_MATCHES,
        description=(
            "The summary, kept incrementally from daily_pulls and the running sets of actors, clients and tags, "
            "equals the same figures recomputed from the whole pull table as of its last refresh."
        ),
        pool=WAREHOUSE_POOL,
    )
    def summary_matches_pull_table(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.open() as wh:
            audit = wh.summary_audit()
        return dg.AssetCheckResult(
            passed=audit.rows_differing == 0,
            metadata={
                "repositories_compared": audit.rows_compared,
                "repositories_differing": audit.rows_differing,
                "examples": dg.MetadataValue.md(table(("repository differing",), ((name,) for name in audit.examples))),
                "as_of": audit.as_of.isoformat() if audit.as_of else "-",
            },
        )

    return [warehouse_checks, summary_matches_pull_table]


def build_audit_job() -> "UnresolvedAssetJobDefinition":
    """The whole-table audits alone: no table changes."""
    return dg.define_asset_job(
        AUDIT_JOB,
        selection=AUDITS,
        tags=WAREHOUSE_RUN_TAGS,
        description="Audit whole tables: uniqueness, required fields, line accounting, rates, future-dated pulls, "
        "and the summary against a recompute from the pull table.",
    )


def build_audit_schedule(settings: Settings) -> dg.ScheduleDefinition:
    """Runs the audits at ``PULL_EVENTS_AUDIT_CRON`` (UTC)."""
    return dg.ScheduleDefinition(
        name=AUDIT_SCHEDULE,
        job_name=AUDIT_JOB,
        cron_schedule=settings.pipeline.audit_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="The whole-table audits, which loads never run (each load checks its own rows).",
    )


def _future_dated_table(examples: Sequence[FutureDatedPull]) -> str:
    """The future-dated pulls named by a check, as a Markdown table."""
    return table(
        ("event_source", "event_id", "repository", "body.when"),
        ((e.event_source, e.event_id, e.repository, e.when.isoformat()) for e in examples),
    )
