"""The whole pipeline in process: landed objects -> sensor ticks -> load runs -> automation -> derived tables.

Runs are executed exactly as the sensor and the automation sensor request them, against a real Dagster
instance, a real landing directory (or fake-gcs-server bucket) and a real DuckDB file.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from pull_events.landing import GcsLandingStore, LocalLandingStore
from pull_events_dagster.defs import build_definitions
from pull_events_dagster.defs.assets import (
    DAILY_PULLS_KEY,
    DERIVED_KEYS,
    PULLS_KEY,
    QUARANTINED_KEY,
    REJECTED_KEY,
    SUMMARY_KEY,
)
from pull_events_dagster.defs.checks import (
    FUTURE_DATED,
    RAW_EVENT_RATE,
    RECONCILED,
    REJECTED_RATE,
    REQUIRED,
    UNIQUE,
)
from pull_events_dagster.defs.jobs import LOAD_JOB, REBUILD_JOB
from pull_events_dagster.defs.reconcile import RECONCILE_JOB
from pull_events_dagster.defs.sensors import LANDING_SENSOR
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from pull_events_dagster.warehouse.schema import TABLES
from tests.pipeline.conftest import pipeline_settings, rows
from tests.pipeline.factories import PULL_TYPE, LandingSpec, pull_event, synthetic_landing, write_object
from tests.pipeline.test_duckdb_warehouse import (
    DAILY,
    LEDGER,
    PULLS,
    QUARANTINED,
    SUMMARY,
    expected_daily,
    expected_summary,
    facts,
)

VOLATILE = {"loaded_at", "computed_at", "run_id", "rejected_at", "refreshed_at", "loaded_through"}


def sensor_tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> tuple[list, str]:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        result = defs.resolve_sensor_def(LANDING_SENSOR)(context)
    return list(result.run_requests or []), result.cursor or ""


def launch(defs: dg.Definitions, instance: dg.DagsterInstance, requests: list) -> list[dg.ExecuteInProcessResult]:
    """Run the requested load runs as the daemon would (same config, same tags)."""
    job = defs.resolve_job_def(LOAD_JOB)
    return [
        job.execute_in_process(run_config=r.run_config, tags=r.tags, instance=instance, raise_on_error=False)
        for r in requests
    ]


def automate(defs: dg.Definitions, instance: dg.DagsterInstance, cursor=None):
    """One automation tick for the derived tables, and the run it requests."""
    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    requested = [key for key in DERIVED_KEYS if evaluation.get_num_requested(key)]
    run = None
    if requested:
        run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=requested
        )
        assert run.success
    return evaluation, requested, run


def metadata(run: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    [materialization] = [m for m in run.get_asset_materialization_events() if m.asset_key == key]
    return {k: v.value for k, v in materialization.materialization.metadata.items()}


def snapshot(warehouse: DuckDBWarehouse) -> dict[str, list[tuple]]:
    """Every table's content without the columns that record when or by which run it was written."""
    tables = {}
    for table, columns in TABLES.items():
        kept = ", ".join(f'"{c.name}"' for c in columns if c.name not in VOLATILE)
        tables[table] = rows(warehouse, f"SELECT {kept} FROM {base.DATASET}.{table} ORDER BY ALL")
    return tables


