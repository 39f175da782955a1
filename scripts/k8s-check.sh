#!/usr/bin/env bash
# `make k8s-check`: every static check of the Kubernetes artifacts, no cluster
# or Docker needed. Installs its tools first (scripts/tools.sh, fast when they
# are there). Runs every check even after a failure, prints a summary, and
# exits non-zero if anything failed.
#
#   helm lint --strict        both charts, default and ci/*-values.yaml
#   helm template | kubernetes-validate --strict
#                             both charts x values sets x Kubernetes 1.33, 1.37
#   check_rendered.py         the deployment contract on the rendered objects:
#                             probes, ports, env, security context, resources,
#                             Ingress paths, Secrets generated (two renders
#                             differ) and never in ConfigMaps, JWT key pair,
#                             NetworkPolicy edges, config hash rolls pods,
#                             the helm test pod (loadgen image, --smoke,
#                             admin ConfigMap/Secret refs, reaches all five),
#                             operator RBAC, the leader-election Lease Role
#                             (namespaced, one Lease), replicas/PDB
#   check_parity.py         chart == operator for the same configuration
#                             (k8s/examples/full.yaml vs ci/parity-values.yaml):
#                             ports, probes, env, security contexts, ... of
#                             the five service Deployments and the web
#                             console's, the NetworkPolicies,
#                             the stores' writable mounts (builds `render`);
#                             external-database.yaml vs
#                             ci/parity-external-values.yaml: NetworkPolicies
#   CRD / RBAC sync           chart crds/ == k8s/crd/inventorysystem.yaml,
#                             chart rules == k8s/operator/rbac.yaml, examples
#                             validate against the CRD (when those exist)
#   check-jsonschema          skaffold.yaml against schemas/skaffold-v4beta14.json
#   hadolint                  Dockerfile
#   yamllint                  k8s/, chart values, ci values, skaffold.yaml
#   ShellCheck                scripts/*.sh
#
# STOCKMESH_K8S_CHECK_STRICT=1 turns "skipped" (a generated file not there yet)
# into a failure.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

BIN="$(scripts/tools.sh)" || { echo "k8s-check: installing tools failed" >&2; exit 1; }
export PATH="$BIN:$PATH"
PY="$(dirname "$(readlink -f "$BIN/yamllint")")/python"

KUBE_VERSIONS=(1.33.0 1.37.0)
STOCKMESH=charts/stockmesh
OPERATOR=charts/stockmesh-operator
CRD_SRC=k8s/crd/inventorysystem.yaml
CRD_CHART=$OPERATOR/crds/inventorysystem.yaml
RBAC_SRC=k8s/operator/rbac.yaml
RULES_CHART=$OPERATOR/files/clusterrole-rules.yaml

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

passed=0 failed=0 skipped=0
failures=()
start=$SECONDS

# run <description> <command...>: runs a check, keeps its output on failure.
run() {
    local what="$1"
    shift
    local log="$OUT/log.$((passed + failed + skipped))"
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        printf '  ok    %s\n' "$what"
    else
        failed=$((failed + 1))
        failures+=("$what")
        printf '  FAIL  %s\n' "$what"
        sed 's/^/        /' "$log" | head -n 40
    fi
}

skip() {
    if [[ "${STOCKMESH_K8S_CHECK_STRICT:-0}" == 1 ]]; then
        failed=$((failed + 1))
        failures+=("$1 (missing: strict mode)")
        printf '  FAIL  %s (strict mode)\n' "$1"
    else
        skipped=$((skipped + 1))
        printf '  skip  %s\n' "$1"
    fi
}

show_error() { cat "$1"; return 1; }
fails() { ! "$@"; } # a negative check: the command must fail

render() { # render <chart> <out> [helm args...]
    local chart="$1" out="$2"
    shift 2
    helm template stockmesh "$chart" --namespace stockmesh "$@" >"$out"
}

