# Who may do what, each binding on the one resource it concerns. Every role here is listed, with the reason it is
# the narrowest that works, in README.md ("GCS and BigQuery roles each part needs") and in tests/deploy, which fail
# on any other role, on primitive roles and on project-wide storage roles.

resource "google_service_account" "receiver" {
  account_id   = "pull-events-receiver"
  display_name = "pull-events receiver (Cloud Run)"
  description  = "Writes new landing objects; reads nothing else."
}

resource "google_service_account" "pipeline" {
  account_id   = "pull-events-pipeline"
  display_name = "pull-events pipeline (Dagster code location, daemon and runs)"
  description  = "Lists and reads landing objects; loads them into the BigQuery dataset."
}

resource "google_service_account" "dagster_webserver" {
  account_id   = "pull-events-dagster-web"
  display_name = "pull-events Dagster webserver"
  description  = "The Dagster UI: reads the Dagster instance only; no landing or warehouse access."
}

# --- receiver: create objects, nothing that deletes or overwrites --------------------------------------------

# roles/storage.objectCreator alone is not enough: /readyz checks the bucket exists (storage.buckets.get), and a
# retried upload that had in fact succeeded (412 on ifGenerationMatch=0) is accepted only after reading the
# object back to compare its bytes (storage.objects.get). No predefined role has exactly these three.
resource "google_project_iam_custom_role" "landing_writer" {
  role_id     = "pullEventsLandingWriter"
  title       = "pull-events landing writer"
  description = "Create-only writes to the landing bucket: create objects, read one back, see the bucket. No list, delete or overwrite."
  permissions = [
    "storage.buckets.get",
    "storage.objects.create",
    "storage.objects.get",
  ]
}

resource "google_storage_bucket_iam_member" "receiver_landing_writer" {
  bucket = google_storage_bucket.landing.name
  role   = google_project_iam_custom_role.landing_writer.name
  member = "serviceAccount:${google_service_account.receiver.email}"
}

# --- pipeline: read the landing zone, load into the dataset ----------------------------------------------------

# The sensor and the reconciliation pass list objects; loads read them, and BigQuery load jobs read the gs:// URIs
# with the caller's permissions.
resource "google_storage_bucket_iam_member" "pipeline_landing_reader" {
  bucket = google_storage_bucket.landing.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.pipeline.email}"
}

# Tables: create (ensure_tables, staging tables), alter (new columns), delete (staging, retired), read and write rows.
resource "google_bigquery_dataset_iam_member" "pipeline_warehouse_editor" {
  dataset_id = google_bigquery_dataset.warehouse.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${google_service_account.pipeline.email}"
}

# Queries, MERGE scripts, load and copy jobs are jobs of the project: jobs can only be granted there.
resource "google_project_iam_member" "pipeline_job_user" {
  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = "serviceAccount:${google_service_account.pipeline.email}"
}

# rebuild_from_landing deletes and creates its shadow dataset <dataset>__rebuild (BigQueryWarehouse.shadow /
# drop_shadow). Creating a dataset is a project permission; BigQuery makes the creator the new dataset's owner,
# so deleting it again needs nothing more. No other permission: not even listing the project's datasets.
resource "google_project_iam_custom_role" "rebuild_dataset_creator" {
  role_id     = "pullEventsRebuildDatasetCreator"
  title       = "pull-events rebuild dataset creator"
  description = "Create the rebuild's shadow dataset; BigQuery makes the creator its owner."
  permissions = [
    "bigquery.datasets.create",
  ]
}

resource "google_project_iam_member" "pipeline_rebuild_dataset_creator" {
  project = var.project_id
  role    = google_project_iam_custom_role.rebuild_dataset_creator.name
  member  = "serviceAccount:${google_service_account.pipeline.email}"
}

# --- analysts: read the tables, run queries -------------------------------------------------------------------

resource "google_bigquery_dataset_iam_member" "analyst_viewer" {
  for_each   = toset(var.analyst_members)
  dataset_id = google_bigquery_dataset.warehouse.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = each.value
}

resource "google_project_iam_member" "analyst_job_user" {
  for_each = toset(var.analyst_members)
  project  = var.project_id
  role     = "roles/bigquery.jobUser"
  member   = each.value
}
