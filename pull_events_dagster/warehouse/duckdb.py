"""The warehouse in a DuckDB file: set-based SQL over the landing objects, one transaction per load.

Files are read whole (``read_blob``) and split into lines in SQL, so a broken line is still one row with
its position. Each line is validated as JSON (``TRY_CAST(... AS JSON)``, which is also the stored
``raw_event``) and parsed once into a struct shaped by ``schema.py`` (``from_json``); the values whose
JSON type a rejection rule looks at are read as JSON fragments, whose first character tells the type.
Only the rare pull lines that parse leaves undecided (a missing or odd ``data``, ``body`` or ``actor``)
get their JSON types read (``json_type``). No Python touches individual lines.

DuckDB admits one writer process per file. A process that holds the file open (an analyst's CLI, a
notebook) makes ``connect`` fail with a lock error: connections are retried with backoff for
``lock_timeout`` seconds before the load gives up (and the sensor retries the batch later).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from pull_events.landing import LandedObject, LandingStore
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.schema import ACTOR, PULL_BODY, TABLES, Column

log = logging.getLogger(__name__)

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]

_SCALAR_TYPES = {
    "STRING": "VARCHAR",
    "INT64": "BIGINT",
    "FLOAT64": "DOUBLE",
    "BOOL": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMPTZ",
    "DATETIME": "TIMESTAMP",
    "DATE": "DATE",
    "JSON": "JSON",
}
# How each schema type is read out of a JSON line before validation: timestamps as text, so a bad
# value is seen (and rejected) rather than silently turned into NULL.
_JSON_READ_TYPES = {**_SCALAR_TYPES, "TIMESTAMP": "VARCHAR", "DATETIME": "VARCHAR", "DATE": "VARCHAR"}

# The JSON types read (in one json_type call) for pull lines that from_json alone cannot judge.
_TYPE_PATHS = ("$.data", "$.data.body", "$.data.actor")
_T = {path: index + 1 for index, path in enumerate(_TYPE_PATHS)}  # DuckDB lists are 1-based

# BigQuery's canonical DATETIME literal, without zone: a zone-qualified body.when is not civil time.
_CIVIL_DATETIME = r"^\d{4}-\d{1,2}-\d{1,2}([T ]\d{1,2}:\d{1,2}:\d{1,2}(\.\d{1,6})?)?$"

_LOCK_ERROR_MARKERS = ("could not set lock", "conflicting lock")
_MEMORY_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")


def quote(identifier: str) -> str:
    """A DuckDB identifier, quoted (column names such as ``when`` and ``aws-arn`` need it)."""
    return '"' + identifier.replace('"', '""') + '"'


def duckdb_type(column: Column) -> str:
    """The DuckDB type of a schema column."""
    if column.type == "RECORD":
        inner = ", ".join(f"{quote(f.name)} {duckdb_type(f)}" for f in column.fields)
        rendered = f"STRUCT({inner})"
    else:
        rendered = _SCALAR_TYPES[column.type]
    return f"{rendered}[]" if column.mode == "REPEATED" else rendered


def json_structure(column: Column) -> Any:
    """The ``from_json`` structure reading one schema column."""
    if column.type == "RECORD":
        shape: Any = {f.name: json_structure(f) for f in column.fields}
    else:
        shape = _JSON_READ_TYPES[column.type]
    return [shape] if column.mode == "REPEATED" else shape


def _pull_body_structure() -> dict[str, Any]:
    body = json_structure(PULL_BODY)
    # Kept as JSON fragments so that a value of the wrong JSON type is seen (and rejected), not turned
    # into NULL; policy_results is parsed further only on the lines that have it.
    body["error"]["status"] = "JSON"
    body["policy_results"] = "JSON"
    return body


_POLICY_RESULTS_STRUCTURE = json.dumps(json_structure(next(f for f in PULL_BODY.fields if f.name == "policy_results")))


# The whole line in one parse. Attributes whose JSON type the rules check are read as JSON fragments
# (minified, so the first character tells the type); pull data is shaped like the pull table.
_LINE_STRUCTURE = json.dumps(
    {
        "landing_object": "VARCHAR",
        "landing_line": "BIGINT",
        "id": "JSON",
        "source": "JSON",
        "type": "JSON",
        "subject": "VARCHAR",
        "time": "JSON",
        "group": "VARCHAR",
        "received_at": "VARCHAR",
        "received_by": "VARCHAR",
        "data": {"actor": json_structure(ACTOR), "body": _pull_body_structure()},
    }
)


def _string_value(fragment: str) -> str:
    """SQL: the text of a JSON string fragment (``NULL`` unless it is a string)."""
    f = f"CAST({fragment} AS VARCHAR)"
    return (
        f"CASE WHEN {f}[1] = '\"' THEN CASE WHEN contains({f}, '\\') "
        f"THEN json_extract_string({fragment}, '$') ELSE {f}[2:-2] END END"
    )


def _fragment(fragment: str) -> str:
    """SQL: a JSON fragment as text, ``'null'`` when absent."""
    return f"coalesce(CAST({fragment} AS VARCHAR), 'null')"


def column_ddl(column: Column) -> str:
    """One column of a ``CREATE TABLE``."""
    ddl = f"{quote(column.name)} {duckdb_type(column)}"
    if column.mode == "REQUIRED":
        ddl += " NOT NULL"
    if column.type == "JSON":
        # Whole JSON documents: zstd writes them several times faster than the default dictionary/FSST
        # analysis, and smaller.
        ddl += " USING COMPRESSION zstd"
    return ddl


def table_ddl(schema: str, table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for one table of ``schema.py``."""
    columns = ",\n  ".join(column_ddl(c) for c in TABLES[table])
    return f"CREATE TABLE IF NOT EXISTS {quote(schema)}.{quote(table)} (\n  {columns}\n)"


