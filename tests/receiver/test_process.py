"""The receiver as production runs it: under gunicorn, in its own process (start-up, SIGTERM, SIGKILL, logs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from pull_events.landing import LocalLandingStore
from pull_events.settings import SettingsError
from receiver import create_app
from tests.conftest import ReceiverLanding
from tests.receiver.deliveries import landed_ids
from tests.receiver.kill_test import run_kill_test
from tests.receiver.load import fire, signed_pull_deliveries
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ROOT, ReceiverProcess, receiver_env


def queue_depth(process: ReceiverProcess) -> float:
    text = requests.get(process.url + "/metrics", timeout=5).text
    [line] = [line for line in text.splitlines() if line.startswith("pull_events_receiver_queue_depth ")]
    return float(line.split()[1])


def test_sigterm_commits_what_is_pending_answers_every_request_and_exits_0(tmp_path: Path, issuer: LocalIssuer) -> None:
    landing = tmp_path / "landing"
    # Events wait up to 1.5 s for their batch to fill, so they are still pending when SIGTERM arrives.
    env = receiver_env(landing, issuer, PULL_EVENTS_BATCH_MAX_WAIT_MS="1500")
    process = ReceiverProcess(env, tmp_path / "receiver.log").start()
    try:
        deliveries = signed_pull_deliveries(issuer, 8)
        result = {}
        burst = threading.Thread(target=lambda: result.update(outcomes=fire(process.url, deliveries, threads=8)))
        burst.start()
        deadline = time.monotonic() + 10
        while queue_depth(process) < 8:
            assert time.monotonic() < deadline, "the deliveries never queued up"
            time.sleep(0.02)
        assert process.terminate(timeout=30) == 0
        burst.join()
    finally:
        process.stop()
    outcomes = result["outcomes"]
    assert (len(outcomes.acked), outcomes.refused, outcomes.failed) == (8, {}, set())
    assert sorted(landed_ids(LocalLandingStore(landing))) == sorted(outcomes.acked)
    logs = process.logs()
    assert "Handling signal: term" in logs
    assert "committer stopped" in logs


def test_logs_are_json_lines_and_never_contain_a_token(tmp_path: Path, issuer: LocalIssuer) -> None:
    landing = tmp_path / "landing"
    process = ReceiverProcess(receiver_env(landing, issuer), tmp_path / "receiver.log").start()
    tokens = []
    try:
        for _event_id, headers, body in signed_pull_deliveries(issuer, 3):
            tokens.append(headers["Authorization"].removeprefix("Bearer "))
            assert requests.post(process.url + "/", headers=headers, data=body, timeout=10).status_code == 202
        # Refused requests log their reason: still no token.
        _event_id, headers, body = signed_pull_deliveries(issuer, 1)[0]
        tokens.append(headers["Authorization"].removeprefix("Bearer "))
        assert requests.post(process.url + "/", headers=headers, data=body + b" ", timeout=10).status_code == 403
        headers.pop("Ce-Id")
        assert requests.post(process.url + "/", headers=headers, data=body, timeout=10).status_code == 400
        assert process.terminate() == 0
    finally:
        process.stop()
    logs = process.logs()
    entries = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(entry.get("status") == 403 and entry.get("error") == "invalid_token" for entry in entries)
    for token in tokens:
        for part in token.split("."):  # not the token, nor its header, claims or signature alone
            assert part not in logs
    assert "Bearer" not in logs and "authorization" not in logs.lower()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PULL_EVENTS_AUTH", "maybe"),
        ("CHAINGUARD_GROUP", ""),
        ("PULL_EVENTS_BATCH_MAX_WAIT_MS", "soon"),
        ("PULL_EVENTS_LANDING", "s3://bucket/events"),
    ],
)
def test_a_bad_setting_stops_gunicorn_at_start_naming_the_variable(
    tmp_path: Path, issuer: LocalIssuer, variable: str, value: str
) -> None:
    env = {**receiver_env(tmp_path / "landing", issuer), variable: value}
    process = ReceiverProcess(env, tmp_path / "receiver.log").start(wait_ready=False)
    try:
        assert process.wait(timeout=30) != 0
    finally:
        process.stop()
    assert variable in process.logs()


def test_create_app_refuses_a_bad_setting_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULL_EVENTS_AUTH", "chainguard")
    monkeypatch.delenv("CHAINGUARD_GROUP", raising=False)
    with pytest.raises(SettingsError, match="CHAINGUARD_GROUP") as error:
        create_app()
    assert error.value.variable == "CHAINGUARD_GROUP"


def test_flask_cli_finds_the_app_factory(tmp_path: Path, issuer: LocalIssuer) -> None:
    env = {**os.environ, **receiver_env(tmp_path / "landing", issuer)}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "receiver", "routes"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    routes = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[2:]}
    assert routes["receiver.receive"] == "POST"
    assert {"receiver.healthz", "receiver.readyz", "receiver.metrics"} <= set(routes)


def test_sigkill_mid_burst_loses_no_acknowledged_event(
    tmp_path: Path, issuer: LocalIssuer, landing: ReceiverLanding
) -> None:
    location, store, extra_env = landing
    process = ReceiverProcess({**receiver_env(location, issuer), **extra_env}, tmp_path / "receiver.log").start()
    try:
        report = run_kill_test(process, store, issuer, events=1000, threads=16, kill_after_acks=250)
    finally:
        process.stop()
    print(report.summary())
    assert report.acked >= 250
    assert report.unanswered + (report.sent < 1000) > 0, "the kill did not interrupt the burst"
    assert report.acked_missing == []
    assert report.unreadable_objects == []
    assert report.duplicates == 0
