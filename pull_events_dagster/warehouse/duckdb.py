"""The warehouse in a DuckDB file: set-based SQL over the landing objects, one transaction per load.

A load first stages its lines in temp tables, outside the transaction: DuckDB's parallel CSV reader
splits the files into lines, each numbered by the ``landing_line`` the receiver wrote into it. That
reading is trusted for an object only when its lines hold exactly the object's bytes, numbered 1..n;
any other object (and every object of a group the CSV reader refuses) is read carefully, streamed
through ``lines.read_lines``, so a broken, overlong or non-UTF-8 line is still one row with its
position and nothing of an object is ever skipped. Each line is validated as JSON
(``TRY_CAST(... AS JSON)``; a line over ``max_line_bytes`` is rejected unparsed) and parsed once into a
struct shaped by ``schema.py`` (``from_json``); the values whose JSON type a rejection rule looks at are
read as JSON fragments, whose first character tells the type. Only the rare pull lines that parse leaves
undecided (a missing or odd ``data``, ``body`` or ``actor``) get their JSON types read (``json_type``).
A line's keys are counted (``json_keys``) against the fields its columns hold: only a line with more
(an unknown extension, data field or claim, a null value) keeps its text as ``raw_event``. Then one
transaction writes the rows, the rejected lines and the ledger, after checking that every object's lines
are each a row, a duplicate or rejected. No Python touches individual lines on the fast path.

DuckDB admits one writer process per file. A process that holds the file open, even read-only (an analyst's
CLI, a notebook), makes ``connect`` fail with a lock error at once. ``session`` is the one place that waits for the
lock: it retries the connection with back-off, logs a warning that it is waiting and for how long at most, and gives
up with ``WarehouseLocked`` once ``lock_timeout`` seconds have passed (Dagster retries the step, then the run; the
reconciliation pass loads what they leave). Any other connection error is raised at once.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import duckdb

from pull_events.landing import LandedObject, LandingStore
from pull_events.settings import DEFAULT_MAX_LINE_BYTES
from pull_events_dagster.warehouse import base, sql
from pull_events_dagster.warehouse.lines import PREFIX_BYTES, Line, read_lines, staging_row, unreadable_reason
from pull_events_dagster.warehouse.rules import (
    CIVIL_DATETIME,
    RULES,
    NotA,
    NotJsonObject,
    NotUtf8,
    Predicate,
    TooLong,
    reason_case,
)
from pull_events_dagster.warehouse.schema import (
    ACTOR,
    KEY_SAMPLE_ROWS,
    LINE_KEY_OF_COLUMN,
    LINE_KEYS,
    POLICY_RESULTS,
    PULL_BODY,
    PULL_DATA,
    TABLES,
    TOP_LEVEL_KEYS,
    Column,
    held_leaves,
    known_keys,
    nested_records,
)
from pull_events_dagster.warehouse.sql import statement

if TYPE_CHECKING:
    from dagster_duckdb import DuckDBResource

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

_LOCK_ERROR_MARKERS = ("could not set lock", "conflicting lock")
# DuckDB names the process holding the file: 'Conflicting lock is held in /usr/bin/python3 (PID 1234)'.
_LOCK_HOLDER = re.compile(r"conflicting lock is held in (.*?) \(PID (\d+)\)", re.IGNORECASE)
# The lock wait's back-off: from 50 ms, doubling up to 1 s. A refused connection costs a few milliseconds (the file
# is opened and its lock asked for), so once a second is cheap, and a released file is taken within a second.
_LOCK_RETRY_FIRST = 0.05
_LOCK_RETRY_MAX = 1.0
# A wait is logged when it starts and then this often, not at every retry.
_LOCK_LOG_EVERY = 60.0
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


_POLICY_RESULTS_STRUCTURE = json.dumps(json_structure(POLICY_RESULTS))


# The whole line in one parse. Attributes whose JSON type the rules check are read as JSON fragments
# (minified, so the first character tells the type); pull data is shaped like the pull table.
_LINE_SHAPE: dict[str, Any] = {
    **{key: "VARCHAR" for key in LINE_KEYS},
    **{key: "JSON" for key in ("id", "source", "type", "time")},
    "landing_line": "BIGINT",
    "data": {"actor": json_structure(ACTOR), "body": _pull_body_structure()},
}
_LINE_STRUCTURE = json.dumps(_LINE_SHAPE)

# The objects of a pull line whose keys are counted, to tell whether its columns hold all of it.
_PULL_OBJECTS = nested_records(PULL_DATA, ("data",))
_PULL_KEY_PATHS = ["$", *("$." + ".".join(quote(key) for key in path) for path, _ in _PULL_OBJECTS)]
_POLICIES = ("data", "body", "policy_results")
_RECEIVED_AT = "TRY_CAST(p.received_at AS TIMESTAMPTZ)"


def _held(value: str, column: Column) -> str:
    """SQL: whether the parsed field ``value`` is held by its column (``schema.held_leaves``)."""
    leaves = ("".join(f".{quote(key)}" for key in leaf) for leaf in held_leaves(column))
    return "(" + " OR ".join(f"{value}{leaf} IS NOT NULL" for leaf in leaves) + ")"


def _count_held(value: str, fields: Sequence[Column]) -> str:
    """SQL: how many of a parsed record's fields hold a value."""
    return " + ".join(f"CAST({_held(f'{value}.{quote(f.name)}', f)} AS INTEGER)" for f in fields)


def _held_keys() -> tuple[str, str, str]:
    """SQL: the keys a line's columns hold: its top level, a pull line's data objects, one policy result ``r``."""
    # Held means its column has it: a received_at that is not a time would be NULL there.
    read = {key: f"p.{quote(key)}" for key in TOP_LEVEL_KEYS} | {"received_at": _RECEIVED_AT}
    top = " + ".join(f"CAST({value} IS NOT NULL AS INTEGER)" for value in read.values())
    pull = " + ".join(_count_held("p." + ".".join(map(quote, path)), column.fields) for path, column in _PULL_OBJECTS)
    return top, pull, _count_held("r", POLICY_RESULTS.fields)


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


# The rejection rules (rules.py) over the parse ``p`` of a line. These attributes are read as JSON fragments and
# their text into a column of the same name (classify_lines.sql's ``fields``).
_ATTRIBUTE_TEXTS = ("id", "source", "type", "time")
# The object rules: the values whose exact JSON types are read, in one json_type call (``types``), for the rare
# lines whose parse cannot tell whether they are objects.
_OBJECT_RULES = [
    (rule, rule.breaks) for rule in RULES if isinstance(rule.breaks, NotA) and rule.breaks.kind == "object"
]
_TYPE_PATHS = tuple("$." + ".".join(map(quote, check.keys)) for _, check in _OBJECT_RULES)
_T = {check.path: index + 1 for index, (_, check) in enumerate(_OBJECT_RULES)}  # DuckDB lists are 1-based


def _parsed(keys: tuple[str, ...]) -> str:
    """SQL: the parse's value at ``keys``."""
    return "p." + ".".join(map(quote, keys))


def _read_as(keys: tuple[str, ...]) -> Any:
    """How the parse reads the value at ``keys``: a type name (``'JSON'``: a fragment) or a struct's shape."""
    shape: Any = _LINE_SHAPE
    for key in keys:
        if not isinstance(shape, dict) or key not in shape:
            raise ValueError(f"the line's parse does not read {'.'.join(keys)}")
        shape = shape[key]
    return shape


def _nothing_found(keys: tuple[str, ...]) -> str:
    """SQL: the parse found no field in the value at ``keys``, so it cannot tell whether it is an object: from_json
    reads any value where an object belongs as a struct, whose fields are all NULL when it is not an object."""
    return "(" + " AND ".join(f"{_parsed((*keys, key))} IS NULL" for key in _read_as(keys)) + ")"


