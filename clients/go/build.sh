#!/usr/bin/env bash
# Generates the Go stubs from protos/ and builds the example client offline with Debian's
# packages: golang-go, golang-google-grpc-dev, protobuf-compiler, protoc-gen-go-1-3.
#
#   clients/go/build.sh [BUILD_DIR]     (default: clients/go/build; the binary is BUILD_DIR/inspect-client)
#
# Debian's grpc-go is 1.33, written against the APIv1 protobuf runtime, so the stubs come from
# the v1.3 generator (plugins=grpc) and the build runs in GOPATH mode against the Go sources
# Debian installs in /usr/share/gocode. Nothing is downloaded. Generated code is never committed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD_DIR=${1:-$HERE/build}
mkdir -p "$BUILD_DIR"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)

# The v1.3 generator: Debian's protoc-gen-go-1-3 installs it as /usr/bin/protoc-gen-go.
PROTOC_GEN_GO=${PROTOC_GEN_GO:-}
if [ -z "$PROTOC_GEN_GO" ] && command -v dpkg >/dev/null 2>&1; then
  PROTOC_GEN_GO=$(dpkg -L protoc-gen-go-1-3 2>/dev/null | grep -E '/bin/protoc-gen-go$' | head -n1 || true)
fi
PROTOC_GEN_GO=${PROTOC_GEN_GO:-/usr/bin/protoc-gen-go}
for tool in protoc go "$PROTOC_GEN_GO"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool (apt-get install golang-go golang-google-grpc-dev protobuf-compiler protoc-gen-go-1-3)" >&2; exit 127; }
done
GOCODE=${DEBIAN_GOCODE:-/usr/share/gocode}
[ -d "$GOCODE/src/google.golang.org/grpc" ] || { echo "missing $GOCODE/src/google.golang.org/grpc (apt-get install golang-google-grpc-dev)" >&2; exit 127; }

GOPATH_DIR="$BUILD_DIR/gopath"
PKG=github.com/rpi-platform/rpi
rm -rf "$GOPATH_DIR/src/$PKG"
mkdir -p "$GOPATH_DIR/src/$PKG/clients/go"

# The well-known types' go_package names the APIv2 packages (google.golang.org/protobuf/...),
# which Debian's APIv1 runtime does not have: map them to the APIv1 ptypes packages.
# google/api/field_behavior.proto is vendored in protos/third_party; its Go package comes from
# Debian's golang-google-genproto-dev (google.golang.org/genproto/googleapis/api/annotations).
protoc \
  -I "$ROOT/protos" -I "$ROOT/protos/third_party" -I /usr/include \
  --plugin=protoc-gen-go="$PROTOC_GEN_GO" \
  --go_out="plugins=grpc,paths=import,Mgoogle/protobuf/duration.proto=github.com/golang/protobuf/ptypes/duration,Mgoogle/protobuf/timestamp.proto=github.com/golang/protobuf/ptypes/timestamp,Mgoogle/longrunning/operations.proto=google.golang.org/genproto/googleapis/longrunning:$GOPATH_DIR/src" \
  "$ROOT/protos/rpi/inspection/v1/inspection.proto" "$ROOT/protos/rpi/inspection/v1/operations.proto"

cp "$HERE"/*.go "$GOPATH_DIR/src/$PKG/clients/go/"
(
  cd "$GOPATH_DIR/src/$PKG/clients/go"
  GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$GOPATH_DIR:$GOCODE" \
    go build -o "$BUILD_DIR/inspect-client" .
)
echo "$BUILD_DIR/inspect-client"
