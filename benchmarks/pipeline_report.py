"""The pipeline benchmark's report: a Markdown section (``## Pipeline``) of medians, ratios and goals."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.pipeline_data import BAD_LINE_RATE, DUPLICATE_RATE, Landing
from benchmarks.pipeline_load import LoadRun
from benchmarks.pipeline_sensor import SensorCase
from pull_events_dagster.defs.sensors import MAX_BATCHES_IN_FLIGHT

LOAD_RATIO_GOAL = 0.6  # pipeline rate / raw read_ndjson rate, at least
MEMORY_RATIO_GOAL = 1.5  # peak RSS at the large size / at the small size, at most
TICK_RATIO_GOAL = 2.0  # steady tick with history / without, under
# More than this many cores busy with other work during a measurement makes it noisy.
NOISY_CORES = 0.25


@dataclass(frozen=True)
class LoadFigures:
    """Every trial of one engine on one landing zone."""

    landing: Landing
    engine: str
    runs: list[LoadRun]

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def rate(self) -> float:
        return self.landing.lines / self.seconds

    @property
    def peak(self) -> float:
        return statistics.median(r.peak_rss_bytes for r in self.runs)

    @property
    def baseline(self) -> float:
        return statistics.median(r.baseline_rss_bytes for r in self.runs)

    @property
    def other_cores(self) -> float:
        return max(r.other_cores for r in self.runs)

    @property
    def cores(self) -> float:
        return statistics.median(r.cores for r in self.runs)


def render_report(
    *,
    command: str,
    started_utc: str,
    elapsed: float,
    landings: Sequence[Landing],
    loads: Sequence[LoadFigures],
    sensors: Sequence[SensorCase],
    max_objects_per_run: int,
    lateness_seconds: int,
    trials: int,
    gcs_note: str,
    profile: LoadRun | None = None,
) -> str:
    """The whole ``## Pipeline`` section for ``benchmarks/RESULTS.md``."""
    lines = [
        "## Pipeline",
        "",
        f"Run started `{started_utc}` (`date -u`), took {elapsed:.0f} s. Command: `{command}`",
        "",
        machine_description(),
        "",
        "### Workload",
        "",
        f"Receiver-format NDJSON landing objects written by `tests/pipeline/factories.py` through "
        f"`LocalLandingStore` (about 1,000 lines per object), with {DUPLICATE_RATE:.0%} redelivered copies of "
        f"earlier events and {BAD_LINE_RATE:.1%} poison lines cycling through all 12 rejection reasons. "
        "Generated before anything is timed.",
        "",
        "| landing | distinct pull events | objects | lines | MiB | duplicates | poison lines | generation s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {la.label} | {la.events:,} | {la.objects:,} | {la.lines:,} | {la.bytes / 2**20:,.0f} | "
        f"{la.duplicates:,} | {la.rejected:,} | {la.seconds:.0f} |"
        for la in landings
    ]
    lines += ["", *_load_section(loads, max_objects_per_run, trials)]
    if profile is not None:
        lines += ["", *_profile_section(profile, loads)]
    lines += ["", *_memory_section(loads)]
    if sensors:
        lines += ["", *_sensor_section(sensors, lateness_seconds, max_objects_per_run, gcs_note)]
    lines += ["", *_noise_notes(loads, sensors, profile)]
    return "\n".join(lines) + "\n"


