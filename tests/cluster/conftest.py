"""Gateway cluster-mode tests reuse the cluster fixtures from ``tests.support.cluster``."""

from tests.support.cluster import cluster, kube, kube_api, kubelet, operator_factory

__all__ = ["cluster", "kube", "kube_api", "kubelet", "operator_factory"]
