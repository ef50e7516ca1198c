"""The derived tables: ``daily_pulls``, one Dagster partition per UTC day, and the repository summary built from it.

A load reports the days its new pulls are dated on (``days_affected`` on the pull table's materialization,
late events included), and its own run recomputes one of them, its objects' day (``jobs.py``), with the summary
after it. Once that run has finished, ``daily_pulls_sensor`` turns the days it left (late events, a day whose step
failed) into runs of exactly those day partitions, with the summary in the same run. Each run recomputes its days
from those days' rows of the pull table (delete, then insert: idempotent) and the summary only for the
repositories whose figures changed. A user backfills any range of days from the UI in a single run; the summary
follows those backfills by its automation condition.
Nothing here reads the whole pull table: that is the scheduled audit's job (``checks.py``).
"""

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg

from pull_events.settings import Settings
from pull_events_dagster.defs.assets import (
    DAILY_PULLS_KEY,
    PULLS_KEY,
    SUMMARY_KEY,
    WAREHOUSE_POOL,
    WAREHOUSE_RUN_TAGS,
    TableMetadataSet,
    describe,
    table_metadata,
)
from pull_events_dagster.defs.markdown import daily_preview_metadata, summary_preview_metadata
from pull_events_dagster.defs.partitions import daily_partitions
from pull_events_dagster.defs.resources import WarehouseResource
from pull_events_dagster.defs.retries import LOAD_RETRY_POLICY, LOAD_RUN_RETRY_TAGS
from pull_events_dagster.warehouse import base

if TYPE_CHECKING:  # the type define_asset_job returns is not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

