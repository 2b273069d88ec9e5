terraform {
  # 1.9: validation conditions may refer to other variables (mode/external_host);
  # test files need 1.6+.
  required_version = ">= 1.9.0, < 2.0.0"

  # No providers: this module only renders objects (in-cluster mode) and connection
  # details. Apply them with ../kubernetes/cluster (kubernetes_manifest).
}
