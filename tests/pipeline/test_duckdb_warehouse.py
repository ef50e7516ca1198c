"""The DuckDB warehouse on a real DuckDB file, fed by real landing objects in receiver format."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from dagster_duckdb import DuckDBResource

from pull_events.landing import GcsLandingStore, LandedObject, LandingStore, LocalLandingStore, object_key
from pull_events_dagster.defs.resources import DuckDBWarehouseResource
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse import duckdb as warehouse_module
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse, WarehouseLocked, connect_once
from tests.pipeline.conftest import rows
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
    RawLine,
    events_with_fields_without_columns,
    landed_line,
    other_event,
    poison_event,
    pull_event,
    synthetic_landing,
    write_object,
)
from tests.pipeline.lockholder import LockHolder

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PULLS = f"{base.DATASET}.{base.PULLS}"
EVENTS = f"{base.DATASET}.{base.EVENTS}"
REJECTED = f"{base.DATASET}.{base.REJECTED}"
LEDGER = f"{base.DATASET}.{base.LOADED_OBJECTS}"
DAILY = f"{base.DATASET}.{base.DAILY_PULLS}"
SUMMARY = f"{base.DATASET}.{base.REPOSITORY_SUMMARY}"
QUARANTINED = f"{base.DATASET}.{base.QUARANTINED}"


def facts(
    event_id: str,
    when: datetime = datetime(2026, 11, 18, 9, 30, 0, 123456),
    repository: str = "acme.dev/python",
    method: str = "GET",
    kind: str = "manifest",
    tag: str | None = "latest",
    error_status: int | None = None,
    actor: str = "actor-1",
    client: str = "10.0.0.1",
    source: str = "cgr.dev",
) -> PullFacts:
    return PullFacts(source, event_id, repository, when, method, kind, tag, error_status, actor, client)


def objects(store: LandingStore, *keys: str) -> list[LandedObject]:
    listed = {o.key: o for o in store.list_all()}
    return [listed[key] for key in keys]


def ids(warehouse: DuckDBWarehouse, table: str = PULLS) -> list[str]:
    return [r[0] for r in rows(warehouse, f"SELECT event_id FROM {table} ORDER BY event_id")]


def test_each_event_is_loaded_once_however_often_it_is_delivered_landed_or_loaded(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    e1, e2, e3 = (pull_event(facts(f"e{n}")) for n in (1, 2, 3))
    a = write_object(store, PULL_TYPE, [e1, e2, e1], T0, sequence=1)
    b = write_object(store, PULL_TYPE, [e2, e3], T0 + timedelta(seconds=1), sequence=2)

    first = warehouse.load_objects(store, objects(store, a, b), "run-1")
    assert (first.objects_loaded, first.lines_read, first.pulls_inserted, first.duplicates_skipped) == (2, 5, 3, 2)
    assert ids(warehouse) == ["e1", "e2", "e3"]
    # The first copy is the one kept (same receive time: the earlier object, then the earlier line).
    assert rows(warehouse, f"SELECT landing_object, landing_line FROM {PULLS} WHERE event_id = 'e1'") == [(a, 1)]

    again = warehouse.load_objects(store, objects(store, a, b), "run-2")
    assert (again.objects_loaded, again.objects_skipped, again.lines_read, again.pulls_inserted) == (0, 2, 0, 0)

    c = write_object(store, PULL_TYPE, [e1, e3], T0 + timedelta(seconds=2), sequence=3)
    redelivered = warehouse.load_objects(store, objects(store, c), "run-3")
    assert (redelivered.pulls_inserted, redelivered.duplicates_skipped) == (0, 2)

    assert ids(warehouse) == ["e1", "e2", "e3"]
    assert rows(
        warehouse,
        f"SELECT landing_object, lines, pulls_inserted, events_inserted, duplicates_skipped, lines_rejected, run_id "
        f"FROM {LEDGER} ORDER BY landing_object",
    ) == [(a, 3, 2, 0, 1, 0, "run-1"), (b, 2, 1, 0, 1, 0, "run-1"), (c, 2, 0, 0, 2, 0, "run-3")]
    figures = warehouse.check_figures()
    assert (figures.duplicate_keys, figures.landed_lines, figures.accounted_lines) == (0, 7, 7)


def test_the_earliest_received_copy_wins_within_a_batch(store: LocalLandingStore, warehouse: DuckDBWarehouse) -> None:
    event = pull_event(facts("e9"))
    early_key = write_object(store, PULL_TYPE, [event], T0, sequence=1, received_at=T0 + timedelta(seconds=5))
    late_key = write_object(
        store, PULL_TYPE, [event], T0 + timedelta(seconds=1), sequence=2, received_at=T0 - timedelta(seconds=5)
    )
    warehouse.load_objects(store, objects(store, early_key, late_key), "run")
    assert rows(warehouse, f"SELECT landing_object, received_at FROM {PULLS}") == [
        (late_key, T0 - timedelta(seconds=5))
    ]


def test_same_id_from_another_source_is_another_event(store: LocalLandingStore, warehouse: DuckDBWarehouse) -> None:
    key = write_object(
        store, PULL_TYPE, [pull_event(facts("same")), pull_event(facts("same", source="other.example"))], T0
    )
    result = warehouse.load_objects(store, objects(store, key), "run")
    assert (result.pulls_inserted, result.duplicates_skipped) == (2, 0)
    assert rows(warehouse, f"SELECT event_source FROM {PULLS} ORDER BY 1") == [("cgr.dev",), ("other.example",)]


def test_poison_lines_are_quarantined_with_their_reason_while_neighbours_load(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    lines: list = []
    expected_rejections = []
    for n, reason in enumerate(REJECTION_REASONS):
        lines.append(pull_event(facts(f"good-{n}")))
        lines.append(poison_event(reason, facts(f"bad-{n}")))
        expected_rejections.append((len(lines), reason))
    lines.append(pull_event(facts("good-last")))
    key = write_object(store, PULL_TYPE, lines, T0)
    landed = Path(store.uri(key)).read_text().split("\n")

    result = warehouse.load_objects(store, objects(store, key), "run-p")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (25, 13, 12)
    assert len(ids(warehouse)) == 13
    assert rows(warehouse, f"SELECT landing_line, reason FROM {REJECTED} ORDER BY landing_line") == expected_rejections
    for line, raw, landing_object, run_id in rows(
        warehouse, f"SELECT landing_line, raw_line, landing_object, run_id FROM {REJECTED}"
    ):
        assert raw == landed[line - 1]  # exactly as landed
        assert (landing_object, run_id) == (key, "run-p")
    figures = warehouse.check_figures()
    assert (figures.rejected_lines, figures.landed_lines, figures.accounted_lines) == (12, 25, 25)


def test_empty_and_blank_lines_are_ignored(store: LocalLandingStore, warehouse: DuckDBWarehouse) -> None:
    key = "dev.chainguard.registry.pull.v1/dt=2026-11-20/hour=12/20261120T120000000000Z-hand-0000000001.ndjson"
    first = landed_line(pull_event(facts("b1")), key, 1, T0, "hand")
    fourth = landed_line(pull_event(facts("b2")), key, 4, T0, "hand")
    store.write_new(key, f"{first}\n\n  \t\r\n{fourth}\n\n".encode())

    result = warehouse.load_objects(store, objects(store, key), "run")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (2, 2, 0)
    assert rows(warehouse, f"SELECT event_id, landing_line FROM {PULLS} ORDER BY 1") == [("b1", 1), ("b2", 4)]


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(["good", "broken", "good"], id="one-broken-line"),
        pytest.param(["broken", "good", "broken", "good"], id="two-broken-lines"),
        pytest.param(["good", "", "broken", "good"], id="broken-line-after-a-blank-line"),
        pytest.param(["good", "broken\r", "good"], id="carriage-return"),
    ],
)
def test_a_broken_line_is_quarantined_under_its_own_line_number(
    layout: list[str], store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    key = "dev.chainguard.registry.pull.v1/dt=2026-11-20/hour=12/20261120T120000000000Z-hand-0000000002.ndjson"
    broken = '{"specversion":"1.0","id":"x","data":{"body": '
    text = []
    for number, kind in enumerate(layout, start=1):
        if kind == "good":
            text.append(landed_line(pull_event(facts(f"g{number}")), key, number, T0, "hand"))
        else:
            text.append(kind.replace("broken", broken))
    store.write_new(key, ("\n".join(text) + "\n").encode())

    result = warehouse.load_objects(store, objects(store, key), "run")

    good = [(f"g{n}", n) for n, kind in enumerate(layout, start=1) if kind == "good"]
    bad = [(n, "invalid_json", text[n - 1]) for n, kind in enumerate(layout, start=1) if kind.startswith("broken")]
    assert (result.pulls_inserted, result.lines_rejected) == (len(good), len(bad))
    assert rows(warehouse, f"SELECT event_id, landing_line FROM {PULLS} ORDER BY landing_line") == good
    assert rows(warehouse, f"SELECT landing_line, reason, raw_line FROM {REJECTED} ORDER BY 1") == bad


def test_a_file_the_csv_reader_refuses_does_not_change_its_neighbours_rows(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    plain = write_object(store, PULL_TYPE, [pull_event(facts("n1")), pull_event(facts("n2"))], T0, sequence=1)
    crlf = write_object(store, PULL_TYPE, [pull_event(facts("c1")), pull_event(facts("c2"))], T0, sequence=2)
    path = Path(store.uri(crlf))
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))

    result = warehouse.load_objects(store, objects(store, plain, crlf), "run")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (4, 4, 0)
    assert rows(warehouse, f"SELECT event_id, landing_object, landing_line FROM {PULLS} ORDER BY 1") == [
        ("c1", crlf, 1),
        ("c2", crlf, 2),
        ("n1", plain, 1),
        ("n2", plain, 2),
    ]


def test_a_file_that_is_not_utf8_rejects_only_its_bad_line(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    key = write_object(store, PULL_TYPE, [pull_event(facts("u1")), RawLine("PLACEHOLDER"), pull_event(facts("u2"))], T0)
    path = Path(store.uri(key))
    path.write_bytes(path.read_bytes().replace(b"PLACEHOLDER", b'{"id":"\xff\xfe"}'))

    result = warehouse.load_objects(store, objects(store, key), "run")

    assert (result.pulls_inserted, result.lines_rejected) == (2, 1)
    assert rows(warehouse, f"SELECT landing_line, reason, raw_line FROM {REJECTED}") == [
        (2, "invalid_utf8", '{"id":"\\xff\\xfe"}')
    ]


def test_columns_follow_the_reference_schema_and_unknown_fields_are_kept(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    event = pull_event(facts("x1", error_status=404, tag=None), extra={"chainguarddev1delivery": "d-1"})
    body = event["data"]["body"]
    body.update(
        subdomain="skills",
        future_field={"nested": [1, 2]},
        policy_results=[{"policy_id": "p1", "policy_name": "n", "mode": "POLICY_MODE_ENFORCED", "result": "R"}],
    )
    event["data"]["actor"]["act"].update({"aws-arn": "arn:aws:iam::1:role/r", "custom_claim": "kept"})
    key = write_object(store, PULL_TYPE, [event], T0)
    warehouse.load_objects(store, objects(store, key), "run")

    [row] = rows(
        warehouse,
        f"""SELECT event_id, event_source, event_type, event_subject, event_time, event_group, repository,
            actor.subject, actor.act."aws-arn", body.repository, body.subdomain, body.tag, body."when",
            body.remote_address, body.error.status, body.error.code, body.policy_results[1].policy_id,
            landing_object, landing_line, received_by,
            raw_event->>'$.chainguarddev1delivery', raw_event->>'$.data.body.future_field.nested[1]',
            raw_event->>'$.data.actor.act.custom_claim'
        FROM {PULLS}""",
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


def landed_lines(store: LocalLandingStore, key: str) -> list[str]:
    """An object's lines exactly as landed."""
    return store.read(key).decode().splitlines()


