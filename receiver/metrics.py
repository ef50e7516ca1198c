"""Prometheus metrics of one receiver app, in its own registry (so several apps can live in one process).

With more than one gunicorn worker, each worker answers ``/metrics`` with its own counters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "pull_events_receiver"
# Event types come from the sender; cap the label values so a flood of made-up types cannot blow up memory.
MAX_TYPE_LABELS = 100
OTHER_TYPE = "other"


class ReceiverMetrics:
    """Counters and histograms of intake and commits."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            f"{PREFIX}_accepted_events",
            "Events landed and acknowledged, by event type",
            ["type"],
            registry=self.registry,
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected_requests",
            "Requests refused, by reason (error code) and HTTP status",
            ["reason", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_seconds",
            "Time to answer POST / (parse, verify, land)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_events = Histogram(
            f"{PREFIX}_batch_events",
            "Events per landed object",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
            registry=self.registry,
        )
        self.batch_bytes = Histogram(
            f"{PREFIX}_batch_bytes",
            "Bytes per landed object",
            buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 8388608),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            f"{PREFIX}_commit_seconds",
            "Time to write one object durably to the landing zone",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.commit_failures = Counter(
            f"{PREFIX}_commit_failures", "Object writes the landing zone refused", registry=self.registry
        )
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Events waiting to be committed", registry=self.registry)
        self._types: set[str] = set()
        self._types_lock = threading.Lock()
        # Labelled children, looked up once: .labels() validates and locks on every call.
        self._accepted_children: dict[str, Counter] = {}
        self._rejected_children: dict[tuple[str, int], Counter] = {}

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from ``depth`` at each scrape."""
        self.queue_depth.set_function(depth)

    def type_label(self, event_type: str) -> str:
        """``event_type`` itself for the first ``MAX_TYPE_LABELS`` types seen, then ``other``."""
        if event_type in self._types:
            return event_type
        with self._types_lock:
            if len(self._types) < MAX_TYPE_LABELS:
                self._types.add(event_type)
                return event_type
        return OTHER_TYPE

    def count_accepted(self, event_type: str) -> None:
        """Count one landed event of ``event_type`` (labelled through ``type_label``)."""
        label = self.type_label(event_type)
        child = self._accepted_children.get(label)
        if child is None:
            child = self._accepted_children[label] = self.accepted.labels(label)
        child.inc()

    def count_rejected(self, reason: str, status: int) -> None:
        """Count one refused request (``reason`` is the error code, from a fixed set)."""
        child = self._rejected_children.get((reason, status))
        if child is None:
            child = self._rejected_children[reason, status] = self.rejected.labels(reason, str(status))
        child.inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