def _load_section(loads: Sequence[LoadFigures], max_objects_per_run: int, trials: int) -> list[str]:
    lines = [
        "### Load throughput into DuckDB",
        "",
        f"Each load runs in a fresh process on a fresh DuckDB file; {trials} trial(s), medians shown. *pipeline*: "
        f"`DuckDBWarehouse.load_objects` in batches of `max_objects_per_run` = {max_objects_per_run} objects, "
        "as the load asset calls it (one connection per call; dedup, quarantine, ledger). *raw*: "
        "`CREATE TABLE t AS SELECT * FROM read_ndjson([...], ignore_errors = true)` of the same files (without "
        "`ignore_errors` it stops at the first poison line). Rate = landed lines (events incl. duplicates and "
        "poison lines) per second of load. *cores*: the load's CPU time over its wall time. Trials marked * shared "
        f"the machine with other work (more than {NOISY_CORES} cores busy elsewhere); *quiet only* is the ratio of "
        "the medians of the unmarked trials, when both engines have some.",
        "",
        "| landing | engine | load s | lines/s | pipeline / raw | goal >= 0.6x | quiet only | trials s | cores "
        "| DuckDB file MiB |",
        "|---|---|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for landing in _landings(loads):
        raw = _figures(loads, landing, "raw")
        for figures in (f for f in loads if f.landing is landing):
            ratio = verdict = quiet = ""
            if figures.engine == "pipeline" and raw is not None:
                value = figures.rate / raw.rate
                ratio, verdict = f"{value:.2f}", _verdict(value >= LOAD_RATIO_GOAL)
                quiet_pipeline, quiet_raw = _quiet_seconds(figures), _quiet_seconds(raw)
                if quiet_pipeline and quiet_raw:
                    quiet = f"{statistics.median(quiet_raw) / statistics.median(quiet_pipeline):.2f}"
            trials_text = ", ".join(
                f"{r.seconds:.1f}" + ("*" if r.other_cores > NOISY_CORES else "") for r in figures.runs
            )
            size = statistics.median(r.database_bytes for r in figures.runs) / 2**20
            lines.append(
                f"| {landing.label} | {figures.engine} | {figures.seconds:.2f} | {figures.rate:,.0f} | {ratio} | "
                f"{verdict} | {quiet} | {trials_text} | {figures.cores:.2f} | {size:,.0f} |"
            )
    return lines


def _quiet_seconds(figures: LoadFigures) -> list[float]:
    return [r.seconds for r in figures.runs if r.other_cores <= NOISY_CORES]


def _profile_section(profile: LoadRun, loads: Sequence[LoadFigures]) -> list[str]:
    raw = next((f for f in loads if f.engine == "raw" and f.landing.lines == profile.lines), None)
    lines = [
        "### Where the pipeline load's time goes",
        "",
        f"One more pipeline load of the {profile.lines:,} lines, every statement timed through a thin wrapper around "
        f"the connection (same SQL): {profile.seconds:.1f} s in all, {profile.lines_per_second:,.0f} lines/s, "
        f"{profile.cores:.2f} cores, other processes {profile.other_cores:.2f} cores"
        + (f"; the raw `read_ndjson` load of the same files took {raw.seconds:.1f} s (median)." if raw else ".")
        + " Statements under 1% of the load are left out.",
        "",
        "| statement (head) | calls | s | share | cores |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, seconds, cpu, calls in profile.statements:
        if seconds >= 0.01 * profile.seconds:
            share = seconds / profile.seconds
            lines.append(f"| `{label}` | {calls} | {seconds:.2f} | {share:.0%} | {cpu / seconds:.2f} |")
    return lines


def _memory_section(loads: Sequence[LoadFigures]) -> list[str]:
    landings = _landings(loads)
    small, large = landings[0], landings[-1]
    lines = [
        "### Peak memory",
        "",
        "Peak resident set of each load's own process (`wait4` rusage `ru_maxrss`), medians; *after imports* = "
        "its RSS just before the load started (Python, DuckDB and, for the pipeline, Dagster imported).",
        "",
        f"| engine | after imports MiB | peak MiB @ {small.label} | peak MiB @ {large.label} | "
        f"{large.label} / {small.label} | goal <= 1.5x |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for engine in ("pipeline", "raw"):
        a, b = _figures(loads, small, engine), _figures(loads, large, engine)
        if a is None or b is None:
            continue
        ratio = b.peak / a.peak
        verdict = _verdict(ratio <= MEMORY_RATIO_GOAL) if engine == "pipeline" else "(context)"
        lines.append(
            f"| {engine} | {a.baseline / 2**20:,.0f} | {a.peak / 2**20:,.0f} | {b.peak / 2**20:,.0f} | "
            f"{ratio:.2f} | {verdict} |"
        )
    return lines


def _sensor_section(
    sensors: Sequence[SensorCase], lateness_seconds: int, max_objects_per_run: int, gcs_note: str
) -> list[str]:
    lines = [
        "### Landing sensor tick",
        "",
        "The real `landing_objects_sensor` evaluated with `dg.build_sensor_context` (ephemeral instance; context "
        "creation included). *with history*: the old objects (committed before the lateness window of "
        f"{lateness_seconds} s) plus the new ones; *new only*: a zone holding just the new objects. *steady*: "
        "from the cursor the sensor itself reached after catching up and seeing its runs succeed, before the new "
        "objects landed (every such tick must request exactly the new objects); *first*: from an empty cursor, "
        "which by design lists the history from its start to catch up (until it has its runs' worth of objects). "
        "*listing*: `store.list_since(now - lateness)` alone. "
        "Medians, milliseconds; ticks of both zones alternate.",
        "",
        "| store | history layout | old objects | new | steady tick: with history / new only | ratio "
        "| goal < 2x | first tick: with history / new only | window listing: with history / new only |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for case in sensors:
        lines.append(
            f"| {case.store} | {case.layout} | {case.history:,} | {case.new} | "
            f"{_ms(case.steady_history)} / {_ms(case.steady_reference)} | {case.steady_ratio:.2f} | "
            f"{_verdict(case.steady_ratio < TICK_RATIO_GOAL)} | "
            f"{_ms(case.first_history)} / {_ms(case.first_reference)} | "
            f"{_ms(case.listing_history)} / {_ms(case.listing_reference)} |"
        )
    lines += [""]
    lines += [
        f"- {c.store}, {c.layout}: {len(c.steady_history)} steady and {len(c.first_history)} first ticks per zone; "
        f"history written in {c.history_write_seconds:.0f} s; the window listing returns {c.window_objects} "
        f"objects; first ticks request {min(-(-(c.history + c.new) // max_objects_per_run), MAX_BATCHES_IN_FLIGHT)} "
        f"runs.{_server_cpu(c)} "
        f"{c.note}".rstrip()
        for c in sensors
    ]
    layouts = (
        "Layouts (keys are `<type>/dt=<day>/hour=<HH>/<time>-...`): *earlier-days* = the old objects spread over "
        "the 100 `dt=` days before the window's day (1,000 a day at 100k); *same-day* = all of them in the `dt=` "
        "day the window starts in, in the hours before the window's start hour (at most 12; a busy day: the "
        "receiver writes an object per batch); *same-hour* = all of them in the `hour=` folder the window starts "
        "in, before the window: the worst case of hour folders, as a local listing reads that folder whole (100k "
        "objects in under 50 minutes is far busier than a real hour). A note under the table says when the time of "
        "day forced a layout out to the next one."
    )
    lines += ["", layouts]
    if gcs_note:
        lines += ["", gcs_note]
    return lines


def _server_cpu(case: SensorCase) -> str:
    if not case.server_cpu_history:
        return ""
    return (
        f" fake-gcs-server CPU per steady tick: {_ms(case.server_cpu_history)} ms with history / "
        f"{_ms(case.server_cpu_reference)} ms new only (/proc, 10 ms resolution)."
    )


def _noise_notes(loads: Sequence[LoadFigures], sensors: Sequence[SensorCase], profile: LoadRun | None) -> list[str]:
    noisy = [f"{f.engine} @ {f.landing.label}: {f.other_cores:.2f}" for f in loads if f.other_cores > NOISY_CORES]
    if profile is not None and profile.other_cores > NOISY_CORES:
        noisy.append(f"the profiled pipeline load: {profile.other_cores:.2f}")
    noisy += [f"sensor {c.store}/{c.layout}: {c.other_cores:.2f}" for c in sensors if c.other_cores > NOISY_CORES]
    if not noisy:
        return [f"Other processes used less than {NOISY_CORES} cores during every measurement."]
    return [
        f"Noise: other processes on the machine used more than {NOISY_CORES} cores during (the worst trial of) "
        f"{'; '.join(noisy)} cores. Figures from those are less reliable."
    ]


def machine_description() -> str:
    """Cores, memory, architecture and versions, from the commands the brief names."""
    import dagster
    import duckdb

    memory = _command(["free", "-h"]).splitlines()
    mem_line = next((line.split() for line in memory if line.startswith("Mem:")), [])
    total = mem_line[1] if len(mem_line) > 1 else "?"
    available = mem_line[6] if len(mem_line) > 6 else "?"
    return (
        f"Machine: `nproc` {_command(['nproc']).strip()}, `uname -m` {platform.machine()}, `free -h` {total} total "
        f"({available} available at the start), {platform.system()} {platform.release()}. Python "
        f"{platform.python_version()}, DuckDB {duckdb.__version__}, Dagster {dagster.__version__}; "
        f"DuckDB threads = {os.cpu_count()} (default)."
    )


def _command(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def _landings(loads: Sequence[LoadFigures]) -> list[Landing]:
    seen: list[Landing] = []
    for figures in loads:
        if all(figures.landing is not landing for landing in seen):
            seen.append(figures.landing)
    return sorted(seen, key=lambda landing: landing.events)


def _figures(loads: Sequence[LoadFigures], landing: Landing, engine: str) -> LoadFigures | None:
    return next((f for f in loads if f.landing is landing and f.engine == engine), None)


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _ms(seconds: Sequence[float]) -> str:
    return f"{statistics.median(seconds) * 1000:,.1f}"
