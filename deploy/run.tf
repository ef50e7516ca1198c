locals {
  # PULL_EVENTS_LANDING: gs://BUCKET or gs://BUCKET/PREFIX (pull_events/settings.py, parse_landing).
  landing_uri = var.landing_prefix == "" ? "gs://${google_storage_bucket.landing.name}" : "gs://${google_storage_bucket.landing.name}/${var.landing_prefix}"
}

# The receiver: one gunicorn worker process per instance (the image's default) with receiver_threads app threads.
# Group commit gathers the requests in flight within one process, so an instance takes as many requests at once as
# it has threads, and there are few instances.
resource "google_cloud_run_v2_service" "receiver" {
  name     = var.receiver_service_name
  location = var.region
  # Chainguard delivers from the internet.
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = true

  # The first revision's startup probe (/readyz) reads the bucket's metadata: grant that before it starts.
  depends_on = [google_storage_bucket_iam_member.receiver_landing_writer]

  template {
    service_account = google_service_account.receiver.email
    # Every request in flight holds an app thread while it waits for its commit; more would queue in the front.
    max_instance_request_concurrency = var.receiver_threads
    # A delivery is answered within PULL_EVENTS_COMMIT_TIMEOUT_S (10 s) plus the read deadlines.
    timeout = "60s"

    scaling {
      min_instance_count = var.receiver_min_instances
      max_instance_count = var.receiver_max_instances
    }

    containers {
      image = var.receiver_image

      ports {
        # PORT is set by Cloud Run from this; the receiver reads it (PORT, default 8080).
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.receiver_cpu
          memory = var.receiver_memory
        }
        # CPU while requests are in flight is enough: commits happen while their requests wait.
        cpu_idle          = true
        startup_cpu_boost = true
      }

      env {
        name  = "PULL_EVENTS_LANDING"
        value = local.landing_uri
      }
      env {
        name  = "CHAINGUARD_GROUP"
        value = var.chainguard_group
      }
      env {
        name  = "CHAINGUARD_ISSUER"
        value = var.chainguard_issuer
      }
      env {
        name  = "PULL_EVENTS_THREADS"
        value = tostring(var.receiver_threads)
      }

      # Ready only when a delivery would be acknowledged: the bucket answers and the issuer's keys are usable.
      startup_probe {
        http_get {
          path = "/readyz"
        }
        period_seconds    = 5
        timeout_seconds   = 4
        failure_threshold = 12
      }

      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds  = 30
        timeout_seconds = 5
      }
    }
  }
}

# Chainguard's deliveries carry Chainguard's OIDC token, not a Google identity: Cloud Run must let every caller
# through, and the receiver verifies the token itself (issuer, audience, webhook:<group>, body digest).
resource "google_cloud_run_v2_service_iam_member" "receiver_public" {
  name     = google_cloud_run_v2_service.receiver.name
  location = google_cloud_run_v2_service.receiver.location
  role     = "roles/run.invoker"
  member   = "allUsers"
}
