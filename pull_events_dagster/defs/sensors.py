"""Sensors: new landing objects -> load runs; updated pull table -> derived-table refreshes.

The landing sensor never lists the landing zone's history (except once, on its very first tick, to catch
up): each tick lists objects whose key time falls in the last ``PULL_EVENTS_LATENESS_S`` seconds, so its
cost grows with the objects in that window, not with everything ever landed. Its cursor (JSON) keeps

- ``seen``: keys already requested that are still inside the window (older ones are pruned: they can no
  longer be listed), so an object that lands late or out of name order is still noticed exactly once;
- ``in_flight``: batch id -> the objects of a requested run. Each tick looks the batches' runs up by the
  ``pull_events/batch`` tag: success -> done; failure or cancellation -> the objects are requested again
  (split in halves, to isolate an object that keeps failing, after a growing pause); still queued or
  running -> left alone, so no object is ever in two live runs;
- ``retries``: failed batches waiting for their pause to end.

It reads only the landing zone and the Dagster instance: never the warehouse, which a load may hold.
"""

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from pull_events.landing import LandedObject, LandingStore, key_committed_at
from pull_events.settings import Settings
from pull_events_dagster.defs.assets import DERIVED_KEYS, LOADER, WAREHOUSE_RUN_TAGS
from pull_events_dagster.defs.resources import LandingResource

LANDING_SENSOR = "landing_objects_sensor"
AUTOMATION_SENSOR = "derived_tables_automation"
BATCH_TAG = "pull_events/batch"
ATTEMPT_TAG = "pull_events/attempt"
# Run monitoring fails a load run that outlives this (a crashed worker leaves it "started" forever with the
# default launcher), which hands its objects back to the sensor.
LOAD_MAX_RUNTIME_SECONDS = 2 * 3600
CURSOR_VERSION = 1
RETRY_PAUSE_SECONDS = 30.0
MAX_RETRY_PAUSE_SECONDS = 1800.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ACTIVE = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.MANAGED,
    dg.DagsterRunStatus.CANCELING,
}


@dataclass
class Batch:
    """Objects requested together in one load run."""

    keys: list[str]
    sizes: list[int]
    attempt: int = 1
    not_before: float = 0.0  # for a failed batch waiting to be retried: epoch seconds

    def to_json(self) -> dict:
        data: dict = {"keys": self.keys, "sizes": self.sizes, "attempt": self.attempt}
        if self.not_before:
            data["not_before"] = self.not_before
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> "Batch":
        return cls(list(data["keys"]), list(data["sizes"]), int(data["attempt"]), float(data.get("not_before", 0)))


