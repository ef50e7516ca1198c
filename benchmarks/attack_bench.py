"""The receiver under attack: what slow clients and unauthenticated floods cost real deliveries, same run.

    uv run python -m benchmarks.attack_bench            # full run, about 5 minutes
    uv run python -m benchmarks.attack_bench --quick    # smoke run

One receiver (``receiver.gunicorn_conf``, auth on, local landing) and the bare Flask endpoint (gunicorn gthread)
run under gunicorn on loopback. Each trial measures, on the receiver, real signed deliveries sent open-loop at
``--rate`` per second (latency from each request's scheduled time, ``benchmarks.loadgen``):

- *quiet*: nothing else (the same-run baseline);
- *slow*: while ``--slow`` connections (``benchmarks.attackers slow``, its own process) trickle a head or an
  authenticated body at 1 byte/s each, reconnecting whenever the server closes one;
- *flood*: while ``--flood`` senders (``benchmarks.attackers flood``) send unauthenticated 1 MiB deliveries as
  fast as they can;

and then the closed-loop maximum (64 connections) of the receiver and of bare Flask. Figures are medians over
trials; the attackers' own counts show how hard they pushed. Every acknowledged delivery must have landed
exactly once (exit status 1 otherwise). Markdown for ``RESULTS.md`` goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.cpu import MachineCpu, QuietGate, group_cpu_seconds, process_cpu_seconds
from benchmarks.landing_check import check_landing
from benchmarks.loadgen import Trial, closed_loop, open_loop
from benchmarks.servers import GunicornServer
from benchmarks.workload import Delivery, build_deliveries
from pull_events.landing import LocalLandingStore
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ROOT, receiver_env

WORK_ROOT = ROOT / "benchmarks" / ".work"
OPEN_CONNECTIONS = 32
CLOSED_CONNECTIONS = 64
SCENARIOS = ("quiet", "slow", "flood")


@dataclass
class Results:
    latency: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {s: [] for s in SCENARIOS})
    not_acked: Counter[str] = field(default_factory=Counter)
    server_cores: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SCENARIOS})
    attacker_cores: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SCENARIOS})
    other_cores: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SCENARIOS})
    attackers: dict[str, list[dict[str, int]]] = field(default_factory=lambda: {"slow": [], "flood": []})
    throughput: dict[str, list[float]] = field(default_factory=lambda: {"receiver": [], "bare": []})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="attack-", dir=WORK_ROOT))
    results = Results()
    sent: list[str] = []
    acked: list[str] = []
    with LocalIssuer() as issuer:
        per_trial = args.rate * args.seconds * len(SCENARIOS) + int(args.closed_seconds * 4000)
        say(f"signing {per_trial * args.trials + 500} deliveries ...")
        pool = iter(build_deliveries(issuer, per_trial * args.trials + 500))
        landing = work / "landing"
        receiver = GunicornServer(receiver_env(landing, issuer), work / "receiver.log").start()
        bare = GunicornServer(
            receiver_env(work / "unused", None),
            work / "bare.log",
            app="benchmarks.bare_app:app",
            config="python:benchmarks.bare_gunicorn_conf",
        ).start()
        try:
            signed_for_slow = [next(pool) for _ in range(50)]  # their bodies are only ever trickled
            warm = [next(pool) for _ in range(300)]
            account(open_loop(receiver.port, warm, 300, OPEN_CONNECTIONS), warm, sent, acked)
            gate = QuietGate(budget=args.quiet_budget)
            for number in range(1, args.trials + 1):
                say(f"trial {number}/{args.trials}")
                for scenario in SCENARIOS:
                    gate.wait()
                    batch = [next(pool) for _ in range(args.rate * args.seconds)]
                    with attack(scenario, receiver.port, args, signed_for_slow, work, results) as attacker:
                        assert receiver.process is not None
                        before = group_cpu_seconds(receiver.process.pid)
                        attacker_before = process_cpu_seconds(attacker) if attacker else 0.0
                        with MachineCpu() as machine:
                            trial = open_loop(receiver.port, batch, args.rate, OPEN_CONNECTIONS)
                        used = group_cpu_seconds(receiver.process.pid) - before
                        attacker_used = process_cpu_seconds(attacker) - attacker_before if attacker else 0.0
                    server, attacker_cores = used / trial.seconds, attacker_used / trial.seconds
                    results.server_cores[scenario].append(server)
                    results.attacker_cores[scenario].append(attacker_cores)
                    results.other_cores[scenario].append(
                        max(0.0, machine.cores - server - attacker_cores - trial.generator_cores)
                    )
                    account(trial, batch, sent, acked)
                    results.latency[scenario].append((trial.latency(0.5), trial.latency(0.99)))
                    results.not_acked[scenario] += trial.not_acked
                    p50, p99 = trial.latency(0.5) * 1000, trial.latency(0.99) * 1000
                    say(f"  {scenario}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
                batch = [next(pool) for _ in range(int(args.closed_seconds * 4000))]
                for name, server in (("receiver", receiver), ("bare", bare)):  # bare lands nothing: same requests
                    gate.wait()
                    trial = closed_loop(server.port, batch, CLOSED_CONNECTIONS, args.closed_seconds)
                    if name == "receiver":
                        account(trial, batch, sent, acked)
                    results.throughput[name].append(trial.acked_per_second)
                    say(f"  max {name}: {trial.acked_per_second:,.0f}/s")
        finally:
            receiver.close()
            bare.close()
    landed = check_landing(LocalLandingStore(landing), sent, acked)
    say(landed.summary())
    print(report(results, args, started, landed.summary()))
    if args.markdown:
        args.markdown.write_text(report(results, args, started, landed.summary()))
    if landed.ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if landed.ok else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 trial of 3 s per scenario")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rate", type=int, default=200, help="real deliveries per second (open loop)")
    parser.add_argument("--seconds", type=int, default=6, help="seconds of open-loop load per scenario")
    parser.add_argument("--closed-seconds", type=float, default=3.0)
    parser.add_argument("--slow", type=int, default=500, help="slow connections")
    parser.add_argument("--flood", type=int, default=4, help="senders of unauthenticated 1 MiB bodies")
    parser.add_argument("--quiet-budget", type=float, default=45.0)
    parser.add_argument(
        "--attacker-nice", type=int, default=0, help="run the attackers at this nice level (they share the cores)"
    )
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.seconds, args.closed_seconds = 1, 3, 2.0
    return args


@contextmanager
def attack(
    scenario: str, port: int, args: argparse.Namespace, signed: list[Delivery], work: Path, results: Results
) -> Iterator[int | None]:
    """Run the scenario's attacker (none for ``quiet``) around the block, yield its pid, record its counts."""
    if scenario == "quiet":
        yield None
        return
    command = [sys.executable, "-m", "benchmarks.attackers", scenario, "--port", str(port)]
    if scenario == "slow":
        requests_file = work / "slow-requests.txt"
        requests_file.write_text("\n".join(delivery.request.hex() for delivery in signed))
        command += ["--connections", str(args.slow), "--requests", str(requests_file)]
    else:
        command += ["--connections", str(args.flood)]
    if args.attacker_nice:
        command = ["nice", "-n", str(args.attacker_nice), *command]
    attacker = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(3.0 if scenario == "slow" else 1.0)  # every slow connection open / the flood in full swing
        yield attacker.pid
    finally:
        attacker.send_signal(signal.SIGTERM)
        out, _ = attacker.communicate(timeout=60)
    results.attackers[scenario].append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})


