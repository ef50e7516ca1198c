"""The warehouse contract: what both warehouses do alike, each test run on a real DuckDB file and on bqemulator (with
fake-gcs-server). Only what one engine alone does is tested beside it (tests/pipeline/test_duckdb_warehouse.py,
tests/bigquery/test_bigquery_warehouse.py).

Loads: each event once per (source, id) within the day its body.when (or time) names, bad lines rejected with their
reason, every line accounted for, the per-load check figures. Derived tables: days of daily_pulls recomputed exactly
as asked, the repository summary kept incrementally and equal to a full recompute (its audit) through late events
and turning days; time windows count back from the warehouse's clock. A rebuild from the landing zone changes the
tables only once it is complete.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster_duckdb import DuckDBResource
from google.api_core.retry import Retry
from google.cloud import bigquery
from google.cloud.exceptions import NotFound

from pull_events.landing import GcsLandingStore, LandedObject, LandingStore, LocalLandingStore, object_key
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse, table_schema
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from pull_events_dagster.warehouse.schema import TABLES
from tests.pipeline.factories import (
    EXPECTED_KEYS_WITHOUT_COLUMN,
    HELD_CASES,
    PULL_TYPE,
    PUSH_TYPE,
    RAW_EVENT_CASES,
    REJECTION_REASONS,
    REPO_CREATED_TYPE,
    LandingSpec,
    PullFacts,
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
BATCH = 3  # objects per load: a rebuild of the landing zone below takes two
# Columns that record when or by which run a row was written: a rebuild writes them anew.
VOLATILE = {"loaded_at", "computed_at", "run_id", "rejected_at", "marked_at", "quarantined_at"}
SUMMARY_COLUMNS = (
    "repository, events, image_pulls, errors, error_rate, unique_actors, unique_clients, first_seen, last_seen, "
    "image_pulls_last_7d, image_pulls_last_30d, top_tags"
)
DAILY_COLUMNS = "day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors, unique_clients"


@dataclass
class Engine:
    """One warehouse under test, its landing zone, and the engine-specific ways of looking at it."""

    name: str
    warehouse: base.Warehouse
    store: LandingStore
    select: Callable[[str], list[tuple]]  # SQL whose {table} placeholders name the warehouse's tables
    shadow_exists: Callable[[], bool]
    drop_table: Callable[[base.Warehouse, str], None]
    delete_object: Callable[[str], None]
    tables: Callable[[], list[str]]  # the tables of the warehouse's schema or dataset
    reopened: Callable[[], base.Warehouse]  # the same tables, as a new process of the pipeline finds them
    drop_columns: Callable[[str, list[str]], None]  # a table as an earlier version made it, its rows kept

    def quote(self, name: str) -> str:
        """An identifier (``when``, ``aws-arn``) in the engine's quoting."""
        return f'"{name}"' if self.name == "duckdb" else f"`{name}`"

    def json_text(self, expression: str) -> str:
        """SQL: a JSON value as text."""
        return f"CAST({expression} AS VARCHAR)" if self.name == "duckdb" else f"TO_JSON_STRING({expression})"

    def holds_line(self, text: str, line: str) -> bool:
        """Whether ``text``, a JSON column's value as text, is the landed ``line``: DuckDB keeps the text as landed,
        BigQuery the JSON value (and writes its own text of it)."""
        return text == line if self.name == "duckdb" else json.loads(text) == json.loads(line)

    def snapshot(self, *, volatile: bool = True) -> dict[str, list[str]]:
        """Every table's full content, rows as text in a stable order (without VOLATILE columns if asked)."""
        tables = {}
        for table, columns in TABLES.items():
            kept = [c.name for c in columns if volatile or c.name not in VOLATILE]
            names = ", ".join(self.quote(n) for n in kept)
            tables[table] = sorted(repr(row) for row in self.select(f"SELECT {names} FROM {{{table}}}"))
        return tables

    def load(self, *keys: str, run_id: str = "run") -> base.LoadResult:
        """Load the objects at ``keys`` in one load."""
        listed = {o.key: o for o in self.store.list_all()}
        return self.warehouse.load_objects(self.store, [listed[key] for key in keys], run_id)

    def load_in_batches(self, objects: list[LandedObject], size: int) -> None:
        """Load as sensor runs would: consecutive batches, one load each."""
        for start in range(0, len(objects), size):
            self.warehouse.load_objects(self.store, objects[start : start + size], f"run-{start}")

    def pull_ids(self) -> list[str]:
        return [r[0] for r in self.select(f"SELECT event_id FROM {{{base.PULLS}}} ORDER BY event_id")]


def _duckdb_engine(tmp_path: Path) -> Engine:
    path = tmp_path / "warehouse.duckdb"

    def reopened() -> DuckDBWarehouse:
        return DuckDBWarehouse(DuckDBResource(database=str(path)).get_connection)

    warehouse = reopened()
    store = LocalLandingStore(tmp_path / "landing")

    def select(sql: str) -> list[tuple]:
        return warehouse.query(
            sql.format(**{t: f'"{warehouse.schema}"."{t}"' for t in (*TABLES, *base.RETIRED_TABLES)})
        )

    def shadow_exists() -> bool:
        found = warehouse.query(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $s",
            {"s": warehouse.schema + base.SHADOW_SUFFIX},
        )
        return found != [(0,)]

    def drop_table(target: base.Warehouse, table: str) -> None:
        assert isinstance(target, DuckDBWarehouse)
        target.query(f'DROP TABLE "{target.schema}"."{table}"')

    def delete_object(key: str) -> None:
        Path(store.uri(key)).unlink()

    def tables() -> list[str]:
        found = warehouse.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $s", {"s": warehouse.schema}
        )
        return sorted(name for (name,) in found)

    def drop_columns(table: str, columns: list[str]) -> None:
        for column in columns:
            warehouse.query(f'ALTER TABLE "{warehouse.schema}"."{table}" DROP COLUMN "{column}"')

    return Engine(
        "duckdb",
        warehouse,
        store,
        select,
        shadow_exists,
        drop_table,
        delete_object,
        tables,
        reopened,
        drop_columns,
    )


