"""The landing sensor: batching, late and out-of-order objects, bounded listing, no object requested twice, runs in
flight counted from the instance, resuming after downtime of any length with a cursor that holds only where the
listing got to.

What the sensor has requested lives in Dagster's run storage, so these tests record the runs a tick asks for in a
real instance, with the tags the daemon gives them, in whatever state the case needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

# The origin every run the daemon launches carries (and a queued run must have). Dagster exports no constructor.
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from pull_events.landing import LandedObject, LandingStore, LocalLandingStore, key_committed_at, object_key
from pull_events.settings import Settings
from pull_events_dagster.defs.jobs import LOAD_JOB, REBUILD_JOB
from pull_events_dagster.defs.partitions import daily_partitions
from pull_events_dagster.defs.retries import LOAD_RUN_RETRY_TAGS
from pull_events_dagster.defs.sensors import (
    LANDING_SENSOR,
    LOAD_MAX_RUNTIME_SECONDS,
    MAX_BATCHES_IN_FLIGHT,
    SLOT_TAG,
    UNTIMED_SLOT,
    Batch,
    LandingCursor,
    TickPlan,
    key_time,
    live_runs,
    load_partition,
    plan_tick,
    requested_in_slots,
)
from tests.pipeline.conftest import pipeline_settings
from tests.pipeline.factories import PULL_TYPE, PUSH_TYPE, other_event, pull_event, write_object
from tests.pipeline.lockholder import LockHolder
from tests.pipeline.test_duckdb_warehouse import facts

HOUR = timedelta(hours=1)
ORIGIN = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("pull_events_dagster.definitions"), "__repository__")
LIVE = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def partition_keys(now: datetime) -> list[str]:
    """The day partitions of daily_pulls at ``now``, from the default first day."""
    return daily_partitions(pipeline_settings("/unused", "/unused.duckdb")).get_partition_keys(current_time=now)


class CountingLandingStore(LocalLandingStore):
    """The real local store, instrumented to count what its listings hand back."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listings = 0
        self.listed = 0

    def list_from(self, type_dir: str, start_key: str) -> Iterator[LandedObject]:
        self.listings += 1
        for obj in super().list_from(type_dir, start_key):
            self.listed += 1
            yield obj


def land(store: LocalLandingStore, committed_at: datetime, sequence: int, event_type: str = PULL_TYPE) -> str:
    if event_type == PULL_TYPE:
        event = pull_event(facts(f"ev-{sequence}"))
    else:
        event = other_event(event_type, f"ev-{sequence}", committed_at, {"n": sequence})
    return write_object(store, event_type, [event], committed_at, sequence=sequence)


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> tuple[list[dg.RunRequest], str]:
    """One evaluation of the sensor, as the daemon runs it."""
    sensor = defs.resolve_sensor_def(LANDING_SENSOR)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return list(result.run_requests or []), result.cursor or ""


def requested_keys(request: dg.RunRequest) -> list[str]:
    return [o["key"] for o in request.run_config["ops"]["load_landing_objects"]["config"]["objects"]]


def record_run(
    instance: dg.DagsterInstance, request: dg.RunRequest, status: str = "SUCCESS", job_name: str = LOAD_JOB
) -> dg.DagsterRun:
    """The run the daemon creates for ``request`` (its config, its tags plus the daemon's), in ``status``."""
    run = dg.DagsterRun(
        job_name=job_name,
        run_config=request.run_config,
        tags={**request.tags, "dagster/run_key": request.run_key or "", "dagster/sensor_name": LANDING_SENSOR},
        status=dg.DagsterRunStatus(status),
        remote_job_origin=RemoteJobOrigin(ORIGIN, job_name),
    )
    instance.add_run(run)
    return run


def set_status(instance: dg.DagsterInstance, run: dg.DagsterRun, status: str) -> None:
    """The run, same id, tags and config, now in ``status`` (as the run worker or the monitor would leave it)."""
    instance.delete_run(run.run_id)
    instance.add_run(run.with_status(dg.DagsterRunStatus(status)))


