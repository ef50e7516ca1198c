"""The warehouses' SQL, one file per job and dialect: ``sql/duckdb/<name>.sql`` beside ``sql/bigquery/<name>.sql``.

A reviewer reads the two engines' versions of a statement side by side. Files hold only what varies per
deployment as ``{{placeholder}}`` (table names, rendered fragments such as the rejection rules); values are
bound parameters (``$name`` in DuckDB, ``@name`` or ``DECLARE``d variables in BigQuery), never pasted in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Literal

Dialect = Literal["duckdb", "bigquery"]

_HERE = Path(__file__).parent
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# A file of several statements names each on a line of its own: ``-- name: <statement>``.
_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@cache
def source(dialect: Dialect, name: str) -> str:
    """The text of ``sql/<dialect>/<name>.sql``."""
    return (_HERE / dialect / f"{name}.sql").read_text(encoding="utf-8")


def statement(dialect: Dialect, name: str, **fragments: str) -> str:
    """``sql/<dialect>/<name>.sql`` with its ``{{placeholders}}`` filled in; every one must be given, and used."""
    text = source(dialect, name)
    wanted = set(_PLACEHOLDER.findall(text))
    if wanted != set(fragments):
        missing, extra = sorted(wanted - set(fragments)), sorted(set(fragments) - wanted)
        raise KeyError(f"sql/{dialect}/{name}.sql: placeholders missing {missing}, unknown {extra}")
    return _PLACEHOLDER.sub(lambda match: fragments[match.group(1)], text)


def placeholders(dialect: Dialect, name: str) -> set[str]:
    """The ``{{placeholders}}`` ``sql/<dialect>/<name>.sql`` names."""
    return set(_PLACEHOLDER.findall(source(dialect, name)))


def statements_from(dialect: Dialect, name: str, available: Mapping[str, str]) -> dict[str, str]:
    """``statements`` filled from ``available``, a superset of what the file names (e.g. every table's name)."""
    return statements(dialect, name, **{key: available[key] for key in placeholders(dialect, name) if key in available})


def statements(dialect: Dialect, name: str, **fragments: str) -> dict[str, str]:
    """The statements of ``sql/<dialect>/<name>.sql`` by their ``-- name:`` lines, in file order, filled in."""
    text = statement(dialect, name, **fragments)
    parts = _NAME.split(text)
    # parts: [text before the first name, name, body, name, body, ...]
    named = {parts[index]: parts[index + 1].strip().rstrip(";") for index in range(1, len(parts), 2)}
    if not named:
        raise KeyError(f"sql/{dialect}/{name}.sql names no statement (-- name: ...)")
    return named
