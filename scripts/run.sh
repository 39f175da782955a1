#!/usr/bin/env bash
# `make run`: the whole system on this machine, in the foreground.
#
# Brings up PostgreSQL and RabbitMQ (reused or private, see scripts/infra.sh),
# gives each service its own database and role, builds and starts every
# service on its local port, puts an nginx gateway on one base URL that
# routes /api/<prefix> exactly as the Ingress does, reports readiness, and on
# Ctrl-C stops all it started (and nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${STOCKMESH_RUN_PROFILE:-dev}"
gateway_addr="${STOCKMESH_GATEWAY_ADDR:-127.0.0.1:8080}"
user_http="${USER_HTTP_ADDR:-127.0.0.1:8081}"
product_http="${PRODUCT_HTTP_ADDR:-127.0.0.1:8082}"
product_grpc="${PRODUCT_GRPC_ADDR:-127.0.0.1:50052}"
inventory_http="${INVENTORY_HTTP_ADDR:-127.0.0.1:8083}"
inventory_grpc="${INVENTORY_GRPC_ADDR:-127.0.0.1:50053}"
order_http="${ORDER_HTTP_ADDR:-127.0.0.1:8084}"
notification_http="${NOTIFICATION_HTTP_ADDR:-127.0.0.1:8085}"
web_http="${WEB_HTTP_ADDR:-127.0.0.1:8086}"
export STOCKMESH_ADMIN_EMAIL="${STOCKMESH_ADMIN_EMAIL:-admin@stockmesh.local}"
export STOCKMESH_ADMIN_PASSWORD="${STOCKMESH_ADMIN_PASSWORD:-stockmesh-admin}"

log() { printf '\033[1m[run]\033[0m %s\n' "$*"; }

# Every port this run will listen on must be free before anything starts:
# otherwise readiness checks are answered by whoever holds the port (another
# `make run`, say) and the banner lies. One message per taken port, naming
# what it is for and the variable that moves it.
check_ports() {
  local taken=0 spec addr var what
  for spec in \
    "$gateway_addr STOCKMESH_GATEWAY_ADDR gateway" \
    "$user_http USER_HTTP_ADDR user-HTTP" \
    "$product_http PRODUCT_HTTP_ADDR product-HTTP" \
    "$product_grpc PRODUCT_GRPC_ADDR product-gRPC" \
    "$inventory_http INVENTORY_HTTP_ADDR inventory-HTTP" \
    "$inventory_grpc INVENTORY_GRPC_ADDR inventory-gRPC" \
    "$order_http ORDER_HTTP_ADDR order-HTTP" \
    "$notification_http NOTIFICATION_HTTP_ADDR notification-HTTP" \
    "$web_http WEB_HTTP_ADDR web-console"; do
    read -r addr var what <<<"$spec"
    if ! python3 - "$addr" <<'PY' 2>/dev/null; then
import socket, sys
host, _, port = sys.argv[1].rpartition(":")
family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host.strip("[]"), int(port)))
PY
      local holder
      holder="$(ss -Hltnp "sport = :${addr##*:}" 2>/dev/null | grep -o 'users:(("[^"]*",pid=[0-9]*' | head -n 1 | sed 's/users:(("\([^"]*\)",pid=\([0-9]*\)/\1, pid \2/')"
      log "port $addr (${what/-/ }) is already in use${holder:+ by $holder}: stop what holds it (another make run?) or set $var=127.0.0.1:<free port>"
      taken=1
    fi
  done
  return "$taken"
}
if ! check_ports; then
  log "not starting: the ports above are taken"
  exit 1
fi

export STOCKMESH_INFRA_OWNER="$$"
env_file="$(scripts/infra.sh up run)"
# shellcheck source=/dev/null
source "$env_file"
STACK_STATE="$(dirname "$env_file")"
STACK_ADMIN="$DATABASE_URL"
STACK_AMQP="$AMQP_URL"
STACK_PREFIX="stockmesh_"
target_dir="${CARGO_TARGET_DIR:-target}"
STACK_BIN="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"
# shellcheck source=scripts/lib/stack.sh
source scripts/lib/stack.sh

