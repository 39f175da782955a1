# shellcheck shell=bash
# Starting stockmesh services as local processes, shared by run.sh (the
# whole system in the foreground) and api-fuzz.sh (a throwaway system for
# schemathesis). Source it, then call the stack_* functions.
#
# Globals the caller sets first:
#   STACK_STATE   directory for keys and logs
#   STACK_ADMIN   PostgreSQL URL that may create roles and databases
#   STACK_AMQP    AMQP URL
#   STACK_PREFIX  prefix of per-service database/role names (e.g. stockmesh_)
#   STACK_BIN     directory holding the built binaries

STACK_PIDS=()
STACK_NAMES=()

stack_log() { printf '\033[1m[stack]\033[0m %s\n' "$*" >&2; }

# Ed25519 pair for JWTs (kept across runs so tokens survive a restart).
stack_keys() {
  "$STACK_BIN/stockmesh-keygen" "$STACK_STATE/jwt"
}

# Creates (or updates) the role and database of one service; prints its URL.
stack_database() {
  local svc="$1" name="${STACK_PREFIX}$1" var pw
  var="STOCKMESH_DB_PASSWORD_${svc^^}"
  pw="${!var:-$svc-dev-password}"
  psql "$STACK_ADMIN" -v ON_ERROR_STOP=1 -q >/dev/null <<SQL
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', '$name', '$pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$name') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', '$name', '$pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$name', '$name')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$name') \gexec
SQL
  local hostport="${STACK_ADMIN#*@}"
  hostport="${hostport%%/*}"
  printf 'postgres://%s:%s@%s/%s\n' "$name" "$pw" "$hostport" "$name"
}

# Drops the databases and roles stack_database made (throwaway stacks only).
stack_drop_databases() {
  local svc name
  for svc in "$@"; do
    name="${STACK_PREFIX}$svc"
    psql "$STACK_ADMIN" -q -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1 || true
    psql "$STACK_ADMIN" -q -c "DROP ROLE IF EXISTS \"$name\"" >/dev/null 2>&1 || true
  done
}

# stack_start SVC [VAR=value ...]: starts one service with its database,
# the JWT keys and the given environment; logs to $STACK_STATE/logs/SVC.log.
stack_start() {
  local svc="$1"
  shift
  mkdir -p "$STACK_STATE/logs"
  local -a env=(
    "JWT_PUBLIC_KEY_FILE=$STACK_STATE/jwt/public.pem"
    "LOG_FORMAT=${LOG_FORMAT:-json}"
  )
  # The web console keeps no data and publishes nothing.
  if [ "$svc" != web ]; then env+=("DATABASE_URL=$(stack_database "$svc")" "AMQP_URL=$STACK_AMQP"); fi
  if [ "$svc" = user ]; then env+=("JWT_PRIVATE_KEY_FILE=$STACK_STATE/jwt/private.pem"); fi
  env "${env[@]}" "$@" "$STACK_BIN/$svc" >>"$STACK_STATE/logs/$svc.log" 2>&1 &
  STACK_PIDS+=("$!")
  STACK_NAMES+=("$svc")
  stack_log "started $svc (pid $!, log $STACK_STATE/logs/$svc.log)"
}

# stack_wait SVC URL: waits until URL answers 2xx, or the process dies.
stack_wait() {
  local svc="$1" url="$2" i pid=""
  for i in "${!STACK_NAMES[@]}"; do
    if [ "${STACK_NAMES[$i]}" = "$svc" ]; then pid="${STACK_PIDS[$i]}"; fi
  done
  for i in $(seq 1 240); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then
      stack_log "$svc ready ($url)"
      return 0
    fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      stack_log "$svc exited; last lines of its log:"
      tail -n 20 "$STACK_STATE/logs/$svc.log" >&2
      return 1
    fi
    sleep 0.25
  done
  stack_log "$svc not ready after 60 s"
  return 1
}

# Prints the name of a service that died, if any.
stack_dead() {
  local i
  for i in "${!STACK_PIDS[@]}"; do
    if ! kill -0 "${STACK_PIDS[$i]}" 2>/dev/null; then
      printf '%s\n' "${STACK_NAMES[$i]}"
      return 0
    fi
  done
  return 1
}

# SIGTERM to every started service, then wait for them (they drain).
stack_stop_all() {
  local pid
  for pid in "${STACK_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${STACK_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  STACK_PIDS=()
  STACK_NAMES=()
}

# stack_login EMAIL PASSWORD URL: prints a token.
stack_login() {
  curl -fsS -H 'content-type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\"}" "$3/api/users/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}