@dataclass
class Sensor:
    """``plan_tick`` wired to a real instance as the sensor wires it, with the runs of each tick recorded there
    (as the daemon would create them) in ``status``, and the cursor kept through JSON, as Dagster stores it.

    Every tick is checked against the invariant the sensor's lookup rests on: ``listed_to`` never goes back, and no
    object dated after it is requested.
    """

    instance: dg.DagsterInstance
    store: LandingStore
    per_run: int = 3
    lateness: timedelta = HOUR
    max_in_flight: int = MAX_BATCHES_IN_FLIGHT
    cursor: LandingCursor | None = None

    def tick(self, now: datetime, status: str = "SUCCESS") -> TickPlan:
        plan = plan_tick(
            self.cursor,
            self.store,
            lambda slots: requested_in_slots(self.instance, slots),
            live_runs(self.instance, LOAD_JOB),
            now,
            self.lateness,
            self.per_run,
            self.max_in_flight,
        )
        for batch in plan.batches:
            record_run(self.instance, batch.run_request(load_partition(batch, partition_keys(now), now)), status)
        if plan.cursor is not None:
            self.check_invariant(plan.cursor, plan.batches)
            self.cursor = LandingCursor.parse(plan.cursor.dump())
        return plan

    def check_invariant(self, cursor: LandingCursor, batches: list[Batch]) -> None:
        before = self.cursor.listed_to if self.cursor else None
        assert before is None or (cursor.listed_to is not None and cursor.listed_to >= before), "listed_to went back"
        requested = [moment for batch in batches for moment in map(key_time, batch.keys) if moment is not None]
        assert cursor.listed_to is not None or not requested
        assert all(moment <= cursor.listed_to for moment in requested), "requested past listed_to"

    def drain(self, now: datetime, limit: int = 100) -> list[TickPlan]:
        """Ticks at ``now``, each tick's runs succeeding before the next, until one requests nothing."""
        plans = [self.tick(now)]
        while plans[-1].batches:
            assert len(plans) < limit, "the sensor does not converge"
            plans.append(self.tick(now))
        return plans


def keys_of(plans: Iterable[TickPlan]) -> list[str]:
    return [key for plan in plans for batch in plan.batches for key in batch.keys]


@pytest.fixture
def memory_instance() -> Iterator[dg.DagsterInstance]:
    """Dagster's in-memory instance: the same SQL run storage as SQLite, in memory (for many-tick cases)."""
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def test_the_first_tick_requests_everything_landed_in_batches_of_at_most_the_cap(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, settings: Settings
) -> None:
    now = datetime.now(UTC)
    keys = [land(store, now - timedelta(days=3) + n * HOUR, n) for n in range(5)]
    keys.append(land(store, now - timedelta(minutes=1), 5, PUSH_TYPE))
    keys.append(land(store, now - timedelta(minutes=2), 6))

    requests, cursor = tick(defs, instance, None)

    assert settings.pipeline.max_objects_per_run == 3
    # Oldest first, whatever the type.
    assert [requested_keys(r) for r in requests] == [keys[:3], [*keys[3:5], keys[6]], [keys[5]]]
    for request in requests:
        sizes = [o["size"] for o in request.run_config["ops"]["load_landing_objects"]["config"]["objects"]]
        assert sizes == [Path(store.uri(k)).stat().st_size for k in requested_keys(request)]
        newest = max(key_committed_at(k) for k in requested_keys(request))
        assert request.tags[SLOT_TAG] == f"{newest:%Y-%m-%dT%H:%M}"
        assert request.run_key is not None and request.run_key.startswith(f"{request.tags[SLOT_TAG]}/")
        # Failures are Dagster's to retry; run monitoring fails a run that hangs, so it is retried too.
        assert request.tags.items() >= {**LOAD_RUN_RETRY_TAGS, "pull_events/warehouse": "writer"}.items()
        assert request.tags["dagster/max_runtime"] == str(LOAD_MAX_RUNTIME_SECONDS)
    assert len({r.run_key for r in requests}) == 3
    # The cursor is where the listing got to, nothing else.
    assert json.loads(cursor).keys() == {"version", "listed_to"}
    assert json.loads(cursor)["version"] == 3