class WarehouseLocked(RuntimeError):
    """The DuckDB file stayed locked by another process for longer than the lock timeout."""


class LandingObjectMissing(FileNotFoundError):
    """A landing object named in a load could not be read (nothing of the load is written)."""


@dataclass(frozen=True)
class _Chunk:
    objects: list[LandedObject]
    paths: list[str]


class DuckDBWarehouse(base.Warehouse):
    """Tables in one DuckDB file, loaded exactly once per (source, id).

    ``connect`` returns a context-managed connection (``DuckDBResource.get_connection``); it is called
    once per operation, so the file is held only while the pipeline is working. A load reads its objects
    ``chunk_bytes`` at a time, and DuckDB's memory is capped at ``memory_limit`` (it spills to disk past
    it), so a load's memory does not grow with the size of the batch or of the tables.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        schema: str = base.DATASET,
        lock_timeout: float = 600.0,
        chunk_bytes: int = 64 * 1024 * 1024,
        memory_limit: str | None = "512MB",
        download_dir: Path | None = None,
    ) -> None:
        if memory_limit is not None and not _MEMORY_SIZE.match(memory_limit):
            raise ValueError(f"memory_limit {memory_limit!r} is not a size such as '512MB' or '2GiB'")
        self._connect = connect
        self.schema = schema
        self.lock_timeout = lock_timeout
        self.chunk_bytes = chunk_bytes
        self.memory_limit = memory_limit
        self.download_dir = download_dir

    # -- connections -------------------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection, retried with backoff while another process holds the file's lock."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.05
        while True:
            try:
                manager = self._connect()
                conn = manager.__enter__()
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise WarehouseLocked(
                        f"the DuckDB file stayed locked for {self.lock_timeout:.0f}s: {exc}. "
                        "Close other processes holding it open read-write (see docs/querying.md)."
                    ) from exc
                log.warning("DuckDB file is locked by another process; retrying in %.1fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            break
        try:
            # Timestamps are stored as instants; days are UTC days whatever the host's zone.
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET preserve_insertion_order = false")
            if self.memory_limit:
                conn.execute(f"SET memory_limit = '{self.memory_limit}'")
            yield conn
        except BaseException as exc:
            _close_quietly(conn)
            if not manager.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            _close_quietly(conn)
            manager.__exit__(None, None, None)

    def _table(self, table: str) -> str:
        return f"{quote(self.schema)}.{quote(table)}"

    # -- Warehouse ---------------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        with self.session() as conn:
            self._ensure_tables(conn)

    def _ensure_tables(self, conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
        for table in TABLES:
            conn.execute(table_ddl(self.schema, table))

    def loaded_object_keys(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        with self.session() as conn:
            self._ensure_tables(conn)
            return self._loaded_keys(conn, keys)

    def _loaded_keys(self, conn: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> set[str]:
        rows = conn.execute(
            f"SELECT DISTINCT landing_object FROM {self._table(base.LOADED_OBJECTS)} "
            "WHERE landing_object IN (SELECT unnest($keys))",
            {"keys": list(keys)},
        ).fetchall()
        return {row[0] for row in rows}

    def load_objects(self, store: LandingStore, objects: Sequence[LandedObject], run_id: str) -> base.LoadResult:
        unique = sorted({o.key: o for o in objects}.values(), key=lambda o: o.key)
        totals = _Totals()
        with self.session() as conn:
            self._ensure_tables(conn)
            done = self._loaded_keys(conn, [o.key for o in unique]) if unique else set()
            todo = [o for o in unique if o.key not in done]
            if todo:
                conn.execute("BEGIN TRANSACTION")
                try:
                    loaded_at = self._next_loaded_at(conn)
                    conn.execute(
                        "CREATE OR REPLACE TEMP TABLE pe_object_stats (landing_object VARCHAR, lines BIGINT, "
                        "pulls_inserted BIGINT, events_inserted BIGINT, duplicates_skipped BIGINT, "
                        "lines_rejected BIGINT)"
                    )
                    conn.execute("CREATE OR REPLACE TEMP TABLE pe_days (day DATE)")
                    for chunk in self._chunks(store, todo):
                        with chunk as files:
                            self._load_chunk(conn, files, loaded_at, run_id)
                    # The ledger last: an object is only "loaded" once all of its rows are.
                    conn.execute(
                        f"INSERT INTO {self._table(base.LOADED_OBJECTS)} "
                        "(landing_object, lines, pulls_inserted, events_inserted, duplicates_skipped, "
                        "lines_rejected, loaded_at, run_id) "
                        "SELECT landing_object, lines, pulls_inserted, events_inserted, duplicates_skipped, "
                        "lines_rejected, $loaded_at, $run_id FROM pe_object_stats",
                        {"loaded_at": loaded_at, "run_id": run_id},
                    )
                    totals = _Totals.read(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        return base.LoadResult(
            objects_loaded=len(todo),
            objects_skipped=len(unique) - len(todo),
            lines_read=totals.lines,
            pulls_inserted=totals.pulls,
            events_inserted=totals.events,
            duplicates_skipped=totals.duplicates,
            lines_rejected=totals.rejected,
            affected_days=totals.days,
        )

    def _next_loaded_at(self, conn: duckdb.DuckDBPyConnection) -> datetime:
        # Strictly after every earlier load even if the clock stepped back: the derived tables'
        # watermark relies on loaded_at only growing.
        now = datetime.now(UTC)
        previous = conn.execute(f"SELECT max(loaded_at) FROM {self._table(base.LOADED_OBJECTS)}").fetchone()[0]
        if previous is not None and previous >= now:
            return previous + timedelta(microseconds=1)
        return now

    @contextmanager
    def _local_files(self, store: LandingStore, objects: Sequence[LandedObject]) -> Iterator[_Chunk]:
        """Local paths for ``objects``: the store's own files, or copies fetched into a temp dir."""
        uris = [store.uri(o.key) for o in objects]
        if all("://" not in uri for uri in uris):
            yield _Chunk(list(objects), uris)
            return
        tmp = Path(tempfile.mkdtemp(prefix="pull-events-load-", dir=self.download_dir))
        try:
            paths = []
            for index, obj in enumerate(objects):
                path = tmp / f"{index:06d}.ndjson"
                path.write_bytes(store.read(obj.key))
                paths.append(str(path))
            yield _Chunk(list(objects), paths)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _chunks(self, store: LandingStore, objects: Sequence[LandedObject]) -> Iterator[AbstractContextManager[_Chunk]]:
        """Bounded groups of objects, so memory stays flat however large the batch."""
        group: list[LandedObject] = []
        size = 0
        for obj in objects:
            if group and size + obj.size > self.chunk_bytes:
                yield self._local_files(store, group)
                group, size = [], 0
            group.append(obj)
            size += obj.size
        if group:
            yield self._local_files(store, group)

    def _load_chunk(self, conn: duckdb.DuckDBPyConnection, files: _Chunk, loaded_at: datetime, run_id: str) -> None:
        self._read_lines(conn, files)
        pulls, events, rejected = self._table(base.PULLS), self._table(base.EVENTS), self._table(base.REJECTED)
        # One winner per (kind, source, id): the first copy by (received_at, landing_object, landing_line),
        # unless the key is already in its table. Narrow columns only, so the grouping stays cheap, and
        # the joins against the tables are built on this chunk's keys: memory does not grow with them.
        conn.execute(
            """
            CREATE OR REPLACE TEMP TABLE pe_keys AS
            SELECT is_pull, event_source, event_id,
                arg_min({'object_key': object_key, 'position': position},
                        {'received_at': received_at, 'landing_object': landing_object, 'landing_line': landing_line})
                    AS first
            FROM pe_lines WHERE reason IS NULL GROUP BY ALL
            """
        )
        # Inner joins, whose hash table the optimizer builds on the smaller side (this chunk's keys once
        # the table is larger), rather than EXISTS, which would hash the whole table for every chunk.
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE pe_winners AS
            WITH existing AS (
                SELECT k.is_pull, k.event_source, k.event_id FROM pe_keys k
                JOIN {pulls} t ON t.event_source = k.event_source AND t.event_id = k.event_id WHERE k.is_pull
                UNION ALL
                SELECT k.is_pull, k.event_source, k.event_id FROM pe_keys k
                JOIN {events} t ON t.event_source = k.event_source AND t.event_id = k.event_id WHERE NOT k.is_pull
            )
            SELECT k.is_pull, k.first.object_key AS object_key, k.first.position AS position
            FROM pe_keys k ANTI JOIN existing e
                ON e.is_pull = k.is_pull AND e.event_source = k.event_source AND e.event_id = k.event_id
            """
        )
        lineage = "c.landing_object, c.landing_line, c.received_at, c.received_by, $loaded_at, c.raw_event"
        envelope = "c.event_id, c.event_source, c.event_type, c.event_subject, c.event_time, c.event_group"
        params = {"loaded_at": loaded_at}
        conn.execute(
            f"""
            INSERT INTO {pulls} (event_id, event_source, event_type, event_subject, event_time, event_group,
                repository, actor, body, landing_object, landing_line, received_at, received_by, loaded_at, raw_event)
            SELECT {envelope}, c.body.repository, c.actor, c.body, {lineage}
            FROM pe_lines c JOIN pe_winners w USING (object_key, position) WHERE w.is_pull
            """,
            params,
        )
        conn.execute(
            f"""
            INSERT INTO {events} (event_id, event_source, event_type, event_subject, event_time, event_group,
                data, landing_object, landing_line, received_at, received_by, loaded_at, raw_event)
            SELECT {envelope}, json_extract(c.raw_event, '$.data'), {lineage}
            FROM pe_lines c JOIN pe_winners w USING (object_key, position) WHERE NOT w.is_pull
            """,
            params,
        )
        conn.execute(
            f"""
            INSERT INTO {rejected} (landing_object, landing_line, reason, raw_line, rejected_at, run_id)
            SELECT c.landing_object, c.landing_line, c.reason, coalesce(c.unparsed_line, c.raw_event::VARCHAR),
                $loaded_at, $run_id
            FROM pe_lines c
            WHERE c.reason IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM {rejected} r
                WHERE r.landing_object = c.landing_object AND r.landing_line = c.landing_line)
            """,
            {**params, "run_id": run_id},
        )
        conn.execute(
            """
            INSERT INTO pe_object_stats
            SELECT f.object_key, count(c.position),
                count(*) FILTER (w.is_pull), count(*) FILTER (NOT w.is_pull),
                count(*) FILTER (c.position IS NOT NULL AND c.reason IS NULL AND w.position IS NULL),
                count(*) FILTER (c.reason IS NOT NULL)
            FROM (SELECT unnest($keys) AS object_key) f
            LEFT JOIN pe_lines c USING (object_key)
            LEFT JOIN pe_winners w USING (object_key, position)
            GROUP BY f.object_key
            """,
            {"keys": [o.key for o in files.objects]},
        )
        conn.execute(
            """
            INSERT INTO pe_days SELECT DISTINCT CAST(c.body."when" AS DATE)
            FROM pe_lines c JOIN pe_winners w USING (object_key, position) WHERE w.is_pull
            """
        )

    def _read_lines(self, conn: duckdb.DuckDBPyConnection, files: _Chunk) -> None:
        """``pe_lines``: every non-empty line of the chunk's files, parsed, with its rejection reason."""
        keys = [o.key for o in files.objects]
        # read_blob skips files it cannot find: an object must never be recorded as loaded without its lines.
        found = {
            row[0] for row in conn.execute("SELECT filename FROM read_blob($paths)", {"paths": files.paths}).fetchall()
        }
        missing = [key for key, path in zip(keys, files.paths, strict=True) if path not in found]
        if missing:
            raise LandingObjectMissing(f"{len(missing)} landing objects cannot be read, e.g. {missing[0]}")
        self._classify(conn, "CREATE OR REPLACE TEMP TABLE pe_lines AS", files.paths, keys)
        undecodable = conn.execute("SELECT DISTINCT object_key FROM pe_lines WHERE undecodable").fetchall()
        if not undecodable:
            return
        conn.execute("DELETE FROM pe_lines WHERE undecodable")
        path_of = dict(zip(keys, files.paths, strict=True))
        with tempfile.TemporaryDirectory(prefix="pull-events-utf8-", dir=self.download_dir) as tmp:
            copies, copy_keys = [], []
            for index, (key,) in enumerate(undecodable):
                # Bad bytes become \\xNN escapes, which are never valid JSON: exactly those lines are
                # rejected (invalid_json) while every other line keeps its text and position.
                copy = Path(tmp) / f"{index:06d}.ndjson"
                text = Path(path_of[key]).read_bytes().decode("utf-8", errors="backslashreplace")
                copy.write_text(text, encoding="utf-8")
                log.warning("%s is not valid UTF-8: loading it with its bad bytes escaped", key)
                copies.append(str(copy))
                copy_keys.append(key)
            self._classify(conn, "INSERT INTO pe_lines", copies, copy_keys)

    def _classify(self, conn: duckdb.DuckDBPyConnection, into: str, paths: list[str], keys: list[str]) -> None:
        """Split files into lines, parse each line once, and judge it by the load rules."""
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE pe_paths AS SELECT unnest($paths) AS path, unnest($keys) AS object_key",
            {"paths": paths, "keys": keys},
        )
        t = _T
        body_type = duckdb_type(PULL_BODY)
        text, frag = _string_value, _fragment
        conn.execute(
            f"""
            {into}
            WITH split AS MATERIALIZED (
                -- read_blob + decode rather than read_text: a file that is not valid UTF-8 must not fail
                -- the load. Only the flag leaves this subquery: carrying the text would copy it per line.
                SELECT filename, text IS NULL AS undecodable,
                    unnest(string_split(coalesce(text, ''), chr(10))) AS line,
                    generate_subscripts(string_split(coalesce(text, ''), chr(10)), 1) AS position
                FROM (SELECT filename, try(decode(content)) AS text FROM read_blob($paths))
            ), raw AS (
                SELECT f.object_key, s.undecodable, s.position, s.line, TRY_CAST(s.line AS JSON) AS j
                FROM split s JOIN pe_paths f ON f.path = s.filename
                WHERE s.undecodable OR CASE WHEN length(s.line) > 8 THEN true ELSE trim(s.line, $blank) <> '' END
            ), parsed AS (
                SELECT *, CASE WHEN j IS NOT NULL AND (line[1] = '{{' OR ltrim(line, $blank)[1] = '{{')
                    THEN from_json(j, $structure) END AS p
                FROM raw
            ), fields AS (
                SELECT *,
                    {text("p.id")} AS id, {text("p.source")} AS source, {text("p.type")} AS type,
                    {text("p.time")} AS time,
                    {text("p.type")} = $pull_type AS is_pull,
                    p.data.body.repository IS NOT NULL OR p.data.body."when" IS NOT NULL AS body_found
                FROM parsed
            ), typed AS (
                -- The exact JSON types, read only for the rare pull lines whose parse leaves a rule
                -- undecided (a missing or odd data, body or actor); every other line is parsed once.
                SELECT *, CASE WHEN is_pull AND (
                        NOT body_found OR (p.data.actor IS NOT NULL AND p.data.actor.subject IS NULL)
                    ) THEN json_type(j, $type_paths) END AS types
                FROM fields
            ), judged AS (
                SELECT *,
                    CASE
                    WHEN p IS NULL THEN 'invalid_json'
                    WHEN id IS NULL OR id = '' THEN 'missing_attribute:id'
                    WHEN source IS NULL OR source = '' THEN 'missing_attribute:source'
                    WHEN type IS NULL OR type = '' THEN 'missing_attribute:type'
                    WHEN {frag("p.time")} <> 'null' AND TRY_CAST(time AS TIMESTAMPTZ) IS NULL
                        THEN 'invalid_value:time'
                    WHEN NOT is_pull THEN NULL
                    WHEN p.data IS NULL THEN 'wrong_type:data'
                    WHEN NOT body_found AND types[{t["$.data"]}] IS DISTINCT FROM 'OBJECT' THEN 'wrong_type:data'
                    WHEN NOT body_found AND types[{t["$.data.body"]}] IS DISTINCT FROM 'OBJECT'
                        THEN 'wrong_type:data.body'
                    WHEN p.data.body.repository IS NULL THEN 'missing_field:body.repository'
                    WHEN p.data.body."when" IS NULL OR NOT regexp_full_match(p.data.body."when", $civil)
                        OR TRY_CAST(p.data.body."when" AS TIMESTAMP) IS NULL THEN 'invalid_value:body.when'
                    WHEN {frag("p.data.body.error.status")} <> 'null'
                        AND NOT regexp_full_match({frag("p.data.body.error.status")}, '-?[0-9]+')
                        THEN 'wrong_type:body.error.status'
                    WHEN coalesce(types[{t["$.data.actor"]}], 'NULL') NOT IN ('NULL', 'OBJECT') THEN 'wrong_type:actor'
                    WHEN {frag("p.data.body.policy_results")} <> 'null'
                        AND {frag("p.data.body.policy_results")}[1] <> '[' THEN 'wrong_type:body.policy_results'
                    END AS reason
                FROM typed
            )
            SELECT
                object_key, position, undecodable, reason,
                j AS raw_event,
                CASE WHEN j IS NULL THEN line END AS unparsed_line,
                coalesce(p.landing_object, object_key) AS landing_object,
                coalesce(p.landing_line, position) AS landing_line,
                id AS event_id, source AS event_source, type AS event_type, p.subject AS event_subject,
                TRY_CAST(time AS TIMESTAMPTZ) AS event_time, p."group" AS event_group,
                TRY_CAST(p.received_at AS TIMESTAMPTZ) AS received_at, p.received_by,
                coalesce(is_pull, false) AS is_pull,
                CASE WHEN reason IS NULL AND is_pull THEN p.data.actor END AS actor,
                CASE WHEN reason IS NULL AND is_pull THEN CAST(struct_update(p.data.body, policy_results :=
                    CASE WHEN {frag("p.data.body.policy_results")} <> 'null'
                        THEN from_json(p.data.body.policy_results, $policy_structure) END) AS {body_type})
                END AS body
            FROM judged
            """,
            {
                "paths": paths,
                "blank": " \t\r\n",
                "type_paths": list(_TYPE_PATHS),
                "structure": _LINE_STRUCTURE,
                "policy_structure": _POLICY_RESULTS_STRUCTURE,
                "pull_type": base.PULL_TYPE,
                "civil": _CIVIL_DATETIME,
            },
        )

    def refresh_daily_pulls(self) -> base.RefreshResult:
        pulls, daily, state = self._table(base.PULLS), self._table(base.DAILY_PULLS), self._table(base.REFRESH_STATE)
        with self.session() as conn:
            self._ensure_tables(conn)
            conn.execute("BEGIN TRANSACTION")
            try:
                mark = conn.execute(
                    f"SELECT max(loaded_through) FROM {state} WHERE table_name = $t", {"t": base.DAILY_PULLS}
                ).fetchone()[0]
                conn.execute(
                    f"""
                    CREATE OR REPLACE TEMP TABLE pe_refresh_days AS
                    SELECT DISTINCT CAST(body."when" AS DATE) AS day FROM {pulls}
                    WHERE $mark IS NULL OR loaded_at > $mark
                    """,
                    {"mark": mark},
                )
                through = conn.execute(
                    f"SELECT max(loaded_at) FROM {pulls} WHERE $mark IS NULL OR loaded_at > $mark", {"mark": mark}
                ).fetchone()[0]
                conn.execute(f"DELETE FROM {daily} WHERE day IN (SELECT day FROM pe_refresh_days)")
                written = conn.execute(
                    f"""
                    INSERT INTO {daily} (day, repository, events, image_pulls, manifest_heads, blob_gets, errors,
                        unique_actors, unique_clients, computed_at)
                    SELECT CAST(body."when" AS DATE) AS day, repository,
                        count(*),
                        count(*) FILTER (body.method = 'GET' AND body.type = 'manifest' AND body.error IS NULL),
                        count(*) FILTER (body.method = 'HEAD' AND body.type = 'manifest'),
                        count(*) FILTER (body.method = 'GET' AND body.type = 'blob'),
                        count(*) FILTER (body.error IS NOT NULL),
                        count(DISTINCT actor.subject),
                        count(DISTINCT body.remote_address),
                        now()
                    FROM {pulls}
                    WHERE CAST(body."when" AS DATE) IN (SELECT day FROM pe_refresh_days)
                    GROUP BY ALL
                    """
                ).fetchone()[0]
                if through is not None:
                    conn.execute(f"DELETE FROM {state} WHERE table_name = $t", {"t": base.DAILY_PULLS})
                    conn.execute(
                        f"INSERT INTO {state} (table_name, loaded_through, refreshed_at) VALUES ($t, $through, now())",
                        {"t": base.DAILY_PULLS, "through": through},
                    )
                days = [row[0] for row in conn.execute("SELECT day FROM pe_refresh_days ORDER BY day").fetchall()]
                table_rows = conn.execute(f"SELECT count(*) FROM {daily}").fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return base.RefreshResult(days_recomputed=days, rows_written=written, table_rows=table_rows)

    def refresh_repository_summary(self) -> base.RefreshResult:
        pulls, summary = self._table(base.PULLS), self._table(base.REPOSITORY_SUMMARY)
        with self.session() as conn:
            self._ensure_tables(conn)
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute(f"DELETE FROM {summary}")
                written = conn.execute(
                    f"""
                    INSERT INTO {summary} (repository, events, image_pulls, errors, error_rate, unique_actors,
                        unique_clients, first_seen, last_seen, image_pulls_last_7d, image_pulls_last_30d,
                        top_tags, computed_at)
                    WITH p AS (
                        SELECT repository, body."when" AS seen, body.tag AS tag, body.error IS NOT NULL AS failed,
                            body.method = 'GET' AND body.type = 'manifest' AND body.error IS NULL AS image_pull,
                            actor.subject AS actor, body.remote_address AS client
                        FROM {pulls}
                    ), latest AS (
                        SELECT max(seen) AS latest FROM p
                    ), tag_pulls AS (
                        SELECT repository, tag, count(*) AS image_pulls FROM p
                        WHERE image_pull AND tag IS NOT NULL GROUP BY ALL
                    ), top AS (
                        SELECT repository,
                            list({{'tag': tag, 'image_pulls': image_pulls}} ORDER BY image_pulls DESC, tag)[1:5]
                                AS top_tags
                        FROM tag_pulls GROUP BY repository
                    )
                    SELECT p.repository, count(*), count(*) FILTER (image_pull), count(*) FILTER (failed),
                        (count(*) FILTER (failed)) / count(*),
                        count(DISTINCT actor), count(DISTINCT client), min(seen), max(seen),
                        count(*) FILTER (image_pull AND seen > latest.latest - INTERVAL 7 DAY),
                        count(*) FILTER (image_pull AND seen > latest.latest - INTERVAL 30 DAY),
                        coalesce(any_value(top.top_tags), []), now()
                    FROM p CROSS JOIN latest LEFT JOIN top USING (repository)
                    GROUP BY p.repository
                    """
                ).fetchone()[0]
                table_rows = conn.execute(f"SELECT count(*) FROM {summary}").fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return base.RefreshResult(days_recomputed=[], rows_written=written, table_rows=table_rows)

    def check_figures(self) -> base.CheckFigures:
        pulls, events, ledger = self._table(base.PULLS), self._table(base.EVENTS), self._table(base.LOADED_OBJECTS)
        with self.session() as conn:
            self._ensure_tables(conn)
            row = conn.execute(
                f"""
                SELECT
                    (SELECT count(*) FROM (SELECT 1 FROM {pulls} GROUP BY event_source, event_id HAVING count(*) > 1))
                  + (SELECT count(*) FROM (SELECT 1 FROM {events} GROUP BY event_source, event_id HAVING count(*) > 1)),
                    (SELECT count(*) FROM {pulls} WHERE event_id IS NULL OR event_source IS NULL
                        OR body.repository IS NULL OR body."when" IS NULL),
                    coalesce(sum(lines), 0),
                    coalesce(sum(pulls_inserted + events_inserted + duplicates_skipped + lines_rejected), 0),
                    coalesce(sum(lines_rejected), 0)
                FROM {ledger}
                """
            ).fetchone()
        duplicate_keys, missing, landed, accounted, rejected = (int(v) for v in row)
        return base.CheckFigures(
            duplicate_keys=duplicate_keys,
            missing_required=missing,
            landed_lines=landed,
            accounted_lines=accounted,
            rejected_lines=rejected,
            total_lines=landed,
        )

    def row_count(self, table: str) -> int:
        with self.session() as conn:
            self._ensure_tables(conn)
            return int(conn.execute(f"SELECT count(*) FROM {self._table(table)}").fetchone()[0])

    def column_schema(self, table: str) -> list[tuple[str, str]]:
        with self.session() as conn:
            self._ensure_tables(conn)
            rows = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = $schema AND table_name = $table ORDER BY ordinal_position",
                {"schema": self.schema, "table": table},
            ).fetchall()
        return [(name, kind) for name, kind in rows]

    def drop_all(self) -> None:
        with self.session() as conn:
            for table in TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {self._table(table)}")

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Run a read-only query (for checks and tests) and return its rows."""
        with self.session() as conn:
            return conn.execute(sql, parameters or {}).fetchall()


@dataclass
class _Totals:
    lines: int = 0
    pulls: int = 0
    events: int = 0
    duplicates: int = 0
    rejected: int = 0
    days: list[date] = field(default_factory=list)

    @classmethod
    def read(cls, conn: duckdb.DuckDBPyConnection) -> _Totals:
        row = conn.execute(
            "SELECT coalesce(sum(lines), 0), coalesce(sum(pulls_inserted), 0), coalesce(sum(events_inserted), 0), "
            "coalesce(sum(duplicates_skipped), 0), coalesce(sum(lines_rejected), 0) FROM pe_object_stats"
        ).fetchone()
        days = [r[0] for r in conn.execute("SELECT DISTINCT day FROM pe_days ORDER BY day").fetchall()]
        return cls(*(int(v) for v in row), days=days)


def _is_lock_error(exc: BaseException) -> bool:
    message = str(exc).lower()
    return any(marker in message for marker in _LOCK_ERROR_MARKERS)


def _close_quietly(conn: duckdb.DuckDBPyConnection) -> None:
    with suppress(duckdb.Error):
        conn.close()
