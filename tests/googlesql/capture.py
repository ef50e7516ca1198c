"""The SQL the BigQuery warehouse actually sends: every operation run against bqemulator, every job recorded.

``RecordingClient`` wraps the google-cloud-bigquery client the warehouse is given and records each ``query`` job's
text and query parameters, and each table the warehouse creates through the API (staging tables, a rebuild's
shadow and relayout copies), so the analyzer's catalog has them. ``record_sections`` records which ``-- name:``
sections of ``sql/bigquery/*.sql`` were rendered, and as what text, so that the tests can require each one to be
among the analyzed jobs. ``exercise`` drives every public operation of the warehouse, and the load's rarer paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.api_core.retry import Retry
from google.cloud import bigquery

from pull_events.landing import GcsLandingStore, LandedObject, LandingStore, object_key
from pull_events_dagster.warehouse import base, sql
from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse, table_schema
from pull_events_dagster.warehouse.schema import TABLES
from tests.pipeline.factories import (
    PULL_TYPE,
    RawLine,
    landed_line,
    other_event,
    poison_event,
    pull_event,
    write_object,
)
from tests.pipeline.test_duckdb_warehouse import facts

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Job:
    """One query job as sent: its text and its query parameters."""

    text: str
    parameters: tuple[Any, ...]


@dataclass
class Captured:
    jobs: list[Job] = field(default_factory=list)
    created_tables: dict[str, list[bigquery.SchemaField]] = field(default_factory=dict)  # "project.dataset.table"
    sections: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (file, name) -> rendered texts

    def unique_jobs(self) -> list[Job]:
        """Each distinct job once (a text with the same parameters' types counts once), in first-sent order."""
        seen: dict[tuple, Job] = {}
        for job in self.jobs:
            key = (job.text, tuple((p.name, type(p).__name__, _type_name(p)) for p in job.parameters))
            seen.setdefault(key, job)
        return list(seen.values())


def _type_name(parameter: Any) -> str:
    return getattr(parameter, "array_type", None) or getattr(parameter, "type_", "")


class RecordingClient:
    """A bigquery.Client that records what it is asked to run and create; everything else passes through."""

    def __init__(self, client: bigquery.Client, captured: Captured) -> None:
        self._client = client
        self._captured = captured

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def query(self, query: str, job_config: bigquery.QueryJobConfig | None = None, **kwargs: Any) -> Any:
        parameters = tuple(job_config.query_parameters) if job_config is not None else ()
        self._captured.jobs.append(Job(query, parameters))
        return self._client.query(query, job_config=job_config, **kwargs)

    def create_table(self, table: bigquery.Table, *args: Any, **kwargs: Any) -> Any:
        self._captured.created_tables[f"{table.project}.{table.dataset_id}.{table.table_id}"] = list(table.schema)
        return self._client.create_table(table, *args, **kwargs)


@contextmanager
def record_sections(captured: Captured) -> Iterator[None]:
    """Record every section of a ``sql/<dialect>/*.sql`` file the warehouse renders (bigquery ones only)."""
    render = sql.statements

    def recording(dialect: sql.Dialect, name: str, **fragments: str) -> dict[str, str]:
        rendered = render(dialect, name, **fragments)
        if dialect == "bigquery":
            for section, text in rendered.items():
                captured.sections.setdefault((name, section), set()).add(text)
        return rendered

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sql, "statements", recording)
        yield


def catalog_tables(captured: Captured, project: str, datasets: list[str]) -> dict[str, list[Any]]:
    """The analyzer's tables: ``schema.py``'s tables under each dataset's qualified name, and every table the
    warehouse created through the API (staging tables, copies) with the schema it gave it."""
    tables: dict[str, list[Any]] = {
        f"{project}.{dataset}.{name}": table_schema(name) for dataset in datasets for name in TABLES
    }
    tables.update(captured.created_tables)
    return tables


def _objects(store: LandingStore, *keys: str) -> list[LandedObject]:
    listed = {o.key: o for o in store.list_all()}
    return [listed[key] for key in keys]


