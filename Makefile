# Everyday commands. `make help` lists them.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help bootstrap upgrade-deps demo test unit integration lint typecheck lint-protos protos check-protos check-breaking bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

bootstrap:  ## install everything (system packages, .venv, grpcurl, buf)
	@tools/bootstrap.sh

# Eager: every pinned distribution moves, not only the direct requirements; torch stays put
# (its build is the machine's, see bootstrap).
upgrade-deps: bootstrap  ## move the pins: upgrade every dependency, then rewrite both pin files
	@torch=$$($(PY) -c "import torch; print(torch.__version__.split('+')[0])") \
	  && $(PY) -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]" \
	     --constraint=<(echo "torch==$$torch") \
	  && $(PY) -m tools.constraints --write && tools/bootstrap.sh
	@git diff --stat -- deploy/docker/constraints.txt tools/constraints-dev.txt

demo: bootstrap  ## bring the whole system up, run one streamed inspection, shut down
	@$(PY) -m tools.demo

test: bootstrap check-protos lint typecheck lint-protos  ## install, lint, type-check, run all tests (both tiers)
	@$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Tiers (tests/support/tiers.py): every test is unit or integration; `make test` runs all, once.
unit: bootstrap  ## fast tests only: no PostgreSQL, services or model builds (under 2 minutes)
	@$(PY) -m pytest -q -p no:cacheprovider -m unit --timeout=60 $(PYTEST_ARGS)

integration: bootstrap  ## the other tier: integration, fault, persistence and client-toolchain tests
	@$(PY) -m pytest -q -p no:cacheprovider -m integration $(PYTEST_ARGS)

lint:  ## ruff, and the import contracts (pyproject.toml [tool.importlinter])
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/lint-imports --no-cache --no-logo

typecheck:  ## mypy --strict on our packages
	@$(VENV)/bin/mypy inference_svc persistence_svc svc_common clients tools bench

lint-protos:  ## buf lint (STANDARD)
	@cd protos && buf lint

protos:  ## regenerate gen/python from protos/
	@PYTHON=$(PY) tools/gen_protos.sh

check-protos:  ## fail when gen/python is stale
	@PYTHON=$(PY) tools/gen_protos.sh >/dev/null && git diff --exit-code --stat -- gen/python \
	  || (echo "gen/python is stale: run 'make protos' and commit" >&2; exit 1)

BREAKING_BASE ?= main
# Both sides are built into images first: the base may predate protos/third_party, and buf
# refuses to compare a two-module workspace with a one-module one. Images get buf's default
# rules, FILE, the same as protos/buf.yaml names.
check-breaking:  ## buf breaking: protos/ against BREAKING_BASE (a git ref, default main)
	@base=$$(mktemp -d) && trap 'rm -rf "$$base"' EXIT \
	  && git archive "$(BREAKING_BASE)" protos | tar -x -C "$$base" \
	  && buf build protos -o "$$base/new.binpb" \
	  && buf build "$$base/protos" -o "$$base/old.binpb" \
	  && buf breaking "$$base/new.binpb" --against "$$base/old.binpb" \
	  && echo "protos: no breaking change against $(BREAKING_BASE)"

bench:  ## run the benchmarks (see BENCHMARKS.md)
	@$(PY) -m bench.engine

clean:  ## remove caches and local state (models, spool, embedded Postgres)
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
