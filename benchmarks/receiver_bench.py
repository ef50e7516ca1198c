"""Receiver benchmark: ``uv run python -m benchmarks.receiver_bench`` (``--quick`` for a short smoke run).

In one run, on loopback only:

- **bare**: a bare Flask ``POST /`` (reads the body, answers 202) under gunicorn with the receiver's
  server settings: the ceiling;
- **receiver/local**: the receiver with auth on (every request carries its own RS256 token from a local
  OIDC issuer, bound to its body) and durable acknowledgements, landing in a local directory;
- **receiver/gcs**: the same, landing in fake-gcs-server;
- a sweep of server knobs on the local directory: batch wait 20 ms, 16 and 128 threads, 2 workers,
  each server setting with its own bare ceiling.

For each: the maximum throughput (closed loop, ``--concurrency`` connections) and the latency at a fixed
open-loop rate (``--rate``, default 1,000 events/s, measured from each request's scheduled time),
repeated ``--trials`` times (medians reported), the CPU used by server, storage, generator and anything
else on the machine, and for the receiver the objects written (group commit) and a check that every
acknowledged event landed exactly once.

All deliveries are built and signed before anything is timed. Everything started (issuer,
fake-gcs-server, gunicorn process groups) is stopped at the end, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from benchmarks.cpu import MachineCpu, QuietGate, group_cpu_seconds, machine_busy_cores, process_cpu_seconds
from benchmarks.landing_check import LandingCheck, check_landing
from benchmarks.loadgen import Trial, closed_loop, open_loop
from benchmarks.receiver_report import render_report
from benchmarks.servers import GunicornServer
from benchmarks.workload import Delivery, build_deliveries
from pull_events.landing import GcsLandingStore, LandingStore, LocalLandingStore
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import receiver_env
from tests.services import TEST_PROJECT, FakeGcsServer

ROOT = Path(__file__).resolve().parent.parent
WORK_ROOT = ROOT / "benchmarks" / ".work"
BATCH_EVENTS = "pull_events_receiver_batch_events"
# A closed-loop trial gets this many deliveries per second of its duration and ends early (still a valid
# throughput figure) if the server is faster than that.
CLOSED_LOOP_MAX_RATE = 4000
WARMUP_DELIVERIES = 1500
WARMUP_SECONDS = 1.0


@dataclass(frozen=True)
class Target:
    """One server configuration to measure."""

    name: str
    landing: str  # "bare", "local" or "gcs"
    threads: int = 64
    workers: int = 1
    batch_wait_ms: float = 5.0

    @property
    def is_receiver(self) -> bool:
        return self.landing != "bare"

    @property
    def server_settings(self) -> tuple[int, int]:
        """What a bare ceiling must share with a receiver to compare with it: (workers, threads)."""
        return self.workers, self.threads


@dataclass
class Measured:
    """One trial and the resources used during it (CPU in cores: 1.0 = one core busy all along)."""

    trial: Trial
    server_cores: float = 0.0  # the gunicorn process group
    storage_cores: float = 0.0  # fake-gcs-server, for the gcs target
    other_cores: float = 0.0  # the rest of the machine: kernel threads, other processes
    objects: int | None = None  # objects committed during the trial (known with one worker)
    events_committed: int | None = None

    @property
    def events_per_object(self) -> float:
        return self.events_committed / self.objects if self.objects and self.events_committed else math.nan


@dataclass
class TargetResult:
    target: Target
    closed: list[Measured] = field(default_factory=list)
    open: list[Measured] = field(default_factory=list)
    landing: LandingCheck | None = None
    not_acked: int = 0
    sent: int = 0


@dataclass(frozen=True)
class Plan:
    trials: int
    closed_seconds: float
    open_seconds: float
    rate: float
    concurrency: int
    targets: tuple[Target, ...]
    pin: bool = False
    quiet_budget: float = 0.0

    def server_cpus(self, target: Target) -> list[int] | None:
        """With ``--pin``: a one-worker server gets the last core (the generator has the first), a server
        with more workers every core (it would otherwise inherit the generator's single core)."""
        if not self.pin:
            return None
        cores = os.cpu_count() or 1
        return [cores - 1] if target.workers == 1 else list(range(cores))

    @property
    def closed_deliveries(self) -> int:
        return math.ceil(self.closed_seconds * CLOSED_LOOP_MAX_RATE)

    @property
    def open_deliveries(self) -> int:
        return math.ceil(self.open_seconds * self.rate)

    @property
    def deliveries_per_target(self) -> int:
        return WARMUP_DELIVERIES + self.trials * (self.closed_deliveries + self.open_deliveries)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    # SIGTERM unwinds like Ctrl-C, so every server started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = WORK_ROOT / f"receiver-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    work.mkdir(parents=True)
    started = time.perf_counter()
    gate = QuietGate(plan.quiet_budget)
    keep = True
    try:
        if plan.pin:
            # The generator's core; threads and processes started from here inherit it (the issuer,
            # fake-gcs-server): storage work then does not take the server's core, as remote GCS would not.
            os.sched_setaffinity(0, {0})
        background = machine_busy_cores(1.0)
        say(f"machine busy before the run: {background:.2f} cores (other processes)")
        with contextlib.ExitStack() as stack:
            issuer = stack.enter_context(LocalIssuer())
            say(f"signing {plan.deliveries_per_target:,} deliveries (one RS256 token each) ...")
            signing_started = time.perf_counter()
            deliveries = build_deliveries(issuer, plan.deliveries_per_target)
            say(f"  signed in {time.perf_counter() - signing_started:.1f}s")
            fake_gcs = None
            if any(target.landing == "gcs" for target in plan.targets):
                fake_gcs = stack.enter_context(FakeGcsServer(work / "fake-gcs"))
            results = run_all(plan, deliveries, issuer, fake_gcs, work, gate)
        command = " ".join(["uv run python -m benchmarks.receiver_bench", *(argv or sys.argv[1:])])
        elapsed = time.perf_counter() - started
        report = render_report(plan, results, elapsed, command, deliveries, background, gate)
        print(report)
        if args.markdown:
            Path(args.markdown).write_text(report)
        failed = any(result.landing is not None and not result.landing.ok for result in results)
        keep = failed or args.keep
        return 1 if failed else 0
    finally:
        if keep:
            say(f"work files (server logs, landing data) kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.receiver_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run: 1 trial, short phases, no knob sweep")
    parser.add_argument("--trials", type=int, help="trials per measurement (default 3; quick: 1)")
    parser.add_argument("--closed-seconds", type=float, help="closed-loop trial length (default 3; quick: 1.5)")
    parser.add_argument("--open-seconds", type=float, help="open-loop trial length (default 3; quick: 2)")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop rate, events/s (default 1000)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections of both loops (default 64)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the batch-wait / threads / workers sweep")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the generator to the first core and each one-worker server to the last (taskset)",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        help="seconds the whole run may wait, before trials, for other work on the machine to stop (default 45)",
    )
    parser.add_argument("--markdown", help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep server logs and landing data in benchmarks/.work")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    main_targets = (
        Target("bare", "bare"),
        Target("receiver/local", "local"),
        Target("receiver/gcs", "gcs"),
    )
    sweep = (
        Target("receiver/local wait=20ms", "local", batch_wait_ms=20),
        Target("bare threads=16", "bare", threads=16),
        Target("receiver/local threads=16", "local", threads=16),
        Target("bare threads=128", "bare", threads=128),
        Target("receiver/local threads=128", "local", threads=128),
        Target("bare workers=2", "bare", workers=2),
        Target("receiver/local workers=2", "local", workers=2),
    )
    quick = args.quick
    return Plan(
        trials=args.trials or (1 if quick else 3),
        closed_seconds=args.closed_seconds or (1.5 if quick else 3.0),
        open_seconds=args.open_seconds or (2.0 if quick else 3.0),
        rate=args.rate,
        concurrency=args.concurrency,
        targets=main_targets if quick or args.no_sweep else main_targets + sweep,
        pin=args.pin,
        quiet_budget=args.quiet_budget if args.quiet_budget is not None else (10.0 if quick else 45.0),
    )


