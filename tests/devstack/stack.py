"""The local stack as tests (and benchmarks/stack_latency.py) see it: the environment ``scripts/stack`` gives the
receiver, and its DuckDB warehouse read the way docs/querying.md asks while loads run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from devstack.oidc import DEFAULT_GROUP


def stack_receiver_env(landing: Path, issuer_url: str, group: str = DEFAULT_GROUP) -> dict[str, str]:
    """What ``scripts/stack`` exports for the receiver when it starts the development issuer."""
    return {
        "PULL_EVENTS_LANDING": str(landing),
        "PULL_EVENTS_HOST": "127.0.0.1",
        "PULL_EVENTS_AUTH": "chainguard",
        "CHAINGUARD_ISSUER": issuer_url,
        "CHAINGUARD_GROUP": group,
    }


def warehouse_rows(warehouse: Path, sql: str) -> list[tuple[Any, ...]] | None:
    """``sql``'s rows, read-only (opened and closed at once); None while the file is missing, has no such table yet
    or a load holds it."""
    try:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return con.sql(sql).fetchall()
    except (duckdb.IOException, duckdb.CatalogException):
        return None