DAILY_SENSOR = "daily_pulls_sensor"
DERIVED_JOB = "refresh_derived_tables"
# How many pull-table materializations one tick reads: a backlog is worked through this many at a time.
MATERIALIZATIONS_PER_TICK = 200
# A run's partition range, as Dagster's own tags name it.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def build_derived_assets(settings: Settings, warehouse_kind: str) -> list[dg.AssetsDefinition]:
    """``daily_pulls`` (day-partitioned) and ``repository_pull_summary``."""
    partitions = daily_partitions(settings)

    @dg.asset(
        key=DAILY_PULLS_KEY,
        deps=[PULLS_KEY],
        partitions_def=partitions,
        # A range of days (a backfill from the UI) is one run, one transaction, one read of those days' rows.
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=LOAD_RETRY_POLICY,
        pool=WAREHOUSE_POOL,
        # A load run whose pulls are all dated on other days has nothing to recompute here (nor the summary after).
        output_required=False,
        **describe(base.DAILY_PULLS, warehouse_kind),
    )
    def daily_pulls(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> Iterator[dg.MaterializeResult]:
        """Recompute the run's days from those days' pulls, and the summary's state for them."""
        days = _partition_days(context.partition_time_window)
        loaded = _days_loaded_in_run(context.instance, context.run.run_id)
        if loaded is not None and not loaded & {day.isoformat() for day in days}:
            context.log.info("this run's load brought no pulls dated %s: nothing to recompute", days[0])
            return
        with warehouse.open() as wh:
            result = wh.refresh_daily_pulls(days)
            metadata = table_metadata(wh, base.DAILY_PULLS)
            # What the UI shows of the run: read from the run's days of daily_pulls only.
            preview = wh.daily_preview(days)
        context.log.info(
            "recomputed %d days (%s .. %s): %d rows; %d repositories marked for the summary",
            len(days),
            days[0],
            days[-1],
            sum(result.rows_per_day.values()),
            result.repositories_marked,
        )
        if len(days) == 1:  # one partition: its own row count (a range's counts are in rows_per_day)
            metadata |= dict(TableMetadataSet(partition_row_count=result.rows_per_day[days[0]]))
        yield dg.MaterializeResult(
            metadata={
                **metadata,
                "rows_per_day": dg.MetadataValue.json({day.isoformat(): n for day, n in result.rows_per_day.items()}),
                "repositories_marked": result.repositories_marked,
                **daily_preview_metadata(preview),
            }
        )

    @dg.asset(
        key=SUMMARY_KEY,
        deps=[DAILY_PULLS_KEY],
        # After any day partition changes (a sensor's run includes the summary; a backfill from the UI does not).
        # The condition ignores partitions never materialized: most days of the range have no pulls.
        automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
        retry_policy=LOAD_RETRY_POLICY,
        pool=WAREHOUSE_POOL,
        **describe(base.REPOSITORY_SUMMARY, warehouse_kind),
    )
    def repository_pull_summary(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        """Recompute the rows of the repositories whose days changed (and, once a day, of those whose windows moved)."""
        with warehouse.open() as wh:
            result = wh.refresh_repository_summary()
            metadata = table_metadata(wh, base.REPOSITORY_SUMMARY)
            preview = wh.summary_preview()
        context.log.info(
            "recomputed %d repositories%s",
            result.repositories_recomputed,
            " (the day turned: every repository with pulls in the time windows)" if result.day_turned else "",
        )
        return dg.MaterializeResult(
            metadata={
                **metadata,
                "repositories_recomputed": result.repositories_recomputed,
                "day_turned": result.day_turned,
                **summary_preview_metadata(preview),
            }
        )

    return [daily_pulls, repository_pull_summary]


def build_derived_job() -> "UnresolvedAssetJobDefinition":
    """Some day partitions of ``daily_pulls`` (its partitions are the job's), then the summary: what the daily sensor
    requests.

    Without the summary's audit (a scan of the whole pull table), which runs on its own schedule.
    """
    return dg.define_asset_job(
        DERIVED_JOB,
        selection=dg.AssetSelection.assets(DAILY_PULLS_KEY, SUMMARY_KEY).without_checks(),
        tags=WAREHOUSE_RUN_TAGS,
        description="Recompute some days of daily_pulls, then the summary rows of the repositories they changed.",
    )


def _partition_days(window: dg.TimeWindow) -> list[date]:
    first, end = window.start.date(), window.end.date()
    return [first + timedelta(days=offset) for offset in range((end - first).days)]


@dataclass(frozen=True)
class LoadDays:
    """The days one pull-table materialization touched, and where it is: its run, and its storage id."""

    run_id: str
    storage_id: int
    days: list[str]

    def dump(self) -> dict[str, object]:
        return {"run_id": self.run_id, "storage_id": self.storage_id, "days": self.days}


@dataclass
class DaysCursor:
    """The daily sensor's memory: the last pull-table materialization read, the loads read whose runs had not
    finished (their own run may still recompute their days), and days not yet partitions."""

    after_storage_id: int | None = None
    deferred: list[str] = field(default_factory=list)  # days later than the newest partition (a pull near midnight)
    waiting: list[LoadDays] = field(default_factory=list)  # at most one per load run in flight

    @classmethod
    def parse(cls, text: str | None) -> "DaysCursor":
        if not text:
            return cls()
        data = json.loads(text)
        waiting = [LoadDays(w["run_id"], int(w["storage_id"]), list(w["days"])) for w in data.get("waiting", [])]
        return cls(data.get("after_storage_id"), list(data.get("deferred", [])), waiting)

    def dump(self) -> str:
        return json.dumps(
            {
                "after_storage_id": self.after_storage_id,
                "deferred": sorted(self.deferred),
                "waiting": [load.dump() for load in self.waiting],
            }
        )


@dataclass(frozen=True)
class DaysPlan:
    """What one tick of the daily sensor decided."""

    cursor: DaysCursor
    ranges: list[tuple[str, str]]  # contiguous day partitions to recompute, first and last
    before_first_day: list[str]  # days earlier than the first partition: counted in no day (a check says so)


def plan_days(
    days: Iterable[str], deferred: Iterable[str], partition_keys: Sequence[str], cursor: DaysCursor
) -> DaysPlan:
    """Group the days to recompute into runs of contiguous partitions; keep days not yet partitions for later."""
    known = set(partition_keys)
    wanted = sorted(set(days) | set(deferred))
    ready = [day for day in wanted if day in known]
    later = [day for day in wanted if day not in known and (not partition_keys or day > partition_keys[-1])]
    early = [day for day in wanted if day not in known and day not in later]
    return DaysPlan(
        cursor=DaysCursor(cursor.after_storage_id, later, cursor.waiting),
        ranges=_contiguous(ready),
        before_first_day=early,
    )


def _contiguous(days: Sequence[str]) -> list[tuple[str, str]]:
    ranges: list[tuple[str, str]] = []
    for day in days:
        if ranges and date.fromisoformat(ranges[-1][1]) + timedelta(days=1) == date.fromisoformat(day):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def days_run_request(first: str, last: str, newest_load: int | None) -> dg.RunRequest:
    """A run of ``daily_pulls`` for the days ``first`` .. ``last`` and of the summary after it.

    A single day is its own partition, whose materialization then carries its exact row count; several
    contiguous days are one range in one run. Retried by Dagster like a load: the sensor has moved past these days.
    """
    # Keyed by the newest load behind the days, not by where the sensor's cursor is: a later load of the same days
    # that finishes on a tick that read nothing new must get a run of its own (Dagster skips a run key it has seen).
    run_key = f"days-{first}-{last}-load-{newest_load}"
    tags = {**WAREHOUSE_RUN_TAGS, **LOAD_RUN_RETRY_TAGS}
    if first == last:
        return dg.RunRequest(run_key=run_key, partition_key=first, tags=tags)
    return dg.RunRequest(run_key=run_key, tags={**tags, RANGE_START_TAG: first, RANGE_END_TAG: last})


def build_daily_sensor(settings: Settings) -> dg.SensorDefinition:
    """Requests runs of the day partitions each load touched (read from the pull table's materializations)."""
    partitions = daily_partitions(settings)

    @dg.sensor(
        name=DAILY_SENSOR,
        job_name=DERIVED_JOB,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Recomputes the day partitions of daily_pulls that each load of the pull table touched "
        "(days_affected on its materialization, late events included), and the repository summary after them.",
    )
    def daily_pulls_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = DaysCursor.parse(context.cursor)
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=PULLS_KEY, after_storage_id=cursor.after_storage_id),
            limit=MATERIALIZATIONS_PER_TICK,
            ascending=True,
        ).records
        loads = [*cursor.waiting, *_loads(records)]
        if records:
            cursor.after_storage_id = records[-1].storage_id
        finished = _finished_runs(context.instance, {load.run_id for load in loads})
        cursor.waiting = [load for load in loads if load.run_id not in finished]
        newest_load = _days_left(context.instance, [load for load in loads if load.run_id in finished])
        days = sorted(newest_load)
        now = datetime.now(UTC)  # the partitions are UTC days
        plan = plan_days(days, cursor.deferred, partitions.get_partition_keys(current_time=now), cursor)
        for day in plan.before_first_day:
            context.log.warning(
                "pulls dated %s, before the first day partition (PULL_EVENTS_FIRST_DAY=%s): no day counts them",
                day,
                settings.pipeline.first_day,
            )
        requests = [
            days_run_request(first, last, _newest_in(newest_load, first, last, cursor.after_storage_id))
            for first, last in plan.ranges
        ]
        context.log.info(
            "%d pull-table materializations read; recomputing %s; waiting for %s and for %d load runs to finish",
            len(records),
            ", ".join(f"{first}..{last}" for first, last in plan.ranges) or "no days",
            ", ".join(plan.cursor.deferred) or "no days",
            len(plan.cursor.waiting),
        )
        return dg.SensorResult(
            run_requests=requests,
            cursor=plan.cursor.dump(),
            skip_reason=None if requests else dg.SkipReason("no new days to recompute"),
        )

    return daily_pulls_sensor


