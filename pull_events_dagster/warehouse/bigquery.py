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
3. One multi-statement query that parses and classifies every staged line (``SAFE.PARSE_JSON``,
   ``JSON_VALUE``, ``SAFE_CAST``: the rules of the shared load semantics, first failing rule wins),
   MERGEs valid pulls and other events into their tables on ``(event_source, event_id)`` with explicit
   column lists, inserts rejected lines where they were read, and returns what each object's lines became.
4. Every object must balance (lines counted from its bytes = inserted + duplicates + rejected) before its
   ledger row is written, LAST; else ``LoadAccountingError`` and the object stays unrecorded.
5. The staging tables are dropped (they also expire by themselves if the process dies first).

Quota: BigQuery allows 1,500 load jobs per table per day. Every load job here writes a fresh staging
table, never the pull table, and rows reach the pull table through DML (MERGE), which has no per-table
daily quota. The only count that grows with traffic is load jobs per project (100,000 a day): one per
batch of up to hundreds of objects, i.e. at one batch per 30-second sensor tick under 3,000 a day.

Steps are idempotent rather than one transaction: a MERGE skips keys already present, rejected lines are
recorded once per (object, line), and the ledger comes last, so a crash anywhere means the objects are loaded
again and nothing is duplicated. A transaction would make concurrent runs abort each other: BigQuery fails
the later of two transactions that change the same table. The derived-table refreshes do use transactions,
so readers never see a day deleted but not yet re-inserted.

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
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.api_core.retry import Retry
from google.cloud import bigquery
from google.cloud.bigquery import DEFAULT_RETRY
from google.cloud.exceptions import NotFound

from pull_events.landing import LandedObject, LandingStore
from pull_events.settings import DEFAULT_MAX_LINE_BYTES
from pull_events_dagster.warehouse import base
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

# (partition column, clustering columns) per table; day partitions.
LAYOUT: dict[str, tuple[str | None, tuple[str, ...]]] = {
    base.PULLS: ("event_time", ("repository", "event_source", "event_id")),
    base.EVENTS: ("event_time", ("event_type",)),
    base.DAILY_PULLS: ("day", ("repository",)),
    # Not required by the semantics; they make the per-load ledger and rejection look-ups cheap.
    base.REJECTED: (None, ("landing_object",)),
    base.LOADED_OBJECTS: (None, ("landing_object",)),
}

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


