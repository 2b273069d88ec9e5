# Applies rendered objects (RayClusters, the Keeper's, the DB's) to the Kubernetes
# cluster of the `kubernetes` provider this module is given. One Kubernetes cluster
# per instance: Terraform cannot loop over providers, so a root with N clusters uses
# one provider alias (or one root) per cluster and one instance of this module each:
#
#   module "cluster_c1" {
#     source         = "../../modules/kubernetes/cluster"
#     providers      = { kubernetes = kubernetes.c1 }
#     manifests_yaml = [module.c1.manifest_yaml]
#   }

locals {
  objects = {
    for y in var.manifests_yaml :
    "${yamldecode(y).kind}/${yamldecode(y).metadata.namespace}/${yamldecode(y).metadata.name}" => yamldecode(y)
  }
}

resource "kubernetes_manifest" "object" {
  for_each = local.objects
  manifest = each.value

  # KubeRay writes these after creation; do not fight it over them.
  computed_fields = ["metadata.annotations", "metadata.labels", "metadata.finalizers"]

  dynamic "wait" {
    for_each = var.wait_for_rayclusters && each.value.kind == "RayCluster" ? [1] : []
    content {
      fields = { "status.state" = "ready" }
    }
  }

  timeouts {
    create = "20m"
    update = "20m"
    delete = "10m"
  }
}