def _days_loaded_in_run(instance: dg.DagsterInstance, run_id: str) -> set[str] | None:
    """The days the pulls loaded by this very run are dated on; None when the run loaded nothing (a run of the
    daily sensor, a backfill, or a retry of a load run whose load had succeeded: all of which recompute their days)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    loads = [record for record in records if record.asset_key == PULLS_KEY]
    if not loads:
        return None
    return {day for record in loads for day in _days_affected(record)}


def _loads(records: Iterable[dg.EventLogRecord]) -> Iterator[LoadDays]:
    for record in records:
        days = list(_days_affected(record))
        if days:
            yield LoadDays(record.run_id, record.storage_id, days)


def _finished_runs(instance: dg.DagsterInstance, run_ids: set[str]) -> set[str]:
    """Which of the runs have finished: their own steps will not recompute a day any more. A run the instance no
    longer has (deleted) counts as finished."""
    if not run_ids:
        return set()
    records = instance.get_run_records(dg.RunsFilter(run_ids=sorted(run_ids)))
    live = {record.dagster_run.run_id for record in records if not record.dagster_run.is_finished}
    return run_ids - live


def _days_left(instance: dg.DagsterInstance, loads: Sequence[LoadDays]) -> dict[str, int]:
    """The days of finished loads that no run has recomputed since, each with the storage id of its newest load: a
    day partition of daily_pulls materialized after the load's materialization read the load's rows (a load commits
    before it reports, and the warehouse pool keeps runs from overlapping), whichever run did it."""
    newest_load: dict[str, int] = {}
    for load in loads:
        for day in load.days:
            newest_load[day] = max(newest_load.get(day, 0), load.storage_id)
    return {
        day: storage_id
        for day, storage_id in sorted(newest_load.items())
        if not instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=DAILY_PULLS_KEY, asset_partitions=[day], after_storage_id=storage_id),
            limit=1,
        ).records
    }


def _newest_in(newest_load: dict[str, int], first: str, last: str, default: int | None) -> int | None:
    """The newest load behind the days ``first`` .. ``last`` (``default`` for days that waited for their partition)."""
    return max((at for day, at in newest_load.items() if first <= day <= last), default=default)


def _days_affected(record: dg.EventLogRecord) -> Iterator[str]:
    """The days a load of the pull table touched; none for a rebuild, which computed its derived tables itself."""
    materialization = record.asset_materialization
    if materialization is None:
        return
    metadata = materialization.metadata
    rebuild = metadata.get("rebuild")
    if rebuild is not None and rebuild.value:
        return
    days = metadata.get("days_affected")
    if days is not None:
        yield from (str(day) for day in days.value)  # type: ignore[union-attr]
