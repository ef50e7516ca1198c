"""The warehouse in BigQuery: load jobs from gs:// into a staging table, then set-based SQL.

A load of a batch of landing objects is:

1. ONE load job from the objects' gs:// URIs into a new per-run staging table with a single STRING
   column. The job reads the NDJSON objects as CSV whose field delimiter is U+001F (a control
   character, which JSON text can only carry escaped) and whose quote character is empty, so every line,
   broken or not, arrives whole as one string; ``max_bad_records`` lets the rare row the reader cannot
   take (a raw U+001F in a corrupt line) be skipped and counted instead of failing the batch. A job that
   fails because an object is gone is run again without it; the object goes to ``quarantined_objects``.
2. Accounting (``objects_to_read_carefully``): an object whose staged lines, placed by the lineage keys the
   receiver writes first on every line, hold exactly its bytes, are all JSON and number themselves 1..n is
   trusted; any other object (and every object when a row was skipped or names no object of the batch) is
   read carefully: streamed through the landing store and split in Python (``lines.read_lines``) into a
   second staging table with the loader's object and position. Receiver objects never need it, so on the
   usual path no line passes through Python.
3. One multi-statement script that parses and classifies every staged line (``SAFE.PARSE_JSON``,
   ``JSON_VALUE``, ``SAFE_CAST``: the rules of the shared load semantics, first failing rule wins), finds the
   day partitions the batch touches, MERGEs valid pulls and other events into their tables on
   ``(event_source, event_id)`` within those days (a redelivery carries the same ``body.when`` / ``time``) with
   explicit column lists, inserts rejected lines where they were read, and returns what each object's lines
   became. Every statement filters each table it reads on its partitioning column (``LAYOUT``), so a load
   reads the partitions its batch touches, not the history (docs/bigquery.md, "What a load reads").
4. Every object must balance (lines counted from its bytes = inserted + duplicates + rejected) before its
   ledger row is written, LAST; else ``LoadAccountingError`` and the object stays unrecorded. Then the
   per-load check figures (``sql/bigquery/loaded_rows.sql``).
5. The staging tables are dropped (they also expire by themselves if the process dies first).

Quota: BigQuery allows 1,500 load jobs per table per day. Every load job here writes a fresh staging
table, never the pull table, and rows reach the pull table through DML (MERGE), which has no per-table
daily quota. The only count that grows with traffic is load jobs per project (100,000 a day): one per
batch of up to hundreds of objects, i.e. at one batch per 30-second sensor tick under 3,000 a day.

Steps are idempotent rather than one transaction: a MERGE skips keys already present, rejected lines are
recorded once per (object, line), and the ledger comes last, so a crash anywhere means the objects are loaded
again and nothing is duplicated. A transaction would make concurrent runs abort each other: BigQuery fails
the later of two transactions that change the same table. The derived-table refreshes (``sql/bigquery/``,
beside the DuckDB versions) do use transactions, so readers never see a day deleted but not yet re-inserted.

Every workaround for a gap of the test emulator (bqemulator 1.4.0) is also plain, correct BigQuery; the
list is in ``docs/bigquery.md``. In short: only ``object`` / ``array`` / ``null`` answers of ``JSON_TYPE``
are used, scalars are typed by the text of ``TO_JSON_STRING(JSON_QUERY(...))``; timestamps are normalised
with ``REGEXP_REPLACE`` and ``SAFE_CAST`` rather than ``PARSE_TIMESTAMP('%E*S')``; every STRUCT field is
aliased; MERGE lists its columns; scripts take their values as ``DECLARE``d variables (the emulator ignores
query parameters in scripts) and name their temporary tables uniquely (it keeps them after the script).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.api_core.retry import Retry
from google.cloud import bigquery
from google.cloud.bigquery import DEFAULT_RETRY
from google.cloud.exceptions import NotFound

from pull_events.landing import LandedObject, LandingStore, key_committed_at
from pull_events.settings import DEFAULT_MAX_LINE_BYTES
from pull_events_dagster.warehouse import base, sql
from pull_events_dagster.warehouse.lines import (
    OBJECT_MISSING,
    PREFIX_BYTES,
    read_lines,
    staging_row,
    unreadable_reason,
)
from pull_events_dagster.warehouse.rules import (
    CIVIL_DATETIME,
    NotA,
    NotJsonObject,
    NotUtf8,
    Predicate,
    TooLong,
    reason_case,
)
from pull_events_dagster.warehouse.schema import (
    ACTOR,
    ENVELOPE,
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

log = logging.getLogger(__name__)

STAGING_PREFIX = "_staging_load_"
# The careful reading's staging rows (see lines.py): object offset in the load's keys, position, problem, base64.
CAREFUL_SCHEMA = (
    bigquery.SchemaField("object_id", "INT64"),
    bigquery.SchemaField("position", "INT64"),
    bigquery.SchemaField("problem", "STRING"),
    bigquery.SchemaField("text", "STRING"),
)
# The receiver writes landing_object and landing_line first: a broken line usually still has them.
_OWN_OBJECT = r'^\s*\{\s*"landing_object"\s*:\s*"([^"\\]*)"'
_OWN_LINE = r'^\s*\{\s*"landing_object"\s*:\s*"[^"\\]*"\s*,\s*"landing_line"\s*:\s*([0-9]+)'
# U+001F (unit separator): valid JSON text can only hold it escaped, so it never splits a good line.
FIELD_DELIMITER = "\x1f"
MAX_SOURCE_URIS = 10_000  # BigQuery's limit of source URIs per load job

# (partition column, clustering columns) per table; day partitions. Every statement of a load filters each table
# on its partitioning column, so a load reads the partitions its batch touches, not the tables' history
# (docs/bigquery.md, "What a load reads").
LAYOUT: dict[str, tuple[str | None, tuple[str, ...]]] = {
    base.PULLS: ("day", ("repository", "event_source", "event_id")),
    base.EVENTS: ("event_time", ("event_type",)),
    base.DAILY_PULLS: ("day", ("repository",)),
    base.DAILY_VALUES: ("day", ("repository",)),
    base.REPOSITORY_VALUES: (None, ("repository",)),
    # An object is loaded, and its lines rejected, after it landed: its key's time bounds the look-ups.
    base.REJECTED: ("rejected_at", ("landing_object",)),
    base.LOADED_OBJECTS: ("loaded_at", ("landing_object",)),
}
# BigQuery cannot re-partition a table in place: a table laid out otherwise (by an earlier version) is recreated
# through a copy of this name by a rebuild (swap_in); ensure_tables finishes a recreation that was cut short.
RELAYOUT_SUFFIX = "__relayout"
# How far the receivers' clocks may run ahead of BigQuery's: an object's rows are looked for in the ledger and the
# rejected lines from this long before the time its key names (earliest_load).
LANDING_CLOCK_MARGIN = timedelta(days=1)

# The partitions a load's statements read, found by its script once the staged lines are judged (_BATCH_PARTITIONS):
# the pull table's days (of body.when) and the events table's days of time (or its NULL partition). Each filter
# gives the span, which prunes for certain, and the exact days.
_PULL_DAYS = "{t}.day BETWEEN v_batch.first_day AND v_batch.last_day AND {t}.day IN UNNEST(v_batch.days)"
_EVENT_DAYS = (
    "({t}.event_time >= TIMESTAMP(v_batch.first_event_day)"
    " AND {t}.event_time < TIMESTAMP_ADD(TIMESTAMP(v_batch.last_event_day), INTERVAL 1 DAY)"
    " AND DATE({t}.event_time) IN UNNEST(v_batch.event_days) OR {t}.event_time IS NULL AND v_batch.null_event_day)"
)
_BATCH_TYPE = (
    "STRUCT<days ARRAY<DATE>, first_day DATE, last_day DATE, event_days ARRAY<DATE>, first_event_day DATE, "
    "last_event_day DATE, null_event_day BOOL, token_day DATE>"
)
# One statement (each statement of a script is a job of its own); a script variable, so that the filters using it
# are constants BigQuery prunes partitions by. token_day: see the token look-up in _outcomes.
_BATCH_PARTITIONS = """SET v_batch = (SELECT AS STRUCT
  (SELECT ARRAY_AGG(DISTINCT day) FROM {lines} WHERE reason IS NULL AND is_pull) AS days,
  (SELECT MIN(day) FROM {lines} WHERE reason IS NULL AND is_pull) AS first_day,
  (SELECT MAX(day) FROM {lines} WHERE reason IS NULL AND is_pull) AS last_day,
  (SELECT ARRAY_AGG(DISTINCT day) FROM {lines} WHERE reason IS NULL AND NOT is_pull AND day IS NOT NULL) AS event_days,
  (SELECT MIN(day) FROM {lines} WHERE reason IS NULL AND NOT is_pull) AS first_event_day,
  (SELECT MAX(day) FROM {lines} WHERE reason IS NULL AND NOT is_pull) AS last_event_day,
  (SELECT LOGICAL_OR(day IS NULL) FROM {lines} WHERE reason IS NULL AND NOT is_pull) AS null_event_day,
  (SELECT DATE_SUB(DATE(TIMESTAMP_SUB(MIN(received_at), INTERVAL v_token_window SECOND)), INTERVAL 1 DAY)
   FROM {lines} WHERE reason IS NULL AND token_sha256 IS NOT NULL) AS token_day);"""
# What each object's lines became (checked against its bytes' count before its ledger row is written), and the
# partitions its new rows went to (for the per-load checks).
_OBJECT_FIGURES = """
SELECT k AS landing_object, COUNT(l.outcome) AS lines,
  COUNTIF(l.outcome = 'pull') AS pulls, COUNTIF(l.outcome = 'event') AS events,
  COUNTIF(l.outcome = 'duplicate') AS duplicates, COUNTIF(l.outcome = 'rejected') AS rejected,
  STRING_AGG(DISTINCT IF(l.outcome = 'pull', CAST(l.day AS STRING), NULL), ',') AS days,
  STRING_AGG(DISTINCT IF(l.outcome = 'event', CAST(l.day AS STRING), NULL), ',') AS event_days,
  IFNULL(LOGICAL_OR(l.outcome = 'event' AND l.day IS NULL), FALSE) AS null_event_day
