"""Firing many signed deliveries at a receiver from many threads, and recording what each got back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from tests.receiver.deliveries import binary_delivery, compact_json, new_id, pull_event
from tests.receiver.oidc import LocalIssuer


@dataclass
class Outcomes:
    """What the receiver answered, by event id."""

    acked: set[str] = field(default_factory=set)
    refused: dict[str, int] = field(default_factory=dict)  # id -> status
    failed: set[str] = field(default_factory=set)  # no answer at all (connection error)
    retry_after_missing: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, event_id: str, response: requests.Response | None) -> None:
        with self.lock:
            if response is None:
                self.failed.add(event_id)
            elif 200 <= response.status_code < 300:
                self.acked.add(event_id)
            else:
                self.refused[event_id] = response.status_code
                if response.status_code == 503 and "Retry-After" not in response.headers:
                    self.retry_after_missing += 1

    @property
    def sent(self) -> int:
        return len(self.acked) + len(self.refused) + len(self.failed)


def signed_pull_delivery(issuer: LocalIssuer | None, event_id: str | None = None) -> tuple[str, dict[str, str], bytes]:
    """A fresh pull event (new id) as Chainguard would deliver it: (id, headers, body)."""
    attributes, data = pull_event(id=event_id or new_id())
    body = compact_json(data)
    return attributes["id"], binary_delivery(attributes, body, issuer), body


def signed_pull_deliveries(issuer: LocalIssuer | None, count: int) -> list[tuple[str, dict[str, str], bytes]]:
    """``count`` distinct pull deliveries, signed up front so that firing them is a dense burst."""
    return [signed_pull_delivery(issuer) for _ in range(count)]


def fire(
    url: str,
    deliveries: list[tuple[str, dict[str, str], bytes]],
    threads: int,
    stop: threading.Event | None = None,
    on_answer: Callable[[Outcomes], None] | None = None,
    timeout: float = 30.0,
) -> Outcomes:
    """POST ``deliveries`` from ``threads`` threads (until ``stop`` is set, if given)."""
    outcomes = Outcomes()
    local = threading.local()

    def send(delivery: tuple[str, dict[str, str], bytes]) -> None:
        if stop is not None and stop.is_set():
            return
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        event_id, headers, body = delivery
        try:
            response = session.post(url + "/", headers=headers, data=body, timeout=timeout)
        except requests.RequestException:
            response = None
        outcomes.record(event_id, response)
        if on_answer is not None:
            on_answer(outcomes)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, deliveries))
    return outcomes
