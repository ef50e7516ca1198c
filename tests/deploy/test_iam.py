"""Every role deploy/ binds is allow-listed with its reason, bound on the one resource it concerns, and narrow."""

from __future__ import annotations

import pytest

from tests.deploy.iam_bindings import (
    ALLOWED_ROLES,
    CUSTOM_ROLE_PERMISSIONS,
    DESTRUCTIVE_STORAGE,
    PREDEFINED_STORAGE_PERMISSIONS,
    PRIMITIVE_ROLES,
    Binding,
    bindings,
    custom_roles,
)
from tests.deploy.terraform_config import TerraformConfig, load, resource_reference


@pytest.fixture(scope="module")
def config() -> TerraformConfig:
    return load()


@pytest.fixture(scope="module")
def bound(config: TerraformConfig) -> list[Binding]:
    return bindings(config)


def test_every_role_is_allow_listed_and_bound_where_its_reason_says(bound: list[Binding]) -> None:
    assert bound, "no IAM bindings found"
    wrong = [(b.resource, b.role, b.scope) for b in bound if b.role not in ALLOWED_ROLES]
    wrong += [
        (b.resource, b.role, b.scope)
        for b in bound
        if b.role in ALLOWED_ROLES and ALLOWED_ROLES[b.role].scope != b.scope
    ]
    assert wrong == []


def test_no_primitive_role_anywhere(bound: list[Binding]) -> None:
    assert [b.resource for b in bound if b.role in PRIMITIVE_ROLES] == []


def test_no_storage_role_is_granted_project_wide(bound: list[Binding], config: TerraformConfig) -> None:
    storage_custom = {
        body["role_id"]
        for body in custom_roles(config).values()
        if any(p.startswith("storage.") for p in body["permissions"])
    }
    project_wide = [b for b in bound if b.scope == "project"]
    assert [b.resource for b in project_wide if b.role.startswith("roles/storage.") or b.role in storage_custom] == []


def test_custom_roles_hold_exactly_the_permissions_the_code_needs(config: TerraformConfig) -> None:
    declared = {body["role_id"]: set(body["permissions"]) for body in custom_roles(config).values()}
    assert declared == {role: set(permissions) for role, permissions in CUSTOM_ROLE_PERMISSIONS.items()}


def test_nothing_bound_on_the_bucket_can_delete_or_overwrite_objects(
    bound: list[Binding], config: TerraformConfig
) -> None:
    custom = {body["role_id"]: set(body["permissions"]) for body in custom_roles(config).values()}
    for binding in (b for b in bound if b.scope == "bucket"):
        permissions = custom.get(binding.role) or PREDEFINED_STORAGE_PERMISSIONS[binding.role]
        assert permissions & DESTRUCTIVE_STORAGE == set(), binding


def test_the_receiver_can_only_write_the_landing_bucket(bound: list[Binding]) -> None:
    assert {(b.role, b.scope) for b in bound if b.member == "receiver"} == {("pullEventsLandingWriter", "bucket")}
    assert "storage.objects.list" not in CUSTOM_ROLE_PERMISSIONS["pullEventsLandingWriter"]


def test_bucket_and_dataset_bindings_name_the_declared_bucket_and_dataset(config: TerraformConfig) -> None:
    for body in config.resources("google_storage_bucket_iam_member").values():
        assert resource_reference(body["bucket"]) == ("google_storage_bucket", "landing")
    for body in config.resources("google_bigquery_dataset_iam_member").values():
        assert resource_reference(body["dataset_id"]) == ("google_bigquery_dataset", "warehouse")


def test_only_the_receivers_invoker_role_is_public(bound: list[Binding], config: TerraformConfig) -> None:
    public = [b for b in bound if b.member in ("allUsers", "allAuthenticatedUsers")]
    assert [(b.role, b.scope) for b in public] == [("roles/run.invoker", "service")]
    for body in config.resources("google_cloud_run_v2_service_iam_member").values():
        assert resource_reference(body["name"]) == ("google_cloud_run_v2_service", "receiver")


def test_no_authoritative_iam_resource_replaces_others_access(config: TerraformConfig) -> None:
    # *_iam_binding / *_iam_policy set a role's (or a resource's) whole member list, removing grants made elsewhere.
    kinds = {kind for kind, _ in config.resources()}
    assert {k for k in kinds if k.endswith(("_iam_binding", "_iam_policy"))} == set()
