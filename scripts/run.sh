#!/usr/bin/env bash
# `make run`: the whole system on this machine, in the foreground.
#
# Brings up PostgreSQL and RabbitMQ (reused or private, see scripts/infra.sh),
# gives each service its own database and role, builds and starts every
# service on its local port, reports readiness, and on Ctrl-C stops all it
# started (and nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${STOCKMESH_RUN_PROFILE:-dev}"
services=(inventory)

log() { printf '\033[1m[run]\033[0m %s\n' "$*"; }

env_file="$(scripts/infra.sh up run)"
# shellcheck source=/dev/null
source "$env_file"
admin_url="$DATABASE_URL"
state_dir="$(dirname "$env_file")"
log_dir="$state_dir/logs"
mkdir -p "$log_dir"

pids=()
cleanup() {
  trap - INT TERM EXIT
  log "stopping services"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/infra.sh down run
  log "stopped"
}
trap cleanup INT TERM EXIT

# One database and one role per service; passwords are local development
# defaults (override with STOCKMESH_DB_PASSWORD_<SERVICE>).
database_url_for() {
  local svc="$1" var pw
  var="STOCKMESH_DB_PASSWORD_${svc^^}"
  pw="${!var:-$svc-dev}"
  psql "$admin_url" -v ON_ERROR_STOP=1 -q >/dev/null <<SQL
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', '$svc', '$pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$svc') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', '$svc', '$pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$svc', '$svc')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$svc') \gexec
SQL
  local hostport="${admin_url#*@}"
  hostport="${hostport%%/*}"
  printf 'postgres://%s:%s@%s/%s\n' "$svc" "$pw" "$hostport" "$svc"
}

log "building services ($profile profile)"
cargo build --profile "$profile" --bins --locked
target_dir="${CARGO_TARGET_DIR:-target}"
bin_dir="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"

declare -A health_urls=(
  [inventory]="http://${INVENTORY_HTTP_ADDR:-127.0.0.1:8083}/readyz"
)

start_service() {
  local svc="$1"
  local upper="${svc^^}"
  local http_var="${upper}_HTTP_ADDR" grpc_var="${upper}_GRPC_ADDR"
  local -a env=(
    "DATABASE_URL=$(database_url_for "$svc")"
    "AMQP_URL=$AMQP_URL"
    "LOG_FORMAT=${LOG_FORMAT:-json}"
  )
  if [ -n "${!http_var:-}" ]; then env+=("HTTP_ADDR=${!http_var}"); fi
  if [ -n "${!grpc_var:-}" ]; then env+=("GRPC_ADDR=${!grpc_var}"); fi
  env "${env[@]}" "$bin_dir/$svc" >>"$log_dir/$svc.log" 2>&1 &
  pids+=("$!")
  log "started $svc (pid $!, log $log_dir/$svc.log)"
}

wait_ready() {
  local svc="$1" url="${health_urls[$1]}" i
  for i in $(seq 1 120); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then
      log "$svc ready ($url)"
      return 0
    fi
    if ! kill -0 "${pids[$2]}" 2>/dev/null; then
      log "$svc exited; last lines of its log:"
      tail -n 20 "$log_dir/$svc.log"
      return 1
    fi
    sleep 0.5
    if [ "$i" = 120 ]; then log "$svc not ready after 60 s"; return 1; fi
  done
}

for svc in "${services[@]}"; do start_service "$svc"; done
index=0
for svc in "${services[@]}"; do wait_ready "$svc" "$index"; index=$((index + 1)); done

cat <<INFO

  stockmesh is running. Press Ctrl-C to stop everything started here.

  inventory  gRPC ${INVENTORY_GRPC_ADDR:-127.0.0.1:50053}   health/metrics http://${INVENTORY_HTTP_ADDR:-127.0.0.1:8083}/readyz

  try:  grpcurl -plaintext ${INVENTORY_GRPC_ADDR:-127.0.0.1:50053} list
        grpcurl -plaintext -d '{"product_id":"0190a5a0-0000-7000-8000-000000000001","quantity":5}' \\
          ${INVENTORY_GRPC_ADDR:-127.0.0.1:50053} stockmesh.inventory.v1.InventoryService/SetStock

  logs: $log_dir

INFO

# Stay in the foreground until Ctrl-C or a service dies.
while :; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      log "${services[$i]} exited unexpectedly; see $log_dir/${services[$i]}.log"
      exit 1
    fi
  done
  sleep 1
done
