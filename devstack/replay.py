"""Landed lines as events again: ``scripts/generate-events --replay-from DAY --replay-to DAY`` re-sends them.

A landed line is the whole CloudEvent plus the receiver's lineage keys; without those it is the event as it
was sent, and its ``data`` re-encoded compactly is the body the generator sent, byte for byte. The objects of
the chosen days (their ``dt=`` folders: the days they landed) are listed before anything is sent, so lines the
replay itself lands, in the same landing zone, are not replayed again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

from devstack.delivery import Event
from devstack.traffic import Planned
from pull_events.landing import LandingStore, is_blank, line_segments

# What the receiver adds to an event when it lands it (pull_events.landing, receiver.events).
LINEAGE_KEYS = frozenset(
    ("landing_object", "landing_line", "received_at", "received_by", "body_sha256", "token_sha256")
)
_REQUIRED = ("specversion", "id", "source", "type")


@dataclass
class ReplayCounts:
    objects: int = 0
    lines: int = 0  # events read to be sent again
    skipped: int = 0  # lines that are not a landed CloudEvent (a load would reject them too)


def landed_keys(store: LandingStore, first: date, last: date) -> list[str]:
    """Every object that landed on the days ``first`` to ``last`` (UTC, both included), in key order per type."""
    keys: list[str] = []
    day = first
    while day <= last:
        for type_dir in store.event_type_dirs():
            keys.extend(landed.key for landed in store.list_day(type_dir, day))
        day += timedelta(days=1)
    return keys


def landed_events(store: LandingStore, keys: list[str], counts: ReplayCounts) -> Iterator[Planned]:
    """The events of the objects ``keys``, line by line, read as they are needed."""
    for key in keys:
        counts.objects += 1
        for segment in line_segments(store.read(key)):
            if is_blank(segment):
                continue
            event = event_of_line(segment)
            if event is None:
                counts.skipped += 1
                continue
            counts.lines += 1
            yield Planned(event, redelivery=True)


def event_of_line(line: bytes) -> Event | None:
    """The CloudEvent a landed line holds (``None`` if it holds none)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(name), str) for name in _REQUIRED):
        return None
    attributes = {name: value for name, value in record.items() if name not in LINEAGE_KEYS and name != "data"}
    return Event(attributes, record.get("data"))
