"""The whole pipeline in process: landed objects -> sensor ticks -> load runs -> daily sensor -> derived tables.

Runs are executed exactly as the sensors request them, against a real Dagster instance, a real landing
directory (or fake-gcs-server bucket) and a real DuckDB file.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from pull_events.landing import GcsLandingStore, LocalLandingStore, key_committed_at
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
    AUDIT_JOB,
    FUTURE_DATED,
    RAW_EVENT_RATE,
    RECONCILED,
    REJECTED_RATE,
    REQUIRED,
    SUMMARY_MATCHES,
    UNIQUE,
)
from pull_events_dagster.defs.derived import DAILY_SENSOR, DERIVED_JOB
from pull_events_dagster.defs.jobs import LOAD_JOB, REBUILD_JOB
from pull_events_dagster.defs.load_checks import LOADED_COMPLETE, LOADED_DATED, LOADED_UNIQUE
from pull_events_dagster.defs.reconcile import RECONCILE_JOB
from pull_events_dagster.defs.sensors import LANDING_SENSOR
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from pull_events_dagster.warehouse.schema import TABLES
from tests.pipeline.conftest import pipeline_settings, rows
from tests.pipeline.factories import (
    PULL_TYPE,
    LandingSpec,
    poison_event,
    pull_event,
    synthetic_landing,
    write_object,
)
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
        job.execute_in_process(
            run_config=r.run_config,
            tags=r.tags,
            partition_key=r.partition_key,
            instance=instance,
            raise_on_error=False,
        )
        for r in requests
    ]


def derive(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> tuple[list[dg.RunRequest], list[dg.ExecuteInProcessResult], str]:
    """One tick of the daily sensor, and the derived-table runs it requests, run as the daemon would."""
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as context:
        result = defs.resolve_sensor_def(DAILY_SENSOR)(context)
    requests = list(result.run_requests or [])
    job = defs.resolve_job_def(DERIVED_JOB)
    runs = [job.execute_in_process(instance=instance, partition_key=r.partition_key, tags=r.tags) for r in requests]
    assert all(run.success for run in runs)
    return requests, runs, result.cursor or ""


def automate(defs: dg.Definitions, instance: dg.DagsterInstance, cursor=None):
    """One automation tick: which derived tables it would refresh."""
    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return evaluation, [key for key in DERIVED_KEYS if evaluation.get_num_requested(key)]


def day_metadata(runs: list[dg.ExecuteInProcessResult]) -> dict[str, dict]:
    """The metadata of each day partition of daily_pulls the runs materialized."""
    return {
        m.materialization.partition: {k: v.value for k, v in m.materialization.metadata.items()}
        for run in runs
        for m in run.get_asset_materialization_events()
        if m.asset_key == DAILY_PULLS_KEY
    }


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
    # The daily sensor ticks from the start, before anything is loaded: nothing to do yet.
    day_requests, _, day_cursor = derive(defs, instance, None)
    assert day_requests == []
    evaluation, requested = automate(defs, instance)
    assert requested == []

    requests, cursor = sensor_tick(defs, instance, None)
    assert max(len(r.run_config["ops"]["load_landing_objects"]["config"]["objects"]) for r in requests) == 3
    runs = launch(defs, instance, requests)
    assert all(run.success for run in runs)
    # Each load judges its own rows; no load runs the whole-table audits.
    checks = [e for run in runs for e in run.get_asset_check_evaluations()]
    assert sorted({e.check_name for e in checks}) == sorted([LOADED_COMPLETE, LOADED_DATED, LOADED_UNIQUE])
    assert len(checks) == 3 * len(runs) and all(e.passed for e in checks)
    assert sum(e.metadata["rows_written"].value for e in checks if e.check_name == LOADED_UNIQUE) == (
        landed.pull_count + landed.other_events
    )

    # The daily sensor asks for the days the loads touched (contiguous days: one run), with the summary after them.
    days = sorted({p.when.date().isoformat() for p in landed.pulls})
    day_requests, derived_runs, day_cursor = derive(defs, instance, day_cursor)
    assert [(r.partition_key, r.tags.get("dagster/asset_partition_range_start")) for r in day_requests] == [
        (None, days[0])
    ]
    assert day_requests[0].tags["dagster/asset_partition_range_end"] == days[-1]
    [derived_run] = derived_runs
    # The summary was refreshed in that run: the automation has nothing more to do.
    evaluation, requested = automate(defs, instance, evaluation.cursor)
    assert requested == []

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
    [(refreshed_at,)] = rows(warehouse, f"SELECT max(computed_at) FROM {SUMMARY}")
    expected = expected_summary(landed.pulls, refreshed_at)
    assert [r[:4] + r[5:] for r in summary] == [e[:4] + e[5:] for e in expected]
    assert [r[4] for r in summary] == pytest.approx([e[4] for e in expected])

    loaded = [metadata(run, PULLS_KEY) for run in runs]
    assert sum(m["objects_loaded"] for m in loaded) == len(landed.keys)
    assert sum(m["events_loaded"] for m in loaded) == landed.pull_count
    assert sum(m["duplicates_skipped"] for m in loaded) == landed.duplicates
    assert sum(m["lines_rejected"] for m in loaded) == len(landed.rejected)
    assert loaded[-1]["dagster/row_count"] == landed.pull_count
    assert loaded[-1]["dagster/table_name"] == f"{base.DATASET}.{base.PULLS}"
    assert [c.name for c in loaded[-1]["dagster/column_schema"].columns][:3] == [
        "event_id",
        "event_source",
        "event_type",
    ]
    assert metadata(runs[-1], REJECTED_KEY)["dagster/row_count"] == len(landed.rejected)
    # Every day is a partition, materialized in that one run; the table's figures ride along.
    assert sorted(day_metadata(derived_runs)) == days
    per_day = Counter((p.when.date().isoformat(), p.repository) for p in landed.pulls)
    run_meta = next(iter(day_metadata(derived_runs).values()))
    assert run_meta["rows_per_day"] == {day: sum(1 for d, _ in per_day if d == day) for day in days}
    assert run_meta["dagster/row_count"] == len(expected_daily(landed.pulls))
    assert instance.get_materialized_partitions(DAILY_PULLS_KEY) == set(days)
    assert metadata(derived_run, SUMMARY_KEY)["dagster/row_count"] == 4
    assert metadata(derived_run, SUMMARY_KEY)["repositories_recomputed"] == 4

    # Nothing new: no load, no refresh.
    requests, cursor = sensor_tick(defs, instance, cursor)
    assert requests == []
    day_requests, _, day_cursor = derive(defs, instance, day_cursor)
    assert day_requests == []

    # A late event for the first day, and a redelivery, land: only that day is recomputed, in a run of its own
    # that counts its rows, and only its repository's summary row.
    first_day = min(p.when for p in landed.pulls).date()
    late = pull_event(facts("late-1", when=datetime.combine(first_day, datetime.min.time()) + timedelta(hours=23)))
    write_object(store, PULL_TYPE, [late, late], datetime.now(UTC), instance="late", sequence=1)
    requests, cursor = sensor_tick(defs, instance, cursor)
    [late_run] = launch(defs, instance, requests)
    assert metadata(late_run, PULLS_KEY)["events_loaded"] == 1
    assert metadata(late_run, PULLS_KEY)["duplicates_skipped"] == 1
    day_requests, derived_runs, day_cursor = derive(defs, instance, day_cursor)
    assert [r.partition_key for r in day_requests] == [first_day.isoformat()]
    [(late_day, late_meta)] = day_metadata(derived_runs).items()
    repositories_that_day = len({r for d, r in per_day if d == first_day.isoformat()} | {"acme.dev/python"})
    assert (late_day, late_meta["dagster/partition_row_count"]) == (first_day.isoformat(), repositories_that_day)
    assert metadata(derived_runs[0], SUMMARY_KEY)["repositories_recomputed"] == 1
    assert rows(
        warehouse, f"SELECT events FROM {DAILY} WHERE day = $d AND repository = 'acme.dev/python'", {"d": first_day}
    ) == [(1,)]

    # A backfill of some days from the UI materializes daily_pulls alone: the automation then refreshes the summary.
    evaluation, requested = automate(defs, instance, evaluation.cursor)
    assert requested == []
    backfill = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[DAILY_PULLS_KEY],
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[1]},
    )
    assert sorted(day_metadata([backfill])) == days[:2]
    evaluation, requested = automate(defs, instance, evaluation.cursor)
    assert requested == [SUMMARY_KEY]

    # The scheduled audits judge the whole tables, the summary against a recompute from the pull table.
    audit = defs.resolve_job_def(AUDIT_JOB).execute_in_process(instance=instance)
    verdicts = {e.check_name: e for e in audit.get_asset_check_evaluations()}
    assert all(verdicts[name].passed for name in (UNIQUE, REQUIRED, RECONCILED, FUTURE_DATED, SUMMARY_MATCHES))
    assert verdicts[SUMMARY_MATCHES].metadata["repositories_compared"].value == 5
    rate = verdicts[REJECTED_RATE]
    assert rate.metadata["rejected_lines"].value == len(landed.rejected)
    assert rate.metadata["total_lines"].value == landed.lines + 2
    assert len(landed.rejected) / landed.lines > 0.01  # above the default threshold: the check says so
    assert (rate.passed, rate.severity) == (False, dg.AssetCheckSeverity.WARN)
    raw = verdicts[RAW_EVENT_RATE]
    assert (raw.metadata["rows_with_raw_event"].value, raw.metadata["pull_rows"].value) == (
        landed.with_extra_fields,
        landed.pull_count + 1,
    )
    assert 0 < landed.with_extra_fields / landed.pull_count <= 0.1  # under the default threshold
    assert raw.passed
    assert raw.metadata["keys_without_column"].value == {
        "chainguarddev1delivery": landed.with_extra_fields,
        "data.body.future_field": landed.with_extra_fields,
    }


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
    # The run's own checks name it too: its lines are not among the rows they judged.
    [unique] = [e for e in run.get_asset_check_evaluations() if e.check_name == LOADED_UNIQUE]
    assert unique.metadata["objects_quarantined"].value == f"| object | reason |\n|---|---|\n| {key} | object_missing |"

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
    landed = synthetic_landing(store, spec)
    requests, _ = sensor_tick(defs, instance, None)
    assert all(run.success for run in launch(defs, instance, requests))
    _, derived_runs, day_cursor = derive(defs, instance, None)
    assert derived_runs
    before = snapshot(warehouse)
    derived = (base.DAILY_PULLS, base.DAILY_VALUES, base.REPOSITORY_VALUES, base.REPOSITORY_SUMMARY)
    assert all(before[t] for t in (base.PULLS, base.EVENTS, base.REJECTED, *derived))
    assert before[base.SUMMARY_PENDING] == []

    rebuild = defs.resolve_job_def(REBUILD_JOB).execute_in_process(instance=instance)

    assert rebuild.success
    assert metadata(rebuild, PULLS_KEY)["rebuild"] is True
    assert snapshot(warehouse) == before
    # The rebuild computed the derived tables itself and says so: every day partition, with its row count, and
    # the summary. The daily sensor does not recompute them again.
    days = sorted({p.when.date().isoformat() for p in landed.pulls})
    assert sorted(day_metadata([rebuild])) == days
    assert {day: meta["dagster/partition_row_count"] for day, meta in day_metadata([rebuild]).items()} == dict(
        Counter(day.isoformat() for (day,) in rows(warehouse, f"SELECT day FROM {DAILY}"))
    )
    assert metadata(rebuild, SUMMARY_KEY)["dagster/row_count"] == 3
    assert derive(defs, instance, day_cursor)[0] == []
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
    audit = defs.resolve_job_def(AUDIT_JOB).execute_in_process(instance=instance)

    [check] = [e for e in audit.get_asset_check_evaluations() if e.check_name == FUTURE_DATED]
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert (check.metadata["future_dated_pulls"].value, check.metadata["tolerance_seconds"].value) == (2, 86400)
    assert check.metadata["examples"].value.splitlines()[2:] == [
        "| cgr.dev | far | acme.dev/far | 9999-01-01T00:00:00 |",
        f"| cgr.dev | ahead | acme.dev/ahead | {pulls[2].when.isoformat()} |",
    ]


def test_derived_materializations_carry_a_preview_and_the_figures_the_plots_tab_draws(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    now = datetime.now(UTC)
    day_a = (now - timedelta(days=2)).replace(tzinfo=None, hour=9, minute=0, second=0, microsecond=0)
    day_b = day_a + timedelta(days=1)
    lines = [
        *(pull_event(facts(f"py{n}", when=day_a + timedelta(minutes=n))) for n in range(3)),
        pull_event(facts("py-404", when=day_a, error_status=404)),
        pull_event(facts("go0", when=day_a, repository="acme.dev/go")),
        pull_event(facts("go-head", when=day_a, repository="acme.dev/go", method="HEAD")),
        *(pull_event(facts(f"go{n}", when=day_b + timedelta(minutes=n), repository="acme.dev/go")) for n in (1, 2)),
        poison_event("invalid_json", facts("bad")),
    ]
    write_object(store, PULL_TYPE, lines, now)
    requests, cursor = sensor_tick(defs, instance, None)
    runs = launch(defs, instance, requests)
    assert all(run.success for run in runs)
    [unique] = [e for run in runs for e in run.get_asset_check_evaluations() if e.check_name == LOADED_UNIQUE]
    assert unique.metadata["objects_quarantined"].value == "none"

    # The two days are one range run; each of its partitions carries the run's preview and totals.
    _, [derived_run], day_cursor = derive(defs, instance, None)
    a, b = day_a.date().isoformat(), day_b.date().isoformat()
    by_day = day_metadata([derived_run])
    assert sorted(by_day) == [a, b]
    for meta in by_day.values():
        assert {key: meta[key] for key in ("image_pulls", "events", "errors", "error_rate_pct")} == {
            "image_pulls": 6,
            "events": 8,
            "errors": 1,
            "error_rate_pct": 12.5,
        }
        assert meta["preview"] == "\n".join(
            [
                f"### Top repositories, {a} .. {b}",
                "",
                "| repository | image pulls | events | errors | error rate |",
                "|---|---|---|---|---|",
                "| acme.dev/go | 3 | 4 | 0 | 0.00 % |",  # a tie on image pulls: by name
                "| acme.dev/python | 3 | 4 | 1 | 25.00 % |",
                "",
                "### By day",
                "",
                "| day | image pulls | events | errors | error rate | repositories |",
                "|---|---|---|---|---|---|",
                f"| {a} | 4 | 6 | 1 | 16.67 % | 2 |",
                f"| {b} | 2 | 2 | 0 | 0.00 % | 1 |",
            ]
        )
    summary = metadata(derived_run, SUMMARY_KEY)
    assert {key: summary[key] for key in ("repositories", "image_pulls", "events", "errors", "error_rate_pct")} == {
        "repositories": 2,
        "image_pulls": 6,
        "events": 8,
        "errors": 1,
        "error_rate_pct": 12.5,
    }
    assert summary["preview"].splitlines()[4:] == [
        "| acme.dev/go | 3 | 4 | 0 | 0.00 % |",
        "| acme.dev/python | 3 | 4 | 1 | 25.00 % |",
    ]
    # The Plots tab draws numbers: Dagster keeps these as ints and floats, not text.
    [materialization] = [
        m.materialization
        for m in derived_run.get_asset_materialization_events()
        if m.asset_key == DAILY_PULLS_KEY and m.materialization.partition == a
    ]
    assert isinstance(materialization.metadata["image_pulls"], dg.IntMetadataValue)
    assert isinstance(materialization.metadata["error_rate_pct"], dg.FloatMetadataValue)
    assert isinstance(materialization.metadata["preview"], dg.MarkdownMetadataValue)

    # A late failed blob GET of the first day: that day alone, its own partition's figures.
    write_object(
        store, PULL_TYPE, [pull_event(facts("py-500", when=day_a, kind="blob", error_status=500))], now, sequence=2
    )
    requests, _ = sensor_tick(defs, instance, cursor)
    assert all(run.success for run in launch(defs, instance, requests))
    _, late_runs, _ = derive(defs, instance, day_cursor)
    [(day, late)] = day_metadata(late_runs).items()
    assert (day, late["image_pulls"], late["events"], late["errors"], late["error_rate_pct"]) == (a, 4, 7, 2, 28.57)
    assert late["preview"].splitlines()[0] == f"### Top repositories, {a}"

    # The audit names the reasons lines were rejected for.
    audit = defs.resolve_job_def(AUDIT_JOB).execute_in_process(instance=instance)
    [rate] = [e for e in audit.get_asset_check_evaluations() if e.check_name == REJECTED_RATE]
    assert rate.metadata["top_reasons"].value == "| reason | lines |\n|---|---|\n| invalid_json | 1 |"


def set_run_status(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> None:
    """Move a run's status as its run worker would (RUN_START: running again; RUN_SUCCESS: finished)."""
    instance.handle_new_event(
        dg.EventLogEntry(
            error_info=None,
            level="DEBUG",
            user_message="",
            run_id=run_id,
            timestamp=datetime.now(UTC).timestamp(),
            dagster_event=dg.DagsterEvent(event_type.value, job_name=LOAD_JOB),
        )
    )


