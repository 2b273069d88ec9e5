terraform {
  # 1.9: validation conditions may refer to other variables; test files need 1.6+.
  required_version = ">= 1.9.0, < 2.0.0"

  # No providers: this root composes the render modules only, so it inits, validates,
  # tests and plans offline. Applying what it renders is the job of the provider
  # wrappers in ../../modules/kubernetes (see README.md: operator first, then one
  # provider alias or root per Kubernetes cluster).
}