def _undecided() -> str:
    """SQL: the parse leaves an object rule undecided, so the line's JSON types are read."""
    terms: dict[bool, list[str]] = {True: [], False: []}
    for rule, check in _OBJECT_RULES:
        terms[rule.pulls_only].append(f"{_parsed(check.keys)} IS NOT NULL AND {_nothing_found(check.keys)}")
    pulls = [f"is_pull AND ({' OR '.join(terms[True])})"] if terms[True] else []
    return " OR ".join([*terms[False], *pulls]) or "false"


def _text(keys: tuple[str, ...]) -> str:
    """SQL: the text of a string read as a JSON fragment (NULL unless it is a string)."""
    return keys[0] if len(keys) == 1 and keys[0] in _ATTRIBUTE_TEXTS else _string_value(_parsed(keys))


def _present(keys: tuple[str, ...]) -> str:
    """SQL: the value at ``keys`` is present and not null."""
    if _read_as(keys) == "JSON":
        return f"{_fragment(_parsed(keys))} <> 'null'"
    return f"{_parsed(keys)} IS NOT NULL"


def _not_a(check: NotA) -> str:
    """SQL: the value at the check's path is not of its kind (absent or null is none), as the parse reads it."""
    value, read, keys = _parsed(check.keys), _read_as(check.keys), check.keys
    match check.kind, read:
        case "value", "JSON":
            return f"{_fragment(value)} = 'null'"
        case "value", _:
            return f"{value} IS NULL"
        case "non-empty string", "JSON":
            return f"({_text(keys)} IS NULL OR {_text(keys)} = '')"
        case "timestamp", "JSON":
            return f"TRY_CAST({_text(keys)} AS TIMESTAMPTZ) IS NULL"
        case "civil datetime", "VARCHAR":
            return (
                f"({value} IS NULL OR NOT regexp_full_match({value}, $civil) OR TRY_CAST({value} AS TIMESTAMP) IS NULL)"
            )
        case "integer", "JSON":
            fragment = _fragment(value)
            return f"(NOT regexp_full_match({fragment}, '-?[0-9]+') OR TRY_CAST({fragment} AS BIGINT) IS NULL)"
        case "array", "JSON":
            return f"{_fragment(value)}[1] <> '['"
        case "object", dict():
            types = f"types[{_T[check.path]}]"
            return f"({value} IS NULL OR {_nothing_found(keys)} AND {types} IS DISTINCT FROM 'OBJECT')"
    raise ValueError(f"the parse reads {check.path} as {read}: it cannot tell a {check.kind} from it")


def _breaks(predicate: Predicate) -> str:
    """SQL: a line breaks the predicate (rendered into classify_lines.sql's ``judged``)."""
    match predicate:
        case NotUtf8():
            return f"problem = '{predicate.problem}'"
        case TooLong():
            return f"(problem = '{predicate.problem}' OR strlen(line) > $max_line)"
        case NotJsonObject():
            return "p IS NULL"
        case NotA(optional=True):
            return f"{_present(predicate.keys)} AND {_not_a(predicate)}"
        case NotA():
            return _not_a(predicate)
    raise TypeError(f"no DuckDB rendering of {predicate!r}")


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


# The two line readers of a load; each gives (object_id, line, position, problem) rows.
#
# Fast: DuckDB's parallel CSV reader, one VARCHAR column per line. No delimiter, quote or escape can
# occur in a valid JSON line, and strict mode makes anything it would alter (a CR, a control character,
# bytes that are not UTF-8, an overlong line) an error rather than a changed line. Positions come from
# each line's own landing_line, and are trusted only where they account for every byte (_NUMBERING).
_LINES_BY_CSV = """
    SELECT f.object_id, s.line, CAST(NULL AS BIGINT) AS position, CAST(NULL AS VARCHAR) AS problem
    FROM read_csv($paths, columns = {'line': 'VARCHAR'}, delim = chr(1), quote = '', escape = '',
        new_line = '\\n', header = false, auto_detect = false, strict_mode = true, filename = true) s
    JOIN pe_paths f ON f.path = s.filename
"""
# Careful: the rows ``lines.read_lines`` wrote, numbered by position, the text base64-encoded.
_LINES_CAREFULLY = """
    SELECT object_id, decode(from_base64(text)) AS line, position, problem
    FROM read_csv($paths, columns = {'object_id': 'INTEGER', 'position': 'BIGINT', 'problem': 'VARCHAR',
            'text': 'VARCHAR'},
        delim = ',', quote = '', escape = '', new_line = '\\n', header = false, auto_detect = false,
        strict_mode = true, max_line_size = $max_staged_row)
"""
# The shape of both readers' rows, without any: the staging tables are created from it.
_NO_LINES = """
    SELECT NULL::INTEGER AS object_id, NULL::VARCHAR AS line, NULL::BIGINT AS position, NULL::VARCHAR AS problem
    WHERE false
"""
# Which objects the CSV reader accounted for: every byte of the file is in a staged line, each with its newline
# (an object without a final newline, as the receiver never writes, is read carefully), and the lines number
# themselves by their own landing_line 1..n. The numbers are the ones the receiver wrote, so a rejected line is
# recorded at the number it carries. An object with a line that carries no number (cut short, not JSON) is read
# carefully, by position: the reader cannot say where in the file that line was, and the numbers of the others
# do not prove it. ``lines`` is the count the load must then account for.
_NUMBERING = """
    INSERT INTO pe_objects
    SELECT object_id, k.object_key,
        NOT coalesce(
            staged_bytes = z.size
            AND unnumbered = 0 AND numbers = lines - blank AND coalesce(first, 1) = 1
            AND coalesce(last, 0) = lines - blank,
            z.size = 0) AS careful,
        coalesce(lines - blank, 0) AS lines
    FROM pe_sizes z JOIN pe_keys k USING (object_id)
    LEFT JOIN (
        SELECT object_id, count(*) AS lines, count(*) FILTER (blank) AS blank,
            count(*) FILTER (NOT blank AND position IS NULL) AS unnumbered,
            count(DISTINCT position) FILTER (NOT blank) AS numbers,
            min(position) FILTER (NOT blank) AS first, max(position) FILTER (NOT blank) AS last,
            sum(coalesce(line_bytes, 0) + 1) AS staged_bytes
        FROM pe_lines_csv WHERE object_id IN (SELECT unnest($ids)) GROUP BY object_id
    ) USING (object_id)
    WHERE object_id IN (SELECT unnest($ids))
"""
# The careful reading classifies its staging rows this many bytes at a time, so DuckDB's memory holds a bounded
# slice of a batch, whatever the batch holds.
CAREFUL_SLICE_BYTES = 64 * 1024 * 1024
# Glob characters: a path holding one cannot be handed to DuckDB's file readers, which would expand it.
_GLOB = re.compile(r"[*?\[\]{}]")


class _CarefulStaging:
    """The careful reading's staging rows, written to files of about ``CAREFUL_SLICE_BYTES`` each; ``classify``
    takes each full file (with its longest row) as soon as it is written."""

    def __init__(self, folder: Path, classify: Callable[[Path, int], None]) -> None:
        self.folder = folder
        self.classify = classify
        self.files = 0
        self.out: BinaryIO | None = None
        self.longest = 0

    def add(self, object_id: int, lines: Iterable[Line]) -> int:
        """Stage ``lines`` of one object; returns how many there were."""
        count = 0
        for line in lines:
            if self.out is None:
                self.files += 1
                self.out = (self.folder / f"lines-{self.files:04d}.csv").open("wb")
            row = staging_row(object_id, line)
            self.out.write(row)
            self.longest = max(self.longest, len(row))
            count += 1
            if self.out.tell() >= CAREFUL_SLICE_BYTES:
                self.flush()
        return count

    def flush(self) -> None:
        if self.out is None:
            return
        self.out.close()
        path, longest = Path(self.out.name), self.longest
        self.out, self.longest = None, 0
        self.classify(path, longest)
        path.unlink()


