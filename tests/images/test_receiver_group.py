"""The receiver group alone (what the receiver image installs) serves the receiver, and holds nothing else."""

from __future__ import annotations

import hashlib
from pathlib import Path

import requests

from tests.conftest import ReceiverLanding
from tests.images.environments import GCS_MODULE, RECEIVER_MODULES, importable
from tests.receiver.deliveries import landed_records
from tests.receiver.load import signed_pull_delivery
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ReceiverProcess, receiver_env


def test_the_receiver_group_holds_the_receivers_imports_and_nothing_of_dagster_duckdb_bigquery_or_dev(
    receiver_python: Path,
) -> None:
    assert importable(receiver_python) == {*RECEIVER_MODULES, GCS_MODULE}


def test_the_receiver_group_serves_a_signed_delivery_under_gunicorn(
    receiver_python: Path, landing: ReceiverLanding, tmp_path: Path
) -> None:
    uri, store, extra = landing
    with LocalIssuer() as issuer:
        # gunicorn, the front worker and the app as the image runs them, with a real token from a local issuer.
        env = receiver_env(uri, issuer, **extra)
        process = ReceiverProcess(env, tmp_path / "receiver.log", python=receiver_python).start()
        try:
            event_id, headers, body = signed_pull_delivery(issuer)
            assert requests.post(process.url + "/", headers=headers, data=body, timeout=30).status_code == 202
            assert requests.get(process.url + "/readyz", timeout=30).status_code == 200
            assert process.terminate() == 0
        finally:
            process.stop()
    [record] = landed_records(store)
    assert (record["id"], record["body_sha256"]) == (event_id, "sha256:" + hashlib.sha256(body).hexdigest())
