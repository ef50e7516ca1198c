"""Landing-sensor tick time with a long history beside a few new objects, against the new objects alone.

Two landing zones per case, built the same way except for the history:

- *history*: ``history`` old objects (committed before the lateness window, in the key layout
  ``object_key`` gives) plus ``new`` objects landed within the window;
- *reference*: the same ``new`` objects only.

Each zone is brought to a steady state by the real sensor: ticks from an empty cursor catch up with
whatever is there (at most ``MAX_BATCHES_IN_FLIGHT`` runs a tick), each tick's runs recorded as succeeded in
the Dagster instance before the next (where the sensor reads what it requested), until a tick requests nothing.
Then the ``new`` objects land, and the timed tick is the real sensor function evaluated with
``dg.build_sensor_context`` (ephemeral instance) from that steady cursor. Ticks of both zones alternate so that
noise on the machine hits both alike. The first tick (empty cursor, and an instance with no runs yet, as on a
new deployment) is timed too: it lists the history from its start, to catch up, until it has the oldest
``MAX_BATCHES_IN_FLIGHT`` runs' worth of objects. Every timed tick is checked: it must request exactly the objects
it should.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from benchmarks.cpu import MachineCpu, process_cpu_seconds
from pull_events.landing import GcsLandingStore, LandingStore, LocalLandingStore, object_key
from pull_events.settings import Settings, load_settings
from pull_events_dagster.defs import build_definitions
from pull_events_dagster.defs.assets import LOADER
from pull_events_dagster.defs.jobs import LOAD_JOB
from pull_events_dagster.defs.sensors import LANDING_SENSOR, MAX_BATCHES_IN_FLIGHT, LandingCursor
from tests.pipeline.factories import PULL_TYPE, SOURCE, PullFacts, landed_line, pull_event, write_object
from tests.services import FakeGcsServer

HISTORY_INSTANCE = "history"
# Old objects end this long before the window starts, so they stay outside it for the whole measurement.
HISTORY_MARGIN = timedelta(minutes=10)
EARLIER_DAYS = 100
# A same-hour history needs this much of the window's start hour before the window (history span + margin).
SAME_HOUR_MIN_OFFSET = timedelta(minutes=15)

# Layouts of the history: where, in the key space, the old objects sit.
EARLIER_DAYS_LAYOUT = "earlier-days"  # spread over the 100 days before the window's day
SAME_DAY_LAYOUT = "same-day"  # in the window's own dt= day, in the hours before the window's start hour
# In the window's start hour folder, before the window: the one folder a local listing must read whole.
SAME_HOUR_LAYOUT = "same-hour"
LAYOUTS = (EARLIER_DAYS_LAYOUT, SAME_DAY_LAYOUT, SAME_HOUR_LAYOUT)


@dataclass
class SensorCase:
    """Timings (seconds) of one history size and layout on one kind of store."""

    store: str  # "local" or "gcs"
    layout: str
    history: int
    new: int
    max_objects_per_run: int
    steady_history: list[float] = field(default_factory=list)
    steady_reference: list[float] = field(default_factory=list)
    first_history: list[float] = field(default_factory=list)
    first_reference: list[float] = field(default_factory=list)
    listing_history: list[float] = field(default_factory=list)  # the window listing alone, no Dagster
    listing_reference: list[float] = field(default_factory=list)
    window_objects: int = 0  # objects the window listing returns in the history zone
    other_cores: float = 0.0  # CPU used by other processes on the machine during the timed ticks
    server_cpu_history: list[float] = field(default_factory=list)  # storage server CPU per steady tick (GCS)
    server_cpu_reference: list[float] = field(default_factory=list)
    history_write_seconds: float = 0.0
    note: str = ""

    @property
    def steady_ratio(self) -> float:
        return statistics.median(self.steady_history) / statistics.median(self.steady_reference)

    @property
    def first_ratio(self) -> float:
        return statistics.median(self.first_history) / statistics.median(self.first_reference)


@dataclass
class _Zone:
    """One landing zone, its definitions and Dagster instance, and the sensor's steady cursor for it."""

    store: LandingStore
    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    history_keys: list[str]
    # Where first ticks are evaluated: no runs, so nothing counts as requested (the sensor reads that from runs).
    new_instance: dg.DagsterInstance = field(default_factory=dg.DagsterInstance.ephemeral)
    steady_cursor: str = ""
    new_keys: list[str] = field(default_factory=list)


