"""Run bqemulator with two departures from BigQuery fixed; every other part of it is untouched.

The warehouse tests need these, and each fix makes the emulator do what BigQuery documents:

1. CSV load jobs honour their options. bqemulator 1.4.0 loads CSV with DuckDB's
   ``COPY ... (FORMAT CSV, HEADER)``: it always drops the first line as a header (whatever
   ``skipLeadingRows`` says), sniffs the delimiter and quote instead of using ``fieldDelimiter`` /
   ``quote`` (and fails on JSON lines, which the sniffer cannot make sense of), and has no
   ``maxBadRecords``. The replacement reader applies, as in
   https://cloud.google.com/bigquery/docs/loading-data-cloud-storage-csv: ``fieldDelimiter`` (``\\t`` /
   ``tab`` spell a tab), ``quote`` (``""``: no quoting), ``skipLeadingRows``, ``allowJaggedRows``; rows
   the reader cannot take (too many values, bad encoding) are bad records: skipped and counted up to
   ``maxBadRecords`` and reported as ``statistics.load.badRecords``; one more fails the job.
   Known difference kept: BigQuery replaces invalid UTF-8 with U+FFFD, this reader counts such a row as bad.
2. Nested field names are quoted in the DuckDB DDL of a new table. bqemulator writes
   ``STRUCT(when TIMESTAMP, ...)``, a syntax error for a RECORD with a field named ``when`` (the
   reference pull table's ``body.when``) or ``aws-arn``; BigQuery takes both.

Run with the emulator's own interpreter: ``<bqemulator venv>/bin/python bqemulator_fidelity.py start ...``.
"""

from __future__ import annotations

import contextvars
import uuid
from typing import Any

from bqemulator.jobs import executor
from bqemulator.storage import type_map

_bad_records: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("bad_records", default=None)
_original_load_path = executor._load_path_into_target
_original_execute_load_job = executor.execute_load_job


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _delimiter(config: dict[str, Any]) -> str:
    value = config.get("fieldDelimiter", ",")
    return "\t" if value in ("\\t", "tab") else value


def _load_csv_with_options(path: str, job: Any, ctx: Any) -> None:
    config = job.raw_config
    quote = config.get("quote", '"')
    skip = int(config.get("skipLeadingRows", 0) or 0)
    max_bad = int(config.get("maxBadRecords", 0) or 0)
    columns = ctx.engine.execute(f"DESCRIBE {job.target_ref}").fetchall()
    column_spec = "{" + ", ".join(f"{_literal(name)}: {_literal(kind)}" for name, kind, *_ in columns) + "}"
    suffix = uuid.uuid4().hex[:12]
    staged, rejects, scans = f"bqemu_csv_{suffix}", f"bqemu_csv_rejects_{suffix}", f"bqemu_csv_scans_{suffix}"
    ctx.engine.execute(
        f"CREATE TEMP TABLE {staged} AS SELECT * FROM read_csv(?, delim={_literal(_delimiter(config))}, "
        f"quote={_literal(quote)}, escape={_literal(quote)}, header=false, skip={skip}, columns={column_spec}, "
        f"auto_detect=false, hive_partitioning=false, null_padding={str(bool(config.get('allowJaggedRows'))).lower()}, "
        f"max_line_size=104857600, store_rejects=true, rejects_table={_literal(rejects)}, "
        f"rejects_scan={_literal(scans)})",
        [path],
    )
    try:
        bad = ctx.engine.execute(f"SELECT count(DISTINCT (file_id, line)) FROM {rejects}").fetchone()[0]
        counter = _bad_records.get()
        total = bad + (counter[0] if counter else 0)
        if total > max_bad:
            raise RuntimeError(
                f"Too many errors encountered: {total} bad records in CSV input, maxBadRecords is {max_bad}"
            )
        if counter is not None:
            counter[0] = total
        ctx.engine.execute(f"INSERT INTO {job.target_ref} SELECT * FROM {staged}")
    finally:
        for table in (staged, rejects, scans):
            ctx.engine.execute(f"DROP TABLE IF EXISTS {table}")


def _load_path_into_target(path: str, job: Any, ctx: Any) -> None:
    if job.source_format == "CSV":
        _load_csv_with_options(path, job, ctx)
    else:
        _original_load_path(path, job, ctx)


async def execute_load_job(project_id: str, job_id: str, config: dict[str, Any], ctx: Any) -> Any:
    counter = [0]
    token = _bad_records.set(counter)
    try:
        meta = await _original_execute_load_job(project_id, job_id, config, ctx)
    finally:
        _bad_records.reset(token)
    statistics = dict(meta.statistics)
    statistics["load"] = {**statistics.get("load", {}), "badRecords": str(counter[0])}
    return meta.model_copy(update={"statistics": statistics})


_original_schema_columns = type_map.bq_schema_to_duckdb_columns


def bq_schema_to_duckdb_columns(fields: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``type_map.bq_schema_to_duckdb_columns`` with nested field names quoted."""
    result: list[tuple[str, str]] = []
    for field in fields:
        if field["type"].upper() not in ("RECORD", "STRUCT"):
            result.extend(_original_schema_columns([field]))
            continue
        inner = bq_schema_to_duckdb_columns(field.get("fields", []))
        duckdb_type = "STRUCT(" + ", ".join(f"{_identifier(name)} {kind}" for name, kind in inner) + ")"
        if field.get("mode", "NULLABLE").upper() == "REPEATED":
            duckdb_type += "[]"
        result.append((field["name"], duckdb_type))
    return result


# Before the server's modules import these names.
type_map.bq_schema_to_duckdb_columns = bq_schema_to_duckdb_columns
executor._load_path_into_target = _load_path_into_target
executor.execute_load_job = execute_load_job

if __name__ == "__main__":
    from bqemulator.cli import main

    main()
