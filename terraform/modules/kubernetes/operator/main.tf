# The KubeRay operator, through its Helm chart at a pinned version. Apply this root (or
# this module) BEFORE any RayCluster: kubernetes_manifest reads the RayCluster CRD at
# plan time, and the chart is what installs it.

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = var.repository
  chart            = "kuberay-operator"
  version          = var.chart_version
  namespace        = var.namespace
  create_namespace = true
  atomic           = true # a failed install or upgrade is rolled back
  wait             = true # the CRDs and the operator are ready when this is

  # only when given: the chart's default is to watch every namespace
  values = [for ns in [var.watch_namespaces] : yamlencode({ watchNamespace = ns }) if length(ns) > 0]
}
