"""The Cloud Run receiver fits the receiver's own configuration: its threads, group commit and deadlines."""

from __future__ import annotations

import re

import pytest

from pull_events.settings import LandingLocation, parse_landing
from tests.deploy.receiver_config import ReceiverDefaults, receiver_defaults
from tests.deploy.terraform_config import ROOT, TerraformConfig, expression, load, one, resource_reference

CLOUD_RUN_MAX_CONCURRENCY = 1000  # Cloud Run's most concurrent requests per instance
CLOUD_RUN_RESERVED = {"PORT"}  # set by Cloud Run itself (from container_port); a service may not set it


@pytest.fixture(scope="module")
def config() -> TerraformConfig:
    return load()


@pytest.fixture(scope="module")
def defaults() -> ReceiverDefaults:
    return receiver_defaults()


@pytest.fixture(scope="module")
def template(config: TerraformConfig) -> dict:
    return one(config.resource("google_cloud_run_v2_service", "receiver")["template"])


@pytest.fixture(scope="module")
def container(template: dict) -> dict:
    return one(template["containers"])


def _env(container: dict) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in container["env"]}


def test_min_instances_is_at_least_one_so_deliveries_never_wait_for_a_cold_start(
    config: TerraformConfig, template: dict
) -> None:
    scaling = one(template["scaling"])
    assert expression(scaling["min_instance_count"]) == "var.receiver_min_instances"
    variable = config.variables()["receiver_min_instances"]
    assert variable["default"] >= 1
    assert expression(one(variable["validation"])["condition"]) == "var.receiver_min_instances >= 1"


def test_max_instances_is_bounded_and_not_below_min(config: TerraformConfig, template: dict) -> None:
    assert expression(one(template["scaling"])["max_instance_count"]) == "var.receiver_max_instances"
    variables = config.variables()
    assert variables["receiver_max_instances"]["default"] >= variables["receiver_min_instances"]["default"]


def test_concurrency_is_the_receivers_threads_of_its_one_process(
    config: TerraformConfig, template: dict, container: dict, defaults: ReceiverDefaults
) -> None:
    # The image runs one worker process unless WEB_CONCURRENCY says otherwise; the service does not set it.
    assert "WEB_CONCURRENCY" not in _env(container)
    assert defaults.gunicorn.workers == 1
    # One request in flight per app thread: the threads the service gives the receiver are the concurrency.
    assert expression(template["max_instance_request_concurrency"]) == "var.receiver_threads"
    assert expression(_env(container)["PULL_EVENTS_THREADS"]) == "tostring(var.receiver_threads)"
    threads = config.variables()["receiver_threads"]["default"]
    assert threads == defaults.gunicorn.threads
    assert threads <= CLOUD_RUN_MAX_CONCURRENCY


def test_concurrency_never_trips_the_receivers_own_back_pressure(
    config: TerraformConfig, defaults: ReceiverDefaults
) -> None:
    threads = config.variables()["receiver_threads"]["default"]
    # A full instance must not be answered 503 by its own queue limit or connection limit.
    assert threads <= defaults.settings.receiver.max_pending_events
    assert threads <= defaults.gunicorn.worker_connections
    # One group commit can take every request in flight of the instance.
    assert threads <= defaults.settings.receiver.batch_max_events


def test_every_env_var_the_service_sets_is_read_by_the_receiver(container: dict, defaults: ReceiverDefaults) -> None:
    names = set(_env(container))
    assert names - defaults.read == set()
    assert names & CLOUD_RUN_RESERVED == set()
    assert {"PULL_EVENTS_LANDING", "CHAINGUARD_GROUP"} <= names


def test_the_container_port_is_the_receivers_default_port(container: dict, defaults: ReceiverDefaults) -> None:
    assert one(container["ports"])["container_port"] == defaults.settings.receiver.port


def test_the_request_timeout_outlasts_the_receivers_own_deadlines(template: dict, defaults: ReceiverDefaults) -> None:
    receiver = defaults.settings.receiver
    longest = receiver.header_timeout_seconds + receiver.body_timeout_seconds + receiver.commit_timeout_seconds
    match = re.fullmatch(r"(\d+)s", template["timeout"])
    assert match and int(match.group(1)) > longest


def test_probes_ask_routes_the_receiver_serves(container: dict) -> None:
    views = (ROOT / "receiver" / "views.py").read_text()
    served = set(re.findall(r'@bp\.get\("([^"]+)"\)', views))
    assert one(one(container["startup_probe"])["http_get"])["path"] == "/readyz"
    assert one(one(container["liveness_probe"])["http_get"])["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= served


def test_the_receiver_runs_as_its_own_service_account(template: dict) -> None:
    assert resource_reference(template["service_account"]) == ("google_service_account", "receiver")


def test_the_subscription_delivers_the_receivers_group_to_its_url(config: TerraformConfig, container: dict) -> None:
    subscriptions = config.resources("chainguard_subscription")
    assert list(subscriptions) == [("chainguard_subscription", "receiver")]
    subscription = subscriptions[("chainguard_subscription", "receiver")]
    # The tokens of a subscription's deliveries name its parent group: the receiver must expect that group.
    assert expression(subscription["parent_id"]) == expression(_env(container)["CHAINGUARD_GROUP"])
    assert expression(subscription["sink"]) == "google_cloud_run_v2_service.receiver.uri"


def test_the_first_revision_starts_after_the_receivers_bucket_grant(config: TerraformConfig) -> None:
    # Its startup probe (/readyz) needs storage.buckets.get; without the grant the first deploy never gets ready.
    service = config.resource("google_cloud_run_v2_service", "receiver")
    assert service["depends_on"] == ["${google_storage_bucket_iam_member.receiver_landing_writer}"]


def test_the_landing_uri_parses_to_the_declared_bucket_and_prefix(config: TerraformConfig, container: dict) -> None:
    assert expression(_env(container)["PULL_EVENTS_LANDING"]) == "local.landing_uri"
    [local] = [block["landing_uri"] for parsed in config.files.values() for block in parsed.get("locals", [])]
    condition, without_prefix, with_prefix = re.fullmatch(r'\$\{(.+) \? "(.+)" : "(.+)"\}', local).groups()
    assert condition == 'var.landing_prefix == ""'

    def filled(template: str, prefix: str) -> str:
        return template.replace("${google_storage_bucket.landing.name}", "a-bucket").replace(
            "${var.landing_prefix}", prefix
        )

    assert parse_landing(filled(without_prefix, "")) == LandingLocation("gcs", "a-bucket", "")
    assert parse_landing(filled(with_prefix, "events/prod")) == LandingLocation("gcs", "a-bucket", "events/prod")
