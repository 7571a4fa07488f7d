# syntax=docker/dockerfile:1
# Persistence service: CPython 3.11 (Debian slim) + this repository. No GPU.
# Build from the repository root (BuildKit reads persistence.Dockerfile.dockerignore beside it):
#   docker build -f deploy/docker/persistence.Dockerfile -t registry.example.com/rpi/persistence:0.1.0 .

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
# `.` without the `inference` extra: the base dependencies only, so no torch or transformers
# (the last command fails the build if one slipped in). Versions as the tests last passed with.
RUN /opt/venv/bin/pip install --constraint deploy/docker/constraints.txt . \
 && /opt/venv/bin/python -c "import persistence_svc, rpi.persistence.v1.persistence_pb2" \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'transformers')))"

FROM python:3.11.13-slim-bookworm
RUN groupadd --gid 10001 rpi \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin rpi
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER 10001:10001
# gRPC (GRPC_LISTEN) and Prometheus (METRICS_PORT).
EXPOSE 50061 9096
# Exec form: Python is PID 1 and receives SIGTERM itself, which starts the drain.
ENTRYPOINT ["python", "-m", "persistence_svc"]