def _bigquery_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    client = request.getfixturevalue("bigquery_emulator").client()
    store = GcsLandingStore(
        request.getfixturevalue("gcs_bucket"), "landing", client=request.getfixturevalue("fake_gcs").client()
    )
    # Short retries: an emulator error should fail the test quickly, not after the client's 10 minutes.
    dataset = f"pull_events_{uuid.uuid4().hex[:10]}"
    warehouse = BigQueryWarehouse(client, dataset, retry=Retry(timeout=20))

    def select(sql: str) -> list[tuple]:
        resolved = sql.format(**{t: f"`{warehouse.table_id(t)}`" for t in (*TABLES, *base.RETIRED_TABLES)})
        return [tuple(row.values()) for row in warehouse.query(resolved)]

    def shadow_exists() -> bool:
        try:
            client.get_dataset(f"{client.project}.{warehouse.dataset}{base.SHADOW_SUFFIX}")
        except NotFound:
            return False
        return True

    def drop_table(target: base.Warehouse, table: str) -> None:
        assert isinstance(target, BigQueryWarehouse)
        client.delete_table(target.table_id(table))

    def delete_object(key: str) -> None:
        store.bucket.blob(store.prefix + key).delete()

    def tables() -> list[str]:
        return sorted(t.table_id for t in client.list_tables(f"{client.project}.{dataset}"))

    def reopened() -> base.Warehouse:
        return BigQueryWarehouse(client, dataset, retry=Retry(timeout=20))

    def drop_columns(table: str, columns: list[str]) -> None:
        # Made anew with the earlier schema: bqemulator's metadata keeps a column ALTER TABLE DROP COLUMN dropped.
        earlier = [f for f in table_schema(table) if f.name not in columns]
        names = ", ".join(f"`{f.name}`" for f in earlier)
        client.create_table(bigquery.Table(warehouse.table_id(table + "_earlier"), schema=earlier))
        warehouse.query(
            f"INSERT INTO `{warehouse.table_id(table + '_earlier')}` ({names}) "
            f"SELECT {names} FROM `{warehouse.table_id(table)}`"
        )
        client.delete_table(warehouse.table_id(table))
        client.copy_table(warehouse.table_id(table + "_earlier"), warehouse.table_id(table)).result()
        client.delete_table(warehouse.table_id(table + "_earlier"))

    try:
        yield Engine(
            "bigquery",
            warehouse,
            store,
            select,
            shadow_exists,
            drop_table,
            delete_object,
            tables,
            reopened,
            drop_columns,
        )
    finally:
        client.close()


