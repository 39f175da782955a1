#!/usr/bin/env bash
# `make e2e-k8s`: end-to-end check of a running system on a cluster (after
# `make kind-up deploy`, or `skaffold run`). Fails loudly at the first broken
# step:
#   1. the InventorySystem is Ready (kubectl wait)
#   2. register a user and log in through the Ingress
#   3. the admin creates a product and sets its stock
#   4. the user places an order (201, CONFIRMED)
#   5. the order's notification arrives
#   6. the web console (when spec.services.web is enabled) answers at / of
#      the Ingress, and its admin system page sees all five services ready
#      (the console reaches their /readyz and /metrics through the
#      NetworkPolicies); a shopper is refused it
#   7. Jaeger has the order's trace, spanning order -> product/inventory ->
#      notification (Jaeger HTTP API /api/traces?service=order)
#
# Environment (defaults fit `make kind-up deploy`):
#   STOCKMESH_NAMESPACE  namespace of the InventorySystem   (stockmesh)
#   STOCKMESH_NAME       its name      (metadata.name of k8s/examples/minimal.yaml)
#   STOCKMESH_BASE_URL   the Ingress   (http://localhost:8080; kind maps port 80 there)
#   JAEGER_NAMESPACE / JAEGER_SERVICE  (observability / jaeger; port-forwarded here)
#   E2E_TIMEOUT          seconds to wait for Ready                  (600)
set -euo pipefail
cd "$(dirname "$0")/.."

NS="${STOCKMESH_NAMESPACE:-stockmesh}"
NAME="${STOCKMESH_NAME:-}"
if [[ -z "$NAME" ]]; then
    NAME="$(sed -n 's/^  name: *//p' k8s/examples/minimal.yaml 2>/dev/null | head -n1)"
    NAME="${NAME:-minimal}"
fi
BASE="${STOCKMESH_BASE_URL:-http://localhost:8080}"
JAEGER_NS="${JAEGER_NAMESPACE:-observability}"
JAEGER_SVC="${JAEGER_SERVICE:-jaeger}"
TIMEOUT="${E2E_TIMEOUT:-600}"

for tool in kubectl curl jq; do
    command -v "$tool" >/dev/null || { echo "e2e-k8s: needs $tool on PATH" >&2; exit 1; }
done

step=0
STEP() { step=$((step + 1)); printf '\n[%d] %s\n' "$step" "$*"; }
die() { printf 'e2e-k8s: FAILED at step %d: %s\n' "$step" "$*" >&2; exit 1; }

# api <method> <path> [json] [token]: sets $body and $status.
body="" status=""
api() {
    local method="$1" path="$2" data="${3:-}" token="${4:-}" out
    local args=(-sS -X "$method" -w '\n%{http_code}' --max-time 20
        -H 'Content-Type: application/json')
    if [[ -n "$token" ]]; then args+=(-H "Authorization: Bearer $token"); fi
    if [[ -n "$data" ]]; then args+=(--data "$data"); fi
    out="$(curl "${args[@]}" "$BASE$path")" || die "$method $path: no answer from $BASE"
    status="${out##*$'\n'}"
    body="${out%$'\n'*}"
}

expect() { # expect <status> <what> <body>
    [[ "$status" == "$1" ]] || die "$2: HTTP $status, want $1: $3"
    echo "    ok: $2 ($status)"
}

STEP "InventorySystem $NS/$NAME becomes Ready (up to ${TIMEOUT}s)"
kubectl -n "$NS" get invsys "$NAME" >/dev/null || die "no InventorySystem $NS/$NAME"
if ! kubectl -n "$NS" wait "invsys/$NAME" --for=condition=Ready --timeout="${TIMEOUT}s"; then
    kubectl -n "$NS" describe invsys "$NAME" >&2 || true
    die "invsys/$NAME is not Ready"
fi
kubectl -n "$NS" get invsys "$NAME"

STEP "register and log in through the Ingress ($BASE)"
email="e2e-$(date +%s)-$RANDOM@stockmesh.test"
password="e2e-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
api POST /api/users/register "{\"email\":\"$email\",\"password\":\"$password\",\"name\":\"e2e\"}"
expect 201 "register $email" "$body"
api POST /api/users/login "{\"email\":\"$email\",\"password\":\"$password\"}"
expect 200 "login" "$body"
token="$(jq -er .token <<<"$body")" || die "login answered no token: $body"