FROM UNNEST(v_keys) AS k
LEFT JOIN (SELECT object_key, day, outcome FROM {lines} JOIN {outcomes} USING (line_id)) l ON l.object_key = k
GROUP BY k;"""

_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def schema_field(column: Column) -> bigquery.SchemaField:
    """The BigQuery field of one ``schema.py`` column (RECORDs recursively)."""
    return bigquery.SchemaField(
        column.name,
        column.type,
        mode=column.mode,
        description=column.description or None,
        fields=[schema_field(f) for f in column.fields],
    )


def table_schema(table: str) -> list[bigquery.SchemaField]:
    """The BigQuery schema of one table of ``schema.py``."""
    return [schema_field(c) for c in TABLES[table]]


def sql_type(field: bigquery.SchemaField) -> str:
    """A field's GoogleSQL type, e.g. ``ARRAY<STRUCT<tag STRING, image_pulls INT64>>``."""
    if field.field_type in ("RECORD", "STRUCT"):
        rendered = "STRUCT<" + ", ".join(f"{f.name} {sql_type(f)}" for f in field.fields) + ">"
    else:
        rendered = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}.get(field.field_type, field.field_type)
    return f"ARRAY<{rendered}>" if field.mode == "REPEATED" else rendered


def ident(name: str) -> str:
    """A quoted identifier (``when`` is reserved, ``aws-arn`` has a hyphen)."""
    return f"`{name}`"


def json_path(keys: Iterable[str]) -> str:
    """A JSONPath string literal; keys that are not plain identifiers are double-quoted."""
    parts = "".join(f".{k}" if _SIMPLE_KEY.match(k) else f'."{k}"' for k in keys)
    return f"'${parts}'"


def json_type(json_expr: str, keys: Sequence[str]) -> str:
    """``JSON_TYPE`` of a member, ``'null'`` when absent. Compared only with object / array / null."""
    return f"IFNULL(JSON_TYPE(JSON_QUERY({json_expr}, {json_path(keys)})), 'null')"


def json_text(json_expr: str, keys: Sequence[str]) -> str:
    """A member as text: a scalar's value, an object's or array's JSON text, NULL when absent or null."""
    path = json_path(keys)
    query = f"JSON_QUERY({json_expr}, {path})"
    return (
        f"COALESCE(JSON_VALUE({json_expr}, {path}), "
        f"IF(JSON_TYPE({query}) IN ('object', 'array'), TO_JSON_STRING({query}), NULL))"
    )


def timestamp_from_text(text_expr: str) -> str:
    """An RFC 3339 text as TIMESTAMP (NULL when it is not one); nanoseconds are cut to microseconds."""
    trimmed = (
        rf"REGEXP_REPLACE({text_expr}, r'^(\d{{4}}-\d{{1,2}}-\d{{1,2}})[T ]"
        rf"(\d{{1,2}}:\d{{1,2}}:\d{{1,2}}(?:\.\d{{1,6}})?)\d*', r'\1 \2')"
    )
    return rf"SAFE_CAST(REGEXP_REPLACE({trimmed}, r'Z$', '+00:00') AS TIMESTAMP)"


def _not_a(check: NotA, o: str) -> str:
    """SQL: the value at the check's path of the line ``o`` is not of its kind (absent or null is none)."""
    path = json_path(check.keys)
    scalar = f"TO_JSON_STRING(JSON_QUERY({o}, {path}))"  # a scalar's JSON text: its first character tells its type
    text = json_text(o, check.keys)
    match check.kind:
        case "value":
            return f"{json_type(o, check.keys)} = 'null'"
        case "non-empty string":
            return f"(NOT IFNULL(STARTS_WITH({scalar}, '\"'), FALSE) OR JSON_VALUE({o}, {path}) = '')"
        case "timestamp":
            return f"{timestamp_from_text(text)} IS NULL"
        case "civil datetime":
            return (
                f"(NOT IFNULL(REGEXP_CONTAINS({text}, r'{CIVIL_DATETIME}'), FALSE) "
                f"OR SAFE_CAST({text} AS DATETIME) IS NULL)"
            )
        case "integer":
            return (
                f"(NOT IFNULL(REGEXP_CONTAINS({scalar}, r'^-?[0-9]+$'), FALSE) "
                f"OR SAFE_CAST(JSON_VALUE({o}, {path}) AS INT64) IS NULL)"
            )
        case "object" | "array":
            return f"{json_type(o, check.keys)} != '{check.kind}'"
    raise ValueError(f"no BigQuery rendering of a {check.kind}")


def _breaks(predicate: Predicate, o: str) -> str:
    """SQL: a line (``line`` as read, ``problem`` as the careful reader named it, ``o`` its JSON object) breaks
    a rejection rule's predicate (rules.py)."""
    match predicate:
        case NotUtf8():
            return f"problem = '{predicate.problem}'"
        case TooLong():
            return f"(problem = '{predicate.problem}' OR BYTE_LENGTH(line) > v_max_line)"
        case NotJsonObject():
            return f"{o} IS NULL"
        case NotA(optional=True):
            return f"{json_type(o, predicate.keys)} != 'null' AND {_not_a(predicate, o)}"
        case NotA():
            return _not_a(predicate, o)
    raise TypeError(f"no BigQuery rendering of {predicate!r}")


def column_value(column: Column, json_expr: str, keys: Sequence[str]) -> str:
    """SQL reading one schema column out of a JSON value at ``keys``, shaped like the column."""
    if column.type == "RECORD" and column.mode == "REPEATED":
        fields = ", ".join(f"{column_value(f, 'e', (f.name,))} AS {ident(f.name)}" for f in column.fields)
        return (
            f"ARRAY(SELECT STRUCT({fields}) FROM UNNEST(JSON_QUERY_ARRAY({json_expr}, {json_path(keys)})) AS e "
            "WITH OFFSET AS i ORDER BY i)"
        )
    if column.type == "RECORD":
        # Present and not null gives a STRUCT (of NULLs when it is not an object), as DuckDB's from_json does.
        fields = ", ".join(f"{column_value(f, json_expr, (*keys, f.name))} AS {ident(f.name)}" for f in column.fields)
        return f"IF({json_type(json_expr, keys)} != 'null', STRUCT({fields}), NULL)"
    if column.type == "STRING":
        return json_text(json_expr, keys)
    if column.type == "JSON":
        return f"JSON_QUERY({json_expr}, {json_path(keys)})"
    if column.type == "TIMESTAMP":
        return timestamp_from_text(json_text(json_expr, keys))
    return f"SAFE_CAST(JSON_VALUE({json_expr}, {json_path(keys)}) AS {column.type})"


def _held(json_expr: str, keys: Sequence[str], column: Column) -> str:
    """SQL: whether the line's member at ``keys`` is held by its column (``schema.held_leaves``, as DuckDB)."""
    return "(" + " OR ".join(f"{json_type(json_expr, (*keys, *leaf))} != 'null'" for leaf in held_leaves(column)) + ")"


def _count(conditions: Iterable[str]) -> str:
    return " + ".join(f"IF({condition}, 1, 0)" for condition in conditions)


def _key_count(json_expr: str) -> str:
    """SQL: how many keys an object has (0 when it is not one)."""
    return f"IF(JSON_TYPE({json_expr}) = 'object', ARRAY_LENGTH(JSON_KEYS({json_expr}, 1)), 0)"


def keeps_raw_event(o: str, is_pull: bool) -> str:
    """SQL: whether a good line keeps its text in raw_event: it has more keys than its columns hold.

    Keys are counted at the top level and, for a pull, in every object of its data that columns hold key by
    key (and each policy result, a non-object one counting as a key no column holds).
    """
    # Held means its column has it: a received_at or landing_line of the wrong kind would be NULL there.
    typed = {
        "received_at": f"{timestamp_from_text(json_text(o, ('received_at',)))} IS NOT NULL",
        "landing_line": f"SAFE_CAST(JSON_VALUE({o}, '$.landing_line') AS INT64) IS NOT NULL",
    }
    top_held = _count(typed.get(key, f"{json_type(o, (key,))} != 'null'") for key in TOP_LEVEL_KEYS)
    top = f"{_key_count(o)} > {top_held}"
    if not is_pull:
        return f"({top})"
    objects = nested_records(PULL_DATA, ("data",))
    pull_keys = " + ".join(_key_count(f"JSON_QUERY({o}, {json_path(path)})") for path, _ in objects)
    pull_held = " + ".join(_count(_held(o, (*path, f.name), f) for f in column.fields) for path, column in objects)
    policies = ("data", "body", "policy_results")
    policy_keys = "IF(JSON_TYPE(e) = 'object', ARRAY_LENGTH(JSON_KEYS(e, 1)), 1)"
    policy_held = _count(_held("e", (f.name,), f) for f in POLICY_RESULTS.fields)
    return (
        f"({top} OR {pull_keys} > {pull_held} OR IFNULL((SELECT SUM({policy_keys}) - SUM({policy_held}) "
        f"FROM UNNEST(JSON_QUERY_ARRAY({o}, {json_path(policies)})) AS e), 0) > 0)"
    )


