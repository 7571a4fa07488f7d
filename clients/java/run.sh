#!/usr/bin/env bash
# Runs the example client built by build.sh:
#   clients/java/run.sh -target localhost:50051 -stream -reference URL -pickup URL ...
# RPI_JAVA_BUILD_DIR selects the build directory (default: clients/java/build).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD_DIR=${RPI_JAVA_BUILD_DIR:-$HERE/build}
[ -f "$BUILD_DIR/classpath" ] || { echo "not built: run $HERE/build.sh $BUILD_DIR first" >&2; exit 64; }
exec java -cp "$BUILD_DIR/classes:$(cat "$BUILD_DIR/classpath")" \
  com.rpiplatform.rpi.examples.InspectClient "$@"