@pytest.fixture(params=["duckdb", "bigquery"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "duckdb":
        yield _duckdb_engine(tmp_path)
    else:
        yield from _bigquery_engine(request)


def listed(store: LandingStore) -> list[LandedObject]:
    return sorted(store.list_all(), key=lambda o: o.key)


def landed_lines(store: LandingStore, key: str) -> list[str]:
    """An object's lines exactly as landed."""
    return store.read(key).decode().splitlines()


# -- loading: exactly once, bad lines rejected ------------------------------------------------------------


def test_each_event_is_loaded_once_however_often_it_is_delivered_landed_or_loaded(engine: Engine) -> None:
    e1, e2, e3 = (pull_event(facts(f"e{n}")) for n in (1, 2, 3))
    a = write_object(engine.store, PULL_TYPE, [e1, e2, e1], T0, sequence=1)
    b = write_object(engine.store, PULL_TYPE, [e2, e3], T0 + timedelta(seconds=1), sequence=2)

    first = engine.load(a, b, run_id="run-1")
    assert (first.objects_loaded, first.lines_read, first.pulls_inserted, first.duplicates_skipped) == (2, 5, 3, 2)
    assert engine.pull_ids() == ["e1", "e2", "e3"]
    # The first copy is the one kept (same receive time: the earlier object, then the earlier line).
    assert engine.select(f"SELECT landing_object, landing_line FROM {{{base.PULLS}}} WHERE event_id = 'e1'") == [(a, 1)]

    again = engine.load(a, b, run_id="run-2")
    assert (again.objects_loaded, again.objects_skipped, again.lines_read, again.pulls_inserted) == (0, 2, 0, 0)

    c = write_object(engine.store, PULL_TYPE, [e1, e3], T0 + timedelta(seconds=2), sequence=3)
    redelivered = engine.load(c, run_id="run-3")
    assert (redelivered.pulls_inserted, redelivered.duplicates_skipped) == (0, 2)

    assert engine.pull_ids() == ["e1", "e2", "e3"]
    assert engine.select(
        "SELECT landing_object, lines, pulls_inserted, events_inserted, duplicates_skipped, lines_rejected, run_id "
        f"FROM {{{base.LOADED_OBJECTS}}} ORDER BY landing_object"
    ) == [(a, 3, 2, 0, 1, 0, "run-1"), (b, 2, 1, 0, 1, 0, "run-1"), (c, 2, 0, 0, 2, 0, "run-3")]
    figures = engine.warehouse.check_figures()
    assert (figures.duplicate_keys, figures.landed_lines, figures.accounted_lines) == (0, 7, 7)


def test_the_earliest_received_copy_wins_within_a_batch(engine: Engine) -> None:
    event = pull_event(facts("e9"))
    early = write_object(engine.store, PULL_TYPE, [event], T0, sequence=1, received_at=T0 + timedelta(seconds=5))
    late = write_object(
        engine.store, PULL_TYPE, [event], T0 + timedelta(seconds=1), sequence=2, received_at=T0 - timedelta(seconds=5)
    )
    engine.load(early, late)
    assert engine.select(f"SELECT landing_object, received_at FROM {{{base.PULLS}}}") == [
        (late, T0 - timedelta(seconds=5))
    ]


def test_same_id_from_another_source_is_another_event(engine: Engine) -> None:
    same = [pull_event(facts("same")), pull_event(facts("same", source="other.example"))]
    result = engine.load(write_object(engine.store, PULL_TYPE, same, T0))
    assert (result.pulls_inserted, result.duplicates_skipped) == (2, 0)
    assert engine.select(f"SELECT event_source FROM {{{base.PULLS}}} ORDER BY 1") == [
        ("cgr.dev",),
        ("other.example",),
    ]


def test_a_redelivery_is_a_duplicate_within_the_day_its_event_names_and_loads_again_dated_otherwise(
    engine: Engine,
) -> None:
    # A redelivery carries the same data, so the same body.when (pulls) or time (other events): a load looks for
    # an earlier copy in that day only. An event whose date changed is, to the loads, another event.
    when = datetime(2026, 11, 10, 8, 0)
    first = [pull_event(facts("p", when=when)), other_event(PUSH_TYPE, "q", when, {"n": 1})]
    again = [pull_event(facts("p", when=when)), other_event(PUSH_TYPE, "q", when, {"n": 1})]
    moved = [
        pull_event(facts("p", when=when + timedelta(days=1))),
        other_event(PUSH_TYPE, "q", when + timedelta(days=1), {"n": 1}),
    ]
    keys = [
        write_object(engine.store, PULL_TYPE, events, T0, sequence=n) for n, events in enumerate((first, again, moved))
    ]

    loads = [engine.load(key, run_id=f"run-{n}") for n, key in enumerate(keys)]

    assert [(r.pulls_inserted, r.events_inserted, r.duplicates_skipped) for r in loads] == [
        (1, 1, 0),
        (0, 0, 2),
        (1, 1, 0),
    ]
    assert engine.select(f"SELECT day FROM {{{base.PULLS}}} ORDER BY day") == [
        (date(2026, 11, 10),),
        (date(2026, 11, 11),),
    ]
    assert engine.warehouse.check_figures().duplicate_keys == 2  # the whole-table audit sees them


def test_poison_lines_are_quarantined_with_their_reason_while_neighbours_load(engine: Engine) -> None:
    lines: list = []
    expected_rejections = []
    for n, reason in enumerate(REJECTION_REASONS):
        lines.append(pull_event(facts(f"good-{n}")))
        lines.append(poison_event(reason, facts(f"bad-{n}")))
        # The factory's broken JSON line lacks the receiver's leading landing keys: the load reads the object
        # carefully and numbers that line by its position.
        expected_rejections.append((len(lines), reason))
    lines.append(pull_event(facts("good-last")))
    key = write_object(engine.store, PULL_TYPE, lines, T0)
    landed = engine.store.read(key).decode().split("\n")

    result = engine.load(key, run_id="run-p")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (25, 13, 12)
    assert len(engine.pull_ids()) == 13
    rejected = f"SELECT landing_line, reason FROM {{{base.REJECTED}}} ORDER BY landing_line"
    assert engine.select(rejected) == expected_rejections
    for line, raw, landing_object, run_id in engine.select(
        f"SELECT landing_line, raw_line, landing_object, run_id FROM {{{base.REJECTED}}}"
    ):
        assert raw == landed[line - 1]  # exactly as landed
        assert (landing_object, run_id) == (key, "run-p")
    figures = engine.warehouse.check_figures()
    assert (figures.rejected_lines, figures.landed_lines, figures.accounted_lines) == (12, 25, 25)
    # Every reason once: the audit names the first ones by name.
    assert figures.rejected_reasons == dict.fromkeys(sorted(REJECTION_REASONS)[: base.REJECTED_REASON_EXAMPLES], 1)


def test_empty_and_blank_lines_are_ignored(engine: Engine) -> None:
    key = object_key(PULL_TYPE, T0, "hand", 1)
    first = landed_line(pull_event(facts("b1")), key, 1, T0, "hand")
    fourth = landed_line(pull_event(facts("b2")), key, 4, T0, "hand")
    engine.store.write_new(key, f"{first}\n\n  \t\r\n{fourth}\n\n".encode())

    result = engine.load(key)

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (2, 2, 0)
    assert engine.select(f"SELECT event_id, landing_line FROM {{{base.PULLS}}} ORDER BY 1") == [("b1", 1), ("b2", 4)]


def test_other_event_types_land_in_the_events_table(engine: Engine) -> None:
    push = other_event(PUSH_TYPE, "p1", T0, {"body": {"repository": "acme.dev/go", "tag": "v1"}})
    created = other_event(REPO_CREATED_TYPE, "r1", T0, {"name": "go"})
    keys = [
        write_object(engine.store, PUSH_TYPE, [push, push], T0, sequence=1),
        write_object(engine.store, REPO_CREATED_TYPE, [created], T0, sequence=2),
    ]
    result = engine.load(*keys)

    assert (result.pulls_inserted, result.events_inserted, result.duplicates_skipped) == (0, 2, 1)
    assert engine.pull_ids() == []
    loaded = engine.select(
        f"SELECT event_type, event_id, {engine.json_text('data')}, event_time FROM {{{base.EVENTS}}} ORDER BY 2"
    )
    assert [(t, i, json.loads(d), when) for t, i, d, when in loaded] == [
        (PUSH_TYPE, "p1", {"body": {"repository": "acme.dev/go", "tag": "v1"}}, T0),
        (REPO_CREATED_TYPE, "r1", {"name": "go"}, T0),
    ]


def test_an_object_that_cannot_be_read_is_quarantined_and_the_rest_of_the_batch_loads(engine: Engine) -> None:
    good = write_object(engine.store, PULL_TYPE, [pull_event(facts("g1"))], T0)
    gone = "dev.chainguard.registry.pull.v1/dt=2026-11-20/hour=12/gone.ndjson"  # a key naming no time
    vanished = LandedObject(key=gone, size=10, uri=engine.store.uri(gone))
    [found] = listed(engine.store)

    result = engine.warehouse.load_objects(engine.store, [found, vanished], "run-1")

    assert (result.objects_loaded, result.pulls_inserted, result.quarantined) == (1, 1, {gone: "object_missing"})
    assert engine.pull_ids() == ["g1"]
    assert engine.select(f"SELECT landing_object FROM {{{base.LOADED_OBJECTS}}}") == [(good,)]
    assert engine.select(f"SELECT landing_object, reason, run_id FROM {{{base.QUARANTINED}}}") == [
        (gone, "object_missing", "run-1")
    ]
    # Once it can be read it loads, and leaves the quarantine.
    engine.store.write_new(gone, (landed_line(pull_event(facts("g2")), gone, 1, T0, "late") + "\n").encode())
    back = LandedObject(key=gone, size=len(engine.store.read(gone)), uri=vanished.uri)
    retried = engine.warehouse.load_objects(engine.store, [back], "run-2")
    assert (retried.objects_loaded, retried.pulls_inserted, retried.quarantined) == (1, 1, {})
    assert engine.warehouse.row_count(base.QUARANTINED) == 0
    assert engine.warehouse.loaded_object_keys([good, gone]) == {good, gone}


def test_loaded_at_only_grows(engine: Engine) -> None:
    keys = [write_object(engine.store, PULL_TYPE, [pull_event(facts(f"m{n}"))], T0, sequence=n) for n in range(3)]
    for key in keys:
        engine.load(key)
    stamps = [r[0] for r in engine.select(f"SELECT loaded_at FROM {{{base.LOADED_OBJECTS}}} ORDER BY landing_object")]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert engine.select(f"SELECT COUNT(DISTINCT loaded_at) FROM {{{base.PULLS}}}") == [(3,)]


# -- columns and raw_event --------------------------------------------------------------------------------


def test_columns_follow_the_reference_schema_and_unknown_fields_are_kept(engine: Engine) -> None:
    event = pull_event(facts("x1", error_status=404, tag=None), extra={"chainguarddev1delivery": "d-1"})
    body = event["data"]["body"]
    body.update(
        subdomain="skills",
        future_field={"nested": [1, 2]},
        policy_results=[{"policy_id": "p1", "policy_name": "n", "mode": "POLICY_MODE_ENFORCED", "result": "R"}],
    )
    event["data"]["actor"]["act"].update({"aws-arn": "arn:aws:iam::1:role/r", "custom_claim": "kept"})
    key = write_object(engine.store, PULL_TYPE, [event], T0)
    engine.load(key)

    q = engine.quote
    first_policy = "body.policy_results[1]" if engine.name == "duckdb" else "body.policy_results[OFFSET(0)]"
    raw = {
        path: f"raw_event->>'{path}'" if engine.name == "duckdb" else f"JSON_VALUE(raw_event, '{path}')"
        for path in ("$.chainguarddev1delivery", "$.data.body.future_field.nested[1]", "$.data.actor.act.custom_claim")
    }
    [row] = engine.select(
        f"""SELECT event_id, event_source, event_type, event_subject, event_time, event_group, repository, day,
            actor.subject, actor.act.{q("aws-arn")}, body.repository, body.subdomain, body.tag, body.{q("when")},
            body.remote_address, body.error.status, body.error.code, {first_policy}.policy_id,
            landing_object, landing_line, received_by, {", ".join(raw.values())}
        FROM {{{base.PULLS}}}"""
    )
    assert row == (
        "x1",
        "cgr.dev",
        PULL_TYPE,
        body["repo_id"],
        datetime(2026, 11, 18, 9, 30, 0, 373456, tzinfo=UTC),  # Ce-Time, nanoseconds truncated
        "45a0c61ea6fd977f050c5fb9ac06a69eed764595",
        "acme.dev/python",
        date(2026, 11, 18),  # the day of body.when
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


def test_a_line_whose_every_field_has_a_column_keeps_no_raw_event(engine: Engine) -> None:
    plain = pull_event(facts("k1"))
    published = pull_event(facts("k2"), extra={"actor": "svc-publisher", "dataschema": "https://schema/pull"})
    key = write_object(engine.store, PULL_TYPE, [plain, published], T0)
    engine.load(key)

    loaded = engine.select(
        "SELECT event_id, event_specversion, event_datacontenttype, event_dataschema, event_audience, event_actor, "
        f"body_sha256, raw_event FROM {{{base.PULLS}}} ORDER BY event_id"
    )
    sha = [json.loads(line)["body_sha256"] for line in landed_lines(engine.store, key)]
    assert loaded == [
        ("k1", "1.0", "application/json", None, "customer", None, sha[0], None),
        ("k2", "1.0", "application/json", "https://schema/pull", "customer", "svc-publisher", sha[1], None),
    ]


def test_a_line_keeps_its_raw_event_exactly_when_its_columns_cannot_hold_all_of_it(engine: Engine) -> None:
    cases = {**{name: (change, True) for name, change in RAW_EVENT_CASES.items()}}
    cases |= {name: (change, False) for name, change in HELD_CASES.items()}
    events = []
    for n, (change, _) in enumerate(cases.values()):
        event = pull_event(facts(f"r{n:02d}"))
        change(event)
        events.append(event)
    key = write_object(engine.store, PULL_TYPE, events, T0)

    result = engine.load(key)

    assert (result.pulls_inserted, result.lines_rejected) == (len(cases), 0)
    lines = landed_lines(engine.store, key)
    found = dict(engine.select(f"SELECT landing_line, {engine.json_text('raw_event')} FROM {{{base.PULLS}}}"))
    kept = {name: found[n] is not None for n, name in enumerate(cases, 1)}
    assert kept == {name: keeps for name, (_, keeps) in cases.items()}
    for n in range(1, len(cases) + 1):  # the whole line, as landed
        assert found[n] is None or engine.holds_line(found[n], lines[n - 1])


def test_an_event_of_another_type_keeps_raw_event_only_for_keys_without_a_column(engine: Engine) -> None:
    plain = other_event(PUSH_TYPE, "p1", T0, {"anything": [1, {"goes": True}]})
    extended = {**other_event(PUSH_TYPE, "p2", T0, {"x": 1}), "chainguarddev1webhook": "w-1"}
    key = write_object(engine.store, PUSH_TYPE, [plain, extended], T0)
    engine.load(key)

    text = engine.json_text
    loaded = engine.select(f"SELECT event_id, {text('data')}, {text('raw_event')} FROM {{{base.EVENTS}}} ORDER BY 1")
    assert [(i, json.loads(d), r is None) for i, d, r in loaded] == [
        ("p1", {"anything": [1, {"goes": True}]}, True),
        ("p2", {"x": 1}, False),
    ]
    assert engine.holds_line(loaded[1][2], landed_lines(engine.store, key)[1])


def test_the_check_figures_count_the_rows_with_raw_event_and_name_the_keys_without_a_column(engine: Engine) -> None:
    engine.load(write_object(engine.store, PULL_TYPE, events_with_fields_without_columns(), T0))

    figures = engine.warehouse.check_figures()

    assert (figures.pull_rows, figures.rows_with_raw_event) == (6, 3)
    assert figures.keys_without_column == EXPECTED_KEYS_WITHOUT_COLUMN


# -- tables -----------------------------------------------------------------------------------------------


def test_tables_are_created_when_missing_and_ddl_is_idempotent(engine: Engine) -> None:
    engine.warehouse.ensure_tables()
    engine.warehouse.ensure_tables()
    engine.reopened().ensure_tables()  # a new process finds everything in place

    assert engine.tables() == sorted(TABLES)
    columns = dict(engine.warehouse.column_schema(base.PULLS))
    assert list(columns) == [c.name for c in TABLES[base.PULLS]]
    types = {  # each engine's types of schema.py's
        "duckdb": {"event_time": "TIMESTAMP WITH TIME ZONE", "day": "DATE", "raw_event": "JSON"},
        "bigquery": {"event_time": "TIMESTAMP", "day": "DATE", "raw_event": "JSON"},
    }[engine.name]
    assert {name: columns[name] for name in types} == types
    nested = {"duckdb": ('"aws-arn" VARCHAR', '"when" TIMESTAMP'), "bigquery": ("aws-arn STRING", "when DATETIME")}
    assert nested[engine.name][0] in columns["actor"] and nested[engine.name][1] in columns["body"]
    engine.warehouse.drop_all()
    assert engine.tables() == []


def test_a_table_of_an_earlier_version_that_nothing_reads_any_more_is_dropped(engine: Engine) -> None:
    engine.warehouse.ensure_tables()
    engine.select(f"CREATE TABLE {{{base.RETIRED_TABLES[0]}}} (table_name STRING)")

    engine.reopened().ensure_tables()  # a process of this version

    assert engine.tables() == sorted(TABLES)


def test_tables_made_before_a_column_existed_gain_it_filled_from_raw_event_and_keep_loading(engine: Engine) -> None:
    old = write_object(engine.store, PULL_TYPE, [pull_event(facts("m0"), extra={"chainguarddev1delivery": "d"})], T0)
    engine.load(old, run_id="run-1")
    engine.drop_columns(base.PULLS, ["event_audience", "body_sha256"])  # as an earlier version made it
    new = write_object(engine.store, PULL_TYPE, [pull_event(facts("m1"))], T0 + timedelta(seconds=1), sequence=1)

    upgraded = engine.reopened()  # a new process of the new version
    result = upgraded.load_objects(engine.store, [o for o in listed(engine.store) if o.key == new], "run-2")

    assert result.pulls_inserted == 1
    sha = {key: json.loads(landed_lines(engine.store, key)[0])["body_sha256"] for key in (old, new)}
    found = engine.select(f"SELECT event_id, event_audience, body_sha256 FROM {{{base.PULLS}}} ORDER BY event_id")
    assert found == [("m0", "customer", sha[old]), ("m1", "customer", sha[new])]


# -- per-load checks --------------------------------------------------------------------------------------


def test_the_per_load_checks_judge_the_rows_a_load_wrote_in_the_days_it_touched(engine: Engine) -> None:
    d1, d2, d3 = (datetime(2026, 11, day, 10, 0) for day in (10, 12, 14))
    first = write_object(engine.store, PULL_TYPE, [pull_event(facts("k1", when=d1))], T0, sequence=1)
    # k1 again with another body.when: to the load another event (see the redelivery test), so k1 now has rows on
    # two days, both touched by this load.
    second = write_object(
        engine.store, PULL_TYPE, [pull_event(facts("k1", when=d2)), pull_event(facts("k2", when=d1))], T0, sequence=2
    )
    # k1 a third time, on a day of its own: this load touches d3 alone, where k1 has one row.
    third = write_object(
        engine.store, PULL_TYPE, [pull_event(facts("k1", when=d3)), pull_event(facts("k3", when=d3))], T0, sequence=3
    )

    loads = [engine.load(key, run_id=f"run-{n}") for n, key in enumerate((first, second, third))]

    assert [(r.pulls_inserted, r.affected_days) for r in loads] == [
        (1, [d1.date()]),
        (2, [d1.date(), d2.date()]),
        (2, [d3.date()]),
    ]
    assert [(r.loaded_duplicate_keys, r.loaded_missing_required) for r in loads] == [(0, 0), (1, 0), (0, 0)]
    assert engine.warehouse.check_figures().duplicate_keys == 1  # the whole-table audit counts k1 once


def test_the_per_load_checks_judge_other_events_in_the_days_of_their_time(engine: Engine) -> None:
    # Other events are de-duplicated within the day of their time, and the check reads the days the load's events
    # are dated on (in BigQuery, the events table's partitions).
    d1, d2, d3 = (datetime(2026, 11, day, 10, tzinfo=UTC) for day in (10, 12, 14))
    batches = [
        [other_event(PUSH_TYPE, "q", d1, {})],
        [other_event(PUSH_TYPE, "q", d2, {})],  # q again, dated otherwise: another row, on a day of its own
        [other_event(PUSH_TYPE, "q", d3, {}), other_event(PUSH_TYPE, "r", d2, {})],  # touches d2 and d3
    ]
    keys = [write_object(engine.store, PUSH_TYPE, events, T0, sequence=n) for n, events in enumerate(batches)]

    loads = [engine.load(key, run_id=f"run-{n}") for n, key in enumerate(keys)]

    assert [(r.events_inserted, r.loaded_duplicate_keys, r.affected_days) for r in loads] == [
        (1, 0, []),
        (1, 0, []),
        (2, 1, []),
    ]


# -- derived tables ---------------------------------------------------------------------------------------


def _daily(engine: Engine) -> dict[date, list[tuple]]:
    found: dict[date, list[tuple]] = {}
    for row in engine.select(
        f"SELECT {DAILY_COLUMNS}, first_pull, last_pull FROM {{{base.DAILY_PULLS}}} ORDER BY 1, 2"
    ):
        found.setdefault(row[0], []).append(row)
    return found


def test_late_events_recompute_only_their_days(engine: Engine) -> None:
    d1, d2, d3 = (datetime(2026, 11, day, 10, 0) for day in (10, 11, 12))
    first = [
        pull_event(facts("a", when=d1)),
        pull_event(facts("b", when=d2, actor="actor-2")),
        pull_event(facts("c", when=d3, method="HEAD")),
    ]
    loaded = engine.load(write_object(engine.store, PULL_TYPE, first, T0, sequence=1), run_id="run-1")
    assert loaded.affected_days == [date(2026, 11, 10), date(2026, 11, 11), date(2026, 11, 12)]
    refreshed = engine.warehouse.refresh_daily_pulls(loaded.affected_days)
    assert refreshed.rows_per_day == dict.fromkeys(loaded.affected_days, 1)
    assert (refreshed.repositories_marked, refreshed.table_rows) == (1, 3)
    daily = f"SELECT day, events, image_pulls, computed_at, unique_clients FROM {{{base.DAILY_PULLS}}}"
    before = {r[0]: r for r in engine.select(daily)}

    # Recomputing a day again changes nothing but its computed_at, and marks no repository for the summary.
    engine.warehouse.refresh_repository_summary()
    again_same = engine.warehouse.refresh_daily_pulls([date(2026, 11, 11)])
    assert (again_same.rows_per_day, again_same.repositories_marked) == ({date(2026, 11, 11): 1}, 0)

    # Two days later an event of the 10th arrives (a slow delivery), plus a redelivery of one of the 11th.
    late = [pull_event(facts("late", when=d1 + timedelta(hours=3), client="10.0.0.2")), first[1]]
    k2 = write_object(engine.store, PULL_TYPE, late, T0 + timedelta(days=2), sequence=2)
    loaded = engine.load(k2, run_id="run-2")
    assert loaded.affected_days == [date(2026, 11, 10)]
    again = engine.warehouse.refresh_daily_pulls(loaded.affected_days)
    assert (again.rows_per_day, again.repositories_marked) == ({date(2026, 11, 10): 1}, 1)

    after = {r[0]: r for r in engine.select(daily)}
    assert after[date(2026, 11, 10)][1:3] == (2, 2)
    assert after[date(2026, 11, 10)][4] == 2
    assert after[date(2026, 11, 10)][3] > before[date(2026, 11, 10)][3]
    assert after[date(2026, 11, 12)] == before[date(2026, 11, 12)]  # same figures, same computed_at
    # A day without pulls recomputes to nothing.
    assert engine.warehouse.refresh_daily_pulls([date(2026, 11, 20)]).rows_per_day == {date(2026, 11, 20): 0}


def test_a_daily_refresh_reads_and_writes_exactly_the_days_it_is_given_and_is_idempotent(engine: Engine) -> None:
    days = [datetime(2026, 11, day, 10, 0) for day in (10, 11, 12)]
    pulls = [facts(f"d{n}", when=when + timedelta(minutes=n)) for n, when in enumerate(days * 2)]
    engine.load(write_object(engine.store, PULL_TYPE, [pull_event(p) for p in pulls], T0))
    d10, d11, d12 = (when.date() for when in days)
    engine.warehouse.refresh_daily_pulls([d10, d11, d12])
    engine.warehouse.refresh_repository_summary()  # it takes the repositories marked so far
    # By hand: the 12th's daily row altered, the 11th given a row of a repository it has no pulls of, and a pull
    # of the 10th moved to the 12th in the pull table. A refresh of the 10th and 11th must read neither the 12th's
    # pulls nor its daily row.
    engine.select(f"UPDATE {{{base.DAILY_PULLS}}} SET events = 99 WHERE day = DATE '2026-11-12'")
    engine.select(
        f"INSERT INTO {{{base.DAILY_PULLS}}} ({DAILY_COLUMNS}) VALUES (DATE '2026-11-11', 'ghost', 1, 1, 0, 0, 0, 1, 1)"
    )
    engine.select(f"UPDATE {{{base.PULLS}}} SET day = DATE '2026-11-12' WHERE event_id = 'd0'")

    results = []
    for _ in range(2):
        results.append(engine.warehouse.refresh_daily_pulls([d11, d10]))
        engine.warehouse.refresh_repository_summary()

    assert [(r.days, r.rows_per_day) for r in results] == [([d10, d11], {d10: 1, d11: 1})] * 2
    # The first marks the repository whose 10th changed and the one whose row went; the second changes nothing.
    assert [r.repositories_marked for r in results] == [2, 0]
    stays = [day for day in (d10, d11, d12) if day != d12]
    expected = expected_daily([p for p in pulls if p.id != "d0" and p.when.date() in stays])
    daily = _daily(engine)
    assert [row[:9] for day in stays for row in daily[day]] == expected
    assert [row[2] for row in daily[d12]] == [99]  # not read, not written
    assert [row[9:] for row in daily[d11]] == [(pulls[1].when, pulls[4].when)]  # first_pull, last_pull


def test_the_previews_show_the_days_asked_for_and_the_summary_from_the_derived_tables_alone(engine: Engine) -> None:
    d10, d11, d12, d13 = (datetime(2026, 11, day, 10, 0) for day in (10, 11, 12, 13))
    pulls = [
        *(facts(f"ax{n}", when=d10 + timedelta(minutes=n), repository="a/x") for n in range(3)),
        facts("ax-head", when=d10, repository="a/x", method="HEAD"),
        facts("ax-404", when=d10, repository="a/x", error_status=404),
        facts("by0", when=d10, repository="b/y"),
        *(facts(f"by{n}", when=d11 + timedelta(minutes=n), repository="b/y") for n in (1, 2)),
        *(facts(f"cz{n}", when=d11 + timedelta(minutes=n), repository="c/z") for n in range(2)),
        facts("cz-500", when=d11, repository="c/z", kind="blob", error_status=500),
        *(facts(f"ax12-{n}", when=d12 + timedelta(minutes=n), repository="a/x") for n in range(10)),
    ]
    loaded = engine.load(write_object(engine.store, PULL_TYPE, [pull_event(p) for p in pulls], T0))
    engine.warehouse.refresh_daily_pulls(loaded.affected_days)
    engine.warehouse.refresh_repository_summary()
    # The previews read the derived tables only: with the pull table emptied they show the same.
    engine.select(f"DELETE FROM {{{base.PULLS}}} WHERE true")

    preview = engine.warehouse.daily_preview([d13.date(), d11.date(), d10.date()], top=2)
    assert preview == base.DailyPreview(
        days=[
            base.DayTotals(d10.date(), image_pulls=4, events=6, errors=1, repositories=2),
            base.DayTotals(d11.date(), image_pulls=4, events=5, errors=1, repositories=2),
            base.DayTotals(d13.date(), image_pulls=0, events=0, errors=0, repositories=0),  # no pulls that day
        ],
        # a/x and b/y tie on image pulls: by name. The 12th's ten pulls of a/x are not among the days asked for.
        top_repositories=[base.RepositoryPulls("a/x", 3, 5, 1), base.RepositoryPulls("b/y", 3, 3, 0)],
    )
    assert engine.warehouse.summary_preview(top=2) == base.SummaryPreview(
        repositories=3,
        image_pulls=18,
        events=21,
        errors=2,
        top_repositories=[base.RepositoryPulls("a/x", 13, 15, 1), base.RepositoryPulls("b/y", 3, 3, 0)],
    )


def _at(engine: Engine, moment: datetime) -> None:
    """Set the clock the summary counts its time windows back from (both warehouses take one for tests)."""
    assert hasattr(engine.warehouse, "clock"), f"{type(engine.warehouse).__name__} takes no clock"
    engine.warehouse.clock = lambda: moment  # type: ignore[attr-defined]


def _summary(engine: Engine) -> list[tuple]:
    return engine.select(f"SELECT {SUMMARY_COLUMNS} FROM {{{base.REPOSITORY_SUMMARY}}} ORDER BY repository")


def _load_and_refresh(engine: Engine, pulls: list[PullFacts], sequence: int) -> base.SummaryRefresh:
    """One load of ``pulls`` and the derived tables after it, as the daily sensor's run does."""
    key = write_object(engine.store, PULL_TYPE, [pull_event(p) for p in pulls], T0, sequence=sequence)
    loaded = engine.load(key, run_id=f"run-{sequence}")
    engine.warehouse.refresh_daily_pulls(loaded.affected_days)
    return engine.warehouse.refresh_repository_summary()


def test_the_incremental_summary_equals_a_full_recompute_through_late_events_and_turning_days(engine: Engine) -> None:
    clock = datetime(2026, 11, 20, 23, 30, tzinfo=UTC)
    today = datetime(2026, 11, 20, 9, 0)  # body.when is UTC civil time

    def pull(event_id: str, repository: str, days_ago: int, **changes: Any) -> PullFacts:
        return facts(event_id, when=today - timedelta(days=days_ago), repository=repository, **changes)

    first = [
        pull("a1", "alpha", 1, tag="v1"),
        pull("a2", "alpha", 6, tag="v2", actor="actor-2"),
        pull("a3", "alpha", 8, tag="v1"),
        pull("b1", "beta", 2, client="10.0.0.9"),
        pull("b2", "beta", 3, method="HEAD"),
        pull("g1", "gamma", 40, actor="actor-9"),  # outside every window: left alone when the day turns
        pull("d1", "delta", 25, tag="v3"),  # in the 30-day window now, out of it a week later
    ]
    late = [
        pull("a4", "alpha", 20, tag="v9", actor="actor-new"),  # a new actor, seen only on a late day
        pull("b3", "beta", 2, error_status=404),  # a day already counted, recomputed
        pull("b4", "beta", -3, tag="v1"),  # dated three days ahead: beyond the horizon, in no window
    ]
    _at(engine, clock)

    refreshed = _load_and_refresh(engine, first, 1)
    assert (refreshed.repositories_recomputed, refreshed.day_turned, refreshed.computed_at) == (4, False, clock)
    assert _summary(engine) == [tuple(row) for row in expected_summary(first, clock)]

    refreshed = _load_and_refresh(engine, [*late, first[0]], 2)  # a1 redelivered: a duplicate
    assert (refreshed.repositories_recomputed, refreshed.day_turned) == (2, False)  # alpha and beta
    assert _summary(engine) == [tuple(row) for row in expected_summary(first + late, clock)]
    audit = engine.warehouse.summary_audit()
    assert (audit.rows_compared, audit.rows_differing, audit.examples, audit.as_of) == (4, 0, [], clock)

    # A week later, with no load in between: every window moved. Repositories with pulls in the old or new
    # windows are recomputed (gamma's pulls are older than both: its row stays as it is, and right).
    later = clock + timedelta(days=7)
    _at(engine, later)
    refreshed = engine.warehouse.refresh_repository_summary()
    assert (refreshed.repositories_recomputed, refreshed.day_turned) == (3, True)
    assert _summary(engine) == [tuple(row) for row in expected_summary(first + late, later)]
    audit = engine.warehouse.summary_audit()
    assert (audit.rows_compared, audit.rows_differing, audit.as_of) == (4, 0, later)

    # A summary row altered by hand, another removed: the audit names both.
    engine.select(f"UPDATE {{{base.REPOSITORY_SUMMARY}}} SET image_pulls = image_pulls + 1 WHERE repository = 'beta'")
    engine.select(f"DELETE FROM {{{base.REPOSITORY_SUMMARY}}} WHERE repository = 'gamma'")
    audit = engine.warehouse.summary_audit()
    assert (audit.rows_compared, audit.rows_differing, audit.examples) == (4, 2, ["beta", "gamma"])


def test_derived_tables_match_figures_computed_independently(engine: Engine) -> None:
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
    landed = synthetic_landing(engine.store, spec)
    objects = listed(engine.store)
    for start in range(0, len(objects), 4):  # several loads, as several sensor runs would do
        loaded = engine.warehouse.load_objects(engine.store, objects[start : start + 4], f"run-{start}")
        engine.warehouse.refresh_daily_pulls(loaded.affected_days)
        summary = engine.warehouse.refresh_repository_summary()

    assert len(engine.pull_ids()) == landed.pull_count == len(landed.pulls)
    assert engine.warehouse.row_count(base.EVENTS) == landed.other_events
    rejected = engine.select(f"SELECT landing_object, landing_line, reason FROM {{{base.REJECTED}}}")
    assert sorted(rejected) == sorted(landed.rejected)
    assert {r[2] for r in rejected} == set(REJECTION_REASONS)

    assert engine.select(f"SELECT {DAILY_COLUMNS} FROM {{{base.DAILY_PULLS}}} ORDER BY 1, 2") == expected_daily(
        landed.pulls
    )
    actual = _summary(engine)
    expected = expected_summary(landed.pulls, summary.computed_at)  # type: ignore[arg-type]
    assert summary.table_rows == len(expected) == 6
    assert [r[:4] + r[5:] for r in actual] == [e[:4] + e[5:] for e in expected]
    assert [r[4] for r in actual] == pytest.approx([e[4] for e in expected])
    assert engine.warehouse.summary_audit().rows_differing == 0
    figures = engine.warehouse.check_figures()
    assert (figures.duplicate_keys, figures.missing_required) == (0, 0)
    assert figures.landed_lines == figures.accounted_lines


# -- time windows ------------------------------------------------------------------------------------------


def test_time_windows_count_back_from_now_and_pulls_dated_in_the_future_change_no_one_elses(engine: Engine) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    far, ahead = datetime(9999, 1, 1), now + timedelta(days=40)
    pulls = [
        facts("steady-1", when=now - timedelta(days=1), repository="steady"),
        facts("steady-10", when=now - timedelta(days=10), repository="steady", tag="v1"),
        facts("steady-40", when=now - timedelta(days=40), repository="steady"),
        # Within the tolerance (a client clock a little ahead): it counts.
        facts("skewed-1", when=now + timedelta(minutes=10), repository="skewed"),
        facts("far-1", when=far, repository="far"),
        facts("ahead-1", when=ahead, repository="ahead"),
    ]
    loaded = engine.load(write_object(engine.store, PULL_TYPE, [pull_event(p) for p in pulls], T0))
    engine.warehouse.refresh_daily_pulls(loaded.affected_days)

    engine.warehouse.refresh_repository_summary()

    summary = engine.select(f"SELECT {SUMMARY_COLUMNS}, computed_at FROM {{{base.REPOSITORY_SUMMARY}}} ORDER BY 1")
    windows = {r[0]: (r[2], r[9], r[10]) for r in summary}  # image_pulls, last 7 days, last 30 days
    assert windows == {"ahead": (1, 0, 0), "far": (1, 0, 0), "skewed": (1, 1, 1), "steady": (3, 1, 2)}
    seen = {r[0]: (r[7], r[8]) for r in summary}  # first_seen, last_seen
    assert seen == {
        "ahead": (None, None),
        "far": (None, None),
        "skewed": (pulls[3].when, pulls[3].when),
        "steady": (pulls[2].when, pulls[0].when),
    }
    refreshed_at = summary[0][-1]
    assert abs(refreshed_at - datetime.now(UTC)) < timedelta(minutes=1)  # the warehouse's clock
    assert [r[:-1] for r in summary] == [tuple(e) for e in expected_summary(pulls, refreshed_at)]


def test_the_figures_name_exactly_the_pulls_dated_beyond_the_tolerance(engine: Engine) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    far, ahead = datetime(9999, 1, 1), now + timedelta(days=40)
    pulls = [
        facts("past", when=now - timedelta(days=1), repository="steady"),
        facts("skewed", when=now + timedelta(minutes=10), repository="steady"),
        facts("far-1", when=far, repository="far"),
        facts("ahead-1", when=ahead, repository="ahead", source="other.example"),
    ]
    engine.load(write_object(engine.store, PULL_TYPE, [pull_event(p) for p in pulls], T0))

    figures = engine.warehouse.check_figures()

    assert figures.future_dated_pulls == 2
    assert figures.future_dated_examples == [  # the farthest ahead first
        base.FutureDatedPull("cgr.dev", "far-1", "far", far),
        base.FutureDatedPull("other.example", "ahead-1", "ahead", ahead),
    ]


# -- rebuild -----------------------------------------------------------------------------------------------


def _landed_and_loaded(engine: Engine) -> list[LandedObject]:
    """Landed objects with duplicates and bad lines, loaded BATCH at a time and refreshed, as sensor runs do."""
    spec = LandingSpec(
        events=100,
        repositories=3,
        days=4,
        events_per_object=40,
        duplicate_rate=0.05,
        bad_line_rate=0.02,
        other_type_rate=0.05,
        committed_from=T0,
        seed=11,
    )
    synthetic_landing(engine.store, spec)
    objects = listed(engine.store)
    engine.load_in_batches(objects, BATCH)
    engine.warehouse.refresh_daily_pulls(engine.warehouse.pull_days())
    engine.warehouse.refresh_repository_summary()
    return objects


def _fail_on_the_shadow(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, method: str, effect: Callable[[Any, Callable[[], Any]], Any]
) -> None:
    """Make ``method`` behave as ``effect(self, original)`` when called on the rebuild's shadow copy."""
    kind = type(engine.warehouse)
    original = getattr(kind, method)

    def patched(self: base.Warehouse, *args: Any, **kwargs: Any) -> Any:
        if self is engine.warehouse:
            return original(self, *args, **kwargs)
        return effect(self, lambda: original(self, *args, **kwargs))

    monkeypatch.setattr(kind, method, patched)


def _fail_the_second_load(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> str:
    calls = []

    def effect(shadow: base.Warehouse, load: Callable[[], Any]) -> Any:
        calls.append(shadow)
        if len(calls) == 2:
            raise RuntimeError("injected: the process died half-way through the load")
        return load()

    _fail_on_the_shadow(monkeypatch, engine, "load_objects", effect)
    return "injected: the process died"


def _fail_the_derived_tables(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> str:
    def effect(shadow: base.Warehouse, refresh: Callable[[], Any]) -> Any:
        raise RuntimeError("injected: the summary could not be computed")

    _fail_on_the_shadow(monkeypatch, engine, "refresh_repository_summary", effect)
    return "injected: the summary"


def _fail_the_swap_at_its_last_table(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> str:
    # The swap replaces the tables in TABLES order: without the shadow's last table it fails after all the others.
    def effect(shadow: base.Warehouse, refresh: Callable[[], Any]) -> Any:
        result = refresh()
        engine.drop_table(shadow, list(TABLES)[-1])
        return result

    _fail_on_the_shadow(monkeypatch, engine, "refresh_repository_summary", effect)
    return list(TABLES)[-1]  # the error names the missing table


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(_fail_the_second_load, id="half-way-through-the-load"),
        pytest.param(_fail_the_derived_tables, id="computing-the-derived-tables"),
        pytest.param(_fail_the_swap_at_its_last_table, id="swapping-the-last-table"),
    ],
)
def test_a_rebuild_that_fails_leaves_every_table_exactly_as_it_was_and_no_shadow(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, failure: Callable[[pytest.MonkeyPatch, Engine], str]
) -> None:
    _landed_and_loaded(engine)
    # Objects landed since: a complete rebuild would change the tables.
    write_object(engine.store, PULL_TYPE, [pull_event(facts(f"new-{n}")) for n in range(3)], T0, sequence=900)
    before = engine.snapshot()
    error = failure(monkeypatch, engine)

    with pytest.raises(Exception, match=error):
        engine.warehouse.rebuild(engine.store, listed(engine.store), "rebuild", BATCH)

    assert engine.snapshot() == before
    assert not engine.shadow_exists()


def test_a_rebuild_swaps_in_the_tables_incremental_loads_built_and_drops_its_shadow(engine: Engine) -> None:
    objects = _landed_and_loaded(engine)
    before = engine.snapshot(volatile=False)
    # What a rebuild that died before dropping its shadow left: a ledger naming an object, which must not be skipped.
    leftover = engine.warehouse.shadow()
    leftover.ensure_tables()
    leftover.load_objects(engine.store, objects[:1], "died")

    loaded, daily = engine.warehouse.rebuild(engine.store, objects, "rebuild", BATCH)

    assert (loaded.objects_loaded, loaded.objects_skipped) == (len(objects), 0)
    assert daily.days == engine.warehouse.pull_days()
    assert engine.snapshot(volatile=False) == before
    assert engine.select(f"SELECT DISTINCT run_id FROM {{{base.LOADED_OBJECTS}}}") == [("rebuild",)]
    assert engine.warehouse.summary_audit().rows_differing == 0
    assert not engine.shadow_exists()


def test_a_rebuild_that_cannot_read_an_object_already_loaded_keeps_the_tables(engine: Engine) -> None:
    objects = _landed_and_loaded(engine)
    before = engine.snapshot()
    engine.delete_object(objects[1].key)  # gone from the landing zone since it was loaded

    with pytest.raises(base.RebuildIncomplete, match=objects[1].key):
        engine.warehouse.rebuild(engine.store, objects, "rebuild", BATCH)

    assert engine.snapshot() == before
    assert not engine.shadow_exists()


# -- tokens ------------------------------------------------------------------------------------------------


def _line_with_token(event_id: str, key: str, number: int, token: str) -> bytes:
    record = json.loads(landed_line(pull_event(facts(event_id)), key, number, T0, "hand"))
    return json.dumps({**record, "token_sha256": token}, separators=(",", ":")).encode()


def test_a_token_authorizes_one_event_and_a_second_event_with_it_is_rejected_as_token_replayed(engine: Engine) -> None:
    token, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    first, second = (object_key(PULL_TYPE, T0, "hand", n) for n in (1, 2))
    first_lines = [
        _line_with_token("t1", first, 1, token),
        _line_with_token("t2", first, 2, token),  # a captured token minting a new event in the same batch
        _line_with_token("t1", first, 3, token),  # a genuine retry: the same event, a duplicate
    ]
    second_lines = [_line_with_token("t3", second, 1, token), _line_with_token("t4", second, 2, other)]
    loads = []
    for key, lines in ((first, first_lines), (second, second_lines)):  # the second load sees the first's rows
        data = b"\n".join(lines) + b"\n"
        engine.store.write_new(key, data)
        loads.append(
            engine.warehouse.load_objects(engine.store, [LandedObject(key, len(data), engine.store.uri(key))], key)
        )

    assert [(r.pulls_inserted, r.duplicates_skipped, r.lines_rejected) for r in loads] == [(1, 1, 1), (1, 0, 1)]
    assert engine.select(f"SELECT event_id, token_sha256 FROM {{{base.PULLS}}} ORDER BY 1") == [
        ("t1", token),
        ("t4", other),
    ]
    rejected = f"SELECT landing_object, landing_line, reason, raw_line FROM {{{base.REJECTED}}} ORDER BY 1, 2"
    assert engine.select(rejected) == [
        (first, 2, "token_replayed", first_lines[1].decode()),
        (second, 1, "token_replayed", second_lines[0].decode()),
    ]
    ledger = f"SELECT landing_object, lines, lines_rejected FROM {{{base.LOADED_OBJECTS}}} ORDER BY 1"
    assert engine.select(ledger) == [(first, 3, 1), (second, 2, 1)]