class WarehouseLocked(RuntimeError):
    """The DuckDB file stayed locked by another process for longer than the lock timeout."""

    # Defaults, so that unpickling (which calls the class with the message alone, then restores the attributes) works.
    def __init__(self, message: str, *, waited: float = 0.0, holder: str | None = None) -> None:
        super().__init__(message)
        self.waited = waited  # seconds actually waited
        self.holder = holder  # 'PID 1234 (/usr/bin/python3)' as DuckDB names it, or None if it did not


class LoadAccountingError(RuntimeError):
    """A load could not account for every line of an object: nothing of the load is written."""


@dataclass
class _Chunk:
    """Objects of one load read together: the local path and size of each, and those that could not be read."""

    objects: list[LandedObject]
    paths: list[str]
    sizes: list[int] = field(default_factory=list)  # bytes, as found when the chunk was made
    quarantined: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (reason, detail)


def connect_once(database: str, config: Mapping[str, Any] | None = None) -> Connect:
    """One connection attempt to ``database``, read-write, made as dagster-duckdb's ``get_connection`` makes it but
    without its retrying: ``DuckDBWarehouse.session`` owns the waiting for a locked file.

    dagster-duckdb's back-off cannot serve here: it is fixed (10 retries from 0.1 s doubling, about 102 s of sleep
    per call, whatever the caller's timeout) and retries every ``IOException``, so a file that is not a database or a
    missing directory would also be retried for 102 s. Read-write like it: the pipeline writes, and a read-only
    connection would not help (any other process's connection to the file blocks a writer, and DuckDB refuses to
    open one file read-only and read-write in the same process).
    """
    # The same settings get_connection passes (it adds the user agent to the resource's connection_config).
    settings = {"custom_user_agent": "dagster", **(config or {})}
    return lambda: duckdb.connect(database, read_only=False, config=settings)


def _one_attempt(connect: Connect | DuckDBResource) -> Connect:
    """``connect`` as a single connection attempt: a ``DuckDBResource``, or its ``get_connection``, becomes
    ``connect_once`` with the resource's database and connection_config, so its back-off never runs under
    ``session``'s. Any other callable must make one attempt."""
    # Looked up, not imported: the warehouse does not need Dagster, and while dagster_duckdb is not imported nothing
    # can be one of its resources.
    resource_type = getattr(sys.modules.get("dagster_duckdb"), "DuckDBResource", None)
    resource = getattr(connect, "__self__", connect)
    if (
        resource_type is not None
        and isinstance(resource, resource_type)
        and (resource is connect or getattr(connect, "__func__", None) is resource_type.get_connection)
    ):
        return connect_once(resource.database, resource.connection_config)
    return connect  # type: ignore[return-value]


