"""The Chainguard token checks, against a local OIDC issuer with real RSA keys served over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pull_events.landing import LocalLandingStore
from tests.receiver.conftest import MakeReceiver
from tests.receiver.deliveries import binary_delivery, compact_json, landed_ids, new_id, pull_event
from tests.receiver.oidc import DEFAULT_GROUP, OMIT, LocalIssuer, SigningKey, body_digest, hmac_token, unsigned_token
from tests.receiver.server import ThreadedReceiver
from tests.receiver.test_intake import assert_error, assert_nothing_landed


@pytest.fixture
def fresh_issuer() -> Iterator[LocalIssuer]:
    """An issuer of this test alone (its keys get rotated)."""
    with LocalIssuer() as local_issuer:
        yield local_issuer


def delivery(issuer: LocalIssuer | None = None, token: str | None = None) -> tuple[dict[str, str], bytes]:
    attributes, data = pull_event(id=new_id())
    body = compact_json(data)
    return binary_delivery(attributes, body, issuer, token=token), body


def test_valid_token_lands(receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore) -> None:
    headers, body = delivery(issuer)
    assert receiver.post(headers, body).status_code == 202
    assert len(landed_ids(local_store)) == 1


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "Token abc"],
)
def test_missing_or_malformed_authorization_is_401_with_www_authenticate(
    receiver: ThreadedReceiver, landing_dir: Path, authorization: str | None
) -> None:
    headers, body = delivery()
    if authorization is not None:
        headers["Authorization"] = authorization
    response = receiver.post(headers, body)
    assert_error(response, 401, "missing_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_nothing_landed(landing_dir)


def _claims_case(issuer: LocalIssuer, body: bytes, case: str) -> str:
    """A token for ``body`` that fails exactly one check."""
    now = int(time.time())
    if case == "expired":
        return issuer.token(body, exp=now - 1, iat=now - 301)
    if case == "expires_now":
        return issuer.token(body, exp=now)  # exp is exclusive and there is no leeway
    if case == "no_exp":
        return issuer.token(body, exp=OMIT)
    if case == "not_yet_valid":
        return issuer.token(body, nbf=now + 120)  # beyond the 60 s leeway
    if case == "wrong_issuer":
        return issuer.token(body, iss="https://issuer.enforce.dev")
    if case == "issuer_with_trailing_slash":
        return issuer.token(body, iss=issuer.url + "/")
    if case == "wrong_audience":
        return issuer.token(body, aud=["other"])
    if case == "no_audience":
        return issuer.token(body, aud=OMIT)
    if case == "other_group":
        return issuer.token(body, group="0" * 40)
    if case == "folder_of_the_group":
        return issuer.token(body, group=f"{DEFAULT_GROUP}/7214b8ddd5ce879d")
    if case == "subject_without_prefix":
        return issuer.token(body, sub=DEFAULT_GROUP)
    if case == "no_subject":
        return issuer.token(body, sub=OMIT)
    if case == "digest_of_other_body":
        return issuer.token(body, webhook={"digest": body_digest(body + b" ")})
    if case == "digest_uppercase_hex":
        return issuer.token(body, webhook={"digest": body_digest(body).upper().replace("SHA256", "sha256")})
    if case == "digest_without_prefix":
        return issuer.token(body, webhook={"digest": body_digest(body).removeprefix("sha256:")})
    if case == "no_digest":
        return issuer.token(body, webhook=OMIT)
    if case == "digest_not_nested":
        return issuer.token(body, webhook=OMIT, **{"webhook.digest": body_digest(body)})
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "expires_now",
        "no_exp",
        "not_yet_valid",
        "wrong_issuer",
        "issuer_with_trailing_slash",
        "wrong_audience",
        "no_audience",
        "other_group",
        "folder_of_the_group",
        "subject_without_prefix",
        "no_subject",
        "digest_of_other_body",
        "digest_uppercase_hex",
        "digest_without_prefix",
        "no_digest",
        "digest_not_nested",
    ],
)
def test_token_failing_a_claim_check_is_403(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path, case: str
) -> None:
    headers, body = delivery()
    headers["Authorization"] = f"Bearer {_claims_case(issuer, body, case)}"
    assert_error(receiver.post(headers, body), 403, "invalid_token")
    assert_nothing_landed(landing_dir)


def test_audience_as_a_single_string_is_accepted(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    headers, body = delivery()
    headers["Authorization"] = f"Bearer {issuer.token(body, aud='customer')}"
    assert receiver.post(headers, body).status_code == 202


def test_audience_list_containing_customer_is_accepted(receiver: ThreadedReceiver, issuer: LocalIssuer) -> None:
    headers, body = delivery()
    headers["Authorization"] = f"Bearer {issuer.token(body, aud=['other', 'customer'])}"
    assert receiver.post(headers, body).status_code == 202


def test_structured_mode_digest_covers_the_whole_raw_body(receiver: ThreadedReceiver, issuer: LocalIssuer) -> None:
    attributes, data = pull_event()
    body = compact_json({**attributes, "data": data})
    headers = {"Content-Type": "application/cloudevents+json"}
    # A token for the data alone (what binary mode would sign) does not cover a structured body.
    headers["Authorization"] = f"Bearer {issuer.token(compact_json(data))}"
    assert_error(receiver.post(headers, body), 403, "invalid_token")
    headers["Authorization"] = f"Bearer {issuer.token(body)}"
    assert receiver.post(headers, body).status_code == 202


@pytest.mark.parametrize(
    "forgery", ["alg_none", "hs256_public_key_secret", "hs256_guessed_secret", "rs256_foreign_key", "rs512", "garbage"]
)
def test_forged_tokens_are_403(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path, forgery: str
) -> None:
    headers, body = delivery()
    claims = issuer.claims(body)
    kid = issuer.signing_key.kid
    if forgery == "alg_none":
        token = unsigned_token(claims, kid)
    elif forgery == "hs256_public_key_secret":
        token = hmac_token(claims, issuer.signing_key.public_pem(), kid)  # RS/HS key confusion
    elif forgery == "hs256_guessed_secret":
        token = hmac_token(claims, b"secret", kid)
    elif forgery == "rs256_foreign_key":
        token = issuer.token(body, key=SigningKey.generate(kid))  # right kid, key not the issuer's
    elif forgery == "rs512":
        import jwt

        token = jwt.encode(claims, issuer.signing_key.private_key, algorithm="RS512", headers={"kid": kid})
    else:
        token = "not.a.jwt"
    headers["Authorization"] = f"Bearer {token}"
    detail = assert_error(receiver.post(headers, body), 403, "invalid_token")["detail"]
    if forgery.startswith(("alg_", "hs256", "rs512")):
        assert "only RS256" in detail  # refused on the header, before any key is used
    assert_nothing_landed(landing_dir)


def test_jwks_key_without_kid_verifies_tokens_without_kid(
    make_receiver: MakeReceiver, local_store: LocalLandingStore
) -> None:
    with LocalIssuer(kid=None) as issuer:
        assert "kid" not in issuer.jwks()["keys"][0]
        receiver = make_receiver(store=local_store, issuer=issuer)
        headers, body = delivery(issuer)
        assert receiver.post(headers, body).status_code == 202
        headers, body = delivery()
        headers["Authorization"] = f"Bearer {issuer.token(body, key=SigningKey.generate(None))}"
        assert_error(receiver.post(headers, body), 403, "invalid_token")
    assert len(landed_ids(local_store)) == 1


def test_rotated_key_with_new_kid_is_fetched_and_accepted(
    make_receiver: MakeReceiver, fresh_issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    receiver = make_receiver(store=local_store, issuer=fresh_issuer, PULL_EVENTS_JWKS_MIN_REFRESH_S="0")
    headers, body = delivery(fresh_issuer)
    assert receiver.post(headers, body).status_code == 202
    assert fresh_issuer.jwks_requests == 1
    fresh_issuer.rotate(kid="test-key-2")
    headers, body = delivery(fresh_issuer)
    assert receiver.post(headers, body).status_code == 202
    assert fresh_issuer.jwks_requests == 2
    assert len(landed_ids(local_store)) == 2


def test_key_replaced_under_the_same_kid_is_refetched_after_a_failed_signature(
    make_receiver: MakeReceiver, fresh_issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    receiver = make_receiver(store=local_store, issuer=fresh_issuer, PULL_EVENTS_JWKS_MIN_REFRESH_S="0")
    headers, body = delivery(fresh_issuer)
    assert receiver.post(headers, body).status_code == 202
    fresh_issuer.rotate(kid=fresh_issuer.signing_key.kid)
    headers, body = delivery(fresh_issuer)
    assert receiver.post(headers, body).status_code == 202
    assert fresh_issuer.jwks_requests == 2


def test_key_set_refetch_is_rate_limited_and_unknown_kid_meanwhile_is_503(
    make_receiver: MakeReceiver, fresh_issuer: LocalIssuer, landing_dir: Path
) -> None:
    receiver = make_receiver(issuer=fresh_issuer, PULL_EVENTS_JWKS_MIN_REFRESH_S="600")
    headers, body = delivery(fresh_issuer)
    assert receiver.post(headers, body).status_code == 202
    stranger = SigningKey.generate("someone-elses-key")
    for _ in range(3):
        headers, body = delivery()
        headers["Authorization"] = f"Bearer {fresh_issuer.token(body, key=stranger)}"
        response = receiver.post(headers, body)
        assert_error(response, 503, "unknown_signing_key")
        assert int(response.headers["Retry-After"]) >= 1
        # A known kid with a bad signature is a definite failure even while a refetch is not allowed.
        headers["Authorization"] = (
            f"Bearer {fresh_issuer.token(body, key=SigningKey.generate(fresh_issuer.signing_key.kid))}"
        )
        assert_error(receiver.post(headers, body), 403, "invalid_token")
    assert fresh_issuer.jwks_requests == 1
    assert len([p for p in landing_dir.rglob("*.ndjson")]) == 1


def test_unknown_kid_after_a_fresh_refetch_is_403(
    make_receiver: MakeReceiver, fresh_issuer: LocalIssuer, landing_dir: Path
) -> None:
    receiver = make_receiver(issuer=fresh_issuer, PULL_EVENTS_JWKS_MIN_REFRESH_S="0")
    headers, body = delivery()
    headers["Authorization"] = f"Bearer {fresh_issuer.token(body, key=SigningKey.generate('unknown'))}"
    assert_error(receiver.post(headers, body), 403, "invalid_token")
    assert fresh_issuer.jwks_requests == 2  # the first fetch, then one refetch for the unknown kid
    assert_nothing_landed(landing_dir)


def test_unreachable_issuer_is_503_and_recovers(
    make_receiver: MakeReceiver, fresh_issuer: LocalIssuer, local_store: LocalLandingStore, landing_dir: Path
) -> None:
    receiver = make_receiver(store=local_store, issuer=fresh_issuer, PULL_EVENTS_JWKS_MIN_REFRESH_S="0")
    fresh_issuer.available = False
    headers, body = delivery(fresh_issuer)
    response = receiver.post(headers, body)
    assert_error(response, 503, "issuer_unavailable")
    assert response.headers["Retry-After"]
    assert_nothing_landed(landing_dir)
    fresh_issuer.available = True
    assert receiver.post(headers, body).status_code == 202
    assert landed_ids(local_store) == [pull_event_id(headers)]


def pull_event_id(headers: dict[str, str]) -> str:
    return headers["Ce-Id"]


# --- token lifetime -----------------------------------------------------------------------------------------------


# Claims relative to the time the token is minted (not to when the test was collected).
_LIFETIME_CASES: dict[str, Callable[[int], dict[str, Any]]] = {
    "lives_100_years": lambda now: {"iat": now, "exp": now + 100 * 365 * 86400},
    "lives_1e300_seconds": lambda now: {"iat": now, "exp": 1e300},
    "lives_one_second_over_the_maximum": lambda now: {"iat": now, "exp": now + 3 * 3600 + 1},
    "issued_beyond_the_leeway_in_the_future": lambda now: {"iat": now + 120, "exp": now + 420},
    "no_iat": lambda now: {"iat": OMIT},
    "iat_not_a_number": lambda now: {"iat": "now"},
}


@pytest.mark.parametrize("case", sorted(_LIFETIME_CASES))
def test_token_with_an_unbounded_or_insane_lifetime_is_403(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path, case: str
) -> None:
    headers, body = delivery()
    headers["Authorization"] = f"Bearer {issuer.token(body, **_LIFETIME_CASES[case](int(time.time())))}"
    assert_error(receiver.post(headers, body), 403, "invalid_token")
    assert_nothing_landed(landing_dir)


def test_token_lifetime_at_the_maximum_and_clocks_within_the_leeway_are_accepted(
    receiver: ThreadedReceiver, issuer: LocalIssuer
) -> None:
    now = int(time.time())
    for overrides in ({"iat": now, "exp": now + 3 * 3600}, {"iat": now + 30, "nbf": now + 30, "exp": now + 330}):
        headers, body = delivery()
        headers["Authorization"] = f"Bearer {issuer.token(body, **overrides)}"
        response = receiver.post(headers, body)
        assert response.status_code == 202, response.text


def test_maximum_token_lifetime_is_configurable(make_receiver: MakeReceiver, issuer: LocalIssuer) -> None:
    receiver = make_receiver(PULL_EVENTS_MAX_TOKEN_LIFETIME_S="120")
    headers, body = delivery(issuer)  # the issuer's tokens live 300 s
    assert_error(receiver.post(headers, body), 403, "invalid_token")


# --- one token, one delivery --------------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["id", "type", "source"])
def test_a_token_replayed_with_another_id_type_or_source_is_403_and_lands_nothing_new(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore, attribute: str
) -> None:
    attributes, data = pull_event(id=new_id())
    body = compact_json(data)
    token = issuer.token(body)
    assert receiver.post(binary_delivery(attributes, body, token=token), body).status_code == 202
    changed = {**attributes, attribute: {"id": new_id(), "type": "dev.chainguard.registry.push.v1"}.get(attribute, "x")}
    response = receiver.post(binary_delivery(changed, body, token=token), body)
    assert_error(response, 403, "token_replayed")
    assert landed_ids(local_store) == [attributes["id"]]


def test_a_genuine_retry_with_the_same_token_and_attributes_is_accepted(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, data = pull_event(id=new_id())
    body = compact_json(data)
    headers = binary_delivery(attributes, body, issuer)
    assert [receiver.post(headers, body).status_code for _ in range(3)] == [202, 202, 202]
    assert landed_ids(local_store) == [attributes["id"]] * 3  # the load keeps one row per (source, id)


def test_a_refused_replay_does_not_unbind_the_token(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    attributes, data = pull_event(id=new_id())
    body = compact_json(data)
    token = issuer.token(body)
    assert receiver.post(binary_delivery(attributes, body, token=token), body).status_code == 202
    other = {**attributes, "id": new_id()}
    assert receiver.post(binary_delivery(other, body, token=token), body).status_code == 403
    assert receiver.post(binary_delivery(other, body, token=token), body).status_code == 403
    assert receiver.post(binary_delivery(attributes, body, token=token), body).status_code == 202
    assert landed_ids(local_store) == [attributes["id"]] * 2
