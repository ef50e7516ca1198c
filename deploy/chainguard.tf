# Chainguard delivers every event of the group (organization or folder) to the receiver's URL.
resource "chainguard_subscription" "receiver" {
  parent_id = var.chainguard_group
  sink      = google_cloud_run_v2_service.receiver.uri
}
