#!/usr/bin/env bash
# Generates the Java stubs from protos/ and compiles the example client offline with Debian's
# packages: libgrpc-java, protobuf-compiler-grpc-java-plugin, libprotobuf-java, libnetty-java,
# libperfmark-java (and protobuf-compiler) plus the machine's JDK.
#
#   clients/java/build.sh [BUILD_DIR]     (default: clients/java/build; run it with run.sh)
#
# Writes BUILD_DIR/classes and BUILD_DIR/classpath (the jars, for run.sh). Nothing is
# downloaded. Generated code is never committed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD_DIR=${1:-$HERE/build}
mkdir -p "$BUILD_DIR"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
JARS=${DEBIAN_JAVA_DIR:-/usr/share/java}
GRPC_JAVA_PLUGIN=${GRPC_JAVA_PLUGIN:-/usr/bin/grpc_java_plugin}
APT_HINT="apt-get install protobuf-compiler libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java libnetty-java libperfmark-java"

for tool in protoc javac "$GRPC_JAVA_PLUGIN"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool ($APT_HINT; and a JDK)" >&2; exit 127; }
done

# What grpc-java needs at compile and run time; geronimo-annotation provides the
# javax.annotation.Generated that the generated service classes carry. The jars marked optional
# are folded into other Debian jars (failureaccess into guava) or only used by features this
# client does not touch (gson: JSON service configs).
required=(grpc-api grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub grpc-context
  protobuf guava netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-common
  netty-handler netty-resolver netty-transport perfmark-api jsr305 geronimo-annotation-1.3-spec)
optional=(failureaccess gson opencensus-api error_prone_annotations animal-sniffer-annotations
  netty-codec-socks netty-handler-proxy netty-transport-native-unix-common netty-transport-native-epoll)
cp=()
for jar in "${required[@]}"; do
  [ -f "$JARS/$jar.jar" ] || { echo "missing $JARS/$jar.jar ($APT_HINT)" >&2; exit 127; }
  cp+=("$JARS/$jar.jar")
done
for jar in "${optional[@]}"; do
  [ -f "$JARS/$jar.jar" ] && cp+=("$JARS/$jar.jar")
done
CLASSPATH_JARS=$(IFS=:; echo "${cp[*]}")

rm -rf "$BUILD_DIR/gen" "$BUILD_DIR/classes"
mkdir -p "$BUILD_DIR/gen" "$BUILD_DIR/classes"
# The vendored protos (protos/third_party) that ours import are compiled with the stubs: their
# descriptors refer to them. Debian's protobuf and grpc jars carry no com.google.longrunning,
# com.google.rpc or com.google.api classes, so generating them duplicates nothing.
# google/longrunning/operations.proto (the Operations service that -async polls) brings
# google/rpc/status.proto and the google/api annotations it uses. third_party comes first so
# that protoc names them as the imports do.
THIRD_PARTY="$ROOT/protos/third_party"
protoc \
  -I "$THIRD_PARTY" -I "$ROOT/protos" -I /usr/include \
  --plugin=protoc-gen-grpc-java="$GRPC_JAVA_PLUGIN" \
  --java_out="$BUILD_DIR/gen" --grpc-java_out="$BUILD_DIR/gen" \
  "$ROOT/protos/rpi/inspection/v1/inspection.proto" \
  "$ROOT/protos/rpi/inspection/v1/operations.proto" \
  "$THIRD_PARTY/google/longrunning/operations.proto" \
  "$THIRD_PARTY/google/rpc/status.proto" \
  "$THIRD_PARTY/google/api/annotations.proto" "$THIRD_PARTY/google/api/client.proto" \
  "$THIRD_PARTY/google/api/field_behavior.proto" "$THIRD_PARTY/google/api/http.proto" \
  "$THIRD_PARTY/google/api/launch_stage.proto"

find "$BUILD_DIR/gen" "$HERE/src/main/java" -name '*.java' > "$BUILD_DIR/sources.txt"
javac -nowarn -encoding UTF-8 -d "$BUILD_DIR/classes" -cp "$CLASSPATH_JARS" @"$BUILD_DIR/sources.txt"
echo "$CLASSPATH_JARS" > "$BUILD_DIR/classpath"
echo "$BUILD_DIR"
