"""Landing zone down: 503 with Retry-After, nothing acknowledged; back up: accepted again (local dir and GCS)."""

from __future__ import annotations

from pathlib import Path

from pull_events.landing import GcsLandingStore, LocalLandingStore
from tests.receiver.conftest import MakeReceiver
from tests.receiver.deliveries import landed_ids
from tests.receiver.load import signed_pull_delivery
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ThreadedReceiver
from tests.receiver.test_intake import assert_error
from tests.services import FakeGcsServer


def assert_refused_then_accepted_after_recovery(
    receiver: ThreadedReceiver, issuer: LocalIssuer, take_down, bring_back, store
) -> None:
    first_id, headers, body = signed_pull_delivery(issuer)
    assert receiver.post(headers, body).status_code == 202

    refused_id, refused_headers, refused_body = signed_pull_delivery(issuer)
    take_down()
    try:
        response = receiver.post(refused_headers, refused_body)
        assert response.status_code == 503, response.text
        assert response.json()["error"] in ("landing_unavailable", "commit_timeout")
        assert int(response.headers["Retry-After"]) >= 1
        assert_error(receiver.session.get(receiver.url + "/readyz"), 503, "landing_unavailable")
    finally:
        bring_back()

    assert receiver.session.get(receiver.url + "/readyz").status_code == 200
    # The sender retries the refused delivery (same token, same body): it lands now, once.
    assert receiver.post(refused_headers, refused_body).status_code == 202
    assert landed_ids(store) == [first_id, refused_id]


def test_local_landing_zone_down_then_back(
    make_receiver: MakeReceiver, issuer: LocalIssuer, landing_dir: Path, tmp_path: Path
) -> None:
    store = LocalLandingStore(landing_dir)
    receiver = make_receiver(store=store)
    aside = tmp_path / "landing-aside"

    def take_down() -> None:
        # A file where the directory was (chmod would not stop root): every write must fail.
        landing_dir.rename(aside)
        landing_dir.write_text("in the way")

    def bring_back() -> None:
        landing_dir.unlink()
        aside.rename(landing_dir)

    assert_refused_then_accepted_after_recovery(receiver, issuer, take_down, bring_back, store)


def test_gcs_landing_zone_down_then_back(
    make_receiver: MakeReceiver, issuer: LocalIssuer, fake_gcs: FakeGcsServer, gcs_bucket: str
) -> None:
    store = GcsLandingStore(gcs_bucket, "events/v1", client=fake_gcs.client(), timeout=1.0)
    receiver = make_receiver(store=store, landing=f"gs://{gcs_bucket}/events/v1", PULL_EVENTS_COMMIT_TIMEOUT_S="5")
    assert_refused_then_accepted_after_recovery(receiver, issuer, fake_gcs.stop, fake_gcs.start, store)
