#!/usr/bin/env bash
# Kind e2e: create a cluster, build and load the images, install the chart with the CPU mock
# engine, run tests/e2e/ against it, delete the cluster. Needs docker, kind, kubectl and helm.
#   KEEP_CLUSTER=1  keep the cluster afterwards (then: kind delete cluster --name tutor-e2e)
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-tutor-e2e}
NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.32.2}
NAMESPACE=${TUTOR_E2E_NAMESPACE:-tutor-e2e}
RELEASE=${TUTOR_E2E_RELEASE:-tutor-serving}
VALUES=tests/e2e/values-kind.yaml
PYTHON=${PYTHON:-.venv/bin/python}
TAG=e2e  # the tags in $VALUES

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 1; }
done

export KUBECONFIG
KUBECONFIG=$(mktemp)
finish() {
  status=$?
  if [ "$status" -ne 0 ]; then
    kubectl -n "$NAMESPACE" get all,tutorsessions,tutorengines -o wide || true
    kubectl -n "$NAMESPACE" get events --sort-by=.lastTimestamp | tail -40 || true
    kubectl -n "$NAMESPACE" logs -l app.kubernetes.io/component=operator --tail=200 || true
    kubectl -n "$NAMESPACE" logs -l app.kubernetes.io/component=gateway --tail=100 || true
  fi
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then kind delete cluster --name "$CLUSTER" || true; fi
  rm -f "$KUBECONFIG"
  exit "$status"
}
trap finish EXIT

kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --kubeconfig "$KUBECONFIG" --wait 120s
make image-serving image-engine-mock IMAGE_TAG="$TAG"
kind load docker-image --name "$CLUSTER" "ghcr.io/vts/tutor-serving:$TAG" "ghcr.io/vts/tutor-engine-mock:$TAG"

helm install "$RELEASE" charts/tutor-serving --namespace "$NAMESPACE" --create-namespace \
  --values "$VALUES" --wait --timeout 5m
helm test "$RELEASE" --namespace "$NAMESPACE" --timeout 2m

TUTOR_E2E_KUBECONFIG=$KUBECONFIG TUTOR_E2E_NAMESPACE=$NAMESPACE TUTOR_E2E_RELEASE=$RELEASE \
  "$PYTHON" -m pytest tests/e2e -v -p no:cacheprovider
