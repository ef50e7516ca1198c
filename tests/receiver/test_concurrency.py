"""Many concurrent deliveries over HTTP land in few objects, each event exactly once (local dir and GCS).

How many events share an object depends on how many arrive while a batch waits (``max_wait``) and while
the previous one is written. These tests use a 50 ms batch wait so that a batch gathers every request
the client has in flight whatever the speed of the machine; the count bound is then safe on a slow CI.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from pull_events.landing import GcsLandingStore, LandingStore, LocalLandingStore
from tests.receiver.conftest import MakeReceiver
from tests.receiver.deliveries import binary_delivery, compact_json, landed_lines, landed_records, pull_event
from tests.receiver.load import fire, signed_pull_deliveries
from tests.receiver.oidc import LocalIssuer
from tests.services import FakeGcsServer


@pytest.fixture
def gcs_store(fake_gcs: FakeGcsServer, gcs_bucket: str) -> GcsLandingStore:
    return GcsLandingStore(gcs_bucket, "events/v1", client=fake_gcs.client())


def assert_each_acked_event_landed_exactly_once(store: LandingStore, acked: set[str]) -> None:
    counts = Counter(record["id"] for record in landed_records(store))
    assert set(counts) == acked
    assert [event_id for event_id, n in counts.items() if n != 1] == []


def test_500_concurrent_deliveries_land_in_few_local_objects_each_once(
    make_receiver: MakeReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    receiver = make_receiver(store=local_store, PULL_EVENTS_BATCH_MAX_WAIT_MS="50")
    outcomes = fire(receiver.url, signed_pull_deliveries(issuer, 500), threads=32)
    assert (len(outcomes.acked), outcomes.refused, outcomes.failed) == (500, {}, set())
    assert_each_acked_event_landed_exactly_once(local_store, outcomes.acked)
    objects = list(local_store.list_all())
    assert len(objects) <= 50, f"{len(objects)} objects for 500 events from 32 threads"
    print(f"local: 500 events from 32 threads -> {len(objects)} objects")


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


def test_300_concurrent_deliveries_land_in_few_gcs_objects_each_once(
    make_receiver: MakeReceiver, issuer: LocalIssuer, gcs_store: GcsLandingStore, gcs_bucket: str
) -> None:
    receiver = make_receiver(
        store=gcs_store, landing=f"gs://{gcs_bucket}/events/v1", PULL_EVENTS_BATCH_MAX_WAIT_MS="50"
    )
    outcomes = fire(receiver.url, signed_pull_deliveries(issuer, 300), threads=16)
    assert (len(outcomes.acked), outcomes.refused, outcomes.failed) == (300, {}, set())
    assert_each_acked_event_landed_exactly_once(gcs_store, outcomes.acked)
    objects = list(gcs_store.list_all())
    assert len(objects) <= 50, f"{len(objects)} objects for 300 events from 16 threads"
    print(f"gcs: 300 events from 16 threads -> {len(objects)} objects")
