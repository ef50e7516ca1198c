"""Running ``scripts/generate-events`` from tests, and comparing what landed with what was planned."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from devstack.delivery import Event
from devstack.replay import LINEAGE_KEYS
from pull_events.landing import LocalLandingStore
from tests.receiver.deliveries import landed_records
from tests.receiver.server import ROOT


def generate_events(*options: str, issuer_state: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the real script; return the process and its final JSON line (the only line on stdout)."""
    command = [ROOT / "scripts/generate-events", *options, "--issuer-state", str(issuer_state)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300)
    [line] = process.stdout.splitlines()
    return process, json.loads(line)


def as_sent(record: dict[str, Any]) -> str:
    """A landed record without the receiver's lineage: the event as it was sent, as canonical JSON."""
    return json.dumps({name: value for name, value in record.items() if name not in LINEAGE_KEYS}, sort_keys=True)


def event_json(event: Event) -> str:
    document = dict(event.attributes) if event.data is None else {**event.attributes, "data": event.data}
    return json.dumps(document, sort_keys=True)


def landed(landing: Path) -> list[dict[str, Any]]:
    return landed_records(LocalLandingStore(landing)) if landing.exists() else []


def landed_events(landing: Path) -> Counter[str]:
    """Every landed event (as sent), with how many lines hold it."""
    return Counter(as_sent(record) for record in landed(landing))


def body_sha256(event: Event) -> str:
    return "sha256:" + hashlib.sha256(event.body()).hexdigest()
