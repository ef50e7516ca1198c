from __future__ import annotations

import os
import re
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pull_events.landing import new_instance_id
from pull_events.settings import DEFAULT_LANDING, DEFAULT_WAREHOUSE, SettingsError, load_settings


def test_defaults_are_the_embedded_local_stack() -> None:
    settings = load_settings({"CHAINGUARD_GROUP": "abc123"})
    assert settings.landing.kind == "local" and settings.landing.path == DEFAULT_LANDING
    assert settings.warehouse.kind == "duckdb" and settings.warehouse.path == DEFAULT_WAREHOUSE
    assert settings.receiver.issuer == "https://issuer.enforce.dev"
    assert settings.receiver.auth == "chainguard"
    assert settings.receiver.port == 8080
    assert settings.receiver.max_body_bytes == 1024 * 1024


def test_cloud_locations_are_parsed() -> None:
    settings = load_settings(
        {
            "CHAINGUARD_GROUP": "abc123",
            "PULL_EVENTS_LANDING": "gs://my-bucket/events/v1/",
            "PULL_EVENTS_WAREHOUSE": "bigquery://my-project/analytics",
        }
    )
    assert (settings.landing.kind, settings.landing.bucket, settings.landing.prefix) == (
        "gcs",
        "my-bucket",
        "events/v1",
    )
    assert settings.landing.uri == "gs://my-bucket/events/v1"
    assert (settings.warehouse.kind, settings.warehouse.project, settings.warehouse.dataset) == (
        "bigquery",
        "my-project",
        "analytics",
    )


def test_relative_local_paths_resolve_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"CHAINGUARD_GROUP": "g", "PULL_EVENTS_LANDING": "land", "PULL_EVENTS_WAREHOUSE": "w.db"})
    assert settings.landing.path == tmp_path / "land"
    assert settings.warehouse.path == tmp_path / "w.db"


def test_receiver_requires_the_group_while_auth_is_on_but_the_pipeline_does_not() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({})
    assert error.value.variable == "CHAINGUARD_GROUP"
    assert load_settings({}, receiver=False).receiver.group is None
    assert load_settings({"PULL_EVENTS_AUTH": "off"}).receiver.auth == "off"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PULL_EVENTS_AUTH", "maybe"),
        ("PULL_EVENTS_LANDING", "s3://bucket/x"),
        ("PULL_EVENTS_LANDING", "gs://"),
        ("PULL_EVENTS_LANDING", "gs://bucket/a/../b"),
        ("PULL_EVENTS_WAREHOUSE", "bigquery://project"),
        ("PULL_EVENTS_WAREHOUSE", "postgres://db"),
        ("CHAINGUARD_ISSUER", "issuer.enforce.dev"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("PULL_EVENTS_BATCH_MAX_BYTES", str(9 * 1024 * 1024)),
        ("PULL_EVENTS_MAX_BODY_BYTES", "100"),
        ("PULL_EVENTS_BATCH_MAX_WAIT_MS", "-1"),
        ("PULL_EVENTS_MAX_REJECTED_RATE", "1.5"),
        ("PULL_EVENTS_MAX_RAW_EVENT_RATE", "-0.1"),
        ("PULL_EVENTS_FIRST_DAY", "2024-13-01"),
        ("PULL_EVENTS_FIRST_DAY", (datetime.now(UTC).date() + timedelta(days=2)).isoformat()),  # no partition yet
        ("PULL_EVENTS_INSTANCE", "eu/west"),
        ("PULL_EVENTS_INSTANCE", "-leading-dash"),
        ("PULL_EVENTS_INSTANCE", "x" * 64),
        ("PULL_EVENTS_INSTANCE", "r\u00e9cepteur"),
    ],
)
def test_invalid_setting_is_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({"CHAINGUARD_GROUP": "g", variable: value})
    assert error.value.variable == variable
    assert str(error.value).startswith(f"{variable}: ")


GROUP = {"CHAINGUARD_GROUP": "g"}


def test_the_instance_name_is_the_setting_else_the_cloud_run_revision_else_the_host_name() -> None:
    assert load_settings(
        {**GROUP, "PULL_EVENTS_INSTANCE": "eu-west1.rx_2", "K_REVISION": "rev-1"}
    ).receiver.instance_name == ("eu-west1.rx_2")
    assert (
        load_settings({**GROUP, "K_REVISION": "pull-events-00042-abc"}).receiver.instance_name
        == "pull-events-00042-abc"
    )
    # The fallbacks are the platform's: made safe for an object name rather than refused.
    assert load_settings({**GROUP, "K_REVISION": "../odd name/"}).receiver.instance_name == "odd_name_"
    assert load_settings(GROUP).receiver.instance_name == re.sub(r"[^A-Za-z0-9._-]+", "_", socket.gethostname())[:63]


def test_receivers_given_one_name_still_write_distinct_keys() -> None:
    names = {new_instance_id("rx-a") for _ in range(1000)}
    assert len(names) == 1000
    assert all(name.startswith(f"rx-a-{os.getpid()}-") for name in names)
