"""The IAM bindings of deploy/ as (who, role, on what) triples, and the roles allowed there with their reasons."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.deploy.terraform_config import TerraformConfig, expression, resource_reference

# Binding resource type -> what it is bound on. Only non-authoritative *_iam_member resources: an *_iam_binding or
# *_iam_policy would replace every other member's access to the resource.
SCOPES = {
    "google_storage_bucket_iam_member": "bucket",
    "google_bigquery_dataset_iam_member": "dataset",
    "google_project_iam_member": "project",
    "google_cloud_run_v2_service_iam_member": "service",
}
PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}


@dataclass(frozen=True)
class Allowed:
    scope: str  # the one kind of resource it may be bound on
    reason: str  # why it is the narrowest that works


# Every role deploy/ may bind. Custom roles go by their role_id; their permissions are pinned below.
ALLOWED_ROLES: dict[str, Allowed] = {
    "pullEventsLandingWriter": Allowed(
        "bucket", "receiver: create objects, read one back, see the bucket (CUSTOM_ROLE_PERMISSIONS); no list or delete"
    ),
    "roles/storage.objectViewer": Allowed(
        "bucket", "pipeline: storage.objects.list (sensor, reconciliation) and .get (loads, BigQuery load jobs) only"
    ),
    "roles/bigquery.dataEditor": Allowed(
        "dataset", "pipeline: create/alter/delete its tables and write rows, in its dataset only; no dataset delete"
    ),
    "roles/bigquery.dataViewer": Allowed("dataset", "analysts: read the tables of the dataset only"),
    "roles/bigquery.jobUser": Allowed(
        "project", "pipeline and analysts: bigquery.jobs.create; jobs exist only per project, and it grants no data"
    ),
    "pullEventsRebuildDatasetCreator": Allowed(
        "project", "pipeline: create the rebuild's shadow dataset (a project permission); BigQuery makes it its owner"
    ),
    "roles/run.invoker": Allowed(
        "service", "Chainguard: deliveries carry Chainguard's token, which the receiver verifies, not a Google identity"
    ),
}

# Exactly the permissions of each custom role, each with the code that needs it.
CUSTOM_ROLE_PERMISSIONS: dict[str, dict[str, str]] = {
    "pullEventsLandingWriter": {
        "storage.objects.create": "GcsLandingStore.write_new: create-only upload (ifGenerationMatch=0)",
        "storage.objects.get": "GcsLandingStore._holds: a retried upload answered 412 is compared with what is stored",
        "storage.buckets.get": "GcsLandingStore.check_ready (/readyz): bucket.exists()",
    },
    "pullEventsRebuildDatasetCreator": {
        "bigquery.datasets.create": "ensure_tables on the shadow <dataset>__rebuild after drop_shadow",
    },
}

# Permissions no binding of the landing bucket may carry: objects are never deleted, overwritten or re-ACLed.
DESTRUCTIVE_STORAGE = {"storage.objects.delete", "storage.objects.update", "storage.buckets.update"}
# The storage permissions of the predefined roles allowed on the bucket (from GCP's role reference).
PREDEFINED_STORAGE_PERMISSIONS = {
    "roles/storage.objectViewer": {
        "storage.objects.get",
        "storage.objects.list",
        "storage.managedFolders.get",
        "storage.managedFolders.list",
    },
}


@dataclass(frozen=True)
class Binding:
    resource: str  # type.name of the binding in the HCL
    member: str  # google_service_account name, "analyst_members", or a literal member such as allUsers
    role: str  # predefined role, or a custom role's role_id
    scope: str  # bucket, dataset, project, service


def custom_roles(config: TerraformConfig) -> dict[str, dict]:
    """Custom roles by their HCL name."""
    return {name: body for (_, name), body in config.resources("google_project_iam_custom_role").items()}


def _member(value: str) -> str:
    match = re.fullmatch(r"serviceAccount:\$\{google_service_account\.([A-Za-z0-9_-]+)\.email\}", value)
    if match:
        return match.group(1)
    if value == "${each.value}":
        return "each.value"
    return value


def _role(value: str, config: TerraformConfig) -> str:
    if value.startswith("${"):
        kind, name = resource_reference(value)
        assert kind == "google_project_iam_custom_role", value
        return custom_roles(config)[name]["role_id"]
    return value


def bindings(config: TerraformConfig) -> list[Binding]:
    found = []
    for (kind, name), body in config.resources().items():
        if "_iam_" not in kind or kind == "google_project_iam_custom_role":
            continue
        assert kind in SCOPES, f"{kind}.{name}: only *_iam_member resources on {sorted(SCOPES)} are used"
        member = _member(body["member"])
        if member == "each.value":
            # One binding per member of a list variable: name the binding by that variable.
            member = expression(body["for_each"]).removeprefix("toset(var.").removesuffix(")")
        found.append(Binding(f"{kind}.{name}", member, _role(body["role"], config), SCOPES[kind]))
    return found
