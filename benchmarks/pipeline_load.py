"""One timed load of a landing zone into a fresh DuckDB file, in a process of its own.

``measure_load`` starts ``python -m benchmarks.pipeline_load`` and reads the child's peak RSS from the
kernel (``wait4`` rusage, ``ru_maxrss``), so each figure is that load's own and nothing else's. Two engines:

- ``pipeline``: ``DuckDBWarehouse.load_objects`` over the zone's objects in batches of
  ``max_objects_per_run``, exactly as the load asset calls it (one connection per call, through
  dagster-duckdb's ``DuckDBResource``); dedup, quarantine, ledger and all.
- ``raw``: ``CREATE TABLE t AS SELECT * FROM read_ndjson([...])`` of the same files: DuckDB's own
  ceiling for reading them into a table. ``ignore_errors`` is needed for it to get past the poison lines.

Only the load is timed: listing the objects (the sensor's job) and the counts read back afterwards to
check the load are not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cpu import MachineCpu
from benchmarks.pipeline_profile import StatementTimes, profiled_connect

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("pipeline", "raw")


@dataclass(frozen=True)
class LoadRun:
    """One load, measured."""

    engine: str
    seconds: float  # the load alone, timed inside the child
    lines: int  # landed lines in the files loaded (known from generation)
    peak_rss_bytes: int  # the child's peak resident set (ru_maxrss)
    baseline_rss_bytes: int  # the child's resident set after its imports, before the load
    database_bytes: int  # size of the DuckDB file afterwards
    other_cores: float  # CPU used by other processes on the machine during the load
    counts: dict[str, int]  # what the load reported and what the tables hold afterwards
    statements: list[tuple[str, float, float, int]]  # (statement, seconds, CPU seconds, calls) of a profiled load

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds

    @property
    def cores(self) -> float:
        """CPU cores the load kept busy on average (its process's CPU time over the load's wall time)."""
        return self.counts["cpu_ms"] / 1000 / self.seconds


def measure_load(
    engine: str, landing: Path, lines: int, database: Path, max_objects_per_run: int, log: Path, profile: bool = False
) -> LoadRun:
    """Run one load in a fresh child process on a fresh DuckDB file; the file is deleted afterwards.

    ``profile``: time each statement of a pipeline load (``LoadRun.statements``).
    """
    for path in (database, database.with_name(database.name + ".wal")):
        path.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "benchmarks.pipeline_load", "--engine", engine, "--landing", str(landing),
        "--database", str(database), "--max-objects-per-run", str(max_objects_per_run),
        *(["--profile"] if profile else []),
    ]  # fmt: skip
    with log.open("ab") as errors, MachineCpu() as machine:
        started = time.monotonic()
        child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors)
        try:
            output = child.stdout.read() if child.stdout else b""
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()
            child.wait()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
    if child.returncode != 0:
        raise RuntimeError(f"{engine} load of {landing} exited with {child.returncode}; see {log}")
    report = json.loads(output)
    child_cores = (usage.ru_utime + usage.ru_stime) / wall
    database_bytes = database.stat().st_size
    counts = {**report["counts"], **table_counts(engine, database)}
    for path in (database, database.with_name(database.name + ".wal")):
        path.unlink(missing_ok=True)
    return LoadRun(
        engine=engine,
        seconds=report["seconds"],
        lines=lines,
        peak_rss_bytes=usage.ru_maxrss * 1024,  # kilobytes on Linux
        baseline_rss_bytes=report["baseline_rss_bytes"],
        database_bytes=database_bytes,
        other_cores=max(0.0, machine.cores - child_cores),
        counts=counts,
        statements=[(label, seconds, cpu, calls) for label, seconds, cpu, calls in report["statements"]],
    )


def _cpu_seconds() -> float:
    """User + system CPU of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _load_pipeline(
    landing: Path, database: Path, max_objects_per_run: int, times: StatementTimes | None
) -> tuple[float, int, dict[str, int]]:
    from dagster_duckdb import DuckDBResource

    from pull_events.landing import LocalLandingStore
    from pull_events_dagster.defs.assets import batches
    from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse

    store = LocalLandingStore(landing)
    objects = sorted(store.list_all(), key=lambda o: o.key)
    connect = DuckDBResource(database=str(database)).get_connection
    warehouse = DuckDBWarehouse(connect if times is None else profiled_connect(connect, times))
    baseline = _resident_bytes()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    results = [
        warehouse.load_objects(store, batch, f"bench-{index}")
        for index, batch in enumerate(batches(objects, max_objects_per_run))
    ]
    seconds = time.perf_counter() - started
    counts = {
        "cpu_ms": round((_cpu_seconds() - cpu) * 1000),
        "load_calls": len(results),
        "objects_loaded": sum(r.objects_loaded for r in results),
        "lines_read": sum(r.lines_read for r in results),
        "pulls_inserted": sum(r.pulls_inserted for r in results),
        "events_inserted": sum(r.events_inserted for r in results),
        "duplicates_skipped": sum(r.duplicates_skipped for r in results),
        "lines_rejected": sum(r.lines_rejected for r in results),
    }
    return seconds, baseline, counts


def _load_raw(landing: Path, database: Path) -> tuple[float, int, dict[str, int]]:
    import duckdb

    from pull_events.landing import LocalLandingStore

    paths = sorted(o.uri for o in LocalLandingStore(landing).list_all())
    baseline = _resident_bytes()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    conn = duckdb.connect(str(database))
    conn.execute("CREATE TABLE t AS SELECT * FROM read_ndjson($paths, ignore_errors = true)", {"paths": paths})
    conn.close()
    seconds = time.perf_counter() - started
    return seconds, baseline, {"cpu_ms": round((_cpu_seconds() - cpu) * 1000), "files": len(paths)}


def table_counts(engine: str, database: Path) -> dict[str, int]:
    """What the load left in the file (read after the child has exited, so not part of its peak)."""
    import duckdb

    from pull_events_dagster.warehouse import base
    from pull_events_dagster.warehouse.duckdb import quote

    conn = duckdb.connect(str(database), read_only=True)
    try:
        if engine == "raw":
            return {"table_rows": conn.execute("SELECT count(*) FROM t").fetchone()[0]}
        table = {name: f"{quote(base.DATASET)}.{quote(name)}" for name in (base.PULLS, base.REJECTED)}
        pulls, rejected = table[base.PULLS], table[base.REJECTED]
        return {
            "pull_rows": conn.execute(f"SELECT count(*) FROM {pulls}").fetchone()[0],
            "distinct_pull_keys": conn.execute(
                f"SELECT count(*) FROM (SELECT DISTINCT event_source, event_id FROM {pulls})"
            ).fetchone()[0],
            "rejected_rows": conn.execute(f"SELECT count(*) FROM {rejected}").fetchone()[0],
        }
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_load", description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--landing", type=Path, required=True)
    parser.add_argument("--database", type=Path, required=True)
    parser.add_argument("--max-objects-per-run", type=int, required=True)
    parser.add_argument("--profile", action="store_true", help="time every statement of a pipeline load")
    args = parser.parse_args(argv)
    times = StatementTimes() if args.profile else None
    if args.engine == "pipeline":
        seconds, baseline, counts = _load_pipeline(args.landing, args.database, args.max_objects_per_run, times)
    else:
        seconds, baseline, counts = _load_raw(args.landing, args.database)
    statements = times.rows() if times else []
    report = {"seconds": seconds, "baseline_rss_bytes": baseline, "counts": counts, "statements": statements}
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
