# The dataset only: the pipeline creates and evolves its tables (ensure_tables in
# pull_events_dagster/warehouse/bigquery.py: schema from schema.py, partitioning and clustering from LAYOUT, columns
# added in place, tables re-laid out by a rebuild). Declaring them here too would make two owners of one schema
# (see README.md, "Tables: the pipeline's, not Terraform's").
resource "google_bigquery_dataset" "warehouse" {
  dataset_id  = var.dataset_id
  location    = var.bigquery_location
  description = "pull-events: Chainguard registry pull events and the tables built from them (tables created by the pipeline)."

  # Tables hold the only loaded copy of each row's load metadata; a destroy must not drop them with the dataset.
  delete_contents_on_destroy = false

  lifecycle {
    prevent_destroy = true
  }
}