def sql_literal(value: object, kind: str = "") -> str:
    """A GoogleSQL literal of a string, integer, boolean, timestamp, date, list or NULL.

    A list is an array of ``kind`` (``ARRAY<DATE>``; strings when no kind is given), so that an empty one has a type.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f'TIMESTAMP "{value.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}+00:00"'
    if isinstance(value, date):
        return f'DATE "{value.isoformat()}"'
    if isinstance(value, str):
        # Every escape JSON writes (quote, backslash, control characters as \uXXXX) means the same in GoogleSQL.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        element = kind[len("ARRAY<") : -1] if kind.startswith("ARRAY<") else "STRING"
        items = (sql_literal(str(v) if element == "STRING" else v, element) for v in value)
        return f"ARRAY<{element}>[" + ", ".join(items) + "]"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def _own_lineage(line: str, o: str) -> str:
    """SQL: ``own_object`` and ``own_line``, the lineage a line names itself (read from its start when broken)."""
    return (
        f"IF({o} IS NULL, REGEXP_EXTRACT({line}, r'{_OWN_OBJECT}'), JSON_VALUE({o}, '$.landing_object')) "
        "AS own_object, "
        f"SAFE_CAST(IF({o} IS NULL, REGEXP_EXTRACT({line}, r'{_OWN_LINE}'), JSON_VALUE({o}, '$.landing_line')) "
        "AS INT64) AS own_line"
    )


# Ledger columns and the per-object figures of the merge script they come from.
_LEDGER_FIELDS = (
    ("lines", "lines"),
    ("pulls", "pulls_inserted"),
    ("events", "events_inserted"),
    ("duplicates", "duplicates_skipped"),
    ("rejected", "lines_rejected"),
)


class LoadAccountingError(RuntimeError):
    """A load could not account for every line of an object: its ledger row is not written."""


def _check_accounting(stats: dict[str, Any], counts: dict[str, int]) -> None:
    """Fail unless every object's lines, counted from its bytes, are each a row, a duplicate or rejected."""
    for key, row in sorted(stats.items()):
        outcomes = row["pulls"] + row["events"] + row["duplicates"] + row["rejected"]
        if counts.get(key) != row["lines"] or row["lines"] != outcomes:
            raise LoadAccountingError(
                f"{key}: {counts.get(key)} lines in its bytes, {row['lines']} staged, {outcomes} rows + duplicates "
                "+ rejected; its ledger row is not written and the next load reads it again"
            )


def _days_of(stats: dict[str, Any], column: str) -> list[date]:
    """The days listed (comma-separated) in one column of the merge script's per-object figures."""
    return sorted({date.fromisoformat(day) for row in stats.values() for day in (row[column] or "").split(",") if day})


def script_variables(**variables: tuple[str, object]) -> str:
    """``DECLARE`` statements opening a script: bqemulator ignores query parameters in scripts."""
    return "".join(
        f"DECLARE {name} {kind} DEFAULT {sql_literal(value, kind)};\n" for name, (kind, value) in variables.items()
    )


def _variable_type(value: object) -> str:
    """The GoogleSQL type of a script variable holding ``value`` (a bool, date or timestamp)."""
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, datetime):
        return "TIMESTAMP"
    if isinstance(value, date):
        return "DATE"
    raise TypeError(f"no variable type for {type(value).__name__}")


def day_variables(days: Sequence[date], kind: str = "day") -> dict[str, tuple[str, object]]:
    """``v_<kind>s``, ``v_first_<kind>``, ``v_last_<kind>``: the days a statement reads, as script variables.

    A statement filters its partitioning column on both: the span prunes the partitions outside it for certain, the
    list narrows the read to the days themselves (DuckDB's ``_days`` gives its zone maps the same two).
    """
    ordered = sorted(set(days))
    return {
        f"v_{kind}s": ("ARRAY<DATE>", ordered),
        f"v_first_{kind}": ("DATE", ordered[0] if ordered else None),
        f"v_last_{kind}": ("DATE", ordered[-1] if ordered else None),
    }


def earliest_load(keys: Iterable[str]) -> datetime | None:
    """The earliest time rows of these landing objects can have been loaded or rejected, or None to read every time.

    An object cannot be loaded before it landed, and its key names its landing time (``key_committed_at``); the
    margin allows for the receiver's clock running ahead of BigQuery's. A key without a time gives None.
    """
    try:
        return min(key_committed_at(key) for key in keys) - LANDING_CLOCK_MARGIN
    except ValueError:  # a key without a time, or no key
        return None


def current_layout(table: bigquery.Table) -> tuple[str | None, tuple[str, ...]]:
    """A table's (partition column, clustering columns) as ``LAYOUT`` gives them (ingestion time: _PARTITIONTIME)."""
    partitioning = table.time_partitioning
    partition = None if partitioning is None else (partitioning.field or "_PARTITIONTIME")
    return partition, tuple(table.clustering_fields or ())


def laid_out_as_wanted(table: bigquery.Table) -> bool:
    return current_layout(table) == LAYOUT.get(table.table_id, (None, ()))


def describe_layout(partition: str | None, clustering: tuple[str, ...]) -> str:
    parts = [f"partitioned on {partition}" if partition else "not partitioned"]
    if clustering:
        parts.append(f"clustered by {', '.join(clustering)}")
    return " and ".join(parts)


def _staging_name(run_id: str) -> str:
    safe_run = re.sub(r"[^A-Za-z0-9_]", "_", run_id)[:64]
    return f"{STAGING_PREFIX}{safe_run}_{uuid.uuid4().hex[:8]}"


