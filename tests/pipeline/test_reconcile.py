"""The reconciliation pass and the load-lag check: a landed object the sensor never requested is named by the
check and loaded by the next pass; the pass lists only its day folders and asks the ledger in batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from pull_events.landing import GcsLandingStore, LandedObject, LocalLandingStore, key_committed_at
from pull_events.settings import Settings
from pull_events_dagster.defs.assets import PULLS_KEY
from pull_events_dagster.defs.jobs import LOAD_JOB
from pull_events_dagster.defs.reconcile import (
    LOAD_LAG_CHECK,
    LOAD_LAG_CHECK_KEY,
    RECONCILE_JOB,
    RECONCILE_SCHEDULE,
    audit_landing,
    days_to_compare,
)
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from tests.pipeline.conftest import rows
from tests.pipeline.factories import PULL_TYPE, PUSH_TYPE, other_event, pull_event, write_object
from tests.pipeline.test_duckdb_warehouse import PULLS, facts
from tests.pipeline.test_sensor import requested_keys, tick


def land(store: LocalLandingStore, committed_at: datetime, event_id: str, event_type: str = PULL_TYPE) -> str:
    if event_type == PULL_TYPE:
        event = pull_event(facts(event_id))
    else:
        event = other_event(event_type, event_id, committed_at, {"id": event_id})
    return write_object(store, event_type, [event], committed_at, instance=event_id)


def lag_evaluation(run: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in run.get_asset_check_evaluations() if e.check_name == LOAD_LAG_CHECK]
    return evaluation


def reconcile(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """One reconciliation pass, as the schedule requests it."""
    run = defs.resolve_job_def(RECONCILE_JOB).execute_in_process(instance=instance)
    assert run.success
    return run


def loaded(warehouse: DuckDBWarehouse) -> list[str]:
    return [r[0] for r in rows(warehouse, "SELECT landing_object FROM cloudevents_pull_event_recorder.loaded_objects")]


def test_a_pass_loads_an_object_the_sensor_never_requested_after_the_check_names_it(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    store: LocalLandingStore,
    warehouse: DuckDBWarehouse,
    settings: Settings,
) -> None:
    requests, cursor = tick(defs, instance, None)  # the sensor has caught up: nothing landed yet
    assert requests == []
    now = datetime.now(UTC)
    # Landed three days late, by its key's time (an upload that stalled, a file restored by hand) ...
    stale = land(store, now - timedelta(days=3), "stale")
    # ... and one the sensor has in flight, younger than the allowed lag.
    fresh = land(store, now - timedelta(seconds=30), "fresh")
    requests, cursor = tick(defs, instance, cursor)
    assert [requested_keys(r) for r in requests] == [[fresh]]  # the stale object is outside the sensor's window

    # The check alone (as from the UI): it fails naming the stale object, and loads nothing.
    check_only = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection={LOAD_LAG_CHECK_KEY}
    )
    run = check_only.execute_in_process(instance=instance)
    evaluation = lag_evaluation(run)
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert evaluation.metadata["unloaded_objects"].value == 1
    assert f"`{stale}`" in evaluation.metadata["unloaded_keys"].value
    assert fresh not in evaluation.metadata["unloaded_keys"].value
    assert evaluation.metadata["unloaded_within_lag"].value == 1
    assert evaluation.metadata["oldest_lag_seconds"].value >= 3 * 86_400
    assert evaluation.metadata["max_load_lag_seconds"].value == settings.pipeline.max_load_lag_seconds
    assert run.get_asset_materialization_events() == []
    assert loaded(warehouse) == []

    # A pass: the check reports what it found first, then the pass loads it through the loader.
    run = reconcile(defs, instance)
    evaluation = lag_evaluation(run)
    assert evaluation.passed is False and f"`{stale}`" in evaluation.metadata["unloaded_keys"].value
    [materialization] = [m for m in run.get_asset_materialization_events() if m.asset_key == PULLS_KEY]
    meta = materialization.materialization.metadata
    assert (meta["objects_loaded"].value, meta["reconcile"].value) == (1, True)
    assert loaded(warehouse) == [stale]  # the younger one is left to the sensor's run
    assert rows(warehouse, f"SELECT event_id FROM {PULLS}") == [("stale",)]

    # The next pass passes, and changes no table (no materialization, so no derived-table refresh either).
    run = reconcile(defs, instance)
    evaluation = lag_evaluation(run)
    assert evaluation.passed and evaluation.metadata["unloaded_objects"].value == 0
    assert run.get_asset_materialization_events() == []

    # The sensor's run loads the younger one; loading the stale one again would have been skipped by the ledger.
    [request] = requests
    job = defs.resolve_job_def(LOAD_JOB)
    assert job.execute_in_process(
        run_config=request.run_config, tags=request.tags, partition_key=request.partition_key, instance=instance
    ).success
    assert sorted(loaded(warehouse)) == sorted([stale, fresh])
    assert lag_evaluation(reconcile(defs, instance)).metadata["unloaded_within_lag"].value == 0


def test_objects_of_every_type_and_every_compared_day_are_found_and_older_days_are_not_listed(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    now = datetime.now(UTC)
    days = 7  # PULL_EVENTS_RECONCILE_DAYS default: today and the 7 days before
    in_range = [
        land(store, now - timedelta(days=days) + timedelta(hours=1), "oldest-compared"),
        land(store, now - timedelta(days=2), "push-2d", PUSH_TYPE),
        land(store, now - timedelta(hours=1), "hour-old"),
    ]
    # Earlier than the compared days: a rebuild's business, not a pass's.
    too_old = land(store, datetime.combine(now.date() - timedelta(days=days + 1), datetime.min.time(), UTC), "old")

    reconcile(defs, instance)

    assert sorted(loaded(warehouse)) == sorted(in_range)
    assert too_old not in loaded(warehouse)


class CountingStore(LocalLandingStore):
    """The real local store, counting what its listings hand back."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listed: list[str] = []

    def list_from(self, type_dir: str, start_key: str) -> Iterator[LandedObject]:
        for obj in super().list_from(type_dir, start_key):
            self.listed.append(obj.key)
            yield obj