def test_a_line_whose_every_field_has_a_column_keeps_no_raw_event(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    plain = pull_event(facts("k1"))
    published = pull_event(facts("k2"), extra={"actor": "svc-publisher", "dataschema": "https://schema/pull"})
    key = write_object(store, PULL_TYPE, [plain, published], T0)
    warehouse.load_objects(store, objects(store, key), "run")

    loaded = rows(
        warehouse,
        f"""SELECT event_id, event_specversion, event_datacontenttype, event_dataschema, event_audience,
            event_actor, body_sha256, raw_event FROM {PULLS} ORDER BY event_id""",
    )
    sha = [json.loads(line)["body_sha256"] for line in landed_lines(store, key)]
    assert loaded == [
        ("k1", "1.0", "application/json", None, "customer", None, sha[0], None),
        ("k2", "1.0", "application/json", "https://schema/pull", "customer", "svc-publisher", sha[1], None),
    ]


@pytest.mark.parametrize(
    ("change", "kept"),
    [
        *(pytest.param(change, True, id=name) for name, change in RAW_EVENT_CASES.items()),
        *(pytest.param(change, False, id=name) for name, change in HELD_CASES.items()),
    ],
)
def test_a_line_keeps_its_raw_event_exactly_when_its_columns_cannot_hold_all_of_it(
    store: LocalLandingStore, warehouse: DuckDBWarehouse, change: Callable[[dict], object], kept: bool
) -> None:
    changed = pull_event(facts("changed"))
    change(changed)
    key = write_object(store, PULL_TYPE, [pull_event(facts("plain")), changed], T0)
    result = warehouse.load_objects(store, objects(store, key), "run")

    assert (result.pulls_inserted, result.lines_rejected) == (2, 0)
    found = rows(warehouse, f"SELECT event_id, raw_event::VARCHAR FROM {PULLS} ORDER BY event_id")
    assert found == [("changed", landed_lines(store, key)[1] if kept else None), ("plain", None)]


def test_the_check_figures_count_the_rows_with_raw_event_and_name_the_keys_without_a_column(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    key = write_object(store, PULL_TYPE, events_with_fields_without_columns(), T0)
    warehouse.load_objects(store, objects(store, key), "run")

    figures = warehouse.check_figures()

    assert (figures.pull_rows, figures.rows_with_raw_event) == (6, 3)
    assert figures.keys_without_column == EXPECTED_KEYS_WITHOUT_COLUMN


def test_an_event_of_another_type_keeps_raw_event_only_for_keys_without_a_column(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    plain = other_event(PUSH_TYPE, "p1", T0, {"anything": [1, {"goes": True}]})
    extended = {**other_event(PUSH_TYPE, "p2", T0, {"x": 1}), "chainguarddev1webhook": "w-1"}
    key = write_object(store, PUSH_TYPE, [plain, extended], T0)
    warehouse.load_objects(store, objects(store, key), "run")

    loaded = rows(warehouse, f"SELECT event_id, data::VARCHAR, raw_event::VARCHAR FROM {EVENTS} ORDER BY event_id")
    assert loaded == [
        ("p1", '{"anything":[1,{"goes":true}]}', None),
        ("p2", '{"x":1}', landed_lines(store, key)[1]),
    ]


def test_tables_made_before_a_column_existed_gain_it_filled_from_raw_event_and_keep_loading(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    old = write_object(store, PULL_TYPE, [pull_event(facts("m0"), extra={"chainguarddev1delivery": "d"})], T0)
    warehouse.load_objects(store, objects(store, old), "run-1")
    with warehouse.session() as conn:  # the pull table as an earlier version made it
        for column in ("event_audience", "body_sha256"):
            conn.execute(f"ALTER TABLE {PULLS} DROP COLUMN {column}")
    new = write_object(store, PULL_TYPE, [pull_event(facts("m1"))], T0 + timedelta(seconds=1), sequence=1)

    upgraded = DuckDBWarehouse(warehouse._connect)  # the next run, with the current version
    result = upgraded.load_objects(store, objects(store, new), "run-2")

    assert result.pulls_inserted == 1
    sha = {key: json.loads(landed_lines(store, key)[0])["body_sha256"] for key in (old, new)}
    found = rows(warehouse, f"SELECT event_id, event_audience, body_sha256 FROM {PULLS} ORDER BY event_id")
    assert found == [("m0", "customer", sha[old]), ("m1", "customer", sha[new])]


def test_other_event_types_land_in_the_events_table(store: LocalLandingStore, warehouse: DuckDBWarehouse) -> None:
    push = other_event(PUSH_TYPE, "p1", T0, {"body": {"repository": "acme.dev/go", "tag": "v1"}})
    created = other_event(REPO_CREATED_TYPE, "r1", T0, {"name": "go"})
    keys = [
        write_object(store, PUSH_TYPE, [push, push], T0, sequence=1),
        write_object(store, REPO_CREATED_TYPE, [created], T0, sequence=2),
    ]
    result = warehouse.load_objects(store, objects(store, *keys), "run")

    assert (result.pulls_inserted, result.events_inserted, result.duplicates_skipped) == (0, 2, 1)
    assert ids(warehouse) == []
    loaded = rows(warehouse, f"SELECT event_type, event_id, data FROM {EVENTS} ORDER BY event_id")
    assert [(t, i, json.loads(d)) for t, i, d in loaded] == [
        (PUSH_TYPE, "p1", {"body": {"repository": "acme.dev/go", "tag": "v1"}}),
        (REPO_CREATED_TYPE, "r1", {"name": "go"}),
    ]


def test_an_object_that_cannot_be_read_is_quarantined_and_the_rest_of_the_batch_loads(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    good = write_object(store, PULL_TYPE, [pull_event(facts("g1"))], T0)
    vanished = LandedObject(key="dev.chainguard.registry.pull.v1/dt=2026-11-20/hour=12/gone.ndjson", size=10, uri="")

    result = warehouse.load_objects(store, [*objects(store, good), vanished], "run-1")

    assert (result.objects_loaded, result.pulls_inserted) == (1, 1)
    assert result.quarantined == {vanished.key: "object_missing"}
    assert ids(warehouse) == ["g1"]
    assert rows(warehouse, f"SELECT landing_object FROM {LEDGER}") == [(good,)]
    assert rows(warehouse, f"SELECT landing_object, reason, run_id FROM {QUARANTINED}") == [
        (vanished.key, "object_missing", "run-1")
    ]
    # Once it can be read it loads, and leaves the quarantine.
    store.write_new(vanished.key, (landed_line(pull_event(facts("g2")), vanished.key, 1, T0, "late") + "\n").encode())
    retried = warehouse.load_objects(store, [vanished], "run-2")
    assert (retried.objects_loaded, retried.pulls_inserted, retried.quarantined) == (1, 1, {})
    assert rows(warehouse, f"SELECT count(*) FROM {QUARANTINED}") == [(0,)]


def test_tables_are_created_when_missing_and_ddl_is_idempotent(warehouse: DuckDBWarehouse) -> None:
    warehouse.ensure_tables()
    warehouse.ensure_tables()
    tables = rows(
        warehouse,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $s ORDER BY 1",
        {"s": base.DATASET},
    )
    assert [t for (t,) in tables] == sorted(
        [
            base.PULLS,
            base.EVENTS,
            base.REJECTED,
            base.LOADED_OBJECTS,
            base.QUARANTINED,
            base.DAILY_PULLS,
            base.DAILY_VALUES,
            base.REPOSITORY_VALUES,
            base.SUMMARY_PENDING,
            base.REPOSITORY_SUMMARY,
        ]
    )
    columns = dict(warehouse.column_schema(base.PULLS))
    assert columns["raw_event"] == "JSON"
    assert columns["event_time"] == "TIMESTAMP WITH TIME ZONE"
    assert '"aws-arn" VARCHAR' in columns["actor"]
    assert '"when" TIMESTAMP' in columns["body"]
    assert columns["day"] == "DATE"
    warehouse.drop_all()
    remaining = "SELECT count(*) FROM information_schema.tables WHERE table_schema = $s"
    assert rows(warehouse, remaining, {"s": base.DATASET}) == [(0,)]


def test_late_events_recompute_only_their_days(store: LocalLandingStore, warehouse: DuckDBWarehouse) -> None:
    d1, d2, d3 = (datetime(2026, 11, day, 10, 0) for day in (10, 11, 12))
    first = [
        pull_event(facts("a", when=d1)),
        pull_event(facts("b", when=d2, actor="actor-2")),
        pull_event(facts("c", when=d3, method="HEAD")),
    ]
    k1 = write_object(store, PULL_TYPE, first, T0, sequence=1)
    loaded = warehouse.load_objects(store, objects(store, k1), "run-1")
    assert loaded.affected_days == [date(2026, 11, 10), date(2026, 11, 11), date(2026, 11, 12)]
    refreshed = warehouse.refresh_daily_pulls(loaded.affected_days)
    assert refreshed.rows_per_day == dict.fromkeys(loaded.affected_days, 1)
    assert (refreshed.repositories_marked, refreshed.table_rows) == (1, 3)
    before = {r[0]: r for r in rows(warehouse, f"SELECT day, events, image_pulls, computed_at FROM {DAILY}")}

    # Recomputing a day again changes nothing but its computed_at, and marks no repository for the summary.
    warehouse.refresh_repository_summary()
    again_same = warehouse.refresh_daily_pulls([date(2026, 11, 11)])
    assert (again_same.rows_per_day, again_same.repositories_marked) == ({date(2026, 11, 11): 1}, 0)

    # Two days later an event of the 10th arrives (a slow delivery), plus a redelivery of one of the 11th.
    late = [pull_event(facts("late", when=d1 + timedelta(hours=3), client="10.0.0.2")), first[1]]
    k2 = write_object(store, PULL_TYPE, late, T0 + timedelta(days=2), sequence=2)
    loaded = warehouse.load_objects(store, objects(store, k2), "run-2")
    assert loaded.affected_days == [date(2026, 11, 10)]
    again = warehouse.refresh_daily_pulls(loaded.affected_days)
    assert (again.rows_per_day, again.repositories_marked) == ({date(2026, 11, 10): 1}, 1)

    after = {
        r[0]: r for r in rows(warehouse, f"SELECT day, events, image_pulls, computed_at, unique_clients FROM {DAILY}")
    }
    assert after[date(2026, 11, 10)][1:3] == (2, 2)
    assert after[date(2026, 11, 10)][4] == 2
    assert after[date(2026, 11, 10)][3] > before[date(2026, 11, 10)][3]
    assert after[date(2026, 11, 12)][:4] == before[date(2026, 11, 12)]  # same figures, same computed_at
    # A day without pulls recomputes to nothing, and a day is never read for another's sake.
    assert warehouse.refresh_daily_pulls([date(2026, 11, 20)]).rows_per_day == {date(2026, 11, 20): 0}


def test_derived_tables_match_figures_computed_independently(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    spec = LandingSpec(
        events=3000,
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
    landed = synthetic_landing(store, spec)
    listed = sorted(store.list_all(), key=lambda o: o.key)
    for start in range(0, len(listed), 5):  # several loads, as several sensor runs would do
        loaded = warehouse.load_objects(store, listed[start : start + 5], f"run-{start}")
        warehouse.refresh_daily_pulls(loaded.affected_days)
        warehouse.refresh_repository_summary()

    assert len(ids(warehouse)) == landed.pull_count == len(landed.pulls)
    assert rows(warehouse, f"SELECT count(*) FROM {EVENTS}") == [(landed.other_events,)]
    assert sorted(rows(warehouse, f"SELECT landing_object, landing_line, reason FROM {REJECTED}")) == sorted(
        landed.rejected
    )
    assert {r for (r,) in rows(warehouse, f"SELECT DISTINCT reason FROM {REJECTED}")} == set(REJECTION_REASONS)

    assert rows(
        warehouse,
        f"""SELECT day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors,
            unique_clients FROM {DAILY} ORDER BY day, repository""",
    ) == expected_daily(landed.pulls)
    actual_summary = rows(
        warehouse,
        f"""SELECT repository, events, image_pulls, errors, error_rate, unique_actors, unique_clients, first_seen,
            last_seen, image_pulls_last_7d, image_pulls_last_30d, top_tags FROM {SUMMARY} ORDER BY repository""",
    )
    [(refreshed_at,)] = rows(warehouse, f"SELECT max(computed_at) FROM {SUMMARY}")  # incremental: rows differ
    expected = expected_summary(landed.pulls, refreshed_at)
    assert [r[:4] + r[5:] for r in actual_summary] == [e[:4] + e[5:] for e in expected]
    assert [r[4] for r in actual_summary] == pytest.approx([e[4] for e in expected])


def expected_daily(pulls: list[PullFacts]) -> list[tuple]:
    groups: dict[tuple, list[PullFacts]] = defaultdict(list)
    for p in pulls:
        groups[(p.when.date(), p.repository)].append(p)
    return [
        (
            day,
            repo,
            len(ps),
            sum(p.image_pull for p in ps),
            sum(p.method == "HEAD" and p.type == "manifest" for p in ps),
            sum(p.method == "GET" and p.type == "blob" for p in ps),
            sum(p.error_status is not None for p in ps),
            len({p.actor for p in ps}),
            len({p.remote_address for p in ps}),
        )
        for (day, repo), ps in sorted(groups.items())
    ]


def expected_summary(
    pulls: list[PullFacts], refreshed_at: datetime, tolerance: timedelta = base.FUTURE_TOLERANCE
) -> list[tuple]:
    """The summary refreshed at ``refreshed_at`` (its computed_at), computed in Python from the pulls.

    Time figures count whole UTC days: the windows end with the horizon day (the day of the refresh plus the
    tolerance), and pulls dated on later days count in none of them.
    """
    now = refreshed_at.astimezone(UTC)
    today, horizon_day = now.date(), (now + tolerance).date()
    groups: dict[str, list[PullFacts]] = defaultdict(list)
    for p in pulls:
        groups[p.repository].append(p)
    out = []
    for repo, ps in sorted(groups.items()):
        errors = sum(p.error_status is not None for p in ps)
        tags = Counter(p.tag for p in ps if p.image_pull and p.tag is not None)
        top = sorted(tags.items(), key=lambda item: (-item[1], item[0]))[:5]
        plausible = [p for p in ps if p.when.date() <= horizon_day]
        out.append(
            (
                repo,
                len(ps),
                sum(p.image_pull for p in ps),
                errors,
                errors / len(ps),
                len({p.actor for p in ps}),
                len({p.remote_address for p in ps}),
                min((p.when for p in plausible), default=None),
                max((p.when for p in plausible), default=None),
                sum(p.image_pull and today - timedelta(days=6) <= p.when.date() for p in plausible),
                sum(p.image_pull and today - timedelta(days=29) <= p.when.date() for p in plausible),
                [{"tag": tag, "image_pulls": n} for tag, n in top],
            )
        )
    return out


def test_objects_in_gcs_are_fetched_and_loaded(
    fake_gcs, gcs_bucket: str, warehouse: DuckDBWarehouse, tmp_path: Path
) -> None:
    gcs = GcsLandingStore(gcs_bucket, "landing", client=fake_gcs.client())
    key = write_object(gcs, PULL_TYPE, [pull_event(facts("g1")), RawLine("not json"), pull_event(facts("g2"))], T0)
    [listed] = list(gcs.list_all())
    assert listed.uri == f"gs://{gcs_bucket}/landing/{key}"

    result = warehouse.load_objects(gcs, [listed], "run")

    assert (result.pulls_inserted, result.lines_rejected) == (2, 1)
    assert rows(warehouse, f"SELECT event_id, landing_object FROM {PULLS} ORDER BY 1") == [("g1", key), ("g2", key)]
    assert rows(warehouse, f"SELECT landing_object, landing_line, reason FROM {REJECTED}") == [(key, 2, "invalid_json")]


# -- waiting for a DuckDB file another process holds ------------------------------------------------------------
#
# LockHolder is a real second process with the file open, so the lock errors are DuckDB's own.


class _Signal(logging.Handler):
    """Sets ``event`` when the warehouse logs a record whose message contains ``text``: a test thread can act
    once the load has seen the lock, whatever the machine's speed."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


class _Clock:
    """A monotonic clock that moves only when slept on, recording the sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _warehouse_log(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == warehouse_module.__name__ and r.levelno == level]


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write holder", "read-only holder"])
def test_a_load_waits_for_an_analyst_holding_the_file_and_then_succeeds(
    store: LocalLandingStore,
    warehouse: DuckDBWarehouse,
    duckdb_path: Path,
    caplog: pytest.LogCaptureFixture,
    read_only: bool,
) -> None:
    caplog.set_level(logging.INFO, logger=warehouse_module.__name__)
    warehouse.ensure_tables()
    key = write_object(store, PULL_TYPE, [pull_event(facts("w1"))], T0)
    outcome: dict[str, object] = {}
    waiting = _Signal("waiting for it up to")
    logging.getLogger(warehouse_module.__name__).addHandler(waiting)

    try:
        with LockHolder(duckdb_path, read_only=read_only) as holder:

            def load() -> None:
                try:
                    outcome["result"] = warehouse.load_objects(store, objects(store, key), "run")
                except Exception as exc:  # surfaced by the assertion below
                    outcome["error"] = exc

            loader = threading.Thread(target=load)
            loader.start()
            # Released only once the load has found the file locked and said so: the release is mid-wait by
            # construction. (60 s only bounds a hang.)
            assert waiting.event.wait(timeout=60), outcome
            holder.release()
            loader.join(timeout=60)
    finally:
        logging.getLogger(warehouse_module.__name__).removeHandler(waiting)

    assert not loader.is_alive()
    assert "error" not in outcome
    assert outcome["result"].pulls_inserted == 1  # type: ignore[attr-defined]
    assert ids(warehouse) == ["w1"]
    # Even an analyst's read-only session blocks a load (docs/querying.md); the warning names the holder and the
    # longest wait, once at the start (then once a minute), not at every retry.
    [warning, *_] = _warehouse_log(caplog, logging.WARNING)
    assert f"locked by PID {holder.pid} " in warning
    assert "waiting for it up to 600s (lock_timeout), 0s so far" in warning
    [taken] = _warehouse_log(caplog, logging.INFO)
    assert taken.startswith("DuckDB file's lock taken after waiting ")


def _resource_warehouse(duckdb_path: Path, lock_timeout: float) -> AbstractContextManager[base.Warehouse]:
    """The warehouse as the Dagster resource opens it (the path every asset and check takes)."""
    resource = DuckDBWarehouseResource(
        duckdb=DuckDBResource(database=str(duckdb_path)), lock_timeout_seconds=lock_timeout
    )
    return resource.open()


@pytest.mark.parametrize("connected_by", ["resource", "get_connection"])
def test_a_load_gives_up_after_the_configured_lock_timeout_naming_the_wait_and_the_holder(
    store: LocalLandingStore, duckdb_path: Path, caplog: pytest.LogCaptureFixture, connected_by: str
) -> None:
    caplog.set_level(logging.INFO, logger=warehouse_module.__name__)
    opened: AbstractContextManager[base.Warehouse]
    if connected_by == "resource":
        opened = _resource_warehouse(duckdb_path, lock_timeout=2)
    else:  # as the tests' fixtures connect: dagster-duckdb's get_connection is taken as one attempt too
        duckdb_path.parent.mkdir(parents=True, exist_ok=True)
        opened = nullcontext(DuckDBWarehouse(DuckDBResource(database=str(duckdb_path)).get_connection, lock_timeout=2))
    key = write_object(store, PULL_TYPE, [pull_event(facts("w1"))], T0)

    with opened as impatient, LockHolder(duckdb_path) as holder:
        started = time.monotonic()
        with pytest.raises(WarehouseLocked) as caught:
            impatient.load_objects(store, objects(store, key), "run")
        elapsed = time.monotonic() - started

    error = caught.value
    # At least the timeout, by construction: it gives up only once its monotonic clock has passed the deadline.
    # At most a little more, by construction too: the last sleep ends at the deadline and a refused connection
    # takes milliseconds. The 15 s of slack is for a loaded machine, not a guess at the schedule; waiting inside
    # dagster-duckdb's back-off as before would take over 100 s (0.1 s doubling, 10 retries) in its first call.
    assert 2 <= error.waited < 2 + 15
    assert elapsed < 2 + 15
    message = str(error)
    assert f"gave up after waiting {error.waited:.1f}s (lock_timeout 2s)" in message
    assert error.holder is not None and error.holder.startswith(f"PID {holder.pid} (")
    assert f"held by PID {holder.pid} (" in message
    assert "docs/querying.md" in message
    # One warning: the wait is logged when it starts and then every minute, not at each of its ~10 retries.
    [warning] = _warehouse_log(caplog, logging.WARNING)
    assert f"locked by PID {holder.pid} " in warning and "waiting for it up to 2s (lock_timeout)" in warning
    assert _warehouse_log(caplog, logging.INFO) == []


def test_the_lock_wait_backs_off_to_once_a_second_ends_at_the_timeout_and_logs_once_a_minute(
    duckdb_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedule, on a clock that moves only when slept on: the lock is real, the 150 s are not."""
    caplog.set_level(logging.WARNING, logger=warehouse_module.__name__)
    attempts = 0
    connect = connect_once(str(duckdb_path))

    def counted() -> duckdb.DuckDBPyConnection:
        nonlocal attempts
        attempts += 1
        return connect()  # type: ignore[return-value]

    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    warehouse = DuckDBWarehouse(counted, lock_timeout=150)
    clock = _Clock()
    monkeypatch.setattr(warehouse, "_monotonic", clock.monotonic)
    monkeypatch.setattr(warehouse, "_sleep", clock.sleep)

    with LockHolder(duckdb_path), pytest.raises(WarehouseLocked) as caught:
        warehouse.ensure_tables()

    assert caught.value.waited == pytest.approx(150, abs=1e-9)
    assert "gave up after waiting 150.0s (lock_timeout 150s)" in str(caught.value)
    assert clock.sleeps[:6] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0])
    assert max(clock.sleeps) == 1.0  # a released file is taken within a second
    assert sum(clock.sleeps) == pytest.approx(150, abs=1e-9)  # the last sleep is cut to end at the deadline
    assert attempts == len(clock.sleeps) + 1  # and one last attempt is made there
    # A line at the first refusal, then at the first refusal a minute or more after the last line: on this
    # schedule (refusals at 0, 0.05, 0.15, 0.35, 0.75, 1.55, 2.55, ... s) that is 60.55 s and 120.55 s.
    so_far = [w.split(", ")[1].split(":")[0] for w in _warehouse_log(caplog, logging.WARNING)]
    assert so_far == ["0s so far", "61s so far", "121s so far"]


def test_a_connection_error_other_than_the_lock_is_raised_at_once(
    store: LocalLandingStore, duckdb_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger=warehouse_module.__name__)
    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    duckdb_path.write_bytes(b"not a DuckDB database\n" * 1000)
    key = write_object(store, PULL_TYPE, [pull_event(facts("w1"))], T0)
    connects: list[str] = []
    real_connect = duckdb.connect

    def counted(database: str, *args: object, **kwargs: object) -> duckdb.DuckDBPyConnection:
        connects.append(database)
        return real_connect(database, *args, **kwargs)  # type: ignore[arg-type]

    # Every duckdb.connect, the warehouse's or dagster-duckdb's (whose back-off retried any IO error 10 times).
    monkeypatch.setattr(duckdb, "connect", counted)

    with _resource_warehouse(duckdb_path, lock_timeout=600) as warehouse:
        assert isinstance(warehouse, DuckDBWarehouse)
        monkeypatch.setattr(warehouse, "_sleep", lambda seconds: pytest.fail(f"slept {seconds}s on a non-lock error"))
        with pytest.raises(duckdb.IOException, match="not a valid DuckDB database file"):
            warehouse.load_objects(store, objects(store, key), "run")

    assert connects == [str(duckdb_path)]
    assert _warehouse_log(caplog, logging.WARNING) == []


def test_the_resource_connects_with_its_duckdb_connection_config(duckdb_path: Path) -> None:
    resource = DuckDBWarehouseResource(
        duckdb=DuckDBResource(database=str(duckdb_path), connection_config={"threads": 3})
    )
    with resource.open() as warehouse:
        assert isinstance(warehouse, DuckDBWarehouse)
        settings = warehouse.query("SELECT current_setting('threads'), current_setting('custom_user_agent')")
    # Its own setting, and the user agent dagster-duckdb's get_connection adds.
    assert settings == [(3, "dagster")]


def test_loaded_at_only_grows(store: LocalLandingStore, warehouse: DuckDBWarehouse) -> None:
    keys = [write_object(store, PULL_TYPE, [pull_event(facts(f"m{n}"))], T0, sequence=n) for n in range(3)]
    for key in keys:
        warehouse.load_objects(store, objects(store, key), "run")
    stamps = [r[0] for r in rows(warehouse, f"SELECT loaded_at FROM {LEDGER} ORDER BY landing_object")]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3


def _mutated(change) -> dict:
    event = pull_event(facts("m"))
    change(event, event["data"], event["data"]["body"])
    return event


EDGE_CASES = [
    ("id is a number", lambda e, d, b: e.update(id=5), "missing_attribute:id"),
    ("id is null", lambda e, d, b: e.update(id=None), "missing_attribute:id"),
    ("type is an object", lambda e, d, b: e.update(type={"t": 1}), "missing_attribute:type"),
    ("time is a number", lambda e, d, b: e.update(time=5), "invalid_value:time"),
    ("time is null", lambda e, d, b: e.update(time=None), None),
    ("time is absent", lambda e, d, b: e.pop("time"), None),
    ("data is absent", lambda e, d, b: e.pop("data"), "wrong_type:data"),
    ("data is null", lambda e, d, b: e.update(data=None), "wrong_type:data"),
    ("data is a list", lambda e, d, b: e.update(data=[1]), "wrong_type:data"),
    ("data is empty", lambda e, d, b: e.update(data={}), "wrong_type:data.body"),
    ("body is a string", lambda e, d, b: d.update(body="s"), "wrong_type:data.body"),
    ("body is empty", lambda e, d, b: d.update(body={}), "missing_field:body.repository"),
    ("repository is null", lambda e, d, b: b.update(repository=None), "missing_field:body.repository"),
    ("when has a zone", lambda e, d, b: b.update(when="2026-11-18T09:30:00Z"), "invalid_value:body.when"),
    ("when is a number", lambda e, d, b: b.update(when=20261118), "invalid_value:body.when"),
    (
        "status is a float",
        lambda e, d, b: b.update(error={"status": 404.5, "code": "c"}),
        "wrong_type:body.error.status",
    ),
    ("status is null", lambda e, d, b: b.update(error={"status": None, "code": "c"}), None),
    ("actor is a list", lambda e, d, b: d.update(actor=[1]), "wrong_type:actor"),
    ("actor is empty", lambda e, d, b: d.update(actor={}), None),
    ("actor is null", lambda e, d, b: d.update(actor=None), None),
    ("policy results is a string", lambda e, d, b: b.update(policy_results="x"), "wrong_type:body.policy_results"),
    ("policy results is empty", lambda e, d, b: b.update(policy_results=[]), None),
    ("policy results is null", lambda e, d, b: b.update(policy_results=None), None),
    ("repository and tag are numbers", lambda e, d, b: b.update(repository=5, tag=3), None),
    ("id has escapes", lambda e, d, b: e.update(id='a"b\\c\u00e9'), None),
]


@pytest.mark.parametrize(("change", "reason"), [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES])
def test_each_rule_judges_the_json_type_of_the_value(
    store: LocalLandingStore, warehouse: DuckDBWarehouse, change, reason: str | None
) -> None:
    event = _mutated(change)
    key = write_object(store, PULL_TYPE, [event], T0)
    result = warehouse.load_objects(store, objects(store, key), "run")
    assert rows(warehouse, f"SELECT reason FROM {REJECTED}") == ([(reason,)] if reason else [])
    assert result.pulls_inserted == (0 if reason else 1)
    if reason is None:
        [(event_id, repository, tag)] = rows(warehouse, f"SELECT event_id, repository, body.tag FROM {PULLS}")
        assert event_id == event["id"]
        assert repository == str(event["data"]["body"]["repository"])
        assert tag == (str(event["data"]["body"]["tag"]) if "tag" in event["data"]["body"] else None)


@pytest.mark.parametrize("line", ["[1, 2]", "5", '"text"', "null", "{broken"])
def test_a_line_that_is_not_a_json_object_is_invalid_json(
    store: LocalLandingStore, warehouse: DuckDBWarehouse, line: str
) -> None:
    key = write_object(store, PULL_TYPE, [RawLine(line), RawLine("   " + json.dumps(pull_event(facts("ok"))))], T0)
    result = warehouse.load_objects(store, objects(store, key), "run")
    assert rows(warehouse, f"SELECT landing_line, reason, raw_line FROM {REJECTED}") == [(1, "invalid_json", line)]
    assert (result.pulls_inserted, ids(warehouse)) == (1, ["ok"])


def test_rules_on_pull_data_do_not_apply_to_other_types(store: LocalLandingStore, warehouse: DuckDBWarehouse) -> None:
    odd = other_event(PUSH_TYPE, "p-odd", T0, {})
    odd["data"] = "a string is fine here"
    key = write_object(store, PUSH_TYPE, [odd], T0)
    warehouse.load_objects(store, objects(store, key), "run")
    assert rows(warehouse, f"SELECT event_id, data FROM {EVENTS}") == [("p-odd", '"a string is fine here"')]


def test_huge_lines_are_rejected_unparsed_and_big_ones_load_within_the_memory_limit(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    # Default line limit (16 MiB) and memory limit (512 MB): two 12 MB lines load; 20 and 40 MB lines, even
    # several in one object and first, middle or last, are rejected by size without being parsed; nothing fails.
    assert (warehouse.max_line_bytes, warehouse.memory_limit) == (16 * 1024 * 1024, "512MB")
    mb = 1024 * 1024

    def padded(event_id: str, size: int) -> dict:
        event = pull_event(facts(event_id))
        event["data"]["body"]["user_agent"] = "x" * size
        return event

    big = write_object(
        store, PULL_TYPE, [padded("big1", 12 * mb), padded("huge1", 40 * mb), padded("big2", 12 * mb)], T0
    )
    huge = write_object(
        store,
        PULL_TYPE,
        [padded(f"huge{n}", 20 * mb) for n in (2, 3, 4)] + [pull_event(facts("small"))],
        T0,
        sequence=1,
    )

    result = warehouse.load_objects(store, objects(store, big, huge), "run")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (7, 3, 4)
    assert ids(warehouse) == ["big1", "big2", "small"]
    assert rows(warehouse, f"SELECT length(body.user_agent) FROM {PULLS} WHERE event_id = 'big1'") == [(12 * mb,)]
    assert rows(
        warehouse, f"SELECT landing_object, landing_line, reason, length(raw_line) FROM {REJECTED} ORDER BY 1, 2"
    ) == [
        (big, 2, "line_too_large", 4096),
        (huge, 1, "line_too_large", 4096),
        (huge, 2, "line_too_large", 4096),
        (huge, 3, "line_too_large", 4096),
    ]


def _raw_object(store: LocalLandingStore, key: str, data: bytes) -> LandedObject:
    store.write_new(key, data)
    return LandedObject(key, len(data), store.uri(key))


def _line(event_id: str, key: str, number: int, **changes: object) -> bytes:
    record = json.loads(landed_line(pull_event(facts(event_id)), key, number, T0, "hand"))
    for name, value in changes.items():
        if value is None:
            del record[name]
        else:
            record[name] = value
    return json.dumps(record, separators=(",", ":")).encode()


def test_a_line_of_only_whitespace_is_no_line_whatever_its_length(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    key = object_key(PULL_TYPE, T0, "hand", 1)
    obj = _raw_object(store, key, _line("w1", key, 1) + b"\n" + b" \t" * 20 + b"\r\n")

    result = warehouse.load_objects(store, [obj], "run")

    assert (result.lines_read, result.pulls_inserted, result.lines_rejected) == (1, 1, 0)
    assert rows(warehouse, f"SELECT lines FROM {LEDGER}") == [(1,)]


def test_rejected_and_unnumbered_lines_are_recorded_where_they_are_not_where_they_claim(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    key = object_key(PULL_TYPE, T0, "hand", 1)
    bad_when = json.loads(_line("r1", key, 3))
    bad_when["data"]["body"]["when"] = "not-a-time"
    data = b"\n".join(
        [
            json.dumps(bad_when).encode(),  # claims line 3, is line 1
            b"{broken",  # line 2, claims nothing
            _line("r2", key, 1),  # a good line claiming 1 at line 3: the object is read carefully, so line 3
            _line("r3", key, 0, landing_line=None, landing_object=None),  # line 4 names nothing: the loader does
        ]
    )
    obj = _raw_object(store, key, data + b"\n")

    warehouse.load_objects(store, [obj], "run")

    assert rows(warehouse, f"SELECT landing_object, landing_line, reason FROM {REJECTED} ORDER BY 2") == [
        (key, 1, "invalid_value:body.when"),
        (key, 2, "invalid_json"),
    ]
    assert rows(warehouse, f"SELECT event_id, landing_object, landing_line FROM {PULLS} ORDER BY 1") == [
        ("r2", key, 3),
        ("r3", key, 4),
    ]


def test_one_odd_object_is_read_carefully_alone_while_its_batch_takes_the_fast_path(
    store: LocalLandingStore, warehouse: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Observed, not replaced: which objects the careful reading is handed.
    read_carefully: list[str] = []
    careful = DuckDBWarehouse._stage_carefully

    def spy(self: DuckDBWarehouse, conn: duckdb.DuckDBPyConnection, objects: list, ids: dict) -> dict:
        read_carefully.extend(key for key, _ in objects)
        return careful(self, conn, objects, ids)

    monkeypatch.setattr(DuckDBWarehouse, "_stage_carefully", spy)
    keys = [object_key(PULL_TYPE, T0, "hand", n) for n in range(9)]
    batch = [_raw_object(store, key, _line(f"b{n}", key, 1) + b"\n") for n, key in enumerate(keys[:8])]
    # A CR makes DuckDB's strict CSV reader refuse the group it is in.
    odd = _raw_object(store, keys[8], _line("b8", keys[8], 1).replace(b"latest", b"la\rtest") + b"\n")

    result = warehouse.load_objects(store, [*batch, odd], "run")

    assert read_carefully == [keys[8]]
    assert (result.objects_loaded, result.pulls_inserted, result.lines_rejected) == (9, 8, 1)


def test_landing_zone_debris_is_skipped_by_the_listing_and_quarantined_when_named(
    store: LocalLandingStore, warehouse: DuckDBWarehouse
) -> None:
    good = write_object(store, PULL_TYPE, [pull_event(facts("d1"))], T0)
    folder = Path(store.uri(good)).parent
    os.mkfifo(folder / "fifo.ndjson")
    os.symlink("/nonexistent/x", folder / "dangling.ndjson")
    os.symlink("..", folder / "loop")
    os.close(os.open(os.fsencode(folder) + b"/name\xff.ndjson", os.O_CREAT | os.O_WRONLY))

    assert [obj.key for obj in store.list_all()] == [good]
    fifo_key = good.rsplit("/", 1)[0] + "/fifo.ndjson"
    fifo = LandedObject(fifo_key, 0, store.uri(fifo_key))
    result = warehouse.load_objects(store, [*objects(store, good), fifo], "run")  # named by hand: never blocks

    assert (result.pulls_inserted, result.quarantined) == (1, {fifo_key: "object_unreadable"})
