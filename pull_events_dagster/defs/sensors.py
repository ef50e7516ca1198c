"""Sensors: new landing objects -> load runs; updated pull table -> derived-table refreshes.

The landing sensor never lists the landing zone's history (except on its very first tick, to catch up):
each tick lists objects whose key time is at or after ``listed_to - PULL_EVENTS_LATENESS_S``, where
``listed_to`` is the time the previous tick listed up to (``now`` once it has caught up). Its cost grows with
the objects in that window, not with everything ever landed, and its progress survives downtime of any length:
after an outage it resumes from where it stopped, not from "now minus lateness", so objects landed while the
daemon was down are still found. Keys sort by time within a type, so each tick is one ranged listing per type.

One tick takes at most ``MAX_BATCHES_IN_FLIGHT`` runs' worth of objects (fewer while runs are in flight), the
oldest first; when it leaves objects behind, ``listed_to`` stops at the last object it took, and the next tick
carries on from there. A backlog (an outage, the first tick on a long history) is therefore worked through a
bounded slice at a time, and the cursor stays small however long the backlog is. Its cursor (JSON) keeps

- ``listed_to``: the time listed up to (the next tick lists from ``min(listed_to, now) - lateness``);
- ``seen``: keys already requested whose key time is at or after ``listed_to - lateness`` (older ones are
  pruned: no later tick lists them), so an object that lands late or out of name order is still noticed
  exactly once, and ``seen`` holds one lateness window of keys, not an outage's;
- ``in_flight``: batch id -> the objects of a requested run. Each tick looks the batches' runs up by the
  ``pull_events/batch`` tag: success -> done; failure or cancellation -> the objects are requested again
  (split in halves, to isolate an object that keeps failing, after a growing pause); still queued or
  running -> left alone, so no object is ever in two live runs;
- ``retries``: failed batches waiting for their pause to end.

It reads only the landing zone and the Dagster instance: never the warehouse, which a load may hold. An object
the sensor never requests (it landed later than the lateness allows, or was restored by hand) is loaded by the
reconciliation pass (``reconcile.py``), which compares day folders with the ledger.
"""

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from pull_events.landing import LandedObject, LandingStore, key_committed_at, listing_start
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
CURSOR_VERSION = 2
# Runs (each of up to PULL_EVENTS_MAX_OBJECTS_PER_RUN objects) requested and not yet finished, at most. The
# warehouse pool runs one at a time anyway, so more would only queue, and each one's keys live in the cursor.
MAX_BATCHES_IN_FLIGHT = 8
RETRY_PAUSE_SECONDS = 30.0
MAX_RETRY_PAUSE_SECONDS = 1800.0
# A batch of one object whose runs failed this many times is given up: it would hold a run slot for ever. It is
# not lost: it stays out of the ledger, so the load-lag check names it and each reconciliation pass tries it again.
MAX_ATTEMPTS_ALONE = 6
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
    # The time the last tick listed up to; None: unknown (a version 1 cursor without a hint), so the next tick
    # lists the window before now, as version 1 did.
    listed_to: datetime | None = None

    @classmethod
    def parse(cls, text: str | None, last_tick: datetime | None = None) -> "LandingCursor | None":
        """The cursor stored by an earlier tick; ``None`` before the first tick.

        A version 1 cursor (no ``listed_to``) is upgraded: it resumes from its last tick (``last_tick``, when the
        caller knows it) or from its newest remembered key, whichever is earlier, so objects landed since that
        tick are listed even if the sensor has been stopped for longer than the lateness window.
        """
        if not text:
            return None
        data = json.loads(text)
        version = data.get("version")
        if version not in (1, CURSOR_VERSION):
            raise ValueError(f"unknown landing sensor cursor version {version!r}")
        seen = set(data["seen"])
        if version == 1:
            listed_to = _v1_resume_point(seen, last_tick)
        else:
            listed_to = datetime.fromisoformat(data["listed_to"]) if data.get("listed_to") else None
        return cls(
            seen=seen,
            in_flight={bid: Batch.from_json(b) for bid, b in data["in_flight"].items()},
            retries=[Batch.from_json(b) for b in data["retries"]],
            listed_to=listed_to,
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "version": CURSOR_VERSION,
                "listed_to": self.listed_to.isoformat() if self.listed_to else None,
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
    listed_from: datetime | None  # the key time the listing started at; None: no listing (runs full)
    listed: int  # objects the listing returned
    new_objects: int
    finished_batches: int
    failed_batches: int
    given_up: list[str] = field(default_factory=list)  # keys left to the reconciliation pass (MAX_ATTEMPTS_ALONE)


def plan_tick(
    cursor: LandingCursor | None,
    store: LandingStore,
    run_statuses: Mapping[str, Sequence[dg.DagsterRunStatus]],
    now: datetime,
    lateness: timedelta,
    max_objects_per_run: int,
    max_batches_in_flight: int = MAX_BATCHES_IN_FLIGHT,
) -> TickPlan:
    """Decide one tick: settle in-flight batches by their runs' statuses, list from where the last tick got to,
    batch what is new (at most ``max_batches_in_flight`` runs in flight)."""
    first_tick = cursor is None
    state = cursor or LandingCursor()
    requests: list[RequestedBatch] = []
    finished = failed = 0
    given_up: list[str] = []

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
            if len(batch.keys) == 1 and batch.attempt >= MAX_ATTEMPTS_ALONE:
                given_up += batch.keys
                continue
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

    free_batches = max_batches_in_flight - len(state.in_flight) - len(state.retries)
    if free_batches <= 0:
        # Nothing could be requested: leave the cursor where it is rather than list for nothing.
        return TickPlan(state, requests, None, 0, 0, finished, failed, given_up)

    # The first tick catches up with everything already landed; later ticks resume where the last one got to.
    if first_tick:
        since = _EPOCH
    elif state.listed_to is None:
        since = now - lateness
    else:
        since = min(state.listed_to, now) - lateness
    listing = _list_new(store, since, state.seen, free_batches * max_objects_per_run)
    for start in range(0, len(listing.taken), max_objects_per_run):
        group = listing.taken[start : start + max_objects_per_run]
        state.seen.update(o.key for o in group)
        requests.append(_request(state, Batch([o.key for o in group], [o.size for o in group]), now))

    if listing.complete:
        state.listed_to = now
    else:
        # Everything left behind has a key time at or after the last object taken, so listing from there minus
        # the lateness next time finds it; never back before this tick's start, so no pruned key is listed again.
        state.listed_to = min(now, max(since + lateness, listing.last_taken_time or since + lateness))
    prune_before = state.listed_to - lateness
    state.seen = {key for key in state.seen if _still_listable(key, prune_before, listing.keys)}
    return TickPlan(state, requests, since, len(listing.keys), len(listing.new), finished, failed, given_up)


@dataclass
class _Listing:
    """One tick's listing: what it returned, and the new objects it takes, oldest first."""

    keys: set[str]  # every key listed
    new: list[LandedObject]  # listed and not in ``seen``
    taken: list[LandedObject]
    complete: bool  # every new object listable from ``since`` is taken
    last_taken_time: datetime | None  # the key time of the newest object taken (names with a time only)


def _list_new(store: LandingStore, since: datetime, seen: set[str], budget: int) -> _Listing:
    """New objects with a key time at or after ``since``: at most ``budget`` of them, the oldest first.

    Each type's listing stops after ``budget`` new objects, so a tick after a long outage reads a bounded slice
    (plus the keys it has seen in the window) rather than the whole backlog. A type whose listing stopped
    contributes ``budget`` objects no newer than where it stopped, so the ``budget`` oldest of all types are
    never newer than that point: everything left behind is at or after the last object taken.
    """
    keys: set[str] = set()
    new: list[tuple[datetime | None, LandedObject]] = []
    stopped_short = False
    for type_dir in store.event_type_dirs():
        found = 0
        for obj in store.list_from(type_dir, listing_start(type_dir, since)):
            keys.add(obj.key)
            if obj.key in seen:
                continue
            new.append((_key_time(obj.key), obj))
            found += 1
            if found >= budget:
                stopped_short = True
                break
    # Names without a time (copied in by hand) sort first: they are taken while they are listed.
    new.sort(key=lambda item: (item[0] is not None, item[0] or since, item[1].key))
    taken = new[:budget]
    times = [moment for moment, _ in taken if moment is not None]
    return _Listing(
        keys=keys,
        new=[obj for _, obj in new],
        taken=[obj for _, obj in taken],
        complete=not stopped_short and len(taken) == len(new),
        last_taken_time=max(times, default=None),
    )


def _key_time(key: str) -> datetime | None:
    try:
        return key_committed_at(key)
    except ValueError:  # a name the receiver did not write
        return None


def _still_listable(key: str, window_start: datetime, listed_keys: set[str]) -> bool:
    moment = _key_time(key)
    if moment is None:  # remember it while it is still listed
        return key in listed_keys
    return moment >= window_start


def _v1_resume_point(seen: set[str], last_tick: datetime | None) -> datetime | None:
    """Where a version 1 cursor resumes: its last tick, or its newest remembered key if earlier."""
    times = [moment for moment in map(_key_time, seen) if moment is not None]
    points = [point for point in (max(times, default=None), last_tick) if point is not None]
    return min(points, default=None)


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
        description=f"Requests load runs (at most {max_objects} objects each, {MAX_BATCHES_IN_FLIGHT} in flight) "
        f"for objects landed since the last tick (less {settings.pipeline.lateness_seconds}s of lateness) that no "
        "run has loaded yet, resuming where it stopped after any downtime; retries failed runs' objects.",
    )
    def landing_objects_sensor(context: dg.SensorEvaluationContext, landing: LandingResource) -> dg.SensorResult:
        last_tick = context.last_tick_completion_time
        cursor = LandingCursor.parse(context.cursor, datetime.fromtimestamp(last_tick, UTC) if last_tick else None)
        statuses = batch_run_statuses(context.instance, cursor.in_flight if cursor else ())
        plan = plan_tick(cursor, landing.store(), statuses, datetime.now(UTC), lateness, max_objects)
        context.log.info(
            "listed %d objects with key times from %s, %d new; listed up to %s; %d batches finished, %d failed "
            "(to retry); requesting %d runs; %d batches in flight, %d waiting to retry",
            plan.listed,
            plan.listed_from.isoformat() if plan.listed_from else "- (no listing: runs in flight at the limit)",
            plan.new_objects,
            plan.cursor.listed_to.isoformat() if plan.cursor.listed_to else "-",
            plan.finished_batches,
            plan.failed_batches,
            len(plan.requests),
            len(plan.cursor.in_flight),
            len(plan.cursor.retries),
        )
        for key in plan.given_up:
            context.log.warning(
                "giving up on %s after %d failed runs: the reconciliation pass tries it again and the "
                "landed_objects_loaded check names it while it is unloaded",
                key,
                MAX_ATTEMPTS_ALONE,
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
