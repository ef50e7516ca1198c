"""The landing sensor: batching, late and out-of-order objects, bounded listing, no double loads, retries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from pull_events.landing import LandedObject, LocalLandingStore
from pull_events.settings import Settings
from pull_events_dagster.defs.jobs import LOAD_JOB
from pull_events_dagster.defs.sensors import (
    BATCH_TAG,
    LANDING_SENSOR,
    LandingCursor,
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

    window_start = now + timedelta(minutes=3) - HOUR
    in_window = [o.key for o in LocalLandingStore(store.root).list_since(window_start)]
    assert store.listed == len(in_window) == 11 + 2  # the last hour of history and the two new objects
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

    assert (later.cursor.seen, later.cursor.in_flight, later.listed, later.requests) == (set(), {}, 0, [])
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