validate() { # validate <file>: kubernetes-validate for every version
    local v rc=0
    for v in "${KUBE_VERSIONS[@]}"; do
        kubernetes-validate --strict --quiet -k "$v" "$1" || rc=1
    done
    return $rc
}

echo "== helm lint --strict"
run "lint $STOCKMESH (default values)" helm lint --strict "$STOCKMESH"
run "lint $STOCKMESH (ci/full-values.yaml)" helm lint --strict "$STOCKMESH" -f "$STOCKMESH/ci/full-values.yaml"
run "lint $STOCKMESH (ci/external-values.yaml)" helm lint --strict "$STOCKMESH" -f "$STOCKMESH/ci/external-values.yaml"
run "lint $STOCKMESH (ci/parity-values.yaml)" helm lint --strict "$STOCKMESH" -f "$STOCKMESH/ci/parity-values.yaml"
run "lint $STOCKMESH (ci/parity-external-values.yaml)" helm lint --strict "$STOCKMESH" -f "$STOCKMESH/ci/parity-external-values.yaml"
run "lint $OPERATOR (default values)" helm lint --strict "$OPERATOR"
run "lint $OPERATOR (ci/full-values.yaml)" helm lint --strict "$OPERATOR" -f "$OPERATOR/ci/full-values.yaml"

echo "== helm template | kubernetes-validate --strict (Kubernetes ${KUBE_VERSIONS[*]})"
declare -A SETS=(
    [default]=""
    [full]="-f $STOCKMESH/ci/full-values.yaml"
    [external]="-f $STOCKMESH/ci/external-values.yaml"
)
for set in default full external; do
    # shellcheck disable=SC2086
    if render "$STOCKMESH" "$OUT/stockmesh-$set.yaml" ${SETS[$set]} 2>"$OUT/render.err"; then
        run "validate $STOCKMESH ($set)" validate "$OUT/stockmesh-$set.yaml"
    else
        run "render $STOCKMESH ($set)" show_error "$OUT/render.err"
    fi
done
for set in default full; do
    args=()
    [[ $set == full ]] && args=(-f "$OPERATOR/ci/full-values.yaml")
    if render "$OPERATOR" "$OUT/operator-$set.yaml" --include-crds "${args[@]}" 2>"$OUT/render.err"; then
        run "validate $OPERATOR ($set, with CRD)" validate "$OUT/operator-$set.yaml"
    else
        run "render $OPERATOR ($set)" show_error "$OUT/render.err"
    fi
done

echo "== rendered objects against docs/deployment-contract.md"
check() { "$PY" scripts/check_rendered.py "$@"; }
run "stockmesh (default): contract, security, probes, secrets, netpol" \
    check stockmesh "$OUT/stockmesh-default.yaml"
run "stockmesh (full: TLS, Jaeger, loadgen)" check stockmesh "$OUT/stockmesh-full.yaml" --tls
run "stockmesh (external database/broker)" check stockmesh "$OUT/stockmesh-external.yaml" --mode external
# The web console (services.web) is on by default; off, nothing of it is
# rendered and no service admits it.
render "$STOCKMESH" "$OUT/stockmesh-no-web.yaml" --set services.web.enabled=false 2>/dev/null
run "stockmesh (services.web.enabled=false): no console, no / path, nothing admits it" \
    check stockmesh "$OUT/stockmesh-no-web.yaml" --no-web
run "stockmesh: a missing web console is reported" \
    fails check stockmesh "$OUT/stockmesh-no-web.yaml"
run "validate $STOCKMESH (services.web.enabled=false)" validate "$OUT/stockmesh-no-web.yaml"
render "$STOCKMESH" "$OUT/again.yaml" 2>/dev/null
run "stockmesh: every Secret value generated (two renders differ)" \
    check secrets-generated "$OUT/stockmesh-default.yaml" "$OUT/again.yaml"
render "$STOCKMESH" "$OUT/changed.yaml" --set logLevel=debug 2>/dev/null
run "stockmesh: a config change rolls every service (config-hash)" \
    check config-rolls "$OUT/stockmesh-default.yaml" "$OUT/changed.yaml"
