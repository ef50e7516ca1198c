variable "project_id" {
  description = "GCP project that holds the landing bucket, the BigQuery dataset, the receiver and the service accounts."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run receiver."
  type        = string
  default     = "us-central1"
}

variable "landing_bucket_name" {
  description = "Name of the landing bucket (globally unique). The receiver writes NDJSON objects into it; the pipeline loads them."
  type        = string
}

variable "landing_prefix" {
  description = "Folder under the bucket that holds the landing zone (PULL_EVENTS_LANDING = gs://BUCKET/PREFIX); empty for the bucket's root."
  type        = string
  default     = ""
}

variable "landing_location" {
  description = "Location of the landing bucket. Keep it in the US: BigQuery load jobs into the US dataset read it (see bigquery_location)."
  type        = string
  default     = "US"
}

variable "landing_nearline_after_days" {
  description = "Age in days after which a landed object moves to NEARLINE. Later than the reconciliation window (PULL_EVENTS_RECONCILE_DAYS) so the pipeline's regular reads stay on STANDARD."
  type        = number
  default     = 30

  validation {
    condition     = var.landing_nearline_after_days >= 8
    error_message = "landing_nearline_after_days must be at least 8: the reconciliation pass re-reads the last 7 days."
  }
}

variable "landing_coldline_after_days" {
  description = "Age in days after which a landed object moves from NEARLINE to COLDLINE. Objects are never deleted."
  type        = number
  default     = 90

  validation {
    condition     = var.landing_coldline_after_days >= 60
    error_message = "landing_coldline_after_days must be at least 60: NEARLINE bills 30 days at least, and the move must come after NEARLINE's."
  }
}

variable "landing_soft_delete_days" {
  description = "Days a deleted landing object stays restorable (GCS soft delete; 0 turns it off). Nothing here deletes objects: this guards against a person doing so."
  type        = number
  default     = 7

  validation {
    condition     = var.landing_soft_delete_days == 0 || (var.landing_soft_delete_days >= 7 && var.landing_soft_delete_days <= 90)
    error_message = "landing_soft_delete_days must be 0 or between 7 and 90 (GCS's limits)."
  }
}

variable "bigquery_location" {
  description = "Location of the BigQuery dataset. Only US: the pipeline creates the rebuild's shadow dataset (<dataset>__rebuild) itself, without a location setting, so BigQuery puts it in US, and a rebuild's transaction reads both datasets."
  type        = string
  default     = "US"

  validation {
    condition     = var.bigquery_location == "US"
    error_message = "bigquery_location must be US until the pipeline has a BigQuery location setting (see deploy/README.md)."
  }
}

variable "dataset_id" {
  description = "BigQuery dataset the pipeline loads into (PULL_EVENTS_WAREHOUSE = bigquery://PROJECT/DATASET). The pipeline creates its tables."
  type        = string
  default     = "cloudevents_pull_event_recorder"
}

variable "receiver_image" {
  description = "Container image of the receiver, built from the project's Dockerfile (e.g. REGION-docker.pkg.dev/PROJECT/REPO/pull-events-receiver@sha256:...)."
  type        = string
}

variable "receiver_service_name" {
  description = "Name of the Cloud Run service running the receiver."
  type        = string
  default     = "pull-events-receiver"
}

variable "receiver_threads" {
  description = "App threads of the receiver's one worker process (PULL_EVENTS_THREADS), and so the requests Cloud Run sends one instance at once: every request in flight holds a thread while it waits for its group commit."
  type        = number
  default     = 64

  validation {
    condition     = var.receiver_threads >= 1 && var.receiver_threads <= 1000
    error_message = "receiver_threads must be between 1 and 1000 (Cloud Run's most concurrent requests per instance)."
  }
}

variable "receiver_min_instances" {
  description = "Instances kept warm at all times, so that deliveries never wait for a cold start (at least 1)."
  type        = number
  default     = 1

  validation {
    condition     = var.receiver_min_instances >= 1
    error_message = "receiver_min_instances must be at least 1: a cold start delays deliveries by seconds."
  }
}

variable "receiver_max_instances" {
  description = "Most receiver instances. Each instance group-commits on its own, so fewer, busier instances make fewer, larger objects."
  type        = number
  default     = 10

  validation {
    condition     = var.receiver_max_instances >= 1 && var.receiver_max_instances <= 100
    error_message = "receiver_max_instances must be between 1 and 100."
  }
}

variable "receiver_cpu" {
  description = "CPUs of one receiver instance (Cloud Run limit): the receiver is one process, so 1 is its share."
  type        = string
  default     = "1"
}

variable "receiver_memory" {
  description = "Memory of one receiver instance (Cloud Run limit): up to PULL_EVENTS_MAX_PENDING_EVENTS events queued, the token cache, 64 threads."
  type        = string
  default     = "1Gi"
}

variable "chainguard_group" {
  description = "Chainguard organization or folder id whose events are delivered: the subscription's parent and the receiver's CHAINGUARD_GROUP (tokens carry sub = webhook:<group>)."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{40}(/[0-9a-f]{16})*$", var.chainguard_group))
    error_message = "chainguard_group must be a Chainguard group UIDP: 40 hex digits, then /16 hex digits per folder level."
  }
}

variable "chainguard_issuer" {
  description = "OIDC issuer whose tokens the receiver accepts (CHAINGUARD_ISSUER)."
  type        = string
  default     = "https://issuer.enforce.dev"
}

variable "analyst_members" {
  description = "IAM members (e.g. group:analysts@example.com) who query the dataset: read its tables and run query jobs in the project."
  type        = list(string)
  default     = []
}
