terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    # 2.x, patch releases only: 3.x changed the provider's configuration syntax
    # (`kubernetes {}` block -> attribute) that terraform/README.md shows.
    helm = {
      source  = "hashicorp/helm"
      version = "~> 2.17.0"
    }
  }
}
