"""What the BigQuery warehouse alone does, against bqemulator, loading real landing objects from fake-gcs-server.

What both warehouses do is tested once, on both, in tests/test_warehouses.py. Here: one load job per batch from
gs:// URIs, the careful reading of what it cannot account for, the tables' partitioning and clustering (a load
reads only the partitions its batch touches), tables laid out by an earlier version, and the edge values judged
as DuckDB judges them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from dagster_duckdb import DuckDBResource
from google.cloud import bigquery

from pull_events.landing import GcsLandingStore, LandedObject, LandingStore, LocalLandingStore, object_key
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.bigquery import (
    STAGING_PREFIX,
    BigQueryWarehouse,
    current_layout,
    sql_literal,
    table_schema,
)
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from pull_events_dagster.warehouse.schema import TABLES
from tests.bigquery.conftest import rows
from tests.pipeline.factories import PULL_TYPE, RawLine, landed_line, pull_event, write_object
from tests.pipeline.test_duckdb_warehouse import facts

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def objects(store: LandingStore, *keys: str) -> list[LandedObject]:
    listed = {o.key: o for o in store.list_all()}
    return [listed[key] for key in keys]


def ids(warehouse: BigQueryWarehouse, table: str = "pulls") -> list[str]:
    return [r[0] for r in rows(warehouse, f"SELECT event_id FROM {{{table}}} ORDER BY event_id")]


def staging_tables(client: bigquery.Client, dataset: str) -> list[str]:
    return [t.table_id for t in client.list_tables(dataset) if t.table_id.startswith(STAGING_PREFIX)]


def test_a_batch_is_read_from_its_gs_uris_by_one_load_job_into_a_staging_table_dropped_afterwards(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore, bq_client: bigquery.Client, dataset: str
) -> None:
    keys = [
        write_object(gcs_store, PULL_TYPE, [pull_event(facts(f"e{n}")), pull_event(facts(f"f{n}"))], T0, sequence=n)
        for n in range(3)
    ]
    batch = objects(gcs_store, *keys)
    assert all(o.uri == f"gs://{gcs_store.bucket.name}/landing/{o.key}" for o in batch)
    started = datetime.now(UTC) - timedelta(seconds=1)

    result = warehouse.load_objects(gcs_store, batch, "run-1")

    assert result == base.LoadResult(3, 0, 6, 6, 0, 0, 0, [date(2026, 11, 18)])
    loads = [
        job
        for job in bq_client.list_jobs(all_users=True)
        if job.job_type == "load" and job.created >= started and job.destination.dataset_id == dataset
    ]
    assert len(loads) == 1
    assert sorted(loads[0].source_uris) == sorted(o.uri for o in batch)
    assert loads[0].destination.table_id.startswith(STAGING_PREFIX)
    assert staging_tables(bq_client, dataset) == []
    assert rows(warehouse, "SELECT event_id, landing_object, landing_line FROM {pulls} ORDER BY event_id") == [
        (f"{letter}{n}", keys[n], line) for letter, line in (("e", 1), ("f", 2)) for n in range(3)
    ]


def test_a_load_that_stopped_before_its_ledger_rows_is_redone_without_duplicates(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    key = "dev.chainguard.registry.pull.v1/dt=2026-11-20/hour=12/20261120T120000000000Z-hand-0000000001.ndjson"
    lines = [landed_line(pull_event(facts(f"c{n}")), key, n, T0, "hand") for n in (1, 2, 3)]
    gcs_store.write_new(key, f"{lines[0]}\n{lines[1][:150]}\n{lines[2]}\n".encode())  # line 2 cut short
    batch = objects(gcs_store, key)
    warehouse.ensure_tables()
    staging = warehouse.create_staging("crashed")
    warehouse.merge_staged(staging, gcs_store, batch, warehouse.stage_objects(staging, batch), "crashed")
    # As if the process died after the rows were written and before the ledger was: only the ledger is lost.
    warehouse.query(f"DELETE FROM `{warehouse.table_id(base.LOADED_OBJECTS)}` WHERE TRUE")

    redone = warehouse.load_objects(gcs_store, batch, "rerun")

    assert (redone.objects_loaded, redone.pulls_inserted, redone.duplicates_skipped, redone.lines_rejected) == (
        1,
        0,
        2,
        1,
    )
    assert ids(warehouse) == ["c1", "c3"]
    assert rows(warehouse, "SELECT landing_line, reason, run_id FROM {rejected}") == [(2, "invalid_json", "crashed")]
    assert rows(warehouse, "SELECT lines, duplicates_skipped, lines_rejected FROM {ledger}") == [(3, 2, 1)]


def test_a_line_that_names_no_object_is_placed_by_reading_its_object_carefully(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    # A load job does not say which object a row came from: the line's own keys do. The receiver writes them
    # first, so a line cut short still names its object and line. A line without them leaves its object's bytes
    # unaccounted for: that object is read again with positions, and every line is placed.
    key_a = "dev.chainguard.registry.pull.v1/dt=2026-11-20/hour=12/20261120T120000000000Z-hand-0000000001.ndjson"
    key_b = "dev.chainguard.registry.pull.v1/dt=2026-11-20/hour=12/20261120T120001000000Z-hand-0000000002.ndjson"
    cut_short = landed_line(pull_event(facts("t1")), key_a, 2, T0, "hand")[:150]
    gcs_store.write_new(key_a, f"{landed_line(pull_event(facts('a1')), key_a, 1, T0, 'hand')}\n{cut_short}\n".encode())
    gcs_store.write_new(key_b, f"{landed_line(pull_event(facts('b1')), key_b, 1, T0, 'hand')}\n<html>\n".encode())

    result = warehouse.load_objects(gcs_store, objects(gcs_store, key_a, key_b), "run")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (4, 2, 2)
    assert rows(warehouse, "SELECT landing_object, landing_line, reason, raw_line FROM {rejected} ORDER BY 4") == [
        (key_b, 2, "invalid_json", "<html>"),
        (key_a, 2, "invalid_json", cut_short),
    ]
    assert rows(warehouse, "SELECT landing_object, lines, lines_rejected FROM {ledger} ORDER BY 1") == [
        (key_a, 2, 1),
        (key_b, 2, 1),
    ]


def test_in_a_batch_of_one_object_every_line_is_placed_in_that_object(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    key = write_object(gcs_store, PULL_TYPE, [pull_event(facts("o1")), RawLine("<html>")], T0)
    warehouse.load_objects(gcs_store, objects(gcs_store, key), "run")
    assert rows(warehouse, "SELECT landing_object, landing_line, reason FROM {rejected}") == [(key, 2, "invalid_json")]
    assert rows(warehouse, "SELECT lines, lines_rejected FROM {ledger}") == [(2, 1)]


def test_a_line_the_load_job_cannot_read_is_read_carefully_rejected_and_its_neighbours_load(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    # U+001F, the staging load's field delimiter, can only be in a corrupt line (JSON escapes control characters):
    # the load job skips it as a bad record, which leaves its object's bytes unaccounted for, so the object is
    # read again carefully and the line is rejected with its position and text.
    unreadable = RawLine('{"id":"x"}\x1f{"id":"y"}')
    key = write_object(gcs_store, PULL_TYPE, [pull_event(facts("n1")), unreadable, pull_event(facts("n2"))], T0)

    result = warehouse.load_objects(gcs_store, objects(gcs_store, key), "run-u")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (3, 2, 1)
    assert ids(warehouse) == ["n1", "n2"]
    assert rows(warehouse, "SELECT landing_object, landing_line, reason, raw_line, run_id FROM {rejected}") == [
        (key, 2, "invalid_json", str(unreadable), "run-u")
    ]
    assert rows(warehouse, "SELECT lines, pulls_inserted, lines_rejected FROM {ledger}") == [(3, 2, 1)]


def test_objects_outside_gcs_are_refused_with_a_clear_error(
    warehouse: BigQueryWarehouse, landing_dir, bq_client: bigquery.Client, dataset: str
) -> None:
    local = LocalLandingStore(landing_dir)
    key = write_object(local, PULL_TYPE, [pull_event(facts("l1"))], T0)
    with pytest.raises(ValueError, match=r"gs:// URIs.*PULL_EVENTS_LANDING"):
        warehouse.load_objects(local, objects(local, key), "run")
    assert list(bq_client.list_tables(dataset)) == []  # refused before touching BigQuery


def test_a_load_whose_object_is_gone_stages_the_rest_again_and_drops_its_staging_table(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore, bq_client: bigquery.Client, dataset: str
) -> None:
    # A load job fails whole on one missing URI: it is run again without it (the contract test checks the rest).
    good = write_object(gcs_store, PULL_TYPE, [pull_event(facts("g1"))], T0)
    vanished = LandedObject(key="gone.ndjson", size=10, uri=gcs_store.uri("gone.ndjson"))

    result = warehouse.load_objects(gcs_store, [*objects(gcs_store, good), vanished], "run-1")

    assert (result.objects_loaded, result.pulls_inserted, result.quarantined) == (
        1,
        1,
        {"gone.ndjson": "object_missing"},
    )
    assert staging_tables(bq_client, dataset) == []


def test_tables_are_partitioned_and_clustered_so_that_a_load_reads_only_the_partitions_it_touches(
    warehouse: BigQueryWarehouse, bq_client: bigquery.Client, dataset: str
) -> None:
    warehouse.ensure_tables()

    layouts = {t.table_id: current_layout(bq_client.get_table(t.reference)) for t in bq_client.list_tables(dataset)}

    assert layouts == {
        base.PULLS: ("day", ("repository", "event_source", "event_id")),
        base.EVENTS: ("event_time", ("event_type",)),
        base.REJECTED: ("rejected_at", ("landing_object",)),
        base.LOADED_OBJECTS: ("loaded_at", ("landing_object",)),
        base.QUARANTINED: (None, ()),
        base.DAILY_PULLS: ("day", ("repository",)),
        base.DAILY_VALUES: ("day", ("repository",)),
        base.REPOSITORY_VALUES: (None, ("repository",)),
        base.SUMMARY_PENDING: (None, ()),
        base.REPOSITORY_SUMMARY: (None, ()),
    }
    pulls = bq_client.get_table(warehouse.table_id(base.PULLS))
    body = next(f for f in pulls.schema if f.name == "body")
    assert [(f.name, f.field_type, f.mode) for f in body.fields if f.name in ("when", "error", "policy_results")] == [
        ("when", "DATETIME", "NULLABLE"),
        ("error", "RECORD", "NULLABLE"),
        ("policy_results", "RECORD", "REPEATED"),
    ]
    assert dict(warehouse.column_schema(base.REPOSITORY_SUMMARY))["top_tags"] == (
        "ARRAY<STRUCT<tag STRING, image_pulls INT64>>"
    )


def _as_an_earlier_version_made_it(warehouse: BigQueryWarehouse, bq_client: bigquery.Client) -> None:
    """Make the pull table again as the previous version did, its rows kept: partitioned on event_time, no day."""
    earlier = bigquery.Table(
        warehouse.table_id("earlier"), schema=[f for f in table_schema(base.PULLS) if f.name != "day"]
    )
    earlier.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY, field="event_time")
    earlier.clustering_fields = ["repository", "event_source", "event_id"]
    bq_client.create_table(earlier)
    names = ", ".join(f"`{f.name}`" for f in earlier.schema)
    warehouse.query(
        f"INSERT INTO `{earlier.reference}` ({names}) SELECT {names} FROM `{warehouse.table_id(base.PULLS)}`"
    )
    bq_client.delete_table(warehouse.table_id(base.PULLS))
    bq_client.copy_table(earlier.reference, warehouse.table_id(base.PULLS)).result()
    bq_client.delete_table(earlier.reference)


def test_a_pull_table_partitioned_by_an_earlier_version_gains_day_and_a_rebuild_lays_it_out_anew(
    warehouse: BigQueryWarehouse,
    gcs_store: GcsLandingStore,
    bq_client: bigquery.Client,
    dataset: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = write_object(gcs_store, PULL_TYPE, [pull_event(facts("old"))], T0, sequence=1)
    warehouse.load_objects(gcs_store, objects(gcs_store, old), "run-1")
    _as_an_earlier_version_made_it(warehouse, bq_client)
    upgraded = BigQueryWarehouse(bq_client, dataset)  # a process of this version

    with caplog.at_level(logging.WARNING):
        upgraded.ensure_tables()

    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(base.PULLS)] == [
        f"{base.PULLS} is partitioned on event_time and clustered by repository, event_source, event_id, not "
        "partitioned on day and clustered by repository, event_source, event_id as this version lays it out: loads "
        "and refreshes work, but read more of it than their partitions. Run the rebuild_from_landing job: it "
        "recreates the table with the new layout"
    ]
    assert rows(upgraded, "SELECT event_id, day FROM {pulls}") == [("old", date(2026, 11, 18))]
    # Loads keep working on it: a redelivery is a duplicate within its day, a new event loads.
    again = write_object(
        gcs_store,
        PULL_TYPE,
        [pull_event(facts("old")), pull_event(facts("new"))],
        T0 + timedelta(seconds=1),
        sequence=2,
    )
    loaded = upgraded.load_objects(gcs_store, objects(gcs_store, again), "run-2")
    assert (loaded.pulls_inserted, loaded.duplicates_skipped) == (1, 1)

    upgraded.rebuild(gcs_store, sorted(gcs_store.list_all(), key=lambda o: o.key), "rebuild", 10)

    pulls = bq_client.get_table(warehouse.table_id(base.PULLS))
    assert current_layout(pulls) == ("day", ("repository", "event_source", "event_id"))
    assert rows(upgraded, "SELECT event_id, day, landing_object FROM {pulls} ORDER BY 1") == [
        ("new", date(2026, 11, 18), again),
        ("old", date(2026, 11, 18), old),
    ]
    assert sorted(t.table_id for t in bq_client.list_tables(dataset)) == sorted(TABLES)


def test_a_recreation_cut_short_after_the_table_was_dropped_is_finished_by_the_next_process(
    warehouse: BigQueryWarehouse,
    gcs_store: GcsLandingStore,
    bq_client: bigquery.Client,
    dataset: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = write_object(gcs_store, PULL_TYPE, [pull_event(facts("p1")), pull_event(facts("p2"))], T0)
    warehouse.load_objects(gcs_store, objects(gcs_store, key), "run-1")
    _as_an_earlier_version_made_it(warehouse, bq_client)
    finish = BigQueryWarehouse._finish_relayout

    def dies(self: BigQueryWarehouse, name: str) -> None:
        raise RuntimeError("injected: the process died before copying the table back")

    monkeypatch.setattr(BigQueryWarehouse, "_finish_relayout", dies)
    with pytest.raises(RuntimeError, match="injected"):
        warehouse.rebuild(gcs_store, objects(gcs_store, key), "rebuild", 10)
    assert base.PULLS not in {t.table_id for t in bq_client.list_tables(dataset)}  # its rows are in its copy
    monkeypatch.setattr(BigQueryWarehouse, "_finish_relayout", finish)

    BigQueryWarehouse(bq_client, dataset).ensure_tables()

    assert sorted(t.table_id for t in bq_client.list_tables(dataset)) == sorted(TABLES)
    assert current_layout(bq_client.get_table(warehouse.table_id(base.PULLS)))[0] == "day"
    assert ids(warehouse) == ["p1", "p2"]


def test_the_ledger_is_read_from_the_day_before_an_object_landed_on(
    warehouse: BigQueryWarehouse, bq_client: bigquery.Client
) -> None:
    # An object cannot be loaded before it landed, and its key names when it landed: the look-up reads the
    # ledger's partitions (of loaded_at) from a day before that (clock skew), or every partition for a key
    # without a time. A row dated earlier than that (here written by hand) is not looked at.
    warehouse.ensure_tables()
    skewed, impossible = (object_key(PULL_TYPE, T0, "hand", n) for n in (1, 2))
    timeless = "odd/name.ndjson"
    ledger = [
        (skewed, T0 - timedelta(hours=3)),
        (impossible, T0 - timedelta(days=2)),
        (timeless, T0 - timedelta(days=90)),
    ]
    values = ", ".join(f"({sql_literal(key)}, {sql_literal(at)})" for key, at in ledger)
    warehouse.query(
        f"INSERT INTO `{warehouse.table_id(base.LOADED_OBJECTS)}` (landing_object, loaded_at) VALUES {values}"
    )

    assert warehouse.loaded_object_keys([skewed, impossible]) == {skewed}
    assert warehouse.loaded_object_keys([timeless]) == {timeless}
    assert warehouse.loaded_object_keys([impossible, timeless]) == {impossible, timeless}


EDGE_CASES: dict[str, Callable[[dict], None]] = {
    "time is a date": lambda e: e.update(time="2026-11-18"),
    "time is a number": lambda e: e.update(time=17),
    "time is null": lambda e: e.update(time=None),
    "time has an offset": lambda e: e.update(time="2026-11-18T09:30:00+02:00"),
    "time in lower case": lambda e: e.update(time="2026-11-18t09:30:00z"),
    "id is a number": lambda e: e.update(id=123),
    "when with a space": lambda e: e["data"]["body"].update(when="2026-11-18 09:30:00"),
    "when with a zone": lambda e: e["data"]["body"].update(when="2026-11-18T09:30:00Z"),
    "when is a date": lambda e: e["data"]["body"].update(when="2026-11-18"),
    "when with 7 digits": lambda e: e["data"]["body"].update(when="2026-11-18T09:30:00.1234567"),
    "status is a float": lambda e: e["data"]["body"].update(error={"status": 404.0}),
    "status is negative": lambda e: e["data"]["body"].update(error={"status": -1}),
    "status is null": lambda e: e["data"]["body"].update(error={"status": None, "code": "X"}),
    "error is a string": lambda e: e["data"]["body"].update(error="x"),
    "repository is an object": lambda e: e["data"]["body"].update(repository={"a": 1}),
    "repository is a number": lambda e: e["data"]["body"].update(repository=5),
    "repository is empty": lambda e: e["data"]["body"].update(repository=""),
    "policy results hold a number": lambda e: e["data"]["body"].update(policy_results=[1, {"policy_id": "p"}]),
    "actor is null": lambda e: e["data"].update(actor=None),
    "tag is a number": lambda e: e["data"]["body"].update(tag=5),
    "tag is a boolean": lambda e: e["data"]["body"].update(tag=True),
    "method is an object": lambda e: e["data"]["body"].update(method={"x": [1]}),
    "group is a number": lambda e: e.update(group=7),
    "status beyond int64": lambda e: e["data"]["body"].update(error={"status": 99999999999999999999}),
    "policy results empty": lambda e: e["data"]["body"].update(policy_results=[]),
}


def test_edge_values_are_judged_and_read_exactly_as_the_duckdb_warehouse_does(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore, tmp_path: Path
) -> None:
    events = []
    for n, change in enumerate(EDGE_CASES.values()):
        event = pull_event(facts(f"v{n}"))
        change(event)
        events.append(event)
    local = LocalLandingStore(tmp_path / "landing")
    write_object(local, PULL_TYPE, events, T0)
    write_object(gcs_store, PULL_TYPE, events, T0)
    duck = DuckDBWarehouse(DuckDBResource(database=str(tmp_path / "warehouse.duckdb")).get_connection)
    duck.load_objects(local, list(local.list_all()), "run")
    warehouse.load_objects(gcs_store, list(gcs_store.list_all()), "run")

    def outcomes(found_rejected: list[tuple], found_pulls: list[tuple]) -> dict[int, object]:
        judged: dict[int, object] = {line: reason for line, reason in found_rejected}
        for line, *values in found_pulls:
            judged[line] = tuple(v.astimezone(UTC) if isinstance(v, datetime) and v.tzinfo else v for v in values)
        return judged

    columns = "event_time, event_group, repository, {when}, body.error.status, body.error IS NULL, {policies}, "
    columns += "actor IS NULL, body.tag, body.method, raw_event IS NULL"
    duck_columns = columns.format(when='body."when"', policies="len(body.policy_results)")
    bigquery_columns = columns.format(when="body.`when`", policies="ARRAY_LENGTH(body.policy_results)")
    duck_outcomes = outcomes(
        duck.query(f"SELECT landing_line, reason FROM {base.DATASET}.{base.REJECTED}"),
        duck.query(f"SELECT landing_line, {duck_columns} FROM {base.DATASET}.{base.PULLS}"),
    )
    bigquery_outcomes = outcomes(
        rows(warehouse, "SELECT landing_line, reason FROM {rejected}"),
        rows(warehouse, f"SELECT landing_line, {bigquery_columns} FROM {{pulls}}"),
    )
    assert len(duck_outcomes) == len(EDGE_CASES)
    rejected = {name: duck_outcomes[n] for n, name in enumerate(EDGE_CASES, 1) if isinstance(duck_outcomes[n], str)}
    assert rejected == {
        "time is a number": "invalid_value:time",
        "time in lower case": "invalid_value:time",
        "id is a number": "missing_attribute:id",
        "when with a zone": "invalid_value:body.when",
        "when with 7 digits": "invalid_value:body.when",
        "status is a float": "wrong_type:body.error.status",
        "status beyond int64": "wrong_type:body.error.status",
    }
    # DuckDB stores no empty lists: an absent or empty array has no length there, and length 0 in BigQuery.
    for n, name in enumerate(EDGE_CASES, 1):
        expected = duck_outcomes[n]
        if isinstance(expected, tuple) and expected[6] is None:
            expected = (*expected[:6], 0, *expected[7:])
        assert bigquery_outcomes[n] == expected, name