# helm test: the contract check above holds the test pod to the project's
# loadgen image in smoke mode with the admin ConfigMap/Secret refs and the
# NetworkPolicies to let it reach all five services; it must notice each.
render "$STOCKMESH" "$OUT/test-external.yaml" --set loadgen.image=curlimages/curl:8.11.1 2>/dev/null
run "stockmesh: a helm test pod on an external image is reported" \
    fails check stockmesh "$OUT/test-external.yaml"
sed 's/\["--smoke", /[/' "$OUT/stockmesh-default.yaml" >"$OUT/test-no-smoke.yaml"
run "stockmesh: a helm test pod not in smoke mode is reported" \
    fails check stockmesh "$OUT/test-no-smoke.yaml"
sed 's/secretKeyRef: {name: stockmesh-admin, key: password}/secretKeyRef: {name: stockmesh-other, key: password}/' \
    "$OUT/stockmesh-default.yaml" >"$OUT/test-secret.yaml"
run "stockmesh: a helm test pod without the admin Secret ref is reported" \
    bash -c "'$PY' scripts/check_rendered.py stockmesh '$OUT/test-secret.yaml' | grep -q 'Pod/stockmesh-test-api: env STOCKMESH_ADMIN_PASSWORD'"
sed '/# No public API: only the API clients/,/- {port: 8080, protocol: TCP}/d' \
    "$OUT/stockmesh-default.yaml" >"$OUT/test-netpol.yaml"
run "stockmesh: a NetworkPolicy keeping the helm test pod from inventory is reported" \
    fails check stockmesh "$OUT/test-netpol.yaml"
run "stockmesh: no credential-like keys in values.yaml or ci/*.yaml" \
    bash -c "! grep -Eiq '^[[:space:]]*(password|secret|token|url)[[:space:]]*:' '$STOCKMESH/values.yaml' '$STOCKMESH/ci/'*.yaml"
run "operator: deployment, probes, least-privilege RBAC" check operator "$OUT/operator-default.yaml"
run "operator (full values: namespaced install, a Role + RoleBinding per watched namespace, image allow-list)" \
    check operator "$OUT/operator-full.yaml"
run "operator (full values): the operator is started with the watched namespaces and allowed images" \
    bash -c "grep -q -- '--namespace=shop,shop-staging' '$OUT/operator-full.yaml' && grep -q -- '--allowed-images=registry.example.com/stockmesh/,postgres,rabbitmq' '$OUT/operator-full.yaml'"
sed 's/^kind: Role$/kind: ClusterRole/' "$OUT/operator-full.yaml" >"$OUT/operator-widened.yaml"
run "operator: a namespaced install granting a ClusterRole is reported" \
    fails check operator "$OUT/operator-widened.yaml"
# Leader election (issue 16 item 4): the Lease Role is a Role in the
# operator's own namespace, limited to that one Lease; more than one replica
# only with leader election, and then a PodDisruptionBudget.
run "operator (default): leader election on, its Lease Role namespaced and limited to the Lease" \
    bash -c "grep -q -- '--leader-election=true' '$OUT/operator-default.yaml' && grep -q -- '--lease-name=stockmesh-stockmesh-operator\$' '$OUT/operator-default.yaml'"
run "operator (full values: 2 replicas): lease name/duration, anti-affinity, PodDisruptionBudget" \
    bash -c "grep -q -- '--lease-name=stockmesh-operator-leader\$' '$OUT/operator-full.yaml' && grep -q -- '--lease-duration-seconds=20\$' '$OUT/operator-full.yaml' && grep -q podAntiAffinity '$OUT/operator-full.yaml' && grep -q '^kind: PodDisruptionBudget' '$OUT/operator-full.yaml'"
sed 's/^kind: Role$/kind: ClusterRole/' "$OUT/operator-default.yaml" >"$OUT/operator-lease-cluster.yaml"
run "operator: a Lease role granted cluster-wide is reported" \
    bash -c "'$PY' scripts/check_rendered.py operator '$OUT/operator-lease-cluster.yaml' | grep -q 'grants Leases cluster-wide'"
