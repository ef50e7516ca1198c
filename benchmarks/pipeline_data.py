"""Synthetic landing zones for the pipeline benchmark, written before anything is timed.

Objects are receiver-format NDJSON made by the test factories (``tests/pipeline/factories.py``) and
written through the real ``LocalLandingStore``; generation runs in one process per core, each with its
own seed and receiver instance name, so event ids and object keys never collide between them.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pull_events.landing import LocalLandingStore
from tests.pipeline.factories import LandingSpec, synthetic_landing

EVENTS_PER_OBJECT = 1_000
DUPLICATE_RATE = 0.01  # redelivered copies of earlier pulls, per distinct event
BAD_LINE_RATE = 0.001  # poison lines cycling through every rejection reason, per distinct event


@dataclass(frozen=True)
class Landing:
    """A generated landing zone and what a correct load of it must report."""

    root: Path
    events: int  # distinct valid pull events
    objects: int
    lines: int  # every landed line: events + duplicates + rejected
    bytes: int
    duplicates: int
    rejected: int
    seconds: float  # generation time (never part of a timing)

    @property
    def label(self) -> str:
        return f"{self.events:,}"


def generate_landing(root: Path, events: int, workers: int) -> Landing:
    """Write ``events`` distinct pull events (plus duplicates and poison lines) under ``root``."""
    started = time.perf_counter()
    shares = [events // workers + (1 if index < events % workers else 0) for index in range(workers)]
    committed_from = datetime.now(UTC) - timedelta(days=1)
    jobs = [(root, share, index, committed_from) for index, share in enumerate(shares) if share]
    # spawn, not fork: the parent may already hold threads (Dagster, gRPC) that a fork would copy mid-lock.
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_generate_share, jobs))
    return Landing(
        root=root,
        events=sum(p[0] for p in parts),
        objects=sum(p[1] for p in parts),
        lines=sum(p[2] for p in parts),
        bytes=sum(p[3] for p in parts),
        duplicates=sum(p[4] for p in parts),
        rejected=sum(p[5] for p in parts),
        seconds=time.perf_counter() - started,
    )


def _generate_share(job: tuple[Path, int, int, datetime]) -> tuple[int, int, int, int, int, int]:
    root, events, index, committed_from = job
    spec = LandingSpec(
        events=events,
        repositories=500,
        days=30,
        first_day=date(2026, 10, 1),
        events_per_object=EVENTS_PER_OBJECT,
        duplicate_rate=DUPLICATE_RATE,
        bad_line_rate=BAD_LINE_RATE,
        actors=5_000,
        clients=50_000,
        seed=index + 1,
        committed_from=committed_from,
        commit_spacing=timedelta(milliseconds=10),
        instance=f"bench{index}",
        keep_facts=False,
    )
    result = synthetic_landing(LocalLandingStore(root), spec)
    return result.pull_count, len(result.keys), result.lines, result.bytes, result.duplicates, len(result.rejected)