nginx_pid=""
cleanup() {
  trap - INT TERM EXIT
  log "stopping"
  if [ -n "$nginx_pid" ]; then kill -TERM "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  stack_stop_all
  scripts/infra.sh down run
  log "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building services ($profile profile)"
cargo build --profile "$profile" --bins --locked
stack_keys

stack_start inventory "HTTP_ADDR=$inventory_http" "GRPC_ADDR=$inventory_grpc"
stack_start product "HTTP_ADDR=$product_http" "GRPC_ADDR=$product_grpc" \
  "INVENTORY_GRPC_URL=http://$inventory_grpc"
stack_start user "HTTP_ADDR=$user_http" \
  "STOCKMESH_ADMIN_EMAIL=$STOCKMESH_ADMIN_EMAIL" "STOCKMESH_ADMIN_PASSWORD=$STOCKMESH_ADMIN_PASSWORD" \
  "TRUSTED_PROXIES=127.0.0.1/32"
stack_start order "HTTP_ADDR=$order_http" \
  "PRODUCT_GRPC_URL=http://$product_grpc" "INVENTORY_GRPC_URL=http://$inventory_grpc"
stack_start notification "HTTP_ADDR=$notification_http"
stack_start web "HTTP_ADDR=$web_http" \
  "USER_HTTP_URL=http://$user_http" "PRODUCT_HTTP_URL=http://$product_http" \
  "INVENTORY_HTTP_URL=http://$inventory_http" "ORDER_HTTP_URL=http://$order_http" \
  "NOTIFICATION_HTTP_URL=http://$notification_http" \
  ${JAEGER_UI_URL:+"JAEGER_UI_URL=$JAEGER_UI_URL"}
stack_wait inventory "http://$inventory_http/readyz"
stack_wait product "http://$product_http/readyz"
stack_wait user "http://$user_http/readyz"
stack_wait order "http://$order_http/readyz"
stack_wait notification "http://$notification_http/readyz"
stack_wait web "http://$web_http/readyz"

# The gateway: nginx from the system's packages, as the Ingress stand-in.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  log "installing nginx (the local stand-in for the Ingress)"
  scripts/infra.sh install run nginx-light || scripts/infra.sh install run nginx
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
ngx="$STACK_STATE/nginx"
mkdir -p "$ngx/tmp" "$ngx/logs"
cat >"$ngx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $ngx/nginx.pid;
error_log $ngx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log $ngx/logs/access.log;
  client_body_temp_path $ngx/tmp/body;
  proxy_temp_path $ngx/tmp/proxy;
  fastcgi_temp_path $ngx/tmp/fastcgi;
  uwsgi_temp_path $ngx/tmp/uwsgi;
  scgi_temp_path $ngx/tmp/scgi;
  upstream user { server $user_http; keepalive 32; }
  upstream product { server $product_http; keepalive 32; }
  upstream order { server $order_http; keepalive 32; }
  upstream notification { server $notification_http; keepalive 32; }
  upstream web { server $web_http; keepalive 8; }
  server {
    listen $gateway_addr;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$http_host;
    proxy_set_header X-Forwarded-For \$remote_addr;
    proxy_set_header X-Request-Id \$request_id;
    location /api/users { proxy_pass http://user; }
    location /api/products { proxy_pass http://product; }
    location /api/orders { proxy_pass http://order; }
    location /api/notifications { proxy_pass http://notification; }
    # Live notifications: events pass through at once, streams stay open.
    location /api/notifications/stream {
      proxy_pass http://notification;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
    # Everything else is the web console (and its /api/console/...).
    location / { proxy_pass http://web; }
  }
}
CONF
"$nginx_bin" -c "$ngx/nginx.conf" -p "$ngx" &
nginx_pid=$!
for _ in $(seq 1 40); do
  if ! kill -0 "$nginx_pid" 2>/dev/null; then
    log "the gateway failed to start; last lines of $ngx/logs/error.log:"
    tail -n 5 "$ngx/logs/error.log" >&2 || true
    exit 1
  fi
  if curl -fsS -o /dev/null "http://$gateway_addr/api/products"; then break; fi
  sleep 0.25
done
curl -fsS -o /dev/null "http://$gateway_addr/api/products" || { log "gateway did not start; see $ngx/logs/error.log"; exit 1; }
log "gateway ready (http://$gateway_addr)"

cat <<INFO

  stockmesh is running. Press Ctrl-C to stop everything started here.

  Web console (shop and admin):                 http://$gateway_addr/
  API (one base URL, routed like the Ingress):  http://$gateway_addr/api/...
    user       http://$user_http        (openapi: /api/users/openapi.json)
    product    http://$product_http        gRPC $product_grpc
    inventory  gRPC $inventory_grpc       health/metrics http://$inventory_http
    order      http://$order_http        (openapi: /api/orders/openapi.json)
    notification http://$notification_http  (openapi: /api/notifications/openapi.json; consumes order.* events)
    web        http://$web_http        (the console's files and /api/console/...)
  first admin: $STOCKMESH_ADMIN_EMAIL / $STOCKMESH_ADMIN_PASSWORD
               (development defaults; set STOCKMESH_ADMIN_EMAIL / STOCKMESH_ADMIN_PASSWORD)
  logs:        $STACK_STATE/logs

INFO

# Stay in the foreground until Ctrl-C or a component dies.
while :; do
  if dead="$(stack_dead)"; then
    log "$dead exited unexpectedly; see $STACK_STATE/logs/$dead.log"
    exit 1
  fi
  if ! kill -0 "$nginx_pid" 2>/dev/null; then
    log "the gateway exited; see $ngx/logs/error.log"
    exit 1
  fi
  sleep 1
done
