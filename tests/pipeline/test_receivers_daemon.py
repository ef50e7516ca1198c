"""Several receivers at once: three receiver processes with distinct instance names, one with its wall clock two
minutes behind (libfaketime, a real skew of that process's clock), land concurrent deliveries (redeliveries of one
event to different receivers among them) into one landing zone while the real Dagster daemon loads it. Every
acknowledged event is in the pull table exactly once, nothing else is, and every landed object is in the ledger.

The daemon ticks before the first delivery, so its listing has moved past "now" when the skewed receiver lands
objects named two minutes earlier: they are found only because the sensor's lateness window covers the skew."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import requests
from dagster._core.scheduler.instigation import TickStatus
from dagster_duckdb import DuckDBResource

from pull_events.landing import LocalLandingStore, key_committed_at
from pull_events_dagster.defs.jobs import LOAD_JOB
from pull_events_dagster.defs.sensors import LANDING_SENSOR, LandingCursor
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from tests.pipeline import test_daemon as harness
from tests.pipeline.conftest import rows
from tests.pipeline.test_duckdb_warehouse import LEDGER, PULLS
from tests.receiver.deliveries import binary_delivery, compact_json, new_id, pull_event
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ReceiverProcess, receiver_env
from tests.skewed_clock import missing, skewed_clock_env

dagster_home = harness.dagster_home  # the daemon harness's instance fixture

SKEW_SECONDS = -120
# The window covers the skew with a minute to spare (the default, an hour, covers it many times over).
LATENESS_SECONDS = 180
# A token is minted at the real "now": to a receiver two minutes behind, its iat is two minutes ahead, past the
# default leeway of 60 s. A deployment whose clocks may drift that far needs a leeway to match (or it answers 401).
SKEWED_LEEWAY_SECONDS = 180
INSTANCES = ("rx-a", "rx-b", "rx-skewed")
EVENTS = 90
REDELIVERED = 30
FORGED = 10
# Generous: on two busy cores a load run can wait a minute to start.
DEADLINE_SECONDS = 300

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as local_issuer:
        yield local_issuer


@pytest.fixture
def daemon(dagster_home: Path, landing_dir: Path, duckdb_path: Path) -> Iterator[subprocess.Popen]:
    """The real daemon (started first: its start-up overlaps the receivers')."""
    knobs = {"PULL_EVENTS_LATENESS_S": str(LATENESS_SECONDS), "PULL_EVENTS_MAX_OBJECTS_PER_RUN": "500"}
    process = harness.start_daemon(dagster_home, landing_dir, duckdb_path, **knobs)
    yield process
    harness.stop_daemon(process)


@pytest.fixture
def receivers(landing_dir: Path, issuer: LocalIssuer, tmp_path: Path) -> Iterator[dict[str, ReceiverProcess]]:
    started: dict[str, ReceiverProcess] = {}
    try:
        for name in INSTANCES:
            extra = {"PULL_EVENTS_INSTANCE": name}
            if name == "rx-skewed":
                extra |= skewed_clock_env(SKEW_SECONDS) | {"PULL_EVENTS_TOKEN_LEEWAY_S": str(SKEWED_LEEWAY_SECONDS)}
            env = receiver_env(landing_dir, issuer, **extra)
            started[name] = ReceiverProcess(env, tmp_path / f"{name}.log").start(wait_ready=False)
        for receiver in started.values():
            receiver.wait_ready(timeout=60)
        yield started
    finally:
        for receiver in started.values():
            receiver.stop()


# A tick in progress (STARTED) may not have stored its cursor yet.
FINISHED_TICKS = (TickStatus.SUCCESS, TickStatus.SKIPPED)


def wait_for_first_tick(daemon: subprocess.Popen, dagster_home: Path, instance: dg.DagsterInstance) -> datetime:
    """Until a tick of the landing sensor has finished; returns where its listing got to (its cursor's
    ``listed_to``): from then on the sensor lists from there, less the lateness."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        states = [s for s in instance.all_instigator_state() if s.instigator_name == LANDING_SENSOR]
        ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id) if states else []
        finished = [tick for tick in ticks if tick.status in FINISHED_TICKS]
        if finished:
            cursor = LandingCursor.parse(finished[-1].cursor)
            assert cursor is not None and cursor.listed_to is not None
            return cursor.listed_to
        assert daemon.poll() is None, (dagster_home / "daemon.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"the landing sensor did not tick within {DEADLINE_SECONDS}s"
        time.sleep(0.5)


def deliver(issuer: LocalIssuer, receiver: ReceiverProcess, event_id: str, forged: bool) -> tuple[str, int]:
    """One binary-mode delivery of the fixture pull event under ``event_id``; a forged one carries a token
    signed for another body (403). Returns the id and the status code."""
    attributes, data = pull_event(id=event_id)
    body = compact_json(data)
    headers = binary_delivery(attributes, body, issuer, token=issuer.token(b"another body") if forged else None)
    response = requests.post(receiver.url + "/", headers=headers, data=body, timeout=60)
    return event_id, response.status_code


def deliveries(rng: random.Random) -> list[tuple[str, int, bool]]:
    """(event id, receiver index, forged): every event to one receiver, a third of them again to another, and
    forged deliveries of new ids, shuffled so that all three receivers take deliveries at once."""
    ids = [new_id() for _ in range(EVENTS)]
    plan = [(event_id, n % 3, False) for n, event_id in enumerate(ids)]
    plan += [(event_id, (n + 1) % 3, False) for n, event_id in enumerate(ids[:REDELIVERED])]
    plan += [(new_id(), n % 3, True) for n in range(FORGED)]
    rng.shuffle(plan)
    return plan


def loads_done(instance: dg.DagsterInstance, keys: set[str]) -> bool:
    """Load runs took every one of ``keys`` and none is queued or running."""
    live = instance.get_run_records(filters=dg.RunsFilter(job_name=LOAD_JOB, statuses=harness.LIVE_STATUSES), limit=1)
    return keys <= harness.loaded_by_load_runs(instance) and not live


def test_three_receivers_one_skewed_two_minutes_behind_load_every_acknowledged_event_exactly_once(
    daemon: subprocess.Popen,
    receivers: dict[str, ReceiverProcess],
    issuer: LocalIssuer,
    dagster_home: Path,
    landing_dir: Path,
    duckdb_path: Path,
) -> None:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        listed_to = wait_for_first_tick(daemon, dagster_home, instance)
        sent_from = datetime.now(UTC)
        targets = list(receivers.values())
        with ThreadPoolExecutor(max_workers=12) as pool:
            outcomes = list(
                pool.map(
                    lambda d: (*deliver(issuer, targets[d[1]], d[0], d[2]), d[2]),
                    deliveries(random.Random(12)),
                )
            )
        acknowledged = {event_id for event_id, status, _ in outcomes if 200 <= status < 300}
        assert sorted(status for _, status, forged in outcomes if forged) == [403] * FORGED
        assert all(200 <= status < 300 for _, status, forged in outcomes if not forged), outcomes
        assert len(acknowledged) == EVENTS

        landed = {obj.key for obj in LocalLandingStore(landing_dir).list_all()}
        by_instance = {
            name: {k for k in landed if k.rsplit("/", 1)[-1].split("-", 1)[1].startswith(f"{name}-")}
            for name in INSTANCES
        }
        assert all(by_instance.values()), by_instance  # every receiver landed objects under its own name
        assert set().union(*by_instance.values()) == landed
        # The skew is real in that process: its objects are named two minutes before they were written, and
        # before where the sensor's listing had already got to when they landed (the hostile case).
        assert all(key_committed_at(k) < sent_from - timedelta(seconds=100) for k in by_instance["rx-skewed"])
        assert all(key_committed_at(k) < listed_to for k in by_instance["rx-skewed"])
        assert all(key_committed_at(k) >= sent_from - timedelta(seconds=5) for k in by_instance["rx-a"])

        deadline = time.monotonic() + DEADLINE_SECONDS
        while not loads_done(instance, landed):
            assert daemon.poll() is None, (dagster_home / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"not loaded within {DEADLINE_SECONDS}s: {harness.progress(instance)}"
            time.sleep(1)
    # DuckDB has one writer: the daemon's runs must be gone before the warehouse is read.
    harness.stop_daemon(daemon)

    warehouse = DuckDBWarehouse(DuckDBResource(database=str(duckdb_path)).get_connection)
    assert rows(warehouse, f"SELECT count(*), count(DISTINCT event_id) FROM {PULLS}") == [(EVENTS, EVENTS)]
    assert {event_id for (event_id,) in rows(warehouse, f"SELECT event_id FROM {PULLS}")} == acknowledged
    assert sorted(key for (key,) in rows(warehouse, f"SELECT landing_object FROM {LEDGER}")) == sorted(landed)
    by_receiver = dict(rows(warehouse, f"SELECT split_part(received_by, '-', 2), count(*) FROM {PULLS} GROUP BY 1"))
    assert set(by_receiver) == {"a", "b", "skewed"}  # each receiver's events loaded, under its own name