def account(trial: Trial, batch: Sequence[Delivery], sent: list[str], acked: list[str]) -> None:
    for index, status in zip(trial.indices, trial.statuses, strict=True):
        sent.append(batch[index].event_id)
        if 200 <= status < 300:
            acked.append(batch[index].event_id)


def report(results: Results, args: argparse.Namespace, started: str, landing: str) -> str:
    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.1f}"

    quiet_p50 = statistics.median(p50 for p50, _ in results.latency["quiet"])
    quiet_p99 = statistics.median(p99 for _, p99 in results.latency["quiet"])
    rows = []
    for scenario in SCENARIOS:
        p50s = [p50 for p50, _ in results.latency[scenario]]
        p99s = [p99 for _, p99 in results.latency[scenario]]
        ratio = f"{statistics.median(p50s) / quiet_p50:.2f} / {statistics.median(p99s) / quiet_p99:.2f}"
        rows.append(
            f"| {scenario} | {ms(p50s)} / {ms(p99s)} | {ratio} | {results.not_acked[scenario]} |"
            f" {statistics.median(results.server_cores[scenario]):.2f}"
            f" / {statistics.median(results.attacker_cores[scenario]):.2f}"
            f" / {statistics.median(results.other_cores[scenario]):.2f} | {attacker_summary(results, scenario)} |"
        )
    receiver_max = statistics.median(results.throughput["receiver"])
    bare_max = statistics.median(results.throughput["bare"])
    return "\n".join(
        [
            "## Receiver under attack",
            "",
            f"Command: `uv run python -m benchmarks.attack_bench{' --quick' if args.quick else ''}`,"
            f" started {started}.",
            f"Real deliveries: open loop at {args.rate}/s for {args.seconds} s per scenario over {OPEN_CONNECTIONS}"
            f" keep-alive connections; medians of {args.trials} trial(s). *slow*: {args.slow} connections trickling"
            f" a head or an authenticated body at 1 byte/s; *flood*: {args.flood} senders of unauthenticated 1 MiB"
            f" bodies, as fast as they can. Attackers at nice {args.attacker_nice}, on the same 2 cores.",
            "",
            "| scenario | p50 / p99 ms | x quiet (p50 / p99) | not acked | cores: receiver / attacker / other"
            " | attacker |",
            "|---|---:|---:|---:|---:|---|",
            *rows,
            "",
            f"Throughput (closed loop, {CLOSED_CONNECTIONS} connections, {args.closed_seconds:g} s): receiver"
            f" {receiver_max:,.0f} events/s, bare Flask (gthread) {bare_max:,.0f} requests/s:"
            f" **{receiver_max / bare_max:.2f}x bare**.",
            "",
            f"Landing check: {landing}.",
            "",
        ]
    )


def attacker_summary(results: Results, scenario: str) -> str:
    if scenario == "quiet":
        return "-"
    counts: Counter[str] = Counter()
    for trial in results.attackers[scenario]:
        counts.update(trial)
    per_trial = {key: round(value / max(1, len(results.attackers[scenario]))) for key, value in counts.items()}
    return ", ".join(f"{key}: {value:,}" for key, value in sorted(per_trial.items())) + " (per trial)"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
