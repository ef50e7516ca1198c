"""Many concurrent deliveries over HTTP land, each event exactly once, and those that wait together share an object.

How many events share an object on a free-running server depends on scheduling luck (how many arrive while a
batch waits and while the previous one is written), so batching is proven by construction instead: a commit is
held at a gate (``GatedStore``, the real local store whose writes wait for the test) until every other
delivery is queued behind it, and those then land in one object. The other tests count nothing timing-dependent.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from pull_events.landing import GcsLandingStore, LandingStore, LocalLandingStore
from receiver.views import receiver_state
from tests.receiver.conftest import MakeReceiver
from tests.receiver.deliveries import binary_delivery, compact_json, landed_lines, landed_records, pull_event
from tests.receiver.load import Outcomes, fire, signed_pull_deliveries
from tests.receiver.oidc import LocalIssuer
from tests.receiver.stores import GatedStore
from tests.services import FakeGcsServer


@pytest.fixture
def gcs_store(fake_gcs: FakeGcsServer, gcs_bucket: str) -> GcsLandingStore:
    return GcsLandingStore(gcs_bucket, "events/v1", client=fake_gcs.client())


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition``; the timeout only bounds a broken run, no assertion depends on how long it took."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def assert_each_acked_event_landed_exactly_once(store: LandingStore, acked: set[str]) -> None:
    counts = Counter(record["id"] for record in landed_records(store))
    assert set(counts) == acked
    assert [event_id for event_id, n in counts.items() if n != 1] == []


def test_deliveries_queued_behind_a_commit_land_together_in_one_object_each_once(
    make_receiver: MakeReceiver, issuer: LocalIssuer, landing_dir: Path
) -> None:
    store = GatedStore(landing_dir)
    try:
        receiver = make_receiver(store=store)
        batcher = receiver_state(receiver.app).batcher
        deliveries = signed_pull_deliveries(issuer, 151)
        outcomes: list[Outcomes] = []

        def send(batch: list, threads: int) -> threading.Thread:
            thread = threading.Thread(target=lambda: outcomes.append(fire(receiver.url, batch, threads=threads)))
            thread.start()
            return thread

        senders = [send(deliveries[:1], 1)]
        store.wait_for_writes(1)  # the first event's commit is held at the gate
        senders.append(send(deliveries[1:], 150))  # every other delivery in flight at once
        wait_until(lambda: batcher.pending() == 150)
        store.open_gate()
        for sender in senders:
            sender.join()
    finally:
        store.open_gate()  # never leave a committer stuck at the gate

    acked = set().union(*(o.acked for o in outcomes))
    assert (len(acked), [o.refused for o in outcomes], [o.failed for o in outcomes]) == (151, [{}, {}], [set(), set()])
    assert_each_acked_event_landed_exactly_once(store, acked)
    sizes = sorted(len(store.read(obj.key).splitlines()) for obj in store.list_all())
    assert sizes == [1, 150]


def test_500_concurrent_deliveries_land_in_a_local_directory_each_exactly_once(
    make_receiver: MakeReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    receiver = make_receiver(store=local_store)
    outcomes = fire(receiver.url, signed_pull_deliveries(issuer, 500), threads=32)
    assert (len(outcomes.acked), outcomes.refused, outcomes.failed) == (500, {}, set())
    assert_each_acked_event_landed_exactly_once(local_store, outcomes.acked)


def test_valid_delivery_lands_faithfully_in_gcs(
    make_receiver: MakeReceiver, issuer: LocalIssuer, gcs_store: GcsLandingStore, gcs_bucket: str
) -> None:
    receiver = make_receiver(store=gcs_store, landing=f"gs://{gcs_bucket}/events/v1")
    attributes, data = pull_event()
    body = compact_json(data)
    response = receiver.post(binary_delivery(attributes, body, issuer), body)
    assert response.status_code == 202, response.text
    [landed] = list(gcs_store.list_all())
    assert landed.key == response.json()["object"]
    assert landed.uri == f"gs://{gcs_bucket}/events/v1/{landed.key}"
    blob = gcs_store.bucket.get_blob(f"events/v1/{landed.key}")
    assert blob.content_type == "application/x-ndjson"
    [line] = landed_lines(gcs_store)
    assert b',"data":' + body + b',"received_at":' in line
    record = json.loads(line)
    assert record.pop("data") == data
    assert record["body_sha256"] == "sha256:" + hashlib.sha256(body).hexdigest()
    assert {name: record[name] for name in attributes} == attributes
    assert (record["landing_object"], record["landing_line"]) == (landed.key, 1)


def test_300_concurrent_deliveries_land_in_gcs_each_exactly_once(
    make_receiver: MakeReceiver, issuer: LocalIssuer, gcs_store: GcsLandingStore, gcs_bucket: str
) -> None:
    receiver = make_receiver(store=gcs_store, landing=f"gs://{gcs_bucket}/events/v1")
    outcomes = fire(receiver.url, signed_pull_deliveries(issuer, 300), threads=16)
    assert (len(outcomes.acked), outcomes.refused, outcomes.failed) == (300, {}, set())
    assert_each_acked_event_landed_exactly_once(gcs_store, outcomes.acked)
