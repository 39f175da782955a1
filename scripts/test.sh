#!/usr/bin/env bash
# `make test`: brings up PostgreSQL and RabbitMQ (reused or private, see
# scripts/infra.sh), checks every Kubernetes artifact (scripts/k8s-check.sh),
# runs every Rust test of the workspace against the real servers, then fuzzes
# each HTTP service from its OpenAPI document (scripts/api-fuzz.sh), and stops
# whatever it started — also when something fails or is interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

STOCKMESH_K8S_CHECK_STRICT=1 scripts/k8s-check.sh

env_file="$(scripts/infra.sh up test)"
trap 'scripts/infra.sh down test' EXIT
# shellcheck source=/dev/null
source "$env_file"

results="$(mktemp)"
trap 'rm -f "$results"; scripts/infra.sh down test' EXIT
cargo test --workspace --locked --all-targets "$@" 2>&1 | tee "$results"

scripts/api-fuzz.sh

# One closing line for the whole run (every cargo test binary, summed).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "make test: %d passed, %d failed\n", p, f }' "$results"