class DuckDBWarehouse(base.Warehouse):
    """Tables in one DuckDB file, loaded exactly once per (source, id).

    ``connect`` makes one attempt at a context-managed connection (``connect_once``); a ``DuckDBResource`` or its
    ``get_connection`` is taken as ``connect_once`` with the resource's settings. It is called once per operation
    (and again while the file is locked, see ``session``), so the file is held only while the pipeline is working.
    DuckDB's memory is capped at ``memory_limit``: the staged lines spill to disk past it, so a load's memory does not
    grow with the size of the batch or of the tables. Objects of a remote store are downloaded ``chunk_bytes`` at a
    time.
    """

    def __init__(
        self,
        connect: Connect | DuckDBResource,
        *,
        schema: str = base.DATASET,
        lock_timeout: float = 600.0,
        chunk_bytes: int = 64 * 1024 * 1024,
        memory_limit: str | None = "512MB",
        download_dir: Path | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        future_tolerance: timedelta = base.FUTURE_TOLERANCE,
    ) -> None:
        if memory_limit is not None and not _MEMORY_SIZE.match(memory_limit):
            raise ValueError(f"memory_limit {memory_limit!r} is not a size such as '512MB' or '2GiB'")
        if lock_timeout < 0:
            raise ValueError(f"lock_timeout {lock_timeout!r} is negative")
        self._connect = _one_attempt(connect)
        self.schema = schema
        self.lock_timeout = lock_timeout
        self.chunk_bytes = chunk_bytes
        self.memory_limit = memory_limit
        self.download_dir = download_dir
        self.max_line_bytes = max_line_bytes
        self.future_tolerance = future_tolerance  # pulls dated further ahead of now count in no time window
        # The tables were made or checked by this object (one asset's work): later calls skip the DDL.
        self._tables_ready = False
        # What the summary's refresh counts its time windows from; None: the warehouse's own now(). Tests set it.
        self.clock: Callable[[], datetime] | None = None

    # -- connections -------------------------------------------------------------------------------

    # The lock wait's clock; tests replace them to follow its schedule without waiting.
    _monotonic = staticmethod(time.monotonic)
    _sleep = staticmethod(time.sleep)

    @contextmanager
    def session(self, *, append_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection, waiting up to ``lock_timeout`` seconds while another process holds the file's lock.

        ``append_only``: the session only appends rows, so the checkpoint that closes it need not merge
        partly filled row groups. Merging would recompress the rows just written: 0 to 5.7 s for the
        three 500-object loads of 1M events, depending on how the parallel writers happened to split them.
        """
        manager, conn = self._connect_waiting()
        try:
            # Timestamps are stored as instants; days are UTC days whatever the host's zone.
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET preserve_insertion_order = false")
            conn.execute("SET max_vacuum_tasks = 0" if append_only else "RESET max_vacuum_tasks")
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

    def _connect_waiting(
        self,
    ) -> tuple[AbstractContextManager[duckdb.DuckDBPyConnection], duckdb.DuckDBPyConnection]:
        """A connection and its manager, retried while the file is locked: the one layer of waiting (see
        ``connect_once``), so the wait ends at ``lock_timeout`` give or take one attempt of a few milliseconds."""
        start = self._monotonic()
        deadline = start + self.lock_timeout
        delay = _LOCK_RETRY_FIRST
        next_log = start
        retried = False
        while True:
            try:
                manager = self._connect()
                conn = manager.__enter__()
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc):
                    raise
                now = self._monotonic()
                waited = now - start
                holder = _lock_holder(exc)
                if now >= deadline:
                    raise WarehouseLocked(
                        f"gave up after waiting {waited:.1f}s (lock_timeout {self.lock_timeout:g}s) for the DuckDB "
                        f"file's lock, held by {holder or 'another process'}: {exc}. Close other processes holding "
                        "the file open, even read-only (see docs/querying.md).",
                        waited=waited,
                        holder=holder,
                    ) from exc
                if now >= next_log:
                    log.warning(
                        "DuckDB file is locked by %s; waiting for it up to %gs (lock_timeout), %.0fs so far: %s",
                        holder or "another process",
                        self.lock_timeout,
                        waited,
                        exc,
                    )
                    next_log = now + _LOCK_LOG_EVERY
                # Never past the deadline: the last attempt is made at it.
                self._sleep(min(delay, deadline - now))
                delay = min(delay * 2, _LOCK_RETRY_MAX)
                retried = True
                continue
            if retried:
                log.info("DuckDB file's lock taken after waiting %.1fs", self._monotonic() - start)
            return manager, conn

    def _table(self, table: str) -> str:
        return f"{quote(self.schema)}.{quote(table)}"

    # -- Warehouse ---------------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        self._tables_ready = False
        with self.session() as conn:
            self._ensure_tables(conn)

    def _ensure_tables(self, conn: duckdb.DuckDBPyConnection) -> None:
        if self._tables_ready:
            return
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
        for table in TABLES:
            conn.execute(table_ddl(self.schema, table))
        for table in base.RETIRED_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {self._table(table)}")
        # Tables made by an earlier version get the columns added since. Old rows kept their whole line in
        # raw_event, so a new column holding a line key is filled from it.
        present = set(
            conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = $schema",
                {"schema": self.schema},
            ).fetchall()
        )
        for table, columns in TABLES.items():
            for column in columns:
                if (table, column.name) in present:
                    continue
                # Old rows may have no value for it: a column added later cannot be NOT NULL.
                conn.execute(
                    f"ALTER TABLE {self._table(table)} ADD COLUMN {column_ddl(column).replace(' NOT NULL', '')}"
                )
                if table == base.PULLS and column.name == "day":
                    conn.execute(f'UPDATE {self._table(table)} SET day = CAST(body."when" AS DATE)')
                if column.name in LINE_KEY_OF_COLUMN and column.type == "STRING" and (table, "raw_event") in present:
                    conn.execute(
                        f"UPDATE {self._table(table)} SET {quote(column.name)} = json_extract_string(raw_event, $path) "
                        "WHERE raw_event IS NOT NULL",
                        {"path": f'$."{LINE_KEY_OF_COLUMN[column.name]}"'},
                    )
        self._tables_ready = True

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
        with self.session(append_only=True) as conn:
            self._ensure_tables(conn)
            done = self._loaded_keys(conn, [o.key for o in unique]) if unique else set()
            todo = [o for o in unique if o.key not in done]
            if todo:
                # Reading fills temp tables only, outside the transaction, so that a statement failing there
                # (DuckDB's CSV reader refusing a file) can be answered by the careful reader.
                quarantined = self._stage_lines(conn, store, todo)
                self._find_replayed_tokens(conn, store)
                conn.execute("BEGIN TRANSACTION")
                try:
                    self._write_rows(conn, self._next_loaded_at(conn), run_id, quarantined)
                    totals = _Totals.read(conn, quarantined)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        return base.LoadResult(
            objects_loaded=len(todo) - len(totals.quarantined),
            objects_skipped=len(unique) - len(todo),
            lines_read=totals.lines,
            pulls_inserted=totals.pulls,
            events_inserted=totals.events,
            duplicates_skipped=totals.duplicates,
            lines_rejected=totals.rejected,
            affected_days=totals.days,
            quarantined=totals.quarantined,
            loaded_duplicate_keys=totals.duplicate_keys,
            loaded_missing_required=totals.missing_required,
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
    def _downloaded(self, store: LandingStore, objects: Sequence[LandedObject]) -> Iterator[_Chunk]:
        """Copies of ``objects`` fetched into a temp dir, deleted afterwards; objects the store lacks are set aside."""
        tmp = Path(tempfile.mkdtemp(prefix="pull-events-load-", dir=self.download_dir))
        try:
            chunk = _Chunk([], [])
            for index, obj in enumerate(objects):
                path = tmp / f"{index:06d}.ndjson"
                try:
                    # Streamed: an object of any size costs one buffer of memory.
                    with store.open_read(obj.key) as source, path.open("wb") as target:
                        shutil.copyfileobj(source, target, 8 * 1024 * 1024)
                        size = target.tell()
                except Exception as exc:
                    if (reason := unreadable_reason(exc)) is None:
                        raise  # a transient failure: the run fails and is retried, nothing is written
                    chunk.quarantined[obj.key] = (reason, f"{type(exc).__name__}: {exc}")
                    path.unlink(missing_ok=True)
                    continue
                chunk.objects.append(obj)
                chunk.paths.append(str(path))
                chunk.sizes.append(size)
            yield chunk
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _chunks(self, store: LandingStore, objects: Sequence[LandedObject]) -> Iterator[AbstractContextManager[_Chunk]]:
        """Groups of objects to read: a store's own files all at once, downloads ``chunk_bytes`` at a time."""
        uris = [store.uri(o.key) for o in objects]
        if all("://" not in uri for uri in uris):
            yield nullcontext(_local_chunk(objects, uris))
            return
        group: list[LandedObject] = []
        size = 0
        for obj in objects:
            if group and size + obj.size > self.chunk_bytes:
                yield self._downloaded(store, group)
                group, size = [], 0
            group.append(obj)
            size += obj.size
        if group:
            yield self._downloaded(store, group)

    def _write_rows(
        self,
        conn: duckdb.DuckDBPyConnection,
        loaded_at: datetime,
        run_id: str,
        quarantined: dict[str, tuple[str, str]],
    ) -> None:
        """Write the staged lines' rows, their objects' ledger entries and the objects set aside (the caller
        holds the transaction)."""
        pulls, events, rejected = self._table(base.PULLS), self._table(base.EVENTS), self._table(base.REJECTED)
        # One row per (kind, source, id): the first copy by (received_at, landing_object, landing_line),
        # unless the key is already in its table. Only the losers are collected (later copies of a key
        # this load repeats, and copies of keys already loaded): they are few, so excluding them is a
        # small anti-join rather than a join of every line with its winner.
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE pe_losers AS
            WITH good AS (
                SELECT is_pull, event_source, event_id, object_id, position, received_at, landing_object,
                    landing_line, CASE WHEN is_pull THEN CAST(body."when" AS DATE) ELSE CAST(event_time AS DATE) END
                    AS day
                FROM pe_lines ANTI JOIN pe_replayed USING (object_id, position) WHERE reason IS NULL
            ), repeated AS (
                SELECT g.* FROM good g
                SEMI JOIN (SELECT is_pull, event_source, event_id FROM good GROUP BY ALL HAVING count(*) > 1) r
                    ON r.is_pull = g.is_pull AND r.event_source = g.event_source AND r.event_id = g.event_id
            )
            SELECT object_id, position FROM repeated
            QUALIFY row_number() OVER (PARTITION BY is_pull, event_source, event_id
                ORDER BY received_at NULLS LAST, landing_object, landing_line, object_id, position) > 1
            UNION
            -- A redelivery carries the same data, so the same body.when (or time): only the rows of the batch's
            -- days can hold a copy, and only their row groups are read.
            SELECT g.object_id, g.position FROM good g
            JOIN {pulls} t ON t.event_source = g.event_source AND t.event_id = g.event_id AND t.day = g.day
            WHERE g.is_pull AND t.day BETWEEN $first_day AND $last_day AND list_contains($days, t.day)
            UNION
            SELECT g.object_id, g.position FROM good g
            JOIN {events} t ON t.event_source = g.event_source AND t.event_id = g.event_id
                AND CAST(t.event_time AS DATE) IS NOT DISTINCT FROM g.day
            WHERE NOT g.is_pull
            """,
            self._batch_days(conn),
        )
        winners = (
            "FROM pe_lines c ANTI JOIN pe_losers l ON l.object_id = c.object_id AND l.position = c.position "
            "ANTI JOIN pe_replayed r ON r.object_id = c.object_id AND r.position = c.position WHERE c.reason IS NULL"
        )
        # Every column of the two tables comes from the staged line's column of the same name, except these.
        computed = {
            "repository": "c.body.repository",
            "day": 'CAST(c.body."when" AS DATE)',
            "data": "c.event_data",
            "loaded_at": "$loaded_at",
        }
        params = {"loaded_at": loaded_at}
        for table, kind in ((base.PULLS, "c.is_pull"), (base.EVENTS, "NOT c.is_pull")):
            names = [column.name for column in TABLES[table]]
            values = ", ".join(computed.get(name, f"c.{quote(name)}") for name in names)
            columns = ", ".join(map(quote, names))
            conn.execute(f"INSERT INTO {self._table(table)} ({columns}) SELECT {values} {winners} AND {kind}", params)
        conn.execute(
            f"""
            INSERT INTO {rejected} (landing_object, landing_line, reason, raw_line, rejected_at, run_id)
            -- Where the load read the line: what a rejected line says of itself is not to be trusted.
            SELECT object_key, position, reason, raw_line, $loaded_at, $run_id
            FROM (
                SELECT k.object_key, c.position, c.reason, c.rejected_line AS raw_line
                FROM pe_lines c JOIN pe_keys k USING (object_id) WHERE c.reason IS NOT NULL
                UNION ALL
                SELECT object_key, position, $replayed, raw_line FROM pe_replayed
            ) c
            WHERE NOT EXISTS (
                SELECT 1 FROM {rejected} r WHERE r.landing_object = c.object_key AND r.landing_line = c.position)
            """,
            {**params, "run_id": run_id, "replayed": base.TOKEN_REPLAYED},
        )
        conn.execute(
            """
            CREATE OR REPLACE TEMP TABLE pe_stats AS
            SELECT f.object_key AS landing_object, count(c.position) AS lines,
                count(*) FILTER (good AND c.is_pull AND l.position IS NULL) AS pulls_inserted,
                count(*) FILTER (good AND NOT c.is_pull AND l.position IS NULL) AS events_inserted,
                count(l.position) AS duplicates_skipped,
                count(*) FILTER (NOT good) AS lines_rejected
            FROM pe_objects f
            LEFT JOIN (
                SELECT c.*, c.reason IS NULL AND r.position IS NULL AS good
                FROM pe_lines c LEFT JOIN pe_replayed r USING (object_id, position)
            ) c USING (object_id)
            LEFT JOIN pe_losers l USING (object_id, position)
            GROUP BY f.object_key
            """,
        )
        _check_accounting(conn)
        # The ledger in the same transaction: an object is "loaded" exactly when all of its rows are.
        conn.execute(
            f"INSERT INTO {self._table(base.LOADED_OBJECTS)} (landing_object, lines, pulls_inserted, "
            "events_inserted, duplicates_skipped, lines_rejected, loaded_at, run_id) "
            "SELECT *, $loaded_at, $run_id FROM pe_stats",
            {"loaded_at": loaded_at, "run_id": run_id},
        )
        self._record_quarantine(conn, quarantined, loaded_at, run_id)
        checks = sql.statements("duckdb", "loaded_rows", pulls=pulls, events=self._table(base.EVENTS))
        conn.execute(checks["days"], params)
        days = [row[0] for row in conn.execute("SELECT day FROM pe_days").fetchall()]
        conn.execute(f"CREATE OR REPLACE TEMP TABLE pe_run_checks AS {checks['figures']}", {**params, **_days(days)})

    def _batch_days(self, conn: duckdb.DuckDBPyConnection) -> dict[str, object]:
        """The days of the batch's good pull lines, as the parameters of a statement that reads only those days."""
        rows = conn.execute(
            'SELECT DISTINCT CAST(body."when" AS DATE) FROM pe_lines WHERE reason IS NULL AND is_pull'
        ).fetchall()
        return _days([row[0] for row in rows if row[0] is not None])

    def _find_replayed_tokens(self, conn: duckdb.DuckDBPyConnection, store: LandingStore) -> None:
        """The temp table ``pe_replayed``: good lines whose token already authorized another event.

        A token authorizes one delivery: the first event it carried (an earlier load's row within
        ``TOKEN_REPLAY_WINDOW``, else this batch's first by receipt) binds it, and any line carrying it with another
        source, id or type is rejected as ``token_replayed``. A genuine redelivery of the same event is a duplicate.
        The few replayed lines' text is read again from their objects for the rejected-events row.
        """
        pulls, events = self._table(base.PULLS), self._table(base.EVENTS)
        loaded = " UNION ALL ".join(
            f"SELECT token_sha256 AS token, event_source, event_id, event_type, received_at FROM {table} "
            "WHERE token_sha256 IN (SELECT token FROM batch) AND received_at >= (SELECT since FROM earliest)"
            for table in (pulls, events)
        )
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE pe_replayed AS
            WITH batch AS (
                SELECT object_id, position, token_sha256 AS token, event_source, event_id, event_type, received_at,
                    landing_object, landing_line
                FROM pe_lines WHERE reason IS NULL AND token_sha256 IS NOT NULL
            ), earliest AS (
                SELECT coalesce(min(received_at) - to_seconds($window), '-infinity'::TIMESTAMPTZ) AS since FROM batch
            ), bound AS (
                SELECT token, event_source, event_id, event_type FROM (
                    SELECT *, 0 AS batch, NULL AS landing_object, NULL AS landing_line, NULL AS object_id,
                        NULL AS position
                    FROM ({loaded})
                    UNION ALL BY NAME
                    SELECT *, 1 AS batch FROM batch
                )
                QUALIFY row_number() OVER (PARTITION BY token
                    ORDER BY batch, received_at NULLS LAST, landing_object, landing_line, object_id, position) = 1
            )
            SELECT b.object_id, b.position, k.object_key, NULL::VARCHAR AS raw_line
            FROM batch b JOIN bound d USING (token) JOIN pe_keys k USING (object_id)
            WHERE b.event_source IS DISTINCT FROM d.event_source OR b.event_id IS DISTINCT FROM d.event_id
                OR b.event_type IS DISTINCT FROM d.event_type
            """,
            {"window": base.TOKEN_REPLAY_WINDOW.total_seconds()},
        )
        replayed = conn.execute("SELECT object_key, list(position) FROM pe_replayed GROUP BY ALL").fetchall()
        for key, positions in replayed:
            log.warning("%s: %d lines carry a token that authorized another event", key, len(positions))
            texts = _line_texts(store, key, set(positions), self.max_line_bytes)
            conn.executemany(
                "UPDATE pe_replayed SET raw_line = $text WHERE object_key = $key AND position = $position",
                [{"text": text, "key": key, "position": position} for position, text in texts.items()],
            )

    def _record_quarantine(
        self,
        conn: duckdb.DuckDBPyConnection,
        quarantined: dict[str, tuple[str, str]],
        at: datetime,
        run_id: str,
    ) -> None:
        """Keep one row per object that could not be read at all; an object this load did read leaves the table."""
        table = self._table(base.QUARANTINED)
        conn.execute(f"DELETE FROM {table} WHERE landing_object IN (SELECT object_key FROM pe_objects)")
        if not quarantined:
            return
        keys = sorted(quarantined)
        conn.execute(f"DELETE FROM {table} WHERE landing_object IN (SELECT unnest($keys))", {"keys": keys})
        conn.execute(
            f"""
            INSERT INTO {table} (landing_object, reason, detail, quarantined_at, run_id)
            SELECT unnest($keys), unnest($reasons), unnest($details), $at, $run_id
            """,
            {
                "keys": keys,
                "reasons": [quarantined[key][0] for key in keys],
                "details": [quarantined[key][1] for key in keys],
                "at": at,
                "run_id": run_id,
            },
        )

    def _stage_lines(
        self, conn: duckdb.DuckDBPyConnection, store: LandingStore, objects: Sequence[LandedObject]
    ) -> dict[str, tuple[str, str]]:
        """The view ``pe_lines``: every non-blank line of ``objects``, parsed, numbered and judged.

        Lines are read by DuckDB's parallel CSV reader and numbered by the ``landing_line`` the receiver
        wrote into each of them. An object whose staged lines do not hold exactly its bytes, numbered 1..n
        (or 1..n with one line too broken to carry its number), and every object of a group the CSV reader
        refuses (a CR, a control character, bytes that are not UTF-8, an overlong line), is read again
        carefully (``lines.read_lines``). Both ways give every line the same row. ``pe_objects`` holds
        each object read, with the number of lines its bytes hold. Returns the objects that could not be
        read at all (key -> reason, detail).
        """
        # Staged lines name their object by a number (pe_keys): a key per line would be copied a million times.
        ids = {obj.key: index for index, obj in enumerate(objects)}
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE pe_keys AS "
            "SELECT unnest($ids::INTEGER[]) AS object_id, unnest($keys::VARCHAR[]) AS object_key",
            {"ids": list(ids.values()), "keys": list(ids)},
        )
        self._classify(conn, "CREATE OR REPLACE TEMP TABLE pe_lines_careful AS", _NO_LINES, [])
        conn.execute("CREATE OR REPLACE TEMP TABLE pe_lines_csv AS FROM pe_lines_careful LIMIT 0")
        conn.execute("CREATE OR REPLACE TEMP TABLE pe_sizes (object_id INTEGER, size BIGINT)")
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE pe_objects "
            "(object_id INTEGER, object_key VARCHAR, careful BOOLEAN, lines BIGINT)"
        )
        quarantined: dict[str, tuple[str, str]] = {}
        for chunk in self._chunks(store, objects):
            with chunk as files:
                quarantined |= files.quarantined
                if files.objects:
                    quarantined |= self._stage_chunk(conn, files, ids)
        for key, (reason, detail) in sorted(quarantined.items()):
            log.warning("%s cannot be read (%s): quarantined, the rest of the batch loads: %s", key, reason, detail)
        # A line names its own landing object only where that differs from the key it was read from.
        conn.execute(
            """
            CREATE OR REPLACE TEMP VIEW pe_lines AS
            SELECT c.* REPLACE (coalesce(c.landing_object, o.object_key) AS landing_object)
            FROM pe_lines_csv c JOIN pe_objects o USING (object_id)
            WHERE NOT o.careful AND NOT c.blank
            UNION ALL
            SELECT w.* REPLACE (coalesce(w.landing_object, o.object_key) AS landing_object)
            FROM pe_lines_careful w JOIN pe_objects o USING (object_id)
            WHERE NOT w.blank
            """
        )
        return quarantined

    def _stage_chunk(
        self, conn: duckdb.DuckDBPyConnection, files: _Chunk, ids: dict[str, int]
    ) -> dict[str, tuple[str, str]]:
        """Stage one chunk's objects: the fast reader first, the careful one for what it does not account for.
        Returns the objects that could not be read after all (gone since the chunk was made: the fast reader then
        refuses the file, and the careful one cannot open it)."""
        located = [(o.key, path) for o, path in zip(files.objects, files.paths, strict=True)]
        conn.execute(
            "INSERT INTO pe_sizes SELECT unnest($ids::INTEGER[]), unnest($sizes::BIGINT[])",
            {"ids": [ids[o.key] for o in files.objects], "sizes": files.sizes},
        )
        # A path with a glob character cannot be handed to DuckDB's file readers, which would expand it.
        careful = [(key, path) for key, path in located if _GLOB.search(path)]
        fast = [(key, path) for key, path in located if not _GLOB.search(path)]
        if fast:
            careful += self._stage_fast(conn, fast, ids)
        return self._stage_carefully(conn, careful, ids) if careful else {}

    def _stage_fast(
        self, conn: duckdb.DuckDBPyConnection, objects: list[tuple[str, str]], ids: dict[str, int]
    ) -> list[tuple[str, str]]:
        """Stage ``(key, path)`` objects with the CSV reader; returns those it does not account for.

        A group the reader refuses is halved until the files it refuses are alone, so one odd object sends only
        itself to the careful reading, not its whole batch.
        """
        keys, paths = [key for key, _ in objects], [path for _, path in objects]
        self._paths(conn, paths, keys, ids)
        try:
            self._classify(conn, "INSERT INTO pe_lines_csv", _LINES_BY_CSV, paths)
        except duckdb.Error as exc:
            if len(objects) == 1:
                log.info("reading %s carefully: %s", keys[0], str(exc).splitlines()[0])
                return objects
            middle = len(objects) // 2
            return self._stage_fast(conn, objects[:middle], ids) + self._stage_fast(conn, objects[middle:], ids)
        conn.execute(_NUMBERING, {"ids": [ids[key] for key in keys]})
        retry = {
            key
            for (key,) in conn.execute(
                "SELECT object_key FROM pe_objects WHERE careful AND object_id IN (SELECT unnest($ids))",
                {"ids": [ids[key] for key in keys]},
            ).fetchall()
        }
        return [(key, path) for key, path in objects if key in retry]

    def _paths(self, conn: duckdb.DuckDBPyConnection, paths: list[str], keys: list[str], ids: dict[str, int]) -> None:
        """The temp table ``pe_paths``: which object each file the fast reader names holds."""
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE pe_paths AS "
            "SELECT unnest($paths::VARCHAR[]) AS path, unnest($ids::INTEGER[]) AS object_id",
            {"paths": paths, "ids": [ids[key] for key in keys]},
        )

    def _stage_carefully(
        self, conn: duckdb.DuckDBPyConnection, objects: list[tuple[str, str]], ids: dict[str, int]
    ) -> dict[str, tuple[str, str]]:
        """Read ``(key, path)`` objects with ``lines.read_lines`` and classify their rows, a slice at a time.

        Returns the objects that could not be opened (gone since they were listed): they leave ``pe_objects``.
        """
        counts: dict[int, int] = {}
        gone: dict[str, tuple[str, str]] = {}
        with tempfile.TemporaryDirectory(prefix="pull-events-lines-", dir=self.download_dir) as tmp:
            staging = _CarefulStaging(Path(tmp), lambda path, longest: self._classify_careful(conn, path, longest))
            for key, path in objects:
                try:
                    stream = open(path, "rb")  # noqa: SIM115 - closed below, after its last line
                except OSError as exc:
                    if (reason := unreadable_reason(exc)) is None:
                        raise
                    gone[key] = (reason, f"{type(exc).__name__}: {exc.strerror or exc}")
                    continue
                with stream:
                    counts[ids[key]] = staging.add(ids[key], read_lines(stream, self.max_line_bytes))
            staging.flush()
        # The careful count replaces whatever the fast reader made of these objects; a gone object leaves.
        read_again = [ids[key] for key, _ in objects]
        conn.execute("DELETE FROM pe_objects WHERE object_id IN (SELECT unnest($ids))", {"ids": read_again})
        conn.execute(
            "INSERT INTO pe_objects SELECT object_id, object_key, true, lines FROM pe_keys "
            "JOIN (SELECT unnest($ids::INTEGER[]) AS object_id, unnest($lines::BIGINT[]) AS lines) USING (object_id)",
            {"ids": list(counts), "lines": list(counts.values())},
        )
        return gone

    def _classify_careful(self, conn: duckdb.DuckDBPyConnection, path: Path, longest: int) -> None:
        # The reader's line limit is the longest row staged, not the largest possible: DuckDB sizes its read
        # buffers from it.
        self._classify(
            conn, "INSERT INTO pe_lines_careful", _LINES_CAREFULLY, [str(path)], max(longest + 1, 2 * 1024 * 1024)
        )

    def _classify(
        self, conn: duckdb.DuckDBPyConnection, into: str, lines: str, paths: list[str], max_row: int | None = None
    ) -> None:
        """Read files' lines with the ``lines`` reader, parse each line once, and judge it by the load rules."""
        held_top, held_pull, held_policy = _held_keys()
        sql = statement(
            "duckdb",
            "classify_lines",
            into=into,
            lines=lines,
            **{f"{key}_text": _string_value(f"p.{quote(key)}") for key in _ATTRIBUTE_TEXTS},
            undecided=_undecided(),
            reason=reason_case(_breaks, "NOT is_pull"),
            held_top=held_top,
            held_pull=held_pull,
            held_policy=held_policy,
            received_at=_RECEIVED_AT,
            body_type=duckdb_type(PULL_BODY),
        )
        conn.execute(
            sql,
            {
                **({"paths": paths} if "$paths" in lines else {}),
                **({"max_staged_row": max_row} if "$max_staged_row" in lines else {}),
                "max_line": self.max_line_bytes,
                "prefix": PREFIX_BYTES,
                "blank": " \t\r\n",
                "type_paths": list(_TYPE_PATHS),
                "structure": _LINE_STRUCTURE,
                "policy_structure": _POLICY_RESULTS_STRUCTURE,
                "pull_key_paths": _PULL_KEY_PATHS,
                "policy_path": "$." + ".".join(_POLICIES) + "[*]",
                "pull_type": base.PULL_TYPE,
                "civil": CIVIL_DATETIME,
            },
        )

    def pull_days(self) -> list[date]:
        with self.session() as conn:
            self._ensure_tables(conn)
            rows = conn.execute(f"SELECT DISTINCT day FROM {self._table(base.PULLS)} WHERE day IS NOT NULL").fetchall()
        return sorted(row[0] for row in rows)

    def _derived_tables(self) -> dict[str, str]:
        """The ``{{placeholders}}`` of the derived layer's SQL: its tables' qualified names."""
        return {placeholder: self._table(table) for placeholder, table in base.SQL_TABLES.items()}

    def _statements(self, name: str) -> dict[str, str]:
        return sql.statements_from("duckdb", name, self._derived_tables())

    def refresh_daily_pulls(self, days: Sequence[date]) -> base.DailyRefresh:
        statements = self._statements("refresh_daily_pulls")
        params = _days(days)
        with self.session() as conn:
            self._ensure_tables(conn)
            conn.execute("BEGIN TRANSACTION")
            try:
                for name, statement in statements.items():
                    if name != "rows_per_day":
                        conn.execute(statement, _used(statement, params))
                rows_per_day = dict.fromkeys(params["days"], 0) | dict(
                    conn.execute(statements["rows_per_day"]).fetchall()
                )
                marked = conn.execute(
                    f"SELECT count(DISTINCT repository) FROM {self._table(base.SUMMARY_PENDING)}"
                ).fetchone()[0]
                table_rows = conn.execute(f"SELECT count(*) FROM {self._table(base.DAILY_PULLS)}").fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return base.DailyRefresh(
            days=sorted(params["days"]),
            rows_per_day={day: int(count) for day, count in sorted(rows_per_day.items())},
            repositories_marked=int(marked),
            table_rows=int(table_rows),
        )

    def refresh_repository_summary(self) -> base.SummaryRefresh:
        statements = self._statements("refresh_repository_summary")
        summary = self._table(base.REPOSITORY_SUMMARY)
        with self.session() as conn:
            self._ensure_tables(conn)
            conn.execute("BEGIN TRANSACTION")
            try:
                # now() is the transaction's start: the computed_at of every row written here.
                clock, last = conn.execute(f"SELECT now(), (SELECT max(computed_at) FROM {summary})").fetchone()
                if self.clock is not None:
                    clock = self.clock()
                window = base.summary_window(clock, last, self.future_tolerance)
                parameters = {**window.parameters(), "computed_at": clock}
                for name, statement in statements.items():
                    if name != "recomputed":
                        conn.execute(statement, _used(statement, parameters))
                recomputed = conn.execute(statements["recomputed"]).fetchone()[0]
                table_rows = conn.execute(f"SELECT count(*) FROM {summary}").fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return base.SummaryRefresh(
            repositories_recomputed=int(recomputed),
            day_turned=window.day_turned,
            table_rows=int(table_rows),
            computed_at=clock,
        )

    def daily_preview(self, days: Sequence[date], top: int = base.PREVIEW_REPOSITORIES) -> base.DailyPreview:
        statements = self._statements("preview")
        params = {**_days(days), "top": top}
        with self.session() as conn:
            self._ensure_tables(conn)
            totals = conn.execute(statements["day_totals"], _used(statements["day_totals"], params)).fetchall()
            ranked = conn.execute(statements["day_top"], _used(statements["day_top"], params)).fetchall()
        return base.daily_preview_from_rows(params["days"], totals, ranked)

    def summary_preview(self, top: int = base.PREVIEW_REPOSITORIES) -> base.SummaryPreview:
        statements = self._statements("preview")
        with self.session() as conn:
            self._ensure_tables(conn)
            repositories, image_pulls, events, errors = conn.execute(statements["summary_totals"]).fetchone()
            ranked = conn.execute(statements["summary_top"], {"top": top}).fetchall()
        return base.SummaryPreview(
            repositories=int(repositories),
            image_pulls=int(image_pulls),
            events=int(events),
            errors=int(errors),
            top_repositories=base.ranked_repositories(ranked),
        )

    def summary_audit(self) -> base.SummaryAudit:
        statement = self._statements("summary_audit")["differences"]
        with self.session() as conn:
            self._ensure_tables(conn)
            as_of = conn.execute(f"SELECT max(computed_at) FROM {self._table(base.REPOSITORY_SUMMARY)}").fetchone()[0]
            compared, differing, examples = conn.execute(
                statement,
                {"as_of": as_of, "tolerance": self.future_tolerance, "examples": base.SUMMARY_AUDIT_EXAMPLES},
            ).fetchone()
        return base.SummaryAudit(
            rows_compared=int(compared), rows_differing=int(differing), examples=list(examples or []), as_of=as_of
        )

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
            pull_rows, with_raw = conn.execute(f"SELECT count(*), count(raw_event) FROM {pulls}").fetchone()
            # The keys without a column, named by where they sit: the ones to give a column if they come often.
            levels = known_keys()
            per_level = " UNION ALL ".join(
                f"SELECT $prefix{n} || key AS key "
                f"FROM (SELECT unnest(json_keys(raw_event, $path{n})) AS key FROM sample) "
                f"WHERE NOT list_contains($known{n}, key)"
                for n in range(len(levels))
            )
            parameters: dict[str, object] = {"n": KEY_SAMPLE_ROWS}
            for n, (path, known) in enumerate(levels):
                parameters |= {
                    f"prefix{n}": "".join(f"{key}." for key in path),
                    f"path{n}": "$" + "".join(f".{quote(key)}" for key in path),
                    f"known{n}": list(known),
                }
            keys = conn.execute(
                f"""
                WITH sample AS (
                    SELECT raw_event FROM {pulls} WHERE raw_event IS NOT NULL ORDER BY loaded_at DESC LIMIT $n
                )
                SELECT key, count(*) FROM ({per_level}) GROUP BY key ORDER BY count(*) DESC, key LIMIT 10
                """,
                parameters,
            ).fetchall()
            # Pulls dated beyond the warehouse's clock plus the tolerance, the farthest ahead named first.
            future = conn.execute(
                f"""
                SELECT count(*) OVER (), event_source, event_id, repository, body."when" FROM {pulls}
                WHERE body."when" > CAST(now() AS TIMESTAMP) + $tolerance
                ORDER BY body."when" DESC, event_source, event_id LIMIT $n
                """,
                {"tolerance": self.future_tolerance, "n": base.FUTURE_DATED_EXAMPLES},
            ).fetchall()
            reasons = conn.execute(
                sql.statements("duckdb", "rejected_reasons", rejected=self._table(base.REJECTED))["reasons"],
                {"n": base.REJECTED_REASON_EXAMPLES},
            ).fetchall()
        duplicate_keys, missing, landed, accounted, rejected = (int(v) for v in row)
        return base.CheckFigures(
            duplicate_keys=duplicate_keys,
            missing_required=missing,
            landed_lines=landed,
            accounted_lines=accounted,
            rejected_lines=rejected,
            total_lines=landed,
            pull_rows=int(pull_rows),
            rows_with_raw_event=int(with_raw),
            keys_without_column={key: int(count) for key, count in keys},
            future_dated_pulls=int(future[0][0]) if future else 0,
            future_dated_examples=[base.FutureDatedPull(*example) for _, *example in future],
            rejected_reasons={str(reason): int(count) for reason, count in reasons},
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
        self._tables_ready = False
        with self.session() as conn:
            for table in TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {self._table(table)}")

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Run a read-only query (for checks and tests) and return its rows."""
        with self.session() as conn:
            return conn.execute(sql, parameters or {}).fetchall()

    # -- a rebuild's shadow copy: the schema <schema>__rebuild in the same file ----------------------

    def shadow(self) -> DuckDBWarehouse:
        self.drop_shadow()
        shadow = copy.copy(self)  # every setting of this warehouse, on another schema
        shadow.schema = self.schema + base.SHADOW_SUFFIX
        shadow._tables_ready = False
        return shadow

    def swap_in(self, shadow: base.Warehouse) -> None:
        """Replace every table by the shadow's, in one transaction.

        DuckDB can neither move a table to another schema nor rename a schema, so each table is dropped,
        created again and filled from the shadow's table, all in one transaction (DDL is transactional in
        DuckDB): a failure anywhere rolls every table back. The old rows' space is reused after the checkpoint.
        """
        if not isinstance(shadow, DuckDBWarehouse) or shadow._connect is not self._connect or shadow is self:
            raise ValueError("swap_in takes this warehouse's shadow (see shadow())")
        with self.session() as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
            conn.execute("BEGIN TRANSACTION")
            try:
                for table, columns in TABLES.items():
                    names = ", ".join(quote(column.name) for column in columns)
                    conn.execute(f"DROP TABLE IF EXISTS {self._table(table)}")
                    conn.execute(table_ddl(self.schema, table))
                    conn.execute(
                        f"INSERT INTO {self._table(table)} ({names}) SELECT {names} FROM {shadow._table(table)}"
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def drop_shadow(self) -> None:
        with self.session() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {quote(self.schema + base.SHADOW_SUFFIX)} CASCADE")


@dataclass
class _Totals:
    lines: int = 0
    pulls: int = 0
    events: int = 0
    duplicates: int = 0
    rejected: int = 0
    days: list[date] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)
    duplicate_keys: int = 0
    missing_required: int = 0

    @classmethod
    def read(cls, conn: duckdb.DuckDBPyConnection, quarantined: dict[str, tuple[str, str]]) -> _Totals:
        row = conn.execute(
            "SELECT coalesce(sum(lines), 0), coalesce(sum(pulls_inserted), 0), coalesce(sum(events_inserted), 0), "
            "coalesce(sum(duplicates_skipped), 0), coalesce(sum(lines_rejected), 0) FROM pe_stats"
        ).fetchone()
        days = [r[0] for r in conn.execute("SELECT DISTINCT day FROM pe_days ORDER BY day").fetchall()]
        duplicate_keys, missing_required = conn.execute("SELECT * FROM pe_run_checks").fetchone()
        return cls(
            *(int(v) for v in row),
            days=days,
            quarantined={k: reason for k, (reason, _) in quarantined.items()},
            duplicate_keys=int(duplicate_keys),
            missing_required=int(missing_required),
        )


def _used(statement: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The ``parameters`` a statement names (DuckDB refuses a named parameter the statement does not use)."""
    return {name: value for name, value in parameters.items() if re.search(rf"\${name}\b", statement)}


def _days(days: Sequence[date]) -> dict[str, Any]:
    """The parameters ``$days``, ``$first_day`` and ``$last_day`` of a statement that reads only ``days``.

    The range lets zone maps skip the row groups of other days; the list keeps the days in it exactly.
    """
    ordered = sorted(days)
    return {"days": ordered, "first_day": ordered[0] if ordered else None, "last_day": ordered[-1] if ordered else None}


def _check_accounting(conn: duckdb.DuckDBPyConnection) -> None:
    """Fail the load unless every object's lines, counted from its bytes, are each a row, a duplicate or rejected."""
    unbalanced = conn.execute(
        """
        SELECT o.object_key, o.lines, s.lines, s.pulls_inserted + s.events_inserted + s.duplicates_skipped
            + s.lines_rejected
        FROM pe_objects o JOIN pe_stats s ON s.landing_object = o.object_key
        WHERE o.lines IS DISTINCT FROM s.lines
            OR s.lines <> s.pulls_inserted + s.events_inserted + s.duplicates_skipped + s.lines_rejected
        ORDER BY o.object_key LIMIT 5
        """
    ).fetchall()
    if unbalanced:
        key, counted, staged, outcomes = unbalanced[0]
        raise LoadAccountingError(
            f"{len(unbalanced)}+ objects not accounted for, e.g. {key}: {counted} lines in its bytes, {staged} staged, "
            f"{outcomes} rows + duplicates + rejected; nothing of this load is written"
        )


def _line_texts(store: LandingStore, key: str, positions: set[int], max_line_bytes: int) -> dict[int, str]:
    """The text of the lines of ``key`` at ``positions``, read again from the store."""
    with store.open_read(key) as stream:
        return {line.position: line.text for line in read_lines(stream, max_line_bytes) if line.position in positions}


def _regular_file_size(path: str) -> int:
    """The size of ``path``; raises unless it opens as a regular file: without blocking (a FIFO named like an object
    would hold the load for ever) and readable."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
        return info.st_size
    finally:
        os.close(fd)


def _local_chunk(objects: Sequence[LandedObject], paths: Sequence[str]) -> _Chunk:
    """A store's own files as one chunk; a file that is gone or cannot be opened is set aside."""
    chunk = _Chunk([], [])
    for obj, path in zip(objects, paths, strict=True):
        try:
            size = _regular_file_size(path)
        except OSError as exc:
            reason = unreadable_reason(exc)
            if reason is None:
                raise
            chunk.quarantined[obj.key] = (reason, f"{type(exc).__name__}: {exc.strerror or exc}")
            continue
        chunk.objects.append(obj)
        chunk.paths.append(path)
        chunk.sizes.append(size)
    return chunk


def _is_lock_error(exc: BaseException) -> bool:
    message = str(exc).lower()
    return any(marker in message for marker in _LOCK_ERROR_MARKERS)


def _lock_holder(exc: BaseException) -> str | None:
    """The process holding the file, as DuckDB's lock error names it: 'PID 1234 (/usr/bin/python3)'."""
    match = _LOCK_HOLDER.search(str(exc))
    return f"PID {match[2]} ({match[1]})" if match else None


def _close_quietly(conn: duckdb.DuckDBPyConnection) -> None:
    with suppress(duckdb.Error):
        conn.close()
