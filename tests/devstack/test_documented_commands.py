"""The commands README.md and docs/*.md give for the local warehouse run as written: every ``scripts/query``
command of their ``bash`` code blocks, against a real DuckDB warehouse with the pipeline's tables."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from dagster_duckdb import DuckDBResource

from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from tests.receiver.server import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_queries() -> list[tuple[str, list[str]]]:
    """``(document, argv)`` of each ``scripts/query ...`` command in a ``bash`` block (it may span lines: the SQL is
    one quoted argument), split as the shell would."""
    found = []
    for document in DOCUMENTS:
        for block in re.findall(r"```bash\n(.*?)```", document.read_text(), flags=re.DOTALL):
            for command in re.findall(r'^ *(scripts/query "[^"]*")', block, flags=re.MULTILINE):
                found.append((document.name, shlex.split(command)))
    return found


def test_the_documents_give_query_commands() -> None:
    assert [name for name, _ in documented_queries()] == ["querying.md", "querying.md"]


def test_each_documented_query_runs_against_the_warehouse(tmp_path: Path) -> None:
    database = tmp_path / "warehouse.duckdb"
    DuckDBWarehouse(DuckDBResource(database=str(database)).get_connection).ensure_tables()
    env = {**os.environ, "PULL_EVENTS_WAREHOUSE": str(database)}
    for name, argv in documented_queries():
        done = subprocess.run(
            [ROOT / argv[0], *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert (done.returncode, done.stderr) == (0, ""), f"{name}: {argv}"
    assert (tmp_path / "snapshot" / "schema.sql").exists()  # EXPORT DATABASE wrote into the caller's directory


def test_query_prints_the_result_and_fails_on_a_bad_statement(tmp_path: Path) -> None:
    database = tmp_path / "warehouse.duckdb"
    DuckDBWarehouse(DuckDBResource(database=str(database)).get_connection).ensure_tables()
    env = {**os.environ, "PULL_EVENTS_WAREHOUSE": str(database)}
    query = ROOT / "scripts/query"
    ok = subprocess.run([query, "SELECT 6 * 7 AS answer"], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "│     42 │" in ok.stdout
    bad = subprocess.run([query, "SELECT * FROM nowhere"], env=env, capture_output=True, text=True, timeout=120)
    assert (bad.returncode, bad.stderr.splitlines()[0][:46]) == (1, "scripts/query: Catalog Error: Table with name ")
