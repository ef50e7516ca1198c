"""Latency of the local stack as ``scripts/stack`` runs it (its default settings, on a temporary data directory):
how long after the receiver accepted an event its row is in the pull table, and its day's ``daily_pulls`` row and
its repository's ``repository_pull_summary`` row were recomputed; and how long one Ctrl-C takes to stop it all.
The baseline, measured first in the same run at the same rate: Dagster's own floor (``floor_definitions.py``: a
file lands -> a sensor notices it -> a run starts -> a trivial asset records it), on the same instance settings.

    uv run python -m benchmarks.stack_latency [--events 120] [--rate 2]

Both are measured warm: one event (one file) goes through first and is not counted, so the figures are those of a
running stack, not of its first sensor tick after start-up (reported apart, as "stack ready").

Measured from the tables themselves: ``received_at`` (the receiver, when it landed the event) to ``loaded_at`` (the
load that wrote the row; it commits right after). The derived rows keep only their latest ``computed_at``, so the
tables are read (read-only, opened and closed at once, as docs/querying.md asks) every second and each recompute
seen is kept: an event's derived latency is the first recompute seen at or after its row's ``loaded_at``. A
recompute overwritten between two reads is missed, which can only make a figure larger, never smaller.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.devstack.stack import warehouse_rows
from tests.services import as_from_a_terminal, free_port

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "cloudevents_pull_event_recorder"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_floor(events: int, rate: float) -> list[float]:
    """Seconds from each file landing to its trivial asset's step, through a real daemon (the first file excluded)."""
    tmp = Path(tempfile.mkdtemp(prefix="dagster-floor-"))
    home = tmp / "dagster"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLOOR_DIR": str(tmp)}
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "dagster", "instance", "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    with (tmp / "daemon.log").open("wb") as output:
        daemon = subprocess.Popen(
            [bin_dir / "dagster-daemon", "run", "-m", "benchmarks.floor_definitions", "-d", str(ROOT)],
            env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            # Dagster handles SIGTERM as SIGINT: neither may be inherited ignored (a benchmark run in the background).
            preexec_fn=as_from_a_terminal,
        )  # fmt: skip
    done = tmp / "done.txt"

    def finished() -> dict[str, float]:
        lines = done.read_text().split("\n") if done.exists() else []
        return {name: float(at) for name, at in (line.split() for line in lines if line)}

    def land(sequence: int) -> None:
        landed = tmp / f"{sequence:08d}-{time.time():.6f}.landed"
        landed.with_suffix(".tmp").write_text("")
        landed.with_suffix(".tmp").rename(landed)  # appears whole, as the receiver's objects do

    try:
        land(0)  # the warm-up file
        deadline = time.monotonic() + 300
        while not finished():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError(f"the floor's warm-up file was never recorded: see {tmp / 'daemon.log'}")
            time.sleep(0.2)
        started = time.monotonic()
        for sequence in range(1, events + 1):
            time.sleep(max(0.0, started + (sequence - 1) / rate - time.monotonic()))
            land(sequence)
        deadline = time.monotonic() + 120
        while len(finished()) < events + 1 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(60)
    return [
        at - float(name.split("-")[1].removesuffix(".landed"))
        for name, at in finished().items()
        if not name.startswith("00000000-")
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=120)
    parser.add_argument("--rate", type=float, default=2.0)
    args = parser.parse_args()

    print(f"Dagster's floor: {args.events} files at {args.rate}/s", file=sys.stderr)
    floor = measure_floor(args.events, args.rate)

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
            [ROOT / "scripts/stack"], env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            # Stopped by SIGINT below, as a terminal's Ctrl-C: not ignored even when this runs in the background.
            preexec_fn=as_from_a_terminal,
        )  # fmt: skip
    try:
        started = time.monotonic()
        while "dagster: " not in log.read_text():
            if stack.poll() is not None or time.monotonic() - started > 300:
                print(log.read_text(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        startup_s = time.monotonic() - started
        url = f"http://127.0.0.1:{env['PORT']}/"
        # The warm-up event: through the pull table and the summary before the measured events start.
        subprocess.run(
            [ROOT / "scripts/generate-events", "--events", "1", "--days", "0", "--url", url,
             "--issuer-state", str(tmp / "dev-issuer"), "--seed", "1"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        warm_deadline = time.monotonic() + 300
        while not warehouse_rows(warehouse, f"SELECT 1 FROM {SCHEMA}.repository_pull_summary"):
            if time.monotonic() > warm_deadline:
                print("the warm-up event never reached the summary", file=sys.stderr)
                return 1
            time.sleep(0.5)
        measured_from = time.time()
        print(f"stack ready after {startup_s:.1f} s; sending {args.events} events at {args.rate}/s", file=sys.stderr)
        generator = subprocess.Popen(
            [ROOT / "scripts/generate-events", "--events", str(args.events), "--days", "0", "--rate", str(args.rate),
             "--url", url, "--issuer-state", str(tmp / "dev-issuer"), "--seed", "7"],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        daily_seen: dict[tuple[object, object], set[float]] = {}
        summary_seen: dict[object, set[float]] = {}
        deadline = None
        while True:
            daily = warehouse_rows(warehouse, f"SELECT day, repository, epoch(computed_at) FROM {SCHEMA}.daily_pulls")
            summary = warehouse_rows(
                warehouse, f"SELECT repository, epoch(computed_at) FROM {SCHEMA}.repository_pull_summary"
            )
            for day, repository, at in daily or []:
                daily_seen.setdefault((day, repository), set()).add(float(at))  # type: ignore[arg-type]
            for repository, at in summary or []:
                summary_seen.setdefault(repository, set()).add(float(at))  # type: ignore[arg-type]
            if generator.poll() is not None:
                deadline = deadline or time.monotonic() + 120
                pulls = warehouse_rows(
                    warehouse, f"SELECT max(epoch(loaded_at)) FROM {SCHEMA}.dev_chainguard_registry_pull_v1"
                )
                newest = pulls[0][0] if pulls else None
                ledger = warehouse_rows(warehouse, f"SELECT count(*) FROM {SCHEMA}.loaded_objects")
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
            rows = warehouse_rows(
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
    rows = [row for row in rows if float(row[2]) >= measured_from]  # type: ignore[arg-type]  # not the warm-up
    for day, repository, received, loaded in rows:
        pull_latency.append(float(loaded) - float(received))  # type: ignore[arg-type]
        after = [at for at in daily_seen.get((day, repository), ()) if at >= float(loaded)]  # type: ignore[arg-type]
        if after:
            daily_latency.append(min(after) - float(received))  # type: ignore[arg-type]
        after = [at for at in summary_seen.get(repository, ()) if at >= float(loaded)]  # type: ignore[arg-type]
        if after:
            summary_latency.append(min(after) - float(received))  # type: ignore[arg-type]

    floor_p95 = percentile(floor, 0.95) if floor else float("nan")

    def line(name: str, values: list[float], of: int, goal: str) -> str:
        if not values:
            return f"| {name} | 0 of {of} | - | - | - | - | {goal} |"
        p95 = percentile(values, 0.95)
        return (
            f"| {name} | {len(values)} of {of} | {statistics.median(values):.1f} | {p95:.1f} | "
            f"{max(values):.1f} | {p95 / floor_p95:.2f}x | {goal} |"
        )

    print(f"generator: {sent.strip()}")
    print(f"stack ready after {startup_s:.1f} s; one Ctrl-C stopped it in {stop_s:.1f} s\n")
    print("| accepted -> | events | p50 s | p95 s | max s | p95 / floor p95 | goal p95 |")
    print("|---|---|---|---|---|---|---|")
    print(line("Dagster's floor: file -> sensor -> run -> trivial asset", floor, args.events, "-"))
    print(line("row in the pull table", pull_latency, len(rows), "15 s"))
    print(line("daily_pulls row recomputed", daily_latency, len(rows), "30 s"))
    print(line("repository_pull_summary row recomputed", summary_latency, len(rows), "30 s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
