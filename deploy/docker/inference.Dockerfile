# syntax=docker/dockerfile:1
# Inference service: CUDA userspace + CPython 3.11 + torch (CUDA 13.0 build) + this repository.
# Build from the repository root (BuildKit reads inference.Dockerfile.dockerignore beside it):
#   docker build -f deploy/docker/inference.Dockerfile -t registry.example.com/rpi/inference:0.1.0 .
# A CPU-only variant (smaller, for development) changes only the torch index:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# uv only provides a pinned, relocatable CPython 3.11 (Ubuntu 24.04 ships 3.12).
FROM ghcr.io/astral-sh/uv:0.9.5 AS uv

FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04 AS build
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install 3.11.13 \
 && uv venv --python 3.11.13 --seed /opt/venv
# torch first, from PyTorch's index for the CUDA line of the base image (its wheel brings
# cuBLAS/cuDNN as nvidia-* packages); `pip install .[inference]` then finds torch>=2.4,<3
# satisfied.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
RUN /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY . .
# Every other dependency at the versions the test suite last passed with (constraints.txt is
# generated from that environment: python -m tools.constraints --write).
RUN /opt/venv/bin/pip install --constraint deploy/docker/constraints.txt ".[inference]" \
 && /opt/venv/bin/python -c "import inference_svc, rpi.inspection.v1.inspection_pb2"

FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04
# Numeric uid/gid so Kubernetes' runAsNonRoot can verify them; the manifests use the same.
RUN groupadd --gid 10001 rpi \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin rpi \
 && mkdir -p /var/lib/rpi/spool /var/lib/rpi/models /models \
 && chown -R 10001:10001 /var/lib/rpi
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1 \
    EVENT_SPOOL_DIR=/var/lib/rpi/spool \
    MODEL_CACHE_DIR=/var/lib/rpi/models
WORKDIR /var/lib/rpi
USER 10001:10001
# Smoke step, in the image as shipped (its user, its read-only-friendly paths, no source tree:
# the working directory holds none): the installed wheel builds the demo model from its own
# data files and the service answers grpc.health.v1 SERVING, then exits cleanly on SIGTERM.
# Everything it writes is in a temporary directory it removes.
RUN python -m tools.image_smoke --timeout-s 600
# gRPC (GRPC_LISTEN) and Prometheus (METRICS_PORT).
EXPOSE 50051 9095
# Exec form: Python is PID 1 and receives SIGTERM itself, which starts the drain.
ENTRYPOINT ["python", "-m", "inference_svc"]
