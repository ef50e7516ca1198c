"""Sensors: new landing objects -> load runs; updated pull table -> derived-table refreshes.

The landing sensor's cursor holds only how far its listing got (``{"version": 3, "listed_to": ...}``), a few dozen
bytes however busy the landing zone is. Everything else it needs is Dagster's own state:

- **Listing.** Each tick lists the objects whose key time is at or after ``listed_to - PULL_EVENTS_LATENESS_S``
  (the very first tick lists from the start, to catch up): one ranged listing per type, as keys sort by time within
  a type. Its cost grows with the objects in that window, not with everything ever landed, and after downtime of
  any length it resumes where it stopped, not from "now minus lateness", so objects landed while the daemon was
  down are still found. The window is listed again every tick so that an object that lands late or out of name
  order (a slow upload, a receiver whose clock runs behind) is still noticed. An object dated ahead of the daemon's
  clock (a receiver whose clock runs ahead) is taken once the clock reaches its time.
- **Clock skew.** Names carry the receiver's clock, the window the daemon's: the lateness must cover how far any
  receiver's clock may run behind the daemon's plus the slowest upload (the default hour covers minutes of skew
  many times over). Each tick measures both skews it can see: how far the listing had already passed the name of
  an object that appeared late (``late_by``), and how far ahead of now a name is (``ahead_by``); it warns when the
  first uses up more than half the lateness or the second exceeds a minute. An object later than the whole
  lateness is never listed, so it cannot be measured here: the reconciliation pass loads it.
- **What was already requested** is read from Dagster, not remembered in the cursor: every run the sensor requests
  names its objects in its run config and carries the key-time slot (the minute) of its newest object in the
  ``pull_events/slot`` tag. No tick requests an object dated after where it listed to, ``listed_to`` never goes
  back, and a tick lists every object from ``since`` up to ``listed_to``: so whenever one of a run's objects is
  listed, so is the run's newest object, and the runs tagged with the listed objects' slots are all the runs that
  can name a listed object. An object none of them names is new. Each object is so requested once, by design,
  however late it lands within the window: a minute that gains a late object yields a run of that object alone
  (objects gone from the landing zone aside: a run whose newest object was deleted is no longer found, and its
  other objects are requested again, which the ledger makes harmless). Run keys are
  derived from the run's content (slot and a digest of its keys), so should Dagster submit a tick's requests
  twice (a daemon that crashed between creating the runs and storing the cursor), its run-key de-duplication
  starts each run once.
- **Runs in flight** are counted from the instance: the load job's runs not yet finished (queued, starting,
  running, canceling; retries included). A tick takes at most ``MAX_BATCHES_IN_FLIGHT`` minus that many runs of
  up to ``PULL_EVENTS_MAX_OBJECTS_PER_RUN`` objects, the oldest objects first; when it leaves objects behind,
  ``listed_to`` stops at the newest object it took, and the next tick carries on from there. A backlog (an outage,
  the first tick on a long history) is therefore worked through a bounded slice at a time, and the listing of a
  tick reads the window plus at most one slice per type.
- **Failures** are Dagster's to retry (``retries.py``): the loader step retries with exponential backoff and
  jitter, and each load run carries run-retry tags, so a failed run is launched again. The sensor never requests
  an object again because its run failed: an object whose retries are all spent stays out of the ledger, the
  reconciliation pass (``reconcile.py``, every 15 minutes) loads it, and its ``landed_objects_loaded`` check names
  it while it is unloaded.

It reads only the landing zone and the Dagster instance: never the warehouse, which a load may hold. An object
the sensor never requests (it landed later than the lateness allows, or was restored by hand) is loaded by the
reconciliation pass, which compares day folders with the ledger. Loading an object twice is harmless anyway: the
loader skips objects already in the ledger.

Why not let run keys alone replace the remembered keys (deterministic batches of each time slot, keyed by their
content, requested again every tick for Dagster to de-duplicate): the newest slot is still filling while it is
requested, so each tick would request its objects again under a new key (or wait until the slot closes, delaying
every load by the slot's width), and every tick would hand Dagster one request per slot of the window to look up,
which the daemon logs, key by key, as skipped. Reading the runs instead costs one indexed query per 500 slots and
reading the configs of the window's runs: it grows with the window's runs and objects, as the listing does.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from pull_events.landing import LandedObject, LandingStore, key_committed_at, listing_start
from pull_events.settings import Settings
from pull_events_dagster.defs.assets import DERIVED_KEYS, LOADER, WAREHOUSE_RUN_TAGS
from pull_events_dagster.defs.partitions import DAY_FORMAT, daily_partitions
from pull_events_dagster.defs.resources import LandingResource
from pull_events_dagster.defs.retries import LOAD_RUN_RETRY_TAGS

LANDING_SENSOR = "landing_objects_sensor"
AUTOMATION_SENSOR = "derived_tables_automation"
# The key-time minute of a load run's newest object: how a tick finds the runs that may name a listed object.
SLOT_TAG = "pull_events/slot"
# The slot of an object whose name carries no time (copied in by hand), and of the runs of such objects.
UNTIMED_SLOT = "untimed"
# Run monitoring fails a load run that outlives this (a crashed worker leaves it "started" forever with the
# default launcher); Dagster's run retries then launch it again.
LOAD_MAX_RUNTIME_SECONDS = 2 * 3600
CURSOR_VERSION = 3
# Names further ahead of the daemon's clock than this are worth a warning (their loads wait that long).
AHEAD_WARNING = timedelta(seconds=60)
# Load runs queued or running at most (each of up to PULL_EVENTS_MAX_OBJECTS_PER_RUN objects). The warehouse pool
# runs one at a time anyway: more would only queue, and hold objects a later tick could batch better.
MAX_BATCHES_IN_FLIGHT = 8
# Slots per run lookup: a query parameter list well within what SQLite and Postgres take.
SLOTS_PER_LOOKUP = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Runs that have not finished, as Dagster counts them (a failed run's retry is a new run: it counts once launched).
_LIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUSPENDED,
    dg.DagsterRunStatus.CANCELING,
]

# Given the slots of the listed objects, the keys the runs of those slots name.
RequestedLookup = Callable[[set[str]], set[str]]


@dataclass(frozen=True)
class LandingCursor:
    """The landing sensor's memory between ticks: how far its listing got, and nothing else."""

    # The key time listed up to: the next tick lists from ``min(listed_to, now) - lateness``. None: unknown (a
    # version 1 cursor with nothing to resume from), so the next tick lists the window before now.
    listed_to: datetime | None

    @classmethod
    def parse(cls, text: str | None, last_tick: datetime | None = None) -> LandingCursor | None:
        """The cursor stored by an earlier tick; ``None`` before the first tick.

        Older versions are upgraded to their resume point. Version 2 stored it (beside the keys it had requested
        and its batches in flight, which Dagster's runs now tell). Version 1 resumes from its last tick
        (``last_tick``, when the caller knows it) or from its newest remembered key, whichever is earlier, so
        objects landed since that tick are listed even if the sensor has been stopped for longer than the lateness
        window. Runs of those versions carry no slot tag, so the first ticks after an upgrade request the last
        window's objects once more: the loader skips the ones already loaded.
        """
        if not text:
            return None
        data = json.loads(text)
        version = data.get("version")
        if version == 1:
            return cls(_v1_resume_point(data["seen"], last_tick))
        if version in (2, CURSOR_VERSION):
            return cls(datetime.fromisoformat(data["listed_to"]) if data.get("listed_to") else None)
        raise ValueError(f"unknown landing sensor cursor version {version!r}")

    def dump(self) -> str:
        listed_to = self.listed_to.isoformat() if self.listed_to else None
        return json.dumps({"version": CURSOR_VERSION, "listed_to": listed_to}, separators=(",", ":"))


