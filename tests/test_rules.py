"""The rejection rules, defined once in rules.py, as both warehouses apply them: each test runs on a real DuckDB
file and on bqemulator (with fake-gcs-server), and reads the SQL each warehouse actually sent."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster_duckdb import DuckDBResource
from google.api_core.retry import Retry

from pull_events.landing import GcsLandingStore, LandedObject, LandingStore, LocalLandingStore, object_key
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from pull_events_dagster.warehouse.rules import RULES
from tests.pipeline.factories import PULL_TYPE, PullFacts, landed_line, pull_event

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MAX_LINE_BYTES = 2048  # small, so that an overlong line is cheap
_TABLES = (base.PULLS, base.EVENTS, base.REJECTED)


@dataclass
class Engine:
    """A warehouse under test, its landing zone, the SQL texts it sent, and a way to query its tables."""

    warehouse: base.Warehouse
    store: LandingStore
    sent: list[str]
    select: Callable[[str], list[tuple]]  # SQL whose {table} placeholders name the warehouse's tables


class _RecordingConnection:
    """A DuckDB connection that keeps the text of every statement executed on it."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, sent: list[str]) -> None:
        self._conn, self._sent = conn, sent

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self._sent.append(sql)
        return self._conn.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _duckdb_engine(tmp_path: Path) -> Engine:
    connect = DuckDBResource(database=str(tmp_path / "w.duckdb")).get_connection
    sent: list[str] = []

    @contextmanager
    def recording() -> Iterator[Any]:
        with connect() as conn:
            yield _RecordingConnection(conn, sent)

    warehouse = DuckDBWarehouse(recording, max_line_bytes=MAX_LINE_BYTES)

    def select(sql: str) -> list[tuple]:
        return warehouse.query(sql.format(**{t: f'"{warehouse.schema}"."{t}"' for t in _TABLES}))

    return Engine(warehouse, LocalLandingStore(tmp_path / "landing"), sent, select)


def _bigquery_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    client = request.getfixturevalue("bigquery_emulator").client()
    store = GcsLandingStore(
        request.getfixturevalue("gcs_bucket"), "landing", client=request.getfixturevalue("fake_gcs").client()
    )
    warehouse = BigQueryWarehouse(
        client, f"rules_{uuid.uuid4().hex[:10]}", retry=Retry(timeout=30), max_line_bytes=MAX_LINE_BYTES
    )
    sent: list[str] = []
    query = warehouse.query

    def recording(sql: str, parameters: Any = ()) -> Any:
        sent.append(sql)
        return query(sql, parameters)

    warehouse.query = recording  # type: ignore[method-assign]

    def select(sql: str) -> list[tuple]:
        return [tuple(row.values()) for row in query(sql.format(**{t: f"`{warehouse.table_id(t)}`" for t in _TABLES}))]

    try:
        yield Engine(warehouse, store, sent, select)
    finally:
        client.close()


@pytest.fixture(params=["duckdb", "bigquery"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "duckdb":
        yield _duckdb_engine(tmp_path)
    else:
        yield from _bigquery_engine(request)


def _pull(change: Callable[[dict], object] = lambda event: None) -> Callable[[str], bytes]:
    """A receiver's pull line, changed by ``change`` (of the event, before the receiver's keys are added)."""

    def line(key: str) -> bytes:
        facts = PullFacts("cgr.dev", "r1", "acme.dev/python", datetime(2026, 11, 18, 9, 30), "GET", "manifest",
                          "latest", None, "actor-1", "10.0.0.1")  # fmt: skip
        event = pull_event(facts)
        change(event)
        return landed_line(event, key, 1, T0, "rules").encode()

    return line


def _body(**values: object) -> Callable[[dict], object]:
    return lambda event: event["data"]["body"].update(values)


# For each rule, a line that breaks it and no rule before it.
BREAKING_LINES: dict[str, Callable[[str], bytes]] = {
    "invalid_utf8": lambda key: _pull()(key).replace(b"latest", b"lat\xffest"),
    "line_too_large": _pull(_body(user_agent="x" * MAX_LINE_BYTES)),
    "invalid_json": lambda key: _pull()(key)[:-1],  # cut short of its closing brace
    "missing_attribute:id": _pull(lambda event: event.pop("id")),
    "missing_attribute:source": _pull(lambda event: event.update(source="")),
    "missing_attribute:type": _pull(lambda event: event.update(type=17)),
    "invalid_value:time": _pull(lambda event: event.update(time="yesterday at noon")),
    "wrong_type:data": _pull(lambda event: event.update(data="not an object")),
    "wrong_type:data.body": _pull(lambda event: event["data"].update(body=["not", "an", "object"])),
    "missing_field:body.repository": _pull(lambda event: event["data"]["body"].pop("repository")),
    "invalid_value:body.when": _pull(_body(when="2026-11-18T09:30:00Z")),  # a zone: not civil time
    "wrong_type:body.error.status": _pull(_body(error={"status": 404.5, "code": "MANIFEST_UNKNOWN"})),
    "wrong_type:actor": _pull(lambda event: event["data"].update(actor="someone")),
    "wrong_type:body.policy_results": _pull(_body(policy_results={"policy_id": "p"})),
}


def _land(store: LandingStore, lines: list[Callable[[str], bytes]]) -> list[LandedObject]:
    """One object for each of ``lines``, holding that line written for its key."""
    objects = []
    for sequence, line in enumerate(lines):
        key = object_key(PULL_TYPE, T0, "rules", sequence)
        data = line(key) + b"\n"
        store.write_new(key, data)
        objects.append(LandedObject(key, len(data), store.uri(key)))
    return objects


def test_every_rule_has_a_line_that_breaks_it() -> None:
    assert list(BREAKING_LINES) == [rule.reason for rule in RULES]


def test_each_line_is_rejected_for_the_one_rule_it_breaks(engine: Engine) -> None:
    objects = _land(engine.store, [BREAKING_LINES[rule.reason] for rule in RULES])

    result = engine.warehouse.load_objects(engine.store, objects, "rules")

    rejected = engine.select(f"SELECT landing_object, landing_line, reason FROM {{{base.REJECTED}}}")
    assert sorted(rejected) == [(o.key, 1, rule.reason) for o, rule in zip(objects, RULES, strict=True)]
    assert (result.lines_rejected, result.pulls_inserted, result.events_inserted) == (len(RULES), 0, 0)


def _reason_arms(sql: str) -> list[str]:
    """What each arm of the CASE giving ``reason`` in ``sql`` answers: a quoted reason, or NULL."""
    end = sql.index("END AS reason")
    return re.findall(r"\bTHEN ('[^']*'|NULL)", sql[sql.rindex("CASE\n", 0, end) : end])


def test_each_engine_judges_lines_by_the_rules_in_their_order(engine: Engine) -> None:
    result = engine.warehouse.load_objects(engine.store, _land(engine.store, [_pull()]), "good")
    assert (result.pulls_inserted, result.lines_rejected) == (1, 0)

    judging = [sql for sql in engine.sent if "END AS reason" in sql]
    assert judging
    # Other types' lines skip the pull rules, which come last, in one arm.
    general = [f"'{rule.reason}'" for rule in RULES if not rule.pulls_only]
    pulls = [f"'{rule.reason}'" for rule in RULES if rule.pulls_only]
    assert [f"'{rule.reason}'" for rule in RULES] == general + pulls
    for sql in judging:
        assert _reason_arms(sql) == [*general, "NULL", *pulls]
