terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    # patch releases only
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.36.0"
    }
  }
}