sed '/resourceNames: \[stockmesh-stockmesh-operator\]/d' "$OUT/operator-default.yaml" >"$OUT/operator-lease-any.yaml"
run "operator: a Lease Role not limited to the one Lease is reported" \
    bash -c "'$PY' scripts/check_rendered.py operator '$OUT/operator-lease-any.yaml' | grep -q 'not limited to the Lease'"
sed '/^# Source: stockmesh-operator\/templates\/pdb.yaml$/,/^---$/d' "$OUT/operator-full.yaml" >"$OUT/operator-no-pdb.yaml"
run "operator: 2 replicas without a PodDisruptionBudget are reported" \
    bash -c "'$PY' scripts/check_rendered.py operator '$OUT/operator-no-pdb.yaml' | grep -q 'no PodDisruptionBudget'"
run "operator: 2 replicas without leader election are refused by the chart" \
    fails render "$OPERATOR" "$OUT/operator-no-election.yaml" --set replicas=2 --set leaderElection.enabled=false
render "$OPERATOR" "$OUT/operator-single.yaml" --set leaderElection.enabled=false 2>/dev/null
run "operator (leader election off): one replica, Recreate, no Lease Role" \
    check operator "$OUT/operator-single.yaml"
# The helm arguments skaffold's default deploy passes to the operator chart
# (image templates replaced by sample values), so that the InventorySystem it
# installs is checked against the CRD exactly as skaffold would make it.
skaffold_operator_args() {
    "$PY" - <<'PY'
import re, yaml
cfg = yaml.safe_load(open("skaffold.yaml"))
rel = next(r for r in cfg["deploy"]["helm"]["releases"] if r["chartPath"] == "charts/stockmesh-operator")
def sample(v):
    v = re.sub(r"\{\{\.IMAGE_REPO_stockmesh_([a-z_]+)\}\}", lambda m: "stockmesh/" + m.group(1).replace("_", "-"), str(v))
    return re.sub(r"\{\{\.IMAGE_(TAG|DIGEST)_[a-z_]+\}\}", "0123abc-dirty", v)
for k, v in rel.get("setValueTemplates", {}).items():
    print("--set-string", f"{k}={sample(v)}", sep="\n")
for k, v in rel.get("setValues", {}).items():
    print("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}", sep="\n")
for k, v in rel.get("setFiles", {}).items():
    print("--set-file", f"{k}={v}", sep="\n")
PY
}
if [[ -f k8s/examples/minimal.yaml ]]; then
    mapfile -t sk_args < <(skaffold_operator_args)
    if render "$OPERATOR" "$OUT/example.yaml" -s templates/example-system.yaml "${sk_args[@]}" \
        2>"$OUT/render.err"; then
        if [[ -f $CRD_SRC ]]; then
            run "skaffold's InventorySystem (minimal.yaml + skaffold's overrides) against the CRD" \
                check cr-against-crd "$CRD_SRC" "$OUT/example.yaml"
        fi
    else
        run "render the example InventorySystem through the operator chart" show_error "$OUT/render.err"
    fi
else
    skip "example InventorySystem through the operator chart (k8s/examples/minimal.yaml not there yet)"
fi

echo "== chart and operator parity (issue 7)"
# The operator's objects for k8s/examples/full.yaml (its `render` binary, built
# quietly into \$CARGO_TARGET_DIR or target/) against the chart rendered with the
# equivalent values, release named like the resource.
PARITY_CR=k8s/examples/full.yaml
PARITY_VALUES=$STOCKMESH/ci/parity-values.yaml
if ! command -v cargo >/dev/null 2>&1; then
    skip "chart/operator parity (cargo not installed)"
elif ! cargo run -q --locked -p stockmesh-operator --bin render -- "$PARITY_CR" --redact \
    >"$OUT/parity-operator.yaml" 2>"$OUT/render.err"; then
    run "build and run the operator's render for $PARITY_CR" show_error "$OUT/render.err"
