"""The receiver under attack: slow clients, unauthenticated floods, replayed tokens, ambiguous and malformed requests.

Each test proves its point by construction (e.g. two app threads and a hundred stalled connections: a delivery
that lands proves the stalled ones hold no thread), never by how long something took; the costs are measured
in ``benchmarks/attack_bench.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from pull_events.landing import LocalLandingStore
from tests.receiver.conftest import MakeReceiver
from tests.receiver.deliveries import (
    binary_delivery,
    compact_json,
    landed_ids,
    landed_records,
    new_id,
    pull_event,
    structured_delivery,
)
from tests.receiver.load import signed_pull_delivery
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ReceiverProcess, ThreadedReceiver, receiver_env
from tests.receiver.test_intake import assert_error, assert_nothing_landed

MIB = 1024 * 1024


# --- raw HTTP -----------------------------------------------------------------------------------------------------


def request_head(method: str, target: str, headers: dict[str, str] | list[tuple[str, str]]) -> bytes:
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{name}: {value}" for name, value in items)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` and read everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_json_error(raw: bytes, status: int, error: str) -> dict[str, str]:
    got_status, headers, body = parse_response(raw)
    assert (got_status, headers["content-type"], headers["connection"]) == (status, "application/json", "close")
    assert int(headers["content-length"]) == len(body)
    document = json.loads(body)
    assert set(document) == {"error", "detail"} and document["error"] == error, document
    return document


@contextmanager
def stalled_connections(port: int, heads: list[bytes]) -> Iterator[list[socket.socket]]:
    """Connections that each sent one of ``heads`` (a partial request) and then stall, open until the block ends."""
    with ExitStack() as stack:
        sockets = []
        for head in heads:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30))
            sock.sendall(head)
            sockets.append(sock)
        yield sockets


# --- slow clients -------------------------------------------------------------------------------------------------


def test_a_hundred_stalled_clients_hold_no_thread_so_real_deliveries_land_on_two_threads(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    landing = tmp_path / "landing"
    env = receiver_env(landing, issuer, PULL_EVENTS_THREADS="2")
    process = ReceiverProcess(env, tmp_path / "receiver.log").start()
    try:
        # 50 trickling their headers, 50 authenticated deliveries whose bodies stop halfway: under gthread each
        # would hold one of the two threads, and no delivery below could land.
        partial_heads = [b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nCe-Id: " for _ in range(50)]
        partial_bodies = []
        for _ in range(50):
            _event_id, headers, body = signed_pull_delivery(issuer)
            partial_bodies.append(request_head("POST", "/", {**headers, "Content-Length": str(len(body))}) + body[:10])
        with stalled_connections(process.port, partial_heads + partial_bodies):
            session = requests.Session()
            statuses = []
            for _ in range(20):
                _event_id, headers, body = signed_pull_delivery(issuer)
                statuses.append(session.post(process.url + "/", headers=headers, data=body, timeout=30).status_code)
            assert statuses == [202] * 20
    finally:
        process.stop()
    assert len(landed_ids(LocalLandingStore(landing))) == 20


def test_a_client_that_never_completes_its_head_is_answered_408_json_at_the_deadline(
    make_receiver: MakeReceiver, landing_dir: Path
) -> None:
    receiver = make_receiver(PULL_EVENTS_HEADER_TIMEOUT_S="0.5")
    with stalled_connections(receiver.port, [b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nCe-Id: 1"]) as [sock]:
        raw = read_until_closed(sock)
    document = assert_json_error(raw, 408, "header_timeout")
    assert document["detail"] == "no complete request head within 0.5 s"
    assert_nothing_landed(landing_dir)


def test_a_delivery_whose_body_stops_is_answered_408_json_at_the_deadline_and_lands_nothing(
    make_receiver: MakeReceiver, issuer: LocalIssuer, landing_dir: Path
) -> None:
    receiver = make_receiver(PULL_EVENTS_BODY_TIMEOUT_S="0.5")
    _event_id, headers, body = signed_pull_delivery(issuer)
    head = request_head("POST", "/", {**headers, "Content-Length": str(len(body))})
    with stalled_connections(receiver.port, [head + body[:-1]]) as [sock]:
        raw = read_until_closed(sock)
    document = assert_json_error(raw, 408, "body_timeout")
    assert document["detail"] == "the request body did not arrive within 0.5 s"
    assert_nothing_landed(landing_dir)


# --- unauthenticated floods ---------------------------------------------------------------------------------------


def test_a_1_mib_delivery_without_a_token_is_refused_401_before_its_body_is_sent(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path
) -> None:
    attributes, _ = pull_event()
    headers = {**binary_delivery(attributes, b""), "Content-Length": str(MIB)}
    # Only the head is ever sent: the answer comes without the server waiting for (or reading) a byte of body.
    raw = exchange(receiver.port, request_head("POST", "/", headers))
    document = assert_json_error(raw, 401, "missing_token")
    assert document["detail"] == "no Authorization header: a Bearer token is required"
    assert parse_response(raw)[1]["www-authenticate"] == 'Bearer realm="pull-events"'
    assert_nothing_landed(landing_dir)


def test_a_token_failing_a_claim_check_is_refused_403_before_the_body_is_sent(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path
) -> None:
    attributes, _ = pull_event()
    body = b"x" * MIB
    for token in (issuer.token(body, group="0" * 40), issuer.token(body, exp=1e300), "not.a.token"):
        headers = {**binary_delivery(attributes, b"", token=token), "Content-Length": str(MIB)}
        assert_json_error(exchange(receiver.port, request_head("POST", "/", headers)), 403, "invalid_token")
    assert_nothing_landed(landing_dir)


def test_expect_100_continue_is_refused_without_continue_when_unauthenticated_and_continued_when_authenticated(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, data = pull_event(id=new_id())
    body = compact_json(data)
    headers = {**binary_delivery(attributes, body), "Content-Length": str(len(body)), "Expect": "100-continue"}
    raw = exchange(receiver.port, request_head("POST", "/", headers))
    assert not raw.startswith(b"HTTP/1.1 100")
    assert_json_error(raw, 401, "missing_token")

    signed = {**binary_delivery(attributes, body, issuer), "Content-Length": str(len(body)), "Expect": "100-continue"}
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as sock:
        sock.sendall(request_head("POST", "/", signed))
        assert sock.recv(65536) == b"HTTP/1.1 100 \r\n\r\n"
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)
        status, _headers, answer = parse_response(read_until_closed(sock))
    assert (status, json.loads(answer)["id"]) == (202, attributes["id"])
    assert landed_ids(local_store) == [attributes["id"]]


def test_a_declared_body_over_the_limit_is_413_before_the_token_is_checked(
    receiver: ThreadedReceiver, landing_dir: Path
) -> None:
    raw = exchange(receiver.port, request_head("POST", "/", {"Content-Length": str(MIB + 1)}))
    assert_json_error(raw, 413, "body_too_large")
    assert_nothing_landed(landing_dir)


# --- replayed tokens ----------------------------------------------------------------------------------------------


def test_a_token_replayed_with_a_new_id_is_refused_by_its_receiver_and_marked_for_the_load_by_another(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    """Two receiver processes on one landing zone: the one that saw the token refuses the replay (403); the other
    cannot know it, lands it, and both lines carry the same token_sha256, which the load quarantines."""
    landing = tmp_path / "landing"
    first = ReceiverProcess(receiver_env(landing, issuer), tmp_path / "first.log").start()
    second = ReceiverProcess(receiver_env(landing, issuer), tmp_path / "second.log").start()
    try:
        attributes, data = pull_event(id=new_id())
        body = compact_json(data)
        token = issuer.token(body)
        genuine = binary_delivery(attributes, body, token=token)
        replay = binary_delivery({**attributes, "id": new_id()}, body, token=token)
        assert requests.post(first.url + "/", headers=genuine, data=body, timeout=30).status_code == 202
        refused = requests.post(first.url + "/", headers=replay, data=body, timeout=30)
        assert_error(refused, 403, "token_replayed")
        assert requests.post(first.url + "/", headers=genuine, data=body, timeout=30).status_code == 202  # a retry
        assert requests.post(second.url + "/", headers=replay, data=body, timeout=30).status_code == 202
    finally:
        first.stop()
        second.stop()
    records = landed_records(LocalLandingStore(landing))
    assert sorted(record["id"] for record in records) == sorted([attributes["id"]] * 2 + [replay["Ce-Id"]])
    assert {record["token_sha256"] for record in records} == {"sha256:" + hashlib.sha256(token.encode()).hexdigest()}


# --- ambiguous and malformed requests -----------------------------------------------------------------------------


def test_repeated_ce_headers_or_authorization_are_400_and_land_nothing(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path
) -> None:
    attributes, data = pull_event(id=new_id())
    body = compact_json(data)
    headers = list({**binary_delivery(attributes, body, issuer), "Content-Length": str(len(body))}.items())
    for repeated in (("Ce-Id", new_id()), ("ce-type", "dev.chainguard.registry.push.v1"), ("Authorization", "x")):
        raw = exchange(receiver.port, request_head("POST", "/", [*headers, repeated]) + body)
        document = assert_json_error(raw, 400, "ambiguous_request")
        assert document["detail"] == f"the {repeated[0].lower()!r} header is repeated: send it once"
    assert_nothing_landed(landing_dir)


def test_oversize_headers_are_431_json(receiver: ThreadedReceiver) -> None:
    raw = exchange(receiver.port, request_head("POST", "/", {"Ce-Id": "x" * 70_000}))
    document = assert_json_error(raw, 431, "headers_too_large")
    assert document["detail"] == "the request line and headers are over 65536 bytes"


def test_malformed_requests_are_400_json(receiver: ThreadedReceiver) -> None:
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"POST / HTTP/1.1\r\nBad Header\r\n\r\n"):
        assert_json_error(exchange(receiver.port, garbage), 400, "bad_request")


# --- readiness tells the truth ------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root and mount; skipped elsewhere), so the disk really fills."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(path: Path, leave_free: int) -> None:
    """Write ``path`` until at most ``leave_free`` bytes are free on its file system."""
    with path.open("wb") as file:
        while (free := shutil.disk_usage(path.parent).free) > leave_free:
            try:
                file.write(b"\0" * min(65536, free - leave_free))
                file.flush()
            except OSError:
                break


def test_a_full_landing_disk_is_not_ready_and_refuses_then_recovers_on_its_own(
    make_receiver: MakeReceiver, issuer: LocalIssuer, small_tmpfs: Path
) -> None:
    landing = small_tmpfs / "landing"
    store = LocalLandingStore(landing)
    receiver = make_receiver(store=store, landing=landing, PULL_EVENTS_MIN_FREE_BYTES=str(256 * 1024))
    assert receiver.session.get(receiver.url + "/readyz").status_code == 200

    filler = small_tmpfs / "filler"
    fill(filler, leave_free=128 * 1024)  # under the threshold, writes still possible
    assert_error(receiver.session.get(receiver.url + "/readyz"), 503, "landing_full")

    fill(filler, leave_free=0)  # ENOSPC for real
    assert_error(receiver.session.get(receiver.url + "/readyz"), 503, "landing_unavailable")
    refused_id, headers, body = signed_pull_delivery(issuer)
    assert_error(receiver.post(headers, body), 503, "landing_unavailable")

    filler.unlink()
    assert receiver.session.get(receiver.url + "/readyz").status_code == 200
    assert receiver.post(headers, body).status_code == 202  # the sender's retry lands
    assert landed_ids(store) == [refused_id]


def test_a_receiver_that_never_got_a_signing_key_is_not_ready_until_the_issuer_answers(
    make_receiver: MakeReceiver, local_store: LocalLandingStore
) -> None:
    with LocalIssuer() as unreachable:
        unreachable.available = False
        receiver = make_receiver(store=local_store, issuer=unreachable, PULL_EVENTS_JWKS_MIN_REFRESH_S="0")
        assert_error(receiver.session.get(receiver.url + "/readyz"), 503, "issuer_unavailable")
        unreachable.available = True
        assert receiver.session.get(receiver.url + "/readyz").status_code == 200
        # Once a key is cached, it stays usable while the issuer is away: still ready, deliveries still land.
        unreachable.available = False
        assert receiver.session.get(receiver.url + "/readyz").status_code == 200
        _event_id, headers, body = signed_pull_delivery(unreachable)
        assert receiver.post(headers, body).status_code == 202


# --- auth off only on loopback ------------------------------------------------------------------------------------


def test_auth_off_on_a_public_address_stops_gunicorn_at_start_naming_the_variable(tmp_path: Path) -> None:
    env = {**receiver_env(tmp_path / "landing", None), "PULL_EVENTS_HOST": "0.0.0.0"}
    process = ReceiverProcess(env, tmp_path / "receiver.log").start(wait_ready=False)
    try:
        assert process.wait(timeout=30) != 0
    finally:
        process.stop()
    assert "PULL_EVENTS_HOST" in process.logs()
    assert "PULL_EVENTS_AUTH=off lets anyone land events" in process.logs()


def test_auth_off_with_a_public_bind_given_to_gunicorn_directly_stops_it(tmp_path: Path) -> None:
    process = ReceiverProcess(receiver_env(tmp_path / "landing", None), tmp_path / "receiver.log")
    process.env["GUNICORN_CMD_ARGS"] = f"--bind 0.0.0.0:{process.port}"
    process.start(wait_ready=False)
    try:
        assert process.wait(timeout=30) != 0
    finally:
        process.stop()
    assert f"PULL_EVENTS_AUTH=off on a non-loopback address 0.0.0.0:{process.port}: refusing to serve" in (
        process.logs()
    )


def test_auth_off_serves_on_loopback_and_on_a_public_address_only_when_explicitly_allowed(
    tmp_path: Path,
) -> None:
    for extra in ({}, {"PULL_EVENTS_HOST": "0.0.0.0", "PULL_EVENTS_ALLOW_PUBLIC_AUTH_OFF": "true"}):
        landing = tmp_path / f"landing-{len(extra)}"
        process = ReceiverProcess({**receiver_env(landing, None), **extra}, tmp_path / "receiver.log").start()
        try:
            attributes, data = pull_event(id=new_id())
            body = compact_json(data)
            response = requests.post(
                process.url + "/", headers=binary_delivery(attributes, body), data=body, timeout=30
            )
            assert response.status_code == 202
        finally:
            process.stop()
        assert landed_ids(LocalLandingStore(landing)) == [attributes["id"]]


def test_a_structured_event_with_ce_headers_beside_it_is_400_and_lands_nothing(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path
) -> None:
    attributes, data = pull_event(id=new_id())
    headers, body = structured_delivery({**attributes, "data": data}, issuer)
    response = receiver.post({**headers, "Ce-Id": new_id()}, body)
    body_json = assert_error(response, 400, "ambiguous_request")
    assert body_json["detail"] == "a structured-mode event carries its attributes in the body, not in headers: ce-id"
    assert_nothing_landed(landing_dir)


def test_a_binary_event_whose_ce_datacontenttype_conflicts_with_content_type_is_400(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path
) -> None:
    attributes, data = pull_event(id=new_id())
    body = compact_json(data)
    headers = {**binary_delivery(attributes, body, issuer), "Ce-Datacontenttype": "text/plain"}
    assert_error(receiver.post(headers, body), 400, "ambiguous_request")
    assert_nothing_landed(landing_dir)
