"""The BigQuery warehouse against bqemulator, loading real landing objects from fake-gcs-server by gs:// URI.

The landing objects are written in receiver format by the same factories the DuckDB tests use, and the
expected tables are computed from the generated facts, not by the warehouse's SQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from dagster_duckdb import DuckDBResource
from google.cloud import bigquery

from pull_events.landing import GcsLandingStore, LandedObject, LandingStore, LocalLandingStore
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.bigquery import STAGING_PREFIX, BigQueryWarehouse, table_schema
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from tests.bigquery.conftest import rows
from tests.pipeline.factories import (
    EXPECTED_KEYS_WITHOUT_COLUMN,
    HELD_CASES,
    PULL_TYPE,
    PUSH_TYPE,
    RAW_EVENT_CASES,
    REJECTION_REASONS,
    REPO_CREATED_TYPE,
    LandingSpec,
    RawLine,
    events_with_fields_without_columns,
    landed_line,
    other_event,
    poison_event,
    pull_event,
    synthetic_landing,
    write_object,
)
from tests.pipeline.test_duckdb_warehouse import expected_daily, expected_summary, facts

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


def test_each_event_is_loaded_once_however_often_it_is_delivered_landed_or_loaded(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    e1, e2, e3 = (pull_event(facts(f"e{n}")) for n in (1, 2, 3))
    a = write_object(gcs_store, PULL_TYPE, [e1, e2, e1], T0, sequence=1)
    b = write_object(gcs_store, PULL_TYPE, [e2, e3], T0 + timedelta(seconds=1), sequence=2)

    first = warehouse.load_objects(gcs_store, objects(gcs_store, a, b), "run-1")
    assert (first.objects_loaded, first.lines_read, first.pulls_inserted, first.duplicates_skipped) == (2, 5, 3, 2)
    assert ids(warehouse) == ["e1", "e2", "e3"]
    # The first copy is the one kept (same receive time: the earlier object, then the earlier line).
    assert rows(warehouse, "SELECT landing_object, landing_line FROM {pulls} WHERE event_id = 'e1'") == [(a, 1)]

    again = warehouse.load_objects(gcs_store, objects(gcs_store, a, b), "run-2")
    assert (again.objects_loaded, again.objects_skipped, again.lines_read, again.pulls_inserted) == (0, 2, 0, 0)

    c = write_object(gcs_store, PULL_TYPE, [e1, e3], T0 + timedelta(seconds=2), sequence=3)
    redelivered = warehouse.load_objects(gcs_store, objects(gcs_store, c), "run-3")
    assert (redelivered.pulls_inserted, redelivered.duplicates_skipped) == (0, 2)

    assert ids(warehouse) == ["e1", "e2", "e3"]
    assert rows(
        warehouse,
        "SELECT landing_object, lines, pulls_inserted, events_inserted, duplicates_skipped, lines_rejected, run_id "
        "FROM {ledger} ORDER BY landing_object",
    ) == [(a, 3, 2, 0, 1, 0, "run-1"), (b, 2, 1, 0, 1, 0, "run-1"), (c, 2, 0, 0, 2, 0, "run-3")]
    figures = warehouse.check_figures()
    assert (figures.duplicate_keys, figures.landed_lines, figures.accounted_lines) == (0, 7, 7)


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


def test_the_earliest_received_copy_wins_within_a_batch(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    event = pull_event(facts("e9"))
    early_key = write_object(gcs_store, PULL_TYPE, [event], T0, sequence=1, received_at=T0 + timedelta(seconds=5))
    late_key = write_object(
        gcs_store, PULL_TYPE, [event], T0 + timedelta(seconds=1), sequence=2, received_at=T0 - timedelta(seconds=5)
    )
    warehouse.load_objects(gcs_store, objects(gcs_store, early_key, late_key), "run")
    assert rows(warehouse, "SELECT landing_object, received_at FROM {pulls}") == [(late_key, T0 - timedelta(seconds=5))]


def test_same_id_from_another_source_is_another_event(warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore) -> None:
    key = write_object(
        gcs_store, PULL_TYPE, [pull_event(facts("same")), pull_event(facts("same", source="other.example"))], T0
    )
    result = warehouse.load_objects(gcs_store, objects(gcs_store, key), "run")
    assert (result.pulls_inserted, result.duplicates_skipped) == (2, 0)
    assert rows(warehouse, "SELECT event_source FROM {pulls} ORDER BY 1") == [("cgr.dev",), ("other.example",)]


def test_poison_lines_are_quarantined_with_their_reason_while_neighbours_load(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    lines: list = []
    expected_rejections = []
    for n, reason in enumerate(REJECTION_REASONS):
        lines.append(pull_event(facts(f"good-{n}")))
        lines.append(poison_event(reason, facts(f"bad-{n}")))
        # The factory's broken JSON line lacks the receiver's leading landing keys: the load reads the object
        # carefully and numbers that line by its position.
        expected_rejections.append((len(lines), reason))
    lines.append(pull_event(facts("good-last")))
    key = write_object(gcs_store, PULL_TYPE, lines, T0)
    landed = gcs_store.read(key).decode().split("\n")

    result = warehouse.load_objects(gcs_store, objects(gcs_store, key), "run-p")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (25, 13, 12)
    assert len(ids(warehouse)) == 13
    assert rows(warehouse, "SELECT landing_line, reason FROM {rejected} ORDER BY landing_line") == expected_rejections
    for line, raw, landing_object, run_id in rows(
        warehouse, "SELECT landing_line, raw_line, landing_object, run_id FROM {rejected}"
    ):
        assert raw == landed[line - 1]  # exactly as landed
        assert (landing_object, run_id) == (key, "run-p")
    figures = warehouse.check_figures()
    assert (figures.rejected_lines, figures.landed_lines, figures.accounted_lines) == (12, 25, 25)


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


def test_empty_and_blank_lines_are_ignored(warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore) -> None:
    key = "dev.chainguard.registry.pull.v1/dt=2026-11-20/hour=12/20261120T120000000000Z-hand-0000000001.ndjson"
    first = landed_line(pull_event(facts("b1")), key, 1, T0, "hand")
    fourth = landed_line(pull_event(facts("b2")), key, 4, T0, "hand")
    gcs_store.write_new(key, f"{first}\n\n  \t\n{fourth}\n\n".encode())

    result = warehouse.load_objects(gcs_store, objects(gcs_store, key), "run")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (2, 2, 0)
    assert rows(warehouse, "SELECT event_id, landing_line FROM {pulls} ORDER BY 1") == [("b1", 1), ("b2", 4)]


def test_columns_follow_the_reference_schema_and_unknown_fields_are_kept(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    event = pull_event(facts("x1", error_status=404, tag=None), extra={"chainguarddev1delivery": "d-1"})
    body = event["data"]["body"]
    body.update(
        subdomain="skills",
        future_field={"nested": [1, 2]},
        policy_results=[{"policy_id": "p1", "policy_name": "n", "mode": "POLICY_MODE_ENFORCED", "result": "R"}],
    )
    event["data"]["actor"]["act"].update({"aws-arn": "arn:aws:iam::1:role/r", "custom_claim": "kept"})
    key = write_object(gcs_store, PULL_TYPE, [event], T0)
    warehouse.load_objects(gcs_store, objects(gcs_store, key), "run")

    [row] = rows(
        warehouse,
        """SELECT event_id, event_source, event_type, event_subject, event_time, event_group, repository,
            actor.subject, actor.act.`aws-arn`, body.repository, body.subdomain, body.tag, body.`when`,
            body.remote_address, body.error.status, body.error.code, body.policy_results[OFFSET(0)].policy_id,
            landing_object, landing_line, received_by,
            JSON_VALUE(raw_event, '$.chainguarddev1delivery'),
            JSON_VALUE(raw_event, '$.data.body.future_field.nested[1]'),
            JSON_VALUE(raw_event, '$.data.actor.act.custom_claim')
        FROM {pulls}""",
    )
    assert row == (
        "x1",
        "cgr.dev",
        PULL_TYPE,
        body["repo_id"],
        datetime(2026, 11, 18, 9, 30, 0, 373456, tzinfo=UTC),  # Ce-Time, nanoseconds truncated
        "45a0c61ea6fd977f050c5fb9ac06a69eed764595",
        "acme.dev/python",
        "actor-1",
        "arn:aws:iam::1:role/r",
        "acme.dev/python",
        "skills",
        None,
        datetime(2026, 11, 18, 9, 30, 0, 123456),
        "10.0.0.1",
        404,
        "MANIFEST_UNKNOWN",
        "p1",
        key,
        1,
        "factory",
        "d-1",
        "2",
        "kept",
    )


def test_a_line_keeps_its_raw_event_exactly_when_its_columns_cannot_hold_all_of_it(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    events = [pull_event(facts("plain"), extra={"actor": "svc-publisher"})]
    for n, change in enumerate([*RAW_EVENT_CASES.values(), *HELD_CASES.values()]):
        event = pull_event(facts(f"r{n}"))
        change(event)
        events.append(event)
    pulls = write_object(gcs_store, PULL_TYPE, events, T0, sequence=1)
    plain_push = other_event(PUSH_TYPE, "p1", T0, {"anything": [1, {"goes": True}]})
    extended_push = {**other_event(PUSH_TYPE, "p2", T0, {"x": 1}), "chainguarddev1webhook": "w-1"}
    pushes = write_object(gcs_store, PUSH_TYPE, [plain_push, extended_push], T0, sequence=2)
    result = warehouse.load_objects(gcs_store, objects(gcs_store, pulls, pushes), "run")

    assert (result.pulls_inserted, result.events_inserted, result.lines_rejected) == (len(events), 2, 0)
    landed = {key: gcs_store.read(key).decode().splitlines() for key in (pulls, pushes)}
    kept = rows(warehouse, "SELECT landing_line, TO_JSON_STRING(raw_event) FROM {pulls}")
    kept_lines = range(2, len(RAW_EVENT_CASES) + 2)
    assert {line: raw and json.loads(raw) for line, raw in kept} == {
        line: json.loads(landed[pulls][line - 1]) if line in kept_lines else None for line in range(1, len(events) + 1)
    }
    kept = rows(warehouse, "SELECT landing_line, TO_JSON_STRING(raw_event) FROM {events}")
    assert {line: raw and json.loads(raw) for line, raw in kept} == {1: None, 2: json.loads(landed[pushes][1])}
    [attributes] = rows(
        warehouse,
        """SELECT event_specversion, event_datacontenttype, event_dataschema, event_audience, event_actor,
            body_sha256 FROM {pulls} WHERE landing_line = 1""",
    )
    sha = json.loads(landed[pulls][0])["body_sha256"]
    assert attributes == ("1.0", "application/json", None, "customer", "svc-publisher", sha)


def test_the_check_figures_count_the_rows_with_raw_event_and_name_the_keys_without_a_column(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    key = write_object(gcs_store, PULL_TYPE, events_with_fields_without_columns(), T0)
    warehouse.load_objects(gcs_store, objects(gcs_store, key), "run")

    figures = warehouse.check_figures()

    assert (figures.pull_rows, figures.rows_with_raw_event) == (6, 3)
    assert figures.keys_without_column == EXPECTED_KEYS_WITHOUT_COLUMN


def test_a_table_made_before_a_column_existed_gains_it_filled_from_raw_event_and_keeps_loading(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore, bq_client: bigquery.Client, dataset: str
) -> None:
    warehouse.ensure_tables()
    earlier = [f for f in table_schema(base.PULLS) if f.name not in ("event_audience", "body_sha256")]
    bq_client.delete_table(warehouse.table_id(base.PULLS))
    bq_client.create_table(bigquery.Table(warehouse.table_id(base.PULLS), schema=earlier))
    old_line = json.dumps({"id": "m0", "source": "cgr.dev", "audience": "customer", "body_sha256": "sha256:0"})
    warehouse.query(
        f"INSERT INTO `{warehouse.table_id(base.PULLS)}` (event_id, event_source, raw_event) "
        f"VALUES ('m0', 'cgr.dev', PARSE_JSON({json.dumps(old_line)}))"
    )  # a row an earlier version loaded, its whole line in raw_event
    upgraded = BigQueryWarehouse(bq_client, dataset)  # a new process of the new version
    key = write_object(gcs_store, PULL_TYPE, [pull_event(facts("m1"))], T0)

    result = upgraded.load_objects(gcs_store, objects(gcs_store, key), "run")

    assert result.pulls_inserted == 1
    sha = json.loads(gcs_store.read(key).decode())["body_sha256"]
    found = rows(upgraded, "SELECT event_id, event_audience, body_sha256 FROM {pulls} ORDER BY event_id")
    assert found == [("m0", "customer", "sha256:0"), ("m1", "customer", sha)]


def test_other_event_types_land_in_the_events_table(warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore) -> None:
    push = other_event(PUSH_TYPE, "p1", T0, {"body": {"repository": "acme.dev/go", "tag": "v1"}})
    created = other_event(REPO_CREATED_TYPE, "r1", T0, {"name": "go"})
    keys = [
        write_object(gcs_store, PUSH_TYPE, [push, push], T0, sequence=1),
        write_object(gcs_store, REPO_CREATED_TYPE, [created], T0, sequence=2),
    ]
    result = warehouse.load_objects(gcs_store, objects(gcs_store, *keys), "run")

    assert (result.pulls_inserted, result.events_inserted, result.duplicates_skipped) == (0, 2, 1)
    assert ids(warehouse) == []
    loaded = rows(warehouse, "SELECT event_type, event_id, TO_JSON_STRING(data), event_time FROM {events} ORDER BY 2")
    assert [(t, i, json.loads(d), when) for t, i, d, when in loaded] == [
        (PUSH_TYPE, "p1", {"body": {"repository": "acme.dev/go", "tag": "v1"}}, T0),
        (REPO_CREATED_TYPE, "r1", {"name": "go"}, T0),
    ]


def test_an_object_that_is_gone_is_quarantined_and_the_rest_of_the_batch_loads(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore, bq_client: bigquery.Client, dataset: str
) -> None:
    good = write_object(gcs_store, PULL_TYPE, [pull_event(facts("g1"))], T0)
    vanished = LandedObject(key="gone.ndjson", size=10, uri=gcs_store.uri("gone.ndjson"))

    result = warehouse.load_objects(gcs_store, [*objects(gcs_store, good), vanished], "run-1")

    assert (result.objects_loaded, result.pulls_inserted, result.quarantined) == (
        1,
        1,
        {"gone.ndjson": "object_missing"},
    )
    assert ids(warehouse) == ["g1"]
    assert rows(warehouse, "SELECT landing_object FROM {ledger}") == [(good,)]
    assert rows(warehouse, "SELECT landing_object, reason, run_id FROM {quarantined}") == [
        ("gone.ndjson", "object_missing", "run-1")
    ]
    assert staging_tables(bq_client, dataset) == []
    # Once it can be read it loads, and leaves the quarantine.
    gcs_store.write_new(
        "gone.ndjson", (landed_line(pull_event(facts("g2")), "gone.ndjson", 1, T0, "late") + "\n").encode()
    )
    back = LandedObject(key="gone.ndjson", size=len(gcs_store.read("gone.ndjson")), uri=vanished.uri)
    retried = warehouse.load_objects(gcs_store, [back], "run-2")
    assert (retried.objects_loaded, retried.pulls_inserted, retried.quarantined) == (1, 1, {})
    assert warehouse.row_count(base.QUARANTINED) == 0


def test_objects_outside_gcs_are_refused_with_a_clear_error(
    warehouse: BigQueryWarehouse, landing_dir, bq_client: bigquery.Client, dataset: str
) -> None:
    local = LocalLandingStore(landing_dir)
    key = write_object(local, PULL_TYPE, [pull_event(facts("l1"))], T0)
    with pytest.raises(ValueError, match=r"gs:// URIs.*PULL_EVENTS_LANDING"):
        warehouse.load_objects(local, objects(local, key), "run")
    assert list(bq_client.list_tables(dataset)) == []  # refused before touching BigQuery


def test_tables_are_created_when_missing_partitioned_and_clustered_and_ddl_is_idempotent(
    warehouse: BigQueryWarehouse, bq_client: bigquery.Client, dataset: str
) -> None:
    warehouse.ensure_tables()
    warehouse.ensure_tables()
    BigQueryWarehouse(bq_client, dataset).ensure_tables()  # a new process finds everything in place

    assert sorted(t.table_id for t in bq_client.list_tables(dataset)) == sorted(
        [
            base.PULLS,
            base.EVENTS,
            base.REJECTED,
            base.LOADED_OBJECTS,
            base.QUARANTINED,
            base.DAILY_PULLS,
            base.REPOSITORY_SUMMARY,
            base.REFRESH_STATE,
        ]
    )
    pulls = bq_client.get_table(warehouse.table_id(base.PULLS))
    assert (pulls.time_partitioning.type_, pulls.time_partitioning.field) == ("DAY", "event_time")
    assert pulls.clustering_fields == ["repository", "event_source", "event_id"]
    events = bq_client.get_table(warehouse.table_id(base.EVENTS))
    assert (events.time_partitioning.type_, events.time_partitioning.field) == ("DAY", "event_time")
    assert events.clustering_fields == ["event_type"]
    daily = bq_client.get_table(warehouse.table_id(base.DAILY_PULLS))
    assert (daily.time_partitioning.type_, daily.time_partitioning.field) == ("DAY", "day")
    assert daily.clustering_fields == ["repository"]

    body = next(f for f in pulls.schema if f.name == "body")
    assert [(f.name, f.field_type, f.mode) for f in body.fields if f.name in ("when", "error", "policy_results")] == [
        ("when", "DATETIME", "NULLABLE"),
        ("error", "RECORD", "NULLABLE"),
        ("policy_results", "RECORD", "REPEATED"),
    ]
    columns = dict(warehouse.column_schema(base.PULLS))
    assert (columns["event_id"], columns["event_time"], columns["raw_event"]) == ("STRING", "TIMESTAMP", "JSON")
    assert "aws-arn STRING" in columns["actor"]
    assert "when DATETIME" in columns["body"]
    assert dict(warehouse.column_schema(base.REPOSITORY_SUMMARY))["top_tags"] == (
        "ARRAY<STRUCT<tag STRING, image_pulls INT64>>"
    )

    warehouse.drop_all()
    assert list(bq_client.list_tables(dataset)) == []


def test_late_events_recompute_only_their_days(warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore) -> None:
    d1, d2, d3 = (datetime(2026, 11, day, 10, 0) for day in (10, 11, 12))
    first = [
        pull_event(facts("a", when=d1)),
        pull_event(facts("b", when=d2, actor="actor-2")),
        pull_event(facts("c", when=d3, method="HEAD")),
    ]
    k1 = write_object(gcs_store, PULL_TYPE, first, T0, sequence=1)
    warehouse.load_objects(gcs_store, objects(gcs_store, k1), "run-1")
    refreshed = warehouse.refresh_daily_pulls()
    assert refreshed.days_recomputed == [date(2026, 11, 10), date(2026, 11, 11), date(2026, 11, 12)]
    before = {r[0]: r for r in rows(warehouse, "SELECT day, events, image_pulls, computed_at FROM {daily}")}

    nothing_new = warehouse.refresh_daily_pulls()
    assert (nothing_new.days_recomputed, nothing_new.rows_written, nothing_new.table_rows) == ([], 0, 3)

    # Two days later an event of the 10th arrives (a slow delivery), plus a redelivery of one of the 11th.
    late = [pull_event(facts("late", when=d1 + timedelta(hours=3), client="10.0.0.2")), first[1]]
    k2 = write_object(gcs_store, PULL_TYPE, late, T0 + timedelta(days=2), sequence=2)
    loaded = warehouse.load_objects(gcs_store, objects(gcs_store, k2), "run-2")
    assert loaded.affected_days == [date(2026, 11, 10)]
    again = warehouse.refresh_daily_pulls()

    assert again.days_recomputed == [date(2026, 11, 10)]
    after = {
        r[0]: r for r in rows(warehouse, "SELECT day, events, image_pulls, computed_at, unique_clients FROM {daily}")
    }
    assert after[date(2026, 11, 10)][1:3] == (2, 2)
    assert after[date(2026, 11, 10)][4] == 2
    assert after[date(2026, 11, 10)][3] > before[date(2026, 11, 10)][3]
    for untouched in (date(2026, 11, 11), date(2026, 11, 12)):
        assert after[untouched][:4] == before[untouched]  # same figures, same computed_at: not recomputed


def test_a_load_still_in_flight_holds_the_daily_watermark_back_until_it_is_done(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    # Two concurrent loads: the one that started first commits last, with the earlier loaded_at.
    slow_key = write_object(gcs_store, PULL_TYPE, [pull_event(facts("slow", when=datetime(2026, 11, 3, 8)))], T0)
    fast_key = write_object(
        gcs_store, PULL_TYPE, [pull_event(facts("fast", when=datetime(2026, 11, 4, 8)))], T0, sequence=1
    )
    warehouse.ensure_tables()
    slow = objects(gcs_store, slow_key)
    slow_staging = warehouse.create_staging("slow")
    bad = warehouse.stage_objects(slow_staging, slow)

    warehouse.load_objects(gcs_store, objects(gcs_store, fast_key), "fast")
    assert warehouse.refresh_daily_pulls().days_recomputed == []  # the fast load's rows wait for the slow one

    warehouse.merge_staged(slow_staging, gcs_store, slow, bad, "slow")
    warehouse.client.delete_table(slow_staging)
    assert warehouse.refresh_daily_pulls().days_recomputed == [date(2026, 11, 3), date(2026, 11, 4)]
    assert rows(warehouse, "SELECT day, events FROM {daily} ORDER BY day") == [
        (date(2026, 11, 3), 1),
        (date(2026, 11, 4), 1),
    ]


def test_derived_tables_match_figures_computed_independently(
    warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore
) -> None:
    spec = LandingSpec(
        events=1500,
        repositories=6,
        days=12,
        events_per_object=250,
        duplicate_rate=0.05,
        bad_line_rate=0.01,
        other_type_rate=0.05,
        actors=40,
        clients=90,
        committed_from=T0,
        seed=7,
    )
    landed = synthetic_landing(gcs_store, spec)
    listed = sorted(gcs_store.list_all(), key=lambda o: o.key)
    for start in range(0, len(listed), 4):  # several loads, as several sensor runs would do
        warehouse.load_objects(gcs_store, listed[start : start + 4], f"run-{start}")
    warehouse.refresh_daily_pulls()
    summary = warehouse.refresh_repository_summary()

    assert len(ids(warehouse)) == landed.pull_count == len(landed.pulls)
    assert warehouse.row_count(base.EVENTS) == landed.other_events
    # Rejected lines the factory writes as raw text carry no landing keys; in a batch of several objects only
    # their count and text are known (see test_a_broken_line_keeps_the_lineage_its_start_still_carries).
    rejected = rows(warehouse, "SELECT landing_object, landing_line, reason FROM {rejected}")
    assert sorted((r for r in rejected if r[2] != "invalid_json"), key=str) == sorted(
        (r for r in landed.rejected if r[2] != "invalid_json"), key=str
    )
    assert sorted(r[2] for r in rejected) == sorted(r[2] for r in landed.rejected)
    assert {r[2] for r in rejected} == set(REJECTION_REASONS)

    assert rows(
        warehouse,
        """SELECT day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors,
            unique_clients FROM {daily} ORDER BY day, repository""",
    ) == expected_daily(landed.pulls)
    actual_summary = rows(
        warehouse,
        """SELECT repository, events, image_pulls, errors, error_rate, unique_actors, unique_clients, first_seen,
            last_seen, image_pulls_last_7d, image_pulls_last_30d, top_tags FROM {summary} ORDER BY repository""",
    )
    [(refreshed_at,)] = rows(warehouse, "SELECT DISTINCT computed_at FROM {summary}")
    expected = expected_summary(landed.pulls, refreshed_at)
    assert summary.table_rows == len(expected) == 6
    assert [r[:4] + r[5:] for r in actual_summary] == [e[:4] + e[5:] for e in expected]
    assert [r[4] for r in actual_summary] == pytest.approx([e[4] for e in expected])
    figures = warehouse.check_figures()
    assert (figures.duplicate_keys, figures.missing_required) == (0, 0)
    assert figures.landed_lines == figures.accounted_lines


def test_loaded_at_only_grows(warehouse: BigQueryWarehouse, gcs_store: GcsLandingStore) -> None:
    keys = [write_object(gcs_store, PULL_TYPE, [pull_event(facts(f"m{n}"))], T0, sequence=n) for n in range(3)]
    for key in keys:
        warehouse.load_objects(gcs_store, objects(gcs_store, key), "run")
    stamps = [r[0] for r in rows(warehouse, "SELECT loaded_at FROM {ledger} ORDER BY landing_object")]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert rows(warehouse, "SELECT COUNT(DISTINCT loaded_at) FROM {pulls}") == [(3,)]


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
