"""Statement-by-statement timing of a warehouse load, to show where its time goes.

``profiled_connect`` wraps the connect function ``DuckDBWarehouse`` is given: every ``execute`` on the
connection it hands out is timed and filed under a label made from the statement's head (``INSERT INTO
<table>``, ``CREATE OR REPLACE TEMP TABLE <name>``, ...). The SQL itself is untouched. Only used for one
extra load: the timed trials run on the plain connection.
"""

from __future__ import annotations

import re
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import duckdb

_HEAD_END = re.compile(r" \(| AS | WHERE | VALUES | SELECT ")


class StatementTimes:
    """Wall seconds, CPU seconds (the whole process: DuckDB's threads) and calls per statement label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def timing(self, label: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            self.seconds[label] += time.perf_counter() - wall
            self.cpu[label] += _cpu_seconds() - cpu
            self.calls[label] += 1

    def rows(self) -> list[tuple[str, float, float, int]]:
        """(label, wall seconds, CPU seconds, calls), most expensive first."""
        rows = [(label, wall, self.cpu[label], self.calls[label]) for label, wall in self.seconds.items()]
        return sorted(rows, key=lambda row: -row[1])


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def statement_label(sql: str) -> str:
    """A short name for a statement: its words up to the first column list, ``AS`` or ``WHERE``."""
    normalized = " ".join(sql.replace('"', "").split())
    return _HEAD_END.split(normalized, maxsplit=1)[0][:90]


class _TimedConnection:
    def __init__(self, conn: duckdb.DuckDBPyConnection, times: StatementTimes) -> None:
        self._conn = conn
        self._times = times

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        with self._times.timing(statement_label(sql)):
            return self._conn.execute(sql, *args, **kwargs)

    def close(self) -> None:
        with self._times.timing("close connection (checkpoint)"):
            self._conn.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def profiled_connect(
    connect: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]], times: StatementTimes
) -> Callable[[], AbstractContextManager[Any]]:
    """``connect``, with every statement on its connections timed into ``times``."""

    @contextmanager
    def timed() -> Iterator[Any]:
        with times.timing("open connection"):
            manager = connect()
            conn = manager.__enter__()
        try:
            yield _TimedConnection(conn, times)
        except BaseException as exc:
            if not manager.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            manager.__exit__(None, None, None)

    return timed