@dataclass(frozen=True)
class Batch:
    """The objects of one load run: all timed or all untimed, oldest first."""

    objects: tuple[LandedObject, ...]

    @property
    def keys(self) -> list[str]:
        return [o.key for o in self.objects]

    @property
    def slot(self) -> str:
        """The slot of its newest object (see the module docstring)."""
        times = [moment for moment in map(key_time, self.keys) if moment is not None]
        return slot_of(max(times)) if times else UNTIMED_SLOT

    @property
    def run_key(self) -> str:
        """Derived from the content alone: the same objects always get the same key."""
        digest = hashlib.sha256("\n".join(sorted(self.keys)).encode()).hexdigest()[:20]
        return f"{self.slot}/{digest}"

    def run_request(self, partition_key: str) -> dg.RunRequest:
        """The load run of these objects, recomputing the day partition ``partition_key`` of daily_pulls after."""
        objects = [{"key": o.key, "size": o.size} for o in self.objects]
        return dg.RunRequest(
            run_key=self.run_key,
            partition_key=partition_key,
            run_config={"ops": {LOADER: {"config": {"objects": objects}}}},
            tags={
                **WAREHOUSE_RUN_TAGS,
                **LOAD_RUN_RETRY_TAGS,
                SLOT_TAG: self.slot,
                "dagster/max_runtime": str(LOAD_MAX_RUNTIME_SECONDS),
            },
        )


