"""``scripts/generate-events --replay-from DAY --replay-to DAY``: exactly the lines landed on those days are sent
again, each with a new token, and land as the same events with the same bodies."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from pathlib import Path

from devstack.oidc import OidcIssuer
from pull_events.landing import LocalLandingStore, object_key
from pull_events.settings import load_settings
from tests.devstack.generation import as_sent, generate_events, landed, landed_events
from tests.devstack.stack import stack_receiver_env
from tests.receiver.server import ThreadedReceiver

DAYS = (date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3))


def land_on_days(source: Path, target: Path) -> dict[date, list[dict]]:
    """Copy the lines landed in ``source`` into ``target`` as objects of three landing days (a third of the lines
    each, in one object per type and day), plus a line no load could read in the first day's first object."""
    records = landed(source)
    store = LocalLandingStore(target)
    by_day: dict[date, list[dict]] = {}
    for number, day in enumerate(DAYS):
        chosen = records[number::3]
        by_day[day] = chosen
        by_type: dict[str, list[bytes]] = defaultdict(list)
        for record in chosen:
            by_type[record["type"]].append(json.dumps(record).encode())
        for sequence, (event_type, lines) in enumerate(sorted(by_type.items())):
            if number == 0 and sequence == 0:
                lines = [b"<html>not an event</html>", *lines]
            committed = datetime(day.year, day.month, day.day, 10, 30, tzinfo=UTC)
            store.write_new(object_key(event_type, committed, "fixture", sequence), b"\n".join(lines) + b"\n")
    return by_day


def test_replay_resends_exactly_the_lines_of_the_chosen_days(
    tmp_path: Path, issuer_state: Path, dev_issuer: OidcIssuer
) -> None:
    def receiver(name: str) -> ThreadedReceiver:
        return ThreadedReceiver(load_settings(stack_receiver_env(tmp_path / name, dev_issuer.url))).start()

    original = receiver("original")
    try:
        process, _report = generate_events(
            "--events", "240", "--seed", "4", "--url", original.url, issuer_state=issuer_state
        )
    finally:
        original.stop()
    assert process.returncode == 0
    by_day = land_on_days(tmp_path / "original", tmp_path / "history")
    chosen = by_day[DAYS[0]] + by_day[DAYS[1]]

    replayed = receiver("replayed")
    try:
        options = ("--replay-from", "2026-03-01", "--replay-to", "2026-03-02", "--landing", str(tmp_path / "history"))
        process, report = generate_events(*options, "--url", replayed.url, issuer_state=issuer_state)
    finally:
        replayed.stop()
    assert process.returncode == 0, process.stderr
    objects = len({record["type"] for record in by_day[DAYS[0]]}) + len({record["type"] for record in by_day[DAYS[1]]})
    assert {key: report[key] for key in ("sent", "accepted", "refused", "failed", "lines", "skipped", "objects")} == {
        "sent": len(chosen), "accepted": len(chosen), "refused": 0, "failed": 0,
        "lines": len(chosen), "skipped": 1, "objects": objects,
    }  # fmt: skip
    assert landed_events(tmp_path / "replayed") == Counter(as_sent(record) for record in chosen)
    # Re-encoded, each event's data is the very body first sent: the receiver hashed the same bytes.
    assert Counter(record["body_sha256"] for record in landed(tmp_path / "replayed")) == Counter(
        record["body_sha256"] for record in chosen
    )
