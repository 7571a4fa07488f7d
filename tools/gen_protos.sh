#!/usr/bin/env bash
# Regenerates the Python code for protos/ into gen/python. Never edit gen/ by hand.
# Usage: tools/gen_protos.sh   (or: make protos)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python}
case "$PY" in /*) ;; */*) PY="$ROOT/$PY" ;; esac
OUT=gen/python
rm -rf "$OUT/rpi"
mkdir -p "$OUT"
mapfile -t files < <(cd protos && find rpi -name '*.proto' | sort)
BIN=$(dirname "$("$PY" -c "import sys; print(sys.executable)")")
# protos/third_party holds vendored imports (google/api/field_behavior.proto); their Python
# modules come with googleapis-common-protos, so only rpi/ is generated.
(cd protos && PATH="$BIN:$PATH" "$PY" -m grpc_tools.protoc -I. -Ithird_party \
  --python_out="../$OUT" --grpc_python_out="../$OUT" \
  --mypy_out="../$OUT" --mypy_grpc_out="../$OUT" "${files[@]}")
# Regular packages (not namespace packages) so that setuptools and mypy find them.
find "$OUT/rpi" -type d -exec touch {}/__init__.py \;
echo "generated $(find "$OUT/rpi" -name '*_pb2*.py' | wc -l) modules into $OUT"