@dataclass(frozen=True)
class TickPlan:
    """What one tick decided, and what it saw."""

    cursor: LandingCursor | None  # None: still before the first listing
    batches: list[Batch]
    live_runs: int  # load runs queued or running when the tick started
    listed_from: datetime | None  # the key time the listing started at; None: no listing (runs at the limit)
    listed: int = 0  # objects the listing returned
    already_requested: int = 0  # of those, named by a run
    left_behind: int = 0  # listed, named by no run, and not requested by this tick: a later tick takes them
    # How far the listing had already passed the time in the name of an object when that object appeared (the
    # largest among this tick's new objects; None: none appeared late). An upload that took that long, or a receiver
    # whose clock runs that far behind the daemon's: past the lateness, such objects are left to reconciliation.
    late_by: timedelta | None = None
    # How far after now the latest listed name's time is (None: none is): a receiver whose clock runs ahead. Its
    # objects wait for the daemon's clock to reach them.
    ahead_by: timedelta | None = None

    @property
    def requested_objects(self) -> int:
        return sum(len(batch.objects) for batch in self.batches)

    def summary(self) -> str:
        """One log line on what the tick did."""
        if self.listed_from is None:
            return f"{self.live_runs} load runs queued or running, the limit: listed nothing, cursor kept"
        listed_to = self.cursor.listed_to.isoformat() if self.cursor and self.cursor.listed_to else "-"
        skew = "".join(
            f"; {what} {delta.total_seconds():.0f}s"
            for what, delta in (("an object appeared late by", self.late_by), ("a name is ahead by", self.ahead_by))
            if delta is not None
        )
        return (
            f"listed {self.listed} objects with key times from {self.listed_from.isoformat()}, "
            f"{self.already_requested} of them already requested by runs; {self.live_runs} load runs queued or "
            f"running; requesting {len(self.batches)} runs for {self.requested_objects} objects, "
            f"{self.left_behind} left for later ticks; listed up to {listed_to}{skew}"
        )

    def skew_warnings(self, lateness: timedelta) -> list[str]:
        """What an operator should hear about: late objects using up most of the lateness, names well ahead."""
        warnings = []
        if self.late_by is not None and self.late_by > lateness / 2:
            warnings.append(
                f"an object appeared {self.late_by.total_seconds():.0f}s after the listing had passed its name's "
                f"time, more than half of PULL_EVENTS_LATENESS_S ({lateness.total_seconds():.0f}s): a receiver "
                "whose clock runs behind the daemon's, or slow uploads. Objects later than the lateness are loaded "
                "only by the reconciliation pass: raise the lateness or fix the clock"
            )
        if self.ahead_by is not None and self.ahead_by > AHEAD_WARNING:
            warnings.append(
                f"an object is named {self.ahead_by.total_seconds():.0f}s ahead of the daemon's clock: a receiver "
                "whose clock runs ahead; its objects are loaded only once the daemon's clock reaches their names"
            )
        return warnings


def plan_tick(
    cursor: LandingCursor | None,
    store: LandingStore,
    requested_in: RequestedLookup,
    live_runs: int,
    now: datetime,
    lateness: timedelta,
    max_objects_per_run: int,
    max_batches_in_flight: int = MAX_BATCHES_IN_FLIGHT,
) -> TickPlan:
    """Decide one tick: list from where the last tick got to, less the lateness, and batch the listed objects no
    run names (at most ``max_batches_in_flight - live_runs`` runs, the oldest objects first).

    Invariant: no object dated after ``listed_to`` is ever requested, and ``listed_to`` never goes back. So the
    listing, which holds every object from ``since`` up to ``listed_to``, holds the newest object of every run that
    names a listed object (see the module docstring).
    """
    free_runs = max_batches_in_flight - live_runs
    if free_runs <= 0:
        # Nothing could be requested: leave the cursor where it is rather than list for nothing.
        return TickPlan(cursor, [], live_runs, None)
    since = _listing_since(cursor, now, lateness)
    # The first tick has listed up to nothing yet; a version 1 cursor without a hint does not know (None).
    previous = cursor.listed_to if cursor else _EPOCH
    budget = free_runs * max_objects_per_run
    listing = _list_window(store, since, previous, budget)
    requested = requested_in({slot_of_key(o.key) for o in listing.objects})
    new = [o for o in listing.objects if o.key not in requested]
    times = [moment for moment in map(key_time, (o.key for o in listing.objects)) if moment is not None]
    new_times = [moment for moment in map(key_time, (o.key for o in new)) if moment is not None]
    # Everything up to the cutoff was listed (every type's listing got past it), so it can all be taken now.
    # Objects dated after it wait for a later tick: after now (a receiver's clock ahead of ours) or past the point
    # where a type's listing stopped.
    cutoff = min([now, *listing.stops])
    eligible = sorted((o for o in new if _not_after(o, cutoff)), key=_oldest_first)
    batches = _batches(eligible[:budget], max_objects_per_run)[:free_runs]
    taken = sum(len(batch.objects) for batch in batches)
    # All eligible taken: listed up to the cutoff. Otherwise to the newest taken: what is left is no older.
    reached = cutoff if taken == len(eligible) else _newest(batches)
    return TickPlan(
        cursor=LandingCursor(_later(previous, reached)),
        batches=batches,
        live_runs=live_runs,
        listed_from=since,
        listed=len(listing.objects),
        already_requested=len(listing.objects) - len(new),
        left_behind=len(new) - taken,
        late_by=max((previous - moment for moment in new_times if previous and moment < previous), default=None),
        ahead_by=max((moment - now for moment in times if moment > now), default=None),
    )