def test_a_load_run_recomputes_its_own_day_and_the_summary_and_the_daily_sensor_the_late_days_once_it_ends(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    now = datetime.now(UTC)
    # Pulls dated yesterday (late) and today, in objects the receiver landed seconds ago.
    spec = LandingSpec(
        events=90, repositories=3, days=2, first_day=now.date() - timedelta(days=1), events_per_object=30,
        committed_from=now - timedelta(seconds=20), commit_spacing=timedelta(milliseconds=5),
    )  # fmt: skip
    landed = synthetic_landing(store, spec)
    days = sorted({p.when.date().isoformat() for p in landed.pulls})
    assert len(days) == 2

    [request], _ = sensor_tick(defs, instance, None)
    # The objects' day (the receiver's clock when it landed them): today, unless the test ran just after midnight.
    own_day = max(key_committed_at(key) for key in landed.keys).strftime("%Y-%m-%d")
    assert request.partition_key == own_day
    [run] = launch(defs, instance, [request])
    assert run.success
    assert {m.materialization.partition for m in run.get_asset_materialization_events()} == {own_day, None}
    assert sorted(str(m.asset_key.path[-1]) for m in run.get_asset_materialization_events()) == sorted(
        [base.PULLS, base.EVENTS, base.REJECTED, base.QUARANTINED, base.DAILY_PULLS, base.REPOSITORY_SUMMARY]
    )
    assert metadata(run, PULLS_KEY)["days_affected"] == days
    own_rows = [r[:3] for r in expected_daily(landed.pulls) if r[0].isoformat() == own_day]
    daily_sql = f"SELECT day, repository, events FROM {DAILY} WHERE day = $day ORDER BY repository"
    assert rows(warehouse, daily_sql, {"day": own_day}) == own_rows

    # While the load's run is (still) running, the daily sensor waits: the run may yet recompute its days.
    set_run_status(instance, run.run_id, dg.DagsterEventType.RUN_START)
    waiting, _, day_cursor = derive(defs, instance, None)
    assert waiting == []
    assert [w["run_id"] for w in json.loads(day_cursor)["waiting"]] == [run.run_id]
    # Once it has finished, the sensor asks for the day the run left (the late one), and no other.
    set_run_status(instance, run.run_id, dg.DagsterEventType.RUN_SUCCESS)
    day_requests, _, day_cursor = derive(defs, instance, day_cursor)
    [late_day] = [day for day in days if day != own_day]
    assert [r.partition_key for r in day_requests] == [late_day]
    assert json.loads(day_cursor)["waiting"] == []
    assert derive(defs, instance, day_cursor)[0] == []
    assert instance.get_materialized_partitions(DAILY_PULLS_KEY) == set(days)
    assert rows(warehouse, f"SELECT day, repository, events FROM {DAILY} ORDER BY day, repository") == [
        r[:3] for r in expected_daily(landed.pulls)
    ]
    [(refreshed_at,)] = rows(warehouse, f"SELECT max(computed_at) FROM {SUMMARY}")
    assert [r[0] for r in rows(warehouse, f"SELECT repository FROM {SUMMARY} ORDER BY repository")] == [
        e[0] for e in expected_summary(landed.pulls, refreshed_at)
    ]


def test_a_load_run_whose_pulls_are_all_dated_on_other_days_recomputes_no_day(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    now = datetime.now(UTC)
    spec = LandingSpec(
        events=40, repositories=2, days=2, first_day=now.date() - timedelta(days=5), events_per_object=40,
        committed_from=now - timedelta(seconds=20),
    )  # fmt: skip
    synthetic_landing(store, spec)
    [request], _ = sensor_tick(defs, instance, None)
    [run] = launch(defs, instance, [request])
    assert run.success
    materialized = {str(m.asset_key.path[-1]) for m in run.get_asset_materialization_events()}
    assert materialized == {base.PULLS, base.EVENTS, base.REJECTED, base.QUARANTINED}
    assert instance.get_materialized_partitions(DAILY_PULLS_KEY) == set()
    day_requests, _, _ = derive(defs, instance, None)
    assert [r.tags["dagster/asset_partition_range_start"] for r in day_requests] == [spec.first_day.isoformat()]


def test_a_second_load_of_a_late_day_finishing_on_a_quiet_tick_gets_a_run_of_its_own(
    defs: dg.Definitions, instance: dg.DagsterInstance, store: LocalLandingStore
) -> None:
    """Two loads bring pulls of the same late day; the first's day run has not run yet when the second's run finishes
    on a tick that reads no new materialization. The second must be requested under its own run key: Dagster skips a
    key it has seen, and the day would miss the second load's rows if the first's day run then failed for good."""
    now = datetime.now(UTC)
    yesterday = now.date() - timedelta(days=1)
    runs = []
    cursor = None
    for seed in (1, 2):
        spec = LandingSpec(
            events=20, repositories=2, days=1, first_day=yesterday, events_per_object=20, seed=seed,
            committed_from=now - timedelta(seconds=30 - seed), instance=f"rx-{seed}",
        )  # fmt: skip
        synthetic_landing(store, spec)
        [request], cursor = sensor_tick(defs, instance, cursor)
        [run] = launch(defs, instance, [request])
        assert run.success and metadata(run, PULLS_KEY)["days_affected"] == [yesterday.isoformat()]
        runs.append(run)
    for run in runs:  # both still running, as far as the daily sensor can tell
        set_run_status(instance, run.run_id, dg.DagsterEventType.RUN_START)
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        day_cursor = defs.resolve_sensor_def(DAILY_SENSOR)(context).cursor

    def tick() -> list[dg.RunRequest]:
        nonlocal day_cursor
        with dg.build_sensor_context(instance=instance, cursor=day_cursor, definitions=defs) as context:
            result = defs.resolve_sensor_def(DAILY_SENSOR)(context)
        day_cursor = result.cursor
        return list(result.run_requests or [])

    set_run_status(instance, runs[0].run_id, dg.DagsterEventType.RUN_SUCCESS)
    [first] = tick()
    set_run_status(instance, runs[1].run_id, dg.DagsterEventType.RUN_SUCCESS)
    [second] = tick()  # read no new materialization: only the waiting load finished
    assert first.partition_key == second.partition_key == yesterday.isoformat()
    assert first.run_key != second.run_key
    assert tick() == []
