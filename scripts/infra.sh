#!/usr/bin/env bash
# Finds or starts the infrastructure stockmesh needs on one machine:
# PostgreSQL and RabbitMQ.
#
#   scripts/infra.sh up   PROFILE   # PROFILE is "test", "run" or "bench"; prints an env file path
#   scripts/infra.sh down PROFILE   # stops only what `up` started
#   scripts/infra.sh env  PROFILE   # prints the env file path
#   scripts/infra.sh install PROFILE PKG...  # apt-get install without starting services
#
# Order of preference, for each of the two:
#   1. DATABASE_URL / AMQP_URL from the environment, used as they are;
#   2. a server already listening on the usual local port (5432 with the
#      credentials in STOCKMESH_PG_ADMIN_URL, 5672 with guest/guest);
#   3. a private instance started from the system's packages, on its own
#      ports and data directory under $STOCKMESH_STATE_DIR, stopped by `down`.
#      rabbitmq-server is installed with apt-get when missing (needs root).
#
# The env file holds DATABASE_URL (an admin URL that may create databases)
# and AMQP_URL; scripts and tests source it.
set -euo pipefail

profile="${2:-test}"
case "$profile" in
  test) pg_port_default=56432; mq_port_default=56672; fast_pg=1 ;;
  run)  pg_port_default=55432; mq_port_default=55672; fast_pg=0 ;;
  # Its own, durable (it measures real commits): the bench publishes
  # hundreds of thousands of events, which a `make run` notification queue
  # bound on the same broker would keep and replay.
  bench) pg_port_default=54432; mq_port_default=54672; fast_pg=0 ;;
  *) echo "infra.sh: unknown profile '$profile' (use test, run or bench)" >&2; exit 2 ;;
esac

state_root="${STOCKMESH_STATE_DIR:-${TMPDIR:-/tmp}/stockmesh-$(id -u)}"
state="$state_root/$profile"
env_file="$state/env"
pg_port="${STOCKMESH_PG_PORT:-$pg_port_default}"
mq_port="${STOCKMESH_AMQP_PORT:-$mq_port_default}"
epmd_port=$((mq_port + 1))
mq_dist_port=$((mq_port + 2))
pg_user=stockmesh
pg_password="${STOCKMESH_PG_PASSWORD:-stockmesh-dev}"
usual_pg_url="${STOCKMESH_PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

log() { printf '[infra] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/pg_ctl" ]; then printf '%s\n' "$dir"; fi
  done | sort -V | tail -n 1
}

# Runs a command as the PostgreSQL owner: initdb refuses to run as root.
as_pg_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_can_connect() {
  PGCONNECT_TIMEOUT=3 psql "$1" -Atqc 'select 1' >/dev/null 2>&1
}

start_private_pg() {
  local bin data sock
  bin="$(pg_bin)"
  if [ -z "$bin" ]; then
    log "PostgreSQL server binaries not found; installing the postgresql package"
    install_packages postgresql
    bin="$(pg_bin)"
  fi
  data="$state/pg/data"
  sock="$state/pg/sock"
  mkdir -p "$state/pg" "$sock"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$state/pg"; fi
  if [ ! -s "$data/PG_VERSION" ]; then
    log "initialising a private PostgreSQL cluster in $data"
    local pwfile="$state/pg/pwfile"
    printf '%s\n' "$pg_password" >"$pwfile"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$pwfile"; fi
    as_pg_owner "$bin/initdb" -D "$data" -U "$pg_user" --pwfile="$pwfile" \
      --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$state/pg/initdb.log" 2>&1 \
      || { cat "$state/pg/initdb.log" >&2; exit 1; }
    rm -f "$pwfile"
  fi
  local opts="-c listen_addresses=127.0.0.1 -p $pg_port -k $sock -c max_connections=400 -c shared_buffers=128MB"
  if [ "$fast_pg" = 1 ]; then
    # Throwaway test data: durability is not needed, speed is.
    opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  log "starting private PostgreSQL on 127.0.0.1:$pg_port"
  as_pg_owner "$bin/pg_ctl" -D "$data" -l "$state/pg/server.log" -o "$opts" -w -t 60 start >/dev/null \
    || { tail -n 30 "$state/pg/server.log" >&2; exit 1; }
  owner_mark "$state/pg.started"
}

install_packages() {
  if [ "$(id -u)" -ne 0 ]; then
    log "need to install: $* — run as root, or: sudo apt-get install -y $*"
    exit 1
  fi
  # Keep package post-install scripts from starting system-wide services:
  # we start private instances ourselves.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  local ok=0
  for _ in 1 2 3; do
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$state_root/apt.log" 2>&1; then
      ok=1; break
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$state_root/apt.log" 2>&1 || true
  done
  if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
  if [ "$ok" != 1 ]; then
    tail -n 20 "$state_root/apt.log" >&2
    log "installing $* failed"
    exit 1
  fi
}

