"""Durability under SIGKILL: every event that got a 2xx is in the landing zone after a crash mid-burst.

Starts the receiver under gunicorn, fires a burst of signed pull deliveries from many threads, kills the
whole process group with SIGKILL once ``kill_after_acks`` events were acknowledged, then reads the
landing zone back and compares. Used by ``test_process.py``; also runnable on its own::

    uv run python -m tests.receiver.kill_test [--events 3000] [--threads 32] [--kill-after 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pull_events.landing import LandingStore, LocalLandingStore
from tests.receiver.load import Outcomes, fire, signed_pull_deliveries
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ReceiverProcess, receiver_env


@dataclass
class KillTestReport:
    """What was acknowledged before the kill, and what the landing zone holds after it."""

    sent: int
    acked: int
    refused: int
    unanswered: int
    landed: int
    objects: int
    acked_missing: list[str] = field(default_factory=list)
    landed_not_acked: int = 0
    duplicates: int = 0
    unreadable_objects: list[str] = field(default_factory=list)

    @property
    def durable(self) -> bool:
        return not self.acked_missing and not self.unreadable_objects

    def summary(self) -> str:
        return (
            f"sent {self.sent}, acknowledged {self.acked}, refused {self.refused}, no answer {self.unanswered}; "
            f"landed {self.landed} in {self.objects} objects ({self.landed_not_acked} landed without an ack, "
            f"{self.duplicates} duplicates); acknowledged but missing: {len(self.acked_missing)}; "
            f"unreadable objects: {len(self.unreadable_objects)}"
        )


def run_kill_test(
    process: ReceiverProcess,
    store: LandingStore,
    issuer: LocalIssuer,
    events: int = 1200,
    threads: int = 16,
    kill_after_acks: int = 300,
) -> KillTestReport:
    """Fire ``events`` deliveries at the running ``process``, SIGKILL it after ``kill_after_acks`` acks."""
    deliveries = signed_pull_deliveries(issuer, events)
    stop = threading.Event()
    kill_lock = threading.Lock()

    def kill_once_enough_acked(outcomes: Outcomes) -> None:
        if len(outcomes.acked) >= kill_after_acks and not stop.is_set():
            with kill_lock:
                if not stop.is_set():
                    process.kill()
                    stop.set()

    outcomes = fire(process.url, deliveries, threads, stop=stop, on_answer=kill_once_enough_acked, timeout=10)
    if not stop.is_set():
        process.kill()
    return inspect_landing(store, outcomes)


def inspect_landing(store: LandingStore, outcomes: Outcomes) -> KillTestReport:
    """Compare what was acknowledged with what every landed object holds."""
    landed: list[str] = []
    unreadable: list[str] = []
    objects = list(store.list_all())
    for landed_object in objects:
        try:
            data = store.read(landed_object.key)
            if not data.endswith(b"\n"):
                raise ValueError("truncated")
            landed += [json.loads(line)["id"] for line in data.split(b"\n")[:-1]]
        except ValueError:
            unreadable.append(landed_object.key)
    landed_set = set(landed)
    return KillTestReport(
        sent=outcomes.sent,
        acked=len(outcomes.acked),
        refused=len(outcomes.refused),
        unanswered=len(outcomes.failed),
        landed=len(landed),
        objects=len(objects),
        acked_missing=sorted(outcomes.acked - landed_set),
        landed_not_acked=len(landed_set - outcomes.acked),
        duplicates=len(landed) - len(landed_set),
        unreadable_objects=unreadable,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--kill-after", type=int, default=1000, help="acknowledged events before the SIGKILL")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kill-test-") as work, LocalIssuer() as issuer:
        landing = Path(work) / "landing"
        process = ReceiverProcess(receiver_env(landing, issuer), Path(work) / "receiver.log").start()
        try:
            report = run_kill_test(
                process, LocalLandingStore(landing), issuer, args.events, args.threads, args.kill_after
            )
        finally:
            process.stop()
    print(report.summary())
    print(
        "OK: every acknowledged event is in the landing zone" if report.durable else "FAILED: acknowledged events lost"
    )
    return 0 if report.durable else 1


if __name__ == "__main__":
    sys.exit(main())
