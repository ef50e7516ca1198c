"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import logging
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from receiver import create_app, shutdown
from receiver.metrics import MAX_TYPE_LABELS, OTHER_TYPE, ReceiverMetrics
from tests.receiver.deliveries import binary_delivery, compact_json, pull_event
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ThreadedReceiver, receiver_settings

PULL = "dev.chainguard.registry.pull.v1"


def scrape(receiver: ThreadedReceiver) -> dict[tuple[str, tuple], float]:
    response = receiver.session.get(receiver.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_accepted_by_type_rejected_by_reason_and_commits(
    receiver: ThreadedReceiver, issuer: LocalIssuer
) -> None:
    attributes, data = pull_event()
    body = compact_json(data)
    assert receiver.post(binary_delivery(attributes, body, issuer), body).status_code == 202
    assert receiver.post(binary_delivery(attributes, body), body).status_code == 401
    assert receiver.post(binary_delivery(attributes, body), body).status_code == 401
    no_ce_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {issuer.token(body)}"}
    assert receiver.post(no_ce_headers, body).status_code == 400

    samples = scrape(receiver)
    assert samples[("pull_events_receiver_accepted_events_total", (("type", PULL),))] == 1
    assert (
        samples[("pull_events_receiver_rejected_requests_total", (("reason", "missing_token"), ("status", "401")))] == 2
    )
    assert (
        samples[("pull_events_receiver_rejected_requests_total", (("reason", "not_a_cloudevent"), ("status", "400")))]
        == 1
    )
    assert samples[("pull_events_receiver_batch_events_count", ())] == 1
    assert samples[("pull_events_receiver_batch_events_sum", ())] == 1
    assert samples[("pull_events_receiver_commit_seconds_count", ())] == 1
    assert samples[("pull_events_receiver_request_seconds_count", ())] == 4
    assert samples[("pull_events_receiver_queue_depth", ())] == 0
    assert samples[("pull_events_receiver_commit_failures_total", ())] == 0


def test_type_labels_are_capped_so_made_up_types_cannot_grow_metrics_without_bound() -> None:
    metrics = ReceiverMetrics()
    labels = [metrics.type_label(f"type.{n}") for n in range(MAX_TYPE_LABELS + 5)]
    assert labels[:MAX_TYPE_LABELS] == [f"type.{n}" for n in range(MAX_TYPE_LABELS)]
    assert labels[MAX_TYPE_LABELS:] == [OTHER_TYPE] * 5
    assert metrics.type_label("type.0") == "type.0"


def test_healthz_and_readyz_answer_when_the_landing_zone_is_writable(receiver: ThreadedReceiver) -> None:
    assert receiver.session.get(receiver.url + "/healthz").json() == {"status": "alive"}
    ready = receiver.session.get(receiver.url + "/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_auth_off_logs_a_loud_warning_at_start(landing_dir: Path) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("receiver")
    logger.addHandler(handler)
    try:
        app = create_app(receiver_settings(landing_dir, issuer=None))
        shutdown(app)
    finally:
        logger.removeHandler(handler)
    [warning] = [r for r in records if r.levelno == logging.WARNING]
    assert "AUTHENTICATION IS OFF" in warning.getMessage()
    assert "PULL_EVENTS_AUTH=off" in warning.getMessage()
