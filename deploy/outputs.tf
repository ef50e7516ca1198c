output "receiver_url" {
  description = "URL of the receiver: the Chainguard subscription's sink."
  value       = google_cloud_run_v2_service.receiver.uri
}

output "pipeline_service_account" {
  description = "Service account the Dagster code location, daemon and runs run as."
  value       = google_service_account.pipeline.email
}

output "dagster_webserver_service_account" {
  description = "Service account the Dagster webserver runs as (no landing or warehouse access)."
  value       = google_service_account.dagster_webserver.email
}

# The pipeline's settings for this deployment (pull_events/settings.py reads them): give them to the Dagster
# code location, daemon and runs.
output "pipeline_environment" {
  description = "Environment variables of the Dagster code location, daemon and runs for this deployment."
  value = {
    PULL_EVENTS_LANDING   = local.landing_uri
    PULL_EVENTS_WAREHOUSE = "bigquery://${var.project_id}/${google_bigquery_dataset.warehouse.dataset_id}"
  }
}