class DeliveryPool:
    """Hands out consecutive, never-overlapping slices of the signed deliveries: no event is sent twice
    to one server, so the landing check can demand exactly one line per acknowledged event."""

    def __init__(self, deliveries: Sequence[Delivery]) -> None:
        self.deliveries = deliveries
        self.offset = 0

    def take(self, count: int) -> Sequence[Delivery]:
        if self.offset + count > len(self.deliveries):
            raise RuntimeError(f"only {len(self.deliveries)} deliveries were signed; the plan needs more")
        self.offset += count
        return self.deliveries[self.offset - count : self.offset]


class TargetRun:
    """One target's server, the deliveries it was sent and what it acknowledged, across all trials."""

    def __init__(
        self,
        target: Target,
        plan: Plan,
        deliveries: Sequence[Delivery],
        issuer: LocalIssuer,
        fake_gcs: FakeGcsServer | None,
        work: Path,
    ) -> None:
        self.target = target
        self.plan = plan
        self.fake_gcs = fake_gcs
        self.result = TargetResult(target)
        self.pool = DeliveryPool(deliveries)
        self.sent: list[str] = []
        self.acked: list[str] = []
        directory = work / target.name.replace("/", "-").replace(" ", "-").replace("=", "")
        directory.mkdir()
        self.server, self.store = start_server(target, issuer, fake_gcs, directory, plan.server_cpus(target))

    def warm_up(self) -> None:
        """Open connections, fetch the issuer's keys, create the first objects: nothing of it is timed."""
        warmup = self.pool.take(WARMUP_DELIVERIES)
        self._account(closed_loop(self.server.port, warmup, self.plan.concurrency, WARMUP_SECONDS), warmup)

    def run_trial(self, number: int, gate: QuietGate) -> None:
        """One closed-loop (max throughput) and one open-loop (fixed rate) trial, each on a quiet machine
        if ``gate`` can wait for one."""
        plan, port = self.plan, self.server.port
        batch = self.pool.take(plan.closed_deliveries)
        gate.wait()
        closed = self._measure(partial(closed_loop, port, batch, plan.concurrency, plan.closed_seconds))
        self._account(closed.trial, batch)
        batch = self.pool.take(plan.open_deliveries)
        gate.wait()
        opened = self._measure(partial(open_loop, port, batch, plan.rate, plan.concurrency))
        self._account(opened.trial, batch)
        self.result.closed.append(closed)
        self.result.open.append(opened)
        say(
            f"  {self.target.name} trial {number}: {closed.trial.acked_per_second:,.0f} events/s "
            f"(server {closed.server_cores:.2f} cores, generator {closed.trial.generator_cores:.2f}, "
            f"other {closed.other_cores:.2f}); @{plan.rate:g}/s p50 {opened.trial.latency(0.5) * 1000:.1f} "
            f"p99 {opened.trial.latency(0.99) * 1000:.1f} ms (other {opened.other_cores:.2f})"
            + (f"; {closed.objects} + {opened.objects} objects" if closed.objects is not None else "")
        )

    def stop(self) -> None:
        self.server.close()

    def check(self) -> TargetResult:
        """After ``stop()``: compare the landing zone with what was acknowledged."""
        result = self.result
        result.sent = len(self.sent)
        if self.store is not None:
            result.landing = check_landing(self.store, self.sent, self.acked)
            say(f"  {self.target.name} landing zone: {result.landing.summary()}")
        if result.not_acked:
            say(f"  {self.target.name}: {result.not_acked} of {result.sent} requests got no 2xx")
        return result

    def _account(self, trial: Trial, batch: Sequence[Delivery]) -> None:
        self.sent.extend(delivery.event_id for delivery in batch[: len(trial.indices)])
        answers = zip(trial.indices, trial.statuses, strict=True)
        self.acked.extend(batch[index].event_id for index, status in answers if 200 <= status < 300)
        self.result.not_acked += trial.not_acked

    def _measure(self, run: Callable[[], Trial]) -> Measured:
        return measure(self.server, self.fake_gcs, self.target, run)


