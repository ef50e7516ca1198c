"""Sending deliveries over a pool of keep-alive connections, at a given rate, and what the receiver answered.

Each of ``connections`` threads keeps one HTTP/1.1 connection (stdlib ``http.client``) open across requests. At
a rate, delivery *i* is due ``i / rate`` seconds after the start; a thread takes the next due time, waits for
it, and only then takes the next event and signs it, so tokens are fresh and a live run (``--days 0``) dates
each event when it leaves. Nothing is retried: a delivery without an answer counts as ``failed``.
"""

from __future__ import annotations

import http.client
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from devstack.delivery import delivery
from devstack.oidc import Signer
from devstack.traffic import Planned

# The receiver closes a keep-alive connection idle for 5 s; one idle this long is replaced before it is used, so
# a slow rate never sends into a connection the server is closing.
IDLE_RECONNECT_SECONDS = 2.0


@dataclass
class Results:
    """What the receiver answered; ``record`` is thread-safe."""

    sent: int = 0
    accepted: int = 0
    refused: int = 0  # answered, not 2xx
    failed: int = 0  # no answer (connection refused or lost, timeout)
    redeliveries: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    accepted_ids: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)  # seconds, of answered requests
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, planned: Planned, status: int | None, seconds: float) -> None:
        with self.lock:
            self.sent += 1
            self.redeliveries += planned.redelivery
            if status is None:
                self.failed += 1
                return
            self.statuses[status] += 1
            self.latencies.append(seconds)
            if 200 <= status < 300:
                self.accepted += 1
                self.accepted_ids.add(planned.event.id)
            else:
                self.refused += 1

    def summary(self, elapsed: float) -> dict[str, Any]:
        latencies = sorted(self.latencies)
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "refused": self.refused,
            "failed": self.failed,
            "distinct_accepted": len(self.accepted_ids),
            "redeliveries": self.redeliveries,
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "p50_ms": _percentile_ms(latencies, 0.50),
            "p95_ms": _percentile_ms(latencies, 0.95),
            "elapsed_s": round(elapsed, 3),
            "events_per_s": round(self.sent / elapsed, 1) if elapsed > 0 else None,
        }


def _percentile_ms(ordered: list[float], quantile: float) -> float | None:
    """Nearest-rank percentile, in milliseconds (``None`` when nothing was answered)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(len(ordered) * quantile))
    return round(ordered[rank - 1] * 1000, 3)


def send_all(
    url: str,
    deliveries: Iterator[Planned],
    signer: Signer | None,
    rate: float = 0.0,
    connections: int = 16,
    timeout: float = 30.0,
    on_answer: Callable[[Results], None] | None = None,
) -> tuple[Results, float]:
    """Send every delivery to ``url`` (``rate`` per second; 0: as fast as the connections allow); return what
    was answered and the seconds it took."""
    target = urlsplit(url)
    if target.scheme not in ("http", "https") or not target.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    results = Results()
    take = threading.Lock()
    slots = itertools.count()
    started = time.monotonic()

    def next_delivery() -> Planned | None:
        if rate > 0:
            with take:
                due = started + next(slots) / rate
            time.sleep(max(0.0, due - time.monotonic()))
        with take:
            return next(deliveries, None)

    errors: list[BaseException] = []

    def work() -> None:
        pool = _Connection(target.scheme, target.hostname or "", target.port, timeout)
        try:
            while not errors and (planned := next_delivery()) is not None:
                request = delivery(planned.event, signer)
                status, seconds = pool.post(target.path or "/", request.headers, request.body)
                results.record(planned, status, seconds)
                if on_answer is not None:
                    on_answer(results)
        except BaseException as exc:  # a bug, not an answer: stop every thread and raise it in the caller
            errors.append(exc)
        finally:
            pool.close()

    threads = [threading.Thread(target=work, name=f"sender-{n}", daemon=True) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results, time.monotonic() - started


class _Connection:
    """One keep-alive connection, reopened when the server closed it or it sat idle too long."""

    def __init__(self, scheme: str, host: str, port: int | None, timeout: float) -> None:
        self.factory = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        self.host, self.port, self.timeout = host, port, timeout
        self.connection: http.client.HTTPConnection | None = None
        self.last_used = 0.0

    def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int | None, float]:
        """The answer's status (``None``: no answer) and the seconds from sending to the whole answer read."""
        if self.connection is None or time.monotonic() - self.last_used > IDLE_RECONNECT_SECONDS:
            self.close()
            self.connection = self.factory(self.host, self.port, timeout=self.timeout)
        began = time.perf_counter()
        try:
            self.connection.request("POST", path, body, headers)
            response = self.connection.getresponse()
            response.read()
            status = response.status
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException):
            status = None
            self.close()
        self.last_used = time.monotonic()
        return status, time.perf_counter() - began

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
