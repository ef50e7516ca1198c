"""Push-back over HTTP when commits cannot keep up: 503 + Retry-After, never a lost acknowledgement.

The slow landing zone is a declared stand-in (``GatedStore``: the real local store, whose writes wait
for the test to open a gate), since a real disk cannot be made slow on demand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.views import receiver_state
from tests.receiver.conftest import MakeReceiver
from tests.receiver.deliveries import landed_ids
from tests.receiver.load import Outcomes, fire, signed_pull_deliveries, signed_pull_delivery
from tests.receiver.oidc import LocalIssuer
from tests.receiver.stores import GatedStore
from tests.receiver.test_intake import assert_error


@pytest.fixture
def gated_store(landing_dir: Path) -> Iterator[GatedStore]:
    store = GatedStore(landing_dir)
    yield store
    store.open_gate()  # never leave a committer stuck at the gate


def test_full_queue_is_503_with_retry_after_and_only_acknowledged_events_land(
    make_receiver: MakeReceiver, issuer: LocalIssuer, gated_store: GatedStore
) -> None:
    receiver = make_receiver(store=gated_store, PULL_EVENTS_MAX_PENDING_EVENTS="2")
    batcher = receiver_state(receiver.app).batcher
    deliveries = signed_pull_deliveries(issuer, 3)
    answers: dict[str, int] = {}

    def post(delivery: tuple[str, dict[str, str], bytes]) -> threading.Thread:
        event_id, headers, body = delivery
        thread = threading.Thread(target=lambda: answers.update({event_id: receiver.post(headers, body).status_code}))
        thread.start()
        return thread

    threads = [post(deliveries[0])]
    gated_store.wait_for_writes(1)  # its write is held at the gate
    threads += [post(deliveries[1]), post(deliveries[2])]
    _wait_for(lambda: batcher.pending() == 2)  # the queue is full

    pushed_back_id, headers, body = signed_pull_delivery(issuer)
    response = receiver.post(headers, body)
    assert_error(response, 503, "overloaded")
    assert response.headers["Retry-After"] == "1"

    gated_store.open_gate()
    for thread in threads:
        thread.join()
    assert answers == {event_id: 202 for event_id, _, _ in deliveries}
    assert sorted(landed_ids(gated_store)) == sorted(answers)
    assert pushed_back_id not in landed_ids(gated_store)


def test_burst_against_a_slow_landing_zone_never_loses_an_acknowledged_event(
    make_receiver: MakeReceiver, issuer: LocalIssuer, gated_store: GatedStore
) -> None:
    receiver = make_receiver(store=gated_store, PULL_EVENTS_MAX_PENDING_EVENTS="5", PULL_EVENTS_BATCH_MAX_EVENTS="5")

    def open_gate_after_first_push_back(outcomes: Outcomes) -> None:
        if outcomes.refused:
            gated_store.open_gate()

    outcomes = fire(
        receiver.url, signed_pull_deliveries(issuer, 60), threads=12, on_answer=open_gate_after_first_push_back
    )
    assert outcomes.failed == set()
    assert outcomes.refused and set(outcomes.refused.values()) == {503}
    assert outcomes.retry_after_missing == 0
    assert outcomes.acked, "nothing was accepted"
    # Every acknowledged event landed, nothing refused landed, nothing twice.
    assert sorted(landed_ids(gated_store)) == sorted(outcomes.acked)


def test_commit_timeout_is_503_and_the_withdrawn_event_never_lands(
    make_receiver: MakeReceiver, issuer: LocalIssuer, gated_store: GatedStore
) -> None:
    store = gated_store
    receiver = make_receiver(store=store, PULL_EVENTS_COMMIT_TIMEOUT_S="0.3")
    held = threading.Thread(target=receiver.post, args=signed_pull_delivery(issuer)[1:])
    held.start()
    store.wait_for_writes(1)
    queued_id, headers, body = signed_pull_delivery(issuer)
    response = receiver.post(headers, body)
    assert_error(response, 503, "commit_timeout")
    assert response.headers["Retry-After"]
    store.open_gate()
    held.join()
    receiver_state(receiver.app).batcher.close()
    assert queued_id not in landed_ids(store)


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)
