"""What the DuckDB warehouse alone does, on a real DuckDB file fed by real landing objects in receiver format.

What both warehouses do is tested once, on both, in tests/test_warehouses.py.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, defaultdict
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
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
    PULL_TYPE,
    PUSH_TYPE,
    PullFacts,
    RawLine,
    landed_line,
    other_event,
    pull_event,
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