def load_partition(batch: Batch, partition_keys: Sequence[str], now: datetime) -> str:
    """The day partition a load run recomputes: the UTC day of its newest object's key time (when the receiver landed
    it, seconds after the pulls it holds), today for untimed objects, within the partitions that exist."""
    times = [moment for moment in map(key_time, batch.keys) if moment is not None]
    day = max(times, default=now).astimezone(UTC).strftime(DAY_FORMAT)
    return min(max(day, partition_keys[0]), partition_keys[-1])


def _listing_since(cursor: LandingCursor | None, now: datetime, lateness: timedelta) -> datetime:
    """Where a tick's listing starts: the first tick catches up with everything already landed; later ticks resume
    where the last one got to, less the lateness."""
    if cursor is None:
        return _EPOCH
    if cursor.listed_to is None:
        return now - lateness
    return min(cursor.listed_to, now) - lateness


@dataclass(frozen=True)
class _Listing:
    objects: list[LandedObject]
    stops: list[datetime]  # the key time where each type's listing stopped at the budget (none: listed to the end)


def _list_window(store: LandingStore, since: datetime, listed_to: datetime | None, budget: int) -> _Listing:
    """Objects with a key time at or after ``since``: every one up to ``listed_to`` (the part earlier ticks listed,
    where an object may have landed late), and at most ``budget`` later ones per type.

    The later ones have not been requested (the invariant of ``plan_tick``), so each type's listing can stop after
    ``budget`` of them: a tick after a long outage reads a bounded slice rather than the whole backlog, and takes
    nothing past the earliest stop, so it never skips an object a stopped listing did not reach. Names without a
    time count toward no budget: they are rare, and listed only while the listing reaches their folder.
    """
    objects: list[LandedObject] = []
    stops: list[datetime] = []
    for type_dir in store.event_type_dirs():
        later = 0
        for obj in store.list_from(type_dir, listing_start(type_dir, since)):
            objects.append(obj)
            moment = key_time(obj.key)
            if moment is not None and (listed_to is None or moment > listed_to):
                later += 1
                if later >= budget:
                    stops.append(moment)
                    break
    return _Listing(objects, stops)


def _not_after(obj: LandedObject, cutoff: datetime) -> bool:
    moment = key_time(obj.key)
    return moment is None or moment <= cutoff


def _oldest_first(obj: LandedObject) -> tuple[bool, datetime, str]:
    # Names without a time sort first: they are taken while they are listed.
    moment = key_time(obj.key)
    return (moment is not None, moment or _EPOCH, obj.key)


def _batches(objects: Sequence[LandedObject], size: int) -> list[Batch]:
    """``objects`` (oldest first) in runs of at most ``size``. Names without a time get runs of their own, slotted
    ``untimed``: a run's slot must be found whenever one of its objects is listed."""
    untimed = [o for o in objects if key_time(o.key) is None]
    timed = [o for o in objects if key_time(o.key) is not None]
    return [
        Batch(tuple(group[start : start + size])) for group in (untimed, timed) for start in range(0, len(group), size)
    ]


def _newest(batches: Iterable[Batch]) -> datetime | None:
    times = [moment for batch in batches for moment in map(key_time, batch.keys) if moment is not None]
    return max(times, default=None)