@dataclass
class LandingCursor:
    """The landing sensor's memory between ticks."""

    seen: set[str] = field(default_factory=set)
    in_flight: dict[str, Batch] = field(default_factory=dict)
    retries: list[Batch] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> "LandingCursor | None":
        """The cursor stored by an earlier tick; ``None`` before the first tick."""
        if not text:
            return None
        data = json.loads(text)
        if data.get("version") != CURSOR_VERSION:
            raise ValueError(f"unknown landing sensor cursor version {data.get('version')!r}")
        return cls(
            seen=set(data["seen"]),
            in_flight={bid: Batch.from_json(b) for bid, b in data["in_flight"].items()},
            retries=[Batch.from_json(b) for b in data["retries"]],
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "version": CURSOR_VERSION,
                "seen": sorted(self.seen),
                "in_flight": {bid: b.to_json() for bid, b in sorted(self.in_flight.items())},
                "retries": [b.to_json() for b in self.retries],
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class RequestedBatch:
    """A load run to request."""

    batch_id: str
    batch: Batch

    def run_request(self) -> dg.RunRequest:
        objects = [{"key": k, "size": s} for k, s in zip(self.batch.keys, self.batch.sizes, strict=True)]
        return dg.RunRequest(
            run_key=self.batch_id,  # Dagster never starts two runs with one key for this sensor
            run_config={"ops": {LOADER: {"config": {"objects": objects}}}},
            tags={
                **WAREHOUSE_RUN_TAGS,
                BATCH_TAG: self.batch_id,
                ATTEMPT_TAG: str(self.batch.attempt),
                "dagster/max_runtime": str(LOAD_MAX_RUNTIME_SECONDS),
            },
        )


@dataclass(frozen=True)
class TickPlan:
    """What one tick decided."""

    cursor: LandingCursor
    requests: list[RequestedBatch]
    listed: int  # objects the listing returned
    new_objects: int
    finished_batches: int
    failed_batches: int


def plan_tick(
    cursor: LandingCursor | None,
    store: LandingStore,
    run_statuses: Mapping[str, Sequence[dg.DagsterRunStatus]],
    now: datetime,
    lateness: timedelta,
    max_objects_per_run: int,
) -> TickPlan:
    """Decide one tick: settle in-flight batches by their runs' statuses, list the window, batch what is new."""
    first_tick = cursor is None
    state = cursor or LandingCursor()
    window_start = now - lateness
    requests: list[RequestedBatch] = []
    finished = failed = 0

    for batch_id, batch in list(state.in_flight.items()):
        statuses = run_statuses.get(batch_id, ())
        if dg.DagsterRunStatus.SUCCESS in statuses:
            del state.in_flight[batch_id]
            finished += 1
        elif any(status in _ACTIVE for status in statuses):
            continue
        elif statuses:  # every run of the batch failed or was canceled
            del state.in_flight[batch_id]
            failed += 1
            pause = min(RETRY_PAUSE_SECONDS * 2 ** (batch.attempt - 1), MAX_RETRY_PAUSE_SECONDS)
            for part in _halves(batch):
                state.retries.append(Batch(part.keys, part.sizes, batch.attempt + 1, now.timestamp() + pause))
        else:
            # Requested but no run exists (the tick that asked was cut short, or the run was deleted):
            # ask again under the same run key, which Dagster ignores if the run does exist.
            requests.append(RequestedBatch(batch_id, batch))

    waiting = []
    for batch in state.retries:
        if batch.not_before <= now.timestamp():
            requests.append(_request(state, Batch(batch.keys, batch.sizes, batch.attempt), now))
        else:
            waiting.append(batch)
    state.retries = waiting

    # The first tick catches up with everything already landed; later ticks list only the window.
    listed_keys: set[str] = set()
    new: list[LandedObject] = []
    for obj in store.list_since(_EPOCH if first_tick else window_start):
        listed_keys.add(obj.key)
        if obj.key not in state.seen:
            new.append(obj)
    new.sort(key=lambda o: o.key)
    for start in range(0, len(new), max_objects_per_run):
        group = new[start : start + max_objects_per_run]
        state.seen.update(o.key for o in group)
        requests.append(_request(state, Batch([o.key for o in group], [o.size for o in group]), now))

    state.seen = {key for key in state.seen if _still_listable(key, window_start, listed_keys)}
    return TickPlan(state, requests, len(listed_keys), len(new), finished, failed)


def _still_listable(key: str, window_start: datetime, listed_keys: set[str]) -> bool:
    try:
        return key_committed_at(key) >= window_start
    except ValueError:  # a name the receiver did not write: remember it while it is still listed
        return key in listed_keys


def _request(state: LandingCursor, batch: Batch, now: datetime) -> RequestedBatch:
    batch_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
    state.in_flight[batch_id] = Batch(batch.keys, batch.sizes, batch.attempt)
    return RequestedBatch(batch_id, state.in_flight[batch_id])


def _halves(batch: Batch) -> Iterable[Batch]:
    if len(batch.keys) < 2:
        yield batch
        return
    middle = len(batch.keys) // 2
    yield Batch(batch.keys[:middle], batch.sizes[:middle], batch.attempt)
    yield Batch(batch.keys[middle:], batch.sizes[middle:], batch.attempt)


def batch_run_statuses(instance: dg.DagsterInstance, batch_ids: Iterable[str]) -> dict[str, list[dg.DagsterRunStatus]]:
    """The statuses of every run tagged with one of ``batch_ids`` (re-executions carry the tag too)."""
    ids = sorted(batch_ids)
    if not ids:
        return {}
    statuses: dict[str, list[dg.DagsterRunStatus]] = defaultdict(list)
    for record in instance.get_run_records(filters=dg.RunsFilter(tags={BATCH_TAG: ids})):
        statuses[record.dagster_run.tags[BATCH_TAG]].append(record.dagster_run.status)
    return dict(statuses)


def build_landing_sensor(settings: Settings, job_name: str) -> dg.SensorDefinition:
    """The sensor that turns new landing objects into load runs."""
    lateness = timedelta(seconds=settings.pipeline.lateness_seconds)
    max_objects = settings.pipeline.max_objects_per_run

    @dg.sensor(
        name=LANDING_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests load runs (at most {max_objects} objects each) for objects landed in the last "
        f"{settings.pipeline.lateness_seconds}s that no run has loaded yet; retries failed runs' objects.",
    )
    def landing_objects_sensor(context: dg.SensorEvaluationContext, landing: LandingResource) -> dg.SensorResult:
        cursor = LandingCursor.parse(context.cursor)
        statuses = batch_run_statuses(context.instance, cursor.in_flight if cursor else ())
        plan = plan_tick(cursor, landing.store(), statuses, datetime.now(UTC), lateness, max_objects)
        context.log.info(
            "listed %d objects, %d new; %d batches finished, %d failed (to retry); requesting %d runs; "
            "%d batches in flight, %d waiting to retry",
            plan.listed,
            plan.new_objects,
            plan.finished_batches,
            plan.failed_batches,
            len(plan.requests),
            len(plan.cursor.in_flight),
            len(plan.cursor.retries),
        )
        return dg.SensorResult(
            run_requests=[r.run_request() for r in plan.requests],
            cursor=plan.cursor.dump(),
            skip_reason=None if plan.requests else dg.SkipReason("no new landing objects"),
        )

    return landing_objects_sensor


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the derived tables' eager conditions, so new pulls flow into them with no manual step."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.assets(*DERIVED_KEYS),
        run_tags=WAREHOUSE_RUN_TAGS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Refreshes daily_pulls and repository_pull_summary after each load of the pull table.",
    )
