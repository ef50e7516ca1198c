"""Latency of the local stack as ``scripts/stack`` runs it (its default settings, on a temporary data directory):
how long after the receiver accepted an event its row is in the pull table, and its day's ``daily_pulls`` row and
its repository's ``repository_pull_summary`` row were recomputed; and how long one Ctrl-C takes to stop it all.

    uv run python -m benchmarks.stack_latency [--events 120] [--rate 2]

Measured from the tables themselves: ``received_at`` (the receiver, when it landed the event) to ``loaded_at`` (the
load that wrote the row; it commits right after). The derived rows keep only their latest ``computed_at``, so the
tables are read (read-only, opened and closed at once, as docs/querying.md asks) every second and each recompute
seen is kept: an event's derived latency is the first recompute seen at or after its row's ``loaded_at``. A
recompute overwritten between two reads is missed, which can only make a figure larger, never smaller.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "cloudevents_pull_event_recorder"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read(warehouse: Path, sql: str) -> list[tuple[object, ...]] | None:
    """Rows of ``sql``, read-only; None while the file is missing, has no such table yet or a load holds it."""
    try:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return con.sql(sql).fetchall()
    except (duckdb.IOException, duckdb.CatalogException):
        return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=120)
    parser.add_argument("--rate", type=float, default=2.0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="stack-latency-"))
    warehouse = tmp / "warehouse.duckdb"
    env = {
        k: v for k, v in os.environ.items() if k not in ("CHAINGUARD_ISSUER", "CHAINGUARD_GROUP", "PULL_EVENTS_AUTH")
    }
    env.update(
        PORT=str(free_port()), PULL_EVENTS_DEV_ISSUER_PORT=str(free_port()), DAGSTER_PORT=str(free_port()),
        PULL_EVENTS_DEV_ISSUER_DIR=str(tmp / "dev-issuer"), PULL_EVENTS_LANDING=str(tmp / "landing"),
        PULL_EVENTS_WAREHOUSE=str(warehouse), DAGSTER_HOME=str(tmp / "dagster"),
    )  # fmt: skip
    log = tmp / "stack.log"
    with log.open("wb") as output:
        stack = subprocess.Popen(
            [ROOT / "scripts/stack"], env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        started = time.monotonic()
        while "dagster: " not in log.read_text():
            if stack.poll() is not None or time.monotonic() - started > 300:
                print(log.read_text(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        startup_s = time.monotonic() - started
        print(f"stack ready after {startup_s:.1f} s; sending {args.events} events at {args.rate}/s", file=sys.stderr)
        generator = subprocess.Popen(
            [ROOT / "scripts/generate-events", "--events", str(args.events), "--days", "0", "--rate", str(args.rate),
             "--url", f"http://127.0.0.1:{env['PORT']}/", "--issuer-state", str(tmp / "dev-issuer"), "--seed", "7"],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        daily_seen: dict[tuple[object, object], set[float]] = {}
        summary_seen: dict[object, set[float]] = {}
        deadline = None
        while True:
            daily = read(warehouse, f"SELECT day, repository, epoch(computed_at) FROM {SCHEMA}.daily_pulls")
            summary = read(warehouse, f"SELECT repository, epoch(computed_at) FROM {SCHEMA}.repository_pull_summary")
            for day, repository, at in daily or []:
                daily_seen.setdefault((day, repository), set()).add(float(at))  # type: ignore[arg-type]
            for repository, at in summary or []:
                summary_seen.setdefault(repository, set()).add(float(at))  # type: ignore[arg-type]
            if generator.poll() is not None:
                deadline = deadline or time.monotonic() + 120
                pulls = read(warehouse, f"SELECT max(epoch(loaded_at)) FROM {SCHEMA}.dev_chainguard_registry_pull_v1")
                newest = pulls[0][0] if pulls else None
                ledger = read(warehouse, f"SELECT count(*) FROM {SCHEMA}.loaded_objects")
                landed = sum(1 for _ in (tmp / "landing").rglob("*.ndjson"))
                caught_up = (
                    newest is not None
                    and ledger is not None
                    and ledger[0][0] == landed  # every landed object loaded
                    and max((max(v) for v in daily_seen.values()), default=0) >= float(newest)  # type: ignore[arg-type]
                    and max((max(v) for v in summary_seen.values()), default=0) >= float(newest)  # type: ignore[arg-type]
                )
                if caught_up or time.monotonic() > deadline:
                    break
            time.sleep(1)
        sent = generator.stdout.read() if generator.stdout else ""  # type: ignore[union-attr]
        rows = None
        while rows is None:
            rows = read(
                warehouse,
                "SELECT day, body.repository, epoch(received_at), epoch(loaded_at) "
                f"FROM {SCHEMA}.dev_chainguard_registry_pull_v1",
            )
    finally:
        stop_started = time.monotonic()
        stack.send_signal(signal.SIGINT)
        stack.wait(120)
        stop_s = time.monotonic() - stop_started

    pull_latency, daily_latency, summary_latency = [], [], []
    for day, repository, received, loaded in rows:
        pull_latency.append(float(loaded) - float(received))  # type: ignore[arg-type]
        after = [at for at in daily_seen.get((day, repository), ()) if at >= float(loaded)]  # type: ignore[arg-type]
        if after:
            daily_latency.append(min(after) - float(received))  # type: ignore[arg-type]
        after = [at for at in summary_seen.get(repository, ()) if at >= float(loaded)]  # type: ignore[arg-type]
        if after:
            summary_latency.append(min(after) - float(received))  # type: ignore[arg-type]

    def line(name: str, values: list[float], goal: float) -> str:
        if not values:
            return f"| {name} | 0 of {len(rows)} | - | - | - | {goal:.0f} |"
        return (
            f"| {name} | {len(values)} of {len(rows)} | {statistics.median(values):.1f} | "
            f"{percentile(values, 0.95):.1f} | {max(values):.1f} | {goal:.0f} |"
        )

    print(f"generator: {sent.strip()}")
    print(f"stack ready after {startup_s:.1f} s; one Ctrl-C stopped it in {stop_s:.1f} s\n")
    print("| accepted -> | events | p50 s | p95 s | max s | goal p95 s |\n|---|---|---|---|---|---|")
    print(line("row in the pull table", pull_latency, 15))
    print(line("daily_pulls row recomputed", daily_latency, 30))
    print(line("repository_pull_summary row recomputed", summary_latency, 30))
    return 0


if __name__ == "__main__":
    sys.exit(main())