def measure_local(
    work: Path, history: int, new: int, layout: str, steady_ticks: int, first_ticks: int, environ: dict[str, str]
) -> SensorCase:
    """Sensor ticks on local landing directories (history written with plain file writes, for speed)."""
    zones = {name: work / name / "landing" for name in ("history", "reference")}
    settings = {name: _settings(str(root), work / name, environ) for name, root in zones.items()}
    window_start = datetime.now(UTC) - timedelta(seconds=settings["history"].pipeline.lateness_seconds)
    moments, note = history_moments(history, layout, window_start)
    started = time.perf_counter()
    keys = write_local_history(zones["history"], moments)
    written = time.perf_counter() - started
    stores = {name: LocalLandingStore(root) for name, root in zones.items()}
    case = SensorCase("local", layout, history, new, settings["history"].pipeline.max_objects_per_run, note=note)
    case.history_write_seconds = written
    _measure(case, stores, settings, {"history": keys, "reference": []}, steady_ticks, first_ticks, [])
    window_end_start = datetime.now(UTC) - _lateness(settings["history"])
    if window_start.date() != window_end_start.date():
        case.note += " The window's start crossed midnight UTC during the measurement."
    elif layout == SAME_HOUR_LAYOUT and window_start.hour != window_end_start.hour:
        case.note += (
            " The window's start moved into the next hour during the measurement (later ticks skipped the history)."
        )
    return case


def measure_gcs(
    work: Path, history: int, new: int, steady_ticks: int, first_ticks: int, environ: dict[str, str], uploaders: int
) -> SensorCase:
    """Sensor ticks on fake-gcs-server buckets (history uploaded through ``GcsLandingStore.write_new``)."""
    server = FakeGcsServer(work / "gcs-root")
    with server, _environment(STORAGE_EMULATOR_HOST=server.url):
        client = server.client()
        buckets = {name: f"pipeline-bench-{name}" for name in ("history", "reference")}
        for bucket in buckets.values():
            client.create_bucket(bucket)
        settings = {name: _settings(f"gs://{bucket}/landing", work / name, environ) for name, bucket in buckets.items()}
        stores = {name: GcsLandingStore(bucket, "landing", client=client) for name, bucket in buckets.items()}
        window_start = datetime.now(UTC) - _lateness(settings["history"])
        moments, note = history_moments(history, EARLIER_DAYS_LAYOUT, window_start)
        started = time.perf_counter()
        keys = upload_history(stores["history"], moments, uploaders)
        case = SensorCase("gcs", EARLIER_DAYS_LAYOUT, history, new, settings["history"].pipeline.max_objects_per_run)
        case.history_write_seconds = time.perf_counter() - started
        case.note = note
        pids = [server.process.pid] if server.process else []
        _measure(case, stores, settings, {"history": keys, "reference": []}, steady_ticks, first_ticks, pids)
    return case


