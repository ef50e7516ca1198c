"""Per-load cost against history: ``uv run python -m benchmarks.history_bench`` (``--quick`` for a smoke run).

For each history size (default 10,000, 1,000,000 and 5,000,000 pull events spread over the last 365 days, 500
repositories, 300 actors, 3,000 client addresses; ``--actors`` and ``--clients`` change them), a fresh DuckDB file
gets that history (written by SQL, in day order as loads over a year would have written it) with its derived tables
built; nothing of that is timed. Then ``--trials`` times, one new landing object of 1,000 pull events dated
yesterday and today (the receiver's NDJSON, from the test factories) goes through the whole per-load path, each
stage timed:

- **load**: ``DuckDBWarehouse.load_objects`` (de-duplication, rejections, ledger, the per-load checks);
- **daily**: ``refresh_daily_pulls`` of the days the load touched (the daily sensor's run);
- **summary**: ``refresh_repository_summary`` (the same run).

The baseline, in the same run and on the same object: DuckDB's raw ``read_ndjson`` of it into a temp table.
The goal (issue 10): the total per load at the largest history within 1.5x of the smallest. Medians are
reported, with every trial checked for exact counts. Prints progress on stderr and a Markdown section for
``benchmarks/RESULTS.md`` on stdout. Work files go to ``benchmarks/.work/history`` and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from benchmarks.cpu import QuietGate
from pull_events.landing import LocalLandingStore
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse, duckdb_type, quote
from pull_events_dagster.warehouse.schema import ACTOR, PULL_BODY
from tests.pipeline.factories import GROUP, SOURCE, TAGS, LandingSpec, synthetic_landing

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "history"
REPOSITORIES, DAYS = 500, 365
BATCH_EVENTS = 1_000
STAGES = ("load", "daily", "summary")


@dataclass(frozen=True)
class People:
    """How many distinct actors and client addresses pull: what the summary's running sets grow with."""

    actors: int
    clients: int


