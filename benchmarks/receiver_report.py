"""The receiver benchmark's report: a Markdown section (``## Receiver``) of medians, ratios and checks."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.loadgen import percentile
from benchmarks.workload import Delivery

# More than this many cores busy with other work during a trial makes the run noisy.
NOISY_CORES = 0.2

if TYPE_CHECKING:  # the benchmark imports this module; its types are only needed for checking
    from benchmarks.cpu import QuietGate
    from benchmarks.receiver_bench import Plan, TargetResult


def render_report(
    plan: Plan,
    results: Sequence[TargetResult],
    elapsed: float,
    command: str,
    deliveries: Sequence[Delivery],
    background_cores: float,
    gate: QuietGate,
) -> str:
    """The whole ``## Receiver`` section for ``benchmarks/RESULTS.md``."""
    rate = f"{plan.rate:g}/s"
    lines = [
        "## Receiver",
        "",
        f"Finished {datetime.now(UTC):%Y-%m-%d %H:%M} UTC after {elapsed:.0f} s. Command: `{command}`",
        "",
        machine_description(background_cores),
        "",
        f"Method: {plan.trials} trial(s) per figure, medians shown. Max = closed loop, {plan.closed_seconds:g} s per "
        f"trial, {plan.concurrency} keep-alive connections. @{rate} = open loop, {plan.open_seconds:g} s per trial "
        f"over {plan.concurrency} connections, latency from each request's scheduled send time. gunicorn gthread "
        "with the receiver's defaults (1 worker, 64 threads, batch wait 5 ms) unless the target says otherwise; "
        + (
            "pinned (`--pin`): generator and fake-gcs-server on core 0, each one-worker server on the last core, "
            "two-worker servers on all cores. "
            if plan.pin
            else "nothing pinned: the scheduler places server threads and generator on any core. "
        )
        + "Targets ran their trials in turn (trial 1 of each, then trial 2, ...). "
        f"Requests: the fixture pull event in binary mode, {request_sizes(deliveries)}, each with its own body "
        "and its own RS256 token bound to it.",
        "",
        f"| target | max events/s | x bare | p50 / p99 ms at max | p50 / p99 / max ms @{rate} "
        f"| events per object at max / @{rate} | CPU cores at max: server / gcs / generator / other "
        "| landed = acked |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    ceilings = {r.target.server_settings: r for r in results if not r.target.is_receiver}
    lines += [_row(result, ceilings.get(result.target.server_settings)) for result in results]
    lines += ["", generator_note(results), "", contention_note(results, gate)]
    return "\n".join(lines) + "\n"


def _row(result: TargetResult, bare: TargetResult | None) -> str:
    throughput = max_throughput(result)
    ratio = f"{throughput / max_throughput(bare):.2f}" if bare is not None and bare is not result else ""
    at_max = " / ".join(_ms(_median(m.trial.latency(q) for m in result.closed)) for q in (0.5, 0.99))
    at_rate = " / ".join(_ms(_median(m.trial.latency(q) for m in result.open)) for q in (0.5, 0.99, 1.0))
    per_object = "-"
    if result.target.is_receiver:
        per_object = " / ".join(
            _number(_median(m.events_per_object for m in runs)) for runs in (result.closed, result.open)
        )
    cpu = " / ".join(
        [
            _cores(m.server_cores for m in result.closed),
            _cores(m.storage_cores for m in result.closed) if result.target.landing == "gcs" else "-",
            _cores(m.trial.generator_cores for m in result.closed),
            _cores(m.other_cores for m in result.closed),
        ]
    )
    check = result.landing
    landed = "-"
    if check is not None:
        landed = (
            f"{'yes' if check.ok else 'NO'}: {check.lines:,} lines for {check.acked:,} acked in {check.objects:,} "
            f"objects ({check.lines / max(1, check.objects):.1f}/object), {check.duplicates} dup, "
            f"{check.acked_missing} missing"
        )
    if result.not_acked:
        landed += f"; {result.not_acked:,} of {result.sent:,} requests not 2xx"
    cells = [result.target.name, f"{throughput:,.0f}", ratio, at_max, at_rate, per_object, cpu, landed]
    return "| " + " | ".join(cells) + " |"


def max_throughput(result: TargetResult) -> float:
    """Median over trials of acknowledged events per second in the closed loop."""
    return _median(m.trial.acked_per_second for m in result.closed)


def generator_note(results: Sequence[TargetResult]) -> str:
    """How much of a core the load generator needed: it must not be what limits the ceiling."""
    bare = next((r for r in results if not r.target.is_receiver), None)
    if bare is None:
        return ""
    throughput = max_throughput(bare)
    cores = _median(m.trial.generator_cores for m in bare.closed)
    lag = _median(percentile(m.trial.send_lags, 0.99) for m in bare.open)
    return (
        f"Load generator: one asyncio process writing pre-built HTTP/1.1 requests on keep-alive connections. "
        f"Against bare it drove {throughput:,.0f} requests/s with {cores:.2f} cores, i.e. about "
        f"{throughput / cores:,.0f} requests/s per core of its own; its open-loop sends left at most "
        f"{lag * 1000:.2f} ms late (p99). CPU columns are cores (1.0 = one core busy): server = the gunicorn "
        "process group, gcs = fake-gcs-server, other = everything else on the machine (kernel, other processes). "
        "Events per object by phase come from the receiver's /metrics (one-worker servers only: with two, each "
        "worker counts for itself); the last column's average covers the whole run, warm-up included."
    )


def contention_note(results: Sequence[TargetResult], gate: QuietGate) -> str:
    """How busy the rest of the machine was during the trials: the figures assume it was idle."""
    other = [m.other_cores for r in results for m in (*r.closed, *r.open)]
    busiest = max(other, default=0.0)
    note = (
        f"Other load during the trials (kernel, other processes): median {_median(other):.2f} cores, "
        f"highest {busiest:.2f}. Before each trial the benchmark waited for fewer than {gate.quiet_cores:g} "
        f"cores to be busy: {gate.waited:.0f} s of waiting in all (budget {gate.budget:g} s)."
    )
    if busiest > NOISY_CORES:
        note += (
            " **Some trials shared the machine with other work**: compare rows through the medians (targets ran "
            "their trials in turn, so a burst of other load hit them alike) and rerun on an idle machine for "
            "absolute figures."
        )
    return note


def request_sizes(deliveries: Sequence[Delivery]) -> str:
    """The mean size of the requests and of their bodies."""
    total = statistics.fmean(len(d.request) for d in deliveries)
    body = statistics.fmean(len(d.request) - d.request.index(b"\r\n\r\n") - 4 for d in deliveries)
    return f"{total:,.0f} bytes per request on average ({body:,.0f} of body)"


def machine_description(background_cores: float) -> str:
    """Cores, CPU model, memory, architecture, kernel, Python, and the load before the run."""
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.splitlines()[1].split()
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return (
        f"Machine: `nproc` {os.cpu_count()} ({cpu_model}), {memory[1]} RAM (`free -h`), {platform.machine()}, "
        f"Linux {platform.release()}, Python {platform.python_version()}. The load generator, the server and "
        f"fake-gcs-server all share these {os.cpu_count()} cores; {background_cores:.2f} cores were busy with "
        "other work just before the run."
    )


def _median(values: Iterable[float]) -> float:
    present = [value for value in values if not math.isnan(value)]
    return statistics.median(present) if present else math.nan


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _cores(values: Iterable[float]) -> str:
    return f"{_median(values):.2f}"
