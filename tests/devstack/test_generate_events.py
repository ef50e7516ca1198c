"""``scripts/generate-events`` against a real receiver verifying the development issuer's tokens: exact counts
in its JSON line and in the landing zone, the seed's determinism, the --days spread, the progress bar."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.oidc import OidcIssuer
from devstack.traffic import API_TYPES, PULL, PUSH, TrafficSpec, plan
from pull_events.settings import load_settings
from tests.devstack.generation import body_sha256, event_json, generate_events, landed, landed_events
from tests.devstack.stack import stack_receiver_env
from tests.receiver.server import ROOT, ThreadedReceiver

UNTIL = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def make_stack_receiver(tmp_path: Path, dev_issuer: OidcIssuer) -> Iterator[object]:
    """``make(name)``: a receiver configured as scripts/stack configures it, landing in ``tmp_path/name``."""
    started: list[ThreadedReceiver] = []

    def make(name: str) -> ThreadedReceiver:
        receiver = ThreadedReceiver(load_settings(stack_receiver_env(tmp_path / name, dev_issuer.url))).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


def test_every_delivery_is_accepted_and_lands_redeliveries_as_extra_lines(
    tmp_path: Path, issuer_state: Path, make_stack_receiver
) -> None:
    receiver = make_stack_receiver("landing")
    options = ("--events", "400", "--days", "3", "--seed", "11", "--until", "2026-03-10T12:00:00Z")
    process, report = generate_events(*options, "--url", receiver.url, issuer_state=issuer_state)

    planned = list(plan(TrafficSpec(events=400, days=3, seed=11, until=UNTIL)))
    distinct = {p.event.id for p in planned}
    redeliveries = sum(p.redelivery for p in planned)
    assert redeliveries > 0 and len(distinct) == 400 - redeliveries  # the plan has redeliveries to count
    assert process.returncode == 0 and process.stderr == ""  # no progress bar off a terminal
    assert {key: report[key] for key in ("sent", "accepted", "refused", "failed", "statuses")} == {
        "sent": 400, "accepted": 400, "refused": 0, "failed": 0, "statuses": {"202": 400},
    }  # fmt: skip
    assert (report["distinct_accepted"], report["redeliveries"], report["seed"]) == (len(distinct), redeliveries, 11)
    assert 0 < report["p50_ms"] <= report["p95_ms"]

    records = landed(tmp_path / "landing")
    assert len(records) == 400
    assert len({record["id"] for record in records}) == len(distinct)
    # Each event landed once per delivery of it, exactly as planned: a redelivery is another line, same id.
    assert landed_events(tmp_path / "landing") == Counter(event_json(p.event) for p in planned)
    by_id = {p.event.id: p.event for p in planned}
    assert all(record["body_sha256"] == body_sha256(by_id[record["id"]]) for record in records)


def test_the_same_seed_sends_the_same_events_and_another_seed_others(
    tmp_path: Path, issuer_state: Path, make_stack_receiver
) -> None:
    for name, seed in (("first", "5"), ("again", "5"), ("other", "6")):
        receiver = make_stack_receiver(name)
        options = ("--events", "150", "--days", "2", "--seed", seed, "--until", "2026-03-10T12:00:00Z")
        process, report = generate_events(*options, "--url", receiver.url, issuer_state=issuer_state)
        assert (process.returncode, report["accepted"]) == (0, 150)
    first, again = (landed_events(tmp_path / name) for name in ("first", "again"))
    assert first == again
    assert {record["id"] for record in landed(tmp_path / "first")}.isdisjoint(
        record["id"] for record in landed(tmp_path / "other")
    )


def test_events_are_spread_over_the_last_days(tmp_path: Path, issuer_state: Path, make_stack_receiver) -> None:
    receiver = make_stack_receiver("landing")
    options = ("--events", "300", "--days", "3", "--seed", "2", "--until", "2026-03-10T12:00:00Z")
    process, _report = generate_events(*options, "--url", receiver.url, issuer_state=issuer_state)
    assert process.returncode == 0
    whens = [
        datetime.fromisoformat(record["data"]["body"]["when"]).replace(tzinfo=UTC)
        for record in landed(tmp_path / "landing")
        if "when" in record["data"]["body"]
    ]
    assert all(UNTIL - timedelta(days=3) <= when <= UNTIL for when in whens)
    # The window starts at noon on 7 March: every day it touches gets events.
    assert {when.date().isoformat() for when in whens} == {"2026-03-07", "2026-03-08", "2026-03-09", "2026-03-10"}


def test_the_traffic_mixes_what_a_registry_sees() -> None:
    planned = [p.event for p in plan(TrafficSpec(events=5000, days=7, seed=3, until=UNTIL))]
    pulls = [event.data["body"] for event in planned if event.attributes["type"] == PULL]
    assert {(body["type"], body["method"]) for body in pulls} == {
        ("manifest", "HEAD"),
        ("manifest", "GET"),
        ("blob", "GET"),
    }
    assert {body["error"]["code"] for body in pulls if "error" in body} == {
        "UNAUTHORIZED", "DENIED", "MANIFEST_UNKNOWN", "TOOMANYREQUESTS", "BLOB_UNKNOWN",
    }  # fmt: skip
    assert {event.attributes["type"] for event in planned} == {PULL, PUSH, *API_TYPES}
    assert len({body["repository"] for body in pulls}) >= 30
    assert len({body.get("tag") for body in pulls}) >= 30
    assert len({event.data["actor"]["subject"] for event in planned}) >= 40
    assert len({body["user_agent"] for body in pulls}) >= 10
    assert any("tag" not in body for body in pulls)  # pulls by digest


def test_a_rate_spaces_the_deliveries(tmp_path: Path, issuer_state: Path, make_stack_receiver) -> None:
    receiver = make_stack_receiver("landing")
    options = ("--events", "40", "--rate", "40", "--days", "0", "--seed", "1")
    process, report = generate_events(*options, "--url", receiver.url, issuer_state=issuer_state)
    assert (process.returncode, report["accepted"]) == (0, 40)
    # Delivery i is not sent before i / rate seconds (by construction), so the last one not before 39/40 s.
    assert report["elapsed_s"] >= 39 / 40


def test_unsigned_deliveries_are_refused_and_land_nothing(
    tmp_path: Path, issuer_state: Path, make_stack_receiver
) -> None:
    receiver = make_stack_receiver("landing")
    process, report = generate_events("--events", "20", "--unsigned", "--url", receiver.url, issuer_state=issuer_state)
    assert process.returncode == 1
    assert (report["sent"], report["accepted"], report["refused"], report["statuses"]) == (20, 0, 20, {"401": 20})
    assert landed(tmp_path / "landing") == []


def test_a_progress_bar_shows_on_a_terminal(tmp_path: Path, issuer_state: Path, make_stack_receiver) -> None:
    receiver = make_stack_receiver("landing")
    controller, terminal = pty.openpty()
    # A terminal 120 columns wide (a new pseudo-terminal has none, and tqdm would fit its bar into 0).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    command = [ROOT / "scripts/generate-events", "--events", "50", "--seed", "1", "--url", receiver.url]
    process = subprocess.Popen([*command, "--issuer-state", str(issuer_state)], stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(60) == 0
    text = output.decode()
    assert "events: 100%" in text and "50/50" in text
    assert '"accepted": 50' in text