def sql_literal(value: object) -> str:
    """A GoogleSQL literal of a string, integer, timestamp, list of strings or NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f'TIMESTAMP "{value.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}+00:00"'
    if isinstance(value, str):
        # Every escape JSON writes (quote, backslash, control characters as \uXXXX) means the same in GoogleSQL.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "ARRAY<STRING>[" + ", ".join(sql_literal(str(v)) for v in value) + "]"
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


def script_variables(**variables: tuple[str, object]) -> str:
    """``DECLARE`` statements opening a script: bqemulator ignores query parameters in scripts."""
    return "".join(
        f"DECLARE {name} {kind} DEFAULT {sql_literal(value)};\n" for name, (kind, value) in variables.items()
    )


def _staging_name(run_id: str) -> str:
    safe_run = re.sub(r"[^A-Za-z0-9_]", "_", run_id)[:64]
    return f"{STAGING_PREFIX}{safe_run}_{uuid.uuid4().hex[:8]}"


class BigQueryWarehouse(base.Warehouse):
    """Tables in one BigQuery dataset, loaded from gs:// landing objects exactly once per (source, id).

    ``client`` is a ``google.cloud.bigquery.Client`` (dagster-gcp's ``BigQueryResource.get_client()``
    gives one); jobs run in ``location`` when given. ``retry`` governs API calls and waiting for jobs
    (the client's default retries transient errors for up to 10 minutes).
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
    ) -> None:
        self.client = client
        self.dataset = dataset
        self.location = location
        self.max_bad_records = max_bad_records
        self.staging_ttl = staging_ttl
        self.retry = retry
        self.future_tolerance = future_tolerance  # pulls dated further ahead of now count in no time window
        self.max_line_bytes = max_line_bytes  # longer lines are rejected as line_too_large, never parsed
        self._ensured = False

    # -- plumbing ----------------------------------------------------------------------------------

    def table_id(self, table: str) -> str:
        """``project.dataset.table``."""
        return f"{self.client.project}.{self.dataset}.{table}"

    def _t(self, table: str) -> str:
        return f"`{self.table_id(table)}`"

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[bigquery.Row]:
        """Run one query or script with query parameters; returns its (last statement's) rows."""
        config = bigquery.QueryJobConfig(query_parameters=list(parameters))
        job = self.client.query(sql, job_config=config, location=self.location, retry=self.retry)
        return list(job.result(retry=self.retry))

    def _ready(self) -> None:
        if not self._ensured:
            self.ensure_tables()

    # -- Warehouse ---------------------------------------------------------------------------------

    def ensure_tables(self) -> None:
        """Create the dataset and any missing table or column; one metadata call per table when everything exists."""
        dataset = bigquery.Dataset(f"{self.client.project}.{self.dataset}")
        try:
            self.client.get_dataset(dataset, retry=self.retry)
            existing = {t.table_id for t in self.client.list_tables(dataset, retry=self.retry)}
        except NotFound:
            if self.location:
                dataset.location = self.location
            self.client.create_dataset(dataset, exists_ok=True, retry=self.retry)
            existing = set()
        for name in TABLES:
            if name in existing:
                self._add_missing_columns(name)
                continue
            table = bigquery.Table(self.table_id(name), schema=table_schema(name))
            partition, clustering = LAYOUT.get(name, (None, ()))
            if partition:
                table.time_partitioning = bigquery.TimePartitioning(
                    type_=bigquery.TimePartitioningType.DAY, field=partition
                )
            if clustering:
                table.clustering_fields = list(clustering)
            self.client.create_table(table, exists_ok=True, retry=self.retry)
        self._ensured = True

    def _add_missing_columns(self, name: str) -> None:
        """Give a table made by an earlier version the columns added since (NULL in its old rows)."""
        table = self.client.get_table(self.table_id(name), retry=self.retry)
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
        self.query("".join(statements))

    def loaded_object_keys(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        self._ready()
        done: set[str] = set()
        unique = sorted(set(keys))
        for start in range(0, len(unique), MAX_SOURCE_URIS):
            rows = self.query(
                f"SELECT DISTINCT landing_object FROM {self._t(base.LOADED_OBJECTS)} "
                "WHERE landing_object IN UNNEST(@keys)",
                [bigquery.ArrayQueryParameter("keys", "STRING", unique[start : start + MAX_SOURCE_URIS])],
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
        """A new staging table (by default one STRING column ``line``) that expires by itself if a run dies.

        Its creation time is the lower bound of the load's ``loaded_at``, which lets the daily refresh
        tell rows of a load still in flight (see ``refresh_daily_pulls``).
        """
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
        try:
            latest = self.query(f"SELECT MAX(loaded_at) FROM {self._t(base.LOADED_OBJECTS)}")[0][0]
            # Never before the staging table's creation (see create_staging), and after every earlier load
            # even if a clock stepped back: the daily refresh's watermark relies on both.
            loaded_at = staging.created
            if latest is not None and latest >= loaded_at:
                loaded_at = latest + timedelta(microseconds=1)
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
                )
                + self._merge_script(staging, careful_table)
            )
        finally:
            if careful_table is not None:
                self.client.delete_table(careful_table, not_found_ok=True, retry=self.retry)
        stats = {row["landing_object"]: row for row in per_object if row["landing_object"] not in quarantined}
        _check_accounting(stats, counts)
        self._record_ledger(stats, quarantined, loaded_at, run_id)
        return {
            "lines": sum(row["lines"] for row in stats.values()),
            "pulls": sum(row["pulls"] for row in stats.values()),
            "events": sum(row["events"] for row in stats.values()),
            "duplicates": sum(row["duplicates"] for row in stats.values()),
            "rejected": sum(row["rejected"] for row in stats.values()),
            "days": sorted(
                {date.fromisoformat(day) for row in stats.values() for day in (row["days"] or "").split(",") if day}
            ),
            "quarantined": quarantined,
        }

    def _record_ledger(
        self,
        stats: dict[str, Any],
        quarantined: dict[str, tuple[str, str]],
        loaded_at: datetime,
        run_id: str,
    ) -> None:
        """The ledger rows of the objects loaded (LAST: an object counts as loaded only once all of its rows are
        in), and one quarantine row per object that could not be read at all."""
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
        )
        if done:
            script += f"""
INSERT INTO {self._t(base.LOADED_OBJECTS)}
  (landing_object, lines, pulls_inserted, events_inserted, duplicates_skipped, lines_rejected, loaded_at, run_id)
SELECT *, v_loaded_at, v_run_id FROM ({ledger_rows})
WHERE landing_object NOT IN (
  SELECT landing_object FROM {self._t(base.LOADED_OBJECTS)} WHERE landing_object IN UNNEST(v_settled));
"""
        script += f"DELETE FROM {self._t(base.QUARANTINED)} WHERE landing_object IN UNNEST(v_settled);\n"
        if gone:
            script += f"""
INSERT INTO {self._t(base.QUARANTINED)} (landing_object, reason, detail, quarantined_at, run_id)
SELECT *, v_loaded_at, v_run_id FROM ({gone_rows});
"""
        self.query(script)

    def _merge_script(self, staging: bigquery.Table, careful: bigquery.Table | None) -> str:
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
        lines = f"lines_{uuid.uuid4().hex[:8]}"  # unique: bqemulator keeps a script's temp tables after it ends

        when_text = json_text(o, ("data", "body", "when"))
        reason = reason_case(
            lambda predicate: _breaks(predicate, o), f"JSON_VALUE({o}, '$.type') != {sql_literal(base.PULL_TYPE)}"
        )

        def token_rows(table: str) -> str:
            """An earlier load's events carrying one of the batch's tokens, received within the replay window."""
            return f"""SELECT token_sha256 AS token, event_source, event_id, event_type, received_at, 0 AS batch,
      CAST(NULL AS STRING) AS landing_object, CAST(NULL AS INT64) AS landing_line, CAST(NULL AS STRING) AS object_key,
      CAST(NULL AS INT64) AS position
    FROM {self._t(table)}
    WHERE token_sha256 IN (SELECT token FROM tokens)
      AND received_at >= (SELECT TIMESTAMP_SUB(MIN(received_at), INTERVAL v_token_window SECOND) FROM tokens)"""

        def merge(table: str, outcome: str, values: dict[str, str]) -> str:
            sources = {
                **{c.name: c.name for c in ENVELOPE},
                **values,
                **{
                    c: c
                    for c in (
                        "landing_object",
                        "landing_line",
                        "received_at",
                        "received_by",
                        "body_sha256",
                        "token_sha256",
                    )
                },
                "loaded_at": "v_loaded_at",
                # Read only for the rows merged: the rows of one kind, all of them good lines.
                "raw_event": f"IF(IFNULL({keeps_raw_event(o, table == base.PULLS)}, TRUE), {o}, NULL)",
            }
            columns = [ident(c.name) for c in TABLES[table]]
            select = ", ".join(f"{sources[c.name]} AS {ident(c.name)}" for c in TABLES[table])
            return f"""
MERGE {self._t(table)} T
USING (SELECT {select} FROM {lines} WHERE outcome = '{outcome}') S
ON T.event_source = S.event_source AND T.event_id = S.event_id
WHEN NOT MATCHED THEN INSERT ({", ".join(columns)})
  VALUES ({", ".join(f"S.{c}" for c in columns)});"""

        pull_values = {
            "repository": json_text(o, ("data", "body", "repository")),
            "actor": column_value(ACTOR, o, ("data", "actor")),
            "body": column_value(PULL_BODY, o, ("data", "body")),
        }
        event_values = {"data": f"JSON_QUERY({o}, '$.data')"}
        # The attributes and receiver keys read as plain text (the ones above have rules or types of their own).
        plain = ("specversion", "datacontenttype", "dataschema", "audience", "actor", "body_sha256", "token_sha256")
        more_attributes = ",\n    ".join(f"{json_text(o, (key,))} AS {LINE_KEYS[key]}" for key in plain)

        return f"""
CREATE TEMP TABLE {lines} AS
WITH read AS (
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
), ranked AS (
  SELECT *,
    COALESCE(own_object, object_key) AS landing_object,
    -- The line's own number when it names another object (a copy) and is a number; else where it was read.
    IF(own_object != object_key AND own_line >= 1, own_line, COALESCE(position, own_line)) AS landing_line,
    IF(reason IS NULL, ROW_NUMBER() OVER (
      PARTITION BY reason IS NULL, is_pull, event_source, event_id
      ORDER BY received_at ASC NULLS LAST, COALESCE(own_object, object_key), COALESCE(own_line, position),
        object_key, position), NULL)
      AS copy_number
  FROM accounted
), existing AS (
  SELECT DISTINCT TRUE AS is_pull, t.event_source, t.event_id
  FROM {self._t(base.PULLS)} t
  JOIN (SELECT DISTINCT event_source, event_id FROM ranked WHERE reason IS NULL AND is_pull) k
    ON t.event_source = k.event_source AND t.event_id = k.event_id
  UNION ALL
  SELECT DISTINCT FALSE AS is_pull, t.event_source, t.event_id
  FROM {self._t(base.EVENTS)} t
  JOIN (SELECT DISTINCT event_source, event_id FROM ranked WHERE reason IS NULL AND NOT is_pull) k
    ON t.event_source = k.event_source AND t.event_id = k.event_id
), tokens AS (
  SELECT token_sha256 AS token, event_source, event_id, event_type, received_at, 1 AS batch, landing_object,
    landing_line, object_key, position
  FROM ranked WHERE reason IS NULL AND token_sha256 IS NOT NULL
), bound AS (
  -- A token authorizes one event: the first it carried (an earlier load's row within the replay window, else
  -- this batch's first by receipt) binds it.
  SELECT token, event_source, event_id, event_type FROM (
    {token_rows(base.PULLS)}
    UNION ALL
    {token_rows(base.EVENTS)}
    UNION ALL
    SELECT * FROM tokens)
  WHERE TRUE
  QUALIFY ROW_NUMBER() OVER (PARTITION BY token
    ORDER BY batch, received_at, landing_object, landing_line, object_key, position) = 1
)
SELECT r.*,
  CASE
    WHEN r.reason IS NOT NULL THEN 'rejected'
    -- Another event under a token that authorized one already: rejected as token_replayed.
    WHEN d.token IS NOT NULL AND (r.event_source != d.event_source OR r.event_id != d.event_id
      OR r.event_type != d.event_type) THEN 'rejected'
    WHEN r.copy_number > 1 OR e.event_id IS NOT NULL THEN 'duplicate'
    WHEN r.is_pull THEN 'pull'
    ELSE 'event'
  END AS outcome
FROM ranked r
LEFT JOIN existing e
  ON e.is_pull = r.is_pull AND e.event_source = r.event_source AND e.event_id = r.event_id
LEFT JOIN bound d ON r.reason IS NULL AND d.token = r.token_sha256;
{merge(base.PULLS, "pull", pull_values)}
{merge(base.EVENTS, "event", event_values)}

-- Where the load read the line: what a rejected line says of itself is not to be trusted.
INSERT INTO {self._t(base.REJECTED)} (landing_object, landing_line, reason, raw_line, rejected_at, run_id)
SELECT object_key, COALESCE(position, own_line), IFNULL(reason, {sql_literal(base.TOKEN_REPLAYED)}),
  IF(reason = 'line_too_large' AND problem IS NULL, LEFT(line, v_prefix), line), v_loaded_at, v_run_id
FROM {lines} l
WHERE outcome = 'rejected' AND NOT EXISTS (
  SELECT 1 FROM {self._t(base.REJECTED)} r
  WHERE r.landing_object = l.object_key AND r.landing_line = COALESCE(l.position, l.own_line));

-- What each object's lines became: checked against its bytes' count before its ledger row is written.
SELECT k AS landing_object, COUNT(l.outcome) AS lines,
  COUNTIF(l.outcome = 'pull') AS pulls, COUNTIF(l.outcome = 'event') AS events,
  COUNTIF(l.outcome = 'duplicate') AS duplicates, COUNTIF(l.outcome = 'rejected') AS rejected,
  STRING_AGG(DISTINCT IF(l.outcome = 'pull', CAST(DATE(l.body_when) AS STRING), NULL), ',') AS days
FROM UNNEST(v_keys) AS k
LEFT JOIN {lines} l ON l.object_key = k
GROUP BY k;
"""

    def refresh_daily_pulls(self) -> base.RefreshResult:
        """Recompute the days of pulls loaded since the watermark, then advance it.

        The watermark is the latest ``loaded_at`` consumed. Loads can run concurrently in BigQuery, so
        a load that started earlier may commit rows with a smaller ``loaded_at`` after a later one: rows
        are only consumed up to a cut-off before the oldest load still in flight (every load's rows carry
        a ``loaded_at`` no earlier than its staging table's creation, and the staging table lives until
        the load is done), and before now. Rows past the cut-off are left for the next refresh.
        """
        self._ready()
        now = self.query("SELECT CURRENT_TIMESTAMP()")[0][0]
        cutoff = now
        for table in self.client.list_tables(f"{self.client.project}.{self.dataset}", retry=self.retry):
            if table.table_id.startswith(STAGING_PREFIX) and table.created and table.created > now - self.staging_ttl:
                cutoff = min(cutoff, table.created - timedelta(microseconds=1))
        state = self.query(
            f"SELECT MAX(loaded_through) FROM {self._t(base.REFRESH_STATE)} WHERE table_name = @table",
            [bigquery.ScalarQueryParameter("table", "STRING", base.DAILY_PULLS)],
        )
        mark = state[0][0] if state else None
        pulls, daily = self._t(base.PULLS), self._t(base.DAILY_PULLS)
        days = f"refresh_days_{uuid.uuid4().hex[:8]}"  # unique: bqemulator keeps a script's temp tables
        consumed = "(v_mark IS NULL OR loaded_at > v_mark) AND loaded_at <= v_cutoff"
        row = self.query(
            script_variables(v_mark=("TIMESTAMP", mark), v_cutoff=("TIMESTAMP", cutoff))
            + f"""
CREATE TEMP TABLE {days} AS
SELECT DISTINCT DATE(body.`when`) AS day FROM {pulls} WHERE {consumed} AND body.`when` IS NOT NULL;

BEGIN TRANSACTION;
DELETE FROM {daily} WHERE day IN (SELECT day FROM {days});
INSERT INTO {daily} (day, repository, events, image_pulls, manifest_heads, blob_gets, errors,
  unique_actors, unique_clients, computed_at)
SELECT DATE(body.`when`) AS day, repository,
  COUNT(*),
  COUNTIF(body.method = 'GET' AND body.type = 'manifest' AND body.error IS NULL),
  COUNTIF(body.method = 'HEAD' AND body.type = 'manifest'),
  COUNTIF(body.method = 'GET' AND body.type = 'blob'),
  COUNTIF(body.error IS NOT NULL),
  COUNT(DISTINCT actor.subject),
  COUNT(DISTINCT body.remote_address),
  CURRENT_TIMESTAMP()
FROM {pulls}
WHERE DATE(body.`when`) IN (SELECT day FROM {days})
GROUP BY day, repository;
MERGE {self._t(base.REFRESH_STATE)} T
USING (SELECT * FROM (SELECT {sql_literal(base.DAILY_PULLS)} AS table_name, MAX(loaded_at) AS through
                      FROM {pulls} WHERE {consumed})
       WHERE through IS NOT NULL) S
ON T.table_name = S.table_name
WHEN MATCHED THEN UPDATE SET loaded_through = S.through, refreshed_at = CURRENT_TIMESTAMP()
WHEN NOT MATCHED THEN INSERT (table_name, loaded_through, refreshed_at)
  VALUES (S.table_name, S.through, CURRENT_TIMESTAMP());
COMMIT TRANSACTION;

SELECT ARRAY(SELECT day FROM {days} ORDER BY day) AS days,
  (SELECT COUNT(*) FROM {daily} WHERE day IN (SELECT day FROM {days})) AS written,
  (SELECT COUNT(*) FROM {daily}) AS table_rows;
"""
        )[0]
        return base.RefreshResult(
            days_recomputed=list(row["days"]), rows_written=row["written"], table_rows=row["table_rows"]
        )

    def refresh_repository_summary(self) -> base.RefreshResult:
        self._ready()
        summary = self._t(base.REPOSITORY_SUMMARY)
        row = self.query(
            script_variables(v_tolerance_s=("INT64", int(self.future_tolerance.total_seconds())))
            + f"""
-- The refresh time (computed_at), also as UTC civil time like body.when. A pull dated past the horizon is not
-- plausible: it counts in no time-based figure, so it cannot empty everyone's windows (the checks flag it).
DECLARE v_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP();
DECLARE v_now DATETIME DEFAULT DATETIME(v_at);
DECLARE v_horizon DATETIME DEFAULT DATETIME_ADD(v_now, INTERVAL v_tolerance_s SECOND);
BEGIN TRANSACTION;
DELETE FROM {summary} WHERE TRUE;
INSERT INTO {summary} (repository, events, image_pulls, errors, error_rate, unique_actors, unique_clients,
  first_seen, last_seen, image_pulls_last_7d, image_pulls_last_30d, top_tags, computed_at)
WITH p AS (
  SELECT repository, body.`when` AS seen, body.`when` <= v_horizon AS plausible, body.tag AS tag,
    body.error IS NOT NULL AS failed,
    body.method = 'GET' AND body.type = 'manifest' AND body.error IS NULL AS image_pull,
    actor.subject AS actor, body.remote_address AS client
  FROM {self._t(base.PULLS)}
), tag_pulls AS (
  SELECT repository, tag, COUNT(*) AS image_pulls FROM p WHERE image_pull AND tag IS NOT NULL GROUP BY repository, tag
), top AS (
  SELECT repository,
    ARRAY_AGG(STRUCT(tag AS tag, image_pulls AS image_pulls) ORDER BY image_pulls DESC, tag ASC LIMIT 5) AS top_tags
  FROM tag_pulls GROUP BY repository
)
SELECT p.repository, COUNT(*), COUNTIF(image_pull), COUNTIF(failed), COUNTIF(failed) / COUNT(*),
  COUNT(DISTINCT actor), COUNT(DISTINCT client), MIN(IF(plausible, seen, NULL)), MAX(IF(plausible, seen, NULL)),
  COUNTIF(image_pull AND plausible AND seen > DATETIME_SUB(v_now, INTERVAL 7 DAY)),
  COUNTIF(image_pull AND plausible AND seen > DATETIME_SUB(v_now, INTERVAL 30 DAY)),
  IFNULL(ANY_VALUE(top.top_tags), []), v_at
FROM p LEFT JOIN top ON top.repository = p.repository
GROUP BY p.repository;
COMMIT TRANSACTION;
SELECT COUNT(*) AS table_rows FROM {summary};
"""
        )[0]
        return base.RefreshResult(days_recomputed=[], rows_written=row["table_rows"], table_rows=row["table_rows"])

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
        )

    def row_count(self, table: str) -> int:
        self._ready()
        return int(self.query(f"SELECT COUNT(*) FROM {self._t(table)}")[0][0])

    def column_schema(self, table: str) -> list[tuple[str, str]]:
        self._ready()
        return [(f.name, sql_type(f)) for f in self.client.get_table(self.table_id(table), retry=self.retry).schema]

    def drop_all(self) -> None:
        """Drop every table of the dataset, staging tables of dead runs included; the dataset stays."""
        dataset = f"{self.client.project}.{self.dataset}"
        try:
            leftovers = [
                t.table_id
                for t in self.client.list_tables(dataset, retry=self.retry)
                if t.table_id.startswith(STAGING_PREFIX)
            ]
        except NotFound:
            leftovers = []
        for table in (*TABLES, *leftovers):
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
        which commit one table at a time) also keeps each table's schema, partitioning and clustering.
        """
        if not isinstance(shadow, BigQueryWarehouse) or shadow.dataset == self.dataset:
            raise ValueError("swap_in takes this warehouse's shadow (see shadow())")
        self.ensure_tables()
        statements = ""
        for table, columns in TABLES.items():
            names = ", ".join(ident(column.name) for column in columns)
            statements += (
                f"DELETE FROM {self._t(table)} WHERE TRUE;\n"
                f"INSERT INTO {self._t(table)} ({names}) SELECT {names} FROM {shadow._t(table)};\n"
            )
        self.query(f"BEGIN TRANSACTION;\n{statements}COMMIT TRANSACTION;\n")

    def drop_shadow(self) -> None:
        self.client.delete_dataset(
            f"{self.client.project}.{self.dataset}{base.SHADOW_SUFFIX}",
            delete_contents=True,
            not_found_ok=True,
            retry=self.retry,
        )
