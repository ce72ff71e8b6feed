# darkroom: the verbs a newcomer needs. `make help` lists them.
SHELL := /bin/bash
PY := .venv/bin/python
STACK := $(PY) -m infra.stack

.DEFAULT_GOAL := help

.PHONY: help setup up down status logs test test-unit test-integration test-e2e lint typecheck check schemas bench-pipeline bench-throughput bench-decoder bench-partitions bench-auth surge train-model eval-model

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: ## install everything (cached outside the clone; seconds when nothing changed)
	@bash infra/scripts/setup.sh

up: ## start Kafka, MinIO, FerretDB and all services on 127.0.0.1 (data in .run/dev)
	@$(STACK) up

down: ## stop everything `make up` started
	@$(STACK) down

status: ## health of each component
	@$(STACK) status

logs: ## follow the logs of every component
	@$(STACK) logs

test: lint typecheck ## lint, types, then unit, integration and e2e tests against a private stack
	@$(PY) -m infra.testrun tests/unit tests/integration tests/e2e

test-unit: ## unit tests only (nothing running needed)
	@$(PY) -m pytest -q tests/unit

test-integration: ## integration tests against a private Kafka, MinIO and FerretDB
	@$(PY) -m infra.testrun tests/integration

test-e2e: ## end-to-end tests against a private stack
	@$(PY) -m infra.testrun tests/e2e

lint: ## ruff lint and format check
	@$(PY) -m ruff check . && $(PY) -m ruff format --check .

typecheck: ## mypy strict on libs, services, infra and tests
	@$(PY) -m mypy

check: lint typecheck test-unit ## fast local checks before a commit

schemas: ## regenerate the published JSON Schemas of every event (docs/schemas)
	@$(PY) -m libs.cli schemas export docs/schemas

bench-pipeline: ## pipeline overhead (no-op model) at 1/10/50 concurrent jobs: latency, jobs/s, CPU and messages per job
	@$(PY) -m tests.bench.pipeline $(ARGS)

bench-throughput: ## the share of the built-in model's images/s that reaches users through the whole stack
	@$(PY) -m tests.bench.throughput $(ARGS)

bench-decoder: ## batching: the model's images/s per batch size, the decoder service at saturation, paid latency in a free flood
	@$(PY) -m tests.bench.decoder $(ARGS)

bench-partitions: ## a decoder pool larger than a lane's partitions: images/s and join stall at 4 vs 8 partitions per lane
	@$(PY) -m tests.bench.partitions $(ARGS)

bench-auth: ## sign-ups per second end to end, and what key checks and rate limits add per request (one core)
	@$(PY) -m tests.bench.auth

surge: ## a scaled viral launch against a private stack: latency per tier, lanes, rejections (ARGS=--quick: < 3 min)
	@$(PY) -m tests.bench.surge $(ARGS)

train-model: ## train the built-in model from scratch (90 minutes on 2 CPU cores; faster on a GPU)
	@$(PY) -m libs.modeltools.train --out libs/model/weights --minutes 90

eval-model: ## the built-in model's figures (PSNR, prompt adherence, safety detector, speed)
	@$(PY) -m libs.modeltools.eval