elif ! helm template shop "$STOCKMESH" --namespace stockmesh -f "$PARITY_VALUES" \
    >"$OUT/parity-chart.yaml" 2>"$OUT/render.err"; then
    run "render $STOCKMESH ($PARITY_VALUES)" show_error "$OUT/render.err"
else
    run "parity: chart ($PARITY_VALUES) == operator ($PARITY_CR): ports, probes, env, security" \
        "$PY" scripts/check_parity.py "$OUT/parity-operator.yaml" "$OUT/parity-chart.yaml"
    # The check itself must notice a difference: a changed probe path.
    sed 's#path: /readyz#path: /ready#' "$OUT/parity-chart.yaml" >"$OUT/parity-broken.yaml"
    run "parity: a changed readiness path is reported" \
        fails "$PY" scripts/check_parity.py "$OUT/parity-operator.yaml" "$OUT/parity-broken.yaml"
    # ... and a grace period out of step with drain + grace, even when both
    # sides carry the same wrong number, and a missing preStop drain.
    sed 's#terminationGracePeriodSeconds: 28#terminationGracePeriodSeconds: 60#' \
        "$OUT/parity-operator.yaml" >"$OUT/parity-op-grace.yaml"
    sed 's#terminationGracePeriodSeconds: 28#terminationGracePeriodSeconds: 60#' \
        "$OUT/parity-chart.yaml" >"$OUT/parity-chart-grace.yaml"
    run "parity: terminationGracePeriodSeconds out of step with the shutdown numbers is reported" \
        fails "$PY" scripts/check_parity.py "$OUT/parity-op-grace.yaml" "$OUT/parity-chart-grace.yaml"
    sed 's#path: /drain#path: /drained#' "$OUT/parity-chart.yaml" >"$OUT/parity-chart-hook.yaml"
    run "parity: a changed preStop hook is reported" \
        fails "$PY" scripts/check_parity.py "$OUT/parity-operator.yaml" "$OUT/parity-chart-hook.yaml"
    # NetworkPolicies: a rule widened to any address, and a store whose log
    # directory is not a volume, are reported.
    sed 's#ipBlock: {cidr: 10.244.0.0/16}#ipBlock: {cidr: 0.0.0.0/0}#' \
        "$OUT/parity-chart.yaml" >"$OUT/parity-chart-np.yaml"
    run "parity: a NetworkPolicy rule widened to any address is reported" \
        fails "$PY" scripts/check_parity.py "$OUT/parity-operator.yaml" "$OUT/parity-chart-np.yaml"
    sed 's#mountPath: /var/log/rabbitmq#mountPath: /var/log/elsewhere#' \
        "$OUT/parity-chart.yaml" >"$OUT/parity-chart-logs.yaml"
    run "parity: a store's writable mounts out of step are reported" \
        fails "$PY" scripts/check_parity.py "$OUT/parity-operator.yaml" "$OUT/parity-chart-logs.yaml"
    # The web console: services that stop admitting it, and a chart without
    # it, are reported.
    sed "/# The web console's system page: \/readyz and \/metrics./,/- {port: 8080, protocol: TCP}/d" \
        "$OUT/parity-chart.yaml" >"$OUT/parity-chart-web-np.yaml"
    run "parity: services whose policies do not admit the web console are reported" \
        fails "$PY" scripts/check_parity.py "$OUT/parity-operator.yaml" "$OUT/parity-chart-web-np.yaml"
    helm template shop "$STOCKMESH" --namespace stockmesh -f "$PARITY_VALUES" \
        --set services.web.enabled=false >"$OUT/parity-chart-no-web.yaml" 2>/dev/null
    run "parity: a web console only the operator renders is reported" \
        fails "$PY" scripts/check_parity.py "$OUT/parity-operator.yaml" "$OUT/parity-chart-no-web.yaml"
    run "validate $STOCKMESH (parity values)" validate "$OUT/parity-chart.yaml"
    run "stockmesh (parity values): contract" check stockmesh "$OUT/parity-chart.yaml" --tls
    # External stores: the NetworkPolicies name the same networks and ports.
    PARITY_EXT_CR=k8s/examples/external-database.yaml
    PARITY_EXT_VALUES=$STOCKMESH/ci/parity-external-values.yaml
    if ! cargo run -q --locked -p stockmesh-operator --bin render -- "$PARITY_EXT_CR" --redact \
        >"$OUT/parity-ext-operator.yaml" 2>"$OUT/render.err"; then
        run "run the operator's render for $PARITY_EXT_CR" show_error "$OUT/render.err"
    elif ! helm template shop "$STOCKMESH" --namespace stockmesh -f "$PARITY_EXT_VALUES" \
        >"$OUT/parity-ext-chart.yaml" 2>"$OUT/render.err"; then
        run "render $STOCKMESH ($PARITY_EXT_VALUES)" show_error "$OUT/render.err"
    else
        run "parity: chart ($PARITY_EXT_VALUES) == operator ($PARITY_EXT_CR): NetworkPolicies" \
            "$PY" scripts/check_parity.py "$OUT/parity-ext-operator.yaml" "$OUT/parity-ext-chart.yaml" \
            --only networkpolicies
        sed 's#port: 5671, protocol#port: 5672, protocol#' \
            "$OUT/parity-ext-chart.yaml" >"$OUT/parity-ext-port.yaml"
        run "parity: another external broker port is reported" \
            fails "$PY" scripts/check_parity.py "$OUT/parity-ext-operator.yaml" "$OUT/parity-ext-port.yaml" \
            --only networkpolicies
    fi