def _later(first: datetime | None, second: datetime | None) -> datetime | None:
    return max((moment for moment in (first, second) if moment is not None), default=None)


# A tick asks for the time of each listed object several times (order, cutoff, slot), and each window is listed
# again tick after tick: parsing the name once is most of the tick's CPU on a busy window.
@functools.lru_cache(maxsize=1 << 17)
def key_time(key: str) -> datetime | None:
    """The time in an object's name; None for a name the receiver did not write."""
    try:
        return key_committed_at(key)
    except ValueError:
        return None


def slot_of(moment: datetime) -> str:
    """The slot (key-time minute) of a time, e.g. ``2026-11-27T11:05``."""
    return f"{moment.astimezone(UTC):%Y-%m-%dT%H:%M}"


def slot_of_key(key: str) -> str:
    moment = key_time(key)
    return slot_of(moment) if moment else UNTIMED_SLOT


def _v1_resume_point(seen: Iterable[str], last_tick: datetime | None) -> datetime | None:
    """Where a version 1 cursor resumes: its last tick, or its newest remembered key if earlier."""
    times = [moment for moment in map(key_time, seen) if moment is not None]
    points = [point for point in (max(times, default=None), last_tick) if point is not None]
    return min(points, default=None)


def requested_in_slots(instance: dg.DagsterInstance, slots: Iterable[str]) -> set[str]:
    """The landing keys named by the runs tagged with one of ``slots`` (their retries carry the tag too)."""
    ordered = sorted(set(slots))
    keys: set[str] = set()
    for start in range(0, len(ordered), SLOTS_PER_LOOKUP):
        filters = dg.RunsFilter(tags={SLOT_TAG: ordered[start : start + SLOTS_PER_LOOKUP]})
        for record in instance.get_run_records(filters=filters):
            keys.update(run_object_keys(record.dagster_run))
    return keys


def run_object_keys(run: dg.DagsterRun) -> list[str]:
    """The landing keys a load run's config names."""
    objects = run.run_config.get("ops", {}).get(LOADER, {}).get("config", {}).get("objects", [])
    return [o["key"] for o in objects]


def live_runs(instance: dg.DagsterInstance, job_name: str) -> int:
    """Runs of ``job_name`` queued, starting or running."""
    return instance.get_runs_count(dg.RunsFilter(job_name=job_name, statuses=_LIVE))


def build_landing_sensor(settings: Settings, job_name: str) -> dg.SensorDefinition:
    """The sensor that turns new landing objects into load runs."""
    lateness = timedelta(seconds=settings.pipeline.lateness_seconds)
    max_objects = settings.pipeline.max_objects_per_run
    partitions = daily_partitions(settings)

    @dg.sensor(
        name=LANDING_SENSOR,
        job_name=job_name,
        # Each tick is one ranged listing per type, cheap enough every 5 s; at 15 s the wait for the next tick
        # dominated how long an event took to reach the table (benchmarks/RESULTS.md, stack latency).
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests load runs (at most {max_objects} objects each, {MAX_BATCHES_IN_FLIGHT} queued or "
        f"running) for objects landed since the last tick (less {settings.pipeline.lateness_seconds}s of lateness) "
        "that no run names yet, resuming where it stopped after any downtime. Failed runs are retried by Dagster.",
    )
    def landing_objects_sensor(context: dg.SensorEvaluationContext, landing: LandingResource) -> dg.SensorResult:
        last_tick = context.last_tick_completion_time
        cursor = LandingCursor.parse(context.cursor, datetime.fromtimestamp(last_tick, UTC) if last_tick else None)
        now = datetime.now(UTC)
        plan = plan_tick(
            cursor,
            landing.store(),
            lambda slots: requested_in_slots(context.instance, slots),
            live_runs(context.instance, job_name),
            now,
            lateness,
            max_objects,
        )
        context.log.info(plan.summary())
        for warning in plan.skew_warnings(lateness):
            context.log.warning(warning)
        skip = "no new landing objects" if plan.listed_from else "load runs queued or running at the limit"
        days = partitions.get_partition_keys(current_time=now)
        return dg.SensorResult(
            run_requests=[batch.run_request(load_partition(batch, days, now)) for batch in plan.batches],
            cursor=plan.cursor.dump() if plan.cursor else None,
            skip_reason=None if plan.batches else dg.SkipReason(skip),
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
        description="Refreshes repository_pull_summary after day partitions of daily_pulls change outside the daily "
        "sensor's runs (a backfill from the UI).",
    )
