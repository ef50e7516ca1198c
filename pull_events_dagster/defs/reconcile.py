"""Reconciliation: landed objects the ledger lacks are found and loaded, and the load lag is checked.

The landing sensor is the fast path, but it only lists keys from where it got to, less the lateness window: an
object that becomes visible later than that (an upload that stalled, a receiver whose clock runs behind, an
object restored by hand) is never requested by it. Nor does it request an object again when its load failed:
Dagster retries the load (``retries.py``), and an object still unloaded once those retries are spent is left
here. The reconciliation pass is the safety net, so that no acknowledged event goes missing:

- the schedule ``reconcile_landing_schedule`` (every 15 minutes) requests a run of the ``reconcile_landing``
  job, unless one is still queued or running;
- that run is the loader (``load_landing_objects`` with ``LoadConfig(reconcile=True)``). In its one step, which
  holds the warehouse pool, it lists the day folders of today and the ``PULL_EVENTS_RECONCILE_DAYS`` UTC days
  before it (by key time: one ranged listing per type and day, never the whole bucket), asks the ledger which of
  those keys it holds (``Warehouse.loaded_object_keys``, in batches), reports the ``landed_objects_loaded``
  check on what it found, then loads the objects landed more than ``PULL_EVENTS_MAX_LOAD_LAG_S`` ago that the
  ledger lacks, through the same ``load_objects`` as every load. Younger ones are left to the sensor, which has
  them in flight; a later pass takes them if it did not. Loading an object twice is harmless (the ledger skips
  it), and the pool keeps the pass from writing beside a load.

Why the comparison runs inside a run and not in the schedule's evaluation: it reads the ledger, and a schedule
(like the sensor) must not open the warehouse, where a load may hold DuckDB's single writer lock for longer than
an evaluation may take. A run in the warehouse pool simply waits its turn like every load.

Why the check is evaluated before the load, in the same step: it measures what the normal path (sensor and load
runs) left undone, so it fails naming the objects older than the allowed lag that no load had reached, and the
pass then loads them; the next pass passes. If loading them fails, the failed check is already recorded. Run
alone (the check without the tables, e.g. from the UI) it compares and reports, and loads nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import dagster as dg

from pull_events.landing import LandedObject, LandingStore, key_committed_at
from pull_events.settings import Settings
from pull_events_dagster.warehouse import base

RECONCILE_JOB = "reconcile_landing"
RECONCILE_SCHEDULE = "reconcile_landing_schedule"
RECONCILE_CRON = "*/15 * * * *"
LOAD_LAG_CHECK = "landed_objects_loaded"
# The pull table's key (``assets.PULLS_KEY``), built here because the loader in ``assets.py`` imports this module.
PULLS_KEY = dg.AssetKey([base.DATASET, base.PULLS])
LOAD_LAG_CHECK_KEY = dg.AssetCheckKey(PULLS_KEY, LOAD_LAG_CHECK)
# Keys per ledger lookup: one query each, small enough for a query parameter on either warehouse.
LEDGER_BATCH = 1000
# Unloaded keys named in the check's metadata (the count covers them all).
NAMED_KEYS = 20
# Run monitoring fails a pass that outlives this, so a crashed one does not hold the warehouse pool forever.
RECONCILE_MAX_RUNTIME_SECONDS = 2 * 3600
_LIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class Unloaded:
    """A landed object the ledger lacks."""

    obj: LandedObject
    landed_at: datetime | None  # its key's time; None for a name the receiver did not write


@dataclass(frozen=True)
class LandingAudit:
    """One comparison of the landing zone's recent day folders with the ledger."""

    now: datetime
    days: list[date]  # oldest first
    compared: int  # objects listed in those days
    unloaded: list[Unloaded]  # oldest first

    def overdue(self, max_lag: timedelta) -> list[Unloaded]:
        """The unloaded objects landed more than ``max_lag`` ago (by their key's time)."""
        return [u for u in self.unloaded if u.landed_at is not None and self.now - u.landed_at > max_lag]

    def to_load(self, max_lag: timedelta) -> list[LandedObject]:
        """What a reconciliation pass loads: the overdue objects, and those whose name has no time."""
        return [u.obj for u in self.unloaded if u.landed_at is None or self.now - u.landed_at > max_lag]


def days_to_compare(now: datetime, reconcile_days: int) -> list[date]:
    """Today (UTC) and the ``reconcile_days`` days before it, oldest first."""
    today = now.date()
    return [today - timedelta(days=back) for back in range(reconcile_days, -1, -1)]