def test_landed_events_flow_through_sensor_runs_into_both_derived_tables(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    now = datetime.now(UTC)
    spec = LandingSpec(
        events=600,
        repositories=4,
        days=5,
        events_per_object=80,
        duplicate_rate=0.05,
        bad_line_rate=0.02,
        other_type_rate=0.05,
        committed_from=now - timedelta(minutes=10),
        commit_spacing=timedelta(seconds=1),
    )
    landed = synthetic_landing(store, spec)
    # The automation sensor ticks from the start, before anything is loaded: nothing to do yet.
    evaluation, requested, _ = automate(defs, instance)
    assert requested == []

    requests, cursor = sensor_tick(defs, instance, None)
    assert max(len(r.run_config["ops"]["load_landing_objects"]["config"]["objects"]) for r in requests) == 3
    runs = launch(defs, instance, requests)
    assert all(run.success for run in runs)
    checks = [e for run in runs for e in run.get_asset_check_evaluations()]
    assert len(checks) == 6 * len(runs)
    assert all(e.passed for e in checks if e.check_name in (UNIQUE, REQUIRED, RECONCILED, FUTURE_DATED))
    [rate] = [e for e in runs[-1].get_asset_check_evaluations() if e.check_name == REJECTED_RATE]
    assert rate.metadata["rejected_lines"].value == len(landed.rejected)
    assert rate.metadata["total_lines"].value == landed.lines
    assert len(landed.rejected) / landed.lines > 0.01  # above the default threshold: the check says so
    assert (rate.passed, rate.severity) == (False, dg.AssetCheckSeverity.WARN)
    [raw] = [e for e in runs[-1].get_asset_check_evaluations() if e.check_name == RAW_EVENT_RATE]
    assert (raw.metadata["rows_with_raw_event"].value, raw.metadata["pull_rows"].value) == (
        landed.with_extra_fields,
        landed.pull_count,
    )
    assert 0 < landed.with_extra_fields / landed.pull_count <= 0.1  # under the default threshold
    assert raw.passed
    assert raw.metadata["keys_without_column"].value == {
        "chainguarddev1delivery": landed.with_extra_fields,
        "data.body.future_field": landed.with_extra_fields,
    }

    evaluation, requested, derived_run = automate(defs, instance, evaluation.cursor)
    assert requested == list(DERIVED_KEYS)

    assert rows(warehouse, f"SELECT count(*) FROM {PULLS}") == [(landed.pull_count,)]
    assert rows(
        warehouse,
        f"""SELECT day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors,
            unique_clients FROM {DAILY} ORDER BY day, repository""",
    ) == expected_daily(landed.pulls)
    summary = rows(
        warehouse,
        f"""SELECT repository, events, image_pulls, errors, error_rate, unique_actors, unique_clients, first_seen,
            last_seen, image_pulls_last_7d, image_pulls_last_30d, top_tags FROM {SUMMARY} ORDER BY repository""",
    )
    [(refreshed_at,)] = rows(warehouse, f"SELECT DISTINCT computed_at FROM {SUMMARY}")
    expected = expected_summary(landed.pulls, refreshed_at)
    assert [r[:4] + r[5:] for r in summary] == [e[:4] + e[5:] for e in expected]
    assert [r[4] for r in summary] == pytest.approx([e[4] for e in expected])

    loaded = [metadata(run, PULLS_KEY) for run in runs]
    assert sum(m["objects_loaded"] for m in loaded) == len(landed.keys)
    assert sum(m["events_loaded"] for m in loaded) == landed.pull_count
    assert sum(m["duplicates_skipped"] for m in loaded) == landed.duplicates
    assert sum(m["lines_rejected"] for m in loaded) == len(landed.rejected)
    assert loaded[-1]["dagster/row_count"] == landed.pull_count
    assert [c.name for c in loaded[-1]["dagster/column_schema"].columns][:3] == [
        "event_id",
        "event_source",
        "event_type",
    ]
    assert metadata(runs[-1], REJECTED_KEY)["dagster/row_count"] == len(landed.rejected)
    daily_meta = metadata(derived_run, DAILY_PULLS_KEY)
    assert daily_meta["days_recomputed"] == sorted({p.when.date().isoformat() for p in landed.pulls})
    assert daily_meta["dagster/row_count"] == len(expected_daily(landed.pulls))
    assert metadata(derived_run, SUMMARY_KEY)["dagster/row_count"] == 4

    # Nothing new: no load, no refresh.
    requests, cursor = sensor_tick(defs, instance, cursor)
    assert requests == []
    evaluation, requested, _ = automate(defs, instance, evaluation.cursor)
    assert requested == []

    # A late event for the first day, and a redelivery, land: only that day is recomputed.
    first_day = min(p.when for p in landed.pulls).date()
    late = pull_event(facts("late-1", when=datetime.combine(first_day, datetime.min.time()) + timedelta(hours=23)))
    write_object(store, PULL_TYPE, [late, late], datetime.now(UTC), instance="late", sequence=1)
    requests, cursor = sensor_tick(defs, instance, cursor)
    [late_run] = launch(defs, instance, requests)
    assert metadata(late_run, PULLS_KEY)["events_loaded"] == 1
    assert metadata(late_run, PULLS_KEY)["duplicates_skipped"] == 1
    evaluation, requested, derived_run = automate(defs, instance, evaluation.cursor)
    assert requested == list(DERIVED_KEYS)
    assert metadata(derived_run, DAILY_PULLS_KEY)["days_recomputed"] == [first_day.isoformat()]
    assert rows(
        warehouse, f"SELECT events FROM {DAILY} WHERE day = $d AND repository = 'acme.dev/python'", {"d": first_day}
    ) == [(1,)]


def test_rerunning_a_load_run_loads_nothing_twice(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    write_object(store, PULL_TYPE, [pull_event(facts("r1")), pull_event(facts("r2"))], datetime.now(UTC))
    [request], _ = sensor_tick(defs, instance, None)

    first, rerun = launch(defs, instance, [request, request])

    assert (metadata(first, PULLS_KEY)["events_loaded"], metadata(rerun, PULLS_KEY)["events_loaded"]) == (2, 0)
    assert metadata(rerun, PULLS_KEY)["objects_already_loaded"] == 1
    assert rows(warehouse, f"SELECT event_id FROM {PULLS} ORDER BY 1") == [("r1",), ("r2",)]


def test_an_object_gone_when_its_run_starts_is_quarantined_and_the_next_reconciliation_pass_loads_it(
    instance: dg.DagsterInstance, store: LocalLandingStore, warehouse: DuckDBWarehouse, duckdb_path: Path
) -> None:
    defs = build_definitions(pipeline_settings(str(store.root), str(duckdb_path), PULL_EVENTS_MAX_LOAD_LAG_S="1"))
    key = write_object(store, PULL_TYPE, [pull_event(facts("f1"))], datetime.now(UTC) - timedelta(seconds=5))
    neighbour = write_object(
        store, PULL_TYPE, [pull_event(facts("f2"))], datetime.now(UTC) - timedelta(seconds=5), sequence=1
    )
    content = Path(store.uri(key)).read_bytes()
    [request], _ = sensor_tick(defs, instance, None)
    Path(store.uri(key)).unlink()  # the object cannot be read when the run starts

    [run] = launch(defs, instance, [request])

    assert run.success  # the rest of the batch loads
    assert rows(warehouse, f"SELECT event_id FROM {PULLS}") == [("f2",)]
    assert rows(warehouse, f"SELECT landing_object FROM {LEDGER}") == [(neighbour,)]
    assert rows(warehouse, f"SELECT landing_object, reason FROM {QUARANTINED}") == [(key, "object_missing")]
    shown = metadata(run, QUARANTINED_KEY)
    assert (shown["dagster/row_count"], shown["objects_quarantined"]) == (1, 1)
    assert shown["quarantined_by_this_run"] == f"- `{key}`: object_missing"

    store.write_new(key, content)  # readable again: the next pass finds it unloaded and loads it
    reconciled = defs.resolve_job_def(RECONCILE_JOB).execute_in_process(instance=instance)

    assert reconciled.success
    assert rows(warehouse, f"SELECT event_id FROM {PULLS} ORDER BY 1") == [("f1",), ("f2",)]
    assert rows(warehouse, f"SELECT count(*) FROM {QUARANTINED}") == [(0,)]


def test_rebuilding_from_the_landing_zone_yields_identical_tables(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    spec = LandingSpec(
        events=500,
        repositories=3,
        days=4,
        events_per_object=60,
        duplicate_rate=0.05,
        bad_line_rate=0.02,
        other_type_rate=0.05,
        committed_from=datetime.now(UTC) - timedelta(minutes=5),
    )
    synthetic_landing(store, spec)
    evaluation, _, _ = automate(defs, instance)
    requests, _ = sensor_tick(defs, instance, None)
    assert all(run.success for run in launch(defs, instance, requests))
    _, requested, _ = automate(defs, instance, evaluation.cursor)
    assert requested == list(DERIVED_KEYS)
    before = snapshot(warehouse)
    assert all(before[t] for t in (base.PULLS, base.EVENTS, base.REJECTED, base.DAILY_PULLS, base.REPOSITORY_SUMMARY))

    rebuild = defs.resolve_job_def(REBUILD_JOB).execute_in_process(instance=instance)

    assert rebuild.success
    assert metadata(rebuild, PULLS_KEY)["rebuild"] is True
    assert snapshot(warehouse) == before
    shadow = base.DATASET + base.SHADOW_SUFFIX  # built beside the tables, dropped once swapped in
    assert rows(warehouse, "SELECT * FROM information_schema.schemata WHERE schema_name = $s", {"s": shadow}) == []


def test_objects_in_a_gcs_bucket_load_through_the_same_definitions(
    fake_gcs, gcs_bucket: str, instance: dg.DagsterInstance, duckdb_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    defs = build_definitions(pipeline_settings(f"gs://{gcs_bucket}/landing", str(duckdb_path)))
    gcs = GcsLandingStore(gcs_bucket, "landing", client=fake_gcs.client())
    write_object(gcs, PULL_TYPE, [pull_event(facts("g1")), pull_event(facts("g2"))], datetime.now(UTC))

    requests, _ = sensor_tick(defs, instance, None)
    [run] = launch(defs, instance, requests)

    assert run.success
    assert metadata(run, PULLS_KEY)["events_loaded"] == 2
    warehouse = DuckDBWarehouse(defs.resources["warehouse"].duckdb.get_connection)
    assert rows(warehouse, f"SELECT event_id FROM {PULLS} ORDER BY 1") == [("g1",), ("g2",)]


def test_pulls_dated_beyond_the_configured_tolerance_fail_a_warning_check_that_names_them(
    landing_dir: Path, duckdb_path: Path, store: LocalLandingStore, instance: dg.DagsterInstance
) -> None:
    defs = build_definitions(
        pipeline_settings(str(landing_dir), str(duckdb_path), PULL_EVENTS_FUTURE_TOLERANCE_S=str(24 * 3600))
    )
    now = datetime.now(UTC)
    civil_now = now.replace(tzinfo=None)
    pulls = [
        facts("recent", when=civil_now - timedelta(hours=1)),
        facts("skewed", when=civil_now + timedelta(hours=2)),  # within the day of tolerance set above
        facts("ahead", when=civil_now + timedelta(days=2), repository="acme.dev/ahead"),
        facts("far", when=datetime(9999, 1, 1), repository="acme.dev/far"),
    ]
    write_object(store, PULL_TYPE, [pull_event(p) for p in pulls], now)

    requests, _ = sensor_tick(defs, instance, None)
    [run] = launch(defs, instance, requests)

    assert run.success
    [check] = [e for e in run.get_asset_check_evaluations() if e.check_name == FUTURE_DATED]
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert (check.metadata["future_dated_pulls"].value, check.metadata["tolerance_seconds"].value) == (2, 86400)
    assert check.metadata["examples"].value.splitlines()[2:] == [
        "| cgr.dev | far | acme.dev/far | 9999-01-01T00:00:00 |",
        f"| cgr.dev | ahead | acme.dev/ahead | {pulls[2].when.isoformat()} |",
    ]