def history_moments(count: int, layout: str, window_start: datetime) -> tuple[list[datetime], str]:
    """Commit times of ``count`` old objects, all before ``window_start`` (minus a margin), and a note on the layout.

    Where a layout cannot be had at this time of day, the history takes the next layout out (same-hour, then
    same-day, then earlier-days) and the note says so.
    """
    hour_start = window_start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if layout == SAME_HOUR_LAYOUT:
        if window_start - hour_start >= SAME_HOUR_MIN_OFFSET:
            return _spread(count, hour_start, window_start - HISTORY_MARGIN), ""
        moments, note = history_moments(count, SAME_DAY_LAYOUT, window_start)
        return moments, (
            f"The window starts less than {SAME_HOUR_MIN_OFFSET.seconds // 60} min into its hour, too early for a "
            f"same-hour history: laid out as same-day instead. {note}"
        ).rstrip()
    if layout == SAME_DAY_LAYOUT:
        day_start = hour_start.replace(hour=0)
        low, high = max(day_start, hour_start - timedelta(hours=12)), min(hour_start, window_start - HISTORY_MARGIN)
        if high > low:
            return _spread(count, low, high), ""
        layout_note = (
            "The window starts in hour 00 UTC, which leaves no earlier hour of its day: spread over earlier days."
        )
        return history_moments(count, EARLIER_DAYS_LAYOUT, window_start)[0], layout_note
    day = window_start.replace(hour=0, minute=0, second=0, microsecond=0)
    per_day = math.ceil(count / EARLIER_DAYS)
    step = timedelta(days=1) / per_day
    return [
        day - timedelta(days=1 + index % EARLIER_DAYS) + step * (index // EARLIER_DAYS) for index in range(count)
    ], ""


def _spread(count: int, low: datetime, high: datetime) -> list[datetime]:
    """``count`` moments evenly spread over [low, high)."""
    step = (high - low) / count
    return [low + step * index for index in range(count)]


def write_local_history(root: Path, moments: Sequence[datetime]) -> list[str]:
    """Tiny receiver-format objects under ``object_key`` names, with plain writes (no fsync)."""
    template = _history_line_template()
    keys = []
    made: set[Path] = set()
    for sequence, moment in enumerate(moments):
        key = object_key(PULL_TYPE, moment, HISTORY_INSTANCE, sequence)
        path = root / key
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(template(key, sequence))
        keys.append(key)
    return keys


def upload_history(store: GcsLandingStore, moments: Sequence[datetime], uploaders: int) -> list[str]:
    """The same tiny objects, uploaded create-only through the store, ``uploaders`` at a time."""
    template = _history_line_template()
    keys = [object_key(PULL_TYPE, moment, HISTORY_INSTANCE, sequence) for sequence, moment in enumerate(moments)]
    with ThreadPoolExecutor(uploaders) as pool:
        list(pool.map(lambda item: store.write_new(item[1], template(item[1], item[0])), enumerate(keys)))
    return keys


def _history_line_template() -> Callable[[str, int], bytes]:
    """A real landed pull line whose object key and event id are filled in per object."""
    facts = _pull("@@ID@@", datetime(2026, 11, 1, 12))
    line = landed_line(pull_event(facts), "@@KEY@@", 1, datetime(2026, 11, 1, 12, tzinfo=UTC), HISTORY_INSTANCE)
    return lambda key, sequence: (line.replace("@@KEY@@", key).replace("@@ID@@", f"history-{sequence}") + "\n").encode()


def _land_new(store: LandingStore, new: int) -> list[str]:
    """``new`` objects committed between 15 and 5 minutes ago, through the store's durable ``write_new``."""
    now = datetime.now(UTC)
    keys = []
    for sequence in range(new):
        moment = now - timedelta(minutes=15) + timedelta(minutes=10) * sequence / new
        event = pull_event(_pull(f"new-{sequence}", moment.replace(tzinfo=None)))
        keys.append(write_object(store, PULL_TYPE, [event], moment, instance="new", sequence=sequence))
    return keys


def _pull(event_id: str, when: datetime) -> PullFacts:
    return PullFacts(
        source=SOURCE,
        id=event_id,
        repository="registry.example.com/team-0/image-0000",
        when=when,
        method="GET",
        type="manifest",
        tag="latest",
        error_status=None,
        actor="actor",
        remote_address="10.0.0.1",
    )


def _measure(
    case: SensorCase,
    stores: dict[str, LandingStore],
    settings: dict[str, Settings],
    history_keys: dict[str, list[str]],
    steady_ticks: int,
    first_ticks: int,
    helper_pids: Sequence[int],
) -> None:
    """Steady-state cursors, then the timed ticks; ``helper_pids``: servers whose CPU is the benchmark's."""
    zones = {}
    for name, store in stores.items():
        defs = build_definitions(settings[name])
        zones[name] = _Zone(store, settings[name], defs, dg.DagsterInstance.ephemeral(), history_keys[name])
    for zone in zones.values():
        zone.steady_cursor = _steady_cursor(zone)
        zone.new_keys = _land_new(zone.store, case.new)
    history, reference = zones["history"], zones["reference"]
    lateness = _lateness(history.settings)
    case.window_objects = sum(1 for _ in history.store.list_since(datetime.now(UTC) - lateness))
    own = [os.getpid(), *helper_pids]
    with MachineCpu() as machine:
        started, cpu = time.monotonic(), sum(process_cpu_seconds(pid) for pid in own)
        _timed_ticks(case, history, reference, lateness, steady_ticks, first_ticks, helper_pids)
        cpu, wall = sum(process_cpu_seconds(pid) for pid in own) - cpu, time.monotonic() - started
    case.other_cores = max(0.0, machine.cores - cpu / wall)


def _timed_ticks(
    case: SensorCase,
    history: _Zone,
    reference: _Zone,
    lateness: timedelta,
    steady_ticks: int,
    first_ticks: int,
    helper_pids: Sequence[int],
) -> None:
    def server_cpu() -> float:
        return sum(process_cpu_seconds(pid) for pid in helper_pids)

    steady = ((history, case.steady_history, case.server_cpu_history),
              (reference, case.steady_reference, case.server_cpu_reference))  # fmt: skip
    for _ in range(steady_ticks):
        for zone, timings, server_timings in steady:
            before = server_cpu()
            seconds, requests, _ = _tick(zone, zone.steady_cursor)
            _expect(requests, [zone.new_keys], case.max_objects_per_run, "a steady-state tick")
            timings.append(seconds)
            if helper_pids:
                server_timings.append(server_cpu() - before)
        for zone, timings in ((history, case.listing_history), (reference, case.listing_reference)):
            started = time.perf_counter()
            sum(1 for _ in zone.store.list_since(datetime.now(UTC) - lateness))
            timings.append(time.perf_counter() - started)
    for _ in range(first_ticks):
        for zone, timings in ((history, case.first_history), (reference, case.first_reference)):
            seconds, requests, _ = _tick(zone, None, zone.new_instance)
            oldest = sorted(zone.history_keys + zone.new_keys)[: MAX_BATCHES_IN_FLIGHT * case.max_objects_per_run]
            _expect(requests, [oldest], case.max_objects_per_run, "a first tick")
            timings.append(seconds)


def _steady_cursor(zone: _Zone) -> str:
    """The cursor of a sensor that has caught up and whose runs have all succeeded."""
    job = zone.defs.resolve_job_def(LOAD_JOB)
    requests, cursor = _tick(zone, None)[1:]
    caught_up: list[str] = []
    while requests:
        caught_up += [o["key"] for r in requests for o in r.run_config["ops"][LOADER]["config"]["objects"]]
        for request in requests:
            zone.instance.create_run_for_job(
                job,
                run_config=request.run_config,
                tags={**request.tags, "dagster/run_key": request.run_key or ""},
                status=dg.DagsterRunStatus.SUCCESS,
            )
        requests, cursor = _tick(zone, cursor)[1:]
    if sorted(caught_up) != sorted(zone.history_keys):
        raise RuntimeError(f"the catch-up ticks requested {len(caught_up)} objects, not {len(zone.history_keys)}")
    state = LandingCursor.parse(cursor)
    if requests or state is None or state.listed_to is None:
        raise RuntimeError("the sensor did not settle after its runs succeeded")
    return cursor


def _tick(
    zone: _Zone, cursor: str | None, instance: dg.DagsterInstance | None = None
) -> tuple[float, list[dg.RunRequest], str]:
    """One evaluation of the real sensor, timed (context creation included, as the daemon does it)."""
    sensor = zone.defs.resolve_sensor_def(LANDING_SENSOR)
    started = time.perf_counter()
    with dg.build_sensor_context(
        instance=instance or zone.instance, cursor=cursor, definitions=zone.defs, resources=zone.defs.resources
    ) as context:
        result = sensor(context)
    seconds = time.perf_counter() - started
    if not isinstance(result, dg.SensorResult):
        raise RuntimeError(f"the sensor returned {type(result).__name__}, not a SensorResult")
    return seconds, list(result.run_requests or []), result.cursor or ""


def _expect(requests: Sequence[dg.RunRequest], groups: Sequence[list[str]], cap: int, what: str) -> None:
    """``requests`` must ask for exactly the keys of ``groups``, in runs of at most ``cap`` objects."""
    wanted = sorted(key for group in groups for key in group)
    asked = [[o["key"] for o in r.run_config["ops"]["load_landing_objects"]["config"]["objects"]] for r in requests]
    if sorted(key for keys in asked for key in keys) != wanted or any(len(keys) > cap for keys in asked):
        raise RuntimeError(f"{what} requested {sum(map(len, asked))} objects in {len(asked)} runs, not {len(wanted)}")
    if len(asked) != math.ceil(len(wanted) / cap):
        raise RuntimeError(f"{what} requested {len(asked)} runs for {len(wanted)} objects (cap {cap})")


def _settings(landing: str, work: Path, environ: dict[str, str]) -> Settings:
    # The sensor never opens the warehouse; it still has to be named.
    env = {**environ, "PULL_EVENTS_AUTH": "off", "PULL_EVENTS_LANDING": landing}
    env["PULL_EVENTS_WAREHOUSE"] = str(work / "warehouse.duckdb")
    return load_settings(env)


def _lateness(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.pipeline.lateness_seconds)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Process environment variables for the block (GCSResource finds the emulator through one)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
