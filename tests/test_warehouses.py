"""What both warehouses do alike, each test run on a real DuckDB file and on bqemulator (with fake-gcs-server).

The repository summary's time windows count back from the warehouse's clock, so a pull dated in the future
empties no one's windows; a rebuild from the landing zone changes the tables only once it is complete.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster_duckdb import DuckDBResource
from google.api_core.retry import Retry
from google.cloud.exceptions import NotFound

from pull_events.landing import GcsLandingStore, LandedObject, LandingStore, LocalLandingStore, object_key
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from pull_events_dagster.warehouse.schema import TABLES
from tests.pipeline.factories import (
    PULL_TYPE,
    LandingSpec,
    landed_line,
    pull_event,
    synthetic_landing,
    write_object,
)
from tests.pipeline.test_duckdb_warehouse import expected_summary, facts

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
BATCH = 3  # objects per load: a rebuild of the landing zone below takes two
# Columns that record when or by which run a row was written: a rebuild writes them anew.
VOLATILE = {"loaded_at", "computed_at", "run_id", "rejected_at", "refreshed_at", "loaded_through", "quarantined_at"}
SUMMARY_COLUMNS = (
    "repository, events, image_pulls, errors, error_rate, unique_actors, unique_clients, first_seen, last_seen, "
    "image_pulls_last_7d, image_pulls_last_30d, top_tags"
)


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

    def snapshot(self, *, volatile: bool = True) -> dict[str, list[str]]:
        """Every table's full content, rows as text in a stable order (without VOLATILE columns if asked)."""
        tables = {}
        for table, columns in TABLES.items():
            kept = [c.name for c in columns if volatile or c.name not in VOLATILE]
            names = ", ".join(f'"{n}"' if self.name == "duckdb" else f"`{n}`" for n in kept)
            tables[table] = sorted(repr(row) for row in self.select(f"SELECT {names} FROM {{{table}}}"))
        return tables

    def load_in_batches(self, objects: list[LandedObject], size: int) -> None:
        """Load as sensor runs would: consecutive batches, one load each."""
        for start in range(0, len(objects), size):
            self.warehouse.load_objects(self.store, objects[start : start + size], f"run-{start}")


def _duckdb_engine(tmp_path: Path) -> Engine:
    path = tmp_path / "warehouse.duckdb"
    warehouse = DuckDBWarehouse(DuckDBResource(database=str(path)).get_connection)
    store = LocalLandingStore(tmp_path / "landing")

    def select(sql: str) -> list[tuple]:
        return warehouse.query(sql.format(**{t: f'"{warehouse.schema}"."{t}"' for t in TABLES}))

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

    return Engine("duckdb", warehouse, store, select, shadow_exists, drop_table, delete_object)


def _bigquery_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    client = request.getfixturevalue("bigquery_emulator").client()
    store = GcsLandingStore(
        request.getfixturevalue("gcs_bucket"), "landing", client=request.getfixturevalue("fake_gcs").client()
    )
    # Short retries: an emulator error should fail the test quickly, not after the client's 10 minutes.
    warehouse = BigQueryWarehouse(client, f"pull_events_{uuid.uuid4().hex[:10]}", retry=Retry(timeout=20))

    def select(sql: str) -> list[tuple]:
        resolved = sql.format(**{t: f"`{warehouse.table_id(t)}`" for t in TABLES})
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

    try:
        yield Engine("bigquery", warehouse, store, select, shadow_exists, drop_table, delete_object)
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
    write_object(engine.store, PULL_TYPE, [pull_event(p) for p in pulls], T0)
    engine.warehouse.load_objects(engine.store, listed(engine.store), "run")

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
    write_object(engine.store, PULL_TYPE, [pull_event(p) for p in pulls], T0)
    engine.warehouse.load_objects(engine.store, listed(engine.store), "run")

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
    engine.warehouse.refresh_daily_pulls()
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

    result = engine.warehouse.rebuild(engine.store, objects, "rebuild", BATCH)

    assert (result.objects_loaded, result.objects_skipped) == (len(objects), 0)
    assert engine.snapshot(volatile=False) == before
    assert engine.select(f"SELECT DISTINCT run_id FROM {{{base.LOADED_OBJECTS}}}") == [("rebuild",)]
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