fi

echo "== generated operator artifacts in sync with the chart"
if [[ -f $CRD_SRC ]]; then
    run "$CRD_CHART == $CRD_SRC" cmp "$CRD_SRC" "$CRD_CHART"
    shopt -s nullglob
    examples=(k8s/examples/*.yaml)
    shopt -u nullglob
    if ((${#examples[@]})); then
        run "k8s/examples/*.yaml against the CRD schema (unknown fields rejected)" \
            check cr-against-crd "$CRD_SRC" "${examples[@]}"
    fi
else
    skip "$CRD_CHART == $CRD_SRC ($CRD_SRC not generated yet; chart has a placeholder)"
fi
if [[ -f $RBAC_SRC ]]; then
    run "$RULES_CHART == ClusterRole rules of $RBAC_SRC" check rbac-equal "$RULES_CHART" "$RBAC_SRC"
    run "validate $RBAC_SRC" validate "$RBAC_SRC"
else
    skip "operator RBAC rules == $RBAC_SRC (not written yet; chart uses its own rules)"
fi

echo "== k8s/ manifests"
run "validate k8s/jaeger/jaeger.yaml" validate k8s/jaeger/jaeger.yaml

echo "== skaffold, Dockerfile, YAML, shell"
run "skaffold.yaml against schemas/skaffold-v4beta14.json" \
    check-jsonschema --schemafile schemas/skaffold-v4beta14.json skaffold.yaml
run "hadolint Dockerfile" hadolint Dockerfile
run "yamllint (k8s/, chart values, ci values, skaffold.yaml)" \
    yamllint --strict -c .yamllint k8s "$STOCKMESH/values.yaml" "$STOCKMESH/ci" "$STOCKMESH/Chart.yaml" \
    "$OPERATOR/values.yaml" "$OPERATOR/ci" "$OPERATOR/Chart.yaml" "$OPERATOR/files" \
    skaffold.yaml .yamllint
run "shellcheck scripts/*.sh" shellcheck -x scripts/*.sh "$STOCKMESH/files/postgres-init.sh"

echo
echo "k8s-check: $passed passed, $failed failed, $skipped skipped ($((SECONDS - start))s)"
if ((failed)); then
    printf '  failed: %s\n' "${failures[@]}"
    exit 1
fi
