terraform {
  # 1.9: validation conditions may refer to other variables; test files need 1.6+.
  required_version = ">= 1.9.0, < 2.0.0"

  # No providers: this module only renders the RayCluster object. Apply it with
  # ../kubernetes/cluster (kubernetes_manifest) once the KubeRay operator's CRD exists.
}