def test_later_ticks_list_only_the_lateness_window_not_the_history(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = CountingLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    for n in range(300):  # 25 hours of history, one object every 5 minutes
        land(store, now - (300 - n) * timedelta(minutes=5), n)
    sensor = Sensor(memory_instance, store, per_run=500)
    first = sensor.tick(now)
    assert first.listed == 300  # the very first tick catches up once

    fresh = [land(store, now + timedelta(minutes=m), 1000 + m) for m in (1, 2)]
    store.listings = store.listed = 0
    later = sensor.tick(now + timedelta(minutes=3))

    # It lists from where the previous tick got to (its own time), less the lateness.
    in_window = [o.key for o in LocalLandingStore(store.root).list_since(now - HOUR)]
    assert store.listed == len(in_window) == 12 + 2  # the last hour of history and the two new objects
    assert store.listings == 1  # one ranged listing per event type
    assert (later.already_requested, [b.keys for b in later.batches]) == (12, [fresh])


def test_objects_landing_late_or_out_of_name_order_are_found_exactly_once(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    now = datetime.now(UTC)
    first = [land(store, now - timedelta(seconds=10), 1), land(store, now - timedelta(seconds=5), 2)]
    requests, cursor = tick(defs, instance, None)
    assert [requested_keys(r) for r in requests] == [first]
    record_run(instance, requests[0])

    # A slow upload from another receiver: its name sorts before everything requested, still inside the window.
    straggler = land(store, now - timedelta(minutes=20), 3)
    requests, cursor = tick(defs, instance, cursor)
    assert [requested_keys(r) for r in requests] == [[straggler]]
    record_run(instance, requests[0])

    requests, cursor = tick(defs, instance, cursor)
    assert requests == []


def test_a_minute_that_gains_a_late_object_yields_a_run_of_that_object_alone(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    minute = datetime(2026, 11, 27, 11, 5, tzinfo=UTC)
    on_time = [land(store, minute + timedelta(seconds=s), s) for s in (10, 30, 50)]
    sensor = Sensor(memory_instance, store, per_run=10)
    [batch] = sensor.tick(minute + timedelta(minutes=1)).batches
    assert batch.keys == on_time

    # A receiver that stalled: its object belongs between the first two, and appears two ticks later.
    assert sensor.tick(minute + timedelta(minutes=2)).batches == []
    late = land(store, minute + timedelta(seconds=20), 20, PUSH_TYPE)
    plan = sensor.tick(minute + timedelta(minutes=3))

    [again] = plan.batches
    assert again.keys == [late]
    assert again.slot == batch.slot == "2026-11-27T11:05"
    assert again.run_key != batch.run_key
    assert sensor.tick(minute + timedelta(minutes=4)).batches == []


def test_more_late_objects_than_a_tick_takes_are_requested_oldest_first_before_newer_ones(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    on_time = [land(store, now - timedelta(minutes=m), m) for m in (50, 40)]
    sensor = Sensor(memory_instance, store, per_run=2, max_in_flight=1)
    assert [b.keys for b in sensor.drain(now)[0].batches] == [on_time]

    # A receiver's backlog of uploads shows up at once, all inside the window, more than one tick takes.
    late = [land(store, now - timedelta(minutes=30) + timedelta(seconds=n), 100 + n) for n in range(5)]
    fresh = land(store, now + timedelta(seconds=5), 200)
    plans = sensor.drain(now + timedelta(seconds=15))
    assert [b.keys for plan in plans for b in plan.batches] == [late[:2], late[2:4], [late[4], fresh]]


@pytest.mark.parametrize("status", LIVE + FINISHED)
def test_an_object_is_never_requested_again_whatever_became_of_its_run(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, status: str
) -> None:
    land(store, datetime.now(UTC) - timedelta(seconds=30), 1)
    [request], cursor = tick(defs, instance, None)
    # Queued, running, done, failed (Dagster's run retries launch it again; what they never load is left to the
    # reconciliation pass) or canceled (by someone who meant it).
    record_run(instance, request, status)

    for _ in range(2):
        requests, cursor = tick(defs, instance, cursor)
        assert requests == []


def test_a_tick_whose_runs_were_never_created_is_asked_again_under_the_same_run_keys(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    now = datetime.now(UTC)
    for n in range(5):
        land(store, now - timedelta(seconds=30 - n), n)
    requests, cursor = tick(defs, instance, None)

    # The daemon stopped before creating the runs: the next evaluation asks for the same runs. Run keys come from
    # the content, so Dagster, which starts at most one run per run key, cannot start a second load of them.
    again, _ = tick(defs, instance, cursor)
    assert [(r.run_key, r.run_config, r.tags) for r in again] == [(r.run_key, r.run_config, r.tags) for r in requests]

    # Once one of them exists, only the other is asked for.
    record_run(instance, requests[0])
    [rest], _ = tick(defs, instance, cursor)
    assert (rest.run_key, rest.run_config) == (requests[1].run_key, requests[1].run_config)


def test_runs_in_flight_are_counted_from_the_instance_and_a_full_tick_lists_nothing(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = CountingLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    keys = [land(store, now - timedelta(minutes=50) + n * timedelta(seconds=10), n) for n in range(12)]
    sensor = Sensor(memory_instance, store, per_run=1, max_in_flight=4)
    first = sensor.tick(now, status="QUEUED")
    assert [b.keys for b in first.batches] == [[key] for key in keys[:4]]
    assert sensor.cursor == LandingCursor(key_committed_at(keys[3]))
    # Runs of another job do not count, however many are live.
    for _ in range(5):
        record_run(memory_instance, first.batches[0].run_request("2026-12-01"), "STARTED", job_name=REBUILD_JOB)

    store.listings = 0
    busy = sensor.tick(now + timedelta(seconds=15))
    assert (busy.live_runs, busy.batches, busy.listed_from, store.listings) == (4, [], None, 0)
    assert sensor.cursor == LandingCursor(key_committed_at(keys[3]))  # kept

    # Two runs finish (one failed: Dagster retries it, and a retry that is queued counts like any load run).
    runs = memory_instance.get_runs(dg.RunsFilter(job_name=LOAD_JOB))
    set_status(memory_instance, runs[0], "SUCCESS")
    set_status(memory_instance, runs[1], "FAILURE")
    later = sensor.tick(now + timedelta(seconds=30), status="QUEUED")
    assert (later.live_runs, [b.keys for b in later.batches]) == (2, [[keys[4]], [keys[5]]])
    assert live_runs(memory_instance, LOAD_JOB) == 4


def test_the_cursor_holds_only_where_the_listing_got_to_however_busy_the_window(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    for n in range(600):  # 600 objects in the last 50 minutes
        land(store, now - timedelta(minutes=50) + n * timedelta(seconds=5), n)
    sensor = Sensor(memory_instance, store, per_run=50)
    plans = sensor.drain(now)

    assert len(keys_of(plans)) == 600 and len(plans) == 3
    for plan in plans:
        assert plan.cursor is not None
        assert json.loads(plan.cursor.dump()).keys() == {"version", "listed_to"}
        assert len(plan.cursor.dump()) < 60
    assert plans[-1].cursor == LandingCursor(now)


def test_the_sensor_never_opens_the_warehouse(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, duckdb_path: Path
) -> None:
    land(store, datetime.now(UTC) - timedelta(seconds=5), 1)
    with LockHolder(duckdb_path):  # a writer or an analyst holds the DuckDB file
        requests, _ = tick(defs, instance, None)
    assert len(requests) == 1


def test_files_named_by_hand_are_requested_once_in_runs_of_their_own(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, 30, tzinfo=UTC)
    odd = [f"{PULL_TYPE}/dt=2026-11-27/hour=12/zz-copied-by-hand-{n}.ndjson" for n in range(2)]
    for key in odd:
        store.write_new(key, b"{}\n")
    timed = land(store, now - timedelta(seconds=20), 1)
    sensor = Sensor(memory_instance, store, per_run=10)

    first = sensor.tick(now)
    assert [(b.keys, b.slot) for b in first.batches] == [(odd, UNTIMED_SLOT), ([timed], "2026-11-27T12:00")]
    # Listed by every tick while the listing reaches their folder, and found among the untimed runs each time.
    for seconds in (15, 30, 45):
        plan = sensor.tick(now + timedelta(seconds=seconds))
        assert (plan.listed, plan.already_requested, plan.batches) == (3, 3, [])


def test_a_backlog_after_a_gap_many_times_the_window_resumes_where_the_sensor_stopped(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = CountingLandingStore(tmp_path / "landing")
    stopped = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    before = land(store, stopped - timedelta(minutes=5), 1)
    sensor = Sensor(memory_instance, store, per_run=5)
    sensor.drain(stopped)
    assert sensor.cursor == LandingCursor(stopped)

    # Down for 50 lateness windows while the receiver keeps landing: a pull every 20 minutes, a push every hour.
    landed = [land(store, stopped + n * timedelta(minutes=20), 10_000 + n) for n in range(1, 151)]
    landed += [land(store, stopped + n * HOUR, 20_000 + n, PUSH_TYPE) for n in range(1, 51)]
    restarted = stopped + 52 * HOUR
    assert all(key_committed_at(key) < restarted - HOUR for key in landed)  # "now minus lateness" finds none

    plans = []
    while not plans or plans[-1].batches:
        store.listed = 0
        plans.append(sensor.tick(restarted))
        # A tick lists the hour behind where it resumes (ends included: at most 4 pulls and 2 pushes here) and one
        # slice of later objects per type.
        assert store.listed <= 6 + 2 * MAX_BATCHES_IN_FLIGHT * 5
        assert len(plans) < 100

    assert sorted(keys_of(plans)) == sorted(landed)  # every one, each exactly once, nothing from before
    assert before not in keys_of(plans)
    # The first tick resumed from where the last one stopped, less the lateness, not from now less the lateness.
    assert plans[0].listed_from == stopped - HOUR
    # The backlog is worked through oldest first, at most MAX_BATCHES_IN_FLIGHT runs a tick.
    assert len(plans) >= len(landed) // (MAX_BATCHES_IN_FLIGHT * 5)
    assert all(len(plan.batches) <= MAX_BATCHES_IN_FLIGHT for plan in plans)
    firsts = [key_committed_at(plan.batches[0].keys[0]) for plan in plans if plan.batches]
    assert firsts == sorted(firsts)
    assert sensor.cursor == LandingCursor(restarted)


def test_the_first_tick_on_a_long_history_starts_a_catch_up_in_bounded_slices_oldest_first(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = CountingLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    history = [land(store, now - timedelta(days=3) + n * timedelta(minutes=10), n) for n in range(432)]
    sensor = Sensor(memory_instance, store, per_run=5)
    plans = []
    while not plans or plans[-1].batches:
        store.listed = 0
        plans.append(sensor.tick(now))
        # The hour behind where it resumes (7 objects at most) and one slice of 8 runs of 5 objects: never the
        # whole history again.
        assert store.listed <= 7 + MAX_BATCHES_IN_FLIGHT * 5
        assert len(plans) < 20

    assert plans[0].listed_from == datetime(1970, 1, 1, tzinfo=UTC)
    assert [len(plan.batches) for plan in plans] == [8] * 10 + [7, 0]
    assert keys_of(plans) == history  # each once, oldest first
    assert sensor.cursor == LandingCursor(now)


def test_a_first_tick_over_objects_runs_already_name_requests_none_of_them_and_catches_up(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    # The cursor was reset (or the sensor renamed) after everything was loaded: its first tick lists from the
    # start, a bounded slice at a time, finds every object named by a run, and gets to now.
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    keys = [land(store, now - timedelta(days=2) + n * timedelta(minutes=10), n) for n in range(200)]
    Sensor(memory_instance, store, per_run=4).drain(now)

    reset = Sensor(memory_instance, store, per_run=4)
    later = now + timedelta(minutes=5)
    plans = [reset.tick(later)]
    while reset.cursor != LandingCursor(later):
        assert len(plans) < 20, "the sensor does not catch up"
        plans.append(reset.tick(later))
    assert keys_of(plans) == []
    # It took a slice of at most 32 later objects each tick (8 runs of 4), moving on past each.
    assert len(plans) == -(-len(keys) // 32)

    fresh = land(store, now + timedelta(minutes=6), 999)
    assert keys_of([reset.tick(now + timedelta(minutes=7))]) == [fresh]


def test_an_object_dated_ahead_of_the_clock_waits_for_it_and_is_requested_once(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    ahead = land(store, now + timedelta(seconds=40), 1)  # a receiver whose clock runs 40 s ahead
    sensor = Sensor(memory_instance, store)

    assert sensor.tick(now).batches == []
    # listed_to never passes the clock, so an outage after this tick is still resumed from here.
    assert sensor.cursor == LandingCursor(now)
    [batch] = sensor.tick(now + timedelta(seconds=45)).batches
    assert batch.keys == [ahead]
    assert sensor.tick(now + timedelta(seconds=60)).batches == []


def test_a_version_1_cursor_is_upgraded_and_resumes_from_its_last_tick(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    last_tick = datetime.now(UTC) - 5 * HOUR  # then the daemon was stopped, running the old sensor
    remembered = land(store, last_tick - timedelta(minutes=10), 1)
    in_flight = land(store, last_tick - timedelta(minutes=20), 2)
    v1 = json.dumps(
        {
            "version": 1,
            "seen": [in_flight, remembered],
            "in_flight": {"b-1": {"keys": [in_flight], "sizes": [7], "attempt": 1}},
            "retries": [],
        }
    )
    landed_since = [land(store, last_tick + n * HOUR, 10 + n) for n in range(1, 5)]

    state = LandingCursor.parse(v1, last_tick)
    # It resumes from its newest remembered key or its last tick, whichever is earlier.
    assert state == LandingCursor(key_committed_at(remembered))
    assert LandingCursor.parse(v1) == state  # the newest remembered key alone gives the same place here

    # Through the real sensor: every object of the window behind that point and landed since is requested,
    # although the newer ones are all older than the lateness window. The old sensor's runs carry no slot tag,
    # so the window's objects it requested are asked for once more (the loader skips the ones it loaded).
    requests, cursor = tick(defs, instance, v1)
    assert sorted(k for r in requests for k in requested_keys(r)) == sorted([in_flight, remembered, *landed_since])
    assert json.loads(cursor) == {"version": 3, "listed_to": json.loads(cursor)["listed_to"]}


def test_a_version_2_cursor_keeps_its_resume_point_and_drops_its_keys(tmp_path: Path) -> None:
    listed_to = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    v2 = {
        "version": 2,
        "listed_to": listed_to.isoformat(),
        "seen": [object_key(PULL_TYPE, listed_to - timedelta(minutes=m), "r", m) for m in range(50)],
        "in_flight": {"20261127T120000-abc": {"keys": ["k"], "sizes": [1], "attempt": 1}},
        "retries": [{"keys": ["j"], "sizes": [1], "attempt": 2, "not_before": 1.0}],
    }
    state = LandingCursor.parse(json.dumps(v2))
    assert state == LandingCursor(listed_to)
    assert state.dump() == json.dumps({"version": 3, "listed_to": listed_to.isoformat()}, separators=(",", ":"))
    assert LandingCursor.parse(json.dumps({**v2, "listed_to": None})) == LandingCursor(None)
    with pytest.raises(ValueError, match="version 4"):
        LandingCursor.parse(json.dumps({"version": 4}))


def test_a_version_1_cursor_with_nothing_to_resume_from_lists_the_window_as_before(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    land(store, now - 2 * HOUR, 0)
    key = land(store, now - timedelta(minutes=30), 1)
    state = LandingCursor.parse(json.dumps({"version": 1, "seen": [], "in_flight": {}, "retries": []}))
    assert state == LandingCursor(None)
    plan = Sensor(memory_instance, store, per_run=10, cursor=state).tick(now)
    assert (plan.listed_from, [b.keys for b in plan.batches]) == (now - HOUR, [[key]])
    assert plan.cursor == LandingCursor(now)


class MemoryLandingStore(LocalLandingStore):
    """Keys held in memory, listed as the real stores list them (ranged, in key order): fast enough for many
    examples. Only the listing is served; nothing is read or written."""

    def __init__(self, keys: Iterable[str], visible_at: dict[str, datetime] | None = None) -> None:
        super().__init__(Path("/nonexistent"))
        self.keys = sorted(keys)
        self.visible_at = visible_at or {}  # when a key appears (an upload that finishes late); default: now
        self.now = datetime.max.replace(tzinfo=UTC)

    def event_type_dirs(self) -> list[str]:
        return sorted({key.split("/", 1)[0] for key in self.keys})

    def list_from(self, type_dir: str, start_key: str) -> Iterator[LandedObject]:
        for key in self.keys:
            if key.startswith(f"{type_dir}/") and key >= start_key and self.visible_at.get(key, self.now) <= self.now:
                yield LandedObject(key=key, size=1, uri=key)


# One instance for all examples of a property (wiped before each): creating one takes longer than an example.
_PROPERTY = hyp_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_PROPERTY
@given(
    minutes=st.lists(st.integers(min_value=-200, max_value=400), min_size=1, max_size=60),
    types=st.lists(st.sampled_from((PULL_TYPE, PUSH_TYPE, "dev.chainguard.other.v1")), min_size=60, max_size=60),
    by_hand=st.integers(min_value=0, max_value=3),
    per_run=st.integers(min_value=1, max_value=4),
    batches=st.integers(min_value=1, max_value=3),
)
def test_a_backlog_is_requested_exactly_once_whatever_the_mix_of_types_and_caps(
    memory_instance: dg.DagsterInstance, minutes: list[int], types: list[str], by_hand: int, per_run: int, batches: int
) -> None:
    memory_instance.wipe()
    stopped = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    keys = {object_key(types[n], stopped + timedelta(minutes=m), "m", n) for n, m in enumerate(minutes)}
    # Names the receiver did not write, in the hour the sensor resumes from.
    keys |= {f"{PULL_TYPE}/dt=2026-11-27/hour=11/zz-by-hand-{n}.ndjson" for n in range(by_hand)}
    sensor = Sensor(memory_instance, MemoryLandingStore(keys), per_run, HOUR, batches, LandingCursor(stopped))
    plans = sensor.drain(stopped + 8 * HOUR, limit=len(keys) + 2)

    wanted = {key for key in keys if "by-hand" in key or key_committed_at(key) >= stopped - HOUR}
    assert sorted(keys_of(plans)) == sorted(wanted)  # each exactly once, none from before the resume point
    assert all(len(plan.batches) <= batches for plan in plans)
    assert sensor.cursor == LandingCursor(stopped + 8 * HOUR)


@_PROPERTY
@given(
    objects=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=24 * 60),  # key time, minutes after the start
            st.integers(min_value=0, max_value=60),  # minutes until it is listable: at most the lateness
            st.sampled_from((PULL_TYPE, PUSH_TYPE)),
        ),
        min_size=1,
        max_size=50,
    ),
    gaps=st.lists(st.integers(min_value=1, max_value=12 * 60), min_size=1, max_size=30),  # minutes between ticks
    outcomes=st.lists(st.sampled_from(("SUCCESS", "FAILURE", "QUEUED", "STARTED")), min_size=1, max_size=30),
    per_run=st.integers(min_value=1, max_value=4),
    batches=st.integers(min_value=1, max_value=3),
)
def test_objects_listable_within_the_lateness_are_requested_exactly_once_whatever_the_downtime_and_the_runs(
    memory_instance: dg.DagsterInstance,
    objects: list[tuple[int, int, str]],
    gaps: list[int],
    outcomes: list[str],
    per_run: int,
    batches: int,
) -> None:
    memory_instance.wipe()
    start = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
    visible_at = {
        object_key(kind, start + timedelta(minutes=at), "m", n): start + timedelta(minutes=at + delay)
        for n, (at, delay, kind) in enumerate(objects)
    }
    store = MemoryLandingStore(visible_at, visible_at)
    store.now = start
    sensor = Sensor(memory_instance, store, per_run, HOUR, batches)
    # Ticks at irregular times (some after downtime of many lateness windows), then until nothing is left. Each
    # tick's runs start queued; before the next tick some finish (succeeded or failed) and some keep running.
    times = [start + timedelta(minutes=sum(gaps[: n + 1])) for n in range(len(gaps))]
    times += [max(visible_at.values()) + timedelta(minutes=1)] * (2 * len(visible_at) + 2)
    plans = [sensor.tick(start, status="QUEUED")]
    for n, now in enumerate(times):
        live = memory_instance.get_runs(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED])
        )
        for k, run in enumerate(live):
            set_status(memory_instance, run, outcomes[(n + k) % len(outcomes)] if n < len(gaps) else "SUCCESS")
        store.now = max(store.now, now)
        plans.append(sensor.tick(store.now, status="QUEUED"))
        assert live_runs(memory_instance, LOAD_JOB) <= batches
    assert sorted(keys_of(plans)) == sorted(visible_at)  # each exactly once
    assert plans[-1].batches == []


def landed_batch(*moments: datetime) -> Batch:
    """A batch of objects the receiver landed at ``moments``."""
    keys = [object_key(PULL_TYPE, moment, "r", n) for n, moment in enumerate(moments)]
    return Batch(tuple(LandedObject(key, 1, f"/landing/{key}") for key in keys))


def test_a_load_run_recomputes_the_day_its_newest_object_landed_on_within_the_partitions() -> None:
    now = datetime(2026, 12, 1, 0, 0, 30, tzinfo=UTC)
    keys = partition_keys(now)
    last_night = datetime(2026, 11, 30, 23, 59, 58, tzinfo=UTC)
    assert load_partition(landed_batch(last_night), keys, now) == "2026-11-30"
    assert load_partition(landed_batch(last_night, now - timedelta(seconds=20)), keys, now) == "2026-12-01"
    # A receiver whose clock runs a day ahead; an object copied in by hand; one from before the first partition.
    assert load_partition(landed_batch(now + timedelta(days=1)), keys, now) == "2026-12-01"
    assert (
        load_partition(Batch((LandedObject("manual/copied.ndjson", 1, "/landing/manual/copied.ndjson"),)), keys, now)
        == "2026-12-01"
    )
    assert load_partition(landed_batch(datetime(2020, 1, 1, tzinfo=UTC)), keys, now) == keys[0] == "2024-01-01"


def test_an_object_from_a_receiver_whose_clock_runs_behind_is_requested_once_and_its_lateness_reported(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    on_time = land(store, now - timedelta(seconds=1), 1)
    sensor = Sensor(memory_instance, store, lateness=timedelta(minutes=3))
    [batch] = sensor.tick(now).batches
    assert batch.keys == [on_time]
    assert sensor.tick(now).late_by is None

    # Five seconds later a receiver two minutes behind lands an object named two minutes before now.
    behind = land(store, now + timedelta(seconds=5) - timedelta(minutes=2), 2)
    plan = sensor.tick(now + timedelta(seconds=6))
    assert [b.keys for b in plan.batches] == [[behind]]
    assert plan.late_by == timedelta(seconds=115)  # the listing had reached `now`; the name says now - 115 s
    assert plan.skew_warnings(timedelta(minutes=3)) == [
        "an object appeared 115s after the listing had passed its name's time, more than half of "
        "PULL_EVENTS_LATENESS_S (180s): a receiver whose clock runs behind the daemon's, or slow uploads. Objects "
        "later than the lateness are loaded only by the reconciliation pass: raise the lateness or fix the clock"
    ]
    assert plan.skew_warnings(timedelta(hours=1)) == []
    assert sensor.tick(now + timedelta(seconds=11)).batches == []


def test_a_receiver_behind_by_more_than_the_lateness_is_not_listed_and_left_to_reconciliation(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    sensor = Sensor(memory_instance, store, lateness=timedelta(seconds=60))
    assert sensor.tick(now).batches == []
    land(store, now - timedelta(minutes=2), 1)  # two minutes behind: before the window of the next tick
    plan = sensor.tick(now + timedelta(seconds=5))
    assert (plan.listed, plan.batches, plan.late_by) == (0, [], None)


def test_a_name_ahead_of_the_clock_is_reported_and_warned_about_past_a_minute(
    tmp_path: Path, memory_instance: dg.DagsterInstance
) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    land(store, now + timedelta(minutes=2), 1)
    plan = Sensor(memory_instance, store).tick(now)
    assert (plan.batches, plan.ahead_by) == ([], timedelta(minutes=2))
    assert plan.skew_warnings(HOUR) == [
        "an object is named 120s ahead of the daemon's clock: a receiver whose clock runs ahead; its objects are "
        "loaded only once the daemon's clock reaches their names"
    ]
