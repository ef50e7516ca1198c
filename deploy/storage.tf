# The landing zone. Every object is written once (create-only uploads) and kept for good: the warehouse can be
# rebuilt from it (rebuild_from_landing), and an object the pipeline has not loaded yet must never go away.
resource "google_storage_bucket" "landing" {
  name     = var.landing_bucket_name
  location = var.landing_location

  # IAM only (no object ACLs), never public: the roles in iam.tf are the whole story of who reads and writes.
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # A destroy must never take the landing zone with it.
  force_destroy = false

  # No versioning: objects are never overwritten (uploads carry ifGenerationMatch=0 and nobody holds
  # storage.objects.delete or update), so there are no old versions to keep. Soft delete covers a person
  # deleting an object by hand.
  versioning {
    enabled = false
  }

  soft_delete_policy {
    retention_duration_seconds = var.landing_soft_delete_days * 86400
  }

  # Colder storage as objects age; no Delete action, ever (tests/deploy check it).
  lifecycle_rule {
    condition {
      age                   = var.landing_nearline_after_days
      matches_storage_class = ["STANDARD"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }

  lifecycle_rule {
    condition {
      age                   = var.landing_coldline_after_days
      matches_storage_class = ["NEARLINE"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "COLDLINE"
    }
  }

  lifecycle {
    prevent_destroy = true
  }
}