rabbit_env() {
  export HOME="$state/rabbitmq/home"
  export RABBITMQ_NODENAME="stockmesh-$profile@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$mq_port"
  export RABBITMQ_DIST_PORT="$mq_dist_port"
  export ERL_EPMD_PORT="$epmd_port"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_MNESIA_BASE="$state/rabbitmq/mnesia"
  export RABBITMQ_LOG_BASE="$state/rabbitmq/log"
  export RABBITMQ_PID_FILE="$state/rabbitmq/rabbit.pid"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$state/rabbitmq/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$state/rabbitmq/rabbitmq"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$state/rabbitmq/advanced.config"
  export RABBITMQ_CONF_ENV_FILE="$state/rabbitmq/rabbitmq-env.conf"
  export ERL_CRASH_DUMP="$state/rabbitmq/erl_crash.dump"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbit_sbin() {
  local dir
  for dir in /usr/lib/rabbitmq/bin /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin; do
    if [ -x "$dir/rabbitmq-server" ]; then printf '%s\n' "$dir"; return; fi
  done
}

start_private_rabbitmq() {
  if [ -z "$(rabbit_sbin)" ]; then
    log "rabbitmq-server is not installed; installing it from the system's packages"
    install_packages rabbitmq-server
  fi
  local sbin
  sbin="$(rabbit_sbin)"
  mkdir -p "$state/rabbitmq/home" "$state/rabbitmq/mnesia" "$state/rabbitmq/log"
  printf '[].\n' >"$state/rabbitmq/enabled_plugins"
  printf '[].\n' >"$state/rabbitmq/advanced.config"
  : >"$state/rabbitmq/rabbitmq-env.conf"
  cat >"$state/rabbitmq/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$mq_port
loopback_users.guest = true
log.console = false
log.file.level = warning
EOF
  (
    rabbit_env
    log "starting private RabbitMQ node $RABBITMQ_NODENAME on 127.0.0.1:$mq_port"
    nohup "$sbin/rabbitmq-server" >"$state/rabbitmq/server.out" 2>&1 &
    local i pid=$!
    for i in $(seq 1 120); do
      if port_open "$mq_port"; then break; fi
      sleep 0.5
      if [ "$i" = 120 ] || ! kill -0 "$pid" 2>/dev/null; then
        tail -n 40 "$state/rabbitmq/server.out" >&2
        log "RabbitMQ did not start"
        exit 1
      fi
    done
    "$sbin/rabbitmqctl" -q await_startup >/dev/null 2>&1 || true
  )
  owner_mark "$state/rabbitmq.started"
}

stop_private_rabbitmq() {
  owned "$state/rabbitmq.started" || return 0
  local sbin
  sbin="$(rabbit_sbin)"
  (
    rabbit_env
    log "stopping private RabbitMQ node $RABBITMQ_NODENAME"
    "$sbin/rabbitmqctl" -q stop >"$state/rabbitmq/stop.out" 2>&1 || {
      if [ -s "$RABBITMQ_PID_FILE" ]; then kill "$(cat "$RABBITMQ_PID_FILE")" 2>/dev/null || true; fi
    }
    epmd -port "$epmd_port" -kill >/dev/null 2>&1 || true
  )
  rm -f "$state/rabbitmq.started"
}

# Who started a private server: `$STOCKMESH_INFRA_OWNER` (make test and
# make run set it to their own pid), so that their `down` stops only what
# their own `up` started, never a server another run started and is still
# using. Without an owner (`make infra-down`, the test harness), `down`
# stops whatever `up` started.
owner_mark() { printf '%s\n' "${STOCKMESH_INFRA_OWNER:-}" >"$1"; }
owned() {
  [ -e "$1" ] || return 1
  [ -z "${STOCKMESH_INFRA_OWNER:-}" ] && return 0
  [ "$(cat "$1" 2>/dev/null)" = "$STOCKMESH_INFRA_OWNER" ]
}

stop_private_pg() {
  owned "$state/pg.started" || return 0
  log "stopping private PostgreSQL on port $pg_port"
  as_pg_owner "$(pg_bin)/pg_ctl" -D "$state/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -f "$state/pg.started"
}

up() {
  mkdir -p "$state"
  local database_url amqp_url
  # PostgreSQL
  if [ -n "${DATABASE_URL:-}" ]; then
    database_url="$DATABASE_URL"
    log "using PostgreSQL from DATABASE_URL"
  elif pg_can_connect "$usual_pg_url"; then
    database_url="$usual_pg_url"
    log "reusing PostgreSQL already listening on 127.0.0.1:5432"
  else
    database_url="postgres://$pg_user:$pg_password@127.0.0.1:$pg_port/postgres"
    if pg_can_connect "$database_url"; then
      log "reusing private PostgreSQL on 127.0.0.1:$pg_port"
    elif port_open "$pg_port"; then
      log "port $pg_port is taken by something else; set STOCKMESH_PG_PORT"; exit 1
    else
      start_private_pg
    fi
  fi
  # RabbitMQ
  if [ -n "${AMQP_URL:-}" ]; then
    amqp_url="$AMQP_URL"
    log "using RabbitMQ from AMQP_URL"
  elif port_open 5672; then
    amqp_url="amqp://guest:guest@127.0.0.1:5672/%2f"
    log "reusing RabbitMQ already listening on 127.0.0.1:5672"
  else
    amqp_url="amqp://guest:guest@127.0.0.1:$mq_port/%2f"
    if port_open "$mq_port"; then
      log "reusing RabbitMQ on 127.0.0.1:$mq_port"
    else
      start_private_rabbitmq
    fi
  fi
  {
    printf 'export DATABASE_URL=%q\n' "$database_url"
    printf 'export AMQP_URL=%q\n' "$amqp_url"
  } >"$env_file"
  printf '%s\n' "$env_file"
}

down() {
  stop_private_rabbitmq
  stop_private_pg
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) printf '%s\n' "$env_file" ;;
  install) mkdir -p "$state_root"; shift 2; install_packages "$@" ;;
  *) echo "usage: infra.sh up|down|env [test|run] | install PROFILE PKG..." >&2; exit 2 ;;
esac
