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

cargo test --workspace --locked --all-targets "$@"

if [ -x scripts/api-fuzz.sh ]; then
  scripts/api-fuzz.sh
fi
