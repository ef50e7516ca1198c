"""What POST / answers and lands: content modes, status codes in check order, faithful records, hostile values."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pull_events.landing import LocalLandingStore, key_committed_at
from tests.receiver.conftest import MakeReceiver
from tests.receiver.deliveries import (
    binary_delivery,
    compact_json,
    landed_lines,
    landed_records,
    new_id,
    pull_event,
    structured_delivery,
)
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ThreadedReceiver

PULL = "dev.chainguard.registry.pull.v1"
RECEIPT_KEYS = ("landing_object", "landing_line", "received_at", "received_by", "body_sha256", "token_sha256")


def assert_nothing_landed(landing_dir: Path) -> None:
    landed = [p for p in landing_dir.rglob("*") if p.is_file()]
    assert landed == [], f"a refused request landed {landed}"


def assert_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error, body
    assert body["detail"]
    return body


# --- faithful landing -------------------------------------------------------------------------------------------


def test_binary_pull_delivery_lands_every_attribute_data_bytes_and_receipt(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, data = pull_event()
    body = compact_json(data)
    before = datetime.now(UTC)
    binary_headers = binary_delivery(attributes, body, issuer)
    response = receiver.post(binary_headers, body)
    after = datetime.now(UTC)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["status"], answer["id"], answer["type"], answer["line"]) == ("landed", attributes["id"], PULL, 1)
    [line] = landed_lines(local_store)
    [landed] = list(local_store.list_all())
    assert landed.key == answer["object"]
    committed = key_committed_at(landed.key)
    assert before <= committed <= after
    assert landed.key.startswith(f"{PULL}/dt={committed:%Y-%m-%d}/hour={committed:%H}/")
    # The data is the request body, byte for byte.
    assert b',"data":' + body + b',"received_at":' in line
    record = json.loads(line)
    receipt = {key: record.pop(key) for key in RECEIPT_KEYS}
    assert record.pop("data") == data
    assert record == attributes  # every attribute and extension as sent; time keeps its nanoseconds
    assert record["time"] == "2026-08-28T20:13:22.179701671Z"
    assert receipt["landing_object"] == landed.key
    assert receipt["landing_line"] == 1
    assert receipt["body_sha256"] == "sha256:" + hashlib.sha256(body).hexdigest()
    token = binary_headers["Authorization"].removeprefix("Bearer ")
    assert receipt["token_sha256"] == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert receipt["received_by"]
    received_at = datetime.strptime(receipt["received_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= received_at <= after


def test_multi_line_json_body_lands_as_one_record_with_equal_data(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, data = pull_event()
    body = json.dumps(data, indent=2).encode() + b"\r\n"
    response = receiver.post(binary_delivery(attributes, body, issuer), body)
    assert response.status_code == 202, response.text
    [record] = landed_records(local_store)
    assert record["data"] == data
    assert record["body_sha256"] == "sha256:" + hashlib.sha256(body).hexdigest()


def test_structured_delivery_lands_the_event_document_as_sent(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, data = pull_event()
    attributes.pop("datacontenttype")
    document = {
        **attributes,
        "datacontenttype": "application/json",
        "retries": 3,  # extensions may be any JSON scalar in structured mode
        "sampled": True,
        "data": data,
    }
    headers, body = structured_delivery(document, issuer)
    response = receiver.post(headers, body)
    assert response.status_code == 202, response.text
    [record] = landed_records(local_store)
    receipt = {key: record.pop(key) for key in RECEIPT_KEYS}
    assert record == document
    assert receipt["body_sha256"] == "sha256:" + hashlib.sha256(body).hexdigest()


def test_unicode_and_line_separators_in_data_stay_on_one_line_and_equal(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, data = pull_event()
    data["body"]["user_agent"] = 'naïve\u2028agent\u2029/\u0085 ✓ \\ " \t'
    body = compact_json(data)
    assert receiver.post(binary_delivery(attributes, body, issuer), body).status_code == 202
    [line] = landed_lines(local_store)
    assert len(line.decode().splitlines()) == 1
    assert json.loads(line)["data"] == data


def test_event_without_data_lands_without_a_data_key(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, _ = pull_event(type="dev.chainguard.api.ping.v1")
    attributes.pop("datacontenttype")
    assert receiver.post(binary_delivery(attributes, b"", issuer), b"").status_code == 202
    [record] = landed_records(local_store)
    assert "data" not in record and "datacontenttype" not in record
    assert record["type"] == "dev.chainguard.api.ping.v1"


def test_every_event_type_is_landed_each_in_its_own_type_directory(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    types = [
        PULL,
        "dev.chainguard.registry.push.v1",
        "dev.chainguard.api.platform.registry.repo.created.v1",
        "dev.chainguard.api.platform.registry.tag.deleted.v1",
        "dev.chainguard.api.iam.rolebindings.created.v1",
    ]
    for event_type in types:
        attributes, data = pull_event(type=event_type, id=new_id())
        body = compact_json(data)
        assert receiver.post(binary_delivery(attributes, body, issuer), body).status_code == 202
    assert local_store.event_type_dirs() == sorted(types)
    assert sorted(r["type"] for r in landed_records(local_store)) == sorted(types)


@pytest.mark.parametrize(
    ("event_type", "event_id"),
    [
        ("../../x", "../../etc/passwd"),
        ("a/b/c", "/absolute/id"),
        ("..", "."),
        ("t" * 2000, "i" * 2000),
        ("événement/ünïcode ✓", 'id with spaces and "quotes" and %'),
        ("\\..\\..\\windows", "nul\x7f"),
    ],
)
def test_hostile_type_and_id_land_inside_the_landing_root_unchanged(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path, event_type: str, event_id: str
) -> None:
    attributes, data = pull_event(type=event_type, id=event_id)
    body = compact_json(data)
    response = receiver.post(binary_delivery(attributes, body, issuer), body)
    assert response.status_code == 202, response.text
    files = [p for p in landing_dir.rglob("*") if p.is_file()]
    assert len(files) == 1
    assert files[0].resolve().is_relative_to(landing_dir.resolve())
    assert files[0].relative_to(landing_dir).parts[0] not in ("..", ".")
    assert len(files[0].relative_to(landing_dir).parts) == 4  # <type>/dt=<date>/hour=<hour>/<object>
    [record] = landed_records(LocalLandingStore(landing_dir))
    assert (record["type"], record["id"]) == (event_type, event_id)


def test_raw_utf8_header_values_are_read_as_utf8(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, data = pull_event()
    body = compact_json(data)
    headers: dict = binary_delivery(attributes, body, issuer)
    headers["Ce-Subject"] = "dépôt/ü".encode()  # raw bytes, not %-encoded as the spec asks
    assert receiver.post(headers, body).status_code == 202
    [record] = landed_records(local_store)
    assert record["subject"] == "dépôt/ü"


# --- refusals, in check order -----------------------------------------------------------------------------------


def test_body_over_the_limit_is_413_before_any_other_check(receiver: ThreadedReceiver, landing_dir: Path) -> None:
    body = b"{" + b" " * (1024 * 1024) + b"}"
    response = receiver.post({"Content-Type": "text/plain"}, body)
    assert_error(response, 413, "body_too_large")
    assert_nothing_landed(landing_dir)


def test_chunked_body_over_the_limit_is_413(
    make_receiver: MakeReceiver, issuer: LocalIssuer, landing_dir: Path
) -> None:
    receiver = make_receiver(PULL_EVENTS_MAX_BODY_BYTES="4096")
    attributes, _ = pull_event()

    def chunks():
        yield b'{"padding":"'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    response = receiver.post(binary_delivery(attributes, b"", issuer), chunks())
    assert_error(response, 413, "body_too_large")
    assert_nothing_landed(landing_dir)


def test_chunked_body_under_the_limit_lands(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, data = pull_event()
    body = compact_json(data)
    headers = binary_delivery(attributes, body, issuer)
    response = receiver.post(headers, iter([body[:100], body[100:]]))
    assert response.status_code == 202, response.text
    assert landed_records(local_store)[0]["data"] == data


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        ("application/cloudevents-batch+json", b"[]", "batch_not_supported"),
        ("application/cloudevents+xml", b"<event/>", "unsupported_format"),
        ("application/cloudevents+protobuf", b"\x00", "unsupported_format"),
        ("text/plain", b"hello", "unsupported_media_type"),
        ("application/octet-stream", b"\x00\x01", "unsupported_media_type"),
    ],
)
def test_unsupported_content_type_is_415(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path, content_type: str, body: bytes, error: str
) -> None:
    attributes, _ = pull_event(datacontenttype=content_type)
    response = receiver.post(binary_delivery(attributes, body, issuer), body)
    assert_error(response, 415, error)
    assert_nothing_landed(landing_dir)


def _without(attributes: dict, name: str) -> dict:
    return {key: value for key, value in attributes.items() if key != name}


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("plain_json_without_ce_headers", "not_a_cloudevent"),
        ("missing_id", "missing_attribute"),
        ("missing_source", "missing_attribute"),
        ("missing_type", "missing_attribute"),
        ("missing_specversion", "missing_attribute"),
        ("specversion_0_3", "invalid_attribute"),
        ("time_not_a_time", "invalid_attribute"),
        ("time_without_zone", "invalid_attribute"),
        ("empty_subject", "invalid_attribute"),
        ("extension_name_with_dash", "invalid_attribute"),
        ("data_not_json", "invalid_json"),
        ("data_nan", "non_finite_number"),
        ("data_not_utf8", "invalid_json"),
        ("structured_not_json", "invalid_json"),
        ("structured_array", "not_a_cloudevent"),
        ("structured_missing_source", "missing_attribute"),
        ("structured_reserved_extension_name", "invalid_attribute"),
    ],
)
def test_not_a_valid_cloudevent_is_400_even_with_a_valid_token(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path, case: str, error: str
) -> None:
    attributes, data = pull_event()
    body = compact_json(data)
    structured = None
    if case == "plain_json_without_ce_headers":
        headers = {"Content-Type": "application/json"}
    elif case.startswith("missing_"):
        headers = binary_delivery(_without(attributes, case.removeprefix("missing_")), body, issuer)
    elif case == "specversion_0_3":
        headers = binary_delivery({**attributes, "specversion": "0.3"}, body, issuer)
    elif case == "time_not_a_time":
        headers = binary_delivery({**attributes, "time": "yesterday"}, body, issuer)
    elif case == "time_without_zone":
        headers = binary_delivery({**attributes, "time": "2026-08-28T20:13:22"}, body, issuer)
    elif case == "empty_subject":
        headers = binary_delivery({**attributes, "subject": ""}, body, issuer)
    elif case == "extension_name_with_dash":
        headers = {**binary_delivery(attributes, body, issuer), "Ce-Bad-Name": "x"}
    elif case == "data_not_json":
        body = body[:-1]
    elif case == "data_nan":
        body = b'{"value": NaN}'
    elif case == "data_not_utf8":
        body = b'{"value": "\xff"}'
    elif case == "structured_not_json":
        structured = b'{"specversion": "1.0",'
    elif case == "structured_array":
        structured = b"[]"
    elif case == "structured_missing_source":
        structured = compact_json({**_without(attributes, "source"), "data": data})
    elif case == "structured_reserved_extension_name":
        structured = compact_json({**attributes, "received_at": "now", "data": data})
    if structured is not None:
        body = structured
        headers = {"Content-Type": "application/cloudevents+json"}
    elif case.startswith("data_"):
        headers = binary_delivery(attributes, body, issuer)
    headers["Authorization"] = f"Bearer {issuer.token(body)}"
    assert_error(receiver.post(headers, body), 400, error)
    assert_nothing_landed(landing_dir)


def test_invalid_event_without_token_is_401_before_the_body_is_parsed(
    receiver: ThreadedReceiver, landing_dir: Path
) -> None:
    attributes, _data = pull_event()
    body = b'{"not json'
    response = receiver.post(binary_delivery(_without(attributes, "id"), body), body)
    assert_error(response, 401, "missing_token")
    assert_nothing_landed(landing_dir)


def test_other_paths_and_methods_answer_json_errors(receiver: ThreadedReceiver) -> None:
    assert_error(receiver.session.get(receiver.url + "/"), 405, "method_not_allowed")
    assert_error(receiver.session.post(receiver.url + "/events"), 404, "not_found")


def test_auth_off_lands_without_a_token(make_receiver: MakeReceiver, local_store: LocalLandingStore) -> None:
    receiver = make_receiver(store=local_store, issuer=None)
    attributes, data = pull_event()
    body = compact_json(data)
    assert receiver.post(binary_delivery(attributes, body), body).status_code == 202
    assert [r["id"] for r in landed_records(local_store)] == [attributes["id"]]