def _as_an_earlier_version_made_it(client: bigquery.Client, warehouse: BigQueryWarehouse) -> None:
    """The pull table as the previous version made it (no ``day``, partitioned on event_time), rows kept. Through
    the raw client: this is the test's doing, not SQL the warehouse sends."""
    earlier = bigquery.Table(
        warehouse.table_id("earlier"), schema=[f for f in table_schema(base.PULLS) if f.name != "day"]
    )
    earlier.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY, field="event_time")
    client.create_table(earlier)
    names = ", ".join(f"`{f.name}`" for f in earlier.schema)
    client.query(
        f"INSERT INTO `{earlier.reference}` ({names}) SELECT {names} FROM `{warehouse.table_id(base.PULLS)}`"
    ).result()
    client.delete_table(warehouse.table_id(base.PULLS))
    client.copy_table(earlier.reference, warehouse.table_id(base.PULLS)).result()
    client.delete_table(earlier.reference)


def exercise(client: bigquery.Client, store: GcsLandingStore, dataset: str) -> Captured:
    """Run every operation of a BigQuery warehouse on ``dataset`` and return what it sent."""
    captured = Captured()
    recording = RecordingClient(client, captured)
    warehouse = BigQueryWarehouse(recording, dataset, retry=Retry(timeout=30))  # type: ignore[arg-type]
    with record_sections(captured):
        warehouse.ensure_tables()
        # A batch with pulls, another event type, a duplicate, and lines every rule rejects.
        good = write_object(
            store,
            PULL_TYPE,
            [
                pull_event(facts("a1")),
                pull_event(facts("a2", when=datetime(2026, 11, 19, 8, 0))),
                pull_event(facts("a1")),
                poison_event("invalid_json", facts("x1")),
                poison_event("missing_attribute:source", facts("x2")),
                poison_event("wrong_type:data.body", facts("x3")),
            ],
            T0,
            sequence=1,
        )
        created = "dev.chainguard.repo.created.v1"
        other = write_object(store, created, [other_event(created, "o1", T0, {"n": 1})], T0, sequence=2)
        # A line that names no object (the careful reading), and an object gone before its load (the quarantine).
        key_c = object_key(PULL_TYPE, T0 + timedelta(seconds=3), "hand", 3)
        cut_short = landed_line(pull_event(facts("c2")), key_c, 2, T0, "hand")[:150]
        store.write_new(key_c, f"{landed_line(pull_event(facts('c1')), key_c, 1, T0, 'hand')}\n{cut_short}\n".encode())
        # U+001F, the staging load's delimiter: the load job skips the line as a bad record.
        delimited = RawLine('{"id":"x"}\x1f{"id":"y"}')
        unreadable = write_object(store, PULL_TYPE, [pull_event(facts("u1")), delimited], T0, sequence=4)
        gone = write_object(store, PULL_TYPE, [pull_event(facts("g1"))], T0, sequence=5)
        batch = _objects(store, good, other, key_c, unreadable, gone)
        store.bucket.blob(store.prefix + gone).delete()
        warehouse.load_objects(store, batch, "run-1")
        warehouse.load_objects(store, _objects(store, good), "run-2")  # all loaded already: the ledger look-up
        warehouse.loaded_object_keys([good, "odd/name-without-a-time.ndjson"])

        days = warehouse.pull_days()
        warehouse.refresh_daily_pulls(days)
        warehouse.refresh_repository_summary()
        warehouse.daily_preview(days)
        warehouse.summary_preview()
        warehouse.summary_audit()
        warehouse.check_figures()
        warehouse.row_count(base.PULLS)
        warehouse.column_schema(base.PULLS)

        # A table made by an earlier version: columns added (ALTER TABLE, UPDATE), then a rebuild lays it out anew
        # through a shadow dataset, a relayout copy and one swap-in transaction.
        _as_an_earlier_version_made_it(client, warehouse)
        upgraded = BigQueryWarehouse(recording, dataset, retry=Retry(timeout=30))  # type: ignore[arg-type]
        upgraded.ensure_tables()
        upgraded.rebuild(store, _objects(store, good, other, key_c), "rebuild", 2)
        upgraded.drop_all()
    return captured


def every_section() -> set[tuple[str, str]]:
    """Every ``-- name:`` section of every ``sql/bigquery/*.sql`` file, as (file, name)."""
    folder = Path(sql.__file__).parent / "bigquery"
    found = set()
    for path in sorted(folder.glob("*.sql")):
        found |= {(path.stem, name) for name in sql._NAME.findall(path.read_text(encoding="utf-8"))}
    return found
