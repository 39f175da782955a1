#!/usr/bin/env bash
# Copies the operator's generated artifacts into charts/stockmesh-operator:
#   k8s/crd/inventorysystem.yaml  -> crds/inventorysystem.yaml (byte for byte)
#   k8s/operator/rbac.yaml        -> files/clusterrole-rules.yaml (its ClusterRole rules)
# Run after `make crd` or an RBAC change; scripts/k8s-check.sh fails while
# they differ.
set -euo pipefail
cd "$(dirname "$0")/.."

chart=charts/stockmesh-operator
if [[ -f k8s/crd/inventorysystem.yaml ]]; then
    cp k8s/crd/inventorysystem.yaml "$chart/crds/inventorysystem.yaml"
    echo "synced $chart/crds/inventorysystem.yaml"
else
    echo "k8s/crd/inventorysystem.yaml not generated yet (make crd)" >&2
fi
if [[ -f k8s/operator/rbac.yaml ]]; then
    python3 - k8s/operator/rbac.yaml "$chart/files/clusterrole-rules.yaml" <<'PY'
import sys, yaml
src, dst = sys.argv[1], sys.argv[2]
roles = [d for d in yaml.safe_load_all(open(src)) if d and d.get("kind") == "ClusterRole"]
if len(roles) != 1:
    sys.exit(f"{src}: expected one ClusterRole, found {len(roles)}")
with open(dst, "w") as f:
    f.write(f"# ClusterRole rules of stockmesh-operator, copied from {src} by\n"
            "# scripts/sync-operator-chart.sh. Do not edit: change the source.\n")
    yaml.safe_dump(roles[0]["rules"], f, default_flow_style=None, sort_keys=False)
PY
    echo "synced $chart/files/clusterrole-rules.yaml"
else
    echo "k8s/operator/rbac.yaml not written yet" >&2
fi