def run_all(
    plan: Plan,
    deliveries: Sequence[Delivery],
    issuer: LocalIssuer,
    fake_gcs: FakeGcsServer | None,
    work: Path,
    gate: QuietGate,
) -> list[TargetResult]:
    """Start every target's server, then run trial 1 on each, trial 2 on each, ...: a burst of load
    from elsewhere on the machine then hits all targets alike instead of skewing one of them."""
    runs: list[TargetRun] = []
    try:
        for target in plan.targets:
            say(f"starting {target.name}")
            runs.append(TargetRun(target, plan, deliveries, issuer, fake_gcs, work))
        for run in runs:
            run.warm_up()
        for number in range(1, plan.trials + 1):
            for run in runs:
                run.run_trial(number, gate)
    finally:
        for run in runs:
            run.stop()
    return [run.check() for run in runs]


def start_server(
    target: Target, issuer: LocalIssuer, fake_gcs: FakeGcsServer | None, directory: Path, cpus: list[int] | None
) -> tuple[GunicornServer, LandingStore | None]:
    knobs = {
        "WEB_CONCURRENCY": str(target.workers),
        "PULL_EVENTS_THREADS": str(target.threads),
        "PULL_EVENTS_BATCH_MAX_WAIT_MS": f"{target.batch_wait_ms:g}",
    }
    log = directory / "server.log"
    if target.landing == "bare":
        # The shared gunicorn settings still read the environment; auth off needs no issuer.
        env = receiver_env(directory / "unused-landing", None, **knobs)
        app, config = "benchmarks.bare_app:app", "python:benchmarks.bare_gunicorn_conf"
        return GunicornServer(env, log, app=app, config=config, cpus=cpus).start(), None
    if target.landing == "local":
        landing = directory / "landing"
        server = GunicornServer(receiver_env(landing, issuer, **knobs), log, cpus=cpus)
        return server.start(), LocalLandingStore(landing)
    assert fake_gcs is not None
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    client = fake_gcs.client()
    client.create_bucket(bucket)
    env = receiver_env(f"gs://{bucket}/events", issuer, **knobs)
    env.update(STORAGE_EMULATOR_HOST=fake_gcs.url, GOOGLE_CLOUD_PROJECT=TEST_PROJECT)
    return GunicornServer(env, log, cpus=cpus).start(), GcsLandingStore(bucket, "events", client=client)


