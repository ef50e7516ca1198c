# Providers cannot be fetched on the development machines: `terraform init` / `validate` run only where the
# registry is reachable. tests/deploy checks this configuration structurally instead (see README.md).
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
    chainguard = {
      source  = "chainguard-dev/chainguard"
      version = ">= 0.1.24, < 1.0.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

# Authenticates with the token `chainctl auth login` leaves (the provider's default console API).
provider "chainguard" {}