@dataclass(frozen=True)
class Trial:
    seconds: dict[str, float]  # per stage
    raw_seconds: float  # read_ndjson of the same object

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000,5000000", help="history sizes, comma-separated")
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="sizes 10k,100k,300k and 3 trials")
    parser.add_argument("--keep", action="store_true", help="keep the work files")
    parser.add_argument("--actors", type=int, default=300, help="distinct actors across all repositories")
    parser.add_argument(
        "--clients", type=int, default=3_000, help="distinct client addresses (50,000: nearly every pull a new pair)"
    )
    parser.add_argument(
        "--quiet-budget", type=float, default=0.0, help="seconds the run may wait, in all, for a quiet machine"
    )
    args = parser.parse_args()
    sizes = [10_000, 100_000, 300_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    trials = 3 if args.quick else args.trials
    shutil.rmtree(WORK, ignore_errors=True)
    results: dict[int, list[Trial]] = {}
    gate = QuietGate(args.quiet_budget)
    people = People(args.actors, args.clients)
    try:
        for size in sizes:
            results[size] = measure(size, trials, gate, people)
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    log(f"waited {gate.waited:.0f} s in all for a quiet machine")
    print(report(results, " ".join(sys.argv[1:]), people))


def measure(size: int, trials: int, gate: QuietGate, people: People) -> list[Trial]:
    folder = WORK / str(size)
    folder.mkdir(parents=True)
    warehouse = DuckDBWarehouse(_connector(folder / "warehouse.duckdb"))
    started = time.perf_counter()
    write_history(warehouse, size, people)
    log(f"history of {size:,}: written and derived in {time.perf_counter() - started:.1f} s (not timed)")
    out = []
    for trial in range(trials):
        out.append(one_load(warehouse, folder / f"landing-{trial}", 1_000 + trial, gate, people))
        log(f"  trial {trial + 1}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in out[-1].seconds.items()))
    return out


def one_load(warehouse: DuckDBWarehouse, landing: Path, seed: int, gate: QuietGate, people: People) -> Trial:
    """One new object of 1,000 pulls (yesterday and today) through the per-load path, each stage timed."""
    store = LocalLandingStore(landing)
    spec = LandingSpec(
        events=BATCH_EVENTS,
        repositories=REPOSITORIES,
        days=2,
        first_day=datetime.now(UTC).date() - timedelta(days=1),
        events_per_object=BATCH_EVENTS,
        actors=people.actors,
        clients=people.clients,
        extra_field_rate=0.0,
        seed=seed,
        instance=f"trial{seed}",
    )
    landed = synthetic_landing(store, spec)
    objects = list(store.list_all())
    gate.wait()
    seconds: dict[str, float] = {}
    with _timed(seconds, "load"):
        loaded = warehouse.load_objects(store, objects, f"run-{seed}")
    with _timed(seconds, "daily"):
        daily = warehouse.refresh_daily_pulls(loaded.affected_days)
    with _timed(seconds, "summary"):
        warehouse.refresh_repository_summary()
    assert (loaded.pulls_inserted, loaded.loaded_duplicate_keys) == (landed.pull_count, 0), loaded
    assert daily.days == sorted({p.when.date() for p in landed.pulls}), daily.days
    return Trial(seconds, raw_read(str(landing / objects[0].key)))


def raw_read(path: str) -> float:
    """The baseline: DuckDB's own read_ndjson of the object into a temp table, in a fresh in-memory database."""
    conn = duckdb.connect()
    try:
        started = time.perf_counter()
        conn.execute("CREATE TEMP TABLE t AS SELECT * FROM read_ndjson(?)", [path])
        return time.perf_counter() - started
    finally:
        conn.close()


def write_history(warehouse: DuckDBWarehouse, size: int, people: People) -> None:
    """``size`` pulls over the last 365 days, in day order, then the derived tables and the ledger."""
    warehouse.ensure_tables()
    pulls = f"{quote(base.DATASET)}.{quote(base.PULLS)}"
    ledger = f"{quote(base.DATASET)}.{quote(base.LOADED_OBJECTS)}"
    today = datetime.now(UTC).date()
    with warehouse.session() as conn:
        conn.execute(
            f"""
            INSERT INTO {pulls} BY NAME
            WITH n AS (
                SELECT i, $first + CAST(i * $days // $size AS INTEGER) AS day, CAST(hash(i) >> 1 AS BIGINT) AS h
                FROM range($size) r(i)
            ), p AS (
                SELECT *, CAST(day AS TIMESTAMP) + to_microseconds(CAST(h % 86400000000 AS BIGINT)) AS pulled,
                    'registry.example.com/team-' || (h // 7 % $repositories % 7) || '/image-'
                        || lpad(CAST(h // 7 % $repositories AS VARCHAR), 4, '0') AS repository,
                    CASE WHEN h % 10 < 6 THEN 'manifest' ELSE 'blob' END AS kind,
                    CASE WHEN h % 10 < 5 OR h % 10 >= 6 THEN 'GET' ELSE 'HEAD' END AS method
                FROM n
            )
            SELECT 'history-' || i AS event_id, $source AS event_source, $pull_type AS event_type,
                pulled::TIMESTAMPTZ AS event_time, repository, day,
                CAST(struct_pack(subject := $group || '/' || lpad(printf('%x', h // 11 % $actors), 16, '0'),
                    act := NULL) AS {duckdb_type(ACTOR)}) AS actor,
                CAST(struct_pack(repository := repository, repo_id := NULL, subdomain := NULL,
                    tag := CASE WHEN kind = 'manifest' AND h % 5 > 0 THEN $tags[1 + h // 13 % 5] END,
                    digest := 'sha256:' || sha256(event_id), method := method, type := kind, "when" := pulled,
                    location := NULL,
                    remote_address := '10.' || (h // 17 % $clients // 65536 % 256) || '.'
                        || (h // 17 % $clients // 256 % 256) || '.' || (h // 17 % $clients % 256),
                    user_agent := NULL,
                    error := CASE WHEN h % 50 = 0 THEN struct_pack(status := 404, code := 'MANIFEST_UNKNOWN',
                        message := 'not found') END,
                    policy_results := NULL) AS {duckdb_type(PULL_BODY)}) AS body,
                'history/' || (i // 1000) AS landing_object, i % 1000 + 1 AS landing_line,
                pulled::TIMESTAMPTZ AS received_at, pulled::TIMESTAMPTZ + INTERVAL 5 SECOND AS loaded_at
            FROM p ORDER BY i
            """,
            {
                "first": today - timedelta(days=DAYS),
                "days": DAYS,
                "size": size,
                "repositories": REPOSITORIES,
                "actors": people.actors,
                "clients": people.clients,
                "source": SOURCE,
                "pull_type": base.PULL_TYPE,
                "group": GROUP,
                "tags": list(TAGS),
            },
        )
        conn.execute(
            f"""INSERT INTO {ledger} (landing_object, lines, pulls_inserted, events_inserted, duplicates_skipped,
                lines_rejected, loaded_at, run_id)
            SELECT landing_object, count(*), count(*), 0, 0, 0, max(loaded_at), 'history' FROM {pulls}
            GROUP BY landing_object ORDER BY 7"""
        )
    warehouse.refresh_daily_pulls(warehouse.pull_days())
    warehouse.refresh_repository_summary()
    with warehouse.session() as conn:
        conn.execute("CHECKPOINT")


def report(results: dict[int, list[Trial]], arguments: str, people: People) -> str:
    smallest = min(results)
    base_total = statistics.median(t.total for t in results[smallest])
    lines = [
        f"## Per-load cost against history ({date.today()}, {platform.node()}, {platform.processor() or 'cpu'})",
        "",
        f"`uv run python -m benchmarks.history_bench {arguments}`".replace(" `", "`"),
        "",
        f"One object of {BATCH_EVENTS:,} new pulls (yesterday and today) per trial; medians of "
        f"{len(results[smallest])} trials; history spread over {DAYS} days, {REPOSITORIES} repositories, "
        f"{people.actors:,} actors, {people.clients:,} client addresses.",
        "",
        "| history | load | daily_pulls (touched days) | summary (changed repositories) | total | vs "
        f"{smallest:,} | raw read_ndjson | total / raw |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, trials in results.items():
        stage = {name: statistics.median(t.seconds[name] for t in trials) for name in STAGES}
        total = statistics.median(t.total for t in trials)
        raw = statistics.median(t.raw_seconds for t in trials)
        lines.append(
            f"| {size:,} | {stage['load']:.3f} s | {stage['daily']:.3f} s | {stage['summary']:.3f} s | "
            f"{total:.3f} s | {total / base_total:.2f}x | {raw:.3f} s | {total / raw:.1f}x |"
        )
    return "\n".join(lines)


@contextmanager
def _timed(into: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    into[name] = time.perf_counter() - started


def _connector(path: Path):
    @contextmanager
    def connect() -> Iterator[duckdb.DuckDBPyConnection]:
        conn = duckdb.connect(str(path))
        try:
            yield conn
        finally:
            conn.close()

    return connect


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