def measure(
    server: GunicornServer, fake_gcs: FakeGcsServer | None, target: Target, run: Callable[[], Trial]
) -> Measured:
    """Run one trial and record the CPU used during it and, with one worker, the objects it committed.

    With several workers each answers ``/metrics`` for itself alone, so objects are only counted
    overall, by the landing check.
    """
    counts_objects = target.is_receiver and target.workers == 1
    if counts_objects:
        objects_before, events_before = server.metric(f"{BATCH_EVENTS}_count"), server.metric(f"{BATCH_EVENTS}_sum")
    assert server.process is not None
    storage_pid = fake_gcs.process.pid if target.landing == "gcs" and fake_gcs and fake_gcs.process else None
    with MachineCpu() as machine:
        server_before = group_cpu_seconds(server.process.pid)
        storage_before = process_cpu_seconds(storage_pid) if storage_pid else 0.0
        trial = run()
        server_used = group_cpu_seconds(server.process.pid) - server_before
        storage_used = process_cpu_seconds(storage_pid) - storage_before if storage_pid else 0.0
    server_cores, storage_cores = server_used / trial.seconds, storage_used / trial.seconds
    measured = Measured(
        trial,
        server_cores=server_cores,
        storage_cores=storage_cores,
        other_cores=max(0.0, machine.cores - server_cores - storage_cores - trial.generator_cores),
    )
    if counts_objects:
        measured.objects = round(server.metric(f"{BATCH_EVENTS}_count") - objects_before)
        measured.events_committed = round(server.metric(f"{BATCH_EVENTS}_sum") - events_before)
    return measured


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