class BigQueryWarehouse(base.Warehouse):
    """Tables in one BigQuery dataset, loaded from gs:// landing objects exactly once per (source, id).

    ``client`` is a ``google.cloud.bigquery.Client`` (dagster-gcp's ``BigQueryResource.get_client()``
    gives one); jobs run in ``location`` when given. ``retry`` governs API calls and waiting for jobs
    (the client's default retries transient errors for up to 10 minutes). ``clock``: see ``refresh_repository_summary``.
    """

    def __init__(
        self,
        client: bigquery.Client,
        dataset: str = base.DATASET,
        location: str | None = None,
        *,
        max_bad_records: int = 1_000_000,
        staging_ttl: timedelta = timedelta(hours=6),
        retry: Retry = DEFAULT_RETRY,
        future_tolerance: timedelta = base.FUTURE_TOLERANCE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.client = client
        self.dataset = dataset
        self.location = location
        self.max_bad_records = max_bad_records
        self.staging_ttl = staging_ttl
        self.retry = retry
        self.future_tolerance = future_tolerance  # pulls dated further ahead of now count in no time window
        self.max_line_bytes = max_line_bytes  # longer lines are rejected as line_too_large, never parsed
        # The summary's clock (its computed_at and time windows); None: BigQuery's CURRENT_TIMESTAMP(). Tests set
        # it to turn the day.
        self.clock = clock
        self._ensured = False

    # -- plumbing ----------------------------------------------------------------------------------

    def table_id(self, table: str) -> str:
        """``project.dataset.table``."""
        return f"{self.client.project}.{self.dataset}.{table}"

    def _t(self, table: str) -> str:
        return f"`{self.table_id(table)}`"

    def query(self, text: str, parameters: Sequence[Any] = ()) -> list[bigquery.Row]:
        """Run one query or script with query parameters; returns its (last statement's) rows."""
        config = bigquery.QueryJobConfig(query_parameters=list(parameters))
        job = self.client.query(text, job_config=config, location=self.location, retry=self.retry)
        return list(job.result(retry=self.retry))

    def _ready(self) -> None:
        if not self._ensured:
            self.ensure_tables()

    # -- Warehouse ---------------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        """Create the dataset and any missing table or column, and drop retired tables; one metadata call per table
        when everything exists."""
        dataset = bigquery.Dataset(f"{self.client.project}.{self.dataset}")
        try:
            self.client.get_dataset(dataset, retry=self.retry)
            existing = {t.table_id for t in self.client.list_tables(dataset, retry=self.retry)}
        except NotFound:
            if self.location:
                dataset.location = self.location
            self.client.create_dataset(dataset, exists_ok=True, retry=self.retry)
            existing = set()
        for name in base.RETIRED_TABLES:
            if name in existing:
                self.client.delete_table(self.table_id(name), not_found_ok=True, retry=self.retry)
        for name in TABLES:
            if name not in existing and name + RELAYOUT_SUFFIX in existing:
                log.warning("%s: finishing its recreation with a new layout, cut short by a failure", name)
                self._finish_relayout(name)
                existing.add(name)
            if name in existing:
                self._upgrade(self.client.get_table(self.table_id(name), retry=self.retry))
            else:
                self.client.create_table(self._new_table(name), exists_ok=True, retry=self.retry)
        self._ensured = True

    def _new_table(self, name: str, table_id: str | None = None) -> bigquery.Table:
        """Table ``name`` of ``schema.py`` laid out as ``LAYOUT`` says (at ``table_id``, by default its own)."""
        table = bigquery.Table(table_id or self.table_id(name), schema=table_schema(name))
        partition, clustering = LAYOUT.get(name, (None, ()))
        if partition:
            table.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=partition
            )
        if clustering:
            table.clustering_fields = list(clustering)
        return table

    def _upgrade(self, table: bigquery.Table) -> None:
        """Bring a table made by an earlier version up to date: add its missing columns, and warn when it is laid
        out otherwise (BigQuery cannot re-partition a table in place: a rebuild recreates it)."""
        name = table.table_id
        self._add_missing_columns(table)
        if not laid_out_as_wanted(table):
            log.warning(
                "%s is %s, not %s as this version lays it out: loads and refreshes work, but read more of it than "
                "their partitions. Run the rebuild_from_landing job: it recreates the table with the new layout",
                name,
                describe_layout(*current_layout(table)),
                describe_layout(*LAYOUT.get(name, (None, ()))),
            )

    def _add_missing_columns(self, table: bigquery.Table) -> None:
        """Give a table made by an earlier version the columns added since (NULL in its old rows unless filled)."""
        name = table.table_id
        present = {field.name for field in table.schema}
        missing = [field for field in table_schema(name) if field.name not in present]
        if not missing:
            return
        # BigQuery adds only NULLABLE (or REPEATED) columns: columns added later must be nullable. Old rows kept
        # their whole line in raw_event, so a new column holding a line key is filled from it.
        table_ref = f"`{self.table_id(name)}`"
        statements = [
            f"ALTER TABLE {table_ref} ADD COLUMN IF NOT EXISTS {ident(f.name)} {sql_type(f)} "
            f"OPTIONS(description={sql_literal(f.description or '')});\n"
            for f in missing
        ]
        statements += [
            f"UPDATE {table_ref} SET {ident(f.name)} = {json_text('raw_event', (LINE_KEY_OF_COLUMN[f.name],))} "
            "WHERE raw_event IS NOT NULL;\n"
            for f in missing
            if f.name in LINE_KEY_OF_COLUMN and f.field_type == "STRING" and "raw_event" in present
        ]
        if name == base.PULLS and "day" in {f.name for f in missing}:
            # The day a pull is counted in and de-duplicated within: the day of its body.when.
            statements.append(f"UPDATE {table_ref} SET day = DATE(body.`when`) WHERE day IS NULL;\n")
        self.query("".join(statements))

    def loaded_object_keys(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        self._ready()
        done: set[str] = set()
        unique = sorted(set(keys))
        for start in range(0, len(unique), MAX_SOURCE_URIS):
            chunk = unique[start : start + MAX_SOURCE_URIS]
            since = earliest_load(chunk)
            # Only the ledger's partitions (DATE(loaded_at)) from the objects' landing on: see earliest_load.
            recent = "" if since is None else " AND loaded_at >= @since"
            rows = self.query(
                f"SELECT DISTINCT landing_object FROM {self._t(base.LOADED_OBJECTS)} "
                f"WHERE landing_object IN UNNEST(@keys){recent}",
                [
                    bigquery.ArrayQueryParameter("keys", "STRING", chunk),
                    *([bigquery.ScalarQueryParameter("since", "TIMESTAMP", since)] if since else []),
                ],
            )
            done.update(row[0] for row in rows)
        return done

    def load_objects(self, store: LandingStore, objects: Sequence[LandedObject], run_id: str) -> base.LoadResult:
        unique = sorted({o.key: o for o in objects}.values(), key=lambda o: o.key)
        if not unique:
            return base.LoadResult(0, 0, 0, 0, 0, 0, 0, [])
        not_gcs = [o.uri for o in unique if not o.uri.startswith("gs://")]
        if not_gcs:
            raise ValueError(
                f"BigQuery loads read landing objects from gs:// URIs; {not_gcs[0]!r} is not one "
                "(set PULL_EVENTS_LANDING to gs://BUCKET[/PREFIX])"
            )
        self._ready()
        done = self.loaded_object_keys([o.key for o in unique])
        todo = [o for o in unique if o.key not in done]
        if not todo:
            return base.LoadResult(0, len(unique), 0, 0, 0, 0, 0, [])
        staging = self.create_staging(run_id)
        try:
            bad_records, quarantined = self._stage_readable(store, staging, todo)
            readable = [o for o in todo if o.key not in quarantined]
            totals = self.merge_staged(staging, store, readable, bad_records, run_id, quarantined)
        finally:
            self.client.delete_table(staging, not_found_ok=True, retry=self.retry)
        return base.LoadResult(
            objects_loaded=len(todo) - len(totals["quarantined"]),
            objects_skipped=len(unique) - len(todo),
            lines_read=totals["lines"],
            pulls_inserted=totals["pulls"],
            events_inserted=totals["events"],
            duplicates_skipped=totals["duplicates"],
            lines_rejected=totals["rejected"],
            affected_days=list(totals["days"]),
            quarantined={key: reason for key, (reason, _) in totals["quarantined"].items()},
            loaded_duplicate_keys=totals["duplicate_keys"],
            loaded_missing_required=totals["missing_required"],
        )

    def _stage_readable(
        self, store: LandingStore, staging: bigquery.Table, objects: Sequence[LandedObject]
    ) -> tuple[int | None, dict[str, tuple[str, str]]]:
        """Stage ``objects``: bad records, and the objects set aside because they are gone.

        A load job fails whole on one missing URI: then the gone objects are found (one metadata call each) and
        the rest staged again. A job that fails on the content (a reader stricter than BigQuery's, as the
        emulator's) leaves the batch to the careful reading: bad records are then ``None``.
        """
        try:
            return self.stage_objects(staging, objects), {}
        except Exception as exc:
            gone = {o.key: (OBJECT_MISSING, "not found when loaded") for o in objects if not store.exists(o.key)}
            if not gone:
                log.warning("the load job refused the batch; reading its %d objects carefully: %s", len(objects), exc)
                self._empty(staging)
                return None, {}
        self._empty(staging)
        rest = [o for o in objects if o.key not in gone]
        if not rest:
            return 0, gone
        bad_records, _ = self._stage_readable(store, staging, rest)
        return bad_records, gone

    def _empty(self, staging: bigquery.Table) -> None:
        self.query(f"DELETE FROM `{self.table_id(staging.table_id)}` WHERE TRUE")

    # The steps of a load; public so that two loads can be interleaved (tests) or driven separately.

    def create_staging(
        self, run_id: str, suffix: str = "", schema: Sequence[bigquery.SchemaField] = ()
    ) -> bigquery.Table:
        """A new staging table (by default one STRING column ``line``) that expires by itself if a run dies."""
        table = bigquery.Table(
            self.table_id(_staging_name(run_id) + suffix),
            schema=list(schema) or [bigquery.SchemaField("line", "STRING")],
        )
        table.expires = datetime.now(UTC) + self.staging_ttl
        return self.client.create_table(table, retry=self.retry)

    def stage_objects(self, staging: bigquery.Table, objects: Sequence[LandedObject]) -> int:
        """Load every line of ``objects`` into ``staging`` (one load job per 10,000 objects); bad records."""
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.CSV,
            schema=[bigquery.SchemaField("line", "STRING")],
            field_delimiter=FIELD_DELIMITER,
            quote_character="",
            skip_leading_rows=0,
            allow_quoted_newlines=False,
            allow_jagged_rows=False,
            preserve_ascii_control_characters=True,  # keep a line's bytes as landed (tabs in JSON whitespace)
            encoding="UTF-8",
            max_bad_records=self.max_bad_records,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
        )
        uris = [o.uri for o in objects]
        bad_records = 0
        for start in range(0, len(uris), MAX_SOURCE_URIS):
            job = self.client.load_table_from_uri(
                uris[start : start + MAX_SOURCE_URIS],
                staging,
                job_config=config,
                location=self.location,
                retry=self.retry,
            )
            job.result(retry=self.retry)
            # The client has no accessor for statistics.load.badRecords: read it from the job resource.
            bad_records += int(job._properties.get("statistics", {}).get("load", {}).get("badRecords", 0) or 0)
        return bad_records

    def objects_to_read_carefully(
        self, staging: bigquery.Table, objects: Sequence[LandedObject], bad_records: int | None
    ) -> tuple[set[str], dict[str, int]]:
        """Which objects the staged lines do not account for, and the line count of each one they do.

        An object is accounted for when the staged lines placed in it, each with its newline, hold exactly its bytes
        (so an object without a final newline, as the receiver never writes, is read carefully), are all JSON and
        number themselves 1..n by their own landing_line. Lines the load job could not read (bad records) or could
        not place (naming no object of the batch) make every object read carefully.
        """
        keys = [o.key for o in objects]
        if bad_records is None:  # the load job refused the batch
            return set(keys), {}
        stats = {
            row["object_key"]: row
            for row in self.query(
                f"""
WITH placed AS (
  SELECT line, blank, own_line, o IS NULL AS unparsed,
    CASE WHEN own_object IN UNNEST(@keys) THEN own_object WHEN ARRAY_LENGTH(@keys) = 1 THEN @keys[OFFSET(0)] END
      AS object_key
  FROM (
    SELECT line, o, {_own_lineage("line", "o")},
      line IS NULL OR TRIM(line, ' \\t\\r') = '' AS blank
    FROM (SELECT line, IF(JSON_TYPE(j) = 'object', j, NULL) AS o
          FROM (SELECT line, IF(BYTE_LENGTH(line) <= @max_line, SAFE.PARSE_JSON(line, wide_number_mode => 'round'),
                                NULL) AS j
                FROM `{self.table_id(staging.table_id)}`))))
SELECT object_key, COUNT(*) AS staged, COUNTIF(blank) AS blank, SUM(IFNULL(BYTE_LENGTH(line), 0) + 1) AS bytes,
  COUNT(DISTINCT IF(blank, NULL, own_line)) AS numbers, COUNTIF(NOT blank AND own_line IS NULL) AS unnumbered,
  MIN(IF(blank, NULL, own_line)) AS first, MAX(IF(blank, NULL, own_line)) AS last,
  COUNTIF(STRPOS(line, @replacement) > 0) AS replaced, COUNTIF(NOT blank AND unparsed) AS unparsed
FROM placed GROUP BY object_key
""",
                [
                    bigquery.ArrayQueryParameter("keys", "STRING", keys),
                    bigquery.ScalarQueryParameter("max_line", "INT64", self.max_line_bytes),
                    bigquery.ScalarQueryParameter("replacement", "STRING", "\ufffd"),
                ],
            )
        }
        if bad_records or None in stats:
            # A row the load job skipped or could not place belongs to some object: rather than trust the others'
            # byte counts to tell which, every object is read carefully.
            return set(keys), {}
        careful: set[str] = set()
        counts: dict[str, int] = {}
        for obj in objects:
            row = stats.get(obj.key)
            if row is None:  # no line placed in it: the size in the run config alone cannot be trusted
                careful.add(obj.key)
                continue
            lines = row["staged"] - row["blank"]
            numbered = row["unnumbered"] == 0 and row["numbers"] == lines and row["first"] == 1 and row["last"] == lines
            # Exactly its size: a reader that dropped a byte (a CR) must not pass as an object without a final
            # newline. A replacement character may stand for bytes that were not UTF-8, and a line that is not JSON
            # says its own position only by a pattern: the careful reading tells.
            exact = row["bytes"] == obj.size and row["replaced"] == 0 and row["unparsed"] == 0
            if numbered and exact:
                counts[obj.key] = lines
            else:
                careful.add(obj.key)
        return careful, {key: count for key, count in counts.items() if key not in careful}

    def stage_carefully(
        self, store: LandingStore, objects: Sequence[LandedObject], keys: Sequence[str], run_id: str
    ) -> tuple[bigquery.Table | None, dict[str, int], dict[str, tuple[str, str]]]:
        """Read ``objects`` with ``lines.read_lines`` into a second staging table, numbered by position.

        Returns the table (None when nothing was staged), each object's line count, and the objects that could
        not be read at all. ``keys`` are the load's keys: a row names its object by its offset there.
        """
        offset = {key: index for index, key in enumerate(keys)}
        counts: dict[str, int] = {}
        unreadable: dict[str, tuple[str, str]] = {}
        with tempfile.TemporaryFile() as staged:
            for obj in objects:
                start = staged.tell()
                try:
                    count = 0
                    with store.open_read(obj.key) as stream:
                        for line in read_lines(stream, self.max_line_bytes):
                            staged.write(staging_row(offset[obj.key], line))
                            count += 1
                    counts[obj.key] = count
                except Exception as exc:
                    if (reason := unreadable_reason(exc)) is None:
                        raise
                    unreadable[obj.key] = (reason, f"{type(exc).__name__}: {exc}")
                    staged.seek(start)
                    staged.truncate()
            if not staged.tell():
                return None, counts, unreadable
            staged.seek(0)
            table = self.create_staging(run_id, "_careful", CAREFUL_SCHEMA)
            config = bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.CSV,
                schema=CAREFUL_SCHEMA,
                field_delimiter=",",
                quote_character="",
                skip_leading_rows=0,
                max_bad_records=0,
                create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
                write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            )
            self.client.load_table_from_file(
                staged, table, job_config=config, location=self.location, rewind=True
            ).result(retry=self.retry)
        return table, counts, unreadable

    def merge_staged(
        self,
        staging: bigquery.Table,
        store: LandingStore,
        objects: Sequence[LandedObject],
        bad_records: int | None,
        run_id: str,
        quarantined: dict[str, tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """Account for the staged lines (reading carefully what they do not account for), write pulls, events
        and rejections, check every object balances, and then write the ledger and the quarantine."""
        quarantined = dict(quarantined or {})
        careful, counts = self.objects_to_read_carefully(staging, objects, bad_records)
        keys = [o.key for o in objects]
        careful_table = None
        if careful:
            careful_table, careful_counts, unreadable = self.stage_carefully(
                store, [o for o in objects if o.key in careful], keys, run_id
            )
            counts |= careful_counts
            quarantined |= unreadable
        since = earliest_load(keys)
        loaded_at = self._next_loaded_at(staging.created)
        try:
            per_object = self.query(
                script_variables(
                    v_keys=("ARRAY<STRING>", keys),
                    v_sole_key=("STRING", keys[0] if len(keys) == 1 else None),
                    v_careful_keys=("ARRAY<STRING>", sorted(careful)),
                    v_skip_keys=("ARRAY<STRING>", sorted(quarantined)),
                    v_max_line=("INT64", self.max_line_bytes),
                    v_prefix=("INT64", PREFIX_BYTES),
                    v_token_window=("INT64", int(base.TOKEN_REPLAY_WINDOW.total_seconds())),
                    v_loaded_at=("TIMESTAMP", loaded_at),
                    v_run_id=("STRING", run_id),
                    v_since=("TIMESTAMP", since),
                    v_batch=(_BATCH_TYPE, None),  # set by the script once it has judged the lines
                )
                + self._merge_script(staging, careful_table, since)
            )
        finally:
            if careful_table is not None:
                self.client.delete_table(careful_table, not_found_ok=True, retry=self.retry)
        stats = {row["landing_object"]: row for row in per_object if row["landing_object"] not in quarantined}
        _check_accounting(stats, counts)
        self._record_ledger(stats, quarantined, loaded_at, run_id, since)
        return {
            "lines": sum(row["lines"] for row in stats.values()),
            "pulls": sum(row["pulls"] for row in stats.values()),
            "events": sum(row["events"] for row in stats.values()),
            "duplicates": sum(row["duplicates"] for row in stats.values()),
            "rejected": sum(row["rejected"] for row in stats.values()),
            "days": _days_of(stats, "days"),
            "quarantined": quarantined,
            **self._loaded_row_figures(stats, loaded_at),
        }

    def _next_loaded_at(self, created: datetime) -> datetime:
        """The load's ``loaded_at``: its staging table's creation, unless an earlier load has one as late (a clock
        stepped back), then just after it. Distinct per load: the per-load checks find a load's rows by it.

        Only the ledger's partitions (DATE(loaded_at)) of the day before are read: a clock stepping back by more
        than that is not made up for.
        """
        latest = self.query(
            f"SELECT MAX(loaded_at) FROM {self._t(base.LOADED_OBJECTS)} WHERE loaded_at >= @since",
            [bigquery.ScalarQueryParameter("since", "TIMESTAMP", created - LANDING_CLOCK_MARGIN)],
        )[0][0]
        if latest is not None and latest >= created:
            return latest + timedelta(microseconds=1)
        return created

    def _loaded_row_figures(self, stats: dict[str, Any], loaded_at: datetime) -> dict[str, int]:
        """The per-load checks' figures (``sql/bigquery/loaded_rows.sql``): the load's own rows, judged against the
        tables in the partitions they went to."""
        pull_days, event_days = _days_of(stats, "days"), _days_of(stats, "event_days")
        null_event_day = any(row["null_event_day"] for row in stats.values())
        if not (pull_days or event_days or null_event_day):
            return {"duplicate_keys": 0, "missing_required": 0}  # the load wrote no row
        row = self._script(
            "loaded_rows",
            {
                "v_loaded_at": ("TIMESTAMP", loaded_at),
                **day_variables(pull_days),
                **day_variables(event_days, "event_day"),
                "v_null_event_day": ("BOOL", null_event_day),
            },
        )
        return {"duplicate_keys": int(row["duplicate_keys"]), "missing_required": int(row["missing_required"])}

    def _record_ledger(
        self,
        stats: dict[str, Any],
        quarantined: dict[str, tuple[str, str]],
        loaded_at: datetime,
        run_id: str,
        since: datetime | None,
    ) -> None:
        """The ledger rows of the objects loaded (LAST: an object counts as loaded only once all of its rows are
        in), and one quarantine row per object that could not be read at all. ``since``: see ``earliest_load``."""
        done, gone = sorted(stats), sorted(quarantined)
        # Literal rows as plain SELECTs, which every engine (the emulator too) reads alike.
        ledger_rows = " UNION ALL ".join(
            f"SELECT {sql_literal(key)} AS landing_object, "
            + ", ".join(f"{int(stats[key][field])} AS {column}" for field, column in _LEDGER_FIELDS)
            for key in done
        )
        gone_rows = " UNION ALL ".join(
            f"SELECT {sql_literal(key)} AS landing_object, {sql_literal(quarantined[key][0])} AS reason, "
            f"{sql_literal(quarantined[key][1])} AS detail"
            for key in gone
        )
        script = script_variables(
            v_settled=("ARRAY<STRING>", [*done, *gone]),
            v_loaded_at=("TIMESTAMP", loaded_at),
            v_run_id=("STRING", run_id),
            v_since=("TIMESTAMP", since),
        )
        recent = "" if since is None else " AND loaded_at >= v_since"
        if done:
            script += f"""
INSERT INTO {self._t(base.LOADED_OBJECTS)}
  (landing_object, lines, pulls_inserted, events_inserted, duplicates_skipped, lines_rejected, loaded_at, run_id)
SELECT *, v_loaded_at, v_run_id FROM ({ledger_rows})
WHERE landing_object NOT IN (
  SELECT landing_object FROM {self._t(base.LOADED_OBJECTS)} WHERE landing_object IN UNNEST(v_settled){recent});
"""
        script += f"DELETE FROM {self._t(base.QUARANTINED)} WHERE landing_object IN UNNEST(v_settled);\n"
        if gone:
            script += f"""
INSERT INTO {self._t(base.QUARANTINED)} (landing_object, reason, detail, quarantined_at, run_id)
SELECT *, v_loaded_at, v_run_id FROM ({gone_rows});
"""
        self.query(script)

    def _merge_script(self, staging: bigquery.Table, careful: bigquery.Table | None, since: datetime | None) -> str:
        """The load's script: judge the staged lines, find the partitions the batch touches (``v_batch``), decide
        each line's outcome, write the rows and the rejections, and return what each object's lines became."""
        run = uuid.uuid4().hex[:8]  # unique temp table names: bqemulator keeps a script's temp tables after it ends
        lines, outcomes = f"lines_{run}", f"outcomes_{run}"
        return "\n".join(
            [
                f"CREATE TEMP TABLE {lines} AS\n{self._judged_lines(staging, careful)};",
                _BATCH_PARTITIONS.format(lines=lines),
                f"CREATE TEMP TABLE {outcomes} AS\n{self._outcomes(lines)};",
                self._merge(base.PULLS, "pull", lines, outcomes),
                self._merge(base.EVENTS, "event", lines, outcomes),
                self._rejections(lines, outcomes, since),
                _OBJECT_FIGURES.format(lines=lines, outcomes=outcomes),
            ]
        )

    def _judged_lines(self, staging: bigquery.Table, careful: bigquery.Table | None) -> str:
        """A query of every staged line, parsed once, judged by the rules (first failing rule wins) and placed."""
        staged = f"`{staging.project}.{staging.dataset_id}.{staging.table_id}`"
        # The careful reading's rows (see stage_carefully): position and object known, text base64-encoded.
        careful_lines = (
            f"""
  UNION ALL
  SELECT SAFE_CONVERT_BYTES_TO_STRING(FROM_BASE64(text)), NULLIF(problem, ''), position, v_keys[OFFSET(object_id)]
  FROM `{careful.project}.{careful.dataset_id}.{careful.table_id}`"""
            if careful is not None
            else ""
        )
        o = "o"

        when_text = json_text(o, ("data", "body", "when"))
        reason = reason_case(
            lambda predicate: _breaks(predicate, o), f"JSON_VALUE({o}, '$.type') != {sql_literal(base.PULL_TYPE)}"
        )
        # The attributes and receiver keys read as plain text (the ones below have rules or types of their own).
        plain = ("specversion", "datacontenttype", "dataschema", "audience", "actor", "body_sha256", "token_sha256")
        more_attributes = ",\n    ".join(f"{json_text(o, (key,))} AS {LINE_KEYS[key]}" for key in plain)

        return f"""WITH read AS (
  SELECT line, CAST(NULL AS STRING) AS problem, CAST(NULL AS INT64) AS position, CAST(NULL AS STRING) AS read_key
  FROM {staged} WHERE line IS NOT NULL AND TRIM(line, ' \\t\\r') != ''{careful_lines}
), raw AS (
  SELECT line, problem, position, read_key, IF(JSON_TYPE(j) = 'object', j, NULL) AS o
  -- An overlong line is never parsed: its size alone rejects it.
  FROM (SELECT *, IF(problem IS NULL AND BYTE_LENGTH(line) <= v_max_line,
                     SAFE.PARSE_JSON(line, wide_number_mode => 'round'), NULL) AS j
        FROM read)
), parsed AS (
  SELECT line, o, problem, position, read_key,
    JSON_VALUE(o, '$.id') AS event_id,
    JSON_VALUE(o, '$.source') AS event_source,
    JSON_VALUE(o, '$.type') AS event_type,
    {json_text(o, ("subject",))} AS event_subject,
    {timestamp_from_text(json_text(o, ("time",)))} AS event_time,
    {json_text(o, ("group",))} AS event_group,
    {timestamp_from_text(json_text(o, ("received_at",)))} AS received_at,
    {json_text(o, ("received_by",))} AS received_by,
    {more_attributes},
    {_own_lineage("line", o)},
    SAFE_CAST({when_text} AS DATETIME) AS body_when,
    {reason} AS reason
  FROM raw
), placed AS (
  SELECT *,
    -- The object a line is counted for in the ledger: the one it was read from when read carefully, else its
    -- own key when it names one of the batch (objects_to_read_carefully accepted exactly those placings).
    COALESCE(read_key, CASE WHEN own_object IN UNNEST(v_keys) THEN own_object
                            WHEN v_sole_key IS NOT NULL THEN v_sole_key END) AS object_key,
    event_type = {sql_literal(base.PULL_TYPE)} AS is_pull
  FROM parsed
), accounted AS (
  -- A careful reading replaces the load job's reading of its objects; a line the load job could not place
  -- belongs to one of them.
  SELECT * FROM placed
  WHERE read_key IS NOT NULL OR (object_key NOT IN UNNEST(v_careful_keys) AND object_key NOT IN UNNEST(v_skip_keys))
)
SELECT *,
  ROW_NUMBER() OVER () AS line_id,
  -- The partition a row of the line goes to: the pull table's day (of body.when), the events table's day of time.
  IF(is_pull, DATE(body_when), DATE(event_time)) AS day,
  COALESCE(own_object, object_key) AS landing_object,
  -- The line's own number when it names another object (a copy) and is a number; else where it was read.
  IF(own_object != object_key AND own_line >= 1, own_line, COALESCE(position, own_line)) AS landing_line,
  IF(reason IS NULL, ROW_NUMBER() OVER (
    PARTITION BY reason IS NULL, is_pull, event_source, event_id
    ORDER BY received_at ASC NULLS LAST, COALESCE(own_object, object_key), COALESCE(own_line, position),
      object_key, position), NULL)
    AS copy_number
FROM accounted"""

    def _outcomes(self, lines: str) -> str:
        """A query of what each judged line becomes: a pull or event row, a duplicate, or rejected."""
        pulls, events = self._t(base.PULLS), self._t(base.EVENTS)

        def token_rows(table: str, partitions: str) -> str:
            """An earlier load's events carrying one of the batch's tokens, received within the replay window."""
            return f"""SELECT token_sha256 AS token, event_source, event_id, event_type, received_at, 0 AS batch,
      CAST(NULL AS STRING) AS landing_object, CAST(NULL AS INT64) AS landing_line, CAST(NULL AS STRING) AS object_key,
      CAST(NULL AS INT64) AS position
    FROM {table}
    WHERE {partitions} AND token_sha256 IN (SELECT token FROM tokens)
      AND received_at >= (SELECT TIMESTAMP_SUB(MIN(received_at), INTERVAL v_token_window SECOND) FROM tokens)"""

        return f"""WITH existing AS (
  -- A redelivery carries the same body.when (or time): only the batch's partitions can hold an earlier copy.
  SELECT DISTINCT TRUE AS is_pull, t.event_source, t.event_id, t.day
  FROM {pulls} t
  JOIN (SELECT DISTINCT event_source, event_id, day FROM {lines} WHERE reason IS NULL AND is_pull) k
    ON t.event_source = k.event_source AND t.event_id = k.event_id AND t.day = k.day
  WHERE {_PULL_DAYS.format(t="t")}
  UNION ALL
  SELECT DISTINCT FALSE AS is_pull, t.event_source, t.event_id, DATE(t.event_time) AS day
  FROM {events} t
  JOIN (SELECT DISTINCT event_source, event_id, day FROM {lines} WHERE reason IS NULL AND NOT is_pull) k
    ON t.event_source = k.event_source AND t.event_id = k.event_id AND DATE(t.event_time) IS NOT DISTINCT FROM k.day
  WHERE {_EVENT_DAYS.format(t="t")}
), tokens AS (
  SELECT token_sha256 AS token, event_source, event_id, event_type, received_at, 1 AS batch, landing_object,
    landing_line, object_key, position
  FROM {lines} WHERE reason IS NULL AND token_sha256 IS NOT NULL
), bound AS (
  -- A token authorizes one event: the first it carried (an earlier load's row within the replay window, else
  -- this batch's first by receipt) binds it. An earlier event is dated (body.when, time) about when it was
  -- received, so only partitions from the day before the window's start (v_batch.token_day) are read: an event
  -- dated more than a day before its own receipt is not found, and its replay is taken for the token's first.
  SELECT token, event_source, event_id, event_type FROM (
    {token_rows(pulls, "day >= v_batch.token_day")}
    UNION ALL
    {token_rows(events, "(event_time >= TIMESTAMP(v_batch.token_day) OR event_time IS NULL)")}
    UNION ALL
    SELECT * FROM tokens)
  WHERE TRUE
  QUALIFY ROW_NUMBER() OVER (PARTITION BY token
    ORDER BY batch, received_at, landing_object, landing_line, object_key, position) = 1
)
SELECT r.line_id,
  CASE
    WHEN r.reason IS NOT NULL THEN 'rejected'
    -- Another event under a token that authorized one already: rejected as token_replayed.
    WHEN d.token IS NOT NULL AND (r.event_source != d.event_source OR r.event_id != d.event_id
      OR r.event_type != d.event_type) THEN 'rejected'
    WHEN r.copy_number > 1 OR e.event_id IS NOT NULL THEN 'duplicate'
    WHEN r.is_pull THEN 'pull'
    ELSE 'event'
  END AS outcome
FROM {lines} r
LEFT JOIN existing e
  ON e.is_pull = r.is_pull AND e.event_source = r.event_source AND e.event_id = r.event_id
    AND e.day IS NOT DISTINCT FROM r.day
LEFT JOIN bound d ON r.reason IS NULL AND d.token = r.token_sha256"""

    def _merge(self, table: str, outcome: str, lines: str, outcomes: str) -> str:
        """The MERGE writing one table's new rows, each copied from its line's column of the same name or read
        out of the line. The key is looked for in the batch's partitions only (a redelivery is dated alike)."""
        o = "o"
        values = (
            {
                "repository": json_text(o, ("data", "body", "repository")),
                "day": "day",
                "actor": column_value(ACTOR, o, ("data", "actor")),
                "body": column_value(PULL_BODY, o, ("data", "body")),
            }
            if table == base.PULLS
            else {"data": f"JSON_QUERY({o}, '$.data')"}
        )
        lineage = ("landing_object", "landing_line", "received_at", "received_by", "body_sha256", "token_sha256")
        sources = {
            **{c.name: c.name for c in ENVELOPE},
            **values,
            **{c: c for c in lineage},
            "loaded_at": "v_loaded_at",
            # Read only for the rows merged: the rows of one kind, all of them good lines.
            "raw_event": f"IF(IFNULL({keeps_raw_event(o, table == base.PULLS)}, TRUE), {o}, NULL)",
        }
        columns = [ident(c.name) for c in TABLES[table]]
        select = ", ".join(f"{sources[c.name]} AS {ident(c.name)}" for c in TABLES[table])
        same_partition = (
            f"T.day = S.day AND {_PULL_DAYS.format(t='T')}"
            if table == base.PULLS
            else f"DATE(T.event_time) IS NOT DISTINCT FROM DATE(S.event_time) AND {_EVENT_DAYS.format(t='T')}"
        )
        return f"""
MERGE {self._t(table)} T
USING (SELECT {select} FROM {lines} JOIN {outcomes} USING (line_id) WHERE outcome = '{outcome}') S
ON T.event_source = S.event_source AND T.event_id = S.event_id AND {same_partition}
WHEN NOT MATCHED THEN INSERT ({", ".join(columns)})
  VALUES ({", ".join(f"S.{c}" for c in columns)});"""

    def _rejections(self, lines: str, outcomes: str, since: datetime | None) -> str:
        """The INSERT of the rejected lines not yet recorded where they were read."""
        # A line cannot have been rejected before its object landed: only partitions from then on are read.
        recent = "" if since is None else " AND r.rejected_at >= v_since"
        return f"""
-- Where the load read the line: what a rejected line says of itself is not to be trusted.
INSERT INTO {self._t(base.REJECTED)} (landing_object, landing_line, reason, raw_line, rejected_at, run_id)
SELECT object_key, COALESCE(position, own_line), IFNULL(reason, {sql_literal(base.TOKEN_REPLAYED)}),
  IF(reason = 'line_too_large' AND problem IS NULL, LEFT(line, v_prefix), line), v_loaded_at, v_run_id
FROM {lines} l JOIN {outcomes} USING (line_id)
WHERE outcome = 'rejected' AND NOT EXISTS (
  SELECT 1 FROM {self._t(base.REJECTED)} r
  WHERE r.landing_object = l.object_key AND r.landing_line = COALESCE(l.position, l.own_line){recent});"""

    def pull_days(self) -> list[date]:
        self._ready()
        rows = self.query(f"SELECT DISTINCT day FROM {self._t(base.PULLS)} WHERE day IS NOT NULL ORDER BY day")
        return [row[0] for row in rows]

    def _derived_tables(self) -> dict[str, str]:
        """The ``{{placeholders}}`` of the derived layer's SQL: its tables' qualified names."""
        return {placeholder: self._t(table) for placeholder, table in base.SQL_TABLES.items()}

    def _statements(self, name: str) -> list[str]:
        """The statements of ``sql/bigquery/<name>.sql``, filled in; ``{{run}}`` names this run's temp tables."""
        names = {**self._derived_tables(), "run": uuid.uuid4().hex[:8]}
        return list(sql.statements_from("bigquery", name, names).values())

    def _script(self, name: str, variables: dict[str, tuple[str, object]], *, transaction: bool = False) -> Any:
        """Run ``sql/bigquery/<name>.sql`` as one script and return its last statement's row. ``transaction``: every
        statement but the last commits together (the last, after the commit, reports what the others did)."""
        *changes, last = self._statements(name)
        body = "".join(f"{statement};\n" for statement in changes)
        if transaction:
            body = f"BEGIN TRANSACTION;\n{body}COMMIT TRANSACTION;\n"
        return self.query(f"{script_variables(**variables)}{body}{last};\n")[0]

    def refresh_daily_pulls(self, days: Sequence[date]) -> base.DailyRefresh:
        self._ready()
        ordered = sorted(set(days))
        row = self._script("refresh_daily_pulls", day_variables(ordered), transaction=True)
        counts = {entry["day"]: entry["n"] for entry in row["rows_per_day"]}
        return base.DailyRefresh(
            days=ordered,
            rows_per_day={day: int(counts.get(day, 0)) for day in ordered},
            repositories_marked=int(row["marked"]),
            table_rows=int(row["table_rows"]),
        )

    def refresh_repository_summary(self) -> base.SummaryRefresh:
        self._ready()
        # Read before the script, which needs the window: summary refreshes run one at a time (Dagster's warehouse
        # pool), so no other refresh moves the latest computed_at in between.
        [(now, last)] = self.query(
            f"SELECT CURRENT_TIMESTAMP(), MAX(computed_at) FROM {self._t(base.REPOSITORY_SUMMARY)}"
        )
        clock = self.clock() if self.clock is not None else now
        window = base.summary_window(clock, last, self.future_tolerance)
        variables = {f"v_{name}": (_variable_type(value), value) for name, value in window.parameters().items()}
        row = self._script("refresh_repository_summary", {"v_at": ("TIMESTAMP", clock), **variables}, transaction=True)
        return base.SummaryRefresh(
            repositories_recomputed=int(row["recomputed"]),
            day_turned=window.day_turned,
            table_rows=int(row["table_rows"]),
            computed_at=clock,
        )

    def _preview(self, name: str, variables: dict[str, tuple[str, object]]) -> list[bigquery.Row]:
        """The rows of one statement of ``sql/bigquery/preview.sql``, after ``DECLARE``s of ``variables``."""
        statement = sql.statements_from("bigquery", "preview", self._derived_tables())[name]
        # DECLAREs of only the variables the statement names: the others would be unused.
        used = {key: value for key, value in variables.items() if re.search(rf"\b{key}\b", statement)}
        return self.query(f"{script_variables(**used)}{statement};\n")

    def daily_preview(self, days: Sequence[date], top: int = base.PREVIEW_REPOSITORIES) -> base.DailyPreview:
        self._ready()
        variables = {**day_variables(days), "v_top": ("INT64", top)}
        totals = self._preview("day_totals", variables)
        ranked = self._preview("day_top", variables)
        return base.daily_preview_from_rows(days, [tuple(row) for row in totals], [tuple(row) for row in ranked])

    def summary_preview(self, top: int = base.PREVIEW_REPOSITORIES) -> base.SummaryPreview:
        self._ready()
        [(repositories, image_pulls, events, errors)] = self._preview("summary_totals", {})
        ranked = self._preview("summary_top", {"v_top": ("INT64", top)})
        return base.SummaryPreview(
            repositories=int(repositories),
            image_pulls=int(image_pulls),
            events=int(events),
            errors=int(errors),
            top_repositories=base.ranked_repositories(tuple(row) for row in ranked),
        )

    def summary_audit(self) -> base.SummaryAudit:
        self._ready()
        as_of = self.query(f"SELECT MAX(computed_at) FROM {self._t(base.REPOSITORY_SUMMARY)}")[0][0]
        row = self._script(
            "summary_audit",
            {
                "v_as_of": ("TIMESTAMP", as_of),
                "v_tolerance_s": ("INT64", int(self.future_tolerance.total_seconds())),
                "v_examples": ("INT64", base.SUMMARY_AUDIT_EXAMPLES),
            },
        )
        return base.SummaryAudit(
            rows_compared=int(row["compared"]),
            rows_differing=int(row["differing"]),
            examples=list(row["examples"]),
            as_of=as_of,
        )

    def check_figures(self) -> base.CheckFigures:
        self._ready()
        pulls, events, ledger = self._t(base.PULLS), self._t(base.EVENTS), self._t(base.LOADED_OBJECTS)
        row = self.query(
            f"""
SELECT
  (SELECT COUNT(*) FROM (SELECT 1 FROM {pulls} GROUP BY event_source, event_id HAVING COUNT(*) > 1))
  + (SELECT COUNT(*) FROM (SELECT 1 FROM {events} GROUP BY event_source, event_id HAVING COUNT(*) > 1))
    AS duplicate_keys,
  (SELECT COUNT(*) FROM {pulls} WHERE event_id IS NULL OR event_source IS NULL
    OR body.repository IS NULL OR body.`when` IS NULL) AS missing_required,
  IFNULL(SUM(lines), 0) AS landed,
  IFNULL(SUM(pulls_inserted + events_inserted + duplicates_skipped + lines_rejected), 0) AS accounted,
  IFNULL(SUM(lines_rejected), 0) AS rejected
FROM {ledger}
"""
        )[0]
        raw = self.query(f"SELECT COUNT(*) AS pull_rows, COUNT(raw_event) AS with_raw FROM {pulls}")[0]
        # The keys without a column, named by where they sit: the ones to give a column if they come often.
        per_level = " UNION ALL ".join(
            f"SELECT CONCAT({sql_literal(''.join(f'{key}.' for key in path))}, key) AS key FROM sample, "
            f"UNNEST(JSON_KEYS({f'JSON_QUERY(raw_event, {json_path(path)})' if path else 'raw_event'}, 1)) AS key "
            f"WHERE key NOT IN UNNEST({sql_literal(list(known))})"
            for path, known in known_keys()
        )
        keys = self.query(
            f"""
WITH sample AS (
  SELECT raw_event FROM {pulls} WHERE raw_event IS NOT NULL ORDER BY loaded_at DESC LIMIT {KEY_SAMPLE_ROWS}
)
SELECT key, COUNT(*) AS n FROM ({per_level}) GROUP BY key ORDER BY n DESC, key LIMIT 10
"""
        )
        # Pulls dated beyond the warehouse's clock plus the tolerance, the farthest ahead named first.
        future = self.query(
            f"""
SELECT COUNT(*) OVER () AS n, event_source, event_id, repository, body.`when` AS pulled_at FROM {pulls}
WHERE body.`when` > DATETIME_ADD(DATETIME(CURRENT_TIMESTAMP()), INTERVAL @tolerance_s SECOND)
ORDER BY pulled_at DESC, event_source, event_id LIMIT @n
""",
            [
                bigquery.ScalarQueryParameter("tolerance_s", "INT64", int(self.future_tolerance.total_seconds())),
                bigquery.ScalarQueryParameter("n", "INT64", base.FUTURE_DATED_EXAMPLES),
            ],
        )
        reasons = self.query(
            sql.statements("bigquery", "rejected_reasons", rejected=self._t(base.REJECTED))["reasons"],
            [bigquery.ScalarQueryParameter("n", "INT64", base.REJECTED_REASON_EXAMPLES)],
        )
        return base.CheckFigures(
            duplicate_keys=row["duplicate_keys"],
            missing_required=row["missing_required"],
            landed_lines=row["landed"],
            accounted_lines=row["accounted"],
            rejected_lines=row["rejected"],
            total_lines=row["landed"],
            pull_rows=raw["pull_rows"],
            rows_with_raw_event=raw["with_raw"],
            keys_without_column={r["key"]: r["n"] for r in keys},
            future_dated_pulls=future[0]["n"] if future else 0,
            future_dated_examples=[
                base.FutureDatedPull(r["event_source"], r["event_id"], r["repository"], r["pulled_at"]) for r in future
            ],
            rejected_reasons={r["reason"]: int(r["n"]) for r in reasons},
        )

    def row_count(self, table: str) -> int:
        self._ready()
        return int(self.query(f"SELECT COUNT(*) FROM {self._t(table)}")[0][0])

    def column_schema(self, table: str) -> list[tuple[str, str]]:
        self._ready()
        return [(f.name, sql_type(f)) for f in self.client.get_table(self.table_id(table), retry=self.retry).schema]

    def drop_all(self) -> None:
        """Drop every table of the dataset, retired ones and leftovers of dead runs included; the dataset stays."""
        dataset = f"{self.client.project}.{self.dataset}"
        try:
            leftovers = [
                t.table_id
                for t in self.client.list_tables(dataset, retry=self.retry)
                if t.table_id.startswith(STAGING_PREFIX) or t.table_id.endswith(RELAYOUT_SUFFIX)
            ]
        except NotFound:
            leftovers = []
        for table in (*TABLES, *base.RETIRED_TABLES, *leftovers):
            self.client.delete_table(self.table_id(table), not_found_ok=True, retry=self.retry)
        self._ensured = False

    # -- a rebuild's shadow copy: the dataset <dataset>__rebuild ----------------------------------------

    def shadow(self) -> BigQueryWarehouse:
        self.drop_shadow()
        shadow = copy.copy(self)  # every setting of this warehouse, on another dataset
        shadow.dataset = self.dataset + base.SHADOW_SUFFIX
        shadow._ensured = False
        return shadow

    def swap_in(self, shadow: base.Warehouse) -> None:
        """Replace every table's rows by the shadow's, in one multi-statement transaction.

        A transaction commits its DML on every table together or not at all. DELETE + INSERT (not copy jobs,
        which commit one table at a time) also keeps each table's schema, partitioning and clustering, so a table
        laid out otherwise by an earlier version is first recreated with this version's layout, its rows kept
        (``_relayout``): the swap that follows is all or nothing whatever happened before it.
        """
        if not isinstance(shadow, BigQueryWarehouse) or shadow.dataset == self.dataset:
            raise ValueError("swap_in takes this warehouse's shadow (see shadow())")
        self.ensure_tables()
        for name in TABLES:
            if not laid_out_as_wanted(self.client.get_table(self.table_id(name), retry=self.retry)):
                self._relayout(name)
        statements = ""
        for table, columns in TABLES.items():
            names = ", ".join(ident(column.name) for column in columns)
            statements += (
                f"DELETE FROM {self._t(table)} WHERE TRUE;\n"
                f"INSERT INTO {self._t(table)} ({names}) SELECT {names} FROM {shadow._t(table)};\n"
            )
        self.query(f"BEGIN TRANSACTION;\n{statements}COMMIT TRANSACTION;\n")

    def _relayout(self, name: str) -> None:
        """Recreate table ``name`` with this version's layout, keeping its rows.

        BigQuery cannot re-partition a table, nor change a table's partitioning by replacing or copying onto it. The
        rows are copied into ``<name>__relayout``, made with the new layout; the table is dropped and that copy is
        copied to its name (a copy job makes the table as its source is). Until then, readers of the table fail. A
        failure leaves the rows in the table or in the copy, from which ``ensure_tables`` recreates it.
        """
        log.warning(
            "%s: recreating it with this version's layout (%s)", name, describe_layout(*LAYOUT.get(name, (None, ())))
        )
        temporary = self.table_id(name + RELAYOUT_SUFFIX)
        self.client.delete_table(temporary, not_found_ok=True, retry=self.retry)
        self.client.create_table(self._new_table(name, temporary), retry=self.retry)
        names = ", ".join(ident(column.name) for column in TABLES[name])
        self.query(f"INSERT INTO `{temporary}` ({names}) SELECT {names} FROM {self._t(name)}")
        self.client.delete_table(self.table_id(name), retry=self.retry)
        self._finish_relayout(name)

    def _finish_relayout(self, name: str) -> None:
        """Make table ``name`` from its copy ``<name>__relayout`` (see ``_relayout``) and drop the copy."""
        temporary = self.table_id(name + RELAYOUT_SUFFIX)
        self.client.copy_table(temporary, self.table_id(name), location=self.location, retry=self.retry).result(
            retry=self.retry
        )
        self.client.delete_table(temporary, retry=self.retry)

    def drop_shadow(self) -> None:
        self.client.delete_dataset(
            f"{self.client.project}.{self.dataset}{base.SHADOW_SUFFIX}",
            delete_contents=True,
            not_found_ok=True,
            retry=self.retry,
        )
