"""The local stack's development issuer: a receiver configured as ``scripts/stack`` configures it verifies its
tokens exactly as production verifies Chainguard's, and its key survives a restart."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import requests

from devstack.delivery import delivery
from devstack.issuer import read_state, start_dev_issuer
from devstack.oidc import OidcIssuer, SigningKey, sign
from devstack.sample import sample_pull
from pull_events.landing import LocalLandingStore
from pull_events.settings import load_settings
from tests.devstack.stack import stack_receiver_env
from tests.receiver.deliveries import landed_records
from tests.receiver.server import ROOT, ReceiverProcess, ThreadedReceiver


def error_of(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


def test_a_signed_delivery_lands_and_unsigned_or_wrongly_signed_ones_are_refused(
    tmp_path: Path, dev_issuer: OidcIssuer, issuer_state: Path
) -> None:
    landing = tmp_path / "landing"
    env = stack_receiver_env(landing, dev_issuer.url)
    with ReceiverProcess(env, tmp_path / "receiver.log") as receiver:
        # The real script, as a developer runs it against the stack.
        sent = subprocess.run(
            [ROOT / "scripts/send-sample-event", "1", receiver.url + "/", "--issuer-state", str(issuer_state)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        status, answer = sent.stdout.strip().split(" ", 1)
        acknowledgement = json.loads(answer)
        assert (status, acknowledgement["status"]) == ("202", "landed")

        state = read_state(issuer_state)
        event = sample_pull()
        signed = delivery(event, state.signer())
        unsigned = delivery(event, None)
        impostor = SigningKey.generate(state.key.kid)  # same kid, another key: the signature cannot verify
        forged = {**signed.headers, "Authorization": "Bearer " + sign(dev_issuer.claims(signed.body), impostor)}
        other_body = delivery(sample_pull(), state.signer())
        swapped = {**signed.headers, "Authorization": other_body.headers["Authorization"]}
        other_group = {**signed.headers, "Authorization": "Bearer " + dev_issuer.token(signed.body, "another-org")}

        def post(headers: dict[str, str], body: bytes) -> requests.Response:
            return requests.post(receiver.url + "/", headers=headers, data=body, timeout=30)

        assert error_of(post(unsigned.headers, unsigned.body)) == (401, "missing_token")
        assert error_of(post(forged, signed.body)) == (403, "invalid_token")
        assert error_of(post(swapped, signed.body)) == (403, "invalid_token")  # token bound to another body
        assert error_of(post(other_group, signed.body)) == (403, "invalid_token")
    [record] = landed_records(LocalLandingStore(landing))  # the refused ones landed nothing
    assert (record["id"], record["landing_line"]) == (acknowledgement["id"], acknowledgement["line"])
    assert record["type"] == "dev.chainguard.registry.pull.v1"
    assert record["token_sha256"].startswith("sha256:")  # landed by a receiver that verified a token


def test_the_key_and_its_tokens_survive_a_restart(tmp_path: Path, issuer_state: Path) -> None:
    first = start_dev_issuer(issuer_state, port=0)
    url, kid, jwks = first.url, first.signing_key.kid, first.jwks()
    event = sample_pull()
    before_restart = delivery(event, read_state(issuer_state).signer())
    first.stop()

    port = int(url.rsplit(":", 1)[1])
    second = start_dev_issuer(issuer_state, port=port)
    try:
        assert (second.url, second.signing_key.kid, second.jwks()) == (url, kid, jwks)
        key_file = issuer_state / "signing-key.pem"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        settings = load_settings(stack_receiver_env(tmp_path / "landing", second.url))
        with ThreadedReceiver(settings) as receiver:
            assert receiver.post(before_restart.headers, before_restart.body).status_code == 202
    finally:
        second.stop()
    [record] = landed_records(LocalLandingStore(tmp_path / "landing"))
    assert record["id"] == event.id


def test_the_issuer_publishes_its_key_under_its_thumbprint(dev_issuer: OidcIssuer, issuer_state: Path) -> None:
    discovery = requests.get(dev_issuer.url + "/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == dev_issuer.url
    [jwk] = requests.get(discovery["jwks_uri"], timeout=5).json()["keys"]
    assert jwk["kid"] == dev_issuer.signing_key.kid == read_state(issuer_state).key.kid
    assert json.loads((issuer_state / "issuer.json").read_text()) == {
        "issuer": dev_issuer.url, "group": read_state(issuer_state).group, "kid": jwk["kid"],
    }  # fmt: skip
