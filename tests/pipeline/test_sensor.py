"""The landing sensor: batching, late and out-of-order objects, bounded listing, no double loads, retries, resuming
after downtime of any length with a small cursor."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from pull_events.landing import LandedObject, LocalLandingStore, key_committed_at, object_key
from pull_events.settings import Settings
from pull_events_dagster.defs.jobs import LOAD_JOB
from pull_events_dagster.defs.sensors import (
    BATCH_TAG,
    LANDING_SENSOR,
    MAX_ATTEMPTS_ALONE,
    MAX_BATCHES_IN_FLIGHT,
    MAX_RETRY_PAUSE_SECONDS,
    LandingCursor,
    TickPlan,
    batch_run_statuses,
    plan_tick,
)
from tests.pipeline.factories import PULL_TYPE, PUSH_TYPE, other_event, pull_event, write_object
from tests.pipeline.lockholder import LockHolder
from tests.pipeline.test_duckdb_warehouse import facts

HOUR = timedelta(hours=1)


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


def create_run(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest, status: str) -> None:
    """A run of the load job for ``request`` in ``status``, as the daemon would have launched it.

    (A QUEUED run needs a code location origin, which only a running workspace has; the sensor treats it
    like the other not-finished statuses tested here.)
    """
    instance.create_run_for_job(
        defs.resolve_job_def(LOAD_JOB),
        run_config=request.run_config,
        tags={**request.tags, "dagster/run_key": request.run_key or ""},
        status=dg.DagsterRunStatus(status),
    )


def test_the_first_tick_requests_everything_landed_in_batches_of_at_most_the_cap(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, settings: Settings
) -> None:
    now = datetime.now(UTC)
    keys = [land(store, now - timedelta(days=3) + n * HOUR, n) for n in range(5)]
    keys.append(land(store, now - timedelta(minutes=1), 5, PUSH_TYPE))
    keys.append(land(store, now - timedelta(minutes=2), 6))

    requests, cursor = tick(defs, instance, None)

    assert settings.pipeline.max_objects_per_run == 3
    assert [len(requested_keys(r)) for r in requests] == [3, 3, 1]
    assert sorted(k for r in requests for k in requested_keys(r)) == sorted(keys)
    for request in requests:
        assert request.run_key == request.tags[BATCH_TAG]
        sizes = [o["size"] for o in request.run_config["ops"]["load_landing_objects"]["config"]["objects"]]
        assert sizes == [Path(store.uri(k)).stat().st_size for k in requested_keys(request)]
    state = LandingCursor.parse(cursor)
    assert state is not None
    # Only keys still inside the lateness window are remembered; the old ones can no longer be listed.
    assert state.seen == {keys[5], keys[6]}
    assert set(state.in_flight) == {r.run_key for r in requests}


def test_later_ticks_list_only_the_lateness_window_not_the_history(tmp_path: Path) -> None:
    store = CountingLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    for n in range(300):  # 25 hours of history, one object every 5 minutes
        land(store, now - (300 - n) * timedelta(minutes=5), n)
    first = plan_tick(None, store, {}, now, HOUR, 500)
    assert first.listed == 300  # the very first tick catches up once
    done = {r.batch_id: [dg.DagsterRunStatus.SUCCESS] for r in first.requests}

    fresh = [land(store, now + timedelta(minutes=m), 1000 + m) for m in (1, 2)]
    store.listings = store.listed = 0
    later = plan_tick(first.cursor, store, done, now + timedelta(minutes=3), HOUR, 500)

    # It lists from where the previous tick got to (its own time), less the lateness.
    in_window = [o.key for o in LocalLandingStore(store.root).list_since(now - HOUR)]
    assert store.listed == len(in_window) == 12 + 2  # the last hour of history and the two new objects
    assert store.listings == 1  # one ranged listing per event type
    assert [r.batch.keys for r in later.requests] == [fresh]
    assert later.finished_batches == 1


def test_objects_landing_late_or_out_of_name_order_are_found_exactly_once(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    now = datetime.now(UTC)
    first = [land(store, now - timedelta(seconds=10), 1), land(store, now - timedelta(seconds=5), 2)]
    requests, cursor = tick(defs, instance, None)
    assert [requested_keys(r) for r in requests] == [first]
    create_run(defs, instance, requests[0], "SUCCESS")

    # A slow upload from another receiver: its name sorts before everything seen, still inside the window.
    straggler = land(store, now - timedelta(minutes=20), 3)
    requests, cursor = tick(defs, instance, cursor)
    assert [requested_keys(r) for r in requests] == [[straggler]]
    create_run(defs, instance, requests[0], "SUCCESS")

    requests, cursor = tick(defs, instance, cursor)
    assert requests == []


@pytest.mark.parametrize("status", ["NOT_STARTED", "STARTING", "STARTED", "CANCELING"])
def test_no_object_is_requested_again_while_its_run_is_queued_or_running(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, status: str
) -> None:
    land(store, datetime.now(UTC) - timedelta(seconds=30), 1)
    [request], cursor = tick(defs, instance, None)
    create_run(defs, instance, request, status)

    for _ in range(2):
        requests, cursor = tick(defs, instance, cursor)
        assert requests == []
    state = LandingCursor.parse(cursor)
    assert state is not None and list(state.in_flight) == [request.run_key]


def test_a_requested_batch_whose_run_never_appeared_is_asked_for_again_under_the_same_key(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    land(store, datetime.now(UTC) - timedelta(seconds=30), 1)
    [request], cursor = tick(defs, instance, None)

    [again], cursor = tick(defs, instance, cursor)

    # Dagster launches at most one run per run key, so asking again cannot start a second load.
    assert (again.run_key, again.run_config) == (request.run_key, request.run_config)


def test_a_failed_runs_objects_are_requested_again_in_halves_after_a_pause(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    now = datetime.now(UTC)
    keys = [land(store, now - timedelta(seconds=30 - n), n) for n in range(3)]
    [request], cursor = tick(defs, instance, None)
    create_run(defs, instance, request, "FAILURE")

    requests, cursor = tick(defs, instance, cursor)
    assert requests == []  # waits before retrying
    state = LandingCursor.parse(cursor)
    assert state is not None and state.in_flight == {}
    assert [(b.keys, b.attempt) for b in state.retries] == [([keys[0]], 2), (keys[1:], 2)]

    statuses = batch_run_statuses(instance, state.in_flight)
    retried = plan_tick(state, store, statuses, datetime.now(UTC) + timedelta(seconds=31), HOUR, 3)
    assert [(r.batch.keys, r.batch.attempt) for r in retried.requests] == [([keys[0]], 2), (keys[1:], 2)]
    assert all(r.run_request().tags["pull_events/attempt"] == "2" for r in retried.requests)
    assert len({r.batch_id for r in retried.requests} | {request.run_key}) == 3  # new run keys


def test_a_lone_object_whose_runs_keep_failing_is_given_up_to_the_reconciliation_pass(
    store: LocalLandingStore,
) -> None:
    now = datetime.now(UTC)
    key = land(store, now - timedelta(seconds=30), 0)
    state = plan_tick(None, store, {}, now, HOUR, 3).cursor
    attempts = []
    for _ in range(MAX_ATTEMPTS_ALONE):
        [(batch_id, batch)] = state.in_flight.items()
        attempts.append(batch.attempt)
        now += timedelta(seconds=MAX_RETRY_PAUSE_SECONDS + 1)  # past any pause
        failed = plan_tick(state, store, {batch_id: [dg.DagsterRunStatus.FAILURE]}, now, HOUR, 3)
        state = plan_tick(
            failed.cursor, store, {}, now + timedelta(seconds=MAX_RETRY_PAUSE_SECONDS + 1), HOUR, 3
        ).cursor
    assert attempts == list(range(1, MAX_ATTEMPTS_ALONE + 1))
    assert failed.given_up == [key]
    # It holds no run slot and the sensor does not request it again.
    assert (state.in_flight, state.retries) == ({}, [])
    assert plan_tick(state, store, {}, now + 3 * HOUR, HOUR, 3).requests == []


def test_a_canceled_run_counts_as_failed_and_success_retires_the_batch(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    now = datetime.now(UTC)
    land(store, now - timedelta(seconds=20), 1)
    [canceled], cursor = tick(defs, instance, None)
    create_run(defs, instance, canceled, "CANCELED")
    land(store, now - timedelta(seconds=10), 2)
    [succeeded], cursor = tick(defs, instance, cursor)
    create_run(defs, instance, succeeded, "SUCCESS")

    requests, cursor = tick(defs, instance, cursor)

    state = LandingCursor.parse(cursor)
    assert requests == [] and state is not None
    assert state.in_flight == {}
    assert [b.keys for b in state.retries] == [requested_keys(canceled)]


def test_the_cursor_is_json_that_forgets_keys_once_they_leave_the_window(tmp_path: Path) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    key = land(store, now, 1)
    first = plan_tick(LandingCursor(), store, {}, now, HOUR, 10)
    assert json.loads(first.cursor.dump())["seen"] == [key]

    batch_id = first.requests[0].batch_id
    later = plan_tick(first.cursor, store, {batch_id: [dg.DagsterRunStatus.SUCCESS]}, now + 2 * HOUR, HOUR, 10)

    # The later tick lists the hour before the previous tick once more (the key is seen), then forgets it.
    assert (later.cursor.seen, later.cursor.in_flight, later.listed, later.requests) == (set(), {}, 1, [])
    assert later.cursor.listed_to == now + 2 * HOUR
    assert LandingCursor.parse(later.cursor.dump()) == later.cursor


def test_the_sensor_never_opens_the_warehouse(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, duckdb_path: Path
) -> None:
    land(store, datetime.now(UTC) - timedelta(seconds=5), 1)
    with LockHolder(duckdb_path):  # a writer or an analyst holds the DuckDB file
        requests, _ = tick(defs, instance, None)
    assert len(requests) == 1


def test_a_file_named_by_hand_is_loaded_once_and_does_not_break_the_sensor(tmp_path: Path) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime.now(UTC)
    odd = f"{PULL_TYPE}/dt={now:%Y-%m-%d}/hour={now:%H}/zz-copied-by-hand.ndjson"
    store.write_new(odd, b"{}\n")
    first = plan_tick(LandingCursor(), store, {}, now, HOUR, 10)
    assert [r.batch.keys for r in first.requests] == [[odd]]
    done = {r.batch_id: [dg.DagsterRunStatus.SUCCESS] for r in first.requests}
    again = plan_tick(first.cursor, store, done, now + timedelta(seconds=15), HOUR, 10)
    assert again.requests == [] and again.cursor.seen == {odd}


def drain(
    store: LocalLandingStore, cursor: LandingCursor | None, now: datetime, lateness: timedelta, per_run: int
) -> list[TickPlan]:
    """Ticks at ``now`` until one requests nothing, every requested run succeeding before the next tick."""
    plans: list[TickPlan] = []
    statuses: dict[str, list[dg.DagsterRunStatus]] = {}
    while True:
        plan = plan_tick(cursor, store, statuses, now, lateness, per_run)
        plans.append(plan)
        if not plan.requests:
            return plans
        assert len(plans) < 100, "the sensor does not converge"
        statuses = {r.batch_id: [dg.DagsterRunStatus.SUCCESS] for r in plan.requests}
        cursor = LandingCursor.parse(plan.cursor.dump())  # through JSON, as Dagster stores it


def outage_landing(store: LocalLandingStore, start: datetime, hours: int) -> list[str]:
    """Objects landed while the daemon is down: a pull every 20 minutes and a push every hour."""
    keys = [land(store, start + n * timedelta(minutes=20), 10_000 + n) for n in range(hours * 3)]
    keys += [land(store, start + n * HOUR, 20_000 + n, PUSH_TYPE) for n in range(hours)]
    return keys


def test_after_a_gap_many_times_the_window_the_sensor_resumes_where_it_stopped(tmp_path: Path) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    stopped = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    before = [land(store, stopped - timedelta(minutes=5), 1)]
    [last] = drain(store, None, stopped, HOUR, 5)[-1:]
    assert last.cursor.listed_to == stopped

    # Down for 50 lateness windows while the receiver keeps landing.
    landed = outage_landing(store, stopped + timedelta(minutes=1), 50)
    restarted = stopped + 52 * HOUR
    assert all(key_committed_at(key) < restarted - HOUR for key in landed)  # "now minus lateness" finds none

    plans = drain(store, last.cursor, restarted, HOUR, 5)

    requested = [key for plan in plans for r in plan.requests for key in r.batch.keys]
    assert sorted(requested) == sorted(landed)  # every one, each exactly once, nothing from before the outage
    assert not set(requested) & set(before)
    # The first tick resumed from where the last one stopped, less the lateness, not from now less the lateness.
    assert plans[0].listed_from == stopped - HOUR
    # A backlog is worked through oldest first, at most MAX_BATCHES_IN_FLIGHT runs per tick.
    assert all(len(plan.requests) <= MAX_BATCHES_IN_FLIGHT for plan in plans)
    assert len(plans) > 2
    firsts = [key_committed_at(plan.requests[0].batch.keys[0]) for plan in plans if plan.requests]
    assert firsts == sorted(firsts)
    assert plans[-1].cursor.listed_to == restarted


def test_the_cursor_stays_small_through_a_long_backlog(tmp_path: Path) -> None:
    store = CountingLandingStore(tmp_path / "landing")
    stopped = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    first = plan_tick(None, store, {}, stopped, HOUR, 5)
    landed = outage_landing(store, stopped + timedelta(minutes=1), 50)
    per_tick = MAX_BATCHES_IN_FLIGHT * 5  # objects one tick may take

    cursor: LandingCursor | None = first.cursor
    statuses: dict[str, list[dg.DagsterRunStatus]] = {}
    ticks = 0
    while True:
        store.listed = 0
        plan = plan_tick(cursor, store, statuses, stopped + 51 * HOUR, HOUR, 5)
        ticks += 1
        state = plan.cursor
        # seen holds one lateness window of keys (4 objects land per hour here), not the outage's 200.
        assert len(state.seen) <= 4 + 2
        assert sum(len(b.keys) for b in state.in_flight.values()) <= per_tick
        assert len(state.dump()) < 400 * (per_tick + 6)  # a few hundred bytes per key held, no more
        # The listing reads the previous window and at most one tick's worth of new objects per type.
        assert store.listed <= 4 + 2 + 2 * per_tick
        if not plan.requests:
            break
        statuses = {r.batch_id: [dg.DagsterRunStatus.SUCCESS] for r in plan.requests}
        cursor = LandingCursor.parse(state.dump())
    assert ticks >= len(landed) // per_tick


def test_a_tick_with_every_run_slot_taken_lists_nothing_and_keeps_its_place(tmp_path: Path) -> None:
    store = CountingLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    keys = [land(store, now - timedelta(minutes=50) + n * timedelta(seconds=10), n) for n in range(12)]
    first = plan_tick(None, store, {}, now, HOUR, 1, max_batches_in_flight=4)
    assert [r.batch.keys for r in first.requests] == [[key] for key in keys[:4]]
    assert first.cursor.listed_to == key_committed_at(keys[3])

    store.listings = 0
    busy = plan_tick(first.cursor, store, {}, now + timedelta(seconds=15), HOUR, 1, max_batches_in_flight=4)
    # The four runs never appeared: asked for again under their keys; no room for more, so no listing.
    assert [r.batch_id for r in busy.requests] == [r.batch_id for r in first.requests]
    assert (busy.listed_from, store.listings, busy.cursor.listed_to) == (None, 0, first.cursor.listed_to)

    done = {r.batch_id: [dg.DagsterRunStatus.SUCCESS] for r in first.requests}
    later = plan_tick(busy.cursor, store, done, now + timedelta(seconds=30), HOUR, 1, max_batches_in_flight=4)
    assert [r.batch.keys for r in later.requests] == [[key] for key in keys[4:8]]


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
    assert state is not None
    # It resumes from its newest remembered key or its last tick, whichever is earlier.
    assert state.listed_to == key_committed_at(remembered)
    assert LandingCursor.parse(v1) == state  # the newest remembered key alone gives the same place here
    assert json.loads(state.dump())["version"] == 2
    assert LandingCursor.parse(state.dump()) == state

    # Through the real sensor: the old batch is still in flight (no run: asked for again under its key), and
    # every object landed since the last tick is requested, although all are older than the lateness window.
    requests, cursor = tick(defs, instance, v1)
    assert requests[0].run_key == "b-1"
    assert sorted(k for r in requests[1:] for k in requested_keys(r)) == landed_since
    upgraded = LandingCursor.parse(cursor)
    assert upgraded is not None and json.loads(cursor)["version"] == 2
    assert set(upgraded.in_flight) == {r.run_key for r in requests}


def test_a_version_1_cursor_with_nothing_to_resume_from_lists_the_window_as_before(tmp_path: Path) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    key = land(store, now - timedelta(minutes=30), 1)
    state = LandingCursor.parse(json.dumps({"version": 1, "seen": [], "in_flight": {}, "retries": []}))
    assert state is not None and state.listed_to is None
    plan = plan_tick(state, store, {}, now, HOUR, 10)
    assert (plan.listed_from, [r.batch.keys for r in plan.requests]) == (now - HOUR, [[key]])
    assert plan.cursor.listed_to == now


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


@hyp_settings(max_examples=150, deadline=None)
@given(
    minutes=st.lists(st.integers(min_value=-200, max_value=400), min_size=1, max_size=60),
    types=st.lists(st.sampled_from((PULL_TYPE, PUSH_TYPE, "dev.chainguard.other.v1")), min_size=60, max_size=60),
    by_hand=st.integers(min_value=0, max_value=3),
    per_run=st.integers(min_value=1, max_value=4),
    batches=st.integers(min_value=1, max_value=3),
)
def test_a_backlog_is_requested_exactly_once_whatever_the_mix_of_types_and_caps(
    minutes: list[int], types: list[str], by_hand: int, per_run: int, batches: int
) -> None:
    stopped = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    lateness = HOUR
    keys = {object_key(types[n], stopped + timedelta(minutes=m), "m", n) for n, m in enumerate(minutes)}
    # Names the receiver did not write, in the hour the sensor resumes from.
    keys |= {f"{PULL_TYPE}/dt=2026-11-27/hour=11/zz-by-hand-{n}.ndjson" for n in range(by_hand)}
    store = MemoryLandingStore(keys)
    now = stopped + 8 * HOUR
    cursor: LandingCursor | None = LandingCursor(listed_to=stopped)
    statuses: dict[str, list[dg.DagsterRunStatus]] = {}
    requested: list[str] = []
    for _ in range(len(keys) + 2):
        plan = plan_tick(cursor, store, statuses, now, lateness, per_run, max_batches_in_flight=batches)
        assert len(plan.cursor.in_flight) <= batches
        requested += [key for r in plan.requests for key in r.batch.keys]
        if not plan.requests:
            break
        statuses = {r.batch_id: [dg.DagsterRunStatus.SUCCESS] for r in plan.requests}
        cursor = LandingCursor.parse(plan.cursor.dump())
    else:
        raise AssertionError("the sensor did not converge")
    wanted = {key for key in keys if "by-hand" in key or key_committed_at(key) >= stopped - lateness}
    assert sorted(requested) == sorted(wanted)  # each exactly once, none from before the resume point
    assert plan.cursor.listed_to == now


@hyp_settings(max_examples=150, deadline=None)
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
    per_run=st.integers(min_value=1, max_value=4),
    batches=st.integers(min_value=1, max_value=3),
)
def test_objects_listable_within_the_lateness_are_requested_exactly_once_whatever_the_downtime(
    objects: list[tuple[int, int, str]], gaps: list[int], per_run: int, batches: int
) -> None:
    start = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
    visible_at = {
        object_key(kind, start + timedelta(minutes=at), "m", n): start + timedelta(minutes=at + delay)
        for n, (at, delay, kind) in enumerate(objects)
    }
    store = MemoryLandingStore(visible_at, visible_at)
    store.now = start
    plan = plan_tick(None, store, {}, start, HOUR, per_run, max_batches_in_flight=batches)
    requested = [key for r in plan.requests for key in r.batch.keys]
    # Ticks at irregular times (some after downtime of many lateness windows), then until nothing is left.
    times = [start + timedelta(minutes=sum(gaps[: n + 1])) for n in range(len(gaps))]
    times += [max(visible_at.values()) + timedelta(minutes=1)] * (len(visible_at) + 2)
    for now in times:
        statuses = {r.batch_id: [dg.DagsterRunStatus.SUCCESS] for r in plan.requests}
        store.now = max(store.now, now)
        plan = plan_tick(LandingCursor.parse(plan.cursor.dump()), store, statuses, store.now, HOUR, per_run, batches)
        requested += [key for r in plan.requests for key in r.batch.keys]
    assert sorted(requested) == sorted(visible_at)  # each exactly once
    assert plan.requests == [] and plan.cursor.in_flight == {}
