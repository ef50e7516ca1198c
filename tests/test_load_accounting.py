"""Every line of every loaded object is accounted for, whatever the object holds: a property of both warehouses.

Hypothesis builds landing objects line by line from the cases a landing zone can hold (the receiver's own lines,
lines without or with wrong lineage keys, redeliveries, cut-short and non-JSON lines, duplicate keys, lone
surrogates, bytes that are not UTF-8, control characters, overlong and blank lines, arbitrary bytes, objects with or
without a final newline, a byte-order mark, CRLF endings) and loads them into a real DuckDB file and into bqemulator
(through fake-gcs-server). For every object the ledger's ``lines`` must equal the lines counted from its bytes
(``landing.count_lines``), and equal rows inserted + duplicates skipped + lines rejected; the tables must hold exactly
those rows; every rejected line must be found, as landed, at the place its row names.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster_duckdb import DuckDBResource
from google.api_core.retry import Retry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pull_events.landing import (
    GcsLandingStore,
    LandedObject,
    LandingStore,
    LocalLandingStore,
    count_lines,
    is_blank,
    line_segments,
    object_key,
)
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from pull_events_dagster.warehouse.lines import PREFIX_BYTES
from tests.pipeline.factories import PULL_TYPE, PullFacts, landed_line, pull_event
from tests.services import BigQueryEmulator, FakeGcsServer

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
# Small, so that overlong lines stay cheap to generate: the limit is a parameter of both warehouses.
MAX_LINE_BYTES = 2048
LINE_KINDS = (
    "good",
    "good_without_lineage",
    "good_with_wrong_lineage",
    "redelivery",
    "other_type",
    "cut_short",
    "not_json",
    "duplicate_keys",
    "lone_surrogate",
    "not_utf8",
    "control_character",
    "overlong",
    "blank",
    "any_bytes",
)


def facts(event_id: str) -> PullFacts:
    return PullFacts("cgr.dev", event_id, "acme.dev/python", datetime(2026, 11, 18, 9, 30), "GET", "manifest",
                     "latest", None, "actor-1", "10.0.0.1")  # fmt: skip


@st.composite
def object_lines(draw: st.DrawFn, key: str) -> list[bytes]:
    """The lines (without newlines) of one object at ``key``."""
    lines: list[bytes] = []
    for position in range(1, draw(st.integers(1, 6)) + 1):
        kind = draw(st.sampled_from(LINE_KINDS))
        event_id = f"e{draw(st.integers(0, 5))}"  # few ids: redeliveries across lines and objects are common
        receiver_line = landed_line(pull_event(facts(event_id)), key, position, T0, "prop")
        if kind == "good":
            line = receiver_line
        elif kind == "good_without_lineage":
            record = json.loads(receiver_line)
            del record["landing_object"], record["landing_line"]
            line = json.dumps(record)
        elif kind == "good_with_wrong_lineage":
            record = json.loads(receiver_line)
            record["landing_line"] = draw(st.sampled_from([0, 1, 99, -3, "x"]))
            line = json.dumps(record)
        elif kind == "redelivery":
            line = landed_line(pull_event(facts("e0")), key, position, T0, "prop")
        elif kind == "other_type":
            record = json.loads(receiver_line)
            record["type"], record["data"] = "dev.chainguard.registry.push.v1", {"n": position}
            line = json.dumps(record)
        elif kind == "cut_short":
            line = receiver_line[: draw(st.integers(1, len(receiver_line) - 1))]
        elif kind == "not_json":
            line = draw(st.sampled_from(["<html>", "null", "[1,2]", "5", '"text"', "{"]))
        elif kind == "duplicate_keys":
            line = receiver_line.replace('"id":', '"id":"first","id":', 1)
        elif kind == "lone_surrogate":
            line = receiver_line.replace('"tag":"latest"', '"tag":"\\ud800"')
        elif kind == "control_character":
            line = receiver_line.replace("latest", draw(st.sampled_from(["la\x1ftest", "la\rtest", "la\x00t"])), 1)
        elif kind == "overlong":
            record = json.loads(receiver_line)
            record["data"]["body"]["user_agent"] = "x" * draw(st.integers(MAX_LINE_BYTES, 3 * MAX_LINE_BYTES))
            line = json.dumps(record)
        elif kind == "blank":
            line = draw(st.sampled_from(["", " ", "\t", " \r"]))
        if kind == "not_utf8":
            lines.append(receiver_line.encode()[:40] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])))
        elif kind == "any_bytes":
            lines.append(draw(st.binary(min_size=1, max_size=60)).replace(b"\n", b"."))
        else:
            lines.append(line.encode("utf-8", errors="surrogatepass"))
    return lines


@st.composite
def landing_objects(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """One to three objects: (key, bytes)."""
    objects = []
    for sequence in range(draw(st.integers(1, 3))):
        key = object_key(PULL_TYPE, T0, "prop", sequence)
        data = b"\n".join(draw(object_lines(key)))
        if draw(st.booleans()):
            data += b"\n"
        if draw(st.integers(0, 9)) == 0:
            data = b"\xef\xbb\xbf" + data
        if draw(st.integers(0, 9)) == 0:
            data = data.replace(b"\n", b"\r\n")
        objects.append((key, data))
    return objects


Select = Callable[[str], list[tuple]]  # SQL whose {table} placeholders name the warehouse's tables
# A fresh landing zone and warehouse for one example, and a way to query it.
Fresh = Callable[[], AbstractContextManager[tuple[LandingStore, base.Warehouse, Select]]]


@contextmanager
def _duckdb() -> Iterator[tuple[LandingStore, base.Warehouse, Select]]:
    with tempfile.TemporaryDirectory(prefix="accounting-") as tmp:
        warehouse = DuckDBWarehouse(
            DuckDBResource(database=str(Path(tmp) / "w.duckdb")).get_connection, max_line_bytes=MAX_LINE_BYTES
        )

        def select(sql: str) -> list[tuple]:
            return warehouse.query(sql.format(**{t: f'"{base.DATASET}"."{t}"' for t in _TABLES}))

        yield LocalLandingStore(Path(tmp) / "landing"), warehouse, select


_TABLES = (base.PULLS, base.EVENTS, base.REJECTED, base.LOADED_OBJECTS)


@pytest.fixture(params=["duckdb", "bigquery"])
def engine(request: pytest.FixtureRequest) -> Fresh:
    if request.param == "duckdb":
        return _duckdb
    fake_gcs: FakeGcsServer = request.getfixturevalue("fake_gcs")
    emulator: BigQueryEmulator = request.getfixturevalue("bigquery_emulator")
    client = emulator.client()
    request.addfinalizer(client.close)

    @contextmanager
    def _bigquery() -> Iterator[tuple[LandingStore, base.Warehouse, Select]]:
        bucket = f"accounting-{uuid.uuid4().hex[:12]}"
        fake_gcs.client().create_bucket(bucket)
        dataset = f"accounting_{uuid.uuid4().hex[:10]}"
        warehouse = BigQueryWarehouse(client, dataset, retry=Retry(timeout=30), max_line_bytes=MAX_LINE_BYTES)

        def select(sql: str) -> list[tuple]:
            resolved = sql.format(**{t: f"`{warehouse.table_id(t)}`" for t in _TABLES})
            return [tuple(row.values()) for row in warehouse.query(resolved)]

        yield GcsLandingStore(bucket, "landing", client=fake_gcs.client()), warehouse, select

    return _bigquery


@settings(
    # A few dozen in the suite; PULL_EVENTS_PROPERTY_EXAMPLES=1000 for a thorough attack.
    max_examples=int(os.environ.get("PULL_EVENTS_PROPERTY_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(landed=landing_objects())
def test_every_line_of_every_object_is_a_row_a_duplicate_or_rejected(
    engine: Fresh, landed: list[tuple[str, bytes]]
) -> None:
    with engine() as (store, warehouse, select):
        for key, data in landed:
            store.write_new(key, data)
        objects = [LandedObject(key, len(data), store.uri(key)) for key, data in landed]

        result = warehouse.load_objects(store, objects, "prop")
        again = warehouse.load_objects(store, objects, "prop-again")

        ledger = {
            row[0]: row[1:]
            for row in select(
                "SELECT landing_object, lines, pulls_inserted, events_inserted, duplicates_skipped, lines_rejected "
                f"FROM {{{base.LOADED_OBJECTS}}}"
            )
        }
        assert sorted(ledger) == sorted(key for key, _ in landed)
        for key, data in landed:
            lines, pulls, events, duplicates, rejected = ledger[key]
            assert lines == count_lines(data), key
            assert lines == pulls + events + duplicates + rejected, key
        totals = [sum(row[n] for row in ledger.values()) for n in range(5)]
        assert (result.lines_read, result.pulls_inserted, result.events_inserted) == tuple(totals[:3])
        assert (result.duplicates_skipped, result.lines_rejected) == tuple(totals[3:])
        assert (again.objects_loaded, again.objects_skipped) == (0, len(landed))
        assert select(f"SELECT count(*) FROM {{{base.PULLS}}}") == [(totals[1],)]
        assert select(f"SELECT count(*) FROM {{{base.EVENTS}}}") == [(totals[2],)]
        _assert_rejected_lines_are_where_they_say(select, dict(landed), totals[4])


def _assert_rejected_lines_are_where_they_say(select: Select, landed: dict[str, bytes], rejected: int) -> None:
    found = select(f"SELECT landing_object, landing_line, reason, raw_line FROM {{{base.REJECTED}}}")
    assert len(found) == rejected
    for key, position, reason, raw_line in found:
        segment = line_segments(landed[key])[position - 1]
        assert not is_blank(segment)
        if reason == "line_too_large":
            assert len(segment) > MAX_LINE_BYTES and raw_line == segment[:PREFIX_BYTES].decode(
                errors="backslashreplace"
            )
        elif reason == "invalid_utf8":
            assert raw_line == segment.decode("utf-8", errors="backslashreplace")
        else:
            assert raw_line.encode() == segment, (key, position, reason)