STEP "admin creates a product with stock"
admin_email="$(kubectl -n "$NS" get configmap "$NAME-config" -o jsonpath='{.data.STOCKMESH_ADMIN_EMAIL}')"
admin_password="$(kubectl -n "$NS" get secret "$NAME-admin" -o jsonpath='{.data.password}' | base64 -d)"
[[ -n "$admin_email" && -n "$admin_password" ]] || die "cannot read the admin credentials ($NAME-config, $NAME-admin)"
api POST /api/users/login "{\"email\":\"$admin_email\",\"password\":\"$admin_password\"}"
expect 200 "admin login" "$body"
admin_token="$(jq -er .token <<<"$body")" || die "admin login answered no token: $body"
api POST /api/products "{\"name\":\"e2e widget $RANDOM\",\"description\":\"e2e\",\"price\":{\"amount_minor\":1999,\"currency\":\"EUR\"}}" "$admin_token"
expect 201 "create product" "$body"
product_id="$(jq -er .id <<<"$body")" || die "no product id: $body"
api PUT "/api/products/$product_id/stock" '{"quantity":10}' "$admin_token"
[[ "$status" == 200 || "$status" == 204 ]] || die "set stock: HTTP $status: $body"
echo "    ok: stock of $product_id set to 10"

STEP "place an order"
api POST /api/orders "{\"product_id\":\"$product_id\",\"quantity\":2}" "$token"
expect 201 "order" "$body"
order_id="$(jq -er .id <<<"$body")" || die "no order id: $body"
order_state="$(jq -r '.status // .state // empty' <<<"$body")"
[[ -z "$order_state" || "$order_state" == CONFIRMED ]] || die "order $order_id is $order_state, want CONFIRMED"
echo "    order $order_id ${order_state:-placed}"

STEP "the order's notification arrives (up to 60s)"
found=""
for _ in $(seq 1 60); do
    api GET /api/notifications "" "$token"
    if [[ "$status" == 200 ]] && grep -q "$order_id" <<<"$body"; then
        found=1
        break
    fi
    sleep 1
done
[[ -n "$found" ]] || die "no notification mentioning order $order_id (last answer HTTP $status: $body)"
echo "    ok: notification for $order_id"

if kubectl -n "$NS" get deployment "$NAME-web" >/dev/null 2>&1; then
    STEP "the web console at $BASE/ and its system page"
    page="$(curl -sS --max-time 20 "$BASE/")" || die "GET / : no answer from $BASE"
    grep -qi '<html' <<<"$page" || die "GET / is not the console's page: ${page:0:200}"
    echo "    ok: / serves the console"
    api GET /api/console/system "" "$token"
    expect 403 "a shopper asks the system page" "$body"
    api GET /api/console/system "" "$admin_token"
    expect 200 "the admin's system page" "$body"
    ready="$(jq -r '[.services[] | select(.ready) | .name] | join(",")' <<<"$body")"
    [[ "$ready" == "user,product,inventory,order,notification" ]] \
        || die "system page: ready services are [$ready], want all five: $body"
    echo "    ok: the console sees $ready ready"
else
    echo
    echo "    (no $NAME-web Deployment: spec.services.web.enabled is false; console step skipped)"
fi

STEP "Jaeger has the order's trace ($JAEGER_NS/$JAEGER_SVC)"
port=$((20000 + RANDOM % 20000))
kubectl -n "$JAEGER_NS" port-forward "svc/$JAEGER_SVC" "$port:16686" >/dev/null 2>&1 &
pf=$!
trap 'kill "$pf" 2>/dev/null || true' EXIT
for _ in $(seq 1 20); do
    curl -fsS "http://127.0.0.1:$port/api/services" >/dev/null 2>&1 && break
    sleep 0.5
done
trace=""
for _ in $(seq 1 30); do
    traces="$(curl -fsS "http://127.0.0.1:$port/api/traces?service=order&lookback=1h&limit=50")" \
        || die "Jaeger API at $JAEGER_NS/$JAEGER_SVC does not answer"
    trace="$(jq -c --arg id "$order_id" \
        '[.data[] | select(any(.spans[]; any(.tags[]?; (.value|tostring) == $id)))] | first // empty' \
        <<<"$traces")"
    [[ -n "$trace" ]] && break
    sleep 2
done
[[ -n "$trace" ]] || die "no trace of service order tagged with order id $order_id"
services="$(jq -r '[.processes[].serviceName] | unique | join(",")' <<<"$trace")"
echo "    trace $(jq -r .traceID <<<"$trace"): services $services, $(jq '.spans | length' <<<"$trace") spans"
for svc in order inventory notification; do
    grep -qw "$svc" <<<"${services//,/ }" || die "trace of order $order_id has no span of $svc (has: $services)"
done

printf '\ne2e-k8s: all %d steps passed\n' "$step"
