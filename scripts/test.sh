#!/usr/bin/env bash
# `make test`: brings up PostgreSQL and RabbitMQ (reused or private, see
# scripts/infra.sh), checks every Kubernetes artifact (scripts/k8s-check.sh),
# builds every binary of the workspace, runs every Rust test against the real
# servers (every test binary, even after one fails), then fuzzes each HTTP
# service from its OpenAPI document (scripts/api-fuzz.sh), prints one closing
# line counting all of it, and stops whatever it started — also when
# something fails or is interrupted. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

STOCKMESH_K8S_CHECK_STRICT=1 scripts/k8s-check.sh

# The console's browser test drives Debian's chromium through its
# chromedriver behind nginx (the Ingress stand-in): installed from the
# system's packages when missing, like PostgreSQL and RabbitMQ.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[test] installing ${missing[*]} for the browser test" >&2
  scripts/infra.sh install test "${missing[@]}"
fi

export STOCKMESH_INFRA_OWNER="$$"
env_file="$(scripts/infra.sh up test)"
results="$(mktemp)"
fuzz_results="$(mktemp)"
trap 'rm -f "$results" "$fuzz_results"; scripts/infra.sh down test' EXIT
# shellcheck source=/dev/null
source "$env_file"

# Every binary first, whatever the target directory held before: tests start
# service binaries and loadgen as processes, and `cargo test` alone builds a
# package's executables only when that package has integration tests. The
# same flags as `cargo test --workspace --all-targets`, so nothing is built
# twice.
cargo build --workspace --all-targets --locked

status=0
cargo test --workspace --locked --all-targets --no-fail-fast "$@" 2>&1 | tee "$results" || status=$?

fuzz_status=0
scripts/api-fuzz.sh 2>&1 | tee "$fuzz_results" || fuzz_status=$?

# One closing line for the whole run: every cargo test binary summed (test
# binaries that did not finish, crashed or failed to build, counted apart),
# plus the fuzz runs and the loadgen smoke as api-fuzz.sh counted them.
fuzz_line="$(grep -E '^api-fuzz: [0-9]+ passed, [0-9]+ failed' "$fuzz_results" | tail -n 1 || true)"
awk -v cargo_status="$status" -v fuzz_status="$fuzz_status" -v fuzz_line="$fuzz_line" '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^error: [0-9]+ targets? failed/ { targets = $2 }
  /^error: test failed, to rerun pass/ { if (targets == "") targets = 1 }
  END {
    split(fuzz_line, w, /[ ,]+/)
    fp = w[2] + 0; ff = w[4] + 0
    if (fuzz_line == "") ff = 1
    line = sprintf("make test: %d passed, %d failed (cargo test: %d passed, %d failed", p + fp, f + ff, p, f)
    if (targets != "") line = line sprintf(", %s test binaries failed", targets)
    else if (cargo_status != 0 && f == 0) line = line sprintf(", exit %d", cargo_status)
    if (fuzz_line == "") line = line sprintf("; api-fuzz did not finish, exit %d)", fuzz_status)
    else line = line sprintf("; api-fuzz: %d passed, %d failed)", fp, ff)
    print line
  }' "$results"

if [ "$status" -ne 0 ] || [ "$fuzz_status" -ne 0 ]; then exit 1; fi
