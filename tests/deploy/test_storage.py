"""The landing bucket moves objects to colder storage and never deletes them."""

from __future__ import annotations

import pytest

from pull_events.settings import load_settings
from tests.deploy.receiver_config import pipeline_reads
from tests.deploy.terraform_config import TerraformConfig, expression, load, one


@pytest.fixture(scope="module")
def config() -> TerraformConfig:
    return load()


@pytest.fixture(scope="module")
def bucket(config: TerraformConfig) -> dict:
    buckets = config.resources("google_storage_bucket")
    assert list(buckets) == [("google_storage_bucket", "landing")]
    return buckets[("google_storage_bucket", "landing")]


def test_lifecycle_only_changes_storage_class_never_deletes(bucket: dict) -> None:
    actions = [one(rule["action"]) for rule in bucket["lifecycle_rule"]]
    assert [action["type"] for action in actions] == ["SetStorageClass", "SetStorageClass"]
    assert [action["storage_class"] for action in actions] == ["NEARLINE", "COLDLINE"]


def test_each_move_applies_to_the_class_before_it_after_its_variable(bucket: dict) -> None:
    conditions = [one(rule["condition"]) for rule in bucket["lifecycle_rule"]]
    assert [c["matches_storage_class"] for c in conditions] == [["STANDARD"], ["NEARLINE"]]
    assert [expression(c["age"]) for c in conditions] == [
        "var.landing_nearline_after_days",
        "var.landing_coldline_after_days",
    ]


def test_objects_stay_on_standard_while_the_pipeline_still_reads_them(config: TerraformConfig) -> None:
    variables = config.variables()
    reconcile_days = load_settings({}, receiver=False).pipeline.reconcile_days
    assert "PULL_EVENTS_RECONCILE_DAYS" in pipeline_reads()
    nearline = variables["landing_nearline_after_days"]["default"]
    coldline = variables["landing_coldline_after_days"]["default"]
    # The reconciliation pass lists and may load objects of today and reconcile_days before.
    assert nearline > reconcile_days + 1
    # NEARLINE's minimum storage duration is 30 days: moving on earlier bills the rest anyway.
    assert coldline >= nearline + 30


def test_the_bucket_cannot_be_destroyed_with_its_objects(bucket: dict) -> None:
    assert bucket["force_destroy"] is False
    assert one(bucket["lifecycle"])["prevent_destroy"] is True


def test_the_bucket_is_iam_only_and_never_public(bucket: dict) -> None:
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"


def test_no_retention_or_versioning_block_deletes_data(bucket: dict) -> None:
    # Versioning off is deliberate (objects are never overwritten); a soft-delete window guards manual deletes.
    assert one(bucket["versioning"])["enabled"] is False
    assert expression(one(bucket["soft_delete_policy"])["retention_duration_seconds"]) == (
        "var.landing_soft_delete_days * 86400"
    )
