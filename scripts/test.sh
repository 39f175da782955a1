#!/usr/bin/env bash
# `make test`: brings up PostgreSQL and RabbitMQ (reused or private, see
# scripts/infra.sh), runs every test of the workspace against them, and stops
# whatever it started — also when the tests fail or are interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

env_file="$(scripts/infra.sh up test)"
trap 'scripts/infra.sh down test' EXIT
# shellcheck source=/dev/null
source "$env_file"

cargo test --workspace --locked --all-targets "$@"