class CountingLedger(DuckDBWarehouse):
    """The DuckDB warehouse, recording the size of each ledger lookup."""

    lookups: list[int]

    def loaded_object_keys(self, keys: Sequence[str]) -> set[str]:
        self.lookups.append(len(keys))
        return super().loaded_object_keys(keys)


def test_the_audit_lists_only_its_day_folders_and_asks_the_ledger_in_batches(
    landing_dir: Path, duckdb_path: Path
) -> None:
    store = CountingStore(landing_dir)
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    history = [land(store, now - timedelta(days=30, minutes=n), f"h{n}") for n in range(20)]  # a month before
    recent = [land(store, now - timedelta(days=n % 3, minutes=n), f"r{n}") for n in range(7)]
    recent.append(land(store, now - timedelta(hours=5), "push", PUSH_TYPE))
    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    ledger = CountingLedger(DuckDBResource(database=str(duckdb_path)).get_connection)
    ledger.lookups = []
    ledger.ensure_tables()
    ledger.load_objects(store, [LandedObject(recent[0], 0, store.uri(recent[0]))], "run-1")
    store.listed.clear()

    audit = audit_landing(store, ledger, now, 2, batch_size=3)

    assert audit.days == [date(2026, 11, 25), date(2026, 11, 26), date(2026, 11, 27)]
    assert audit.compared == len(recent)
    assert sorted(u.obj.key for u in audit.unloaded) == sorted(recent[1:])
    # The month-old history is never listed: each day is one ranged listing, which stops past its folder.
    assert not set(store.listed) & set(history)
    assert len(store.listed) <= len(recent) + 2 * len(audit.days)
    assert ledger.lookups and max(ledger.lookups) <= 3 and sum(ledger.lookups) == len(recent)
    # The overdue ones: older than the lag, oldest first.
    overdue = audit.overdue(timedelta(hours=6))
    assert {u.obj.key for u in overdue} == {k for k in recent[1:] if key_committed_at(k) < now - timedelta(hours=6)}
    assert [u.landed_at for u in overdue] == sorted(u.landed_at for u in overdue if u.landed_at)
    assert len(overdue) == len(recent) - 4  # loaded, or landed within the last six hours


def test_days_to_compare_are_today_and_the_days_before() -> None:
    now = datetime(2026, 3, 1, 0, 5, tzinfo=UTC)
    assert days_to_compare(now, 1) == [date(2026, 2, 28), date(2026, 3, 1)]


def test_the_schedule_requests_a_pass_unless_the_last_one_is_still_queued_or_running(
    defs: dg.Definitions, instance: dg.DagsterInstance
) -> None:
    schedule = defs.resolve_schedule_def(RECONCILE_SCHEDULE)
    with dg.build_schedule_context(instance=instance) as context:
        [request] = schedule.evaluate_tick(context).run_requests or []
    assert request.tags["dagster/max_runtime"] == str(2 * 3600)

    instance.create_run_for_job(defs.resolve_job_def(RECONCILE_JOB), status=dg.DagsterRunStatus.STARTED)
    with dg.build_schedule_context(instance=instance) as context:
        data = schedule.evaluate_tick(context)
    assert not data.run_requests and "still STARTED" in (data.skip_message or "")


def test_a_day_folder_is_listed_alone_on_a_bucket_too(fake_gcs, gcs_bucket: str) -> None:
    gcs = GcsLandingStore(gcs_bucket, "landing", client=fake_gcs.client())
    day = datetime(2026, 11, 27, tzinfo=UTC)
    keys = {
        moment: write_object(gcs, PULL_TYPE, [pull_event(facts(f"g{n}"))], moment, sequence=n)
        for n, moment in enumerate(
            (day - timedelta(microseconds=1), day, day + timedelta(hours=23, minutes=59), day + timedelta(days=1))
        )
    }
    # A type whose name extends another's: its keys sort inside the other type's range but are not of that type.
    write_object(gcs, f"{PULL_TYPE}x", [pull_event(facts("gx"))], day + timedelta(hours=1))

    listed = [o.key for o in gcs.list_day(PULL_TYPE, day.date())]

    assert listed == [keys[day], keys[day + timedelta(hours=23, minutes=59)]]
    assert all(o.uri.startswith(f"gs://{gcs_bucket}/landing/") for o in gcs.list_day(PULL_TYPE, day.date()))