def audit_landing(
    store: LandingStore,
    warehouse: base.Warehouse,
    now: datetime,
    reconcile_days: int,
    batch_size: int = LEDGER_BATCH,
) -> LandingAudit:
    """List the recent day folders of every type and ask the ledger which objects it lacks.

    Cost: one ranged listing per type and day, and one ledger lookup per ``batch_size`` keys; memory holds one
    batch and the unloaded objects, never the whole listing.
    """
    days = days_to_compare(now, reconcile_days)
    types = store.event_type_dirs()
    compared = 0
    unloaded: list[Unloaded] = []
    for day in days:
        for type_dir in types:
            for batch in _chunks(store.list_day(type_dir, day), batch_size):
                compared += len(batch)
                loaded = warehouse.loaded_object_keys([o.key for o in batch])
                unloaded.extend(Unloaded(o, _landed_at(o.key)) for o in batch if o.key not in loaded)
    unloaded.sort(key=lambda u: (u.landed_at is not None, u.landed_at or now, u.obj.key))
    return LandingAudit(now=now, days=days, compared=compared, unloaded=unloaded)


def load_lag_check_spec(settings: Settings) -> dg.AssetCheckSpec:
    """The load-lag check on the pull table (evaluated by the loader, see the module docstring)."""
    pipeline = settings.pipeline
    return dg.AssetCheckSpec(
        LOAD_LAG_CHECK,
        asset=PULLS_KEY,
        description=(
            f"Every landing object of today and the {pipeline.reconcile_days} UTC days before (by its key's time) "
            f"that landed more than {pipeline.max_load_lag_seconds} s ago is in the ledger (loaded_objects). "
            f"Evaluated by each {RECONCILE_JOB} pass before it loads the ones missing; run alone, it loads nothing. "
            "Fails naming them: an unloaded object is an incident, a quiet registry is not."
        ),
    )


def load_lag_result(audit: LandingAudit, max_lag_seconds: int) -> dg.AssetCheckResult:
    """The ``landed_objects_loaded`` result: fails (ERROR) when an object older than the allowed lag is unloaded."""
    overdue = audit.overdue(timedelta(seconds=max_lag_seconds))
    lags = [(audit.now - u.landed_at).total_seconds() for u in overdue if u.landed_at is not None]
    return dg.AssetCheckResult(
        check_name=LOAD_LAG_CHECK,
        asset_key=PULLS_KEY,
        passed=not overdue,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{len(overdue)} landed objects older than {max_lag_seconds} s are not loaded" if overdue else None
        ),
        metadata={
            "unloaded_objects": len(overdue),
            "oldest_lag_seconds": round(max(lags, default=0.0), 1),
            "max_load_lag_seconds": max_lag_seconds,
            "unloaded_keys": dg.MetadataValue.md(_key_list(overdue, audit.now)),
            "objects_compared": audit.compared,
            "days_compared": f"{audit.days[0].isoformat()} to {audit.days[-1].isoformat()}",
            # Objects still within the allowed lag: normally in the sensor's runs; not a failure.
            "unloaded_within_lag": len(audit.unloaded) - len(overdue),
        },
    )


def build_reconcile_schedule() -> dg.ScheduleDefinition:
    """Requests a reconciliation pass every 15 minutes, unless the previous one is still queued or running."""

    @dg.schedule(
        name=RECONCILE_SCHEDULE,
        job_name=RECONCILE_JOB,
        cron_schedule=RECONCILE_CRON,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Every 15 minutes: compare the recent day folders of the landing zone with the ledger, report the "
            "load lag, and load the objects the sensor never requested."
        ),
    )
    def reconcile_landing_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        # Passes would only queue behind each other in the warehouse pool, each listing the same days again.
        live = context.instance.get_run_records(filters=dg.RunsFilter(job_name=RECONCILE_JOB, statuses=_LIVE), limit=1)
        if live:
            run = live[0].dagster_run
            return dg.SkipReason(f"the reconciliation run {run.run_id} is still {run.status.value}")
        return dg.RunRequest(tags={"dagster/max_runtime": str(RECONCILE_MAX_RUNTIME_SECONDS)})

    return reconcile_landing_schedule


def _key_list(overdue: Sequence[Unloaded], now: datetime) -> str:
    """The first unloaded keys as a Markdown list, each with when it landed and how long ago."""
    if not overdue:
        return "none"
    lines = []
    for u in overdue[:NAMED_KEYS]:
        landed = u.landed_at.isoformat() if u.landed_at else "unknown"
        lag = f"{(now - u.landed_at).total_seconds():,.0f} s ago" if u.landed_at else "age unknown"
        lines.append(f"- `{u.obj.key}` (landed {landed}, {lag})")
    if len(overdue) > NAMED_KEYS:
        lines.append(f"- ... and {len(overdue) - NAMED_KEYS} more")
    return "\n".join(lines)


def _landed_at(key: str) -> datetime | None:
    try:
        return key_committed_at(key)
    except ValueError:  # a name the receiver did not write
        return None


def _chunks(objects: Iterable[LandedObject], size: int) -> Iterable[list[LandedObject]]:
    chunk: list[LandedObject] = []
    for obj in objects:
        chunk.append(obj)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
